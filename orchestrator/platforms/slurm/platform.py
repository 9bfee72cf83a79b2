"""A Slurm cluster as a platform: jobs are submitted from its login node with ``sbatch``.

The login node is an SSH host (``platforms/ssh``): the same connection, pinned host
key, content-addressed uploads and attempt directory (``<remote_dir>/attempts/<key>``,
on the cluster's shared file system). Instead of starting the runner detached on the
login node, which clusters forbid, ``submit`` writes a batch script that runs the
unchanged ``kernels/runner.py`` there and hands it to ``sbatch``.

Idempotent: the Slurm job is named ``orch-<attempt key>``. Before submitting, the
attempt directory's ``slurm.jobid`` and ``squeue --me --name`` (then ``sacct`` where
the site keeps accounting) are asked for a job of that name; a lost ``sbatch`` answer
never leads to two jobs, and a listing that cannot be read stops the submit. A
sweep's points are staged instead and go as one ``sbatch --array`` at the end of the
tick (``reconcile``, see arrays.py).

Status: ``scontrol -o show job`` (active and recently ended jobs), ``sacct`` for older
ones, and the attempt directory; ``jobstate.interpret`` decides (result.json is the
truth for how a run ended, Slurm's state for why Slurm ended it). A controller that
does not answer is UNKNOWN, never LOST.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from pydantic import field_validator

from ...errors import CapacityError, OrchError, PrecheckError, TransientError
from ...gpus import GPU_TYPES
from ...quota import SiteUsage
from ...results import read_result
from ...settings import PositiveDuration
from ..base import Feature, Handle, Launch, LogChunk, Offer, RemoteState, RemoteStatus
from ..ssh.connection import Connection
from ..ssh.platform import SSHPlatform, SSHSettings
from ..ssh.shell import join, sh
from . import arrays, batch, jobstate, usage

SECRETS_REFUSED = ("Slurm keeps a job's script and environment on the cluster (slurmctld's state, the shared "
                   "file system), so orch sends no secrets to a Slurm cluster; run jobs with secrets on an ssh "
                   "or local platform")
log = logging.getLogger(__name__)
#: sbatch answers that mean "try again soon", not "not here".
_TRANSIENT = ("Unable to contact slurm controller", "Socket timed out", "Slurm temporarily unable",
              "Zero Bytes were transmitted")


class SlurmSettings(SSHSettings):
    """A ``type: slurm`` entry of config.yaml: the login node's SSH settings plus Slurm's."""

    type: Literal["slurm"] = "slurm"  # type: ignore[assignment]
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    #: GPU type -> the --gres that asks for it, e.g. {A100: "gpu:a100:1"}.
    gres: dict[str, str] = {}
    #: The longest Slurm time limit orch asks for (the partition's MaxTime, or less).
    time_limit: PositiveDuration | None = None
    #: Lines for `module load` in the batch script, e.g. ["cuda/12.1", "python/3.11"].
    modules: list[str] = []
    #: Compute nodes often have no internet; say so here.
    internet: bool = True
    #: Submit a sweep's points staged in one tick as one ``sbatch --array``.
    arrays: bool = True
    #: Memory per node for each job (``--mem``, e.g. "32G"); unset = the partition's default.
    memory: str | None = None

    @field_validator("memory")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[1-9][0-9]*[KMGT]?", value):
            raise ValueError(f"{value!r} is not an sbatch --mem size; write e.g. 32G or 4000M")
        return value

    @field_validator("gres")
    @classmethod
    def _gres_types(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(GPU_TYPES))
        if unknown:
            raise ValueError(f"unknown GPU type {', '.join(unknown)}; expected one of {', '.join(GPU_TYPES)}")
        return value


# ------------------------------------------------------------------ remote scripts
# Fixed /bin/sh scripts; every variable part is a positional argument (shell.sh).

_ONE_LINE = "flat() { tr '\\n' ' ' | head -c 400; }\n"

_LOOKUP = _ONE_LINE + r"""
d=$1; name=$2
if [ -s "$d/slurm.jobid" ]; then echo "id $(head -c 40 "$d/slurm.jobid")"; exit 0; fi
out=$(squeue --me -h -t all --name="$name" -o %F 2>&1) || { echo "fail $(echo "$out" | flat)"; exit 0; }
[ -n "$out" ] && { echo "id $(echo "$out" | head -n1)"; exit 0; }
out=$(sacct -X -n -P --name="$name" -o JobID -S now-30days 2>/dev/null) && [ -n "$out" ] && { out=$(echo "$out" | head -n1); echo "id ${out%%_*}"; }
exit 0
"""

_SUBMIT = _ONE_LINE + r"""
d=$1; shift
umask 077
mkdir -p -- "$d" && cd -- "$d" || { echo "rc 97"; echo "out cannot create $d"; exit 0; }
cat > job.sbatch.tmp && mv -f job.sbatch.tmp job.sbatch || { echo "rc 97"; echo "out cannot write job.sbatch"; exit 0; }
out=$("$@" 2>&1); rc=$?
if [ $rc -eq 0 ]; then id=${out%%;*}; echo "$id" > slurm.jobid.tmp && mv -f slurm.jobid.tmp slurm.jobid; fi
echo "rc $rc"; echo "out $(echo "$out" | flat)"
"""

# Slurm is asked first, the directory after: a job Slurm lists as ended has written
# all it will (result.json, rc), so a run ending between the two reads is never
# taken for one that ended without its result.
_STATUS = _ONE_LINE + r"""
d=$1; id=$2
cd -- "$d" 2>/dev/null || { echo "exists 0"; exit 0; }
echo "exists 1"; echo "now $(date +%s)"
[ -s slurm.jobid ] && id=$(cat slurm.jobid)
said=
if [ -z "$id" ]; then
  if [ -f refused ]; then said="refused $(head -c 400 refused | flat)"
  elif [ -f staged ]; then said="staged"
  else said="fail no Slurm job id recorded in $d"; fi
