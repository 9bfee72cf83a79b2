"""Fixtures for the Colab-over-SSH platform: a fake `colab` CLI in front of the real sshd
(the sshd itself comes from tests/platforms/conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.emulators import fake_colab
from tests.emulators.sshd import SSHD


@pytest.fixture
def colab(sshd: SSHD, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fake `colab` CLI on PATH whose `ssh --proxy-mode` reaches the test sshd."""
    fake = fake_colab.install(tmp_path / "colab-state", tmp_path / "colab-bin", sshd.port)
    monkeypatch.setenv("PATH", f"{fake.bin_dir}:{os.environ['PATH']}")
    yield fake
    fake.close()
