"""Kernel runs for the Kaggle emulator: a pushed script executed as a local process.

Each run gets a Kaggle-like directory tree under its own root, the same shape real
Kaggle gives a batch kernel under ``/kaggle``::

    <run root>/input/<slug>/...                      legacy layout (``input_layout="legacy"``)
    <run root>/input/datasets/<owner>/<slug>/...     2026 layout (``input_layout="datasets"``)
    <run root>/input/notebooks/<owner>/<slug>/...    a kernel source's output, 2026 layout
    <run root>/working/                              cwd; every file here becomes an output
    <run root>/src/<slug>.py                         the pushed code file

Tests cannot write to ``/kaggle``, so the run root reaches the script through
``ORCH_KAGGLE_ROOT`` (a test-only override; real Kaggle has ``/kaggle``). A fake
``kaggle_secrets`` module on ``PYTHONPATH`` answers ``UserSecretsClient`` with the
secrets a test attached, the way the Kaggle image answers with the notebook's
attached secrets.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

#: Terminal kernel worker states.
TERMINAL = frozenset({"COMPLETE", "ERROR", "CANCEL_ACKNOWLEDGED"})

TIMEOUT_MESSAGE = (
    "Your notebook was stopped because it exceeded the maximum execution time of {limit:g} seconds."
)
ERROR_MESSAGE = "Your notebook hit an unhandled error while executing (process exited with status {rc})."

_SECRETS_MODULE = '''\
"""Emulator stand-in for the kaggle_secrets module of the Kaggle image."""
import json, os


class BackendError(Exception):
    pass


class UserSecretsClient:
    def get_secret(self, label):
        with open(os.environ["ORCH_EMULATOR_SECRETS"]) as f:
            secrets = json.load(f)
        if label not in secrets:
            raise BackendError("Unexpected response from the service. Response: "
                               "{'errors': ['No user secrets exist for kernel id 1 and label %s'], "
                               "'wasSuccessful': False}" % label)
        return secrets[label]
'''


#: Runs the script with a tmpfs of size $3 over working/ ($1) in a private mount
#: namespace, and copies what it left there to $2 for the output listing (the mount
#: goes when the namespace does). Needs root and unshare: see ``can_mount_small_disk``.
_SMALL_WORKING = r"""
mount -t tmpfs -o "size=$3" tmpfs "$1" || exit 97
w=$1 s=$2; shift 3
cd "$w" && "$@"; rc=$?
cp -a "$w"/. "$s"/
exit $rc
"""


def can_mount_small_disk() -> bool:
    """Whether this machine lets the emulator mount a small working/ (root + unshare)."""
    import shutil

    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True, timeout=10)
    return probe.returncode == 0


@dataclass
class KernelRun:
    """One pushed version of a kernel and its (emulated) session."""

    owner: str
    slug: str
    version: int
    request: dict
    pushed_at: float
    gpu: bool
    root: Path
    status: str = "QUEUED"
    failure_message: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    #: Kaggle-style log entries: {"stream_name", "time", "data"}.
    log: list[dict] = field(default_factory=list)
    #: (relative name, file path) of the saved outputs, once the run ended.
    outputs: list[tuple[str, Path]] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    thread: threading.Thread | None = None
    changed: threading.Condition = field(default_factory=threading.Condition)

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.slug}"

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def log_text(self) -> str:
        """The session log as Kaggle returns it: a JSON array of stream entries."""
        with self.changed:
            return json.dumps(self.log)


@dataclass
class RunEnvironment:
    """What a run needs from the emulator: where inputs come from, timing, layout."""

    python: str
    queue_delay: float
    session_limit: float | None
    boot_delay: float
    working_limit_mb: int | None
    input_layout: str
    extract_archives: bool
    keep_output_on_timeout: bool
    secrets: dict[str, str]
    dataset_files: Callable[[str], dict[str, bytes] | None]
    kernel_outputs: Callable[[str], list[tuple[str, Path]] | None]
    on_finish: Callable[[KernelRun], None]


def start(run: KernelRun, env: RunEnvironment, stop: threading.Event) -> None:
    """Run ``run`` on a thread: queue delay, input layout, process, session limit."""
    run.thread = threading.Thread(target=_session, args=(run, env, stop), name=f"kaggle-run-{run.slug}", daemon=True)
    run.thread.start()


def stop_run(run: KernelRun) -> None:
    """Kill a run's process group (emulator shutdown or reset)."""
    proc = run.proc
    if proc is not None and proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if run.thread is not None:
        run.thread.join(timeout=10)


def _set(run: KernelRun, **changes) -> None:
    with run.changed:
        for key, value in changes.items():
            setattr(run, key, value)
        run.changed.notify_all()


