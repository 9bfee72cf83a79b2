"""A fake ``colab`` executable honouring the official google-colab-cli contract.

orch drives Colab only through Google's CLI, so the tests put this program on PATH as
``colab`` (:func:`install`) and let orch call it exactly as it calls the real one.
It keeps its "server" state in a JSON file and bridges ``colab ssh --proxy-mode`` to
the test's real sshd.

What it reproduces of google-colab-cli (``src/colab_cli/commands/session.py``,
``ssh.py``, ``consumption`` tests; ``docs/06_ssh_access.md``) — orch parses these
human-readable outputs because the CLI has no machine-readable mode:

* ``colab new [-s NAME] [--gpu T4|L4|G4|A100|H100]`` prints ``[colab] Creating session
  'NAME'...`` and ``[colab] Session READY.``; the GPU name is matched
  case-insensitively and an unknown one silently becomes A100; an accelerator the
  account is not entitled to exits 1 with ``[colab] Backend rejected accelerator``.
  Re-using a name orphans the earlier runtime (the CLI's store overwrites by name).
* ``colab sessions`` prints one line per server-side assignment,
  ``[NAME] ENDPOINT | Hardware: T4 | Variant: GPU`` (``[?]`` for a runtime with no
  local name), or ``[colab] No active sessions found on server.``
* ``colab stop -s NAME`` prints ``[colab] Session terminated.``, or ``[colab] Session
  'NAME' not found.`` (exit 0 in both cases); live ``ssh`` bridges to it end.
* ``colab usage`` prints ``Current balance: 298.53 compute units`` / ``Usage rate:
  0.07/hr`` / ``Active assignments: 2``.
* ``colab ssh --proxy-mode -s NAME [-i KEY] [--gpu X] [--rm]`` bridges raw SSH bytes on
  stdin/stdout; creates NAME if missing (messages on stderr); the handshake failures
  exit 1 with ``[colab] ... (HTTP 404|429|502) ...`` on stderr: 404 the runtime has no
  SSH, 429 another ``colab ssh`` is connected (one per runtime), 502 sshd unreachable.
  RSA keys are refused (HTTP 400).

Test controls (through :class:`FakeColab`): queue a fault for a verb (``hang``, or exit
with a code and message), mark sshd down, set the balance, list the calls made.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

STATE_ENV = "FAKE_COLAB_STATE"
VERSION = "0.7.5"
_GPU = {"t4": "T4", "l4": "L4", "g4": "G4", "a100": "A100", "h100": "H100"}
RATES = {"NONE": 0.07, "T4": 1.96, "L4": 4.8, "G4": 8.9, "A100": 13.08, "H100": 18.0}
_HTTP = {
    404: "Endpoint not found (HTTP 404): this runtime does not expose the /colab/ssh endpoint. "
    "SSH is enabled at runtime creation, so an older or non-SSH runtime will not have it - run `colab new` "
    "for a fresh runtime with SSH.",
    429: "Already-active SSH session (HTTP 429): another `colab ssh` is connected to this runtime. "
    "Disconnect it and retry.",
    502: "Bad gateway (HTTP 502): the runtime's local sshd is unreachable. The runtime may be unhealthy; "
    "try `colab status`, then `colab stop` + `colab new`.",
    400: "Server rejected pubkey: unsupported key type. Accepted key types: ssh-ed25519, "
    "ecdsa-sha2-nistp{256,384,521}. RSA keys (ssh-rsa) are NOT accepted.",
}


# --------------------------------------------------------------------------- state


def _default_state() -> dict[str, Any]:
    return {
        "sshd": {"host": "127.0.0.1", "port": 0},
        "sessions": [],  # {"name", "endpoint", "accelerator", "variant", "ssh", "bridges": [pid]}
        "balance": 100.0,
        "eligible": ["T4", "L4", "G4", "A100", "H100"],
        "faults": {},  # verb -> [{"kind": "hang"|"exit"|"http", "code": int, "message": str}]
        "sshd_down": False,
        "ssh_in_new_runtimes": True,
        "substitute": {},  # accelerator asked -> accelerator given
    }


@contextmanager
def _state(root: Path, write: bool = True) -> Iterator[dict[str, Any]]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "state.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = root / "state.json"
        state = json.loads(path.read_text()) if path.exists() else _default_state()
        yield state
        if write:
            tmp = root / "state.json.tmp"
            tmp.write_text(json.dumps(state, indent=1))
            os.replace(tmp, path)


def _log_call(root: Path, argv: list[str]) -> None:
    with open(root / "calls.log", "a") as f:
        f.write(json.dumps({"argv": argv, "t": time.time(), "pid": os.getpid()}) + "\n")


def _take_fault(root: Path, verb: str) -> dict[str, Any] | None:
    with _state(root) as state:
        queue = state["faults"].get(verb) or []
        if not queue:
            return None
        fault = queue.pop(0)
        state["faults"][verb] = queue
        return fault


def _apply_fault(fault: dict[str, Any]) -> int:
    if fault["kind"] == "hang":
        while True:
            time.sleep(3600)
    if fault["kind"] == "http":
        sys.stderr.write(f"[colab] {_HTTP.get(fault['code'], 'HTTP %d' % fault['code'])}\n")
        return 1
    if fault.get("message"):
        sys.stderr.write(fault["message"] + "\n")
    return int(fault.get("code", 1))


# --------------------------------------------------------------------------- verbs


def _opt(args: list[str], *names: str) -> str | None:
    for i, a in enumerate(args):
        if a in names and i + 1 < len(args):
            return args[i + 1]
        for n in names:
            if n.startswith("--") and a.startswith(n + "="):
                return a.split("=", 1)[1]
    return None


def _create(state: dict[str, Any], name: str | None, gpu: str | None, out) -> dict[str, Any] | int:
    name = name or uuid.uuid4().hex[:6]
    accelerator, variant = "NONE", "DEFAULT"
    if gpu:
        accelerator, variant = _GPU.get(gpu.lower(), "A100"), "GPU"
    out.write(f"[colab] Creating session '{name}'...\n")
    if accelerator != "NONE" and accelerator not in state["eligible"]:
        sys.stderr.write(
            f"[colab] Backend rejected accelerator '{accelerator}'. You may not have quota or entitlement for "
            "this accelerator on your account. Try a different one (e.g. --gpu T4) or omit --gpu/--tpu for a "
            "CPU runtime.\n"
        )
        return 1
    # Reported against the real service: other hardware than asked, without a word.
    accelerator = state.get("substitute", {}).get(accelerator, accelerator)
    for s in state["sessions"]:
        if s["name"] == name:
            s["name"] = "?"  # the CLI's local store forgets it; the server keeps it
    session = {
        "name": name,
        "endpoint": f"gpu-{accelerator.lower()}-s-{uuid.uuid4().hex[:12]}",
        "accelerator": accelerator,
        "variant": variant,
        "ssh": state["ssh_in_new_runtimes"],
        "bridges": [],
        "created": time.time(),
    }
    state["sessions"].append(session)
    out.write("[colab] Session READY.\n")
    return session


def cmd_new(root: Path, args: list[str]) -> int:
    with _state(root) as state:
        made = _create(state, _opt(args, "-s", "--session"), _opt(args, "--gpu"), sys.stdout)
    return made if isinstance(made, int) else 0


def cmd_sessions(root: Path, args: list[str]) -> int:
    with _state(root, write=False) as state:
        sessions = list(state["sessions"])
    if not sessions:
        print("[colab] No active sessions found on server.")
        return 0
    for s in sessions:
        hw = "CPU" if s["accelerator"] == "NONE" else s["accelerator"]
        print(f"[{s['name']}] {s['endpoint']} | Hardware: {hw} | Variant: {s['variant']}")
    return 0


def cmd_stop(root: Path, args: list[str]) -> int:
    name = _opt(args, "-s", "--session")
    with _state(root) as state:
        match = [s for s in state["sessions"] if s["name"] == name and name != "?"]
        if not match:
            print(f"[colab] Session '{name}' not found.")
            return 0
        print(f"[colab] Stopping session '{name}'...")
        state["sessions"] = [s for s in state["sessions"] if s is not match[0]]
    for pid in match[0]["bridges"]:
        try:
            os.kill(pid, signal.SIGTERM)  # the runtime is gone: its WebSocket closes
        except ProcessLookupError:
            pass
    print("[colab] Session terminated.")
    return 0


def cmd_usage(root: Path, args: list[str]) -> int:
    with _state(root, write=False) as state:
        rate = sum(RATES.get(s["accelerator"], 1.0) for s in state["sessions"])
        print(f"Current balance: {state['balance']:.2f} compute units")
        print(f"Usage rate: {rate:.2f}/hr")
        print(f"Active assignments: {len(state['sessions'])}")
    return 0


def _pubkey_type(identity: str | None) -> str | None:
    if identity is None:
        for name in ("id_ed25519.pub", "id_ecdsa.pub"):
            path = Path.home() / ".ssh" / name
            if path.exists():
                return path.read_text().split()[0]
        return None
    try:
        out = subprocess.run(["ssh-keygen", "-y", "-f", os.path.expanduser(identity)], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.split()[0] if out.returncode == 0 and out.stdout.strip() else None


def cmd_ssh(root: Path, args: list[str]) -> int:
    if "--proxy-mode" not in args:
        sys.stderr.write("[colab] fake colab only supports `ssh --proxy-mode`\n")
        return 2
    name = _opt(args, "-s", "--session")
    key_type = _pubkey_type(_opt(args, "-i", "--identity"))
    if key_type is None:
        sys.stderr.write("[colab] no SSH public key found in ~/.ssh/. Run `ssh-keygen -t ed25519` or pass --identity.\n")
        return 2
    if key_type == "ssh-rsa":
        sys.stderr.write(f"[colab] {_HTTP[400]}\n")
        return 1
    with _state(root) as state:
        match = [s for s in state["sessions"] if s["name"] == name and name]
        if match:
            session = match[0]
        else:  # -s NAME creates the session if missing; output to stderr
            made = _create(state, name, _opt(args, "--gpu"), sys.stderr)
            if isinstance(made, int):
                return made
            session = made
        if state["sshd_down"]:
            sys.stderr.write(f"[colab] {_HTTP[502]}\n")
            return 1
        if not session["ssh"]:
            sys.stderr.write(f"[colab] {_HTTP[404]}\n")
            return 1
        port = state["sshd"]["port"]
        endpoint = session["endpoint"]
    lock = open(root / f"ssh-{endpoint}.lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.stderr.write(f"[colab] {_HTTP[429]}\n")
        return 1
    with _state(root) as state:
        for s in state["sessions"]:
            if s["endpoint"] == endpoint:
                s["bridges"] = [p for p in s["bridges"] if _alive(p)] + [os.getpid()]
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError:
        sys.stderr.write(f"[colab] {_HTTP[502]}\n")
        return 1
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from relay import bridge  # the same byte pump the test relay uses

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        bridge(sys.stdin.fileno(), sys.stdout.fileno(), sock)
    finally:
        sock.close()
    if "--rm" in args:
        cmd_stop(root, ["-s", name or ""])
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


VERBS = {"new": cmd_new, "sessions": cmd_sessions, "stop": cmd_stop, "usage": cmd_usage, "ssh": cmd_ssh}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    root = Path(os.environ[STATE_ENV])
    _log_call(root, args)
    # Global options come before the verb (e.g. --auth=adc, --config PATH).
    while args and args[0].startswith("-") and args[0] not in ("-h", "--help", "--version"):
        args = args[2:] if args[0] in ("--config", "-c", "--auth") else args[1:]
    if not args or args[0] in ("-h", "--help", "help"):
        print("Usage: colab [OPTIONS] COMMAND [ARGS]...\n\n  Colab CLI\n\nCommands: " + ", ".join(sorted(VERBS)))
        return 0
    if args[0] in ("version", "--version"):
        print(f"colab-cli {VERSION}")
        return 0
    verb, rest = args[0], args[1:]
    fault = _take_fault(root, verb)
    if fault is not None:
        return _apply_fault(fault)
    handler = VERBS.get(verb)
    if handler is None:
        sys.stderr.write(f"No such command '{verb}'.\n")
        return 2
    return handler(root, rest)


# --------------------------------------------------------------------------- test side


@dataclass
class FakeColab:
    """The test's handle on one fake Colab account (state dir + launcher)."""

    root: Path
    bin_dir: Path

    @property
    def executable(self) -> Path:
        return self.bin_dir / "colab"

    def update(self, **changes: Any) -> None:
        with _state(self.root) as state:
            state.update(changes)

    def read(self) -> dict[str, Any]:
        with _state(self.root, write=False) as state:
            return json.loads(json.dumps(state))

    def sessions(self) -> list[dict[str, Any]]:
        return self.read()["sessions"]

    def add_session(self, name: str, accelerator: str = "T4") -> dict[str, Any]:
        """A runtime created behind orch's back (e.g. by a tick that crashed after ``new``)."""
        with _state(self.root) as state:
            made = _create(state, name, accelerator, open(os.devnull, "w"))
            assert isinstance(made, dict)
            return made

    def fault(self, verb: str, kind: str = "exit", code: int = 1, message: str = "") -> None:
        """Queue one failure for the next call of ``verb`` (``kind``: hang, exit, http)."""
        with _state(self.root) as state:
            state["faults"].setdefault(verb, []).append({"kind": kind, "code": code, "message": message})

    def calls(self, verb: str | None = None) -> list[list[str]]:
        try:
            lines = (self.root / "calls.log").read_text().splitlines()
        except FileNotFoundError:
            return []
        argvs = [json.loads(line)["argv"] for line in lines]
        return [a for a in argvs if verb is None or (a and a[0] == verb)]

    def bridge_pids(self) -> list[int]:
        return [p for s in self.sessions() for p in s["bridges"] if _alive(p)]

    def close(self) -> None:
        """Teardown: end every bridge still running."""
        for pid in self.bridge_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def install(root: Path, bin_dir: Path, sshd_port: int, python: str = sys.executable) -> FakeColab:
    """Create the state dir and a ``colab`` launcher in ``bin_dir`` (put it on PATH)."""
    root.mkdir(parents=True, exist_ok=True)
    bin_dir.mkdir(parents=True, exist_ok=True)
    with _state(root) as state:
        state["sshd"]["port"] = sshd_port
    launcher = bin_dir / "colab"
    launcher.write_text(
        "#!/bin/sh\n"
        f"{STATE_ENV}={_sh_quote(str(root))}\n"
        f"export {STATE_ENV}\n"
        f"exec {_sh_quote(python)} {_sh_quote(str(Path(__file__).resolve()))} \"$@\"\n"
    )
    launcher.chmod(0o755)
    return FakeColab(root=root, bin_dir=bin_dir)


def _sh_quote(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


if __name__ == "__main__":
    sys.exit(main())
