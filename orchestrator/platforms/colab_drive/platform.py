"""Colab through Google Drive: jobs go into a Drive mailbox, an agent notebook runs them.

Many Colab users keep a notebook open and move files through Drive. This backend
serves them: ``submit`` uploads the bundle to Drive (datasets once, by content hash)
and writes a ticket into the inbox of one agent (``kernels/colab_agent.py``, started
from the notebook ``orch colab agent-notebook NAME`` writes), chosen because its
heartbeat is fresh, it is idle, its GPU fits and its session has time left for the
job. The agent runs the job with ``kernels/runner.py`` and puts status and artefacts
back in the run's folder; ``poll``/``logs``/``fetch`` read them. See
``mailbox.py`` for the layout and ``docs/platforms/colab_drive.md`` for setup.

Tier rule: Colab's FAQ bans "running distributed computing workers" on free runtimes
without a positive compute-unit balance, and a notebook polling a queue is one; with
``tier: free`` the platform is unavailable and says why.

Config::

    platforms:
      gdrive: {type: colab_drive, folder: orch, credentials: ~/client_secret.json, tier: pro}
"""

from __future__ import annotations

import secrets
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Mapping

import google_auth_httplib2
from googleapiclient.http import build_http
from pydantic import Field

from ...errors import (
    CapacityError, ConfigError, LostError, PlatformError, PrecheckError, CredentialsError, TransientError,
)
from ..base import Feature, Handle, Launch, LogChunk, Offer, PlatformBase, RemoteState, RemoteStatus
from ...gpus import COLAB_PLAN_UNITS
from ...quota import Budget
from ...settings import Duration, PlatformSettings, PositiveDuration
from .client import build_drive, drive_errors, load_credentials, save_credentials
from .mailbox import AgentInfo, Mailbox, drive_time
from ...partfile import PartFile
from .transfer import DRIVE_CALLS, Transfers, UploadJournal

PAID_TIERS = ("pro", "pro+", "pay-as-you-go")
#: At most this much log is read per ``logs`` call.
LOG_READ_MAX = 8 * 1024 * 1024
FREE_TIER_REASON = (
    "Colab's terms ban running distributed-computing workers on free runtimes, and an agent notebook "
    "polling a Drive queue is one (research.google.com/colaboratory/faq.html); set tier: pro, pro+ or "
    "pay-as-you-go (with compute units left), or use the kaggle platform"
)
UNSUPPORTED = {
    Feature.SECRETS: "the Drive mailbox would keep secrets in a Drive file; run jobs with secrets on an ssh or kaggle platform",
}


class ColabDriveSettings(PlatformSettings):
    """``type: colab_drive`` entries of config.yaml."""

    type: Literal["colab_drive"] = "colab_drive"
    #: Folder in My Drive that holds the mailbox (created on first use).
    folder: str = "orch"
    #: The OAuth client file (Desktop app) from Google Cloud console, for ``orch auth drive``.
    credentials: str
    #: Your Colab plan; ``free`` is refused (see FREE_TIER_REASON).
    tier: Literal["free", "pro", "pro+", "pay-as-you-go"]
    #: At most this many agents work for orch at once.
    max_concurrent: int = Field(default=8, ge=1)
    #: An agent whose heartbeat is older than this is not given work, and its jobs
    #: read UNKNOWN (the controller's unknown_window then makes them LOST). Durations
    #: are written like "3m" or "45s".
    heartbeat_stale: PositiveDuration = 180.0
    #: Reserved per job on top of max_runtime (download, setup, upload, grace).
    setup_margin: Duration = 120.0
    chunk_mb: int = Field(default=8, ge=1, le=1024)
    #: Tries of one Drive call (truncated exponential backoff with jitter from backoff_base).
    retries: int = Field(default=6, ge=1, le=20)
    backoff_base: PositiveDuration = 1.0
    timeout: PositiveDuration = 60.0
    #: Drive API root and OAuth token endpoint; only for tests and proxies.
    endpoint: str | None = None
    token_uri: str | None = None


