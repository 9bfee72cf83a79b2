"""The client edge (``orchestrator/platforms/kaggle/client.py``) against the emulator with
the real client: error mapping, retries with backoff, credentials, quota."""

from __future__ import annotations

import json
import random
from datetime import timezone

import pytest
import requests

from orchestrator.errors import CapacityError, CredentialsError, PrecheckError, TransientError
from orchestrator.platforms.kaggle.client import CALLS, KaggleAccount, MissingError, classify_http
from orchestrator.platforms.kaggle.credentials import config_dir, find_credentials, permission_warning
from tests.emulators.kaggle import OUTPUT_FILE
from tests.platforms.kaggle.conftest import USERNAME
from tests.platforms.kaggle.helpers import kernel_folder, wait_status

REF = f"{USERNAME}/orch-api-test"


class Sleeps:
    """An injectable sleep that records what it was asked to wait (and waits a little)."""

    def __init__(self, real: float = 0.0):
        self.waits: list[float] = []
        self.real = real

    def __call__(self, seconds: float) -> None:
        import time

        self.waits.append(seconds)
        time.sleep(min(seconds, self.real))


def account(sleep=None, **kw) -> KaggleAccount:
    policy = CALLS.replace(base=0.05, cap=0.4, attempts=kw.pop("attempts", 8), budget=kw.pop("budget", 10.0),
                           sleep=sleep or Sleeps(real=1.0), rand=random.Random(1).random)
    return KaggleAccount(policy, platform="kaggle")


def pushed(kaggle_api, tmp_path, code="print('hi')\n", **meta) -> None:
    resp = kaggle_api.kernels_push(str(kernel_folder(tmp_path, "orch-api-test", code, **meta)))
    assert not resp.error


# ------------------------------------------------------------------ backoff


def test_kaggle_calls_wait_with_equal_jitter_never_below_half_the_base():
    policy = CALLS.replace(base=1.0, factor=2.0, cap=8.0, rand=random.Random(3).random)
    delays = [policy.delay(n) for n in range(1, 7)]
    assert all(0.5 <= d <= 8.0 for d in delays)
    assert delays[3] >= 4.0 and delays[5] <= 8.0
    assert len({round(d, 6) for d in delays}) == len(delays)  # jittered, not a fixed ladder


# ------------------------------------------------------------------ error edge


def _http_error(status: int, body: dict, headers: dict | None = None) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode()
    response.headers["Content-Type"] = "application/json"
    response.headers.update(headers or {})
    return requests.HTTPError(body.get("message", ""), response=response)


@pytest.mark.parametrize("status,body,kind", [
    (429, {"code": 429, "message": "Too many requests"}, TransientError),
    (500, {"code": 500, "message": "Internal"}, TransientError),
    (503, {"code": 503, "message": "Unavailable"}, TransientError),
    (200, {"code": 429, "message": "Too many requests"}, TransientError),
    (200, {"code": 403, "message": "Forbidden"}, MissingError),
    (401, {"code": 401, "message": "Unauthenticated"}, CredentialsError),
    (404, {"code": 404, "message": "Not found"}, MissingError),
    (400, {"code": 400, "message": "Bad request"}, PrecheckError),
])
def test_http_errors_map_onto_the_error_tree(status, body, kind):
    err = classify_http("status of x", _http_error(status, body))
    assert type(err) is kind
    assert body["message"] in str(err) and str(err).startswith("status of x:")


def test_retry_after_is_read_from_a_429():
    err = classify_http("x", _http_error(429, {"code": 429, "message": "slow down"}, {"Retry-After": "7"}))
    assert err.retry_after == 7.0


def test_a_401_says_how_to_fix_the_credentials():
    err = classify_http("x", _http_error(401, {"code": 401, "message": "Unauthenticated"}))
    assert "kaggle.json" in str(err) and "KAGGLE_USERNAME" in str(err) and "run: orch platforms" in str(err)


def test_status_reads_survive_a_429_storm_without_a_tight_loop(kaggle_emulator, kaggle_api, tmp_path):
    pushed(kaggle_api, tmp_path)
    kaggle_emulator.inject("GetKernelSessionStatus", "429", times=4, retry_after=0.1)
    state = account().kernel_status(REF)
    assert state.status in ("QUEUED", "RUNNING", "COMPLETE")
    assert kaggle_emulator.calls["GetKernelSessionStatus"] == 5
    gaps = kaggle_emulator.calls_between("GetKernelSessionStatus")
    assert min(gaps) >= 0.09  # Retry-After (0.1 s) honoured; never hammered


