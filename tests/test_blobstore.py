"""blobstore.py on SQLite and PostgreSQL: files stored once by sha256, in chunks, verified on the way out."""

from __future__ import annotations

import hashlib
import os

import pytest

from orchestrator import blobstore
from orchestrator.blobstore import BlobStore
from orchestrator.errors import NotFoundError


def test_a_file_put_twice_is_stored_once_and_comes_back_byte_for_byte(store, tmp_path, monkeypatch):
    monkeypatch.setattr(blobstore, "CHUNK", 1000)  # several chunks, and a short last one
    data = os.urandom(3500)
    src = tmp_path / "a.bin"
    src.write_bytes(data)
    blobs = BlobStore(store)
    sha = blobs.put(src)
    assert sha == hashlib.sha256(data).hexdigest() and blobs.has(sha)
    assert blobs.put(src) == sha
    out = blobs.get(sha, tmp_path / "out" / "a.bin")
    assert out.read_bytes() == data


def test_an_empty_file_round_trips(store, tmp_path):
    src = tmp_path / "empty"
    src.write_bytes(b"")
    blobs = BlobStore(store)
    assert blobs.get(blobs.put(src), tmp_path / "back").read_bytes() == b""


def test_a_missing_blob_is_not_found(store, tmp_path):
    blobs = BlobStore(store)
    assert not blobs.has("f" * 64)
    with pytest.raises(NotFoundError):
        blobs.get("f" * 64, tmp_path / "x")


def test_ensure_reuses_a_file_that_is_already_there(store, tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(b"abc")
    blobs = BlobStore(store)
    sha = blobs.put(src)
    dest = tmp_path / "dest.bin"
    assert blobs.ensure(sha, dest).read_bytes() == b"abc"
    mtime = dest.stat().st_mtime_ns
    assert blobs.ensure(sha, dest) == dest and dest.stat().st_mtime_ns == mtime
