"""The building blocks of the Kaggle platform against the emulator with the real client:
datasets uploaded once by content, paged and sanitised output downloads, status
mapping, and the generated kernel script running with the real runner."""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
from pathlib import Path

import pytest

from orchestrator.errors import PrecheckError, TransientError
from orchestrator.platforms.base import RemoteState, runner_path
from orchestrator.platforms.kaggle.platform import dataset_slug, kernel_slug, machine_shape, remote_status
from orchestrator.platforms.kaggle.transfer import download_outputs, ensure_dataset, log_text
from orchestrator.platforms.kaggle.client import CALLS, KaggleAccount, KernelState
from orchestrator.platforms.kaggle.script import ScriptPlan, render
from tests.emulators.kaggle import BLOB_PUT, OUTPUT_FILE
from tests.platforms.kaggle.conftest import USERNAME
from tests.platforms.kaggle.helpers import kernel_folder, wait_status

REF = f"{USERNAME}/orch-parts-test"


def account() -> KaggleAccount:
    return KaggleAccount(CALLS.replace(base=0.02, cap=0.2, attempts=6, rand=random.Random(2).random), platform="kaggle")


def blob_file(tmp_path: Path, content: bytes = b"training data") -> tuple[str, Path]:
    digest = hashlib.sha256(content).hexdigest()
    path = tmp_path / "blobs" / f"data-{digest}.tar"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return digest, path


# ------------------------------------------------------------------ datasets


def test_a_new_dataset_is_uploaded_once_and_waited_for_until_ready(kaggle_emulator, tmp_path):
    kaggle_emulator.dataset_delay = 0.3
    digest, path = blob_file(tmp_path)
    ref = f"{USERNAME}/{dataset_slug('data', digest)}"
    assert ensure_dataset(account(), ref, {path.name: path}, tmp_path / "staging", wait_s=10, poll_s=0.05) is True
    assert kaggle_emulator.datasets[ref].files == {path.name: b"training data"}
    assert account().dataset_status(ref) == "ready"
    assert kaggle_emulator.calls["CreateDataset"] == 1
    assert not (tmp_path / "staging" / ref.split("/")[1]).exists()


def test_an_existing_ready_dataset_is_reused_without_any_upload(kaggle_emulator, tmp_path):
    digest, path = blob_file(tmp_path)
    ref = f"{USERNAME}/{dataset_slug('data', digest)}"
    ensure_dataset(account(), ref, {path.name: path}, tmp_path / "staging", wait_s=10, poll_s=0.05)
    uploads, sent = kaggle_emulator.calls["StartBlobUpload"], kaggle_emulator.bytes_uploaded
    assert ensure_dataset(account(), ref, {path.name: path}, tmp_path / "staging", wait_s=10, poll_s=0.05) is False
    assert kaggle_emulator.calls["StartBlobUpload"] == uploads
    assert kaggle_emulator.calls["CreateDataset"] == 1
    assert kaggle_emulator.bytes_uploaded == sent


def test_a_dataset_still_processing_after_the_wait_is_a_transient_error(kaggle_emulator, tmp_path):
    kaggle_emulator.dataset_delay = 60
    digest, path = blob_file(tmp_path)
    ref = f"{USERNAME}/{dataset_slug('data', digest)}"
    with pytest.raises(TransientError, match="still being processed"):
        ensure_dataset(account(), ref, {path.name: path}, tmp_path / "staging", wait_s=0.2, poll_s=0.05)
    # The next attempt waits again and never uploads a second time.
    with pytest.raises(TransientError):
        ensure_dataset(account(), ref, {path.name: path}, tmp_path / "staging", wait_s=0.1, poll_s=0.05)
    assert kaggle_emulator.calls["CreateDataset"] == 1


def test_a_dataset_kaggle_failed_to_process_is_a_precheck_error_saying_what_to_do(kaggle_emulator, tmp_path):
    digest, path = blob_file(tmp_path)
    ref = f"{USERNAME}/{dataset_slug('data', digest)}"
    kaggle_emulator.seed_dataset(ref, {path.name: b"x"}).failed = True
    with pytest.raises(PrecheckError, match="kaggle datasets delete"):
        ensure_dataset(account(), ref, {path.name: path}, tmp_path / "staging", wait_s=1, poll_s=0.05)


