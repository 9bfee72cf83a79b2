"""The modal platform end to end through the CLI, with the unmodified ``modal`` client
against the gRPC stand-in (tests/emulators/modal_server.py): submit -> tick -> fetch,
the attempt key as the sandbox name, adoption after a crash, the dollar budget, and
the faults of issue 24. Nothing of orch is mocked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from grpclib.const import Status

from orchestrator.app import App
from tests.conftest import make_job, orch_process, submit, tick_until, wait_until

TRAIN = """\
import json, os
rows = open(os.path.join(os.environ["ORCH_DATA"], "train", "rows.csv")).read().splitlines()
print("training on", len(rows), "rows", flush=True)
open("model.txt", "w").write("weights for %d rows" % len(rows))
"""


def job(tmp_path: Path, name: str = "train", run: str = "python3 train.py", runtime: str = "10m") -> Path:
    return make_job(tmp_path / name, f"""\
        name: {name}
        run: {run}
        datasets: [{{path: data, name: train}}]
        outputs: [model.txt]
        resources: {{gpu: T4, max_runtime: {runtime}}}
        """, {"train.py": TRAIN, "data/rows.csv": "a\nb\nc\n"})


def state(orch, job_id: str) -> dict:
    rows = json.loads(orch("status", "--json").output)
    return next(r for r in rows if r["id"] == job_id)


def settled(job_id: str, timeout: float = 60):
    return tick_until(lambda app: app.store.job(job_id).state.terminal, timeout=timeout, interval=0.2,
                      what=f"job {job_id} finished")


def test_job_runs_end_to_end_on_a_sandbox_and_is_fetched(orch, modal_config, modal_standin, tmp_path):
    modal_config()
    job_id = submit(orch, job(tmp_path))
    assert orch("tick").exit_code == 0
    assert modal_standin.created == [modal_standin.created[0]]  # one sandbox, named by the attempt key
    settled(job_id)
    assert state(orch, job_id)["state"] == "SUCCEEDED", (state(orch, job_id), orch("logs", job_id).output)
    result = orch("fetch", job_id, "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "outputs" / "model.txt").read_text() == "weights for 3 rows"
    assert "training on 3 rows" in orch("logs", job_id).output
    # released: the attempt's files are gone, the shared bundle and data stay
    vol = next(iter(modal_standin.volumes.values()))
    root = modal_standin.volume_dir(vol)
    assert not list((root / "attempts").iterdir())
    assert list((root / "blobs").iterdir()) and list((root / "bundles").iterdir())
    assert modal_standin.unimplemented == []


def test_a_second_job_with_the_same_data_uploads_nothing_again(orch, modal_config, modal_standin, tmp_path):
    modal_config(max_concurrent=2)
    first = submit(orch, job(tmp_path, "one"))
    settled(first)
    puts = modal_standin.calls.count("VolumePutFiles2")
    second = submit(orch, job(tmp_path, "two", run="python3 train.py --again"))
    settled(second)
    assert state(orch, second)["state"] == "SUCCEEDED"
    # only the new bundle went up (blocks of the runner and the dataset were known)
    assert modal_standin.calls.count("VolumePutFiles2") - puts <= 2
    assert modal_standin.builds == 1  # the unchanged image was not rebuilt


def attempt(job_id: str) -> dict:
    from tests.conftest import open_app
    app = open_app()
    try:
        att = app.store.attempts_of(job_id)[-1]
        return {"state": att.state.value, "message": att.message or ""}
    finally:
        app.close()


def test_a_create_whose_answer_is_lost_starts_no_second_sandbox(orch, modal_config, modal_standin, tmp_path):
    modal_config()
    modal_standin.drop_create_answer = 1  # the client retries; the name is taken by then
    # A real sandbox boots for seconds, so the client's retry finds it running; the stand-in
    # starts at once, so the job runs a little longer than the retry takes to arrive.
    job_id = submit(orch, job(tmp_path, run="sleep 3; python3 train.py"))
    settled(job_id)
    assert state(orch, job_id)["state"] == "SUCCEEDED"
    assert len(modal_standin.created) == 1 and len(modal_standin.sandboxes) == 1


@pytest.mark.parametrize("ended", [False, True], ids=["still-running", "already-ended"])
def test_a_controller_killed_mid_submit_adopts_the_sandbox_on_the_next_tick(orch, modal_config, modal_standin,
                                                                             tmp_path, ended):
    modal_config()
    job_id = submit(orch, job(tmp_path, run="python3 train.py" if ended else "sleep 2; python3 train.py"))
    crashed = orch_process("tick", env={"ORCH_FAILPOINTS": "after_submit"})
    assert crashed.returncode == -9, crashed.stderr
    assert len(modal_standin.created) == 1  # it ran before the controller died
    if ended:  # names are unique among running sandboxes only: the volume tells
        wait_until(lambda: not modal_standin.running(), what="sandbox ended")
    settled(job_id)
    assert state(orch, job_id)["state"] == "SUCCEEDED"
    assert len(modal_standin.created) == 1  # adopted by name, not started again


def test_a_one_dollar_budget_keeps_a_seven_hour_t4_job_waiting_and_plan_says_why(orch, modal_config, modal_standin,
                                                                                  tmp_path):
    modal_config(budget=1)
    job_id = submit(orch, job(tmp_path, runtime="7h"))
    result = orch("tick")
    assert result.exit_code == 0, result.output
    assert modal_standin.created == []
    plan = json.loads(orch("plan", "--json").output)
    assert plan[0]["id"] == job_id and plan[0]["platform"] is None
    assert "cloud: $1.00 left" in plan[0]["reason"] and "job needs $4.13" in plan[0]["reason"], plan[0]["reason"]
    quota = orch("quota")
    assert "cloud: $1.00 left is about 1.7 h T4, 1.2 h L4" in quota.output, quota.output


def test_a_stalled_read_leaves_the_attempt_unknown_and_other_jobs_moving(orch, config, modal_standin, tmp_path):
    config(platforms={"cloud": {"type": "modal", "call_deadline": "2s"},
                      "laptop": {"type": "local", "gpu": "none"}})
    modal_job = submit(orch, job(tmp_path, run="sleep 3; python3 train.py"), "--platform", "cloud")
    tick_until(lambda app: app.store.attempts_of(modal_job) and app.store.attempts_of(modal_job)[-1].state.value
               in ("PENDING", "RUNNING"), what="modal attempt started")
    modal_standin.stall("VolumeGetFile2", times=1)
    modal_standin.fail("VolumeGetFile2", Status.UNAVAILABLE, times=8)
    local_job = submit(orch, make_job(tmp_path / "cpu", "name: cpu\nrun: echo hi\n"), "--platform", "laptop")
    result = orch("tick")
    assert result.exit_code == 0 and "Traceback" not in result.output
    assert attempt(modal_job)["state"] == "UNKNOWN", attempt(modal_job)
    assert "no answer within 2s" in attempt(modal_job)["message"] or "Modal" in attempt(modal_job)["message"]
    settled(local_job)
    assert state(orch, local_job)["state"] == "SUCCEEDED"
    settled(modal_job)
    assert state(orch, modal_job)["state"] == "SUCCEEDED"


def test_deadline_exceeded_on_create_keeps_the_submit_for_the_next_tick(orch, modal_config, modal_standin, tmp_path):
    modal_config()
    modal_standin.fail("SandboxCreate", Status.DEADLINE_EXCEEDED, times=4)  # past the client's 3 retries
    job_id = submit(orch, job(tmp_path))
    result = orch("tick")
    assert result.exit_code == 0 and "Traceback" not in result.output
    assert modal_standin.created == [] and state(orch, job_id)["state"] in ("SUBMITTING", "QUEUED")
    settled(job_id)
    assert state(orch, job_id)["state"] == "SUCCEEDED" and len(modal_standin.created) == 1


@pytest.mark.parametrize("how, words", [("timeout", "timeout"), ("preempt", "preempted")])
def test_a_sandbox_ended_without_a_result_is_lost_never_failed(orch, modal_config, modal_standin, tmp_path,
                                                               how, words):
    modal_config()
    modal_standin.end_next = how
    job_id = submit(orch, job(tmp_path, run="sleep 30"))
    tick_until(lambda app: any(a.state.value == "LOST" for a in app.store.attempts_of(job_id)), timeout=30,
               what="attempt lost")
    from tests.conftest import open_app
    app = open_app()
    try:
        lost = next(a for a in app.store.attempts_of(job_id) if a.state.value == "LOST")
        assert words in (lost.message or ""), lost.message
        assert app.store.job(job_id).state.value not in ("FAILED", "SUCCEEDED")
    finally:
        app.close()


def test_an_image_build_failure_ends_the_attempt_with_the_reason(orch, modal_config, modal_standin, tmp_path):
    modal_config()
    modal_standin.build_fails = True
    job_id = submit(orch, job(tmp_path))
    result = orch("tick")
    assert result.exit_code == 0 and "Traceback" not in result.output
    att = attempt(job_id)
    assert att["state"] in ("REJECTED", "LOST") and "image build failed" in att["message"], att
    assert modal_standin.created == []


def test_a_rejected_token_makes_the_platform_unavailable_not_the_job_failed(orch, modal_config, modal_standin,
                                                                            tmp_path):
    modal_config()
    modal_standin.reject_tokens = True
    job_id = submit(orch, job(tmp_path))
    result = orch("tick")
    assert result.exit_code == 0 and "Traceback" not in result.output
    assert state(orch, job_id)["state"] == "QUEUED"
    assert "modal token new" in attempt(job_id)["message"]
    plan = json.loads(orch("plan", "--json").output)
    assert "modal token new" in plan[0]["reason"], plan[0]
    app = App.open()
    try:
        assert "modal token new" in (app.platform("cloud").refused_login() or "")  # told as login.expiring
    finally:
        app.close()


def test_a_refused_billing_read_falls_back_to_the_ledger(orch, modal_config, modal_standin, tmp_path):
    modal_config()
    modal_standin.billing_refused = True
    job_id = submit(orch, job(tmp_path))
    settled(job_id)
    assert state(orch, job_id)["state"] == "SUCCEEDED"
    assert "WorkspaceBillingSummary" in modal_standin.calls
    doc = json.loads(orch("quota", "--json").output)[0]
    assert doc["limit"] == 30.0


def test_live_spend_from_billing_keeps_a_job_that_would_overrun_the_credit_waiting(orch, modal_config, modal_standin,
                                                                                    tmp_path):
    modal_config()  # the default budget: the Starter plan's $30
    modal_standin.spend = 29.8  # spent this month, some of it outside orch
    job_id = submit(orch, job(tmp_path, runtime="1h"))
    assert orch("tick").exit_code == 0
    assert modal_standin.created == [] and "WorkspaceBillingSummary" in modal_standin.calls
    plan = json.loads(orch("plan", "--json").output)
    assert plan[0]["id"] == job_id and "cloud: $0.20 left this month, job needs $0.59" in plan[0]["reason"]


@pytest.mark.parametrize("gpu", ["T4", "none"])  # V1 and V2 sandboxes carry secrets differently
def test_secrets_reach_the_job_through_the_sandbox_env_and_never_the_volume(orch, modal_config, modal_standin,
                                                                            tmp_path, monkeypatch, gpu):
    modal_config()
    monkeypatch.setenv("API_TOKEN", "s3cr3t-value-1234")
    path = make_job(tmp_path / "sec", f"""\
        name: sec
        run: python3 -c "import os; print('token length', len(os.environ['API_TOKEN']))"
        secrets: [API_TOKEN]
        resources: {{gpu: {gpu}, max_runtime: 5m}}
        """)
    job_id = submit(orch, path)
    settled(job_id)
    assert state(orch, job_id)["state"] == "SUCCEEDED"
    assert "token length 17" in orch("logs", job_id).output
    for f in modal_standin.root.rglob("*"):
        if f.is_file():
            assert b"s3cr3t-value-1234" not in f.read_bytes(), f


def test_cancel_terminates_the_sandbox(orch, modal_config, modal_standin, tmp_path):
    modal_config()
    job_id = submit(orch, job(tmp_path, run="sleep 60"))
    tick_until(lambda app: app.store.attempts_of(job_id)[-1].state.value == "RUNNING", what="running")
    result = orch("cancel", job_id)
    assert result.exit_code == 0, result.output
    sb, = modal_standin.sandboxes.values()
    assert sb.result is not None and sb.proc.poll() is not None


def test_a_client_outside_the_tested_range_makes_the_platform_unavailable_with_the_fix(orch, modal_config,
                                                                                       modal_standin, tmp_path,
                                                                                       monkeypatch):
    import modal
    monkeypatch.setattr(modal, "__version__", "2.1.0")
    modal_config()
    job_id = submit(orch, job(tmp_path))
    assert orch("tick").exit_code == 0
    assert state(orch, job_id)["state"] == "QUEUED" and modal_standin.calls == []
    plan = json.loads(orch("plan", "--json").output)
    assert "modal client 2.1.0 is outside the tested range >=1.6,<2" in plan[0]["reason"], plan[0]
    assert "pip install 'orch[modal]'" in plan[0]["reason"]


def test_a_job_without_a_gpu_gets_a_cpu_sandbox_priced_at_modals_cpu_and_memory_rate(orch, modal_config,
                                                                                      modal_standin, tmp_path):
    modal_config(budget=1, cpu=2, memory=4096)  # 2 cores + 4 GiB: $0.1263 an hour
    cpu_job = lambda name, runtime: make_job(tmp_path / name, f"""\
        name: {name}
        run: python3 -c "print('no gpu here')"
        resources: {{gpu: none, max_runtime: {runtime}}}
        """)
    too_long = submit(orch, cpu_job("long", "10h"))  # $1.26: more than the budget
    assert orch("tick").exit_code == 0
    assert modal_standin.created == []
    plan = json.loads(orch("plan", "--json").output)
    assert "cloud: $1.00 left" in plan[0]["reason"] and "job needs $1.26" in plan[0]["reason"], plan[0]["reason"]
    assert orch("cancel", too_long).exit_code == 0
    job_id = submit(orch, cpu_job("short", "5h"))  # $0.63
    settled(job_id)
    assert state(orch, job_id)["state"] == "SUCCEEDED", orch("logs", job_id).output
    assert "no gpu here" in orch("logs", job_id).output
    sb, = modal_standin.sandboxes.values()
    res = modal_standin.resources[sb.id]
    assert not res.HasField("gpu_config") or not res.gpu_config.count, res
    assert (res.milli_cpu, res.milli_cpu_max, res.memory_mb, res.memory_mb_max) == (2000, 2000, 4096, 4096)
    assert "SandboxCreateV2" in modal_standin.calls  # the client's path for a sandbox without a GPU
    quota = orch("quota")
    assert "h CPU" in quota.output, quota.output
