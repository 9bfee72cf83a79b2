"""Colab through Drive under real conditions (issue 15): outages, interrupts, lagging
listings, creates that answer 500, two controllers, leftover runners, CPU runtimes.

Everything is real except Google: the CLI and controller, the unmodified
google-api-python-client on both sides, ``kernels/colab_agent.py`` as its own process
(signalled and killed like a Colab kernel) and ``kernels/runner.py`` running each job.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from orchestrator.app import App
from orchestrator.states import AttemptState, JobState
from tests.conftest import make_job, tick_until, wait_until
from tests.platforms.colab_drive.conftest import _runner_groups
from tests.platforms.colab_drive.test_e2e import _attempts, _job, _state, _submit

#: Agent options that make every Drive call give up after two quick tries, so a
#: short outage outlasts them (as a minute-long one outlasts the default backoff).
IMPATIENT = ("--retries", "2", "--backoff-base", "0.01")

CHECKPOINTING = """\
import os, pathlib, signal, sys, time
ckpt = pathlib.Path(os.environ["ORCH_CHECKPOINT_DIR"])
step = int((ckpt / "step").read_text()) if (ckpt / "step").exists() else 0
print("attempt", os.environ["ORCH_ATTEMPT"], "starts at step", step, flush=True)
if step:
    pathlib.Path("out.txt").write_text("resumed from %d\\n" % step)
    sys.exit(0)
def save(*_):
    (ckpt / "step").write_text(str(max(step, 1)))
    sys.exit(143)
signal.signal(signal.SIGTERM, save)
while True:
    time.sleep(0.1)
    step += 1
"""


def _settings(orch_home: Path, **values: str) -> None:
    """Change keys of the gdrive platform / controller in the test's config.yaml."""
    config = orch_home / "config.yaml"
    text = config.read_text()
    for key, value in values.items():
        lines = [line for line in text.splitlines() if line.strip().startswith(f"{key}:")]
        text = text.replace(lines[0], lines[0].split(":")[0] + f": {value}")
    config.write_text(text)


def _sleeper(tmp_path: Path, name: str, seconds: float, **kw) -> Path:
    return _job(tmp_path, name, env={"SLEEP_FIRST": str(seconds)}, **kw)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _run_dirs(agents, agent_id: str) -> dict[str, Path]:
    runs = agents.work_dir(agent_id) / "runs"
    return {p.name: p for p in runs.iterdir()} if runs.is_dir() else {}


def _runner_pids(agents, agent_id: str) -> list[int]:
    return [pid for pid in _runner_groups(agents.work_dir(agent_id)) if _alive(pid)]


# --------------------------------------------------------------------------- 1: outages

def test_an_outage_longer_than_the_retries_leaves_the_job_running_and_starts_no_second_runner(
        orch, orch_home, agents, gdrive, tmp_path):
    _settings(orch_home, heartbeat_stale="60s", unknown_window="60s")
    agents.start("a1", extra=IMPATIENT)
    first = _submit(orch, _sleeper(tmp_path, "first", 4, tag="first"))
    tick_until(lambda app: app.store.job(first).state == JobState.RUNNING, timeout=30)
    second = _submit(orch, _job(tmp_path, "second", tag="second"))

    outage = gdrive.inject("error", status=503, reason="backendError", times=10**9)
    time.sleep(3)  # every Drive call of the agent gives up meanwhile
    gdrive.faults.remove(outage)

    tick_until(lambda app: app.store.job(second).state.terminal, timeout=60)
    assert [_state(first), _state(second)] == [JobState.SUCCEEDED, JobState.SUCCEEDED]
    assert [len(_attempts(first)), len(_attempts(second))] == [1, 1]  # nothing ran twice
    assert outage.hits > 0 and "the job goes on" in agents.output("a1")
    runs = _run_dirs(agents, "a1")
    (a,), (b,) = (runs[att.key] for att in _attempts(first)), (runs[att.key] for att in _attempts(second))
    reported = json.loads((a / "reported").read_text())["at"]
    started = json.loads((b / "agent-run.json").read_text())["started"]
    assert started > reported  # one runner at a time: the second began after the first was reported


