"""What Slurm's answers about one job mean for orch: pure functions, no I/O.

The platform reads ``scontrol -o show job`` (active and recently ended jobs), ``sacct``
where the site runs accounting, and the attempt directory (the runner's
``result.json``). This module turns those readings into one :class:`RemoteStatus`.

Design choice: ``result.json`` is the truth for how a run ended, Slurm's state is the
truth for *why* it ended when Slurm ended it. A node failure, a preemption or a
``scancel`` nobody asked orch for all make the runner write a "cancelled" result
(it was sent SIGTERM), so those states win over the file and the attempt is LOST
(retried, anywhere), never CANCELLED: only ``orch cancel`` cancels a job. A run Slurm
ended as the job's own failure (OUT_OF_MEMORY, FAILED: a non-zero exit) is FAILED
even when the runner was killed before it could write its result (``failed_result``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..base import RemoteState, RemoteStatus

#: The job waits in the queue (a *waiting* attempt, with its reason).
WAITING = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SPECIAL_EXIT"})
#: The job holds its node(s).
ACTIVE = frozenset({"RUNNING", "CONFIGURING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING", "SUSPENDED"})
#: Slurm took the run away: retry, anywhere.
TAKEN = frozenset({"PREEMPTED", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "REVOKED"})
#: The run ended by itself (or at its limit): the runner's result says how.
ENDED = frozenset({"COMPLETED", "FAILED", "OUT_OF_MEMORY", "TIMEOUT"})

#: Pending reasons in words (``squeue --help`` / the Slurm "Resource Limits" page).
REASONS = {
    "Priority": "jobs with a higher priority are ahead of it",
    "Resources": "the resources it asks for (GPUs, nodes) are in use",
    "Dependency": "it waits for another job",
    "BeginTime": "its start time has not come yet",
    "JobHeldUser": "it is held by its owner (scontrol release)",
    "JobHeldAdmin": "it is held by an administrator",
    "ReqNodeNotAvail": "the nodes it needs are down, drained or reserved",
    "PartitionDown": "its partition is down",
    "PartitionInactive": "its partition is inactive",
    "PartitionTimeLimit": "its time limit exceeds the partition's",
    "PartitionNodeLimit": "it asks for more nodes than the partition allows",
    "QOSMaxGRESPerUser": "your QOS allows no more GPUs at once",
    "QOSMaxJobsPerUserLimit": "your QOS allows no more running jobs",
    "QOSMaxSubmitJobPerUserLimit": "your QOS allows no more queued jobs",
    "QOSGrpGRES": "the QOS group's GPU limit is reached",
    "AssocGrpGRES": "your account's GPU limit is reached",
    "AssocGrpGRESMinutes": "your account's GPU-minutes allocation is used up",
    "AssocGrpCPUMinutesLimit": "your account's CPU-minutes allocation is used up",
    "AssocMaxJobsLimit": "your account allows no more running jobs",
    "Reservation": "it waits for its reservation",
    "NodeDown": "a node it needs is down",
    "BadConstraints": "its constraints can never be met",
    "InvalidAccount": "its account is invalid",
    "InvalidQOS": "its QOS is invalid",
}

_FIELD = re.compile(r"(?:^|\s)(JobId|JobName|JobState|Reason|ExitCode|RunTime|Comment)=(\S*)")
_CAP = 200  # the longest value kept from a Slurm answer (it is untrusted text)


#: What ``sacct`` is asked for (``-X -n -P``, times as epoch seconds: SLURM_TIME_FORMAT=%s).
SACCT_FORMAT = "JobID,State,Reason,ExitCode,ElapsedRaw,Start,End,AllocTRES"
OUT_OF_MEMORY = "out of memory (Slurm OUT_OF_MEMORY)"
#: Batch-script exit codes of its own steps (batch.script): the job never started.
SETUP_EXITS = {97: "the attempt directory could not be entered", 98: "a `module load` failed"}


@dataclass(frozen=True)
class SlurmJob:
    """One job as Slurm lists it (values capped, never trusted as markup).

    ``start``/``end`` (epoch seconds) and ``gpus`` (the AllocTRES ``gres/gpu`` count)
    come from ``sacct`` only: they are what the site's accounting charges.
    """

    job_id: str
    state: str
    reason: str = ""
    exit_code: str = ""
    start: float | None = None
    end: float | None = None
    gpus: int | None = None

    @property
    def exit_status(self) -> int | None:
        """The batch script's exit status (``ExitCode`` is "status:signal")."""
        head = self.exit_code.split(":")[0]
        return int(head) if head.isdigit() else None


