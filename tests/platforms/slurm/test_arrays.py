"""A sweep's points as one ``sbatch --array`` on a real slurmctld/slurmd."""

from __future__ import annotations

from orchestrator.platforms.slurm import arrays, batch
from tests.conftest import make_job, orch_process, submitted, wait_until
from tests.platforms.conftest import DONE, job_state, tick_until_state

SWEEP = """\
name: grid
code: .
run: python work.py
platforms: [hpc]
retries: 1
resources:
  max_runtime: 5m
sweep:
  points: [{LR: "0.1"}, {LR: "0.01"}, {LR: "0.001"}]
"""


def _script(ledger) -> str:
    return ("import os, pathlib\n"
            f"with open({str(ledger)!r}, 'a') as f: f.write(os.environ['LR'] + ' ' + os.environ['SLURM_ARRAY_TASK_ID'] + '\\n')\n"
            "pathlib.Path(os.environ['ORCH_OUTPUT_DIR'], 'lr.txt').write_text(os.environ['LR'])\n")


def _arrays(cluster, job_ids) -> list[tuple[str, str, str]]:
    """The array tasks of this sweep (Slurm lists ended jobs for MinJobAge: earlier tests' too)."""
    return [j for j in cluster.jobs() if any(j[1].startswith(f"orch-array-o{i[:12]}-") for i in job_ids)]


def test_a_three_point_sweep_goes_as_one_array_one_task_per_attempt(orch, config, slurm_platform, cluster, tmp_path):
    config(platforms={"hpc": slurm_platform(max_concurrent=4)})
    doc = submitted(orch, make_job(tmp_path / "job", SWEEP, {"work.py": _script(tmp_path / "runs")}))
    orch("tick")
    tasks = _arrays(cluster, doc["jobs"])
    assert len({name for _, name, _ in tasks}) == 1 and len(tasks) >= 1, cluster.jobs()
    assert not [j for j in cluster.jobs() if j[1].startswith(tuple(f"orch-o{i[:12]}-" for i in doc["jobs"]))]
    for job_id in doc["jobs"]:
        job = tick_until_state(orch, job_id, DONE, timeout=90)
        assert job["state"] == "SUCCEEDED", job["message"]
    runs = sorted((tmp_path / "runs").read_text().split("\n")[:-1])
    assert runs == ["0.001 2", "0.01 1", "0.1 0"]  # each point once, as its own task id


def test_a_lost_array_sbatch_answer_is_adopted_and_never_submitted_twice(orch, config, slurm_platform, cluster,
                                                                         tmp_path):
    config(platforms={"hpc": slurm_platform(max_concurrent=4)})
    doc = submitted(orch, make_job(tmp_path / "job", SWEEP, {"work.py": _script(tmp_path / "runs")}))
    orch("tick")
    wait_until(lambda: _arrays(cluster, doc["jobs"]), 20)
    # As if the sbatch answer had been lost: the intent is there, the job ids are not.
    for recorded in (tmp_path / "remote").glob("attempts/*/slurm.jobid"):
        recorded.unlink()
    for job_id in doc["jobs"]:
        job = tick_until_state(orch, job_id, DONE, timeout=90)
        assert job["state"] == "SUCCEEDED", job["message"]
    assert len({name for _, name, _ in _arrays(cluster, doc["jobs"])}) == 1
    assert len((tmp_path / "runs").read_text().split("\n")[:-1]) == 3


def test_a_tick_killed_after_staging_leaves_points_that_the_next_tick_submits_once(orch, config, slurm_platform,
                                                                                  cluster, tmp_path):
    config(platforms={"hpc": slurm_platform(max_concurrent=4)})
    doc = submitted(orch, make_job(tmp_path / "job", SWEEP, {"work.py": _script(tmp_path / "runs")}))
    killed = orch_process("tick", env={"ORCH_FAILPOINTS": "after_submit"})
    assert killed.returncode == -9, killed.stderr
    assert not _arrays(cluster, doc["jobs"])  # staged only: the tick died before its end
    for job_id in doc["jobs"]:
        job = tick_until_state(orch, job_id, DONE, timeout=90)
        assert job["state"] == "SUCCEEDED", job["message"]
    assert len((tmp_path / "runs").read_text().split("\n")[:-1]) == 3
    assert all(job_state(orch, j)["attempts"] == 1 for j in doc["jobs"])


def test_an_array_sbatch_refuses_makes_its_points_lost_with_sbatch_s_words(orch, config, slurm_platform, cluster,
                                                                          tmp_path):
    config(platforms={"hpc": slurm_platform(max_concurrent=4, gres={"T4": "gpu:a100:1"})})  # no a100 here
    text = SWEEP.replace("retries: 1", "retries: 0").replace("  max_runtime: 5m", "  max_runtime: 5m\n  gpu: T4")
    doc = submitted(orch, make_job(tmp_path / "job", text, {"work.py": _script(tmp_path / "runs")}))
    orch("tick")
    for job_id in doc["jobs"]:
        job = tick_until_state(orch, job_id, DONE, timeout=30)
        assert job["state"] == "LOST", job
        assert "sbatch refused the sweep's array" in job["message"], job["message"]
    assert not (tmp_path / "runs").exists()


# What the login node lists for staged points (arrays.LIST): key, array name, task id, staged line.
def _listing(*rows) -> str:
    return "".join(f"point\t{k}\t{n}\t{i}\t{arrays.staged_line(o, order)}\n" for k, n, i, o, order in rows)


def test_staged_points_group_by_equal_options_in_sweep_order_and_named_ones_by_array():
    t1, t2 = ["--time=0-00:07:00", "--partition=gpu"], ["--time=0-01:02:00", "--partition=gpu"]
    text = _listing(("ob-1", "-", "-", t1, 2), ("oa-1", "-", "-", t1, 1), ("oc-1", "-", "-", t2, 0),
                    ("od-1", "orch-array-od-1", "1", t1, 4), ("oe-1", "orch-array-od-1", "0", t1, 3),
                    ("of-1", "-", "-", t1, 5))
    text += "point\tog-1\t-\t-\t{not json\npoint\toh-1\t-\t-\t{\"options\": [\"$(rm -rf ~)\"]}\n"
    points = arrays.parse_listing(text, {"oa-1", "ob-1", "oc-1", "od-1", "oe-1", "og-1", "oh-1"})
    named, fresh = arrays.groups(points)
    assert {n: [p.key for p in ps] for n, ps in named.items()} == {"orch-array-od-1": ["oe-1", "od-1"]}
    assert [[p.key for p in g] for g in fresh] == [["oa-1", "ob-1"], ["oc-1"]]  # of-1 is not active


def test_the_array_script_runs_each_task_s_own_batch_script():
    script = batch.array_script(["/scratch/me/attempts/oa-1", "/scratch/me/a b/ob-1"])
    assert "0) exec /scratch/me/attempts/oa-1/job.sbatch ;;" in script
    assert "1) exec '/scratch/me/a b/ob-1/job.sbatch' ;;" in script and script.rstrip().endswith("exit 97")
    argv = batch.array_argv(name="orch-array-oa-1", count=3, workdir="/w", resources=["--time=0-00:07:00"])
    assert "--array=0-2" in argv and "--no-requeue" in argv and argv[-1] == "/w/job.sbatch"


def test_an_array_task_records_itself_as_array_id_and_task_id():
    # `scontrol show job <id>` of the task that holds the array's own id lists every task
    # of the array (seen on the test cluster), so a task must never record its bare id.
    text = batch.script("/w", ["python3", "runner.py"], {}, [])
    assert 'id="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"' in text