class ColabDrivePlatform(PlatformBase):
    """Jobs run by agent notebooks in Colab, through a Drive mailbox."""

    settings_model = ColabDriveSettings
    settings: ColabDriveSettings

    def __init__(self, name: str, settings: PlatformSettings, home: Any) -> None:
        super().__init__(name, settings, home)
        self._mailbox: Mailbox | None = None
        self._sign_in_problem = ""

    # ---- plumbing
    @property
    def token_path(self) -> Path:
        """Where ``orch auth drive NAME`` keeps the OAuth token (mode 0600)."""
        return self.home.platform_dir(self.name) / "token.json"

    @property
    def session_seconds(self) -> float:
        hours = self.settings.session_hours or 24.0  # paid runtimes: up to 24 h
        return hours * 3600.0

    def mailbox(self) -> Mailbox:
        """The Drive mailbox, built once per platform object (one CLI call or tick).

        Raises:
            PrecheckError: no token file (run ``orch auth drive``).
            CredentialsError: a token Google refuses to refresh (run ``orch auth drive``).
        """
        if self._mailbox is None:
            creds = load_credentials(self.token_path, self.name, self.settings.token_uri)
            if not creds.valid:
                with drive_errors("refresh the Google token", self.name):
                    creds.refresh(google_auth_httplib2.Request(build_http()))
                save_credentials(creds, self.token_path)
            s = self.settings
            service = build_drive(creds, s.endpoint, s.timeout)
            journal = UploadJournal(self.home.platform_dir(self.name) / "uploads")
            backoff = DRIVE_CALLS.replace(base=s.backoff_base, cap=32.0 * s.backoff_base, attempts=s.retries)
            transfers = Transfers(service, journal, self.name, backoff, chunk_size=s.chunk_mb * 1024 * 1024)
            self._mailbox = Mailbox(transfers, s.folder, self.controller_id,
                                    root_file=self.home.platform_dir(self.name) / "root.json")
        return self._mailbox

    @property
    def controller_id(self) -> str:
        """This orch home's identity on Drive (made once, kept under the orch home)."""
        path = self.home.platform_dir(self.name) / "controller-id"
        try:
            return path.read_text().strip()
        except OSError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(6) + "\n")
        return path.read_text().strip()

    def _reading(self) -> Mailbox:
        """The mailbox for a status read. A token problem is ``CredentialsError``: the runs go
        on while orch cannot read them, so it must never fail or lose a job."""
        try:
            return self.mailbox()
        except PrecheckError as exc:
            self._sign_in_problem = str(exc)
            raise CredentialsError(str(exc), self.name) from exc

    # ---- capabilities
    @classmethod
    def default_budget(cls, settings: PlatformSettings) -> Budget:
        """A paid Colab plan's compute units a month (see ``gpus.COLAB_PLAN_UNITS``)."""
        assert isinstance(settings, ColabDriveSettings)
        return (Budget.monthly_units(COLAB_PLAN_UNITS.get(settings.tier), f"default for Colab {settings.tier.title()}")
                or super().default_budget(settings))

    def offer(self) -> Offer:
        base = dict(platform=self.name, type="colab_drive", tier=self.settings.tier, internet=True,
                    unsupported=UNSUPPORTED, session_seconds=self.session_seconds)
        if self.settings.tier not in PAID_TIERS:
            return Offer(**base, available=False, reason=FREE_TIER_REASON)
        try:
            agents = self.mailbox().agents()
        except PlatformError as exc:
            if isinstance(exc, (CredentialsError, PrecheckError)):
                self._sign_in_problem = str(exc)
            return Offer(**base, available=False, reason=str(exc))
        now = time.time()
        fresh = [a for a in agents if a.fresh(now, self.settings.heartbeat_stale)]
        if not fresh:
            return Offer(**base, available=False, reason=self._no_agent_reason())
        idle = [a for a in fresh if _idle(a)]
        left = max((a.time_left(now) for a in idle), default=0.0) - self.settings.setup_margin
        mem = [a.gpu_memory_gb for a in fresh if a.gpu_memory_gb]
        return Offer(
            **base,
            gpus=tuple(sorted({a.gpu for a in fresh if a.gpu})),
            gpu_memory_gb=max(mem) if mem else None,
            gpu_count=max((a.gpu_count for a in fresh), default=0),
            max_concurrent=min(len(fresh), self.settings.max_concurrent),
            time_left_seconds=max(0.0, left),
            available=bool(idle),
            reason="" if idle else f"all {len(fresh)} agent(s) are busy",
        )

    def submit_warnings(self) -> list[str]:
        """The token problem ``offer`` ran into: jobs queued now wait for ``orch auth drive``."""
        return [self._sign_in_problem] if self._sign_in_problem else []

    def refused_login(self) -> str | None:
        """Google refused the token (or there is none) in this command."""
        return self._sign_in_problem or None

    def _no_agent_reason(self) -> str:
        return (f"no agent has sent a heartbeat to Drive folder '{self.settings.folder}' in the last "
                f"{self.settings.heartbeat_stale:g}s; open the agent notebook in Colab "
                f"(orch colab agent-notebook {self.name})")

    def check(self) -> list[str]:
        problems = []
        if not Path(self.settings.credentials).expanduser().is_file():
            problems.append(f"platforms.{self.name}.credentials: {self.settings.credentials} does not exist; "
                            f"download the Desktop OAuth client JSON (see docs/platforms/colab_drive.md)")
        if self.settings.tier not in PAID_TIERS:
            return [FREE_TIER_REASON, *problems]  # refused: do not even touch Drive
        try:
            agents = self.mailbox().agents()
            others = self.mailbox().other_controllers()
        except PlatformError as exc:
            problems.append(str(exc))
        else:
            if not any(a.fresh(time.time(), self.settings.heartbeat_stale) for a in agents):
                problems.append(self._no_agent_reason())
            if others:
                problems.append(
                    f"another orch controller ({', '.join(sorted(others))}) posts jobs in Drive folder "
                    f"'{self.settings.folder}' too; give each orch home its own folder "
                    f"(platforms.{self.name}.folder) so their agents and clean-ups stay apart")
        return problems

    # ---- submit
    def submit(self, launch: Launch) -> Handle:
        if self.settings.tier not in PAID_TIERS:
            raise PrecheckError(FREE_TIER_REASON, self.name)
        if launch.secrets:
            raise PrecheckError(f"job {launch.job_name}: {UNSUPPORTED[Feature.SECRETS]}", self.name)
        try:
            mb = self.mailbox()
        except (PrecheckError, CredentialsError) as exc:
            # The job is fine; the token is not. Keep the job queued (it may go elsewhere).
            raise CapacityError(str(exc), self.name) from exc
        existing = mb.run_folder(launch.key)
        if existing is not None:
            if _posted(existing):
                return mb.handle(existing)  # submitted before: never start a second run
            mb.t.delete(existing["id"])  # a crash left a run folder without its ticket
        agent = self._choose_agent(mb, launch)
        inputs = mb.upload_inputs(launch)
        run = mb.open_run(launch, agent)
        return mb.handle(mb.post_ticket(launch, agent, run, inputs))

    def _choose_agent(self, mb: Mailbox, launch: Launch) -> AgentInfo:
        """The idle agent with the least time left that still fits the job (best fit)."""
        now = time.time()
        runtime = launch.max_runtime_s
        if launch.session_seconds:
            runtime = min(runtime, launch.session_seconds)
        need = runtime + launch.grace_s + self.settings.setup_margin
        pending = {t.get("properties", {}).get("orch_agent") for t in mb.all_tickets()}
        fresh = [a for a in mb.agents() if a.fresh(now, self.settings.heartbeat_stale)]
        if not fresh:
            raise CapacityError(self._no_agent_reason(), self.name)
        idle = [a for a in fresh if _idle(a) and a.id not in pending]
        fitting = [a for a in idle if a.time_left(now) >= need and _gpu_fits(a, launch)]
        if not fitting:
            best = max((a.time_left(now) for a in idle), default=None)
            why = (f"all {len(fresh)} agent(s) are busy" if best is None else
                   f"no idle agent fits: the job needs {need:.0f}s (max_runtime + grace + setup margin) "
                   f"and the best idle agent has {best:.0f}s left, or its GPU does not match")
            raise CapacityError(why, self.name)
        return min(fitting, key=lambda a: (a.time_left(now), a.id))

    def find(self, key: str) -> Handle | None:
        """The run for ``key`` if its ticket was posted (a run folder without a ticket is
        what a crash between the two writes leaves: submit then starts over)."""
        mb = self._reading()
        folder = mb.run_folder(key)
        if folder is None or not _posted(folder):
            return None
        return mb.handle(folder)

    # ---- status
    def poll(self, handle: Handle) -> RemoteStatus:
        mb = self._reading()
        status = self._status(mb, handle)
        if status is not None and status.get("state") == "exited":
            return RemoteStatus(RemoteState.EXITED, status.get("message", ""), exit_code=status.get("exit_code"),
                                heartbeat_at=status.get("updated_at"))
        if status is not None and status.get("state") == "rejected":
            return RemoteStatus(RemoteState.LOST, f"agent {status.get('agent')} refused it: {status.get('message')}")
        try:
            agent = mb.agent(handle.data["heartbeat"], self.settings.heartbeat_stale)
        except LostError as exc:
            raise LostError(f"agent {handle.data.get('agent')} is gone (its heartbeat file was deleted)",
                            self.name) from exc
        now = time.time()
        if agent.state == "stopped":
            return RemoteStatus(RemoteState.LOST, f"agent {agent.id} stopped before the job finished")
        if not agent.fresh(now, self.settings.heartbeat_stale):
            return RemoteStatus(RemoteState.UNKNOWN, f"agent {agent.id} silent for {agent.age(now):.0f}s")
        telemetry = {"agent": agent.id, "gpu": agent.gpu, "time_left_s": round(agent.time_left(now))}
        if status is None or status.get("state") == "new":
            # The agent writes status.json before it deletes the ticket: read the status
            # again after seeing no ticket, so a run taken meanwhile is not called lost.
            if not mb.ticket_waiting(handle) and (self._status(mb, handle) or {}).get("state", "new") == "new":
                return RemoteStatus(RemoteState.LOST, f"the ticket left agent {agent.id}'s inbox untaken "
                                                      "(deleted by a clean-up or a cancel)")
            return RemoteStatus(RemoteState.PENDING, f"in agent {agent.id}'s inbox", heartbeat_at=agent.modified,
                                telemetry=telemetry)
        telemetry.update(status.get("telemetry") or {})
        return RemoteStatus(RemoteState.RUNNING, status.get("message", ""), heartbeat_at=agent.modified,
                            telemetry=telemetry)

    def _status(self, mb: Mailbox, handle: Handle) -> dict[str, Any] | None:
        if not handle.data.get("run"):
            raise LostError(f"{handle.key}: no run folder recorded", self.name)
        try:
            return mb.read_status(handle)
        except LostError as exc:
            raise LostError(f"{handle.key}: the run's folder in Drive is gone ({exc})", self.name) from exc

    def _run_files(self, mb: Mailbox, handle: Handle) -> dict[str, dict[str, Any]]:
        run = handle.data.get("run")
        if not run:
            raise LostError(f"{handle.key}: no run folder recorded", self.name)
        files = mb.run_files(run)
        if not files:
            mb.t.get(run, "id")  # an empty listing may mean the folder is gone: LostError then
        return files

    def logs(self, handle: Handle, offset: int = 0) -> LogChunk:
        """The log from ``offset``: from the final ``job.log`` once the run ended, else from
        the increments the agent uploads while it runs (``job.log.NNNNNN``)."""
        mb = self._reading()
        status = self._status(mb, handle) or {}
        done = status.get("state") == "exited"
        final = (status.get("artefacts") or {}).get("job.log")
        if final:
            size = int(final.get("size", 0))
            if offset >= size:
                return LogChunk("", offset, complete=done)
            data = mb.t.read_range(final["id"], offset, min(size, offset + LOG_READ_MAX))
            return LogChunk(data.decode("utf-8", "replace"), offset, complete=offset + len(data) >= size)
        if done:
            return LogChunk("", offset, complete=True)
        data = b""
        for start, part in mb.log_parts(handle.data["run"]):
            pos, end = offset + len(data), start + int(part.get("size", 0))
            if end <= pos:
                continue
            if start > pos or len(data) >= LOG_READ_MAX:
                break  # the next part is not listed yet (listings lag), or enough for now
            data += mb.t.read_range(part["id"], pos - start, end - start)
        return LogChunk(data.decode("utf-8", "replace"), offset, complete=False)

    def fetch(self, handle: Handle, dest: Path) -> None:
        mb = self._reading()
        status = self._status(mb, handle) or {}
        if status.get("state") != "exited":
            raise TransientError(f"{handle.key}: the run has not finished yet", self.name)
        for name, art in (status.get("artefacts") or {}).items():
            if "/" in name or name.startswith("."):
                raise LostError(f"{handle.key}: refusing artefact name {name!r}", self.name)
            if PartFile(dest / name, size=int(art["size"])).complete():
                continue  # fetched on an earlier tick (``dest`` is the controller's staging)
            mb.t.download(art["id"], dest / name, size=int(art["size"]), sha256=art["sha256"])

    def cancel(self, handle: Handle) -> None:
        self._reading().cancel(handle)

    def release(self, handle: Handle) -> None:
        self._reading().release(handle)

    # ---- clean-up
    def garbage(self, older_than_s: float, keep: set[str] = frozenset(),
                last_used: Mapping[str, float] | None = None) -> list[tuple[str, str, datetime | None]]:
        """What orch made in the Drive folder and nothing used for ``older_than_s``:
        (kind, ref, last use). Blobs are touched whenever a job reuses them, and nothing
        newer than this controller's oldest live run is listed (that run may still read
        it); agent folders count from their last heartbeat. ``keep``/``last_used`` are
        the Kaggle shape of the same question and are not needed here.
        """
        mb = self.mailbox()
        before = time.time() - older_than_s
        live = [drive_time(r.get("createdTime")) for r in mb.runs()]
        if live:
            before = min(before, min(live))
        return [(kind, _gc_ref(f), datetime.fromtimestamp(drive_time(f.get("modifiedTime")), timezone.utc))
                for kind, f in mb.garbage(before)]

    def delete(self, kind: str, ref: str) -> None:
        """Delete one thing ``garbage`` listed; refuses anything orch did not make."""
        file_id = ref.rpartition("[")[2].rstrip("]")
        mb = self.mailbox()
        if not file_id or not mb.owned(file_id):
            raise PrecheckError(f"refusing to delete {kind} {ref}: orch did not create it", self.name)
        mb.t.delete(file_id)

    def reconcile(self, active_keys: set[str]) -> None:
        """Delete this controller's tickets and run folders that no active attempt owns (a
        cancelled job, a crashed tick): an agent drops a ticket whose run folder is gone and
        stops a job whose run folder disappears, so no agent keeps working for nobody.
        Another controller's (another orch home on the same account) are never touched."""
        if self.settings.tier not in PAID_TIERS:
            return
        mb = self._reading()
        for ticket in mb.tickets():
            if (ticket.get("properties") or {}).get("orch_key") not in active_keys:
                mb.t.delete(ticket["id"])
        for run in mb.runs():
            if (run.get("properties") or {}).get("orch_key") not in active_keys:
                mb.t.delete(run["id"])


