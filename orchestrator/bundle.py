"""Deterministic, content-addressed bundles of a job's code and datasets.

The same content always gives the same bytes (sorted entries, zeroed mtimes and
owners, normalised modes, gzip header without time or name), so a digest names the
content and nothing else. Datasets are archived separately, once per content, into
the blob cache; a stat index like git's lets an unchanged dataset be recognised
without reading its bytes again.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import stat
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import pathspec

from .errors import BundleError
from .progress import transfer

#: Never bundled: VCS data, virtualenvs, caches, previous results.
DEFAULT_IGNORES = (
    ".git/", ".hg/", ".svn/", "__pycache__/", "*.pyc", ".venv/", "venv/", ".mypy_cache/",
    ".pytest_cache/", ".ipynb_checkpoints/", ".DS_Store", "results/", ".orch/", "*.egg-info/",
    ".hypothesis/", ".ruff_cache/", ".tox/", ".nox/", "node_modules/",
)

#: Never bundled, whatever ``.orchignore`` re-includes: git's data (``.git/config`` can hold
#: an access token) and fetched results. The orch home is added per build.
NEVER_BUNDLED = (".git/", ".git", "results/")

#: Paths that usually hold credentials, matched case-insensitively; refused unless allowed.
CREDENTIAL_PATTERNS = (
    "kaggle.json", ".env", ".env.*", "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", "*.pem", "*.key",
    "*.p12", "*.pfx", "*.jks", "*.keystore", "credentials.json", "token.json", ".netrc", "_netrc", ".pgpass",
    "client_secret*.json", "access_token", ".git-credentials", ".aws/credentials", ".aws/config", ".pypirc",
    ".npmrc", ".yarnrc.yml", ".docker/config.json", ".kube/config", "application_default_credentials.json",
    "service-account*.json", "service_account*.json", "*-sa-key.json", ".boto", ".s3cfg", ".htpasswd",
    ".vault-token", "credentials.toml", "*.ovpn",
)

#: Passwords in URLs that are placeholders in docs and examples, not secrets
#: (``https://user:token@host``, ``https://me:<PAT>@host``, ``https://u:$TOKEN@host``).
PLACEHOLDER = rb"(?:token|password|passwd|pass|pw|secret|pat|x+|\*+|<[^>@\s]*>|\$\{?\w+\}?|\{\{?[^}@\s]*\}\}?)"

#: What credential files look like inside, checked in the first :data:`SNIFF_BYTES` of each file.
CREDENTIAL_CONTENT = re.compile(
    rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"           # PEM / OpenSSH private keys
    rb'|"type"\s*:\s*"service_account"'                   # Google service-account keys
    rb"|_authToken\s*="                                     # npm tokens
    rb"|aws_secret_access_key\s*="                          # AWS shared credentials
    rb"|\bhttps?://[^\s/:@\"']+:(?!" + PLACEHOLDER + rb"@)[^\s/@\"']+@"  # a URL with a password (.git-credentials)
)
SNIFF_BYTES = 8192

CHUNK = 1 << 20
Progress = Callable[[int], None]  # called with bytes processed


@dataclass(frozen=True)
class DatasetBlob:
    """One dataset, archived once and shared by every job that uses the same content.

    Attributes:
        name: the directory name the job sees under ``$ORCH_DATA``.
        digest: sha256 of the dataset's content (file names + file hashes), stable
            across machines; the archive is ``data-<digest>.tar``.
        archive: the archive on local disk (uncompressed tar).
        sha256: sha256 of the archive bytes.
        size: archive size in bytes.
        files: {relative path: sha256} of every file inside.
        skipped: links out of the dataset directory, not archived (shown at submit).
    """

    name: str
    digest: str
    archive: Path
    sha256: str
    size: int
    files: dict
    skipped: tuple[str, ...] = ()

    @property
    def filename(self) -> str:
        return f"data-{self.digest}.tar"


@dataclass(frozen=True)
class Bundle:
    """A job's packaged inputs: ``manifest.json`` + the code archive + dataset archives.

    ``digest`` is the sha256 of the manifest bytes, so two jobs with the same code,
    data and run settings share one bundle. ``directory`` holds ``manifest.json`` and
    the code archive under their manifest names; dataset archives live in the
    content-addressed blob cache (``DatasetBlob.archive``).
    """

    digest: str
    directory: Path
    code_archive: Path
    code_sha256: str
    datasets: tuple[DatasetBlob, ...]
    code_files: tuple[tuple[str, int], ...] = ()  # (path, size) for --dry-run
    skipped: tuple[str, ...] = ()  # links out of the code directory, FIFOs, devices: shown at submit

    @property
    def manifest_path(self) -> Path:
        return self.directory / "manifest.json"

    @property
    def size(self) -> int:
        return self.code_archive.stat().st_size + sum(d.size for d in self.datasets)


# ---------------------------------------------------------------------------- hashing


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
            if progress:
                progress(len(block))
    return h.hexdigest()


def tree_digest(files: dict[str, str]) -> str:
    """Content digest of a file tree: names and file hashes, nothing else."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{files[rel]}  {rel}\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------- listing


