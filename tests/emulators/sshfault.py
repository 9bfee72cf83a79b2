"""An sshd session killer: the SSH connection dies *during* a chosen remote operation.

Installed as the forced command of one client key in the test sshd's
``authorized_keys`` (``command="python sshfault.py CONTROL"``), so every exec and
every SFTP session of that key passes through here. OpenSSH runs a key's forced
command for both, with the client's request in ``SSH_ORIGINAL_COMMAND`` (the literal
``internal-sftp`` for the SFTP subsystem), see sshd(8) AUTHORIZED_KEYS FILE FORMAT.

With no rule matching, the request runs unchanged (``/bin/sh -c`` the command, or
OpenSSH's ``sftp-server``). A rule in ``CONTROL/rules.json`` makes the next matching
request die by SIGKILLing the connection's sshd process, which is what a dropped
tunnel, an sshd restart or an OOM kill on the host looks like to the client: the
channel ends without an exit status, perhaps after part of the output::

    [{"match": "sha256sum", "times": 3, "when": "after"}, ...]

``when``: ``before`` (the command never runs), ``after`` (it ran, its output may be
on the way, its exit status never is); for SFTP ``up:N`` / ``down:N``: after N bytes
towards the server (an upload) or the client (a download); ``delay:S``: no cut, the
command just starts S seconds late (a slow or overloaded host). Every fault fired is
appended to ``CONTROL/hits.log`` as ``match when``.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

SFTP_SERVER = "/usr/lib/openssh/sftp-server"


def take_rule(control: Path, command: str) -> dict | None:
    """The first rule matching ``command`` with tries left, counted down under a lock."""
    with open(control / "rules.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            rules = json.loads((control / "rules.json").read_text())
        except (OSError, ValueError):
            return None
        for rule in rules:
            if rule["times"] > 0 and rule["match"] in command:
                rule["times"] -= 1
                (control / "rules.json").write_text(json.dumps(rules))
                with open(control / "hits.log", "a") as log:
                    log.write(f"{rule['match']} {rule['when']}\n")
                return rule
    return None


def sshd_ancestor() -> int:
    """The pid of the sshd process serving this connection (the nearest sshd ancestor)."""
    pid = os.getppid()
    while pid > 1:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        if name.startswith("sshd"):
            return pid
        pid = int(stat[stat.rindex(")") + 2:].split()[1])
    raise RuntimeError("no sshd ancestor")


def cut() -> None:
    os.kill(sshd_ancestor(), signal.SIGKILL)
    os._exit(0)


def relay_sftp(limit_dir: str, limit: int) -> int:
    """Run sftp-server behind a byte-counting pipe; cut once ``limit`` bytes went ``limit_dir``."""
    proc = subprocess.Popen([SFTP_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    sent = {"up": 0, "down": 0}
    inp, out = sys.stdin.fileno(), proc.stdout.fileno()
    while True:
        ready, _, _ = select.select([inp, out], [], [])
        if inp in ready:
            data = os.read(inp, 65536)
            if not data:
                proc.stdin.close()
                return proc.wait()
            sent["up"] += len(data)
            if limit_dir == "up" and sent["up"] >= limit:
                cut()
            proc.stdin.write(data)
            proc.stdin.flush()
        if out in ready:
            data = os.read(out, 65536)
            if not data:
                return proc.wait()
            sent["down"] += len(data)
            if limit_dir == "down" and sent["down"] >= limit:
                cut()
            os.write(sys.stdout.fileno(), data)


def main() -> int:
    control = Path(sys.argv[1])
    command = os.environ.get("SSH_ORIGINAL_COMMAND", "")
    sftp = command.strip() in ("internal-sftp", "sftp-server", SFTP_SERVER) or command.endswith("sftp-server")
    rule = take_rule(control, "internal-sftp" if sftp else command)
    if sftp:
        if rule is not None and ":" in rule["when"]:
            direction, n = rule["when"].split(":")
            return relay_sftp(direction, int(n))
        if rule is not None:
            cut()
        os.execv(SFTP_SERVER, [SFTP_SERVER])
    if rule is not None and rule["when"].startswith("delay:"):
        time.sleep(float(rule["when"].split(":")[1]))
        rule = None
    if rule is not None and rule["when"] == "before":
        cut()
    if rule is None:
        os.execv("/bin/sh", ["/bin/sh", "-c", command])
    subprocess.run(["/bin/sh", "-c", command])
    cut()
    return 0


if __name__ == "__main__":
    sys.exit(main())
