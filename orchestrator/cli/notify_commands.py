"""``orch notify test [CHANNEL]`` and ``orch notify log``: checking the notification channels.

Thin: sending lives in ``orchestrator/notify/delivery.py``; the channels are the
``notify:`` section of config.yaml (docs/notifications.md).
"""

from __future__ import annotations

import click

from ..errors import OrchError
from .common import console, untrusted, json_option, pass_app, print_json


def register(main: click.Group) -> None:
    """Attach ``orch notify`` (test, log) to the CLI."""
    main.add_command(notify)


@click.group()
def notify() -> None:
    """Check notification channels: send a sample, list recent deliveries."""


@notify.command("test")
@click.argument("channel", required=False)
@json_option
@pass_app
def test(app, channel: str | None, as_json: bool) -> None:
    """Send a sample event to CHANNEL (default: every configured channel).

    The sample is a `job.succeeded` event with `"test": true`, signed and formatted
    exactly as a real one. Exits 1 when a channel failed.

    \b
    Example:
      orch notify test ops-webhook
    """
    from ..notify.delivery import send_sample

    if not app.config.notify.channels:
        raise OrchError("no notify channels are configured; add a `notify: channels:` section to "
                        f"{app.home.config_path} (see docs/notifications.md)")
    results = send_sample(app, channel)
    if as_json:
        print_json([{"channel": n, "ok": err is None, "error": err} for n, err in results])
    else:
        for name, err in results:
            if err is None:
                console.print(f"[green]✓[/] {untrusted(name)}: sent")
            else:
                console.print(f"[red]✗[/] {untrusted(name)}: {untrusted(err)}")
    if any(err for _, err in results):
        raise click.exceptions.Exit(1)


@notify.command("log")
@click.option("-n", "--limit", type=click.IntRange(1, 1000), default=30, show_default=True,
              help="How many deliveries to show.")
@json_option
@pass_app
def log(app, limit: int, as_json: bool) -> None:
    """List recent deliveries and failures, newest first, and how many events wait.

    \b
    Example:
      orch notify log -n 50
    """
    from rich.table import Table

    from ..notify import outbox
    from .common import ago

    rows = outbox.recent(app.store, limit)
    waiting = outbox.pending_count(app.store)
    if as_json:
        print_json({"pending": waiting, "deliveries": [
            {"event_id": r["event_id"], "type": r["type"], "channel": r["channel"], "at": r["at"],
             "ok": bool(r["ok"]), "error": r["error"] or None} for r in rows]})
        return
    if not rows:
        console.print("no deliveries yet" + (f"; {waiting} event(s) wait in the outbox" if waiting else ""))
        return
    table = Table(box=None, header_style="bold")
    for col in ("WHEN", "CHANNEL", "EVENT", "ID", "RESULT"):
        table.add_column(col, overflow="fold")
    for r in rows:
        result = "[green]sent[/]" if r["ok"] else f"[red]failed[/]: {untrusted(r['error'])}"
        table.add_row(ago(r["at"]), untrusted(r["channel"]), r["type"], r["event_id"][:12], result)
    console.print(table)
    if waiting:
        console.print(f"{waiting} event(s) wait in the outbox (sent by the next `orch tick`)")
