"""Fixtures for the Kaggle platform tests: the emulator and the environment that points
the unmodified ``kaggle`` client at it.

``import kaggle`` has side effects (notes §4): the client class reads
``KAGGLE_API_ENVIRONMENT`` and creates its config dir at import, and the package
authenticates at import. So this module sets the environment up when pytest loads
it, before anything in the process imports ``kaggle``.

Design choice: ``TMPDIR`` is not replaced process-wide (other engineers' tests share
this process and ``tempfile`` caches its directory); the client's upload-resume
state is keyed by file path and every test stages uploads under its own
``tmp_path``, so no state leaks between tests.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from tests.emulators.kaggle import KaggleEmulator

USERNAME = "alice"
KEY = "emulator-key-0000"

os.environ["KAGGLE_API_ENVIRONMENT"] = "LOCALHOST"
os.environ.pop("KAGGLE_API_TOKEN", None)
os.environ["KAGGLE_CONFIG_DIR"] = tempfile.mkdtemp(prefix="orch-kaggle-config-")
os.environ["KAGGLE_USERNAME"] = USERNAME
os.environ["KAGGLE_KEY"] = KEY


@pytest.fixture(scope="session")
def kaggle_server(tmp_path_factory: pytest.TempPathFactory):
    """The emulator, started once on 127.0.0.1 and stopped (runs killed) at the end."""
    emulator = KaggleEmulator(tmp_path_factory.mktemp("kaggle-emulator"), username=USERNAME, key=KEY).start()
    yield emulator
    emulator.close()


@pytest.fixture
def kaggle_emulator(kaggle_server: KaggleEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A clean emulator for one test, with the client's environment pointing at it.

    Only ``localhost`` (the client's LOCALHOST endpoint) goes through the proxy;
    ``127.0.0.1`` stays direct for the URLs the emulator hands out and for every
    other loopback server in the suite.
    """
    kaggle_server.reset()
    for name in ("http_proxy", "https_proxy", "HTTPS_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", kaggle_server.proxy_url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
    monkeypatch.setenv("KAGGLE_USERNAME", USERNAME)
    monkeypatch.setenv("KAGGLE_KEY", KEY)
    config_dir = tmp_path / "kaggle-config"
    config_dir.mkdir()
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config_dir))
    yield kaggle_server
    kaggle_server.reset()


@pytest.fixture
def kaggle_api(kaggle_emulator: KaggleEmulator):
    """The real, unmodified ``KaggleApi``, authenticated against the emulator."""
    from kaggle.api.kaggle_api_extended import KaggleApi

    api = KaggleApi()
    api.authenticate()
    return api
