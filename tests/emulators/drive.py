"""A fake Google Drive v3 server: the subset orch's controller and Colab agent use.

It speaks the wire protocol the unmodified ``google-api-python-client`` speaks (see
``../shared/notes/colab-ssh-drive.md`` §5.1), so a test that passes here exercised the
real client code path:

* ``files.create``: metadata only, ``uploadType=multipart`` and ``uploadType=resumable``
  (initiate -> 200 + ``Location``; chunks -> 308 + ``Range``; ``bytes */N`` status
  queries; non-final chunks must be 256 KiB multiples, as on Drive);
* ``files.update`` (PATCH, patch semantics for ``properties``/``appProperties``, a null
  value deletes a key; ``addParents``/``removeParents``; media by multipart or resumable);
* ``files.list`` with the ``q`` operators orch uses (``in parents``, ``=``, ``!=``,
  ``<``/``>`` on times, ``contains``, ``has {key= and value=}``, ``and``/``or``/``not``,
  parentheses), ``orderBy``, ``pageSize``/``pageToken`` and ``fields``;
* ``files.get`` metadata and ``alt=media`` with ``Range`` (206 / 416);
* ``files.delete`` (recursive, as for an owner);
* an OAuth token endpoint (``/token``: refresh and code grants, ``invalid_grant`` for a
  revoked refresh token) and a consent endpoint (``/o/oauth2/auth``) that redirects at
  once, so the real google-auth / google-auth-oauthlib flows run against it.

``appProperties`` are kept per OAuth client (the client id a token was minted for), so
the visibility pitfall of the real service is reproduced.

Faults are injected with :meth:`DriveServer.inject` (HTTP errors with Drive's error
bodies, an error answered *after* the request took effect (``commit=True``: a create
that succeeded but answered 500 or 403), a connection reset part-way through a request
body, latency). :attr:`DriveServer.list_lag` hides files created in the last N seconds
from ``files.list``: Drive's listings are not read-after-write consistent (a name query
right after a create may not show the new file), while ``files.get`` by id always is. And
:attr:`DriveServer.log` / :meth:`DriveServer.count` / :attr:`DriveServer.sessions` let a
test see what the client actually sent (create calls, bytes per upload session).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import secrets
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlencode, urlsplit

FOLDER = "application/vnd.google-apps.folder"
CHUNK_QUANTUM = 256 * 1024  # Drive wants every non-final resumable chunk to be a multiple
DEFAULT_CLIENT = "orch-test-client"
_DEFAULT_FILE_FIELDS = "kind,id,name,mimeType"


# --------------------------------------------------------------------------- model

@dataclass
class DriveFile:
    id: str
    name: str
    mime_type: str
    parents: list[str]
    created: float
    modified: float
    properties: dict[str, str] = field(default_factory=dict)
    app_properties: dict[str, dict[str, str]] = field(default_factory=dict)  # client -> props
    content: bytes | None = None
    trashed: bool = False
    version: int = 1
    media_reads: int = 0  # alt=media GETs served for this file

    def resource(self, client: str) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "kind": "drive#file",
            "id": self.id,
            "name": self.name,
            "mimeType": self.mime_type,
            "parents": list(self.parents),
            "properties": dict(self.properties),
            "appProperties": dict(self.app_properties.get(client, {})),
            "createdTime": _rfc3339(self.created),
            "modifiedTime": _rfc3339(self.modified),
            "trashed": self.trashed,
            "version": str(self.version),
        }
        if self.mime_type != FOLDER:
            data = self.content or b""
            doc["size"] = str(len(data))
            doc["md5Checksum"] = hashlib.md5(data).hexdigest()
            doc["sha256Checksum"] = hashlib.sha256(data).hexdigest()
        return doc


@dataclass
class UploadSession:
    """One resumable upload; the file exists only once the last byte arrived."""

    id: str
    client: str
    metadata: dict[str, Any]
    query: dict[str, str]
    total: int | None
    mime_type: str
    file_id: str | None = None  # set for files.update sessions
    data: bytearray = field(default_factory=bytearray)
    received_bytes: int = 0  # every body byte read, dropped chunks included
    chunks: int = 0
    result: dict[str, Any] | None = None
    expired: bool = False

    def store(self, start: int, data: bytes) -> None:
        """Keep the bytes beyond what is stored; bytes Drive already has are ignored
        (a late duplicate of an old chunk never truncates the upload)."""
        if start + len(data) > len(self.data):
            self.data.extend(data[len(self.data) - start:])


@dataclass
class Fault:
    """One injected misbehaviour: it acts on matching requests number ``skip + 1`` to
    ``skip + times`` (every fault counts every request it matches)."""

    kind: str  # "error" | "drop" | "delay"
    method: str | None = None
    path: str | None = None  # substring of path+query
    chunk_only: bool = False  # only resumable data chunks (not status queries)
    skip: int = 0  # let this many matching requests through first
    times: int = 1
    status: int = 500
    reason: str = "backendError"
    after_bytes: int | None = None  # drop: bytes of the body read before the reset
    delay: float = 0.0
    commit: bool = False  # error: carry the request out first, then answer the error
    seen: int = 0  # matching requests so far
    hits: int = 0  # requests this fault acted on

    def matches(self, method: str, target: str, is_chunk: bool) -> bool:
        if self.method and self.method != method:
            return False
        if self.path and self.path not in target:
            return False
        return not (self.chunk_only and not is_chunk)


@dataclass(frozen=True)
class Request:
    """What the server saw, for assertions (``kind`` names the Drive operation)."""

    method: str
    path: str
    query: dict[str, str]
    kind: str
    status: int
    body_bytes: int


class DriveError(Exception):
    def __init__(self, status: int, reason: str, message: str, domain: str = "global", **extra: str):
        super().__init__(message)
        self.status, self.reason, self.message, self.domain, self.extra = status, reason, message, domain, extra

    def body(self) -> dict[str, Any]:
        err = {"domain": self.domain, "reason": self.reason, "message": self.message, **self.extra}
        return {"error": {"code": self.status, "message": self.message, "errors": [err]}}


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _parse_time(text: str) -> float:
    text = text.strip().replace("Z", "+00:00")
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)  # Drive reads zone-less times as UTC
    return dt.timestamp()


# --------------------------------------------------------------------------- q parser

_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<op>!=|<=|>=|=|<|>)|(?P<punct>[(){}])|(?P<word>[A-Za-z_][\w.]*))")
_FIELDS = {"name", "mimeType", "trashed", "modifiedTime", "createdTime", "parents", "properties", "appProperties"}


def _tokens(q: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(q):
        if q[pos:].strip() == "":
            break
        m = _TOKEN.match(q, pos)
        if not m:
            raise DriveError(400, "invalid", f"Invalid Value: q near {q[pos:pos + 20]!r}", location="q")
        kind = m.lastgroup or ""
        value = m.group(kind)
        if kind == "str":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        out.append((kind, value))
        pos = m.end()
    return out


class _Query:
    """Recursive-descent parser for Drive's ``q``; compiles to a predicate on a file."""

    def __init__(self, q: str, client: str):
        self.toks, self.i, self.client = _tokens(q), 0, client

    def parse(self) -> Callable[[DriveFile], bool]:
        pred = self._or()
        if self.i != len(self.toks):
            self._fail()
        return pred

    def _peek(self, value: str | None = None) -> bool:
        return self.i < len(self.toks) and (value is None or self.toks[self.i][1].lower() == value)

    def _take(self, kind: str | None = None, value: str | None = None) -> str:
        if self.i >= len(self.toks):
            self._fail()
        k, v = self.toks[self.i]
        if (kind and k != kind) or (value and v.lower() != value):
            self._fail()
        self.i += 1
        return v

    def _fail(self) -> None:
        raise DriveError(400, "invalid", "Invalid Value", location="q", locationType="parameter")

    def _or(self) -> Callable[[DriveFile], bool]:
        left = self._and()
        while self._peek("or"):
            self.i += 1
            right, prev = self._and(), left
            left = lambda f, a=prev, b=right: a(f) or b(f)  # noqa: E731
        return left

    def _and(self) -> Callable[[DriveFile], bool]:
        left = self._not()
        while self._peek("and"):
            self.i += 1
            right, prev = self._not(), left
            left = lambda f, a=prev, b=right: a(f) and b(f)  # noqa: E731
        return left

    def _not(self) -> Callable[[DriveFile], bool]:
        if self._peek("not"):
            self.i += 1
            inner = self._not()
            return lambda f: not inner(f)
        if self._peek("("):
            self.i += 1
            inner = self._or()
            self._take("punct", ")")
            return inner
        return self._predicate()

    def _predicate(self) -> Callable[[DriveFile], bool]:
        kind, value = self.toks[self.i] if self.i < len(self.toks) else ("", "")
        if kind == "str":  # 'X' in parents
            self.i += 1
            self._take("word", "in")
            self._take("word", "parents")
            return lambda f: value in f.parents
        name = self._take("word")
        if name not in _FIELDS:
            self._fail()
        if name in ("properties", "appProperties"):
            self._take("word", "has")
            self._take("punct", "{")
            self._take("word", "key")
            self._take("op", "=")
            key = self._take("str")
            self._take("word", "and")
            self._take("word", "value")
            self._take("op", "=")
            val = self._take("str")
            self._take("punct", "}")
            if name == "properties":
                return lambda f: f.properties.get(key) == val
            return lambda f: f.app_properties.get(self.client, {}).get(key) == val
        if self._peek("contains"):
            self.i += 1
            needle = self._take("str")
            return lambda f: needle in (f.name if name == "name" else f.mime_type)
        op = self._take("op")
        k, raw = self.toks[self.i] if self.i < len(self.toks) else ("", "")
        self.i += 1
        if name == "trashed":
            if k != "word" or raw not in ("true", "false") or op not in ("=", "!="):
                self._fail()
            want = raw == "true"
            return lambda f: (f.trashed == want) == (op == "=")
        if k != "str":
            self._fail()
        if name in ("modifiedTime", "createdTime"):
            ref = _parse_time(raw)
            cmp = {"=": float.__eq__, "!=": float.__ne__, "<": float.__lt__, "<=": float.__le__,
                   ">": float.__gt__, ">=": float.__ge__}[op]
            attr = "modified" if name == "modifiedTime" else "created"
            # Drive compares at millisecond precision, as it prints the times.
            return lambda f: cmp(round(getattr(f, attr), 3), round(ref, 3))
        if op not in ("=", "!="):
            self._fail()
        get = (lambda f: f.name) if name == "name" else (lambda f: f.mime_type)
        return lambda f: (get(f) == raw) == (op == "=")


