"""Runs detached on an SSH host: started with ``setsid nohup``, watched, stopped.

A run lives in its own directory and its own session (its pid is the session id), so
it survives dropped connections and the controller's exit. The directory holds::

    pid         the run's pid = session id (written atomically before start returns)
    .started    created first; a second start in the same directory adopts the first
    rc          its exit code, written atomically (``mv``) when it ends
    runner.out  its stderr (and stdout unless discarded)

Every remote side is a fixed ``/bin/sh`` script with variable parts as quoted
positional arguments (``shell.sh``); liveness reads ``/proc`` (Linux hosts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from ...errors import TransientError
from .connection import Connection
from .shell import sh


@dataclass(frozen=True)
class DetachedStatus:
    """What :func:`detached_status` saw in a detached run's directory.

    ``now`` is the remote clock and ``files`` maps a name to ``(mtime, size)`` on that
    clock, so ages never depend on the two machines' clocks agreeing.
    """

    exists: bool
    pid: int | None = None
    alive: bool = False
    rc: int | None = None
    now: float = 0.0
    files: Mapping[str, tuple[float, int]] = field(default_factory=dict)

    def age(self, name: str) -> float | None:
        """Seconds since ``name`` last changed, or None when it does not exist."""
        if name not in self.files:
            return None
        return max(0.0, self.now - self.files[name][0])


_START_DETACHED = r"""
d=$1; n=$2; out=$3; shift 3
umask 077  # the run's files (job.log, outputs, the runner's cache) are the user's only
mkdir -p -- "$d" && cd -- "$d" || { echo "cannot create $d" >&2; exit 97; }
if ! mkdir .started 2>/dev/null; then
  i=0; while [ ! -f pid ] && [ $i -lt 30 ]; do sleep 0.1; i=$((i+1)); done
  [ -f pid ] && { cat pid; exit 0; }
  # A start cut between its claim and its pid (the session was killed): drop the claim.
  rmdir .started; echo "an interrupted start was cleaned up; try again" >&2; exit 96
fi
# An asynchronous command's stdin is /dev/null unless redirected explicitly, hence fd 3.
head -c "$n" | ( exec 3<&0; setsid nohup /bin/sh -c 'trap : TERM INT; "$@"; echo $? > rc.tmp && mv -f rc.tmp rc' \
    orch-run "$@" <&3 3<&- > "$out" 2>> runner.out & echo $! > pid.tmp && mv -f pid.tmp pid )
cat pid
"""

# Members of the run's session (setsid made the run's pid its session id), zombies
# excluded: a container's init may never reap them, and `kill -0` counts them alive.
_SESSION_FN = r"""
members() {
  for f in /proc/[0-9]*/stat; do
    read -r line < "$f" 2>/dev/null || continue
    set -- ${line##*) }
    [ "$1" != Z ] && [ "$4" = "$sid" ] && echo "${f#/proc/}" | cut -d/ -f1
  done
}
"""

_STATUS = _SESSION_FN + r"""
cd -- "$1" 2>/dev/null || { echo "exists 0"; exit 0; }
shift
echo "exists 1"
echo "now $(date +%s)"
if [ -f pid ]; then
  sid=$(cat pid); echo "pid $sid"
  [ -n "$(members)" ] && echo "alive 1"
fi
[ -f rc ] && echo "rc $(cat rc)"
for f in "$@"; do [ -e "$f" ] && echo "file $(stat -c '%Y %s' -- "$f") $f"; done
exit 0
"""

_KILL = _SESSION_FN + r"""
cd -- "$1" 2>/dev/null || exit 0
[ -f pid ] || exit 0
[ "$3" = cancel ] && : > cancel-requested  # kernels/runner.py CANCEL_MARKER: "cancelled", not "interrupted"
sid=$(cat pid); limit=$(($2 * 10))
kill -TERM "-$sid" 2>/dev/null  # no "--": dash's kill refuses it
i=0; while [ -n "$(members)" ] && [ $i -lt $limit ]; do sleep 0.1; i=$((i+1)); done
for p in $(members); do kill -KILL "$p" 2>/dev/null; done
exit 0
"""

def start_detached(conn: Connection, workdir: str, argv: Sequence[str], *, stdin: bytes = b"",
                   discard_stdout: bool = False) -> int:
    """Start ``argv`` in ``workdir``, detached from this connection; returns its pid.

    The run survives disconnects and the controller's exit (``setsid nohup``); its
    stderr (and stdout, unless ``discard_stdout``) goes to ``runner.out``; when it
    ends its exit code is written to ``rc`` atomically (``mv``). ``stdin`` reaches
    it through a pipe, never a file or a command line. Idempotent on ``workdir``:
    a second call returns the first run's pid and starts nothing.
    """
    out = "/dev/null" if discard_stdout else "runner.out"
    result = conn.run(sh(_START_DETACHED, workdir, len(stdin), out, *argv), stdin=stdin, what="starting the run")
    try:
        return int(result.out.split()[-1])
    except (IndexError, ValueError):
        raise TransientError(
            f"{conn.endpoint.label}: could not start the run in {workdir}: "
            f"{(result.err or result.out).strip()[:300] or f'exit {result.rc}'}",
            conn.endpoint.name,
        ) from None


def detached_status(conn: Connection, workdir: str, files: Sequence[str] = ()) -> DetachedStatus:
    """One round trip: is the run alive, has it written ``rc``, how old are ``files``."""
    result = conn.run(sh(_STATUS, workdir, *files), what="reading the run's status")
    values: dict[str, str] = {}
    found: dict[str, tuple[float, int]] = {}
    for line in result.out.splitlines():
        key, _, rest = line.partition(" ")
        if key == "file":
            mtime, size, name = rest.split(" ", 2)
            found[name] = (float(mtime), int(size))
        else:
            values[key] = rest.strip()
    if values.get("exists") != "1":
        return DetachedStatus(exists=False)
    rc = values.get("rc")
    return DetachedStatus(
        exists=True,
        pid=int(values["pid"]) if values.get("pid", "").isdigit() else None,
        alive=values.get("alive") == "1",
        rc=int(rc) if rc and rc.lstrip("-").isdigit() else None,
        now=float(values.get("now") or 0),
        files=found,
    )


def kill_detached(conn: Connection, workdir: str, grace_s: float = 10.0, cancel: bool = False) -> None:
    """SIGTERM the run's process group, SIGKILL whatever is left after ``grace_s``;
    ``cancel`` marks it as orch's cancel first (the runner then reports "cancelled")."""
    grace = max(0, int(round(grace_s)))
    conn.run(sh(_KILL, workdir, grace, "cancel" if cancel else "-"), timeout=grace + conn.endpoint.timeouts.command, what="cancelling the run")
