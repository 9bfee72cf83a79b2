"""What Slurm's answers mean for an attempt (pure: no cluster needed)."""

from __future__ import annotations

import pytest

from orchestrator.platforms.base import RemoteState
from orchestrator.platforms.slurm import batch, jobstate
from orchestrator.platforms.slurm.jobstate import SlurmJob, interpret

# A real `scontrol -o show job` line of the test cluster (trimmed).
SCONTROL = ("JobId=7 JobName=orch-oabc-1 UserId=root(0) GroupId=root(0) Priority=4294901754 JobState=PENDING "
            "Reason=QOSMaxGRESPerUser Dependency=(null) ExitCode=0:0 RunTime=00:00:00 TimeLimit=00:02:00 "
            "Comment=orch:oabc-1 Command=/home/me/.orch/attempts/oabc-1/job.sbatch")


def _status(state: str, reason: str = "", **kw):
    args = dict(answered=True, error="", has_result=False, has_rc=False, cancelled_by_orch=False)
    args.update(kw)
    return interpret(SlurmJob("7", state, reason), **args)


def test_scontrol_line_is_parsed_and_a_pending_reason_reads_as_words():
    job = jobstate.parse_scontrol(SCONTROL)
    assert (job.job_id, job.state, job.reason) == ("7", "PENDING", "QOSMaxGRESPerUser")
    status = interpret(job, answered=True, error="", has_result=False, has_rc=False, cancelled_by_orch=False)
    assert status.state == RemoteState.PENDING
    assert status.message == "queued on the cluster (QOSMaxGRESPerUser): your QOS allows no more GPUs at once"


def test_sacct_line_with_cancelled_by_uid_is_parsed():
    job = jobstate.parse_sacct("7|CANCELLED by 1000|None|0:15")
    assert (job.state, job.reason, job.exit_code) == ("CANCELLED", "", "0:15")


@pytest.mark.parametrize("state", ["PREEMPTED", "NODE_FAIL", "BOOT_FAIL"])
def test_slurm_taking_the_run_away_is_lost_even_when_the_runner_wrote_a_result(state):
    status = _status(state, has_result=True)
    assert status.state == RemoteState.LOST and state in status.message


def test_a_scancel_from_outside_is_lost_and_an_orch_cancel_is_not():
    assert _status("CANCELLED", has_result=True).state == RemoteState.LOST
    assert _status("CANCELLED", has_result=True, cancelled_by_orch=True).state == RemoteState.EXITED


def test_timeout_is_lost_unless_the_runner_returned_by_itself():
    assert _status("TIMEOUT", has_result=True).state == RemoteState.LOST
    assert _status("TIMEOUT", has_result=True, has_rc=True).state == RemoteState.EXITED


@pytest.mark.parametrize("state", ["COMPLETED", "FAILED", "OUT_OF_MEMORY"])
def test_an_ended_job_is_exited_and_its_result_decides(state):
    assert _status(state, has_result=True).state == RemoteState.EXITED


def test_a_controller_that_does_not_answer_is_unknown_never_lost():
    status = interpret(None, answered=False, error="Unable to contact slurm controller", has_result=False,
                       has_rc=False, cancelled_by_orch=False)
    assert status.state == RemoteState.UNKNOWN and "Unable to contact" in status.message
    done = interpret(None, answered=False, error="x", has_result=True, has_rc=True, cancelled_by_orch=False)
    assert done.state == RemoteState.EXITED


def test_a_job_in_no_listing_without_a_result_stays_unknown():
    status = interpret(None, answered=True, error="", has_result=False, has_rc=False, cancelled_by_orch=False)
    assert status.state == RemoteState.UNKNOWN and "MinJobAge" in status.message


def test_time_limit_covers_the_runner_deadline_rounded_up_to_minutes_and_never_above_the_cap():
    assert batch.time_limit(3600, 30, None) == "0-01:02:00"
    assert batch.time_limit(20, 1, 12) == "0-00:01:00"
    assert batch.time_limit(2 * 86400, 30, 86400) == "1-00:00:00"


