"""The Kaggle platform end to end: the real CLI and controller, the real ``kaggle``
client, and the emulator running the pushed kernels (with the real runner)."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from orchestrator.store import attempt_key
from tests.conftest import make_job, orch_process, submit, tick_until, wait_until
from tests.emulators.kaggle import BLOB_PUT, OUTPUT_FILE
from tests.emulators.kaggle_runs import can_mount_small_disk
from tests.platforms.kaggle.conftest import KEY, USERNAME
from tests.platforms.kaggle.helpers import kernel_folder

TRAIN = """\
import json, os
rows = open(os.path.join(os.environ["ORCH_DATA"], "train", "rows.csv")).read().splitlines()
print("training on", len(rows), "rows", flush=True)
open("model.txt", "w").write("weights for %d rows" % len(rows))
with open(os.path.join(os.environ["ORCH_OUTPUT_DIR"], "metrics.json"), "w") as f:
    json.dump({"rows": len(rows)}, f)
"""


@pytest.fixture
def kaggle(config, kaggle_emulator):
    """config.yaml with one Kaggle platform (short retry timings) and the emulator."""
    config("""\
        platforms:
          kaggle:
            type: kaggle
            retry_base: 0.05s
            dataset_poll: 0.05s
            dataset_wait: 20s
        """)
    return kaggle_emulator


def job(tmp_path: Path, name: str = "demo", run: str = "python3 train.py", extra: str = "",
        data: str = "a,b\n1,2\n3,4\n") -> Path:
    return make_job(tmp_path / name, f"""\
        name: {name}
        run: {run}
        datasets: [{{path: data, name: train}}]
        outputs: [model.txt]
        resources: {{gpu: T4, max_runtime: 10m}}
        {extra}
        """, {"train.py": TRAIN, "data/rows.csv": data})


def finished(job_id: str, timeout: float = 60):
    return tick_until(lambda app: app.store.job(job_id).state.terminal, timeout=timeout, interval=0.1)


def kernel_ref(job_id: str, number: int = 1) -> str:
    return f"{USERNAME}/orch-{attempt_key(job_id, number)}"


def test_submit_tick_fetch_end_to_end_and_a_second_job_with_the_same_dataset_uploads_nothing(
        kaggle, orch, tmp_path):
    first = submit(orch, job(tmp_path, "first"))
    app = finished(first)
    assert app.store.job(first).state.value == "SUCCEEDED", app.store.job(first).message
    out = tmp_path / "out"
    assert orch("fetch", first, "-o", str(out)).exit_code == 0
    assert (out / "outputs" / "model.txt").read_text() == "weights for 3 rows"
    assert json.loads((out / "outputs" / "metrics.json").read_text()) == {"rows": 3}
    assert json.loads((out / "result.json").read_text())["status"] == "succeeded"
    assert "training on 3 rows" in (out / "job.log").read_text()
    run = kaggle.runs(kernel_ref(first))[0]
    assert run.request["isPrivate"] is True and run.request["machineShape"] == "NvidiaTeslaT4"
    dataset_source, = run.request["datasetDataSources"]
    uploads = (kaggle.calls["CreateDataset"], kaggle.calls["StartBlobUpload"], kaggle.bytes_uploaded)
    assert uploads[0] == 1

    # The credentials went nowhere: not into the pushed kernel, the state DB or the results.
    key = kaggle.key.encode()
    assert key not in run.request["text"].encode()
    assert not [p for p in Path(os.environ["ORCH_HOME"]).rglob("*") if p.is_file() and key in p.read_bytes()]

    second = submit(orch, job(tmp_path, "second", run="python3 train.py && echo second"))
    app = finished(second)
    assert app.store.job(second).state.value == "SUCCEEDED"
    assert (kaggle.calls["CreateDataset"], kaggle.calls["StartBlobUpload"], kaggle.bytes_uploaded) == uploads
    assert kaggle.runs(kernel_ref(second))[0].request["datasetDataSources"] == [dataset_source]


def test_a_429_storm_and_intermittent_500s_still_complete_without_a_tight_loop(kaggle, orch, tmp_path):
    kaggle.inject("GetKernelSessionStatus", "429", times=8, retry_after=0.05)
    kaggle.inject("StartBlobUpload", "429", times=2, retry_after=0.05)
    for route in ("GetKernelSessionStatus", "ListKernelSessionOutput", "GetDatasetStatus", "CreateDataset",
                  "GetAcceleratorQuotaStatistics"):
        kaggle.inject(route, "500", times=None, rate=0.3)
    kaggle.inject("SaveKernel", "503", times=1)
    kaggle.inject(OUTPUT_FILE, "503", times=None, rate=0.3)
    kaggle.inject(BLOB_PUT, "503", times=1)
    job_id = submit(orch, job(tmp_path))
    app = finished(job_id, timeout=90)
    assert app.store.job(job_id).state.value == "SUCCEEDED", app.store.job(job_id).message
    assert len(kaggle.runs(kernel_ref(job_id))) == 1
    failures = sum(1 for c in kaggle.log if c.status is None or c.status == 429 or c.status >= 500)
    assert failures >= 10
    gaps = kaggle.retry_gaps()
    # The client's own resumable upload probes at once after a 503 (GCS protocol, at most
    # 10 tries); every other call after a failure waited (retry_base 0.05 s, jitter >= half).
    gaps.pop(BLOB_PUT, None)
    assert sum(len(g) for g in gaps.values()) >= 10
    assert min(min(g) for g in gaps.values()) >= 0.02, gaps


def test_a_controller_killed_after_the_push_adopts_the_run_on_the_next_tick(kaggle, orch, tmp_path):
    job_id = submit(orch, job(tmp_path))
    crashed = orch_process("tick", env={"ORCH_FAILPOINTS": "after_submit"})
    assert crashed.returncode == -9, crashed.stderr
    ref = kernel_ref(job_id)
    assert len(kaggle.runs(ref)) == 1  # the push happened; the store does not know yet
    app = finished(job_id)
    assert app.store.job(job_id).state.value == "SUCCEEDED"
    assert len(kaggle.runs(ref)) == 1 and kaggle.calls["SaveKernel"] == 1
    assert any("adopted" in e["reason"] for e in app.store.events_of(job_id))


def test_a_push_whose_answer_is_lost_is_not_pushed_twice(kaggle, orch, tmp_path):
    kaggle.inject("SaveKernel", "drop-after")
    job_id = submit(orch, job(tmp_path))
    app = finished(job_id)
    assert app.store.job(job_id).state.value == "SUCCEEDED"
    assert len(kaggle.runs(kernel_ref(job_id))) == 1


def test_failed_status_reads_make_the_job_unknown_not_failed_until_they_work_again(kaggle, orch, tmp_path):
    job_id = submit(orch, job(tmp_path))
    tick_until(lambda app: app.store.job(job_id).state.value in ("PENDING", "RUNNING"), timeout=30, interval=0.1)
    kaggle.inject("GetKernelSessionStatus", "503", times=None)
    app = tick_until(lambda app: app.store.job(job_id).state.value == "UNKNOWN", timeout=30, interval=0.1)
    assert "503" in app.store.job(job_id).message
    kaggle.clear_faults()
    app = finished(job_id)
    assert app.store.job(job_id).state.value == "SUCCEEDED"
    assert len(kaggle.runs(kernel_ref(job_id))) == 1


def test_a_failing_job_ends_failed_with_kaggles_message_in_status(kaggle, orch, tmp_path):
    job_id = submit(orch, job(tmp_path, run="echo about to fail; exit 3"))
    app = finished(job_id)
    assert app.store.job(job_id).state.value == "FAILED"
    assert kaggle.runs(kernel_ref(job_id))[0].status == "ERROR"
    shown = orch("status", job_id)
    assert "Kaggle: Your notebook hit an unhandled error" in " ".join(shown.output.split())
    assert "exited with code 3" in shown.output


def test_a_push_refused_with_http_200_fails_the_job_with_kaggles_message(kaggle, orch, tmp_path):
    kaggle.inject("SaveKernel", "push-error", message="Notebook not found")
    job_id = submit(orch, job(tmp_path))
    app = finished(job_id)
    job_row = app.store.job(job_id)
    assert job_row.state.value == "FAILED"
    assert "Kaggle refused the push" in job_row.message and "Notebook not found" in job_row.message
    assert kaggle.all_runs() == []


def test_hostile_output_names_write_nothing_outside_the_results_dir(kaggle, orch, tmp_path, orch_home):
    kaggle.hostile_output_names = ("../escape.txt", "../../escape.txt", "/tmp/orch-kaggle-evil.txt",
                                   "outputs/../../escape.txt")
    job_id = submit(orch, job(tmp_path))
    app = finished(job_id)
    assert app.store.job(job_id).state.value == "SUCCEEDED"
    out = tmp_path / "out"
    assert orch("fetch", job_id, "-o", str(out)).exit_code == 0
    assert (out / "outputs" / "model.txt").is_file()
    assert not list(tmp_path.parent.rglob("escape.txt"))
    assert not Path("/tmp/orch-kaggle-evil.txt").exists()


def test_a_nearly_spent_quota_keeps_the_job_off_kaggle_and_status_says_why(kaggle, orch, tmp_path):
    kaggle.gpu_used_hours = 29.8  # 12 minutes left; the job may need an hour
    path = make_job(tmp_path / "big", """\
        name: big
        run: python3 -c "print(1)"
        resources: {gpu: T4, max_runtime: 1h}
        """)
    job_id = submit(orch, path)
    for _ in range(2):
        assert orch("tick").exit_code == 0
    row, = json.loads(orch("status", "--json").output)
    assert row["id"] == job_id and row["state"] == "QUEUED"
    assert "kaggle: 0.2 GPU h left this week, job needs 1.0 GPU h" in row["message"]
    assert "refresh Sat 00:00 UTC" in row["message"]
    assert "kaggle: 0.2 GPU h l…" in " ".join(orch("status").output.split())  # cut to fit 80 columns
    assert "0.2 GPU h left this week" in " ".join(orch("status", job_id).output.split())
    assert kaggle.calls["SaveKernel"] == 0 and kaggle.calls["StartBlobUpload"] == 0
    shown, = json.loads(orch("platforms", "--json").output)
    assert shown["quota"]["used"] == pytest.approx(29.8) and shown["quota"]["limit"] == 30
    assert "0.2 left" in " ".join(orch("platforms").output.split())


def test_a_job_with_secrets_is_not_sent_to_kaggle_and_the_reason_names_kaggle_secrets(kaggle, orch, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf-dummy-value")
    path = make_job(tmp_path / "sec", """\
        name: sec
        run: echo hi
        secrets: [HF_TOKEN]
        """)
    result = orch("submit", str(path))  # Kaggle is the only platform: refused at once, with the way out
    assert result.exit_code == 2
    assert "no configured platform can run this job" in result.output and "Kaggle Secrets" in result.output
    assert kaggle.calls["SaveKernel"] == 0


def test_cancel_explains_that_kaggle_cannot_stop_the_run_and_its_results_are_ignored(kaggle, orch, tmp_path):
    job_id = submit(orch, job(tmp_path, run="python3 train.py; sleep 30"))
    tick_until(lambda app: app.store.job(job_id).state.value == "RUNNING", timeout=30, interval=0.1)
    result = orch("cancel", job_id)
    assert result.exit_code == 0
    assert "no API to stop a running kernel" in " ".join(result.output.split())
    run = kaggle.runs(kernel_ref(job_id))[0]
    assert not run.finished  # still running on Kaggle, until its own deadline
    app = tick_until(lambda app: True, timeout=5)
    assert app.store.job(job_id).state.value == "CANCELLED"
    assert not (app.home.results / job_id).exists()


def test_logs_of_a_running_kernel_come_from_the_live_stream(kaggle, orch, tmp_path):
    job_id = submit(orch, job(tmp_path, run="python3 train.py; sleep 30"))
    tick_until(lambda app: app.store.job(job_id).state.value == "RUNNING", timeout=30, interval=0.1)
    wait_until(lambda: "training on 3 rows" in orch("logs", job_id).output, 15, "the live log line", interval=0.2)


def test_a_retry_after_a_checkpoint_attaches_the_previous_kernel(kaggle, config, orch, tmp_path):
    script = """\
