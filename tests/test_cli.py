"""The core commands as a user meets them: output, --json, exit codes, one-line errors."""

from __future__ import annotations

import json

from tests.conftest import make_job, submit, submitted


def test_dry_run_shows_files_size_digest_and_placement_and_queues_nothing(orch, orch_home, tmp_path):
    path = make_job(tmp_path / "job", "name: dry\nrun: python main.py\n", {"main.py": "print(1)\n", "lib/util.py": "X=1\n"})
    r = orch("submit", str(path), "--dry-run")
    assert r.exit_code == 0, r.output
    assert "main.py" in r.output and "lib/util.py" in r.output and "would run on local" in r.output
    doc = submitted(orch, path, "--dry-run")
    assert doc["placement"]["platform"] == "local" and len(doc["digest"]) == 64 and doc["size"] > 0
    assert json.loads(orch("status", "--json").output) == []


def test_status_json_has_stable_keys_and_upper_case_states(orch, orch_home, tmp_path):
    path = make_job(tmp_path / "job", "name: s\nrun: 'true'\n")
    job_id = submit(orch, path)
    row, = json.loads(orch("status", "--json").output)
    assert {"id", "name", "state", "platform", "attempts"} <= set(row)
    assert row["id"] == job_id and row["state"] == "QUEUED" and row["attempts"] == 0


def test_job_ids_match_by_prefix_and_an_unknown_one_is_one_clear_error(orch, orch_home, tmp_path):
    path = make_job(tmp_path / "job", "name: p\nrun: 'true'\n")
    job_id = submit(orch, path)
    assert json.loads(orch("status", job_id[:5], "--json").output)["id"] == job_id
    assert json.loads(orch("status", "p", "--json").output)["id"] == job_id  # by name too
    r = orch("status", "ffffffff")
    assert r.exit_code == 1 and r.output.strip().startswith("Error: no job matches 'ffffffff'")
    assert "Traceback" not in r.output


def test_fetch_of_an_unfinished_job_says_when_results_arrive(orch, orch_home, tmp_path):
    path = make_job(tmp_path / "job", "name: f\nrun: 'true'\n")
    job_id = submit(orch, path)
    r = orch("fetch", job_id)
    assert r.exit_code == 1 and "QUEUED" in r.output and "orch logs -f" in r.output


def test_cancel_of_a_queued_job_and_retry_put_it_back(orch, orch_home, tmp_path):
    path = make_job(tmp_path / "job", "name: c\nrun: 'true'\n")
    job_id = submit(orch, path)
    assert "before it started" in orch("cancel", job_id).output
    assert json.loads(orch("status", job_id, "--json").output)["state"] == "CANCELLED"
    r = orch("cancel", job_id)
    assert r.exit_code == 1 and "already ended" in r.output
    assert orch("retry", job_id).exit_code == 0
    assert json.loads(orch("status", job_id, "--json").output)["state"] == "QUEUED"


def test_platforms_lists_the_implicit_local_platform(orch, orch_home):
    row, = json.loads(orch("platforms", "--json").output)
    assert row["name"] == "local" and row["type"] == "local" and row["available"] and row["problems"] == []


def test_cron_prints_a_line_that_ticks_this_home(orch, orch_home):
    r = orch("cron", "--every", "3")
    assert r.exit_code == 0
    line = r.output.strip()
    assert line.startswith("*/3 * * * * ") and f"ORCH_HOME={orch_home}" in line and " tick --quiet " in line
    assert line.endswith("# orch tick")


def test_init_writes_a_starter_config_once(orch, orch_home):
    r = orch("init")
    assert r.exit_code == 0 and (orch_home / "config.yaml").is_file()
    text = (orch_home / "config.yaml").read_text()
    assert "type: local" in text
    assert "already exists" in orch("init").output
    assert json.loads(orch("platforms", "--json").output)[0]["name"] == "local"


def test_a_broken_config_is_one_line_naming_file_line_and_field(orch, orch_home, config):
    config("platforms:\n  box:\n    type: local\n    max_concurent: 2\n")
    r = orch("status")
    assert r.exit_code == 2
    assert r.output.strip() == (f"Error: {orch_home / 'config.yaml'}:4: unknown key 'max_concurent' — did you mean "
                                "'max_concurrent'? (see docs/platforms/local.md)")
    config("platforms:\n  box: {type: lokal}\n")
    r = orch("status")
    assert r.exit_code == 2 and "unknown platform type 'lokal'" in r.output and ":2:" in r.output


def test_orch_debug_shows_the_traceback_instead(orch, orch_home, monkeypatch):
    import pytest

    from orchestrator.errors import NotFoundError

    monkeypatch.setenv("ORCH_DEBUG", "1")
    with pytest.raises(NotFoundError):
        orch("status", "nope")


def test_a_gpu_job_no_platform_can_run_is_refused_at_submit_instead_of_waiting_forever(orch, orch_home, tmp_path):
    path = make_job(tmp_path / "job", "name: g\nrun: 'true'\nresources: {gpu: A100}\n")
    r = orch("submit", str(path))
    assert r.exit_code == 2
    assert "no configured platform can run this job (local: has no GPU)" in r.output
    assert "gpu: [any, none]" in r.output
    assert json.loads(orch("status", "--json").output) == []


def test_gpu_with_a_trailing_none_falls_back_to_the_cpu(orch, orch_home, tmp_path):
    from tests.conftest import tick_until

    path = make_job(tmp_path / "job", "name: fb\nrun: echo ran > $ORCH_OUTPUT_DIR/r\nresources: {gpu: [any, none]}\n")
    job_id = submit(orch, path)
    app = tick_until(lambda app: app.store.job(job_id).state.terminal)
    assert app.store.job(job_id).state.value == "SUCCEEDED"
