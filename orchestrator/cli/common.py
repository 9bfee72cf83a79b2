"""Shared pieces of the CLI: consoles, the App decorator, output helpers."""

from __future__ import annotations

import contextlib
import functools
import json
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


def escape_markup(text: str | None) -> str:
    """``text`` safe to print through rich (square brackets are markup there)."""
    from rich.markup import escape

    return escape(text or "")
