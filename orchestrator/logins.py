"""When each platform's login dies: what ``orch doctor`` shows and ``login.expiring`` tells.

Only what orch can know without a network call: a Google Drive token that is missing
(the login is gone), and its age, since an OAuth app left in *Testing* gets refresh
tokens that Google revokes 7 days after consent (docs/platforms/colab_drive.md).
``orch auth drive`` records the consent time next to the token (``consented_at``);
an older token without it is dated by its file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .app import App

#: Google revokes a Testing app's refresh token this long after consent.
TESTING_TOKEN_S = 7 * 86400


@dataclass(frozen=True)
class Expiry:
    platform: str
    what: str
    #: When it dies (Unix seconds); 0 = already gone. None = unknown.
    expires_at: float | None
    #: True when the date holds only if the OAuth app is still in Testing.
    if_testing: bool
    fix: str
    age_s: float | None = None


def consent_file(token_path: Path) -> Path:
    return token_path.with_name("consented_at")


def record_consent(token_path: Path) -> None:
    """Note when the user signed in (refreshes rewrite the token file, so its date is not that)."""
    consent_file(token_path).write_text(f"{time.time():.0f}\n")


def expiries(app: App) -> list[Expiry]:
    """One entry per login orch can date, for every configured platform."""
    out = []
    for name, settings in app.config.platforms.items():
        if settings.type != "colab_drive":
            continue
        token = app.home.platform_dir(name) / "token.json"
        fix = f"orch auth drive {name}"
        if not token.is_file():
            out.append(Expiry(name, "Google Drive token", 0.0, False, fix))
            continue
        try:
            consented = float(consent_file(token).read_text().strip())
        except (OSError, ValueError):
            consented = token.stat().st_mtime
        out.append(Expiry(name, "Google Drive refresh token", consented + TESTING_TOKEN_S, True,
                          f"{fix} (or publish the OAuth app: docs/platforms/colab_drive.md)",
                          age_s=max(0.0, time.time() - consented)))
    return out