def test_a_run_folder_deleted_mid_job_stops_its_runner(orch, agents, gdrive, tmp_path):
    agents.start("a1")
    job = _submit(orch, _sleeper(tmp_path, "orphaned", 60))
    tick_until(lambda app: app.store.job(job).state == JobState.RUNNING, timeout=30)
    wait_until(lambda: _runner_pids(agents, "a1"), 20, "the runner started")
    (run,) = gdrive.find(orch_kind="run")
    with gdrive._lock:
        gdrive._delete(run.id)  # 404 from now on, as when the controller gave up on it

    wait_until(lambda: not _runner_pids(agents, "a1"), 30, "the runner stopped")
    assert "was gone by the controller: stopping the runner" in agents.output("a1")
    wait_until(lambda: gdrive.find("heartbeat.json", orch_agent="a1")[0].properties["orch_state"] == "idle",
               10, "agent a1 idle again")


# --------------------------------------------------------------------------- 2: interrupts

def test_interrupting_the_agent_drains_its_job_and_the_controller_retries_it_not_cancels_it(
        orch, orch_home, agents, gdrive, tmp_path):
    agents.start("a1")
    job = _submit(orch, _sleeper(tmp_path, "drained", 60, tag="drained"))
    tick_until(lambda app: app.store.job(job).state == JobState.RUNNING, timeout=30)
    wait_until(lambda: _runner_pids(agents, "a1"), 20, "the runner started")
    runners = _runner_pids(agents, "a1")

    os.kill(agents.procs["a1"].pid, signal.SIGINT)  # "interrupt the cell"
    assert agents.procs["a1"].wait(timeout=30) == 0
    assert not [pid for pid in runners if _alive(pid)]  # the runner never outlives the agent
    agents.start("a2")
    tick_until(lambda app: app.store.job(job).state.terminal, timeout=60)

    first, second = _attempts(job)
    assert first.state == AttemptState.LOST and "stopped from outside orch" in first.message
    assert second.state == AttemptState.SUCCEEDED and second.handle["data"]["agent"] == "a2"
    assert _state(job) == JobState.SUCCEEDED
    assert "stopping: the running job" in agents.output("a1")


def test_an_interrupted_job_with_a_checkpoint_is_checkpointed_and_resumes_elsewhere(
        orch, orch_home, agents, gdrive, tmp_path):
    agents.start("a1")
    path = make_job(tmp_path / "chained", "name: chained\nrun: python3 main.py\ncheckpoint: ckpt\n"
                    "outputs: [out.txt]\nresources: {max_runtime: 60s}\n", {"main.py": CHECKPOINTING})
    job = _submit(orch, path)
    tick_until(lambda app: app.store.job(job).state == JobState.RUNNING, timeout=30)
    wait_until(lambda: "starts at step" in orch("logs", job).output, 20, "the job started")

    os.kill(agents.procs["a1"].pid, signal.SIGINT)
    assert agents.procs["a1"].wait(timeout=30) == 0
    agents.start("a2")
    tick_until(lambda app: app.store.job(job).state.terminal, timeout=60)

    first, second = _attempts(job)
    assert first.state == AttemptState.CHECKPOINTED and second.state == AttemptState.SUCCEEDED
    out = orch_home / "results" / job / "attempt-2" / "outputs" / "out.txt"
    assert out.read_text().startswith("resumed from ")  # the step the first attempt saved on SIGTERM


def test_a_second_interrupt_stops_the_runner_at_once(agents, orch, gdrive, tmp_path):
    agents.start("a1")
    # A job that ignores SIGTERM: draining it would take the whole grace.
    path = make_job(tmp_path / "stubborn", "name: stubborn\nrun: python3 main.py\ngrace: 60s\n"
                    "resources: {max_runtime: 2m}\n",
                    {"main.py": "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(120)\n"})
    job = _submit(orch, path)
    tick_until(lambda app: app.store.job(job).state == JobState.RUNNING, timeout=30)
    wait_until(lambda: len(_runner_pids(agents, "a1")) == 2, 20, "the job started")
    runners = _runner_pids(agents, "a1")

    os.kill(agents.procs["a1"].pid, signal.SIGINT)
    time.sleep(1)
    os.kill(agents.procs["a1"].pid, signal.SIGINT)
    assert agents.procs["a1"].wait(timeout=20) == 0
    assert not [pid for pid in runners if _alive(pid)]
    assert "interrupted again: stopping the runner now" in agents.output("a1")


