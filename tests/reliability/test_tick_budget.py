"""A tick has an overall budget: a remote that accepts and never answers cannot hang
`orch tick`, and work past the budget is left to the next tick."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.conftest import make_job, orch_process, submit


@pytest.fixture
def blackhole():
    """A TCP server on 127.0.0.1 that accepts every connection and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def test_a_kaggle_api_that_never_answers_cannot_hang_the_tick(orch, config, blackhole, tmp_path):
    config("platforms:\n  kaggle: {type: kaggle}\ncontroller: {tick_budget: 2s}\n")
    submit(orch, make_job(tmp_path / "j", "name: k\nplatforms: [kaggle]\nrun: echo hi\n"))
    env = {"KAGGLE_API_ENVIRONMENT": "LOCALHOST", "KAGGLE_USERNAME": "alice", "KAGGLE_KEY": "k" * 32,
           "KAGGLE_CONFIG_DIR": str(tmp_path / "kaggle"), "HTTP_PROXY": blackhole, "http_proxy": blackhole,
           "NO_PROXY": "127.0.0.1", "KAGGLE_API_TOKEN": ""}
    (tmp_path / "kaggle").mkdir()

    started = time.monotonic()
    proc = orch_process("tick", env=env, timeout=60)
    took = time.monotonic() - started

    assert took < 2 + 1 + 5, f"the tick took {took:.1f}s with a 2 s budget"  # + hard-stop slack + start-up
    assert "Traceback" not in proc.stderr, proc.stderr
    if proc.returncode != 0:  # stopped by the hard deadline: one line saying so
        assert proc.returncode == 1 and "over its budget" in proc.stderr, proc.stderr
