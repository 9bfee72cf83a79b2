"""A platform's own configuration or credential problem makes the *platform* unavailable:
placement skips it, `orch plan` says why, and the job runs where it can (issue 17, Major 1).
It is never the job's outcome: no FAILED "precheck failed on lab"."""

from __future__ import annotations

import json

import pytest

from tests.conftest import make_job, submit, tick_until


@pytest.fixture
def no_kaggle_credentials(monkeypatch, tmp_path):
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "empty-home" / ".kaggle"))


@pytest.mark.parametrize("broken, why", [
    ("lab: {type: ssh, host: gpu.example.org, key: ~/no-such-key}", "does not exist"),
    ("lab: {type: ssh, host: gpu.example.org}", "is not pinned; run `orch ssh trust lab`"),
    ("lab: {type: kaggle}", "no Kaggle credentials found"),
])
def test_a_misconfigured_platform_is_skipped_and_the_job_runs_elsewhere(orch, orch_home, tmp_path, config,
                                                                        no_kaggle_credentials, broken, why):
    pytest.importorskip("paramiko")
    if "kaggle" in broken:
        pytest.importorskip("kaggle")
    config(f"""\
        platforms:
          {broken}
          laptop: {{type: local, gpu: none}}
        """)
    job = make_job(tmp_path / "job", "name: anywhere\nrun: echo ran\nresources: {gpu: [any, none]}\n")
    plan = orch("submit", str(job), "--dry-run", "--json")
    assert plan.exit_code == 0, plan.output
    job_id = submit(orch, job)
    decision, = json.loads(orch("plan", "--json").output)
    assert decision["platform"] == "laptop"
    assert why in decision["verdicts"]["lab"]
    assert "lab is unavailable: " in orch("plan").output and why in " ".join(orch("plan").output.split())
    app = tick_until(lambda app: app.store.job(job_id).state.terminal, what="the job ends")
    row = app.store.job(job_id)
    assert row.state.value == "SUCCEEDED" and row.platform == "laptop"
    assert not any(a.platform == "lab" for a in app.store.attempts_of(job_id))


def test_a_job_pinned_to_a_misconfigured_platform_waits_with_the_reason(orch, orch_home, tmp_path, config):
    pytest.importorskip("paramiko")
    config("""\
        platforms:
          lab: {type: ssh, host: gpu.example.org, key: ~/no-such-key}
          laptop: {type: local, gpu: none}
        """)
    job = make_job(tmp_path / "job", "name: pinned\nrun: echo ran\nplatforms: [lab]\nresources: {gpu: none}\n")
    job_id = submit(orch, job)
    for _ in range(2):
        assert orch("tick").exit_code == 0
    row, = json.loads(orch("status", "--json").output)
    assert row["id"] == job_id and row["state"] == "QUEUED"  # waiting for the platform, not FAILED
    assert "does not exist" in row["message"]
