"""GPU time loop for the OSM scheme: two fused CUDA kernels per time step, launched from cupy.

Design: the grid sizes that matter (100^2–400^2) are bound by launch overhead and the
latency of the Thomas recurrence, not by DRAM, so each step is exactly two launches and nothing
crosses the PCIe bus inside the time loop:

* ``osm_x_sweep``: one thread per x-line (column ``j`` of grid ``g``; ``2 (n2 + 1)`` threads).
  It computes the right-hand side ``u + w * cross(u)`` on the fly, runs the pre-factored Thomas
  recurrence down its column, and extrapolates the two boundary rows. Boundary columns build
  their right-hand side by extrapolating those of columns 1, 2 (resp. n2-1, n2-2), a linear map
  that commutes with the solve, so every thread is independent.
* ``osm_y_sweep``: one thread per row ``i``, carrying both value grids through one loop (two
  independent recurrences give the scheduler two instructions in flight), then applying that
  row's autocall overwrite and knock-in switch, so neither needs a kernel of its own.

The recurrence is the one in :mod:`kernels.els.thomas` (``solve_lines``) operation for operation,
and the boundary handling is the CPU's; results agree with the CPU to ~1e-13 relative. The line
functions are ``__host__ __device__`` so the very same source can be compiled for the host with
``nvcc`` and checked against numpy where no GPU exists (``tests/kernels/test_cuda_source.py``).

Layout: ``U[(i * 2 + g) * (n2 + 1) + j]``, i.e. the numpy array ``U[i, g, j]`` of
:mod:`kernels.els.scheme`. The x-sweep's loads are coalesced (neighbouring threads, neighbouring
``j``); the y-sweep's are strided and rely on L2, which holds the whole 200^2 working set
(~1.3 MB) on every current NVIDIA part.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from kernels.els.scheme import Scheme

__all__ = ["CUDA_SOURCE", "THREADS_PER_BLOCK", "march_gpu"]

THREADS_PER_BLOCK = 64  #: small blocks spread the few hundred lines over more SMs (more L1, more issue slots)

CUDA_SOURCE = r"""
// OSM sweeps for the two-grid ELS scheme; see kernels/els/cuda.py for the design.
// U[(i * 2 + g) * NY + j] with NY = n2 + 1; rows i = 0..n1, grids g = 0 (not knocked in), 1 (knocked in).

// __host__ __device__: NVRTC (cupy) compiles the device side; nvcc can also build the host side,
// which is how the tests check these functions on a machine without a GPU. No headers: NVRTC has
// no host headers.
#define OSM_HD __host__ __device__

// u + wx[i] * wy[j] * (u[i+1][j+1] - u[i+1][j-1] - (u[i-1][j+1] - u[i-1][j-1])), as the CPU computes it.
OSM_HD inline double osm_rhs(const double* __restrict__ u, int i, int g, int j, int NY,
                             const double* __restrict__ wx, const double* __restrict__ wy)
{
    const long S = 2L * NY;
    const double* c = u + ((long)i * 2 + g) * NY + j;
    const double up = c[S + 1] - c[S - 1];
    const double dn = c[-S + 1] - c[-S - 1];
    const double w = wx[i] * wy[j];
    return (up - dn) * w + c[0];
}

// x-sweep right-hand side of column j, row i, with boundary columns extrapolated.
OSM_HD inline double osm_rhs_x(const double* __restrict__ u, int i, int g, int j, int n2,
                               const double* __restrict__ wx, const double* __restrict__ wy)
{
    const int NY = n2 + 1;
    if (j == 0)
        return 2.0 * osm_rhs(u, i, g, 1, NY, wx, wy) - osm_rhs(u, i, g, 2, NY, wx, wy);
    if (j == n2)
        return 2.0 * osm_rhs(u, i, g, n2 - 1, NY, wx, wy) - osm_rhs(u, i, g, n2 - 2, NY, wx, wy);
    return osm_rhs(u, i, g, j, NY, wx, wy);
}

