"""The contract every platform backend implements, and the registry of backend types.

A platform object is cheap and holds no job state: the controller keeps all state in
the store and hands the platform a :class:`Launch` to start and a :class:`Handle` to
look at. Everything a backend writes to the store goes through ``Handle.data``, which
must be JSON-serialisable and must never contain a secret.

What the runner leaves in an attempt directory, on every platform (``fetch`` brings
these back under the same names; only ``result.json`` and ``job.log`` are mandatory)::

    result.json        exit code, timings, GPU, failure class (written last, atomically)
    job.log            the job's stdout+stderr (secret values masked)
    outputs.tar.gz     declared outputs + everything in $ORCH_OUTPUT_DIR
    checkpoint.tar.gz  the checkpoint directory, when the job declares one
    heartbeat.json     liveness, refreshed every few seconds while running
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Protocol

from ..errors import ConfigError
from ..quota import Budget, QuotaReading, SiteUsage
from ..settings import PlatformSettings

if TYPE_CHECKING:  # pragma: no cover
    from ..bundle import Bundle
    from ..home import Home
    from ..spec import JobSpec

#: Files fetch() brings back from an attempt directory.
ARTIFACTS = ("result.json", "job.log", "outputs.tar.gz", "checkpoint.tar.gz")


def runner_path() -> Path:
    """The one runner script every platform executes (``kernels/runner.py``)."""
    import kernels

    return Path(kernels.__file__).resolve().parent / "runner.py"


class Feature(str, Enum):
    """What a platform may be unable to do for a job; ``Offer.unsupported`` maps each
    feature it lacks to a reason a person can read."""

    SECRETS = "secrets"        # receive the job's secrets from this controller
    CANCEL = "cancel"          # stop a run before its deadline
    INTERNET = "internet"      # let the job reach the internet
    CHECKPOINT = "checkpoint"  # keep a checkpoint between chain segments
    OFFLINE_SETUP = "offline_setup"  # pip-install setup: packages from an index with internet: false


@dataclass(frozen=True)
class Offer:
    """What a platform can run right now; capabilities are data, not branches.

    Attributes:
        gpus: GPU types on offer, e.g. ("T4",); () means CPU only.
        gpu_memory_gb: memory per GPU, when known.
        gpu_count: GPUs per session.
        max_concurrent: attempts this platform may run at once.
        session_seconds: the longest a single attempt may run; None = no limit.
        time_left_seconds: for platforms whose sessions are already running (a Colab
            agent), the time left in the best one; None when not applicable.
        quota_left_seconds: GPU time left in the platform's own quota window (Kaggle's
            weekly GPU hours); None when unknown or unlimited. A GPU job that may run
            longer is not placed there.
        quota_resets_at: when that quota refills (epoch seconds), if known.
        internet: whether jobs can reach the internet.
        tier: free / pro / ... where the platform has tiers.
        unsupported: ``{Feature: reason a person can read}`` for what it cannot do.
        available: False when the platform cannot take work now (reason says why).
    """

    platform: str
    type: str
    gpus: tuple[str, ...] = ()
    gpu_memory_gb: float | None = None
    gpu_count: int = 0
    max_concurrent: int = 1
    session_seconds: float | None = None
    time_left_seconds: float | None = None
    quota_left_seconds: float | None = None
    quota_resets_at: float | None = None
    internet: bool = True
    tier: str | None = None
    unsupported: Mapping[Feature, str] = field(default_factory=dict)
    available: bool = True
    reason: str = ""
    #: When an unavailable platform is expected to take work again (epoch), if known.
    available_at: float | None = None
    #: The shortest chain segment worth starting (PlatformSettings.min_segment).
    min_segment_seconds: float = 600.0


@dataclass(frozen=True)
class Launch:
    """Everything ``submit`` needs to start one attempt.

    Attributes:
        key: unique per attempt and deterministic (``o<job id prefix>-<n>``, lower-case
            letters, digits and dashes, >= 5 chars): the name a backend gives the
            remote run so that ``find(key)`` can adopt it after a crash.
        job_id, job_name, attempt: identity, passed to the runner.
        spec: the validated job spec (resources, internet, ...).
        bundle: code + datasets, content-addressed files on local disk.
        max_runtime_s: the runner enforces this deadline itself.
        session_seconds: when set, the runner stops the job ``grace_s`` before the
            session ends (checkpointing chains).
        grace_s: SIGTERM -> SIGKILL grace, and the lead before a session deadline.
        env: extra plain environment for this attempt (e.g. sweep parameters).
        secrets: secret values resolved on this controller; held in memory only.
        checkpoint: a checkpoint archive to restore before the job starts.
        previous: the handle of the attempt whose checkpoint this continues.
        guard: call it right before the side effect that creates the run (after any
            long upload or wait), then check ``find(key)`` once more: it raises
            ``errors.LeaseLost`` when this controller no longer holds the job, and
            ``submit`` must then let that error out and start nothing.
    """

    key: str
    job_id: str
    job_name: str
    attempt: int
    spec: "JobSpec"
    bundle: "Bundle"
    max_runtime_s: float
    session_seconds: float | None = None
    grace_s: float = 30.0
    env: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    checkpoint: Path | None = None
    previous: "Handle | None" = None
    guard: Callable[[], None] = field(default=lambda: None, repr=False, compare=False)

    def runner_args(self) -> list[str]:
        """The runner's command-line options for this launch (paths excluded)."""
        args = [
            "--job-id", self.job_id,
            "--job-name", self.job_name,
            "--attempt", str(self.attempt),
            "--max-runtime", f"{self.max_runtime_s:g}",
            "--grace", f"{self.grace_s:g}",
        ]
        if self.session_seconds is not None:
            args += ["--session-seconds", f"{self.session_seconds:g}"]
        return args

    def runner_env(self) -> dict[str, Any]:
        """The JSON document the runner reads with ``--env-stdin``: env + secrets.

        Secrets travel this way (a pipe), never on a command line or in a file.
        """
        return {"env": dict(self.env), "secrets": dict(self.secrets)}


