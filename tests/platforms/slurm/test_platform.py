"""The slurm platform end to end through the CLI, against a real slurmctld/slurmd."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import make_job, orch_process, submit, wait_until
from tests.emulators.slurm import NODE
from tests.platforms.conftest import DONE, fetched, job_state, outputs, ssh_job, tick_until_state

REPO = Path(__file__).resolve().parents[3]


def test_a_job_runs_through_sbatch_on_the_cluster_and_its_outputs_come_back(orch, config, slurm_platform, cluster, tmp_path):
    config(platforms={"hpc": slurm_platform()})
    job_id = submit(orch, ssh_job(tmp_path / "j", dataset=b"data" * 1000, platforms=("hpc",)))
    job = tick_until_state(orch, job_id, DONE, timeout=60)
    assert job["state"] == "SUCCEEDED", job["message"]
    assert outputs(orch, job_id, tmp_path / "out")["digest.txt"]
    assert [state for _, _, state in _slurm_jobs(cluster, job_id)] == ["COMPLETED"]
    assert "job demo sees" in orch("logs", job_id).output
    listing = orch("platforms")
    assert listing.exit_code == 0 and "hpc" in listing.output, listing.output


def test_a_job_sbatch_refuses_goes_back_to_the_queue_with_sbatch_s_words(orch, config, slurm_platform, tmp_path):
    config(platforms={"hpc": slurm_platform(gres={"T4": "gpu:a100:1"})})  # the cluster has no a100
    job_id = submit(orch, ssh_job(tmp_path / "j", platforms=("hpc",), extra=GPU_JOB))
    orch("tick")
    job = job_state(orch, job_id)
    assert job["state"] == "QUEUED", job
    assert "sbatch refused the job" in job["message"], job["message"]


# A job on the cluster's one (fake) GPU, with a script that records each run in `ledger`.
GPU_JOB = "  gpu: T4\n"


def _counting_script(ledger, seconds: float = 0.0) -> str:
    return ("import os, pathlib, time\n"
            f"with open({str(ledger)!r}, 'a') as f: f.write(os.environ['ORCH_ATTEMPT'] + '\\n')\n"
            f"time.sleep({seconds})\n"
            "pathlib.Path(os.environ['ORCH_OUTPUT_DIR'], 'done.txt').write_text('ok')\n")


def _hold_the_gpu(cluster) -> str:
    """Another user's job holding the only GPU (submitted straight to Slurm)."""
    result = cluster.client("sbatch", "--parsable", "--job-name=someone-else", "--gres=gpu:t4:1",
                            "--output=/dev/null", "--wrap", "sleep 300")
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    wait_until(lambda: cluster.client("squeue", "-h", "-j", job_id, "-o", "%T").stdout.strip() == "RUNNING", 20)
    return job_id


def _slurm_jobs(cluster, job_id: str) -> list[tuple[str, str, str]]:
    """(id, name, state) of the Slurm jobs of orch job ``job_id`` (named by attempt key)."""
    return [j for j in cluster.jobs() if j[1].startswith(f"orch-o{job_id[:12]}-")]


def test_a_job_pending_on_resources_shows_the_reason_in_status_and_plan_then_runs(orch, config, slurm_platform,
                                                                                   cluster, tmp_path):
    blocker = _hold_the_gpu(cluster)
    config(platforms={"hpc": slurm_platform()})
    job_id = submit(orch, ssh_job(tmp_path / "j", script=_counting_script(tmp_path / "runs"), platforms=("hpc",),
                                  extra=GPU_JOB))
    tick_until_state(orch, job_id, {"PENDING"}, timeout=30)

    def reason_shown():  # slurmctld gives a reason once its scheduler has looked at the job
        orch("tick")
        return "Resources" in job_state(orch, job_id)["message"]

    wait_until(reason_shown, 20, interval=0.5)
    job = job_state(orch, job_id)
    assert job["state"] == "PENDING" and "in use" in job["message"], job["message"]
    plan = orch("plan")
    assert plan.exit_code == 0 and "queued on hpc" in plan.output and "Resources" in plan.output, plan.output

    cluster.client("scancel", blocker)
    job = tick_until_state(orch, job_id, DONE, timeout=60)
    assert job["state"] == "SUCCEEDED", job["message"]
    assert (tmp_path / "runs").read_text() == "1\n"


def test_scancel_from_outside_orch_is_lost_with_the_reason_not_cancelled(orch, config, slurm_platform, cluster,
                                                                         tmp_path):
    config(platforms={"hpc": slurm_platform()})
    job_id = submit(orch, ssh_job(tmp_path / "j", script=_counting_script(tmp_path / "runs", 60),
                                  platforms=("hpc",), extra="retries: 0\n"))
    tick_until_state(orch, job_id, {"RUNNING"}, timeout=30)
    [(slurm_id, _, _)] = _slurm_jobs(cluster, job_id)
    assert cluster.client("scancel", slurm_id).returncode == 0
    job = tick_until_state(orch, job_id, DONE, timeout=30)
    assert job["state"] == "LOST", job
    assert "cancelled outside orch" in job["message"], job["message"]


def test_orch_cancel_stops_the_slurm_job_and_is_cancelled(orch, config, slurm_platform, cluster, tmp_path):
    config(platforms={"hpc": slurm_platform()})
    job_id = submit(orch, ssh_job(tmp_path / "j", script=_counting_script(tmp_path / "runs", 60), platforms=("hpc",)))
    tick_until_state(orch, job_id, {"RUNNING"}, timeout=30)
    assert orch("cancel", job_id).exit_code == 0
    assert job_state(orch, job_id)["state"] == "CANCELLED"
    wait_until(lambda: all(state == "CANCELLED" for _, _, state in _slurm_jobs(cluster, job_id)), 20)


