"""settings.py: one Duration type for every duration field in config.yaml and job.yaml.

Every duration field, whichever group it sits in (controller, ssh, colab, colab_drive,
kaggle, a job's resources), takes the same forms and refuses a bare number other than 0
with the same message.
"""

from __future__ import annotations

import typing

import pytest
from pydantic import TypeAdapter, ValidationError

from orchestrator import settings, spec
from orchestrator.platforms.colab.platform import ColabSettings
from orchestrator.platforms.colab_drive.platform import ColabDriveSettings
from orchestrator.platforms.kaggle.platform import KaggleSettings
from orchestrator.platforms.local import LocalSettings
from orchestrator.platforms.ssh.platform import SSHSettings, TimeoutSettings
from orchestrator.settings import (
    ConfigFile,
    ControllerSettings,
    Duration,
    PositiveDuration,
)
from tests.conftest import make_job

MODELS = [ControllerSettings, LocalSettings, SSHSettings, TimeoutSettings, ColabSettings, ColabDriveSettings,
          KaggleSettings, spec.JobSpec, spec.Resources]
_ZERO_OK = typing.get_args(Duration)[1]
_POSITIVE = typing.get_args(PositiveDuration)[1]


def _validators(annotation) -> set:
    """The duration validators found anywhere in ``annotation`` (``Duration | None`` too)."""
    found = {m for m in getattr(annotation, "__metadata__", ()) if m in (_ZERO_OK, _POSITIVE)}
    for arg in typing.get_args(annotation):
        found |= _validators(arg)
    return found


def duration_fields() -> list[tuple[str, object, bool]]:
    """(model.field, a validator for that field's type alone, whether 0 is allowed)."""
    out = []
    for model in MODELS:
        for name, field in model.model_fields.items():
            kinds = _validators(field.annotation) | {m for m in field.metadata if m in (_ZERO_OK, _POSITIVE)}
            if kinds:
                annotation = typing.Annotated[(field.annotation, *field.metadata)] if field.metadata \
                    else field.annotation
                out.append((f"{model.__name__}.{name}", TypeAdapter(annotation), _POSITIVE not in kinds))
    return out


FIELDS = duration_fields()
IDS = [name for name, _, _ in FIELDS]


def test_every_group_with_durations_is_covered():
    owners = {name.split(".")[0] for name in IDS}
    assert owners == {"ControllerSettings", "LocalSettings", "SSHSettings", "TimeoutSettings", "ColabSettings",
                      "ColabDriveSettings", "KaggleSettings", "JobSpec", "Resources"}
    assert {"ControllerSettings.grace", "SSHSettings.heartbeat_timeout", "SSHSettings.grace", "JobSpec.grace",
            "Resources.max_runtime", "KaggleSettings.dataset_wait", "ColabDriveSettings.heartbeat_stale"} <= set(IDS)


@pytest.mark.parametrize(("name", "adapter", "zero_ok"), FIELDS, ids=IDS)
@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("2m", 120), ("1h", 3600), ("2h30m", 9000),
                                               ("01:30:00", 5400), ("1.5m", 90), ("1d", 86400)])
def test_every_duration_field_takes_the_same_forms(name, adapter, zero_ok, text, seconds):
    assert adapter.validate_python(text) == seconds


@pytest.mark.parametrize(("name", "adapter", "zero_ok"), FIELDS, ids=IDS)
@pytest.mark.parametrize("bare", [120, 30, 1.5])
def test_every_duration_field_refuses_a_bare_number_with_the_same_message(name, adapter, zero_ok, bare):
    with pytest.raises(ValidationError) as info:
        adapter.validate_python(bare)
    [error] = info.value.errors()
    assert error["msg"] == f"Value error, {bare} has no unit; write e.g. '{int(bare)}s' or '{int(bare)}m'"


@pytest.mark.parametrize(("name", "adapter", "zero_ok"), FIELDS, ids=IDS)
@pytest.mark.parametrize("zero", [0, 0.0, "0", "0s", "0m"])
def test_zero_means_none_where_allowed_and_is_refused_with_one_message_where_not(name, adapter, zero_ok, zero):
    if zero_ok:
        assert adapter.validate_python(zero) == 0
    else:
        with pytest.raises(ValidationError, match="must be longer than zero; write e.g. '30s' or '5m'"):
            adapter.validate_python(zero)


@pytest.mark.parametrize(("name", "adapter", "zero_ok"), FIELDS, ids=IDS)
@pytest.mark.parametrize("junk", ["soon", "30 seconds", "-5m", True, [1]])
def test_every_duration_field_refuses_what_is_not_a_duration(name, adapter, zero_ok, junk):
    with pytest.raises(ValidationError, match="not a duration|has no unit"):
        adapter.validate_python(junk)


