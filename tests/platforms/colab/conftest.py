"""Fixtures for the Colab-over-SSH platform: Google's real `colab` CLI against a local
stand-in of Colab's backend (tests/emulators/colab_backend.py), whose runtimes' SSH
endpoint bridges to the real test sshd (tests/platforms/conftest.py).

The CLI needs Python >= 3.12, so it lives in its own venv: ``$ORCH_TEST_COLAB_CLI`` (the
``colab`` executable), else ``.ci/colab-venv/bin/colab`` (made by ``.ci/run``). Without
it these tests skip and say how to get it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.emulators.colab_backend import ColabBackend, log_in
from tests.emulators.sshd import SSHD

ROOT = Path(__file__).resolve().parents[3]


def colab_executable() -> Path | None:
    named = os.environ.get("ORCH_TEST_COLAB_CLI")
    for candidate in ([Path(named)] if named else []) + [ROOT / ".ci" / "colab-venv" / "bin" / "colab"]:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture
def colab_bin() -> Path:
    found = colab_executable()
    if found is None:
        pytest.skip("the real `colab` CLI is not installed: run .ci/run, or make a Python 3.12 venv with "
                    "`pip install 'google-colab-cli>=0.7.2,<0.8'` and set ORCH_TEST_COLAB_CLI to its bin/colab")
    return found


@pytest.fixture
def colab(colab_bin: Path, sshd: SSHD, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The backend stand-in, a logged-in HOME for the CLI, and the env that routes the CLI to it."""
    backend = ColabBackend(tmp_path / "colab-backend", sshd.port)
    home = tmp_path / "colab-home"
    home.mkdir()
    log_in(home)
    monkeypatch.setenv("HOME", str(home))
    for key, value in backend.env().items():
        monkeypatch.setenv(key, value)
    backend.executable = colab_bin
    backend.home = home
    yield backend
    leaked = backend.live()
    backend.close()
    assert leaked == [], f"runtimes left running in the backend: {[r.endpoint for r in leaked]}"
