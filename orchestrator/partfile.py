"""Resumable, verified downloads: bytes go to ``<dest>.part``, then a checked rename.

Every platform downloads through :class:`PartFile`, so a final name always means
"complete and verified", and a try cut short leaves a ``.part`` the next try continues
from (where the remote can send from an offset: SFTP seeks, HTTP ``Range``). The
controller keeps each attempt's ``staging/<key>`` directory across ticks, so a fetch
that a dropped link or a killed tick interrupted resumes on the next tick instead of
starting at zero.

A partial file that cannot be right restarts from zero: one longer than the remote
file is emptied before use, and one that fails its size or checksum check is removed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .errors import TransientError

_BLOCK = 1 << 20


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


class PartFile:
    """One download into ``dest`` by way of ``dest.part``.

    Args:
        dest: the final path; it appears only once the bytes were verified.
        size: the remote size, when known (may be set later, from a reply).
        sha256, md5: the remote checksums (hex), when known.
        what: names the download in error messages ("download of x from lab").
        platform: the platform name for errors.

    Typical use::

        part = PartFile(dest, size=size, sha256=digest, what="download x")
        with part.open() as out:          # appends to what an earlier try left
            remote.seek(part.offset)
            for block in remote: part.write(block)
        part.commit()                     # verify, then rename into place
    """

    def __init__(self, dest: Path, *, size: int | None = None, sha256: str | None = None,
                 md5: str | None = None, what: str | None = None, platform: str | None = None):
        self.dest = dest
        self.part = dest.with_name(dest.name + ".part")
        self.size = size
        self.sha256 = sha256
        self.md5 = md5
        self.what = what or f"download of {dest.name}"
        self.platform = platform
        #: Bytes in the part file (where the next byte from the remote goes).
        self.offset = 0
        self._out: BinaryIO | None = None

    def complete(self) -> bool:
        """Whether ``dest`` is already there (renamed, so verified, by an earlier try)
        with the expected size when one is known."""
        try:
            got = os.stat(self.dest).st_size
        except OSError:
            return False
        return self.dest.is_file() and (self.size is None or got == self.size)

    def have(self) -> int:
        """Bytes an earlier try left to resume from (0 when none, or too many to be right)."""
        try:
            got = self.part.stat().st_size
        except OSError:
            return 0
        return 0 if self.size is not None and got > self.size else got

    @contextmanager
    def open(self, resume: bool = True) -> Iterator[PartFile]:
        """The part file, open for appending at :attr:`offset` (emptied when it holds
        more than ``size``, or when ``resume`` is False). Closed, never removed, on the
        way out: what arrived stays for the next try."""
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.offset = self.have() if resume else 0
        with open(self.part, "ab" if self.offset else "wb") as out:
            self._out = out
            try:
                yield self
            finally:
                self._out = None

    def write(self, data: bytes) -> None:
        assert self._out is not None, "PartFile.write outside open()"
        self._out.write(data)
        self.offset += len(data)

    def restart(self) -> None:
        """Empty the part file (the remote sent the whole file after all)."""
        assert self._out is not None, "PartFile.restart outside open()"
        self._out.seek(0)
        self._out.truncate()
        self.offset = 0

    def discard(self) -> None:
        """Remove the part file: the next try starts from zero."""
        self.part.unlink(missing_ok=True)

    def commit(self) -> Path:
        """Check the part file against the size and checksums known, then rename it to
        ``dest`` (atomic). Returns ``dest``.

        Raises:
            TransientError: a check failed; the part file was removed, so the next try
                starts from zero.
        """
        got = self.part.stat().st_size
        problem = None
        if self.size is not None and got != self.size:
            problem = f"got {got} bytes, expected {self.size}"
        else:
            for algorithm, want in (("sha256", self.sha256), ("md5", self.md5)):
                if want and (have := _digest(self.part, algorithm)) != want.lower():
                    problem = f"{algorithm} mismatch ({have} != {want})"
                    break
        if problem is not None:
            self.discard()
            raise TransientError(f"{self.what}: {problem}; the partial file was removed and it will be "
                                 "fetched again", self.platform)
        os.replace(self.part, self.dest)
        return self.dest