@dataclass(frozen=True)
class Handle:
    """How a backend finds its remote run again; stored as JSON in the attempts table."""

    key: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "data": dict(self.data)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "Handle":
        return cls(key=doc["key"], data=dict(doc.get("data") or {}))


class RemoteState(str, Enum):
    """What a status read says about a remote run."""

    PENDING = "PENDING"    # accepted, not started (queued, uploading, setting up)
    RUNNING = "RUNNING"
    EXITED = "EXITED"      # the run ended; artefacts can be fetched (success or not)
    LOST = "LOST"          # the run is gone and will not produce artefacts
    UNKNOWN = "UNKNOWN"    # cannot tell right now (host unreachable, agent silent)


@dataclass(frozen=True)
class RemoteStatus:
    state: RemoteState
    message: str = ""
    exit_code: int | None = None
    heartbeat_at: float | None = None
    telemetry: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LogChunk:
    """Log text from ``offset`` on; ``complete`` once the run ended and all was read."""

    text: str
    offset: int
    complete: bool = False


class Platform(Protocol):
    """One remote (or local) place that runs attempts: every hook the controller uses.

    Backends subclass :class:`PlatformBase`, which supplies the defaults stated here
    for the optional hooks (``quota``, ``site_usage``, ``check``, ``release``, ``reconcile``,
    ``close``, ``default_budget`` and the class facts). Every method maps its client
    library's errors onto ``errors.PlatformError`` subclasses.
    """

    #: The pydantic model of this backend's config entry.
    settings_model: ClassVar[type[PlatformSettings]]
    #: True when runs live on the machine whose controller started them (``local``):
    #: in team mode other machines' controllers leave those attempts alone. Default False.
    host_bound: ClassVar[bool]
    #: True when ``reconcile`` must run every tick, even one that did not touch this
    #: platform (Colab: a runtime left by a crashed tick costs money). Default False.
    reconcile_every_tick: ClassVar[bool]

    name: str
    settings: PlatformSettings
    home: "Home"

    @classmethod
    def default_budget(cls, settings: PlatformSettings) -> Budget:
        """The budget of an entry that sets no ``budget:``: the type's published limits
        (Kaggle's weekly GPU hours, a Colab plan's compute units). Default: unlimited."""
        ...

    def offer(self) -> Offer:
        """What can run here now. Must be cheap; must not raise for an unreachable remote
        (return ``available=False`` with a reason instead)."""
        ...

    def quota(self) -> QuotaReading | None:
        """A live quota reading, or None when the platform exposes none (or the read
        failed: an unclear read must not exclude the platform). Default None."""
        ...

    def site_usage(self) -> SiteUsage | None:
        """The site's own usage figure (Slurm's ``sshare``), which ``orch quota`` shows
        beside orch's count; None when the site says nothing. Must not raise: an
        unclear read shows nothing. Default None."""
        ...

    def check(self) -> list[str]:
        """Problems that stop this platform from working (missing CLI, credentials), each
        a sentence saying how to fix it. Empty when ready. Used by ``orch platforms``."""
        ...

    def submit_warnings(self) -> list[str]:
        """Problems a job queued for this platform now will wait on (a dead token), found
        while ``offer`` was read; ``orch submit`` prints them. Never touches the network."""
        ...

    def refused_login(self) -> str | None:
        """The platform's refusal of orch's key or token seen by this command (its message,
        with the fix), or None. The controller asks at the end of a tick, and a refusal
        becomes a ``login.expiring`` event. Never touches the network."""
        ...

    def submit(self, launch: Launch) -> Handle:
        """Start ``launch``. Idempotent on ``launch.key``: a second call for a key that
        already started returns the first run's handle and starts nothing.

        Raises:
            TransientError: try again later. CapacityError: no room now.
            PrecheckError: this job can never run here.
        """
        ...

    def find(self, key: str) -> Handle | None:
        """The handle of the run started for ``key``, or None when the platform has no
        trace of it (then the controller submits it again)."""
        ...

    def poll(self, handle: Handle) -> RemoteStatus:
        """Read the run's state. A failed read raises TransientError (or returns
        UNKNOWN); it is never a job failure."""
        ...

    def logs(self, handle: Handle, offset: int = 0) -> LogChunk:
        """The job log from byte ``offset`` on (``orch logs -f`` calls this in a loop)."""
        ...

    def fetch(self, handle: Handle, dest: Path) -> None:
        """Download the run's artefacts (see ``ARTIFACTS``) into the empty directory
        ``dest``, writing nothing outside it. Idempotent."""
        ...

    def cancel(self, handle: Handle) -> None:
        """Stop the run (kill its process group). Where the platform cannot (it lists
        ``Feature.CANCEL`` in ``Offer.unsupported``), record nothing and return: the
        controller ignores the run's results."""
        ...

    def release(self, handle: Handle) -> None:
        """Free what the run holds remotely (attempt dir, runtime) once its artefacts are
        fetched or it is abandoned. Idempotent. Default: nothing to free."""
        ...

    def reconcile(self, active_keys: set[str]) -> None:
        """Clean up remote things orch created that no active attempt owns (e.g. Colab
        runtimes left by a crashed tick). Called at the end of a tick for each platform
        the tick used, and for every platform with ``reconcile_every_tick``. Default:
        nothing to clean."""
        ...

    def close(self) -> None:
        """Close connections this object holds (SSH sessions, HTTP pools); called once
        when the command ends. Must not raise for a connection already gone."""
        ...


