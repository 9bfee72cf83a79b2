"""Issue 16.1: in a shared queue a member cannot reach another member's secrets or
controller environment. Each test performs the attack on a real PostgreSQL queue,
with two members told apart by ``ORCH_USER`` (as two laptops are)."""

from __future__ import annotations

import base64
import json

import pytest

from orchestrator.states import JobState
from tests.conftest import make_job, open_app, submit, tick_until

state_backend = pytest.fixture(lambda: "postgres")

TOKEN = "hf_bobs-team-token-7d1e"

#: Alice's job: writes the secret's value, base64-encoded, into its outputs.
STEAL = """\
name: steal
secrets: [TEAM_HF_TOKEN]
run: >-
  python -c "import os, base64; open(os.environ['ORCH_OUTPUT_DIR'] + '/loot.txt', 'w').write(
  base64.b64encode(os.environ.get('TEAM_HF_TOKEN', '').encode()).decode())"
"""


def _as(monkeypatch, who: str) -> None:
    monkeypatch.setenv("ORCH_USER", who)


def alice_submits_bob_ticks(orch, tmp_path, monkeypatch, extra: str = ""):
    """The attack: Alice queues STEAL, Bob's controller (holding the token) ticks."""
    _as(monkeypatch, "alice")
    job_id = submit(orch, make_job(tmp_path / "job", STEAL + extra))
    _as(monkeypatch, "bob")
    monkeypatch.setenv("TEAM_HF_TOKEN", TOKEN)
    orch("tick")
    return _job(job_id)


def loot(orch, tmp_path, job_id: str) -> str:
    out = tmp_path / "out"
    orch("fetch", job_id, "-o", str(out))
    return base64.b64decode((out / "outputs" / "loot.txt").read_text()).decode()


def _job(job_id: str):
    app = open_app()
    try:
        return app.store.job(job_id)
    finally:
        app.close()


def test_another_members_job_does_not_get_this_controllers_secret(orch, orch_home, tmp_path, monkeypatch):
    job = alice_submits_bob_ticks(orch, tmp_path, monkeypatch)
    assert job.state == JobState.QUEUED  # waits for a controller that may give it
    assert "TEAM_HF_TOKEN" in job.message and "team.share_secrets" in job.message
    plan = orch("plan", "--json")
    assert "team.share_secrets" in plan.output  # `orch plan` says why


def test_kaggle_secrets_cannot_be_asked_for_at_all(orch, orch_home, tmp_path):
    # `secrets_from: kaggle` read Kaggle Secrets from the dispatching controller's account;
    # the feature is gone (a push cannot attach secrets), so the theft has no way in.
    job = make_job(tmp_path / "k", "name: k\nrun: env\nsecrets: [TEAM_HF_TOKEN]\nsecrets_from: kaggle\n")
    result = orch("submit", str(job))
    assert result.exit_code == 2 and "secrets_from: kaggle is not supported" in " ".join(result.output.split())


def test_a_shared_secret_reaches_another_members_job_only_where_config_allows(orch, orch_home, tmp_path,
                                                                             monkeypatch, config):
    config("""\
        platforms: {local: {type: local}}
        team: {share_secrets: [TEAM_HF_TOKEN]}
        """)
    job = alice_submits_bob_ticks(orch, tmp_path, monkeypatch)
    assert job.state == JobState.QUEUED and "run_others_locally" in job.message  # not on bob's machine
    config("""\
        platforms: {local: {type: local}}
        team: {share_secrets: [TEAM_HF_TOKEN], run_others_locally: true}
        """)
    tick_until(lambda app: app.store.job(job.id).state.terminal)
    assert loot(orch, tmp_path, job.id) == TOKEN  # shared on purpose


def test_own_jobs_get_every_secret(orch, orch_home, tmp_path, monkeypatch):
    _as(monkeypatch, "bob")
    monkeypatch.setenv("TEAM_HF_TOKEN", TOKEN)
    job_id = submit(orch, make_job(tmp_path / "job", STEAL))
    tick_until(lambda app: app.store.job(job_id).state == JobState.SUCCEEDED)
    assert loot(orch, tmp_path, job_id) == TOKEN


def test_local_jobs_start_with_a_clean_environment(orch, orch_home, tmp_path, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "pg-password-91c3")
    monkeypatch.setenv("KAGGLE_KEY", "kaggle-key-55ab")
    path = make_job(tmp_path / "job", """\
        name: env
        env: {MINE: ok}
        run: >-
          env; python -c "import os, json; open(os.environ['ORCH_OUTPUT_DIR'] + '/env.json', 'w').write(json.dumps(dict(os.environ)))"
        """)
    job_id = submit(orch, path)
    tick_until(lambda app: app.store.job(job_id).state == JobState.SUCCEEDED)
    out = tmp_path / "out"
    orch("fetch", job_id, "-o", str(out))
    env = json.loads((out / "outputs" / "env.json").read_text())
    assert "PGPASSWORD" not in env and "KAGGLE_KEY" not in env and "ORCH_STATE_URL" not in env
    assert env["MINE"] == "ok" and env["HOME"] and env["PATH"]
    log = (out / "job.log").read_text()
    assert "pg-password-91c3" not in log and "kaggle-key-55ab" not in log
