"""Issue 16.12: a name that ends in a newline is refused everywhere (``^...$`` lets
``"x\\n"`` through with Python's ``$``; every check is a full match now)."""

from __future__ import annotations

import pytest

from orchestrator import config as config_mod
from orchestrator import spec as spec_mod
from orchestrator.errors import ConfigError, SpecError
from orchestrator.home import Home
from orchestrator.platforms.kaggle.platform import OWNED_DATASET, OWNED_KERNEL


@pytest.mark.parametrize("field", [
    'name: "job\\n"',
    'env: {"GREETING\\n": hi}',
    'secrets: ["TOKEN\\n"]',
])
def test_a_trailing_newline_is_refused_in_job_yaml(tmp_path, field):
    path = tmp_path / "job.yaml"
    path.write_text(f"run: echo\n{field}\n")
    with pytest.raises(SpecError):
        spec_mod.load(path)


def test_a_platform_name_with_a_trailing_newline_is_refused(tmp_path):
    home = Home(tmp_path / "home")
    home.root.mkdir(parents=True)
    home.config_path.write_text('platforms: {"lab\\n": {type: local}}\n')
    with pytest.raises(ConfigError, match="not a usable platform name"):
        config_mod.load(home)


def test_kaggle_cleanup_only_matches_whole_names():
    assert OWNED_KERNEL.fullmatch("orch-oabc-1") and not OWNED_KERNEL.fullmatch("orch-oabc-1\n")
    assert not OWNED_DATASET.fullmatch("orch-data-" + "0" * 32 + "\n")
