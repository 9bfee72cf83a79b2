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


def _stalled_kaggle(config, blackhole, tmp_path, extra: str = "") -> dict:
    """A kaggle platform whose API accepts and never answers; the env that points it there."""
    config("platforms:\n  kaggle: {type: kaggle}\n  local: {type: local}\n"
           f"controller: {{tick_budget: 2s, answer_deadline: 2s}}\n{extra}")
    (tmp_path / "kaggle").mkdir(exist_ok=True)
    return {"KAGGLE_API_ENVIRONMENT": "LOCALHOST", "KAGGLE_USERNAME": "alice", "KAGGLE_KEY": "k" * 32,
            "KAGGLE_CONFIG_DIR": str(tmp_path / "kaggle"), "HTTP_PROXY": blackhole, "http_proxy": blackhole,
            "NO_PROXY": "127.0.0.1", "KAGGLE_API_TOKEN": ""}


@pytest.mark.parametrize("command", [("platforms",), ("platforms", "--json"), ("quota",), ("plan",), ("doctor",)])
def test_a_platform_that_never_answers_cannot_hang_the_commands_that_describe_platforms(
        orch, config, blackhole, tmp_path, command):
    env = _stalled_kaggle(config, blackhole, tmp_path)
    started = time.monotonic()
    proc = orch_process(*command, env=env, timeout=90)
    took = time.monotonic() - started

    # offer, then checks + quota: two 2 s deadlines for the stalled platform at most, + start-up
    assert took < 3 * 2 + 8, f"`orch {' '.join(command)}` took {took:.1f}s with a 2 s answer deadline"
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    if command[0] == "platforms":
        assert proc.returncode == 0, proc.stderr
        assert "local" in proc.stdout  # the other platform is still described


def test_submit_wait_keeps_ticking_past_a_stalled_remote_and_still_sees_its_job_through(orch, config, blackhole,
                                                                                          tmp_path):
    env = _stalled_kaggle(config, blackhole, tmp_path)
    job = make_job(tmp_path / "j", "name: w\nplatforms: [local]\nrun: echo done-here\n")
    started = time.monotonic()
    proc = orch_process("submit", str(job), "--wait", "--interval", "0.2", env=env, timeout=120)
    took = time.monotonic() - started

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "done-here" in proc.stdout
    assert took < 60, f"submit --wait took {took:.1f}s"


def test_deadlines_nest_an_inner_one_never_outlives_the_outer_one():
    from orchestrator.deadline import Overrun, hard_deadline

    class Outer(Overrun):
        pass

    class Inner(Overrun):
        pass

    # the inner one is due first: it fires, and the outer one still fires on time afterwards
    started = time.monotonic()
    with pytest.raises(Outer):
        with hard_deadline(0.6, "outer", Outer):
            with pytest.raises(Inner):
                with hard_deadline(0.2, "inner", Inner):
                    time.sleep(5)
            assert time.monotonic() - started < 0.5
            time.sleep(5)
    assert time.monotonic() - started < 1.5

    # the outer one is due first: the outer one fires even inside the longer inner one, and
    # only once: the cleanup on the way out (a tick releasing its leases) is not cut short
    started, cleaned = time.monotonic(), []
    with pytest.raises(Outer):
        with hard_deadline(0.3, "outer", Outer):
            try:
                with hard_deadline(10, "inner", Inner):
                    time.sleep(5)
            finally:
                time.sleep(0.05)
                cleaned.append(True)
    assert time.monotonic() - started < 1.5
    assert cleaned == [True]
