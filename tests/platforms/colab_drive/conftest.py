"""Fixtures for the Colab-through-Drive platform: the fake Drive server and the real client.

The server is started once per session (a thread on 127.0.0.1) and reset before each
test, as rq flushes Redis; every client here is the unmodified google-api-python-client.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from google.oauth2.credentials import Credentials

from orchestrator.app import App
from orchestrator.home import Home
from orchestrator.platforms.colab_drive.client import build_drive, save_credentials
from orchestrator.platforms.colab_drive.transfer import DRIVE_CALLS, Transfers, UploadJournal
from orchestrator.retry import Retry
from tests.emulators.drive import DriveServer

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def drive_server():
    with DriveServer() as server:
        yield server


@pytest.fixture
def drive(drive_server: DriveServer):
    """The fake Drive, empty, with no faults; reset again afterwards."""
    drive_server.reset()
    yield drive_server
    drive_server.reset()


@pytest.fixture
def service(drive: DriveServer):
    """The real Drive v3 client, pointed at the fake server with the test token."""
    return build_drive(Credentials(token="test-token"), drive.api_endpoint, timeout=10)


class Sleeps:
    """An injectable sleep that records its delays instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def backoff() -> Retry:
    """Drive's retry policy, recording its delays instead of sleeping (they stay random)."""
    return DRIVE_CALLS.replace(sleep=Sleeps())


@pytest.fixture
def transfers(service, tmp_path: Path, backoff: Retry) -> Transfers:
    return Transfers(service, UploadJournal(tmp_path / "uploads"), "gdrive", backoff, chunk_size=1 * MiB)


@pytest.fixture
def folder(transfers: Transfers) -> str:
    """A fresh folder to work in."""
    return transfers.folder("orch", "root")["id"]


# --------------------------------------------------------------------------- end to end

AGENT = REPO / "kernels" / "colab_agent.py"


@pytest.fixture
def gdrive(drive: DriveServer, config, orch_home: Path, tmp_path: Path):
    """A configured ``gdrive`` colab_drive platform (tier pro) signed in to the fake Drive.

    The token file holds an expired access token and a refresh token the fake Drive
    knows, so the first call goes through google-auth's real refresh. Agents heartbeat
    every 0.3 s and count as gone after 5 s (a test about staleness lowers that).
    """
    secrets = tmp_path / "client_secret.json"
    secrets.write_text(json.dumps({"installed": {
        "client_id": "orch-test-client", "client_secret": "s3cret", "auth_uri": drive.auth_uri,
        "token_uri": drive.token_uri, "redirect_uris": ["http://localhost"]}}))
    config(PLATFORM_YAML.format(secrets=secrets, endpoint=drive.api_endpoint, token_uri=drive.token_uri))
    drive.add_refresh_token("rt-1")
    expired = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(hours=1)
    creds = Credentials(token="stale", refresh_token="rt-1", token_uri=drive.token_uri,
                        client_id="orch-test-client", client_secret="s3cret", expiry=expired)
    save_credentials(creds, Home(orch_home).platform_dir("gdrive") / "token.json")
    return drive


PLATFORM_YAML = """\
platforms:
  gdrive:
    type: colab_drive
    credentials: {secrets}
    tier: pro
    endpoint: {endpoint}
    token_uri: {token_uri}
    heartbeat_stale: 5s
    setup_margin: 5s
    backoff_base: 0.01s
    chunk_mb: 1
controller:
  unknown_window: 1s
  failover_backoff: 0
  grace: 2s
"""


def drive_root() -> str:
    """The mailbox folder's id, as `orch colab agent-notebook` would put in the notebook."""
    app = App.open()
    try:
        return app.platform("gdrive").mailbox().root
    finally:
        app.close()


class Agents:
    """Agent subprocesses (``kernels/colab_agent.py``) against the fake Drive.

    Each runs in its own session with its work dir under ORCH_HOME, so ``kill`` can take
    down the agent and its runners like a recycled Colab VM, and teardown reaps all.
    """

    def __init__(self, drive: DriveServer, home: Path):
        self.drive, self.home = drive, home
        self.procs: dict[str, subprocess.Popen] = {}

    def work_dir(self, agent_id: str) -> Path:
        return self.home / "agents" / agent_id

    def start(self, agent_id: str, session_seconds: float = 3600, wait: bool = True, margin: float = 1,
              extra: tuple[str, ...] = (), cpu_ok: bool = True, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start an agent (``cpu_ok``: allowed to run without a GPU, as on this machine)."""
        env = {**os.environ, "ORCH_DRIVE_FAKE_TOKEN": "test-token", "ORCH_DRIVE_ENDPOINT": self.drive.api_endpoint,
               "ORCH_HEARTBEAT_SECONDS": "0.3", **(env or {})}
        log = open(self.home / f"agent-{agent_id}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, str(AGENT), "--folder-id", drive_root(), "--agent-id", agent_id,
             "--work-dir", str(self.work_dir(agent_id)), "--session-seconds", f"{session_seconds:g}",
             "--poll", "0.1", "--heartbeat", "0.3", "--log-interval", "0.3", "--min-job-seconds", "2",
             "--margin", f"{margin:g}", *(["--cpu-ok"] if cpu_ok else []), *extra],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs[agent_id] = proc
        if wait:
            deadline = time.monotonic() + 30
            while not self.drive.find("heartbeat.json", orch_agent=agent_id):
                assert proc.poll() is None, self.output(agent_id)
                assert time.monotonic() < deadline, "agent did not start"
                time.sleep(0.05)
        return proc

    def output(self, agent_id: str) -> str:
        return (self.home / f"agent-{agent_id}.log").read_text(errors="replace")

    def kill(self, agent_id: str) -> None:
        """SIGKILL the agent and every runner it started, as when Colab recycles the VM."""
        proc = self.procs[agent_id]
        for pgid in [proc.pid] + _runner_groups(self.work_dir(agent_id)):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        proc.wait(timeout=10)

    def keys_run_by(self, agent_id: str) -> list[str]:
        runs = self.work_dir(agent_id) / "runs"
        return sorted(p.name for p in runs.iterdir()) if runs.is_dir() else []

    def stop_all(self) -> None:
        for agent_id, proc in self.procs.items():
            if proc.poll() is None:
                self.kill(agent_id)


def _runner_groups(work: Path) -> list[int]:
    out = []
    for pid_file in work.rglob("runner.pid.json"):
        try:
            doc = json.loads(pid_file.read_text())
        except (OSError, ValueError):
            continue
        out += [int(doc[k]) for k in ("job_pgid", "pid") if doc.get(k)]
    return out


@pytest.fixture
def agents(gdrive: DriveServer, orch_home: Path):
    pool = Agents(gdrive, orch_home)
    yield pool
    pool.stop_all()
