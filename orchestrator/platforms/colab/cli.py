"""A thin wrapper around Google's official ``colab`` CLI (google-colab-cli), with deadlines.

orch never talks to Colab's internal endpoints itself: the CLI is the supported
interface. This module runs it, parses its human-readable output, and maps its
failures onto orch's error tree. Every call has a deadline (the CLI has been seen to
hang past its own timeouts); an overrun kills the CLI's whole process group.

Output formats relied on (google-colab-cli 0.7.x, ``commands/session.py``; there is
no machine-readable mode, so unknown lines — e.g. an upgrade banner — are ignored):

* ``colab sessions``: ``[NAME] ENDPOINT | Hardware: T4 | Variant: GPU`` per runtime
  (``[?]`` when the CLI has no local name for it); older releases printed
  ``[i] Endpoint: E | Variant: V | Hardware: H`` plus ``  NAME -> ENDPOINT`` lines.
* ``colab usage``: ``Current balance: 298.53 compute units`` / ``Usage rate: 0.07/hr``
  / ``Active assignments: 2``; releases without ``usage`` answer "No such command".
* failures print ``[colab] <message>`` on stderr and exit non-zero.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ...errors import CapacityError, LostError, PlatformError, PrecheckError, TransientError

INSTALL_HINT = "install it with `pipx install google-colab-cli` (needs Python >= 3.12)"

_LINE = re.compile(r"^\[(?P<name>[^\]]*)\]\s+(?P<endpoint>\S+)\s*\|\s*Hardware:\s*(?P<hw>[^|]+?)\s*\|\s*Variant:\s*(?P<variant>\S+)")
_OLD_LINE = re.compile(r"^\[\d+\]\s+Endpoint:\s*(?P<endpoint>\S+)\s*\|\s*Variant:\s*(?P<variant>\S+)\s*\|\s*Hardware:\s*(?P<hw>\S+)")
_OLD_NAME = re.compile(r"^\s+(?P<name>\S+)\s+->\s+(?P<endpoint>\S+)\s*$")
_NUMBER = r"(-?[\d,]+(?:\.\d+)?)"
_CAPACITY = re.compile(r"usage limits|cannot currently connect to a gpu|backend rejected accelerator|too many sessions|quota", re.I)
_AUTH = re.compile(r"\b401\b|unauthori[sz]ed|credentials|scope|auth(entication)? failed|token|login", re.I)


@dataclass(frozen=True)
class ColabSession:
    """One runtime as ``colab sessions`` lists it (``name`` is "?" without a local name)."""

    name: str
    endpoint: str
    hardware: str  # "T4", "A100", ..., or "CPU"
    variant: str   # "GPU", "TPU", "DEFAULT"


@dataclass(frozen=True)
class ColabUsage:
    """The account's compute units, from ``colab usage``."""

    balance: float
    rate_per_hour: float
    assignments: int


def parse_sessions(text: str) -> list[ColabSession]:
    """Runtimes in ``colab sessions`` output (either format); other lines are ignored."""
    found: list[ColabSession] = []
    old: dict[str, tuple[str, str]] = {}
    names: dict[str, str] = {}
    for line in text.splitlines():
        if m := _LINE.match(line.strip()):
            found.append(ColabSession(m["name"], m["endpoint"], m["hw"].strip(), m["variant"]))
        elif m := _OLD_LINE.match(line.strip()):
            old[m["endpoint"]] = (m["hw"], m["variant"])
        elif m := _OLD_NAME.match(line):
            names[m["endpoint"]] = m["name"]
    for endpoint, (hw, variant) in old.items():
        found.append(ColabSession(names.get(endpoint, "?"), endpoint, "CPU" if hw == "NONE" else hw, variant))
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


class ColabCLI:
    """Runs the ``colab`` executable. Cheap to create; holds no state.

    Args:
        binary: the executable (a name looked up on PATH, or a path).
        platform: the platform name, for messages.
        timeout_s: deadline of ordinary calls; ``new_timeout_s`` for ``new``.
    """

    def __init__(self, binary: str | os.PathLike = "colab", *, platform: str = "colab",
                 timeout_s: float = 60.0, new_timeout_s: float = 300.0):
        self.binary = str(binary)
        self.platform = platform
        self.timeout_s = timeout_s
        self.new_timeout_s = new_timeout_s

    def path(self) -> str | None:
        """The absolute path of the executable, or None when it is not installed."""
        expanded = os.path.expanduser(self.binary)
        if os.sep in expanded:
            return str(Path(expanded).resolve()) if os.access(expanded, os.X_OK) else None
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

    def run(self, args: Sequence[str], *, timeout_s: float | None = None) -> subprocess.CompletedProcess[str]:
        """``colab ARGS`` under a deadline; the result whatever its exit code.

        Raises:
            PrecheckError: the CLI is not installed.
            TransientError: it did not finish in time (its process group is killed).
        """
        argv = [self.require(), *args]
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
        if result.returncode == 0:
            return
        said = _last_line(result.stderr) or _last_line(result.stdout) or f"exit {result.returncode}"
        cls: type[PlatformError] = TransientError
        if _CAPACITY.search(said):
            cls = CapacityError
        elif _AUTH.search(said):
            cls = PrecheckError
            said += "; log in once by running `colab sessions` in a terminal"
        raise cls(f"{self.platform}: `colab {what}` failed: {said}", self.platform)

    def version(self) -> str:
        result = self.run(["version"], timeout_s=min(self.timeout_s, 30))
        return (result.stdout or result.stderr).strip().splitlines()[0] if result.returncode == 0 else ""

    def new(self, name: str, gpu: str | None) -> None:
        """``colab new -s NAME [--gpu GPU]``. Check ``sessions()`` for what you got."""
        args = ["new", "-s", name] + (["--gpu", gpu] if gpu else [])
        self._check(self.run(args, timeout_s=self.new_timeout_s), " ".join(args))

    def sessions(self) -> list[ColabSession]:
        result = self.run(["sessions"])
        self._check(result, "sessions")
        return parse_sessions(result.stdout)

    def stop(self, name: str) -> None:
        """``colab stop -s NAME``; a session that is already gone is not an error."""
        self._check(self.run(["stop", "-s", name]), f"stop -s {name}")

    def usage(self) -> ColabUsage | None:
        """The compute-unit reading, or None when this CLI has no ``usage`` verb."""
        result = self.run(["usage"])
        if result.returncode != 0 and "no such command" in (result.stderr + result.stdout).lower():
            return None
        self._check(result, "usage")
        return parse_usage(result.stdout)

    def proxy_argv(self, name: str, identity: Path | None) -> list[str]:
        """The ProxyCommand that tunnels SSH to session ``name`` (absolute CLI path)."""
        argv = [self.require(), "ssh", "--proxy-mode", "-s", name]
        if identity is not None:
            argv += ["-i", str(Path(identity).expanduser())]
        return argv


def proxy_error_class(stderr: str) -> type[PlatformError] | None:
    """Classify what ``colab ssh --proxy-mode`` said when the tunnel failed.

    404: the runtime has no SSH endpoint (it never will: the run there is lost);
    400: the key type is refused (fix the key); 429/502: try again later.
    """
    if "HTTP 404" in stderr:
        return LostError
    if "HTTP 400" in stderr or "HTTP 401" in stderr or "no SSH public key" in stderr:
        return PrecheckError
    return TransientError


def _last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


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
