"""``type: modal`` in config.yaml: the settings of one Modal platform entry, and the
hourly price of its CPU-only sandbox (docs/platforms/modal.md)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ...gpus import CPU_RATE, MODAL_DOLLARS_PER_CORE_SECOND, MODAL_DOLLARS_PER_GIB_SECOND, MODAL_DOLLARS_PER_SECOND
from ...settings import PlatformSettings, PositiveDuration

#: Modal's longest sandbox timeout.
MAX_TIMEOUT_S = 24 * 3600


class ModalSettings(PlatformSettings):
    """``type: modal`` in config.yaml. Credentials are the client's own, never written here."""

    type: Literal["modal"] = "modal"
    #: GPU types offered, in preference order (Modal names one per sandbox).
    gpu: list[str] = Field(default_factory=lambda: ["T4"])
    app: str = "orch"
    volume: str = "orch"
    #: Modal environment; unset = the workspace's default.
    environment: str | None = None
    #: Cap on a sandbox's timeout (Modal allows 24 h at most).
    timeout: PositiveDuration = float(MAX_TIMEOUT_S)
    max_concurrent: int = 2
    #: Longest one call to Modal may take before it counts as unanswered.
    call_deadline: PositiveDuration = 60.0
    #: A sandbox younger than this is never taken for an orphan: another tick may have
    #: written its attempt after this one read the active attempts.
    orphan_grace: PositiveDuration = 120.0
    #: A job without a GPU gets a sandbox of this many cores and MiB, request = limit, so
    #: its bill per hour is known (``cpu_rate``).
    cpu: float = Field(default=1.0, ge=0.125, le=64)
    memory: int = Field(default=2048, ge=128, le=256 * 1024)

    @property
    def cpu_rate(self) -> float:
        """Dollars per hour of a sandbox without a GPU, at Modal's CPU and memory prices."""
        return round((self.cpu * MODAL_DOLLARS_PER_CORE_SECOND + self.memory / 1024 * MODAL_DOLLARS_PER_GIB_SECOND)
                     * 3600, 6)

    @model_validator(mode="after")
    def _cpu_priced(self) -> "ModalSettings":
        """A dollars budget prices a CPU-only sandbox too (``rates: {CPU: ...}`` overrides)."""
        if self.budget is not None and self.budget.unit == "dollars" and CPU_RATE not in self.budget.rates:
            self.budget = self.budget.model_copy(update={"rates": {**self.budget.rates, CPU_RATE: self.cpu_rate}})
        return self

    @field_validator("budget", mode="before")
    @classmethod
    def _dollars(cls, value: Any) -> Any:
        """``budget: 10`` is ten dollars a month, reset with Modal's billing cycle."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return {"unit": "dollars", "limit": value, "window": "monthly", "reset": "1 00:00"}
        return value

    @field_validator("gpu")
    @classmethod
    def _gpus(cls, value: list[str]) -> list[str]:
        unknown = [g for g in value if g not in MODAL_DOLLARS_PER_SECOND]
        if unknown:
            raise ValueError(f"unknown GPU {', '.join(unknown)}; expected some of {', '.join(MODAL_DOLLARS_PER_SECOND)}")
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float) -> float:
        if value > MAX_TIMEOUT_S:
            raise ValueError("must be at most 24h (Modal's longest sandbox timeout)")
        return value
