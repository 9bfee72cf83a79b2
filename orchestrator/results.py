"""Fetched results on local disk: safe unpacking of what platforms send back.

Everything that comes from a platform is hostile until proven otherwise: an outputs
archive may hold ``../`` names, absolute names, symlinks, hard links or device
nodes, and an attempt directory may hold symlinks in place of ``result.json``.
Only regular files are ever written, only inside the destination, and never
through a link. ``result.json`` and ``heartbeat.json`` are read through a schema
with a size cap (:class:`ResultDoc`, :class:`Heartbeat`): a job that rewrites its
own files gets its attempt refused with the reason, never a crashed tick.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

CHUNK = 1 << 20
#: Refuse archives that expand beyond this (decompression bombs).
MAX_EXTRACT_BYTES = int(os.environ.get("ORCH_MAX_RESULT_BYTES", str(50 * 1024**3)))

#: The most orch fetches and keeps of each artefact of a run, in bytes (a job can make
#: one huge for free: an 8 KiB sparse ``job.log`` reads back as 524 MiB). A bigger
#: ``job.log`` keeps only its last :data:`LOG_TAIL` bytes; a bigger archive is not
#: fetched. Either way the reason goes to ``skipped.txt``. Documented in docs/operations.md.
ARTIFACT_CAPS = {
    "job.log": int(os.environ.get("ORCH_MAX_LOG_BYTES", str(64 << 20))),
    "outputs.tar.gz": int(os.environ.get("ORCH_MAX_OUTPUTS_BYTES", str(20 << 30))),
    "checkpoint.tar.gz": int(os.environ.get("ORCH_MAX_CHECKPOINT_BYTES", str(20 << 30))),
}
LOG_TAIL = 1 << 20
FETCH_NOTES = "fetch-skipped.txt"


def over_cap(name: str, size: int) -> str | None:
    """Why artefact ``name`` of ``size`` bytes is not fetched whole, or None when it may be."""
    cap = ARTIFACT_CAPS.get(name)
    if cap is None or size <= cap:
        return None
    what = f"only its last {LOG_TAIL} bytes are kept" if name == "job.log" else "it was not fetched"
    return f"{name} ({size} bytes, over its cap of {cap}: {what})"


def keep_capped(dest: Path, name: str, size: int, read_tail: Callable[[int, int], bytes]) -> None:
    """Record that ``name`` is over its cap in ``dest``; for ``job.log`` write its tail,
    read with ``read_tail(offset, length)``, under a first line that says so."""
    note = over_cap(name, size)
    if note is None:
        return
    if name == "job.log":
        tail = read_tail(size - LOG_TAIL, LOG_TAIL)
        header = f"[orch] job.log was {size} bytes, over its cap; these are its last {len(tail)} bytes\n"
        tmp = dest / (name + ".partial")
        tmp.write_bytes(header.encode() + tail)
        os.replace(tmp, dest / name)
    with open(dest / FETCH_NOTES, "a") as f:
        f.write(note + "\n")


def keep_capped_file(src: Path, dest: Path, name: str) -> bool:
    """True when the local file ``src`` is over its cap; then only what
    :func:`keep_capped` keeps of it is written into the directory ``dest``."""
    try:
        st = os.lstat(src)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or over_cap(name, st.st_size) is None:
        return False

    def read_tail(offset: int, length: int) -> bytes:
        with open(src, "rb") as f:
            f.seek(max(0, offset))
            return f.read(length)

    keep_capped(dest, name, st.st_size, read_tail)
    return True


def cap_artifacts(staging: Path) -> None:
    """Hold fetched artefacts in ``staging`` to :data:`ARTIFACT_CAPS`, in place, before
    anything is kept or shared: whatever a platform fetched, nothing bigger goes on."""
    for name in ARTIFACT_CAPS:
        if keep_capped_file(staging / name, staging, name) and name != "job.log":
            (staging / name).unlink()


@dataclass
class ExtractReport:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "name (why)"


def safe_name(name: str) -> str | None:
    """``name`` as a safe relative POSIX path, or None when it must be refused."""
    if not name or "\x00" in name or name.startswith(("/", "\\")) or ":" in PurePosixPath(name).parts[0]:
        return None
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    return "/".join(parts)


def write_file_safely(dest_root: Path, rel: str, src) -> bool:
    """Copy stream ``src`` to ``dest_root/rel`` creating real directories only; refuses to
    follow a symlink anywhere on the way. Returns False when refused."""
    target = dest_root
    for part in rel.split("/")[:-1]:
        target = target / part
        try:
            st = os.lstat(target)
            if not stat.S_ISDIR(st.st_mode):
                return False
        except FileNotFoundError:
            os.mkdir(target)
    path = target / rel.split("/")[-1]
    try:
        if stat.S_ISLNK(os.lstat(path).st_mode) or not stat.S_ISREG(os.lstat(path).st_mode):
            return False
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(src, out, CHUNK)
    return True


def extract_archive(archive: Path, dest: Path) -> ExtractReport:
    """Extract regular files from ``archive`` into ``dest``; everything else is skipped
    and reported. ``dest`` is created if missing."""
    report = ExtractReport()
    dest.mkdir(parents=True, exist_ok=True)
    total = 0
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as exc:
        report.skipped.append(f"{archive.name} (not a readable archive: {exc})")
        return report
    with tar:
        try:
            for member in tar:
                if member.isdir():
                    continue
                rel = safe_name(member.name)
                if rel is None:
                    report.skipped.append(f"{member.name} (unsafe path)")
                    continue
                if not member.isfile():
                    kind = "symlink" if member.issym() else "hard link" if member.islnk() else "special file"
                    report.skipped.append(f"{rel} ({kind})")
                    continue
                total += member.size
                if total > MAX_EXTRACT_BYTES:
                    report.skipped.append(f"{rel} (archive expands beyond {MAX_EXTRACT_BYTES} bytes)")
                    break
                src = tar.extractfile(member)
                if src is None or not write_file_safely(dest, rel, src):
                    report.skipped.append(f"{rel} (would write through a link)")
                    continue
                report.written.append(rel)
        except (tarfile.TarError, OSError, EOFError) as exc:
            report.skipped.append(f"{archive.name} (truncated or corrupt: {exc})")
    return report


def copy_regular(src: Path, dest: Path) -> bool:
    """Copy ``src`` only if it is a regular file (not a link, FIFO or device)."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return False
        os.set_blocking(f.fileno(), True)
        tmp = dest.with_name(dest.name + ".partial")
        with open(tmp, "wb") as out:
            shutil.copyfileobj(f, out, CHUNK)
        os.replace(tmp, dest)
    return True