// y-sweep right-hand side of row i, column j, with boundary rows extrapolated.
OSM_HD inline double osm_rhs_y(const double* __restrict__ u, int i, int g, int j, int n1, int n2,
                               const double* __restrict__ wx, const double* __restrict__ wy)
{
    const int NY = n2 + 1;
    if (i == 0)
        return 2.0 * osm_rhs(u, 1, g, j, NY, wx, wy) - osm_rhs(u, 2, g, j, NY, wx, wy);
    if (i == n1)
        return 2.0 * osm_rhs(u, n1 - 1, g, j, NY, wx, wy) - osm_rhs(u, n1 - 2, g, j, NY, wx, wy);
    return osm_rhs(u, i, g, j, NY, wx, wy);
}

// One x-line: solve (I - dt Lx) u* = rhs down column j of grid g, unknowns at rows 1..n1-1.
// a, cp, inv: Thomas factors of order n1 - 1 (forward d_k = (r_k - a_k d_{k-1}) inv_k, backward x_k = d_k - cp_k x_{k+1}).
OSM_HD inline void osm_x_line(const double* __restrict__ U, double* __restrict__ Us,
                              const double* __restrict__ a, const double* __restrict__ cp,
                              const double* __restrict__ inv, const double* __restrict__ wx,
                              const double* __restrict__ wy, int n1, int n2, int g, int j)
{
    const long S = 2L * (n2 + 1);
    double* col = Us + (long)g * (n2 + 1) + j;
    double d = osm_rhs_x(U, 1, g, j, n2, wx, wy) * inv[0];
    col[S] = d;
    for (int i = 2; i < n1; ++i) {
        const int k = i - 1;
        d = (osm_rhs_x(U, i, g, j, n2, wx, wy) - a[k] * d) * inv[k];
        col[i * S] = d;
    }
    double x = d;
    for (int i = n1 - 2; i >= 1; --i) {
        x = col[i * S] - cp[i - 1] * x;
        col[i * S] = x;
    }
    col[0] = 2.0 * col[S] - col[2 * S];
    col[n1 * S] = 2.0 * col[(n1 - 1) * S] - col[(n1 - 2) * S];
}

// One row i of both grids: the y-sweep, then this row's autocall overwrite and knock-in switch.
OSM_HD inline void osm_y_row(const double* __restrict__ Us, double* __restrict__ U,
                             const double* __restrict__ a, const double* __restrict__ cp,
                             const double* __restrict__ inv, const double* __restrict__ wx,
                             const double* __restrict__ wy, int n1, int n2, int i,
                             int ki_rows, int ki_cols, int ac_row, int ac_col, double ac_value)
{
    const int NY = n2 + 1;
    double* r0 = U + ((long)i * 2 + 0) * NY;  // not knocked in
    double* r1 = U + ((long)i * 2 + 1) * NY;  // knocked in
    double d0 = osm_rhs_y(Us, i, 0, 1, n1, n2, wx, wy) * inv[0];
    double d1 = osm_rhs_y(Us, i, 1, 1, n1, n2, wx, wy) * inv[0];
    r0[1] = d0;
    r1[1] = d1;
    for (int j = 2; j < n2; ++j) {
        const int k = j - 1;
        d0 = (osm_rhs_y(Us, i, 0, j, n1, n2, wx, wy) - a[k] * d0) * inv[k];
        d1 = (osm_rhs_y(Us, i, 1, j, n1, n2, wx, wy) - a[k] * d1) * inv[k];
        r0[j] = d0;
        r1[j] = d1;
    }
    double x0 = d0, x1 = d1;
    for (int j = n2 - 2; j >= 1; --j) {
        x0 = r0[j] - cp[j - 1] * x0;
        x1 = r1[j] - cp[j - 1] * x1;
        r0[j] = x0;
        r1[j] = x1;
    }
    r0[0] = 2.0 * r0[1] - r0[2];
    r1[0] = 2.0 * r1[1] - r1[2];
    r0[n2] = 2.0 * r0[n2 - 1] - r0[n2 - 2];
    r1[n2] = 2.0 * r1[n2 - 1] - r1[n2 - 2];
    if (ac_row >= 0 && i >= ac_row) {  // autocall: W >= K on both grids
        for (int j = ac_col; j <= n2; ++j) {
            r0[j] = ac_value;
            r1[j] = ac_value;
        }
    }
    const int upto = (i < ki_rows) ? n2 + 1 : ki_cols;  // knock-in: W < KI
    for (int j = 0; j < upto; ++j)
        r0[j] = r1[j];
}

