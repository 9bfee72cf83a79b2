"""The orch home: every path orch writes to, derived from one root.

``$ORCH_HOME`` overrides everything (config, state DB, caches, work dirs); without it
the home is the platform's user data dir (``~/.local/share/orch`` on Linux).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs


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

    @property
    def state_url(self) -> str:
        """The default state URL: SQLite in the home. The path is %-quoted, because the URL
        is %-decoded (an ORCH_HOME containing ``%41`` would otherwise open ``A``)."""
        from urllib.parse import quote

        return f"sqlite:///{quote(str(self.db_path), safe='/')}"

    def ensure(self) -> None:
        """Create the home (private to this user); one clear line when it can't be."""
        from .errors import ConfigError

        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"the orch home {self.root} is not a directory; set ORCH_HOME to a directory "
                              "(it is created if missing) or unset it")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the orch home {self.root}: {exc.strerror or exc}; "
                              "set ORCH_HOME to a directory you can write") from None
        try:
            os.chmod(self.root, 0o700)
        except OSError:
            pass