elif out=$(scontrol -o show job "$id" 2>&1); then said="scontrol $(echo "$out" | head -n1 | head -c 4000)"
else
  case $out in
    *"Invalid job id"*) out=$(SLURM_TIME_FORMAT=%s sacct -X -n -P -j "$id" -o "$3" 2>/dev/null) && [ -n "$out" ] &&
                        said="sacct $(echo "$out" | head -n1 | head -c 1000)";;
    *) said="fail $(echo "$out" | flat)";;
  esac
fi
for f in result.json rc orch-cancelled; do [ -e "$f" ] && echo "has $f"; done
[ -f heartbeat.json ] && echo "beat $(stat -c %Y heartbeat.json)"
[ -n "$said" ] && echo "$said"
exit 0
"""

# The final reading, once the run ended: Slurm's word (accounting first: it has the
# charged time and GPUs) and the tail of runner.out, for a run that left no result.
_FINAL = _ONE_LINE + r"""
d=$1; id=$2
[ -s "$d/slurm.jobid" ] && id=$(cat "$d/slurm.jobid")
[ -n "$id" ] || { echo "fail no Slurm job id recorded in $d"; exit 0; }
[ -f "$d/runner.out" ] && echo "tail $(tail -c 300 "$d/runner.out" | flat)"
out=$(SLURM_TIME_FORMAT=%s sacct -X -n -P -j "$id" -o "$3" 2>/dev/null) && [ -n "$out" ] && { echo "sacct $(echo "$out" | head -n1 | head -c 1000)"; exit 0; }
out=$(scontrol -o show job "$id" 2>&1) && { echo "scontrol $(echo "$out" | head -n1 | head -c 4000)"; exit 0; }
case $out in *"Invalid job id"*) echo "gone";; *) echo "fail $(echo "$out" | flat)";; esac
exit 0
"""

_CANCEL = _ONE_LINE + r"""
d=$1; id=$2
[ -d "$d" ] && : > "$d/orch-cancelled"
[ -s "$d/slurm.jobid" ] && id=$(cat "$d/slurm.jobid")
[ -n "$id" ] || exit 0
out=$(scancel "$id" 2>&1) || echo "fail $(echo "$out" | flat)"
exit 0
"""


def _lines(text: str) -> dict[str, str]:
    """``key rest`` lines -> {key: rest} (the last one wins); ``has X`` lines -> ``has:X``."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(" ")
        values[f"has:{rest.strip()}" if key == "has" else key] = rest.strip()
    return values