#: result.json larger than this is refused, never parsed or stored (the runner's is ~1 KB).
MAX_RESULT_JSON_BYTES = 1 << 20
#: heartbeat.json larger than this is ignored (the runner's is a few hundred bytes).
MAX_HEARTBEAT_BYTES = 64 << 10

_Text = Annotated[str, StringConstraints(max_length=512)]


class GpuInfo(BaseModel):
    """The GPU a run got, as the runner reports it."""

    model_config = ConfigDict(extra="ignore")

    name: _Text | None = None
    count: Annotated[int, Field(ge=0, le=1024)] | None = None
    memory_total_mb: float | None = None
    driver: _Text | None = None


class ResultDoc(BaseModel):
    """result.json as the controller accepts it (written by ``kernels/runner.py``).

    The fields the controller acts on have fixed types and bounded sizes; the other
    keys the runner writes (its version, host, timings) are kept as they are, the
    whole document being capped by :data:`MAX_RESULT_JSON_BYTES`.
    """

    model_config = ConfigDict(extra="allow")

    status: Literal["succeeded", "failed", "checkpointed", "cancelled", "interrupted"]
    exit_code: int | None = None
    failure_class: Annotated[str, StringConstraints(max_length=32)] | None = None
    message: Annotated[str, StringConstraints(max_length=8192)] = ""
    started_at: float | None = None
    ended_at: float | None = None
    runtime_s: float | None = None
    gpu: GpuInfo | None = None
    checkpoint: bool | None = None
    outputs: Annotated[list[Annotated[str, StringConstraints(max_length=4096)]], Field(max_length=100_000)] | None = None


class Heartbeat(BaseModel):
    """heartbeat.json: liveness and GPU telemetry, refreshed by the runner."""

    model_config = ConfigDict(extra="ignore")

    time: float | None = None
    phase: Annotated[str, StringConstraints(max_length=32)] = ""
    gpus: Annotated[list[dict[str, float | int | str | None]], Field(max_length=64)] = []