def test_intermittent_500s_and_dropped_connections_are_retried(kaggle_emulator, kaggle_api, tmp_path):
    kaggle_emulator.inject("GetAcceleratorQuotaStatistics", "500", times=2)
    kaggle_emulator.inject("GetAcceleratorQuotaStatistics", "drop", times=1)
    reading = account().quota()
    assert reading.limit == 30.0
    assert kaggle_emulator.calls["GetAcceleratorQuotaStatistics"] == 4


def test_a_persistent_outage_ends_in_a_transient_error_not_a_hang(kaggle_emulator):
    kaggle_emulator.inject("GetAcceleratorQuotaStatistics", "503", times=None)
    with pytest.raises(TransientError, match="503"):
        account(attempts=3).quota()
    assert kaggle_emulator.calls["GetAcceleratorQuotaStatistics"] == 3


def test_an_unknown_kernel_is_missing(kaggle_emulator):
    with pytest.raises(MissingError):
        account().kernel_status(f"{USERNAME}/orch-not-there")


def test_wrong_credentials_are_a_credentials_error_with_the_fix_tried_once(kaggle_emulator, monkeypatch):
    monkeypatch.setenv("KAGGLE_KEY", "wrong-key")
    acct = account()
    with pytest.raises(CredentialsError, match="401") as info:
        acct.quota()
    assert "wrong-key" not in str(info.value)
    assert kaggle_emulator.calls["GetAcceleratorQuotaStatistics"] == 1  # a rejected key is not retried
    assert acct.auth_failure == str(info.value)


# ------------------------------------------------------------------ push


def test_a_push_error_is_a_precheck_error_with_kaggles_message(kaggle_emulator, tmp_path):
    kaggle_emulator.inject("SaveKernel", "push-error", message="Notebook not found")
    folder = kernel_folder(tmp_path, "orch-api-test", "print(1)\n")
    with pytest.raises(PrecheckError, match="Notebook not found"):
        account().push(folder, REF, 600, None)


def test_invalid_sources_are_a_precheck_error_naming_them(kaggle_emulator, tmp_path):
    folder = kernel_folder(tmp_path, "orch-api-test", "print(1)\n", dataset_sources=[f"{USERNAME}/orch-data-none"])
    with pytest.raises(PrecheckError, match="invalid dataset sources alice/orch-data-none"):
        account().push(folder, REF, 600, None)


def test_a_gpu_session_cap_is_a_capacity_error(kaggle_emulator, tmp_path):
    kaggle_emulator.max_gpu_sessions = 0
    folder = kernel_folder(tmp_path, "orch-api-test", "print(1)\n")
    with pytest.raises(CapacityError, match="Maximum batch GPU session count"):
        account().push(folder, REF, 600, "NvidiaTeslaT4")


def test_a_push_is_never_retried_blindly(kaggle_emulator, tmp_path):
    kaggle_emulator.inject("SaveKernel", "500")
    folder = kernel_folder(tmp_path, "orch-api-test", "print(1)\n")
    with pytest.raises(TransientError):
        account().push(folder, REF, 600, None)
    assert kaggle_emulator.calls["SaveKernel"] == 1


def test_a_push_sends_the_timeout_and_machine_shape(kaggle_emulator, tmp_path):
    folder = kernel_folder(tmp_path, "orch-api-test", "print(1)\n", enable_gpu=True)
    assert account().push(folder, REF, 900, "NvidiaTeslaT4") == 1
    request = kaggle_emulator.runs(REF)[0].request
    assert request["sessionTimeoutSeconds"] == 900 and request["machineShape"] == "NvidiaTeslaT4"


# ------------------------------------------------------------------ outputs and quota


def test_a_download_never_saves_an_error_page(kaggle_emulator, kaggle_api, tmp_path):
    pushed(kaggle_api, tmp_path, "open('model.bin', 'w').write('weights')\n")
    wait_status(kaggle_api, REF)
    acct = account(attempts=2)
    (name, url), = acct.output_page(REF).files
    kaggle_emulator.inject(OUTPUT_FILE, "500", times=None)
    with pytest.raises(TransientError, match="HTTP 500"):
        acct.download(url, tmp_path / "model.bin", "output model.bin")
    assert not (tmp_path / "model.bin").exists()
    assert not list(tmp_path.glob("*.part"))
    kaggle_emulator.clear_faults()
    assert acct.download(url, tmp_path / "model.bin", "output model.bin") == 7
    assert (tmp_path / "model.bin").read_text() == "weights"


