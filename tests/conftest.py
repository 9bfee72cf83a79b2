"""Fixtures shared by every test: an isolated orch home, the CLI, and clean-up of
every process a test started.

Each test gets its own ``ORCH_HOME`` (config, state DB, caches, attempt dirs) in a
temp dir; at teardown every runner still alive under it is killed with its job's
process group, so no test leaks a process into the next.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable

import pytest
import yaml
from click.testing import CliRunner

from orchestrator.app import App
from orchestrator.cli import main as cli_main
from orchestrator.controller import Controller

REPO = Path(__file__).resolve().parent.parent


def kill_runners(root: Path) -> None:
    """SIGKILL every runner (and its job's process group) recorded under ``root``."""
    for pid_file in root.rglob("runner.pid.json"):
        try:
            doc = json.loads(pid_file.read_text())
        except (OSError, ValueError):
            continue
        for key in ("job_pgid", "pid"):
            pid = doc.get(key)
            if not pid:
                continue
            for fn in (os.killpg, os.kill):
                try:
                    fn(int(pid), signal.SIGKILL)
                except (ProcessLookupError, PermissionError, OSError):
                    pass


@pytest.fixture
def state_backend() -> str:
    """Which state database `orch_home` uses: "sqlite" here; a module that must also pass on
    PostgreSQL overrides this fixture with ``params=["sqlite", "postgres"]`` (see
    ``backends`` below)."""
    return "sqlite"


#: ``state_backend = backends`` in a test module runs each of its tests on both databases.
backends = pytest.fixture(params=["sqlite", "postgres"])(lambda request: request.param)


@pytest.fixture
def orch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request, state_backend: str) -> Path:
    """A fresh ORCH_HOME for this test (and for any `orch` subprocess it starts), on a fresh
    SQLite file or, for ``state_backend == "postgres"``, a fresh PostgreSQL database."""
    home = tmp_path / "orch-home"
    home.mkdir()
    monkeypatch.setenv("ORCH_HOME", str(home))
    monkeypatch.setenv("ORCH_HEARTBEAT_SECONDS", "0.5")
    monkeypatch.delenv("ORCH_STATE_URL", raising=False)
    monkeypatch.delenv("ORCH_FAILPOINTS", raising=False)
    monkeypatch.delenv("ORCH_CONTROLLER_ID", raising=False)
    monkeypatch.delenv("ORCH_USER", raising=False)
    if state_backend == "postgres":
        monkeypatch.setenv("ORCH_STATE_URL", request.getfixturevalue("pg_url"))
    monkeypatch.chdir(tmp_path)
    yield home
    kill_runners(home)


def write_config(home: Path, text: str | None = None, **sections) -> Path:
    """Write ``config.yaml`` into ``home``: ``text`` (dedented) as written, or else the
    keyword ``sections`` dumped as YAML (``platforms={"lab": {...}}``)."""
    if text is None:
        text = yaml.safe_dump(sections, sort_keys=False)
    path = home / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def config(orch_home: Path) -> Callable[..., Path]:
    """``config(yaml_text)`` or ``config(platforms={...})`` writes the test's config.yaml."""
    return lambda text=None, **sections: write_config(orch_home, text, **sections)


@pytest.fixture
def orch(orch_home: Path):
    """Run the CLI in-process: ``orch("status", "--json")`` -> click Result.

    Output and exit code are what a user would see; exceptions never escape
    (the CLI turns them into an error line)."""
    runner = CliRunner()

    def run(*args: str, input: str | None = None):
        return runner.invoke(cli_main, list(args), input=input, catch_exceptions=False)

    return run


def submit(orch, job_yaml: Path, *extra: str) -> str:
    """``orch submit JOB_YAML --json [extra]``; fails the test unless it exits 0; returns the job id."""
    return submitted(orch, job_yaml, *extra)["id"]


def submitted(orch, job_yaml: Path, *extra: str) -> dict:
    """Like :func:`submit`, but returns the whole JSON document (a sweep's ``jobs`` too)."""
    result = orch("submit", str(job_yaml), "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition",
               interval: float = 0.05):
    """Call ``predicate`` until it returns something truthy and return that; fails the test
    with ``what`` once ``timeout`` seconds have passed (the predicate is called at least once,
    and once more at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not reached within {timeout:g}s")
        time.sleep(interval)


def orch_process(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `orch` as a separate process (for crash tests and concurrency): this checkout's
    code, whatever the installed one (a worktree's tests run the worktree)."""
    paths = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": paths, **(env or {})}, timeout=timeout)


def open_app() -> App:
    return App.open()


def tick_until(predicate: Callable[[App], bool], timeout: float = 60, interval: float = 0.2,
               what: str = "condition") -> App:
    """Tick (in-process) until ``predicate(app)`` holds; fails the test on timeout."""

    def tick() -> App | None:
        app = App.open()
        try:
            Controller(app).tick()
            return app if predicate(app) else None
        finally:
            app.close()

    return wait_until(tick, timeout, what, interval)


def make_job(directory: Path, yaml_text: str, files: dict[str, str] | None = None) -> Path:
    """Create a job directory with ``job.yaml`` and extra files; returns the yaml path."""
    directory.mkdir(parents=True, exist_ok=True)
    for rel, content in (files or {}).items():
        p = directory / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
    path = directory / "job.yaml"
    path.write_text(textwrap.dedent(yaml_text))
    return path


from tests.pg import pg_server, pg_url  # noqa: E402,F401  (fixtures for team-mode tests)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path: Path):
    """A fresh :class:`~orchestrator.store.Store`, once on SQLite and once on PostgreSQL."""
    from orchestrator.store import Store

    url = f"sqlite:///{tmp_path / 'state.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    s = Store(url)
    yield s
    s.close()
