"""Regenerate docs/cli.md from the commands' own help: ``python -m orchestrator.cli.docgen > docs/cli.md``.

tests/test_docs.py fails when docs/cli.md is out of date, so the reference can never
drift from ``--help``.
"""

from __future__ import annotations

import click

from . import main

HEADER = """\
# orch command reference

Generated from each command's `--help` by `python -m orchestrator.cli.docgen > docs/cli.md`.
Every command accepts `-h/--help`; most accept `--json` for scripts (stable keys). Job ids are
32 hex characters; any unique prefix (like git) or an exact job name works wherever a JOB is asked for.
Exit codes: 0 success, 1 failure, 2 bad input, 130 interrupted.
"""


def _walk(cmd: click.Command, path: list[str]):
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.commands):
            yield from _walk(cmd.commands[name], path + [name])


def render() -> str:
    out = [HEADER]
    for path, cmd in _walk(main, ["orch"]):
        if len(path) == 1:
            continue
        ctx = click.Context(cmd, info_name=" ".join(path), terminal_width=100, max_content_width=100,
                            help_option_names=["-h", "--help"])
        help_text = cmd.get_help(ctx)
        out.append(f"\n## {' '.join(path)}\n\n```\n{help_text}\n```\n")
    return "".join(out)


if __name__ == "__main__":  # pragma: no cover
    click.echo(render(), nl=False)
