"""A wire-level emulator of the Kaggle API for the unmodified ``kaggle`` client.

The client reaches it through ``KAGGLE_API_ENVIRONMENT=LOCALHOST`` (set before the
first ``import kaggle``; the client then calls ``http://localhost/api/v1/...``) and
``HTTP_PROXY=<emulator.proxy_url>`` with ``NO_PROXY=127.0.0.1``: requests arrive as
absolute-form proxy requests and the path is taken from ``urlsplit(target).path``.
URLs the emulator hands out itself (blob uploads, output files) point at
``127.0.0.1:<port>`` and arrive directly.

It speaks the JSON-over-HTTP RPCs orch uses (``POST /api/v1/<service>/<Method>``,
camelCase bodies, ``{"code": N, "message": ...}`` errors), the blob PUT protocol
(200/201, 308 + ``Range`` for resume probes, 503), output-file GETs and the log
stream, and it really runs pushed kernels as local processes (see
``kaggle_runs.py``) with realistic timing: queued, running, complete/error, datasets
processing before they are ready, a session limit, weekly GPU quota accounting and
a cap on concurrent GPU sessions. Kaggle's own faults are knobs too: the session clock
starting before the script (``boot_delay``) and killing at the limit, output links that
expire (``output_url_ttl``: 400 ExpiredToken) or answer 403 once the kernel is deleted,
status values the client does not know (``status_value``), a small ``/kaggle/working``
(``working_limit_mb``), a rotated key (set ``key``: the old one gets 401) and a server
that accepts and never answers (the ``hang`` fault).

Test API: ``inject(route, kind, ...)`` for faults, ``calls[route]`` and ``log`` for
inspection, ``kernels``/``datasets``/``blobs`` for state, ``reset()`` between tests.
"""

from __future__ import annotations

import base64
import random
import re
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from . import kaggle_runs
from .kaggle_http import BLOB_PUT, FAULT_KINDS, LOGS_STREAM, OUTPUT_FILE, Fault, Handler, Reply, error_reply
from .kaggle_runs import KernelRun, RunEnvironment

__all__ = ["BLOB_PUT", "FAULT_KINDS", "LOGS_STREAM", "OUTPUT_FILE", "Fault", "KaggleEmulator"]

DATASET_PROCESSING = ("BLOBS_RECEIVED", "BLOBS_DECOMPRESSED", "BLOBS_COPIED_TO_SDS", "INDIVIDUAL_BLOBS_COMPRESSED")
MAX_SESSION_SECONDS = 12 * 3600


@dataclass
class CallRecord:
    at: float
    route: str
    status: int | None  # None: the connection was dropped


@dataclass
class Blob:
    token: str
    name: str
    length: int
    data: bytearray = field(default_factory=bytearray)

    @property
    def complete(self) -> bool:
        return len(self.data) == self.length


@dataclass
class Dataset:
    owner: str
    slug: str
    title: str
    files: dict[str, bytes]
    created_at: float
    ready_at: float
    id: int
    version: int = 1
    license_name: str = ""
    is_private: bool = True
    failed: bool = False
    created_wall: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.slug}"

    def status(self, now: float) -> str:
        if self.failed:
            return "FAILED"
        if now >= self.ready_at:
            return "READY"
        span = max(self.ready_at - self.created_at, 1e-9)
        step = int((now - self.created_at) / span * len(DATASET_PROCESSING))
        return DATASET_PROCESSING[min(max(step, 0), len(DATASET_PROCESSING) - 1)]


@dataclass
class Kernel:
    owner: str
    slug: str
    title: str
    id: int
    runs: list[KernelRun] = field(default_factory=list)
    created_wall: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.slug}"

    @property
    def latest(self) -> KernelRun:
        return self.runs[-1]


