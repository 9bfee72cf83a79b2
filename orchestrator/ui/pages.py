"""What each dashboard page shows, read from one App through the library (store, Planner,
actions); plain dicts and rows for the templates, no HTML here.

Everything a job or a remote wrote (names, messages, reasons, GPU names, result fields,
file names, log text) is passed on as data: the templates escape it, and the server strips
control characters from every value it renders (``server.py``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import sweep as sweep_mod
from ..durations import format_duration
from ..errors import OrchError
from ..planning import Planner
from ..states import JobState

if TYPE_CHECKING:  # pragma: no cover
    from ..app import App
    from ..store import AttemptRow, JobRow

PAGE_SIZE = 50
#: What the job page lists of a job's outputs, and what it reads of its log.
MAX_FILES = 500
LOG_TAIL_BYTES = 64 * 1024
#: Inline only raster images: an SVG or HTML output is a download, never rendered in the page.
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp"}
CHART_DAYS = 28


# ---------------------------------------------------------------------------- queue


@dataclass(frozen=True)
class Filters:
    """The queue's filters, as given in the URL (unknown values are dropped, not errors)."""

    state: str = ""
    platform: str = ""
    user: str = ""
    sweep: str = ""
    page: int = 1

    @classmethod
    def from_args(cls, args: Any) -> "Filters":
        state = args.get("state", "")
        if state not in STATE_FILTERS:
            state = ""
        try:
            page = max(1, int(args.get("page", 1)))
        except ValueError:
            page = 1
        return cls(state=state, platform=args.get("platform", "")[:64], user=args.get("user", "")[:64],
                   sweep=args.get("sweep", "")[:32].lower(), page=page)

    def states(self) -> list[JobState] | None:
        return STATE_FILTERS[self.state] if self.state else None

    def args(self, **change: Any) -> dict[str, Any]:
        """URL arguments of these filters with ``change`` applied (empty ones left out)."""
        doc = {"state": self.state, "platform": self.platform, "user": self.user, "sweep": self.sweep,
               "page": self.page, **change}
        return {k: v for k, v in doc.items() if v and not (k == "page" and v == 1)}


ACTIVE = [JobState.SUBMITTING, JobState.PENDING, JobState.RUNNING, JobState.UNKNOWN, JobState.FETCHING]
STATE_FILTERS: dict[str, list[JobState]] = {"active": ACTIVE, **{s.value: [s] for s in JobState}}


