"""`orch platforms`, `orch cron` and `orch init`: the machinery around the queue."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING

import click

from ..home import Home
from ..durations import format_duration
from ..errors import ConfigError, OrchError
from .common import console, untrusted, json_option, pass_app, print_json

if TYPE_CHECKING:  # pragma: no cover
    from ..app import App


# ---------------------------------------------------------------------------- platforms


@click.command()
@json_option
@pass_app
def platforms(app: App, as_json: bool) -> None:
    """List configured platforms with what they offer, their quota, and any problem.

    \b
    Example:
      orch platforms
    """
    from rich.table import Table

    from .. import planning

    offers = planning.Planner(app).offers()
    running = app.store.active_counts()
    docs = []
    for name, offer in offers.items():
        problems: list[str] = []
        quota = None
        try:
            with planning.answer_deadline(app, name):
                p = app.platform(name)
                problems = p.check()
                quota = p.quota()
        except (OrchError, planning.PlatformOverrun) as exc:
            problems = [str(exc)]
        docs.append({
            "name": name, "type": offer.type, "gpus": list(offer.gpus), "gpu_memory_gb": offer.gpu_memory_gb,
            "max_concurrent": offer.max_concurrent, "running": running.get(name, 0),
            "session_seconds": offer.session_seconds, "internet": offer.internet, "tier": offer.tier,
            "available": offer.available, "reason": offer.reason, "problems": problems,
            "quota": None if quota is None else {
                "unit": quota.unit, "used": quota.used, "limit": quota.limit, "reserved": quota.reserved,
                "resets_at": quota.resets_at.isoformat() if quota.resets_at else None, "source": quota.source},
        })
    if as_json:
        print_json(docs)
        return
    table = Table(box=None, header_style="bold")
    for col in ("NAME", "TYPE", "GPU", "RUNNING", "SESSION", "QUOTA", "STATUS"):
        table.add_column(col, overflow="fold")
    for d in docs:
        q = d["quota"]
        quota = "-" if q is None else (
            f"{q['used']:.1f}/{q['limit']:.0f} {q['unit'].replace('_', ' ')}, "
            f"{max(0.0, q['limit'] - q['used'] - q['reserved']):.1f} left" if q["limit"] else f"{q['used']:.1f} {q['unit']}")
        if q and q.get("resets_at"):
            quota += f", resets {q['resets_at'][:16].replace('T', ' ')} UTC"
        status_text = "ready" if d["available"] and not d["problems"] else "; ".join(d["problems"] or [d["reason"]])
        table.add_row(d["name"], d["type"], "/".join(d["gpus"]) or "CPU", f"{d['running']}/{d['max_concurrent']}",
                      format_duration(d["session_seconds"]) if d["session_seconds"] else "none", quota,
                      ("[green]ready[/]" if status_text == "ready" else f"[yellow]{untrusted(status_text)}[/]"))
    console.print(table)
    console.print("[dim]`orch doctor` checks credentials, logins, cron and the quota forecast.[/]")


# ---------------------------------------------------------------------------- cron / init


CRON_MARK = "# orch tick"


def cron_line(home: Home, every: int) -> str:
    exe = shutil.which("orch") or f"{sys.executable} -m orchestrator"
    log = home.root / "cron.log"
    return (f"*/{every} * * * * ORCH_HOME={shlex.quote(str(home.root))} {shlex.quote(exe)} tick --quiet "
            f">> {shlex.quote(str(log))} 2>&1 {CRON_MARK}")


@click.command()
@click.option("--install", is_flag=True, help="Add the line to your crontab (idempotent).")
@click.option("--every", type=click.IntRange(1, 59), default=5, show_default=True, help="Minutes between ticks.")
@pass_app
def cron(app: App, install: bool, every: int) -> None:
    """Print (or install) the crontab line that runs `orch tick` every few minutes.

    \b
    Example:
      orch cron --install --every 5
    """
    line = cron_line(app.home, every)
    if not install:
        click.echo(line)
        return
    if shutil.which("crontab") is None:
        raise ConfigError("`crontab` is not installed; add this line with your scheduler instead:\n" + line)
    current = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
    lines = current.stdout.splitlines() if current.returncode == 0 else []
    kept = [ln for ln in lines if not ln.rstrip().endswith(CRON_MARK)]
    if line in lines and len(kept) == len(lines) - 1:
        console.print("crontab already has the orch tick line")
        return
    new = "\n".join(kept + [line]) + "\n"
    done = subprocess.run(["crontab", "-"], input=new, capture_output=True, text=True)
    if done.returncode != 0:
        raise OrchError(f"crontab refused the new table: {done.stderr.strip()}")
    console.print(f"installed: {line}")


@click.command()
@click.option("--force", is_flag=True, help="Overwrite an existing config.yaml.")
@click.option("--state", "state_url", metavar="URL", help="State database URL (default: SQLite in the orch home).")
def init(force: bool, state_url: str | None) -> None:
    """Write a commented starter config.yaml into the orch home and create the state DB.

    \b
    Example:
      orch init
      ORCH_HOME=~/orch-team orch init --state postgresql+psycopg://me@db/orch
    """
    from ..app import App
    from ..config import STARTER

    home = Home.discover()
    home.ensure()
    path = home.config_path
    if path.exists() and not force:
        console.print(f"{path} already exists (use --force to overwrite)")
    else:
        text = STARTER.format(home=home.root)
        if state_url:
            import json

            from ..store import Store

            Store(state_url).close()  # a URL that cannot work fails here, before config.yaml is written
            text = text.replace(f"# state: sqlite:///{home.root}/state.db", f"state: {json.dumps(state_url)}", 1)
        path.write_text(text)
        console.print(f"wrote {path}")
    app = App.open(home)
    try:
        console.print(f"state database ready (schema version {app.store.schema_version})")
    finally:
        app.close()


def register(main: click.Group) -> None:
    """Attach ``platforms``, ``cron``, ``init`` to the CLI."""
    main.add_command(platforms)
    main.add_command(cron)
    main.add_command(init)
