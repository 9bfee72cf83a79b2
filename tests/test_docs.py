"""Docs stay honest: every command is documented and has help, every platform type has a page,
the CLI reference is regenerated from --help, and CI runs the README's test command."""

from __future__ import annotations

import re

import click
import pytest

from orchestrator.cli import main
from orchestrator.cli.docgen import _walk, render
from orchestrator.platforms.base import PLATFORM_TYPES
from tests.conftest import REPO

COMMANDS = [" ".join(path) for path, _ in _walk(main, ["orch"]) if len(path) > 1]


def test_cli_reference_is_up_to_date():
    assert (REPO / "docs" / "cli.md").read_text() == render(), \
        "docs/cli.md is stale: run `python -m orchestrator.cli.docgen > docs/cli.md`"


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_and_an_example_or_summary(name):
    cmd = main
    for part in name.split()[1:]:
        cmd = cmd.commands[part]
    assert cmd.help and len(cmd.help.strip()) > 20, name
    if not isinstance(cmd, click.Group):
        assert "Example:" in cmd.help, f"{name}: add an Example: block to its docstring"


@pytest.mark.parametrize("type_name", sorted(PLATFORM_TYPES))
def test_every_platform_type_has_a_docs_page_linked_from_the_readme(type_name):
    page = REPO / "docs" / "platforms" / f"{type_name}.md"
    assert page.is_file(), page
    assert f"docs/platforms/{type_name}.md" in (REPO / "README.md").read_text()


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    test_cmd = next(line for b in blocks for line in b.splitlines() if "pytest" in line)
    assert test_cmd in (REPO / ".ci" / "run").read_text()


def test_readme_main_command_runs_the_els_pricer():
    readme = (REPO / "README.md").read_text()
    assert "orch submit jobs/els-pricer/job.yaml --wait" in readme
    assert (REPO / "jobs" / "els-pricer" / "job.yaml").is_file()


def test_docs_links_resolve():
    for md in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+\.md)\)", md.read_text()):
            if target.startswith("http"):
                continue
            assert (md.parent / target).resolve().is_file(), f"{md.name} links to missing {target}"
