"""The one Python file orch pushes as a Kaggle kernel.

A kernel push uploads exactly one code file, so the generated script carries what
the run needs: the runner (``kernels/runner.py``, read at submit time), the job's
bundle (``manifest.json`` + code archive) when it is at most :data:`EMBED_LIMIT`
bytes, and a plan (JSON, never a secret) naming the private datasets and the kernel
source it finds under ``/kaggle/input``. At run time it

1. writes the runner and the bundle to a scratch dir outside ``/kaggle/working``
   (everything in ``working`` is saved as output, up to 20 GB);
2. locates each attached dataset by slug, whichever mount layout Kaggle uses
   (``input/<slug>/`` or ``input/datasets/<owner>/<slug>/``), and, when Kaggle
   unpacked the uploaded ``data-<digest>.tar`` in place, links the dataset root as
   ``data-<digest>`` in the runner's cache so the runner verifies it as a tree;
3. finds the previous attempt's ``checkpoint.tar.gz`` (attached as a kernel source);
4. hands the job's plain env to the runner on stdin (Kaggle gets no secrets);
5. runs the runner in the foreground with ``--attempt-dir /kaggle/working`` and
   ``--hard-deadline``: when Kaggle kills the session, by its own clock, which
   started before this script did (``startup_allowance``); and exits non-zero when
   the job did not succeed, so Kaggle marks the version ERROR.

``ORCH_KAGGLE_ROOT`` replaces ``/kaggle`` (test-only: the emulator cannot use ``/kaggle``).
The script is stdlib-only and runs on Python >= 3.9.
"""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

#: Largest bundle (manifest + code archive, bytes) embedded in the script; a bigger
#: bundle is uploaded as a private dataset instead (documented in docs/platforms/kaggle.md).
EMBED_LIMIT = 1024 * 1024

#: Where the runner's artefacts land on Kaggle, relative to the Kaggle root.
ATTEMPT_DIR = "working"


@dataclass(frozen=True)
class ScriptPlan:
    """Everything the kernel script needs besides the runner source.

    Attributes:
        key: the attempt key (for messages).
        runner_args: ``Launch.runner_args()`` (identity and deadlines).
        env: plain environment for the job (never secrets).
        datasets: (digest, dataset slug) for every dataset the job uses.
        bundle_files: name -> bytes of ``manifest.json`` and the code archive, when
            embedded; empty when the bundle travels as dataset ``bundle_slug``.
        bundle_slug: slug of the private dataset holding the bundle, when not embedded.
        checkpoint_source: slug of the attached kernel (or dataset) whose files hold
            ``checkpoint_file``.
        checkpoint_file: name of the checkpoint archive to restore.
        session_timeout: the ``sessionTimeoutSeconds`` pushed with the kernel.
        startup_allowance: how long Kaggle's session clock may have run before the
            script's first line (container start); the hard deadline is
            script start + session_timeout - startup_allowance.
    """

    key: str
    runner_args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    datasets: list[tuple[str, str]] = field(default_factory=list)
    bundle_files: dict[str, bytes] = field(default_factory=dict)
    bundle_slug: str | None = None
    checkpoint_source: str | None = None
    checkpoint_file: str | None = None
    session_timeout: int | None = None
    startup_allowance: float = 60.0


def _pack(data: bytes) -> str:
    return base64.b64encode(zlib.compress(data, 9)).decode("ascii")


def render(plan: ScriptPlan, runner_source: str) -> str:
    """The kernel script for ``plan``; raises ValueError if the plan is inconsistent."""
    if not plan.bundle_files and not plan.bundle_slug:
        raise ValueError("a kernel script needs the bundle, embedded or as a dataset")
    if plan.bundle_files and "manifest.json" not in plan.bundle_files:
        raise ValueError("an embedded bundle must contain manifest.json")
    doc = {
        "key": plan.key,
        "runner_args": list(plan.runner_args),
        "env": dict(plan.env),
        "datasets": [list(pair) for pair in plan.datasets],
        "bundle_slug": plan.bundle_slug,
        "checkpoint_source": plan.checkpoint_source,
        "checkpoint_file": plan.checkpoint_file,
        "attempt_dir": ATTEMPT_DIR,
        "session_timeout": plan.session_timeout,
        "startup_allowance": plan.startup_allowance,
    }
    bundle = {name: _pack(data) for name, data in sorted(plan.bundle_files.items())}
    return (
        _HEADER.format(key=plan.key)
        + f"PLAN = json.loads({json.dumps(doc, sort_keys=True)!r})\n"
        + f"RUNNER = {_pack(runner_source.encode('utf-8'))!r}\n"
        + f"BUNDLE = {bundle!r}\n"
        + _BODY
    )