def test_an_upload_survives_a_429_and_a_503_on_the_blob(kaggle_emulator, tmp_path):
    kaggle_emulator.inject("StartBlobUpload", "429", retry_after=0.05)
    kaggle_emulator.inject(BLOB_PUT, "503")
    digest, path = blob_file(tmp_path, b"z" * 10000)
    ref = f"{USERNAME}/{dataset_slug('data', digest)}"
    assert ensure_dataset(account(), ref, {path.name: path}, tmp_path / "staging", wait_s=10, poll_s=0.05)
    assert kaggle_emulator.datasets[ref].files[path.name] == b"z" * 10000


# ------------------------------------------------------------------ outputs


def run_kernel(kaggle_api, tmp_path, code: str) -> None:
    resp = kaggle_api.kernels_push(str(kernel_folder(tmp_path, "orch-parts-test", code)))
    assert not resp.error
    wait_status(kaggle_api, REF)


def test_outputs_are_downloaded_page_by_page(kaggle_emulator, kaggle_api, tmp_path):
    kaggle_emulator.max_page_size = 2
    run_kernel(kaggle_api, tmp_path, "import os\nos.makedirs('d', exist_ok=True)\n"
                                     "for i in range(5):\n    open(f'd/f{i}.txt', 'w').write(str(i))\n")
    report = download_outputs(account(), REF, tmp_path / "dest", page_size=2)
    assert sorted(report.saved) == [f"d/f{i}.txt" for i in range(5)]
    assert (tmp_path / "dest" / "d" / "f3.txt").read_text() == "3"
    assert kaggle_emulator.calls["ListKernelSessionOutput"] == 3


def test_hostile_output_names_write_nothing_outside_the_destination(kaggle_emulator, kaggle_api, tmp_path):
    kaggle_emulator.hostile_output_names = ("../escape.txt", "/tmp/orch-abs-evil.txt", "a/../../b.txt",
                                            "..\\win.txt", "")
    run_kernel(kaggle_api, tmp_path, "open('ok.txt', 'w').write('ok')\n")
    dest = tmp_path / "box" / "dest"
    report = download_outputs(account(), REF, dest)
    assert report.saved == ["ok.txt"]
    assert len(report.skipped) == 5
    assert sorted(p.name for p in (tmp_path / "box").rglob("*")) == ["dest", "ok.txt"]
    assert not Path("/tmp/orch-abs-evil.txt").exists()


def test_an_output_error_page_is_retried_and_never_saved(kaggle_emulator, kaggle_api, tmp_path):
    run_kernel(kaggle_api, tmp_path, "open('model.bin', 'w').write('weights')\n")
    kaggle_emulator.inject(OUTPUT_FILE, "500", times=2)
    download_outputs(account(), REF, tmp_path / "dest")
    assert (tmp_path / "dest" / "model.bin").read_text() == "weights"


def test_kaggles_log_array_becomes_plain_text():
    raw = json.dumps([{"stream_name": "stdout", "time": 0.1, "data": "a\n"},
                      {"stream_name": "stderr", "time": 0.2, "data": "b\n"}])
    assert log_text(raw) == "a\nb\n"
    assert log_text("not json") == "not json"


# ------------------------------------------------------------------ status and names


@pytest.mark.parametrize("status,state", [
    ("QUEUED", RemoteState.PENDING), ("NEW_SCRIPT", RemoteState.PENDING), ("RUNNING", RemoteState.RUNNING),
    ("CANCEL_REQUESTED", RemoteState.RUNNING), ("COMPLETE", RemoteState.EXITED), ("ERROR", RemoteState.EXITED),
    ("CANCEL_ACKNOWLEDGED", RemoteState.LOST), ("SOMETHING_NEW", RemoteState.UNKNOWN),
])
def test_kernel_statuses_map_onto_remote_states(status, state):
    assert remote_status(KernelState(status, "")).state == state


def test_an_error_status_carries_kaggles_failure_message():
    status = remote_status(KernelState("ERROR", "Your notebook hit an unhandled error"))
    assert status.message == "Kaggle: Your notebook hit an unhandled error"


def test_slugs_are_derived_from_the_attempt_and_the_content():
    assert kernel_slug("o1a2b3c4-2") == "orch-o1a2b3c4-2"
    assert dataset_slug("data", "ab" * 32) == "orch-data-" + "ab" * 16
    assert len(dataset_slug("data", "ab" * 32)) <= 50


