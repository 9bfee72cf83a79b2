"""Small things a newcomer meets at the command line (issue 17's minor list): each is one
clear line and a meaningful exit code, never a traceback or a mangled table."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import make_job, orch_process, submit


def _job(tmp_path, name="tables"):
    return make_job(tmp_path / "job", f"name: {name}\nrun: 'true'\n")


def test_cancel_goes_on_past_a_bad_id_and_reports_each(orch, orch_home, tmp_path):
    a = submit(orch, _job(tmp_path))
    b = submit(orch, _job(tmp_path))
    result = orch("cancel", a, "nosuchjob", b, "--json")
    assert result.exit_code == 1
    out = json.loads(result.stdout)
    assert [o.get("id") for o in out if "id" in o] == [a, b]
    assert [o["ref"] for o in out if "error" in o] == ["nosuchjob"]
    states = {j["id"]: j["state"] for j in json.loads(orch("status", "--json").output)}
    assert states == {a: "CANCELLED", b: "CANCELLED"}


def test_cancel_bad_id_alone_is_one_line(orch, orch_home):
    result = orch("cancel", "zzzz")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == ["Error: no job matches 'zzzz'; `orch status` lists jobs"]


def test_status_mine_with_none_says_so(orch, orch_home, tmp_path, monkeypatch):
    monkeypatch.setenv("ORCH_USER", "alice")
    submit(orch, _job(tmp_path))
    monkeypatch.setenv("ORCH_USER", "bob")
    result = orch("status", "--mine")
    assert result.exit_code == 0
    assert "no jobs submitted by bob (1 by others" in result.output


def test_table_keeps_one_line_per_job_at_80_columns(orch, orch_home, tmp_path):
    from orchestrator.app import App

    ids = [submit(orch, _job(tmp_path, "a-rather-long-job-name-for-an-80-column-terminal")) for _ in range(2)]
    orch("cancel", ids[0])
    app = App.open()
    app.store.note(ids[0], "a note much longer than any terminal: " + "word " * 40)
    app.close()
    proc = orch_process("status", env={"COLUMNS": "80"})
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0
    assert len(lines) == 3, proc.stdout  # the header and one line per job: nothing wraps
    assert all(len(line) <= 80 for line in lines)
    for word in ("CANCELLED", "QUEUED", "STATE", "PLATFORM", "TRIES"):  # fixed columns keep their text
        assert word in proc.stdout
    assert "…" in proc.stdout  # the long name is cut with an ellipsis, whole in --json
    assert any(j["name"].startswith("a-rather-long") for j in json.loads(orch("status", "--json").output))


def test_orch_home_that_is_a_file_is_one_line(tmp_path):
    target = tmp_path / "afile"
    target.write_text("")
    for home in (target, target / "sub"):
        proc = orch_process("status", env={"ORCH_HOME": str(home)})
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert "ORCH_HOME" in proc.stderr


def test_orch_home_with_percent_signs_works(tmp_path):
    """The default state URL is %-decoded: the home's path must be quoted in it."""
    home = tmp_path / "h%41 %2F%"
    env = {k: v for k, v in os.environ.items() if k != "ORCH_STATE_URL"} | {"ORCH_HOME": str(home)}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True,
                              env=env, timeout=60)

    proc = run("submit", str(_job(tmp_path)), "--json")
    assert proc.returncode == 0, proc.stderr
    assert (home / "state.db").is_file()
    assert not (tmp_path / "hA").exists()
    proc = run("status", "--json")
    assert proc.returncode == 0 and len(json.loads(proc.stdout)) == 1


def test_a_second_fetch_never_overwrites_what_the_user_changed(orch, orch_home, tmp_path, monkeypatch):
    from tests.conftest import tick_until

    job = make_job(tmp_path / "out", "name: out\nrun: mkdir -p out && echo fresh > out/r.txt\noutputs: [out/]\n")
    job_id = submit(orch, job)
    tick_until(lambda app: app.store.job(job_id).state.terminal, what="job ends")
    dest = tmp_path / "fetched"
    assert orch("fetch", job_id, "-o", str(dest)).exit_code == 0
    assert orch("fetch", job_id, "-o", str(dest)).exit_code == 0  # unchanged: safe to run twice
    (dest / "outputs" / "out" / "r.txt").write_text("my notes\n")
    result = orch("fetch", job_id, "-o", str(dest))
    assert result.exit_code == 2
    assert "outputs/out/r.txt" in result.output and "--force" in result.output
    assert (dest / "outputs" / "out" / "r.txt").read_text() == "my notes\n"
    assert orch("fetch", job_id, "-o", str(dest), "--force").exit_code == 0
    assert (dest / "outputs" / "out" / "r.txt").read_text() == "fresh\n"


def test_a_cancelled_jobs_partial_outputs_can_be_fetched(orch, orch_home, tmp_path):
    from tests.conftest import wait_until

    marker = tmp_path / "wrote"
    job = make_job(tmp_path / "part", f"name: part\nrun: echo so-far > $ORCH_OUTPUT_DIR/p.txt; touch {marker}; sleep 60\n")
    job_id = submit(orch, job)
    assert orch("tick").exit_code == 0
    wait_until(marker.exists, timeout=30, what="the job wrote its first output")
    assert orch("cancel", job_id).exit_code == 0
    plain = orch("fetch", job_id)
    assert plain.exit_code == 1 and "--partial" in plain.output
    wait_until(lambda: (r := orch("fetch", job_id, "--partial", "-o", str(tmp_path / "got"), "--json"))
                        .exit_code == 0 and r, timeout=30, what="the runner has packed what the job wrote")
    assert (tmp_path / "got" / "outputs" / "p.txt").read_text() == "so-far\n"
    done = make_job(tmp_path / "done", "name: done\nrun: 'true'\n")
    other = submit(orch, done)
    assert orch("fetch", other, "--partial").exit_code == 1  # only for a cancelled job: one line


def test_a_quiet_tick_repeats_the_same_warning_at_most_once_an_hour(orch_home):
    """Cron mails every line: `orch tick --quiet` says a standing problem (a platform
    without a token) once an hour, not every five minutes; a new problem at once."""
    import time

    from orchestrator.app import App
    from orchestrator.cli.control_commands import REPEAT_WARNINGS_S, _not_said_lately

    app = App.open()
    token = "gdrive: clean-up failed: no Google Drive token; run: orch auth drive gdrive"
    assert _not_said_lately(app, [token]) == [token]
    assert _not_said_lately(app, [token]) == []
    assert _not_said_lately(app, [token, "lab: host key changed"]) == ["lab: host key changed"]
    said = orch_home / "logs" / "warned.json"
    aged = {k: time.time() - REPEAT_WARNINGS_S - 1 for k in json.loads(said.read_text())}
    said.write_text(json.dumps(aged))
    assert _not_said_lately(app, [token]) == [token]  # an hour on: said again
    said.write_text("not json")
    assert _not_said_lately(app, [token]) == [token]  # a spoilt memory never silences anything
    app.close()