def render_for(plan: ScriptPlan, runner: Path) -> str:
    """``render`` with the runner read from ``runner`` (``runner_path()``) now."""
    return render(plan, runner.read_text(encoding="utf-8"))


_HEADER = '''\
#!/usr/bin/env python3
"""orch attempt {key}. Generated by orch: the runner and the job's code travel in this file."""
import time
STARTED = time.time()  # first: Kaggle's session clock is already running
import base64, json, os, subprocess, sys, tempfile, zlib

'''

_BODY = r'''

def unpack(text):
    return zlib.decompress(base64.b64decode(text))


def find_dir(root, name, containing=None):
    """First directory called `name` under `root`: Kaggle mounts inputs at input/<slug>/
    or input/datasets/<owner>/<slug>/ (and kernels under input/notebooks/...)."""
    for dirpath, dirnames, _ in os.walk(root):
        if name in dirnames:
            found = os.path.join(dirpath, name)
            if containing is None or os.path.exists(os.path.join(found, containing)):
                return found
    return None


def find_file(root, name):
    for dirpath, _, filenames in os.walk(root):
        if name in filenames:
            return os.path.join(dirpath, name)
    return None


def give_up(working, message):
    """Leave a result.json the way the runner would, so orch shows why."""
    sys.stderr.write("orch: %s\n" % message)
    now = time.time()
    doc = {"format": 1, "status": "failed", "exit_code": 2, "failure_class": "setup", "message": message,
           "started_at": now, "ended_at": now, "attempt_key": PLAN["key"]}
    os.makedirs(working, exist_ok=True)
    with open(os.path.join(working, "result.json"), "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
    sys.exit(2)


def main():
    root = os.environ.get("ORCH_KAGGLE_ROOT") or "/kaggle"
    inputs = os.path.join(root, "input")
    working = os.path.join(root, PLAN["attempt_dir"])
    os.makedirs(working, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="orch-")
    runner = os.path.join(scratch, "runner.py")
    with open(runner, "wb") as f:
        f.write(unpack(RUNNER))

    if BUNDLE:
        bundle = os.path.join(scratch, "bundle")
        os.makedirs(bundle)
        for name, text in BUNDLE.items():
            with open(os.path.join(bundle, os.path.basename(name)), "wb") as f:
                f.write(unpack(text))
    else:
        bundle = find_dir(inputs, PLAN["bundle_slug"], "manifest.json")
        if bundle is None:
            give_up(working, "the bundle dataset %s is not attached under %s" % (PLAN["bundle_slug"], inputs))

    blobs = os.path.join(scratch, "cache", "blobs")
    os.makedirs(blobs)
    for digest, slug in PLAN["datasets"]:
        mounted = find_dir(inputs, slug)
        if mounted is None:
            give_up(working, "dataset %s is not attached under %s" % (slug, inputs))
        packed = "data-%s" % digest
        if not (find_file(mounted, packed + ".tar") or find_dir(mounted, packed)):
            os.symlink(mounted, os.path.join(blobs, packed))  # Kaggle unpacked the archive in place

    cmd = [sys.executable, runner, "--attempt-dir", working, "--bundle", bundle,
           "--work-dir", os.path.join(scratch, "work"), "--data-path", inputs,
           "--cache-dir", os.path.join(scratch, "cache")] + PLAN["runner_args"] + ["--env-stdin"]
    if PLAN["session_timeout"]:
        hard = STARTED + PLAN["session_timeout"] - PLAN["startup_allowance"]
        cmd += ["--hard-deadline", "%.3f" % hard]
    if PLAN["checkpoint_file"]:
        where = find_dir(inputs, PLAN["checkpoint_source"]) if PLAN["checkpoint_source"] else None
        checkpoint = find_file(where or inputs, PLAN["checkpoint_file"])
        if checkpoint is None:
            give_up(working, "checkpoint %s from %s is not attached" % (PLAN["checkpoint_file"], PLAN["checkpoint_source"]))
        cmd += ["--checkpoint", checkpoint]

    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    proc.communicate(json.dumps({"env": PLAN["env"], "secrets": {}}).encode("utf-8"))
    try:
        with open(os.path.join(working, "result.json")) as f:
            status = json.load(f).get("status")
    except (OSError, ValueError):
        status = None
    if status in ("succeeded", "checkpointed"):
        sys.exit(0)
    sys.stderr.write("orch: the job did not succeed (status %s, runner exit %s)\n" % (status, proc.returncode))
    sys.exit(proc.returncode or 1)


if __name__ == "__main__":
    main()
'''
