"""The paramiko layer against a real OpenSSH sshd, directly and through a cuttable relay."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

import pytest

from orchestrator.errors import LostError, TransientError
from orchestrator.platforms.ssh.link import RECONNECT, Link
from orchestrator.bundle import sha256_file as file_sha256
from orchestrator.platforms.ssh.connection import connect
from orchestrator.platforms.ssh.shell import sh
from tests.conftest import wait_until
from tests.platforms.conftest import FAST


def _blob(path: Path, size: int) -> tuple[Path, str]:
    path.write_bytes(os.urandom(size))
    return path, file_sha256(path)


# --------------------------------------------------------------------------- dead and stalled tunnels


def test_dead_relay_ends_the_connection_without_spinning(via_relay, relay):
    conn = connect(via_relay())
    try:
        assert conn.run("true").rc == 0
        cpu = time.process_time()
        relay.cut()
        wait_until(lambda: not conn.alive, 3.0, "transport closed after the proxy died")
        time.sleep(1.0)
        # paramiko 5.1's own ProxyCommand burns a whole core here (~1 s per second).
        assert time.process_time() - cpu < 0.3
        with pytest.raises(TransientError):
            conn.run("true")
    finally:
        conn.close()
    assert relay.pids() == []


def test_relay_that_exits_at_once_reports_what_it_said(via_relay, relay):
    relay.down("exit")
    started = time.monotonic()
    with pytest.raises(TransientError, match="tunnel is down"):
        connect(via_relay())
    assert time.monotonic() - started < 3


def test_relay_that_never_answers_times_out_at_the_banner(via_relay, relay):
    relay.down("hang")
    started = time.monotonic()
    with pytest.raises(TransientError):
        connect(via_relay())
    assert time.monotonic() - started < 6  # banner timeout 2 s, watchdog at most 8 s
    wait_until(lambda: relay.pids() == [], 3.0, "the hung proxy killed")


@pytest.mark.parametrize("operation", ["sftp", "exec"])
def test_a_frozen_relay_times_out_every_operation_instead_of_hanging(via_relay, relay, operation):
    conn = connect(via_relay(timeouts=dataclasses.replace(FAST, channel=1, sftp=1)))
    try:
        conn.sftp()
        relay.freeze()  # the tunnel stalls: no EOF, no error, nothing moves
        started = time.monotonic()
        with pytest.raises(TransientError, match="timed out"):
            conn.stat("/") if operation == "sftp" else conn.run("true")
        assert time.monotonic() - started < 3
        assert not conn.alive  # the stalled connection was given up, not left half-open
    finally:
        relay.thaw()
        conn.close()


def test_command_longer_than_its_timeout_is_cut(endpoint):
    conn = connect(endpoint())
    try:
        started = time.monotonic()
        with pytest.raises(TransientError, match="timed out"):
            conn.run("sleep 3", timeout=0.5)
        assert time.monotonic() - started < 2.5
    finally:
        conn.close()


def test_link_reconnects_after_the_relay_is_cut(via_relay, relay):
    # generous tries: on a loaded CI machine one reconnect attempt may itself time out
    with Link(via_relay(), backoff=RECONNECT.replace(attempts=6, base=0.05)) as link:
        assert link.call(lambda c: c.run("echo one").out) == "one\n"
        relay.cut()
        assert link.call(lambda c: c.run("echo two").out) == "two\n"
        assert link.connects >= 2


def test_link_abandons_a_stalled_tunnel_and_finishes_on_a_new_one(via_relay, relay):
    ep = via_relay(timeouts=dataclasses.replace(FAST, channel=1, command=1))
    with Link(ep, backoff=RECONNECT.replace(attempts=3, base=0.05)) as link:
        link.call(lambda c: c.run("true"))
        relay.freeze()  # only the relay of the current connection is frozen
        assert link.call(lambda c: c.run("echo again").out) == "again\n"
        assert link.connects == 2


def test_link_gives_up_after_its_backoff_while_the_relay_is_down(via_relay, relay):
    relay.down("exit")
    sleeps: list[float] = []
    link = Link(via_relay(), backoff=RECONNECT.replace(attempts=3, base=0.1), sleep=sleeps.append)
    with pytest.raises(TransientError):
        link.connection()
    assert sleeps == [0.1, 0.2] and relay.started() == 3


# --------------------------------------------------------------------------- transfers


def test_upload_cut_midway_resumes_and_arrives_intact(via_relay, relay, tmp_path):
    src, digest = _blob(tmp_path / "data.bin", 3_000_000)
    remote = str(tmp_path / "remote" / "data.bin")
    (tmp_path / "remote").mkdir()
    relay.cut_after("up", 1_500_000)
    with Link(via_relay(), backoff=RECONNECT.replace(attempts=3, base=0.05)) as link:
        with pytest.raises(TransientError):
            link.connection().put(src, remote, digest)
        partial = Path(remote + ".part").stat().st_size
        assert 0 < partial < 3_000_000 and not Path(remote).exists()
        sent = link.call(lambda c: c.put(src, remote, digest))
    # The cut sshd may still write requests it had buffered, so the host can hold more
    # than `partial` by the time the upload resumes; it must not start over, though.
    assert 0 < sent <= 3_000_000 - partial
    assert file_sha256(Path(remote)) == digest and not Path(remote + ".part").exists()


# paramiko's prefetch thread dies with the cut connection and says so on its way out.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_download_cut_midway_resumes_and_arrives_intact(via_relay, relay, tmp_path):
    remote, digest = _blob(tmp_path / "result.bin", 3_000_000)
    local = tmp_path / "local.bin"
    relay.cut_after("down", 1_500_000)
    with Link(via_relay(), backoff=RECONNECT.replace(attempts=3, base=0.05)) as link:
        with pytest.raises(TransientError):
            link.connection().get(str(remote), local, sha256=digest)
        partial = Path(str(local) + ".part").stat().st_size
        assert 0 < partial < 3_000_000
        received = link.call(lambda c: c.get(str(remote), local))
    assert received == 3_000_000 - partial and file_sha256(local) == digest


def test_corrupt_partial_upload_is_discarded_then_sent_whole(endpoint, tmp_path):
    src, digest = _blob(tmp_path / "data.bin", 200_000)
    remote = str(tmp_path / "copy.bin")
    Path(remote + ".part").write_bytes(b"garbage" * 100)
    conn = connect(endpoint())
    try:
        with pytest.raises(TransientError, match="corrupted"):
            conn.put(src, remote, digest)
        assert not Path(remote + ".part").exists() and not Path(remote).exists()
        assert conn.put(src, remote, digest) == 200_000
    finally:
        conn.close()
    assert file_sha256(Path(remote)) == digest


def test_download_of_a_missing_file_is_lost(endpoint, tmp_path):
    conn = connect(endpoint())
    try:
        with pytest.raises(LostError):
            conn.get(str(tmp_path / "absent"), tmp_path / "x")
    finally:
        conn.close()


# --------------------------------------------------------------------------- quoting


@pytest.mark.parametrize(
    "name",
    ["with space", "it's", 'say "hi"', "$(touch PWNED)", "`touch PWNED`", "a;touch PWNED", "x\ny", "-rf"],
)
def test_metacharacters_in_names_reach_the_remote_side_as_plain_text(endpoint, tmp_path, name):
    conn = connect(endpoint())
    try:
        target = tmp_path / "jobs" / name
        conn.makedirs(str(target))
        result = conn.run(sh('cd -- "$1" && printf %s "$2" > name.txt && pwd', str(target), name))
    finally:
        conn.close()
    assert result.rc == 0 and (target / "name.txt").read_text() == name
    assert not list(tmp_path.rglob("PWNED")) and not Path.home().joinpath("PWNED").exists()


def test_concurrent_links_do_not_share_a_connection(endpoint):
    """Each Link owns its connection; two threads each with a Link run side by side."""
    results: list[str] = []

    def worker(tag: str) -> None:
        with Link(endpoint()) as link:
            results.append(link.call(lambda c: c.run(f"echo {tag}").out.strip()))

    threads = [threading.Thread(target=worker, args=(t,)) for t in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results) == ["a", "b"]
