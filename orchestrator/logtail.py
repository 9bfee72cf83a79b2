"""A job's log read a piece at a time: ``orch logs -f`` and ``submit --wait`` follow it.

The stored copy of an attempt's ``job.log`` once its results are fetched, else the
platform's live log from the last offset read. A new attempt (a retry, the next segment of
a chain) starts again at offset 0 with a separator line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import OrchError

if TYPE_CHECKING:  # pragma: no cover
    from .app import App


@dataclass
class Piece:
    """What one read found: new text (may be empty), whether there was anywhere to read
    it from, and why the live log could not be read (when it could not)."""

    text: str = ""
    found: bool = False
    problem: str = ""


class LogTail:
    """Reads one job's log incrementally across its attempts."""

    def __init__(self, app: App, job_id: str, attempt: int | None = None):
        self.app = app
        self.job_id = job_id
        self.attempt = attempt  # one attempt (a segment of a chain), or None: the latest
        self.key: str | None = None
        self.offset = 0

    def read(self, strict: bool = False) -> Piece:
        """The text added since the last read. ``strict``: a log the platform cannot serve
        raises, instead of being reported in ``problem`` (for a one-off ``orch logs``)."""
        from .platforms.base import Handle

        attempts = self.app.store.attempts_of(self.job_id)
        if self.attempt is not None:
            attempts = [a for a in attempts if a.number == self.attempt]
        att = attempts[-1] if attempts else None
        if att is None:
            return Piece()
        head = ""
        if att.key != self.key:
            if self.key is not None:
                head = f"\n[orch] --- attempt {att.number} on {att.platform} ---\n"
            self.key, self.offset = att.key, 0
        stored = self.app.home.results / self.job_id / f"attempt-{att.number}" / "job.log"
        if stored.is_file():
            with open(stored, "rb") as f:
                f.seek(self.offset)
                data = f.read()
            self.offset += len(data)
            return Piece(head + data.decode("utf-8", "replace"), True)
        if not att.handle:
            return Piece(head)
        try:
            chunk = self.app.platform(att.platform).logs(Handle.from_json(att.handle), self.offset)
        except OrchError as exc:
            if strict:
                raise
            return Piece(head, True, str(exc))
        self.offset = chunk.offset
        return Piece(head + chunk.text, True)
