"""`type: colab` end to end through the fake `colab` CLI (bridging to the real sshd)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.platforms.ssh.conftest import make_job

DONE = {"SUCCEEDED", "FAILED", "LOST", "CANCELLED"}


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
            "heartbeat_interval": "1s",
            "heartbeat_timeout": "5s",
            "reconnect_tries": 2,
            "reconnect_delay": "0.1s",
            "cli_timeout": "10s",
            "new_timeout": "10s",
        }
        entry.update(overrides)
        return entry

    return make


def test_submit_to_fetch_on_colab_then_the_runtime_is_stopped(orch, colab, colab_platform, tmp_path):
    data = os.urandom(500_000)
    orch.configure({"colab": colab_platform()})
    job_id = orch.submit(make_job(tmp_path / "j", dataset=data, platforms=("colab",)))
    job = orch.tick_until(job_id, DONE, timeout=40)
    assert job["state"] == "SUCCEEDED", job["message"]
    target = Path(orch.json("fetch", job_id, "-o", str(tmp_path / "out"))["path"])
    assert (target / "outputs" / "digest.txt").read_text() == hashlib.sha256(data).hexdigest()
    [new] = colab.calls("new")
    assert new[new.index("--gpu") + 1] == "T4" and new[new.index("-s") + 1].startswith("orch-")
    assert colab.sessions() == [] and ["stop", "-s", new[new.index("-s") + 1]] in colab.calls("stop")
    proxies = [c for c in colab.calls("ssh")]
    assert proxies and all("-i" in c and "--proxy-mode" in c for c in proxies)


def test_an_orphaned_runtime_from_a_crashed_tick_is_stopped_by_the_next_tick(orch, colab, colab_platform, tmp_path):
    orch.configure({"colab": colab_platform()})
    job_id = orch.submit(make_job(tmp_path / "j", platforms=("colab",)))
    env = {**os.environ, "ORCH_FAILPOINTS": "colab_after_new"}
    crashed = subprocess.run([sys.executable, "-m", "orchestrator", "tick"], env=env, capture_output=True, timeout=60)
    assert crashed.returncode == -signal.SIGKILL
    [session] = [s["name"] for s in colab.sessions()]
    orch("cancel", job_id)   # the attempt is gone; its runtime is now nobody's
    assert [s["name"] for s in colab.sessions()] == [session]
    orch("tick")
    assert colab.sessions() == []
    assert ["stop", "-s", session] in colab.calls("stop")


def test_a_crash_after_new_reuses_the_runtime_instead_of_creating_another(orch, colab, colab_platform, tmp_path):
    orch.configure({"colab": colab_platform()})
    job_id = orch.submit(make_job(tmp_path / "j", platforms=("colab",)))
    env = {**os.environ, "ORCH_FAILPOINTS": "colab_after_new"}
    subprocess.run([sys.executable, "-m", "orchestrator", "tick"], env=env, capture_output=True, timeout=60)
    job = orch.tick_until(job_id, DONE, timeout=40)
    assert job["state"] == "SUCCEEDED", job["message"]
    assert len(colab.calls("new")) == 1 and colab.sessions() == []


def test_tier_free_is_refused_and_says_why(orch, colab, colab_platform, tmp_path):
    orch.configure({"colab": colab_platform(tier="free")})
    listing = orch("platforms").output
    assert "terms forbid SSH" in " ".join(listing.split())
    job_id = orch.submit(make_job(tmp_path / "j", platforms=("colab",)))
    orch("tick")
    job = orch.state(job_id)
    assert job["state"] == "QUEUED" and "terms" in job["message"]
    assert colab.calls("new") == [] and colab.calls("ssh") == []


def test_missing_cli_is_reported_with_the_install_command(orch, colab_platform, tmp_path):
    orch.configure({"colab": colab_platform(colab_bin=str(tmp_path / "no" / "colab"))})
    assert "pipx install google-colab-cli" in " ".join(orch("platforms").output.split())


def test_no_compute_units_left_creates_no_runtime(orch, colab, colab_platform, tmp_path):
    colab.update(balance=0.0)
    orch.configure({"colab": colab_platform()})
    job_id = orch.submit(make_job(tmp_path / "j", platforms=("colab",)))
    orch("tick")
    assert orch.state(job_id)["state"] == "QUEUED"
    assert colab.calls("new") == []


def test_hardware_other_than_asked_is_stopped_at_once(orch, colab, colab_platform, tmp_path):
    orch.configure({"colab": colab_platform(gpu="T4")})
    colab.update(substitute={"T4": "A100"})
    job_id = orch.submit(make_job(tmp_path / "j", platforms=("colab",)))
    orch("tick")
    job = orch.state(job_id)
    assert job["state"] == "QUEUED" and "got A100" in job["message"]
    assert len(colab.calls("new")) == 1 and colab.sessions() == [] and colab.calls("ssh") == []


def test_an_accelerator_the_account_cannot_get_requeues_the_job(orch, colab, colab_platform, tmp_path):
    orch.configure({"colab": colab_platform(gpu="H100")})
    colab.update(eligible=["T4"])
    job_id = orch.submit(make_job(tmp_path / "j", platforms=("colab",)))
    orch("tick")
    job = orch.state(job_id)
    assert job["state"] == "QUEUED" and "rejected accelerator" in job["message"]
    assert colab.sessions() == []


def test_a_recycled_runtime_makes_the_attempt_lost_without_creating_a_new_one(orch, colab, colab_platform, tmp_path):
    orch.configure({"colab": colab_platform()})
    job_id = orch.submit(make_job(tmp_path / "j", platforms=("colab",), script="import time; time.sleep(30)",
                                  extra="retries: 0\n"))
    orch.tick_until(job_id, {"RUNNING", "PENDING"}, timeout=30)
    [session] = colab.sessions()
    subprocess.run([str(colab.executable), "stop", "-s", session["name"]], check=True, capture_output=True)
    try:
        job = orch.tick_until(job_id, {"LOST"}, timeout=20)
    finally:  # the fake "runtime" is this machine: end the run the stop left behind
        for pid_file in (tmp_path / "content").glob("attempts/*/pid"):
            try:
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert "runtime is gone" in job["message"]
    assert len(colab.calls("new")) == 1 and colab.sessions() == []
