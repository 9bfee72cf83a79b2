"""The HTTP side of the Kaggle emulator: routing, fault injection on the wire, and
the non-RPC URLs (blob PUTs, output files, the log stream).

The handler reaches the emulator as ``self.server.emulator``; it takes the path from
``urlsplit(target).path`` so proxy-style (absolute-form) requests from the client's
``HTTP_PROXY`` route and direct requests to ``127.0.0.1`` land in the same place.
"""

from __future__ import annotations

import json
import re
import socket
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

#: Routes that are not RPCs, for ``inject`` and ``calls``.
BLOB_PUT = "BlobPut"
OUTPUT_FILE = "OutputFile"
LOGS_STREAM = "LogsStream"

FAULT_KINDS = ("429", "500", "503", "200-code", "push-error", "invalid-sources", "latency", "drop", "drop-after",
               "hang")


@dataclass
class Fault:
    """One injected failure. ``times=None`` keeps it forever; ``rate`` < 1 makes it
    intermittent (seeded, so a test sees the same sequence every run)."""

    route: str
    kind: str
    times: int | None = 1
    rate: float = 1.0
    retry_after: float | None = None
    delay: float = 0.0
    code: int = 429
    message: str = ""
    hits: int = 0


class Reply(Exception):
    """Raised inside a handler to answer with ``status`` and a JSON body."""

    def __init__(self, status: int, body: dict, headers: dict | None = None):
        super().__init__(body.get("message", ""))
        self.status, self.body, self.headers = status, body, headers or {}


def error_reply(status: int, message: str) -> Reply:
    return Reply(status, {"code": status, "message": message})



