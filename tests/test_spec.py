"""job.yaml validation: a corpus of broken files, each giving one clear line."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from orchestrator import spec
from orchestrator.errors import SpecError
from tests.conftest import REPO

BROKEN = sorted((Path(__file__).parent / "specs" / "broken").glob("*.yaml"))

#: What each broken file's message must mention (besides file:line).
EXPECT = {
    "01-unknown-top-key": "unknown key 'resorces' — did you mean 'resources'?",
    "02-missing-run": "run: required field is missing",
    "03-bad-gpu": "did you mean 'T4'",
    "04-duration-no-unit": "has no unit",
    "05-duration-garbage": "is not a duration",
    "06-retries-string": "retries:",
    "07-retries-negative": "retries:",
    "08-not-a-mapping": "expected a mapping",
    "09-invalid-yaml": "not valid YAML",
    "10-tabs": "not valid YAML",
    "11-empty-file": "empty",
    "12-run-empty": "run: is empty",
    "13-run-list": "run:",
    "14-code-missing": "code: directory './does-not-exist' does not exist",
    "15-dataset-missing": "datasets[0].path: './no-such-data' does not exist",
    "16-dataset-no-path": "datasets[0].path: required field is missing",
    "17-dataset-bad-name": "datasets[0]",
    "18-dataset-dup-names": "two datasets are named 'd'",
    "19-env-list": "env:",
    "20-env-bad-name": "not a valid environment variable name",
    "21-env-nested": "value must be a string",
    "22-secrets-values": "NAMES",
    "23-secrets-bad-name": "not an environment variable name",
    "24-gpu-count-string": "resources.gpu_count",
    "25-gpu-count-without-gpu": "gpu_count is set but gpu is none",
    "26-memory-negative": "resources.min_gpu_memory_gb",
    "27-resources-unknown": "unknown key 'gpus' — did you mean 'gpu'?",
    "28-internet-word": "internet:",
    "29-checkpoint-absolute": "relative directory",
    "30-checkpoint-parent": "relative directory",
    "31-name-bad": "name:",
    "32-setup-missing-file": "requirements file 'requirements-missing.txt' not found",
    "33-setup-bad-item": "not a pip requirement",
    "34-gpu-none-in-list": "'none' may only come last in a preference list",
    "35-priority-float-string": "priority:",
    "36-outputs-mapping": "outputs:",
    "37-platforms-number": "platforms:",
    "38-duplicate-key": "not valid YAML",
    "39-resources-string": "resources:",
    "40-key-not-string": "key '1' is not a string",
    "41-secrets-from-unknown": "secrets_from:",
    "42-alias-bomb": "expands to more than",
    "43-recursive-alias": "expands to more than",
    "44-deep-nesting": "nested more than 64 levels",
    "45-runtime-zero-clock": "must be longer than zero",
    "46-runtime-huge": "is not a duration",
    "47-runtime-past-a-year": "the most orch takes",
    "48-run-nul": "NUL byte",
    "49-env-orch-name": "names starting with ORCH_ are orch's own",
    "50-secret-loader-name": "secret 'LD_PRELOAD'",
    "51-env-and-secret": "'TOKEN' is both in env: and in secrets:",
    "52-outputs-absolute": "must be a relative path",
    "53-outputs-parent": "must be a relative path",
    "54-checkpoint-code-dir": "not the code directory itself",
    "55-setup-pip-option": "is a pip option",
    "56-retries-bool": "expected a whole number, got true",
    "57-priority-huge": "priority:",
    "58-secret-orch-name": "secret 'ORCH_TOKEN'",
}


def test_corpus_has_at_least_thirty_files_and_every_one_is_covered():
    assert len(BROKEN) >= 30
    assert {p.stem for p in BROKEN} == set(EXPECT)


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.stem)
def test_broken_job_yaml_gives_one_line_naming_file_and_line(path, tmp_path):
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    with pytest.raises(SpecError) as info:
        spec.load(copy)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{copy}"), message
    if path.stem != "11-empty-file":
        assert re.match(rf"^{re.escape(str(copy))}:\d+: ", message), message
    assert EXPECT[path.stem] in message, message


@pytest.mark.parametrize("path", BROKEN[:12], ids=lambda p: p.stem)
def test_cli_shows_broken_spec_as_one_error_line_with_exit_code_2(path, orch, tmp_path):
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    r = orch("submit", str(copy))
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    assert "Traceback" not in r.output


def test_full_spec_is_parsed_and_normalised(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "requirements.txt").write_text("numpy\n")
    path = tmp_path / "job.yaml"
    path.write_text("""\
