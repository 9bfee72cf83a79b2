"""An SSH session killed during each remote operation is "I could not hear the host",
never an answer: the attempt goes UNKNOWN (or its submit is retried) and recovers, the
job runs exactly once, and nothing is FAILED or thrown away."""

from __future__ import annotations

import json
import os

from orchestrator.app import App
from tests.conftest import submit
from tests.platforms.conftest import DONE, outputs, ssh_job, tick_until_state

#: What each fault matches in the request sshd receives (the command text, or the SFTP session).
STATUS_READ = 'echo "exists 1"'
SHA256 = "sha256sum"
MKDIR = 'mkdir -p -- "$1"'
START = "setsid nohup"
SFTP = "internal-sftp"


def test_sessions_killed_during_every_kind_of_operation_still_run_the_job_exactly_once(
        orch, config, ssh_platform, faults, tmp_path):
    data = os.urandom(600_000)
    ledger = tmp_path / "runs.log"
    script = (
        "import os, pathlib\n"
        f"with open({str(ledger)!r}, 'a') as f: f.write(os.environ['ORCH_ATTEMPT'] + '\\n')\n"
        "blob = (pathlib.Path(os.environ['ORCH_DATA']) / 'ds' / 'blob.bin').read_bytes()\n"
        "pathlib.Path(os.environ['ORCH_OUTPUT_DIR'], 'copy.bin').write_bytes(blob)\n"
    )
    # One connection try per call, so every fault reaches the controller instead of
    # being absorbed by the link's reconnect.
    config(platforms={"lab": ssh_platform(key=str(faults.key), reconnect_tries=1)})
    rules = [
        {"match": MKDIR, "times": 3, "when": "after"},
        {"match": SHA256, "times": 3, "when": "after"},
        {"match": START, "times": 1, "when": "after"},
        {"match": STATUS_READ, "times": 5, "when": "after"},
        {"match": SFTP, "times": 2, "when": "up:200000"},
        {"match": SFTP, "times": 2, "when": "down:300000"},
    ]
    faults.set(rules)
    job_id = submit(orch, ssh_job(tmp_path / "j", script=script, dataset=data))

    job = tick_until_state(orch, job_id, DONE, timeout=120)

    assert job["state"] == "SUCCEEDED", job["message"]
    assert ledger.read_text().split() == ["1"], "the job ran more than once"
    assert outputs(orch, job_id, tmp_path / "out")["copy.bin"] == data
    hits = faults.hits()
    for rule in rules:
        assert hits.count(f"{rule['match']} {rule['when']}") == rule["times"], (rule, hits)
    app = App.open()
    try:
        states = [a.state.value for a in app.store.attempts_of(job_id)]
        assert states == ["SUCCEEDED"], states
        moves = [e["to_state"] for e in app.store.events_of(job_id)]
        assert "FAILED" not in moves and "LOST" not in moves, moves
    finally:
        app.close()


def test_a_killed_runners_job_on_the_host_is_gone_before_the_retry_starts(orch, config, ssh_platform, tmp_path):
    from tests.conftest import wait_until
    from tests.reliability.orphans import alive, job_pids, kill_runners, script

    ledger = tmp_path / "ledger.txt"
    config(platforms={"lab": ssh_platform()}, controller={"failover_backoff": "0s"})
    job_id = submit(orch, ssh_job(tmp_path / "j", script=script(ledger), extra="retries: 1\n"))
    tick_until_state(orch, job_id, {"RUNNING"}, timeout=30)
    wait_until(lambda: ledger.exists() and job_pids(ledger), 10, "the job started")
    assert kill_runners(tmp_path / "remote" / "attempts") == 1

    job = tick_until_state(orch, job_id, DONE, timeout=60)

    assert job["state"] == "SUCCEEDED", job["message"]
    assert "start 2 orphans=0" in ledger.read_text(), ledger.read_text()
    assert not alive(job_pids(ledger)[0])


def test_an_attempt_directory_whose_release_failed_is_removed_by_a_later_tick(orch, config, orch_home, ssh_platform,
                                                                              faults, tmp_path):
    from tests.conftest import wait_until

    config(platforms={"lab": ssh_platform(key=str(faults.key), reconnect_tries=1)})
    faults.set([{"match": 'rm -rf -- "$1"', "times": 2, "when": "before"}])
    job_id = submit(orch, ssh_job(tmp_path / "j", script="print('hi')"))
    job = tick_until_state(orch, job_id, DONE, timeout=60)
    assert job["state"] == "SUCCEEDED", job["message"]
    attempts = tmp_path / "remote" / "attempts"
    assert list(attempts.iterdir()), "the first release was meant to fail"

    def gone() -> bool:
        orch("tick")
        return not list(attempts.iterdir())

    wait_until(gone, 30, "the attempt directory removed by a later tick", interval=0.2)
    assert faults.hits() == ['rm -rf -- "$1" before'] * 2
    assert json.loads((orch_home / "platforms" / "lab" / "unreleased.json").read_text()) == {}


def test_two_ticks_racing_on_a_submit_longer_than_the_lease_make_one_run_and_one_report(
        orch, config, ssh_platform, faults, tmp_path):
    import subprocess
    import sys
    import time

    ledger = tmp_path / "runs.log"
    script = f"import os\nwith open({str(ledger)!r}, 'a') as f: f.write(os.environ['ORCH_ATTEMPT'] + '\\n')\n"
    # The host is slow to create the blob directory: the submit outlasts the 1 s lease three times over.
    config(platforms={"lab": ssh_platform(key=str(faults.key))}, controller={"lease_seconds": "1s"})
    faults.set([{"match": 'mkdir -p -- "$1"', "times": 1, "when": "delay:3"}])
    job_id = submit(orch, ssh_job(tmp_path / "j", script=script))

    def tick() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "orchestrator", "tick", "--json"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    first = tick()
    time.sleep(1.8)  # the first tick is inside its slow submit now, past its first lease
    second = tick()
    reports = [json.loads(p.communicate(timeout=60)[0]) for p in (first, second)]

    assert [job_id in r["dispatched"] for r in reports] == [True, False], reports
    job = tick_until_state(orch, job_id, DONE, timeout=60)
    assert job["state"] == "SUCCEEDED", job["message"]
    assert ledger.read_text().split() == ["1"]
    assert faults.hits() == ['mkdir -p -- "$1" delay:3']
    app = App.open()
    try:
        reasons = [e["reason"] for e in app.store.events_of(job_id)]
        assert not any("adopted" in r for r in reasons), reasons  # the second tick never touched it
    finally:
        app.close()


def test_library_chatter_during_tunnel_cuts_goes_to_the_log_file_never_to_cron_output(orch, config, orch_home,
                                                                                    ssh_platform, relay, tmp_path):
    from tests.conftest import orch_process

    config(platforms={"lab": ssh_platform(proxy_command=" ".join(relay.argv))})
    job_id = submit(orch, ssh_job(tmp_path / "j", script="import time; time.sleep(3)"))
    outputs_seen = []
    for _ in range(12):
        relay.cut_after("down", 3000)  # every tick's connection dies during its key exchange or auth
        proc = orch_process("tick", "--quiet")
        outputs_seen.append(proc.stdout + proc.stderr)
    relay.up()
    text = "\n".join(outputs_seen)
    assert "Traceback" not in text and "paramiko" not in text, text[-2000:]
    assert "paramiko" in (orch_home / "logs" / "orch.log").read_text()
    assert tick_until_state(orch, job_id, DONE, timeout=60)["state"] == "SUCCEEDED"
