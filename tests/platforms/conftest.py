"""Fixtures for every platform reached over SSH (ssh, colab): a real sshd and cuttable relays.

The sshd is started once per session (it costs ~0.1 s but tests open many
connections); everything a test can break (relays, fake Colab state, remote dirs)
is per test and torn down with it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Callable

import pytest

from orchestrator.platforms.ssh.connection import Endpoint, Timeouts
from tests.conftest import make_job, tick_until
from tests.emulators.relay import Relay
from tests.emulators.sshd import SSHD, SSHDUnavailable

#: Short knobs: a dead tunnel must be noticed in about a second, not a minute.
FAST = Timeouts(connect=3, banner=2, auth=3, channel=2, command=10, sftp=2, probe=2, keepalive=5)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    try:
        server = SSHD.start(tmp_path_factory.mktemp("sshd"))
    except SSHDUnavailable as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture
def known_hosts(sshd: SSHD, tmp_path: Path) -> Path:
    """A known_hosts file that pins the test sshd's real host key."""
    return sshd.write_known_hosts(tmp_path / "known_hosts")


@pytest.fixture
def endpoint(sshd: SSHD, known_hosts: Path) -> Callable[..., Endpoint]:
    """Build an Endpoint for the test sshd; keyword arguments override fields."""

    def make(**overrides) -> Endpoint:
        fields = dict(
            name="lab",
            host=sshd.host,
            port=sshd.port,
            user=sshd.user,
            key=sshd.client_key.private,
            known_hosts=known_hosts,
            timeouts=FAST,
        )
        fields.update(overrides)
        return Endpoint(**fields)

    return make


@pytest.fixture
def relay(sshd: SSHD, tmp_path: Path):
    """A ProxyCommand relay to the sshd that the test can cut, freeze or take down."""
    r = Relay(control=tmp_path / "relay", port=sshd.port)
    yield r
    r.close()


@pytest.fixture
def via_relay(endpoint, relay: Relay, sshd: SSHD) -> Callable[..., Endpoint]:
    """An Endpoint that reaches the sshd only through ``relay`` (host is just a name)."""

    def make(**overrides) -> Endpoint:
        overrides.setdefault("proxy", tuple(relay.argv))
        return endpoint(**overrides)

    return make


# --------------------------------------------------------------------------- end to end
# These build on the shared fixtures of tests/conftest.py (`orch_home`, `config`, `orch`).

DONE = {"SUCCEEDED", "FAILED", "LOST", "CANCELLED"}


def job_state(orch, job_id: str) -> dict:
    """The job as `orch status JOB --json` shows it (state, message, attempts...)."""
    result = orch("status", job_id, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def tick_until_state(orch, job_id: str, states: set[str], timeout: float = 30.0) -> dict:
    """Tick in-process until the job is in one of ``states``; returns its status."""
    try:
        tick_until(lambda app: app.store.job(job_id).state.value in states, timeout=timeout, interval=0.1)
    except AssertionError:
        job = job_state(orch, job_id)
        raise AssertionError(f"job {job_id} still {job['state']} after {timeout}s: {job['message']}") from None
    return job_state(orch, job_id)


def fetched(orch, job_id: str, dest: Path) -> Path:
    """`orch fetch JOB -o dest`; returns the directory it filled."""
    result = orch("fetch", job_id, "-o", str(dest), "--json")
    assert result.exit_code == 0, result.output
    return Path(json.loads(result.output)["path"])


def outputs(orch, job_id: str, dest: Path) -> dict[str, bytes]:
    """The job's output files as `orch fetch` delivers them (unpacked under outputs/)."""
    target = fetched(orch, job_id, dest) / "outputs"
    return {str(p.relative_to(target)): p.read_bytes() for p in target.rglob("*") if p.is_file()}


def kill_remote_runs(remote: Path) -> None:
    """SIGKILL every detached run recorded under ``remote`` (its session id is its pid)."""
    for pid_file in remote.glob("**/attempts/*/pid"):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (ValueError, OSError):
            pass


@pytest.fixture
def ssh_platform(sshd: SSHD, known_hosts: Path, tmp_path: Path):
    """A config entry for the test sshd (files under tmp_path/remote); kwargs override keys."""

    def make(**overrides) -> dict:
        entry = {
            "type": "ssh",
            "host": sshd.host,
            "port": sshd.port,
            "user": sshd.user,
            "key": str(sshd.client_key.private),
            "known_hosts": str(known_hosts),
            "remote_dir": str(tmp_path / "remote"),
            "python": sys.executable,
            "heartbeat_interval": "0.5s",
            "heartbeat_timeout": "5s",
            "reconnect_tries": 2,
            "reconnect_delay": "0.1s",
            "timeouts": {k: f"{v:g}s" for k, v in vars(FAST).items()},
        }
        entry.update(overrides)
        return entry

    yield make
    kill_remote_runs(tmp_path)


def ssh_job(root: Path, *, name: str = "demo", script: str = "", dataset: bytes | None = None,
            platforms: tuple[str, ...] = ("lab",), extra: str = "") -> Path:
    """A job running ``work.py`` (default: hash the dataset ``ds/blob.bin`` into digest.txt)."""
    lines = [f"name: {name}", "code: .", "run: python work.py", f"platforms: [{', '.join(platforms)}]",
             "resources:", "  max_runtime: 5m"]
    if dataset is not None:
        ds = root.parent / f"{name}-ds"
        ds.mkdir(parents=True, exist_ok=True)
        (ds / "blob.bin").write_bytes(dataset)
        lines += ["datasets:", f"  - path: ../{name}-ds", "    name: ds"]
    yaml_text = "\n".join(lines) + "\n" + extra
    if "retries:" not in extra:
        yaml_text += "retries: 1\n"
    return make_job(root, yaml_text, {"work.py": script or _DEFAULT_SCRIPT})


_DEFAULT_SCRIPT = """\
import hashlib, os, pathlib
data = pathlib.Path(os.environ["ORCH_DATA"]) / "ds" / "blob.bin"
digest = hashlib.sha256(data.read_bytes()).hexdigest() if data.exists() else "no-data"
print("job", os.environ["ORCH_JOB_NAME"], "sees", digest)
pathlib.Path(os.environ["ORCH_OUTPUT_DIR"], "digest.txt").write_text(digest)
"""
