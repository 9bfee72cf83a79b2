"""Transfer progress: reported only when a display is installed, only for large transfers."""

from __future__ import annotations

from contextlib import contextmanager

from orchestrator import progress


def test_transfers_report_to_the_installed_display_and_small_ones_are_silent():
    seen: list[tuple[str, int, int]] = []

    @contextmanager
    def display(label, total):
        done = [0]
        yield lambda n: done.__setitem__(0, done[0] + n)
        seen.append((label, total, done[0]))

    previous = progress.install(display)
    try:
        with progress.transfer("up big", 100 * 1024 * 1024, done=10) as advance:
            advance(5)
        with progress.transfer("up small", 1024) as advance:
            advance(1024)
    finally:
        progress.install(previous)
    assert seen == [("up big", 100 * 1024 * 1024, 15)]
    with progress.transfer("nobody listens", 10 ** 9) as advance:
        advance(10)  # no display installed: a no-op
