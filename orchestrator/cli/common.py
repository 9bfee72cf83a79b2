"""Shared pieces of the CLI: consoles, the App decorator, output helpers."""

from __future__ import annotations

import contextlib
import functools
import json
import re
import sys
import time
from typing import Any, Callable

import click
from rich.console import Console

console = Console(highlight=False, soft_wrap=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

STATE_STYLE = {
    "QUEUED": "cyan", "SUBMITTING": "cyan", "PENDING": "blue", "RUNNING": "bold blue", "UNKNOWN": "yellow",
    "FETCHING": "blue", "SUCCEEDED": "green", "FAILED": "bold red", "LOST": "red", "CANCELLED": "dim",
    "CHECKPOINTED": "magenta", "REJECTED": "red",
}


def pass_app(fn: Callable | None = None, *, lazy: bool = False) -> Callable:
    """Open the App (home, config, store) once and pass it as the first argument.

    ``@pass_app(lazy=True)`` reads the config and opens the store on first use instead
    (``orch status`` on a home where nothing was ever queued then loads neither).
    """
    if fn is None:
        return functools.partial(pass_app, lazy=lazy)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ..app import (
            App,  # imported here: `orch --help` needs no config, store or platforms
        )

        app = App.open(lazy=lazy)
        try:
            return fn(app, *args, **kwargs)
        finally:
            app.close()

    return wrapper


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON (stable keys).")


def print_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True, default=str))


def styled_state(state: str) -> str:
    return f"[{STATE_STYLE.get(state, '')}]{state}[/]"


def ago(ts: float | None) -> str:
    if not ts:
        return "-"
    from ..durations import format_duration

    return format_duration(max(0.0, time.time() - ts)) + " ago"


def is_tty() -> bool:
    return sys.stdout.isatty()


class TransferBars:
    """Shows each large transfer (see ``orchestrator.progress``) as a rich progress bar.

    ``pause`` is a context manager factory that hides another live display (the
    ``submit --wait`` spinner) while a bar is shown: rich shows one at a time.
    """

    def __init__(self, console: Console, pause: Callable[[], Any] | None = None):
        self.console = console
        self.pause = pause

    @contextlib.contextmanager
    def __call__(self, label: str, total: int):
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        with (self.pause() if self.pause else contextlib.nullcontext()):
            columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                       TimeRemainingColumn())
            with Progress(*columns, console=self.console) as bars:
                task = bars.add_task(label, total=total)
                yield lambda n: bars.advance(task, n)


@contextlib.contextmanager
def transfer_bars(enabled: bool, pause: Callable[[], Any] | None = None):
    """Install progress bars for transfers made inside the block (when ``enabled`` and
    stderr is a terminal)."""
    from .. import progress

    if not enabled or not err_console.is_terminal:
        yield
        return
    previous = progress.install(TransferBars(err_console, pause))
    try:
        yield
    finally:
        progress.install(previous)


#: C0/C1 controls (ESC starts every terminal sequence), DEL, and the bidi overrides that
#: reorder what a line appears to say; ``\n`` and ``\t`` are kept only in logs.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NEWLINES = re.compile("[\t\n]")


def strip_controls(text: str | None, keep_newlines: bool = False) -> str:
    """``text`` without control characters: what a job or a remote sent can then not
    move the cursor, repaint a line, set the window title or reorder a line
    (``ESC[1A ESC[2K ESC[32mSUCCEEDED``). Newlines and tabs become spaces unless kept."""
    text = _CONTROLS.sub("", text or "")
    return text if keep_newlines else _NEWLINES.sub(" ", text)


def untrusted(text: object) -> str:
    """Any string that came from a remote, a job or another member (messages, GPU names,
    output names, reasons), made safe to print through rich: controls stripped and
    square brackets escaped (``T4[/]`` is markup to rich). Every command uses this one."""
    from rich.markup import escape

    return escape(strip_controls(None if text is None else str(text)))

