"""Issue 16.6: on an SSH host, others must not read your code, data or logs. A job
with a dataset runs on a real sshd; while it runs and after it ends, every path orch
left under the remote dir is checked: nothing is readable by group or others
(directories 0700 or read-only 0500, files 0600 or 0400), and the remote root is 0700."""

from __future__ import annotations

import os
import stat

from tests.conftest import submit, wait_until
from tests.platforms.conftest import ssh_job, tick_until_state

SCRIPT = """\
import os, pathlib, time
print("working", flush=True)
pathlib.Path(os.environ["ORCH_OUTPUT_DIR"], "out.txt").write_text("result")
time.sleep(3)
"""


def leaks(remote) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(remote):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
                found.append(f"{os.path.relpath(path, remote)} {oct(stat.S_IMODE(st.st_mode))}")
    return found


def test_everything_orch_puts_on_an_ssh_host_is_private(orch, config, ssh_platform, tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    os.chmod(remote, 0o755)  # a root an older orch made world-readable
    config(platforms={"lab": ssh_platform()})
    job_id = submit(orch, ssh_job(tmp_path / "job", dataset=b"private data", script=SCRIPT))
    tick_until_state(orch, job_id, {"RUNNING", "SUCCEEDED", "FAILED", "LOST"})
    log = wait_until(lambda: next(remote.glob("attempts/*/job.log"), None), 20, "job.log on the host")
    wait_until(lambda: "working" in log.read_text(), 20, "the job started")
    assert stat.S_IMODE(remote.stat().st_mode) == 0o700
    assert not leaks(remote)  # bundles, blobs, runner, cache, the attempt dir and job.log
    names = {n for _, _, files in os.walk(remote) for n in files}
    assert {"job.log", "manifest.json", "blob.bin"} <= names and any(n.startswith("data-") for n in names)
    assert tick_until_state(orch, job_id, {"SUCCEEDED", "FAILED", "LOST"})["state"] == "SUCCEEDED"
    assert not leaks(remote)
