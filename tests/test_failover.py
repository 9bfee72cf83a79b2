"""Failover: a platform that loses an attempt is avoided for that job and the job moves on;
precheck failures are never retried; the job's own failures only with retries_on_error."""

from __future__ import annotations

import json
import shutil

from orchestrator.states import AttemptState, JobState
from tests.conftest import make_job, open_app, submit, tick_until

TWO = """\
platforms:
  first: {type: local}
  second: {type: local}
controller: {failover_backoff: 1h, grace: 1s}
"""

# The first attempt kills its own runner, as a reclaimed session would: no result.json.
LOSES_FIRST = """\
name: fragile
run: |
  if [ "$ORCH_ATTEMPT" = 1 ]; then kill -9 $PPID; sleep 5; exit 1; fi
  echo "ran attempt $ORCH_ATTEMPT" > $ORCH_OUTPUT_DIR/where.txt
"""


def test_a_lost_attempt_fails_over_to_the_second_platform_and_avoids_the_first(orch, orch_home, tmp_path, config):
    config(TWO)
    path = make_job(tmp_path / "job", LOSES_FIRST)
    job_id = submit(orch, path)

    app = tick_until(lambda app: app.store.job(job_id).state.terminal, timeout=60)

    job = app.store.job(job_id)
    attempts = app.store.attempts_of(job_id)
    assert job.state == JobState.SUCCEEDED
    assert [(a.platform, a.state) for a in attempts] == [("first", AttemptState.LOST), ("second", AttemptState.SUCCEEDED)]
    assert "without writing result.json" in attempts[0].message
    assert job.lost_count == 1 and job.avoid["first"] > attempts[0].ended_at + 3000
    app.close()
    out = tmp_path / "out"
    assert orch("fetch", job_id, "-o", str(out)).exit_code == 0
    assert (out / "outputs" / "where.txt").read_text() == "ran attempt 2\n"


def test_the_avoided_platform_is_explained_and_used_again_by_other_jobs(orch, orch_home, tmp_path, config):
    config("platforms:\n  first: {type: local}\ncontroller: {failover_backoff: 1h}\n")
    path = make_job(tmp_path / "job", LOSES_FIRST)
    job_id = submit(orch, path)
    tick_until(lambda app: app.store.job(job_id).state == JobState.QUEUED and app.store.job(job_id).attempts == 1,
               timeout=60)
    plan = json.loads(orch("plan", "--json").output)
    assert plan[0]["platform"] is None
    assert "first: lost an attempt of this job; avoided for 59m" in plan[0]["reason"] \
        or "first: lost an attempt of this job; avoided for 1h00m" in plan[0]["reason"]
    assert plan[0]["until"] is not None
    other = make_job(tmp_path / "other", "name: other\nrun: echo ok\n")
    other_id = submit(orch, other)
    doc = json.loads(orch("plan", "--json").output)[1]
    assert doc["id"] == other_id and doc["platform"] == "first"


def test_a_platform_out_of_quota_sends_the_job_to_the_next_one(orch, orch_home, tmp_path, config):
    config("""\
        platforms:
          kag: {type: local, gpu: T4, budget: {limit: 0.5, per_gpu: false, window: none}}
          lab: {type: local, gpu: T4}
        """)
    path = make_job(tmp_path / "job", "name: g\nrun: echo ok\nresources: {gpu: T4, max_runtime: 1h}\n")
    job_id = submit(orch, path)
    plan = json.loads(orch("plan", "--json").output)[0]
    assert plan["platform"] == "lab"
    assert plan["verdicts"]["kag"] == "0.5 GPU h left, job needs 1.0 GPU h"
    app = tick_until(lambda app: app.store.job(job_id).state.terminal)
    assert [a.platform for a in app.store.attempts_of(job_id)] == ["lab"]
    app.close()


def test_a_precheck_failure_is_never_retried(orch, orch_home, tmp_path, config):
    config(TWO)
    path = make_job(tmp_path / "job", "name: p\nrun: echo ok\n")
    job_id = submit(orch, path)
    shutil.rmtree(orch_home / "bundles")  # what a wiped cache looks like to submit()
    app = tick_until(lambda app: app.store.job(job_id).state.terminal, timeout=30)
    job = app.store.job(job_id)
    attempts = app.store.attempts_of(job_id)
    assert job.state == JobState.FAILED and "resubmit the job" in job.message
    assert [a.state for a in attempts] == [AttemptState.REJECTED]
    for _ in range(3):  # more ticks change nothing
        orch("tick")
    assert len(app.store.attempts_of(job_id)) == 1
    app.close()


def test_a_failing_job_is_not_retried_elsewhere_without_retries_on_error(orch, orch_home, tmp_path, config):
    config(TWO)
    path = make_job(tmp_path / "job", "name: bad\nrun: exit 4\n")
    job_id = submit(orch, path)
    app = tick_until(lambda app: app.store.job(job_id).state.terminal)
    job = app.store.job(job_id)
    assert job.state == JobState.FAILED and job.avoid == {}
    assert [(a.platform, a.state, a.exit_code) for a in app.store.attempts_of(job_id)] == \
        [("first", AttemptState.FAILED, 4)]
    app.close()
    app = open_app()
    assert app.store.queued() == []
    app.close()
