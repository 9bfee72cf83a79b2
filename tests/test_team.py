"""Team mode: one queue on a real PostgreSQL server, several controllers at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from orchestrator.states import JobState
from tests.conftest import make_job, open_app, orch_process, submit, wait_until

state_backend = pytest.fixture(lambda: "postgres")

#: A controller process: ticks until every job is terminal (or the deadline passes).
CONTROLLER = textwrap.dedent("""\
    import sys, time
    from orchestrator.app import App
    from orchestrator.controller import Controller
    deadline = time.time() + float(sys.argv[1])
    while time.time() < deadline:
        app = App.open()
        try:
            Controller(app).tick()
            if all(j.state.terminal for j in app.store.jobs()):
                break
        finally:
            app.close()
        time.sleep(0.05)
""")


def start_controllers(n: int, timeout: float, env: dict | None = None) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", CONTROLLER, str(timeout)], env={**os.environ, **(env or {})},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]


def wait_all(procs: list[subprocess.Popen], timeout: float) -> None:
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = cur = 0
    for _, d in points:
        cur += d
        best = max(best, cur)
    return best


def run_log(path: Path) -> dict[str, list[tuple[str, float]]]:
    runs: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        job_id, what, at = line.split()
        runs[job_id].append((what, float(at)))
    return runs


TIMED = """\
name: timed
run: >-
  echo "$ORCH_JOB_ID start $(date +%s.%N)" >> {log};
  sleep {sleep};
  echo "$ORCH_JOB_ID end $(date +%s.%N)" >> {log}
