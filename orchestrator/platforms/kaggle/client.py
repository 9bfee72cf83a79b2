"""The edge between orch and the unmodified ``kaggle`` client (2.2.4 up to 2.3, see
:data:`SUPPORTED`).

Everything orch says to Kaggle goes through :class:`KaggleAccount`, which

* finds credentials the standard Kaggle ways (``KAGGLE_API_TOKEN`` or
  ``~/.kaggle/access_token``, ``kaggle.json`` in ``KAGGLE_CONFIG_DIR`` / ``~/.kaggle`` /
  ``$XDG_CONFIG_HOME/kaggle``, ``KAGGLE_USERNAME`` + ``KAGGLE_KEY``), never copies
  them, and warns when ``kaggle.json`` is readable by others;
* calls ``KaggleApi`` methods (or its own kagglesdk client) so that
  ``KAGGLE_API_ENVIRONMENT`` and ``HTTP(S)_PROXY`` keep working: no request leaves
  through anything but the client's own HTTP session;
* maps every client error onto orch's tree once, in :func:`kaggle_errors`; and
* retries every call with backoff and jitter (:data:`CALLS`, an
  :class:`orchestrator.retry.Retry`), honouring ``Retry-After``, because the client
  itself retries only uploads; and
* gives every call a deadline: kagglesdk sends without a timeout, so a server that
  accepts and never answers would hang a tick. :class:`TimeoutAdapter` is mounted on
  the client's own ``requests`` session (proxies and environment settings still
  apply), in every client the ``KaggleApi`` builds.

Design choice: the client reads ``KAGGLE_API_ENVIRONMENT`` and its config dir once,
at import. ``KaggleAccount`` re-reads both when it builds its ``KaggleApi`` (setting
the instance's ``args``/``config``), so an environment changed after import — a
test, or a user who sets ``KAGGLE_CONFIG_DIR`` in orch's config — is honoured.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

import requests

from ...errors import CapacityError, CredentialsError, OrchError, PrecheckError, TransientError
from ...partfile import PartFile
from ...retry import Retry
from ..base import QuotaReading

if TYPE_CHECKING:  # pragma: no cover
    from kaggle.api.kaggle_api_extended import KaggleApi

log = logging.getLogger(__name__)
T = TypeVar("T")

from .credentials import CREDENTIALS_FIX, config_dir, find_credentials, permission_warning

#: Push errors that mean "no room now" rather than "this job can never run here".
_CAPACITY_WORDS = ("session count", "quota", "too many", "concurrent", "rate limit")


class MissingError(PrecheckError):
    """Kaggle has no kernel/dataset of that name visible to this account.

    Kaggle answers 404 for a missing dataset and 403 ("Permission 'kernels.get' was
    denied") for a kernel slug that does not exist; callers that look something up
    catch this to mean "not there".
    """


# --------------------------------------------------------------------------- errors


def _retry_after(response: requests.Response | None) -> float | None:
    value = response.headers.get("Retry-After") if response is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _json_code(response: requests.Response | None) -> tuple[int | None, str]:
    if response is None:
        return None, ""
    try:
        doc = response.json()
    except ValueError:
        return None, ""
    if isinstance(doc, dict) and isinstance(doc.get("code"), int):
        return doc["code"], str(doc.get("message") or "")
    return None, ""


def classify_http(what: str, exc: requests.HTTPError, platform: str | None = None) -> OrchError:
    """The orch error for an HTTP error from the client.

    A JSON ``{"code": N}`` sent with HTTP 200 (notes §7) counts as status N.
    """
    response = exc.response
    status = response.status_code if response is not None else None
    code, message = _json_code(response)
    if code is not None and (status is None or status < 400):
        status = code
    message = message or str(exc) or f"HTTP {status}"
    if status == 429:
        err: OrchError = TransientError(f"{what}: Kaggle is rate-limiting this account (429: {message})", platform)
        err.retry_after = _retry_after(response)  # type: ignore[attr-defined]
        return err
    if status is None or status >= 500 or status == 408:
        return TransientError(f"{what}: Kaggle answered {status}: {message}", platform)
    if status == 401:
        return CredentialsError(f"{what}: Kaggle rejected the credentials (401: {message}); Kaggle is unavailable "
                                f"until they work, and runs there are left alone meanwhile. To fix the key: "
                                f"{CREDENTIALS_FIX}; then run: orch platforms", platform)
    if status in (403, 404):
        return MissingError(f"{what}: not found on Kaggle or not visible to this account ({status}: {message})", platform)
    return PrecheckError(f"{what}: Kaggle refused the request ({status}: {message})", platform)


@contextlib.contextmanager
def kaggle_errors(what: str, platform: str | None = None) -> Iterator[None]:
    """Map whatever the kaggle client raises inside the block onto orch's error tree.

    ``what`` names the operation for the message ("status of alice/orch-x-1").
    """
    try:
        yield
    except OrchError:
        raise
    except requests.HTTPError as exc:
        raise classify_http(what, exc, platform) from exc
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
        raise TransientError(f"{what}: no answer from Kaggle ({type(exc).__name__}); will retry", platform) from exc
    except json.JSONDecodeError as exc:
        raise TransientError(f"{what}: Kaggle sent an unreadable answer ({exc}); will retry", platform) from exc
    except ValueError as exc:
        # kernels_status/output turn 401/403 into ValueError("Cannot access kernel ..."),
        # raised while handling the HTTPError; everything else is client-side validation.
        cause = exc.__context__
        if isinstance(cause, requests.HTTPError):
            raise classify_http(what, cause, platform) from exc
        if str(exc).startswith("Upload unsuccessful"):  # 2.2.5: a blob PUT that gave up
            raise TransientError(f"{what}: {exc}; will retry", platform) from exc
        raise PrecheckError(f"{what}: {exc}", platform) from exc
    except OSError as exc:  # urllib3 errors that escaped requests, sockets
        raise TransientError(f"{what}: network error talking to Kaggle ({exc}); will retry", platform) from exc


class ExpiredLink(TransientError):
    """A signed output URL no longer works (GCS answers 400 ``ExpiredToken``, or 403/404
    once it lapsed): a fresh listing hands out a new one. Not retried with the same URL."""


def _download_error(what: str, resp: requests.Response, platform: str | None) -> OrchError:
    """The error for a download that answered neither 200 nor 206."""
    kind = resp.headers.get("Content-Type", "")
    text = resp.text[:300] if ("json" in kind or "xml" in kind) else ""
    code = re.search(r"<Code>(\w+)</Code>", text)
    body = code.group(1) if code else ("".join(ch for ch in text[:200] if ch.isprintable()) if "json" in kind else "")
    message = f"{what}: download answered HTTP {resp.status_code} {body}".rstrip()
    if resp.status_code in (403, 404) or (resp.status_code == 400 and "ExpiredToken" in text):
        return ExpiredLink(message, platform)
    if resp.status_code in (429,) or resp.status_code >= 500 or resp.status_code == 408:
        err = TransientError(message, platform)
        err.retry_after = _retry_after(resp)  # type: ignore[attr-defined]
        return err
    return PrecheckError(message, platform)


def _download_size(resp: requests.Response, have: int, platform: str | None) -> int | None:
    """The whole file's size from a download reply (None when it does not say).

    A 206 must continue at ``have`` (``Content-Range: bytes have-end/total``);
    anything else would shift the rest of the file, so it is refused as transient.
    """
    if resp.status_code == 206:
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", "").strip())
        if not m or int(m.group(1)) != have:
            raise TransientError(f"download reply for bytes {have}- came back as "
                                 f"{resp.headers.get('Content-Range', 'no Content-Range')}", platform)
        return int(m.group(3)) if m.group(3) != "*" else None
    length = resp.headers.get("Content-Length")
    return int(length) if length is not None else None


# --------------------------------------------------------------------------- retries


#: Kaggle calls: waits within [ceiling/2, ceiling] (never closer than ``base/2``, never a
#: tight loop), ceilings doubling from 1 s to 60 s, 6 tries and at most 180 s of waiting.
CALLS = Retry(attempts=6, base=1.0, factor=2.0, cap=60.0, jitter=0.5, budget=180.0)


# --------------------------------------------------------------------------- account


@dataclass(frozen=True)
class KernelState:
    """One status read: Kaggle's worker status name and its failure message."""

    status: str
    failure_message: str = ""


@dataclass(frozen=True)
class OutputPage:
    files: list[tuple[str, str]]  # (fileName as Kaggle sent it, url)
    log: str
    next_token: str


class TimeoutAdapter(requests.adapters.HTTPAdapter):
    """An ``HTTPAdapter`` that sends with ``timeout`` when the caller gave none."""

    def __init__(self, timeout: tuple[float, float]):
        super().__init__()
        self.timeout = timeout

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        return super().send(request, **kwargs)


def with_deadlines(api: "KaggleApi", read_s: float) -> None:
    """Make every kagglesdk client ``api`` builds send with a (connect, read) timeout."""
    build = api.build_kaggle_client
    timeout = (min(10.0, read_s), read_s)

    def build_with_deadlines() -> Any:
        client = build()
        http = client._http_client  # kagglesdk's KaggleHttpClient; its session is made once
        http._init_session()
        adapter = TimeoutAdapter(timeout)
        http._session.mount("https://", adapter)
        http._session.mount("http://", adapter)
        return client

    api.build_kaggle_client = build_with_deadlines  # type: ignore[method-assign]


class _NoAuth(requests.auth.AuthBase):
    """Send no credentials: output URLs are signed storage URLs on another host."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers.pop("Authorization", None)
        return r


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """Capture what the client prints to stdout (auth help, progress, warnings)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield buf
    if buf.getvalue().strip():
        log.debug("kaggle client said: %s", buf.getvalue().strip())


#: The client versions orch is tested against (CI runs the Kaggle tests at both ends):
#: package -> (lowest, first version above the range).
SUPPORTED = {"kaggle": ((2, 2, 4), (2, 3)), "kagglesdk": ((0, 1, 37), (0, 2))}


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def version_problem(installed: dict[str, str | None]) -> str | None:
    """One line naming a client package outside :data:`SUPPORTED` and the fix, else None."""
    for name, (low, high) in SUPPORTED.items():
        found = installed.get(name)
        if found is None:
            continue
        if not low <= _version_tuple(found) < high:
            wanted = f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"
            return (f"{name} {found} is installed, but orch is tested with {name}{wanted}; "
                    f"install a tested one with: pip install '{name}{wanted}'")
    return None


def _installed_versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in SUPPORTED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _client_class() -> type["KaggleApi"]:
    problem = version_problem(_installed_versions())
    if problem:
        raise PrecheckError(problem)
    try:
        with _quiet():  # the package authenticates (and may print help) at import
            from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError as exc:
        raise PrecheckError("the kaggle client is not installed; install it with: pip install 'orch[kaggle]'") from exc
    return KaggleApi


class KaggleAccount:
    """One Kaggle account, reached through the unmodified ``KaggleApi``.

    Cheap to create; the client is built (and credentials read) on first use.
    Every method retries transient failures with ``backoff`` and raises orch errors.
    """

    def __init__(self, backoff: Retry | None = None, platform: str | None = None, timeout_s: float = 60.0):
        self.backoff = backoff or CALLS
        self.platform = platform
        #: Read timeout of every request (no answer for this long: a transient error).
        self.timeout_s = timeout_s
        #: The last "Kaggle rejected the credentials" message, until a call works again.
        self.auth_failure: str | None = None
        self.warnings: list[str] = []
        self._api: KaggleApi | None = None

    # -- the client
    def api(self) -> "KaggleApi":
        if self._api is not None:
            return self._api
        cls = _client_class()
        found = find_credentials()
        if found is None:
            raise PrecheckError(f"no Kaggle credentials found; {CREDENTIALS_FIX}", self.platform)
        if found.path is not None:  # kaggle.json or an access_token file
            warning = permission_warning(found.path)
            if warning:
                self.warnings.append(warning)
                log.warning(warning)
        api = cls()
        folder = config_dir()
        api.config_dir = str(folder)
        api.config = str(folder / cls.config_file)
        args = [a for a in cls.args if a != "--local"]
        if os.environ.get("KAGGLE_API_ENVIRONMENT") == "LOCALHOST":
            args.append("--local")
        api.args = args
        with_deadlines(api, self.timeout_s)
        try:
            with _quiet():
                api.authenticate()
        except SystemExit as exc:  # the client exits when it finds no credentials
            raise PrecheckError(f"the kaggle client found no usable credentials; {CREDENTIALS_FIX}", self.platform) from exc
        except Exception as exc:  # an access token the server would not introspect
            with kaggle_errors("Kaggle sign-in", self.platform):
                raise exc
        self._api = api
        return api

    @property
    def username(self) -> str:
        api = self.api()
        name = api.config_values.get(api.CONFIG_NAME_USER)
        if not name:
            raise PrecheckError(f"the Kaggle credentials name no user; {CREDENTIALS_FIX}", self.platform)
        return str(name)

    def call(self, what: str, fn: Callable[["KaggleApi"], T], retry: bool | Retry = True) -> T:
        """Run ``fn(api)`` at the error edge, with retries (``self.backoff``, or the
        policy given) unless ``retry`` is False."""

        def once() -> T:
            try:
                with kaggle_errors(what, self.platform):
                    out = fn(self.api())
            except CredentialsError as exc:
                self.auth_failure = str(exc)
                raise
            self.auth_failure = None
            return out

        if retry is False:
            return once()
        # A rejected key stays rejected within a call: not retried.
        return (retry if isinstance(retry, Retry) else self.backoff).run(
            what, once, retry_if=lambda e: isinstance(e, TransientError) and not isinstance(e, CredentialsError))

    # -- kernels
    def kernel_status(self, ref: str, retry: bool | Retry = True) -> KernelState:
        """Raises MissingError when the kernel does not exist."""

        def read(api: "KaggleApi") -> KernelState:
            try:
                resp = api.kernels_status(ref)
            except KeyError as exc:
                # kagglesdk parses the status into its enum and raises KeyError(<raw value>)
                # for a value it does not know (a newer server): show the value, don't crash.
                raw = str(exc.args[0]) if exc.args else ""
                return KernelState(status="".join(ch for ch in raw if ch.isprintable())[:60] or "?")
            status = getattr(resp.status, "name", None) or str(resp.status or "QUEUED")
            return KernelState(status=status.upper(), failure_message=resp.failure_message or "")

        return self.call(f"status of {ref}", read, retry)

    def push(self, folder: Path, ref: str, timeout_s: int | None, machine_shape: str | None) -> int:
        """Push the kernel folder once (no retry: the caller reconciles). Returns the
        version number. HTTP 200 with ``error`` or invalid sources is a refusal."""
        resp = self.call(
            f"push of {ref}",
            lambda api: api.kernels_push(str(folder), timeout=str(timeout_s) if timeout_s else None, acc=machine_shape),
            retry=False,
        )
        if resp.error:
            kind = CapacityError if any(w in resp.error.lower() for w in _CAPACITY_WORDS) else PrecheckError
            raise kind(f"Kaggle refused the push of {ref}: {resp.error}", self.platform)
        invalid = {
            "dataset": resp.invalid_dataset_sources, "kernel": resp.invalid_kernel_sources,
            "competition": resp.invalid_competition_sources, "model": resp.invalid_model_sources,
        }
        bad = [f"{kind} sources {', '.join(items)}" for kind, items in invalid.items() if items]
        if bad:
            raise PrecheckError(f"Kaggle refused the push of {ref}: invalid {'; '.join(bad)}", self.platform)
        return int(resp.version_number or 0)

    def output_page(self, ref: str, token: str = "", page_size: int = 50) -> OutputPage:
        """One page of a finished kernel's output listing (names are NOT sanitised here)."""
        from kagglesdk.kernels.types.kernels_api_service import ApiListKernelSessionOutputRequest

        owner, slug = ref.split("/")

        def fetch(api: "KaggleApi") -> OutputPage:
            with api.build_kaggle_client() as client:
                request = ApiListKernelSessionOutputRequest()
                request.user_name, request.kernel_slug = owner, slug
                request.page_size, request.page_token = page_size, token
                resp = client.kernels.kernels_api_client.list_kernel_session_output(request)
            files = [(f.file_name or "", f.url or "") for f in resp.files or []]
            return OutputPage(files=files, log=resp.log or "", next_token=resp.next_page_token or "")

        return self.call(f"output listing of {ref}", fetch)

    def download(self, url: str, dest: Path, what: str) -> int:
        """GET ``url`` into ``dest`` through the client's HTTP session, without auth.

        Only a 200 (or a 206 for a ``Range`` request) is saved (2.2.4 would save an
        error page as the file); the body goes to ``dest.part`` (:class:`PartFile`),
        a later try continues it with ``Range``, and it is renamed once its size matches.
        Returns the file's size.
        """
        part = PartFile(dest, what=what, platform=self.platform)

        def fetch(api: "KaggleApi") -> int:
            have = part.have()
            headers = {"Range": f"bytes={have}-"} if have else {}
            with api.build_kaggle_client() as client:
                http = client._http_client  # the client's own session, as kernels_logs_stream uses it
                http._init_session()
                with http._session.get(url, auth=_NoAuth(), headers=headers, stream=True, timeout=(30, 300)) as resp:
                    if resp.status_code == 416:  # the part is no prefix of the file: start again
                        part.discard()
                        raise TransientError(f"{what}: the partial download does not fit the file", self.platform)
                    if resp.status_code not in (200, 206):
                        raise _download_error(what, resp, self.platform)
                    part.size = _download_size(resp, have, self.platform)
                    with part.open(resume=resp.status_code == 206) as out:
                        for block in resp.iter_content(1 << 20):
                            out.write(block)
            return part.commit().stat().st_size

        def once() -> int:
            with kaggle_errors(what, self.platform):
                return fetch(self.api())

        # A dead link is not tried again as it is: the caller lists the outputs afresh.
        return self.backoff.run(what, once, retry_if=lambda e: isinstance(e, TransientError)
                                and not isinstance(e, ExpiredLink))

    def log_stream(self, ref: str) -> Iterator[str]:
        """The text of each event of the kernel's log stream, as it arrives (server-sent
        events while the kernel runs, so iterating blocks until it ends; the stored log
        once it ended). Not retried: a broken stream is simply opened again."""
        with kaggle_errors(f"log stream of {ref}", self.platform):
            for event in self.api().kernels_logs_stream(ref):
                yield str(event.get("data", ""))

    def quota(self, retry: bool | Retry = True) -> QuotaReading:
        """The account's weekly GPU quota (GetAcceleratorQuotaStatistics), in hours."""
        resp = self.call("GPU quota", lambda api: api.quota_view(), retry)
        gpu = resp.gpu_quota
        if gpu is None:
            raise TransientError("GPU quota: Kaggle sent no GPU quota", self.platform)
        refresh = resp.quota_refresh_time
        if refresh is not None and refresh.tzinfo is None:
            refresh = refresh.replace(tzinfo=timezone.utc)  # the client strips the Z

        def hours(delta: Any) -> float:
            return delta.total_seconds() / 3600 if delta is not None else 0.0

        return QuotaReading(
            unit="gpu_hours",
            used=hours(gpu.time_used),
            limit=hours(gpu.total_time_allowed) if gpu.total_time_allowed is not None else None,
            reserved=hours(gpu.time_reserved),
            resets_at=refresh,
            source="kaggle GetAcceleratorQuotaStatistics",
        )

    # -- datasets
    def dataset_status(self, ref: str) -> str | None:
        """Lower-case status ("ready", "blobs_received", "failed", ...); None if absent."""
        try:
            return str(self.call(f"status of dataset {ref}", lambda api: api.dataset_status(ref))).lower()
        except MissingError:
            return None

    def create_dataset(self, folder: Path, ref: str) -> None:
        """Upload ``folder`` (``dataset-metadata.json`` + files) as a new private dataset.

        The client retries the blob upload and CreateDataset on 429 itself; this
        retries the whole call on other transient errors (the client resumes uploads).
        """

        def create(api: "KaggleApi") -> Any:
            with _quiet():
                return api.dataset_create_new(str(folder), public=False, quiet=True, dir_mode="skip")

        resp = self.call(f"upload of dataset {ref}", create)
        if resp.error:
            # The client skips a file whose upload failed and creates the dataset
            # without it, so most refusals here are worth another try later.
            error = str(resp.error)
            if "already in use" in error:
                raise PrecheckError(f"Kaggle refused dataset {ref}: {error}", self.platform)
            kind = CapacityError if any(w in error.lower() for w in ("quota", "storage", "limit")) else TransientError
            raise kind(f"Kaggle refused dataset {ref}: {error}", self.platform)

    # -- listing and deleting what orch created (orch gc)
    def list_kernels(self, search: str) -> list[Any]:
        out: list[Any] = []
        for page in range(1, 1000):
            batch = self.call("kernel listing", lambda api: api.kernels_list(page=page, page_size=100, mine=True, search=search))
            out += batch or []
            if not batch or len(batch) < 100:
                return out
        return out  # pragma: no cover

    def list_datasets(self, search: str) -> list[Any]:
        out: list[Any] = []
        for page in range(1, 1000):
            batch = self.call("dataset listing", lambda api: api.dataset_list(mine=True, search=search, page=page))
            out += batch or []
            if not batch or len(batch) < 20:
                return out
        return out  # pragma: no cover

    def delete_kernel(self, ref: str) -> None:
        def delete(api: "KaggleApi") -> None:
            with _quiet():
                api.kernels_delete(ref, no_confirm=True)

        self.call(f"deletion of kernel {ref}", delete)

    def delete_dataset(self, ref: str) -> None:
        owner, slug = ref.split("/")
        self.call(f"deletion of dataset {ref}", lambda api: api.dataset_delete(owner, slug, no_confirm=True))
