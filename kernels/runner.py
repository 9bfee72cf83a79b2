#!/usr/bin/env python3
"""orch runner: runs one attempt of a job, identically on every platform.

Stdlib only, Python >= 3.9, one file: the local platform executes this file as it
is, SSH hosts receive a copy, the Kaggle kernel script embeds its source and the
Colab agent calls it. It

1. takes ``runner.lock`` in the attempt dir (a second runner for the same attempt
   exits with code 75 instead of running the job twice);
2. verifies the bundle against ``manifest.json`` (sha256 of every archive and file)
   and unpacks code and datasets, caching verified datasets by digest;
3. restores a checkpoint, installs the job's requirements (``pip --target`` into a
   cache keyed by their hash, so the host's Python is never modified);
4. runs the job's command in its own process group under a deadline (SIGTERM,
   grace, SIGKILL), teeing output to ``job.log`` with secret values masked, and
   refreshing ``heartbeat.json`` with GPU telemetry from ``nvidia-smi``. Where the
   platform kills the session itself (``--hard-deadline``, Kaggle), the job is
   stopped early enough to pack: grace plus the time packing what the job has
   written takes at a write speed measured on this host;
5. packs outputs and the checkpoint (gzip without compression: packing speed is
   what counts) and writes ``result.json`` atomically. Under a hard deadline it also
   writes ``result.json`` before packing, as a "stopped while packing" failure, so
   a kill mid-pack still leaves a reason (elsewhere result.json means "ended").

A SIGTERM/SIGINT stops the job either way, but only one that orch's own cancel
sent (it writes :data:`CANCEL_MARKER` into the attempt dir first) is reported as
``cancelled``; any other (a host shutting down, a platform reclaiming the machine)
is ``interrupted``, with the checkpoint packed when the job has one.

Usage: see ``python3 runner.py --help``. Exit code: the job's exit code in the
foreground; 75 when another runner already owns (or finished) the attempt.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import glob
import hashlib
import gzip
import json
import os
import platform
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import threading
import time

RUNNER_VERSION = 1
EXIT_BUSY = 75
HEARTBEAT_SECONDS = float(os.environ.get("ORCH_HEARTBEAT_SECONDS", "5"))
CHUNK = 1 << 20
#: Written into the attempt dir by ``orch cancel`` before it signals the runner.
CANCEL_MARKER = "cancel-requested"
#: Packing's margin before a hard deadline: FLOOR + SAFETY x (bytes / measured write speed).
PACK_FLOOR_S = 3.0
PACK_SAFETY = 2.0
PROBE_BYTES = 16 << 20
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class BundleInvalid(Exception):
    """The bundle does not match its manifest (corrupt or tampered upload)."""


class NoSpace(Exception):
    """Packing ran out of disk space (the platform's output space is smaller than the outputs)."""


# --------------------------------------------------------------------------- files


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def write_json_atomic(path: str, doc: dict) -> None:
    """Write ``doc`` so that readers see either the old file or the whole new one."""
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def safe_member_name(name: str) -> str:
    """A relative archive path with no ``..``, no absolute part; raises otherwise."""
    norm = os.path.normpath(name)
    if name.startswith("/") or norm.startswith("..") or norm == "." or "\x00" in name:
        raise BundleInvalid("unsafe path in archive: %r" % name)
    return norm


def extract_verified(archive: str, dest: str, expected: dict) -> None:
    """Extract regular files of ``archive`` into ``dest``, checking each against
    ``expected`` ({relative path: sha256}); every expected file must be present."""
    seen = set()
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            if member.isdir():
                continue
            if not member.isfile():
                raise BundleInvalid("archive %s holds a non-file entry %r" % (os.path.basename(archive), member.name))
            rel = safe_member_name(member.name)
            if rel not in expected:
                raise BundleInvalid("archive %s holds %r, which the manifest does not list" % (os.path.basename(archive), rel))
            target = os.path.join(dest, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            h = hashlib.sha256()
            src = tar.extractfile(member)
            with open(target, "wb") as out:
                for block in iter(lambda: src.read(CHUNK), b""):
                    h.update(block)
                    out.write(block)
            os.chmod(target, 0o700 if member.mode & 0o100 else 0o600)  # owner-only, as on a shared host
            if h.hexdigest() != expected[rel]:
                raise BundleInvalid("file %r does not match its sha256 in the manifest" % rel)
            seen.add(rel)
    missing = set(expected) - seen
    if missing:
        raise BundleInvalid("archive %s lacks %d file(s) listed in the manifest, e.g. %r"
                            % (os.path.basename(archive), len(missing), sorted(missing)[0]))


# A dataset extracted into the per-host cache is shared by every later job on the host;
# a job that writes into it ($ORCH_DATA/d/train.csv) must not poison the next one. So the
# extracted tree is sealed (files and dirs read-only) and its stats recorded in the
# ``.verified`` marker; before reuse a cheap re-check compares them (no re-hash), and any
# difference means extract again.


def seal_dataset(root: str) -> None:
    """Make the extracted dataset ``root`` read-only and record every file's (size,
    mtime, ctime) in ``root.verified``. ctime cannot be set back by a job: a chmod, a
    write or a utime all move it."""
    stats = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) & 0o555)
            st = os.lstat(path)
            stats[os.path.relpath(path, root)] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        os.chmod(dirpath, 0o500)
    write_json_atomic(root + ".verified", {"files": stats})