def _gc_ref(f: Mapping[str, Any]) -> str:
    return f"{f.get('name', '?')} [{f['id']}]"


def _posted(run_folder: Mapping[str, Any]) -> bool:
    """Whether the run folder carries the mark ``Mailbox.post_ticket`` writes last."""
    return bool((run_folder.get("properties") or {}).get("orch_ticket"))


def _idle(agent: AgentInfo) -> bool:
    return agent.state == "idle" and not agent.job


def _gpu_fits(agent: AgentInfo, launch: Launch) -> bool:
    """Whether the agent's GPU is one the job accepts (the scheduler only sees the union)."""
    res = getattr(getattr(launch, "spec", None), "resources", None)
    if res is None:
        return True
    if res.wants_gpu and not res.cpu_fallback and agent.gpu_count < max(1, res.gpus_needed):
        return False  # gpu: any never lands on a CPU-only agent
    wanted = [g for g in (getattr(res, "gpu", None) or []) if g not in ("any", "none")]
    if wanted and agent.gpu not in wanted and not (res.cpu_fallback and agent.gpu_count == 0):
        return False
    need_mem = getattr(res, "min_gpu_memory_gb", None)
    return not (need_mem and agent.gpu_memory_gb and agent.gpu_memory_gb < need_mem)


def agent_settings_problem(settings: ColabDriveSettings, name: str) -> None:
    """Raise ConfigError when this platform must not start an agent (free tier)."""
    if settings.tier not in PAID_TIERS:
        raise ConfigError(f"platforms.{name}.tier: {FREE_TIER_REASON}")
