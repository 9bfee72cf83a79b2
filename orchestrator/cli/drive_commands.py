"""``orch auth drive NAME`` and ``orch colab agent-notebook NAME``: setting up Colab-through-Drive.

Both are thin: the OAuth flow lives in ``platforms/colab_drive/client.py`` and the notebook
in ``platforms/colab_drive/notebook.py``; Google libraries are imported only when used.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import ConfigError
from .common import console, pass_app


def register(main: click.Group) -> None:
    """Attach ``orch auth drive`` and ``orch colab agent-notebook`` to the CLI."""
    auth = main.commands.get("auth")
    if not isinstance(auth, click.Group):
        auth = click.Group("auth", help="Sign in to platforms that need an interactive login.")
        main.add_command(auth)
    auth.add_command(drive)
    colab = main.commands.get("colab")
    if isinstance(colab, click.Group):
        colab.add_command(agent_notebook)


def _drive_platform(app, name: str):
    from ..platforms.colab_drive.platform import ColabDrivePlatform

    platform = app.platform(name)
    if not isinstance(platform, ColabDrivePlatform):
        raise ConfigError(f"platform '{name}' is of type {platform.settings.type}; this command is for "
                          f"`type: colab_drive` platforms (see docs/platforms/colab_drive.md)")
    return platform


@click.command("drive")
@click.argument("name")
@click.option("--no-browser", is_flag=True, help="Print the sign-in URL instead of opening a browser.")
@pass_app
def drive(app, name: str, no_browser: bool) -> None:
    """Sign in to Google Drive for colab_drive platform NAME and save the token.

    Runs Google's installed-app OAuth flow with the client file named by the
    platform's `credentials` key, then stores the token (mode 0600) under the orch
    home. Run it again when orch says the token expired or was revoked.

    \b
    Example:
      orch auth drive gdrive
    """
    from ..platforms.colab_drive.client import run_consent_flow

    platform = _drive_platform(app, name)
    secrets = Path(platform.settings.credentials).expanduser()
    run_consent_flow(secrets, platform.token_path, name, open_browser=not no_browser)
    from ..logins import record_consent

    record_consent(platform.token_path)  # `orch doctor` dates the token from it
    console.print(f"Saved the Drive token for platform '{name}' in {platform.token_path} (mode 0600).")


@click.command("agent-notebook")
@click.argument("name")
@pass_app
def agent_notebook(app, name: str) -> None:
    """Print the Colab notebook that runs an orch agent for colab_drive platform NAME.

    Open the notebook in Colab on a paid GPU runtime and run all cells; it signs in
    to Drive, then runs the jobs orch puts in its inbox until the session nears its
    end. Needs `orch auth drive NAME` first (the notebook names the Drive folder).

    \b
    Example:
      orch colab agent-notebook gdrive > orch-agent.ipynb
    """
    import nbformat

    from ..platforms.colab_drive.platform import agent_settings_problem
    from ..platforms.colab_drive.notebook import agent_notebook as build, kernel_sources

    platform = _drive_platform(app, name)
    agent_settings_problem(platform.settings, name)
    agent_source, runner_source = kernel_sources()
    nb = build(platform=name, folder=platform.settings.folder, folder_id=platform.mailbox().root,
               tier=platform.settings.tier, session_seconds=platform.session_seconds,
               agent_source=agent_source, runner_source=runner_source)
    click.echo(nbformat.writes(nb))
