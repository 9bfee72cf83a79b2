"""`sweep:` expands one job.yaml into one job per parameter set, sharing one bundle."""

from __future__ import annotations

import json

import pytest

from orchestrator.spec import loads
from orchestrator.sweep import expand, point_name, progress
from tests.conftest import make_job, open_app, submitted, tick_until

SWEEP = """\
name: grid
run: echo "$LR $BATCH $ORCH_SWEEP_INDEX" > $ORCH_OUTPUT_DIR/point.txt
sweep:
  grid:
    LR: [0.1, 0.01]
    BATCH: [16, 32, 64]
"""


def test_a_sweep_of_six_points_runs_each_point_once_with_its_parameters(orch, orch_home, tmp_path, config):
    config("platforms:\n  local: {type: local, max_concurrent: 3}\n")
    path = make_job(tmp_path / "job", SWEEP)
    doc = submitted(orch, path)
    sweep_id, job_ids = doc["sweep_id"], doc["jobs"]
    assert doc["id"] == sweep_id and len(job_ids) == 6

    app = open_app()
    rows = [app.store.job(j) for j in job_ids]
    assert len({r.bundle for r in rows}) == 1, "the points share one bundle"
    assert [r.name for r in rows] == [f"grid-{i}" for i in range(6)]
    assert len(list((orch_home / "bundles").iterdir())) == 1
    app.close()

    tick_until(lambda app: all(app.store.job(j).state.terminal for j in job_ids), timeout=90)

    seen = []
    for i, job_id in enumerate(job_ids):
        out = tmp_path / f"out{i}"
        assert orch("fetch", job_id, "-o", str(out)).exit_code == 0
        seen.append(tuple((out / "outputs" / "point.txt").read_text().split()))
    assert seen == [(lr, b, str(i)) for i, (lr, b) in enumerate(
        [("0.1", "16"), ("0.1", "32"), ("0.1", "64"), ("0.01", "16"), ("0.01", "32"), ("0.01", "64")])]

    # `orch status` folds the sweep into one line with its progress ...
    lines = [ln for ln in orch("status").output.splitlines() if "grid" in ln]
    assert len(lines) == 1 and lines[0].startswith(sweep_id[:8])
    assert "SUCCEEDED" in lines[0] and "6/6 done" in lines[0]
    # ... which --expand opens, and `orch status SWEEP` (id or name) details.
    expanded = orch("status", "--expand").output
    assert all(j[:8] in expanded for j in job_ids) and "LR=0.01" in expanded
    one = json.loads(orch("status", sweep_id[:8], "--json").output)
    assert one["state"] == "SUCCEEDED" and one["counts"] == {"SUCCEEDED": 6}
    assert [j["sweep_params"] for j in one["jobs"]][:2] == [{"LR": "0.1", "BATCH": "16"}, {"LR": "0.1", "BATCH": "32"}]
    assert json.loads(orch("status", "grid", "--json").output)["sweep_id"] == sweep_id


def test_cancelling_a_sweep_cancels_every_point_that_has_not_ended(orch, orch_home, tmp_path, config):
    config("platforms:\n  local: {type: local, max_concurrent: 1}\ncontroller: {grace: 1s}\n")
    path = make_job(tmp_path / "job", """\
        name: slow
        run: sleep 30
        sweep:
          points: [{N: 1}, {N: 2}, {N: 3}]
        """)
    doc = submitted(orch, path)
    tick_until(lambda app: app.store.job(doc["jobs"][0]).state.value == "RUNNING")
    r = orch("cancel", doc["sweep_id"][:8])
    assert r.exit_code == 0, r.output
    assert r.output.count("cancelled") == 3
    app = open_app()
    assert [app.store.job(j).state.value for j in doc["jobs"]] == ["CANCELLED"] * 3
    app.close()
    again = orch("cancel", doc["sweep_id"][:8])
    assert again.exit_code == 1 and "already ended" in again.output


def test_points_form_and_grid_form_expand_in_a_stable_order(tmp_path):
    spec = loads("run: x\nsweep:\n  points:\n    - {A: 1, B: x}\n    - {A: 2, B: true}\n", tmp_path / "job.yaml")
    assert expand(spec.sweep) == [{"A": "1", "B": "x"}, {"A": "2", "B": "true"}]
    spec = loads("run: x\nsweep:\n  grid: {A: [1, 2], B: [x, y]}\n", tmp_path / "job.yaml")
    assert expand(spec.sweep) == [{"A": "1", "B": "x"}, {"A": "1", "B": "y"}, {"A": "2", "B": "x"}, {"A": "2", "B": "y"}]
    assert point_name("n" * 64, 7, 12) == "n" * 61 + "-07"
    assert progress({"SUCCEEDED": 3, "FAILED": 1, "RUNNING": 1, "QUEUED": 1}) == \
        "4/6 done (1 failed, 3 succeeded), 1 running, 1 queued"


