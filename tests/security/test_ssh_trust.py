"""Issue 16.9: ``orch ssh trust`` warns before it replaces a pinned key of another
type (an attacker's host may present ed25519 where an RSA key was pinned). Real sshd."""

from __future__ import annotations

import paramiko


def test_replacing_a_pinned_key_of_another_type_warns(orch, config, ssh_platform, sshd, tmp_path):
    known = tmp_path / "pins"
    other = paramiko.ECDSAKey.generate()
    known.write_text(f"{sshd.host_key_name} {other.get_name()} {other.get_base64()}\n")
    config(platforms={"lab": ssh_platform(known_hosts=str(known))})
    r = orch("ssh", "trust", "lab", input="n\n")
    assert r.exit_code == 1
    assert "warning: this replaces the pinned key" in r.output and other.fingerprint in r.output
    assert "another type" in r.output
    assert other.get_base64() in known.read_text() and sshd.host_key.base64 not in known.read_text()  # declined


def test_a_pinned_key_of_another_type_is_replaced_with_the_warning_after_yes(orch, config, ssh_platform, sshd, tmp_path):
    known = tmp_path / "pins"
    rsa = paramiko.RSAKey.generate(1024)
    known.write_text(f"{sshd.host_key_name} {rsa.get_name()} {rsa.get_base64()}\n")
    config(platforms={"lab": ssh_platform(known_hosts=str(known))})
    r = orch("ssh", "trust", "lab", "--yes")
    assert r.exit_code == 0 and "warning: this replaces the pinned key" in r.output and "login OK" in r.output
    assert rsa.get_base64() not in known.read_text()