# --------------------------------------------------------------------------- 3: lag and lost answers

def test_lagging_listings_make_no_duplicate_folders_and_the_notebook_and_the_job_work(
        orch, orch_home, agents, gdrive, tmp_path):
    gdrive.list_lag = 3.0

    notebook = orch("colab", "agent-notebook", "gdrive")  # was: internal error: IndexError
    assert notebook.exit_code == 0, notebook.output
    agents.start("a1")
    time.sleep(3)  # the controller sees a new agent once Drive lists its heartbeat
    job = _submit(orch, _job(tmp_path, "lagged", tag="lagged"))
    tick_until(lambda app: app.store.job(job).state.terminal, timeout=90)

    assert _state(job) == JobState.SUCCEEDED, _attempts(job)[-1].message
    folders = sorted(f.name for f in gdrive.files.values() if f.mime_type.endswith("folder") and f.name in
                     ("orch", "blobs", "runs", "agents", "a1", "inbox"))
    assert folders == ["a1", "agents", "blobs", "inbox", "orch", "runs"]  # one of each
    assert "Traceback" not in agents.output("a1")


def test_creates_that_succeed_but_answer_500_or_403_with_lag_still_run_the_job_once(
        orch, orch_home, agents, gdrive, tmp_path):
    gdrive.list_lag = 1.0
    # The very first folder create (the mailbox root) and the first small file each
    # happen but answer an error, so the client retries a create that already took effect.
    gdrive.inject("error", method="POST", path="/drive/v3/files?", commit=True, status=500, times=1)
    gdrive.inject("error", method="POST", path="uploadType=multipart", commit=True, status=403,
                  reason="rateLimitExceeded", times=2)
    notebook = orch("colab", "agent-notebook", "gdrive")
    assert notebook.exit_code == 0, notebook.output
    agents.start("a1")
    time.sleep(1)
    job = _submit(orch, _job(tmp_path, "answered-late", tag="late"))
    tick_until(lambda app: app.store.job(job).state.terminal, timeout=90)

    assert _state(job) == JobState.SUCCEEDED and len(_attempts(job)) == 1
    assert len(agents.keys_run_by("a1")) == 1
    # The root the notebook names is the one the controller keeps using.
    root = json.loads((orch_home / "platforms" / "gdrive" / "root.json").read_text())["id"]
    assert f"'--folder-id', '{root}'" in notebook.output


# --------------------------------------------------------------------------- 4: two controllers

def test_two_orch_homes_on_one_account_keep_their_runs_and_see_each_other(
        orch, orch_home, agents, gdrive, tmp_path, monkeypatch):
    agents.start("a1")
    other = tmp_path / "other-home"
    other.mkdir()
    (other / "config.yaml").write_text((orch_home / "config.yaml").read_text())
    token = orch_home / "platforms" / "gdrive" / "token.json"
    (other / "platforms" / "gdrive").mkdir(parents=True)
    (other / "platforms" / "gdrive" / "token.json").write_text(token.read_text())
    mine = _submit(orch, _sleeper(tmp_path, "mine", 2, tag="mine"))
    tick_until(lambda app: app.store.job(mine).state in (JobState.PENDING, JobState.RUNNING), timeout=30)

    monkeypatch.setenv("ORCH_HOME", str(other))
    theirs = _submit(orch, _job(tmp_path, "theirs", tag="theirs"))
    App.open().close()
    tick_until(lambda app: True, timeout=10)  # their tick: reconcile must leave my run alone
    problems = json.loads(orch("platforms", "--json").output)[0]["problems"]
    assert any("another orch controller" in p for p in problems)
    tick_until(lambda app: app.store.job(theirs).state.terminal, timeout=60)
    assert _state(theirs) == JobState.SUCCEEDED

    monkeypatch.setenv("ORCH_HOME", str(orch_home))
    tick_until(lambda app: app.store.job(mine).state.terminal, timeout=60)
    assert _state(mine) == JobState.SUCCEEDED and len(_attempts(mine)) == 1


# --------------------------------------------------------------------------- 5: the agent dies, the VM stays