def sealed_intact(root: str, expected: dict) -> bool:
    """True when the cached dataset ``root`` is exactly what :func:`seal_dataset` left:
    the manifest's files, nothing more, each with its recorded stats and still read-only."""
    try:
        with open(root + ".verified") as f:
            stats = json.load(f).get("files") or {}
    except (OSError, ValueError, AttributeError):
        return False
    if set(stats) != set(expected):
        return False
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if os.lstat(dirpath).st_mode & 0o222:
            return False
        count += len(filenames) + sum(1 for d in dirnames if os.path.islink(os.path.join(dirpath, d)))
    if count != len(stats):
        return False
    for rel, recorded in stats.items():
        try:
            st = os.lstat(os.path.join(root, rel))
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o222 or \
                [st.st_size, st.st_mtime_ns, st.st_ctime_ns] != recorded:
            return False
    return True


def discard_tree(root: str) -> None:
    """Remove ``root`` even when sealed (a read-only dir's entries cannot be unlinked)."""
    if os.path.lexists(root + ".verified"):
        os.remove(root + ".verified")
    if not os.path.isdir(root):
        return
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o700)
    shutil.rmtree(root)


def verify_tree(root: str, expected: dict) -> None:
    """Check an already-extracted dataset directory against the manifest."""
    for rel, digest in expected.items():
        path = os.path.join(root, safe_member_name(rel))
        if not os.path.isfile(path) or sha256_file(path) != digest:
            raise BundleInvalid("dataset file %r is missing or differs from the manifest" % rel)


def find_named(roots: list, name: str, want_dir: bool) -> str | None:
    """Search ``roots`` recursively for an entry called ``name`` (platforms mount inputs
    in different layouts, e.g. /kaggle/input/<slug>/ or /kaggle/input/datasets/<o>/<s>/)."""
    for root in roots:
        if not root or not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            pool = dirnames if want_dir else filenames
            if name in pool:
                return os.path.join(dirpath, name)
    return None


# --------------------------------------------------------------------------- lock


