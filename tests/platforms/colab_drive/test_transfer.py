"""Resumable uploads, Range downloads and upload-once, through the real client and the fake Drive."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.errors import TransientError
from orchestrator.platforms.colab_drive.transfer import DRIVE_CALLS, Transfers, UploadJournal, sha256_file
from tests.platforms.colab_drive.conftest import Sleeps

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[3]


def _random_file(path: Path, size: int) -> Path:
    with open(path, "wb") as fh:
        left = size
        while left:
            block = os.urandom(min(left, 4 * MiB))
            fh.write(block)
            left -= len(block)
    return path


def test_50mb_upload_survives_a_dropped_connection_and_rate_limits(drive, service, tmp_path, backoff):
    src = _random_file(tmp_path / "big.bin", 50 * MiB)
    transfers = Transfers(service, UploadJournal(tmp_path / "uploads"), "gdrive", backoff, chunk_size=4 * MiB)
    folder = transfers.folder("orch", "root")["id"]
    dropped = drive.inject("drop", method="PUT", chunk_only=True, skip=2, after_bytes=3 * MiB // 2)
    drive.inject("error", status=403, reason="userRateLimitExceeded", chunk_only=True, skip=5)
    drive.inject("error", status=429, reason="rateLimitExceeded", chunk_only=True, skip=7)
    drive.inject("error", status=500, reason="backendError", chunk_only=True, skip=9)

    result = transfers.upload(src, name="big.bin", parent=folder, key="big")

    stored = drive.files[result["id"]].content
    assert hashlib.sha256(stored).hexdigest() == sha256_file(src) == result["sha256Checksum"]
    assert dropped.hits == 1 and drive.count("status") == 4  # one offset query per failure
    assert len(backoff.sleep.waits) == 4 and len(set(backoff.sleep.waits)) == 4  # jittered waits
    # The drop kept the 1.5 MiB Drive had persisted: nothing was sent from zero again.
    assert drive.upload_bytes() == 50 * MiB
    assert drive.count("create-resumable") == 1 and len(drive.find("big.bin")) == 1
    assert list(transfers.journal.keys()) == []  # a finished upload leaves no session behind


def _settled(read, quiet: float = 0.2, limit: float = 5.0):
    """``read()`` once it stopped changing for ``quiet`` seconds."""
    value, since, start = read(), time.monotonic(), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() - start < limit:
        time.sleep(0.02)
        now = read()
        if now != value:
            value, since = now, time.monotonic()
    return value


_UPLOADER = """
import sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from google.oauth2.credentials import Credentials
from orchestrator.platforms.colab_drive.client import build_drive
from orchestrator.platforms.colab_drive.transfer import Transfers, UploadJournal
service = build_drive(Credentials(token="test-token"), {endpoint!r}, timeout=10)
t = Transfers(service, UploadJournal(Path({journal!r})), "gdrive", chunk_size=1024 * 1024)
t.upload(Path({src!r}), name="big.bin", parent={folder!r}, key="big")
print("finished")
"""


def test_a_restart_mid_upload_resumes_the_saved_session_instead_of_starting_over(drive, service, tmp_path, backoff):
    src = _random_file(tmp_path / "big.bin", 24 * MiB)
    journal = tmp_path / "uploads"
    folder = Transfers(service, UploadJournal(journal), "gdrive", backoff).folder("orch", "root")["id"]
    drive.inject("delay", method="PUT", chunk_only=True, delay=0.05, times=10_000)
    code = _UPLOADER.format(repo=str(REPO), endpoint=drive.api_endpoint, journal=str(journal), src=str(src),
                            folder=folder)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while drive.upload_bytes() < 8 * MiB:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # the controller dies mid-upload
    finally:
        proc.wait(timeout=10)
        proc.stdout.close()
    drive.faults.clear()
    before = _settled(drive.upload_bytes)  # the dead client's last chunk may still be arriving
    assert before < 24 * MiB and list(UploadJournal(journal).keys()) == ["big"]

    resumed = Transfers(service, UploadJournal(journal), "gdrive", backoff, chunk_size=1 * MiB)
    result = resumed.upload(src, name="big.bin", parent=folder, key="big")

    sent_after_restart = drive.upload_bytes() - before
    assert sent_after_restart <= 24 * MiB - before + 1 * MiB  # only the rest (one chunk may repeat)
    assert before >= 8 * MiB
    assert drive.count("create-resumable") == 1  # the same session, not a new one
    assert hashlib.sha256(drive.files[result["id"]].content).hexdigest() == sha256_file(src)
    assert list(UploadJournal(journal).keys()) == []


def test_an_expired_session_starts_a_new_upload(drive, transfers, folder, tmp_path):
    src = _random_file(tmp_path / "f.bin", 3 * MiB)
    transfers.journal.put("f", {"uri": f"{drive.base_url}/upload/drive/v3/files?uploadType=resumable&upload_id=gone",
                                "sha256": sha256_file(src), "size": 3 * MiB})
    result = transfers.upload(src, name="f.bin", parent=folder, key="f")
    assert result["size"] == str(3 * MiB) and drive.count("create-resumable") == 1


def test_download_resumes_after_a_cut_response_and_from_a_partial_file(drive, transfers, folder, tmp_path):
    data = os.urandom(5 * MiB + 3)
    file_id = transfers.put_bytes(data, name="d.bin", parent=folder)["id"]
    dest = tmp_path / "out" / "d.bin"
    dest.parent.mkdir()
    (tmp_path / "out" / "d.bin.part").write_bytes(data[: 2 * MiB])  # left by a crashed fetch
    cut = drive.inject("drop", method="GET", path="alt=media", skip=1)

    transfers.download(file_id, dest)

    assert dest.read_bytes() == data and not (tmp_path / "out" / "d.bin.part").exists()
    ranges = [r for r in drive.log if r.kind == "media"]
    assert cut.hits == 1 and ranges[0].status == 206
    assert drive.files[file_id].media_reads == 5  # 2 MiB skipped: 3 chunks, one of them twice


def test_a_download_with_the_wrong_bytes_is_discarded(drive, transfers, folder, tmp_path):
    file_id = transfers.put_bytes(b"payload", name="p", parent=folder)["id"]
    dest = tmp_path / "p"
    with pytest.raises(TransientError, match="sha256 mismatch"):
        transfers.download(file_id, dest, size=7, sha256="0" * 64)
    assert not dest.exists() and not (tmp_path / "p.part").exists()


def test_a_blob_is_uploaded_once_by_content_hash(drive, transfers, folder, tmp_path):
    src = _random_file(tmp_path / "data.tar", 2 * MiB + 1)
    digest = "d" * 64
    first, sent = transfers.ensure_blob(src, parent=folder, name=f"data-{digest}.tar", identity=("orch_digest", digest))
    again, sent_again = transfers.ensure_blob(src, parent=folder, name="data.tar", identity=("orch_digest", digest))
    assert sent and not sent_again and first["id"] == again["id"]
    assert drive.count("create-resumable") + drive.count("create-multipart") == 1
    assert drive.files[first["id"]].properties["orch_digest"] == digest
    assert "orch_used" in drive.files[first["id"]].properties  # reuse touches it (orch gc reads that)


def test_rate_limits_that_never_end_give_a_transient_error_after_the_retry_budget(drive, service, tmp_path):
    backoff = DRIVE_CALLS.replace(attempts=3, sleep=Sleeps())
    transfers = Transfers(service, UploadJournal(tmp_path), "gdrive", backoff)
    drive.inject("error", status=429, reason="rateLimitExceeded", times=100)
    with pytest.raises(TransientError, match="gave up after 3 tries.*429"):
        transfers.list("trashed = false")
    assert drive.count("list") == 3 and len(backoff.sleep.waits) == 2


def test_backoff_is_truncated_exponential_with_full_jitter():
    backoff = DRIVE_CALLS.replace(base=1.0, cap=8.0, rand=lambda: 1.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert DRIVE_CALLS.replace(rand=lambda: 0.0).delay(3) == 0.0  # full jitter: anywhere from zero


def test_multipart_is_used_only_up_to_5mb_and_larger_files_go_resumable(drive, service, tmp_path, backoff):
    # Drive documents uploadType=multipart for files up to 5 MB; the chunk (8 MiB) is larger.
    transfers = Transfers(service, UploadJournal(tmp_path / "uploads"), "gdrive", backoff, chunk_size=8 * MiB)
    folder = transfers.folder("orch", "root")["id"]
    small = transfers.upload(_random_file(tmp_path / "small.bin", 4 * MiB), name="small.bin", parent=folder, key="s")
    large = transfers.upload(_random_file(tmp_path / "large.bin", 6 * MiB), name="large.bin", parent=folder, key="l")
    resumable = sorted(s.metadata.get("name") for s in drive.sessions.values())
    assert resumable == ["large.bin"]  # the 4 MiB file went in one multipart request
    assert [int(small["size"]), int(large["size"])] == [4 * MiB, 6 * MiB]