def test_a_node_set_down_is_node_fail_and_the_job_is_retried(orch, config, slurm_platform, cluster, tmp_path):
    config(platforms={"hpc": slurm_platform()})
    job_id = submit(orch, ssh_job(tmp_path / "j", script=_counting_script(tmp_path / "runs", 60), platforms=("hpc",)))
    tick_until_state(orch, job_id, {"RUNNING"}, timeout=30)
    assert cluster.client("scontrol", "update", f"nodename={NODE}", "state=down", "reason=orch-test").returncode == 0
    job = tick_until_state(orch, job_id, {"QUEUED"}, timeout=30)
    [attempt] = job["attempts_detail"]
    assert attempt["state"] == "LOST" and "NODE_FAIL" in attempt["message"], attempt


def test_slurmctld_down_mid_run_is_unknown_then_the_job_completes_once(orch, config, slurm_platform, cluster,
                                                                       tmp_path):
    config(platforms={"hpc": slurm_platform()})
    # Long enough to outlive a status read against a stopped slurmctld (scontrol gives
    # up after its MessageTimeout, and the attempt directory is read after Slurm).
    job_id = submit(orch, ssh_job(tmp_path / "j", script=_counting_script(tmp_path / "runs", 15), platforms=("hpc",)))
    tick_until_state(orch, job_id, {"RUNNING"}, timeout=30)
    cluster.stop_controller()
    try:
        job = tick_until_state(orch, job_id, {"UNKNOWN"}, timeout=30)
        assert "Slurm did not answer" in job["message"], job["message"]
        # the job ends meanwhile on the node; slurmd cannot tell anyone
        wait_until(lambda: list((tmp_path / "remote").glob("attempts/*/rc")), 40)
    finally:
        cluster.start_controller()
    job = tick_until_state(orch, job_id, DONE, timeout=60)
    assert job["state"] == "SUCCEEDED", job["message"]
    assert (tmp_path / "runs").read_text() == "1\n"
    assert len(_slurm_jobs(cluster, job_id)) == 1


def test_a_lost_sbatch_answer_is_adopted_by_name_and_never_submitted_twice(orch, config, slurm_platform, cluster,
                                                                           tmp_path):
    blocker = _hold_the_gpu(cluster)  # so the job is still queued, not started, when the tick dies
    config(platforms={"hpc": slurm_platform()})
    job_id = submit(orch, ssh_job(tmp_path / "j", script=_counting_script(tmp_path / "runs"), platforms=("hpc",),
                                  extra=GPU_JOB))
    assert orch_process("tick", env={"ORCH_FAILPOINTS": "after_submit"}).returncode == -9
    # The answer was lost before orch wrote the job id down: only Slurm knows the job.
    for recorded in (tmp_path / "remote").glob("attempts/*/slurm.jobid"):
        recorded.unlink()
    assert len(_slurm_jobs(cluster, job_id)) == 1
    orch("tick")
    assert len(_slurm_jobs(cluster, job_id)) == 1
    cluster.client("scancel", blocker)
    job = tick_until_state(orch, job_id, DONE, timeout=60)
    assert job["state"] == "SUCCEEDED", job["message"]
    assert len(_slurm_jobs(cluster, job_id)) == 1 and (tmp_path / "runs").read_text() == "1\n"


CHAIN_JOB = """\
name: chain
run: python train.py
checkpoint: ckpt
grace: 1s
platforms: [hpc]
env:
  STEPS: "15"
  STEP_SECONDS: "0.02"
  STEPS_PER_SESSION: "10"   # the first segment idles after 10 steps until its time is up
resources:
  max_runtime: 2m
"""


def test_a_job_longer_than_the_time_limit_runs_as_a_chain_of_slurm_jobs(orch, config, slurm_platform, cluster,
                                                                         tmp_path):
    config(platforms={"hpc": slurm_platform(time_limit="12s", min_segment="3s")})
    code = tmp_path / "job"
    shutil.copytree(REPO / "jobs" / "chain-demo", code)
    job_id = submit(orch, make_job(code, CHAIN_JOB))
    job = tick_until_state(orch, job_id, DONE, timeout=90)
    assert job["state"] == "SUCCEEDED", job["message"]
    assert [a["state"] for a in job["attempts_detail"]] == ["CHECKPOINTED", "SUCCEEDED"]
    assert [s for _, _, s in _slurm_jobs(cluster, job_id)] == ["COMPLETED", "COMPLETED"]
    model = json.loads((fetched(orch, job_id, tmp_path / "out") / "outputs" / "model.json").read_text())
    assert [(s["from"], s["to"]) for s in model["segments"]] == [(0, 10), (10, 15)]


def test_with_slurmctld_down_nothing_is_submitted_until_squeue_answers_then_once(orch, config, slurm_platform,
                                                                                 cluster, tmp_path):
    config(platforms={"hpc": slurm_platform()})
    job_id = submit(orch, ssh_job(tmp_path / "j", script=_counting_script(tmp_path / "runs"), platforms=("hpc",)))
    cluster.stop_controller()
    try:
        orch("tick")
        job = job_state(orch, job_id)
        assert job["state"] == "SUBMITTING" and "cannot list Slurm jobs" in job["message"], job
        assert not list((tmp_path / "remote").glob("attempts/*/job.sbatch"))  # sbatch never ran
    finally:
        cluster.start_controller()
    job = tick_until_state(orch, job_id, DONE, timeout=60)
    assert job["state"] == "SUCCEEDED", job["message"]
    assert len(_slurm_jobs(cluster, job_id)) == 1 and (tmp_path / "runs").read_text() == "1\n"