@pytest.mark.parametrize("given,shape", [("T4", "NvidiaTeslaT4"), ("NvidiaL4", "NvidiaL4"), ("a100", "NvidiaTeslaA100")])
def test_accelerator_names_map_to_machine_shapes(given, shape):
    assert machine_shape(given) == shape


def test_a_retired_or_unknown_accelerator_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="retired"):
        machine_shape("NvidiaTeslaP100")
    with pytest.raises(ValueError, match="NvidiaTeslaT4"):
        machine_shape("V100")


# ------------------------------------------------------------------ the kernel script


def tiny_bundle(tmp_path: Path, run: str, dataset: bytes | None = None) -> tuple[dict[str, bytes], list]:
    """A bundle in the runner's manifest format, built by hand (no orch bundler needed)."""
    code = {"main.sh": run.encode()}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in code.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = buf.getvalue()
    manifest = {
        "format": 1,
        "job": {"run": run, "env": {}, "setup": {"requirements": [], "file": None}, "outputs": [], "checkpoint": None},
        "code": {"archive": "code-1.tar.gz", "sha256": hashlib.sha256(archive).hexdigest(),
                 "files": {n: hashlib.sha256(d).hexdigest() for n, d in code.items()}},
        "datasets": [],
    }
    datasets = []
    if dataset is not None:
        dbuf = io.BytesIO()
        with tarfile.open(fileobj=dbuf, mode="w") as tar:
            info = tarfile.TarInfo("rows.csv")
            info.size = len(dataset)
            tar.addfile(info, io.BytesIO(dataset))
        tar_bytes = dbuf.getvalue()
        digest = hashlib.sha256(b"content:" + dataset).hexdigest()
        manifest["datasets"].append({"name": "train", "digest": digest, "sha256": hashlib.sha256(tar_bytes).hexdigest(),
                                     "size": len(tar_bytes), "files": {"rows.csv": hashlib.sha256(dataset).hexdigest()}})
        datasets.append((digest, tar_bytes))
    return {"manifest.json": json.dumps(manifest).encode(), "code-1.tar.gz": archive}, datasets


@pytest.mark.parametrize("layout,extract", [("legacy", False), ("datasets", False), ("datasets", True)])
def test_the_generated_script_runs_the_real_runner_on_the_emulator(kaggle_emulator, kaggle_api, tmp_path, layout,
                                                                   extract):
    kaggle_emulator.input_layout = layout
    kaggle_emulator.extract_archives = extract
    files, datasets = tiny_bundle(tmp_path, 'cat "$ORCH_DATA/train/rows.csv"; echo "job says $GREETING"', b"a,b\n1,2\n")
    (digest, tar_bytes), = datasets
    slug = dataset_slug("data", digest)
    kaggle_emulator.seed_dataset(f"{USERNAME}/{slug}", {f"data-{digest}.tar": tar_bytes})
    plan = ScriptPlan(key="o123abc-1", runner_args=["--job-id", "123abc", "--job-name", "t", "--attempt", "1",
                                                    "--max-runtime", "60", "--grace", "2"],
                      env={"GREETING": "hello"}, datasets=[(digest, slug)], bundle_files=files)
    script = render(plan, runner_path().read_text())
    folder = kernel_folder(tmp_path, "orch-parts-test", script, dataset_sources=[f"{USERNAME}/{slug}"])
    assert not kaggle_api.kernels_push(str(folder)).error
    status = wait_status(kaggle_api, REF, timeout=30)
    log = kaggle_api.kernels_logs(REF)
    assert status.status.name == "COMPLETE", log
    assert "1,2" in log and "job says hello" in log
    dest = tmp_path / "dest"
    download_outputs(account(), REF, dest)
    result = json.loads((dest / "result.json").read_text())
    assert result["status"] == "succeeded" and result["exit_code"] == 0
    assert "job says hello" in (dest / "job.log").read_text()
    assert not any(p.name == "code" for p in dest.rglob("*"))  # scratch stays out of /kaggle/working


