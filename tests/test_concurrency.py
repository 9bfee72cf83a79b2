"""Ten `orch tick` processes at once over twenty queued jobs: exactly one run per attempt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter

from orchestrator.states import JobState
from tests.conftest import backends, make_job, open_app, submit

#: The core end-to-end suite must pass on PostgreSQL (team mode) as well as SQLite.
state_backend = backends


def test_ten_concurrent_ticks_run_each_attempt_exactly_once(orch, orch_home, tmp_path, config):
    config("platforms:\n  local: {type: local, max_concurrent: 20}\n")
    runs = tmp_path / "runs.log"
    path = make_job(tmp_path / "job", f"""\
        name: crowd
        run: echo "$ORCH_JOB_ID $ORCH_ATTEMPT" >> {runs}
        """)
    job_ids = [submit(orch, path) for _ in range(20)]

    deadline = time.time() + 120
    waves = 0
    while time.time() < deadline:
        procs = [subprocess.Popen([sys.executable, "-m", "orchestrator", "tick", "--json"], env=os.environ.copy(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(10)]
        outs = [p.communicate(timeout=60) for p in procs]
        assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
        [json.loads(o[0]) for o in outs]  # every tick reports
        waves += 1
        app = open_app()
        try:
            if all(app.store.job(j).state.terminal for j in job_ids):
                break
        finally:
            app.close()
        time.sleep(0.2)

    app = open_app()
    try:
        states = Counter(app.store.job(j).state for j in job_ids)
        assert states == Counter({JobState.SUCCEEDED: 20})
        for j in job_ids:
            assert len(app.store.attempts_of(j)) == 1
    finally:
        app.close()
    lines = Counter(runs.read_text().splitlines())
    assert len(lines) == 20 and set(lines.values()) == {1}


def test_cas_refuses_a_second_move_from_the_same_state(orch_home):
    from orchestrator.store import Conflict

    app = open_app()
    try:
        job_id = app.store.add_job(name="x", spec={"run": "true"}, bundle="0" * 64)
        with app.store.transaction() as tx:
            tx.move_job(job_id, JobState.QUEUED, JobState.SUBMITTING)
        try:
            with app.store.transaction() as tx:
                tx.move_job(job_id, JobState.QUEUED, JobState.SUBMITTING)
                raise AssertionError("second CAS succeeded")
        except Conflict:
            pass
        events = [(e["from_state"], e["to_state"]) for e in app.store.events_of(job_id)]
        assert events == [(None, "QUEUED"), ("QUEUED", "SUBMITTING")]
    finally:
        app.close()