def test_an_agent_restarted_on_the_same_vm_adopts_its_runner_and_reports_it(orch, agents, gdrive, tmp_path):
    agents.start("a1")
    job = _submit(orch, _sleeper(tmp_path, "adopted", 4, tag="adopted"))
    tick_until(lambda app: app.store.job(job).state == JobState.RUNNING, timeout=30)
    wait_until(lambda: _runner_pids(agents, "a1"), 20, "the runner started")
    os.kill(agents.procs["a1"].pid, signal.SIGKILL)  # the agent dies (OOM, kernel restart); the runner goes on
    agents.procs["a1"].wait(timeout=10)
    assert _runner_pids(agents, "a1")

    agents.start("a1")
    tick_until(lambda app: app.store.job(job).state.terminal, timeout=60)

    assert _state(job) == JobState.SUCCEEDED and len(_attempts(job)) == 1
    assert "adopting the runner of" in agents.output("a1")
    fetched = orch("fetch", job, "-o", str(tmp_path / "got"))
    assert fetched.exit_code == 0 and (tmp_path / "got" / "outputs" / "out.txt").read_text() == "adopted 200000\n"


def test_a_restarted_agent_stops_a_leftover_runner_whose_run_was_cancelled(orch, agents, gdrive, tmp_path):
    agents.start("a1")
    job = _submit(orch, _sleeper(tmp_path, "leftover", 60))
    tick_until(lambda app: app.store.job(job).state == JobState.RUNNING, timeout=30)
    wait_until(lambda: _runner_pids(agents, "a1"), 20, "the runner started")
    os.kill(agents.procs["a1"].pid, signal.SIGKILL)
    agents.procs["a1"].wait(timeout=10)
    assert orch("cancel", job).exit_code == 0

    agents.start("a1")
    wait_until(lambda: not _runner_pids(agents, "a1"), 30, "the leftover runner stopped")
    assert "stopping leftover runner of" in agents.output("a1") and _state(job) == JobState.CANCELLED


# --------------------------------------------------------------------------- 6: GPUs

FAKE_SMI = "#!/bin/sh\necho 'Tesla T4, 15360, 100, 5, 535.104.05'\n"


def test_a_gpu_job_never_lands_on_a_cpu_agent_and_a_cpu_runtime_starts_no_agent(orch, agents, gdrive, tmp_path):
    refused = agents.start("bare", wait=False, cpu_ok=False)
    assert refused.wait(timeout=20) == 3 and "no GPU on this runtime" in agents.output("bare")
    assert not gdrive.find("heartbeat.json", orch_agent="bare")

    smi = tmp_path / "bin"
    smi.mkdir()
    (smi / "nvidia-smi").write_text(FAKE_SMI)
    (smi / "nvidia-smi").chmod(0o755)
    agents.start("cpu", session_seconds=1000)  # best fit (least time left) would pick it
    agents.start("gpu", cpu_ok=False, env={"PATH": f"{smi}:{os.environ['PATH']}"})
    path = make_job(tmp_path / "gpujob", "name: gpujob\nrun: python3 main.py\nresources: {gpu: any, max_runtime: 1m}\n",
                    {"main.py": "print('on a GPU')\n"})
    job = _submit(orch, path)
    tick_until(lambda app: app.store.job(job).state.terminal, timeout=60)

    assert _state(job) == JobState.SUCCEEDED
    assert agents.keys_run_by("cpu") == [] and len(agents.keys_run_by("gpu")) == 1


# --------------------------------------------------------------------------- 7: the log goes up in increments

CHATTY = """\
import sys, time
for burst in range(8):
    sys.stdout.write(("burst %d " % burst + "x" * 99 + "\\n") * 1000)  # ~100 KB
    sys.stdout.flush()
    time.sleep(0.5)
"""


