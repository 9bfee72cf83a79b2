"""GPU probe: what this machine computes with, and how fast — ``python -m kernels.probe [--json]``.

Reports the CPU model (always), the GPU's name, memory, driver and CUDA versions (when cupy sees
one), dense matmul GFLOP/s in fp32 and fp64 and copy bandwidth in GB/s on each device, and the
GPU/CPU ratios. The runner can attach the JSON to ``result.json``; with ``--save`` the probe also
writes ``probe.json`` into ``$ORCH_OUTPUT_DIR`` (``./out`` when unset).

Figures are best-of-N wall times after a warm-up, taken with device events on the GPU. Bandwidth
counts bytes read plus bytes written by one large array copy, the usual STREAM "copy" convention.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kernels.xp import cpu_model

__all__ = ["cpu_info", "cpu_model", "gpu_info", "main", "run_probe"]


def _best(fn: Callable[[], float], repeats: int) -> float:
    """Smallest of ``repeats`` timings (seconds) after one warm-up call."""
    fn()
    return min(fn() for _ in range(repeats))


def _cpu_matmul_gflops(n: int, dtype: Any, repeats: int) -> float:
    rng = np.random.default_rng(0)
    a = rng.random((n, n)).astype(dtype)
    b = rng.random((n, n)).astype(dtype)
    c = np.empty((n, n), dtype=dtype)

    def once() -> float:
        t = time.perf_counter()
        np.matmul(a, b, out=c)
        return time.perf_counter() - t

    return 2.0 * n**3 / _best(once, repeats) / 1e9


def _cpu_bandwidth_gbs(nbytes: int, repeats: int) -> float:
    src = np.ones(nbytes // 8)
    dst = np.empty_like(src)

    def once() -> float:
        t = time.perf_counter()
        np.copyto(dst, src)
        return time.perf_counter() - t

    return 2.0 * src.nbytes / _best(once, repeats) / 1e9


def cpu_info(quick: bool = False) -> dict[str, Any]:
    """CPU identity and measured throughput (about a second; ``quick`` halves the sizes)."""
    n = 512 if quick else 1024
    mb = 32 if quick else 128
    return {
        "model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "machine": platform.machine(),
        "numpy": np.__version__,
        "matmul_gflops": {
            "fp32": round(_cpu_matmul_gflops(n, np.float32, 3), 1),
            "fp64": round(_cpu_matmul_gflops(n, np.float64, 3), 1),
            "size": n,
        },
        "bandwidth_gbs": round(_cpu_bandwidth_gbs(mb << 20, 3), 1),
    }


def _nvidia_smi_driver() -> str | None:
    """The driver version string as nvidia-smi prints it (e.g. ``550.54.15``), when available."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.stdout.strip().splitlines()
    return first[0].strip() if out.returncode == 0 and first else None


def _cuda_version(code: int) -> str:
    """cudart's integer version (e.g. 12040) as ``12.4``."""
    return f"{code // 1000}.{(code % 1000) // 10}"


def _gpu_time(cp: Any, fn: Callable[[], None], repeats: int) -> float:
    """Best-of-``repeats`` device time in seconds of ``fn``, measured with CUDA events."""
    fn()
    cp.cuda.Device().synchronize()
    best = float("inf")
    for _ in range(repeats):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        best = min(best, cp.cuda.get_elapsed_time(start, stop) / 1e3)
    return best


