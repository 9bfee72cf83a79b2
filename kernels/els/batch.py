"""Many pricings on one grid size in one time loop: :func:`price_els_batch`.

Why: one 200 x 200 pricing leaves most of a GPU idle (a few hundred lines per sweep), while
bump-and-reprice Greeks and product books need tens of pricings of the same size. Stacking them
along a leading batch axis turns B pricings into the same number of launches as one, each with
B times the parallel work. Every product keeps its own grid placement, line matrices, cross
weights, knock-in region and autocall dates; only ``n1, n2, nt`` are shared.

:class:`Batch` is the stacked, device-neutral form of B schemes. :func:`march_batch_cpu` marches
it with numpy, vectorised over the batch (and every line), using the PCR solve the CUDA kernels
run, which makes it their reference; :func:`kernels.els.cuda.march_gpu_batch` marches it on a GPU.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from kernels.els.fdm import SOLVERS, ELSResult, march_cpu
from kernels.els.pcr import solve_last
from kernels.els.product import ELSProduct
from kernels.els.scheme import KI, NK, build_scheme, read_out
from kernels.els.stacked import Batch
from kernels.xp import device_label, resolve_device

__all__ = ["Batch", "march_batch_cpu", "price_els_batch"]


def _cross_rhs(u: np.ndarray, wx: np.ndarray, wy: np.ndarray) -> np.ndarray:
    """``u + wx_i wy_j (u[i+1,j+1] - u[i+1,j-1] - (u[i-1,j+1] - u[i-1,j-1]))`` on interior nodes, as the kernels do."""
    up = u[:, 2:, :, 2:] - u[:, 2:, :, :-2]
    dn = u[:, :-2, :, 2:] - u[:, :-2, :, :-2]
    w = wx[:, 1:-1, None, None] * wy[:, None, None, 1:-1]
    return (up - dn) * w + u[:, 1:-1, :, 1:-1]


def _extrapolate(a: np.ndarray, axis: int) -> None:
    """Ends of ``axis`` from their two neighbours, in place (``a_0 = 2 a_1 - a_2``)."""
    v = np.moveaxis(a, axis, 0)
    v[0] = 2.0 * v[1] - v[2]
    v[-1] = 2.0 * v[-2] - v[-3]


def march_batch_cpu(batch: Batch) -> np.ndarray:
    """March every scheme of ``batch`` on the CPU (numpy, PCR); returns ``U``, ``(B, n1 + 1, 2, n2 + 1)``.

    Design choice: this is the reference for the GPU batch, not the fast CPU path. A batch costs
    the CPU what B single pricings do (the work is the same), and for one product
    :func:`kernels.els.fdm.march_cpu` with BLAS blocks is quicker.
    """
    bt = batch
    U = bt.U.copy()
    Us = np.empty_like(U)
    cx = bt.cx[:, None, None]  # (B, 1, 1, L, 3, n1 - 1) against lines (B, 2, n2 + 1, n1 - 1)
    cy = bt.cy[:, None, None]  # against lines (B, n1 + 1, 2, n2 - 1)
    col = np.arange(bt.n2 + 1)
    row = np.arange(bt.n1 + 1)
    ki = (row[None, :, None] < bt.ki_rows[:, None, None]) | (col[None, None, :] < bt.ki_cols[:, None, None])
    rx = np.empty((bt.size, bt.n1 - 1, 2, bt.n2 + 1))
    ry = np.empty((bt.size, bt.n1 + 1, 2, bt.n2 - 1))
    for m in range(1, bt.nt + 1):
        rx[..., 1:-1] = _cross_rhs(U, bt.wx, bt.wy)
        _extrapolate(rx, 3)
        Us[:, 1:-1] = np.moveaxis(solve_last(cx, np.moveaxis(rx, 1, 3)), 3, 1)
        _extrapolate(Us, 1)
        ry[:, 1:-1] = _cross_rhs(Us, bt.wx, bt.wy)
        _extrapolate(ry, 1)
        U[..., 1:-1] = solve_last(cy, ry)
        _extrapolate(U, 3)
        for b in np.flatnonzero(bt.ev_row[m] >= 0):
            U[b, bt.ev_row[m, b]:, :, bt.ev_col[m, b]:] = bt.ev_val[m, b]
        np.copyto(U[:, :, NK], U[:, :, KI], where=ki)
    return U


def price_els_batch(
    products: Sequence[ELSProduct],
    n1: int = 100,
    n2: int = 100,
    nt: int = 200,
    device: str = "auto",
    solver: str = "blocks",
) -> list[ELSResult]:
    """Price many products on one grid size in one time loop (GPU: one launch sequence for all).

    Design choice: on the CPU the default marches the products one after another with the BLAS
    block solver. The numpy batch (``solver="pcr-batch"``, :func:`march_batch_cpu`) does the
    same work in one loop but, with numpy temporaries over B grids, runs ~15x slower than
    ``blocks`` at 200 x 200; it exists as the GPU batch's reference.

    Args:
        products: the products (or bumped copies of one product, see :mod:`kernels.els.greeks`).
        n1, n2, nt: the grid, shared by every pricing.
        device: ``"auto"``, ``"cpu"`` or ``"gpu"``, as for :func:`kernels.els.price_els`.
        solver: CPU only: ``"pcr-batch"``, or a :func:`kernels.els.price_els` solver run per product.

    Returns:
        One :class:`ELSResult` per product, in order; ``seconds`` is the batch's wall time
        divided by its size (the amortised cost of one pricing).

    Raises:
        kernels.els.product.ProductError: an empty batch, bad grid sizes, too few time steps.
        kernels.xp.DeviceError: ``gpu`` requested but not usable.
    """
    start = time.perf_counter()
    dev = resolve_device(device)
    if solver not in (*SOLVERS, "pcr-batch"):
        raise ValueError(f"solver={solver!r}: expected pcr-batch or one of {', '.join(SOLVERS)}")
    schemes = [build_scheme(p, n1, n2, nt) for p in products]
    batch = Batch.from_schemes(schemes)
    if dev == "gpu":
        from kernels.els.cuda import SOLVER, march_gpu_batch

        grids, used = march_gpu_batch(batch), SOLVER
    elif solver == "pcr-batch":
        grids, used = march_batch_cpu(batch), solver
    else:
        grids, used = [march_cpu(s, solver) for s in schemes], solver
    outs = [read_out(s, grids[b][:, NK, :]) for b, s in enumerate(schemes)]
    each = (time.perf_counter() - start) / len(schemes)
    label = device_label(dev)
    return [
        ELSResult(price=price, delta=delta, gamma=gamma, n1=n1, n2=n2, nt=nt, seconds=each,
                  device=dev, device_name=label, solver=used)
        for price, delta, gamma in outs
    ]