class SlurmPlatform(SSHPlatform):
    """Submits attempts to a Slurm cluster from its login node (one SSH endpoint)."""

    settings_model = SlurmSettings
    settings: SlurmSettings
    #: A sweep point was staged (or seen staged) by this command: reconcile submits it.
    _staged: bool = False

    # ------------------------------------------------------------------ describe
    def offer(self) -> Offer:
        s = self.settings
        problems = self.setup_problems()
        cap = s.time_limit or (s.session_hours * 3600 if s.session_hours else None)
        unsupported = {Feature.SECRETS: SECRETS_REFUSED}
        if not s.internet:
            unsupported[Feature.INTERNET] = f"platform {self.name}'s compute nodes have no internet (internet: false)"
        return Offer(
            platform=self.name, type="slurm", gpus=tuple(s.gres), gpu_memory_gb=s.gpu_memory_gb,
            gpu_count=s.gpu_count if s.gres else 0, max_concurrent=s.max_concurrent, session_seconds=cap,
            internet=s.internet, unsupported=unsupported, available=not problems, reason="; ".join(problems),
        )

    def gres_for(self, launch: Launch) -> str | None:
        """The --gres of the job's GPU: its first type this cluster has, with its count."""
        resources = launch.spec.resources
        if not resources.gpus_needed or not self.settings.gres:
            return None
        wanted = [g for g in resources.gpu if g in self.settings.gres] or list(self.settings.gres)
        gres = self.settings.gres[wanted[0]]
        head, _, count = gres.rpartition(":")
        return f"{head}:{resources.gpus_needed}" if head and count.isdigit() else gres

    # ------------------------------------------------------------------ submit
    def start(self, conn: Connection, launch: Launch, extra: dict[str, Any]) -> Handle:
        """Adopt the attempt's Slurm job if there is one, else upload and ``sbatch``; a
        sweep point is only staged, for one array at the end of the tick (arrays.py)."""
        if launch.secrets:
            raise PrecheckError(f"job {launch.job_name}: {SECRETS_REFUSED}", self.name)
        workdir = self.attempt_dir(conn, launch.key)
        data = {"dir": workdir, "root": self.root(conn), "grace": launch.grace_s}
        found = self.lookup(conn, batch.job_name(launch.key), workdir)
        if found:
            return Handle(launch.key, {**data, "job_id": found})
        argv = self.stage(conn, launch, workdir)
        launch.guard()  # uploads may have taken long: still this controller's job, and not submitted meanwhile?
        found = self.lookup(conn, batch.job_name(launch.key), workdir)
        if found:
            return Handle(launch.key, {**data, "job_id": found})
        s = self.settings
        need = launch.session_seconds or launch.max_runtime_s
        resources = batch.options(limit=batch.time_limit(need, launch.grace_s, s.time_limit), partition=s.partition,
                                  account=s.account, qos=s.qos, gres=self.gres_for(launch), mem=s.memory)
        text = batch.script(workdir, argv, launch.env, s.modules).encode()
        if s.arrays and launch.env.get("ORCH_SWEEP_ID"):
            order = launch.env.get("ORCH_SWEEP_INDEX", "0")
            line = arrays.staged_line(resources, int(order) if order.isdigit() else 0)
            done = _lines(conn.run(sh(arrays.STAGE, workdir, line), stdin=text,
                                   what="staging the sweep point").out)
            if "ok" not in done:
                raise TransientError(f"{self.name}: {done.get('fail', 'cannot stage the sweep point')}", self.name)
            self._staged = True
            return Handle(launch.key, data)
        command = batch.sbatch_argv(key=launch.key, workdir=workdir, resources=resources)
        return Handle(launch.key, {**data, "job_id": self.sbatch(conn, workdir, command, text)})

    def sbatch(self, conn: Connection, workdir: str, command: list[str], script: bytes) -> str:
        """Write ``script`` as ``workdir/job.sbatch`` and run ``command``: the job id.

        Raises TransientError (controller unreachable, no id) or CapacityError (refused).
        """
        result = _lines(conn.run(sh(_SUBMIT, workdir, *command), stdin=script, what="submitting with sbatch").out)
        answer = result.get("out", "")[:400]
        if result.get("rc") != "0":
            kind = TransientError if any(t in answer for t in _TRANSIENT) else CapacityError
            raise kind(f"{self.name}: sbatch refused the job: {answer or 'no answer'}", self.name)
        job_id = answer.split(";")[0].strip()
        if not job_id.isdigit():
            raise TransientError(f"{self.name}: sbatch gave no job id: {answer!r}", self.name)
        return job_id

    def lookup(self, conn: Connection, name: str, workdir: str) -> str | None:
        """The Slurm job id recorded in ``workdir`` (``<array>_<task>`` for a sweep
        point), else that of the job named ``name``; None when no listing has one.

        Raises TransientError when ``squeue`` fails: without a listing, submitting could
        start a second job.
        """
        result = _lines(conn.run(sh(_LOOKUP, workdir, name), what="looking for the job in squeue").out)
        if "fail" in result:
            raise TransientError(f"{self.name}: cannot list Slurm jobs: {result['fail']}", self.name)
        job_id = result.get("id", "").split(";")[0].strip()
        return job_id if re.fullmatch(r"[0-9]+(_[0-9]+)?", job_id) else None

    def reconcile(self, active_keys: set[str]) -> None:
        """Submit the sweep points this command staged (or saw staged): one ``sbatch
        --array`` per set with the same resources. Nothing to do, no remote call, when
        none was staged. A failure leaves them staged for the next tick."""
        if not self._staged:
            return
        self.call(None, lambda conn: self.submit_staged(conn, active_keys))
        self._staged = False

    def submit_staged(self, conn: Connection, active_keys: set[str]) -> None:
        root = self.root(conn)
        listing = conn.run(sh(arrays.LIST, root), what="listing staged sweep points").out
        named, fresh = arrays.groups(arrays.parse_listing(listing, active_keys))
        for name, points in named.items():  # an sbatch whose answer was lost: adopt, never submit twice
            found = self.lookup(conn, name, f"{root}/arrays/{name}")
            if found:
                self._bind(conn, root, found, points)
            else:
                fresh.append(points)
        for points in fresh:
            keys = [p.key for p in points]
            name = batch.array_name(keys)
            dirs = [f"{root}/attempts/{k}" for k in keys]
            conn.run(sh(arrays.INTENT, name, *dirs), what="recording the array's intent")
            command = batch.array_argv(name=name, count=len(dirs), workdir=f"{root}/arrays/{name}",
                                       resources=points[0].options)
            try:
                job_id = self.sbatch(conn, f"{root}/arrays/{name}", command, batch.array_script(dirs).encode())
            except CapacityError as exc:
                conn.run(sh(arrays.REFUSE, str(exc)[:400], *dirs), what="recording sbatch's refusal")
                continue
            self._bind(conn, root, job_id, [replace(p, name=name, index=i) for i, p in enumerate(points)])

    def _bind(self, conn: Connection, root: str, job_id: str, points: list[arrays.Point]) -> None:
        pairs = [w for p in points for w in (f"{root}/attempts/{p.key}", str(p.index))]
        conn.run(sh(arrays.BIND, job_id.split("_")[0], *pairs), what="recording the array's job ids")

    def find(self, key: str) -> Handle | None:
        def look(conn: Connection) -> Handle | None:
            workdir = self.attempt_dir(conn, key)
            job_id = self.lookup(conn, batch.job_name(key), workdir)
            return Handle(key, {"dir": workdir, "root": self.root(conn), "job_id": job_id}) if job_id else None

        return self.call(None, look)

    # ------------------------------------------------------------------ watch
    def read_status(self, conn: Connection, handle: Handle) -> RemoteStatus:
        workdir = handle.data["dir"]
        seen = _lines(conn.run(sh(_STATUS, workdir, handle.data.get("job_id", ""), jobstate.SACCT_FORMAT),
                               what="reading the job's state").out)
        if seen.get("exists") != "1":
            return RemoteStatus(RemoteState.LOST, f"the attempt directory {workdir} is gone from the cluster")
        if "refused" in seen:
            return RemoteStatus(RemoteState.LOST, f"sbatch refused the sweep's array: {seen['refused']}")
        if "staged" in seen:
            self._staged = True  # a tick stopped before its end: this command's reconcile submits it
            return RemoteStatus(RemoteState.PENDING, "staged: submitted with the sweep's other points as one "
                                                     "Slurm array at the end of the tick")
        job = None
        if "scontrol" in seen:
            job = jobstate.parse_scontrol(seen["scontrol"])
        elif "sacct" in seen:
            job = jobstate.parse_sacct(seen["sacct"])
        status = jobstate.interpret(job, answered="fail" not in seen, error=seen.get("fail", ""),
                                    has_result="has:result.json" in seen, has_rc="has:rc" in seen,
                                    cancelled_by_orch="has:orch-cancelled" in seen)
        if status.state == RemoteState.RUNNING and seen.get("beat", "").isdigit() and seen.get("now", "").isdigit():
            age = max(0, int(seen["now"]) - int(seen["beat"]))
            return RemoteStatus(status.state, status.message, heartbeat_at=time.time() - age)
        return status

    def logs(self, handle: Handle, offset: int = 0) -> LogChunk:
        """The job log from ``offset``; complete once the runner wrote result.json."""

        def read(conn: Connection) -> LogChunk:
            workdir = handle.data["dir"]
            done = conn.stat(f"{workdir}/result.json") is not None
            data = conn.read_from(f"{workdir}/job.log", offset, 1 << 20)
            done = done and len(data) < 1 << 20
            return LogChunk(data.decode("utf-8", "replace"), offset + len(data), complete=done)

        return self.call(handle, read)

    # ------------------------------------------------------------------ results
    def fetch(self, handle: Handle, dest: Path) -> None:
        """The ssh platform's fetch, then Slurm's final word on the run (``settle``)."""
        super().fetch(handle, dest)
        self.call(handle, lambda conn: self.settle(conn, handle, dest))

    def settle(self, conn: Connection, handle: Handle, dest: Path) -> None:
        """Write into ``dest``'s result.json what Slurm knows and the runner could not: the
        failure of a run Slurm ended (OUT_OF_MEMORY, FAILED), and what the site's
        accounting charged (``billed``, from ``sacct``; a ``billed`` the job wrote itself
        is dropped).

        Raises TransientError when Slurm cannot be asked and the runner left no result
        (the fetch is retried); with a result, or a job in no listing any more, the
        runner's result stands as it is (none: LOST).
        """
        path = dest / "result.json"
        read = read_result(path)
        if read.problem:
            return  # refused by the controller, with its reason
        seen = _lines(conn.run(sh(_FINAL, handle.data["dir"], handle.data.get("job_id", ""), jobstate.SACCT_FORMAT),
                               what="reading the job's final state").out)
        if "fail" in seen and read.doc is None:  # only Slurm can tell a failure from a lost run
            raise TransientError(f"{self.name}: cannot read the job's final state: {seen['fail']}", self.name)
        job = jobstate.parse_sacct(seen["sacct"]) if "sacct" in seen else (
            jobstate.parse_scontrol(seen["scontrol"]) if "scontrol" in seen else None)
        doc = (jobstate.failed_result(job, read.doc, seen.get("tail", "")) if job else None) or read.doc
        if doc is None:
            return
        doc = {k: v for k, v in doc.items() if k != "billed"}
        charged = jobstate.billed(job)
        if charged:
            doc["billed"] = charged
        if doc != read.doc:
            tmp = path.with_name("result.json.slurm")
            tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
            tmp.replace(path)

    # ------------------------------------------------------------------ stop
    def cancel(self, handle: Handle) -> None:
        """Mark the attempt as cancelled by orch, then ``scancel`` its job."""
        def stop(conn: Connection) -> None:
            answer = _lines(conn.run(sh(_CANCEL, handle.data["dir"], handle.data.get("job_id", "")),
                                     what="cancelling with scancel").out)
            if "fail" in answer:
                raise TransientError(f"{self.name}: scancel failed: {answer['fail']}", self.name)

        self.call(handle, stop)

    def release(self, handle: Handle) -> None:
        """``scancel`` whatever may still run (a job declared LOST), then remove the attempt
        directory. Never leaves a job behind a retry."""
        workdir = handle.data.get("dir")
        if not workdir:
            return

        def clean(conn: Connection) -> None:
            conn.run(sh(_CANCEL, workdir, handle.data.get("job_id", "")), what="cancelling with scancel")
            conn.remove(workdir)

        self.call(handle, clean)

    def site_usage(self) -> SiteUsage | None:
        """The site's GPU hours for this user from ``sshare`` (``usage.parse_sshare``);
        None on a site without accounting, or when the login node does not answer."""
        account = ["-A", self.settings.account] if self.settings.account else []

        def ask(conn: Connection) -> SiteUsage | None:
            result = conn.run(join(["sshare", "-U", "-h", "-P", "-o", usage.SSHARE_FORMAT, *account]),
                              what="asking sshare")
            return usage.parse_sshare(result.out, self.settings.account) if result.rc == 0 else None

        try:
            return self.link(self.endpoint()).call(ask)
        except OrchError as exc:
            log.info("%s: no site usage from sshare: %s", self.name, exc)
            return None

    def check(self) -> list[str]:
        problems = super().check()
        if problems:
            return problems

        def ask(conn: Connection) -> list[str]:
            result = conn.run("sinfo -h -o %P", what="asking sinfo")
            return [] if result.rc == 0 else [f"sinfo failed on the login node: {(result.err or result.out).strip()[:300]}"]

        try:
            return self.link(self.endpoint()).call(ask)
        except TransientError as exc:
            return [str(exc)]


__all__ = ["SlurmPlatform", "SlurmSettings"]
