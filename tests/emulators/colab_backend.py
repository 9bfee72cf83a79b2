"""A local stand-in for Colab's backend, for Google's real ``colab`` CLI (google-colab-cli).

Written from the installed client's source (0.7.5: ``colab_cli/client.py``,
``auth.py``, ``auto_update.py``, ``commands/session.py``, ``commands/ssh.py``). The
CLI hardcodes ``https://colab.research.google.com`` but honours ``HTTPS_PROXY``,
``REQUESTS_CA_BUNDLE`` (requests), ``SSL_CERT_FILE`` (urllib, the update check) and
``WEBSOCKET_CLIENT_CA_BUNDLE`` (websocket-client, ``colab ssh``): this module is a CONNECT
proxy on 127.0.0.1 that terminates TLS with a test CA for every host and answers
as the backend itself. Nothing leaves the machine.

What it serves (the CLI's wire protocol):

* ``GET /tun/m/assign?nbh=..&variant=GPU&accelerator=T4`` -> ``{"acc", "nbh", "token",
  "variant"}`` (an XSRF token); ``POST`` the same with ``X-Goog-Colab-Token`` ->
  ``{"accelerator", "endpoint", "variant": 1, "runtimeProxyInfo": {"token",
  "tokenExpiresInSeconds", "url"}}``. 412 = allocation refused, 400 = accelerator not
  allowed; the CLI retries 502/503/504 and read timeouts.
* ``GET /tun/m/assignments`` -> ``{"assignments": [{..., "machineShape": 0,
  "runtimeProxyInfo": {...}}]}``; every listing mints a fresh runtime-proxy token (as
  the real service does, google-colab-cli #106).
* ``GET /tun/m/unassign/ENDPOINT`` -> ``{"token"}``; ``POST`` it -> ``{}``.
* ``GET /tun/m/ccu-info`` -> ``{"currentBalance", "consumptionRateHourly",
  "assignmentsCount"}``.
* ``wss://RUNTIME/colab/ssh?colab-runtime-proxy-token=T`` with ``X-Colab-Ssh-Pubkey``: a
  WebSocket whose binary frames carry the SSH byte stream to the test sshd. Refusals
  as the runtime proxy answers them: 400 ``unsupported key type`` (RSA), 401 (bad or
  expired token), 404 (no SSH endpoint, or no such runtime), 429 (one SSH connection
  per runtime), 502 (sshd unreachable).
* ``POST oauth2.googleapis.com/token`` (refreshing the CLI's cached credentials) and
  ``GET pypi.org/pypi/google-colab-cli/json`` (its daily update check).

Faults (attributes and methods of :class:`ColabBackend`, changed by tests at any time):
``refuse(412|400, times)``, ``fail(path, status, times)``, ``stall(path, seconds,
times)``, ``token_ttl_s`` (tokens stop working before the 3600 s they claim),
``listing_lag_s`` (a new runtime is missing from listings for a while), ``vanish()``
(Colab recycles a runtime), ``stall_answer`` (done, but answered late), ``no_ssh``, ``sshd_down``, ``ws_delay_s`` (a slow tunnel),
``refresh_ok`` (the OAuth refresh token is dead when False), ``latest_version`` (makes
the CLI print its upgrade banner), ``substitute`` (other hardware than asked).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import select
import socket
import socketserver
import ssl
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

XSSI = ")]}'\n"
HOSTS = ("colab.research.google.com", "colab.pa.googleapis.com", "oauth2.googleapis.com", "pypi.org")
RUNTIME_DOMAIN = "prod.colab.dev"
VARIANTS = {"DEFAULT": 0, "GPU": 1, "TPU": 2}
RATES = {"NONE": 0.07, "T4": 1.96, "L4": 4.8, "G4": 8.9, "A100": 13.08, "H100": 18.0}
_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# --------------------------------------------------------------------------- test CA


def make_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and one server certificate for every host the CLI reaches.

    Returns (ca.pem, server.pem, server.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "orch test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName(h) for h in HOSTS] + [x509.DNSName(f"*.{RUNTIME_DOMAIN}")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOSTS[0])]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "server.pem").write_bytes(cert.public_bytes(pem))
    (directory / "server.key").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


# --------------------------------------------------------------------------- state


@dataclass
class Runtime:
    """One server-side assignment."""

    endpoint: str
    accelerator: str
    variant: str
    nbh: str
    created: float = field(default_factory=time.time)
    ssh: bool = True
    tokens: dict[str, float] = field(default_factory=dict)  # token -> issued at
    bridges: list[socket.socket] = field(default_factory=list)

    @property
    def host(self) -> str:
        return f"8080-{self.endpoint}.{RUNTIME_DOMAIN}"


class ColabBackend:
    """The account's server side, plus the proxy that reaches it. Thread-safe."""

    def __init__(self, state_dir: Path, sshd_port: int, *, token_expires_in_s: int = 3600):
        self.dir = state_dir
        self.ca, cert, key = make_ca(state_dir / "tls")
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(cert, key)
        self.sshd_port = sshd_port
        self.lock = threading.RLock()
        self.runtimes: dict[str, Runtime] = {}
        self.requests: list[tuple[str, str, str]] = []  # (method, host, path)
        self.balance = 100.0
        self.eligible = {"T4", "L4", "G4", "A100", "H100", "NONE"}
        self.max_assignments = 8
        self.substitute: dict[str, str] = {}
        self.token_expires_in_s = token_expires_in_s
        self.token_ttl_s: float | None = None   # None: tokens live as long as they claim
        self.expired_status = 404               # what the runtime proxy answers an expired token
        self.listing_lag_s = 0.0
        self.no_ssh = False
        self.sshd_down = False
        self.ws_delay_s = 0.0
        self.refresh_ok = True
        self.latest_version: str | None = None
        self._faults: list[dict[str, Any]] = []
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.backend = self
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- test side
    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What a process needs so that the real CLI reaches this backend and nothing else."""
        ca = str(self.ca)
        return {
            "HTTPS_PROXY": self.proxy_url, "https_proxy": self.proxy_url,
            "HTTP_PROXY": self.proxy_url, "http_proxy": self.proxy_url,
            "NO_PROXY": "", "no_proxy": "",
            "REQUESTS_CA_BUNDLE": ca, "SSL_CERT_FILE": ca, "WEBSOCKET_CLIENT_CA_BUNDLE": ca,
            "COLAB_CLI_RETRY_BACKOFF": "0.2", "COLAB_CLI_REQUEST_TIMEOUT": "20",
        }

    def refuse(self, status: int = 412, times: int = 1) -> None:
        """The next ``times`` assignment POSTs are refused (412: no room; 400: not entitled)."""
        self.fail("/tun/m/assign", status, times, method="POST")

    def fail(self, path: str, status: int, times: int = 1, method: str | None = None) -> None:
        """The next ``times`` requests whose path starts with ``path`` answer ``status``."""
        with self.lock:
            self._faults.append({"path": path, "status": status, "times": times, "method": method})

    def stall(self, path: str, seconds: float, times: int = 1, method: str | None = None) -> None:
        """The next ``times`` such requests answer only after ``seconds`` (a hang, for a CLI)."""
        with self.lock:
            self._faults.append({"path": path, "stall": seconds, "times": times, "method": method})

    def stall_answer(self, path: str, seconds: float, times: int = 1, method: str | None = None) -> None:
        """The next ``times`` such requests are carried out at once but answered only after
        ``seconds``: a client cut off meanwhile never learns that, say, its runtime exists."""
        with self.lock:
            self._faults.append({"path": path, "answer_after": seconds, "times": times, "method": method})

    def vanish(self, endpoint: str | None = None) -> None:
        """Colab recycles a runtime (idle or lifetime limit): it is simply gone."""
        with self.lock:
            for ep in [endpoint] if endpoint else list(self.runtimes):
                self._drop(ep)

    def cut(self) -> None:
        """Every SSH tunnel drops (the runtimes stay)."""
        with self.lock:
            for rt in self.runtimes.values():
                for s in rt.bridges:
                    _close(s)

    def add_runtime(self, accelerator: str = "T4") -> Runtime:
        """A runtime made somewhere else (the web UI, another machine)."""
        with self.lock:
            return self._assign(accelerator, "GPU" if accelerator != "NONE" else "DEFAULT", uuid.uuid4().hex)

    def live(self) -> list[Runtime]:
        with self.lock:
            return list(self.runtimes.values())

    def calls(self, path: str, method: str | None = None) -> list[tuple[str, str, str]]:
        with self.lock:
            return [r for r in self.requests if r[2].startswith(path) and (method is None or r[0] == method)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            for rt in self.runtimes.values():
                for s in rt.bridges:
                    _close(s)

    # ---------------------------------------------------------------- server side
    def _assign(self, accelerator: str, variant: str, nbh: str) -> Runtime:
        accelerator = self.substitute.get(accelerator, accelerator)
        slug = "m" if accelerator == "NONE" else f"gpu-{accelerator.lower()}"
        rt = Runtime(endpoint=f"{slug}-s-{uuid.uuid4().hex[:14]}", accelerator=accelerator, variant=variant,
                     nbh=nbh, ssh=not self.no_ssh)
        self.runtimes[rt.endpoint] = rt
        return rt

    def _drop(self, endpoint: str) -> None:
        rt = self.runtimes.pop(endpoint, None)
        if rt is not None:
            for s in rt.bridges:
                _close(s)

    def _proxy_info(self, rt: Runtime) -> dict[str, Any]:
        token = uuid.uuid4().hex
        rt.tokens[token] = time.time()
        return {"token": token, "tokenExpiresInSeconds": self.token_expires_in_s, "url": f"https://{rt.host}"}

    def token_valid(self, rt: Runtime, token: str) -> bool:
        issued = rt.tokens.get(token)
        if issued is None:
            return False
        ttl = self.token_ttl_s if self.token_ttl_s is not None else self.token_expires_in_s
        return time.time() - issued < ttl

    def _fault(self, method: str, path: str) -> dict[str, Any] | None:
        with self.lock:
            for f in self._faults:
                if path.startswith(f["path"]) and f["method"] in (None, method) and f["times"] > 0:
                    f["times"] -= 1
                    return f
        return None

    def handle(self, method: str, host: str, target: str, headers: dict[str, str], body: bytes,
               ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request to ``host``; returns (status, headers, body)."""
        url = urlsplit(target)
        path, query = url.path, {k: v[0] for k, v in parse_qs(url.query).items()}
        with self.lock:
            self.requests.append((method, host, path))
        fault = self._fault(method, path)
        if fault is not None and "stall" in fault:
            time.sleep(fault["stall"])
        elif fault is not None and "status" in fault:
            return fault["status"], {}, json.dumps({"error": {"code": fault["status"]}}).encode()
        if host == "pypi.org":
            if self.latest_version is None:
                return 404, {}, b'{"message": "Not Found"}'
            return 200, {}, json.dumps({"info": {"version": self.latest_version}}).encode()
        if host == "oauth2.googleapis.com":
            if not self.refresh_ok:
                return 400, {}, b'{"error": "invalid_grant", "error_description": "Token has been expired or revoked."}'
            return 200, {}, json.dumps({"access_token": "ya29.test-" + uuid.uuid4().hex, "expires_in": 3599,
                                        "token_type": "Bearer"}).encode()
        if host != "colab.research.google.com":
            return 404, {}, b"{}"
        if not headers.get("authorization", "").startswith("Bearer "):
            return 401, {}, b'{"error": {"code": 401, "message": "Request is missing required authentication"}}'
        with self.lock:
            answer = self._tunnel(method, path, query, headers)
        if fault is not None and "answer_after" in fault:
            time.sleep(fault["answer_after"])
        return answer

    def _tunnel(self, method: str, path: str, query: dict[str, str], headers: dict[str, str]):
        def ok(obj: Any) -> tuple[int, dict[str, str], bytes]:
            return 200, {}, (XSSI + json.dumps(obj)).encode()

        if path == "/tun/m/assign":
            accelerator = query.get("accelerator", "NONE")
            variant = query.get("variant", "DEFAULT")
            nbh = query.get("nbh", "")
            mine = next((r for r in self.runtimes.values() if r.nbh == nbh), None)
            if mine is not None:
                return ok({"endpoint": mine.endpoint, "runtimeProxyInfo": self._proxy_info(mine)})
            if method == "GET":
                return ok({"acc": accelerator, "nbh": nbh, "token": "xsrf-" + nbh[:8], "variant": variant})
            if headers.get("x-goog-colab-token") != "xsrf-" + nbh[:8]:
                return 403, {}, b'{"error": {"code": 403, "message": "XSRF"}}'
            if len(self.runtimes) >= self.max_assignments or (accelerator != "NONE" and self.balance <= 0):
                return 412, {}, b'{"error": {"code": 412, "message": "Precondition Failed"}}'
            if accelerator not in self.eligible:
                return 400, {}, b'{"error": {"code": 400, "message": "Bad Request"}}'
            rt = self._assign(accelerator, variant, nbh)
            return ok({"accelerator": rt.accelerator, "endpoint": rt.endpoint, "variant": VARIANTS[rt.variant],
                       "runtimeProxyInfo": self._proxy_info(rt)})
        if path == "/tun/m/assignments" and method == "GET":
            now = time.time()
            listed = [r for r in self.runtimes.values() if now - r.created >= self.listing_lag_s]
            return ok({"assignments": [
                {"accelerator": r.accelerator, "endpoint": r.endpoint, "variant": VARIANTS[r.variant],
                 "machineShape": 0, "runtimeProxyInfo": self._proxy_info(r)} for r in listed]})
        if path.startswith("/tun/m/unassign/"):
            endpoint = path.rsplit("/", 1)[1]
            if method == "GET":
                return ok({"token": "xsrf-unassign-" + endpoint})
            if headers.get("x-goog-colab-token") != "xsrf-unassign-" + endpoint:
                return 403, {}, b"{}"
            self._drop(endpoint)  # unassigning an unknown endpoint is not an error upstream either
            return ok({})
        if path == "/tun/m/ccu-info":
            rate = sum(RATES.get(r.accelerator, 1.0) for r in self.runtimes.values())
            return ok({"currentBalance": self.balance, "consumptionRateHourly": rate,
                       "assignmentsCount": len(self.runtimes)})
        return 404, {}, b"{}"

    def websocket(self, host: str, target: str, headers: dict[str, str]) -> tuple[int, bytes, Runtime | None]:
        """Decide a ``/colab/ssh`` upgrade: (status, refusal body, runtime)."""
        if self.ws_delay_s:
            time.sleep(self.ws_delay_s)
        url = urlsplit(target)
        token = parse_qs(url.query).get("colab-runtime-proxy-token", [""])[0]
        with self.lock:
            self.requests.append(("WS", host, url.path))
            rt = next((r for r in self.runtimes.values() if r.host == host), None)
            if rt is None or url.path != "/colab/ssh":
                return 404, b"Not Found", None
            if not self.token_valid(rt, token):
                return self.expired_status, b"Unauthorized" if self.expired_status == 401 else b"Not Found", None
            pubkey = headers.get("x-colab-ssh-pubkey", "")
            if not pubkey:
                return 400, b"missing pubkey header", None
            if not pubkey.startswith(("ssh-ed25519 ", "ecdsa-sha2-nistp")):
                return 400, b"unsupported key type", None
            if not rt.ssh:
                return 404, b"Not Found", None
            if self.sshd_down:
                return 502, b"Bad Gateway", None
            if rt.bridges:
                return 429, b"Too Many Requests", None
            return 101, b"", rt


