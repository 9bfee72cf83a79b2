"""Progress of long transfers (dataset uploads, output downloads).

Platform code reports through :func:`transfer`; nothing is shown unless a command
installed a display (the CLI does for interactive ``submit --wait``, ``tick`` and
``fetch``; cron, ``--json`` and tests see nothing). Small transfers are never shown.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, ContextManager, Iterator

#: Transfers smaller than this are not worth a bar.
THRESHOLD = 8 * 1024 * 1024

Advance = Callable[[int], None]
Display = Callable[[str, int], ContextManager[Advance]]

_display: Display | None = None


def install(display: Display | None) -> Display | None:
    """Route transfers to ``display`` (None: show nothing); returns the previous one."""
    global _display
    previous, _display = _display, display
    return previous


@contextmanager
def transfer(label: str, total: int | None, done: int = 0) -> Iterator[Advance]:
    """Report a transfer of ``total`` bytes (``done`` already there, when resuming).

    Yields ``advance(n)``, to be called with each chunk's size.
    """
    if _display is None or total is None or total < THRESHOLD:
        yield lambda n: None
        return
    with _display(label, total) as advance:
        if done:
            advance(done)
        yield advance
