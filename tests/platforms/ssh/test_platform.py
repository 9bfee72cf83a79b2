"""`type: ssh` end to end: the real `orch` CLI and controller, a real sshd, a cuttable relay."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path


from tests.conftest import orch_process, submit, wait_until
from tests.platforms.conftest import DONE, fetched, job_state, outputs, ssh_job, tick_until_state


def _attempt_dirs(remote: Path) -> list[Path]:
    attempts = remote / "attempts"
    return sorted(attempts.iterdir()) if attempts.is_dir() else []


def test_submit_tick_fetch_over_ssh_then_the_same_dataset_is_never_sent_again(orch, config, ssh_platform, relay, tmp_path):
    data = os.urandom(2_000_000)
    config(platforms={"lab": ssh_platform(proxy_command=" ".join(relay.argv))})
    first = submit(orch, ssh_job(tmp_path / "a", name="first", dataset=data))
    job = tick_until_state(orch, first, DONE)
    assert job["state"] == "SUCCEEDED", job["message"]
    assert outputs(orch, first, tmp_path / "out-a")["digest.txt"].decode() == hashlib.sha256(data).hexdigest()
    assert _attempt_dirs(tmp_path / "remote") == []  # cleaned after the fetch
    up_first, _ = relay.traffic()
    assert up_first > len(data)

    second = submit(orch, ssh_job(tmp_path / "b", name="second", dataset=data))
    assert tick_until_state(orch, second, DONE)["state"] == "SUCCEEDED"
    up_second = relay.traffic()[0] - up_first
    assert up_second < len(data) / 4, f"the dataset was sent again ({up_second} bytes up)"
    assert outputs(orch, second, tmp_path / "out-b")["digest.txt"].decode() == hashlib.sha256(data).hexdigest()


def test_cuts_mid_upload_mid_poll_and_mid_fetch_still_complete_the_job_exactly_once(orch, config, ssh_platform, relay, tmp_path):
    data = os.urandom(3_000_000)
    ledger = tmp_path / "runs.log"
    script = (
        "import os, pathlib, time\n"
        f"with open({str(ledger)!r}, 'a') as f: f.write(os.environ['ORCH_ATTEMPT'] + '\\n')\n"
        "time.sleep(1.5)\n"
        "pathlib.Path(os.environ['ORCH_OUTPUT_DIR'], 'big.bin').write_bytes("
        "(pathlib.Path(os.environ['ORCH_DATA']) / 'ds' / 'blob.bin').read_bytes())\n"
    )
    config(platforms={"lab": ssh_platform(proxy_command=" ".join(relay.argv))})
    job_id = submit(orch, ssh_job(tmp_path / "j", script=script, dataset=data))

    relay.cut_after("up", 1_000_000)          # the tunnel dies a third into the upload
    tick_until_state(orch, job_id, {"PENDING", "RUNNING"}, timeout=30)
    assert relay.started() >= 2

    relay.cut()                                # ... while the job runs
    orch("tick")
    relay.cut_after("down", 1_500_000)        # ... and half way through the download
    job = tick_until_state(orch, job_id, DONE, timeout=40)

    assert job["state"] == "SUCCEEDED", job["message"]
    assert ledger.read_text().split() == ["1"]  # ran exactly once
    assert outputs(orch, job_id, tmp_path / "out")["big.bin"] == data


def test_a_fetch_cut_mid_file_resumes_on_the_next_tick_from_the_kept_staging(orch, config, orch_home, ssh_platform,
                                                                            relay, tmp_path):
    script = "import os, pathlib; pathlib.Path(os.environ['ORCH_OUTPUT_DIR'], 'big.bin').write_bytes(os.urandom(3_000_000))\n"
    # One try per call: the cut fails this tick's fetch instead of being retried within it.
    config(platforms={"lab": ssh_platform(proxy_command=" ".join(relay.argv), reconnect_tries=1)})
    job_id = submit(orch, ssh_job(tmp_path / "j", script=script))
    tick_until_state(orch, job_id, {"PENDING", "RUNNING"}, timeout=30)
    # Once the run has ended, the next tick's connection is the one that fetches.
    wait_until(lambda: list((tmp_path / "remote" / "attempts").glob("*/rc")), 30, "the run ended")
    relay.cut_after("down", 1_500_000)  # taken by the next tick's connection: half way through the fetch
    parts: list[Path] = []
    deadline = time.monotonic() + 40
    while not parts and job_state(orch, job_id)["state"] not in DONE:
        assert time.monotonic() < deadline, job_state(orch, job_id)["message"]
        orch("tick")
        parts = list((orch_home / "staging").glob("*/outputs.tar.gz.part"))
        time.sleep(0.1)
    assert parts and parts[0].stat().st_size > 0, "the cut fetch left no partial file to resume"
    assert job_state(orch, job_id)["state"] == "FETCHING"

    job = tick_until_state(orch, job_id, DONE, timeout=40)

    assert job["state"] == "SUCCEEDED", job["message"]
    assert len(outputs(orch, job_id, tmp_path / "out")["big.bin"]) == 3_000_000
    assert not (orch_home / "staging" / parts[0].parent.name).exists()  # removed once settled


def test_a_killed_relay_spins_no_cpu_goes_unknown_and_recovers_when_it_returns(orch, config, ssh_platform, relay, tmp_path):
    config(platforms={"lab": ssh_platform(proxy_command=" ".join(relay.argv), heartbeat_timeout="30s")})
    job_id = submit(orch, ssh_job(tmp_path / "j", script="import time; time.sleep(2.5); print('slept')"))
    tick_until_state(orch, job_id, {"RUNNING", "PENDING"})

    relay.down("exit")
    relay.cut()
    cpu = time.process_time()
    orch("tick")
    assert job_state(orch, job_id)["state"] == "UNKNOWN"
    time.sleep(1.0)
    assert time.process_time() - cpu < 1.0  # a spinning proxy would burn a core during the tick

    relay.up()
    job = tick_until_state(orch, job_id, DONE, timeout=30)
    assert job["state"] == "SUCCEEDED", job["message"]
    assert b"slept" in fetched(orch, job_id, tmp_path / "out").joinpath("job.log").read_bytes()


def test_wrong_host_key_fails_the_precheck_showing_the_fingerprint_and_uploads_nothing(orch, config, ssh_platform, sshd, tmp_path):
    from tests.emulators.sshd import generate_ed25519

    impostor = generate_ed25519(tmp_path / "impostor")
    known = tmp_path / "wrong_known_hosts"
    known.write_text(f"{sshd.host_key_name} {impostor.key_type} {impostor.base64}\n")
    config(platforms={"lab": ssh_platform(known_hosts=str(known))})
    job_id = submit(orch, ssh_job(tmp_path / "j"))
    job = tick_until_state(orch, job_id, DONE)
    real = __import__("paramiko").PKey.from_path(sshd.host_key.private).fingerprint
    assert job["state"] == "FAILED" and "CHANGED" in job["message"] and real in job["message"]
    assert not (tmp_path / "remote").exists()


def test_a_host_key_that_changes_during_a_run_makes_it_unknown_not_failed(orch, config, ssh_platform, sshd,
                                                                          tmp_path):
    from tests.emulators.sshd import generate_ed25519

    known = tmp_path / "pins"
    sshd.write_known_hosts(known)
    config(platforms={"lab": ssh_platform(known_hosts=str(known))})
    job_id = submit(orch, ssh_job(tmp_path / "j", script="import time; time.sleep(1.5)"))
    tick_until_state(orch, job_id, {"RUNNING", "PENDING"})
    impostor = generate_ed25519(tmp_path / "impostor")
    known.write_text(f"{sshd.host_key_name} {impostor.key_type} {impostor.base64}\n")
    assert orch("tick").exit_code == 0
    job = job_state(orch, job_id)
    assert job["state"] == "UNKNOWN" and "CHANGED" in job["message"]
    sshd.write_known_hosts(known)  # the user checked and pinned the right key again
    assert tick_until_state(orch, job_id, DONE)["state"] == "SUCCEEDED"


def test_shell_metacharacters_in_paths_and_values_inject_nothing(orch, config, orch_home, ssh_platform, tmp_path,
                                                                   monkeypatch):
    evil_dir = tmp_path / "it's a $(touch PWNED1) `touch PWNED2` dir"
    monkeypatch.setenv("TEST_SECRET_VALUE", "s3cr3t $(touch PWNED3); 'quoted'")
    config(platforms={"lab": ssh_platform(remote_dir=str(evil_dir))})
    script = (
        "import os, pathlib\n"
        "pathlib.Path(os.environ['ORCH_OUTPUT_DIR'], 'seen.txt').write_text("
        "os.environ['PLAIN'] + '|' + os.environ['TEST_SECRET_VALUE'])\n"
    )
    job_yaml = ssh_job(tmp_path / "code dir; $(touch PWNED4)", script=script,
                        extra="env:\n  PLAIN: \"$(touch PWNED5) && echo 'hi'\"\nsecrets: [TEST_SECRET_VALUE]\n")
    job_id = submit(orch, job_yaml)
    job = tick_until_state(orch, job_id, DONE)
    assert job["state"] == "SUCCEEDED", job["message"]
    seen = outputs(orch, job_id, tmp_path / "out")["seen.txt"].decode()
    assert seen == "$(touch PWNED5) && echo 'hi'|s3cr3t $(touch PWNED3); 'quoted'"
    assert not [p for p in tmp_path.rglob("PWNED*")] and not list(Path.home().glob("PWNED*"))
    assert b"s3cr3t" not in (orch_home / "state.db").read_bytes()


def test_a_stale_heartbeat_on_a_reachable_host_makes_the_attempt_lost_and_kills_it(orch, config, ssh_platform, tmp_path):
    config(platforms={"lab": ssh_platform(heartbeat_timeout="2s")})
    job_id = submit(orch, ssh_job(tmp_path / "j", script="import time; time.sleep(60)", extra="retries: 0\n"))
    tick_until_state(orch, job_id, {"RUNNING"})
    [attempt] = _attempt_dirs(tmp_path / "remote")
    pid = int((attempt / "pid").read_text())
    os.killpg(pid, signal.SIGSTOP)  # a hung runner: alive, but its heartbeat stops
    try:
        job = tick_until_state(orch, job_id, {"LOST", "QUEUED"}, timeout=20)
    finally:
        try:
            os.killpg(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert "heartbeat" in job["message"]
    wait_until(lambda: not _session_alive(pid), 10, "remote session gone")


def _session_alive(sid: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            return True
    return False


def test_cancel_stops_the_remote_run_and_its_process_group(orch, config, ssh_platform, tmp_path):
    config(platforms={"lab": ssh_platform()})
    job_id = submit(orch, ssh_job(tmp_path / "j", script="import time; time.sleep(120)"))
    tick_until_state(orch, job_id, {"RUNNING"})
    [attempt] = _attempt_dirs(tmp_path / "remote")
    pid = int((attempt / "pid").read_text())
    orch("cancel", job_id)
    assert job_state(orch, job_id)["state"] == "CANCELLED"
    wait_until(lambda: not _session_alive(pid), 10, "remote session gone")
    # SIGTERM first: the runner had time to stop the job itself and say so.
    assert json.loads((attempt / "result.json").read_text())["status"] == "cancelled"


def test_logs_follow_tails_the_running_job_over_ssh(orch, config, ssh_platform, tmp_path):
    config(platforms={"lab": ssh_platform()})
    script = "import time\nfor i in range(3):\n    print('line', i, flush=True)\n    time.sleep(0.5)\n"
    job_id = submit(orch, ssh_job(tmp_path / "j", script=script))
    tick_until_state(orch, job_id, {"RUNNING"})
    ticker = threading.Thread(target=lambda: tick_until_state(orch, job_id, DONE, timeout=30))
    result = {}
    ticker.start()
    try:
        result["out"] = orch("logs", job_id, "-f", "--interval", "0.3").output
    finally:
        ticker.join(40)
    assert all(f"line {i}" in result["out"] for i in range(3))


def test_a_tick_killed_after_submitting_is_adopted_by_the_next_one(orch, config, ssh_platform, tmp_path):
    ledger = tmp_path / "runs.log"
    config(platforms={"lab": ssh_platform()})
    script = f"import os\nwith open({str(ledger)!r}, 'a') as f: f.write(os.environ['ORCH_ATTEMPT'] + '\\n')\n"
    job_id = submit(orch, ssh_job(tmp_path / "j", script=script))
    crashed = orch_process("tick", env={"ORCH_FAILPOINTS": "after_submit"})
    assert crashed.returncode == -signal.SIGKILL
    assert job_state(orch, job_id)["state"] == "SUBMITTING"
    job = tick_until_state(orch, job_id, DONE)
    assert job["state"] == "SUCCEEDED" and ledger.read_text().split() == ["1"]


def test_no_secret_lands_in_the_home_the_remote_dir_or_status(orch, config, orch_home, ssh_platform, tmp_path,
                                                                monkeypatch):
    monkeypatch.setenv("TEST_TOKEN_VALUE", "tok-" + os.urandom(6).hex())
    config(platforms={"lab": ssh_platform()})
    script = "import os\nprint('token is', os.environ['TEST_TOKEN_VALUE'])\n"
    job_id = submit(orch, ssh_job(tmp_path / "j", script=script, extra="secrets: [TEST_TOKEN_VALUE]\n"))
    assert tick_until_state(orch, job_id, DONE)["state"] == "SUCCEEDED"
    token = os.environ["TEST_TOKEN_VALUE"].encode()
    for path in list(orch_home.rglob("*")) + list((tmp_path / "remote").rglob("*")):
        if path.is_file():
            assert token not in path.read_bytes(), path
    assert token.decode() not in json.dumps(job_state(orch, job_id))
