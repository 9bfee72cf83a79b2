"""Finite-difference (OSM) ELS pricer: :func:`price_els`, with the CPU time loop.

The scheme itself lives in :mod:`kernels.els.scheme`; this module marches it on the CPU and, for
``device="gpu"``, hands it to :mod:`kernels.els.cuda`. Both value grids (knocked in / not yet)
travel together as one array ``U[i, g, j]`` so that each sweep is a single batched solve over all
lines of both grids.

CPU solvers (``solver=``):

* ``"blocks"`` (default): each sweep is a handful of BLAS-3 products with pre-computed block
  inverses (the exact partition method of :mod:`kernels.els.blocks`), plus ~8 numpy calls for
  the cross term and boundaries.
* ``"dense"``: the same with one block, i.e. a product with the full inverse (2x the flops at
  200 x 200; kept for comparison in ``bench/els.py``).
* ``"thomas"``: the batched, pre-factored Thomas recurrence, vectorised over lines. Slower (a
  Python loop over rows); it is the exact reference the GPU's PCR results
  (:mod:`kernels.els.cuda`) are checked against.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from kernels.els.blocks import BLOCK_ROWS, BlockSolver
from kernels.els.product import ELSProduct
from kernels.els.scheme import KI, NK, Scheme, build_scheme, read_out
from kernels.els.thomas import solve_lines
from kernels.xp import device_label, resolve_device

__all__ = ["ELSResult", "march_cpu", "price_els"]

SOLVERS = ("blocks", "dense", "thomas")


@dataclass(frozen=True)
class ELSResult:
    """What :func:`price_els` returns.

    Attributes:
        price: value at the spots (same units as the face value).
        delta, gamma: per asset, at the spots.
        n1, n2, nt: the grid and number of time steps used.
        seconds: wall time of the whole call (scheme set-up, time loop, read-out).
        device: ``"cpu"`` or ``"gpu"``; ``device_name`` says which one.
        solver: ``"blocks"``/``"dense"``/``"thomas"`` on the CPU, ``"cuda-pcr"`` on the GPU
            (``"pcr-batch"`` for a CPU batch, see :mod:`kernels.els.batch`).
    """

    price: float
    delta: tuple[float, float]
    gamma: tuple[float, float]
    n1: int
    n2: int
    nt: int
    seconds: float
    device: str
    device_name: str
    solver: str

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _extrapolate_ends(a: np.ndarray, axis: int, n: int) -> None:
    """``a[0] = 2 a[1] - a[2]`` and ``a[n] = 2 a[n-1] - a[n-2]`` along ``axis``, in place.

    For ``n >= 8`` both ends go in two numpy calls through strided views (index 0 and n, 1 and
    n-1, 2 and n-2); the per-step call count matters at 100 x 100.
    """
    def take(start: int, step: int) -> np.ndarray:
        index = [slice(None)] * a.ndim
        index[axis] = slice(start, None, step)
        return a[tuple(index)]

    if n >= 8:
        ends = take(0, n)
        np.multiply(take(1, n - 2), 2.0, out=ends)
        np.subtract(ends, take(2, n - 4), out=ends)
        return
    v = np.moveaxis(a, axis, 0)  # a view: the assignments write into ``a``
    v[0] = 2.0 * v[1] - v[2]
    v[n] = 2.0 * v[n - 1] - v[n - 2]


class _CpuMarch:
    """Buffers and the per-step work for marching one scheme on the CPU.

    Both sweeps need ``rhs = u + w * cross(u)`` and, in the layout ``U[i, g, j]``, the cross
    stencil has the same flat offsets for both (``+-1`` along j, ``+-L`` along i with
    ``L = 2 (n2 + 1)``). So it is computed on the *flattened* array: four numpy calls over one
    long contiguous run, several times faster than on 2-D slices. Stencils that wrap across a
    row (or across the seam between the two grids) land only on boundary columns, which the
    x-sweep overwrites by extrapolation and the y-sweep never reads.
    """

    def __init__(self, s: Scheme, solver: str):
        self.s = s
        self.solver = solver
        n1, n2 = s.n1, s.n2
        self.L = 2 * (n2 + 1)
        self.U = s.terminal.copy()
        self.Us = np.empty(s.shape)
        self.tmp = np.empty(s.shape)
        self.rhs_x = np.empty((n1 - 1, 2, n2 + 1))  # x-lines: interior rows, every column
        self.rhs_y = np.empty(s.shape)  # y-lines: every row; boundary columns unused
        self.diff = np.empty((n1 + 1) * self.L - 2)
        w = s.wx[1:-1, None, None] * s.wy[None, None, :] * np.ones((1, 2, 1))
        self.w = np.ascontiguousarray(w).ravel()[1:-1]
        if solver != "thomas":
            rows = BLOCK_ROWS if solver == "blocks" else 1 << 30  # "dense": a single block
            self.bx = BlockSolver(s.fx, rows)
            self.by = BlockSolver(s.fy, rows)

    def _rhs(self, u: np.ndarray, out: np.ndarray) -> None:
        """``out = u + w * cross(u)`` on rows 1..n1-1 of the flattened grid ``u`` (see class doc)."""
        L, d = self.L, self.diff
        np.subtract(u[2:], u[:-2], out=d)
        np.subtract(d[2 * L :], d[: -2 * L], out=out)
        out *= self.w
        out += u[L + 1 : len(u) - L - 1]

    def step(self, m: int) -> None:
        s, U, Us = self.s, self.U, self.Us
        n1, n2, L = s.n1, s.n2, self.L
        # x-sweep (implicit in x) on every column; boundary columns extrapolated in the RHS.
        rx = self.rhs_x
        self._rhs(U.ravel(), rx.ravel()[1:-1])
        _extrapolate_ends(rx, 2, n2)
        if self.solver == "thomas":
            solve_lines(s.fx, rx, out=Us[1:-1])
            np.multiply(Us[1], 2.0, out=Us[0])
            Us[0] -= Us[2]
            np.multiply(Us[-2], 2.0, out=Us[-1])
            Us[-1] -= Us[-3]
        else:
            self.bx.solve_cols(rx.reshape(n1 - 1, L), Us.reshape(n1 + 1, L), self.tmp.reshape(n1 + 1, L))
        # y-sweep (implicit in y) on every row; boundary rows extrapolated in the RHS.
        ry = self.rhs_y
        self._rhs(Us.ravel(), ry.ravel()[L + 1 : -L - 1])
        _extrapolate_ends(ry, 0, n1)
        if self.solver == "thomas":
            solve_lines(s.fy, np.moveaxis(ry[:, :, 1:-1], 2, 0), out=np.moveaxis(U[:, :, 1:-1], 2, 0))
            np.multiply(U[:, :, 1], 2.0, out=U[:, :, 0])
            U[:, :, 0] -= U[:, :, 2]
            np.multiply(U[:, :, -2], 2.0, out=U[:, :, -1])
            U[:, :, -1] -= U[:, :, -3]
        else:
            rows = 2 * (n1 + 1)
            self.by.solve_rows(ry.reshape(rows, n2 + 1)[:, 1:-1], U.reshape(rows, n2 + 1), self.tmp.reshape(rows, n2 + 1))
        event = s.events.get(m)
        if event is not None:  # autocall on both grids
            row, col, value = event
            U[row:, :, col:] = value
        # knock-in switch: the not-knocked-in grid takes the knocked-in values where W < KI.
        k_r, k_c = s.ki_rows, s.ki_cols
        U[:k_r, NK, :] = U[:k_r, KI, :]
        U[k_r:, NK, :k_c] = U[k_r:, KI, :k_c]


def march_cpu(s: Scheme, solver: str = "blocks") -> np.ndarray:
    """March ``s`` from maturity to today on the CPU; returns the final ``U`` (``s.shape``)."""
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r}: expected one of {', '.join(SOLVERS)}")
    run = _CpuMarch(s, solver)
    for m in range(1, s.nt + 1):
        run.step(m)
    return run.U


def price_els(
    product: ELSProduct,
    n1: int = 100,
    n2: int = 100,
    nt: int = 200,
    device: str = "auto",
    solver: str = "blocks",
) -> ELSResult:
    """Price a two-asset step-down ELS by OSM finite differences with the cross term.

    Args:
        product: the product and its market model.
        n1, n2: space intervals per asset (each spans ``[0, 2 S0]``, shifted so barriers sit mid-cell).
        nt: time steps over the product's life; knock-in is monitored at every one of them
            (``nt / T`` times a year; about 360 a year is accurate, see docs/kernels.md).
        device: ``"auto"`` (``ORCH_DEVICE``, then detection), ``"cpu"`` or ``"gpu"``.
        solver: CPU solver, ``"blocks"``, ``"dense"`` or ``"thomas"`` (ignored on the GPU).

    Returns:
        An :class:`ELSResult` with price, deltas, gammas, grid, time and device.

    Raises:
        kernels.xp.DeviceError: ``gpu`` requested but not usable.
        kernels.els.product.ProductError: bad grid sizes or too few time steps for the dates.
    """
    start = time.perf_counter()
    dev = resolve_device(device)
    s = build_scheme(product, n1, n2, nt)
    if dev == "gpu":
        from kernels.els.cuda import SOLVER, march_gpu

        U = march_gpu(s)
        used = SOLVER
    else:
        U = march_cpu(s, solver)
        used = solver
    price, delta, gamma = read_out(s, U[:, NK, :])
    seconds = time.perf_counter() - start
    return ELSResult(
        price=price, delta=delta, gamma=gamma, n1=n1, n2=n2, nt=nt, seconds=seconds,
        device=dev, device_name=device_label(dev), solver=used,
    )