import os, pathlib
ckpt = pathlib.Path(os.environ["ORCH_CHECKPOINT_DIR"])
step = int((ckpt / "step").read_text()) if (ckpt / "step").exists() else 0
print("resuming at", step, flush=True)
(ckpt / "step").write_text(str(step + 1))
import time; time.sleep(60 if step == 0 else 0)
"""
    path = make_job(tmp_path / "chain", """\
        name: chain
        run: python3 step.py
        checkpoint: ckpt
        resources: {gpu: T4, max_runtime: 1h}
        """, {"step.py": script})
    # Sessions of 4 s (with 1 s grace) make the first segment stop and checkpoint.
    config("platforms:\n  kaggle: {type: kaggle, retry_base: 0.05s, dataset_poll: 0.05s, session_hours: 0.0011112,"
           " min_segment: 1s}\ncontroller: {grace: 1s}\n")
    job_id = submit(orch, path)
    app = finished(job_id, timeout=60)
    assert app.store.job(job_id).state.value == "SUCCEEDED", app.store.job(job_id).message
    second = kaggle.runs(kernel_ref(job_id, 2))[0]
    assert second.request["kernelDataSources"] == [kernel_ref(job_id, 1)]
    assert "resuming at 1" in second.log_text()
    assert kaggle.calls["CreateDataset"] == 0  # the checkpoint was read on Kaggle, not uploaded


def test_gc_lists_and_deletes_only_what_orch_created(kaggle, orch, tmp_path, kaggle_api):
    job_id = submit(orch, job(tmp_path))
    finished(job_id)
    assert not kaggle_api.kernels_push(str(kernel_folder(tmp_path, "my-notebook", "print(1)\n"))).error
    kaggle.seed_dataset(f"{USERNAME}/my-own-data", {"x.csv": b"1"})
    old = datetime.now(timezone.utc) - timedelta(days=30)
    for thing in list(kaggle.kernels.values()) + list(kaggle.datasets.values()):
        thing.created_wall = old
    listed = orch("gc", "--older-than", "7d")
    assert listed.exit_code == 0
    assert "nothing orch created" in listed.output  # the store says both were used just now
    time.sleep(1.1)
    listed = orch("gc", "--older-than", "1s", "--json")
    rows = json.loads(listed.output)
    assert sorted(r["kind"] for r in rows) == ["dataset", "kernel"]
    assert all(r["ref"].split("/")[1].startswith("orch-") and not r["deleted"] for r in rows)
    deleted = json.loads(orch("gc", "--older-than", "1s", "--yes", "--json").output)
    assert all(r["deleted"] for r in deleted)
    assert sorted(kaggle.kernels) == [f"{USERNAME}/my-notebook"]
    assert sorted(kaggle.datasets) == [f"{USERNAME}/my-own-data"]


def test_gc_never_lists_the_kernel_of_an_active_attempt(kaggle, orch, tmp_path):
    job_id = submit(orch, job(tmp_path, run="sleep 30"))
    tick_until(lambda app: app.store.job(job_id).state.value in ("PENDING", "RUNNING"), timeout=30, interval=0.1)
    time.sleep(1.1)
    rows = json.loads(orch("gc", "--older-than", "1s", "--json").output)
    assert [r["kind"] for r in rows] == []  # the dataset was used by this active attempt just now, too


def test_bad_kaggle_config_is_one_line_naming_the_field(config, orch, tmp_path):
    config("platforms:\n  kaggle: {type: kaggle, accelerator: P100}\n")
    result = orch("platforms")
    assert result.exit_code == 2
    assert "platforms.kaggle.accelerator" in result.output and "retired" in result.output
    assert "Traceback" not in result.output


def test_secrets_from_kaggle_is_refused_in_one_line_because_a_push_cannot_attach_secrets(kaggle, orch, tmp_path):
    # kagglesdk's ApiSaveKernelRequest (0.1.37, 0.1.38) has no secrets field, and each attempt is a new
    # kernel, so Kaggle Secrets could never be attached to the kernel that runs the job.
    path = make_job(tmp_path / "ks", """\
        name: ks
        secrets: [HF_TOKEN]
        secrets_from: kaggle
        run: echo hi
        """)
    result = orch("submit", str(path))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "secrets_from: kaggle is not supported" in " ".join(result.output.split())
    assert kaggle.calls["SaveKernel"] == 0


def test_a_kernel_status_the_client_cannot_parse_makes_the_job_unknown_with_the_raw_value(kaggle, orch, tmp_path):
    job_id = submit(orch, job(tmp_path, run="python3 train.py; sleep 3"))
    tick_until(lambda app: app.store.job(job_id).state.value in ("PENDING", "RUNNING"), timeout=30, interval=0.1)
    kaggle.status_value = "PAUSED_FOR_MAINTENANCE"
    app = tick_until(lambda app: app.store.job(job_id).state.value == "UNKNOWN", timeout=30, interval=0.1)
    assert "PAUSED_FOR_MAINTENANCE" in app.store.job(job_id).message
    kaggle.status_value = None
    app = finished(job_id)
    assert app.store.job(job_id).state.value == "SUCCEEDED"


def test_a_twelve_hour_job_asks_kaggle_for_less_than_its_global_maximum(kaggle, orch, tmp_path):
    path = make_job(tmp_path / "long", """\
        name: long
        run: python3 -c "print(1)"
        resources: {gpu: T4, max_runtime: 12h}
        """)
    job_id = submit(orch, path)
    app = finished(job_id)
    assert app.store.job(job_id).state.value == "SUCCEEDED", app.store.job(job_id).message
    assert kaggle.runs(kernel_ref(job_id))[0].request["sessionTimeoutSeconds"] < 12 * 3600


CHAIN_STEPS = """\
import os, pathlib, signal, time
ckpt = pathlib.Path(os.environ["ORCH_CHECKPOINT_DIR"])
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
step = int((ckpt / "step").read_text()) if (ckpt / "step").exists() else 0
print("resuming at", step, flush=True)
weights = ckpt / "weights.bin"
if not weights.exists():  # the model: written once, carried from segment to segment
    block = os.urandom(1 << 20)
    with open(weights, "wb") as f:
        for _ in range({mb}):
            f.write(block)
