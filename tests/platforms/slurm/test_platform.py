"""The slurm platform end to end through the CLI, against a real slurmctld/slurmd."""

from __future__ import annotations

from tests.conftest import submit
from tests.platforms.conftest import DONE, outputs, ssh_job, tick_until_state


def test_a_job_runs_through_sbatch_on_the_cluster_and_its_outputs_come_back(orch, config, slurm_platform, cluster, tmp_path):
    config(platforms={"hpc": slurm_platform()})
    job_id = submit(orch, ssh_job(tmp_path / "j", dataset=b"data" * 1000, platforms=("hpc",)))
    job = tick_until_state(orch, job_id, DONE, timeout=60)
    assert job["state"] == "SUCCEEDED", job["message"]
    assert outputs(orch, job_id, tmp_path / "out")["digest.txt"]
    names = [name for _, name, _ in cluster.jobs()]
    assert len([n for n in names if n.startswith("orch-")]) == 1, names
