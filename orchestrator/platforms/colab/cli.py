"""A thin wrapper around Google's official ``colab`` CLI (google-colab-cli), with deadlines.

orch never talks to Colab's endpoints itself: the CLI is the supported interface.
This module runs it, parses its human-readable output, and maps its failures onto
orch's error tree. Every call has a deadline (the CLI has been seen to hang past its
own timeouts); an overrun kills the CLI's whole process group.

orch gives the CLI its own session store (``colab --config FILE``, a documented global
option) inside the platform's state directory, so the names orch gives runtimes never
mix with the user's own sessions, and orch can re-create an entry the CLI lost: an
entry with an endpoint and no token is refreshed by the CLI from ``/tun/m/assignments``
on its next use (``State.get_session`` in 0.7.x).

Output formats relied on (google-colab-cli 0.7.2 to 0.7.5, ``commands/session.py``;
there is no machine-readable mode, so unknown lines, such as the upgrade banner that
goes to stdout, are ignored):

* ``colab sessions``: ``[NAME] ENDPOINT | Hardware: T4 | Shape: Standard | Variant: GPU``
  per runtime (``[?]`` when the store has no name for it), or ``[colab] No active
  sessions found on server.``; the older ``[i] Endpoint: E | Variant: V | Hardware: H``
  plus ``  NAME -> ENDPOINT`` format is still read.
* ``colab usage``: ``Current balance: 298.53 compute units`` / ``Usage rate: 0.07/hr``
  / ``Active assignments: 2``.
* refusals print ``[colab] <message>`` on stderr and exit 1 (412: "Allocation refused
  (precondition failed)...", 400: "Backend rejected accelerator..."); anything the CLI
  does not handle prints a rich traceback box and then ``ExcType: message``.
* not logged in (or a dead refresh token) with stdin closed: the CLI prints the login
  URL, asks "Enter the authorization code:" and exits 1 with ``Aborted.``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import CapacityError, PlatformError, PrecheckError, TransientError

#: The releases orch's parser was tested against (tests run the real CLI).
TESTED = ((0, 7, 2), (0, 8, 0))
TESTED_RANGE = ">=0.7.2,<0.8"
INSTALL_HINT = f"install it with `pipx install 'google-colab-cli{TESTED_RANGE}'` (needs Python >= 3.12)"
LOGIN_HINT = "log in once by running `colab sessions` in a terminal (it prints a URL to open)"
#: The wrapper every ``colab ssh --proxy-mode`` goes through (stdlib only).
PROXY_SCRIPT = Path(__file__).with_name("proxy.py")

_LINE = re.compile(
    r"^\[(?P<name>[^\]]*)\]\s+(?P<endpoint>\S+)\s*\|\s*Hardware:\s*(?P<hw>[^|]+?)\s*"
    r"(?:\|\s*Shape:\s*(?P<shape>[^|]+?)\s*)?\|\s*Variant:\s*(?P<variant>[^|\s]+)"
)
_OLD_LINE = re.compile(r"^\[\d+\]\s+Endpoint:\s*(?P<endpoint>\S+)\s*\|\s*Variant:\s*(?P<variant>\S+)\s*\|\s*Hardware:\s*(?P<hw>\S+)")
_OLD_NAME = re.compile(r"^\s+(?P<name>\S+)\s+->\s+(?P<endpoint>\S+)\s*$")
_NONE_LISTED = "No active sessions found on server"
_NUMBER = r"(-?[\d,]+(?:\.\d+)?)"
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")
_CAPACITY = re.compile(
    r"allocation refused|precondition failed|too many active sessions|usage limits|"
    r"cannot currently connect to a gpu|backend rejected accelerator|too many sessions|quota", re.IGNORECASE)
_AUTH = re.compile(
    r"enter the authorization code|to authorize colab-cli|^aborted[.!]?$|eof when reading a line|"
    r"no valid default credentials|refresherror|invalid_grant|\b401\b|unauthori[sz]ed", re.IGNORECASE | re.MULTILINE)
_BOX_END = "╰"


@dataclass(frozen=True)
class ColabSession:
    """One runtime as ``colab sessions`` lists it (``name`` is "?" without a local name)."""

    name: str
    endpoint: str
    hardware: str  # "T4", "A100", ..., or "CPU"
    variant: str   # "GPU", "TPU", "DEFAULT"
    shape: str = "Standard"


@dataclass(frozen=True)
class ColabUsage:
    """The account's compute units, from ``colab usage``."""

    balance: float
    rate_per_hour: float
    assignments: int