while not stop and step < {steps}:
    time.sleep(0.5)  # one training step; SIGTERM is obeyed between steps only
    step += 1
    (ckpt / "step").write_text(str(step))
open(os.path.join(os.environ["ORCH_OUTPUT_DIR"], "done.txt"), "w").write(str(step))
"""


@pytest.mark.slow
@pytest.mark.parametrize("mb, session_s, grace_s, steps", [(1024, 60, 5, 170)])
def test_a_big_checkpoint_chain_beats_kaggles_own_session_kill_segment_after_segment(
        kaggle, config, orch, tmp_path, mb, session_s, grace_s, steps):
    # Kaggle's clock starts 2 s before the script (boot); it kills at exactly the session
    # timeout orch pushed. Each segment must stop, pack 1 GB and write result.json first.
    kaggle.boot_delay = 2.0
    path = make_job(tmp_path / "chain", """\
        name: bigchain
        run: python3 step.py
        checkpoint: ckpt
        resources: {gpu: T4, max_runtime: 1h}
        """, {"step.py": CHAIN_STEPS.format(mb=mb, steps=steps)})
    config(f"platforms:\n  kaggle: {{type: kaggle, retry_base: 0.05s, dataset_poll: 0.05s, "
           f"session_hours: {session_s / 3600!r}, min_segment: 1s, startup_allowance: 3s}}\n"
           f"controller: {{grace: {grace_s}s}}\n")
    job_id = submit(orch, path)
    app = finished(job_id, timeout=600)
    assert app.store.job(job_id).state.value == "SUCCEEDED", app.store.job(job_id).message
    attempts = app.store.attempts_of(job_id)
    # At least one segment stopped short of Kaggle's own kill with its checkpoint packed, and
    # the next resumed from it (how many segments depends on how fast this machine steps).
    assert len(attempts) >= 2 and [a.state.value for a in attempts[:-1]] == ["CHECKPOINTED"] * (len(attempts) - 1)
    for number in range(1, len(attempts)):
        run = kaggle.runs(kernel_ref(job_id, number))[0]
        assert "exceeded the maximum execution time" not in (run.failure_message or ""), number
    print({a.number: {k: a.result.get(k) for k in ("runtime_s", "wall_s", "pack_write_mb_s", "status")}
           for a in attempts})


def test_a_kaggle_that_accepts_connections_and_never_answers_does_not_hang_the_tick(kaggle, config, orch, tmp_path):
    config("platforms:\n  kaggle: {type: kaggle, retry_base: 0.05s, dataset_poll: 0.05s, call_timeout: 1s}\n")
    job_id = submit(orch, job(tmp_path, run="python3 train.py; sleep 5"))
    tick_until(lambda app: app.store.job(job_id).state.value in ("PENDING", "RUNNING"), timeout=30, interval=0.1)
    kaggle.inject("*", "hang", times=None)
    began = time.monotonic()
    assert orch("tick").exit_code == 0
    assert time.monotonic() - began < 30  # 3 status reads of at most 1 s each, plus backoff
    row, = json.loads(orch("status", "--json").output)
    assert row["state"] == "UNKNOWN" and "no answer from Kaggle" in row["message"]
    kaggle.clear_faults()
    app = finished(job_id)
    assert app.store.job(job_id).state.value == "SUCCEEDED"


def test_a_rotated_key_leaves_the_finished_run_unknown_and_it_is_fetched_once_the_key_works(
        kaggle, config, orch, tmp_path, monkeypatch):
    config("platforms:\n  kaggle: {type: kaggle, retry_base: 0.05s, dataset_poll: 0.05s}\n"
           "controller: {unknown_window: 1s}\n")
    job_id = submit(orch, job(tmp_path, run="python3 train.py; sleep 2"))
    tick_until(lambda app: app.store.job(job_id).state.value in ("PENDING", "RUNNING"), timeout=30, interval=0.1)
    kaggle.key = "rotated-key-1111"  # the user made a new token on kaggle.com; orch still has the old one
    assert kaggle.wait_idle(30)
    for _ in range(3):  # well past unknown_window: still not LOST, never FAILED, nothing pushed again
        assert orch("tick").exit_code == 0
        time.sleep(0.6)
    row, = json.loads(orch("status", "--json").output)
    assert row["state"] == "UNKNOWN", row
    assert "rejected the credentials (401" in row["message"] and "run: orch platforms" in row["message"]
    assert kaggle.calls["SaveKernel"] == 1
    second = submit(orch, job(tmp_path, "second"))
    assert orch("tick").exit_code == 0
    shown = {r["id"]: r for r in json.loads(orch("status", "--json").output)}
    assert shown[second]["state"] == "QUEUED" and "401" in shown[second]["message"]  # Kaggle unavailable
    monkeypatch.setenv("KAGGLE_KEY", "rotated-key-1111")  # the new key is in place
    app = finished(job_id)
    assert app.store.job(job_id).state.value == "SUCCEEDED", app.store.job(job_id).message
    out = tmp_path / "out"
    assert orch("fetch", job_id, "-o", str(out)).exit_code == 0
    assert (out / "outputs" / "model.txt").read_text() == "weights for 3 rows"


def test_setup_packages_without_internet_are_refused_at_submit_unless_shipped_as_wheels(kaggle, orch, tmp_path):
    import zipfile

    refused = make_job(tmp_path / "offline", """\
        name: offline
        run: python3 -c "import requests"
        internet: false
        setup: [requests]
        """)
    result = orch("submit", str(refused))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "internet: false cannot download setup: packages" in " ".join(result.output.split())
    assert kaggle.calls["SaveKernel"] == 0

    shipped = make_job(tmp_path / "wheels", """\
        name: wheels
        run: python3 -c "import minipkg; print('value', minipkg.VALUE)"
        internet: false
        setup: [./minipkg-0.1-py3-none-any.whl]
        """)
    with zipfile.ZipFile(shipped.parent / "minipkg-0.1-py3-none-any.whl", "w") as z:
        z.writestr("minipkg/__init__.py", "VALUE = 42\n")
        z.writestr("minipkg-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: minipkg\nVersion: 0.1\n")
        z.writestr("minipkg-0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                   "Tag: py3-none-any\n")
        z.writestr("minipkg-0.1.dist-info/RECORD", "")
    job_id = submit(orch, shipped)
    app = finished(job_id)
    assert app.store.job(job_id).state.value == "SUCCEEDED", app.store.job(job_id).message
    run = kaggle.runs(kernel_ref(job_id))[0]
    assert run.request["enableInternet"] is False and "value 42" in run.log_text()


def test_a_job_after_gc_deleted_its_dataset_uploads_it_again_under_the_next_slug(kaggle, orch, tmp_path):
    first = submit(orch, job(tmp_path, "first"))
    finished(first)
    source, = kaggle.runs(kernel_ref(first))[0].request["datasetDataSources"]
    time.sleep(1.1)
    assert orch("gc", "--older-than", "1s", "--yes").exit_code == 0
    assert source not in kaggle.datasets and source in kaggle.deleted_slugs
    second = submit(orch, job(tmp_path, "second"))
    app = finished(second)
    assert app.store.job(second).state.value == "SUCCEEDED", app.store.job(second).message
    assert kaggle.runs(kernel_ref(second))[0].request["datasetDataSources"] == [f"{source}-1"]


def test_an_unheard_kaggle_attempt_declared_lost_is_charged_to_its_deadline(kaggle, config, orch, tmp_path):
    # Kaggle cannot stop a kernel: one orch stopped hearing may run (and use quota) to its deadline.
    config("platforms:\n  kaggle: {type: kaggle, retry_base: 0.05s, dataset_poll: 0.05s}\n"
           "controller: {unknown_window: 1s}\n")
    job_id = submit(orch, job(tmp_path, run="python3 train.py; sleep 30", extra="retries: 0"))
    tick_until(lambda app: app.store.job(job_id).state.value in ("PENDING", "RUNNING"), timeout=30, interval=0.1)
    kaggle.inject("GetKernelSessionStatus", "503", times=None)
    app = tick_until(lambda app: app.store.job(job_id).state.value == "LOST", timeout=30, interval=0.3)
    att = app.store.attempts_of(job_id)[-1]
    rows = [r for r in app.store.ledger_rows("kaggle") if r["attempt_id"] == att.id]
    reserve = next(r for r in rows if r["kind"] == "reserve")
    charge = next(r for r in rows if r["kind"] == "charge")
    assert charge["end"] == pytest.approx(reserve["end"])  # not "until we stopped hearing"
    assert charge["end"] - charge["start"] > 500  # max_runtime 10m


@pytest.mark.skipif(not can_mount_small_disk(), reason="needs root and unshare to give the kernel a small disk")
def test_outputs_bigger_than_kaggles_working_space_fail_the_job_once_with_the_space_it_had(kaggle, orch, tmp_path):
    kaggle.working_limit_mb = 20
    path = make_job(tmp_path / "big", """\
        name: big
        run: head -c 40000000 /dev/urandom > $ORCH_OUTPUT_DIR/big.bin
        resources: {gpu: T4, max_runtime: 10m}
        retries_on_error: 2
        """)
    job_id = submit(orch, path)
    app = finished(job_id)
    row = app.store.job(job_id)
    assert row.state.value == "FAILED" and "outputs exceed the space the platform gives: 21 MB" in row.message
    assert len(app.store.attempts_of(job_id)) == 1  # not retried: it would not fit next time either
    out = tmp_path / "out"
    assert orch("fetch", job_id, "-o", str(out)).exit_code == 0
    assert json.loads((out / "result.json").read_text())["failure_class"] == "space"
    assert not list(out.rglob("*.partial"))


def test_a_key_kaggle_refuses_mid_tick_is_told_once_a_day_as_an_expired_login(kaggle, config, orch, tmp_path):
    events = tmp_path / "events.jsonl"
    receiver = tmp_path / "on-event.sh"
    receiver.write_text(f"#!/bin/sh\ncat >> {events}\necho >> {events}\n")
    receiver.chmod(0o755)
    config("platforms:\n  kaggle: {type: kaggle, retry_base: 0.05s, dataset_poll: 0.05s}\n"
           f"notify:\n  channels:\n    me: {{type: command, command: [{receiver}], events: [login.expiring]}}\n")
    job_id = submit(orch, job(tmp_path, run="python3 train.py; sleep 2"))
    tick_until(lambda app: app.store.job(job_id).state.value in ("PENDING", "RUNNING"), timeout=30, interval=0.1)
    assert not events.exists()  # a working key: nothing to tell
    kaggle.key = "rotated-key-2222"  # revoked on kaggle.com while the run goes on
    for _ in range(3):
        assert orch("tick").exit_code == 0
    told = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
    assert len(told) == 1, told  # every tick sees it; it is told once (a day)
    login = told[0]["login"]
    assert told[0]["type"] == "login.expiring" and login["platform"] == "kaggle" and login["expired"] is True
    assert "401" in login["fix"] and KEY not in json.dumps(told[0])
