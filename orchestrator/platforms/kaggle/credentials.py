"""Where the ``kaggle`` client will find its API credentials, by the client's own rules.

orch never copies or stores the values; it only checks that one source exists (and
warns when ``kaggle.json`` or ``~/.kaggle/access_token`` is readable by others) so that
``orch platforms`` can say how to fix a missing key before a job is placed here.
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

DOCS = "docs/platforms/kaggle.md"
CREDENTIALS_FIX = (
    "create an API token at https://www.kaggle.com/settings (Account -> API -> Create New Token) and save it "
    "as ~/.kaggle/kaggle.json with chmod 600, or set KAGGLE_USERNAME and KAGGLE_KEY (see " + DOCS + ")"
)



@dataclass(frozen=True)
class Credentials:
    """Where the client will find its credentials (the values are never kept)."""

    source: str
    path: Path | None = None


def config_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The client's config dir, by its own rule (``KaggleApi.config_dir``)."""
    if environ.get("KAGGLE_CONFIG_DIR"):
        return Path(environ["KAGGLE_CONFIG_DIR"]).expanduser()
    home = Path(os.path.expanduser("~"))
    legacy = home / ".kaggle"
    if sys.platform.startswith("linux") and not legacy.exists():
        return Path(environ.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"
    return legacy


def find_credentials(environ: Mapping[str, str] = os.environ) -> Credentials | None:
    """The first credential source the client would use, in its own order; None if none."""
    if environ.get("KAGGLE_API_TOKEN"):
        return Credentials("KAGGLE_API_TOKEN")
    for name in ("access_token", "access_token.txt"):
        token = Path(os.path.expanduser("~/.kaggle")) / name
        if token.is_file() and token.read_text().strip():
            return Credentials("access token file", token)
    kaggle_json = config_dir(environ) / "kaggle.json"
    if environ.get("KAGGLE_USERNAME") and environ.get("KAGGLE_KEY"):
        return Credentials("KAGGLE_USERNAME/KAGGLE_KEY")
    if kaggle_json.is_file():
        return Credentials("kaggle.json", kaggle_json)
    return None


def permission_warning(path: Path) -> str | None:
    """A warning when a credential file can be read by group or others."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if mode & (stat.S_IRGRP | stat.S_IROTH | stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is readable by other users of this machine; fix it with: chmod 600 {path}"
    return None
