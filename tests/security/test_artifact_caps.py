"""Issue 16.7: a run cannot make the controller fetch or keep more than the documented
caps. A job turns its own ``job.log`` into a 600 MiB sparse file (8 KiB on disk), and
writes outputs over a (lowered) cap; local and a real sshd."""

from __future__ import annotations

import pytest

from orchestrator import results
from tests.conftest import make_job, submit, tick_until
from tests.platforms.conftest import tick_until_state

#: Extends the log the runner is appending to into a 600 MiB hole, then prints a last line.
SPARSE_LOG = """\
name: sparse
run: >-
  python -c "import os; f = open(os.path.join(os.environ['ORCH_CODE_DIR'], '..', '..', 'job.log'), 'r+b');
  f.truncate(600 << 20)"; echo the-last-line
{extra}"""


def fetched_dir(orch, tmp_path, job_id):
    out = tmp_path / "out"
    r = orch("fetch", job_id, "-o", str(out))
    assert r.exit_code == 0, r.output
    return out


def check_capped(orch, orch_home, tmp_path, job_id):
    out = fetched_dir(orch, tmp_path, job_id)
    log = (out / "job.log").read_bytes()
    assert len(log) <= results.LOG_TAIL + 200 and b"over its cap" in log and b"the-last-line" in log
    stored = sum(p.stat().st_size for p in orch_home.rglob("job.log") if p.is_file())
    assert stored < 4 * results.LOG_TAIL  # nothing anywhere under the home holds the 600 MiB
    assert "job.log (629145" in (out / "skipped.txt").read_text()


def test_a_sparse_job_log_is_capped_on_the_local_platform(orch, orch_home, tmp_path):
    job_id = submit(orch, make_job(tmp_path / "job", SPARSE_LOG.format(extra="")))
    tick_until(lambda app: app.store.job(job_id).state.terminal)
    check_capped(orch, orch_home, tmp_path, job_id)


def test_a_sparse_job_log_is_not_downloaded_from_an_ssh_host(orch, orch_home, config, ssh_platform, tmp_path):
    config(platforms={"lab": ssh_platform()})
    job_id = submit(orch, make_job(tmp_path / "job", SPARSE_LOG.format(extra="platforms: [lab]\n")))
    assert tick_until_state(orch, job_id, {"SUCCEEDED", "FAILED", "LOST"})["state"] == "SUCCEEDED"
    check_capped(orch, orch_home, tmp_path, job_id)


@pytest.mark.parametrize("where", ["local", "lab"])
def test_outputs_over_their_cap_are_not_fetched(orch, orch_home, config, ssh_platform, tmp_path, monkeypatch, where):
    monkeypatch.setitem(results.ARTIFACT_CAPS, "outputs.tar.gz", 64 << 10)
    config(platforms={"local": {"type": "local"}, "lab": ssh_platform()})
    job_id = submit(orch, make_job(tmp_path / "job", f"""\
        name: big
        platforms: [{where}]
        run: python -c "import os; open(os.environ['ORCH_OUTPUT_DIR'] + '/noise.bin', 'wb').write(os.urandom(1 << 20))"
        """))
    tick_until(lambda app: app.store.job(job_id).state.terminal, timeout=60)
    out = fetched_dir(orch, tmp_path, job_id)
    assert not (out / "outputs" / "noise.bin").exists()
    assert "outputs.tar.gz" in (out / "skipped.txt").read_text() and "not fetched" in (out / "skipped.txt").read_text()
    assert not [p for p in orch_home.rglob("outputs.tar.gz") if p.stat().st_size > 64 << 10]