@dataclass(frozen=True)
class ResultRead:
    """What reading a fetched result.json gave: the accepted document, or why not.

    ``doc`` and ``problem`` are both None when there is no result.json at all.
    """

    doc: dict | None = None
    problem: str | None = None


def read_result(path: Path) -> ResultRead:
    """The fetched ``result.json`` checked against :class:`ResultDoc` and size-capped."""
    data, problem = read_capped(path, MAX_RESULT_JSON_BYTES)
    if problem or data is None:
        return ResultRead(problem=problem and f"result.json refused: {problem}")
    try:
        doc = ResultDoc.model_validate_json(data)
    except ValidationError as exc:
        return ResultRead(problem=f"result.json refused: {first_error(exc)}")
    return ResultRead(doc=doc.model_dump(exclude_none=True))


def parse_heartbeat(data: bytes | None) -> Heartbeat | None:
    """heartbeat.json bytes as a :class:`Heartbeat`, or None when unreadable (the
    run's liveness then rests on what the platform sees, never on these bytes)."""
    if not data or len(data) > MAX_HEARTBEAT_BYTES:
        return None
    try:
        return Heartbeat.model_validate_json(data)
    except ValidationError:
        return None


def read_capped(path: Path, limit: int) -> tuple[bytes | None, str | None]:
    """(the bytes of regular file ``path``, None), (None, None) when it does not exist,
    or (None, why) when it is a link, not a regular file, or over ``limit`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, "a symlink" if os.path.islink(path) else f"unreadable ({exc.strerror})"
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None, "not a regular file"
        if st.st_size > limit:
            return None, f"{st.st_size} bytes, over the {limit}-byte limit"
        data = f.read(limit + 1)
    if len(data) > limit:
        return None, f"over the {limit}-byte limit"
    return data, None


def first_error(exc: ValidationError) -> str:
    """The first problem pydantic found, as ``field: message`` (input not echoed)."""
    err = exc.errors(include_input=False)[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "document"
    return f"{where}: {err.get('msg', 'invalid')}"[:300]


def install_attempt(staging: Path, dest: Path) -> ExtractReport:
    """Turn fetched artefacts in ``staging`` into ``dest`` (``result.json``, ``job.log``,
    ``outputs/``), atomically: a crash leaves either nothing or the whole directory.
    Artefacts over their cap are trimmed first (:func:`cap_artifacts`)."""
    cap_artifacts(staging)
    if dest.is_dir():
        return ExtractReport()
    partial = dest.with_name(dest.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    report = ExtractReport()
    for name in ("result.json", "job.log"):
        if (staging / name).is_file() and not (staging / name).is_symlink():
            shutil.copyfile(staging / name, partial / name)
    outputs = staging / "outputs.tar.gz"
    if outputs.is_file():
        report = extract_archive(outputs, partial / "outputs")
    else:
        (partial / "outputs").mkdir()
    notes = staging / FETCH_NOTES
    if notes.is_file() and not notes.is_symlink():
        report.skipped = list(dict.fromkeys(report.skipped + notes.read_text(errors="replace").splitlines()[:100]))
    if report.skipped:
        (partial / "skipped.txt").write_text("".join(f"{s}\n" for s in report.skipped))
    os.replace(partial, dest)
    return report


def changed_files(src: Path, dest: Path) -> list[str]:
    """Files under ``dest`` that a copy of ``src`` would overwrite with different bytes: what a
    user edited (or an older attempt's results) since the last fetch."""
    changed = []
    for dirpath, _dirnames, filenames in os.walk(src):
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(src)
            there = dest / rel
            if path.is_symlink() or not path.is_file() or not there.exists():
                continue
            if there.is_symlink() or not there.is_file() or not _same_bytes(path, there):
                changed.append(rel.as_posix())
    return sorted(changed)


def _same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def copy_tree(src: Path, dest: Path) -> int:
    """Copy regular files of ``src`` into ``dest`` (no links followed or created)."""
    count = 0
    dest.mkdir(parents=True, exist_ok=True)
    for dirpath, dirnames, filenames in os.walk(src):
        rel_dir = os.path.relpath(dirpath, src)
        for name in filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            with open(path, "rb") as f:
                if write_file_safely(dest, rel, f):
                    count += 1
    return count