class PlatformBase:
    """The defaults of :class:`Platform`; every backend subclasses this.

    The required hooks (``offer``, ``submit``, ``find``, ``poll``, ``logs``, ``fetch``,
    ``cancel``) raise NotImplementedError here; see :class:`Platform` for each contract.
    """

    settings_model: ClassVar[type[PlatformSettings]] = PlatformSettings
    host_bound: ClassVar[bool] = False
    reconcile_every_tick: ClassVar[bool] = False

    name: str
    settings: PlatformSettings
    home: "Home"

    def __init__(self, name: str, settings: PlatformSettings, home: "Home") -> None:
        self.name = name
        self.settings = settings
        self.home = home

    @classmethod
    def default_budget(cls, settings: PlatformSettings) -> Budget:
        return Budget(source="unlimited")

    def offer(self) -> Offer:
        raise NotImplementedError(f"{type(self).__name__}.offer")

    def quota(self) -> QuotaReading | None:
        return None

    def site_usage(self) -> SiteUsage | None:
        return None

    def check(self) -> list[str]:
        return []

    def submit_warnings(self) -> list[str]:
        return []

    def refused_login(self) -> str | None:
        return None

    def submit(self, launch: Launch) -> Handle:
        raise NotImplementedError(f"{type(self).__name__}.submit")

    def find(self, key: str) -> Handle | None:
        raise NotImplementedError(f"{type(self).__name__}.find")

    def poll(self, handle: Handle) -> RemoteStatus:
        raise NotImplementedError(f"{type(self).__name__}.poll")

    def logs(self, handle: Handle, offset: int = 0) -> LogChunk:
        raise NotImplementedError(f"{type(self).__name__}.logs")

    def fetch(self, handle: Handle, dest: Path) -> None:
        raise NotImplementedError(f"{type(self).__name__}.fetch")

    def cancel(self, handle: Handle) -> None:
        raise NotImplementedError(f"{type(self).__name__}.cancel")

    def release(self, handle: Handle) -> None:
        return None

    def reconcile(self, active_keys: set[str]) -> None:
        return None

    def close(self) -> None:
        return None


#: type name in config.yaml -> "module:Class", imported only when configured.
PLATFORM_TYPES: dict[str, str] = {
    "local": "orchestrator.platforms.local:LocalPlatform",
    "kaggle": "orchestrator.platforms.kaggle.platform:KagglePlatform",
    "ssh": "orchestrator.platforms.ssh.platform:SSHPlatform",
    "colab": "orchestrator.platforms.colab.platform:ColabPlatform",
    "colab_drive": "orchestrator.platforms.colab_drive.platform:ColabDrivePlatform",
    "modal": "orchestrator.platforms.modal.platform:ModalPlatform",
    "slurm": "orchestrator.platforms.slurm.platform:SlurmPlatform",
}


#: Earlier spellings of a type, still accepted in config.yaml.
TYPE_ALIASES: dict[str, str] = {"colab-drive": "colab_drive"}

_EXTRAS = {"kaggle": "kaggle", "ssh": "ssh", "colab": "ssh", "colab_drive": "drive", "modal": "modal", "slurm": "ssh"}


def platform_class(type_name: str) -> type[PlatformBase]:
    """The backend class for a config ``type``; an unknown type lists the valid ones."""
    target = PLATFORM_TYPES.get(TYPE_ALIASES.get(type_name, type_name))
    if target is None:
        raise ConfigError(
            f"unknown platform type '{type_name}'; expected one of {', '.join(sorted(PLATFORM_TYPES))}"
        )
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = _EXTRAS.get(type_name, "all")
        raise ConfigError(
            f"platform type '{type_name}' needs an optional dependency ({exc.name}); "
            f"install it with: pip install 'orch[{extra}]'"
        ) from exc
    return getattr(module, class_name)
