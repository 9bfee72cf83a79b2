"""ELS pricer benchmark: our CPU (and GPU) times beside the public pricer's, on the sample product.

    python bench/els.py                      # the issue's four grids; seed re-implementation on the first three
    python bench/els.py --baseline-all       # also run the seed algorithm at 200x200x1080 (minutes)
    python bench/els.py --solvers blocks,dense,thomas --json
    python bench/els.py --gpu-grids 400x400x2000 --batch 64   # on a GPU: also a GPU-only grid and a batch

Columns: our best and median wall time per pricing (``price_els``: set-up, time loop and read-out),
the GPU's (best and median of at least 5 after a warm-up; every call ends with the result on the
host, so it is synchronised) and the CPU/GPU ratio on the same machine, the public pricer's *published* CPU time
(minhoo-main/FDM_CUDA_PYTHON ``PERFORMANCE_TEST_RESULTS.md``: 0.70 s, 3.70 s, 8.0 s, and 78.26 s
at 200x200x1000) and the same algorithm re-implemented here and timed in this process, each
with its ratio to ours. The seed's price is shown too: it drops the cross term, halves the
diffusion and checks knock-in only at maturity, so it is not a reference (docs/kernels.md).

Timings vary with machine load; the figures in docs/kernels.md say where they were taken.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels.els import ELSProduct, create_sample_els, price_els, price_els_batch  # noqa: E402
from kernels.els.greeks import vol_ladder  # noqa: E402
from kernels.els.scheme import build_scheme  # noqa: E402
from kernels.xp import cpu_model, gpu_status  # noqa: E402

GRIDS = [(40, 40, 80), (80, 80, 150), (100, 100, 200), (200, 200, 1080)]
PUBLISHED_CPU = {(40, 40, 80): 0.70, (80, 80, 150): 3.70, (100, 100, 200): 8.0}
PUBLISHED_200 = 78.26  # seconds at 200x200x1000 (not 1080)
TARGETS_CPU = {(100, 100, 200): 0.040, (200, 200, 1080): 1.5}
TARGETS_H100 = {(200, 200, 1080): 0.020}
TARGETS_H200 = {(100, 100, 200): 0.002, (200, 200, 1080): 0.010, (400, 400, 2000): 0.040}  # issue 18
TARGET_BATCH_H200 = 0.001  # seconds per pricing, 64 pricings at 200x200x1080
GPU_REPEATS = 5  # at least, after one warm-up
TILES = (1, 2, 4, 8)


# --------------------------------------------------------------------------------------------
# The public pricer's algorithm, re-implemented to time it here (minhoo-main/FDM_CUDA_PYTHON
# @dae44edf3b, source/els-fdm-pricer/src: grid_2d.py, adi_solver.py, fdm_solver_base.py,
# els_pricer.py, els_product.py). Same grid (N points on [0, 3 S0]), coefficients, per-line
# scalar Thomas solve in Python, per-node Python payoff and redemption loops, boundary
# handling and observation-index mapping — including its defects (no cross term, half-strength
# operators, knock-in checked only at maturity, redemption schedule shifted by one date).
# --------------------------------------------------------------------------------------------


def _seed_thomas(lower: np.ndarray, diag: np.ndarray, upper: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    n = len(diag)
    c = np.zeros(n - 1)
    d = np.zeros(n)
    x = np.zeros(n)
    c[0] = upper[0] / diag[0]
    d[0] = rhs[0] / diag[0]
    for i in range(1, n - 1):
        den = diag[i] - lower[i - 1] * c[i - 1]
        c[i] = upper[i] / den
        d[i] = (rhs[i] - lower[i - 1] * d[i - 1]) / den
    d[n - 1] = (rhs[n - 1] - lower[n - 2] * d[n - 2]) / (diag[n - 1] - lower[n - 2] * c[n - 2])
    x[n - 1] = d[n - 1]
    for i in range(n - 2, -1, -1):
        x[i] = d[i] - c[i] * x[i + 1]
    return x


def _seed_coefficients(S: np.ndarray, dS: float, vol: float, q: float, r: float, dt: float):
    n = len(S)
    alpha, beta, gamma = np.zeros(n - 1), np.zeros(n), np.zeros(n - 1)
    for i in range(1, n - 1):
        a = 0.5 * vol**2 * S[i] ** 2 / dS**2
        b = (r - q) * S[i] / (2 * dS)
        alpha[i - 1] = -0.5 * dt * (a - b)
        beta[i] = 1.0 + dt * (a + 0.5 * r)
        gamma[i] = -0.5 * dt * (a + b)
    beta[0] = beta[-1] = 1.0
    return alpha, beta, gamma


def seed_price(p: ELSProduct, n1: int, n2: int, nt: int) -> float:
    """Price ``p`` with the public pricer's algorithm (n1 x n2 grid *points*, nt steps)."""
    (s10, s20), F, T = p.spots, p.face, p.maturity
    S1, S2 = np.linspace(0, 3 * s10, n1), np.linspace(0, 3 * s20, n2)
    d1, d2 = 3 * s10 / (n1 - 1), 3 * s20 / (n2 - 1)
    dt = T / nt
    t = np.linspace(0, T, nt + 1)
    c1 = _seed_coefficients(S1, d1, p.vols[0], p.dividends[0], p.rate, dt)
    c2 = _seed_coefficients(S2, d2, p.vols[1], p.dividends[1], p.rate, dt)
    coupons = [F * c for c in p.coupons]

    def redeemed(s1: float, s2: float, k: int) -> tuple[bool, float]:
        if min(s1 / s10, s2 / s20) >= p.autocall_barriers[k]:
            return True, F + coupons[k]
        return False, 0.0

    V = np.zeros((n1, n2))
    for i in range(n1):
        for j in range(n2):
            hit, pay = redeemed(S1[i], S2[j], len(coupons) - 1)
            if hit:
                V[i, j] = pay
            else:
                perf = min(S1[i] / s10, S2[j] / s20)
                V[i, j] = F * min(1.0, perf) if perf < p.knock_in else F + coupons[-1]
    obs_steps = [int(np.argmin(np.abs(t - d))) for d in p.observation_times]
    obs = len(obs_steps) - 1
    for n in range(nt - 1, -1, -1):
        half = V.copy()
        for j in range(n2):
            rhs = V[:, j].copy()
            rhs[0], rhs[-1] = 0.0, V[-1, j]
            half[:, j] = _seed_thomas(*c1, rhs)
        V = half.copy()
        for i in range(n1):
            rhs = half[i, :].copy()
            rhs[0], rhs[-1] = 0.0, half[i, -1]
            V[i, :] = _seed_thomas(*c2, rhs)
        V[0, :] = 0.0
        V[:, 0] = 0.0
        V[-1, :] = 2 * V[-2, :] - V[-3, :]
        V[:, -1] = 2 * V[:, -2] - V[:, -3]
        if n in obs_steps and obs >= 0:
            for i in range(n1):
                for j in range(n2):
                    hit, pay = redeemed(S1[i], S2[j], obs)
                    if hit:
                        V[i, j] = pay
            obs -= 1
    i = min(int(np.searchsorted(S1, s10, side="right")) - 1, n1 - 2)
    j = min(int(np.searchsorted(S2, s20, side="right")) - 1, n2 - 2)
    fx, fy = (s10 - S1[i]) / d1, (s20 - S2[j]) / d2
    v = V[i : i + 2, j : j + 2]
    return float((1 - fx) * ((1 - fy) * v[0, 0] + fy * v[0, 1]) + fx * ((1 - fy) * v[1, 0] + fy * v[1, 1]))