def _ignore_spec(root: Path, exclude: Iterable[Path] = (), gitignore: bool = True) -> pathspec.PathSpec:
    """The defaults, then ``.gitignore`` (unless ``gitignore`` is False), then
    ``.orchignore`` (whose ``!name`` lines can bring back what ``.gitignore`` leaves out)."""
    lines = list(DEFAULT_IGNORES)
    for name in (".gitignore", ".orchignore") if gitignore else (".orchignore",):
        ignore_file = root / name
        if ignore_file.is_file():
            lines += ignore_file.read_text(encoding="utf-8", errors="replace").splitlines()
    return pathspec.GitIgnoreSpec.from_lines(lines)


def _never_spec(root: Path, exclude: Iterable[Path] = ()) -> pathspec.PathSpec:
    """:data:`NEVER_BUNDLED` plus ``exclude`` (the orch home when it lies inside the code:
    its state DB and bundles must never be bundled); no ignore file can undo these."""
    lines = list(NEVER_BUNDLED)
    root_real = root.resolve()
    for path in exclude:
        path = Path(path).resolve()
        if path == root_real or root_real in path.parents:
            lines.append("/" + path.relative_to(root_real).as_posix().rstrip("/") + "/")
    return pathspec.GitIgnoreSpec.from_lines(lines)


def inside(path: Path, root_real: Path) -> bool:
    """True when the resolved ``path`` is ``root_real`` or lies under it."""
    return path == root_real or root_real in path.parents


