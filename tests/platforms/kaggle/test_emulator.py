"""The Kaggle emulator, driven by the real, unmodified ``KaggleApi``.

These tests pin down the wire behaviour the orch platform relies on (and the
client's own quirks, e.g. 2.2.4 saving error pages and ``../`` names), so a
passing platform test means the real client path works.
"""

from __future__ import annotations

import io
import json
import tarfile
import time

import pytest
import requests

from tests.conftest import wait_until
from tests.emulators.kaggle import BLOB_PUT, LOGS_STREAM, OUTPUT_FILE
from tests.platforms.kaggle.conftest import USERNAME
from tests.platforms.kaggle.helpers import dataset_folder, kernel_folder, wait_status

REF = f"{USERNAME}/orch-emu-test"


def push(api, tmp_path, code: str, slug: str = "orch-emu-test", timeout=None, **meta):
    resp = api.kernels_push(str(kernel_folder(tmp_path, slug, code, **meta)), timeout=timeout)
    assert not resp.error, resp.error
    return resp


def test_pushed_kernel_runs_as_a_process_and_its_working_files_become_outputs(kaggle_api, kaggle_emulator, tmp_path):
    kaggle_emulator.queue_delay = 0.2
    push(kaggle_api, tmp_path, "import os\nprint('hi from', os.path.basename(os.getcwd()))\n"
                               "os.makedirs('sub', exist_ok=True)\nopen('sub/out.txt', 'w').write('42')\n")
    assert kaggle_api.kernels_status(REF).status.name == "QUEUED"
    assert wait_status(kaggle_api, REF).status.name == "COMPLETE"
    files, _ = kaggle_api.kernels_output(REF, str(tmp_path / "out"))
    assert (tmp_path / "out" / "sub" / "out.txt").read_text() == "42"
    log = json.loads((tmp_path / "out" / "orch-emu-test.log").read_text())
    assert log[0]["stream_name"] == "stdout" and log[0]["data"] == "hi from working\n"


def test_a_failing_script_ends_in_error_with_a_failure_message(kaggle_api, kaggle_emulator, tmp_path):
    push(kaggle_api, tmp_path, "import sys\nsys.exit(3)\n")
    resp = wait_status(kaggle_api, REF)
    assert resp.status.name == "ERROR"
    assert "status 3" in resp.failure_message


def test_the_session_limit_kills_the_kernel_with_a_timeout_message(kaggle_api, kaggle_emulator, tmp_path):
    kaggle_emulator.session_limit = 0.3
    push(kaggle_api, tmp_path, "import time\nopen('early.txt', 'w').write('x')\ntime.sleep(30)\n")
    started = time.monotonic()
    resp = wait_status(kaggle_api, REF)
    assert time.monotonic() - started < 10
    assert resp.status.name == "ERROR" and "maximum execution time" in resp.failure_message


def test_session_timeout_seconds_from_the_push_is_a_session_limit_too(kaggle_api, kaggle_emulator, tmp_path):
    push(kaggle_api, tmp_path, "import time\ntime.sleep(30)\n", timeout="1")
    assert "maximum execution time of 1 seconds" in wait_status(kaggle_api, REF).failure_message


def test_outputs_are_listed_in_pages(kaggle_api, kaggle_emulator, tmp_path):
    kaggle_emulator.max_page_size = 2
    push(kaggle_api, tmp_path, "for i in range(5):\n    open(f'f{i}.txt', 'w').write(str(i))\n")
    wait_status(kaggle_api, REF)
    files, token = kaggle_api.kernels_output(REF, str(tmp_path / "out"))
    assert sorted(p.name for p in (tmp_path / "out").glob("f*.txt")) == [f"f{i}.txt" for i in range(5)]
    assert kaggle_emulator.calls["ListKernelSessionOutput"] == 3