# --------------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """(best, median, last result) over ``repeats`` calls after one warm-up call."""
    fn()
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times), result


def fmt_s(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "—"
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_x(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:.1f}x"


def run(args: argparse.Namespace) -> dict[str, Any]:
    p = create_sample_els()
    gpu_ok, gpu_reason = gpu_status()
    solvers = [s for s in args.solvers.split(",") if s]
    rows = []
    for grid in args.grids:
        n1, n2, nt = grid
        cells = n1 * n2 * nt
        repeats = args.repeats or (7 if cells < 5e6 else 3)
        row: dict[str, Any] = {"grid": f"{n1}x{n2}x{nt}"}
        for solver in solvers:
            best, med, r = timed(lambda: price_els(p, n1, n2, nt, device="cpu", solver=solver), repeats)
            row[f"cpu_{solver}"] = {"best_s": best, "median_s": med, "price": r.price}
        ours = row[f"cpu_{solvers[0]}"]["best_s"]
        if gpu_ok:
            row.update(gpu_cells(p, grid, max(repeats, GPU_REPEATS)))
            row["gpu_ratio"] = ours / row["gpu"]["best_s"]
        pub = PUBLISHED_CPU.get(grid)
        row["published_cpu_s"] = pub
        row["published_ratio"] = pub / ours if pub else None
        if grid == (200, 200, 1080):
            row["published_note"] = f"{PUBLISHED_200} s at 200x200x1000"
            row["published_ratio_scaled"] = PUBLISHED_200 * 1080 / 1000 / ours
        if args.baseline_all or cells <= args.baseline_max_cells:
            start = time.perf_counter()
            seed = seed_price(p, n1, n2, nt)
            row["seed_here"] = {"seconds": time.perf_counter() - start, "price": seed}
            row["seed_here_ratio"] = row["seed_here"]["seconds"] / ours
        row["cpu_target_s"] = TARGETS_CPU.get(grid)
        row["h100_target_s"] = TARGETS_H100.get(grid)
        rows.append(row)
        if not args.json:
            print_row(row, solvers, gpu_ok)
    gpu_rows, batch = [], None
    if gpu_ok:
        for grid in args.gpu_grids:
            row = {"grid": "x".join(map(str, grid)), **gpu_cells(p, grid, GPU_REPEATS)}
            gpu_rows.append(row)
            if not args.json:
                print_gpu_row(row)
        if args.batch:
            batch = gpu_batch(p, args.batch, rows)
            if not args.json:
                print_batch(batch)
    return {
        "machine": {"cpu": cpu_model(), "logical_cores": __import__("os").cpu_count(), "numpy": np.__version__},
        "gpu": None if not gpu_ok else rows[0].get("gpu", {}).get("device"),
        "gpu_absent_reason": None if gpu_ok else gpu_reason,
        "rows": rows,
        "gpu_rows": gpu_rows,
        "batch": batch,
    }


def gpu_cells(p: ELSProduct, grid: tuple[int, int, int], repeats: int) -> dict[str, Any]:
    """GPU timings for one grid: ``price_els`` end to end, and its time loop with and without CUDA graphs."""
    from kernels.els.cuda import march_gpu

    n1, n2, nt = grid
    best, med, r = timed(lambda: price_els(p, n1, n2, nt, device="gpu"), repeats)
    s = build_scheme(p, n1, n2, nt)
    out = {"gpu": {"best_s": best, "median_s": med, "price": r.price, "device": r.device_name}}
    for name, graphs in (("gpu_loop_graphs", True), ("gpu_loop_direct", False)):
        b, m, _ = timed(lambda: march_gpu(s, graphs=graphs), repeats)
        out[name] = {"best_s": b, "median_s": m, "per_step_us": b / nt * 1e6}
    for tile in TILES:  # x-lines per block of the x-sweep: the default is chosen by these figures
        b, _, _ = timed(lambda: march_gpu(s, tile=tile), repeats)
        out.setdefault("gpu_loop_us_per_step_by_tile", {})[str(tile)] = b / nt * 1e6
    out["h200_target_s"] = TARGETS_H200.get(grid)
    return out


def gpu_batch(p: ELSProduct, size: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``size`` pricings (a vega ladder) at 200x200x1080 in one batch; the CPU figure is one single pricing."""
    grid = (200, 200, 1080)
    books = vol_ladder(p, size)
    best, med, r = timed(lambda: price_els_batch(books, *grid, device="gpu"), GPU_REPEATS)
    cpu = next((row["cpu_blocks"]["best_s"] for row in rows if row["grid"] == "200x200x1080" and "cpu_blocks" in row), None)
    return {
        "grid": "200x200x1080", "size": size, "best_s": best, "median_s": med,
        "per_pricing_best_s": best / size, "per_pricing_median_s": med / size, "device": r[0].device_name,
        "cpu_single_best_s": cpu, "ratio": cpu / (best / size) if cpu else None, "h200_target_s": TARGET_BATCH_H200,
    }


def print_gpu_row(row: dict[str, Any]) -> None:
    g, gg, gd = row["gpu"], row["gpu_loop_graphs"], row["gpu_loop_direct"]
    print(
        f"{row['grid']:<14}GPU only: {fmt_s(g['best_s'])} / {fmt_s(g['median_s'])}; time loop {gg['per_step_us']:.1f} us/step"
        f" with graphs, {gd['per_step_us']:.1f} without", flush=True,
    )


def print_batch(b: dict[str, Any]) -> None:
    print(
        f"batch of {b['size']} at {b['grid']} on {b['device']}: {fmt_s(b['best_s'])} best / {fmt_s(b['median_s'])} median,"
        f" {b['per_pricing_best_s'] * 1e3:.3f} ms per pricing (target <= {b['h200_target_s'] * 1e3:.0f} ms on an H200)"
        + (f"; CPU single pricing {fmt_s(b['cpu_single_best_s'])}, ratio {fmt_x(b['ratio'])}" if b["ratio"] else ""),
        flush=True,
    )


HEADER = (
    f"{'grid':<14}{'ours (best / median)':>24}{'GPU (best / median)':>24}{'CPU/GPU':>9}{'published CPU':>15}{'ratio':>8}"
    f"{'seed algo here':>16}{'ratio':>8}{'price ours':>12}{'price seed':>12}"
)


def print_row(row: dict[str, Any], solvers: list[str], gpu_ok: bool) -> None:
    main = row[f"cpu_{solvers[0]}"]
    seed = row.get("seed_here")
    pub = fmt_s(row["published_cpu_s"]) if row["published_cpu_s"] else f"({PUBLISHED_200:.0f} s@1000)"
    ratio = row["published_ratio"] or row.get("published_ratio_scaled")
    line = (
        f"{row['grid']:<14}{fmt_s(main['best_s']) + ' / ' + fmt_s(main['median_s']):>24}"
        f"{fmt_s(row['gpu']['best_s']) + ' / ' + fmt_s(row['gpu']['median_s']) if gpu_ok else '—':>24}"
        f"{fmt_x(row.get('gpu_ratio')):>9}{pub:>15}{fmt_x(ratio):>8}"
        f"{fmt_s(seed['seconds']) if seed else 'skipped':>16}{fmt_x(row.get('seed_here_ratio')):>8}"
        f"{main['price']:>12.4f}{seed['price'] if seed else float('nan'):>12.4f}"
    )
    target = row["cpu_target_s"]
    if target:
        line += f"   target <= {fmt_s(target)}: {'met' if main['best_s'] <= target else 'MISSED'}"
    print(line, flush=True)
    if gpu_ok:
        gg, gd = row["gpu_loop_graphs"], row["gpu_loop_direct"]
        tiles = ", ".join(f"{t}: {us:.1f}" for t, us in row["gpu_loop_us_per_step_by_tile"].items())
        print(f"{'':<14}GPU time loop: {gg['per_step_us']:.1f} us/step with CUDA graphs, {gd['per_step_us']:.1f} us/step direct;"
              f" us/step by x-tile {tiles}", flush=True)
    for solver in solvers[1:]:
        r = row[f"cpu_{solver}"]
        print(f"{'':<14}{fmt_s(r['best_s']) + ' / ' + fmt_s(r['median_s']):>24}  (solver {solver})", flush=True)


def parse_grids(text: str) -> list[tuple[int, int, int]]:
    return [tuple(int(v) for v in g.split("x")) for g in text.split(",") if g]  # type: ignore[misc]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grids", type=parse_grids, default=GRIDS, help="N1xN2xNT,... (default: the issue's four)")
    ap.add_argument("--repeats", type=int, default=0, help="timed runs per grid (default 7, 3 for large grids)")
    ap.add_argument("--solvers", default="blocks", help="CPU solvers to time, first is the headline (blocks,dense,thomas)")
    ap.add_argument("--baseline-max-cells", type=float, default=3e6, help="run the seed algorithm up to N1*N2*NT cells")
    ap.add_argument("--baseline-all", action="store_true", help="run the seed algorithm on every grid (slow)")
    ap.add_argument("--gpu-grids", type=parse_grids, default=[], help="N1xN2xNT,... timed on the GPU only (e.g. 400x400x2000)")
    ap.add_argument("--batch", type=int, default=0, metavar="N", help="on a GPU, also time N pricings at 200x200x1080 in one batch")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args(argv)
    if not args.json:
        ok, reason = gpu_status()
        print("ELS pricer benchmark: sample product, float64, wall time per pricing")
        print(f"CPU: {cpu_model()}, {__import__('os').cpu_count()} logical cores, numpy {np.__version__}")
        print(f"GPU: {'present' if ok else 'none (' + reason + ')'}")
        print(HEADER)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("published = minhoo-main/FDM_CUDA_PYTHON PERFORMANCE_TEST_RESULTS.md; the 200x200 row's ratio scales its")
        print("200x200x1000 time by 1080/1000. 'seed algo here' = that pricer's algorithm re-implemented and run here.")
        if TARGETS_H100:
            print(f"H100 target: 200x200x1080 <= {fmt_s(TARGETS_H100[(200, 200, 1080)])} (GPU column, when run on one).")
        targets = ", ".join(f"{'x'.join(map(str, g))} <= {fmt_s(t)}" for g, t in TARGETS_H200.items())
        print(f"H200 targets (issue 18): {targets}; a batch of 64 at 200x200x1080 <= {fmt_s(TARGET_BATCH_H200)} per pricing.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
