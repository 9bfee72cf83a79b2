"""An SSH session killed during each remote operation is "I could not hear the host",
never an answer: the attempt goes UNKNOWN (or its submit is retried) and recovers, the
job runs exactly once, and nothing is FAILED or thrown away."""

from __future__ import annotations

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
