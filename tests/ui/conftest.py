"""A dashboard home shared by the UI tests: jobs in every state, a sweep, a job that moved
across platforms, quota history, and text from a hostile job.

The jobs that can really run here do (the local platform, through ``orch submit`` and
ticks): the ELS pricer with its plot (SUCCEEDED), a failing job, a running one, one
waiting behind it, a cancelled one, a sweep. States the local platform cannot reach on
demand (SUBMITTING, PENDING, UNKNOWN, FETCHING, and a chain checkpointed on Kaggle then
LOST on Colab) are written through the store's own transactions, as a tick on those platforms
would write them; the UI only reads, so it sees what it would see in real use.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.app import App
from orchestrator.controller import Controller
from orchestrator.states import AttemptState as A, JobState as J
from tests.conftest import REPO, kill_runners, make_job, wait_until, write_config

HOSTILE = "<img src=x onerror=alert(1)>\x1b[2J<script>alert('note')</script>"

CONFIG = """
platforms:
  laptop: {type: local, max_concurrent: 1}
  lab:
    type: local
    max_concurrent: 1
    budget: {unit: gpu_hours, limit: 30, window: weekly, reset: "sat 00:00"}
"""


@dataclass
class Dashboard:
    """The shared home and the ids of its jobs by role."""

    home: Path
    ids: dict[str, str]
    sweep_id: str


def _cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True,
                         env=os.environ.copy(), timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def _submit(path: Path, *extra: str) -> dict:
    import json

    return json.loads(_cli("submit", str(path), "--json", *extra))


def _tick_until(done, what: str, timeout: float = 90) -> None:
    def tick():
        app = App.open()
        try:
            Controller(app).tick()
            return done(app)
        finally:
            app.close()

    wait_until(tick, timeout, what, interval=0.3)


def _state(app: App, job_id: str) -> J:
    return app.store.job(job_id).state


@pytest.fixture(scope="session")
def dashboard(tmp_path_factory) -> Dashboard:
    root = tmp_path_factory.mktemp("ui")
    home = root / "orch-home"
    home.mkdir()
    mp = pytest.MonkeyPatch()
    mp.setenv("ORCH_HOME", str(home))
    mp.setenv("ORCH_HEARTBEAT_SECONDS", "0.5")
    for name in ("ORCH_STATE_URL", "ORCH_FAILPOINTS", "ORCH_CONTROLLER_ID", "ORCH_USER"):
        mp.delenv(name, raising=False)
    mp.chdir(root)
    write_config(home, CONFIG)
    try:
        yield _build(root, home)
    finally:
        kill_runners(home)
        mp.undo()


def _build(root: Path, home: Path) -> Dashboard:
    ids: dict[str, str] = {}
    # The ELS pricer as jobs/els-pricer runs it, with only the code it imports (kernels/).
    code = root / "els-code"
    shutil.copytree(REPO / "kernels", code / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    (code / "jobs" / "els-pricer").mkdir(parents=True)
    shutil.copy(REPO / "jobs" / "els-pricer" / "price.py", code / "jobs" / "els-pricer")
    els = make_job(code, """
        name: els-pricer
        run: python jobs/els-pricer/price.py --grids 40x40x80,60x60x120
        resources: {gpu: [any, none], max_runtime: 10m}
    """)
    ids["els"] = _submit(els, "--platform", "lab")["id"]
    failing = make_job(root / "failing", """
        name: bad-loss
        run: python fail.py
        resources: {gpu: [none], max_runtime: 5m}
    """, {"fail.py": "import os, pathlib\n"
                     f"print({HOSTILE!r})\n"
                     "pathlib.Path(os.environ['ORCH_OUTPUT_DIR'], 'report.html').write_text('<script>alert(2)</script>')\n"
                     "pathlib.Path(os.environ['ORCH_OUTPUT_DIR'], 'picture.svg').write_text("
                     "'<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(3)</script></svg>')\n"
                     "raise SystemExit(3)\n"})
    ids["failed"] = _submit(failing, "--platform", "lab")["id"]
    _tick_until(lambda app: _state(app, ids["els"]).terminal and _state(app, ids["failed"]).terminal,
                "the ELS job and the failing job end")
    sweep = make_job(root / "sweep", """
        name: lr-sweep
        run: python -c "import os; print('lr', os.environ['LR'])"
        resources: {gpu: [none], max_runtime: 5m}
        sweep: {grid: {LR: ["0.1", "0.01"]}}
    """)
    doc = _submit(sweep, "--platform", "lab")
    sweep_id = doc["sweep_id"]
    point_ids = list(doc["jobs"])
    _tick_until(lambda app: all(_state(app, i).terminal for i in point_ids), "the sweep ends")
    sleeper = make_job(root / "sleeper", """
        name: long-train
        run: python -c "import time; print('epoch 1', flush=True); time.sleep(600)"
        resources: {gpu: [none], max_runtime: 20m}
    """)
    ids["running"] = _submit(sleeper, "--platform", "laptop")["id"]
    ids["cancelled"] = _submit(sleeper, "--platform", "lab")["id"]
    _tick_until(lambda app: _state(app, ids["running"]) == J.RUNNING and _state(app, ids["cancelled"]) == J.RUNNING,
                "two sleepers run")
    _cli("cancel", ids["cancelled"])
    ids["queued"] = _submit(sleeper, "--platform", "laptop")["id"]
    _tick_until(lambda app: _state(app, ids["cancelled"]) == J.CANCELLED and app.store.job(ids["queued"]).message,
                "the cancel lands and the queued job has its wait reason")
    app = App.open()
    try:
        _synthetic(app, ids)
    finally:
        app.close()
    return Dashboard(home, ids, sweep_id)


def _synthetic(app: App, ids: dict[str, str]) -> None:
    """Jobs in the states a local run cannot be held in, written as their platforms' ticks
    write them (store transactions), plus a week of quota history on ``lab``."""
    store = app.store
    base = store.job(ids["running"])
    now = time.time()

    def job(name: str) -> str:
        return store.add_job(name=name, spec=base.spec, bundle=base.bundle)

    def place(job_id: str, number: int, platform: str, to: J, handle: dict | None = None) -> int:
        with store.transaction() as tx:
            prev = store.job(job_id).state
            tx.move_job(job_id, prev, J.SUBMITTING, f"placed on {platform}", platform=platform, attempts=number)
            att = tx.add_attempt(job_id, number, platform, f"placed on {platform}: est. 12m on T4")
            if to != J.SUBMITTING:
                tx.move_attempt(att, job_id, A.SUBMITTING, A.PENDING, "accepted", handle=handle or {"ref": "x"})
                tx.move_job(job_id, J.SUBMITTING, J.PENDING, "accepted")
        return att

    ids["submitting"] = job("submit-stuck")
    place(ids["submitting"], 1, "kaggle", J.SUBMITTING)
    ids["pending"] = job("waiting-gpu")
    place(ids["pending"], 1, "kaggle", J.PENDING)
    def run_then(job_id: str, started: float, to_attempt: A, to_job: J, reason: str, **values) -> None:
        """A placed job that ran since ``started`` and then moved to ``to_attempt``/``to_job``."""
        att = place(job_id, 1, "colab", J.PENDING)
        with store.transaction() as tx:
            tx.move_attempt(att, job_id, A.PENDING, A.RUNNING, "running", started_at=started)
            tx.move_job(job_id, J.PENDING, J.RUNNING, "running")
            tx.move_attempt(att, job_id, A.RUNNING, to_attempt, reason, **values)
            tx.move_job(job_id, J.RUNNING, to_job, reason)

    ids["unknown"] = job("cannot-hear")
    run_then(ids["unknown"], now - 300, A.UNKNOWN, J.UNKNOWN, "status read failed: timed out", unknown_since=now - 60)
    ids["fetching"] = job("downloading")
    run_then(ids["fetching"], now - 900, A.FETCHING, J.FETCHING, "ended", ended_at=now - 5)
    # A chain that moved across platforms: its first segment ran on Kaggle until the session
    # ended and checkpointed, the next went to Colab, which lost it; no retries were left.
    # Its times are those of three hours ago (as the ticks then would have written them).
    ids["lost"] = job("moved-around")
    hour = 3600
    att = place(ids["lost"], 1, "kaggle", J.PENDING)
    with store.transaction() as tx:
        tx.move_attempt(att, ids["lost"], A.PENDING, A.RUNNING, "running", started_at=now - 2.8 * hour,
                        gpu_name="Tesla T4", created_at=now - 2.9 * hour)
        tx.move_job(ids["lost"], J.PENDING, J.RUNNING, "running")
        tx.move_attempt(att, ids["lost"], A.RUNNING, A.FETCHING, "session ended", ended_at=now - 1.9 * hour)
        tx.move_job(ids["lost"], J.RUNNING, J.FETCHING, "session ended")
        tx.move_attempt(att, ids["lost"], A.FETCHING, A.CHECKPOINTED, "checkpointed; the next segment is queued",
                        runtime_s=0.9 * hour)
        tx.move_job(ids["lost"], J.FETCHING, J.QUEUED, "checkpointed; the next segment is queued")
    att = place(ids["lost"], 2, "colab", J.PENDING)
    with store.transaction() as tx:
        tx.move_attempt(att, ids["lost"], A.PENDING, A.RUNNING, "running", started_at=now - 1.7 * hour,
                        gpu_name="Tesla T4", created_at=now - 1.8 * hour)
        tx.move_job(ids["lost"], J.PENDING, J.RUNNING, "running")
        tx.move_attempt(att, ids["lost"], A.RUNNING, A.LOST, "colab lost the run: session ended",
                        ended_at=now - 0.6 * hour, message="colab lost the run")
        tx.move_job(ids["lost"], J.RUNNING, J.LOST, "no retries left", message=HOSTILE)
    with store.transaction() as tx:
        tx.update_job(ids["lost"], J.LOST, created_at=now - 3 * hour)
    with store.transaction() as tx:  # GPU hours charged on lab over the last days
        for days_ago, hours in ((1, 2.5), (2, 4.0), (5, 1.0), (9, 6.0)):
            end = now - days_ago * 86400
            tx.add_ledger("lab", None, "charge", hours, "gpu_hours", end - hours * 3600, end)


# ---------------------------------------------------------------------------- the server


@dataclass
class Served:
    url: str  # the printed URL, with its token
    base: str  # http://127.0.0.1:PORT
    proc: subprocess.Popen


@pytest.fixture(scope="session")
def served(dashboard: Dashboard):
    """`orch ui --port 0` on the dashboard home, as a user starts it; stopped by pid."""
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "ui", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
    try:
        line = proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+)/\?token=\S+", line)
        assert match, line + (proc.stdout.read() if proc.poll() is not None else "")
        yield Served(match.group(0), match.group(1), proc)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
