"""Fixtures for the slurm platform: a real one-node Slurm cluster behind the real test sshd.

The cluster (munged, slurmctld, slurmd) and its login node (an sshd whose sessions
get SLURM_CONF) start once per session and are stopped by pid at its end; each test
ends with no job left in the cluster and the node idle again.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.emulators.slurm import SlurmCluster, SlurmUnavailable
from tests.emulators.sshd import SSHD, SSHDUnavailable
from tests.platforms.conftest import FAST


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    try:
        running = SlurmCluster.start(tmp_path_factory.mktemp("slurm"))
    except SlurmUnavailable as exc:
        pytest.skip(str(exc))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def login_node(cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory):
    """The cluster's login node: the real test sshd, its sessions pointed at the cluster."""
    try:
        server = SSHD.start(tmp_path_factory.mktemp("login"), env=cluster.env)
    except SSHDUnavailable as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture
def slurm_platform(cluster: SlurmCluster, login_node: SSHD, tmp_path: Path):
    """A ``type: slurm`` entry for the test cluster (files under tmp_path/remote); kwargs override."""
    known_hosts = login_node.write_known_hosts(tmp_path / "known_hosts")

    def make(**overrides) -> dict:
        entry = {
            "type": "slurm",
            "host": login_node.host,
            "port": login_node.port,
            "user": login_node.user,
            "key": str(login_node.client_key.private),
            "known_hosts": str(known_hosts),
            "remote_dir": str(tmp_path / "remote"),
            "python": sys.executable,
            "partition": "gpu",
            "gres": {"T4": "gpu:t4:1"},
            "heartbeat_interval": "0.5s",
            "reconnect_tries": 2,
            "reconnect_delay": "0.1s",
            "timeouts": {k: f"{v:g}s" for k, v in vars(FAST).items()},
        }
        entry.update(overrides)
        return entry

    yield make
    if "slurmctld" not in cluster.procs:  # a test stopped it and failed before starting it again
        cluster.start_controller()
    cluster.client("scancel", "--user=root")
    cluster.wait_idle()
