"""The runner on its own: deadline handling, GPU telemetry, setup, bundle verification, locking."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from orchestrator import bundle as b
from orchestrator import spec as spec_mod
from orchestrator.platforms.base import runner_path
from tests.conftest import wait_until
from tests.emulators.kaggle_runs import can_mount_small_disk


def make_bundle(tmp: Path, yaml: str, files: dict[str, str] | None = None) -> b.Bundle:
    code = tmp / "code"
    code.mkdir(parents=True, exist_ok=True)
    for rel, text in (files or {}).items():
        (code / rel).parent.mkdir(parents=True, exist_ok=True)
        (code / rel).write_text(text)
    (code / "job.yaml").write_text(yaml)
    s = spec_mod.load(code / "job.yaml")
    return b.build(s, tmp / "bundles", b.DatasetCache(tmp / "blobs", tmp / "index"))


def run_runner(tmp: Path, bun: b.Bundle, *extra: str, env: dict | None = None, stdin: dict | None = None,
               timeout: float = 60, python: str = sys.executable) -> tuple[subprocess.CompletedProcess, dict]:
    attempt = tmp / "attempt"
    cmd = [python, str(runner_path()), "--attempt-dir", str(attempt), "--bundle", str(bun.directory),
           "--data-path", str(tmp / "blobs"), "--cache-dir", str(tmp / "cache"), "--job-id", "j" * 32,
           "--job-name", "t", "--attempt", "1", *extra]
    if stdin is not None:
        cmd.append("--env-stdin")
    proc = subprocess.run(cmd, input=json.dumps(stdin) if stdin is not None else None, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "ORCH_HEARTBEAT_SECONDS": "0.2", **(env or {})})
    result = json.loads((attempt / "result.json").read_text()) if (attempt / "result.json").exists() else {}
    return proc, result


def test_job_ignoring_sigterm_is_killed_after_the_grace(tmp_path):
    bun = make_bundle(tmp_path, "run: trap '' TERM; sleep 60\n")
    started = time.time()
    proc, result = run_runner(tmp_path, bun, "--max-runtime", "1", "--grace", "1")
    assert time.time() - started < 10
    assert result["status"] == "failed" and result["failure_class"] == "timeout"
    assert result["exit_code"] != 0


def test_job_that_handles_sigterm_exits_within_the_grace(tmp_path):
    script = "import signal,sys,time\nsignal.signal(signal.SIGTERM, lambda *a: (print('saving'), sys.exit(0)))\ntime.sleep(60)\n"
    bun = make_bundle(tmp_path, "run: python job.py\n", {"job.py": script})
    proc, result = run_runner(tmp_path, bun, "--max-runtime", "1", "--grace", "20")
    assert result["wall_s"] < 15 and result["failure_class"] == "timeout"
    assert "saving" in (tmp_path / "attempt" / "job.log").read_text()


def test_session_end_with_a_checkpoint_is_checkpointed(tmp_path):
    script = ("import os,signal,sys,time,pathlib\nd=pathlib.Path(os.environ['ORCH_CHECKPOINT_DIR'])\n"
              "def stop(*a):\n    (d/'step').write_text('7'); sys.exit(0)\n"
              "signal.signal(signal.SIGTERM, stop)\ntime.sleep(60)\n")
    bun = make_bundle(tmp_path, "run: python job.py\ncheckpoint: ckpt\n", {"job.py": script})
    proc, result = run_runner(tmp_path, bun, "--max-runtime", "600", "--grace", "1", "--session-seconds", "2")
    assert result["status"] == "checkpointed" and result["checkpoint"] is True
    assert (tmp_path / "attempt" / "checkpoint.tar.gz").is_file()


def test_deadline_is_exported_to_the_job(tmp_path):
    bun = make_bundle(tmp_path, "run: echo $ORCH_DEADLINE > $ORCH_OUTPUT_DIR/d\n")
    before = time.time()
    proc, result = run_runner(tmp_path, bun, "--max-runtime", "100")
    import tarfile

    with tarfile.open(tmp_path / "attempt" / "outputs.tar.gz") as tar:
        deadline = int(tar.extractfile("d").read())
    assert before + 95 < deadline < before + 105


def test_gpu_identity_and_peak_memory_come_from_nvidia_smi(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    counter = tmp_path / "calls"
    (fake / "nvidia-smi").write_text(
        "#!/bin/sh\nn=$(cat %s 2>/dev/null || echo 0); n=$((n+1)); echo $n > %s\n"
        "echo \"Tesla T4, 15360, $((n*1000)), 87, 535.104.05\"\n" % (counter, counter))
    (fake / "nvidia-smi").chmod(0o755)
    bun = make_bundle(tmp_path, "run: sleep 1.5\n")
    proc, result = run_runner(tmp_path, bun, "--max-runtime", "60",
                              env={"PATH": f"{fake}:{os.environ['PATH']}"})
    assert result["gpu"] == {"name": "Tesla T4", "count": 1, "memory_total_mb": 15360.0, "driver": "535.104.05"}
    calls = int(counter.read_text())
    assert result["peak_gpu_memory_mb"] >= 3000 and result["peak_gpu_memory_mb"] <= calls * 1000
    assert result["max_gpu_utilization_pct"] == 87


def test_setup_installs_requirements_into_a_cache_not_the_host(tmp_path):
    wheel = tmp_path / "minipkg-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("minipkg/__init__.py", "VALUE = 41 + 1\n")
        z.writestr("minipkg-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: minipkg\nVersion: 0.1\n")
        z.writestr("minipkg-0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr("minipkg-0.1.dist-info/RECORD", "")
    yaml = f"run: python -c 'import minipkg; print(minipkg.VALUE)'\nsetup: ['{wheel}']\n"
    bun = make_bundle(tmp_path, yaml)
    proc, result = run_runner(tmp_path, bun, "--max-runtime", "120", timeout=120)
    assert result["status"] == "succeeded", (tmp_path / "attempt" / "job.log").read_text()
    assert "42" in (tmp_path / "attempt" / "job.log").read_text()
    assert list((tmp_path / "cache" / "pydeps").glob("*/minipkg/__init__.py"))
    with pytest.raises(ImportError):
        __import__("minipkg")


def test_tampered_code_archive_is_refused(tmp_path):
    bun = make_bundle(tmp_path, "run: echo should-not-run\n", {"main.py": "x"})
    data = bytearray(bun.code_archive.read_bytes())
    data[-30] ^= 0xFF
    bun.code_archive.write_bytes(bytes(data))
    proc, result = run_runner(tmp_path, bun, "--max-runtime", "60")
    assert result["status"] == "failed" and result["failure_class"] == "bundle"
    assert "should-not-run" not in (tmp_path / "attempt" / "job.log").read_text().split("[orch]")[-1]


def test_a_second_runner_for_the_same_attempt_refuses(tmp_path):
    bun = make_bundle(tmp_path, "run: sleep 2\n")
    attempt = tmp_path / "attempt"
    cmd = [sys.executable, str(runner_path()), "--attempt-dir", str(attempt), "--bundle", str(bun.directory),
           "--job-id", "x" * 32, "--max-runtime", "60", "--detach"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert first.returncode == 0 and json.loads(first.stdout)["pid"] > 0
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert second.returncode == 75
    wait_until((attempt / "result.json").exists, 20, "result.json written")
    third = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert third.returncode == 75, "a finished attempt must not run again"
    assert json.loads((attempt / "result.json").read_text())["status"] == "succeeded"


def test_runner_runs_on_python_3_9_syntax():
    import ast

    tree = ast.parse(runner_path().read_text(), feature_version=(3, 9))
    imported = {n.names[0].name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)


def _python39() -> str | None:
    import glob
    import shutil

    found = sorted(glob.glob("/root/.pyenv/versions/3.9*/bin/python3")) or ([shutil.which("python3.9")] if shutil.which("python3.9") else [])
    return found[0] if found else None


@pytest.mark.skipif(_python39() is None, reason="no Python 3.9 interpreter on this machine")
def test_runner_works_under_python_3_9(tmp_path):
    bun = make_bundle(tmp_path, "run: echo ok > $ORCH_OUTPUT_DIR/ok.txt\n")
    attempt = tmp_path / "attempt"
    proc = subprocess.run([_python39(), str(runner_path()), "--attempt-dir", str(attempt), "--bundle",
                           str(bun.directory), "--job-id", "x" * 32, "--max-runtime", "60"],
                          capture_output=True, text=True, timeout=60)
    result = json.loads((attempt / "result.json").read_text())
    assert result["status"] == "succeeded" and result["python"].startswith("3.9"), proc.stderr


# ------------------------------------------------------------------ hard deadlines, signals, full disks

CHECKPOINTING_STEPS = """\
import os, pathlib, signal, time
ckpt = pathlib.Path(os.environ["ORCH_CHECKPOINT_DIR"])
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
step = int((ckpt / "step").read_text()) if (ckpt / "step").exists() else 0
(ckpt / "weights.bin").write_bytes(os.urandom({mb} << 20))  # a checkpoint, written while running
while not stop:
    time.sleep(0.5)  # one "step"; SIGTERM is obeyed only between steps
    step += 1
    (ckpt / "step").write_text(str(step))
