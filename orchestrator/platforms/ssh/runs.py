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
cd -- "$1" 2>/dev/null || { echo "exists 0"; echo end; exit 0; }
shift
echo "exists 1"
echo "now $(date +%s)"
if [ -f pid ]; then
  sid=$(cat pid); echo "pid $sid"
  [ -n "$(members)" ] && echo "alive 1"
fi
[ -f rc ] && echo "rc $(cat rc)"
for f in "$@"; do [ -e "$f" ] && echo "file $(stat -c '%Y %s' -- "$f") $f"; done
echo end
exit 0
"""

_KILL = _SESSION_FN + r"""
d=$1
cd -- "$d" 2>/dev/null || exit 0
[ -f pid ] || exit 0
[ "$3" = cancel ] && : > cancel-requested  # kernels/runner.py CANCEL_MARKER: "cancelled", not "interrupted"
sid=$(cat pid); limit=$(($2 * 10))
kill -TERM "-$sid" 2>/dev/null  # no "--": dash's kill refuses it
i=0; while [ -n "$(members)" ] && [ $i -lt $limit ]; do sleep 0.1; i=$((i+1)); done
for p in $(members); do kill -KILL "$p" 2>/dev/null; done
# The job runs in a session of its own (the runner's start_new_session): a runner that
# was killed outright leaves it behind. Its members that carry this attempt's output
# dir are killed too (a recycled session id never matches that).
job=$(sed -n 's/.*"job_pgid": *\([0-9][0-9]*\).*/\1/p' runner.pid.json 2>/dev/null)
[ -n "$job" ] || exit 0
sid=$job
ours() {
  for p in $(members); do
    tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qF "ORCH_OUTPUT_DIR=$d/" && echo "$p"
  done
}
for sig in TERM KILL; do
  for p in $(ours); do kill -$sig "$p" 2>/dev/null; done
  i=0; while [ -n "$(ours)" ] && [ $i -lt 20 ]; do sleep 0.1; i=$((i+1)); done
done
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
    """One round trip: is the run alive, has it written ``rc``, how old are ``files``.

    Raises TransientError when the answer is not one the status script writes (cut
    short, or garbage from the host's shell): an unreadable answer is never "gone".
    """
    result = conn.run(sh(_STATUS, workdir, *files), what="reading the run's status")
    return parse_status(result.out, conn.endpoint.label, conn.endpoint.name)


def parse_status(text: str, label: str = "host", platform: str | None = None) -> DetachedStatus:
    """The status script's output as a :class:`DetachedStatus` (see ``_STATUS``).

    Lines other than the script's own are ignored (a login banner); a missing ``end``
    line or a malformed value raises TransientError naming the line.
    """
    values: dict[str, str] = {}
    found: dict[str, tuple[float, int]] = {}
    complete = False
    for line in text.splitlines()[:1000]:
        key, _, rest = line.partition(" ")
        try:
            if key == "file":
                mtime, size, name = rest.split(" ", 2)
                found[name] = (float(mtime), int(size))
            elif key == "end":
                complete = True
            elif key in ("exists", "now", "pid", "alive", "rc"):
                values[key] = rest.strip()
        except ValueError:
            raise TransientError(f"{label}: malformed status line {line[:80]!r}", platform) from None
    if not complete or values.get("exists") not in ("0", "1"):
        raise TransientError(f"{label}: the status read was cut short or garbled: {text.strip()[-120:]!r}", platform)
    if values["exists"] == "0":
        return DetachedStatus(exists=False)
    rc, pid = values.get("rc", ""), values.get("pid", "")
    try:
        now = float(values.get("now") or 0)
    except ValueError:
        raise TransientError(f"{label}: malformed status line 'now {values['now'][:40]}'", platform) from None
    return DetachedStatus(
        exists=True,
        pid=int(pid) if pid.isdigit() else None,
        alive=values.get("alive") == "1",
        rc=int(rc) if rc.lstrip("-").isdigit() else None,
        now=now,
        files=found,
    )


def kill_detached(conn: Connection, workdir: str, grace_s: float = 10.0, cancel: bool = False) -> None:
    """SIGTERM the run's process group, SIGKILL whatever is left after ``grace_s``; then
    kill what is left of the job's own session (an orphan of a killed runner). ``cancel``
    marks it as orch's cancel first (the runner then reports "cancelled")."""
    grace = max(0, int(round(grace_s)))
    conn.run(sh(_KILL, workdir, grace, "cancel" if cancel else "-"), timeout=grace + 5 + conn.endpoint.timeouts.command,
             what="cancelling the run")
