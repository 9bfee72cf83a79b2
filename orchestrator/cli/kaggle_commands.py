"""``orch gc``: list, and with ``--yes`` delete, what orch created in a Kaggle account,
a Colab-through-Drive folder or a Modal volume.

Kaggle: only kernels and datasets whose names have orch's own shapes
(``orch-<attempt key>``, ``orch-data|code|ckpt-<hash>``), owned by the configured
account, are considered; the kernel of an attempt that is still active, or whose
checkpoint a queued job will read, is always kept. Drive: only the blobs (code,
datasets, checkpoints) and agent folders orch made in its folder, none newer than a
live run. Modal: only orch's own paths on its volume (runner, bundles, data, checkpoints,
attempt directories), none an active attempt reads. Nothing else is ever touched.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import click

from ..durations import format_duration, parse_duration
from ..errors import OrchError, UsageError
from ..states import ACTIVE_ATTEMPT_STATES, AttemptState
from .common import console, err_console, json_option, pass_app, print_json, untrusted


#: Platform types ``orch gc`` cleans (each has ``garbage`` and ``delete``).
GC_TYPES = ("kaggle", "colab_drive", "modal")


def register(main: click.Group) -> None:
    """Attach ``orch gc`` to the CLI."""
    main.add_command(gc)


def _usage(app: Any, platform: str) -> tuple[set[str], dict[str, float]]:
    """Attempt keys whose kernels must stay, and when each kernel/dataset was last used."""
    keep: set[str] = set()
    last_used: dict[str, float] = {}
    for att in app.store.attempts_in(list(AttemptState)):
        if att.platform != platform:
            continue
        if att.state in ACTIVE_ATTEMPT_STATES:
            keep.add(att.key)
        elif att.state == AttemptState.CHECKPOINTED and not app.store.job(att.job_id).state.terminal:
            keep.add(att.key)  # the next segment attaches this kernel to read its checkpoint
        data = (att.handle or {}).get("data") or {}
        # In use right now, or last used when the attempt ended.
        when = time.time() if att.state in ACTIVE_ATTEMPT_STATES else (att.ended_at or att.started_at or att.created_at)
        for ref in [data.get("ref"), *(data.get("datasets") or [])]:
            if ref:
                last_used[ref] = max(last_used.get(ref, 0.0), when)
    return keep, last_used


@click.command()
@click.option("--older-than", "older_than", default="7d", show_default=True, metavar="DURATION",
              help="Only what no attempt used for this long (e.g. 7d, 36h).")
@click.option("--yes", "-y", is_flag=True, help="Delete what is listed (without it, only list).")
@click.option("--platform", "only", metavar="NAME", help="Only this configured Kaggle, colab_drive or modal platform.")
@json_option
@pass_app
def gc(app: Any, older_than: str, yes: bool, only: str | None, as_json: bool) -> None:
    """List (and with --yes delete) old kernels, datasets, Drive and Modal files orch created.

    Kaggle keeps every kernel and private dataset orch pushed; they count against
    your private dataset quota. In a colab_drive folder, code archives, datasets,
    checkpoints and the folders of long-gone agents stay until removed; on a Modal
    volume, bundles, datasets and checkpoints do (storage is billed). Your own
    notebooks, datasets and files are never touched.

    \b
    Example:
      orch gc --older-than 7d
      orch gc --older-than 7d --yes
    """
    try:
        seconds = parse_duration(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    names = [n for n, s in app.config.platforms.items() if s.type in GC_TYPES and (only is None or n == only)]
    if only is not None and not names:
        cleanable = [n for n, s in app.config.platforms.items() if s.type in GC_TYPES]
        if only in app.config.platforms:
            what = (f"platform '{only}' is type {app.config.platforms[only].type}: orch gc cleans up what orch "
                    f"leaves in a Kaggle or Google Drive account or a Modal volume, and there is nothing of that "
                    f"kind on it")
        else:
            what = f"no platform named '{only}'"
        raise UsageError(f"--platform {only}: {what} (platforms orch gc can clean: {', '.join(cleanable) or 'none'})")
    rows: list[dict] = []
    failures = 0
    for name in names:
        platform = app.platform(name)
        keep, last_used = _usage(app, name)
        for kind, ref, when in platform.garbage(seconds, keep, last_used):
            row = {"platform": name, "kind": kind, "ref": ref, "last_used": when.isoformat() if when else None,
                   "deleted": False}
            if yes:
                try:
                    platform.delete(kind, ref)
                    row["deleted"] = True
                except OrchError as exc:
                    failures += 1
                    row["error"] = str(exc)
                    if not as_json:
                        err_console.print(f"[yellow]could not delete {kind} {untrusted(ref)}:[/] {untrusted(exc)}")
            rows.append(row)
    if as_json:
        print_json(rows)
    elif not names:
        console.print("no Kaggle, colab_drive or modal platform is configured; nothing to clean")
    elif not rows:
        console.print(f"nothing orch created on {', '.join(names)} is older than {format_duration(seconds)}")
    else:
        now = datetime.now().astimezone()
        for row in rows:
            age = "unknown age"
            if row["last_used"]:
                age = "last used " + format_duration((now - datetime.fromisoformat(row["last_used"])).total_seconds()) + " ago"
            verb = "deleted" if row["deleted"] else ("failed" if yes else "would delete")
            console.print(f"{verb:12} {row['kind']:8} {untrusted(row['ref'])}  ({age})")
        if not yes:
            console.print(f"{len(rows)} item(s); run again with --yes to delete them")
    if failures:
        raise OrchError(f"{failures} item(s) could not be deleted; run `orch gc` again later")
