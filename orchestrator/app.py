"""One command's context: the home, the config, the store and the platforms.

Opened once per CLI invocation (like rq's ``CliConfig``); platforms are created on
first use so that a command touching only the local platform never imports the
kaggle client.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import config as config_mod
from .config import Config
from .home import Home
from .errors import NotFoundError
from .platforms.base import Platform, platform_class
from .quota import Budget
from .settings import PlatformSettings
from .store import Store


@dataclass
class App:
    home: Home
    config: Config
    store: Store
    _platforms: dict[str, Platform] = field(default_factory=dict)

    @classmethod
    def open(cls, home: Home | None = None) -> "App":
        home = home or Home.discover()
        home.ensure()
        cfg = config_mod.load(home)
        return cls(home=home, config=cfg, store=Store(cfg.state_url))

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
            cls = platform_class(settings.type)
            self._platforms[name] = cls(name, settings, self.home)
        return self._platforms[name]

    def in_use(self, name: str) -> bool:
        """Whether this command has already created platform ``name`` (used it)."""
        return name in self._platforms

    def host_bound(self, name: str) -> bool:
        """Whether runs on platform ``name`` live on the machine that started them
        (False for a platform no longer configured)."""
        settings = self.config.platforms.get(name)
        return settings is not None and platform_class(settings.type).host_bound

    def reconcile_every_tick(self, name: str) -> bool:
        """Whether platform ``name`` asks to be cleaned up every tick, used or not."""
        return platform_class(self.settings(name).type).reconcile_every_tick

    def budget(self, name: str) -> Budget:
        """Platform ``name``'s budget: its ``budget:`` entry, else its type's default."""
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
        self.store.close()
