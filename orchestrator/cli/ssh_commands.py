"""``orch ssh trust NAME`` and ``orch colab setup-cell NAME``: host keys people can check.

orch never trusts a host key blindly: ``trust`` shows the key an SSH platform presents
and pins it only after the user confirms (or passes the fingerprint they checked out
of band); ``setup-cell`` generates the host key for a notebook-started runtime
itself, so the key is pinned before the runtime even exists.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import click

from ..errors import ConfigError, NotFoundError, PrecheckError
from .common import console, err_console, pass_app, untrusted

CELL_DOC = "docs/platforms/colab.md#tunnel-users"


def register(main: click.Group) -> None:
    """Attach ``orch ssh ...`` and ``orch colab setup-cell`` to the CLI."""
    main.add_command(ssh)
    colab = main.commands.get("colab")
    if isinstance(colab, click.Group):
        colab.add_command(setup_cell)


@click.group()
def ssh() -> None:
    """SSH hosts: pin host keys."""


@ssh.command()
@click.argument("name")
@click.option("--fingerprint", "expected", metavar="SHA256:...",
              help="Pin without asking if the host presents exactly this fingerprint.")
@click.option("--yes", "-y", is_flag=True, help="Pin without asking (only after checking the fingerprint).")
@pass_app
def trust(app, name: str, expected: str | None, yes: bool) -> None:
    """Show the host key of SSH platform NAME and pin it after confirmation.

    Compare the fingerprint with the one the host's owner shows you
    (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the host).

    \b
    Example:
      orch ssh trust lab
      orch ssh trust lab --fingerprint SHA256:4Xq3...
    """
    from ..platforms.ssh.platform import SSHPlatform
    from ..platforms.ssh.hostkeys import fingerprint, pin_host_key
    from ..platforms.ssh.connection import connect, pinned_keys, scan_host_key

    platform = app.platform(name)
    if not isinstance(platform, SSHPlatform) or platform.settings.type not in ("ssh", "slurm"):
        raise ConfigError(f"platform '{name}' is of type {platform.settings.type}; `orch ssh trust` pins keys of "
                          "`type: ssh` and `type: slurm` platforms (Colab runtimes are pinned automatically)")
    endpoint = platform.endpoint()
    key = scan_host_key(endpoint)
    shown = fingerprint(key)
    old = pinned_keys(endpoint)  # every type: pinning replaces them all
    if key in old:
        console.print(f"{endpoint.key_name} is already pinned: {shown}")
        return
    console.print(f"{endpoint.label} presents {shown}")
    if old:
        other = "" if any(k.get_name() == key.get_name() for k in old) else " (a key of another type)"
        err_console.print(f"[bold yellow]warning:[/] this replaces the pinned key "
                          f"{', '.join(fingerprint(k) for k in old)}{other}: "
                          "the host was reinstalled, or someone is intercepting the connection")
    if expected is not None:
        if expected.strip() not in (key.fingerprint, shown):
            raise PrecheckError(f"{name}: the host presents {key.fingerprint}, not {expected}; nothing was pinned")
    elif not yes and not click.confirm("Is this the host's key? Pin it", default=False):
        raise click.exceptions.Exit(1)
    pin_host_key(platform.known_hosts, endpoint.key_name, key)
    console.print(f"pinned in {platform.known_hosts}")
    try:
        conn = connect(endpoint)
    except PrecheckError as exc:
        err_console.print(f"[yellow]the key is pinned, but logging in failed:[/] {untrusted(exc)}")
        return
    conn.close()
    console.print("login OK")


@click.command("setup-cell")
@click.argument("name")
@click.option("--key", "user_key", default="~/.ssh/id_ed25519", show_default=True,
              help="Your private key; its public half is authorised on the runtime.")
@click.option("--gpu", default="T4", show_default=True, help="GPU type to put in the config entry.")
@click.option("--known-hosts", type=click.Path(dir_okay=False, path_type=Path),
              help="Pin the runtime's key here (default: $ORCH_HOME/ssh/known_hosts).")
@pass_app
def setup_cell(app, name: str, user_key: str, gpu: str, known_hosts: Path | None) -> None:
    """Print a notebook cell that opens SSH into a Colab runtime you started yourself.

    The cell installs openssh-server with a host key orch generated and pinned just
    now (no blind trust), authorises your public key, disables passwords and starts
    a cloudflared tunnel. Paste the hostname it prints into the config entry shown.
    Colab's terms forbid SSH on free runtimes without compute units, and tunnels may
    count as remote proxies: read docs/platforms/colab.md first.

    \b
    Example:
      orch colab setup-cell colab-tunnel > cell.py
    """
    import paramiko

    from ..platforms.ssh.hostkeys import pin_host_key
    from ..platforms.ssh.connection import ACCEPTED_KEY_TYPES

    if name in app.config.platforms and app.config.platforms[name].type != "ssh":
        raise ConfigError(f"platform '{name}' exists with type {app.config.platforms[name].type}; pick a new name")
    path = Path(user_key).expanduser()
    try:
        user = paramiko.PKey.from_path(path)
    except FileNotFoundError:
        raise NotFoundError(f"--key {path}: no such key; create one with `ssh-keygen -t ed25519`") from None
    except (paramiko.SSHException, ValueError) as exc:
        raise ConfigError(f"--key {path}: cannot read it ({exc}); use an unencrypted Ed25519 key") from None
    if user.get_name() not in ACCEPTED_KEY_TYPES:
        raise ConfigError(f"--key {path} is {user.get_name()}; use an Ed25519 or ECDSA key (`ssh-keygen -t ed25519`)")
    private_pem, host_pub = _new_host_key()
    alias = f"colab-tunnel-{name}"
    target = known_hosts or app.home.root / "ssh" / "known_hosts"
    pin_host_key(target, alias, paramiko.PKey.from_type_string("ssh-ed25519", _b64(host_pub)))
    click.echo(render_cell(name, private_pem, host_pub, f"{user.get_name()} {user.get_base64()} orch-{name}"))
    err_console.print(
        f"[dim]pinned the runtime's host key as '{alias}' in {target}. Run the cell, then add to config.yaml:[/]\n"
        + config_entry(name, alias, str(user_key), gpu, target if known_hosts else None)
    )


def _b64(public_line: str) -> bytes:
    import base64

    return base64.b64decode(public_line.split()[1])


def _new_host_key() -> tuple[str, str]:
    """A fresh Ed25519 host key: (OpenSSH private key text, public line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return private, public


def config_entry(name: str, alias: str, key: str, gpu: str, known_hosts: Path | None) -> str:
    lines = [
        "platforms:",
        f"  {name}:",
        "    type: ssh",
        "    host: HOSTNAME-PRINTED-BY-THE-CELL.trycloudflare.com",
        "    user: root",
        f"    key: {key}",
        "    proxy_command: cloudflared access ssh --hostname %h",
        f"    host_key_alias: {alias}",
        f"    gpu: {gpu}",
        "    remote_dir: /content/orch",
        "    session_hours: 12",
    ]
    if known_hosts is not None:
        lines.append(f"    known_hosts: {known_hosts}")
    return "\n".join(lines)


_CELL = '''\
# orch setup cell for platform {name!r}, generated {when}.
# TERMS: Colab forbids SSH/remote control on free runtimes without a positive
# compute-unit balance, and tunnels may count as "remote proxies". Use this only on
# a paid plan with compute units; see {doc}.
# The host key below was generated by orch and is already pinned on your controller:
# do not share this cell; generate a new one for every runtime.
import os, pathlib, re, subprocess, time

HOST_KEY = """{private}"""
HOST_PUB = {host_pub!r}
USER_KEY = {user_pub!r}

subprocess.run("apt-get -qq update && apt-get -qq install -y openssh-server > /dev/null", shell=True, check=True)
os.makedirs("/run/sshd", exist_ok=True)
key = pathlib.Path("/etc/ssh/orch_host_ed25519_key")
key.write_text(HOST_KEY); key.chmod(0o600)
pathlib.Path(str(key) + ".pub").write_text(HOST_PUB + "\\n")
ssh_dir = pathlib.Path("/root/.ssh"); ssh_dir.mkdir(mode=0o700, exist_ok=True)
auth = ssh_dir / "authorized_keys"; auth.write_text(USER_KEY + "\\n"); auth.chmod(0o600)
pathlib.Path("/etc/ssh/sshd_orch_config").write_text("""\\
Port 22
ListenAddress 127.0.0.1
HostKey /etc/ssh/orch_host_ed25519_key
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AuthorizedKeysFile /root/.ssh/authorized_keys
Subsystem sftp internal-sftp
""")
# SSH sessions do not inherit the notebook kernel's environment (CUDA paths).
with open("/etc/environment", "a") as env:
    for var in ("PATH", "LD_LIBRARY_PATH", "COLAB_GPU", "CUDA_VERSION"):
        if os.environ.get(var):
            env.write(f'{{var}}="{{os.environ[var]}}"\\n')
subprocess.run(["/usr/sbin/sshd", "-f", "/etc/ssh/sshd_orch_config"], check=True)
subprocess.run("wget -q -O /usr/local/bin/cloudflared "
               "https://github.com/cloudflare/cloudflared/releases/latest/download/cloudflared-linux-amd64 "
               "&& chmod +x /usr/local/bin/cloudflared", shell=True, check=True)
log = open("/tmp/cloudflared.log", "w")
subprocess.Popen(["/usr/local/bin/cloudflared", "tunnel", "--no-autoupdate", "--url", "ssh://localhost:22"],
                 stdout=log, stderr=log)
host = None
for _ in range(60):
    found = re.search(r"https://([a-z0-9-]+\\.trycloudflare\\.com)", open("/tmp/cloudflared.log").read())
    if found:
        host = found.group(1)
        break
    time.sleep(1)
print("orch: host for platform {name!r}:", host or "not found; see /tmp/cloudflared.log")
'''


def render_cell(name: str, private_pem: str, host_pub: str, user_pub: str) -> str:
    """The notebook cell (Python) for ``orch colab setup-cell``."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return _CELL.format(name=name, when=when, doc=CELL_DOC, private=private_pem.strip(), host_pub=host_pub,
                        user_pub=user_pub)
