"""The real Drive v3 client, built against any endpoint, and the one error edge.

Everything orch sends to Google Drive goes through ``google-api-python-client``
unmodified; this module only chooses how it is built (see
``../shared/notes/colab-ssh-drive.md`` §5):

* ``static_discovery=True``: the discovery document bundled with the library, no network;
* ``build_http()``: an ``httplib2.Http`` that does not treat Drive's ``308 Resume
  Incomplete`` as a redirect;
* an endpoint override (``client_options``) so tests can point the real client at the
  fake server in ``tests/emulators/drive.py``; when that endpoint is plain ``http`` the
  request builder rewrites upload URLs, which the library leaves on ``https``;
* :class:`ReplayableHttp`, which reads a streamed upload chunk into bytes once, so a
  re-send by a lower layer sends the same bytes rather than an exhausted stream.

:func:`drive_errors` maps the library's exceptions onto orch's tree, once, and
:func:`is_retryable` says which of them orch's own retry loop may retry.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import google.auth.exceptions
import google_auth_httplib2
import httplib2
from google.oauth2.credentials import Credentials
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError
from googleapiclient.http import HttpRequest, build_http

from ...errors import (
    CapacityError, ConfigError, LostError, PlatformError, PrecheckError, CredentialsError, TransientError,
)

#: Full Drive scope: the agent in Colab writes through Colab's own OAuth client, and
#: files another client created are invisible under the narrower ``drive.file``.
DRIVE_SCOPES = ("https://www.googleapis.com/auth/drive",)

#: 403 reasons that mean "slow down", as in googleapiclient's own retry policy.
RATE_LIMIT_REASONS = frozenset({"userRateLimitExceeded", "rateLimitExceeded"})


class ReplayableHttp:
    """A transport wrapper that turns a streamed request body into bytes before sending.

    Design choice: the library streams each resumable chunk through a one-shot stream
    slice. httplib2 re-sends a request on a stale keep-alive connection and google-auth
    re-sends it after refreshing a token; both would then send an empty body under a
    non-zero ``Content-Length`` and hang until the socket timeout. A chunk is at most
    ``chunk_size`` bytes, so holding it in memory once is cheap.
    """

    def __init__(self, http: Any):
        self._http = http

    def request(self, uri: str, method: str = "GET", body: Any = None, headers: Any = None, **kwargs: Any):
        if body is not None and hasattr(body, "read"):
            body = body.read()
        return self._http.request(uri, method, body=body, headers=headers, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._http, name)


def _request_builder(endpoint: str | None) -> type[HttpRequest]:
    """An ``HttpRequest`` class that keeps upload URLs on the endpoint's own scheme.

    The library swaps only host and port of the media upload URL (google-api-python-client
    issue #1991), so ``http://127.0.0.1:P/`` endpoints would get ``https://127.0.0.1:P/upload``.
    """
    if not endpoint or urlsplit(endpoint).scheme != "http":
        return HttpRequest
    wrong = "https://" + urlsplit(endpoint).netloc + "/"
    right = "http://" + urlsplit(endpoint).netloc + "/"

    class PlainHttpRequest(HttpRequest):
        def __init__(self, http: Any, postproc: Any, uri: str, **kwargs: Any):
            if uri.startswith(wrong):
                uri = right + uri[len(wrong):]
            super().__init__(http, postproc, uri, **kwargs)

    return PlainHttpRequest


def build_drive(credentials: Any, endpoint: str | None = None, timeout: float = 60.0) -> Any:
    """The Drive v3 ``Resource`` for ``credentials``.

    Args:
        credentials: google-auth credentials (user OAuth, Colab's, or a bare token).
        endpoint: API root such as ``http://127.0.0.1:PORT/drive/v3/`` (with the service
            path and trailing slash); None = Google's.
        timeout: socket timeout for every request, in seconds.
    """
    http = google_auth_httplib2.AuthorizedHttp(credentials, http=_plain_http(timeout))
    options = {"api_endpoint": endpoint} if endpoint else None
    return build(
        "drive", "v3",
        http=ReplayableHttp(http),
        client_options=options,
        static_discovery=True,
        cache_discovery=False,
        requestBuilder=_request_builder(endpoint),
    )


def _plain_http(timeout: float) -> httplib2.Http:
    http = build_http()
    http.timeout = timeout
    return http


# --------------------------------------------------------------------------- tokens

def load_credentials(token_path: Path, platform: str, token_uri: str | None = None) -> Credentials:
    """The user's OAuth token saved by ``orch auth drive``.

    google-auth always refreshes at Google's token endpoint, whatever the file says (a
    planted token file cannot send the refresh token elsewhere); ``token_uri`` comes
    from orch's own config instead, for tests against the fake server.

    Raises:
        PrecheckError: no token file, or one that is not an authorized-user token; the
            message says to run ``orch auth drive NAME``.
    """
    fix = f"run: orch auth drive {platform}"
    if not token_path.is_file():
        raise PrecheckError(f"no Google Drive token for platform '{platform}' ({token_path}); {fix}", platform)
    try:
        info = json.loads(token_path.read_text())
        creds = Credentials.from_authorized_user_info(info, scopes=info.get("scopes") or list(DRIVE_SCOPES))
    except (ValueError, KeyError, TypeError) as exc:
        raise PrecheckError(f"{token_path}: not a Google OAuth token ({exc}); {fix}", platform) from exc
    return creds.with_token_uri(token_uri) if token_uri else creds


def save_credentials(credentials: Credentials, token_path: Path) -> None:
    """Write the token atomically with mode 0600 (it holds a refresh token)."""
    token_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=token_path.parent, prefix=".token-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(credentials.to_json())
        os.replace(tmp, token_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- the error edge

def error_reasons(exc: HttpError) -> list[str]:
    """The ``errors[].reason`` strings of a Drive error body (empty when there are none)."""
    try:
        errors = json.loads(exc.content.decode("utf-8"))["error"].get("errors") or []
        return [str(e.get("reason", "")) for e in errors if isinstance(e, dict)]
    except (ValueError, KeyError, TypeError, AttributeError):
        return []


#: Dropped or cut connections: http.client raises IncompleteRead (an HTTPException,
#: not an OSError) when a response body stops short.
_NETWORK_ERRORS = (OSError, socket.timeout, http.client.HTTPException, httplib2.HttpLib2Error,
                   google.auth.exceptions.TransportError)


def is_retryable(exc: BaseException) -> bool:
    """True for what Google's docs say to retry with backoff: 429, 5xx, 403 rate-limit
    reasons, timeouts and dropped connections, and token-endpoint hiccups."""
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, HttpError):
        status = exc.resp.status
        if status == 429 or status >= 500 or status == 408:
            return True
        return status == 403 and bool(RATE_LIMIT_REASONS & set(error_reasons(exc)))
    if isinstance(exc, google.auth.exceptions.RefreshError):
        return bool(getattr(exc, "retryable", False))
    return isinstance(exc, _NETWORK_ERRORS)


def classify(exc: BaseException, what: str, platform: str | None = None) -> PlatformError:
    """The orch error for a client-library exception; ``what`` names the operation."""
    name = platform or "colab_drive"
    relogin = f"run: orch auth drive {name}"
    if isinstance(exc, PlatformError):
        return exc
    if isinstance(exc, google.auth.exceptions.RefreshError) and not getattr(exc, "retryable", False):
        detail = exc.args[0] if exc.args else exc
        return CredentialsError(
            f"Google Drive token for platform '{name}' has expired or been revoked ({detail}); {relogin}", platform)
    if isinstance(exc, HttpError):
        status, reasons = exc.resp.status, error_reasons(exc)
        summary = f"{what}: Drive answered {status} {', '.join(reasons) or exc.reason}"
        if is_retryable(exc):
            return TransientError(summary, platform)
        if status == 401:
            return CredentialsError(f"{summary}; the token was rejected, {relogin}", platform)
        if status == 403 and "storageQuotaExceeded" in reasons:
            return CapacityError(f"{summary}; the Drive is full, free some space", platform)
        if status == 403:
            return PrecheckError(f"{summary}; check that the token has the Drive scope ({relogin})", platform)
        if status in (404, 410):
            return LostError(f"{summary}: it is gone", platform)
        return PrecheckError(summary, platform)
    if is_retryable(exc):
        return TransientError(f"{what}: {type(exc).__name__}: {exc}", platform)
    return PlatformError(f"{what}: {type(exc).__name__}: {exc}", platform)


@contextmanager
def drive_errors(what: str, platform: str | None = None) -> Iterator[None]:
    """Map any client-library exception raised inside onto orch's tree, once.

    Example::

        with drive_errors("list agents", self.name):
            files = service.files().list(q=...).execute()
    """
    try:
        yield
    except PlatformError:
        raise
    except (HttpError, google.auth.exceptions.GoogleAuthError, *_NETWORK_ERRORS) as exc:
        raise classify(exc, what, platform) from exc


# --------------------------------------------------------------------------- consent

def run_consent_flow(client_secrets: Path, token_path: Path, platform: str, *, open_browser: bool = True,
                     browser: str | None = None, timeout: float | None = 300) -> Credentials:
    """Ask the user for Drive access (installed-app OAuth) and save the token (0600).

    A loopback server on 127.0.0.1 receives Google's redirect; ``prompt=consent`` and
    offline access make Google return a refresh token every time.

    Raises:
        ConfigError: the client file is missing or is not a Desktop OAuth client.
        PrecheckError: the user declined, or the flow timed out.
    """
    from google_auth_oauthlib.flow import InstalledAppFlow  # noqa: PLC0415 - only `orch auth drive` needs it

    where = f"platforms.{platform}.credentials"
    if not client_secrets.is_file():
        raise ConfigError(f"{where}: {client_secrets} does not exist; create a Desktop OAuth client in Google "
                          f"Cloud console and download its JSON (see docs/platforms/colab_drive.md)")
    try:
        flow = InstalledAppFlow.from_client_secrets_file(str(client_secrets), scopes=list(DRIVE_SCOPES))
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"{where}: {client_secrets} is not an OAuth client file ({exc}); "
                          f"download the Desktop app client JSON") from exc
    try:
        creds = flow.run_local_server(
            host="127.0.0.1", port=0, open_browser=open_browser, browser=browser, timeout_seconds=timeout,
            authorization_prompt_message="Open this URL in a browser and allow access to Google Drive:\n{url}",
            success_message="orch can now use Google Drive; you may close this tab.",
            prompt="consent", access_type="offline",
        )
    except Exception as exc:  # oauthlib raises a zoo of classes; all mean "no token"
        raise PrecheckError(f"Google sign-in for platform '{platform}' failed: {exc}", platform) from exc
    if creds is None or not creds.refresh_token:
        raise PrecheckError(f"Google returned no refresh token for platform '{platform}'; run the command again",
                            platform)
    save_credentials(creds, token_path)
    return creds
