"""Content-addressed files kept in the shared state database, for team mode.

With one queue on PostgreSQL, the machine that dispatches a job is often not the one
that submitted it, and the member who fetches the results is often neither. The state
database is the one thing they all reach, so bundles (manifest, code archive, dataset
archives), checkpoints and fetched results travel through it, stored once per sha256
in fixed-size chunks. With SQLite (one machine) none of this is needed and it is not
used.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from .bundle import sha256_file
from .errors import NotFoundError
from .schema import blob_chunks, blobs
from .store import Store

CHUNK = 4 * 1024 * 1024

class BlobStore:
    """Put and get files by sha256 in the state DB. Idempotent and safe to race: two
    controllers putting the same file store it once."""

    def __init__(self, store: Store):
        self.engine = store.engine

    def has(self, sha: str) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(blobs.c.sha256).where(blobs.c.sha256 == sha)).first() is not None

    def put(self, path: Path, sha: str | None = None) -> str:
        """Store ``path`` (once); returns its sha256."""
        sha = sha or sha256_file(path)
        if self.has(sha):
            return sha
        size = path.stat().st_size
        n = 0
        try:
            with self.engine.begin() as conn, open(path, "rb") as f:
                # chunks first, the blobs row last: a reader never sees a half-stored blob
                for seq, block in enumerate(iter(lambda: f.read(CHUNK), b"")):
                    conn.execute(insert(blob_chunks).values(sha256=sha, seq=seq, data=block))
                    n = seq + 1
                conn.execute(insert(blobs).values(sha256=sha, size=size, chunks=n, created_at=time.time()))
        except IntegrityError:
            pass  # another controller stored it first
        return sha

    def get(self, sha: str, dest: Path) -> Path:
        """Write blob ``sha`` to ``dest`` atomically, verifying its hash."""
        with self.engine.connect() as conn:
            row = conn.execute(select(blobs).where(blobs.c.sha256 == sha)).first()
            if row is None:
                raise NotFoundError(f"blob {sha[:12]} is not in the shared store")
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".blob-", dir=dest.parent)
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                for seq in range(row._mapping["chunks"]):
                    data = conn.execute(select(blob_chunks.c.data).where(
                        blob_chunks.c.sha256 == sha, blob_chunks.c.seq == seq)).scalar_one()
                    h.update(data)
                    out.write(data)
        if h.hexdigest() != sha:
            os.unlink(tmp)
            raise NotFoundError(f"blob {sha[:12]} in the shared store is corrupt")
        os.replace(tmp, dest)
        return dest

    def ensure(self, sha: str, dest: Path) -> Path:
        """``dest`` if it is already there, else fetched from the store."""
        if dest.is_file():
            return dest
        return self.get(sha, dest)


# ---------------------------------------------------------------------------- what travels


def share_bundle(blobs: BlobStore, bundle) -> None:
    """Put a freshly built bundle (manifest, code archive, dataset archives) in the store."""
    blobs.put(bundle.manifest_path, bundle.digest)
    blobs.put(bundle.code_archive, bundle.code_sha256)
    for ds in bundle.datasets:
        blobs.put(ds.archive, ds.sha256)


def materialize_bundle(blobs: BlobStore, digest: str, bundles_dir: Path, blob_dir: Path) -> Path:
    """Recreate bundle ``digest`` on this machine from the store; returns its directory."""
    import json

    directory = bundles_dir / digest
    manifest_path = blobs.ensure(digest, directory / "manifest.json")
    manifest = json.loads(manifest_path.read_text())
    code = manifest["code"]
    blobs.ensure(code["sha256"], directory / code["archive"])
    for ds in manifest.get("datasets", []):
        blobs.ensure(ds["sha256"], blob_dir / f"data-{ds['digest']}.tar")
    return directory


#: Fetched artefacts shared with the team (the checkpoint travels separately).
SHARED_ARTIFACTS = ("result.json", "job.log", "outputs.tar.gz")


def share_artifacts(blobs: BlobStore, staging: Path) -> dict[str, str]:
    """Put an attempt's fetched artefacts in the store; returns {name: sha256}."""
    return {name: blobs.put(staging / name) for name in SHARED_ARTIFACTS
            if (staging / name).is_file() and not (staging / name).is_symlink()}


def restore_artifacts(blobs: BlobStore, artifacts: dict[str, str], staging: Path) -> None:
    """Write an attempt's shared artefacts into ``staging`` (for ``orch fetch`` elsewhere)."""
    for name, sha in artifacts.items():
        if name in SHARED_ARTIFACTS:
            blobs.get(sha, staging / name)
