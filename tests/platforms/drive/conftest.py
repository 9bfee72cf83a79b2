"""Fixtures for the Colab-through-Drive platform: the fake Drive server and the real client.

The server is started once per session (a thread on 127.0.0.1) and reset before each
test, as rq flushes Redis; every client here is the unmodified google-api-python-client.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from google.oauth2.credentials import Credentials

from orchestrator.platforms.drive_client import build_drive
from orchestrator.platforms.drive_transfer import Backoff, Transfers, UploadJournal
from tests.emulators.drive import DriveServer

MiB = 1024 * 1024


@pytest.fixture(scope="session")
def drive_server():
    with DriveServer() as server:
        yield server


@pytest.fixture
def drive(drive_server: DriveServer):
    """The fake Drive, empty, with no faults; reset again afterwards."""
    drive_server.reset()
    yield drive_server
    drive_server.reset()


@pytest.fixture
def service(drive: DriveServer):
    """The real Drive v3 client, pointed at the fake server with the test token."""
    return build_drive(Credentials(token="test-token"), drive.api_endpoint, timeout=10)


@pytest.fixture
def backoff() -> Backoff:
    """Backoff that records its delays instead of sleeping (the delays stay random)."""
    return Backoff(sleep=lambda seconds: None)


@pytest.fixture
def transfers(service, tmp_path: Path, backoff: Backoff) -> Transfers:
    return Transfers(service, UploadJournal(tmp_path / "uploads"), "gdrive", backoff, chunk_size=1 * MiB)


@pytest.fixture
def folder(transfers: Transfers) -> str:
    """A fresh folder to work in."""
    return transfers.folder("orch", "root")["id"]