print("stopped at step", step, flush=True)
"""


def test_a_hard_deadline_stops_the_job_early_enough_to_pack_a_big_checkpoint(tmp_path):
    bun = make_bundle(tmp_path, "run: python job.py\ncheckpoint: ckpt\n", {"job.py": CHECKPOINTING_STEPS.format(mb=200)})
    hard = time.time() + 12
    proc, result = run_runner(tmp_path, bun, "--max-runtime", "600", "--grace", "2", "--session-seconds", "3600",
                              "--hard-deadline", f"{hard:.3f}")
    assert result["status"] == "checkpointed", result
    assert result["ended_at"] < hard  # packed and written before the platform's kill
    assert result["pack_write_mb_s"] > 0
    import tarfile

    with tarfile.open(tmp_path / "attempt" / "checkpoint.tar.gz") as tar:
        assert tar.getmember("weights.bin").size == 200 << 20
    assert not list((tmp_path / "attempt").glob("*.partial"))


def _start_runner(tmp_path: Path, bun: b.Bundle, *extra: str) -> subprocess.Popen:
    attempt = tmp_path / "attempt"
    cmd = [sys.executable, str(runner_path()), "--attempt-dir", str(attempt), "--bundle", str(bun.directory),
           "--data-path", str(tmp_path / "blobs"), "--cache-dir", str(tmp_path / "cache"), "--job-id", "j" * 32,
           "--max-runtime", "600", "--grace", "5", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "ORCH_HEARTBEAT_SECONDS": "0.2"})
    wait_until(lambda: "stopped" not in (attempt / "job.log").read_text() and "running:" in (attempt / "job.log").read_text()
               if (attempt / "job.log").exists() else False, 30, "the job to start", interval=0.1)
    time.sleep(1.0)
    return proc


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_that_orch_cancel_did_not_send_is_an_interruption_with_the_checkpoint_saved(tmp_path, sig):
    import signal

    bun = make_bundle(tmp_path, "run: python job.py\ncheckpoint: ckpt\n", {"job.py": CHECKPOINTING_STEPS.format(mb=1)})
    proc = _start_runner(tmp_path, bun)
    proc.send_signal(getattr(signal, sig))
    proc.wait(timeout=30)
    result = json.loads((tmp_path / "attempt" / "result.json").read_text())
    assert result["status"] == "interrupted" and result["failure_class"] == "interrupted", result
    assert sig in result["message"] and "checkpoint saved" in result["message"]
    assert result["checkpoint"] is True and (tmp_path / "attempt" / "checkpoint.tar.gz").is_file()


def test_a_signal_after_orch_cancel_left_its_marker_is_a_cancellation(tmp_path):
    import signal

    from kernels.runner import CANCEL_MARKER

    bun = make_bundle(tmp_path, "run: python job.py\ncheckpoint: ckpt\n", {"job.py": CHECKPOINTING_STEPS.format(mb=1)})
    proc = _start_runner(tmp_path, bun)
    (tmp_path / "attempt" / CANCEL_MARKER).write_text("")
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    result = json.loads((tmp_path / "attempt" / "result.json").read_text())
    assert result["status"] == "cancelled" and result["failure_class"] == "cancelled", result


@pytest.mark.skipif(not can_mount_small_disk(), reason="needs root and unshare to mount a small tmpfs")
def test_outputs_bigger_than_the_attempt_dirs_disk_fail_the_job_with_the_space_it_had(tmp_path):
    bun = make_bundle(tmp_path, "run: head -c 30000000 /dev/urandom > $ORCH_OUTPUT_DIR/big.bin\n")
    attempt, kept = tmp_path / "attempt", tmp_path / "kept"
    attempt.mkdir()
    kept.mkdir()
    runner = [sys.executable, str(runner_path()), "--attempt-dir", str(attempt), "--bundle", str(bun.directory),
              "--work-dir", str(tmp_path / "work"), "--job-id", "j" * 32, "--max-runtime", "60"]
    script = ('mount -t tmpfs -o size=10m tmpfs "$1" && shift 2 && "$@"; '
              'cp -a "$ATTEMPT"/. "$KEPT"/')
    subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(attempt), "--", *runner], timeout=60,
                   env={**os.environ, "ATTEMPT": str(attempt), "KEPT": str(kept)}, capture_output=True)
    result = json.loads((kept / "result.json").read_text())
    assert result["status"] == "failed" and result["failure_class"] == "space", result
    assert "outputs exceed the space the platform gives: 10 MB" in result["message"]
    assert not list(kept.glob("*.partial"))


def test_pip_failing_on_a_run_without_internet_says_so(tmp_path):
    bun = make_bundle(tmp_path, "run: echo never\nsetup: [orch-no-such-package-xyz]\n")
    dead = {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2",
            "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    proc, result = run_runner(tmp_path, bun, "--max-runtime", "120", "--offline", env=dead, timeout=120)
    assert result["status"] == "failed" and result["failure_class"] == "setup"
    assert result["message"].startswith("pip install exited with 1: no internet on this kernel (internet: false)")