def test_controller_defaults_and_limits():
    c = ControllerSettings()
    assert (c.grace, c.unknown_window, c.failover_backoff, c.lease_seconds, c.claim_batch) == (30, 1800, 1800, 300, 8)
    with pytest.raises(ValidationError):
        ControllerSettings(claim_batch=0)
    with pytest.raises(ValidationError, match="extra"):
        ControllerSettings(grase="30s")


def test_platform_settings_check_available_hours_and_budget_reset():
    assert settings.PlatformSettings(type="local", available_hours="22:00-06:00").available_hours == "22:00-06:00"
    with pytest.raises(ValidationError, match="available_hours"):
        settings.PlatformSettings(type="local", available_hours="late")
    with pytest.raises(ValidationError, match="reset"):
        settings.BudgetSettings(window="weekly", reset="saturday 25:00")
    assert settings.BudgetSettings(window="daily", reset="04:00").reset == "04:00"


def test_an_empty_config_file_has_no_platforms_and_default_controller_settings():
    doc = ConfigFile()
    assert doc.platforms == {} and doc.state is None and doc.controller == ControllerSettings()


# --------------------------------------------------------------------------- through the CLI
# Bug 1 of issue 11: each group read durations by its own rule (`heartbeat_timeout: 120`
# accepted, `grace: 120` refused; `controller.grace: 0` accepted, `30` refused).
# Bug 3: a key written twice was silently dropped.

@pytest.mark.parametrize(("text", "line", "field", "number"), [
    ("platforms:\n  lab: {type: ssh, host: h, heartbeat_timeout: 120}\n", 2, "platforms.lab.heartbeat_timeout", 120),
    ("platforms:\n  lab: {type: ssh, host: h, grace: 120}\n", 2, "platforms.lab.grace", 120),
    ("platforms:\n  k: {type: kaggle, dataset_wait: 120}\n", 2, "platforms.k.dataset_wait", 120),
    ("controller: {grace: 30}\n", 1, "controller.grace", 30),
    ("controller:\n  failover_backoff: 30\n", 2, "controller.failover_backoff", 30),
])
def test_a_bare_number_in_config_yaml_gives_the_same_one_line_error_for_every_field(orch, orch_home, config, text,
                                                                                    line, field, number):
    path = config(text)
    r = orch("status")
    assert r.exit_code == 2
    assert r.output.strip() == (f"Error: {path}:{line}: {field}: {number} has no unit; "
                                f"write e.g. '{number}s' or '{number}m'")


@pytest.mark.parametrize("text", ["platforms:\n  lab: {type: ssh, host: h, grace: 0, heartbeat_timeout: 2m}\n",
                                  "controller: {grace: 0, unknown_window: 1h}\n"])
def test_zero_and_durations_with_units_are_accepted_in_config_yaml(orch, orch_home, config, text):
    config(text)
    r = orch("status")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(("text", "line", "field", "number"), [
    ("run: echo\ngrace: 120\n", 2, "grace", 120),
    ("run: echo\nresources:\n  max_runtime: 90\n", 3, "resources.max_runtime", 90),
])
def test_a_bare_number_in_job_yaml_gives_the_same_one_line_error(orch, orch_home, tmp_path, text, line, field,
                                                                 number):
    path = make_job(tmp_path / "job", text)
    r = orch("submit", str(path), "--dry-run")
    assert r.exit_code == 2
    assert r.output.strip() == (f"Error: {path}:{line}: {field}: {number} has no unit; "
                                f"write e.g. '{number}s' or '{number}m'")


@pytest.mark.parametrize(("where", "text", "line", "key", "first"), [
    ("job.yaml", "run: echo one\nname: twice\nrun: echo two\n", 3, "run", 1),
    ("config.yaml", "platforms:\n  box: {type: local}\n  other: {type: local}\n  box: {type: local, max_concurrent: 2}\n",
     4, "box", 2),
])
def test_a_duplicate_key_names_both_lines_and_exits_2(orch, orch_home, config, tmp_path, where, text, line, key,
                                                      first):
    if where == "job.yaml":
        path = make_job(tmp_path / "job", text)
        r = orch("submit", str(path), "--dry-run")
    else:
        path = config(text)
        r = orch("status")
    assert r.exit_code == 2
    assert r.output.strip() == (f"Error: {path}:{line}: duplicate key '{key}' (first on line {first}); "
                                "YAML keeps only one of them — delete or rename one")


def test_a_duplicate_key_nested_in_a_platform_entry_is_refused_too(orch, orch_home, config):
    path = config("platforms:\n  box:\n    type: local\n    max_concurrent: 1\n    max_concurrent: 2\n")
    r = orch("platforms")
    assert r.exit_code == 2
    assert r.output.startswith(f"Error: {path}:5: duplicate key 'max_concurrent' (first on line 4)")
    assert r.output.count("\n") == 1