def parse_scontrol(line: str) -> SlurmJob | None:
    """``scontrol -o show job ID`` (one line of Key=Value words) -> SlurmJob."""
    fields = {k: v[:_CAP] for k, v in _FIELD.findall(line)}
    if "JobState" not in fields:
        return None
    reason = fields.get("Reason", "")
    return SlurmJob(fields.get("JobId", ""), fields["JobState"].upper(), "" if reason == "None" else reason,
                    fields.get("ExitCode", ""))


def parse_sacct(line: str) -> SlurmJob | None:
    """``sacct -X -n -P -o SACCT_FORMAT`` -> SlurmJob; the state may read "CANCELLED by
    1000". A start or end that is not a time (``Unknown``, ``None``) stays None."""
    parts = line.strip().split("|")
    if len(parts) < 4 or not parts[1]:
        return None
    state = parts[1].split()[0].upper()[:_CAP]
    reason = parts[2][:_CAP]
    extra = parts[4:8] + [""] * (8 - len(parts))
    start, end = _epoch(extra[1]), _epoch(extra[2])
    if start is not None and end is not None and end < start:
        start = end = None
    return SlurmJob(parts[0][:_CAP], state, "" if reason == "None" else reason, parts[3][:_CAP],
                    start=start, end=end, gpus=tres_gpus(extra[3]))


def _epoch(text: str) -> float | None:
    text = text.strip()
    return float(text) if text.isdigit() and 0 < len(text) <= 12 else None


def tres_gpus(tres: str) -> int | None:
    """The GPU count of an AllocTRES list ("cpu=8,gres/gpu:a100=2,gres/gpu=2,mem=64G"):
    the untyped ``gres/gpu`` total, else the sum of the typed ones; None when the site
    does not account GPUs (no ``gres/gpu`` in AccountingStorageTRES)."""
    total, typed, seen = None, 0, False
    for item in tres[:4000].split(","):
        name, _, value = item.strip().partition("=")
        if not value.isdigit() or not name.startswith("gres/gpu"):
            continue
        if name == "gres/gpu":
            total = int(value)
        elif name.startswith("gres/gpu:"):
            typed, seen = typed + int(value), True
    return total if total is not None else (typed if seen else None)


def billed(job: SlurmJob | None) -> dict | None:
    """What the site's accounting charged the run: ``result.json``'s ``billed`` (the
    ledger charges it instead of the runner's own times), or None when ``sacct`` did not
    answer (no slurmdbd): then the runner's elapsed time is charged, as everywhere."""
    if job is None or job.start is None or job.end is None:
        return None
    return {"start": job.start, "end": job.end, "gpus": job.gpus, "source": "sacct"}


def failed_result(job: SlurmJob, result: dict | None, runner_out: str = "") -> dict | None:
    """The result.json of a run Slurm ended as the job's own failure, or None (keep the
    runner's as it is).

    OUT_OF_MEMORY: the runner's "failed" result gets the reason (the job was killed,
    it only saw a signal); without a result (the runner itself was killed) one is
    written. FAILED without a result: the batch script's exit (a ``module load`` that
    failed, a runner that crashed). Both are FAILED attempts, never retried elsewhere:
    the same job would fail the same way.
    """
    status = job.exit_status
    if job.state == "OUT_OF_MEMORY":
        if result is None:
            return {"status": "failed", "exit_code": status or None, "failure_class": "oom", "message": OUT_OF_MEMORY}
        if result.get("status") == "failed" and result.get("failure_class") != "oom":
            said = result.get("message") or ""
            return {**result, "failure_class": "oom", "message": f"{OUT_OF_MEMORY}: {said}" if said else OUT_OF_MEMORY}
        return None
    if job.state != "FAILED" or result is not None:
        return None
    tail = " ".join(runner_out.split())[-300:]
    why = SETUP_EXITS.get(status or 0, "the runner ended without result.json")
    message = f"Slurm job {job.job_id} ended FAILED (exit {job.exit_code}): {why}" + (f": {tail}" if tail else "")
    return {"status": "failed", "exit_code": status, "failure_class": "setup" if status in SETUP_EXITS else "runner",
            "message": message}


