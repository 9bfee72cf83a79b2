"""The ``orch`` command line: thin click commands over the library.

Errors are shown once, here: an ``OrchError`` becomes ``Error: <message>`` on stderr
and its exit code (2 for bad input, 1 otherwise); ``ORCH_DEBUG=1`` shows the
traceback instead. The core commands live in ``submit_commands.py``,
``status_commands.py`` (status, logs), ``control_commands.py`` (fetch, cancel,
retry, tick) and ``setup_commands.py`` (platforms, cron, init); the others in
sibling modules (``kaggle_commands.py``, ``ssh_commands.py``, ``drive_commands.py``,
``schedule_commands.py``, ``ui_commands.py``), which import their optional dependencies lazily. Every
command module has a ``register(main)`` function (none imports this package back)
and imports the library inside its commands, so that ``orch --help`` loads no
config, store or platform (``bench/cli_startup.py`` times it).

Exit codes: 0 success; 1 failure (including a job that ended FAILED/LOST/CANCELLED
under ``--wait``, and a tick in which a job's step failed); 2 bad input (job.yaml,
config, usage); 130 interrupted. Log records (orch's and its libraries') go to
``$ORCH_HOME/logs/orch.log`` only (``logs.py``).
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from ..errors import OrchError
from .common import err_console, untrusted

PLUGIN_MODULES = ("kaggle_commands", "ssh_commands", "drive_commands", "schedule_commands", "notify_commands",
                  "doctor_commands", "ui_commands")


class OrchGroup(click.Group):
    """A click group that turns library errors into one clean line."""

    def invoke(self, ctx: click.Context):
        _log_to_file()
        try:
            return super().invoke(ctx)
        except OrchError as exc:
            if os.environ.get("ORCH_DEBUG"):
                raise
            err_console.print(f"[bold red]Error:[/] {untrusted(str(exc))}")
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            err_console.print("interrupted")
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:  # a bug: still no traceback unless asked for
            if os.environ.get("ORCH_DEBUG"):
                raise
            err_console.print(
                f"[bold red]Error:[/] internal error: {type(exc).__name__}: {untrusted(str(exc))} "
                "(run again with ORCH_DEBUG=1 for the traceback, and please report it)", highlight=False)
            ctx.exit(1)


def _log_to_file() -> None:
    """Library log records go to ``$ORCH_HOME/logs/orch.log``, never to the terminal."""
    from ..home import Home
    from ..logs import setup

    try:
        setup(Home.discover().root)
    except Exception:  # noqa: BLE001 -- logging must never stop a command
        pass


@click.group(cls=OrchGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="orch", prog_name="orch")
def main() -> None:
    """orch: run GPU jobs on Kaggle, Colab, SSH hosts or this machine from one queue.

    \b
    Typical use:
      orch submit jobs/els-pricer/job.yaml --wait
      orch status
      orch logs JOB -f
      orch fetch JOB
    Run `orch cron --install` once so that `orch tick` keeps the queue moving.
    """


@main.group()
def colab() -> None:
    """Google Colab helpers (runtimes over SSH, the Drive agent notebook)."""


# Every command module attaches its commands with register(main); none imports this one.
from . import control_commands, setup_commands, status_commands, submit_commands  # noqa: E402

for _mod in (submit_commands, status_commands, control_commands, setup_commands):
    _mod.register(main)

for _name in PLUGIN_MODULES:
    try:
        _mod = importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"{__name__}.{_name}":
            raise
        continue
    _mod.register(main)


def run() -> None:  # pragma: no cover - console-script shim
    main(prog_name="orch")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
