"""Host-key pinning against a real sshd: nothing unknown or changed is ever accepted."""

from __future__ import annotations

import paramiko
import pytest

from orchestrator.errors import PrecheckError
from orchestrator.platforms.ssh.hostkeys import fingerprint, pin_host_key
from orchestrator.platforms.ssh.connection import connect, scan_host_key
from tests.emulators.sshd import generate_ed25519


def test_pinned_host_key_connects_and_runs_a_command(endpoint):
    conn = connect(endpoint())
    try:
        result = conn.run("echo hello; echo oops >&2; exit 3")
    finally:
        conn.close()
    assert (result.rc, result.out, result.err) == (3, "hello\n", "oops\n")


def test_unknown_host_key_is_refused_with_its_fingerprint(endpoint, sshd, tmp_path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(PrecheckError) as caught:
        connect(endpoint(known_hosts=empty))
    expected = fingerprint(paramiko.PKey.from_path(sshd.host_key.private))
    message = str(caught.value)
    assert expected in message and "orch ssh trust lab" in message and "\n" not in message


def test_changed_host_key_is_refused_showing_both_fingerprints(endpoint, sshd, tmp_path):
    impostor = generate_ed25519(tmp_path / "impostor")
    known = tmp_path / "known_hosts_changed"
    known.write_text(f"{sshd.host_key_name} {impostor.key_type} {impostor.base64}\n")
    with pytest.raises(PrecheckError) as caught:
        connect(endpoint(known_hosts=known))
    real = paramiko.PKey.from_path(sshd.host_key.private).fingerprint
    pinned = paramiko.PKey.from_path(impostor.private).fingerprint
    assert "CHANGED" in str(caught.value) and real in str(caught.value) and pinned in str(caught.value)


def test_scanned_key_pinned_into_known_hosts_then_connects_and_keeps_other_lines(endpoint, sshd, tmp_path):
    known = tmp_path / "known_hosts_user"
    other = "# my hosts\ngithub.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n"
    stale = generate_ed25519(tmp_path / "stale")
    known.write_text(other + f"{sshd.host_key_name} {stale.key_type} {stale.base64}\n")
    ep = endpoint(known_hosts=known)

    key = scan_host_key(ep)
    assert key.fingerprint == paramiko.PKey.from_path(sshd.host_key.private).fingerprint
    pin_host_key(known, ep.key_name, key)

    text = known.read_text()
    assert text.startswith(other) and stale.base64 not in text and oct(known.stat().st_mode & 0o777) == "0o600"
    conn = connect(ep)
    conn.close()


def test_refused_login_key_is_a_precheck_error(endpoint, tmp_path):
    stranger = generate_ed25519(tmp_path / "stranger")
    with pytest.raises(PrecheckError, match="authentication"):
        connect(endpoint(key=stranger.private))


def test_rsa_key_is_refused_before_connecting(endpoint, tmp_path):
    rsa = tmp_path / "id_rsa"
    paramiko.RSAKey.generate(2048).write_private_key_file(str(rsa))
    with pytest.raises(PrecheckError, match="Ed25519 or ECDSA"):
        connect(endpoint(key=rsa))


def test_missing_key_file_names_the_fix(endpoint, tmp_path):
    with pytest.raises(PrecheckError, match="ssh-keygen -t ed25519"):
        connect(endpoint(key=tmp_path / "nope"))