def _output_statuses(emulator) -> list[int | None]:
    return [c.status for c in emulator.log if c.route == OUTPUT_FILE]


def test_a_download_cut_mid_file_resumes_with_range_and_ends_verified(kaggle_emulator, kaggle_api, tmp_path):
    data = bytes(range(256)) * 400
    (tmp_path / "model.bin").write_bytes(data)
    pushed(kaggle_api, tmp_path, "open('model.bin', 'wb').write(bytes(range(256)) * 400)\n")
    wait_status(kaggle_api, REF)
    acct = account()
    (_, url), = acct.output_page(REF).files
    dest = tmp_path / "out" / "model.bin"
    dest.parent.mkdir()
    (tmp_path / "out" / "model.bin.part").write_bytes(data[:40_000])  # left by a try that was cut

    assert acct.download(url, dest, "output model.bin") == len(data)

    assert dest.read_bytes() == data and not (tmp_path / "out" / "model.bin.part").exists()
    assert _output_statuses(kaggle_emulator) == [206]  # only the rest was sent


def test_a_partial_download_longer_than_the_file_starts_again_from_zero(kaggle_emulator, kaggle_api, tmp_path):
    pushed(kaggle_api, tmp_path, "open('model.bin', 'w').write('weights')\n")
    wait_status(kaggle_api, REF)
    acct = account()
    (_, url), = acct.output_page(REF).files
    dest = tmp_path / "out" / "model.bin"
    dest.parent.mkdir()
    (tmp_path / "out" / "model.bin.part").write_bytes(b"not the weights at all")

    assert acct.download(url, dest, "output model.bin") == 7

    assert dest.read_text() == "weights" and not (tmp_path / "out" / "model.bin.part").exists()
    assert _output_statuses(kaggle_emulator) == [416, 200]


def test_downloads_go_through_the_proxy_environment_without_credentials(kaggle_emulator, kaggle_api, tmp_path,
                                                                        monkeypatch):
    pushed(kaggle_api, tmp_path, "open('a.txt', 'w').write('a')\n")
    wait_status(kaggle_api, REF)
    acct = account()
    (_, url), = acct.output_page(REF).files
    # Route the file URL through a proxy that does not exist: the download must use it.
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    with pytest.raises(TransientError):
        account(attempts=1).download(url, tmp_path / "a.txt", "output a.txt")


def test_quota_reads_hours_and_an_aware_refresh_time(kaggle_emulator):
    kaggle_emulator.gpu_used_hours = 12.5
    reading = account().quota()
    assert reading.unit == "gpu_hours"
    assert reading.used == pytest.approx(12.5) and reading.limit == 30.0
    assert reading.resets_at.tzinfo is timezone.utc and reading.resets_at.weekday() == 5


def test_dataset_status_is_none_for_a_dataset_that_does_not_exist(kaggle_emulator):
    assert account().dataset_status(f"{USERNAME}/orch-data-nothing") is None
    kaggle_emulator.seed_dataset(f"{USERNAME}/orch-data-there", {"a": b"1"})
    assert account().dataset_status(f"{USERNAME}/orch-data-there") == "ready"


# ------------------------------------------------------------------ credentials


def test_credentials_come_from_kaggle_json_in_the_config_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.delenv("KAGGLE_API_TOKEN", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))
    assert config_dir() == tmp_path / "cfg"
    assert find_credentials() is None
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "kaggle.json").write_text('{"username": "alice", "key": "k"}')
    found = find_credentials()
    assert found.source == "kaggle.json" and found.path == tmp_path / "cfg" / "kaggle.json"