def _session(run: KernelRun, env: RunEnvironment, stop: threading.Event) -> None:
    if stop.wait(env.queue_delay):
        return
    try:
        script = _prepare(run, env)
    except Exception as exc:  # a broken input is a failed session, as on Kaggle
        _set(run, status="ERROR", failure_message=f"Failed to attach inputs: {exc}", ended_at=time.monotonic())
        env.on_finish(run)
        return
    limit = _session_limit(run, env)
    proc_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(run.root / "home"),
        "TMPDIR": str(run.root / "tmp"),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(run.root / "lib"),
        "ORCH_KAGGLE_ROOT": str(run.root),
        "ORCH_EMULATOR_SECRETS": str(run.root / "lib" / "secrets.json"),
        "KAGGLE_KERNEL_RUN_TYPE": "Batch",
        "KAGGLE_KERNEL_INTEGRATIONS": "",
    }
    if not run.request.get("enableInternet", True):  # no route out: every connection is refused
        proc_env.update({"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
                         "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2"})
    # Kaggle's session clock (and its hard kill at the limit) starts when the session is
    # assigned; the script starts once the container has booted.
    started = time.monotonic()
    _set(run, status="RUNNING", started_at=started)
    if stop.wait(env.boot_delay):
        return
    argv, saved = [env.python, str(script)], run.root / "working"
    if env.working_limit_mb:  # a /kaggle/working of that size: writes past it fail with ENOSPC
        saved = run.root / "working-saved"
        saved.mkdir()
        argv = ["unshare", "-m", "sh", "-c", _SMALL_WORKING, "sh", str(run.root / "working"), str(saved),
                f"{env.working_limit_mb}m", *argv]
    proc = subprocess.Popen(
        argv,
        cwd=run.root / "working",
        env=proc_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    _set(run, status="RUNNING", started_at=started, proc=proc)
    readers = [
        threading.Thread(target=_read_stream, args=(run, proc.stdout, "stdout", started), daemon=True),
        threading.Thread(target=_read_stream, args=(run, proc.stderr, "stderr", started), daemon=True),
    ]
    for reader in readers:
        reader.start()
    timed_out = False
    while True:
        try:
            rc = proc.wait(timeout=0.02)
            break
        except subprocess.TimeoutExpired:
            pass
        if stop.is_set() or (limit is not None and time.monotonic() - started >= limit):
            timed_out = not stop.is_set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            rc = proc.wait()
            break
    for reader in readers:
        reader.join(timeout=5)
    outputs = [] if (timed_out and not env.keep_output_on_timeout) else _collect(saved)
    if timed_out:
        status, message = "ERROR", TIMEOUT_MESSAGE.format(limit=limit)
    elif rc == 0:
        status, message = "COMPLETE", None
    else:
        status, message = "ERROR", ERROR_MESSAGE.format(rc=rc)
    _set(run, status=status, failure_message=message, exit_code=rc, ended_at=time.monotonic(), outputs=outputs)
    env.on_finish(run)


def _session_limit(run: KernelRun, env: RunEnvironment) -> float | None:
    limits = [x for x in (run.request.get("sessionTimeoutSeconds"), env.session_limit) if x]
    return float(min(limits)) if limits else None


def _read_stream(run: KernelRun, stream, name: str, started: float) -> None:
    for raw in iter(stream.readline, b""):
        entry = {"stream_name": name, "time": round(time.monotonic() - started, 3), "data": raw.decode("utf-8", "replace")}
        with run.changed:
            run.log.append(entry)
            run.changed.notify_all()
    stream.close()


def _prepare(run: KernelRun, env: RunEnvironment) -> Path:
    """Lay out input/, working/, src/ and lib/ for the run; returns the script path."""
    for sub in ("input", "working", "src", "lib", "home", "tmp"):
        (run.root / sub).mkdir(parents=True, exist_ok=True)
    (run.root / "lib" / "kaggle_secrets.py").write_text(_SECRETS_MODULE)
    secrets_file = run.root / "lib" / "secrets.json"
    secrets_file.write_text(json.dumps(env.secrets))
    secrets_file.chmod(0o600)
    for source in run.request.get("datasetDataSources") or []:
        owner, slug = source.split("/")[:2]
        files = env.dataset_files(f"{owner}/{slug}")
        if files is None:
            continue  # invalid sources are reported by SaveKernel and not attached
        target = _input_dir(run.root, env.input_layout, "datasets", owner, slug)
        for name, data in files.items():
            if env.extract_archives and _extract(name, data, target):
                continue
            (target / name).write_bytes(data)
    for source in run.request.get("kernelDataSources") or []:
        owner, slug = source.split("/")[:2]
        outputs = env.kernel_outputs(f"{owner}/{slug}")
        if outputs is None:
            continue
        target = _input_dir(run.root, env.input_layout, "notebooks", owner, slug)
        for name, path in outputs:
            dest = target / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(path.read_bytes())
    script = run.root / "src" / f"{run.slug}.py"
    script.write_text(run.request.get("text") or "", encoding="utf-8")
    return script


def _input_dir(root: Path, layout: str, kind: str, owner: str, slug: str) -> Path:
    path = root / "input" / slug if layout == "legacy" else root / "input" / kind / owner / slug
    path.mkdir(parents=True, exist_ok=True)
    return path


def _extract(name: str, data: bytes, target: Path) -> bool:
    """Unpack an uploaded archive into the dataset root, as Kaggle's processing does."""
    if name.endswith((".tar", ".tar.gz", ".tgz")):
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            tar.extractall(target, filter="data")
        return True
    if name.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            zf.extractall(target)
        return True
    return False


def _collect(working: Path) -> list[tuple[str, Path]]:
    """Regular files under working/ (what Kaggle saves as the version's output)."""
    found = []
    for path in sorted(working.rglob("*")):
        if path.is_file() and not path.is_symlink():
            found.append((path.relative_to(working).as_posix(), path))
    return found


def wait_finished(run: KernelRun, timeout: float) -> bool:
    """Block until the run reached a terminal state; False on timeout."""
    deadline = time.monotonic() + timeout
    with run.changed:
        while not run.finished:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            run.changed.wait(left)
    return True


def python_executable() -> str:
    return sys.executable
