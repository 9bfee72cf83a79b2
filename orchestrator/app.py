"""One command's context: the home, the config, the store and the platforms.

Opened once per CLI invocation (like rq's ``CliConfig``); platforms are created on
first use so that a command touching only the local platform never imports the
kaggle client.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import NotFoundError
from .home import Home

if TYPE_CHECKING:  # pragma: no cover
    from .config import Config
    from .platforms.base import Platform
    from .quota import Budget
    from .settings import PlatformSettings
    from .store import Store


@dataclass
class App:
    home: Home
    _config: Config | None = None
    _store: Store | None = None
    _platforms: dict[str, Platform] = field(default_factory=dict)

    @classmethod
    def open(cls, home: Home | None = None, *, lazy: bool = False) -> "App":
        """Read the home's config and open the store now (so that a bad config or state URL
        fails before the command starts), or with ``lazy`` each on first use."""
        home = home or Home.discover()
        home.ensure()
        app = cls(home=home)
        if not lazy:
            app._open_store()
        return app

    @property
    def config(self) -> Config:
        """The loaded config.yaml (or the implicit one), read on first use."""
        if self._config is None:
            # pydantic: imported only by commands that need the config
            from . import config as config_mod

            self._config = config_mod.load(self.home)
        return self._config

    @property
    def store(self) -> Store:
        """The state store, opened (created or migrated) on first use."""
        return self._store if self._store is not None else self._open_store()

    def _open_store(self) -> Store:
        # SQLAlchemy: imported only by commands that read the state
        from .store import Store

        self._store = Store(self.config.state_url)
        return self._store

    def has_state(self) -> bool:
        """False only while the state is the default SQLite file and that file does not exist:
        nothing was ever queued in this home, so there is nothing to read.

        With no config.yaml and no ``$ORCH_STATE_URL`` the state is that default file (see
        ``config.load``), so the answer needs no config loaded.
        """
        if self._store is not None or self.home.db_path.exists():
            return True
        if self._config is None and not self.home.config_path.exists() and not os.environ.get("ORCH_STATE_URL"):
            return False
        return self.config.state_url != self.home.state_url

    def settings(self, name: str) -> PlatformSettings:
        """The config entry of platform ``name``; NotFoundError lists the configured ones."""
        settings = self.config.platforms.get(name)
        if settings is None:
            raise NotFoundError(
                f"no platform named '{name}'; configured: {', '.join(self.config.names)} "
                f"(edit {self.home.config_path})"
            )
        return settings

    def platform(self, name: str) -> Platform:
        """The configured platform ``name``; NotFoundError lists the configured ones."""
        if name not in self._platforms:
            settings = self.settings(name)
            from .platforms.base import platform_class

            cls = platform_class(settings.type)
            self._platforms[name] = cls(name, settings, self.home)
        return self._platforms[name]

    def in_use(self, name: str) -> bool:
        """Whether this command has already created platform ``name`` (used it)."""
        return name in self._platforms

    def host_bound(self, name: str) -> bool:
        """Whether runs on platform ``name`` live on the machine that started them
        (False for a platform no longer configured)."""
        from .platforms.base import platform_class

        settings = self.config.platforms.get(name)
        return settings is not None and platform_class(settings.type).host_bound

    def reconcile_every_tick(self, name: str) -> bool:
        """Whether platform ``name`` asks to be cleaned up every tick, used or not."""
        from .platforms.base import platform_class

        return platform_class(self.settings(name).type).reconcile_every_tick

    def budget(self, name: str) -> Budget:
        """Platform ``name``'s budget: its ``budget:`` entry, else its type's default."""
        from .platforms.base import platform_class
        from .quota import Budget

        settings = self.settings(name)
        if settings.budget is not None:
            return Budget.from_settings(settings.budget)
        return platform_class(settings.type).default_budget(settings)

    def close(self) -> None:
        """Close platform connections (SSH sessions, HTTP pools) and the store."""
        for platform in self._platforms.values():
            try:
                platform.close()
            except Exception:  # closing must never hide the command's own outcome
                pass
        self._platforms.clear()
        if self._store is not None:
            self._store.close()
