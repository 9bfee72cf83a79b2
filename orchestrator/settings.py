"""Every model of config.yaml that is not one platform's own, and the one ``Duration`` type.

Platform packages subclass :class:`PlatformSettings` with their own keys (``ssh`` adds
``host``, ``kaggle`` adds ``accelerator``) and use the same :data:`Duration` for every
duration field, so every duration anywhere in orch is written, and refused, the same way.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from .durations import parse_duration
from .notify.config import NotifySettings
from .windows import parse_hours, parse_reset


def _seconds(value: Any, *, positive: bool) -> float:
    """A duration as written in YAML: "90s", "2h30m", "01:30:00"; 0 alone means none.

    A bare number other than 0 is refused: Slurm reads it as minutes, others as
    seconds, so orch asks for a unit instead of guessing.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0 \
            or isinstance(value, str) and value.strip().lower() in ("0", "0s", "0m", "0h", "0d"):
        if positive:
            raise ValueError("must be longer than zero; write e.g. '30s' or '5m'")
        return 0.0
    return parse_duration(value)


#: A duration of zero or more (``grace: 0`` means no grace).
Duration = Annotated[float, BeforeValidator(lambda v: _seconds(v, positive=False))]
#: A duration that must be longer than zero (a timeout, a lease).
PositiveDuration = Annotated[float, BeforeValidator(lambda v: _seconds(v, positive=True))]


class BudgetSettings(BaseModel):
    """``budget:`` of a platform entry: how much it may be used per window.

    Example (Colab Pro)::

        budget: {unit: compute_units, limit: 100, window: monthly, reset: "1 00:00",
                 rates: {T4: 1.84, L4: 4.82, A100: 11.77}}

    ``reset`` is UTC: ``"sat 00:00"`` for weekly windows, ``"<day> HH:MM"`` for monthly,
    ``"HH:MM"`` for daily. See ``orchestrator/windows.py`` and docs/scheduling.md.
    """

    model_config = ConfigDict(extra="forbid")

    unit: Literal["gpu_hours", "compute_units", "dollars"] = "gpu_hours"
    #: Units per window; None = unlimited (usage is still recorded and shown).
    limit: float | None = Field(default=None, ge=0)
    window: Literal["weekly", "monthly", "daily", "none"] = "weekly"
    reset: str | None = None
    #: gpu_hours only: multiply session hours by the job's GPU count (Kaggle counts
    #: session hours whatever the GPU count: its default budget sets this false).
    per_gpu: bool = True
    #: compute_units and dollars: units per hour for each GPU type (defaults: gpus.CU_RATES;
    #: a modal entry's default: Modal's published prices, gpus.MODAL_DOLLARS_PER_SECOND x 3600).
    rates: dict[str, float] = Field(default_factory=dict)

    @field_validator("reset")
    @classmethod
    def _reset(cls, value: str | None, info: Any) -> str | None:
        if value is None:
            return None
        parse_reset(info.data.get("window", "weekly"), value)  # raises ValueError with the accepted forms
        return value


class PlatformSettings(BaseModel):
    """Config keys every platform entry accepts; backends subclass it with their own."""

    model_config = ConfigDict(extra="forbid")

    type: str
    max_concurrent: int = 1
    #: Longest single session in hours; None = no limit.
    session_hours: float | None = None
    #: Usage budget per window (unset: the type's default, see the platform's ``default_budget()``).
    budget: BudgetSettings | None = None
    #: Daily UTC hours when the platform may run work, e.g. "22:00-06:00" (a lab
    #: machine at night); unset = always. Attempts end (checkpointing) before it closes.
    available_hours: str | None = None
    #: SIGTERM -> SIGKILL grace, and how long before a session end a job is told to
    #: checkpoint; unset = the job's `grace:` or controller.grace.
    grace: Duration | None = None
    #: The shortest chain segment worth starting here (a checkpointing job is not given
    #: a slice of session or quota shorter than this).
    min_segment: Duration = 600.0

    @field_validator("max_concurrent", check_fields=False)
    @classmethod
    def _concurrent(cls, value: int) -> int:
        """Inherited by every platform's settings, whatever default it gives the field."""
        if not 1 <= value <= 1000:
            raise ValueError("must be between 1 and 1000 (0 would never run anything; "
                             "to pause a platform, remove it or set available_hours)")
        return value

    @field_validator("session_hours", check_fields=False)
    @classmethod
    def _session(cls, value: float | None) -> float | None:
        if value is not None and not 0 < value <= 24 * 366:
            raise ValueError("must be a positive number of hours")
        return value

    @field_validator("available_hours")
    @classmethod
    def _hours(cls, value: str | None) -> str | None:
        if value is not None:
            parse_hours(value)
        return value


class ControllerSettings(BaseModel):
    """Timing knobs of ``orch tick`` (all durations, e.g. "30m")."""

    model_config = ConfigDict(extra="forbid")

    #: How long status reads may fail before an attempt is declared LOST.
    unknown_window: Duration = 1800.0
    #: SIGTERM -> SIGKILL grace given to jobs (and the lead before a session end).
    grace: Duration = 30.0
    #: How long a platform that lost an attempt is avoided for that job.
    failover_backoff: Duration = 1800.0
    #: How long a controller's claim on a job lasts; a controller that dies mid-tick
    #: holds its jobs this long at most (see leases.py).
    lease_seconds: PositiveDuration = 300.0
    #: Jobs claimed at a time, so that several controllers share the work.
    claim_batch: int = Field(default=8, ge=1, le=1000)
    #: A tick starts no new job step after this long, and is stopped a little later
    #: (see ``controller.tick_deadline``): hung ticks never pile up under cron.
    tick_budget: PositiveDuration = 240.0
    #: How long one platform may take to describe itself (its offer, checks and quota)
    #: before it is shown unavailable for now: one stalled remote never holds up
    #: `orch platforms`, `orch plan` or the placing of jobs elsewhere.
    answer_deadline: PositiveDuration = 60.0


class TeamSettings(BaseModel):
    """``team:``: what this controller gives to jobs other members submitted (see trust.py).

    A controller gives its own user's jobs every secret they name; another member's job
    gets only the names listed in ``share_secrets``, and runs on a ``local`` platform of
    this machine only with ``run_others_locally: true``.
    """

    model_config = ConfigDict(extra="forbid")

    #: Secret names this controller may inject into jobs of other members.
    share_secrets: list[str] = Field(default_factory=list)
    #: Run other members' jobs on this machine's local platforms (they run as your user).
    run_others_locally: bool = False


class ConfigFile(BaseModel):
    """config.yaml as written by the user; platform entries are validated per type."""

    model_config = ConfigDict(extra="forbid")

    state: str | None = None
    platforms: dict[str, dict[str, Any]] = Field(default_factory=dict)
    controller: ControllerSettings = ControllerSettings()
    team: TeamSettings = TeamSettings()
    #: Notification channels and thresholds (notify/config.py, docs/notifications.md).
    notify: NotifySettings = NotifySettings()
