"""submit -> tick -> fetch on the local platform, through the real CLI and runner."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.states import JobState
from tests.conftest import backends, make_job, submit, tick_until, wait_until

#: The core end-to-end suite must pass on PostgreSQL (team mode) as well as SQLite.
state_backend = backends

JOB = """\
name: wordcount
run: python count.py
datasets:
  - path: ../corpus
    name: corpus
outputs:
  - "reports/*.txt"
env:
  GREETING: hello
resources:
  max_runtime: 2m
"""

COUNT = """\
import os, pathlib, json
data = pathlib.Path(os.environ["ORCH_DATA"]) / "corpus"
words = sum(len(p.read_text().split()) for p in sorted(data.rglob("*.txt")))
out = pathlib.Path(os.environ["ORCH_OUTPUT_DIR"])
(out / "count.json").write_text(json.dumps({"words": words, "greeting": os.environ["GREETING"],
                                            "attempt": os.environ["ORCH_ATTEMPT"]}))
(out / "nested").mkdir()
(out / "nested" / "deep.txt").write_text("deep")
pathlib.Path("reports").mkdir(exist_ok=True)
pathlib.Path("reports/summary.txt").write_text(f"{words} words")
print("counted", words)
"""


def make_corpus(root: Path) -> Path:
    corpus = root / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "a.txt").write_text("one two three")
    (corpus / "sub" / "b.txt").write_text("four five")
    return corpus


def test_submit_tick_fetch_with_dataset_and_outputs(orch, orch_home, tmp_path):
    make_corpus(tmp_path)
    path = make_job(tmp_path / "job", JOB, {"count.py": COUNT})
    job_id = submit(orch, path)

    tick_until(lambda app: app.store.job(job_id).state.terminal)

    r = orch("status", "--json")
    jobs = json.loads(r.output)
    assert [(j["id"], j["name"], j["state"], j["platform"], j["attempts"]) for j in jobs] == \
        [(job_id, "wordcount", "SUCCEEDED", "local", 1)]

    out = tmp_path / "fetched"
    r = orch("fetch", job_id[:6], "-o", str(out))
    assert r.exit_code == 0, r.output
    assert json.loads((out / "outputs" / "count.json").read_text()) == {"words": 5, "greeting": "hello", "attempt": "1"}
    assert (out / "outputs" / "nested" / "deep.txt").read_text() == "deep"
    assert (out / "outputs" / "reports" / "summary.txt").read_text() == "5 words"
    assert "counted 5" in (out / "job.log").read_text()
    result = json.loads((out / "result.json").read_text())
    assert result["exit_code"] == 0 and result["status"] == "succeeded" and result["runtime_s"] >= 0

    # fetching again is idempotent and the default directory is ./results/<name>-<id8>
    assert orch("fetch", job_id).exit_code == 0
    assert orch("fetch", job_id).exit_code == 0
    default = tmp_path / "results" / f"wordcount-{job_id[:8]}"
    assert (default / "outputs" / "count.json").is_file()


def test_submit_wait_shows_the_result_and_where_it_is(orch, orch_home, tmp_path):
    path = make_job(tmp_path / "job", "name: hi\nrun: echo hi > $ORCH_OUTPUT_DIR/hi.txt\n")
    r = orch("submit", str(path), "--wait", "--interval", "0.2")
    assert r.exit_code == 0, r.output
    assert "SUCCEEDED" in r.output
    assert "results/hi-" in r.output and "outputs/hi.txt" in r.output
    fetched = list((tmp_path / "results").glob("hi-*/outputs/hi.txt"))
    assert fetched and fetched[0].read_text() == "hi\n"


def test_failing_job_ends_failed_with_its_exit_code_and_log(orch, orch_home, tmp_path):
    path = make_job(tmp_path / "job", "name: bad\nrun: echo about to fail; exit 3\n")
    r = orch("submit", str(path), "--wait", "--interval", "0.2")
    assert r.exit_code == 1
    assert "FAILED" in r.output and "exit code 3" in r.output
    job = json.loads(orch("status", "--json").output)[0]
    assert job["state"] == "FAILED" and job["exit_code"] == 3
    assert "about to fail" in orch("logs", job["id"]).output


def test_retries_on_error_reruns_a_failing_job(orch, orch_home, tmp_path):
    path = make_job(tmp_path / "job", """\
        name: flaky
        run: test "$ORCH_ATTEMPT" -ge 2
        retries_on_error: 1
        """)
    job_id = submit(orch, path)
    app = tick_until(lambda app: app.store.job(job_id).state.terminal)
    assert app.store.job(job_id).state == JobState.SUCCEEDED
    assert [a.state.value for a in app.store.attempts_of(job_id)] == ["FAILED", "SUCCEEDED"]


def test_max_runtime_is_enforced_by_the_runner(orch, orch_home, tmp_path, config):
    config("platforms:\n  local: {type: local}\ncontroller: {grace: 1s}\n")
    path = make_job(tmp_path / "job", "name: slow\nrun: sleep 30\nresources: {max_runtime: 2s}\n")
    job_id = submit(orch, path)
    app = tick_until(lambda app: app.store.job(job_id).state.terminal, timeout=30)
    att = app.store.attempts_of(job_id)[-1]
    assert app.store.job(job_id).state == JobState.FAILED
    assert att.failure_class == "timeout" and "max_runtime" in att.message


def test_cancel_kills_the_running_job(orch, orch_home, tmp_path, config):
    config("platforms:\n  local: {type: local}\ncontroller: {grace: 1s}\n")
    path = make_job(tmp_path / "job", "name: long\nrun: echo $$ > $ORCH_OUTPUT_DIR/pid; sleep 60\n")
    job_id = submit(orch, path)
    tick_until(lambda app: app.store.job(job_id).state == JobState.RUNNING)
    r = orch("cancel", job_id[:8])
    assert r.exit_code == 0 and "cancelled" in r.output
    assert json.loads(orch("status", job_id, "--json").output)["state"] == "CANCELLED"
    # the runner stops the job's whole process group within the grace period
    attempt_dir = next((orch_home / "platforms" / "local" / "attempts").iterdir())
    wait_until((attempt_dir / "result.json").is_file, 15, "result.json written")
    result = json.loads((attempt_dir / "result.json").read_text())
    assert result["status"] == "cancelled"
    pid = int((attempt_dir / "work" / "out" / "pid").read_text())
    import os
    try:
        os.kill(pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive


def test_logs_follow_prints_output_until_the_job_ends(orch, orch_home, tmp_path):
    path = make_job(tmp_path / "job", "name: chatty\nrun: for i in 1 2 3; do echo line$i; sleep 0.3; done\n")
    job_id = submit(orch, path)
    import threading

    def ticker():
        tick_until(lambda app: app.store.job(job_id).state.terminal)

    t = threading.Thread(target=ticker)
    t.start()
    r = orch("logs", job_id, "-f", "--interval", "0.2")
    t.join()
    assert r.exit_code == 0
    assert "line1" in r.output and "line3" in r.output
