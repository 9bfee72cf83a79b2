"""Fixtures for the SSH and Colab platforms: a real sshd, cuttable relays, a fake colab CLI.

The sshd is started once per session (it costs ~0.1 s but tests open many
connections); everything a test can break (relays, fake Colab state, remote dirs)
is per test and torn down with it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

from orchestrator.platforms.ssh_transport import Endpoint, Timeouts
from tests.emulators import fake_colab
from tests.emulators.relay import Relay
from tests.emulators.sshd import SSHD, SSHDUnavailable

#: Short knobs: a dead tunnel must be noticed in about a second, not a minute.
FAST = Timeouts(connect=3, banner=2, auth=3, channel=2, command=10, sftp=2, probe=2, keepalive=5)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    try:
        server = SSHD.start(tmp_path_factory.mktemp("sshd"))
    except SSHDUnavailable as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture
def known_hosts(sshd: SSHD, tmp_path: Path) -> Path:
    """A known_hosts file that pins the test sshd's real host key."""
    return sshd.write_known_hosts(tmp_path / "known_hosts")


@pytest.fixture
def endpoint(sshd: SSHD, known_hosts: Path) -> Callable[..., Endpoint]:
    """Build an Endpoint for the test sshd; keyword arguments override fields."""

    def make(**overrides) -> Endpoint:
        fields = dict(
            name="lab",
            host=sshd.host,
            port=sshd.port,
            user=sshd.user,
            key=sshd.client_key.private,
            known_hosts=known_hosts,
            timeouts=FAST,
        )
        fields.update(overrides)
        return Endpoint(**fields)

    return make


@pytest.fixture
def relay(sshd: SSHD, tmp_path: Path):
    """A ProxyCommand relay to the sshd that the test can cut, freeze or take down."""
    r = Relay(control=tmp_path / "relay", port=sshd.port)
    yield r
    r.close()


@pytest.fixture
def via_relay(endpoint, relay: Relay, sshd: SSHD) -> Callable[..., Endpoint]:
    """An Endpoint that reaches the sshd only through ``relay`` (host is just a name)."""

    def make(**overrides) -> Endpoint:
        overrides.setdefault("proxy", tuple(relay.argv))
        return endpoint(**overrides)

    return make


@pytest.fixture
def colab(sshd: SSHD, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fake `colab` CLI on PATH whose `ssh --proxy-mode` reaches the test sshd."""
    fake = fake_colab.install(tmp_path / "colab-state", tmp_path / "colab-bin", sshd.port)
    monkeypatch.setenv("PATH", f"{fake.bin_dir}:{os.environ['PATH']}")
    yield fake
    fake.close()
