"""Releases that failed, kept until a later tick frees what they hold.

``release(handle)`` frees an ended attempt's remote side (its directory on an SSH
host, which may hold a job's orphaned processes, or a Colab runtime). When that call
fails (the host does not answer), the handle is written to
``$ORCH_HOME/platforms/<name>/unreleased.json`` and every later tick tries again
until the platform says it is done. Design choice: a file on the machine that
failed rather than a column in the shared store: releasing is that controller's
clean-up, and a file needs no schema change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from filelock import FileLock

from .platforms.base import Handle

#: Handles kept per platform at most (the oldest are dropped beyond it).
MAX_PENDING = 1000


class Unreleased:
    """The failed releases of one platform (``{key: handle}``), safe across processes."""

    def __init__(self, directory: Path):
        self.path = directory / "unreleased.json"
        self._lock = FileLock(str(directory / "unreleased.lock"))

    def handles(self) -> list[Handle]:
        if not self.path.exists():
            return []
        with self._lock:
            return [Handle.from_json(doc) for doc in self._read().values()]

    def add(self, handle: Handle) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            docs = self._read()
            docs[handle.key] = handle.to_json()
            self._write(dict(list(docs.items())[-MAX_PENDING:]))

    def remove(self, key: str) -> None:
        if not self.path.exists():
            return
        with self._lock:
            docs = self._read()
            if docs.pop(key, None) is not None:
                self._write(docs)

    def _read(self) -> dict:
        try:
            docs = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in docs.items() if isinstance(v, dict) and "key" in v} if isinstance(docs, dict) else {}

    def _write(self, docs: dict) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(docs))
        os.replace(tmp, self.path)
