"""Budgets, windows and the ledger: charges split across resets, reservations checked in
every window they touch, live readings win, and a crash never charges twice."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from orchestrator import gpus, quota, windows
from orchestrator.quota import QuotaReading
from tests.conftest import (
    make_job,
    open_app,
    orch_process,
    submit,
    submitted,
    tick_until,
    wait_until,
)


def ts(text_: str) -> float:
    return datetime.fromisoformat(text_).replace(tzinfo=timezone.utc).timestamp()


WEEKLY = quota.Budget(limit=30.0, window=windows.Window("weekly", 5), per_gpu=False)


# ---------------------------------------------------------------------------- windows


def test_a_weekly_window_resets_on_saturday_midnight_utc():
    w = windows.Window("weekly", 5)
    assert w.bounds(ts("2025-01-10T23:59:59")) == (ts("2025-01-04T00:00:00"), ts("2025-01-11T00:00:00"))
    assert w.bounds(ts("2025-01-11T00:00:00")) == (ts("2025-01-11T00:00:00"), ts("2025-01-18T00:00:00"))
    assert w.describe() == "weekly, resets Sat 00:00 UTC"


@pytest.mark.parametrize("kind, reset, at, expected", [
    ("monthly", "31 06:00", "2025-02-15T00:00:00", ("2025-01-31T06:00:00", "2025-02-28T06:00:00")),
    ("monthly", "31", "2025-03-01T00:00:00", ("2025-02-28T00:00:00", "2025-03-31T00:00:00")),
    ("monthly", None, "2025-12-31T23:00:00", ("2025-12-01T00:00:00", "2026-01-01T00:00:00")),
    ("daily", "04:30", "2025-01-01T03:00:00", ("2024-12-31T04:30:00", "2025-01-01T04:30:00")),
    ("weekly", "mon 08:00", "2025-01-06T07:59:00", ("2024-12-30T08:00:00", "2025-01-06T08:00:00")),
])
def test_monthly_daily_and_weekly_windows_with_custom_resets(kind, reset, at, expected):
    w = windows.parse_reset(kind, reset)
    assert w.bounds(ts(at)) == (ts(expected[0]), ts(expected[1]))


@pytest.mark.parametrize("kind, reset, message", [
    ("weekly", "saturday noon", "write HH:MM"),
    ("weekly", "funday", "e.g. 'sat 00:00'"),
    ("monthly", "32", "a day of the month"),
    ("daily", "sat 00:00", "resets at a time"),
])
def test_a_bad_reset_names_the_accepted_form(kind, reset, message):
    with pytest.raises(ValueError, match=message):
        windows.parse_reset(kind, reset)


def test_a_bad_budget_in_config_is_one_line_with_file_and_line(orch, orch_home, tmp_path, config):
    config("platforms:\n  k:\n    type: local\n    budget: {limit: 3, window: weekly, reset: \"saturday 25:00\"}\n")
    r = orch("quota")
    assert r.exit_code == 2
    assert "config.yaml:4: platforms.k.budget.reset" in r.output and "HH:MM" in r.output


# ---------------------------------------------------------------------------- the ledger arithmetic


def test_a_charge_spanning_the_saturday_reset_is_split_between_the_two_weeks():
    # 4 GPU hours from Friday 22:00 to Saturday 02:00: 2 in each week.
    charge = (4.0, ts("2025-01-10T22:00:00"), ts("2025-01-11T02:00:00"))
    before = quota.state("k", WEEKLY, ts("2025-01-10T23:00:00"), [charge], [])
    after = quota.state("k", WEEKLY, ts("2025-01-11T03:00:00"), [charge], [])
    assert before.used == pytest.approx(2.0) and after.used == pytest.approx(2.0)
    assert after.left() == pytest.approx(28.0) and after.resets_at == ts("2025-01-18T00:00:00")


def test_a_reservation_is_checked_against_every_window_it_touches():
    # The next week is already 29 h committed by a long reservation spilling into it.
    now = ts("2025-01-10T20:00:00")
    spill = quota.Span(ts("2025-01-10T12:00:00"), ts("2025-01-12T05:00:00"), 1.0)  # 29 h after the reset
    st = quota.state("k", WEEKLY, now, [], [spill])
    # 2 h now fits this week (8 h of the span are in it) and the next (29 + 0 = 29 <= 30) ...
    assert st.shortfall(now, now + 2 * 3600, 1.0) is None
    # ... but 6 h would put 2 h into next week, where only 1 h is left.
    assert st.shortfall(now, now + 6 * 3600, 1.0) == (pytest.approx(1.0), pytest.approx(2.0),
                                                       ts("2025-01-11T00:00:00"), ts("2025-01-18T00:00:00"))
    assert st.longest(now, now + 6 * 3600, 1.0) == pytest.approx(5 * 3600, abs=1)


def test_a_live_reading_overrides_the_configured_limit_used_and_reset():
    now = ts("2025-01-08T12:00:00")
    live = QuotaReading(unit="gpu_hours", used=25.0, limit=28.0, reserved=1.0,
                        resets_at=datetime(2025, 1, 11, 1, 0, tzinfo=timezone.utc), source="kaggle")
    running = quota.Span(now - 3600, now + 3600, 1.0)  # 1 h already in `used`, 1 h to go
    st = quota.state("k", WEEKLY, now, [(5.0, now - 7200, now - 3600)], [running], live)
    assert (st.limit, st.used, st.source) == (28.0, 26.0, "kaggle")
    assert st.resets_at == ts("2025-01-11T01:00:00")
    assert st.left() == pytest.approx(1.0)
    # a reading in another unit says nothing about this budget
    other = QuotaReading(unit="compute_units", used=0.0, limit=50.0)
    assert quota.state("k", WEEKLY, now, [], [], other).source == "config"


def test_compute_units_are_charged_at_the_rate_of_the_gpu_the_run_got():
    colab = quota.Budget(unit="compute_units", limit=100.0, window=windows.Window("monthly"))
    reserve = {"start": 1000.0, "end": 1000.0 + 7200, "amount": 2 * gpus.CU_RATES["T4"]}
    result = {"started_at": 1010.0, "ended_at": 1010.0 + 3600, "gpu": {"name": "NVIDIA A100-SXM4-40GB", "count": 1}}
    span = quota.charge_span(reserve, colab, result, 1005.0, 5000.0)
    assert (span.start, span.end) == (1010.0, 4610.0)
    assert span.amount == pytest.approx(gpus.CU_RATES["A100"])
    # no result (a lost run): from its start to when it was found gone, at the reserved rate
    lost = quota.charge_span(reserve, colab, None, 1005.0, 2805.0)
    assert lost.amount == pytest.approx(gpus.CU_RATES["T4"] / 2)


def test_gpu_names_from_nvidia_smi_map_to_types():
    assert [gpus.gpu_type(n) for n in ("Tesla T4", "NVIDIA A100-SXM4-80GB", "NVIDIA L4", "NVIDIA L40S",
                                        "Tesla P100-PCIE-16GB", "NVIDIA H100 80GB HBM3", None)] == \
        ["T4", "A100", "L4", None, "P100", "H100", None]


def test_kaggle_and_colab_pro_have_default_budgets_and_other_platforms_none(orch_home, config):
    config("""\
        platforms:
          k: {type: kaggle}
          l: {type: local}
          pro: {type: colab, tier: pro}
          plus: {type: colab_drive, credentials: client.json, tier: pro+}
          payg: {type: colab_drive, credentials: client.json, tier: pay-as-you-go}
          own: {type: kaggle, budget: {limit: 5}}
        """)
    app = open_app()
    try:
        k = app.budget("k")
        assert (k.limit, k.unit, k.per_gpu, k.window.describe()) == (30.0, "gpu_hours", False,
                                                                    "weekly, resets Sat 00:00 UTC")
        assert app.budget("l").limit is None
        assert [(b.unit, b.limit, b.window.kind) for b in (app.budget("pro"), app.budget("plus"))] == \
            [("compute_units", 100.0, "monthly"), ("compute_units", 500.0, "monthly")]
        assert app.budget("payg").limit is None
        assert (app.budget("own").limit, app.budget("own").source) == (5.0, "config")  # budget: wins
    finally:
        app.close()


# ---------------------------------------------------------------------------- the ledger in the store


def ledger_by_attempt(app) -> dict[int, list[str]]:
    rows = app.store.ledger_rows()
    out: dict[int, list[str]] = {}
    for r in rows:
        out.setdefault(r["attempt_id"], []).append(r["kind"])
    return out


def test_the_ledger_after_a_crash_and_a_retry_holds_one_charge_per_attempt(orch, orch_home, tmp_path, config):
    config("""\
        platforms:
          kag: {type: local, gpu: T4, max_concurrent: 2, budget: {limit: 10, per_gpu: false, window: none}}
        controller: {failover_backoff: 1s}
        """)
    # One job is lost once (its runner is killed) and retried; the controller itself is
    # SIGKILLed right after writing an attempt's intent, and right after fetching.
    lost = make_job(tmp_path / "lost", """\
        name: lost
        run: if [ "$ORCH_ATTEMPT" = 1 ]; then kill -9 $PPID; sleep 3; fi; echo ok
        resources: {gpu: any, max_runtime: 30m}
        """)
    fine = make_job(tmp_path / "fine", "name: fine\nrun: sleep 1\nresources: {gpu: any, max_runtime: 2h}\n")
    ids = [submit(orch, p) for p in (lost, fine)]
    for point in ("after_intent", "after_fetch"):
        wait_until(lambda point=point: orch_process("tick", env={"ORCH_FAILPOINTS": point}).returncode == -9, 30,
                   f"a tick killed at {point}", interval=0.3)
    app = tick_until(lambda app: all(app.store.job(j).state.terminal for j in ids), timeout=60)
    try:
        atts = {j: app.store.attempts_of(j) for j in ids}
        assert [a.state.value for a in atts[ids[0]]] == ["LOST", "SUCCEEDED"]
        assert [a.state.value for a in atts[ids[1]]] == ["SUCCEEDED"]
        kinds = ledger_by_attempt(app)
        every = [a for lst in atts.values() for a in lst]
        assert sorted(kinds) == sorted(a.id for a in every)
        assert all(sorted(k) == ["charge", "release", "reserve"] for k in kinds.values()), kinds
        rows = {(r["attempt_id"], r["kind"]): r for r in app.store.ledger_rows()}
        for a in every:
            reserve, charge = rows[(a.id, "reserve")], rows[(a.id, "charge")]
            assert reserve["amount"] == pytest.approx((a.max_runtime_s or 0) / 3600)  # 1 GPU, per_gpu false
            assert 0 < charge["amount"] <= reserve["amount"]
            if a.result:  # charged for the runner's own time
                assert charge["amount"] == pytest.approx((a.result["ended_at"] - a.result["started_at"]) / 3600)
        used = sum(r["amount"] for r in app.store.ledger_rows() if r["kind"] == "charge")
    finally:
        app.close()
    doc = {d["platform"]: d for d in json.loads(orch("quota", "--json").output)}["kag"]
    assert doc["used"] == pytest.approx(used, abs=1e-4) and doc["reserved"] == 0
    assert doc["left"] == pytest.approx(10 - used, abs=1e-4)


def test_a_running_job_reserves_its_max_runtime_and_a_second_that_would_overrun_waits(
        orch, orch_home, tmp_path, config):
    config("""\
        platforms:
          kag: {type: local, gpu: T4, max_concurrent: 2, budget: {limit: 1.5, per_gpu: false, window: none}}
        controller: {grace: 1s}
        """)
    path = make_job(tmp_path / "job", "name: hour\nrun: sleep 30\nresources: {gpu: any, max_runtime: 1h}\n")
    first = submit(orch, path)
    second = submit(orch, path)
    tick_until(lambda app: app.store.job(first).state.active)
    doc = json.loads(orch("quota", "--json").output)[0]
    assert doc["reserved"] == pytest.approx(1.0, abs=0.01) and doc["left"] == pytest.approx(0.5, abs=0.01)
    plan = json.loads(orch("plan", "--json").output)
    assert plan[0]["id"] == second and plan[0]["platform"] is None
    assert "kag: 0.5 GPU h left, job needs 1.0 GPU h" in plan[0]["reason"]
    orch("cancel", first)
    doc = json.loads(orch("quota", "--json").output)[0]
    assert doc["reserved"] == 0 and 0 < doc["used"] < 0.05


def test_live_readings_are_cached_in_the_store_between_ticks(orch_home, config):
    from orchestrator.planning import Planner

    config("platforms:\n  l: {type: local, budget: {limit: 5}}\n")
    app = open_app()
    try:
        ctl = Planner(app)
        assert ctl.live_quota("l") is None  # the local platform has no live reading
        cached = json.loads(app.store.meta_get("quota:l"))
        assert cached["reading"] is None and time.time() - cached["at"] < 5
        reading = QuotaReading(unit="gpu_hours", used=1.0, limit=5.0, resets_at=datetime.now(timezone.utc) + timedelta(days=1))
        app.store.meta_set("quota:l", json.dumps({"at": time.time(), "reading": quota.reading_to_json(reading)}))
        assert ctl.live_quota("l") == reading
    finally:
        app.close()


def test_ledger_sweeps_and_the_live_cache_work_on_postgresql(orch, orch_home, tmp_path, config, pg_url, monkeypatch):
    monkeypatch.setenv("ORCH_STATE_URL", pg_url)
    config("platforms:\n  kag: {type: local, gpu: T4, max_concurrent: 2, budget: {limit: 5, per_gpu: false}}\n")
    path = make_job(tmp_path / "job", """\
        name: pgsweep
        run: echo $N
        resources: {gpu: any, max_runtime: 1h}
        sweep: {points: [{N: 1}, {N: 2}]}
        """)
    doc = submitted(orch, path)
    app = tick_until(lambda app: all(app.store.job(j).state.terminal for j in doc["jobs"]), timeout=60)
    try:
        assert app.store.url.startswith("postgresql")
        assert app.store.resolve_sweep("pgsweep") == doc["sweep_id"]
        assert app.store.sweep_counts([doc["sweep_id"]]) == {doc["sweep_id"]: {"SUCCEEDED": 2}}
        kinds = sorted(r["kind"] for r in app.store.ledger_rows("kag"))
        assert kinds == ["charge", "charge", "release", "release", "reserve", "reserve"]
        assert len(app.store.runtimes([app.store.job(doc["jobs"][0]).bundle])) == 2
    finally:
        app.close()
    q = json.loads(orch("quota", "--refresh", "--json").output)[0]
    assert 0 < q["used"] < 0.01 and q["reserved"] == 0
    assert json.loads(orch("status", "pgsweep", "--json").output)["counts"] == {"SUCCEEDED": 2}