@pytest.mark.parametrize("text, message", [
    ("sweep:\n  grid: {LR: [1]}\n  points: [{LR: 2}]\n", "job.yaml:2: sweep: give either `grid:` or `points:`, not both"),
    ("sweep:\n  grid: {ORCH_X: [1]}\n", "job.yaml:3: sweep.grid: 'ORCH_X': names starting with ORCH_ are reserved"),
    ("sweep:\n  grid: {lr-rate: [1]}\n", "'lr-rate' is not a valid parameter name"),
    ("sweep:\n  points: [{A: [1, 2]}]\n", "A: a parameter value must be a string, number or boolean"),
    ("sweep:\n  grid: {A: []}\n", "A: give at least one value"),
    ("sweep: {}\n", "give `grid:` (every combination) or `points:`"),
    ("sweep:\n  grid: {A: [1,2,3,4,5,6,7,8,9,10,11], B: [1,2,3,4,5,6,7,8,9,10], C: [1,2,3,4,5,6,7,8,9,10]}\n",
     "1100 points is more than 1000; split the sweep"),
])
def test_a_wrong_sweep_is_one_line_naming_the_line_and_the_fix(orch, orch_home, tmp_path, text, message):
    path = make_job(tmp_path / "job", "run: x\n" + text)
    r = orch("submit", str(path))
    assert r.exit_code == 2
    assert message in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1 or len(r.output) < 300


def test_a_sweep_has_fetch_logs_and_retry_by_id_and_by_name(orch, orch_home, tmp_path, config):
    """Issue 17 Major 7: `orch fetch/logs/retry SWEEP` work on the sweep's points."""
    import csv

    config("platforms:\n  local: {type: local, max_concurrent: 4}\n")
    path = make_job(tmp_path / "job", """\
        name: fl
        run: echo "point $LR" > $ORCH_OUTPUT_DIR/point.txt; echo "log of $LR"; [ "$LR" != bad ]
        sweep:
          grid:
            LR: [a, bad, c]
        """)
    doc = submitted(orch, path)
    sweep_id, job_ids = doc["sweep_id"], doc["jobs"]
    tick_until(lambda app: all(app.store.job(j).state.terminal for j in job_ids), timeout=90)

    for ref in (sweep_id[:8], "fl"):
        dest = tmp_path / f"out-{ref}"
        r = orch("fetch", ref, "-o", str(dest), "--json")
        assert r.exit_code == 0, r.output
        got = json.loads(r.output)
        assert got["sweep_id"] == sweep_id and len(got["fetched"]) == 3
        assert (dest / "fl-0" / "outputs" / "point.txt").read_text() == "point a\n"
        rows = list(csv.DictReader(open(dest / "summary.csv")))
        assert [(x["LR"], x["state"], x["exit_code"]) for x in rows] == [
            ("a", "SUCCEEDED", "0"), ("bad", "FAILED", "1"), ("c", "SUCCEEDED", "0")]
    shown = orch("fetch", sweep_id[:8], "-o", str(tmp_path / "table"))
    assert shown.exit_code == 0 and "3 of 3 points fetched" in shown.output and "LR" in shown.output

    logs = orch("logs", "fl")
    assert logs.exit_code == 0, logs.output
    assert logs.output.index("log of a") < logs.output.index("log of bad") < logs.output.index("log of c")
    assert "(LR=bad): FAILED" in logs.output
    assert orch("logs", "fl", "-f").exit_code == 2  # follow one point, said in one line

    r = orch("retry", sweep_id[:8])
    assert r.exit_code == 0 and r.output.count("requeued") == 1, r.output
    states = {j["id"]: j["state"] for j in json.loads(orch("status", "--json").output)}
    assert sorted(states.values()) == ["QUEUED", "SUCCEEDED", "SUCCEEDED"]
    again = orch("retry", sweep_id[:8])  # nothing left to retry: one line
    assert again.exit_code == 1 and again.output.strip().count("\n") == 0 and "nothing to retry" in again.output
