"""Detached runs over SSH: they survive disconnects, write rc atomically, stop by group."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from orchestrator.platforms.ssh.runs import detached_status, kill_detached, start_detached
from orchestrator.platforms.ssh.connection import connect
from tests.conftest import wait_until


def test_detached_run_survives_a_disconnect_and_writes_its_exit_code_atomically(via_relay, relay, tmp_path):
    workdir = tmp_path / "attempt"
    script = "sleep 0.6; echo done; exit 7"
    conn = connect(via_relay())
    pid = start_detached(conn, str(workdir), ["sh", "-c", script])
    relay.cut()  # the tunnel dies while the run goes on
    conn.close()
    assert pid > 0 and not (workdir / "rc").exists()
    wait_until(lambda: (workdir / "rc").exists(), 5, "rc written")
    assert (workdir / "rc").read_text() == "7\n" and not (workdir / "rc.tmp").exists()
    conn = connect(via_relay())
    try:
        status = detached_status(conn, str(workdir), ["runner.out", "missing.json"])
    finally:
        conn.close()
    assert (status.exists, status.pid, status.rc, status.alive) == (True, pid, 7, False)
    assert "runner.out" in status.files and "missing.json" not in status.files
    assert status.age("runner.out") is not None and status.age("runner.out") < 5


def test_detached_start_is_idempotent_on_its_directory(endpoint, tmp_path):
    workdir = tmp_path / "attempt"
    conn = connect(endpoint())
    try:
        first = start_detached(conn, str(workdir), ["sh", "-c", "echo x >> count; sleep 1"])
        second = start_detached(conn, str(workdir), ["sh", "-c", "echo x >> count; sleep 1"])
        kill_detached(conn, str(workdir), grace_s=0)
    finally:
        conn.close()
    assert first == second and (workdir / "count").read_text() == "x\n"


def test_detached_stdin_reaches_the_run_but_never_the_disk(endpoint, tmp_path):
    workdir = tmp_path / "attempt"
    secret = b"s3cr3t-" + os.urandom(8).hex().encode()
    conn = connect(endpoint())
    try:
        start_detached(conn, str(workdir), ["python3", "-c",
                            "import sys,hashlib;print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())"],
                            stdin=secret)
        wait_until(lambda: (workdir / "rc").exists(), 5, "rc written")
    finally:
        conn.close()
    assert (workdir / "runner.out").read_text().strip() == hashlib.sha256(secret).hexdigest()
    for path in workdir.rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes()


def test_missing_directory_reads_as_not_existing(endpoint, tmp_path):
    conn = connect(endpoint())
    try:
        assert detached_status(conn, str(tmp_path / "never")).exists is False
    finally:
        conn.close()


def test_kill_detached_sends_sigterm_first_and_returns_once_the_run_exits(endpoint, tmp_path):
    workdir = tmp_path / "attempt"
    conn = connect(endpoint())
    try:
        start_detached(conn, str(workdir), ["sh", "-c", "trap 'echo term > got_term; exit 0' TERM; "
                                           "echo up > ready; while :; do sleep 0.1; done"])
        wait_until(lambda: (workdir / "ready").exists(), 5, "ready written")
        started = time.monotonic()
        kill_detached(conn, str(workdir), grace_s=20)
        took = time.monotonic() - started
    finally:
        conn.close()
    assert (workdir / "got_term").read_text() == "term\n" and took < 5


def test_kill_detached_stops_the_whole_process_group(endpoint, tmp_path):
    workdir = tmp_path / "attempt"
    conn = connect(endpoint())
    try:
        start_detached(conn, str(workdir), ["sh", "-c", "sleep 30 & echo $! > child; trap '' TERM; sleep 30"])
        wait_until(lambda: (workdir / "child").exists(), 5, "child written")
        child = int((workdir / "child").read_text())
        kill_detached(conn, str(workdir), grace_s=0.5)
        status = detached_status(conn, str(workdir))
    finally:
        conn.close()
    assert status.alive is False
    state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] if Path(f"/proc/{child}").exists() else "gone"
    assert state in ("Z", "gone")


def test_a_start_interrupted_before_its_pid_is_cleaned_up_and_can_be_retried(endpoint, tmp_path):
    from orchestrator.errors import TransientError

    workdir = tmp_path / "attempt"
    (workdir / ".started").mkdir(parents=True)  # claimed, then the session died
    conn = connect(endpoint())
    try:
        with pytest.raises(TransientError, match="interrupted start"):
            start_detached(conn, str(workdir), ["true"])
        assert start_detached(conn, str(workdir), ["true"]) > 0
    finally:
        conn.close()


def test_a_status_answer_cut_short_or_garbled_is_transient_never_gone():
    from orchestrator.errors import TransientError
    from orchestrator.platforms.ssh.runs import parse_status

    assert parse_status("exists 0\nend\n").exists is False
    assert parse_status("Welcome!\nexists 1\nnow 100\npid 7\nalive 1\nfile 90 5 heartbeat.json\nend\n").age(
        "heartbeat.json") == 10
    for garbage in ("", "exists 0\n", "exists 1\nnow 100\n", "exists 1\nfile x y heartbeat.json\nend\n",
                    "exists 1\nnow soon\nend\n", "\x00\xff\n"):
        with pytest.raises(TransientError):
            parse_status(garbage)
