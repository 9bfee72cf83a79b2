"""Where log records go: one file under the orch home, never the terminal.

orch speaks to its user through the CLI (``Error: ...``, ``warning: ...``); the
libraries under it (paramiko's transport thread, urllib3, googleapiclient, the
Kaggle client) log through :mod:`logging`, and Python's last-resort handler would
print their records, tracebacks included, to stderr, which is cron's mail. So the
CLI calls :func:`setup` once per process: orch's own records from debug level and
its libraries' from info level (paramiko's debug level logs every channel, which
costs a busy tick real time) go to ``$ORCH_HOME/logs/orch.log`` (rotated), and
nothing goes to a stream. Warnings raised through :mod:`warnings` (a library's
deprecation notice) go there too.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path

#: The file every record goes to, under the orch home.
LOG_NAME = "logs/orch.log"
_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"
_installed: logging.Handler | None = None


def setup(root: Path) -> Path | None:
    """Send every log record of this process to ``root/logs/orch.log`` and none to the
    terminal. Idempotent (a second call moves the file to the new ``root``). Returns
    the file, or None when it cannot be written (records are then dropped, never shown)."""
    global _installed
    logger = logging.getLogger()
    if _installed is not None:
        logger.removeHandler(_installed)
        _installed.close()
    path = root / LOG_NAME
    handler: logging.Handler
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=5 << 20, backupCount=3, encoding="utf-8",
                                                       delay=True)
        os.chmod(path.parent, 0o700)
    except OSError:
        handler, path = logging.NullHandler(), None
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logging.getLogger("orchestrator").setLevel(logging.DEBUG)
    logging.captureWarnings(True)
    _installed = handler
    return path
