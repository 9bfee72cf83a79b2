"""Resumable, verified downloads (``orchestrator/partfile.py``) against a remote that
can send from an offset and can be cut mid-file."""

from __future__ import annotations

import hashlib
import os

import pytest

from orchestrator.errors import TransientError
from orchestrator.partfile import PartFile

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
MD5 = hashlib.md5(DATA).hexdigest()


class Cut(OSError):
    """The link dropped mid-file."""


def fetch(part: PartFile, data: bytes = DATA, cut_after: int | None = None, block: int = 16_384) -> int:
    """One try: send ``data`` from the part's offset (as SFTP seek or HTTP Range would),
    dropping the link after ``cut_after`` bytes of this try. Returns the bytes sent."""
    sent = 0
    with part.open() as out:
        start = out.offset
        for i in range(start, len(data), block):
            chunk = data[i:i + block]
            if cut_after is not None and sent + len(chunk) > cut_after:
                raise Cut("connection reset")
            out.write(chunk)
            sent += len(chunk)
    part.commit()
    return sent


def test_a_download_cut_mid_file_resumes_on_the_next_call_and_ends_verified(tmp_path):
    dest = tmp_path / "out" / "model.bin"
    with pytest.raises(Cut):
        fetch(PartFile(dest, size=len(DATA), sha256=SHA), cut_after=100_000)
    kept = (tmp_path / "out" / "model.bin.part").stat().st_size
    assert 0 < kept <= 100_000 and not dest.exists()  # a final name always means complete

    sent = fetch(PartFile(dest, size=len(DATA), sha256=SHA))

    assert sent == len(DATA) - kept  # only the rest was sent
    assert dest.read_bytes() == DATA and not (tmp_path / "out" / "model.bin.part").exists()


def test_a_part_longer_than_the_remote_file_restarts_from_zero(tmp_path):
    dest = tmp_path / "model.bin"
    dest.with_name("model.bin.part").write_bytes(b"x" * (len(DATA) + 1))
    part = PartFile(dest, size=len(DATA), sha256=SHA)
    assert part.have() == 0
    assert fetch(part) == len(DATA)
    assert dest.read_bytes() == DATA


def test_a_part_with_a_bad_checksum_is_removed_and_the_next_try_restarts_from_zero(tmp_path):
    dest = tmp_path / "model.bin"
    dest.with_name("model.bin.part").write_bytes(b"garbage!" * 1000)  # right prefix length, wrong bytes
    with pytest.raises(TransientError, match="sha256 mismatch.*partial file was removed"):
        fetch(PartFile(dest, size=len(DATA), sha256=SHA, what="download of model.bin"))
    assert not dest.exists() and not dest.with_name("model.bin.part").exists()

    assert fetch(PartFile(dest, size=len(DATA), sha256=SHA)) == len(DATA)
    assert dest.read_bytes() == DATA


def test_an_md5_mismatch_is_refused_too(tmp_path):
    dest = tmp_path / "model.bin"
    with pytest.raises(TransientError, match="md5 mismatch"):
        fetch(PartFile(dest, md5="0" * 32), data=b"payload")
    assert fetch(PartFile(dest, md5=hashlib.md5(b"payload").hexdigest()), data=b"payload") == 7


def test_a_short_file_fails_its_size_check(tmp_path):
    dest = tmp_path / "model.bin"
    with pytest.raises(TransientError, match=f"got 10 bytes, expected {len(DATA)}") as caught:
        fetch(PartFile(dest, size=len(DATA), platform="lab"), data=DATA[:10])
    assert caught.value.platform == "lab" and not dest.with_name("model.bin.part").exists()


def test_restart_empties_the_part_when_the_remote_sends_the_whole_file(tmp_path):
    dest = tmp_path / "model.bin"
    dest.with_name("model.bin.part").write_bytes(DATA[:1000])
    part = PartFile(dest, size=len(DATA), sha256=SHA, md5=MD5)
    with part.open() as out:
        assert out.offset == 1000
        out.restart()  # e.g. an HTTP server that ignored Range and answered 200
        out.write(DATA)
    assert part.commit() == dest and dest.read_bytes() == DATA


def test_complete_means_the_final_name_is_there_with_the_expected_size(tmp_path):
    dest = tmp_path / "model.bin"
    assert not PartFile(dest).complete()
    fetch(PartFile(dest, size=len(DATA)))
    assert PartFile(dest).complete() and PartFile(dest, size=len(DATA)).complete()
    assert not PartFile(dest, size=len(DATA) + 1).complete()