def pending_words(reason: str) -> str:
    """A pending reason as a sentence: ``Resources`` -> "the resources it asks for ... are in use"."""
    head = reason.split(",")[0].split("(")[0].strip()
    words = REASONS.get(head)
    if not reason:
        return "queued on the cluster (not looked at by its scheduler yet)"
    return f"queued on the cluster ({reason}): {words}" if words else f"queued on the cluster ({reason})"


def interpret(job: SlurmJob | None, *, answered: bool, error: str, has_result: bool, has_rc: bool,
              cancelled_by_orch: bool) -> RemoteStatus:
    """One status from Slurm's listing of the job and what its attempt directory holds.

    Args:
        job: the job as scontrol/sacct list it; None when no listing has it.
        answered: False when the controller could not be asked (slurmctld down,
            ``squeue`` failing): then nothing is concluded but a finished result.
        error: what the failed read said (shown with UNKNOWN).
        has_result / has_rc: the runner wrote result.json / the batch script its exit code.
        cancelled_by_orch: ``orch cancel`` left its marker before calling scancel.
    """
    if not answered:
        if has_result and has_rc:  # the batch script ran to its end: the run ended by itself
            return RemoteStatus(RemoteState.EXITED, "")
        return RemoteStatus(RemoteState.UNKNOWN, f"Slurm did not answer: {error[:_CAP]}")
    if job is None:
        if has_result:
            return RemoteStatus(RemoteState.EXITED, "")
        return RemoteStatus(RemoteState.UNKNOWN, "the job is in no Slurm listing (ended longer than MinJobAge ago "
                                                 "on a cluster without accounting?) and left no result.json")
    label = f"Slurm job {job.job_id}"
    if job.state in WAITING:
        return RemoteStatus(RemoteState.PENDING, pending_words(job.reason))
    if job.state in ACTIVE:
        return RemoteStatus(RemoteState.RUNNING, f"running ({job.state.lower()})" if job.state != "RUNNING" else "")
    if job.state in TAKEN:
        why = f" ({job.reason})" if job.reason else ""
        return RemoteStatus(RemoteState.LOST, f"{label} ended {job.state}{why}: Slurm took the run away")
    if job.state == "CANCELLED":
        if cancelled_by_orch:
            return RemoteStatus(RemoteState.EXITED, "cancelled")
        return RemoteStatus(RemoteState.LOST, f"{label} was cancelled outside orch (scancel by the user or an "
                                              "administrator); not an `orch cancel`, so it is retried")
    if job.state == "TIMEOUT" and not has_rc:
        # The runner stops itself before the limit (its deadline, or the session end of a
        # checkpointing chain); Slurm's SIGTERM makes it write "cancelled", which is not
        # what happened. The chain goes on from its last fetched checkpoint.
        return RemoteStatus(RemoteState.LOST, f"{label} hit its Slurm time limit before the runner stopped itself")
    if job.state in ENDED:
        if has_result:
            return RemoteStatus(RemoteState.EXITED, "")
        if job.state == "OUT_OF_MEMORY":
            return RemoteStatus(RemoteState.EXITED, f"{label}: {OUT_OF_MEMORY}")
        return RemoteStatus(RemoteState.EXITED, f"{label} ended {job.state} (exit {job.exit_code}) without result.json")
    return RemoteStatus(RemoteState.UNKNOWN, f"{label} is in a state orch does not know: {job.state}")
