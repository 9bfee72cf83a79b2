"""The batch script and the ``sbatch`` command line of one attempt (pure text building).

The batch script runs ``kernels/runner.py`` unchanged, with the same command line the
``ssh`` platform uses; its plain environment (sweep parameters, never secrets) is a
here-document. Every variable part is a single-quoted shell word (``shell.quote``).
"""

from __future__ import annotations

import json
import math
from typing import Mapping, Sequence

from ..ssh.shell import join, quote

#: What the controller needs to be back on the login node after a limit is hit.
SETUP_MARGIN_S = 60.0


def job_name(key: str) -> str:
    """The Slurm job name of an attempt: how ``squeue --name`` finds it again."""
    return f"orch-{key}"


def script(workdir: str, argv: Sequence[str], env: Mapping[str, str], modules: Sequence[str]) -> str:
    """The batch script: record the job id, load modules, run the runner, keep its exit code.

    The runner's exit code lands atomically in ``rc`` only when it returned by itself:
    a job that Slurm killed (scancel, node failure, time limit) leaves none.
    """
    doc = json.dumps({"env": dict(env), "secrets": {}})  # one line: the delimiter cannot occur in it
    lines = ["#!/bin/bash -l" if modules else "#!/bin/sh",
             "# orch attempt: runs kernels/runner.py unchanged (docs/platforms/slurm.md)",
             f"cd {quote(workdir)} || exit 97",
             # An array task is named <array id>_<task id>: its bare id, for the task that
             # holds the array's own id, would make scontrol list every task of the array.
             'id=$SLURM_JOB_ID; [ -n "$SLURM_ARRAY_JOB_ID" ] && id="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
             'echo "$id" > slurm.jobid.tmp && mv -f slurm.jobid.tmp slurm.jobid']
    for module in modules:
        lines.append(f"module load {join(module.split())} || {{ echo {quote('module load ' + module + ' failed')} "
                     ">> runner.out; exit 98; }")
    lines += [f"{join(argv)} > /dev/null 2>> runner.out <<'ORCH_ENV'", doc, "ORCH_ENV",
              "rc=$?", 'echo "$rc" > rc.tmp && mv -f rc.tmp rc', 'exit "$rc"', ""]
    return "\n".join(lines)


def time_limit(need_s: float, grace_s: float, cap_s: float | None) -> str:
    """``--time`` as D-HH:MM:SS: the runner's own deadline plus grace and a margin, so
    Slurm's limit never cuts the runner before it saved its checkpoint; never above
    the platform's cap (the scheduler keeps segments inside the cap)."""
    seconds = need_s + grace_s + SETUP_MARGIN_S
    if cap_s is not None:
        seconds = min(seconds, cap_s)
    minutes = max(1, math.ceil(seconds / 60))  # Slurm keeps limits in whole minutes
    days, rest = divmod(minutes, 24 * 60)
    return f"{days}-{rest // 60:02d}:{rest % 60:02d}:00"


def options(*, limit: str, partition: str | None, account: str | None, qos: str | None, gres: str | None,
            mem: str | None = None) -> list[str]:
    """The resource options of one attempt's ``sbatch`` (``--time``, partition, ...):
    attempts with the same options may go as one array."""
    argv = [f"--time={limit}"]
    for flag, value in (("partition", partition), ("account", account), ("qos", qos), ("gres", gres), ("mem", mem)):
        if value:
            argv.append(f"--{flag}={value}")
    return argv


def sbatch_argv(*, key: str, workdir: str, resources: Sequence[str]) -> list[str]:
    """``sbatch --parsable`` for one attempt: name and comment carry the attempt key,
    no requeue (orch retries elsewhere itself, and a requeued job would run twice)."""
    return ["sbatch", "--parsable", f"--job-name={job_name(key)}", f"--comment=orch:{key}", f"--chdir={workdir}",
            f"--output={workdir}/slurm.out", "--open-mode=append", "--no-requeue", *resources, f"{workdir}/job.sbatch"]


def array_name(keys: Sequence[str]) -> str:
    """The Slurm job name of an array of attempts (named by its first attempt)."""
    return f"orch-array-{keys[0]}"


def array_argv(*, name: str, count: int, workdir: str, resources: Sequence[str]) -> list[str]:
    """``sbatch --parsable --array=0-N`` for ``count`` attempts with the same resources."""
    return ["sbatch", "--parsable", f"--job-name={name}", f"--comment=orch:{name}", f"--chdir={workdir}",
            f"--output={workdir}/slurm-%a.out", "--open-mode=append", "--no-requeue", f"--array=0-{count - 1}",
            *resources, f"{workdir}/job.sbatch"]


def array_script(workdirs: Sequence[str]) -> str:
    """The array's batch script: task i runs attempt i's own batch script, unchanged."""
    lines = ["#!/bin/sh", "# orch sweep points as one Slurm array (docs/platforms/slurm.md)",
             'case "$SLURM_ARRAY_TASK_ID" in']
    lines += [f"{i}) exec {quote(f'{d}/job.sbatch')} ;;" for i, d in enumerate(workdirs)]
    lines += ["esac", "exit 97", ""]
    return "\n".join(lines)
