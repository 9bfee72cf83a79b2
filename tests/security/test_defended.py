"""The 11 attacks of the issue-16 review that orch already defended, kept as regression
tests: secret values stay out of argv, the databases, the home and the results; hostile
archives cannot escape; shell metacharacters stay data; host keys are pinned. Each one
performs the attack for real (local runner, real sshd, real PostgreSQL)."""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from pathlib import Path

import pytest

from orchestrator.states import JobState
from tests.conftest import backends, make_job, open_app, submit, tick_until, wait_until
from tests.emulators.sshd import generate_ed25519
from tests.platforms.conftest import ssh_job, tick_until_state
from tests.test_results import hostile_tar
from tests.test_secrets import all_bytes_under, db_dump

#: The DB and home checks run on SQLite and on PostgreSQL.
state_backend = backends

SECRET = "defended-S3cret-" + os.urandom(4).hex()

LEAKY = """\
name: leaky
secrets: [MY_TOKEN]
run: echo "token $MY_TOKEN"; sleep 2
"""


def _cmdlines() -> bytes:
    """Every process's command line on this machine."""
    out = b""
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                out += (d / "cmdline").read_bytes() + b"\n"
            except OSError:
                pass
    return out


@pytest.fixture
def leaky_job(orch, orch_home, tmp_path, monkeypatch) -> str:
    """A job that prints its secret, run to the end while argv is watched; returns its id."""
    monkeypatch.setenv("MY_TOKEN", SECRET)
    job_id = submit(orch, make_job(tmp_path / "job", LEAKY))
    seen_argv = []

    def running() -> bool:
        app = open_app()
        try:
            from orchestrator.controller import Controller

            Controller(app).tick()
            seen_argv.append(SECRET.encode() in _cmdlines())
            return app.store.job(job_id).state.terminal
        finally:
            app.close()

    wait_until(running, 60, "the leaky job finished", interval=0.2)
    assert len(seen_argv) > 3 and not any(seen_argv)  # 1: never on any command line while it ran
    return job_id


def test_secret_values_stay_out_of_the_database(leaky_job):  # 2 (SQLite), 3 (PostgreSQL)
    app = open_app()
    try:
        assert app.store.job(leaky_job).state == JobState.SUCCEEDED
        assert SECRET not in db_dump(app)
    finally:
        app.close()


def test_secret_values_stay_out_of_the_home(leaky_job, orch_home):  # 4
    assert SECRET.encode() not in all_bytes_under(orch_home)


def test_secret_values_stay_out_of_the_results(leaky_job, orch, tmp_path):  # 5
    out = tmp_path / "out"
    assert orch("fetch", leaky_job, "-o", str(out)).exit_code == 0
    assert SECRET.encode() not in all_bytes_under(out) and "token ***" in (out / "job.log").read_text()


def test_a_job_cannot_get_links_fifos_or_outside_files_back(orch, orch_home, tmp_path):  # 6
    victim = tmp_path / "victim.txt"
    victim.write_text("private")
    job_id = submit(orch, make_job(tmp_path / "job", f"""\
        name: links
        run: >-
          cd "$ORCH_OUTPUT_DIR"; ln -s {victim} link.txt; ln -s / root; mkfifo pipe; echo ok > real.txt
        """))
    tick_until(lambda app: app.store.job(job_id).state.terminal)
    out = tmp_path / "out"
    assert orch("fetch", job_id, "-o", str(out)).exit_code == 0
    got = sorted(p.relative_to(out / "outputs").as_posix() for p in (out / "outputs").rglob("*"))
    assert got == ["real.txt"] and victim.read_text() == "private"


def test_a_hostile_outputs_archive_writes_nothing_outside_the_results(orch, orch_home, tmp_path):  # 7
    """The host (not the job) sends back ``../`` names, absolute names, links and devices."""
    from orchestrator.results import install_attempt

    outside = tmp_path / "outside"
    outside.mkdir()
    staging = tmp_path / "staging"
    staging.mkdir()
    hostile_tar(staging / "outputs.tar.gz", outside / "victim.txt")
    dest = orch_home / "results" / "j" / "attempt-1"
    report = install_attempt(staging, dest)
    assert report.skipped and not (outside / "victim.txt").exists()
    assert all(dest in p.resolve().parents for p in dest.rglob("*"))


def test_a_bundle_with_an_escaping_member_is_refused_by_the_runner(tmp_path):  # 8
    import kernels.runner as runner

    archive = tmp_path / "code.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("../../escaped.py")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    dest = tmp_path / "a" / "b"
    dest.mkdir(parents=True)
    with pytest.raises(runner.BundleInvalid, match="unsafe path"):
        runner.extract_verified(str(archive), str(dest), {"../../escaped.py": "0" * 64})
    assert not (tmp_path / "escaped.py").exists()


def test_shell_metacharacters_stay_data_on_an_ssh_host(orch, config, ssh_platform, tmp_path, monkeypatch):  # 9
    monkeypatch.setenv("MY_TOKEN", "v $(touch PWNED1); `touch PWNED2` 'q'")
    config(platforms={"lab": ssh_platform()})
    script = "import os, pathlib\npathlib.Path(os.environ['ORCH_OUTPUT_DIR'], 'v.txt').write_text(os.environ['E'])\n"
    job_id = submit(orch, ssh_job(tmp_path / "job $(touch PWNED3)", name="meta", script=script,
                                  extra="env: {E: \"$(touch PWNED4)\"}\nsecrets: [MY_TOKEN]\n"))
    assert tick_until_state(orch, job_id, {"SUCCEEDED", "FAILED", "LOST"})["state"] == "SUCCEEDED"
    assert not list(tmp_path.rglob("PWNED*")) and not list(Path.home().glob("PWNED*"))


def test_an_unpinned_host_key_is_refused_and_nothing_is_uploaded(orch, config, ssh_platform, tmp_path):  # 10
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    config(platforms={"lab": ssh_platform(known_hosts=str(empty))})
    job_id = submit(orch, ssh_job(tmp_path / "job", name="unpinned"))
    orch("tick")
    doc = json.loads(orch("status", job_id, "--json").output)
    assert doc["state"] != "SUCCEEDED" and "orch ssh trust lab" in orch("platforms").output
    assert not (tmp_path / "remote" / "bundles").exists()


def test_a_changed_host_key_is_refused(orch, config, ssh_platform, sshd, tmp_path):  # 11
    impostor = generate_ed25519(tmp_path / "impostor")
    known = tmp_path / "known_hosts"
    known.write_text(f"{sshd.host_key_name} {impostor.key_type} {impostor.base64}\n")
    config(platforms={"lab": ssh_platform(known_hosts=str(known))})
    job_id = submit(orch, ssh_job(tmp_path / "job", name="mitm"))
    orch("tick")
    time.sleep(0.2)
    assert "CHANGED" in orch("platforms").output
    assert json.loads(orch("status", job_id, "--json").output)["state"] != "SUCCEEDED"
    assert not (tmp_path / "remote" / "bundles").exists()
