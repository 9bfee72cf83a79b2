"""Shared pieces of the CLI: consoles, the App decorator, output helpers."""

from __future__ import annotations

import functools
import json
import sys
import time
from typing import Any, Callable

import click
from rich.console import Console

from ..app import App

console = Console(highlight=False, soft_wrap=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

STATE_STYLE = {
    "QUEUED": "cyan", "SUBMITTING": "cyan", "PENDING": "blue", "RUNNING": "bold blue", "UNKNOWN": "yellow",
    "FETCHING": "blue", "SUCCEEDED": "green", "FAILED": "bold red", "LOST": "red", "CANCELLED": "dim",
    "CHECKPOINTED": "magenta", "REJECTED": "red",
}


def pass_app(fn: Callable) -> Callable:
    """Open the App (home, config, store) once and pass it as the first argument."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        app = App.open()
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
