"""``orch doctor``: one checklist that answers "will my queue run tonight?".

Thin: the checks live in ``orchestrator/doctor.py`` (docs/operations.md#orch-doctor).
"""

from __future__ import annotations

import click

from .common import console, untrusted, json_option, pass_app, print_json

_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


def register(main: click.Group) -> None:
    """Attach ``orch doctor`` to the CLI."""
    main.add_command(doctor)


@click.command()
@json_option
@pass_app(lazy=True)
def doctor(app, as_json: bool) -> None:
    """Check config, state, disk, cron, credentials, logins and the quota forecast.

    Each line is ✓ (fine), ! (a risk: the fix is shown) or ✗ (something that stops
    work). Exits 0 when nothing is ✗, else 1.

    \b
    Example:
      orch doctor
      orch doctor --json
    """
    from .. import doctor as doctor_mod

    checks = doctor_mod.run(app)
    if as_json:
        print_json(doctor_mod.to_json(checks))
    else:
        for c in checks:
            mark = doctor_mod.SYMBOL[c.status]
            console.print(f"[{_STYLE[c.status]}]{mark}[/] {untrusted(c.name)}: {untrusted(c.detail)}", soft_wrap=True)
            if c.fix and c.status != "ok":
                console.print(f"    fix: {untrusted(c.fix)}", soft_wrap=True)
    if any(c.status == "fail" for c in checks):
        raise click.exceptions.Exit(1)
