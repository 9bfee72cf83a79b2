"""config.yaml values that could never work are refused when the config is read: one
line naming file:line and the field, exit 2, nothing written outside the orch home."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("entry,expect", [
    ("{type: local, max_concurrent: 0}", "max_concurrent"),
    ("{type: local, max_concurrent: -3}", "max_concurrent"),
    ("{type: local, session_hours: -1}", "session_hours"),
])
def test_impossible_platform_limits_are_refused(orch, orch_home, config, entry, expect):
    config(f"platforms:\n  box: {entry}\n")
    r = orch("status")
    assert r.exit_code == 2 and f"{orch_home / 'config.yaml'}:2:" in r.output and expect in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["../../escaped", "a/b", ".hidden", "with space"])
def test_a_platform_name_that_is_not_a_safe_identifier_is_refused(orch, orch_home, config, tmp_path, name):
    config(f"platforms:\n  '{name}': {{type: local}}\n")
    r = orch("status")
    assert r.exit_code == 2 and "is not a usable platform name" in r.output, r.output
    assert not (orch_home.parent / "escaped").exists()


def test_init_with_a_state_url_that_cannot_work_writes_no_config(orch, orch_home):
    r = orch("init", "--state", "garbage://x")
    assert r.exit_code == 2 and "garbage" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (orch_home / "config.yaml").exists()
