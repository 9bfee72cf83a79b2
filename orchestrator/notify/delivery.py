"""Sending the outbox: what ``Controller.tick`` calls at its end.

Each due event goes to every channel that wants it (its ``events:`` filter, the job's
``notify:`` in job.yaml) and has not had it yet. A send is retried a few times at once
through the one retry policy (``retry.py``); a channel that still fails is left alone
for the rest of the tick and its events are tried again on later ticks, with backoff,
until ``notify.give_up_after``. Sending is bounded in time and never raises: a dead
receiver costs a tick a few seconds, never its work.

Before a send the event gets what only this machine knows (where the outputs are, the
last log lines) and every secret value this controller holds for the job or the
channels is replaced by ``***``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import failpoints
from ..errors import OrchError
from ..retry import Retry
from . import channels as channels_mod
from . import outbox
from .config import NotifySettings

if TYPE_CHECKING:  # pragma: no cover
    from ..app import App

log = logging.getLogger(__name__)

#: Tries of one send within a tick, and their waits.
SEND_RETRY = Retry(attempts=3, base=0.5, factor=2.0, cap=2.0, jitter=0.5, budget=4.0)
#: Waits between ticks for an event that could not be sent (the n-th failed round).
ROUND_RETRY = Retry(attempts=1000, base=60.0, factor=2.0, cap=3600.0, jitter=0.5)
#: A tick spends at most this long sending.
TICK_BUDGET_S = 30.0
LOG_TAIL_LINES = 20


@dataclass
class Delivery:
    """What one call of :func:`deliver` did."""

    sent: list[tuple[str, str]] = field(default_factory=list)      # (event id, channel)
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (event id, channel, error)
    dropped: int = 0


def deliver(app: App, owner: str, problems: list[str] | None = None, now: float | None = None,
            budget_s: float = TICK_BUDGET_S, retry: Retry = SEND_RETRY,
            refused: dict[str, str] | None = None) -> Delivery:
    """Send what is due; failures are recorded in the delivery log and ``problems``.
    ``refused``: platform -> a refusal of orch's credentials the tick ran into."""
    done = Delivery()
    try:
        _deliver(app, owner, done, time.time() if now is None else now, budget_s, retry, refused or {})
    except Exception as exc:  # noqa: BLE001 - a notification problem never fails a tick
        log.warning("notifications: %s", exc)
        if problems is not None:
            problems.append(f"notifications: {type(exc).__name__}: {exc}")
    if problems is not None:
        problems.extend(f"notify {ch}: {err}" for _, ch, err in done.failed)
    return done


def _deliver(app: App, owner: str, done: Delivery, now: float, budget_s: float, retry: Retry,
             refused: dict[str, str]) -> None:
    settings: NotifySettings = app.config.notify
    store = app.store
    if settings.channels:
        from . import watch

        watch.check(app, settings, now, refused)
    chans = {name: channels_mod.build(name, s) for name, s in settings.channels.items()}
    secrets = _channel_secrets(settings)
    down: set[str] = set()
    deadline = time.monotonic() + budget_s
    for row in outbox.due(store, now):
        if time.monotonic() > deadline:
            break
        if not outbox.claim(store, row.id, owner, now):
            continue
        wanted = [n for n in route(app, settings, row.event) if n not in row.done]
        if not wanted:
            outbox.finish(store, row.id)
            done.dropped += 1
            continue
        event = prepare(app, row.event, secrets)
        for name in wanted:
            if name in down or time.monotonic() > deadline:
                continue
            try:
                retry.run(f"notify {name}", lambda: chans[name].send(event))
            except Exception as exc:  # noqa: BLE001 - whatever a channel raises stays with that channel
                error = str(exc) if isinstance(exc, OrchError) else f"{type(exc).__name__}: {exc}"
                error = _redact_text(error, secrets)
                outbox.log(store, row.event, name, False, error)
                done.failed.append((row.event["id"], name, error))
                down.add(name)
                continue
            failpoints.hit("after_notify_send")  # a crash here sends this event again next tick
            row.done.append(name)
            outbox.mark_done(store, row.id, row.done)
            outbox.log(store, row.event, name, True)
            done.sent.append((row.event["id"], name))
        if all(n in row.done for n in wanted):
            outbox.finish(store, row.id)
        elif now - row.at > settings.give_up_after * 3600:
            for name in wanted:
                if name not in row.done:
                    outbox.log(store, row.event, name, False, f"given up after {settings.give_up_after:g}h")
            outbox.finish(store, row.id)
        else:
            outbox.defer(store, row.id, row.tries + 1, now + ROUND_RETRY.delay(row.tries + 1))