def test_the_batch_script_quotes_every_word_and_carries_no_secret():
    text = batch.script("/scratch/me/a b", ["python3", "runner.py", "--job-name", "$(rm -rf ~)"],
                        {"LR": "0.1"}, ["cuda/12.1"])
    assert "cd '/scratch/me/a b'" in text and "'$(rm -rf ~)'" in text
    assert "module load cuda/12.1 ||" in text and text.startswith("#!/bin/bash -l")
    assert '"secrets": {}' in text and '"LR": "0.1"' in text


# Real lines of the test cluster (task/cgroup, ConstrainRAMSpace): `sbatch --mem=60M` over its limit.
SCONTROL_OOM = ("JobId=1 JobName=wrap UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901759 Nice=0 "
                "Account=(null) QOS=(null) JobState=OUT_OF_MEMORY Reason=OutOfMemory Dependency=(null) Requeue=0 "
                "Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:125 RunTime=00:00:00 TimeLimit=UNLIMITED")
SCONTROL_FAILED = ("JobId=2 JobName=wrap UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901758 Nice=0 "
                   "Account=(null) QOS=(null) JobState=FAILED Reason=NonZeroExitCode Dependency=(null) Requeue=0 "
                   "Restarts=0 BatchFlag=1 Reboot=0 ExitCode=98:0 RunTime=00:00:00 TimeLimit=UNLIMITED")


def test_out_of_memory_without_a_result_is_a_failure_with_the_reason_not_lost():
    job = jobstate.parse_scontrol(SCONTROL_OOM)
    status = interpret(job, answered=True, error="", has_result=False, has_rc=True, cancelled_by_orch=False)
    assert status.state == RemoteState.EXITED and "out of memory (Slurm OUT_OF_MEMORY)" in status.message
    doc = jobstate.failed_result(job, None)
    assert doc == {"status": "failed", "exit_code": None, "failure_class": "oom",
                   "message": "out of memory (Slurm OUT_OF_MEMORY)"}


def test_out_of_memory_adds_the_reason_to_the_runner_s_failed_result_once():
    job = jobstate.parse_scontrol(SCONTROL_OOM)
    runner = {"status": "failed", "exit_code": -9, "failure_class": "user", "message": "job exited with code -9"}
    doc = jobstate.failed_result(job, runner)
    assert doc["failure_class"] == "oom" and doc["exit_code"] == -9
    assert doc["message"] == "out of memory (Slurm OUT_OF_MEMORY): job exited with code -9"
    assert jobstate.failed_result(job, doc) is None  # a fetch resumed after a crash changes nothing more
    assert jobstate.failed_result(job, {"status": "succeeded"}) is None


def test_failed_without_a_result_is_a_failure_with_the_batch_script_s_reason():
    job = jobstate.parse_scontrol(SCONTROL_FAILED)
    doc = jobstate.failed_result(job, None, "bash: module: command not found\n")
    assert doc["failure_class"] == "setup" and doc["exit_code"] == 98
    assert doc["message"] == ("Slurm job 2 ended FAILED (exit 98:0): a `module load` failed: "
                              "bash: module: command not found")
    crashed = jobstate.failed_result(SlurmJob("3", "FAILED", exit_code="1:0"), None, "Traceback ...")
    assert crashed["failure_class"] == "runner" and "without result.json: Traceback" in crashed["message"]
    assert jobstate.failed_result(SlurmJob("3", "FAILED", exit_code="1:0"), {"status": "failed"}) is None


@pytest.mark.parametrize("state", ["PREEMPTED", "NODE_FAIL", "COMPLETED", "TIMEOUT", "CANCELLED"])
def test_no_other_state_writes_a_result(state):
    assert jobstate.failed_result(SlurmJob("7", state, exit_code="0:15"), None) is None