@pytest.mark.parametrize("layout,where", [("legacy", "input/orch-data-x1"), ("datasets", "input/datasets/alice/orch-data-x1")])
def test_a_dataset_is_processing_then_ready_and_mounts_in_either_layout(kaggle_api, kaggle_emulator, tmp_path,
                                                                        layout, where):
    kaggle_emulator.dataset_delay = 0.4
    kaggle_emulator.input_layout = layout
    resp = kaggle_api.dataset_create_new(str(dataset_folder(tmp_path, "orch-data-x1", {"a.bin": b"abc"})), quiet=True)
    assert resp.status == "Ok", resp.error
    assert kaggle_api.dataset_status(f"{USERNAME}/orch-data-x1") != "ready"
    wait_until(lambda: kaggle_api.dataset_status(f"{USERNAME}/orch-data-x1") == "ready", 5, "dataset ready")
    code = ("import os\nroot = os.environ['ORCH_KAGGLE_ROOT']\n"
            f"print(open(os.path.join(root, {where!r}, 'a.bin')).read())\n")
    push(kaggle_api, tmp_path, code, dataset_sources=[f"{USERNAME}/orch-data-x1"])
    assert wait_status(kaggle_api, REF).status.name == "COMPLETE"
    assert "abc" in kaggle_api.kernels_logs(REF)