def queue(app: App, f: Filters) -> dict:
    """One page of the queue (newest first) with its filters, state counts and sweeps."""
    store = app.store
    where = dict(states=f.states(), submitted_by=f.user or None, platform=f.platform or None,
                 sweep_id=_sweep_id(app, f.sweep))
    total = store.count_jobs(**where)
    pages = max(1, -(-total // PAGE_SIZE))
    page = min(f.page, pages)
    rows = store.jobs(limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE, **where)
    latest = store.latest_attempts([j.id for j in rows])
    now = time.time()
    sweep_ids = {j.sweep_id for j in rows if j.sweep_id}
    sweeps = []
    for sweep_id, counts in sorted(store.sweep_counts(sweep_ids).items()):
        first = next(j for j in rows if j.sweep_id == sweep_id)
        sweeps.append({"id": sweep_id, "name": (first.extra.get("sweep") or {}).get("name", first.name),
                       "state": sweep_mod.overall_state(counts), "progress": sweep_mod.progress(counts),
                       "size": sum(counts.values())})
    counts = store.counts()
    return {
        "jobs": [_job_line(j, latest.get(j.id), now) for j in rows], "sweeps": sweeps, "filters": f,
        "page": page, "pages": pages, "total": total, "counts": counts, "all": sum(counts.values()),
        "active": sum(counts.get(s.value, 0) for s in ACTIVE),
        "platforms": sorted(set(app.config.names) | ({f.platform} if f.platform else set())),
        "users": store.submitters(), "state_names": list(STATE_FILTERS),
    }


def _sweep_id(app: App, ref: str) -> str | None:
    if not ref:
        return None
    try:
        return app.store.resolve_sweep(ref) or ref
    except OrchError:
        return ref


def _job_line(j: JobRow, a: AttemptRow | None, now: float) -> dict:
    runtime = a.runtime_s if a and a.runtime_s else (now - a.started_at if a and a.started_at and j.state.active else None)
    params = (j.extra.get("sweep") or {}).get("params")
    gpu = (a.gpu_name if a and a.gpu_name else None) or "/".join(j.spec.get("resources", {}).get("gpu") or []) or "none"
    return {"id": j.id, "short_id": j.short_id, "name": j.name, "state": j.state.value, "platform": j.platform or "",
            "gpu": gpu, "gpu_seen": bool(a and a.gpu_name), "tries": j.attempts, "time": format_duration(runtime),
            "age": _ago(j.created_at, now), "note": j.message, "user": j.submitted_by,
            "sweep_id": j.sweep_id, "sweep_label": sweep_mod.label(params) if params else ""}


# ---------------------------------------------------------------------------- job


def job(app: App, job_id: str) -> dict:
    """A job's header, attempt timeline (with each attempt's events), result fields and files."""
    from .. import actions

    row = app.store.job(job_id)
    attempts = app.store.attempts_of(row.id)
    events = app.store.events_of(row.id)
    now = time.time()
    start = row.created_at
    end = max([now if row.state.active or row.state == JobState.QUEUED else row.updated_at,
               *[a.ended_at or now for a in attempts if a.ended_at or not a.state.terminal]])
    span = max(end - start, 1e-6)
    lines = []
    for a in attempts:
        a_start = a.started_at or a.created_at
        a_end = a.ended_at or (now if not a.state.terminal else a_start)
        lines.append({
            "number": a.number, "platform": a.platform, "state": a.state.value, "exit_code": a.exit_code,
            "failure_class": a.failure_class or "", "message": a.message, "gpu": a.gpu_name or "",
            "runtime": format_duration(a.runtime_s), "created": _when(a.created_at), "ended": _when(a.ended_at),
            "left": round(100 * (a.created_at - start) / span, 2),
            "width": round(max(0.8, 100 * (a_end - a.created_at) / span), 2),
            "wait": round(100 * (a_start - a.created_at) / span, 2),
            "placed": next((e["reason"] for e in events if e["attempt_id"] == a.id and e["from_state"] is None), ""),
            "events": [_event(e) for e in events if e["attempt_id"] == a.id],
        })
    latest = attempts[-1] if attempts else None
    results = actions.results_dir(app, row)
    res = row.spec.get("resources", {})
    params = (row.extra.get("sweep") or {}).get("params")
    return {
        "job": row, "state": row.state.value, "attempts": lines, "active": row.state.active,
        "platforms": list(dict.fromkeys(a.platform for a in attempts)),
        "job_events": [_event(e) for e in events if e["attempt_id"] is None],
        "created": _when(row.created_at), "age": _ago(row.created_at, now), "span": format_duration(span),
        "gpu": "/".join(res.get("gpu") or []) or "none", "max_runtime": format_duration(res.get("max_runtime")),
        "sweep_label": sweep_mod.label(params) if params else "",
        "result": _flatten(latest.result) if latest and latest.result else [],
        "files": _files(results) if results else [], "results_dir": str(results) if results else "",
        "has_log": bool(latest and (latest.handle or results)),
    }


def _event(e: dict) -> dict:
    return {"when": _when(e["at"]), "kind": e["kind"], "change": f"{e['from_state'] or '·'} → {e['to_state']}",
            "to": e["to_state"], "reason": e["reason"] or "", "actor": e["actor"] or ""}


def _flatten(doc: Any, prefix: str = "", out: list | None = None, depth: int = 0) -> list[tuple[str, str]]:
    """result.json as ``(dotted key, value)`` lines, nested objects one level per dot,
    long values cut (it is the job's own file: untrusted, any size)."""
    out = [] if out is None else out
    if isinstance(doc, dict) and depth < 4:
        for k, v in list(doc.items())[:200]:
            _flatten(v, f"{prefix}{k}.", out, depth + 1)
    else:
        text = doc if isinstance(doc, str) else json.dumps(doc, default=str)
        out.append((prefix[:-1] or "value", text if len(text) <= 500 else text[:500] + "…"))
    return out


def _files(root: Path) -> list[dict]:
    """The job's stored results (regular files only, never a link), images marked for inline display."""
    out = []
    for p in sorted(root.rglob("*")):
        if len(out) >= MAX_FILES:
            break
        if p.is_symlink() or not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        out.append({"path": rel, "size": _size(p.stat().st_size), "image": p.suffix.lower() in IMAGE_TYPES})
    return out


def result_file(app: App, job_id: str, rel: str) -> Path | None:
    """The stored result file ``rel`` of a job, or None when it is not one (outside the
    results, a link, a folder, missing)."""
    from .. import actions

    root = actions.results_dir(app, app.store.job(job_id))
    if root is None or not rel or "\\" in rel or any(part in ("", ".", "..") for part in rel.split("/")):
        return None
    path = root / rel
    if any(p.is_symlink() for p in [path, *path.parents] if p != root and root in p.parents):
        return None
    if path.is_symlink() or not path.is_file() or root.resolve() not in path.resolve().parents:
        return None
    return path


def log_tail(app: App, job_id: str) -> dict:
    """The last ``LOG_TAIL_BYTES`` of the job's latest attempt's log (the stored copy once
    fetched, else the platform's live log), and whether the job still runs."""
    from ..logtail import LogTail, Piece

    row = app.store.job(job_id)
    try:
        piece = LogTail(app, row.id).read()
    except Exception as exc:  # e.g. a platform's client not installed here: said, not a broken page
        piece = Piece(found=False, problem=f"{type(exc).__name__}: {exc}")
    text = piece.text[-LOG_TAIL_BYTES:]
    return {"text": text, "cut": len(piece.text) > len(text), "found": piece.found, "problem": piece.problem,
            "state": row.state.value, "active": row.state.active or row.state == JobState.QUEUED}


# ---------------------------------------------------------------------------- quota


def quota(app: App) -> dict:
    """Each platform's budget now (used, reserved, left, reset) and its use per day."""
    from .. import quota as quota_mod

    now = time.time()
    states, _running = _CachedPlanner(app).budget_states(now, usage_for_all=True)
    day0 = (int(now // 86400) - CHART_DAYS + 1) * 86400
    per_day: dict[str, list[float]] = {name: [0.0] * CHART_DAYS for name in states}
    for platform, amount, start, end in app.store.ledger_charges(list(states), day0):
        first, last = max(0, int((start - day0) // 86400)), min(CHART_DAYS - 1, int((end - day0) // 86400))
        for d in range(first, last + 1):  # only the days this charge touches
            lo = day0 + d * 86400
            per_day[platform][d] += quota_mod.overlap(amount, start, end, lo, lo + 86400)
    out = []
    for name, st in states.items():
        b = st.budget
        left = st.left()
        limit = st.limit
        used, reserved = st.used, st.reserved()
        scale = limit if limit else max(used + reserved, 1e-9)
        days = per_day[name]
        peak = max(days) or 1.0
        out.append({
            "platform": name, "unit": quota_mod.UNIT_NAMES.get(b.unit, b.unit), "used": used, "reserved": reserved,
            "left": left, "limit": limit, "window": b.window.describe(), "source": st.source,
            "used_pct": round(min(100.0, 100 * used / scale), 2),
            "reserved_pct": round(min(100.0 - min(100.0, 100 * used / scale), 100 * reserved / scale), 2),
            "resets_at": st.resets_at if st.resets_at < quota_mod.INF else None,
            "resets": _reset_text(st.resets_at, now),
            "days": [{"day": time.strftime("%a %d %b", time.gmtime(day0 + i * 86400)), "amount": v,
                      "height": round(100 * v / peak, 2)} for i, v in enumerate(days)],
            "total": sum(days), "peak": max(days),
        })
    return {"platforms": out, "days": CHART_DAYS}


def _reset_text(resets_at: float, now: float) -> str:
    from ..windows import INF, format_reset

    if resets_at >= INF:
        return "never"
    return f"{format_reset(resets_at)} (in {format_duration(max(0.0, resets_at - now))})"


class _CachedPlanner(Planner):
    """The Planner, but a page view never calls a platform for its live quota nor writes
    the cache: it shows the reading the last tick or ``orch quota --refresh`` stored
    (``source`` says which), however old.

    Design choice: the dashboard is read-only and must stay fast; a live read is a network
    call (Kaggle's quota endpoint) that a page load would otherwise wait on."""

    def live_quota(self, name: str, refresh: bool = False, ttl: float = 600.0):
        from .. import quota as quota_mod

        cached = self.store.meta_get(f"quota:{name}")
        if not cached:
            return None
        try:
            return quota_mod.reading_from_json(json.loads(cached).get("reading"))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


# ---------------------------------------------------------------------------- platforms


def platforms(app: App) -> dict:
    """Each configured platform: what it offers, how many attempts run there, its problems
    (the same checks as ``orch platforms``)."""
    offers = _CachedPlanner(app).offers()
    running = app.store.active_counts()
    out = []
    for name, offer in offers.items():
        try:
            problems = app.platform(name).check()
        except OrchError as exc:
            problems = [str(exc)]
        except Exception as exc:  # a bug in one platform's check: shown on its line, the page still loads
            problems = [f"its check failed: {type(exc).__name__}: {exc}"]
        ready = offer.available and not problems
        out.append({
            "name": name, "type": offer.type, "gpus": "/".join(offer.gpus) or "CPU", "running": running.get(name, 0),
            "max_concurrent": offer.max_concurrent, "internet": offer.internet, "tier": offer.tier or "",
            "session": format_duration(offer.session_seconds) if offer.session_seconds else "none",
            "ready": ready, "problems": problems if problems else ([] if offer.available else [offer.reason]),
        })
    return {"platforms": out}


def health(app: App) -> list[dict] | None:
    """The ``orch doctor`` checklist (config, state, disk, cron, credentials, logins,
    notifications, stuck jobs, quota forecast) where this orch has it, else None (the
    platforms table above is then the health). Each check is guarded by doctor itself."""
    if not (Path(__file__).resolve().parents[1] / "doctor.py").is_file():
        return None  # (checked on disk: an editable install of another checkout could serve one)
    from .. import doctor

    return [{"name": c.name, "status": c.status, "detail": c.detail, "fix": c.fix} for c in doctor.run(app)]


# ---------------------------------------------------------------------------- small helpers


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts else "-"


def _ago(ts: float | None, now: float) -> str:
    return format_duration(max(0.0, now - ts)) + " ago" if ts else "-"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
