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