def test_the_log_is_uploaded_in_increments_so_the_bytes_sent_grow_with_its_size(orch, orch_home, agents, gdrive,
                                                                                 tmp_path):
    agents.start("a1")
    path = make_job(tmp_path / "chatty", "name: chatty\nrun: python3 -u main.py\nresources: {max_runtime: 1m}\n",
                    {"main.py": CHATTY})
    job = _submit(orch, path)
    seen = {}  # the run folder (and its increments) is deleted once the job is fetched

    def watch(app):
        seen.update({p.id: p for p in gdrive.find(orch_kind="logpart")})
        return app.store.job(job).state.terminal

    tick_until(watch, timeout=60)

    assert _state(job) == JobState.SUCCEEDED
    final = len((orch_home / "results" / job / "attempt-1" / "job.log").read_bytes())
    parts = list(seen.values())
    assert final > 800_000 and len(parts) >= 3  # uploaded while it ran, in several pieces
    assert all(p.version == 1 for p in parts)  # each increment written once, never re-sent
    sent = sum(len(p.content) for p in parts) + final  # the increments, then job.log once at the end
    assert sent <= 2 * final  # O(log size); uploading the whole log every time cost ~ size x uploads
    offsets = sorted(int(p.properties["orch_offset"]) for p in parts)
    assert offsets[0] == 0 and all(b > a for a, b in zip(offsets, offsets[1:]))


# --------------------------------------------------------------------------- 9: a dead token during a job

def test_a_token_that_dies_during_a_job_keeps_the_attempt_and_it_is_fetched_after_sign_in(
        orch, orch_home, agents, gdrive, tmp_path):
    agents.start("a1")
    job = _submit(orch, _sleeper(tmp_path, "patient", 2, tag="patient"))
    tick_until(lambda app: app.store.job(job).state == JobState.RUNNING, timeout=30)
    token = orch_home / "platforms" / "gdrive" / "token.json"
    gdrive.revoke(json.loads(token.read_text())["token"])
    gdrive.revoke("rt-1")

    deadline = time.monotonic() + 5  # five unknown_windows; the job ends meanwhile
    while time.monotonic() < deadline:
        tick_until(lambda app: True, timeout=10)
        time.sleep(0.2)
    assert _state(job) == JobState.UNKNOWN and len(_attempts(job)) == 1
    assert "orch auth drive gdrive" in _attempts(job)[0].message

    gdrive.add_refresh_token("rt-2")
    token.write_text(json.dumps({**json.loads(token.read_text()), "refresh_token": "rt-2", "expiry": None}))
    tick_until(lambda app: app.store.job(job).state.terminal, timeout=30)
    assert _state(job) == JobState.SUCCEEDED and len(_attempts(job)) == 1
    assert (orch_home / "results" / job / "attempt-1" / "outputs" / "out.txt").read_text() == "patient 200000\n"


# --------------------------------------------------------------------------- 8: orch gc on Drive

def test_orch_gc_lists_then_deletes_old_drive_blobs_and_gone_agents_and_nothing_else(
        orch, orch_home, agents, gdrive, tmp_path):
    agents.start("a1")
    job = _submit(orch, _job(tmp_path, "done", tag="done"))
    tick_until(lambda app: app.store.job(job).state.terminal, timeout=60)
    agents.kill("a1")
    mine = App.open()
    try:
        root = mine.platform("gdrive").mailbox().root
    finally:
        mine.close()
    with gdrive._lock:  # a file of the user's own, right in orch's folder
        gdrive._create({"name": "notes.txt", "parents": [root]}, "orch-test-client", b"mine")
    blobs = [f for f in gdrive.files.values() if "orch_sha256" in f.properties or "orch_digest" in f.properties]
    assert len(blobs) == 3  # manifest, code, dataset

    assert "nothing orch created on gdrive is older than 7d" in orch("gc").output
    time.sleep(1.1)
    listed = orch("gc", "--older-than", "1s")
    assert listed.exit_code == 0 and "run again with --yes" in listed.output
    assert "dataset" in listed.output and "agent" in listed.output and "notes.txt" not in listed.output
    assert len(gdrive.files) > 5  # listing deleted nothing

    deleted = orch("gc", "--older-than", "1s", "--yes", "--json")
    rows = json.loads(deleted.output)
    assert deleted.exit_code == 0 and all(r["deleted"] for r in rows)
    assert sorted(r["kind"] for r in rows) == ["agent", "code", "code", "dataset"]
    assert not [f for f in gdrive.files.values() if "orch_sha256" in f.properties or "orch_digest" in f.properties]
    assert gdrive.find("notes.txt") and not gdrive.find("heartbeat.json")
