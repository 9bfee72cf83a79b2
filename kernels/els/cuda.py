"""GPU time loop for the OSM scheme: block-per-line PCR kernels, a batch axis, CUDA graphs.

Design (issue 18; docs/kernels.md has the measurements and the alternatives):

* The first CUDA loop ran one thread per line through the Thomas recurrence: ~400 threads on a
  132-SM part, each walking 400 dependent steps with L2-latency loads, ~190 us a step. Here a
  *thread block* owns a few lines, stages their right-hand sides in shared memory with coalesced
  loads, and solves them by parallel cyclic reduction (:mod:`kernels.els.pcr`): ``ceil(log2 n)``
  levels of three multiply-adds per unknown, one ``__syncthreads`` each.
* ``osm_x_tiles``: one block per ``tile`` neighbouring x-lines (flattened column ``t = g NY + j``,
  contiguous in memory) of one product. ``osm_y_rows``: one block per row ``i``, both value grids
  (two y-lines), then that row's autocall overwrite and knock-in switch. ``blockIdx.y`` is the
  product in a batch, so a batch of B pricings is the same two launches per step with B times the
  blocks.
* Every step's launches have the same arguments: the step number lives on the device
  (``osm_x_tiles``' first thread increments it, ``osm_y_rows`` reads it to find the autocall
  event), so a chunk of steps is captured once as a CUDA graph (cupy stream capture) and
  replayed; where capture is unavailable the same launches run directly.

The block functions are ``__host__ __device__`` and written as phases separated by
``OSM_SYNC()``, each phase a loop ``OSM_FOR(k, n)`` over independent work items. On the device a
thread takes items ``threadIdx.x, + blockDim.x, ...`` and ``OSM_SYNC`` is ``__syncthreads``; on the
host one caller runs each phase's loop in order, which is a legal schedule because no item of a
phase reads what another item of it writes. tests/kernels/test_cuda_source.py compiles the very
source cupy compiles as plain C++ (the CUDA keywords shimmed away) and runs the launch plan of
:func:`step_launches` on it, block by block, against numpy; only cupy's launch and graph calls
need a GPU to test.

Layout: ``U[((b * (n1 + 1) + i) * 2 + g) * (n2 + 1) + j]``, the numpy ``U[b, i, g, j]`` of
:class:`kernels.els.stacked.Batch`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from kernels.els.stacked import Batch
from kernels.els.product import ProductError
from kernels.els.scheme import Scheme

__all__ = ["CUDA_SOURCE", "SHARED_BYTES", "SOLVER", "Launch", "launch_shape", "march_gpu", "march_gpu_batch", "step_launches"]

SOLVER = "cuda-pcr"
SHARED_BYTES = 48 * 1024  #: dynamic shared memory a block may use without an opt-in, on every CUDA GPU
MAX_TILE = 4  #: x-lines per block: 4 neighbouring doubles are one 32-byte sector
GRAPH_STEPS = 64  #: time steps per captured CUDA graph (replayed nt // 64 times)

CUDA_SOURCE = r"""
// OSM sweeps for a batch of two-grid ELS schemes; see kernels/els/cuda.py for the design.
// U[((b * (n1 + 1) + i) * 2 + g) * NY + j], NY = n2 + 1; g = 0 (not knocked in), 1 (knocked in).
// No headers: NVRTC (cupy) has no host headers. nvcc builds the host side for the tests.
#define OSM_HD __host__ __device__
#ifdef __CUDA_ARCH__
#define OSM_T0 ((int)threadIdx.x)
#define OSM_TN ((int)blockDim.x)
#define OSM_SYNC() __syncthreads()
#else  // host build: one caller runs every phase's items in order (no item reads another's output)
#define OSM_T0 0
#define OSM_TN 1
#define OSM_SYNC() ((void)0)
#endif
#define OSM_FOR(k, n) for (int k = OSM_T0; k < (n); k += OSM_TN)

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