def gpu_info(quick: bool = False) -> dict[str, Any] | None:
    """GPU identity and measured throughput, or ``None`` when no CUDA device is usable."""
    from kernels.xp import gpu_status

    ok, _ = gpu_status()
    if not ok:
        return None
    import cupy as cp

    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    free, total = cp.cuda.runtime.memGetInfo()
    n32 = 2048 if quick else 4096
    n64 = 1024 if quick else 2048  # fp64 runs at 1/32 rate on consumer parts and the T4

    def matmul(n: int, dtype: Any) -> float:
        a = cp.random.random((n, n), dtype=dtype)
        b = cp.random.random((n, n), dtype=dtype)
        c = cp.empty((n, n), dtype=dtype)
        seconds = _gpu_time(cp, lambda: cp.matmul(a, b, out=c), 5)
        return round(2.0 * n**3 / seconds / 1e9, 1)

    nbytes = (128 if quick else 512) << 20
    src = cp.ones(nbytes // 8)
    dst = cp.empty_like(src)
    copy_s = _gpu_time(cp, lambda: cp.copyto(dst, src), 5)
    return {
        "name": name,
        "compute_capability": f"{props['major']}.{props['minor']}",
        "multiprocessors": int(props["multiProcessorCount"]),
        "memory_total_gib": round(total / 2**30, 2),
        "memory_free_gib": round(free / 2**30, 2),
        "driver": _nvidia_smi_driver(),
        "driver_cuda": _cuda_version(cp.cuda.runtime.driverGetVersion()),
        "runtime_cuda": _cuda_version(cp.cuda.runtime.runtimeGetVersion()),
        "cupy": cp.__version__,
        "matmul_gflops": {"fp32": matmul(n32, cp.float32), "fp64": matmul(n64, cp.float64), "size": [n32, n64]},
        "bandwidth_gbs": round(2.0 * src.nbytes / copy_s / 1e9, 1),
    }


def run_probe(quick: bool = False) -> dict[str, Any]:
    """Probe the CPU and, when present, the GPU; returns a JSON-ready dict."""
    from kernels.xp import gpu_status

    cpu = cpu_info(quick)
    gpu = gpu_info(quick)
    report: dict[str, Any] = {
        "host": platform.node(),
        "python": platform.python_version(),
        "cpu": cpu,
        "gpu": gpu,
        "gpu_absent_reason": None if gpu else gpu_status()[1],
        "comparison": None,
    }
    if gpu:
        report["comparison"] = {
            "matmul_fp32_gpu_over_cpu": round(gpu["matmul_gflops"]["fp32"] / cpu["matmul_gflops"]["fp32"], 1),
            "matmul_fp64_gpu_over_cpu": round(gpu["matmul_gflops"]["fp64"] / cpu["matmul_gflops"]["fp64"], 1),
            "bandwidth_gpu_over_cpu": round(gpu["bandwidth_gbs"] / cpu["bandwidth_gbs"], 1),
        }
    return report


def format_report(r: dict[str, Any]) -> str:
    """The human-readable form of :func:`run_probe`'s result."""
    c = r["cpu"]
    lines = [
        f"CPU   {c['model']} ({c['logical_cores']} logical cores, numpy {c['numpy']})",
        f"      matmul {c['matmul_gflops']['fp32']:.1f} GFLOP/s fp32, {c['matmul_gflops']['fp64']:.1f} GFLOP/s fp64"
        f" (n={c['matmul_gflops']['size']}); copy bandwidth {c['bandwidth_gbs']:.1f} GB/s",
    ]
    g = r["gpu"]
    if not g:
        lines.append(f"GPU   none ({r['gpu_absent_reason']})")
    else:
        lines += [
            f"GPU   {g['name']} (sm {g['compute_capability']}, {g['multiprocessors']} SMs, "
            f"{g['memory_total_gib']} GiB, {g['memory_free_gib']} GiB free)",
            f"      driver {g['driver'] or '?'} (CUDA {g['driver_cuda']}), runtime CUDA {g['runtime_cuda']}, cupy {g['cupy']}",
            f"      matmul {g['matmul_gflops']['fp32']:.1f} GFLOP/s fp32, {g['matmul_gflops']['fp64']:.1f} GFLOP/s fp64;"
            f" copy bandwidth {g['bandwidth_gbs']:.1f} GB/s",
        ]
        cmp_ = r["comparison"]
        lines.append(
            f"GPU/CPU  matmul fp32 x{cmp_['matmul_fp32_gpu_over_cpu']}, fp64 x{cmp_['matmul_fp64_gpu_over_cpu']},"
            f" bandwidth x{cmp_['bandwidth_gpu_over_cpu']}"
        )
    return "\n".join(lines)


def output_dir() -> Path:
    """Where jobs write their files: ``$ORCH_OUTPUT_DIR``, else ``./out``."""
    return Path(os.environ.get("ORCH_OUTPUT_DIR") or "out")


def fetched_path(path: Path) -> str:
    """How ``path`` (a file under :func:`output_dir`) is named where the user will see it:
    under orch, ``outputs/<name>`` in the folder `orch fetch` writes; else as given."""
    if os.environ.get("ORCH_OUTPUT_DIR"):
        try:
            return "outputs/" + Path(path).relative_to(output_dir()).as_posix()
        except ValueError:
            pass
    return str(path)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m kernels.probe``."""
    parser = argparse.ArgumentParser(prog="python -m kernels.probe", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--save", action="store_true", help="also write probe.json into $ORCH_OUTPUT_DIR (./out)")
    parser.add_argument("--quick", action="store_true", help="smaller problem sizes (for tests)")
    args = parser.parse_args(argv)
    report = run_probe(quick=args.quick)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    if args.save:
        out = output_dir()
        out.mkdir(parents=True, exist_ok=True)
        (out / "probe.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {fetched_path(out / 'probe.json')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