def slugify(title: str) -> str:
    """Roughly Kaggle's (python-slugify's) slug of a title."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


class KaggleEmulator:
    """The emulated Kaggle service for one account (plus whatever tests seed)."""

    DEFAULTS: dict[str, Any] = {
        "queue_delay": 0.05,
        "dataset_delay": 0.1,
        "session_limit": None,
        #: Seconds between the session clock starting and the script starting (container boot).
        "boot_delay": 0.0,
        #: Size of /kaggle/working in MB (Kaggle: 20 GB); None = the test machine's disk.
        "working_limit_mb": None,
        "input_layout": "legacy",
        "extract_archives": False,
        "keep_output_on_timeout": True,
        "max_page_size": None,
        "max_gpu_sessions": 2,
        "gpu_quota_hours": 30.0,
        "gpu_used_hours": 0.0,
        "quota_hours_per_second": 1 / 3600,
        "hostile_output_names": (),
        "refresh_time": None,
        #: A status value the client's enum does not know, answered instead of the real one.
        "status_value": None,
        #: Seconds a listed output URL stays valid (signed storage URLs expire: GCS then
        #: answers 400 ExpiredToken); None = forever.
        "output_url_ttl": None,
    }

    def __init__(self, root: Path, username: str = "alice", key: str = "emulator-key-0000", seed: int = 7):
        self.root = Path(root)
        self.username = username
        self.key = self._first_key = key
        self._seed = seed
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.secrets: dict[str, str] = {}
        self._reset_state()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "KaggleEmulator":
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.emulator = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="kaggle-emulator", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._stop_runs()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def reset(self) -> None:
        """Forget everything a test did: runs (killed), datasets, blobs, faults, knobs."""
        self._stop.set()
        self._stop_runs()
        self._stop = threading.Event()
        self._reset_state()
        shutil.rmtree(self.root / "runs", ignore_errors=True)

    def _reset_state(self) -> None:
        with self._lock:
            self.key = self._first_key  # a test may have rotated it
            for name, value in self.DEFAULTS.items():
                setattr(self, name, value)
            self.kernels: dict[str, Kernel] = {}
            self.datasets: dict[str, Dataset] = {}
            self.deleted_slugs: set[str] = set()
            self.blobs: dict[str, Blob] = {}
            self.faults: list[Fault] = []
            self.calls: Counter[str] = Counter()
            self.log: list[CallRecord] = []
            self.bytes_uploaded = 0
            self.secrets = {}
            self._ids = 1000
            self._rng = random.Random(self._seed)

    def _stop_runs(self) -> None:
        with self._lock:
            runs = [run for kernel in self.kernels.values() for run in kernel.runs]
        for run in runs:
            kaggle_runs.stop_run(run)

    @property
    def port(self) -> int:
        assert self._server is not None, "emulator not started"
        return self._server.server_address[1]

    @property
    def proxy_url(self) -> str:
        """What ``HTTP_PROXY`` must be for the client to reach the emulator."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def direct_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ test API
    def inject(self, route: str, kind: str, times: int | None = 1, rate: float = 1.0, **kw: Any) -> Fault:
        """Make the next ``times`` requests to ``route`` (an RPC name such as
        ``"SaveKernel"``, or ``BLOB_PUT``/``OUTPUT_FILE``/``LOGS_STREAM``, or ``"*"``)
        fail with ``kind`` (one of ``FAULT_KINDS``)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
        fault = Fault(route=route, kind=kind, times=times, rate=rate, **kw)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def runs(self, ref: str) -> list[KernelRun]:
        """Every pushed version of kernel ``owner/slug`` (each one a session)."""
        with self._lock:
            kernel = self.kernels.get(ref)
            return list(kernel.runs) if kernel else []

    def all_runs(self) -> list[KernelRun]:
        with self._lock:
            return [run for kernel in self.kernels.values() for run in kernel.runs]

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until every run has ended."""
        deadline = time.monotonic() + timeout
        for run in self.all_runs():
            if not kaggle_runs.wait_finished(run, max(0.0, deadline - time.monotonic())):
                return False
        return True

    def seed_dataset(self, ref: str, files: dict[str, bytes], ready: bool = True) -> Dataset:
        """Create a dataset directly (as if uploaded earlier, or by another user)."""
        owner, slug = ref.split("/")
        now = time.monotonic()
        with self._lock:
            ds = Dataset(owner=owner, slug=slug, title=slug, files=dict(files), created_at=now,
                         ready_at=now if ready else now + 3600, id=self._next_id())
            self.datasets[ref] = ds
        return ds

    def calls_between(self, route: str) -> list[float]:
        """Seconds between consecutive requests to ``route`` (to spot tight loops)."""
        times = [c.at for c in self.log if c.route == route]
        return [b - a for a, b in zip(times, times[1:])]

    def retry_gaps(self) -> dict[str, list[float]]:
        """Per route: seconds from each failed answer (429, 5xx, dropped) to the next
        request on that route. A client in a tight retry loop shows gaps near zero."""
        out: dict[str, list[float]] = {}
        last_failure: dict[str, float] = {}
        for call in self.log:
            if call.route in last_failure:
                out.setdefault(call.route, []).append(call.at - last_failure.pop(call.route))
            if call.status is None or call.status == 429 or call.status >= 500:
                last_failure[call.route] = call.at
        return out

    # ------------------------------------------------------------------ internals
    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    def _take_fault(self, route: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.route not in (route, "*"):
                    continue
                if fault.times is not None and fault.hits >= fault.times:
                    continue
                if fault.rate < 1.0 and self._rng.random() >= fault.rate:
                    continue
                fault.hits += 1
                return fault
        return None

    def _record(self, route: str, status: int | None) -> None:
        with self._lock:
            self.calls[route] += 1
            self.log.append(CallRecord(time.monotonic(), route, status))

    def _check_auth(self, header: str | None) -> None:
        expected = "Basic " + base64.b64encode(f"{self.username}:{self.key}".encode()).decode()
        if header != expected:
            raise error_reply(401, "Unauthenticated")

    def _run_env(self) -> RunEnvironment:
        return RunEnvironment(
            python=kaggle_runs.python_executable(),
            queue_delay=self.queue_delay,
            session_limit=self.session_limit,
            boot_delay=self.boot_delay,
            working_limit_mb=self.working_limit_mb,
            input_layout=self.input_layout,
            extract_archives=self.extract_archives,
            keep_output_on_timeout=self.keep_output_on_timeout,
            secrets=dict(self.secrets),
            dataset_files=self._ready_dataset_files,
            kernel_outputs=self._kernel_outputs,
            on_finish=self._charge_quota,
        )

    def _ready_dataset_files(self, ref: str) -> dict[str, bytes] | None:
        with self._lock:
            ds = self.datasets.get(ref)
            if ds is None or ds.status(time.monotonic()) != "READY":
                return None
            return dict(ds.files)

    def _kernel_outputs(self, ref: str) -> list | None:
        with self._lock:
            kernel = self.kernels.get(ref)
            if kernel is None:
                return None
            done = [run for run in kernel.runs if run.finished]
            return list(done[-1].outputs) if done else None

    def _charge_quota(self, run: KernelRun) -> None:
        if run.gpu and run.started_at is not None and run.ended_at is not None:
            with self._lock:
                self.gpu_used_hours += (run.ended_at - run.started_at) * self.quota_hours_per_second

    def _gpu_sessions(self) -> int:
        return sum(1 for run in self.all_runs() if run.gpu and not run.finished)

    def _refresh_time(self) -> datetime:
        if self.refresh_time is not None:
            return self.refresh_time
        now = datetime.now(timezone.utc)
        days = (5 - now.weekday()) % 7 or 7  # next Saturday 00:00 UTC
        return (now + timedelta(days=days)).replace(hour=0, minute=0, second=0, microsecond=0)

    # ------------------------------------------------------------------ RPCs
    def rpc(self, method: str, body: dict) -> dict:
        handler = getattr(self, f"_rpc_{method}", None)
        if handler is None:
            raise error_reply(404, f"Unknown method {method}")
        return handler(body)

    def _kernel(self, owner: str, slug: str) -> Kernel:
        kernel = self.kernels.get(f"{owner}/{slug}")
        if kernel is None:
            # Kaggle answers a wrong (or someone else's private) slug with a permission error.
            raise error_reply(403, "Permission 'kernels.get' was denied")
        return kernel

    def _rpc_SaveKernel(self, body: dict) -> dict:
        ref = body.get("slug") or ""
        owner, _, slug = ref.partition("/")
        if owner != self.username:
            return {"error": f"You do not have permission to save kernel {ref}"}
        if body.get("language") not in ("python", "r", "rmarkdown") or body.get("kernelType") not in ("script", "notebook"):
            return {"error": "A valid language and kernel type are required"}
        timeout = body.get("sessionTimeoutSeconds")
        if timeout is not None and int(timeout) >= MAX_SESSION_SECONDS:
            return {"error": f"sessionTimeoutSeconds must be lower than the global maximum of {MAX_SESSION_SECONDS}"}
        gpu = bool(body.get("enableGpu")) or str(body.get("machineShape") or "").startswith("Nvidia")
        with self._lock:
            kernel = self.kernels.get(ref)
            if kernel is None:
                title = body.get("newTitle") or slug
                slug = slugify(title) or slug  # the server derives a new kernel's slug from its title
                ref = f"{owner}/{slug}"
                kernel = self.kernels.get(ref)
            if gpu:
                if self._gpu_sessions() >= self.max_gpu_sessions:
                    return {"error": f"Maximum batch GPU session count of {self.max_gpu_sessions} reached."}
                if self.gpu_used_hours >= self.gpu_quota_hours:
                    return {"error": "You have exceeded your weekly GPU quota. It will reset on "
                                     + self._refresh_time().strftime("%Y-%m-%d %H:%M UTC") + "."}
            invalid_datasets = [s for s in body.get("datasetDataSources") or []
                                if self._ready_dataset_files("/".join(s.split("/")[:2])) is None]
            invalid_kernels = [s for s in body.get("kernelDataSources") or []
                               if "/".join(s.split("/")[:2]) not in self.kernels]
            if kernel is None:
                kernel = Kernel(owner=owner, slug=slug, title=body.get("newTitle") or slug, id=self._next_id())
                self.kernels[ref] = kernel
            version = len(kernel.runs) + 1
            run = KernelRun(owner=owner, slug=slug, version=version, request=dict(body),
                            pushed_at=time.monotonic(), gpu=gpu,
                            root=self.root / "runs" / f"{self._next_id()}-{slug}-v{version}")
            kernel.runs.append(run)
            kaggle_runs.start(run, self._run_env(), self._stop)
        return {
            "ref": f"/code/{ref}",
            "url": f"https://www.kaggle.com/code/{ref}",
            "versionNumber": version,
            "invalidDatasetSources": invalid_datasets,
            "invalidKernelSources": invalid_kernels,
            "kernelId": kernel.id,
        }

    def _rpc_GetKernelSessionStatus(self, body: dict) -> dict:
        with self._lock:
            run = self._kernel(body.get("userName", ""), body.get("kernelSlug", "")).latest
        out: dict[str, Any] = {"status": self.status_value or run.status}
        if run.failure_message:
            out["failureMessage"] = run.failure_message
        return out

    def _rpc_ListKernelSessionOutput(self, body: dict) -> dict:
        with self._lock:
            run = self._kernel(body.get("userName", ""), body.get("kernelSlug", "")).latest
        if not run.finished:
            return {"files": [], "log": ""}
        expires = "" if self.output_url_ttl is None else f"?expires={time.monotonic() + self.output_url_ttl:.3f}"
        entries = [(name, f"{self.direct_url}/outputs/{run.owner}/{run.slug}/{run.version}/{quote(name)}{expires}")
                   for name, _ in run.outputs]
        entries += [(name, f"{self.direct_url}/outputs/{run.owner}/{run.slug}/{run.version}/hostile/{i}")
                    for i, name in enumerate(self.hostile_output_names)]
        size = int(body.get("pageSize") or 20)
        if self.max_page_size:
            size = min(size, self.max_page_size)
        start = int(base64.b64decode(body["pageToken"]).decode()) if body.get("pageToken") else 0
        page = entries[start:start + size]
        out: dict[str, Any] = {"files": [{"fileName": n, "url": u} for n, u in page], "log": run.log_text()}
        if start + size < len(entries):
            out["nextPageToken"] = base64.b64encode(str(start + size).encode()).decode()
        return out

    def _rpc_GetKernel(self, body: dict) -> dict:
        slug = (body.get("kernelSlug") or "").split("/")[0]
        with self._lock:
            kernel = self._kernel(body.get("userName", ""), slug)
            return {"metadata": self._kernel_metadata(kernel),
                    "blob": {"source": kernel.latest.request.get("text", ""), "language": "python",
                             "kernelType": "script", "slug": kernel.slug}}

    def _kernel_metadata(self, kernel: Kernel) -> dict:
        req = kernel.latest.request
        return {
            "id": kernel.id, "ref": kernel.ref, "title": kernel.title, "author": kernel.owner,
            "slug": kernel.slug, "lastRunTime": kernel.created_wall.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "language": req.get("language"), "kernelType": req.get("kernelType"),
            "isPrivate": req.get("isPrivate", True), "enableGpu": req.get("enableGpu", False),
            "enableInternet": req.get("enableInternet", True),
            "datasetDataSources": req.get("datasetDataSources", []),
            "kernelDataSources": req.get("kernelDataSources", []),
            "currentVersionNumber": len(kernel.runs), "machineShape": req.get("machineShape"),
        }

    def _rpc_ListKernels(self, body: dict) -> dict:
        search = body.get("search") or ""
        with self._lock:
            kernels = [k for k in self.kernels.values()
                       if (body.get("group") != "PROFILE" or k.owner == self.username) and search in k.slug]
            page, size = int(body.get("page") or 1), int(body.get("pageSize") or 20)
            chosen = kernels[(page - 1) * size: page * size]
            return {"kernels": [self._kernel_metadata(k) for k in chosen]}

    def _rpc_DeleteKernel(self, body: dict) -> dict:
        with self._lock:
            kernel = self._kernel(body.get("userName", ""), body.get("kernelSlug", ""))
            if kernel.owner != self.username:
                raise error_reply(403, "Permission 'kernels.delete' was denied")
            del self.kernels[kernel.ref]
        return {}

    def _rpc_GetAcceleratorQuotaStatistics(self, body: dict) -> dict:
        with self._lock:
            used = self.gpu_used_hours * 3600
            total = self.gpu_quota_hours * 3600
        running = sum(1 for run in self.all_runs() if run.gpu and run.status == "RUNNING")
        return {
            "quotaRefreshTime": self._refresh_time().strftime("%Y-%m-%dT%H:%M:%SZ"),
            "gpuQuota": {"timeUsed": f"{used:.0f}s", "timeReserved": f"{running * 3600}s",
                         "totalTimeAllowed": f"{total:.0f}s", "minimumTimeAllowed": f"{total:.0f}s",
                         "hasEverRun": used > 0},
            "tpuQuota": {"timeUsed": "0s", "timeReserved": "0s", "totalTimeAllowed": "72000s",
                         "minimumTimeAllowed": "72000s"},
        }

    def _rpc_StartBlobUpload(self, body: dict) -> dict:
        if body.get("type") not in ("DATASET", "MODEL", "INBOX"):
            raise error_reply(400, "Blob type is required")
        with self._lock:
            token = f"blob-{self._next_id()}-{self._rng.randrange(1 << 30):08x}"
            self.blobs[token] = Blob(token=token, name=body.get("name", ""), length=int(body.get("contentLength") or 0))
        return {"token": token, "createUrl": f"{self.direct_url}/upload/{token}"}

    def _dataset_files(self, files: list[dict]) -> dict[str, bytes] | str:
        out: dict[str, bytes] = {}
        for item in files:
            blob = self.blobs.get(item.get("token", ""))
            if blob is None or not blob.complete:
                return f"Invalid upload token {item.get('token')!r}: the file was not uploaded completely."
            out[blob.name] = bytes(blob.data)
        if not out:
            return "A dataset must contain at least one file."
        return out

    def _rpc_CreateDataset(self, body: dict) -> dict:
        owner, slug, title = body.get("ownerSlug", ""), body.get("slug", ""), body.get("title", "")
        if owner != self.username:
            raise error_reply(403, f"You cannot create datasets for {owner}")
        if not (6 <= len(slug) <= 50) or slugify(slug) != slug:
            return {"status": "Error", "error": f"Invalid dataset slug {slug!r}"}
        with self._lock:
            if f"{owner}/{slug}" in self.datasets or f"{owner}/{slug}" in self.deleted_slugs:
                return {"status": "Error", "error": f"The requested slug {slug!r} is already in use."}
            files = self._dataset_files(body.get("files") or [])
            if isinstance(files, str):
                return {"status": "Error", "error": files}
            now = time.monotonic()
            ds = Dataset(owner=owner, slug=slug, title=title, files=files, created_at=now,
                         ready_at=now + self.dataset_delay, id=self._next_id(),
                         license_name=body.get("licenseName", ""), is_private=body.get("isPrivate", False))
            self.datasets[ds.ref] = ds
        return {"ref": ds.ref, "url": f"https://www.kaggle.com/datasets/{ds.ref}", "status": "Ok"}

    def _rpc_CreateDatasetVersion(self, body: dict) -> dict:
        ref = f"{body.get('ownerSlug', '')}/{body.get('datasetSlug', '')}"
        with self._lock:
            ds = self.datasets.get(ref)
            if ds is None:
                raise error_reply(404, "Not found")
            if ds.status(time.monotonic()) not in ("READY", "FAILED"):
                raise error_reply(403, "The previous version of this dataset is still being processed.")
            files = self._dataset_files((body.get("body") or {}).get("files") or [])
            if isinstance(files, str):
                return {"status": "Error", "error": files}
            now = time.monotonic()
            ds.files, ds.version, ds.failed = files, ds.version + 1, False
            ds.created_at, ds.ready_at = now, now + self.dataset_delay
        return {"ref": ref, "url": f"https://www.kaggle.com/datasets/{ref}", "status": "Ok"}

    def _dataset(self, body: dict) -> Dataset:
        ds = self.datasets.get(f"{body.get('ownerSlug', '')}/{body.get('datasetSlug', '')}")
        if ds is None or (ds.owner != self.username and ds.is_private):
            raise error_reply(404, "Not found")
        return ds

    def _rpc_GetDatasetStatus(self, body: dict) -> dict:
        with self._lock:
            return {"status": self._dataset(body).status(time.monotonic())}

    def _dataset_doc(self, ds: Dataset) -> dict:
        return {
            "id": ds.id, "ref": ds.ref, "title": ds.title, "ownerName": ds.owner, "ownerRef": ds.owner,
            "creatorName": ds.owner, "isPrivate": ds.is_private, "licenseName": ds.license_name,
            "totalBytes": sum(len(b) for b in ds.files.values()), "currentVersionNumber": ds.version,
            "lastUpdated": ds.created_wall.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "url": f"https://www.kaggle.com/datasets/{ds.ref}",
        }

    def _rpc_GetDataset(self, body: dict) -> dict:
        with self._lock:
            return self._dataset_doc(self._dataset(body))

    def _rpc_ListDatasets(self, body: dict) -> dict:
        search = body.get("search") or ""
        mine = body.get("group") == "DATASET_SELECTION_GROUP_MY"
        with self._lock:
            found = [d for d in self.datasets.values()
                     if (d.owner == self.username if mine else not d.is_private) and search in d.slug]
            page, size = int(body.get("page") or 1), int(body.get("pageSize") or 20)
            return {"datasets": [self._dataset_doc(d) for d in found[(page - 1) * size: page * size]]}

    def _rpc_DeleteDataset(self, body: dict) -> dict:
        with self._lock:
            ds = self._dataset(body)
            if ds.owner != self.username:
                raise error_reply(403, "Permission denied")
            del self.datasets[ds.ref]
            self.deleted_slugs.add(ds.ref)  # Kaggle keeps a deleted dataset's slug reserved
        return {}

    # ------------------------------------------------------------------ plain URLs
    def blob_put(self, token: str, headers, body: bytes) -> tuple[int, dict]:
        with self._lock:
            blob = self.blobs.get(token)
            if blob is None:
                return 404, {}
            content_range = headers.get("Content-Range") or ""
            if content_range.startswith("bytes */"):  # resume probe
                if blob.complete:
                    return 200, {}
                return 308, ({"Range": f"bytes=0-{len(blob.data) - 1}"} if blob.data else {})
            start = 0
            match = re.match(r"bytes (\d+)-(\d+)/(\d+)", content_range)
            if match:
                start = int(match.group(1))
            if start != len(blob.data):
                return 400, {}
            blob.data.extend(body)
            self.bytes_uploaded += len(body)
            return (200 if blob.complete else 308), {}

    def output_file(self, parts: list[str]) -> bytes | None:
        """The bytes of one output file; raises Reply(403) once its kernel was deleted."""
        owner, slug, version, *rest = parts
        with self._lock:
            kernel = self.kernels.get(f"{owner}/{slug}")
            if kernel is None:
                raise Reply(403, {"xml": "AccessDenied"})
            if int(version) > len(kernel.runs):
                return None
            run = kernel.runs[int(version) - 1]
        if rest[:1] == ["hostile"]:
            return b"written by a hostile kernel\n"
        name = unquote("/".join(rest))
        for rel, path in run.outputs:
            if rel == name:
                return path.read_bytes()
        return None