// PCR on `lines` lines of m unknowns staged in shared memory, ping-ponging between a and b:
// item k is unknown p = (k / es) % m of its line, and its level-s neighbours sit at k -+ s * es.
// co: L levels of (P, Q, R), each m long (kernels/els/pcr.py). Returns the buffer holding x.
OSM_HD inline double* osm_pcr(double* a, double* b, const double* __restrict__ co, int m, int L,
                              int lines, int es)
{
    for (int lev = 0; lev < L; ++lev) {
        const int s = 1 << lev;
        const double* P = co + (long)lev * 3 * m;
        const double* Q = P + m;
        const double* R = Q + m;
        OSM_FOR(k, m * lines) {
            const int p = (k / es) % m;
            double v = P[p] * a[k];
            if (p >= s)
                v += Q[p] * a[k - s * es];
            if (p + s < m)
                v += R[p] * a[k + s * es];
            b[k] = v;
        }
        OSM_SYNC();
        double* t = a; a = b; b = t;
    }
    return a;
}

// One block of the x-sweep: flattened columns t0 .. t0 + tile - 1 of product b's grid.
// sh: 2 * (n1 - 1) * tile doubles; item k = p * tile + c is row p + 1 of column t0 + c.
OSM_HD inline void osm_x_block(const double* __restrict__ U, double* __restrict__ Us,
                               const double* __restrict__ cx, const double* __restrict__ wx,
                               const double* __restrict__ wy, int n1, int n2, int Lx, int tile,
                               int b, int t0, int* step, double* sh)
{
    const int NY = n2 + 1, S = 2 * NY, m = n1 - 1;
    const long base = (long)b * (n1 + 1) * S;
    const double* u = U + base;
    double* us = Us + base;
    const double* wxb = wx + (long)b * (n1 + 1);
    const double* wyb = wy + (long)b * NY;
    const int width = (S - t0 < tile) ? S - t0 : tile;
    if (b == 0 && t0 == 0 && OSM_T0 == 0)
        *step += 1;  // the y-sweep of this step reads it (stream order); nothing here does
    OSM_FOR(k, m * tile) {
        const int c = k % tile, t = t0 + c;
        sh[k] = (c < width) ? osm_rhs_x(u, k / tile + 1, t / NY, t % NY, n2, wxb, wyb) : 0.0;
    }
    OSM_SYNC();
    const double* x = osm_pcr(sh, sh + m * tile, cx + (long)b * Lx * 3 * m, m, Lx, tile, tile);
    OSM_FOR(k, m * tile) {
        const int c = k % tile;
        if (c < width)
            us[(long)(k / tile + 1) * S + t0 + c] = x[k];
    }
    OSM_FOR(c, width) {
        us[t0 + c] = 2.0 * x[c] - x[tile + c];
        us[(long)n1 * S + t0 + c] = 2.0 * x[(m - 1) * tile + c] - x[(m - 2) * tile + c];
    }
}

// One block of the y-sweep: row i of both grids of product b, then autocall and knock-in.
// sh: 4 * (n2 - 1) doubles; item k = g * (n2 - 1) + (j - 1).
OSM_HD inline void osm_y_block(const double* __restrict__ Us, double* __restrict__ U,
                               const double* __restrict__ cy, const double* __restrict__ wx,
                               const double* __restrict__ wy, int n1, int n2, int Ly,
                               const int* __restrict__ ki_rows, const int* __restrict__ ki_cols,
                               const int* __restrict__ ev_row, const int* __restrict__ ev_col,
                               const double* __restrict__ ev_val, const int* step, int B,
                               int b, int i, double* sh)
{
    const int NY = n2 + 1, m = n2 - 1;
    const long base = (long)b * (n1 + 1) * 2 * NY;
    const double* wxb = wx + (long)b * (n1 + 1);
    const double* wyb = wy + (long)b * NY;
    OSM_FOR(k, 2 * m)
        sh[k] = osm_rhs_y(Us + base, i, k / m, k % m + 1, n1, n2, wxb, wyb);
    OSM_SYNC();
    const double* x = osm_pcr(sh, sh + 2 * m, cy + (long)b * Ly * 3 * m, m, Ly, 2, 1);
    const long e = (long)(*step) * B + b;
    const int ac_row = ev_row[e], ac_col = ev_col[e];
    const double ac_value = ev_val[e];
    const bool ki_row = i < ki_rows[b];
    const int ki_col = ki_cols[b];
    double* row = U + base + (long)i * 2 * NY;
    OSM_FOR(k, 2 * NY) {
        const int g = k / NY, j = k % NY;
        const int src = (g == 0 && (ki_row || j < ki_col)) ? 1 : g;  // knock-in: W < KI takes the KI grid
        const double* xs = x + src * m;
        double v = (j == 0) ? 2.0 * xs[0] - xs[1] : (j == n2) ? 2.0 * xs[m - 1] - xs[m - 2] : xs[j - 1];
        if (ac_row >= 0 && i >= ac_row && j >= ac_col)  // autocall: W >= K on both grids
            v = ac_value;
        row[k] = v;
    }
}

