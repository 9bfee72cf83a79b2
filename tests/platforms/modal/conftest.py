"""Fixtures for the Modal tests: the gRPC stand-in, and the environment that points the
unmodified ``modal`` client at it (``MODAL_SERVER_URL`` plus test token values).

The client reads ``~/.modal.toml`` when ``modal`` is first imported and keeps one client
per process, so the environment is set when pytest loads this module and the stand-in
serves on one port for the session; each test gets its state reset.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("modal", reason="the modal extra is not installed (pip install 'orch[modal]')")

from tests.emulators.modal_server import TOKEN, ModalStandIn  # noqa: E402

os.environ["MODAL_CONFIG_PATH"] = os.path.join(tempfile.mkdtemp(prefix="orch-modal-"), "modal.toml")


@pytest.fixture(scope="session")
def modal_server(tmp_path_factory: pytest.TempPathFactory):
    standin = ModalStandIn(tmp_path_factory.mktemp("modal-standin"))
    running = standin.start()
    yield running
    running.stop()


@pytest.fixture
def modal_standin(modal_server, monkeypatch: pytest.MonkeyPatch) -> ModalStandIn:
    """The stand-in with a fresh workspace, the client's environment pointing at it."""
    monkeypatch.setenv("MODAL_SERVER_URL", modal_server.url)
    monkeypatch.setenv("MODAL_TOKEN_ID", TOKEN[0])
    monkeypatch.setenv("MODAL_TOKEN_SECRET", TOKEN[1])
    standin = modal_server.standin
    standin.reset()
    yield standin
    standin.stop_all()


@pytest.fixture
def modal_config(config, modal_standin):
    """config.yaml with one modal platform (short deadlines), plus ``extra`` keys."""

    def write(**extra) -> Path:
        entry = {"type": "modal", "gpu": ["T4"], "call_deadline": "3s", **extra}
        return config(platforms={"cloud": entry})
    return write
