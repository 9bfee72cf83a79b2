"""Real receivers on loopback for the notification tests: an HTTP server that checks
webhook signatures the way a receiver would (and counts event ids), and an SMTP
server (aiosmtpd) with STARTTLS and AUTH, as a mail provider's submission port."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import ssl
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SECRET = "s3cret-webhook-key"
SMTP_USER, SMTP_PASSWORD = "orch@example.org", "smtp-pa55word"


class Receiver:
    """Records every POST; ``fail_with`` makes it answer that status instead (a dead peer)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.fail_with: int | None = None
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    if receiver.fail_with:
                        self.send_response(receiver.fail_with)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                self.send_response(204 if self.path.startswith("/discord") else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        return Handler

    def events(self, path: str = "/hook") -> list[dict]:
        """The webhook events received on ``path``, each with its signature checked."""
        out = []
        for r in self.requests:
            if r["path"] != path:
                continue
            h = {k.lower(): v for k, v in r["headers"].items()}
            expected = "sha256=" + hmac.new(SECRET.encode(), h["x-orch-timestamp"].encode() + b"." + r["body"],
                                            hashlib.sha256).hexdigest()
            assert hmac.compare_digest(expected, h["x-orch-signature"]), "bad signature"
            doc = json.loads(r["body"])
            assert h["x-orch-event-id"] == doc["id"] and h["x-orch-event"] == doc["type"]
            out.append(doc)
        return out

    def ids(self, path: str = "/hook") -> Counter:
        return Counter(e["id"] for e in self.events(path))

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp / "smtp.pem", tmp / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Mailbox:
    def __init__(self):
        self.messages: list[dict] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        self.messages.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                              "data": envelope.content.decode("utf-8", "replace"),
                              "tls": session.ssl is not None, "user": getattr(session, "login_data", None)})
        return "250 OK"


@pytest.fixture
def smtp_server(tmp_path):
    """An SMTP submission server on loopback: STARTTLS required before AUTH, one account."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = auth_data.login == SMTP_USER.encode() and auth_data.password == SMTP_PASSWORD.encode()
        return AuthResult(success=ok, handled=False)

    import socket

    with socket.socket() as s:  # a free port (aiosmtpd's start() probes the port it is given)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True,
                            authenticator=authenticator, auth_required=True, auth_require_tls=True)
    controller.start()
    mailbox.port = port
    mailbox.ca_file = cert
    yield mailbox
    controller.stop()