extern "C" __global__ void osm_x_sweep(const double* __restrict__ U, double* __restrict__ Us,
                                       const double* __restrict__ a, const double* __restrict__ cp,
                                       const double* __restrict__ inv, const double* __restrict__ wx,
                                       const double* __restrict__ wy, int n1, int n2)
{
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const int NY = n2 + 1;
    if (t >= 2 * NY)
        return;
    const int g = t / NY;
    osm_x_line(U, Us, a, cp, inv, wx, wy, n1, n2, g, t - g * NY);
}

extern "C" __global__ void osm_y_sweep(const double* __restrict__ Us, double* __restrict__ U,
                                       const double* __restrict__ a, const double* __restrict__ cp,
                                       const double* __restrict__ inv, const double* __restrict__ wx,
                                       const double* __restrict__ wy, int n1, int n2,
                                       int ki_rows, int ki_cols, int ac_row, int ac_col, double ac_value)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i > n1)
        return;
    osm_y_row(Us, U, a, cp, inv, wx, wy, n1, n2, i, ki_rows, ki_cols, ac_row, ac_col, ac_value);
}
"""


@functools.lru_cache(maxsize=None)
def _kernels(device_id: int) -> tuple[Any, Any]:
    """Compile (NVRTC, cached by cupy on disk too) and return the two sweep kernels."""
    import cupy as cp

    module = cp.RawModule(code=CUDA_SOURCE, options=("--std=c++14",))
    return module.get_function("osm_x_sweep"), module.get_function("osm_y_sweep")


def march_gpu(s: Scheme) -> np.ndarray:
    """March ``s`` on the current CUDA device; returns the final ``U`` on the host.

    Everything is uploaded once; per step there are exactly two kernel launches with scalar
    arguments (the autocall event of that step rides along as ``ac_row/ac_col/ac_value``,
    ``ac_row = -1`` meaning none). Only the final grid comes back.
    """
    import cupy as cp

    x_sweep, y_sweep = _kernels(cp.cuda.Device().id)
    U = cp.asarray(np.ascontiguousarray(s.terminal))
    Us = cp.empty_like(U)
    ax, cpx, ix = (cp.asarray(v) for v in (s.fx.a, s.fx.cp, s.fx.inv))
    ay, cpy, iy = (cp.asarray(v) for v in (s.fy.a, s.fy.cp, s.fy.inv))
    wx, wy = cp.asarray(s.wx), cp.asarray(s.wy)
    n1, n2 = np.int32(s.n1), np.int32(s.n2)
    ki_rows, ki_cols = np.int32(s.ki_rows), np.int32(s.ki_cols)
    threads = (THREADS_PER_BLOCK,)
    grid_x = ((2 * (s.n2 + 1) + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK,)
    grid_y = ((s.n1 + 1 + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK,)
    no_event = (np.int32(-1), np.int32(0), np.float64(0.0))
    events = {m: (np.int32(r), np.int32(c), np.float64(v)) for m, (r, c, v) in s.events.items()}
    for m in range(1, s.nt + 1):
        x_sweep(grid_x, threads, (U, Us, ax, cpx, ix, wx, wy, n1, n2))
        ac_row, ac_col, ac_value = events.get(m, no_event)
        y_sweep(grid_y, threads, (Us, U, ay, cpy, iy, wx, wy, n1, n2, ki_rows, ki_cols, ac_row, ac_col, ac_value))
    return cp.asnumpy(U)