# --------------------------------------------------------------------------- fields

def _parse_fields(text: str) -> dict[str, Any]:
    """``"nextPageToken, files(id, name)"`` -> ``{"nextPageToken": {}, "files": {"id": {}, ...}}``."""
    out: dict[str, Any] = {}
    stack = [out]
    token = ""
    for ch in text + ",":
        if ch in ",()":
            token = token.strip()
            if token:
                node = stack[-1]
                for part in token.split("/"):
                    node = node.setdefault(part, {})
                last = node
            if ch == "(":
                stack.append(last if token else stack[-1])
            elif ch == ")":
                stack.pop()
            token = ""
        else:
            token += ch
    return out


def _select(doc: Any, sel: dict[str, Any]) -> Any:
    if not sel or "*" in sel:
        return doc
    if isinstance(doc, list):
        return [_select(item, sel) for item in doc]
    if not isinstance(doc, dict):
        return doc
    return {k: _select(doc[k], sub) for k, sub in sel.items() if k in doc}


# --------------------------------------------------------------------------- server

class _Reset(Exception):
    """Raised inside the handler to reset the connection (an injected drop)."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], handler: type, owner: "DriveServer"):
        self.owner = owner
        self.open_sockets: set[socket.socket] = set()
        self.workers: set[threading.Thread] = set()
        self.guard = threading.Lock()
        super().__init__(addr, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        t = threading.Thread(target=self.process_request_thread, args=(request, client_address), daemon=True)
        with self.guard:
            self.open_sockets.add(request)
            self.workers.add(t)
        t.start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away mid-response is not the server's problem

    def shutdown_request(self, request: Any) -> None:
        with self.guard:
            self.open_sockets.discard(request)
            self.workers.discard(threading.current_thread())
        super().shutdown_request(request)

    def close_everything(self) -> None:
        with self.guard:
            socks, workers = list(self.open_sockets), list(self.workers)
        for s in socks:  # wakes keep-alive handlers blocked in readline()
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in workers:
            t.join(timeout=5)


class DriveServer:
    """The fake Drive service on 127.0.0.1 (a thread); use as a context manager.

    Attributes:
        api_endpoint: what to pass as ``client_options={"api_endpoint": ...}``.
        token_uri / auth_uri: OAuth endpoints for credentials and client secrets.
        latency: seconds added to every request.
        log: every request seen (see :class:`Request`).
        sessions: resumable upload sessions by id.
    """

    def __init__(self, latency: float = 0.0, idle_timeout: float = 30.0):
        self.default_latency = latency
        self.idle_timeout = idle_timeout
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    # ---- lifecycle
    def start(self) -> "DriveServer":
        handler = type("Handler", (_Handler,), {"timeout": self.idle_timeout})
        self._httpd = _Server(("127.0.0.1", 0), handler, self)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-drive", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.close_everything()
            self._httpd.server_close()
            assert self._thread is not None
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> "DriveServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_endpoint(self) -> str:
        return f"{self.base_url}/drive/v3/"

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    @property
    def auth_uri(self) -> str:
        return f"{self.base_url}/o/oauth2/auth"

    def reset(self) -> None:
        """Forget every file, session, fault, token and log entry (one test's state)."""
        with self._lock:
            # Requests already in flight belong to the previous test: they are not logged.
            self.generation = getattr(self, "generation", 0) + 1
            now = time.time()
            self.files: dict[str, DriveFile] = {
                "root": DriveFile("root", "My Drive", FOLDER, [], now, now)
            }
            self.sessions: dict[str, UploadSession] = {}
            self.faults: list[Fault] = []
            self.log: list[Request] = []
            self.access_tokens: dict[str, str] = {"test-token": DEFAULT_CLIENT}  # token -> client id
            self.refresh_tokens: dict[str, str] = {}  # refresh token -> client id
            self.revoked: set[str] = set()
            self.codes: dict[str, str] = {}  # authorization code -> client id
            self.latency = self.default_latency
            self.list_lag = 0.0  # seconds a new file stays out of files.list

    # ---- test API: auth
    def add_refresh_token(self, refresh_token: str, client_id: str = DEFAULT_CLIENT) -> None:
        with self._lock:
            self.refresh_tokens[refresh_token] = client_id

    def revoke(self, token: str) -> None:
        """Revoke a refresh token (later refreshes get ``invalid_grant``) or an access token."""
        with self._lock:
            self.revoked.add(token)
            self.access_tokens.pop(token, None)

    def expire_access_tokens(self) -> None:
        """Every access token now gets 401, as after an hour on the real service."""
        with self._lock:
            self.access_tokens.clear()

    # ---- test API: faults and inspection
    def inject(self, kind: str, **kwargs: Any) -> Fault:
        """Queue a fault; see :class:`Fault` for the matching and action fields.

        Examples: ``inject("error", status=429, reason="rateLimitExceeded", chunk_only=True)``,
        ``inject("drop", method="PUT", chunk_only=True, skip=3)``, ``inject("delay", delay=0.2)``,
        ``inject("error", method="POST", path="/drive/v3/files", commit=True)`` (created, answered 500).
        """
        fault = Fault(kind=kind, **kwargs)
        with self._lock:
            self.faults.append(fault)
        return fault

    def count(self, kind: str | None = None, method: str | None = None, status: int | None = None) -> int:
        with self._lock:
            return sum(
                1 for r in self.log
                if (kind is None or r.kind == kind) and (method is None or r.method == method)
                and (status is None or r.status == status)
            )

    def find(self, name: str | None = None, **properties: str) -> list[DriveFile]:
        with self._lock:
            return [
                f for f in self.files.values()
                if (name is None or f.name == name)
                and all(f.properties.get(k) == v for k, v in properties.items())
            ]

    def upload_bytes(self) -> int:
        """Body bytes received by all resumable sessions (dropped chunks included)."""
        with self._lock:
            return sum(s.received_bytes for s in self.sessions.values())

    def expire_sessions(self) -> None:
        """Every open upload session now answers 404, as after about a week."""
        with self._lock:
            for s in self.sessions.values():
                s.expired = True

    def _next_id(self, prefix: str = "f") -> str:
        return f"{prefix}{next(self._ids):05d}{secrets.token_hex(4)}"

    # ---- model operations (called by the handler under the lock)
    def _client_for(self, authorization: str | None) -> str:
        token = (authorization or "").partition(" ")[2] if (authorization or "").startswith("Bearer ") else None
        if token is None or token not in self.access_tokens:
            raise DriveError(401, "authError", "Request had invalid authentication credentials.",
                             location="Authorization", locationType="header")
        return self.access_tokens[token]

    def _get(self, file_id: str) -> DriveFile:
        f = self.files.get(file_id)
        if f is None:
            raise DriveError(404, "notFound", f"File not found: {file_id}.", location="fileId",
                             locationType="parameter")
        return f

    def _create(self, meta: dict[str, Any], client: str, content: bytes | None) -> DriveFile:
        now = time.time()
        parents = [("root" if p == "root" else self._get(p).id) for p in (meta.get("parents") or ["root"])]
        mime = meta.get("mimeType") or ("application/octet-stream" if content is not None else "text/plain")
        f = DriveFile(self._next_id(), meta.get("name") or "Untitled", mime, parents, now, now,
                      content=None if mime == FOLDER else (content or b""))
        f.properties = {k: str(v) for k, v in (meta.get("properties") or {}).items() if v is not None}
        app = {k: str(v) for k, v in (meta.get("appProperties") or {}).items() if v is not None}
        if app:
            f.app_properties[client] = app
        self.files[f.id] = f
        return f

    def _update(self, f: DriveFile, meta: dict[str, Any], query: dict[str, str], client: str,
                content: bytes | None) -> DriveFile:
        for key, attr in (("name", "name"), ("mimeType", "mime_type"), ("trashed", "trashed")):
            if key in meta:
                setattr(f, attr, meta[key])
        for key, target in (("properties", f.properties), ("appProperties", f.app_properties.setdefault(client, {}))):
            for k, v in (meta.get(key) or {}).items():
                if v is None:
                    target.pop(k, None)
                else:
                    target[k] = str(v)
        for p in filter(None, query.get("removeParents", "").split(",")):
            if p in f.parents:
                f.parents.remove(p)
        for p in filter(None, query.get("addParents", "").split(",")):
            if p not in f.parents:
                f.parents.append(self._get(p).id)
        if content is not None:
            f.content = content
        f.version += 1
        f.modified = max(time.time(), f.modified + 0.001)
        return f

    def _delete(self, file_id: str) -> None:
        f = self._get(file_id)
        for child in [c for c in self.files.values() if file_id in c.parents]:
            self._delete(child.id)
        del self.files[f.id]

    def _list(self, query: dict[str, str], client: str) -> dict[str, Any]:
        pred = _Query(query["q"], client).parse() if query.get("q") else (lambda f: True)
        seen_before = time.time() - self.list_lag
        items = [f for f in self.files.values() if f.id != "root" and f.created <= seen_before and pred(f)]
        for spec in reversed([s.strip() for s in query.get("orderBy", "createdTime").split(",") if s.strip()]):
            key, _, direction = spec.partition(" ")
            attr = {"createdTime": "created", "modifiedTime": "modified", "name": "name"}.get(key)
            if attr is None:
                raise DriveError(400, "invalid", "Invalid Value", location="orderBy")
            items.sort(key=lambda f, a=attr: getattr(f, a), reverse=direction.strip().lower() == "desc")
        size = min(int(query.get("pageSize", 100)), 1000)
        start = int(query.get("pageToken", "0") or 0)
        page = items[start:start + size]
        doc: dict[str, Any] = {"kind": "drive#fileList", "incompleteSearch": False,
                               "files": [f.resource(client) for f in page]}
        if start + size < len(items):
            doc["nextPageToken"] = str(start + size)
        return doc


# --------------------------------------------------------------------------- handler

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without TCP_NODELAY, Nagle plus the
    # client's delayed ACK add 40 ms to every reply.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    # ---- plumbing
    def _dispatch(self) -> None:
        drive = self.server.owner
        parts = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        self.route = parts.path
        self.kind = "unknown"
        self.length = int(self.headers.get("Content-Length") or 0)
        self.body_read = 0
        self.swallow = False
        generation = drive.generation
        is_chunk = "upload_id" in self.query and not self.headers.get("Content-Range", "").startswith("bytes */")
        if drive.latency:
            time.sleep(drive.latency)
        status = 500
        try:
            self.kind = self._guess_kind(is_chunk)
            fault = None
            with drive._lock:
                for f in drive.faults:  # every fault counts every request it matches
                    if f.matches(self.command, self.path, is_chunk):
                        f.seen += 1
                        if fault is None and f.skip < f.seen <= f.skip + f.times:
                            fault = f
                            f.hits += 1
            if fault is not None and fault.kind == "delay":
                time.sleep(fault.delay)
                fault = None
            if fault is not None and fault.kind == "error" and fault.commit:
                self.swallow = True
                try:
                    self._route(drive, None)
                finally:
                    self.swallow = False
                self._drain()
                raise DriveError(fault.status, fault.reason, f"Injected {fault.reason} (after the change was made)",
                                 domain="usageLimits" if "Limit" in fault.reason else "global")
            if fault is not None and fault.kind == "error":
                self._drain()
                raise DriveError(fault.status, fault.reason, f"Injected {fault.reason}",
                                 domain="usageLimits" if "Limit" in fault.reason else "global")
            if fault is not None and fault.kind == "drop" and self.kind not in ("chunk", "media"):
                self._read(fault.after_bytes if fault.after_bytes is not None else self.length // 2)
                raise _Reset()
            status = self._route(drive, fault)
        except DriveError as err:
            status = err.status
            try:
                self._drain()
                self._send_json(err.status, err.body())
            except (_Reset, OSError):
                status = 0
                self._reset()
        except (_Reset, OSError):
            status = 0
            self._reset()
        finally:
            with drive._lock:
                if drive.generation == generation:
                    drive.log.append(Request(self.command, self.route, dict(self.query), self.kind, status,
                                             self.body_read))

    def _guess_kind(self, is_chunk: bool) -> str:
        """The operation's name before it runs (so injected errors are counted under it)."""
        m, r = self.command, self.route
        if "upload_id" in self.query:
            return "chunk" if is_chunk else "status"
        if r.startswith("/upload/"):
            verb = "update" if r.rstrip("/") != "/upload/drive/v3/files" else "create"
            return f"{verb}-{self.query.get('uploadType', 'media')}"
        if r == "/drive/v3/files":
            return {"GET": "list", "POST": "create"}.get(m, "unknown")
        if r.startswith("/drive/v3/files/"):
            if m == "GET":
                return "media" if self.query.get("alt") == "media" else "get"
            return {"PATCH": "update", "DELETE": "delete"}.get(m, "unknown")
        return {"/token": "token", "/o/oauth2/auth": "consent"}.get(r, "unknown")

    def _read(self, n: int | None = None) -> bytes:
        want = self.length - self.body_read if n is None else min(n, self.length - self.body_read)
        chunks, left = [], want
        while left > 0:
            data = self.rfile.read(min(left, 1 << 20))
            if not data:
                raise _Reset()
            chunks.append(data)
            left -= len(data)
            self.body_read += len(data)
        return b"".join(chunks)

    def _drain(self) -> None:
        if self.body_read < self.length:
            self._read()

    def _reset(self) -> None:
        # Closing with SO_LINGER 0 sends RST: the client sees ECONNRESET/EPIPE, like a
        # connection dropped by a middlebox, rather than a clean end of stream.
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json; charset=UTF-8") -> int:
        if self.swallow:  # an injected error answers instead of this reply
            return status
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if body or status not in (204, 308):
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)
        return status

    def _send_json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> int:
        return self._send(status, json.dumps(doc).encode(), headers)

    def _json_body(self) -> dict[str, Any]:
        raw = self._read()
        if not raw.strip():
            return {}
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise DriveError(400, "parseError", f"Parse Error: {exc}") from exc

    def _fields(self, doc: dict[str, Any], default: str = _DEFAULT_FILE_FIELDS) -> dict[str, Any]:
        return _select(doc, _parse_fields(self.query.get("fields") or default))

    # ---- routes
    def _route(self, drive: DriveServer, fault: Fault | None) -> int:
        r, m = self.route, self.command
        if r == "/token" and m == "POST":
            self.kind = "token"
            return self._token(drive)
        if r == "/o/oauth2/auth" and m == "GET":
            self.kind = "consent"
            return self._consent(drive)
        client = None
        with drive._lock:
            client = drive._client_for(self.headers.get("Authorization"))
        if r in ("/upload/drive/v3/files", "/upload/drive/v3/files/") or r.startswith("/upload/drive/v3/files/"):
            file_id = r[len("/upload/drive/v3/files/"):] or None
            if "upload_id" in self.query and m == "PUT":
                return self._chunk(drive, client, fault)
            if m in ("POST", "PATCH"):
                return self._media_start(drive, client, file_id)
        if r == "/drive/v3/files" and m == "POST":
            self.kind = "create"
            meta = self._json_body()
            with drive._lock:
                return self._send_json(200, self._fields(drive._create(meta, client, None).resource(client)))
        if r == "/drive/v3/files" and m == "GET":
            self.kind = "list"
            with drive._lock:
                doc = drive._list(self.query, client)
            return self._send_json(200, self._fields(doc, "kind,incompleteSearch,nextPageToken,files(kind,id,name,mimeType)"))
        if r.startswith("/drive/v3/files/"):
            file_id = r[len("/drive/v3/files/"):]
            if m == "GET" and self.query.get("alt") == "media":
                self.kind = "media"
                return self._media(drive, file_id, fault)
            if m == "GET":
                self.kind = "get"
                with drive._lock:
                    return self._send_json(200, self._fields(drive._get(file_id).resource(client)))
            if m == "PATCH":
                self.kind = "update"
                meta = self._json_body()
                with drive._lock:
                    f = drive._update(drive._get(file_id), meta, self.query, client, None)
                    return self._send_json(200, self._fields(f.resource(client)))
            if m == "DELETE":
                self.kind = "delete"
                with drive._lock:
                    drive._delete(file_id)
                return self._send(204)
        raise DriveError(404, "notFound", f"Not Found: {m} {r}")

    def _media_start(self, drive: DriveServer, client: str, file_id: str | None) -> int:
        upload_type = self.query.get("uploadType", "media")
        verb = "update" if file_id else "create"
        if upload_type == "resumable":
            self.kind = f"{verb}-resumable"
            meta = self._json_body()
            total = self.headers.get("X-Upload-Content-Length")
            with drive._lock:
                if file_id:
                    drive._get(file_id)
                sid = drive._next_id("u")
                query = {k: v for k, v in self.query.items()}
                drive.sessions[sid] = UploadSession(
                    sid, client, meta, query, int(total) if total else None,
                    self.headers.get("X-Upload-Content-Type") or "application/octet-stream", file_id)
            location = f"{drive.base_url}{self.route}?{urlencode({**query, 'upload_id': sid})}"
            return self._send(200, b"", {"Location": location})
        if upload_type == "multipart":
            self.kind = f"{verb}-multipart"
            meta, content, mime = self._multipart()
            meta.setdefault("mimeType", mime)
        elif upload_type == "media":
            self.kind = f"{verb}-media"
            meta, content = {}, self._read()
        else:
            raise DriveError(400, "invalid", f"Invalid value for uploadType: {upload_type}")
        with drive._lock:
            if file_id:
                f = drive._update(drive._get(file_id), meta, self.query, client, content)
            else:
                f = drive._create(meta, client, content)
            return self._send_json(200, self._fields(f.resource(client)))

    def _multipart(self) -> tuple[dict[str, Any], bytes, str]:
        ctype = self.headers.get("Content-Type", "")
        m = re.search(r'boundary="?([^";]+)"?', ctype)
        if not ctype.startswith("multipart/related") or not m:
            raise DriveError(400, "badContent", "Multipart upload needs multipart/related with a boundary")
        raw = self._read()
        delim = b"--" + m.group(1).encode()
        pieces = raw.split(delim)
        parts = []
        for piece in pieces[1:]:
            if piece.startswith(b"--"):
                break
            piece = piece[2:] if piece.startswith(b"\r\n") else piece[1:] if piece.startswith(b"\n") else piece
            head, sep, body = piece.partition(b"\r\n\r\n")
            if not sep:
                head, sep, body = piece.partition(b"\n\n")
            # The line break before the next delimiter belongs to the delimiter.
            body = body[:-2] if body.endswith(b"\r\n") else body[:-1] if body.endswith(b"\n") else body
            headers = dict(
                (k.strip().lower(), v.strip())
                for k, _, v in (line.partition(":") for line in head.decode("latin-1").splitlines() if line)
            )
            parts.append((headers, body))
        if len(parts) != 2:
            raise DriveError(400, "badContent", f"Multipart body must have 2 parts, got {len(parts)}")
        try:
            meta = json.loads(parts[0][1] or b"{}")
        except ValueError as exc:
            raise DriveError(400, "parseError", f"Parse Error: {exc}") from exc
        return meta, parts[1][1], parts[1][0].get("content-type", "application/octet-stream")

    def _chunk(self, drive: DriveServer, client: str, fault: Fault | None) -> int:
        sid = self.query["upload_id"]
        with drive._lock:
            s = drive.sessions.get(sid)
        if s is None or s.expired:
            self.kind = "chunk"
            raise DriveError(404, "notFound", "Upload session not found or expired; start a new one.")
        crange = self.headers.get("Content-Range", "")
        m = re.fullmatch(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)", crange.strip())
        if crange and not m:
            raise DriveError(400, "badContent", f"Bad Content-Range: {crange}")
        total = None if (not m or m.group(3) == "*") else int(m.group(3))
        if not crange:  # no Content-Range: the body is the rest of the file (an empty file)
            stored = len(s.data)
            m = re.fullmatch(r"bytes (\d+)-(-?\d+)/(\d+)", f"bytes {stored}-{stored + self.length - 1}/{stored + self.length}")
            total = stored + self.length
        if m is None or m.group(1) is None:  # status query
            self.kind = "status"
            self._drain()
            if s.result is not None:
                return self._send_json(200, s.result)
            return self._send_308(s)
        self.kind = "chunk"
        if s.result is not None:  # a repeated last chunk: the file already exists
            self._drain()
            return self._send_json(200, s.result)
        start, end = int(m.group(1)), int(m.group(2))
        if max(0, end - start + 1) != self.length:
            raise DriveError(400, "badContent", "Content-Range does not match Content-Length")
        stored = len(s.data)
        if start > stored:
            raise DriveError(400, "badContent", f"Chunk starts at {start} but only {stored} bytes are stored")
        if fault is not None and fault.kind == "drop":
            got = self._read(fault.after_bytes if fault.after_bytes is not None else self.length // 2)
            with drive._lock:
                s.received_bytes += len(got)
                keep = len(got) - (len(got) % CHUNK_QUANTUM)  # Drive persists whole quanta only
                s.store(start, got[:keep])
            raise _Reset()
        data = self._read()
        with drive._lock:
            s.received_bytes += len(data)
            s.chunks += 1
            if total is not None:
                s.total = total
            final = s.total is not None and start + len(data) >= s.total
            if not final and len(data) % CHUNK_QUANTUM:
                raise DriveError(400, "badContent", "Non-final chunks must be a multiple of 256 KiB")
            s.store(start, data)
            final = s.total is not None and len(s.data) >= s.total
            if final:
                content = bytes(s.data[: s.total])
                meta = dict(s.metadata)
                if s.file_id:
                    f = drive._update(drive._get(s.file_id), meta, s.query, s.client, content)
                else:
                    meta.setdefault("mimeType", s.mime_type)
                    f = drive._create(meta, s.client, content)
                s.result = _select(f.resource(s.client), _parse_fields(s.query.get("fields") or _DEFAULT_FILE_FIELDS))
                return self._send_json(200, s.result)
        return self._send_308(s)

    def _send_308(self, s: UploadSession) -> int:
        headers = {"Range": f"bytes=0-{len(s.data) - 1}"} if s.data else {}
        return self._send(308, b"", headers)

    def _media(self, drive: DriveServer, file_id: str, fault: Fault | None) -> int:
        with drive._lock:
            f = drive._get(file_id)
            if f.mime_type == FOLDER:
                raise DriveError(403, "fileNotDownloadable", "Only files with binary content can be downloaded.")
            f.media_reads += 1
            data = f.content or b""
        rng = self.headers.get("Range")
        if not rng:
            return self._send(200, data, content_type="application/octet-stream")
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
        if not m:
            raise DriveError(400, "badRange", f"Bad Range: {rng}")
        start = int(m.group(1))
        end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
        if start >= len(data):
            return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
        body = data[start:end + 1]
        if fault is not None and fault.kind == "drop":  # send half the bytes, then reset
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut = fault.after_bytes if fault.after_bytes is not None else len(body) // 2
            self.wfile.write(body[:cut])
            raise _Reset()
        return self._send(206, body, {"Content-Range": f"bytes {start}-{end}/{len(data)}"},
                          content_type="application/octet-stream")

    def _token(self, drive: DriveServer) -> int:
        form = {k: v[-1] for k, v in parse_qs(self._read().decode()).items()}
        grant = form.get("grant_type")
        with drive._lock:
            if grant == "refresh_token":
                rt = form.get("refresh_token", "")
                client = drive.refresh_tokens.get(rt)
                if client is None or rt in drive.revoked:
                    return self._send_json(400, {"error": "invalid_grant",
                                                 "error_description": "Token has been expired or revoked."})
                new_rt = None
            elif grant == "authorization_code":
                client = drive.codes.pop(form.get("code", ""), None)
                if client is None:
                    return self._send_json(400, {"error": "invalid_grant", "error_description": "Bad Request"})
                new_rt = "rt-" + secrets.token_hex(8)
                drive.refresh_tokens[new_rt] = client
            else:
                return self._send_json(400, {"error": "unsupported_grant_type"})
            token = "at-" + secrets.token_hex(8)
            drive.access_tokens[token] = client
        doc = {"access_token": token, "expires_in": 3599, "token_type": "Bearer",
               "scope": "https://www.googleapis.com/auth/drive"}
        if new_rt:
            doc["refresh_token"] = new_rt
        return self._send_json(200, doc)

    def _consent(self, drive: DriveServer) -> int:
        """The user clicked "Allow": redirect to the app's loopback URI with a code."""
        code = "code-" + secrets.token_hex(8)
        with drive._lock:
            drive.codes[code] = self.query.get("client_id", DEFAULT_CLIENT)
        target = f"{self.query['redirect_uri']}?{urlencode({'state': self.query.get('state', ''), 'code': code, 'scope': self.query.get('scope', '')})}"
        return self._send(302, b"", {"Location": target})
