"""The Drive error edge and OAuth token handling, with the real google-auth refresh flow."""

from __future__ import annotations

import json
import stat
import threading
import urllib.request
import webbrowser
from datetime import datetime, timedelta

import pytest
from google.oauth2.credentials import Credentials

from orchestrator.errors import CapacityError, ConfigError, LostError, PrecheckError, CredentialsError, TransientError
from orchestrator.platforms.colab_drive.client import (
    DRIVE_SCOPES, build_drive, drive_errors, load_credentials, run_consent_flow, save_credentials,
)
from orchestrator.platforms.colab_drive.transfer import DRIVE_CALLS, Transfers, UploadJournal


def _token_file(path, drive, refresh_token="rt-1", access="stale", expired=True):
    doc = {"token": access, "refresh_token": refresh_token, "token_uri": drive.token_uri,
           "client_id": "orch-test-client", "client_secret": "s3cret", "scopes": list(DRIVE_SCOPES)}
    if expired:
        doc["expiry"] = (datetime.utcnow() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    path.write_text(json.dumps(doc))
    return path


def _transfers(creds, drive, tmp_path):
    return Transfers(build_drive(creds, drive.api_endpoint, timeout=10), UploadJournal(tmp_path / "u"), "gdrive",
                     DRIVE_CALLS.replace(attempts=2, sleep=lambda s: None))


def test_an_expired_access_token_is_refreshed_through_the_token_endpoint(drive, tmp_path):
    drive.add_refresh_token("rt-1")
    creds = load_credentials(_token_file(tmp_path / "t.json", drive), "gdrive", drive.token_uri)
    assert _transfers(creds, drive, tmp_path).list("trashed = false") == []
    assert drive.count("token") == 1 and creds.token.startswith("at-")


def test_a_revoked_refresh_token_says_to_run_orch_auth_drive(drive, tmp_path):
    drive.add_refresh_token("rt-1")
    drive.revoke("rt-1")
    creds = load_credentials(_token_file(tmp_path / "t.json", drive), "gdrive", drive.token_uri)
    with pytest.raises(CredentialsError) as err:  # reads wait for the user; no job is lost over it
        _transfers(creds, drive, tmp_path).list("trashed = false")
    message = str(err.value)
    assert "expired or been revoked" in message and "run: orch auth drive gdrive" in message
    assert "\n" not in message and "s3cret" not in message


def test_a_token_rejected_after_refresh_asks_for_a_new_sign_in(drive, tmp_path):
    # Refresh works but Drive still says 401 (e.g. the grant lost the Drive scope).
    drive.add_refresh_token("rt-1")
    drive.inject("error", status=401, reason="authError", times=10)
    creds = load_credentials(_token_file(tmp_path / "t.json", drive, expired=False), "gdrive", drive.token_uri)
    with pytest.raises(CredentialsError, match="orch auth drive gdrive"):
        _transfers(creds, drive, tmp_path).list("trashed = false")


def test_a_token_endpoint_outage_is_transient(drive, tmp_path):
    # A dropped connection rather than a 503: google-auth retries 5xx itself with
    # second-long sleeps, which only slows the test down.
    drive.add_refresh_token("rt-1")
    drive.inject("drop", method="POST", path="/token", times=100)
    creds = load_credentials(_token_file(tmp_path / "t.json", drive), "gdrive", drive.token_uri)
    with pytest.raises(TransientError):
        _transfers(creds, drive, tmp_path).list("trashed = false")


def test_a_missing_or_broken_token_file_names_the_fix(tmp_path):
    with pytest.raises(PrecheckError, match=r"no Google Drive token for platform 'gdrive'.*orch auth drive gdrive"):
        load_credentials(tmp_path / "absent.json", "gdrive")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PrecheckError, match="bad.json: not a Google OAuth token"):
        load_credentials(tmp_path / "bad.json", "gdrive")


def test_saved_tokens_are_readable_by_the_owner_only(tmp_path):
    creds = Credentials(token="a", refresh_token="r", token_uri="http://x/token", client_id="c", client_secret="s")
    path = tmp_path / "tokens" / "gdrive.json"
    save_credentials(creds, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_credentials(path, "gdrive").refresh_token == "r"


@pytest.mark.parametrize(
    ("status", "reason", "expected"),
    [
        (403, "userRateLimitExceeded", TransientError),
        (403, "rateLimitExceeded", TransientError),
        (429, "rateLimitExceeded", TransientError),
        (500, "backendError", TransientError),
        (503, "backendError", TransientError),
        (403, "insufficientFilePermissions", PrecheckError),
        (403, "storageQuotaExceeded", CapacityError),
        (404, "notFound", LostError),
        (400, "invalid", PrecheckError),
    ],
)
def test_drive_errors_map_onto_the_orch_tree(service, drive, status, reason, expected):
    drive.inject("error", status=status, reason=reason)
    with pytest.raises(expected) as err:
        with drive_errors("list agents", "gdrive"):
            service.files().list(q="trashed = false").execute()
    assert str(err.value).startswith(f"list agents: Drive answered {status} {reason}")
    assert err.value.platform == "gdrive" and err.value.__cause__ is not None


def test_a_dropped_connection_is_transient(service, drive):
    drive.inject("drop", method="GET", path="/drive/v3/files", after_bytes=0)
    with pytest.raises(TransientError, match="list"):
        with drive_errors("list", "gdrive"):
            service.files().list().execute()


class _Browser:
    """A web browser for the consent flow: follows the consent page's redirect in a thread."""

    def __init__(self):
        self.threads: list[threading.Thread] = []

    def open(self, url, new=0, autoraise=True):
        t = threading.Thread(target=lambda: urllib.request.urlopen(url, timeout=10).read(), daemon=True)
        t.start()
        self.threads.append(t)
        return True


def test_the_consent_flow_saves_a_refreshable_token_with_mode_0600(drive, tmp_path, monkeypatch):
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the fake token endpoint is plain http
    secrets = tmp_path / "client_secret.json"
    secrets.write_text(json.dumps({"installed": {
        "client_id": "orch-test-client", "client_secret": "s3cret", "auth_uri": drive.auth_uri,
        "token_uri": drive.token_uri, "redirect_uris": ["http://localhost"]}}))
    browser = _Browser()
    webbrowser.register("orch-test-browser", None, browser)
    token = tmp_path / "home" / "token.json"

    creds = run_consent_flow(secrets, token, "gdrive", browser="orch-test-browser", timeout=10)

    for t in browser.threads:
        t.join(timeout=5)
    assert creds.refresh_token.startswith("rt-") and stat.S_IMODE(token.stat().st_mode) == 0o600
    reloaded = load_credentials(token, "gdrive", drive.token_uri)
    assert _transfers(reloaded, drive, tmp_path).list("trashed = false") == []


def test_a_missing_client_file_names_the_config_field(tmp_path):
    with pytest.raises(ConfigError, match=r"platforms.gdrive.credentials: .*does not exist"):
        run_consent_flow(tmp_path / "nope.json", tmp_path / "t.json", "gdrive", open_browser=False)