def acquire_lock(attempt_dir: str):
    """Hold ``runner.lock`` for this process's lifetime; None when another runner has it."""
    fd = os.open(os.path.join(attempt_dir, "runner.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


# --------------------------------------------------------------------------- GPU


class GpuSampler:
    """Samples nvidia-smi (when present) for identity, peak memory and utilisation."""

    QUERY = "name,memory.total,memory.used,utilization.gpu,driver_version"

    def __init__(self) -> None:
        self.gpus: list = []
        self.peak_memory_mb = 0.0
        self.max_util = 0.0
        self.available = self._which("nvidia-smi") is not None

    @staticmethod
    def _which(cmd: str) -> str | None:
        for d in os.environ.get("PATH", "").split(os.pathsep):
            p = os.path.join(d, cmd)
            if os.path.isfile(p) and os.access(p, os.X_OK):
                return p
        return None

    def sample(self) -> list:
        if not self.available:
            return []
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=" + self.QUERY, "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=10,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return []
        rows = []
        for line in out.strip().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) < 5:
                continue
            try:
                row = {"name": parts[0], "memory_total_mb": float(parts[1]), "memory_used_mb": float(parts[2]),
                       "utilization_pct": float(parts[3]), "driver": parts[4]}
            except ValueError:
                continue
            rows.append(row)
        if rows:
            if not self.gpus:
                self.gpus = [{"name": r["name"], "memory_total_mb": r["memory_total_mb"], "driver": r["driver"]}
                             for r in rows]
            self.peak_memory_mb = max(self.peak_memory_mb, sum(r["memory_used_mb"] for r in rows))
            self.max_util = max([self.max_util] + [r["utilization_pct"] for r in rows])
        return rows


# --------------------------------------------------------------------------- log tee


def secret_forms(secret: bytes) -> set:
    """``secret`` and the encodings a job most often prints it in: base64 (standard and
    URL-safe, at each of the three alignments a prefix can give it), hex, URL-encoded
    and reversed. Forms shorter than 6 bytes are left out (they would mask ordinary text).

    Masking cannot promise more: a job can always transform a value it was given
    (split it, add one, encrypt it); it keeps honest output from leaking it.
    """
    import base64
    import urllib.parse

    forms = {secret, secret[::-1], secret.hex().encode(), secret.hex().upper().encode()}
    text = secret.decode("utf-8", "replace")
    forms |= {urllib.parse.quote(text, safe="").encode(), urllib.parse.quote_plus(text).encode()}
    for pad in range(3):
        # After ``pad`` unknown bytes, base64 groups that hold only secret bytes are stable.
        whole = (pad + len(secret)) // 3 * 4
        first = 4 if pad else 0
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            forms.add(encode(b"\0" * pad + secret)[first:whole])
    return {f for f in forms if len(f) >= 6 or f == secret}


class MaskingTee:
    """Copies the job's output to job.log (and our stdout), replacing secret values
    (and their common encodings, see :func:`secret_forms`) with ``***``. A tail shorter
    than the longest form is held back between chunks so a secret split across two
    reads is still masked."""

    def __init__(self, log, echo, secrets: list) -> None:
        self.log = log
        self.echo = echo
        forms = set()
        for s in secrets:
            if s and len(s) >= 3:
                forms |= secret_forms(s.encode())
        self.secrets = sorted(forms, key=len, reverse=True)
        self.keep = max([len(s) for s in self.secrets] + [1]) - 1
        self.carry = b""

    def mask(self, data: bytes) -> bytes:
        """``data`` with every secret form replaced (nbexec masks executed notebooks with it)."""
        for s in self.secrets:
            data = data.replace(s, b"***")
        return data

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        self.log.write(data)
        self.log.flush()
        if self.echo is not None:
            try:
                self.echo.write(data)
                self.echo.flush()
            except (OSError, ValueError):
                self.echo = None

    def write(self, chunk: bytes) -> None:
        data = self.mask(self.carry + chunk)
        if self.keep and len(data) > self.keep:
            self.carry, data = data[-self.keep:], data[:-self.keep]
        elif self.keep:
            self.carry, data = data, b""
        self._emit(data)

    def close(self) -> None:
        self._emit(self.mask(self.carry))
        self.carry = b""

    def note(self, text: str) -> None:
        """A runner message in the log (never contains secrets)."""
        self.close()
        self._emit(("[orch] %s\n" % text).encode())


# --------------------------------------------------------------------------- deadline


def run_under_deadline(proc, stop_at, grace: float, cancelled: threading.Event):
    """Wait for ``proc``; at ``stop_at`` (a time, or a function giving the current plan)
    or on a signal SIGTERM its process group, then SIGKILL it ``grace`` seconds later if
    it is still alive.

    Returns (exit_code, reason) with reason None when the job ended on its own,
    else "deadline" or "cancelled".

    The job runs in its own process group (start_new_session) so that the signal
    reaches everything it spawned, and not this runner.
    """
    reason = None
    term_sent_at = None
    while True:
        try:
            return proc.wait(timeout=0.2), reason
        except subprocess.TimeoutExpired:
            pass
        now = time.time()
        due = stop_at() if callable(stop_at) else stop_at
        if term_sent_at is None and (now >= due or cancelled.is_set()):
            reason = "cancelled" if cancelled.is_set() else "deadline"
            _signal_group(proc.pid, signal.SIGTERM)
            term_sent_at = now
        elif term_sent_at is not None and now - term_sent_at >= grace:
            _signal_group(proc.pid, signal.SIGKILL)
            return proc.wait(), reason


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# --------------------------------------------------------------------------- runner


class Runner:
    def __init__(self, args, extra: dict) -> None:
        self.args = args
        self.attempt_dir = os.path.abspath(args.attempt_dir)
        self.work_dir = os.path.abspath(args.work_dir or os.path.join(self.attempt_dir, "work"))
        self.cache_dir = os.path.abspath(args.cache_dir) if args.cache_dir else None
        self.extra_env = {str(k): str(v) for k, v in (extra.get("env") or {}).items()}
        self.secrets = {str(k): str(v) for k, v in (extra.get("secrets") or {}).items()}
        self.started = time.time()
        self.phase = "starting"
        self.gpu = GpuSampler()
        self.cancelled = threading.Event()
        self.stop_heartbeat = threading.Event()
        self.result: dict = {
            "format": 1,
            "runner_version": RUNNER_VERSION,
            "job_id": args.job_id,
            "job_name": args.job_name,
            "attempt": args.attempt,
            "host": socket.gethostname(),
            "python": platform.python_version(),
            "started_at": self.started,
        }
        self.signal_name = ""
        #: Bytes packing will write (checkpoint + outputs), refreshed by the heartbeat.
        self.pending_bytes = 0
        self.write_rate = 0.0
        self.pack_dirs: list = []
        self.session_stop = (self.started + args.session_seconds - args.grace) if args.session_seconds else None
        self.job_stop = self.started + args.max_runtime
        self.stop_at = self.current_stop()

    # -- deadlines
    def current_stop(self) -> float:
        """When to SIGTERM the job: max_runtime, the session end less grace, and a
        platform's hard deadline less grace and the time packing will take."""
        stops = [self.job_stop]
        if self.session_stop is not None:
            stops.append(self.session_stop)
        if self.args.hard_deadline:
            stops.append(self.args.hard_deadline - self.args.grace - self.pack_seconds())
        return min(stops)

    @property
    def stop_is_session(self) -> bool:
        return self.current_stop() < self.job_stop

    def pack_seconds(self) -> float:
        """How long packing ``pending_bytes`` takes at the measured write speed, with margin."""
        if not self.write_rate:
            return PACK_FLOOR_S
        return PACK_FLOOR_S + PACK_SAFETY * self.pending_bytes / self.write_rate

    def measure_write_rate(self) -> None:
        """Time writing PROBE_BYTES through the packer into the attempt dir (fsynced)."""
        probe = self.path("pack-probe.bin")
        try:
            with open(probe, "wb") as f:
                block = os.urandom(CHUNK)
                for _ in range(PROBE_BYTES // CHUNK):
                    f.write(block)
            began = time.time()
            write_tar(self.path("pack-probe.tar.gz"), [("probe", probe)])
            self.write_rate = max(PROBE_BYTES / max(time.time() - began, 1e-3), 1 << 20)
        except OSError:
            self.write_rate = 1 << 20  # no room even for the probe: assume a slow disk
        finally:
            for name in ("pack-probe.bin", "pack-probe.tar.gz"):
                try:
                    os.remove(self.path(name))
                except OSError:
                    pass
        self.result["pack_write_mb_s"] = round(self.write_rate / (1 << 20), 1)

    # -- paths
    def path(self, name: str) -> str:
        return os.path.join(self.attempt_dir, name)

    # -- heartbeat
    def heartbeat_loop(self) -> None:
        while True:
            if self.pack_dirs and self.args.hard_deadline:
                self.pending_bytes = sum(tree_size(d) for d in self.pack_dirs)
            rows = self.gpu.sample()
            try:
                write_json_atomic(self.path("heartbeat.json"),
                                  {"time": time.time(), "pid": os.getpid(), "phase": self.phase, "gpus": rows})
            except OSError:
                pass
            if self.stop_heartbeat.wait(HEARTBEAT_SECONDS):
                return

    # -- bundle
    def unpack(self, tee: MaskingTee) -> dict:
        bundle_dir = os.path.abspath(self.args.bundle)
        with open(os.path.join(bundle_dir, "manifest.json")) as f:
            manifest = json.load(f)
        code = manifest["code"]
        archive = os.path.join(bundle_dir, code["archive"])
        if not os.path.isfile(archive):
            archive = find_named([bundle_dir] + list(self.args.data_path or []), code["archive"], want_dir=False) or archive
        if sha256_file(archive) != code["sha256"]:
            raise BundleInvalid("code archive %s does not match the manifest" % code["archive"])
        self.code_dir = os.path.join(self.work_dir, "code")
        if os.path.isdir(self.code_dir):
            shutil.rmtree(self.code_dir)
        os.makedirs(self.code_dir)
        extract_verified(archive, self.code_dir, code["files"])
        self.data_dir = os.path.join(self.work_dir, "data")
        os.makedirs(self.data_dir, exist_ok=True)
        for ds in manifest.get("datasets", []):
            self.place_dataset(ds, tee)
        return manifest

    def place_dataset(self, ds: dict, tee: MaskingTee) -> None:
        """Make dataset ``ds`` visible at $ORCH_DATA/<name>, verified, extracting at most
        once per host when a cache dir is given."""
        digest, name = ds["digest"], ds["name"]
        link = os.path.join(self.data_dir, safe_member_name(name))
        cached = os.path.join(self.cache_dir, "data", digest) if self.cache_dir else None
        if cached and sealed_intact(cached, ds["files"]):
            target = cached
        else:
            roots = list(self.args.data_path or []) + [os.path.abspath(self.args.bundle)]
            if self.cache_dir:
                roots.append(os.path.join(self.cache_dir, "blobs"))
            archive = find_named(roots, "data-%s.tar" % digest, want_dir=False)
            if archive:
                if sha256_file(archive) != ds["sha256"]:
                    raise BundleInvalid("dataset %r archive does not match the manifest" % name)
                target = cached or link
                tmp = target + ".partial"
                if os.path.isdir(tmp):
                            shutil.rmtree(tmp)
                os.makedirs(tmp)
                extract_verified(archive, tmp, ds["files"])
                discard_tree(target)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.rename(tmp, target)
            else:
                # Some platforms unpack uploaded archives themselves (Kaggle datasets).
                unpacked = find_named(roots, "data-%s" % digest, want_dir=True)
                if not unpacked:
                    raise BundleInvalid("dataset %r (data-%s.tar) was not found under %s"
                                        % (name, digest[:12], ", ".join(roots)))
                verify_tree(unpacked, ds["files"])
                target = unpacked
            if cached and target == cached:
                seal_dataset(cached)
        if target != link:
            if os.path.lexists(link):
                os.remove(link)
            os.symlink(target, link)
        tee.note("dataset %s ready (%d files)" % (name, len(ds["files"])))

    # -- setup
    def install_requirements(self, job: dict, env: dict, tee: MaskingTee) -> str | None:
        """pip-install the job's requirements into a directory keyed by their hash."""
        setup = job.get("setup") or {}
        reqs = list(setup.get("requirements") or [])
        req_file = setup.get("file")
        if not reqs and not req_file:
            return None
        key_src = json.dumps(reqs)
        if req_file:
            req_path = os.path.join(self.code_dir, safe_member_name(req_file))
            with open(req_path, "rb") as f:
                key_src += hashlib.sha256(f.read()).hexdigest()
        key = hashlib.sha256((key_src + sys.version).encode()).hexdigest()[:16]
        base = os.path.join(self.cache_dir, "pydeps") if self.cache_dir else os.path.join(self.work_dir, "pydeps")
        target = os.path.join(base, key)
        if os.path.isfile(os.path.join(target, ".orch-complete")):
            tee.note("requirements already installed (%s)" % key)
            return target
        cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
               "--target", target + ".partial"]
        cmd += reqs
        if req_file:
            cmd += ["-r", os.path.join(self.code_dir, req_file)]
        tee.note("installing requirements: %s" % " ".join(cmd[4:]))
        proc = subprocess.Popen(cmd, cwd=self.code_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for block in iter(lambda: proc.stdout.read1(65536) if hasattr(proc.stdout, "read1") else proc.stdout.read(4096), b""):
            tee.write(block)
        if proc.wait() != 0:
            offline = ": no internet on this kernel (internet: false); ship the packages as wheels" if self.args.offline else ""
            raise SetupFailed("pip install exited with %d%s" % (proc.returncode, offline))
        if os.path.isdir(target):
            shutil.rmtree(target)
        os.rename(target + ".partial", target)
        open(os.path.join(target, ".orch-complete"), "w").close()
        return target

    # -- outputs
    def pack_outputs(self, job: dict, out_dir: str) -> tuple:
        """Pack regular files from $ORCH_OUTPUT_DIR and the job's output globs.
        Symlinks, devices and FIFOs are skipped (and listed), never followed."""
        added, skipped = {}, []

        def consider(path: str, arcname: str) -> None:
            try:
                st = os.lstat(path)
            except OSError:
                return
            if stat.S_ISDIR(st.st_mode):
                return
            if not stat.S_ISREG(st.st_mode):
                skipped.append(arcname)
                return
            added.setdefault(arcname, path)

        for dirpath, dirnames, filenames in os.walk(out_dir):
            dirnames.sort()
            for fn in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                full = os.path.join(dirpath, fn)
                consider(full, os.path.relpath(full, out_dir))
        code_real = os.path.realpath(self.code_dir)
        for pattern in job.get("outputs") or []:
            for full in sorted(glob.glob(os.path.join(glob.escape(self.code_dir), pattern), recursive=True)):
                rel = os.path.relpath(full, self.code_dir)
                parent = os.path.realpath(os.path.dirname(full))
                if rel.startswith("..") or not (parent == code_real or parent.startswith(code_real + os.sep)):
                    skipped.append(rel)
                    continue
                if os.path.isdir(full) and not os.path.islink(full):
                    for dp, dns, fns in os.walk(full):
                        for fn in fns:
                            p = os.path.join(dp, fn)
                            consider(p, os.path.relpath(p, self.code_dir))
                else:
                    consider(full, rel)
        write_tar(self.path("outputs.tar.gz"), sorted(added.items()))
        return sorted(added), sorted(set(skipped))

    def pack_checkpoint(self, ckpt_dir: str) -> bool:
        files = []
        for dirpath, dirnames, filenames in os.walk(ckpt_dir):
            for fn in filenames:
                full = os.path.join(dirpath, fn)
                if stat.S_ISREG(os.lstat(full).st_mode):
                    files.append((os.path.relpath(full, ckpt_dir), full))
        if not files:
            return False
        write_tar(self.path("checkpoint.tar.gz"), sorted(files))
        return True

    # -- main
    def run(self) -> int:
        log = open(self.path("job.log"), "ab")
        echo = None if self.args.detach else getattr(sys.stdout, "buffer", None)
        tee = MaskingTee(log, echo, list(self.secrets.values()))
        beat = threading.Thread(target=self.heartbeat_loop, name="heartbeat", daemon=True)
        beat.start()
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        exit_code, status, failure, message = 1, "failed", "runner", ""
        self.proc = None
        try:
            exit_code, status, failure, message = self.run_steps(tee)
        except Cancelled:
            status, failure, message = self.stopped_by_signal(False, "before the job started")
            exit_code = 143
        except NoSpace as exc:
            status, failure, message, exit_code = "failed", "space", str(exc), 1
        except SetupFailed as exc:
            status, failure, message, exit_code = "failed", "setup", str(exc), 1
        except BundleInvalid as exc:
            status, failure, message, exit_code = "failed", "bundle", str(exc), 1
        except Exception as exc:  # the runner must always leave a result.json
            status, failure, message, exit_code = "failed", "runner", "%s: %s" % (type(exc).__name__, exc), 1
        finally:
            if self.proc is not None and self.proc.poll() is None:
                _signal_group(self.proc.pid, signal.SIGKILL)
            self.stop_heartbeat.set()
            beat.join(timeout=15)
            if message and failure:
                tee.note(message)
            tee.close()
            log.close()
        self.write_result(status, exit_code, failure, message)
        return exit_code

    def on_signal(self, signum, frame) -> None:
        self.signal_name = self.signal_name or signal.Signals(signum).name
        self.cancelled.set()

    def stopped_by_signal(self, has_ckpt: bool, when: str = "") -> tuple:
        """(status, failure_class, message) of a job a signal stopped: ``cancelled`` only
        when orch's cancel left CANCEL_MARKER, else ``interrupted``."""
        if os.path.exists(self.path(CANCEL_MARKER)):
            return "cancelled", "cancelled", "cancelled" + (" " + when if when else "")
        saved = "; checkpoint saved" if has_ckpt else ""
        return ("interrupted", "interrupted", "interrupted by %s, not by orch cancel%s%s"
                % (self.signal_name or "a signal", " " + when if when else "", saved))

    def run_steps(self, tee: MaskingTee) -> tuple:
        """Unpack, set up, run, pack: (exit_code, status, failure_class, message)."""
        self.phase = "unpacking"
        job = self.unpack(tee)["job"]
        out_dir = os.path.join(self.work_dir, "out")
        os.makedirs(out_dir, exist_ok=True)
        ckpt_rel = job.get("checkpoint")
        ckpt_dir = self.restore_checkpoint(ckpt_rel, tee)
        env = self.job_env(job, out_dir, ckpt_dir)
        self.phase = "setup"
        setup_started = time.time()
        pydeps = self.install_requirements(job, env, tee)
        paths = [self.code_dir] + ([pydeps] if pydeps else []) + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        self.result["setup_s"] = round(time.time() - setup_started, 3)
        if self.cancelled.is_set():
            raise Cancelled()
        if self.args.hard_deadline:
            self.measure_write_rate()
            self.pack_dirs = [out_dir] + ([ckpt_dir] if ckpt_rel else [])
            self.pending_bytes = sum(tree_size(d) for d in self.pack_dirs)
        exit_code, reason = self.run_job(job, env, tee)
        self.phase = "packing"
        if self.args.hard_deadline:  # the platform may kill us mid-pack; elsewhere result.json means "ended"
            self.write_result("failed", 1, "packing", "the run was stopped while packing its outputs (the job itself "
                              "had ended: %s); outputs and checkpoint are incomplete"
                              % (self.outcome(exit_code, reason, bool(ckpt_rel))[0]), final=False)
        outputs, skipped = self.pack_outputs(job, out_dir)
        self.result["outputs"] = outputs
        if skipped:
            self.result["skipped_outputs"] = skipped
            tee.note("skipped %d output entries that are not regular files: %s" % (len(skipped), ", ".join(skipped[:5])))
        has_ckpt = bool(ckpt_rel) and self.pack_checkpoint(ckpt_dir)
        self.result["checkpoint"] = has_ckpt
        status, failure, message = self.outcome(exit_code, reason, has_ckpt)
        note = read_failure_note(self.path("failure.json"))
        if note:  # the job said why it failed (a notebook: the cell and the exception)
            self.result["failure"] = note
            message = note["message"] if failure == "user" else message
        return exit_code, status, failure, message

    def restore_checkpoint(self, ckpt_rel: str | None, tee: MaskingTee) -> str:
        """The checkpoint dir (the job's declared one, else work/checkpoint), restored from --checkpoint."""
        ckpt_dir = os.path.join(self.code_dir, safe_member_name(ckpt_rel)) if ckpt_rel else os.path.join(self.work_dir, "checkpoint")
        os.makedirs(ckpt_dir, exist_ok=True)
        if self.args.checkpoint:
            extract_checkpoint(self.args.checkpoint, ckpt_dir)
            tee.note("checkpoint restored into %s" % (ckpt_rel or "$ORCH_CHECKPOINT_DIR"))
        return ckpt_dir

    def job_env(self, job: dict, out_dir: str, ckpt_dir: str) -> dict:
        """The job's environment: ours, then job.yaml's env, orch's extras, secrets and ORCH_*."""
        env = dict(os.environ)
        env.update({str(k): str(v) for k, v in (job.get("env") or {}).items()})
        env.update(self.extra_env)
        env.update(self.secrets)
        env.update({
            "ORCH_JOB_ID": self.args.job_id,
            "ORCH_JOB_NAME": self.args.job_name,
            "ORCH_ATTEMPT": str(self.args.attempt),
            "ORCH_OUTPUT_DIR": out_dir,
            "ORCH_CHECKPOINT_DIR": ckpt_dir,
            "ORCH_DATA": self.data_dir,
            "ORCH_DEADLINE": str(int(self.stop_at)),
            "ORCH_CODE_DIR": self.code_dir,
            "ORCH_FAILURE_FILE": self.path("failure.json"),
            # For nbexec: our interpreter, and the secrets' names, masked with our MaskingTee.
            "ORCH_PYTHON": sys.executable,
            "ORCH_RUNNER": os.path.abspath(__file__),
            "ORCH_SECRET_NAMES": ",".join(sorted(self.secrets)),
            "PYTHONUNBUFFERED": "1",
        })
        python_bin = os.path.dirname(sys.executable)
        env["PATH"] = python_bin + os.pathsep + env.get("PATH", "")
        return env

    def run_job(self, job: dict, env: dict, tee: MaskingTee) -> tuple:
        """Run the job's command in its own process group under the deadline: (exit_code, reason)."""
        self.phase = "running"
        tee.note("running: %s" % job["run"])
        run_started = time.time()
        self.result["run_started_at"] = run_started
        shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
        self.proc = proc = subprocess.Popen([shell, "-c", job["run"]], cwd=self.code_dir, env=env,
                                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        write_json_atomic(self.path("runner.pid.json"), {"pid": os.getpid(), "job_pgid": proc.pid, "started": self.started})
        pump = threading.Thread(target=_pump, args=(proc.stdout, tee), name="log", daemon=True)
        pump.start()
        exit_code, reason = run_under_deadline(proc, self.current_stop, self.args.grace, self.cancelled)
        pump.join(timeout=10)
        self.result["runtime_s"] = round(time.time() - run_started, 3)
        return exit_code, reason

    def outcome(self, exit_code: int, reason: str | None, has_ckpt: bool) -> tuple:
        """(status, failure_class, message) of a job that ran."""
        if reason == "cancelled":
            return self.stopped_by_signal(has_ckpt)
        if reason == "deadline" and self.stop_is_session and has_ckpt:
            return "checkpointed", None, "stopped before the session end; checkpoint saved"
        if reason == "deadline":
            if self.stop_is_session:
                return "failed", "timeout", "stopped at the session end with no checkpoint"
            return "failed", "timeout", "stopped at max_runtime (%gs)" % self.args.max_runtime
        if exit_code == 0:
            return "succeeded", None, ""
        return "failed", "user", "job exited with code %d" % exit_code

    def write_result(self, status: str, exit_code: int, failure: str | None, message: str,
                     final: bool = True) -> None:
        """Write result.json (atomically) and, when ``final``, the last heartbeat."""
        ended = time.time()
        gpus = self.gpu.gpus
        self.result.update({
            "status": status,
            "exit_code": exit_code,
            "failure_class": failure,
            "message": message,
            "ended_at": ended,
            "wall_s": round(ended - self.started, 3),
            "gpu": {"name": gpus[0]["name"], "count": len(gpus), "memory_total_mb": gpus[0]["memory_total_mb"],
                    "driver": gpus[0]["driver"]} if gpus else None,
            "peak_gpu_memory_mb": self.gpu.peak_memory_mb if gpus else None,
            "max_gpu_utilization_pct": self.gpu.max_util if gpus else None,
        })
        if final:
            self.phase = "done"
            write_json_atomic(self.path("heartbeat.json"), {"time": ended, "pid": os.getpid(), "phase": "done", "gpus": []})
        write_json_atomic(self.path("result.json"), self.result)


class SetupFailed(Exception):
    """Installing the job's requirements failed."""


class Cancelled(Exception):
    """SIGTERM arrived before the job started."""


def _pump(stream, tee: MaskingTee) -> None:
    read = getattr(stream, "read1", None) or stream.read
    for block in iter(lambda: read(65536), b""):
        tee.write(block)


def read_failure_note(path: str) -> dict | None:
    """``$ORCH_FAILURE_FILE``: what a failed job wrote about why, as ``{"message": ...}``
    plus flat details; untrusted, so size-capped, scalars only, one printable line each."""
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read(16384).decode("utf-8", "replace"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("message"), str):
        return None
    note = {}
    for key, value in list(doc.items())[:20]:
        if isinstance(value, str):
            value = "".join(ch if ch.isprintable() else " " for ch in value)[:500]
        elif not (value is None or isinstance(value, (bool, int, float))):
            continue
        note[str(key)[:40]] = value
    return note


def write_tar(dest: str, files: list) -> None:
    """A tar of (arcname, path) pairs with normalised metadata, written atomically.

    It is a gzip file without compression (level 0): packing must finish before a
    platform's hard deadline, and level 9 takes ~30x longer on checkpoint weights,
    which hardly compress. Running out of space raises NoSpace, leaving no partial file.
    """
    tmp = dest + ".partial"
    try:
        with open(tmp, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="", compresslevel=0) as gz:
                with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    for arcname, path in files:
                        info = tar.gettarinfo(path, arcname=arcname)
                        info.uid = info.gid = 0
                        info.uname = info.gname = ""
                        with open(path, "rb") as f:
                            tar.addfile(info, f)
            raw.flush()
            os.fsync(raw.fileno())
    except OSError as exc:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if exc.errno in NO_SPACE:
            raise NoSpace("outputs exceed the space the platform gives: %s (packing %s needed %s)"
                          % (_size(disk_size(os.path.dirname(dest))), os.path.basename(dest),
                             _size(sum(os.path.getsize(p) for _, p in files))))
        raise
    os.replace(tmp, dest)


def tree_size(root: str) -> int:
    """Bytes in the regular files under ``root`` (links not followed)."""
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for fn in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, fn))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def disk_size(path: str) -> int:
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_blocks * st.f_frsize


def _size(n: int) -> str:
    return "%.1f GB" % (n / 1e9) if n >= 1e9 else "%d MB" % round(n / 1e6)


def extract_checkpoint(archive: str, dest: str) -> None:
    """Restore a checkpoint archive (written by this runner) into ``dest``, files only."""
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            rel = safe_member_name(member.name)
            target = os.path.join(dest, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as out:
                src = tar.extractfile(member)
                for block in iter(lambda: src.read(CHUNK), b""):
                    out.write(block)


# --------------------------------------------------------------------------- entry


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="runner.py", description="Run one attempt of an orch job.")
    p.add_argument("--attempt-dir", required=True, help="where result.json, job.log, outputs land")
    p.add_argument("--bundle", required=True, help="directory holding manifest.json and the code archive")
    p.add_argument("--work-dir", help="where code is unpacked and run (default: ATTEMPT_DIR/work)")
    p.add_argument("--data-path", action="append", default=[], help="root searched for dataset archives")
    p.add_argument("--cache-dir", help="per-host cache of verified datasets and installed requirements")
    p.add_argument("--checkpoint", help="checkpoint archive to restore before the job starts")
    p.add_argument("--job-id", required=True)
    p.add_argument("--job-name", default="job")
    p.add_argument("--attempt", type=int, default=1)
    p.add_argument("--max-runtime", type=float, required=True, help="seconds")
    p.add_argument("--grace", type=float, default=30.0, help="seconds between SIGTERM and SIGKILL")
    p.add_argument("--session-seconds", type=float, help="session length; the job is stopped GRACE before it ends")
    p.add_argument("--hard-deadline", type=float,
                   help="epoch seconds at which the platform kills the session (its clock); the job is "
                        "stopped GRACE plus the measured packing time before it")
    p.add_argument("--offline", action="store_true", help="the platform gives this run no internet (for messages)")
    p.add_argument("--env-stdin", action="store_true", help='read {"env": {}, "secrets": {}} JSON from stdin')
    p.add_argument("--detach", action="store_true", help="run in the background, in a new session")
    return p.parse_args(argv)


def detach(attempt_dir: str) -> int | None:
    """Double-fork into a new session. Returns None in the detached grandchild (which
    then holds ``runner.lock``), or the exit code for the original process, which
    waits until the grandchild has the lock so that "submitted" means "running"."""
    r, w = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(w)
        with os.fdopen(r, "rb") as pipe:
            word = pipe.read()
        os.waitpid(pid, 0)
        if word.startswith(b"ok "):
            print(json.dumps({"pid": int(word.split()[1])}))
            return 0
        print(json.dumps({"error": "another runner holds this attempt"}))
        return EXIT_BUSY
    os.close(r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    lock = acquire_lock(attempt_dir)
    if lock is None or os.path.exists(os.path.join(attempt_dir, "result.json")):
        os.write(w, b"busy")
        os._exit(EXIT_BUSY)
    devnull = os.open(os.devnull, os.O_RDWR)
    err = os.open(os.path.join(attempt_dir, "runner.err"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(devnull, 0)
    os.dup2(err, 1)
    os.dup2(err, 2)
    write_json_atomic(os.path.join(attempt_dir, "runner.pid.json"), {"pid": os.getpid(), "started": time.time()})
    os.write(w, b"ok %d" % os.getpid())
    os.close(w)
    _HELD_LOCKS.append(lock)
    return None


_HELD_LOCKS: list = []


def main(argv=None) -> int:
    args = parse_args(argv)
    extra = json.load(sys.stdin) if args.env_stdin else {}
    attempt_dir = os.path.abspath(args.attempt_dir)
    os.makedirs(attempt_dir, exist_ok=True)
    if args.detach:
        code = detach(attempt_dir)
        if code is not None:
            return code
    else:
        lock = acquire_lock(attempt_dir)
        if lock is None or os.path.exists(os.path.join(attempt_dir, "result.json")):
            sys.stderr.write("orch runner: attempt %s is already running or finished\n" % attempt_dir)
            return EXIT_BUSY
        _HELD_LOCKS.append(lock)
        write_json_atomic(os.path.join(attempt_dir, "runner.pid.json"), {"pid": os.getpid(), "started": time.time()})
    return Runner(args, extra).run()


if __name__ == "__main__":
    sys.exit(main())
