"""The one GPU catalogue: the types orch knows, their memory, speed and Colab burn rate.

Everything that names a GPU type reads it from here: the job spec's ``gpu:`` choices,
the scheduler's speed estimates, the quota maths (compute units per hour) and the
platforms that read a GPU name off ``nvidia-smi`` or an agent's report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class GPU:
    """One GPU type.

    Attributes:
        name: the short name job.yaml uses ("T4").
        max_memory_gb: the largest memory it comes with (keeps a job that needs more off it).
        speed: default per-GPU speed relative to a T4, before orch has learned better.
        cu_rate: approximate Colab compute units per hour (as users measured them in
            2024; ``colab usage`` shows the real burn rate), where Colab offers it.
    """

    name: str
    max_memory_gb: float
    speed: float
    cu_rate: float | None = None


CATALOGUE: tuple[GPU, ...] = (
    GPU("T4", 16, 1.0, 1.84),
    GPU("P100", 16, 1.55),
    GPU("V100", 32, 2.8, 4.91),
    GPU("L4", 24, 1.75, 4.82),
    GPU("A100", 80, 2.5, 11.77),
    GPU("H100", 80, 4.0, 18.0),
)

#: The names job.yaml accepts under ``resources.gpu`` (besides ``any`` and ``none``).
GPU_TYPES: tuple[str, ...] = tuple(g.name for g in CATALOGUE)
#: The largest memory (GB) each GPU type comes with.
MAX_MEMORY_GB: dict[str, float] = {g.name: g.max_memory_gb for g in CATALOGUE}
#: Default per-GPU speed relative to a T4; "CPU" is a job run with no GPU.
DEFAULT_SPEEDS: dict[str, float] = {**{g.name: g.speed for g in CATALOGUE}, "CPU": 0.1}
#: Colab compute units per hour by GPU. An unknown GPU is charged at the highest.
CU_RATES: dict[str, float] = {g.name: g.cu_rate for g in CATALOGUE if g.cu_rate is not None}
#: Compute units a month in each paid Colab plan (``tier:`` of ``colab`` and ``colab_drive``
#: entries); a tier not listed has no default budget.
COLAB_PLAN_UNITS: dict[str, float] = {"pro": 100.0, "pro+": 500.0}

#: Modal's published per-second GPU prices in dollars (modal.com/pricing, read 2025-06;
#: ``rates:`` of a modal entry's budget overrides them), and the Starter plan's monthly credit.
MODAL_DOLLARS_PER_SECOND: dict[str, float] = {
    "T4": 0.000164, "L4": 0.000222, "A100": 0.000583, "H100": 0.001097,
}
MODAL_FREE_CREDIT = 30.0
#: The same prices per GPU hour: the default ``rates`` of a budget in dollars.
MODAL_DOLLARS_PER_HOUR: dict[str, float] = {g: round(r * 3600, 4) for g, r in MODAL_DOLLARS_PER_SECOND.items()}
#: Modal's CPU and memory prices (modal.com/pricing, read 2025-06; not checked against
#: the live page since): what a sandbox without a GPU is billed, per core and per GiB.
MODAL_DOLLARS_PER_CORE_SECOND = 0.0000131
MODAL_DOLLARS_PER_GIB_SECOND = 0.00000222
#: The ``rates`` key of a session without a GPU (a dollars budget).
CPU_RATE = "CPU"

#: Names a device may report, longest match first; more than orch schedules for, so
#: that an agent on an A10G or H200 still reports something a person can read.
_REPORTED = ("H200", "H100", "A100", "A10G", "L40", "L4", "T4", "V100", "P100", "P4", "K80")


def gpu_type(name: str | None) -> str | None:
    """A GPU name as nvidia-smi prints it ("Tesla T4", "NVIDIA A100-SXM4-40GB") -> "T4",
    "A100"; None when it names none of the types in the catalogue."""
    word = reported_type(name or "")
    return word if word in GPU_TYPES else None


def reported_type(name: str) -> str:
    """Like :func:`gpu_type`, for display: any known device word ("A10G"), else ``name``."""
    for word in _REPORTED:
        if re.search(rf"(?<![A-Za-z0-9]){word}(?![0-9])", name.upper().replace("TESLA", " ")):
            return word
    return name.strip()