name: train-1
run: python train.py
setup: requirements.txt
env: {LR: 0.1, DEBUG: true}
secrets: [WANDB_API_KEY]
datasets:
  - {path: data}
outputs: ["*.ckpt"]
resources: {gpu: [t4, A100], gpu_count: 2, min_gpu_memory_gb: 15, max_runtime: 2h30m}
platforms: [kaggle, local]
retries: 1
checkpoint: ckpt/
internet: false
priority: 5
""")
    s = spec.load(path)
    assert s.name == "train-1" and s.code == str(tmp_path)
    assert s.setup.file == "requirements.txt"
    assert s.env == {"LR": "0.1", "DEBUG": "true"}
    assert s.datasets[0].name == "data" and s.datasets[0].path == str(tmp_path / "data")
    assert s.resources.gpu == ("T4", "A100") and s.resources.max_runtime == 9000
    assert s.checkpoint == "ckpt" and s.internet is False and s.priority == 5
    assert spec.from_public_dict(s.public_dict()).model_dump() == s.model_dump()


def test_name_defaults_to_the_directory_name(tmp_path):
    d = tmp_path / "My Project"
    d.mkdir()
    (d / "job.yaml").write_text("run: echo\n")
    assert spec.load(d / "job.yaml").name == "My-Project"


def test_submit_with_unknown_platform_names_the_line_and_suggests(orch, tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("run: echo\nplatforms: [locl]\n")
    r = orch("submit", str(path))
    assert r.exit_code == 2
    assert f"{path}:2:" in r.output and "did you mean 'local'" in r.output


@pytest.mark.parametrize("text,seconds", [("45s", 45), ("90m", 5400), ("2h30m", 9000), ("1d", 86400),
                                          ("1.5h", 5400), ("01:30:00", 5400)])
def test_durations(text, seconds):
    from orchestrator.durations import parse_duration

    assert parse_duration(text) == seconds


def test_example_jobs_in_the_repo_are_valid():
    for path in sorted((REPO / "jobs").glob("*/job.yaml")):
        assert spec.load(path).run


def test_a_run_command_over_the_argument_limit_is_refused_at_load(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("run: echo " + "x" * (130 * 1024) + "\n")
    with pytest.raises(SpecError, match="holds at most 128 KiB"):
        spec.load(path)


def test_pip_options_pass_when_the_job_allows_them(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("run: echo\nsetup: {requirements: ['--index-url=https://pypi.org/simple', numpy], "
                    "allow_pip_options: true}\n")
    assert spec.load(path).setup.requirements[0].startswith("--index-url")


def test_a_fifo_as_dataset_is_refused_at_load(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe")
    path = tmp_path / "job.yaml"
    path.write_text("run: echo\ndatasets: [{path: pipe}]\n")
    with pytest.raises(SpecError, match="not a regular file or directory"):
        spec.load(path)


def test_a_stored_spec_that_no_longer_validates_waits_with_one_readable_line(orch, orch_home, tmp_path):
    import json

    from orchestrator.app import App
    from orchestrator.schema import jobs
    from tests.conftest import make_job, submit

    job_id = submit(orch, make_job(tmp_path / "j", "run: 'true'\n"))
    app = App.open()
    try:
        with app.store.engine.begin() as conn:
            stored = conn.execute(jobs.select().where(jobs.c.id == job_id)).first().spec
            doc = json.loads(stored)
            doc["resources"]["max_runtime"] = "0s"  # accepted by an older orch, refused now
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(spec=json.dumps(doc)))
    finally:
        app.close()
    r = orch("plan", "--json")
    assert r.exit_code == 0, r.output
    assert "pydantic" not in r.output and "validation error" not in r.output
    assert "the stored job.yaml is no longer valid" in r.output