# --------------------------------------------------------------------------- wire


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    backend: ColabBackend


class _Handler(socketserver.BaseRequestHandler):
    """CONNECT host:443, then TLS, then HTTP/1.1 requests (or one WebSocket) on it."""

    def handle(self) -> None:
        backend: ColabBackend = self.server.backend  # type: ignore[attr-defined]
        raw = self.request
        raw.settimeout(60)
        try:
            line, _ = _read_head(raw)
        except (OSError, ValueError):
            return
        parts = line.split(" ")
        if len(parts) < 2 or parts[0] != "CONNECT":
            raw.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            return
        host = parts[1].rsplit(":", 1)[0]
        raw.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        try:
            conn = backend.tls.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            return
        try:
            self._serve(backend, conn, host)
        except (OSError, ValueError, ssl.SSLError):
            pass
        finally:
            _close(conn)

    def _serve(self, backend: ColabBackend, conn: ssl.SSLSocket, host: str) -> None:
        buf = b""
        while True:
            try:
                line, headers, buf = _read_request(conn, buf)
            except EOFError:
                return
            method, target = line.split(" ")[:2]
            length = int(headers.get("content-length", "0") or 0)
            while len(buf) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
            body, buf = buf[:length], buf[length:]
            if headers.get("upgrade", "").lower() == "websocket":
                self._websocket(backend, conn, host, target, headers, buf)
                return
            status, extra, payload = backend.handle(method, host, target, headers, body)
            head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
                    "Content-Type: application/json; charset=utf-8", f"Content-Length: {len(payload)}"]
            head += [f"{k}: {v}" for k, v in extra.items()]
            conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + payload)

    def _websocket(self, backend: ColabBackend, conn: ssl.SSLSocket, host: str, target: str,
                   headers: dict[str, str], pending: bytes) -> None:
        status, body, rt = backend.websocket(host, target, headers)
        if rt is None:
            conn.sendall(f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\nContent-Length: {len(body)}\r\n"
                         f"Content-Type: text/plain\r\n\r\n".encode() + body)
            return
        try:
            sshd = socket.create_connection(("127.0.0.1", backend.sshd_port), timeout=10)
        except OSError:
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 11\r\n\r\nBad Gateway")
            return
        accept = base64.b64encode(hashlib.sha1((headers["sec-websocket-key"] + _WS_GUID).encode()).digest())
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        with backend.lock:
            rt.bridges.append(conn)
        try:
            _pump(conn, sshd, pending)
        finally:
            with backend.lock:
                if conn in rt.bridges:
                    rt.bridges.remove(conn)
            _close(sshd)


