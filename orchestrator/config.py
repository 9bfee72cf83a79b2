"""Loading the user config (``$ORCH_HOME/config.yaml``) into validated settings.

The models live in ``settings.py`` (shared keys) and in each platform package (its
own keys); this module reads the file, picks each entry's model by its ``type`` and
turns the first error into one line naming ``config.yaml:line``. With no config file
at all there is one implicit platform, ``local``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from .errors import ConfigError
from .home import Home
from .platforms.base import TYPE_ALIASES, platform_class
from .settings import ConfigFile, ControllerSettings, NotifySettings, PlatformSettings, TeamSettings
from .yamlfile import first_error, parse_yaml

DOCS = "docs/operations.md"


@dataclass
class Config:
    """The loaded config: platform settings validated by each backend's own model."""

    home: Home
    platforms: dict[str, PlatformSettings]
    controller: ControllerSettings = field(default_factory=ControllerSettings)
    team: TeamSettings = field(default_factory=TeamSettings)
    state_url: str = ""
    source: Path | None = None
    notify: NotifySettings = field(default_factory=NotifySettings)

    @property
    def names(self) -> list[str]:
        return list(self.platforms)


IMPLICIT = {"local": {"type": "local"}}
#: A platform name becomes a folder under the orch home and part of remote names.
PLATFORM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


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
        if not PLATFORM_NAME.fullmatch(str(name)):
            raise ConfigError(f"{_at(path, lines, prefix)}: platforms: '{name}' is not a usable platform name; use "
                              "letters, digits, '_' and '-' (it names folders and remote resources)")
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
    state_url = os.environ.get("ORCH_STATE_URL") or raw.state or home.state_url
    return Config(home=home, platforms=platforms, controller=raw.controller, team=raw.team, state_url=state_url,
                  source=source, notify=raw.notify)


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

# team:                     # a shared queue: what this controller gives other members' jobs
#   share_secrets: []       # secret names other members' jobs may get from this controller
#   run_others_locally: false   # run their jobs on this machine's local platform
"""
