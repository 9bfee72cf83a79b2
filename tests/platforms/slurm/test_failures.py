"""Runs Slurm ends as the job's own failure, against a real slurmctld/slurmd: out of
memory (task/cgroup enforcing ``--mem``) and a batch script that fails before the runner."""

from __future__ import annotations

import pytest

from tests.conftest import submit
from tests.platforms.conftest import DONE, ssh_job, tick_until_state

from .test_platform import _slurm_jobs

# 300 MB against a 150 MB limit: the cgroup's OOM killer kills the job's python.
_HOG = "import time\nx = bytes([1]) * (300 << 20)\ntime.sleep(30)\n"

# The same, after making the runner the OOM killer's first choice (as root): the runner is
# killed before it can write result.json, as when a job's memory takes the node's down.
_HOG_KILLS_RUNNER = """\
import os
pid = os.getppid()
while pid > 1 and b"runner-" not in open(f"/proc/{pid}/cmdline", "rb").read():
    pid = int(next(l for l in open(f"/proc/{pid}/status") if l.startswith("PPid:")).split()[1])
open(f"/proc/{pid}/oom_score_adj", "w").write("1000")
""" + _HOG


@pytest.fixture
def memory_limits(cluster):
    if not cluster.memory_limits:
        pytest.skip("this machine's cgroup v1 memory controller cannot be written: the test cluster runs "
                    "task/none and cannot enforce --mem (OUT_OF_MEMORY is covered by test_jobstate's real lines)")


@pytest.mark.parametrize("script, runner_said", [(_HOG, "job exited with code"), (_HOG_KILLS_RUNNER, None)],
                         ids=["job-killed", "runner-killed"])
def test_a_job_over_its_memory_limit_fails_out_of_memory_and_is_not_retried(orch, config, slurm_platform, cluster,
                                                                           memory_limits, tmp_path, script,
                                                                           runner_said):
    config(platforms={"hpc": slurm_platform(memory="150M")})
    job_id = submit(orch, ssh_job(tmp_path / "j", script=script, platforms=("hpc",)))  # retries: 1
    job = tick_until_state(orch, job_id, DONE, timeout=90)
    assert job["state"] == "FAILED", job
    assert job["message"].startswith("out of memory (Slurm OUT_OF_MEMORY)"), job["message"]
    if runner_said:  # the runner saw its job killed and said so; Slurm says why
        assert runner_said in job["message"], job["message"]
    else:  # the runner was killed too: no result.json, and still a failure, not LOST
        assert job["message"] == "out of memory (Slurm OUT_OF_MEMORY)", job["message"]
    [attempt] = job["attempts_detail"]
    assert attempt["state"] == "FAILED", attempt
    assert [state for _, _, state in _slurm_jobs(cluster, job_id)] == ["OUT_OF_MEMORY"]


def test_a_batch_script_failing_before_the_runner_is_a_setup_failure_not_lost(orch, config, slurm_platform,
                                                                             cluster, tmp_path):
    config(platforms={"hpc": slurm_platform(modules=["orch-no-such-module/1.0"])})
    job_id = submit(orch, ssh_job(tmp_path / "j", platforms=("hpc",)))
    job = tick_until_state(orch, job_id, DONE, timeout=60)
    assert job["state"] == "FAILED", job
    assert "ended FAILED (exit 98:0): a `module load` failed" in job["message"], job["message"]
    assert len(job["attempts_detail"]) == 1
    assert [state for _, _, state in _slurm_jobs(cluster, job_id)] == ["FAILED"]
