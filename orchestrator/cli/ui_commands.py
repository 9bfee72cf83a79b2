"""``orch ui``: serve the read-only web dashboard (``orchestrator/ui/``) on this machine."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ..errors import ConfigError
from .common import pass_app

if TYPE_CHECKING:  # pragma: no cover
    from ..app import App


@click.command()
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port on 127.0.0.1 (0: any free port).")
@click.option("--open", "open_browser", is_flag=True, help="Open the dashboard in the default browser.")
@pass_app
def ui(app: App, port: int, open_browser: bool) -> None:
    """Serve a read-only dashboard of the queue, attempts, results, quota and platforms.

    It listens on 127.0.0.1 only and lets in only the URL it prints (a random token per
    run), until Ctrl-C. It reads the same state as the CLI: in team mode, the whole
    team's queue.

    \b
    Example:
      orch ui --open
      orch ui --port 8765
    """
    try:
        from ..ui import server
    except ModuleNotFoundError as exc:
        if exc.name not in ("flask", "werkzeug", "jinja2", "markupsafe"):
            raise
        raise ConfigError(f"orch ui needs {exc.name}, which is not installed: pip install 'orch[ui]'") from None
    server.serve(app, port, open_browser, echo=click.echo)


def register(main: click.Group) -> None:
    """Attach ``ui`` to the CLI."""
    main.add_command(ui)
