"""Issue 16.4: text from a remote or a job cannot drive the terminal. A job names its
outputs and prints escape sequences, a stand-in ``nvidia-smi`` (what a hostile host
reports) gives a GPU name that is rich markup, and a result message tries to repaint
the line as SUCCEEDED; every command must show them as inert text."""

from __future__ import annotations

import os
import stat

import pytest

from orchestrator.states import JobState
from tests.conftest import make_job, open_app, submitted

REPAINT = "\x1b[1A\x1b[2K\x1b[32mSUCCEEDED"
TITLE = "\x1b]0;pwned\x07"
GPU = "T4[/]" + TITLE

HOSTILE = f"""\
name: hostile
run: >-
  python -c "import os; open(os.path.join(os.environ['ORCH_OUTPUT_DIR'], {REPAINT!r}), 'w').write('x');
  print({TITLE!r} + {REPAINT!r})"; exit 1
"""


@pytest.fixture
def hostile_gpu(tmp_path, monkeypatch):
    """An ``nvidia-smi`` on PATH that reports a GPU whose name is markup and an OSC sequence."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    smi = bindir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\nprintf '%s, 15360, 100, 5, 535.1\\n' '{GPU}'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")


def assert_inert(output: str) -> None:
    assert "\x1b" not in output and "\x07" not in output, repr(output)


def test_remote_text_is_shown_inert_by_every_command(orch, orch_home, tmp_path, config, hostile_gpu):
    config("platforms: {local: {type: local, gpu: none}}\n")
    r = orch("submit", str(make_job(tmp_path / "job", HOSTILE)), "--wait", "--interval", "0.2")
    assert r.exit_code == 1  # it failed, and must not be able to say otherwise
    assert_inert(r.output)
    assert "FAILED" in r.output and "[2K" in r.output  # the name is shown, as text
    job_id = submitted(orch, make_job(tmp_path / "job2", "name: other\nrun: echo\n"))["id"]
    app = open_app()
    try:
        [failed] = [j for j in app.store.jobs() if j.name == "hostile"]
        assert failed.state == JobState.FAILED
        app.store.note_many({failed.id: "exit 1" + REPAINT + TITLE})  # as a hostile result.json message would
    finally:
        app.close()
    for args in (("status",), ("status", failed.id), ("status", "--expand"), ("logs", failed.id), ("plan",)):
        r = orch(*args)
        assert r.exit_code == 0, (args, r.output)
        assert_inert(r.output)
    assert "T4[/]" in orch("status").output  # markup shown literally, not a MarkupError
    assert "T4[/]" in orch("status", failed.id).output
    raw = orch("logs", failed.id, "--raw").output
    assert REPAINT in raw  # --raw is the job's own bytes
    assert job_id