def _pump(ws: ssl.SSLSocket, sshd: socket.socket, pending: bytes) -> None:
    """Bytes from sshd -> binary frames; client frames (masked) -> sshd; until either ends."""
    ws.settimeout(None)
    sshd.settimeout(None)
    buf = pending
    while True:
        readable = [ws, sshd] if not (isinstance(ws, ssl.SSLSocket) and ws.pending()) else [ws]
        ready, _, _ = select.select(readable, [], [], 1.0)
        if sshd in ready:
            data = sshd.recv(65536)
            if not data:
                _send_frame(ws, 0x8, b"")
                return
            _send_frame(ws, 0x2, data)
        if ws in ready:
            data = ws.recv(65536)
            if not data:
                return
            buf += data
            while True:
                frame = _parse_frame(buf)
                if frame is None:
                    break
                opcode, payload, used = frame
                buf = buf[used:]
                if opcode == 0x8:
                    _send_frame(ws, 0x8, b"")
                    return
                if opcode == 0x9:
                    _send_frame(ws, 0xA, payload)
                elif opcode in (0x0, 0x1, 0x2):
                    sshd.sendall(payload)


def _send_frame(sock: socket.socket, opcode: int, payload: bytes) -> None:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    try:
        sock.sendall(head + payload)
    except OSError:
        pass