def test_an_uploaded_tar_is_unpacked_in_place_when_extraction_is_on(kaggle_api, kaggle_emulator, tmp_path):
    kaggle_emulator.extract_archives = True
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("inner.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    kaggle_emulator.seed_dataset(f"{USERNAME}/orch-data-x2", {"data-x2.tar": buf.getvalue()})
    code = "import os\nprint(sorted(os.listdir(os.path.join(os.environ['ORCH_KAGGLE_ROOT'], 'input/orch-data-x2'))))\n"
    push(kaggle_api, tmp_path, code, dataset_sources=[f"{USERNAME}/orch-data-x2"])
    wait_status(kaggle_api, REF)
    assert "['inner.txt']" in kaggle_api.kernels_logs(REF)


def test_a_kernel_source_mounts_the_previous_kernels_output(kaggle_api, kaggle_emulator, tmp_path):
    push(kaggle_api, tmp_path, "open('checkpoint.tar.gz', 'w').write('state')\n", slug="orch-first")
    wait_status(kaggle_api, f"{USERNAME}/orch-first")
    code = ("import os\nroot = os.environ['ORCH_KAGGLE_ROOT']\n"
            "print(open(os.path.join(root, 'input/orch-first/checkpoint.tar.gz')).read())\n")
    push(kaggle_api, tmp_path, code, kernel_sources=[f"{USERNAME}/orch-first"])
    assert wait_status(kaggle_api, REF).status.name == "COMPLETE"
    assert "state" in kaggle_api.kernels_logs(REF)


def test_unknown_sources_come_back_as_invalid_sources_with_http_200(kaggle_api, kaggle_emulator, tmp_path):
    resp = kaggle_api.kernels_push(str(kernel_folder(tmp_path, "orch-emu-test", "print(1)\n",
                                                     dataset_sources=[f"{USERNAME}/orch-data-nope"])))
    assert resp.invalid_dataset_sources == [f"{USERNAME}/orch-data-nope"]


def test_a_second_push_to_a_slug_is_a_second_run(kaggle_api, kaggle_emulator, tmp_path):
    push(kaggle_api, tmp_path, "print(1)\n")
    resp = push(kaggle_api, tmp_path, "print(2)\n")
    assert resp.version_number == 2
    assert len(kaggle_emulator.runs(REF)) == 2


def test_a_new_kernels_slug_comes_from_its_title(kaggle_api, kaggle_emulator, tmp_path):
    push(kaggle_api, tmp_path, "print(1)\n", title="Another Title")
    assert [k for k in kaggle_emulator.kernels] == [f"{USERNAME}/another-title"]


def test_gpu_sessions_are_capped_and_the_push_says_so_with_http_200(kaggle_api, kaggle_emulator, tmp_path):
    kaggle_emulator.max_gpu_sessions = 1
    push(kaggle_api, tmp_path, "import time\ntime.sleep(30)\n", slug="orch-gpu-one", machine_shape="NvidiaTeslaT4")
    resp = kaggle_api.kernels_push(str(kernel_folder(tmp_path, "orch-gpu-two", "print(1)\n",
                                                     machine_shape="NvidiaTeslaT4")))
    assert resp.error == "Maximum batch GPU session count of 1 reached."


def test_quota_is_charged_for_gpu_runtime_and_refreshes_on_a_saturday(kaggle_api, kaggle_emulator, tmp_path):
    kaggle_emulator.quota_hours_per_second = 10.0  # each real second counts as ten hours
    push(kaggle_api, tmp_path, "import time\ntime.sleep(0.3)\n", enable_gpu=True)
    wait_status(kaggle_api, REF)
    quota = kaggle_api.quota_view()
    assert quota.gpu_quota.time_used.total_seconds() >= 3 * 3600
    assert quota.gpu_quota.total_time_allowed.total_seconds() == 30 * 3600
    assert quota.quota_refresh_time.weekday() == 5 and quota.quota_refresh_time.hour == 0


def test_an_exhausted_quota_refuses_gpu_pushes(kaggle_api, kaggle_emulator, tmp_path):
    kaggle_emulator.gpu_used_hours = 30.0
    resp = kaggle_api.kernels_push(str(kernel_folder(tmp_path, "orch-emu-test", "print(1)\n", enable_gpu=True)))
    assert "exceeded your weekly GPU quota" in resp.error


def test_wrong_credentials_get_401(kaggle_emulator, monkeypatch):
    from kaggle.api.kaggle_api_extended import KaggleApi

    monkeypatch.setenv("KAGGLE_KEY", "wrong")
    api = KaggleApi()
    api.authenticate()
    with pytest.raises(requests.HTTPError) as info:
        api.quota_view()
    assert info.value.response.status_code == 401


def test_an_unknown_kernel_is_a_permission_error_as_on_kaggle(kaggle_api, kaggle_emulator):
    with pytest.raises(ValueError, match="Cannot access kernel"):
        kaggle_api.kernels_status(f"{USERNAME}/orch-nothing-here")


# ------------------------------------------------------------------ faults


def test_a_429_with_retry_after_reaches_the_caller_of_a_status_read(kaggle_api, kaggle_emulator, tmp_path):
    push(kaggle_api, tmp_path, "print(1)\n")
    kaggle_emulator.inject("GetKernelSessionStatus", "429", retry_after=2)
    with pytest.raises(requests.HTTPError) as info:
        kaggle_api.kernels_status(REF)  # the client does not retry status reads
    assert info.value.response.status_code == 429
    assert info.value.response.headers["Retry-After"] == "2"
    assert kaggle_api.kernels_status(REF).status.name in ("QUEUED", "RUNNING", "COMPLETE")


@pytest.mark.parametrize("kind,status", [("500", 500), ("503", 503)])
def test_server_errors_are_injected_per_route(kaggle_api, kaggle_emulator, kind, status):
    kaggle_emulator.inject("GetAcceleratorQuotaStatistics", kind, times=2)
    for _ in range(2):
        with pytest.raises(requests.HTTPError) as info:
            kaggle_api.quota_view()
        assert info.value.response.status_code == status
    assert kaggle_api.quota_view().gpu_quota is not None
    assert kaggle_emulator.calls["GetAcceleratorQuotaStatistics"] == 3


def test_an_http_200_with_an_error_code_raises_with_status_200(kaggle_api, kaggle_emulator):
    kaggle_emulator.inject("GetAcceleratorQuotaStatistics", "200-code", code=403, message="Forbidden")
    with pytest.raises(requests.HTTPError, match="Forbidden") as info:
        kaggle_api.quota_view()
    assert info.value.response.status_code == 200


def test_a_push_error_comes_back_as_http_200_without_raising(kaggle_api, kaggle_emulator, tmp_path):
    kaggle_emulator.inject("SaveKernel", "push-error", message="Notebook not found")
    resp = kaggle_api.kernels_push(str(kernel_folder(tmp_path, "orch-emu-test", "print(1)\n")))
    assert resp.error == "Notebook not found"
    assert kaggle_emulator.runs(REF) == []


def test_a_dropped_connection_is_a_connection_error(kaggle_api, kaggle_emulator):
    kaggle_emulator.inject("GetAcceleratorQuotaStatistics", "drop")
    with pytest.raises(requests.ConnectionError):
        kaggle_api.quota_view()


def test_drop_after_processes_the_push_but_loses_the_answer(kaggle_api, kaggle_emulator, tmp_path):
    kaggle_emulator.inject("SaveKernel", "drop-after")
    with pytest.raises(requests.ConnectionError):
        kaggle_api.kernels_push(str(kernel_folder(tmp_path, "orch-emu-test", "print(1)\n")))
    assert len(kaggle_emulator.runs(REF)) == 1


def test_latency_delays_the_answer(kaggle_api, kaggle_emulator):
    kaggle_emulator.inject("GetAcceleratorQuotaStatistics", "latency", delay=0.3)
    started = time.monotonic()
    kaggle_api.quota_view()
    assert time.monotonic() - started >= 0.3


def test_intermittent_faults_hit_a_seeded_share_of_requests(kaggle_api, kaggle_emulator):
    kaggle_emulator.inject("GetAcceleratorQuotaStatistics", "500", times=None, rate=0.5)
    failures = 0
    for _ in range(20):
        try:
            kaggle_api.quota_view()
        except requests.HTTPError:
            failures += 1
    assert 3 <= failures <= 17


def test_client_224_saves_an_output_error_page_as_the_file_and_later_clients_do_not(kaggle_api, kaggle_emulator,
                                                                                    tmp_path):
    # The bug orch must not inherit (kaggle-cli PR #1176, fixed in 2.2.5): no status check on downloads.
    from importlib import metadata

    push(kaggle_api, tmp_path, "open('model.bin', 'w').write('weights')\n")
    wait_status(kaggle_api, REF)
    kaggle_emulator.inject(OUTPUT_FILE, "500")
    fixed = tuple(int(x) for x in metadata.version("kaggle").split(".")[:3]) >= (2, 2, 5)
    try:
        kaggle_api.kernels_output(REF, str(tmp_path / "out"))
    except Exception:
        assert fixed
    saved = tmp_path / "out" / "model.bin"
    if fixed:
        assert not saved.exists() or "Internal error" not in saved.read_text()
    else:
        assert "Internal error" in saved.read_text()


def test_hostile_output_names_are_listed_verbatim(kaggle_api, kaggle_emulator, tmp_path):
    kaggle_emulator.hostile_output_names = ("../escape.txt", "/abs/evil.txt")
    push(kaggle_api, tmp_path, "open('ok.txt', 'w').write('ok')\n")
    wait_status(kaggle_api, REF)
    owner, slug = REF.split("/")
    from kagglesdk.kernels.types.kernels_api_service import ApiListKernelSessionOutputRequest

    with kaggle_api.build_kaggle_client() as client:
        request = ApiListKernelSessionOutputRequest()
        request.user_name, request.kernel_slug = owner, slug
        names = [f.file_name for f in client.kernels.kernels_api_client.list_kernel_session_output(request).files]
    assert names == ["ok.txt", "../escape.txt", "/abs/evil.txt"]


def test_a_blob_upload_interrupted_by_503_is_resumed_by_the_client(kaggle_api, kaggle_emulator, tmp_path):
    kaggle_emulator.inject(BLOB_PUT, "503")
    folder = dataset_folder(tmp_path, "orch-data-resume", {"big.bin": b"x" * 5000})
    resp = kaggle_api.dataset_create_new(str(folder), quiet=True)
    assert resp.status == "Ok", resp.error
    assert kaggle_emulator.datasets[f"{USERNAME}/orch-data-resume"].files == {"big.bin": b"x" * 5000}
    assert kaggle_emulator.calls[BLOB_PUT] >= 2


def test_the_log_stream_follows_a_running_kernel_until_it_ends(kaggle_api, kaggle_emulator, tmp_path):
    push(kaggle_api, tmp_path, "import time\nfor i in range(3):\n    print('tick', i, flush=True)\n    time.sleep(0.3)\n")
    wait_status(kaggle_api, REF, want=("RUNNING", "COMPLETE"))
    stream = kaggle_api.kernels_logs_stream(REF)
    assert next(stream)["data"] == "tick 0\n"
    assert not kaggle_emulator.runs(REF)[0].finished  # delivered live, not at the end
    assert [e["data"] for e in stream] == ["tick 1\n", "tick 2\n"]
    assert kaggle_emulator.calls[LOGS_STREAM] == 1


def test_kaggle_secrets_answer_only_what_the_test_attached(kaggle_api, kaggle_emulator, tmp_path):
    kaggle_emulator.secrets = {"HF_TOKEN": "hf-dummy"}
    code = ("from kaggle_secrets import UserSecretsClient\nc = UserSecretsClient()\nprint(c.get_secret('HF_TOKEN'))\n"
            "try:\n    c.get_secret('OTHER')\nexcept Exception as e:\n    print('missing:', type(e).__name__)\n")
    push(kaggle_api, tmp_path, code)
    wait_status(kaggle_api, REF)
    log = kaggle_api.kernels_logs(REF)
    assert "hf-dummy" in log and "missing: BackendError" in log
