"""`type: colab` end to end through the fake `colab` CLI (bridging to the real sshd)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys

import pytest

from tests.conftest import orch_process, submit
from tests.platforms.conftest import DONE, fetched, job_state, kill_remote_runs, ssh_job, tick_until_state


@pytest.fixture
def colab_platform(colab, sshd, tmp_path):
    def make(**overrides) -> dict:
        entry = {
            "type": "colab",
            "gpu": "T4",
            "tier": "pro",
            "colab_bin": str(colab.executable),
            "key": str(sshd.client_key.private),
            "user": sshd.user,
            "remote_dir": str(tmp_path / "content"),
            "python": sys.executable,
            "heartbeat_interval": "0.5s",
            "heartbeat_timeout": "5s",
            "reconnect_tries": 2,
            "reconnect_delay": "0.1s",
            "cli_timeout": "10s",
            "new_timeout": "10s",
        }
        entry.update(overrides)
        return entry

    yield make
    kill_remote_runs(tmp_path)  # the fake "runtime" is this machine


def _platforms(orch) -> list[dict]:
    result = orch("platforms", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _crash_after_colab_new(orch) -> None:
    crashed = orch_process("tick", env={"ORCH_FAILPOINTS": "colab_after_new"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr


def test_submit_to_fetch_on_colab_then_the_runtime_is_stopped(orch, config, colab, colab_platform, tmp_path):
    data = os.urandom(500_000)
    config(platforms={"colab": colab_platform()})
    job_id = submit(orch, ssh_job(tmp_path / "j", dataset=data, platforms=("colab",)))
    job = tick_until_state(orch, job_id, DONE, timeout=40)
    assert job["state"] == "SUCCEEDED", job["message"]
    target = fetched(orch, job_id, tmp_path / "out")
    assert (target / "outputs" / "digest.txt").read_text() == hashlib.sha256(data).hexdigest()
    assert len(colab.calls("/tun/m/assign", "POST")) == 1 and colab.calls("/colab/ssh")
    assert colab.live() == [] and len(colab.calls("/tun/m/unassign/", "POST")) == 1


def test_an_orphaned_runtime_from_a_crashed_tick_is_stopped_by_the_next_tick(orch, config, colab, colab_platform,
                                                                            tmp_path):
    config(platforms={"colab": colab_platform()})
    job_id = submit(orch, ssh_job(tmp_path / "j", platforms=("colab",)))
    _crash_after_colab_new(orch)
    assert len(colab.live()) == 1
    assert orch("cancel", job_id).exit_code == 0  # the attempt is gone; its runtime is nobody's now
    assert orch("tick").exit_code == 0
    assert colab.live() == []


def test_a_crash_after_new_reuses_the_runtime_instead_of_creating_another(orch, config, colab, colab_platform,
                                                                          tmp_path):
    config(platforms={"colab": colab_platform()})
    job_id = submit(orch, ssh_job(tmp_path / "j", platforms=("colab",)))
    _crash_after_colab_new(orch)
    job = tick_until_state(orch, job_id, DONE, timeout=40)
    assert job["state"] == "SUCCEEDED", job["message"]
    assert len(colab.calls("/tun/m/assign", "POST")) == 1 and colab.live() == []


def test_tier_free_is_refused_and_says_why(orch, config, colab, colab_platform, tmp_path):
    config(platforms={"colab": colab_platform(tier="free")})
    [entry] = _platforms(orch)
    assert entry["available"] is False and "terms forbid SSH" in entry["reason"]
    job_id = submit(orch, ssh_job(tmp_path / "j", platforms=("colab",)))
    assert orch("tick").exit_code == 0
    job = job_state(orch, job_id)
    assert job["state"] == "QUEUED" and "terms" in job["message"]
    assert colab.calls("/tun/m/assign", "POST") == [] and colab.calls("/colab/ssh") == []


def test_missing_cli_is_reported_with_the_install_command(orch, config, colab_platform, tmp_path):
    config(platforms={"colab": colab_platform(colab_bin=str(tmp_path / "no" / "colab"))})
    [entry] = _platforms(orch)
    assert not entry["available"] and "pipx install 'google-colab-cli" in entry["reason"]
    assert any("pipx install 'google-colab-cli" in p for p in entry["problems"])


def test_the_compute_unit_balance_is_the_quota_and_zero_creates_no_runtime(orch, config, colab, colab_platform,
                                                                           tmp_path):
    colab.balance = 12.5
    config(platforms={"colab": colab_platform()})
    [entry] = _platforms(orch)
    assert entry["quota"]["unit"] == "compute_units" and entry["quota"]["limit"] == 12.5
    colab.balance = 0.0
    job_id = submit(orch, ssh_job(tmp_path / "j", platforms=("colab",)))
    assert orch("tick").exit_code == 0
    job = job_state(orch, job_id)
    # The scheduler's quota ledger (fed by `colab usage`) or the platform's own gate says no.
    assert job["state"] == "QUEUED" and ("CU left" in job["message"] or "compute-unit balance" in job["message"])
    assert colab.calls("/tun/m/assign", "POST") == []


def test_hardware_other_than_asked_is_stopped_at_once(orch, config, colab, colab_platform, tmp_path):
    config(platforms={"colab": colab_platform(gpu="T4")})
    colab.substitute = {"T4": "A100"}
    job_id = submit(orch, ssh_job(tmp_path / "j", platforms=("colab",)))
    assert orch("tick").exit_code == 0
    job = job_state(orch, job_id)
    assert job["state"] == "QUEUED" and "got A100" in job["message"]
    assert len(colab.calls("/tun/m/assign", "POST")) == 1 and colab.live() == [] and colab.calls("/colab/ssh") == []


def test_an_accelerator_the_account_cannot_get_requeues_the_job(orch, config, colab, colab_platform, tmp_path):
    config(platforms={"colab": colab_platform(gpu="H100")})
    colab.eligible = {"T4", "NONE"}
    job_id = submit(orch, ssh_job(tmp_path / "j", platforms=("colab",)))
    assert orch("tick").exit_code == 0
    job = job_state(orch, job_id)
    assert job["state"] == "QUEUED" and "rejected accelerator" in job["message"]
    assert colab.live() == []


def test_a_recycled_runtime_makes_the_attempt_lost_without_creating_a_new_one(orch, config, colab, colab_platform,
                                                                              tmp_path):
    config(platforms={"colab": colab_platform()})
    job_id = submit(orch, ssh_job(tmp_path / "j", platforms=("colab",), script="import time; time.sleep(30)",
                                  extra="retries: 0\n"))
    tick_until_state(orch, job_id, {"RUNNING", "PENDING"}, timeout=30)
    colab.vanish()
    kill_remote_runs(tmp_path)  # a stopped runtime takes its processes with it
    job = tick_until_state(orch, job_id, {"LOST"}, timeout=20)
    assert "runtime is gone" in job["message"]
    assert len(colab.calls("/tun/m/assign", "POST")) == 1 and colab.live() == []


def _launch(key: str):
    from orchestrator.platforms.base import Launch

    return Launch(key=key, job_id="j" * 8, job_name="demo", attempt=1, spec=None, bundle=None, max_runtime_s=60)


def test_the_platform_itself_refuses_free_tier_and_an_empty_balance(orch_home, config, colab, colab_platform):
    from orchestrator.app import App
    from orchestrator.errors import CapacityError, PrecheckError

    config(platforms={"free": colab_platform(tier="free"), "paid": colab_platform()})
    colab.balance = 0.0
    app = App.open()
    try:
        with pytest.raises(PrecheckError, match="terms forbid SSH"):
            app.platform("free").submit(_launch("oabc-1"))
        with pytest.raises(CapacityError, match="compute-unit balance is 0"):
            app.platform("paid").submit(_launch("oabc-2"))
    finally:
        app.close()
    assert colab.calls("/tun/m/assign", "POST") == [] and colab.calls("/colab/ssh") == []


def test_an_allocation_refusal_is_capacity_so_the_job_waits_instead_of_sitting_submitting(orch, config, colab,
                                                                                          colab_platform, tmp_path):
    config(platforms={"colab": colab_platform()})
    colab.refuse(412, times=5)
    job_id = submit(orch, ssh_job(tmp_path / "j", platforms=("colab",)))
    assert orch("tick").exit_code == 0
    job = job_state(orch, job_id)
    assert job["state"] == "QUEUED" and "Allocation refused" in job["message"]
    assert colab.live() == []


def test_a_run_survives_an_expired_runtime_token_and_a_cut_tunnel(orch, config, colab, colab_platform, tmp_path):
    config(platforms={"colab": colab_platform(heartbeat_timeout="30s")})
    colab.token_ttl_s = 3.0  # tokens die long before the 3600 s they claim (google-colab-cli #106)
    job_id = submit(orch, ssh_job(tmp_path / "j", platforms=("colab",), script="import time; time.sleep(8)"))
    tick_until_state(orch, job_id, {"RUNNING", "PENDING"}, timeout=40)
    colab.cut()
    job = tick_until_state(orch, job_id, DONE, timeout=60)
    assert job["state"] == "SUCCEEDED", job["message"]
    assert len(colab.calls("/tun/m/assign", "POST")) == 1 and colab.live() == []


def test_not_logged_in_shows_the_platform_unhealthy_with_the_login_hint(orch, config, colab, colab_platform):
    config(platforms={"colab": colab_platform()})
    (colab.home / ".config" / "colab-cli" / "token.json").unlink()
    [entry] = _platforms(orch)
    assert any("log in once" in p for p in entry["problems"]), entry


def test_a_world_readable_cli_log_is_reported_with_the_fix(orch, config, colab, colab_platform):
    config(platforms={"colab": colab_platform()})
    log = colab.home / ".config" / "colab-cli" / "colab.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("Authorization: Bearer ya29...\n")
    log.chmod(0o644)
    [entry] = _platforms(orch)
    assert any("chmod 600" in p for p in entry["problems"]), entry


def test_in_team_mode_another_machine_never_polls_or_loses_a_colab_attempt(orch, config, colab, colab_platform,
                                                                            tmp_path):
    import time

    from orchestrator.app import App
    from orchestrator.schema import attempts

    config(platforms={"colab": colab_platform()}, controller={"unknown_window": "1s"})
    job_id = submit(orch, ssh_job(tmp_path / "j", platforms=("colab",), script="import time; time.sleep(6)"))
    tick_until_state(orch, job_id, {"RUNNING"}, timeout=40)

    def set_host(name: str | None) -> None:
        app = App.open()
        try:
            with app.store.engine.begin() as conn:
                conn.execute(attempts.update().where(attempts.c.job_id == job_id).values(host=name))
        finally:
            app.close()

    set_host("another-machine")  # as if that controller had created it
    for _ in range(4):
        assert orch("tick").exit_code == 0
        time.sleep(0.5)
    assert job_state(orch, job_id)["state"] == "RUNNING" and len(colab.live()) == 1
    set_host(None)
    job = tick_until_state(orch, job_id, DONE, timeout=40)
    assert job["state"] == "SUCCEEDED", job["message"]
    assert colab.live() == []


@pytest.mark.parametrize("key", ["rsa", "missing"])
def test_an_rsa_or_missing_key_makes_colab_unavailable_before_the_cli_is_asked(orch, config, colab, colab_platform,
                                                                               tmp_path, key):
    """Issue 13 point 9: checked in orch (one line, the platform unavailable), never
    retried as transient, and no runtime is assigned for a key Colab would refuse."""
    import subprocess

    path = tmp_path / "id_rsa"
    if key == "rsa":
        subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(path)], check=True)
    config(platforms={"colab": colab_platform(key=str(path)), "laptop": {"type": "local", "gpu": "T4"}})
    job_id = submit(orch, ssh_job(tmp_path / "j", platforms=("colab", "laptop")))
    decision, = json.loads(orch("plan", "--json").output)
    assert decision["platform"] == "laptop"
    why = decision["verdicts"]["colab"]
    assert ("ssh-rsa" in why and "Ed25519 or ECDSA" in why) if key == "rsa" else "not found" in why
    job = tick_until_state(orch, job_id, DONE, timeout=40)
    assert job["state"] == "SUCCEEDED" and job["platform"] == "laptop"
    assert colab.calls("/tun/m/assign", "POST") == [] and colab.live() == []
    shown = {p["name"]: p for p in _platforms(orch)}["colab"]
    assert shown["available"] is False and shown["reason"] == why


def test_a_colab_new_cut_off_after_the_runtime_was_assigned_leaves_nothing_running(orch, config, colab,
                                                                                   colab_platform, tmp_path):
    """Issue 13 point 10: Colab assigns the runtime but the answer comes after orch's
    deadline, so `colab new` is killed and the runtime lists nameless (`[?]`). orch finds
    it (the one new nameless runtime of that call), stops it, and the job still runs once."""
    colab.stall_answer("/tun/m/assign", 20, method="POST")
    config(platforms={"colab": colab_platform(new_timeout="3s")})
    job_id = submit(orch, ssh_job(tmp_path / "j", platforms=("colab",)))
    orch("tick")  # `colab new` is killed at 3 s; the runtime exists upstream all the same
    orphan = [rt.endpoint for rt in colab.live()]
    assert len(orphan) == 1
    job = tick_until_state(orch, job_id, DONE, timeout=90)
    assert job["state"] == "SUCCEEDED", job["message"]
    assert colab.live() == []
    stopped = [path for _m, _h, path in colab.calls("/tun/m/unassign/", "POST")]
    assert any(path.endswith(orphan[0]) for path in stopped), "the nameless runtime was stopped"


def test_a_listing_that_lags_right_after_new_neither_loses_nor_duplicates_the_runtime(orch, config, colab,
                                                                                     colab_platform, tmp_path):
    """Colab's assignments listing can miss a runtime for a while after it was assigned:
    that is not "no runtime" — orch waits for it instead of creating a second one."""
    colab.listing_lag_s = 4.0
    config(platforms={"colab": colab_platform()})
    job_id = submit(orch, ssh_job(tmp_path / "j", platforms=("colab",)))
    job = tick_until_state(orch, job_id, DONE, timeout=90)
    assert job["state"] == "SUCCEEDED", job["message"]
    assert len(colab.calls("/tun/m/assign", "POST")) == 1 and colab.live() == []
