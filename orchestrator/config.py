"""The orch home directory and the user config (``$ORCH_HOME/config.yaml``).

``$ORCH_HOME`` overrides everything (config, state DB, caches, work dirs); without it
the home is the platform's user data dir (``~/.local/share/orch`` on Linux). With no
config file at all there is one implicit platform, ``local``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .durations import parse_duration
from .errors import ConfigError
from .platforms.base import TYPE_ALIASES, PlatformSettings, platform_class
from .yamlfile import first_error, parse_yaml

DOCS = "docs/operations.md"


@dataclass(frozen=True)
class Home:
    """Every path orch writes to, derived from one root."""

    root: Path

    @classmethod
    def discover(cls) -> "Home":
        env = os.environ.get("ORCH_HOME")
        root = Path(env).expanduser() if env else Path(platformdirs.user_data_dir("orch", appauthor=False))
        return cls(root.resolve())

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def db_path(self) -> Path:
        return self.root / "state.db"

    @property
    def blobs(self) -> Path:
        """Content-addressed archives: datasets, checkpoints."""
        return self.root / "blobs"

    @property
    def bundles(self) -> Path:
        return self.root / "bundles"

    @property
    def index(self) -> Path:
        """Stat index of dataset sources (see bundle.DatasetCache)."""
        return self.root / "index"

    @property
    def results(self) -> Path:
        """Fetched results, one directory per job (``orch fetch`` copies from here)."""
        return self.root / "results"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    def platform_dir(self, name: str) -> Path:
        """Private working space of one configured platform."""
        return self.root / "platforms" / name

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            os.chmod(self.root, 0o700)
        except OSError:
            pass


class ControllerSettings(BaseModel):
    """Timing knobs of ``orch tick`` (all durations, e.g. "30m")."""

    model_config = ConfigDict(extra="forbid")

    #: How long status reads may fail before an attempt is declared LOST.
    unknown_window: float = 1800.0
    #: SIGTERM -> SIGKILL grace given to jobs (and the lead before a session end).
    grace: float = 30.0
    #: How long a platform that lost an attempt is avoided for that job.
    failover_backoff: float = 1800.0
    #: How long a controller's claim on a job lasts; a controller that dies mid-tick
    #: holds its jobs this long at most (see leases.py).
    lease_seconds: float = 300.0
    #: Jobs claimed at a time, so that several controllers share the work.
    claim_batch: int = Field(default=8, ge=1, le=1000)

    @field_validator("unknown_window", "grace", "failover_backoff", "lease_seconds", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0:
            return 0.0
        return parse_duration(value)


class ConfigFile(BaseModel):
    """config.yaml as written by the user; platform entries are validated per type."""

    model_config = ConfigDict(extra="forbid")

    state: str | None = None
    platforms: dict[str, dict[str, Any]] = Field(default_factory=dict)
    controller: ControllerSettings = ControllerSettings()


@dataclass
class Config:
    """The loaded config: platform settings validated by each backend's own model."""

    home: Home
    platforms: dict[str, PlatformSettings]
    controller: ControllerSettings = field(default_factory=ControllerSettings)
    state_url: str = ""
    source: Path | None = None

    @property
    def names(self) -> list[str]:
        return list(self.platforms)


IMPLICIT = {"local": {"type": "local"}}


def load(home: Home) -> Config:
    """Read ``home``'s config.yaml (or the implicit one-platform config).

    Raises:
        ConfigError: one line naming ``config.yaml:line``, the field and the fix.
    """
    path = home.config_path
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
        data, lines = parse_yaml(text, path, ConfigError, what="run `orch init` to write a starter config")
        try:
            raw = ConfigFile.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(first_error(exc, ConfigFile, path, lines, DOCS)) from None
        entries = raw.platforms or dict(IMPLICIT)
        source: Path | None = path
    else:
        raw, lines, entries, source = ConfigFile(), {}, dict(IMPLICIT), None
    platforms: dict[str, PlatformSettings] = {}
    for name, entry in entries.items():
        prefix = ("platforms", name)
        if not isinstance(entry, dict) or "type" not in entry:
            raise ConfigError(f"{_at(path, lines, prefix)}: platforms.{name}: needs a `type:` (local, kaggle, ssh, colab, colab_drive)")
        try:
            cls = platform_class(str(entry["type"]))
        except ConfigError as exc:
            raise ConfigError(f"{_at(path, lines, prefix + ('type',))}: platforms.{name}.type: {exc}") from None
        entry = {**entry, "type": TYPE_ALIASES.get(entry["type"], entry["type"])}
        try:
            platforms[name] = cls.settings_model.model_validate(entry)
        except ValidationError as exc:
            raise ConfigError(first_error(exc, cls.settings_model, path, lines, f"docs/platforms/{entry['type']}.md", prefix)) from None
    state_url = os.environ.get("ORCH_STATE_URL") or raw.state or f"sqlite:///{home.db_path}"
    return Config(home=home, platforms=platforms, controller=raw.controller, state_url=state_url, source=source)


def _at(path: Path, lines: dict, loc: tuple) -> str:
    from .yamlfile import where

    return where(path, lines, loc, default=str(path))


STARTER = """\
# orch configuration. Docs: docs/operations.md and docs/platforms/<type>.md
#
# Credentials are never written here: each platform reads them the standard way
# (~/.kaggle/kaggle.json, an SSH key path, an OAuth token file made by `orch auth`).

# state: sqlite:///{home}/state.db      # or postgresql+psycopg://user@host/orch for a team

platforms:
  local:                  # this machine; always works, no account needed
    type: local
    max_concurrent: 1
  # kaggle:               # 30 GPU hours a week, 12-hour sessions
  #   type: kaggle
  #   accelerator: NvidiaTeslaT4
  # lab:                  # any machine you reach over SSH
  #   type: ssh
  #   host: gpu.example.org
  #   user: me
  #   key: ~/.ssh/id_ed25519
  #   gpu: A100

# controller:
#   unknown_window: 30m     # status reads may fail this long before an attempt is LOST
#   grace: 30s              # SIGTERM -> SIGKILL grace for jobs
#   failover_backoff: 30m   # avoid a platform that lost a job for this long
"""
