"""`orch submit` refuses what can never work before anything is queued, and --dry-run
refuses exactly what a real submit refuses."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import make_job


def _queue(orch) -> list:
    return json.loads(orch("status", "--json").output)


SWEEP = "run: 'true'\nsweep: {grid: {LR: [1, 2, 3]}}\n"


def test_wait_on_a_sweep_is_refused_before_queuing(orch, tmp_path):
    r = orch("submit", str(make_job(tmp_path / "s", SWEEP)), "--wait")
    assert r.exit_code == 2 and "--wait follows one job" in r.output
    assert _queue(orch) == []


@pytest.mark.parametrize("args,expect", [
    (("--platform", "nosuch"), "unknown platform 'nosuch'"),
    (("--platform", ""), "unknown platform ''"),
    (("--interval", "-1", "--wait"), "--interval"),
])
def test_bad_options_exit_2_and_queue_nothing(orch, tmp_path, args, expect):
    r = orch("submit", str(make_job(tmp_path / "j", "run: 'true'\n")), *args)
    assert r.exit_code == 2 and expect in r.output, r.output
    assert _queue(orch) == []


def test_dry_run_refuses_what_submit_refuses_with_the_same_exit_code(orch, tmp_path):
    path = make_job(tmp_path / "g", "run: 'true'\nresources: {gpu: A100}\n")
    real = orch("submit", str(path))
    dry = orch("submit", str(path), "--dry-run")
    assert real.exit_code == dry.exit_code != 0
    assert real.output == dry.output
    assert _queue(orch) == []


def test_skipped_fifos_are_listed_at_submit(orch, tmp_path):
    path = make_job(tmp_path / "f", "run: 'true'\n")
    os.mkfifo(path.parent / "pipe")
    r = orch("submit", str(path))
    assert r.exit_code == 0 and "warning: pipe was not bundled" in r.output