def test_a_failing_job_makes_the_kernel_end_in_error(kaggle_emulator, kaggle_api, tmp_path):
    files, _ = tiny_bundle(tmp_path, "echo boom >&2; exit 4")
    plan = ScriptPlan(key="o123abc-1", runner_args=["--job-id", "123abc", "--max-runtime", "60", "--grace", "2"],
                      bundle_files=files)
    folder = kernel_folder(tmp_path, "orch-parts-test", render(plan, runner_path().read_text()))
    assert not kaggle_api.kernels_push(str(folder)).error
    assert wait_status(kaggle_api, REF, timeout=30).status.name == "ERROR"
    download_outputs(account(), REF, tmp_path / "dest")
    result = json.loads((tmp_path / "dest" / "result.json").read_text())
    assert result["exit_code"] == 4 and result["failure_class"] == "user"


def test_an_expired_output_link_is_listed_again_and_the_download_goes_on(kaggle_emulator, kaggle_api, tmp_path):
    run_kernel(kaggle_api, tmp_path, "open('model.bin', 'w').write('weights')\n")
    kaggle_emulator.output_url_ttl = 0.3
    kaggle_emulator.inject(OUTPUT_FILE, "latency", delay=0.6)  # the link expires while we wait
    report = download_outputs(account(), REF, tmp_path / "dest")
    assert report.saved == ["model.bin"] and (tmp_path / "dest" / "model.bin").read_text() == "weights"
    assert kaggle_emulator.calls["ListKernelSessionOutput"] == 2
    assert [c.status for c in kaggle_emulator.log if c.route == OUTPUT_FILE] == [400, 200]


def test_a_kernel_deleted_mid_fetch_is_missing_not_a_retry_loop(kaggle_emulator, kaggle_api, tmp_path):
    import threading

    from orchestrator.platforms.kaggle.client import MissingError

    run_kernel(kaggle_api, tmp_path, "open('model.bin', 'w').write('weights')\n")
    kaggle_emulator.inject(OUTPUT_FILE, "latency", delay=0.5)
    threading.Timer(0.2, lambda: kaggle_emulator.kernels.pop(REF)).start()  # deleted on kaggle.com meanwhile
    with pytest.raises(MissingError):
        download_outputs(account(), REF, tmp_path / "dest")
    assert [c.status for c in kaggle_emulator.log if c.route == OUTPUT_FILE] == [403]
    assert not (tmp_path / "dest" / "model.bin").exists()


def test_files_a_stopped_run_left_half_written_are_never_fetched(kaggle_emulator, kaggle_api, tmp_path):
    run_kernel(kaggle_api, tmp_path, "open('result.json', 'w').write('{}')\n"
                                     "open('checkpoint.tar.gz.partial', 'w').write('half')\n"
                                     "open('result.json.tmp.42', 'w').write('{')\n")
    report = download_outputs(account(), REF, tmp_path / "dest")
    assert report.saved == ["result.json"]
    assert sorted(s.split()[0] for s in report.skipped) == ["checkpoint.tar.gz.partial", "result.json.tmp.42"]
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["result.json"]


def test_content_whose_dataset_was_deleted_or_failed_is_uploaded_again_under_the_next_slug(kaggle_emulator, kaggle_api,
                                                                                          tmp_path):
    from orchestrator.platforms.kaggle.transfer import place_dataset

    digest, path = blob_file(tmp_path)
    ref = f"{USERNAME}/{dataset_slug('data', digest)}"
    assert place_dataset(account(), ref, {path.name: path}, tmp_path / "s", wait_s=10, poll_s=0.05) == (ref, True)
    kaggle_api.dataset_delete(USERNAME, ref.split("/")[1], no_confirm=True)  # what orch gc does
    assert place_dataset(account(), ref, {path.name: path}, tmp_path / "s", wait_s=10, poll_s=0.05) == (f"{ref}-1", True)
    kaggle_emulator.datasets[f"{ref}-1"].failed = True  # Kaggle failed to process the second one
    again = place_dataset(account(), ref, {path.name: path}, tmp_path / "s", wait_s=10, poll_s=0.05)
    assert again == (f"{ref}-2", True)
    assert place_dataset(account(), ref, {path.name: path}, tmp_path / "s", wait_s=10, poll_s=0.05) == (f"{ref}-2", False)
    assert kaggle_emulator.datasets[f"{ref}-2"].files == {path.name: b"training data"}