resources: {resources}
"""


def test_three_controllers_run_thirty_jobs_exactly_once_within_every_limit(orch, orch_home, tmp_path, config):
    config("""\
        platforms:
          a: {type: local, max_concurrent: 2, gpu: none}
          b: {type: local, max_concurrent: 3, gpu: none}
        controller: {claim_batch: 2}
        """)
    log = tmp_path / "runs.log"
    path = make_job(tmp_path / "job", TIMED.format(log=log, sleep=0.3, resources="{max_runtime: 1m}"))
    job_ids = [submit(orch, path) for _ in range(30)]

    wait_all(start_controllers(3, timeout=150), timeout=180)

    app = open_app()
    try:
        platform_of = {}
        dispatchers = set()
        for job_id in job_ids:
            assert app.store.job(job_id).state == JobState.SUCCEEDED
            attempts = app.store.attempts_of(job_id)
            assert len(attempts) == 1
            platform_of[job_id] = attempts[0].platform
            dispatchers |= {e["actor"] for e in app.store.events_of(job_id) if e["to_state"] == "SUBMITTING"}
    finally:
        app.close()
    runs = run_log(log)
    assert sorted(runs) == sorted(job_ids)
    assert all([w for w, _ in r] == ["start", "end"] for r in runs.values()), "a job ran more than once"
    for name, limit in (("a", 2), ("b", 3)):
        spans = [(dict(r)["start"], dict(r)["end"]) for j, r in runs.items() if platform_of[j] == name]
        assert spans and max_overlap(spans) <= limit, f"platform {name} ran more than {limit} jobs at once"
    assert len(dispatchers) >= 2, "the work was not shared between controllers"


def test_quota_reservations_hold_across_controllers(orch, orch_home, tmp_path, config):
    # 1 GPU hour a week; each job reserves its 30-minute max_runtime: at most two at once.
    config("""\
        platforms:
          g: {type: local, max_concurrent: 10, gpu: T4, budget: {limit: 1, window: weekly}}
        controller: {claim_batch: 1}
        """)
    log = tmp_path / "runs.log"
    path = make_job(tmp_path / "job", TIMED.format(log=log, sleep=1.5, resources="{gpu: T4, max_runtime: 30m}"))
    job_ids = [submit(orch, path) for _ in range(6)]
    wait_all(start_controllers(3, timeout=120), timeout=150)
    runs = run_log(log)
    assert sorted(runs) == sorted(job_ids)
    spans = [(dict(r)["start"], dict(r)["end"]) for r in runs.values()]
    assert max_overlap(spans) <= 2


def test_a_controller_killed_while_holding_leases_is_finished_by_another(orch, orch_home, tmp_path, config):
    config("""\
        platforms:
          local: {type: local, max_concurrent: 4, gpu: none}
        controller: {lease_seconds: 3s, claim_batch: 8}
        """)
    log = tmp_path / "runs.log"
    path = make_job(tmp_path / "job", TIMED.format(log=log, sleep=0.1, resources="{max_runtime: 1m}"))
    job_ids = [submit(orch, path) for _ in range(4)]

    killed = orch_process("tick", env={"ORCH_CONTROLLER_ID": "alpha", "ORCH_FAILPOINTS": "after_intent"})
    assert killed.returncode == -signal.SIGKILL
    killed_at = time.time()

    def snapshot() -> dict:
        app = open_app()
        try:
            return {j: (app.store.job(j).state, [e["actor"] for e in app.store.events_of(j)]) for j in job_ids}
        finally:
            app.close()

    after_kill = snapshot()
    # alpha claimed the queue and wrote one attempt's intent before dying
    assert any(state == JobState.SUBMITTING for state, _ in after_kill.values())

    # beta cannot touch alpha's jobs while the leases last ...
    early = orch_process("tick", env={"ORCH_CONTROLLER_ID": "beta"})
    assert early.returncode == 0
    if time.time() - killed_at < 2.9:
        assert snapshot() == after_kill, "beta worked on jobs leased by alpha before the leases expired"
    # ... and finishes all of them once they expire

    def beta_ticked_to_the_end() -> bool:
        assert orch_process("tick", env={"ORCH_CONTROLLER_ID": "beta"}).returncode == 0
        app = open_app()
        try:
            return all(app.store.job(j).state.terminal for j in job_ids)
        finally:
            app.close()

    wait_until(beta_ticked_to_the_end, 60, "beta finished every job", interval=0.3)
    app = open_app()
    try:
        for j in job_ids:
            assert app.store.job(j).state == JobState.SUCCEEDED
            assert len(app.store.attempts_of(j)) == 1
            adopted = [e for e in app.store.events_of(j) if e["to_state"] in ("PENDING", "RUNNING")]
            assert adopted and all(e["actor"].startswith("beta") for e in adopted)
            assert all(e["at"] >= killed_at + 2.5 for e in adopted)
    finally:
        app.close()
    assert Counter(run_log(log)).keys() == set(job_ids)
    assert all(len(r) == 2 for r in run_log(log).values())


def test_another_member_dispatches_and_a_third_fetches_through_the_shared_store(orch, orch_home, tmp_path,
                                                                                 monkeypatch):
    """Submitted from laptop A, run by the cron box B, fetched on laptop C: three homes, one
    PostgreSQL queue; the bundle and the results travel through the database."""
    homes = {name: tmp_path / f"home-{name}" for name in "ABC"}
    for h in homes.values():
        h.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    (data / "numbers.txt").write_text("1 2 3 4\n")
    path = make_job(tmp_path / "job", f"""\
        name: shared
        run: python -c "import os; n=open(os.environ['ORCH_DATA']+'/numbers/numbers.txt').read().split(); open(os.environ['ORCH_OUTPUT_DIR']+'/sum.txt','w').write(str(sum(map(int,n))))"
        datasets: [{{path: {data}, name: numbers}}]
        """)
    monkeypatch.setenv("ORCH_HOME", str(homes["A"]))
    monkeypatch.setenv("ORCH_USER", "alice")
    job_id = submit(orch, path)
    monkeypatch.setenv("ORCH_HOME", str(homes["B"]))
    monkeypatch.setenv("ORCH_USER", "bob")
    # B is a cron box that runs everyone's jobs on its own machine (docs/operations.md, trust model).
    (homes["B"] / "config.yaml").write_text("platforms: {local: {type: local}}\nteam: {run_others_locally: true}\n")

    def ticked_to_the_end() -> bool:
        assert orch("tick").exit_code == 0
        return json.loads(orch("status", job_id, "--json").output)["state"] in ("SUCCEEDED", "FAILED", "LOST")

    wait_until(ticked_to_the_end, 60, f"job {job_id} finished", interval=0.2)
    status = json.loads(orch("status", job_id, "--json").output)
    assert status["state"] == "SUCCEEDED", status
    assert status["submitted_by"] == "alice"
    assert not (homes["B"] / "results").exists() or (homes["B"] / "results" / job_id).is_dir()

    monkeypatch.setenv("ORCH_HOME", str(homes["C"]))
    monkeypatch.setenv("ORCH_USER", "carol")
    out = tmp_path / "fetched-on-c"
    r = orch("fetch", job_id[:8], "-o", str(out))
    assert r.exit_code == 0, r.output
    assert (out / "outputs" / "sum.txt").read_text() == "10"
    assert (out / "result.json").is_file() and (out / "job.log").is_file()

    mine = json.loads(orch("status", "--mine", "--json").output)
    assert mine == []  # carol submitted nothing
    monkeypatch.setenv("ORCH_USER", "alice")
    assert [j["id"] for j in json.loads(orch("status", "--mine", "--json").output)] == [job_id]


def test_a_job_whose_secret_this_controller_lacks_waits_with_the_reason(orch, orch_home, tmp_path, monkeypatch):
    import socket

    monkeypatch.delenv("TEAM_TOKEN", raising=False)
    path = make_job(tmp_path / "job", "name: s\nsecrets: [TEAM_TOKEN]\nrun: echo\n")
    job_id = submit(orch, path)
    orch("tick")
    status = json.loads(orch("status", job_id, "--json").output)
    assert status["state"] == "QUEUED"
    assert "TEAM_TOKEN" in status["message"] and socket.gethostname() in status["message"]


def test_init_with_a_state_url_creates_the_schema(pg_url, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from orchestrator.cli import main
    from orchestrator.schema import SCHEMA_VERSION

    monkeypatch.setenv("ORCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ORCH_STATE_URL", raising=False)
    r = CliRunner().invoke(main, ["init", "--state", pg_url])
    assert r.exit_code == 0, r.output
    assert f"schema version {SCHEMA_VERSION}" in r.output
    assert f"state: \"{pg_url}\"" in (tmp_path / "home" / "config.yaml").read_text()