def parse_sessions(text: str) -> list[ColabSession] | None:
    """Runtimes in ``colab sessions`` output (either format), or None when the text is
    neither a listing nor the CLI's "none found" line (then nothing can be concluded)."""
    found: list[ColabSession] = []
    old: dict[str, tuple[str, str]] = {}
    names: dict[str, str] = {}
    for line in text.splitlines():
        if m := _LINE.match(line.strip()):
            found.append(ColabSession(m["name"], m["endpoint"], m["hw"].strip(), m["variant"],
                                      (m["shape"] or "Standard").strip()))
        elif m := _OLD_LINE.match(line.strip()):
            old[m["endpoint"]] = (m["hw"], m["variant"])
        elif m := _OLD_NAME.match(line):
            names[m["endpoint"]] = m["name"]
    for endpoint, (hw, variant) in old.items():
        found.append(ColabSession(names.get(endpoint, "?"), endpoint, "CPU" if hw == "NONE" else hw, variant))
    if not found and _NONE_LISTED not in text:
        return None
    return found


def parse_usage(text: str) -> ColabUsage | None:
    """The reading in ``colab usage`` output, or None when it has none."""
    balance = re.search(rf"Current balance:\s*{_NUMBER}", text)
    if balance is None:
        return None
    rate = re.search(rf"Usage rate:\s*{_NUMBER}", text)
    count = re.search(r"Active assignments:\s*(\d+)", text)
    return ColabUsage(
        balance=float(balance[1].replace(",", "")),
        rate_per_hour=float(rate[1].replace(",", "")) if rate else 0.0,
        assignments=int(count[1]) if count else 0,
    )


def parse_version(text: str) -> tuple[int, int, int] | None:
    m = _VERSION.search(text or "")
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def meaningful(stderr: str, stdout: str = "") -> str:
    """The line of a failed call's output that says what went wrong.

    After a rich traceback box that is the ``ExcType: message`` text under it (joined
    when rich wrapped it); otherwise the last ``[colab]`` line, else the last line.
    """
    text = stderr or ""
    if _BOX_END in text:
        tail = text.rsplit(_BOX_END, 1)[1].split("\n", 1)[-1]
        said = " ".join(line.strip() for line in tail.splitlines() if line.strip())
        if said:
            return said[:300]
    for source in (text, stdout or ""):
        lines = [line.strip() for line in source.splitlines() if line.strip()]
        marked = [line for line in lines if line.startswith("[colab]") and "new version" not in line
                  and "update" not in line.lower()]
        if marked:
            return marked[-1][:300]
        if lines:
            return lines[-1][:300]
    return ""


def classify(stderr: str, stdout: str = "") -> type[PlatformError]:
    """The error class of a failed CLI call, from everything it printed."""
    said = meaningful(stderr, stdout)
    if _CAPACITY.search(said):
        return CapacityError
    if _AUTH.search(stderr or "") or _AUTH.search(said) or "Enter the authorization code" in (stdout or ""):
        return PrecheckError
    return TransientError