def test_env_credentials_take_precedence_and_a_token_comes_first(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", "k")
    assert find_credentials().source == "KAGGLE_USERNAME/KAGGLE_KEY"
    monkeypatch.setenv("KAGGLE_API_TOKEN", "tok")
    assert find_credentials().source == "KAGGLE_API_TOKEN"


def test_a_kaggle_json_readable_by_others_is_warned_about(tmp_path):
    path = tmp_path / "kaggle.json"
    path.write_text("{}")
    path.chmod(0o644)
    assert "chmod 600" in permission_warning(path)
    path.chmod(0o600)
    assert permission_warning(path) is None


def test_the_account_warns_about_a_readable_kaggle_json_and_still_works(kaggle_emulator, tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "kaggle.json").write_text(json.dumps({"username": USERNAME, "key": kaggle_emulator.key}))
    (cfg / "kaggle.json").chmod(0o644)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(cfg))
    acct = account()
    assert acct.username == USERNAME
    assert acct.quota().limit == 30.0
    assert any("chmod 600" in w for w in acct.warnings)


def test_no_credentials_at_all_is_a_precheck_error_with_the_fix(monkeypatch, tmp_path):
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "empty"))
    with pytest.raises(PrecheckError, match="kaggle.json"):
        account().api()


# ------------------------------------------------------------------ client versions and newer servers


@pytest.mark.parametrize("installed, bad", [
    ({"kaggle": "2.2.4", "kagglesdk": "0.1.37"}, None),
    ({"kaggle": "2.2.5", "kagglesdk": "0.1.38"}, None),
    ({"kaggle": "2.3.0", "kagglesdk": "0.1.38"}, "kaggle 2.3.0"),
    ({"kaggle": "2.2.4", "kagglesdk": "0.1.36"}, "kagglesdk 0.1.36"),
])
def test_a_client_outside_the_tested_range_is_one_line_with_the_pip_command(installed, bad):
    from orchestrator.platforms.kaggle.client import version_problem

    problem = version_problem(installed)
    if bad is None:
        assert problem is None
    else:
        assert problem.startswith(bad) and "pip install '" in problem and "\n" not in problem


def test_the_installed_client_is_inside_the_tested_range():
    from orchestrator.platforms.kaggle.client import _installed_versions, version_problem

    assert version_problem(_installed_versions()) is None


def test_an_upload_the_client_gave_up_on_is_transient():
    # kaggle 2.2.5 raises ValueError("Upload unsuccessful: ...") when a blob PUT fails for good.
    from orchestrator.platforms.kaggle.client import kaggle_errors

    with pytest.raises(TransientError, match="Upload unsuccessful"):
        with kaggle_errors("upload of dataset alice/x"):
            raise ValueError("Upload unsuccessful: data.tar")


def test_a_status_value_the_client_does_not_know_comes_back_raw(kaggle_emulator, kaggle_api, tmp_path):
    pushed(kaggle_api, tmp_path)
    kaggle_emulator.status_value = "PAUSED_FOR_MAINTENANCE"
    with pytest.raises(KeyError):  # what the unmodified client does with it
        kaggle_api.kernels_status(REF)
    assert account().kernel_status(REF).status == "PAUSED_FOR_MAINTENANCE"


def test_a_session_timeout_at_the_global_maximum_is_refused_as_on_kaggle(kaggle_emulator, tmp_path):
    folder = kernel_folder(tmp_path, "orch-api-test", "print(1)\n")
    with pytest.raises(PrecheckError, match="lower than the global maximum"):
        account().push(folder, REF, 12 * 3600, None)


def test_a_server_that_accepts_and_never_answers_is_a_transient_error_after_the_timeout(kaggle_emulator):
    import time

    kaggle_emulator.inject("*", "hang", times=None)
    acct = account(attempts=2)
    acct.timeout_s = 0.5
    began = time.monotonic()
    with pytest.raises(TransientError, match="no answer from Kaggle"):
        acct.quota()
    assert time.monotonic() - began < 5
    assert kaggle_emulator.calls["GetAcceleratorQuotaStatistics"] == 2


def test_the_deadline_rides_on_the_clients_own_session_so_the_proxy_still_applies(kaggle_emulator):
    from orchestrator.platforms.kaggle.client import TimeoutAdapter

    api = account().api()
    with api.build_kaggle_client() as client:
        adapter = client._http_client._session.get_adapter("http://localhost/api/v1/x")
        assert isinstance(adapter, TimeoutAdapter) and adapter.timeout == (10.0, 60.0)
    account().quota()  # reached through HTTP_PROXY (the emulator), as before
    assert kaggle_emulator.calls["GetAcceleratorQuotaStatistics"] == 1