def route(app: App, settings: NotifySettings, event: dict[str, Any]) -> list[str]:
    """The channels that get ``event``: those whose filter takes its type and, for a job's
    event, that the job's ``notify:`` adds or does not silence."""
    add: set[str] = set()
    silence: set[str] = set()
    job_id = (event.get("job") or {}).get("id")
    if job_id:
        try:
            spec_notify = app.store.job(job_id).spec.get("notify") or {}
        except OrchError:
            spec_notify = {}
        add, silence = set(spec_notify.get("add") or ()), set(spec_notify.get("silence") or ())
    if "all" in silence:
        return []
    return [name for name, ch in settings.channels.items()
            if ch.wants(event["type"]) and (ch.default or name in add) and name not in silence]


def prepare(app: App, event: dict[str, Any], secrets: list[str]) -> dict[str, Any]:
    """``event`` with the outputs' place or the log's last lines, and secrets masked."""
    event = dict(event)
    job = event.get("job") or {}
    attempt_dir = app.home.results / str(job.get("id")) / f"attempt-{job.get('attempt')}" if job else None
    if event["type"] == "job.succeeded" and attempt_dir is not None:
        event["outputs"] = {"path": str(attempt_dir / "outputs"), "fetch": f"orch fetch {str(job['id'])[:8]}"}
    if event["type"] == "job.failed" and attempt_dir is not None:
        event["log_tail"] = _tail(attempt_dir / "job.log", LOG_TAIL_LINES)
    values = secrets + _job_secrets(app, job.get("id"))
    return _redact(event, values)


def send_sample(app: App, name: str | None) -> list[tuple[str, str | None]]:
    """``orch notify test``: a sample event to one channel (or all); (channel, error or None)."""
    from .events import new_event

    settings: NotifySettings = app.config.notify
    names = [name] if name else list(settings.channels)
    if name and name not in settings.channels:
        from ..errors import NotFoundError

        raise NotFoundError(f"no notify channel named '{name}'; configured: "
                            f"{', '.join(settings.channels) or 'none'} (config.yaml notify.channels)")
    event = new_event("job.succeeded", {
        "test": True, "job": {"id": "0" * 32, "name": "orch-notify-test", "state": "SUCCEEDED", "platform": "local",
                              "attempt": 1, "sweep": None, "submitted_by": ""},
        "reason": "a test sent by `orch notify test`", "result": {"status": "succeeded", "exit_code": 0,
                                                                   "runtime_s": 1.0}})
    out = []
    for n in names:
        try:
            SEND_RETRY.run(f"notify {n}", lambda: channels_mod.build(n, settings.channels[n]).send(event))
        except Exception as exc:  # noqa: BLE001 - reported per channel
            error = _redact_text(str(exc), _channel_secrets(settings))
            outbox.log(app.store, event, n, False, error)
            out.append((n, error))
            continue
        outbox.log(app.store, event, n, True)
        out.append((n, None))
    return out


# ---------------------------------------------------------------------------- helpers


def _tail(path, lines: int) -> list[str]:
    """The last lines of a (job's, so untrusted) log: at most 64 KiB read, control
    characters removed, each line capped."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 65536))
            data = f.read()
    except OSError:
        return []
    text = data.decode("utf-8", "replace").splitlines()[-lines:]
    return [channels_mod.plain(ln, 300) for ln in text]


def _channel_secrets(settings: NotifySettings) -> list[str]:
    values = []
    for ch in settings.channels.values():
        values.extend(os.environ.get(var, "") for var in ch.secret_envs())
    return [v for v in values if len(v) >= 4]


def _job_secrets(app: App, job_id: str | None) -> list[str]:
    if not job_id:
        return []
    try:
        names = app.store.job(job_id).spec.get("secrets") or []
    except OrchError:
        return []
    return [v for v in (os.environ.get(n, "") for n in names) if len(v) >= 4]


def _redact_text(text: str, values: list[str]) -> str:
    for v in sorted(values, key=len, reverse=True):
        text = text.replace(v, "***")
    return text


def _redact(doc: Any, values: list[str]) -> Any:
    """``doc`` with every secret value in its strings (keys too) replaced by ``***``."""
    if not values:
        return doc
    if isinstance(doc, str):
        return _redact_text(doc, values)
    if isinstance(doc, dict):
        return {_redact(k, values): _redact(v, values) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_redact(v, values) for v in doc]
    return doc
