"""Placement: capability, quota headroom, preference and speed, explanations a person can
act on, and never a quota overrun whatever the job mix (a property test over the real
scheduler in the simulator of bench/simulate.py)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import simulate as sim
from orchestrator import gpus, quota, windows
from orchestrator.platforms.base import Feature, Offer
from orchestrator.scheduler import Candidate, Place, Running, Wait, estimate, learn_speeds, place
from orchestrator.spec import JobSpec
from tests.conftest import make_job, submit

NOW = datetime(2025, 1, 8, 12, 0, tzinfo=timezone.utc).timestamp()  # a Wednesday noon
H = 3600.0


def job(id_: str, **spec) -> Candidate:
    res = spec.pop("resources", {})
    doc = {"run": "x", "resources": {"gpu": "any", "max_runtime": "1h", **res}, **spec}
    return Candidate(id_, JobSpec.model_validate(doc))


def offer(name: str, gpus=("T4",), **kw) -> Offer:
    return Offer(platform=name, type="local", gpus=gpus, gpu_count=1 if gpus else 0,
                 gpu_memory_gb=kw.pop("mem", 16.0), min_segment_seconds=kw.pop("min_segment", 600.0), **kw)


def budget_state(name: str, limit: float | None, used: float = 0.0, per_gpu: bool = False,
                 unit: str = "gpu_hours", window: str = "weekly") -> quota.BudgetState:
    b = quota.Budget(unit=unit, limit=limit, window=windows.parse_reset(window, None), per_gpu=per_gpu)
    charges = [(used, NOW - 2 * H, NOW - H)] if used else []
    return quota.state(name, b, NOW, charges, [])


# ---------------------------------------------------------------------------- explanations


def test_a_waiting_job_is_told_each_platforms_obstacle_and_when_it_lifts():
    offers = {"kaggle": offer("kaggle"), "colab": offer("colab", available=False, reason="no agent online")}
    ledger = {"kaggle": budget_state("kaggle", 30.0, used=28.8)}
    [d] = place([job("j", resources={"max_runtime": "3h"})], offers, {}, NOW, ledger)
    assert isinstance(d, Wait)
    assert d.reason == ("kaggle: 1.2 GPU h left this week, job needs 3.0 GPU h — refresh Sat 00:00 UTC (in 2d12h); "
                        "colab: no agent online")
    assert d.until == datetime(2025, 1, 11, tzinfo=timezone.utc).timestamp()
    assert dict(d.verdicts)["colab"] == "no agent online"


@pytest.mark.parametrize("spec, offer_kw, why", [
    ({"resources": {"gpu": "A100"}}, {}, "offers T4, job needs A100"),
    ({"resources": {"min_gpu_memory_gb": 40}}, {}, "GPU has 16 GB, job needs 40 GB"),
    ({"resources": {"gpu_count": 2}}, {}, "has 1 GPU(s), job needs 2"),
    ({"resources": {"max_runtime": "13h"}}, {"session_seconds": 12 * H},
     "sessions last 12h00m, job needs 13h00m; declare checkpoint: to run it as a chain"),
    ({}, {"time_left_seconds": 1800.0}, "30m left in its session, job needs 1h00m"),
    ({"secrets": ["TOKEN"]}, {"unsupported": {Feature.SECRETS: "no secrets on this one"}}, "no secrets on this one"),
    ({"internet": True}, {"internet": False, "unsupported": {Feature.INTERNET: "offline"}},
     "offline; the job sets internet: true (the default)"),
    ({}, {"internet": False}, "has no internet; the job sets internet: true (the default)"),
    ({"checkpoint": "ckpt", "resources": {"max_runtime": "13h"}},
     {"session_seconds": 12 * H, "unsupported": {Feature.CHECKPOINT: "no checkpoints kept here"}},
     "sessions last 12h00m, job needs 13h00m; no checkpoints kept here"),
])
def test_capability_filters_say_why_a_platform_cannot_run_the_job(spec, offer_kw, why):
    [d] = place([job("j", **spec)], {"p": offer("p", **offer_kw)}, {}, NOW)
    assert isinstance(d, Wait) and d.reason == f"p: {why}"


def test_plan_explains_each_queued_job_through_the_cli(orch, orch_home, tmp_path, config):
    config("""\
        platforms:
          kag: {type: local, gpu: T4, budget: {limit: 2, per_gpu: false, reset: "sat 00:00"}}
          night: {type: local, gpu: A100, available_hours: "%s"}
        """ % _closed_hours())
    big = make_job(tmp_path / "big", "name: big\nrun: x\nresources: {gpu: any, max_runtime: 3h}\npriority: 5\n")
    small = make_job(tmp_path / "small", "name: small\nrun: x\nresources: {gpu: T4, max_runtime: 1h}\n")
    small_id = submit(orch, small)
    big_id = submit(orch, big)
    r = orch("plan", "--json")
    assert r.exit_code == 0, r.output
    by_id = {d["id"]: d for d in json.loads(r.output)}
    assert [d["id"] for d in json.loads(r.output)] == [big_id, small_id]  # priority first
    assert by_id[big_id]["platform"] is None
    assert by_id[big_id]["verdicts"]["kag"].startswith("2.0 GPU h left this week, job needs 3.0 GPU h — refresh Sat 00:00 UTC")
    assert by_id[big_id]["verdicts"]["night"].startswith("outside its hours")
    assert by_id[big_id]["until"] is not None
    assert by_id[small_id]["platform"] == "kag" and by_id[small_id]["reason"] == "est. 1h00m on T4"
    text = orch("plan").output
    assert "run on kag" in text and "wait" in text


def test_a_job_that_needs_the_internet_never_goes_to_a_platform_without_it(orch, orch_home, tmp_path, config):
    pytest.importorskip("paramiko")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    # The host key is pinned (an unpinned host is unavailable, whatever the job needs).
    public = Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    (orch_home / "ssh").mkdir(exist_ok=True)
    (orch_home / "ssh" / "known_hosts").write_text(f"gpu.example.org {public}\n")
    config("""\
        platforms:
          lab: {type: ssh, host: gpu.example.org, internet: true}
        """)
    pinned = make_job(tmp_path / "pinned", "name: pinned\nrun: x\nplatforms: [lab]\nresources: {gpu: none}\n")
    pinned_id = json.loads(orch("submit", str(pinned), "--json").output)["id"]
    # The host loses its internet after the job was queued.
    config("""\
        platforms:
          lab: {type: ssh, host: gpu.example.org, internet: false}
          laptop: {type: local, gpu: none}
        """)
    why = "platform lab has no internet (internet: false in config.yaml); the job sets internet: true (the default)"
    online = make_job(tmp_path / "online", "name: online\nrun: x\nresources: {gpu: none}\n")
    offline = make_job(tmp_path / "offline", "name: offline\nrun: x\ninternet: false\nresources: {gpu: none}\n")
    online_id = json.loads(orch("submit", str(online), "--json").output)["id"]
    offline_id = json.loads(orch("submit", str(offline), "--json").output)["id"]
    r = orch("plan", "--json")
    assert r.exit_code == 0, r.output
    plan = {d["id"]: d for d in json.loads(r.output)}
    assert plan[pinned_id]["platform"] is None and plan[pinned_id]["reason"] == f"lab: {why}"
    assert plan[online_id]["platform"] == "laptop" and plan[online_id]["verdicts"] == {"lab": why}
    assert plan[offline_id]["platform"] == "lab"  # a job that needs no internet may go there
    # Submitting a job that only the offline host may run is refused with the same reason.
    r = orch("submit", str(pinned))
    assert r.exit_code != 0 and why in r.output


def _closed_hours() -> str:
    """A daily window that does not contain the present minute."""
    now = datetime.now(timezone.utc)
    start = (now.hour + 2) % 24
    return f"{start:02d}:00-{(start + 6) % 24:02d}:00"


# ---------------------------------------------------------------------------- ranking


def test_the_jobs_platform_list_is_a_preference_and_otherwise_the_earliest_finish_wins():
    offers = {"slow": offer("slow", ("T4",)), "fast": offer("fast", ("A100",), mem=40.0)}
    listed = job("listed", platforms=["slow", "fast"])
    anywhere = job("anywhere")
    d1, d2 = place([listed, anywhere], offers, {}, NOW)
    assert (d1.platform, d2.platform) == ("slow", "fast")
    assert d2.estimate_s == pytest.approx(H / 2.5) and d2.why == "est. 24m on A100"


def test_priorities_order_the_queue_and_equal_priorities_are_fifo(orch, orch_home, tmp_path, config):
    config("platforms:\n  one: {type: local, max_concurrent: 1}\n")
    ids = []
    for name, prio in (("a", 0), ("b", 3), ("c", 0), ("d", 3)):
        path = make_job(tmp_path / name, f"name: {name}\nrun: x\npriority: {prio}\n")
        ids.append(submit(orch, path))
    order = [d["id"] for d in json.loads(orch("plan", "--json").output)]
    assert order == [ids[1], ids[3], ids[0], ids[2]]
    plan = json.loads(orch("plan", "--json").output)
    assert plan[0]["platform"] == "one" and all(d["platform"] is None for d in plan[1:])
    assert "busy (1/1 running" in plan[1]["reason"]


def test_a_job_waits_for_a_busy_platform_that_will_finish_it_much_sooner():
    offers = {"t4": offer("t4", ("T4",)), "h100": offer("h100", ("H100",), mem=80.0)}
    running = [Running("h100", NOW + 600)]  # frees in 10 minutes
    long_job = job("long", resources={"max_runtime": "8h"})
    [d] = place([long_job], offers, running, NOW)
    assert isinstance(d, Wait) and d.reason.startswith("waiting for h100: expected to finish it")
    assert d.until == NOW + 600
    # later jobs count on the slot only after the waiting one: the second still gains by
    # waiting (4h10m vs 8h), the third would not (6h10m vs 8h) and takes the free T4
    more = [job(f"n{i}", resources={"max_runtime": "8h"}) for i in range(2)]
    d1, d2, d3 = place([long_job, *more], offers, running, NOW)
    assert isinstance(d1, Wait) and isinstance(d2, Wait) and d2.until == NOW + 600 + 2 * H
    assert isinstance(d3, Place) and d3.platform == "t4"


def test_speed_factors_are_learned_from_the_same_job_on_different_gpus():
    obs = [(f"d{i}", "T4", 3000.0) for i in range(5)] + [(f"d{i}", "A100", 1000.0) for i in range(5)]
    speeds = learn_speeds(obs)
    assert speeds["T4"] == 1.0 and 2.8 < speeds["A100"] < 3.0  # observed 3x, prior 2.5, five runs
    assert speeds["H100"] == 4.0  # nothing learned: the default stays
    # chains of evidence: T4-L4 and L4-A100 runs say something about A100 vs T4 too
    chain = [("x", "T4", 4000.0), ("x", "L4", 1000.0)] * 3 + [("y", "L4", 1000.0), ("y", "A100", 500.0)] * 3
    learned = learn_speeds(chain)
    assert learned["L4"] > 1.75 and learned["A100"] > 2.5
    c = Candidate("j", JobSpec.model_validate({"run": "x", "resources": {"gpu": "any", "max_runtime": "2h"}}),
                  history={"T4": 3000.0})
    assert estimate(c, "T4", speeds) == 3000.0 and estimate(c, "A100", speeds) == pytest.approx(3000.0 / speeds["A100"])


# ---------------------------------------------------------------------------- quota-aware placement


def test_a_checkpointing_job_gets_a_segment_cut_to_the_quota_left():
    offers = {"kaggle": offer("kaggle", session_seconds=12 * H)}
    ledger = {"kaggle": budget_state("kaggle", 30.0, used=28.0)}
    [d] = place([job("j", checkpoint="ckpt", resources={"max_runtime": "20h"})], offers, {}, NOW, ledger)
    assert isinstance(d, Place) and d.session_s == pytest.approx(2 * H, abs=1) and d.max_runtime_s == 20 * H
    assert "segment cut to the quota left" in d.why
    # and a second job in the same pass finds the budget spent
    d1, d2 = place([job("a", checkpoint="c", resources={"max_runtime": "20h"}),
                    job("b", checkpoint="c", resources={"max_runtime": "20h"})],
                   {"kaggle": offer("kaggle", session_seconds=12 * H, max_concurrent=2)}, {}, NOW, ledger)
    assert isinstance(d1, Place) and isinstance(d2, Wait) and "0.0 GPU h left this week" in d2.reason


def test_budget_is_kept_for_jobs_that_can_run_nowhere_else():
    # `lab` (unlimited, 8-hour sessions) can take the short job but not the 10-hour one,
    # so the short job leaves Kaggle's last 10 hours to the long one.
    offers = {"kaggle": offer("kaggle", session_seconds=12 * H, max_concurrent=2),
              "lab": offer("lab", ("A100",), mem=80.0, session_seconds=8 * H, max_concurrent=1)}
    ledger = {"kaggle": budget_state("kaggle", 30.0, used=18.0)}
    short, long_ = job("short", resources={"max_runtime": "3h"}), job("long", resources={"max_runtime": "10h"})
    busy_lab = [Running("lab", NOW + 5 * H)]
    d_short, d_long = place([short, long_], offers, busy_lab, NOW, ledger)
    assert isinstance(d_short, Wait) and isinstance(d_long, Place) and d_long.platform == "kaggle"
    assert "kept for queued jobs that can run nowhere else (10.0 GPU h)" in dict(d_short.verdicts)["kaggle"]
    # with the long job gone, the short one may use Kaggle
    [d] = place([short], offers, busy_lab, NOW, ledger)
    assert isinstance(d, Place) and d.platform == "kaggle"


def test_on_compute_units_any_gpu_means_the_most_work_per_unit_unless_memory_says_otherwise():
    colab = offer("colab", ("T4", "L4", "A100"), mem=40.0)
    ledger = {"colab": budget_state("colab", 100.0, unit="compute_units", window="monthly")}
    d_any, d_big = place([job("any"), job("big", resources={"min_gpu_memory_gb": 40})],
                         {"colab": Offer(**{**colab.__dict__, "max_concurrent": 2})}, {}, NOW, ledger)
    assert (d_any.gpu, d_any.rate) == ("T4", gpus.CU_RATES["T4"])
    assert (d_big.gpu, d_big.rate) == ("A100", gpus.CU_RATES["A100"])


# ---------------------------------------------------------------------------- the property


@st.composite
def job_mixes(draw):
    n = draw(st.integers(min_value=1, max_value=14))
    jobs = []
    for i in range(n):
        hours = draw(st.floats(min_value=0.1, max_value=14.0))
        margin = draw(st.floats(min_value=1.0, max_value=1.6))
        big = draw(st.booleans()) and draw(st.booleans())
        ckpt = draw(st.booleans())
        arrival = draw(st.floats(min_value=0.0, max_value=4 * 86400.0))
        res = {"gpu": "any", "max_runtime": f"{int(hours * margin * H) + 1}s"}
        if big:
            res["min_gpu_memory_gb"] = 40
        spec = JobSpec.model_validate({"run": "x", "resources": res, "checkpoint": "c" if ckpt else None})
        jobs.append(sim.SimJob(f"j{i}", sim.START + arrival, hours * H, spec))
    return jobs


@st.composite
def platform_sets(draw):
    kaggle_h = draw(st.floats(min_value=0.5, max_value=40.0))
    colab_cu = draw(st.floats(min_value=1.0, max_value=120.0))
    window = draw(st.sampled_from(["weekly", "daily", "monthly"]))
    return [
        sim.SimPlatform("kaggle", ("T4",), 15.0, draw(st.integers(1, 3)), 12 * H,
                        quota.Budget(limit=kaggle_h, window=windows.parse_reset(window, None), per_gpu=False), gpu_count=2),
        sim.SimPlatform("colab", ("T4", "L4", "A100"), 40.0, draw(st.integers(1, 2)), 24 * H,
                        quota.Budget(unit="compute_units", limit=colab_cu, window=windows.Window("monthly"))),
        sim.SimPlatform("lab", ("A100",), 80.0, 1, None, quota.Budget(source="lab"),
                        hours=draw(st.sampled_from([None, "22:00-06:00", "09:30-10:15"]))),
    ]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jobs=job_mixes(), platforms=platform_sets())
def test_quota_is_never_overrun_whatever_the_job_mix(jobs, platforms):
    """The platforms here enforce their quotas and hours as the real ones do: any session
    orch started beyond them would be killed and counted as an overrun."""
    report = sim.Sim(jobs, platforms, "orch", weeks=3).run()
    assert report.overruns == 0
    assert report.worst_window <= 1.0 + 1e-9


def test_the_simulated_week_meets_its_targets():
    report = sim.simulate("orch", seed=7)
    assert report.finished == report.total and report.overruns == 0
    assert report.utilisation >= 0.95
    assert report.makespan_h <= 1.15 * report.bound_h
    fifo = sim.simulate("fifo", seed=7)
    assert fifo.finished < report.finished or fifo.makespan_h > report.makespan_h


def test_a_job_that_would_overrun_the_next_window_waits_for_the_reset_and_says_so():
    friday = datetime(2025, 1, 10, 20, 0, tzinfo=timezone.utc).timestamp()
    b = quota.Budget(limit=30.0, window=windows.Window("weekly", 5), per_gpu=False)
    spill = quota.Span(friday - 8 * H, friday + 28 * H, 1.0)  # 24 h of it after Saturday 00:00
    ledger = {"kaggle": quota.state("kaggle", b, friday, [], [spill])}
    offers = {"kaggle": offer("kaggle", session_seconds=12 * H, max_concurrent=2)}
    [d] = place([job("j", resources={"max_runtime": "11h"})], offers, {}, friday, ledger)
    assert isinstance(d, Wait)
    assert d.reason == ("kaggle: it would run past the reset into a window with 6.0 GPU h left (already reserved "
                        "by running attempts), needing 7.0 GPU h there — refresh Sat 00:00 UTC (in 4h00m)")
    assert d.until == datetime(2025, 1, 11, tzinfo=timezone.utc).timestamp()
