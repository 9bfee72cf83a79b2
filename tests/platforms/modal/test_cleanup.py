"""What orch leaves on Modal and cleans up: orphaned sandboxes (``reconcile``) and the
volume's shared files (``orch gc``), with the unmodified client against the stand-in."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import make_job, orch_process, submit, tick_until
from tests.platforms.modal.test_modal import job, settled, state


@pytest.mark.parametrize("gpu", ["T4", "none"])  # a V1 sandbox, and a V2 one (no GPU)
def test_a_sandbox_whose_attempt_was_cancelled_after_a_crash_is_terminated_on_a_later_tick(
        orch, modal_config, modal_standin, tmp_path, orch_home, gpu):
    modal_config(orphan_grace="1s")
    job_id = submit(orch, make_job(tmp_path / "idle", f"""\
        name: idle
        run: sleep 120
        resources: {{gpu: {gpu}, max_runtime: 10m}}
        """))
    crashed = orch_process("tick", env={"ORCH_FAILPOINTS": "after_submit"})
    assert crashed.returncode == -9, crashed.stderr
    sb, = modal_standin.sandboxes.values()
    assert sb.tags["orch-key"] == sb.name and sb.tags["orch-controller"]
    result = orch("cancel", job_id)  # the attempt ends in the store; its sandbox runs on
    assert result.exit_code == 0, result.output
    assert modal_standin.running() == [sb]
    tick_until(lambda app: not modal_standin.running(), timeout=30,
               what=f"orphan terminated {modal_standin.calls[-30:]} {list((orch_home / 'platforms').rglob('*'))}")
    assert "SandboxListV2" in modal_standin.calls and sb.proc.poll() is not None
    assert state(orch, job_id)["state"] == "CANCELLED"
    # swept: with nothing left to watch, a tick makes no call to Modal
    calls = len(modal_standin.calls)
    assert orch("tick").exit_code == 0
    assert len(modal_standin.calls) == calls, modal_standin.calls[calls:]


def test_the_sweep_leaves_live_attempts_young_sandboxes_and_other_homes_alone(orch, modal_config, modal_standin,
                                                                              tmp_path):
    import modal
    modal_config(orphan_grace="1s")
    job_id = submit(orch, job(tmp_path, run="sleep 4; python3 train.py"))
    tick_until(lambda app: app.store.attempts_of(job_id)[-1].state.value == "RUNNING", what="running")
    app = modal.App.lookup("orch")
    other = modal.Sandbox.create("sleep", "60", app=app, name="another-home", gpu="T4",
                                 tags={"orch-controller": "not-this-home", "orch-key": "x", "orch-created": "0"})
    settled(job_id)
    assert state(orch, job_id)["state"] == "SUCCEEDED"
    assert "SandboxListV2" in modal_standin.calls
    mine = [sb for sb in modal_standin.sandboxes.values() if sb.name != "another-home"]
    assert all(sb.result is not None and sb.result.status == sb.result.GENERIC_STATUS_SUCCESS for sb in mine)
    assert [sb.id for sb in modal_standin.running()] == [other.object_id]
    other.terminate()


def test_a_failed_listing_terminates_nothing_and_is_retried(orch, modal_config, modal_standin, tmp_path):
    from grpclib.const import Status
    modal_config(orphan_grace="1s")
    job_id = submit(orch, job(tmp_path, run="sleep 120"))
    assert orch_process("tick", env={"ORCH_FAILPOINTS": "after_submit"}).returncode == -9
    assert orch("cancel", job_id).exit_code == 0
    modal_standin.fail("SandboxListV2", Status.UNAVAILABLE, times=20)
    time.sleep(1.5)  # past the grace: only the failed listing keeps it alive
    result = orch("tick")
    assert result.exit_code == 0 and "Traceback" not in result.output
    assert len(modal_standin.running()) == 1 and "SandboxListV2" in modal_standin.calls
    assert "sandbox list failed" in result.output or "clean-up" in result.output, result.output
    modal_standin.faults.clear()
    tick_until(lambda app: not modal_standin.running(), timeout=30, what="orphan terminated")


def volume_root(modal_standin):
    return modal_standin.volume_dir(modal_standin.volumes["orch"])


def test_gc_deletes_volume_files_no_live_job_reads_and_nothing_else(orch, modal_config, modal_standin, tmp_path):
    modal_config()
    first = submit(orch, job(tmp_path, "one"))
    settled(first)
    root = volume_root(modal_standin)
    old_bundle, = (p.name for p in (root / "bundles").iterdir())
    (root / "notes").mkdir()
    (root / "notes" / "mine.txt").write_text("not orch's")
    (root / "bundles" / "Not-A-Digest").mkdir()
    time.sleep(1.5)
    second = submit(orch, job(tmp_path, "two", run="sleep 6; python3 train.py"))  # same data, new code
    tick_until(lambda app: app.store.attempts_of(second)[-1].state.value == "RUNNING", what="running")
    listed = json.loads(orch("gc", "--older-than", "1s", "--json").output)
    refs = {r["ref"]: r["kind"] for r in listed}
    assert refs == {f"bundles/{old_bundle}": "bundle"}, listed  # the data and the runner: `two` reads them
    result = orch("gc", "--older-than", "1s", "--yes")
    assert result.exit_code == 0 and "deleted" in result.output, result.output
    assert not (root / "bundles" / old_bundle).exists() and (root / "blobs").iterdir()
    settled(second)
    assert state(orch, second)["state"] == "SUCCEEDED"
    time.sleep(1.5)
    result = orch("gc", "--older-than", "1s", "--yes", "--json")
    kinds = sorted(r["kind"] for r in json.loads(result.output))
    assert kinds == ["bundle", "data", "runner"], result.output
    assert (root / "notes" / "mine.txt").exists() and (root / "bundles" / "Not-A-Digest").exists()
    third = submit(orch, job(tmp_path, "three"))  # everything it needs goes up again
    settled(third)
    assert state(orch, third)["state"] == "SUCCEEDED"


def test_gc_on_a_modal_platform_that_cannot_be_heard_says_so_in_one_line(orch, modal_config, modal_standin):
    from grpclib.const import Status
    modal_config()
    modal_standin.fail("VolumeGetOrCreate", Status.UNAVAILABLE, times=50)
    result = orch("gc")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "Modal" in result.output and len(result.output.strip().splitlines()) == 1, result.output
