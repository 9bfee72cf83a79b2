"""Fixtures for the SSH and Colab platforms: a real sshd, cuttable relays, a fake colab CLI.

The sshd is started once per session (it costs ~0.1 s but tests open many
connections); everything a test can break (relays, fake Colab state, remote dirs)
is per test and torn down with it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

from orchestrator.platforms.ssh_transport import Endpoint, Timeouts
from tests.emulators import fake_colab
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


@pytest.fixture
def colab(sshd: SSHD, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fake `colab` CLI on PATH whose `ssh --proxy-mode` reaches the test sshd."""
    fake = fake_colab.install(tmp_path / "colab-state", tmp_path / "colab-bin", sshd.port)
    monkeypatch.setenv("PATH", f"{fake.bin_dir}:{os.environ['PATH']}")
    yield fake
    fake.close()


# --------------------------------------------------------------------------- end to end


class Orch:
    """The real `orch` CLI, run in-process against one private home."""

    def __init__(self, home: Path, monkeypatch: pytest.MonkeyPatch):
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv("ORCH_HOME", str(home))

    def configure(self, platforms: dict) -> None:
        import yaml

        (self.home / "config.yaml").write_text(yaml.safe_dump({"platforms": platforms}, sort_keys=False))

    def __call__(self, *args: str, ok: bool = True):
        from click.testing import CliRunner

        from orchestrator.cli import main

        result = CliRunner().invoke(main, list(args), catch_exceptions=False)
        if ok and result.exit_code != 0:
            raise AssertionError(f"orch {' '.join(args)} exited {result.exit_code}:\n{result.output}")
        return result

    def json(self, *args: str):
        import json

        return json.loads(self(*args, "--json").output)

    def submit(self, job_yaml: Path, *extra: str) -> str:
        return self.json("submit", str(job_yaml), *extra)["id"]

    def state(self, job_id: str) -> dict:
        doc = self.json("status", job_id)
        return doc.get("job", doc)

    def tick_until(self, job_id: str, states: set[str], timeout: float = 30.0, pause: float = 0.2) -> dict:
        import time

        end = time.monotonic() + timeout
        while True:
            self("tick")
            job = self.state(job_id)
            if job["state"] in states:
                return job
            if time.monotonic() > end:
                raise AssertionError(f"job {job_id} still {job['state']} after {timeout}s: {job.get('message')}")
            time.sleep(pause)


@pytest.fixture
def orch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Orch:
    return Orch(tmp_path / "orch-home", monkeypatch)


@pytest.fixture
def ssh_platform(sshd: SSHD, known_hosts: Path, tmp_path: Path):
    """A config entry for the test sshd; keyword arguments override its keys."""
    import sys

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
            "heartbeat_interval": "1s",
            "heartbeat_timeout": "5s",
            "reconnect_tries": 2,
            "reconnect_delay": "0.1s",
            "timeouts": {k: f"{v:g}s" for k, v in vars(FAST).items()},
        }
        entry.update(overrides)
        return entry

    return make


def make_job(root: Path, *, name: str = "demo", run: str = "python work.py", script: str = "",
             dataset: bytes | None = None, platforms: tuple[str, ...] = ("lab",), extra: str = "") -> Path:
    """A job directory with job.yaml, work.py and (optionally) a dataset ``ds/blob.bin``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "work.py").write_text(script or _DEFAULT_SCRIPT)
    lines = [f"name: {name}", "code: .", f"run: {run}", f"platforms: [{', '.join(platforms)}]",
             "resources:", "  max_runtime: 5m", "  gpu_count: 0", "retries: 1"]  # TEMP gpu_count: core spec round-trip bug
    if dataset is not None:
        (root.parent / f"{name}-ds").mkdir(exist_ok=True)
        (root.parent / f"{name}-ds" / "blob.bin").write_bytes(dataset)
        lines += ["datasets:", f"  - path: ../{name}-ds", "    name: ds"]
    (root / "job.yaml").write_text("\n".join(lines) + "\n" + extra)
    return root / "job.yaml"


_DEFAULT_SCRIPT = """\
import hashlib, os, pathlib
data = pathlib.Path(os.environ["ORCH_DATA"]) / "ds" / "blob.bin"
digest = hashlib.sha256(data.read_bytes()).hexdigest() if data.exists() else "no-data"
print("job", os.environ["ORCH_JOB_NAME"], "sees", digest)
pathlib.Path(os.environ["ORCH_OUTPUT_DIR"], "digest.txt").write_text(digest)
"""