def _parse_frame(buf: bytes) -> tuple[int, bytes, int] | None:
    if len(buf) < 2:
        return None
    opcode, n, i = buf[0] & 0x0F, buf[1] & 0x7F, 2
    masked = buf[1] & 0x80
    if n == 126:
        if len(buf) < 4:
            return None
        n, i = struct.unpack("!H", buf[2:4])[0], 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n, i = struct.unpack("!Q", buf[2:10])[0], 10
    mask = b""
    if masked:
        if len(buf) < i + 4:
            return None
        mask, i = buf[i:i + 4], i + 4
    if len(buf) < i + n:
        return None
    payload = buf[i:i + n]
    if masked:
        payload = bytes(b ^ mask[j % 4] for j, b in enumerate(payload))
    return opcode, payload, i + n


def _read_head(sock: socket.socket) -> tuple[str, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ValueError("closed")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    return head.decode("latin-1").split("\r\n")[0], rest


def _read_request(sock: socket.socket, buf: bytes) -> tuple[str, dict[str, str], bytes]:
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError()
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for h in lines[1:]:
        k, _, v = h.partition(":")
        headers[k.strip().lower()] = v.strip()
    return lines[0], headers, rest


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            412: "Precondition Failed", 429: "Too Many Requests", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout", 101: "Switching Protocols"}


# --------------------------------------------------------------------------- the CLI's files


def log_in(home: Path, *, expired: bool = False) -> Path:
    """Write the CLI's cached OAuth credentials (``~/.config/colab-cli/token.json``) as
    ``colab`` writes them after its login flow; ``expired`` makes it refresh first."""
    when = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=-1 if expired else 1)
    path = home / ".config" / "colab-cli" / "token.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "token": "ya29.test-" + uuid.uuid4().hex, "refresh_token": "1//test-refresh",
        "token_uri": "https://oauth2.googleapis.com/token", "client_id": "test.apps.googleusercontent.com",
        "client_secret": "test-secret", "scopes": ["https://www.googleapis.com/auth/colaboratory"],
        "expiry": when.replace(tzinfo=None).isoformat(timespec="seconds") + "Z",
    }))
    return path