def list_code_files(root: Path, exclude: Iterable[Path] = (), gitignore: bool = True
                    ) -> tuple[list[tuple[str, Path]], list[str]]:
    """Files to bundle under ``root`` honouring ``.gitignore`` and ``.orchignore``; returns
    (files, skipped: symlinks that leave ``root`` or whose target is ignored, and special files).

    Design choice: a link out of the tree is skipped with a warning, not followed (a
    cloned repo can hold ``train.csv -> ~/.ssh/id_ed25519``); an in-tree link is judged
    by its target, so it cannot bring back what the ignore rules leave out.
    """
    spec = _ignore_spec(root, exclude, gitignore)
    never = _never_spec(root, exclude)
    root_real = root.resolve()
    files: list[tuple[str, Path]] = []
    skipped: list[str] = []

    def left_out(rel: str) -> bool:
        return bool(never.match_file(rel) or spec.match_file(rel))

    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = sorted(d for d in dirnames if not left_out(rel_dir + d + "/"))
        for d in [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            skipped.append(rel_dir + d)  # os.walk does not follow directory links; say so
        for name in sorted(filenames):
            rel = rel_dir + name
            if left_out(rel):
                continue
            path = Path(dirpath) / name
            if path.is_symlink():
                target = path.resolve()
                if not target.is_file() or not inside(target, root_real) or \
                        left_out(target.relative_to(root_real).as_posix()):
                    skipped.append(rel)
                    continue
            elif not path.is_file():
                skipped.append(rel)  # a FIFO, socket or device: reading it could block or never end
                continue
            files.append((rel, path))
    return files, skipped


def _looks_like_credentials(rel: str, path: Path, root_real: Path | None, sniff: bool) -> bool:
    """By name (case-insensitive, the link's and its target's) or, when ``sniff``, by content."""
    creds = _credential_spec()
    names = [rel.lower()]
    target = path.resolve()
    if path.is_symlink():
        names.append(target.relative_to(root_real).as_posix().lower() if root_real and inside(target, root_real)
                     else target.name.lower())
    if any(creds.match_file(n) for n in names):
        return True
    if not sniff:
        return False
    try:
        with open(target, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError:
        return False
    return CREDENTIAL_CONTENT.search(head) is not None


_CREDS: list[pathspec.PathSpec] = []


def _credential_spec() -> pathspec.PathSpec:
    if not _CREDS:
        # "a/b" patterns are anchored at the root in gitignore syntax; these match at any depth.
        _CREDS.append(pathspec.GitIgnoreSpec.from_lines(("**/" + p if "/" in p else p).lower()
                                                        for p in CREDENTIAL_PATTERNS))
    return _CREDS[0]


def check_credentials(entries: Iterable[tuple[str, Path]], allowed: Iterable[str] = (), root: Path | None = None,
                      unchanged: Iterable[str] = ()) -> None:
    """Refuse files that look like credentials, by name or by content, naming each one and
    the opt-outs. ``unchanged`` files (recognised by the stat index) are checked by name
    only: their content was sniffed when they were first archived."""
    allow = set(allowed)
    same = set(unchanged)
    root_real = root.resolve() if root else None
    hits = [rel for rel, path in entries
            if rel not in allow and os.path.basename(rel) not in allow
            and _looks_like_credentials(rel, path, root_real, sniff=rel not in same)]
    if hits:
        shown = ", ".join(hits[:10]) + (f" and {len(hits) - 10} more" if len(hits) > 10 else "")
        raise BundleError(
            f"refusing to bundle file(s) that look like credentials: {shown}. "
            "Leave them out with a line in .orchignore, pass secrets with `secrets:` instead, "
            "or, if a file holds no secret, allow it with --allow-file NAME"
        )


# ---------------------------------------------------------------------------- archives


def _tarinfo(rel: str, size: int, executable: bool) -> tarfile.TarInfo:
    info = tarfile.TarInfo(rel)
    info.size = size
    info.mtime = 0
    info.mode = 0o755 if executable else 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


class _HashingReader:
    """Reads a file into the tar while hashing it, so each byte is read once."""

    def __init__(self, f, progress: Progress | None):
        self.f, self.h, self.progress = f, hashlib.sha256(), progress

    def read(self, n: int = -1) -> bytes:
        block = self.f.read(n)
        self.h.update(block)
        if self.progress and block:
            self.progress(len(block))
        return block


def write_archive(dest, entries: list[tuple[str, Path]], compress: bool,
                  progress: Progress | None = None) -> dict[str, str]:
    """Write a deterministic tar (gzip when ``compress``) of ``entries`` to the open
    binary file ``dest``; returns {relative path: sha256}."""
    hashes: dict[str, str] = {}
    gz = gzip.GzipFile(fileobj=dest, mode="wb", mtime=0, filename="", compresslevel=6) if compress else None
    with tarfile.open(fileobj=gz or dest, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, path in sorted(entries):
            st = os.stat(path)
            with open(path, "rb") as f:
                reader = _HashingReader(f, progress)
                tar.addfile(_tarinfo(rel, st.st_size, bool(st.st_mode & stat.S_IXUSR)), reader)
            hashes[rel] = reader.h.hexdigest()
    if gz:
        gz.close()
    return hashes


# ---------------------------------------------------------------------------- datasets


class DatasetCache:
    """Dataset archives by content digest, plus a stat index per source path.

    Re-submitting an unchanged dataset costs one ``stat`` per file: when every
    (size, mtime_ns, inode) matches the index, the recorded digest is reused and no
    byte is read. A file modified within two seconds of the index being written is
    re-hashed ("racily clean", as git calls it).
    """

    def __init__(self, blobs: Path, index_dir: Path):
        self.blobs = blobs
        self.index_dir = index_dir
        blobs.mkdir(parents=True, exist_ok=True)
        index_dir.mkdir(parents=True, exist_ok=True)

    def _index_path(self, source: Path) -> Path:
        return self.index_dir / (hashlib.sha256(str(source).encode()).hexdigest()[:32] + ".json")

    @staticmethod
    def _scan(source: Path) -> tuple[dict[str, tuple[Path, os.stat_result]], list[str]]:
        """(regular files by relative path, skipped: links that leave ``source``)."""
        if source.is_file():
            return {source.name: (source, source.stat())}, []
        out: dict[str, tuple[Path, os.stat_result]] = {}
        skipped: list[str] = []
        for dirpath, dirnames, filenames in os.walk(source, followlinks=False):
            dirnames.sort()
            base = os.path.relpath(dirpath, source)
            for name in filenames:
                path = Path(dirpath) / name
                rel = name if base == "." else f"{base}/{name}"
                try:
                    st = path.stat()
                except OSError:
                    continue  # dangling symlink
                if path.is_symlink() and not inside(path.resolve(), source):
                    skipped.append(rel)  # e.g. train.csv -> ~/.ssh/id_ed25519: never followed
                    continue
                if stat.S_ISREG(st.st_mode):
                    out[rel] = (path, st)
        return out, sorted(skipped)

    def add(self, name: str, source: Path, check: Callable[..., None] | None = None) -> DatasetBlob:
        """Archive ``source`` (file or directory) unless its content is already cached.

        ``check(entries, root, unchanged)`` sees every (relative name, path) before anything
        is archived (the credential guard), with the names the stat index recognises."""
        source = source.resolve()
        scan, skipped = self._scan(source)
        index_path = self._index_path(source)
        index = _read_json(index_path)
        known = index.get("files", {}) if index.get("root") == str(source) else {}
        written_ns = index.get("written_ns", 0)
        unchanged = {
            rel for rel, (_, st) in scan.items()
            if rel in known and known[rel][:3] == [st.st_size, st.st_mtime_ns, st.st_ino]
            and st.st_mtime_ns < written_ns - 2_000_000_000
        }
        if check:
            check([(rel, p) for rel, (p, _) in scan.items()], source, unchanged)
        clean = len(known) == len(scan) and len(unchanged) == len(scan)
        digest = index.get("digest")
        if clean and digest:
            archive = self.blobs / f"data-{digest}.tar"
            if archive.is_file() and archive.stat().st_size == index.get("archive_size"):
                return DatasetBlob(name, digest, archive, index["archive_sha256"], index["archive_size"],
                                   {rel: v[3] for rel, v in known.items()}, tuple(skipped))
        fd, tmp = tempfile.mkstemp(prefix=".partial-", dir=self.blobs)
        try:
            with os.fdopen(fd, "wb") as out:
                with transfer(f"archiving dataset {name}", sum(st.st_size for _, st in scan.values())) as advance:
                    hashes = write_archive(out, [(rel, p) for rel, (p, _) in scan.items()], compress=False,
                                           progress=advance)
            digest = tree_digest(hashes)
            archive = self.blobs / f"data-{digest}.tar"
            archive_sha = sha256_file(Path(tmp))
            if archive.is_file():
                os.unlink(tmp)
            else:
                os.replace(tmp, archive)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        size = archive.stat().st_size
        _write_json(index_path, {
            "root": str(source),
            "digest": digest,
            "archive_sha256": archive_sha,
            "archive_size": size,
            "written_ns": time.time_ns(),
            "files": {rel: [st.st_size, st.st_mtime_ns, st.st_ino, hashes[rel]] for rel, (_, st) in scan.items()},
        })
        return DatasetBlob(name, digest, archive, archive_sha, size, hashes, tuple(skipped))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(doc, separators=(",", ":")))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- bundles


def run_section(spec) -> dict:
    """The part of the spec the runner needs; part of the bundle digest."""
    return {
        "run": spec.run,
        "env": dict(sorted(spec.env.items())),
        "setup": {"requirements": list(spec.setup.requirements), "file": spec.setup.file},
        "outputs": list(spec.outputs),
        "checkpoint": spec.checkpoint,
    }


def build(spec, bundles_dir: Path, cache: DatasetCache, allow_files: Iterable[str] = (),
          exclude: Iterable[Path] = (), gitignore: bool = True,
          extra_files: Iterable[tuple[str, Path]] = ()) -> Bundle:
    """Package ``spec`` (a loaded JobSpec) into ``bundles_dir/<digest>/``; ``exclude``
    names directories never bundled (the orch home); ``gitignore=False`` reads only
    ``.orchignore`` (``submit --no-gitignore``); ``extra_files`` are orch's own
    ``(".orch/<name>", source)`` additions (a notebook job's executor).

    Raises:
        BundleError: a credential-looking file, or an unreadable path.
    """
    code_root = Path(spec.code)
    try:
        files, skipped = list_code_files(code_root, exclude, gitignore)
        allowed = tuple(allow_files)
        check_credentials(files, allowed, code_root)
        files += list(extra_files)  # orch's own, under .orch/ (which list_code_files never returns)
        datasets = tuple(
            cache.add(ds.name, Path(ds.path),
                      check=lambda entries, root, same: check_credentials(entries, allowed, root, same))
            for ds in spec.datasets
        )
        skipped += [f"{d.name}/{rel} (dataset)" for d in datasets for rel in d.skipped]
        bundles_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".code-", dir=bundles_dir)
        with os.fdopen(fd, "wb") as out:
            code_hashes = write_archive(out, files, compress=True)
    except OSError as exc:
        raise BundleError(f"cannot package {exc.filename or code_root}: {exc.strerror or exc}") from exc
    code_sha = sha256_file(Path(tmp))
    code_name = f"code-{code_sha[:16]}.tar.gz"
    manifest = {
        "format": 1,
        "job": run_section(spec),
        "code": {"archive": code_name, "sha256": code_sha, "files": code_hashes},
        "datasets": [
            {"name": d.name, "digest": d.digest, "sha256": d.sha256, "size": d.size, "files": d.files}
            for d in datasets
        ],
    }
    data = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(data).hexdigest()
    directory = bundles_dir / digest
    if not (directory / "manifest.json").is_file():
        staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=bundles_dir))
        os.replace(tmp, staging / code_name)
        (staging / "manifest.json").write_bytes(data)
        try:
            os.rename(staging, directory)
        except OSError:  # another submit built the same bundle first
            _rmtree(staging)
    else:
        os.unlink(tmp)
    sizes = tuple((rel, p.stat().st_size) for rel, p in sorted(files))
    return Bundle(digest, directory, directory / code_name, code_sha, datasets, sizes, tuple(skipped))


def load_bundle(directory: Path, blobs: Path) -> Bundle:
    """Reopen a bundle written by :func:`build` (the controller stores only its digest)."""
    manifest = json.loads((directory / "manifest.json").read_text())
    datasets = tuple(
        DatasetBlob(d["name"], d["digest"], blobs / f"data-{d['digest']}.tar", d["sha256"], d["size"], d["files"])
        for d in manifest["datasets"]
    )
    code = manifest["code"]
    return Bundle(directory.name, directory, directory / code["archive"], code["sha256"], datasets)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
