"""What a Slurm site's accounting says a run cost, and what the ledger charges: the
parsing on sacct's real line format, and the test cluster's no-accounting path."""

from __future__ import annotations

import json

import pytest

from orchestrator import quota, windows
from orchestrator.platforms.slurm import jobstate, usage
from tests.conftest import submit
from tests.platforms.conftest import DONE, fetched, ssh_job, tick_until_state

# `SLURM_TIME_FORMAT=%s sacct -X -n -P -o JobID,State,Reason,ExitCode,ElapsedRaw,Start,End,AllocTRES`
# on a site with AccountingStorageTRES=gres/gpu (TRES lists as sacct prints them).
SACCT_2_GPUS = "4242|COMPLETED|None|0:0|3605|1733630000|1733633605|billing=8,cpu=8,gres/gpu:a100=2,gres/gpu=2,mem=64G,node=1"
SACCT_TYPED_ONLY = "4243|FAILED|None|1:0|60|1733630000|1733630060|cpu=8,gres/gpu:a100=1,gres/gpu:a40=2,mem=64G,node=1"
SACCT_NO_GPU_TRES = "4244|OUT_OF_MEMORY|None|0:125|10|1733630000|1733630010|billing=1,cpu=1,mem=400M,node=1"
SACCT_RUNNING = "4245|RUNNING|None|0:0|20|1733630000|Unknown|billing=1,cpu=1,gres/gpu=1,mem=400M,node=1"

MONTHLY = quota.Budget(unit="gpu_hours", limit=500.0, window=windows.Window("monthly"))


def test_sacct_lines_give_the_charged_times_and_the_allocated_gpus():
    job = jobstate.parse_sacct(SACCT_2_GPUS)
    assert (job.state, job.exit_code, job.start, job.end, job.gpus) == ("COMPLETED", "0:0", 1733630000.0,
                                                                         1733633605.0, 2)
    assert jobstate.parse_sacct(SACCT_TYPED_ONLY).gpus == 3  # no untyped total: the typed ones summed
    assert jobstate.parse_sacct(SACCT_NO_GPU_TRES).gpus is None  # the site does not account GPUs
    running = jobstate.parse_sacct(SACCT_RUNNING)
    assert (running.start, running.end) == (1733630000.0, None) and jobstate.billed(running) is None
    # the four-field line of a site whose sacct knows no more, and a line that is not sacct's
    assert jobstate.parse_sacct("7|CANCELLED by 1000|None|0:15").start is None
    assert jobstate.parse_sacct("sacct: error: Slurm accounting storage is disabled") is None


def test_the_ledger_charges_sacct_elapsed_times_the_allocated_gpus():
    billed = jobstate.billed(jobstate.parse_sacct(SACCT_2_GPUS))
    assert billed == {"start": 1733630000.0, "end": 1733633605.0, "gpus": 2, "source": "sacct"}
    reserve = {"start": 1733629990.0, "end": 1733629990.0 + 7200, "amount": 2.0}  # 1 GPU for 2 h reserved
    runner = {"started_at": 1733630003.0, "ended_at": 1733633600.0, "billed": billed}
    span = quota.charge_span(reserve, MONTHLY, runner, 1733629995.0, 1733633700.0)
    assert (span.start, span.end) == (1733630000.0, 1733633605.0)
    assert span.amount == pytest.approx(2 * 3605 / 3600)


def test_without_accounting_the_runner_s_elapsed_is_charged_at_the_reserved_rate():
    reserve = {"start": 1000.0, "end": 1000.0 + 7200, "amount": 2.0}
    runner = {"started_at": 1010.0, "ended_at": 1010.0 + 1800}
    assert quota.charge_span(reserve, MONTHLY, runner, 1005.0, 5000.0).amount == pytest.approx(0.5)
    no_gpus = dict(runner, billed=jobstate.billed(jobstate.parse_sacct(SACCT_NO_GPU_TRES)))
    assert quota.charge_span(reserve, MONTHLY, no_gpus, 1005.0, 5000.0).amount == pytest.approx(10 / 3600)


@pytest.mark.parametrize("billed", [{"start": 5, "end": 1, "gpus": 1}, {"start": True, "end": 9, "gpus": 1},
                                    "3605", {"start": "0", "end": 9}])
def test_a_malformed_billed_is_ignored(billed):
    reserve = {"start": 1000.0, "end": 1000.0 + 7200, "amount": 2.0}
    runner = {"started_at": 1010.0, "ended_at": 1010.0 + 1800, "billed": billed}
    assert quota.charge_span(reserve, MONTHLY, runner, 1005.0, 5000.0).amount == pytest.approx(0.5)


def test_without_slurmdbd_a_job_is_charged_the_runner_s_elapsed_and_quota_shows_no_site_usage(
        orch, config, slurm_platform, cluster, tmp_path):
    assert "accounting storage is disabled" in cluster.client("sacct", "-X", "-n").stderr
    budget = {"unit": "gpu_hours", "limit": 100, "window": "monthly", "reset": "1 00:00"}
    config(platforms={"hpc": slurm_platform(budget=budget)})
    job_id = submit(orch, ssh_job(tmp_path / "j", platforms=("hpc",), extra="  gpu: T4\n"))
    job = tick_until_state(orch, job_id, DONE, timeout=60)
    assert job["state"] == "SUCCEEDED", job["message"]
    result = json.loads((fetched(orch, job_id, tmp_path / "out") / "result.json").read_text())
    assert "billed" not in result
    shown = orch("quota", "--json")
    assert shown.exit_code == 0, shown.output
    [hpc] = [d for d in json.loads(shown.output) if d["platform"] == "hpc"]
    assert hpc["used"] == pytest.approx((result["ended_at"] - result["started_at"]) / 3600, abs=1e-6)
    assert hpc["used"] > 0
    assert "site" not in hpc  # sshare answers nothing without slurmdbd: nothing extra, no error
    table = orch("quota")
    assert table.exit_code == 0 and "the site counts" not in table.output, table.output


# `sshare -U -h -P -o Account,User,GrpTRESRaw,GrpTRESMins` on a site with slurmdbd (TRES-minutes).
SSHARE = ("proj-1234|me|cpu=123456,mem=987654321,energy=0,node=1234,billing=123456,fs/disk=0,vmem=0,pages=0,"
          "gres/gpu=600|gres/gpu=30000\n"
          "other|me|cpu=60,mem=100,energy=0,node=1,billing=60,fs/disk=0,vmem=0,pages=0,gres/gpu=120|\n")


def test_sshare_gives_the_site_s_gpu_hours_of_the_configured_account_or_all_of_the_user_s():
    mine = usage.parse_sshare(SSHARE, "proj-1234")
    assert (mine.unit, mine.used, mine.limit, mine.source) == ("gpu_hours", 10.0, 500.0, "sshare, account proj-1234")
    both = usage.parse_sshare(SSHARE, None)
    assert (both.used, both.limit, both.source) == (12.0, 500.0, "sshare, account other, proj-1234")
    assert usage.parse_sshare(SSHARE, "nobody") is None
    assert usage.parse_sshare("", None) is None  # a site without accounting lists nothing
    assert usage.parse_sshare("proj|me|cpu=60,mem=100|\n", None) is None  # no GPUs accounted
    assert usage.parse_sshare("proj|me|gres/gpu=-5|\nproj|me|gres/gpu=x|\n", None) is None
    assert usage.parse_sshare("proj|me|gres/gpu=inf|\nproj|me|gres/gpu=nan|\n", None) is None