extern "C" __global__ void osm_x_tiles(const double* __restrict__ U, double* __restrict__ Us,
                                       const double* __restrict__ cx, const double* __restrict__ wx,
                                       const double* __restrict__ wy, int n1, int n2, int Lx, int tile,
                                       int* step)
{
    extern __shared__ double sh[];
    osm_x_block(U, Us, cx, wx, wy, n1, n2, Lx, tile, blockIdx.y, blockIdx.x * tile, step, sh);
}

extern "C" __global__ void osm_y_rows(const double* __restrict__ Us, double* __restrict__ U,
                                      const double* __restrict__ cy, const double* __restrict__ wx,
                                      const double* __restrict__ wy, int n1, int n2, int Ly,
                                      const int* __restrict__ ki_rows, const int* __restrict__ ki_cols,
                                      const int* __restrict__ ev_row, const int* __restrict__ ev_col,
                                      const double* __restrict__ ev_val, const int* step, int B)
{
    extern __shared__ double sh[];
    osm_y_block(Us, U, cy, wx, wy, n1, n2, Ly, ki_rows, ki_cols, ev_row, ev_col, ev_val, step, B,
                blockIdx.y, blockIdx.x, sh);
}
"""


def launch_shape(n1: int, n2: int, tile: int = MAX_TILE) -> dict[str, int]:
    """Tile width, blocks per product, threads and shared bytes of both kernels for one grid size.

    Args:
        tile: the most x-lines per block (fewer where they would not fit in shared memory);
            bench/els.py times 1, 2 and 4 to choose the default.

    Raises:
        ProductError: a line does not fit in a block's shared memory (``n2 > 1537``).
    """
    tile = min(int(tile), SHARED_BYTES // (16 * (n1 - 1)))
    y_bytes = 32 * (n2 - 1)
    if tile < 1 or y_bytes > SHARED_BYTES:  # (a tile argument < 1 lands here too)
        raise ProductError(
            f"grid {n1} x {n2}: the GPU path stages a line in {SHARED_BYTES // 1024} KB of shared memory, "
            f"so n1 and n2 must be <= {SHARED_BYTES // 32 + 1}; use device=cpu or a smaller grid"
        )
    x_work, y_work = (n1 - 1) * tile, 2 * (n2 - 1)
    return {
        "tile": tile,
        "x_blocks": -(-2 * (n2 + 1) // tile),
        "x_threads": 128 if x_work <= 512 else 256,
        "x_bytes": 16 * (n1 - 1) * tile,
        "y_blocks": n1 + 1,
        "y_threads": 128 if y_work <= 512 else 256,
        "y_bytes": y_bytes,
    }


@functools.lru_cache(maxsize=None)
def _kernels(device_id: int) -> dict[str, Any]:
    """Compile (NVRTC, cached by cupy on disk too) and return the two sweep kernels by name."""
    import cupy as cp

    module = cp.RawModule(code=CUDA_SOURCE, options=("--std=c++14",))
    return {name: module.get_function(name) for name in ("osm_x_tiles", "osm_y_rows")}


def _capture(stream: Any, steps: int, launch: Any) -> Any:
    """``steps`` time steps captured as one CUDA graph on ``stream``, or None where capture fails."""
    if steps <= 0 or not hasattr(stream, "begin_capture"):
        return None
    try:
        stream.begin_capture()
        try:
            for _ in range(steps):
                launch()
        finally:
            graph = stream.end_capture()
    except Exception:  # an old cupy/driver, or capture refused: the direct launches do the same work
        return None
    return graph


@dataclass(frozen=True)
class Launch:
    """One kernel launch of a time step: which kernel, its grid, block, arguments and shared bytes."""

    kernel: str
    grid: tuple[int, int]
    block: tuple[int]
    args: tuple[Any, ...]
    shared_bytes: int


def step_launches(bt: Batch, xp: Any, tile: int = MAX_TILE) -> tuple[Any, tuple[Launch, Launch]]:
    """Upload ``bt`` with ``xp`` (cupy, or numpy for the host build) and plan one time step's launches.

    Returns:
        ``(U, launches)``: ``U`` is the array that holds the result after every step; running the
        two launches ``nt`` times in order marches the batch. The tests run the very same plan on
        the host build of :data:`CUDA_SOURCE`, so the arguments, grids and shared-memory sizes are
        checked without a GPU.
    """
    shape = launch_shape(bt.n1, bt.n2, tile)
    U = xp.array(bt.U)  # a copy: the march overwrites it
    Us = xp.empty_like(U)
    cx, cy, wx, wy, ki_rows, ki_cols, ev_row, ev_col, ev_val = (
        xp.asarray(v) for v in (bt.cx, bt.cy, bt.wx, bt.wy, bt.ki_rows, bt.ki_cols, bt.ev_row, bt.ev_col, bt.ev_val)
    )
    step = xp.zeros(1, dtype=np.int32)
    i32 = np.int32
    n1, n2, B = i32(bt.n1), i32(bt.n2), i32(bt.size)
    Lx, Ly, tile = i32(bt.cx.shape[1]), i32(bt.cy.shape[1]), i32(shape["tile"])
    x = Launch("osm_x_tiles", (shape["x_blocks"], bt.size), (shape["x_threads"],),
               (U, Us, cx, wx, wy, n1, n2, Lx, tile, step), shape["x_bytes"])
    y = Launch("osm_y_rows", (shape["y_blocks"], bt.size), (shape["y_threads"],),
               (Us, U, cy, wx, wy, n1, n2, Ly, ki_rows, ki_cols, ev_row, ev_col, ev_val, step, B), shape["y_bytes"])
    return U, (x, y)


def march_gpu_batch(batch: Batch, graphs: bool = True, tile: int = MAX_TILE) -> np.ndarray:
    """March every scheme of ``batch`` on the current CUDA device; returns ``U`` on the host.

    Everything is uploaded once and only the final grids come back. Per step there are two
    launches with unchanging arguments; with ``graphs`` they are captured in chunks of
    :data:`GRAPH_STEPS` steps and replayed (one graph launch per chunk instead of 128 kernel
    launches), falling back to direct launches where capture is unavailable.
    """
    import cupy as cp

    bt = batch
    kernels = _kernels(cp.cuda.Device().id)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        U, launches = step_launches(bt, cp, tile)

        def one_step() -> None:
            for ln in launches:
                kernels[ln.kernel](ln.grid, ln.block, ln.args, shared_mem=ln.shared_bytes)

        chunk = min(GRAPH_STEPS, bt.nt)
        full, rest = divmod(bt.nt, chunk)
        g_full = _capture(stream, chunk, one_step) if graphs else None
        g_rest = _capture(stream, rest, one_step) if g_full is not None else None
        for _ in range(full):
            if g_full is not None:
                g_full.launch(stream)
            else:
                for _ in range(chunk):
                    one_step()
        if g_rest is not None:
            g_rest.launch(stream)
        else:
            for _ in range(rest):
                one_step()
        out = cp.asnumpy(U, stream=stream)
        stream.synchronize()
    return out


def march_gpu(s: Scheme, graphs: bool = True, tile: int = MAX_TILE) -> np.ndarray:
    """March one scheme on the GPU (a batch of one); returns the final ``U``, ``s.shape``."""
    return march_gpu_batch(Batch.from_schemes([s]), graphs=graphs, tile=tile)[0]
