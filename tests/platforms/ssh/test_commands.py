"""`orch ssh trust` and `orch colab setup-cell`: no host key is ever trusted blindly."""

from __future__ import annotations

import json
import re

import paramiko

from tests.emulators.relay import Relay
from tests.emulators.sshd import SSHD


def test_trust_shows_the_fingerprint_and_pins_only_after_confirmation(orch, config, ssh_platform, sshd, tmp_path):
    known = tmp_path / "pins"
    config(platforms={"lab": ssh_platform(known_hosts=str(known))})
    fp = paramiko.PKey.from_path(sshd.host_key.private).fingerprint

    declined = orch("ssh", "trust", "lab", input="n\n")
    assert fp in declined.output and declined.exit_code == 1 and not known.exists()

    accepted = orch("ssh", "trust", "lab", input="y\n")
    assert accepted.exit_code == 0 and "login OK" in accepted.output
    assert sshd.host_key.base64 in known.read_text()
    assert "already pinned" in orch("ssh", "trust", "lab").output


def test_trust_with_a_different_fingerprint_pins_nothing(orch, config, ssh_platform, tmp_path):
    known = tmp_path / "pins"
    config(platforms={"lab": ssh_platform(known_hosts=str(known))})
    result = orch("ssh", "trust", "lab", "--fingerprint", "SHA256:not-the-right-one")
    assert result.exit_code == 1 and "nothing was pinned" in result.output and not known.exists()


def test_trust_with_the_checked_fingerprint_pins_without_asking(orch, config, ssh_platform, sshd, tmp_path):
    known = tmp_path / "pins"
    config(platforms={"lab": ssh_platform(known_hosts=str(known))})
    fp = paramiko.PKey.from_path(sshd.host_key.private).fingerprint
    assert "login OK" in orch("ssh", "trust", "lab", "--fingerprint", fp).output and known.exists()


def test_setup_cell_pins_the_key_it_installs_so_the_runtime_needs_no_trust(orch, config, ssh_platform, sshd, tmp_path):
    known = tmp_path / "pins"
    config(platforms={"local": {"type": "local"}})
    result = orch("colab", "setup-cell", "tunnel", "--key", str(sshd.client_key.private), "--known-hosts", str(known))
    cell = result.stdout
    compile(cell, "cell.py", "exec")
    assert "PasswordAuthentication no" in cell and sshd.client_key.base64 in cell and "terms" in cell.lower()
    assert "host_key_alias: colab-tunnel-tunnel" in result.stderr
    pem = re.search(r'HOST_KEY = """(.*?)"""', cell, re.S).group(1)

    # A "runtime" that installed the cell's host key, reached through a tunnel-like relay.
    runtime = SSHD.start(tmp_path / "runtime", host_key_pem=pem)
    tunnel = Relay(control=tmp_path / "tunnel", port=runtime.port)
    try:
        (runtime.workdir / "authorized_keys").write_text(sshd.client_key.public + "\n")
        config(platforms={"tunnel": ssh_platform(
            host="random-words.trycloudflare.com", port=22, known_hosts=str(known),
            host_key_alias="colab-tunnel-tunnel", proxy_command=" ".join(tunnel.argv))})
        [entry] = json.loads(orch("platforms", "--json").output)
        assert entry["problems"] == [] and tunnel.started() == 1  # logged in, key checked
    finally:
        tunnel.close()
        runtime.stop()