class ColabCLI:
    """Runs the ``colab`` executable. Cheap to create; holds no state of its own.

    Args:
        binary: the executable (a name looked up on PATH, or a path).
        platform: the platform name, for messages.
        store: the CLI's session store for orch's runtimes (``colab --config``); None
            leaves the CLI's default (``~/.config/colab-cli/sessions.json``).
        timeout_s: deadline of ordinary calls; ``new_timeout_s`` for ``new``.
    """

    def __init__(self, binary: str | os.PathLike = "colab", *, platform: str = "colab",
                 store: Path | None = None, timeout_s: float = 60.0, new_timeout_s: float = 300.0):
        self.binary = str(binary)
        self.platform = platform
        self.store = Path(store) if store is not None else None
        self.timeout_s = timeout_s
        self.new_timeout_s = new_timeout_s
        self._version: tuple[int, int, int] | None = None
        #: The last "not logged in / login expired" this object ran into (cleared by a
        #: call that worked): the platform's ``refused_login``.
        self.refused: str | None = None

    def path(self) -> str | None:
        """The absolute path of the executable, or None when it is not installed."""
        expanded = os.path.expanduser(self.binary)
        if os.sep in expanded:
            return str(Path(expanded).absolute()) if os.access(expanded, os.X_OK) else None
        return shutil.which(expanded)

    def require(self) -> str:
        found = self.path()
        if found is None:
            raise PrecheckError(
                f"{self.platform}: the `colab` CLI was not found ({self.binary}); {INSTALL_HINT}, "
                "or set `colab_bin:` to its path",
                self.platform,
            )
        return found

    def _argv(self, args: Sequence[str]) -> list[str]:
        base = [self.require()]
        if self.store is not None:
            self.store.parent.mkdir(parents=True, exist_ok=True)
            base += ["--config", str(self.store)]
        return [*base, *args]

    def run(self, args: Sequence[str], *, timeout_s: float | None = None) -> subprocess.CompletedProcess[str]:
        """``colab ARGS`` under a deadline; the result whatever its exit code.

        Raises:
            PrecheckError: the CLI is not installed.
            TransientError: it did not finish in time (its process group is killed).
        """
        argv = self._argv(args)
        timeout = timeout_s or self.timeout_s
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            _kill_group(proc)
            raise TransientError(
                f"{self.platform}: `colab {' '.join(args)}` did not finish in {timeout:g}s and was stopped",
                self.platform,
            ) from exc
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def _check(self, result: subprocess.CompletedProcess[str], what: str) -> None:
        if result.returncode == 0 and "No valid default credentials" not in (result.stderr or ""):
            self.refused = None
            return
        said = meaningful(result.stderr, result.stdout) or f"exit {result.returncode}"
        cls = classify(result.stderr, result.stdout)
        if cls is PrecheckError:
            said += f"; not logged in, or the login expired: {LOGIN_HINT}"
            self.refused = f"{self.platform}: `colab {what}` failed: {said}"
        raise cls(f"{self.platform}: `colab {what}` failed: {said}", self.platform)

    def version(self) -> tuple[int, int, int] | None:
        """The installed release (cached), or None when ``colab version`` does not say."""
        if self._version is None:
            result = self.run(["version"], timeout_s=min(self.timeout_s, 30))
            self._version = parse_version(result.stdout) if result.returncode == 0 else None
        return self._version

    def check_version(self) -> None:
        """Refuse a release outside the tested range: its output may not parse.

        Raises:
            PrecheckError: the release is outside :data:`TESTED_RANGE` (or unreadable).
        """
        found = self.version()
        if found is None or not TESTED[0] <= found < TESTED[1]:
            shown = ".".join(map(str, found)) if found else "an unknown version"
            raise PrecheckError(
                f"{self.platform}: the `colab` CLI is {shown}; orch is tested with google-colab-cli{TESTED_RANGE} "
                f"and reads its output, so it will not drive another release: {INSTALL_HINT}",
                self.platform,
            )

    def new(self, name: str, gpu: str | None) -> None:
        """``colab new -s NAME [--gpu GPU]``. Check ``sessions()`` for what you got."""
        args = ["new", "-s", name] + (["--gpu", gpu] if gpu else [])
        self._check(self.run(args, timeout_s=self.new_timeout_s), " ".join(args))

    def sessions(self) -> list[ColabSession]:
        """The account's runtimes. Also renews the store's runtime-proxy tokens: the CLI
        writes the fresh ones every listing carries into each entry it still lists.

        Raises:
            TransientError: the listing could not be read (never "no runtimes").
        """
        result = self.run(["sessions"])
        self._check(result, "sessions")
        found = parse_sessions(result.stdout)
        if found is None:
            raise TransientError(
                f"{self.platform}: `colab sessions` printed no listing orch can read: "
                f"{meaningful(result.stderr, result.stdout) or 'nothing'}",
                self.platform,
            )
        return found

    def stop(self, name: str) -> None:
        """``colab stop -s NAME``. It says "not found" (exit 0) for a name missing from
        the store, so only a later listing tells whether the runtime is gone."""
        self._check(self.run(["stop", "-s", name]), f"stop -s {name}")

    def usage(self) -> ColabUsage | None:
        """The compute-unit reading, or None when this CLI has no ``usage`` verb."""
        result = self.run(["usage"])
        if result.returncode != 0 and "no such command" in (result.stderr + result.stdout).lower():
            return None
        self._check(result, "usage")
        return parse_usage(result.stdout)

    # ---------------------------------------------------------------- the store
    def entry(self, name: str) -> dict[str, Any] | None:
        """The store's entry for ``name`` (endpoint, token, ...), or None."""
        return self._read_store().get(name)

    def adopt(self, name: str, endpoint: str) -> None:
        """Give the runtime at ``endpoint`` the name ``name`` in the store, as ``colab new``
        would have; with no token, the CLI fetches one from the listing on first use."""
        self._write_store(lambda entries: entries.__setitem__(name, {
            "name": name, "token": "", "url": "", "endpoint": endpoint, "token_expires_at": None,
        }))

    def expire(self, name: str) -> None:
        """Mark the entry's runtime-proxy token stale, so the CLI renews it on next use."""
        def change(entries: dict[str, Any]) -> None:
            if name in entries:
                entries[name]["token_expires_at"] = None
        self._write_store(change)

    def _lock(self):
        import filelock

        assert self.store is not None
        self.store.parent.mkdir(parents=True, exist_ok=True)
        return filelock.ReadWriteLock(f"{self.store}.lock", is_singleton=False)

    def _read_store(self) -> dict[str, Any]:
        if self.store is None or not self.store.exists():
            return {}
        with self._lock().read_lock(timeout=30):
            try:
                data = json.loads(self.store.read_text() or "{}")
            except (OSError, ValueError) as exc:
                raise TransientError(f"{self.platform}: cannot read {self.store}: {exc}", self.platform) from exc
        return data if isinstance(data, dict) else {}

    def _write_store(self, change) -> None:
        assert self.store is not None, "orch writes only its own store"
        with self._lock().write_lock(timeout=30):
            try:
                entries = json.loads(self.store.read_text() or "{}") if self.store.exists() else {}
            except ValueError:
                entries = {}
            change(entries)
            # In place, as the CLI writes it (it holds the same lock while it writes).
            with open(self.store, "a+") as f:
                f.seek(0)
                f.truncate()
                f.write(json.dumps(entries, indent=2))
                f.flush()
                os.fsync(f.fileno())

    def proxy_argv(self, name: str, identity: Path | None) -> list[str]:
        """The ProxyCommand that tunnels SSH to session ``name``: orch's wrapper, which
        refuses to start ``colab ssh --proxy-mode`` when the store has no such entry
        (the CLI would *create* a new CPU runtime under that name)."""
        colab = self._argv(["ssh", "--proxy-mode", "-s", name])
        if identity is not None:
            colab += ["-i", str(Path(identity).expanduser())]
        return [sys.executable, str(PROXY_SCRIPT), "--store", str(self.store or ""), "--name", name, "--", *colab]


def proxy_error_class(stderr: str) -> type[PlatformError] | None:
    """Classify what ``colab ssh --proxy-mode`` (or orch's wrapper) said when the tunnel failed.

    400 / no key / key file missing: fix the key (precheck). 401 and 404 are what an
    expired runtime-proxy token gets as well as a runtime that is gone, so they are
    transient: the platform's listing decides whether the runtime is gone. 429/502 and
    anything else: try again later.
    """
    if ("HTTP 400" in stderr or "unsupported key type" in stderr or "no SSH public key" in stderr
            or "file not found" in stderr or "failed to derive public key" in stderr):
        return PrecheckError
    return TransientError


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.communicate(timeout=2)
            return
        except subprocess.TimeoutExpired:
            continue