class Handler(BaseHTTPRequestHandler):
    """One request; the emulator lives on ``self.server.emulator``."""

    server_version = "KaggleEmulator/1"
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr
        return

    @property
    def emu(self) -> Any:  # KaggleEmulator
        return self.server.emulator  # type: ignore[attr-defined]

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, content_type: str = "application/json", headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, doc: dict, headers: dict | None = None) -> None:
        self._send(status, json.dumps(doc).encode(), headers=headers)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _apply_fault(self, route: str, fault: Fault | None) -> bool:
        """Answer with ``fault`` if it preempts the request; True when answered."""
        if fault is None or fault.kind in ("push-error", "invalid-sources", "drop-after"):
            return False
        if fault.kind == "latency":
            time.sleep(fault.delay)
            return False
        if fault.kind == "hang":  # accept, read the request, never answer (until reset or ``delay``)
            self.emu._record(route, None)
            self.emu._stop.wait(fault.delay or None)
            self._drop()
            return True
        if fault.kind == "drop":
            self.emu._record(route, None)
            self._drop()
            return True
        if fault.kind == "429":
            headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
            self.emu._record(route, 429)
            self._json(429, {"code": 429, "message": fault.message or "Too many requests"}, headers)
            return True
        if fault.kind in ("500", "503"):
            status = int(fault.kind)
            self.emu._record(route, status)
            if route == OUTPUT_FILE:  # a storage error page, HTML like the real thing
                self._send(status, b"<html><body>Internal error. Please try again.</body></html>", "text/html")
            else:
                self._json(status, {"code": status, "message": fault.message or "Internal error encountered."})
            return True
        if fault.kind == "200-code":
            self.emu._record(route, 200)
            self._json(200, {"code": fault.code, "message": fault.message or f"Error {fault.code}"})
            return True
        return False

    # -- verbs
    def do_POST(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        body = self._body()
        match = re.fullmatch(r"/api/v1/([\w.]+)/(\w+)", path)
        if not match:
            self._json(404, {"code": 404, "message": f"No route for {path}"})
            return
        route = match.group(2)
        fault = self.emu._take_fault(route)
        if self._apply_fault(route, fault):
            return
        try:
            self.emu._check_auth(self.headers.get("Authorization"))
            request = json.loads(body or b"{}")
            if fault is not None and fault.kind == "push-error":
                reply = {"error": fault.message or "Notebook not found"}
            else:
                reply = self.emu.rpc(route, request)
                if fault is not None and fault.kind == "invalid-sources":
                    reply["invalidDatasetSources"] = list(request.get("datasetDataSources") or []) or ["x/missing"]
            status, headers = 200, {}
        except Reply as exc:
            reply, status, headers = exc.body, exc.status, exc.headers
        if fault is not None and fault.kind == "drop-after":  # processed, but the answer is lost
            self.emu._record(route, None)
            self._drop()
            return
        self.emu._record(route, status)
        self._json(status, reply, headers)

    def do_PUT(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        body = self._body()
        fault = self.emu._take_fault(BLOB_PUT)
        if self._apply_fault(BLOB_PUT, fault):
            return
        match = re.fullmatch(r"/upload/([\w-]+)", path)
        status, headers = self.emu.blob_put(match.group(1), self.headers, body) if match else (404, {})
        self.emu._record(BLOB_PUT, status)
        self._send(status, b"", "text/plain", headers)

    def do_GET(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        if path.startswith("/outputs/"):
            self._get_output(path)
        elif path.startswith("/api/v1/kernels/logs/stream/"):
            self._get_logs(path)
        else:
            self._json(404, {"code": 404, "message": f"No route for {path}"})

    def _get_output(self, path: str) -> None:
        fault = self.emu._take_fault(OUTPUT_FILE)
        if self._apply_fault(OUTPUT_FILE, fault):
            return
        expires = re.fullmatch(r"expires=([\d.]+)", urlsplit(self.path).query)
        if expires and time.monotonic() > float(expires.group(1)):
            self._storage_error(400, "ExpiredToken", "The provided token has expired.")
            return
        try:
            data = self.emu.output_file(path[len("/outputs/"):].split("/"))
        except Reply as exc:  # the kernel (and its output objects) was deleted
            self._storage_error(exc.status, "AccessDenied", "Access denied.")
            return
        if data is None:
            self.emu._record(OUTPUT_FILE, 404)
            self._send(404, b"<html><body>Not Found</body></html>", "text/html")
            return
        headers = {"Last-Modified": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())}
        # Signed storage URLs honour ``Range: bytes=N-`` as GCS does: 206 with
        # Content-Range, 416 when N is at or past the end.
        wanted = re.fullmatch(r"bytes=(\d+)-", (self.headers.get("Range") or "").strip())
        if wanted:
            start = int(wanted.group(1))
            if start >= len(data):
                self.emu._record(OUTPUT_FILE, 416)
                self._send(416, b"", "text/plain", {"Content-Range": f"bytes */{len(data)}"})
                return
            self.emu._record(OUTPUT_FILE, 206)
            self._send(206, data[start:], "application/octet-stream",
                       {**headers, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
            return
        self.emu._record(OUTPUT_FILE, 200)
        self._send(200, data, "application/octet-stream", headers)

    def _storage_error(self, status: int, code: str, message: str) -> None:
        """An error from the signed-URL storage (GCS's XML error document)."""
        self.emu._record(OUTPUT_FILE, status)
        body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                f"<Message>{message}</Message></Error>").encode()
        self._send(status, body, "application/xml; charset=UTF-8")

    def _get_logs(self, path: str) -> None:
        fault = self.emu._take_fault(LOGS_STREAM)
        if self._apply_fault(LOGS_STREAM, fault):
            return
        try:
            self.emu._check_auth(self.headers.get("Authorization"))
            owner, slug = path[len("/api/v1/kernels/logs/stream/"):].split("/")[:2]
            with self.emu._lock:
                run = self.emu._kernel(owner, slug).latest
        except Reply as exc:
            self.emu._record(LOGS_STREAM, exc.status)
            self._json(exc.status, exc.body)
            return
        self.emu._record(LOGS_STREAM, 200)
        if run.finished:
            self._send(200, run.log_text().encode(), "application/json")
            return
        # A live session: server-sent events until the session ends, one HTTP/1.1
        # chunk per event so the client sees each as it happens (as on Kaggle).
        self.protocol_version = "HTTP/1.1"
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()

        def chunk(data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        sent = 0
        stop = self.emu._stop
        try:
            while True:
                with run.changed:
                    if sent >= len(run.log) and not run.finished and not stop.is_set():
                        run.changed.wait(0.1)
                    fresh, finished = run.log[sent:], run.finished or stop.is_set()
                for entry in fresh:
                    chunk(b"data: " + json.dumps(entry).encode() + b"\n\n")
                sent += len(fresh)
                if finished:
                    chunk(b"data: END_OF_LOG\n\n")
                    self.wfile.write(b"0\r\n\r\n")
                    return
        except OSError:
            return

