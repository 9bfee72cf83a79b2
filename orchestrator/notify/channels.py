"""Where notifications go: one class per channel type, each with its peer's format.

* **webhook**: the event JSON as is, with ``X-Orch-Event``, ``X-Orch-Event-Id``,
  ``X-Orch-Timestamp`` and ``X-Orch-Signature: sha256=<hex>``, the HMAC-SHA256 of
  ``<timestamp>.<body>`` under the shared secret (see :func:`sign`).
* **ntfy**: a POST of the message text to the topic URL with ``Title``, ``Priority``
  and ``Tags`` headers (ntfy's publish API).
* **slack**: an incoming-webhook body, ``{"text": ..., "blocks": [section]}``.
* **discord**: an execute-webhook body, ``{"content", "embeds", "allowed_mentions"}``;
  mentions are disabled so a job name can never ping anyone.
* **email**: a plain-text mail over SMTP with STARTTLS (or SMTPS).
* **command**: a local program with the event JSON on stdin.

A send raises :class:`~orchestrator.errors.TransientError` for what may work on a
second try (timeouts, 429, 5xx, a dropped connection) and :class:`SendError` for what
will not until the config changes (401, 404, a refused login). Nothing here writes a
credential anywhere but into the one request that needs it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import smtplib
import socket
import ssl
import subprocess
import time
import unicodedata
import urllib.error
import urllib.request
from email.message import EmailMessage
from typing import Any

from ..errors import OrchError, TransientError
from . import config as cfg

USER_AGENT = "orch-notify/1"
#: Default ntfy priority per event type (1 min .. 5 max).
NTFY_DEFAULT_PRIORITY = {"job.failed": 4, "quota.low": 4, "login.expiring": 4, "job.succeeded": 3,
                         "sweep.finished": 3, "job.waiting": 3, "job.retried": 2, "job.checkpointed": 2}
_TAGS = {"job.succeeded": "white_check_mark", "job.failed": "x", "job.retried": "repeat",
         "job.checkpointed": "floppy_disk", "sweep.finished": "bar_chart", "quota.low": "warning",
         "login.expiring": "key", "job.waiting": "hourglass"}
_DISCORD_COLOUR = {"job.succeeded": 0x2EA043, "job.failed": 0xD1242F, "quota.low": 0xBF8700,
                   "login.expiring": 0xBF8700}


class SendError(OrchError):
    """The channel refused the event in a way a retry will not fix (fix the config)."""


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``<timestamp>.<body>``, what a receiver recomputes."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def plain(text: Any, limit: int = 2000) -> str:
    """``text`` without control characters (newlines and tabs kept), at most ``limit`` chars."""
    s = "".join(c for c in str(text if text is not None else "")
                if c in "\n\t" or unicodedata.category(c)[0] != "C")
    return s if len(s) <= limit else s[:limit - 1] + "…"


def summary(event: dict[str, Any]) -> tuple[str, list[str]]:
    """A title and body lines for the channels meant for people."""
    kind = event.get("type", "")
    job = event.get("job") or {}
    name = f"{job.get('name')} ({str(job.get('id', ''))[:8]})" if job else ""
    lines: list[str] = []
    if kind == "job.succeeded":
        title = f"orch: {name} succeeded"
        r = event.get("result") or {}
        lines.append(f"on {job.get('platform')}" + (f", {r['gpu']}" if r.get("gpu") else "")
                     + (f", ran {round(r['runtime_s'])}s" if isinstance(r.get("runtime_s"), (int, float)) else ""))
        out = event.get("outputs") or {}
        if out:
            lines.append(f"outputs: {out.get('path')} (`{out.get('fetch')}`)")
    elif kind == "job.failed":
        title = f"orch: {name} {'was lost' if job.get('state') == 'LOST' else 'failed'}"
        lines.append(f"reason: {event.get('reason')}")
        tail = event.get("log_tail") or []
        if tail:
            lines.append("last log lines:")
            lines.extend(f"  {ln}" for ln in tail)
    elif kind == "job.retried":
        title = f"orch: {name} {'lost' if event.get('cause') == 'lost' else 'failed'} on {job.get('platform')}; retrying"
        lines.append(f"reason: {event.get('reason')}")
    elif kind == "job.checkpointed":
        title = f"orch: {name} checkpointed on {job.get('platform')}; next segment queued"
    elif kind == "sweep.finished":
        sweep = event.get("sweep") or {}
        counts = ", ".join(f"{n} {s}" for s, n in sorted((sweep.get("counts") or {}).items()))
        title = f"orch: sweep {sweep.get('name')} finished: {counts}"
        for p in sweep.get("points") or []:
            params = " ".join(f"{k}={v}" for k, v in (p.get("params") or {}).items())
            lines.append(f"{p.get('name')}  {p.get('state')}  {params}".rstrip())
    elif kind == "quota.low":
        q = event.get("quota") or {}
        title = f"orch: {q.get('platform')} quota low: {q.get('left_percent')}% left"
        lines.append(f"{q.get('left')} of {q.get('limit')} {q.get('unit')} left; resets {q.get('resets_at')}")
    elif kind == "login.expiring":
        lg = event.get("login") or {}
        title = f"orch: {lg.get('platform')} login {'expired' if lg.get('expired') else 'expires soon'}"
        lines.append(f"{lg.get('what')}: {'expired' if lg.get('expired') else 'expires'} {lg.get('expires_at')}")
        if lg.get("fix"):
            lines.append(f"fix: {lg.get('fix')}")
    elif kind == "job.waiting":
        title = f"orch: {name} has waited {event.get('waited_hours')}h in the queue"
        lines.append(f"why: {event.get('reason')}")
    else:
        title = f"orch: {kind}"
    # One line: the title becomes an HTTP header (ntfy) and a mail Subject.
    return plain(" ".join(title.split()), 250), [plain(ln, 500) for ln in lines]


# ---------------------------------------------------------------------------- channels


class Channel:
    """One configured destination; ``send`` raises TransientError or SendError."""

    def __init__(self, name: str, settings: cfg._Channel):
        self.name = name
        self.settings = settings

    def send(self, event: dict[str, Any]) -> None:  # pragma: no cover - every type overrides it
        raise NotImplementedError

    def _env(self, var: str | None, what: str) -> str | None:
        if not var:
            return None
        value = os.environ.get(var)
        if not value:
            raise SendError(f"{what}: environment variable {var} is not set (config.yaml notify.channels."
                            f"{self.name}); export it where `orch tick` runs")
        return value

    def _url(self) -> str:
        url = getattr(self.settings, "url", None) or self._env(self.settings.url_env, "url_env")
        if not url:
            raise SendError(f"notify.channels.{self.name}: give url: or url_env:")
        return url

    def _post(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"User-Agent": USER_AGENT, **headers})
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout) as response:
                response.read(1 << 16)
        except urllib.error.HTTPError as exc:
            code = exc.code
            retry_after = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
            exc.close()
            if code in (408, 425, 429) or code >= 500:
                error = TransientError(f"{self.name}: HTTP {code}")
                error.retry_after = retry_after  # type: ignore[attr-defined]
                raise error from None
            raise SendError(f"{self.name}: HTTP {code} from {_host(url)}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TransientError(f"{self.name}: cannot reach {_host(url)}: {reason}") from None


class WebhookChannel(Channel):
    def send(self, event: dict[str, Any]) -> None:
        body = json.dumps(event, sort_keys=True).encode()
        # The time of this send (not of the event): receivers refuse stale timestamps.
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "X-Orch-Event": event["type"],
                   "X-Orch-Event-Id": event["id"], "X-Orch-Timestamp": timestamp}
        secret = self._env(self.settings.secret_env, "secret_env")
        if secret:
            headers["X-Orch-Signature"] = sign(secret.encode(), timestamp, body)
        self._post(self._url(), body, headers)


class NtfyChannel(Channel):
    def send(self, event: dict[str, Any]) -> None:
        title, lines = summary(event)
        priority = self.settings.priorities.get(event["type"], NTFY_DEFAULT_PRIORITY.get(event["type"], 3))
        headers = {"Title": _latin1(title), "Priority": str(cfg.NTFY_PRIORITIES.get(priority, priority)),
                   "Tags": _TAGS.get(event["type"], "bell"), "Content-Type": "text/plain; charset=utf-8"}
        token = self._env(self.settings.token_env, "token_env")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        message = "\n".join(lines) or title
        self._post(self._url(), message[:4000].encode(), headers)


class SlackChannel(Channel):
    def send(self, event: dict[str, Any]) -> None:
        title, lines = summary(event)
        text = _slack_escape("\n".join([f"*{title}*", *lines]))[:2900]
        body = {"text": _slack_escape(title),
                "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}
        self._post(self._url(), json.dumps(body).encode(), {"Content-Type": "application/json"})


class DiscordChannel(Channel):
    def send(self, event: dict[str, Any]) -> None:
        title, lines = summary(event)
        embed = {"title": title[:256], "description": "\n".join(lines)[:4000], "timestamp": event["at"],
                 "color": _DISCORD_COLOUR.get(event["type"], 0x57606A),
                 "footer": {"text": f"{event['type']} · {event['id']}"[:2048]}}
        body = {"content": title[:2000], "embeds": [embed], "allowed_mentions": {"parse": []}}
        self._post(self._url(), json.dumps(body).encode(), {"Content-Type": "application/json"})


class EmailChannel(Channel):
    def send(self, event: dict[str, Any]) -> None:
        s = self.settings
        title, lines = summary(event)
        msg = EmailMessage()
        msg["Subject"] = title
        msg["From"] = s.sender
        msg["To"] = ", ".join(s.to)
        msg["X-Orch-Event-Id"] = event["id"]
        msg.set_content("\n".join([*lines, "", f"event {event['type']} {event['id']} at {event['at']}"]))
        password = self._env(s.password_env, "password_env")
        context = ssl.create_default_context(cafile=os.path.expanduser(s.ca_file) if s.ca_file else None)
        try:
            if s.tls == "ssl":
                client: smtplib.SMTP = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=context)
            else:
                client = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
            with client:
                if s.tls == "starttls":
                    client.starttls(context=context)
                if s.username and password:
                    client.login(s.username, password)
                client.send_message(msg)
        except (smtplib.SMTPAuthenticationError, smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused,
                smtplib.SMTPNotSupportedError, ssl.SSLCertVerificationError) as exc:
            raise SendError(f"{self.name}: {s.host}:{s.port} refused: {_smtp_reason(exc)}") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise TransientError(f"{self.name}: mail via {s.host}:{s.port} failed: {_smtp_reason(exc)}") from None


class CommandChannel(Channel):
    def send(self, event: dict[str, Any]) -> None:
        argv = [os.path.expanduser(a) for a in self.settings.command]
        env = {**os.environ, "ORCH_EVENT_TYPE": event["type"], "ORCH_EVENT_ID": event["id"]}
        try:
            done = subprocess.run(argv, input=json.dumps(event, sort_keys=True), text=True, capture_output=True,
                                  timeout=self.settings.timeout, env=env)
        except FileNotFoundError:
            raise SendError(f"{self.name}: no program {argv[0]}") from None
        except PermissionError:
            raise SendError(f"{self.name}: {argv[0]} is not executable") from None
        except subprocess.TimeoutExpired:
            raise TransientError(f"{self.name}: {argv[0]} ran past {self.settings.timeout:g}s") from None
        if done.returncode != 0:
            out = (done.stderr or done.stdout or "").strip().splitlines()
            said = plain(out[-1], 200) if out else ""
            raise TransientError(f"{self.name}: {argv[0]} exited {done.returncode}"
                                 + (f": {plain(said, 200)}" if said else ""))


TYPES: dict[str, type[Channel]] = {"webhook": WebhookChannel, "ntfy": NtfyChannel, "slack": SlackChannel,
                                   "discord": DiscordChannel, "email": EmailChannel, "command": CommandChannel}


def build(name: str, settings: cfg._Channel) -> Channel:
    return TYPES[settings.type](name, settings)


# ---------------------------------------------------------------------------- helpers


def _host(url: str) -> str:
    """The host of ``url`` alone: a webhook URL's path may hold its token."""
    from urllib.parse import urlsplit

    return urlsplit(url).hostname or "?"


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _latin1(text: str) -> str:
    """HTTP header values are latin-1: anything else is replaced."""
    return text.encode("latin-1", "replace").decode("latin-1")


def _slack_escape(text: str) -> str:
    """Slack's three control characters in mrkdwn: & < >."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _smtp_reason(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        return f"{exc.smtp_code} {plain(text, 200)}"
    if isinstance(exc, socket.timeout):
        return "timed out"
    return plain(str(exc) or type(exc).__name__, 200)
