"""The CUDA source, checked without a GPU: it compiles for the GPUs orch targets, and the very same
block functions, compiled for the host by nvcc, march a batch of schemes to the numpy result.

The host build runs each ``OSM_FOR`` phase of a block in order and ``OSM_SYNC`` is a no-op (see
kernels/els/cuda.py), so what this checks is the block's maths, its shared-memory indexing, the
PCR levels, the boundary, autocall and knock-in handling and the device-side step counter.
What it cannot check: the ``__global__`` wrappers' block indices and the cupy launch and graph
code; tests/kernels/test_gpu.py covers those on a machine with a GPU.
"""

from __future__ import annotations

import ctypes
import subprocess

import numpy as np
import pytest

from kernels.els import create_sample_els
from kernels.els.batch import Batch, march_batch_cpu
from kernels.els.cuda import CUDA_SOURCE, launch_shape
from kernels.els.fdm import march_cpu
from kernels.els.product import ProductError
from kernels.els.scheme import NK, build_scheme, read_out
from tests.kernels.support import requires_nvcc, standard_product

pytestmark = requires_nvcc

HARNESS = r"""
#include "osm.cu"
// What the blocks of osm_x_tiles / osm_y_rows do, one block after another.
extern "C" void host_x_sweep(const double* U, double* Us, const double* cx, const double* wx, const double* wy,
                             int n1, int n2, int Lx, int tile, int B, int* step, double* sh)
{
    for (int b = 0; b < B; ++b)
        for (int t0 = 0; t0 < 2 * (n2 + 1); t0 += tile)
            osm_x_block(U, Us, cx, wx, wy, n1, n2, Lx, tile, b, t0, step, sh);
}
extern "C" void host_y_sweep(const double* Us, double* U, const double* cy, const double* wx, const double* wy,
                             int n1, int n2, int Ly, const int* ki_rows, const int* ki_cols, const int* ev_row,
                             const int* ev_col, const double* ev_val, const int* step, int B, double* sh)
{
    for (int b = 0; b < B; ++b)
        for (int i = 0; i <= n1; ++i)
            osm_y_block(Us, U, cy, wx, wy, n1, n2, Ly, ki_rows, ki_cols, ev_row, ev_col, ev_val, step, B, b, i, sh);
}
"""


def nvcc(*args: str, cwd) -> None:
    run = subprocess.run(["nvcc", *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("arch", ["sm_60", "sm_75", "sm_90"])  # P100, T4 (Kaggle, Colab), H100/H200
def test_cuda_source_compiles(tmp_path, arch):
    assert "#include" not in CUDA_SOURCE  # NVRTC, which cupy uses, has no host headers
    (tmp_path / "osm.cu").write_text(CUDA_SOURCE)
    run = subprocess.run(["nvcc", "--list-gpu-arch"], capture_output=True, text=True, timeout=60)
    if f"compute_{arch[3:]}" not in run.stdout:
        pytest.skip(f"this nvcc cannot target {arch}")
    nvcc("--ptx", f"-arch={arch}", "-std=c++14", "-o", "osm.ptx", "osm.cu", cwd=tmp_path)
    ptx = (tmp_path / "osm.ptx").read_text()
    assert ".entry osm_x_tiles" in ptx and ".entry osm_y_rows" in ptx


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory):
    """The CUDA block functions compiled for the host into a shared library."""
    d = tmp_path_factory.mktemp("osm")
    (d / "osm.cu").write_text(CUDA_SOURCE)
    (d / "harness.cu").write_text(HARNESS)
    nvcc("-shared", "-Xcompiler", "-fPIC", "-std=c++14", "-o", "libosm.so", "harness.cu", cwd=d)
    lib = ctypes.CDLL(str(d / "libosm.so"))
    dp, ip, i = ctypes.POINTER(ctypes.c_double), ctypes.POINTER(ctypes.c_int32), ctypes.c_int
    lib.host_x_sweep.argtypes = [dp] * 5 + [i] * 5 + [ip, dp]
    lib.host_y_sweep.argtypes = [dp] * 5 + [i] * 3 + [ip] * 4 + [dp, ip, i, dp]
    return lib


def march_with_cuda_source(lib, bt: Batch) -> np.ndarray:
    """kernels.els.cuda.march_gpu_batch's time loop, with each launch run on the host."""
    def p(a):
        ctype = ctypes.c_int32 if a.dtype == np.int32 else ctypes.c_double
        return a.ctypes.data_as(ctypes.POINTER(ctype))

    shape = launch_shape(bt.n1, bt.n2)
    U = bt.U.copy()
    Us = np.empty_like(U)
    step = np.zeros(1, dtype=np.int32)
    sh = np.empty(max(shape["x_bytes"], shape["y_bytes"]) // 8)
    Lx, Ly = bt.cx.shape[1], bt.cy.shape[1]
    for _ in range(bt.nt):
        lib.host_x_sweep(p(U), p(Us), p(bt.cx), p(bt.wx), p(bt.wy), bt.n1, bt.n2, Lx, shape["tile"], bt.size, p(step), p(sh))
        lib.host_y_sweep(
            p(Us), p(U), p(bt.cy), p(bt.wx), p(bt.wy), bt.n1, bt.n2, Ly,
            p(bt.ki_rows), p(bt.ki_cols), p(bt.ev_row), p(bt.ev_col), p(bt.ev_val), p(step), bt.size, p(sh),
        )
    assert step[0] == bt.nt
    return U


PRODUCTS = [
    create_sample_els(),
    create_sample_els().replace(spots=(100.0, 70.0)),  # unequal spots: different axes per product
    standard_product(),
    create_sample_els().replace(vols=(0.35, 0.2), rho=-0.4, rate=0.05),
]


@pytest.mark.parametrize(
    "products, grid",
    [
        (PRODUCTS[:1], (40, 40, 80)),
        (PRODUCTS[1:2], (48, 36, 120)),  # non-square; 2 (36 + 1) columns is not a multiple of the tile
        (PRODUCTS[2:3], (100, 100, 200)),
        (PRODUCTS, (41, 30, 90)),  # a batch: every product its own dates, factors and regions
    ],
)
def test_cuda_block_functions_reproduce_the_cpu_march(host_kernels, products, grid):
    schemes = [build_scheme(p, *grid) for p in products]
    bt = Batch.from_schemes(schemes)
    gpu_algo = march_with_cuda_source(host_kernels, bt)
    numpy_batch = march_batch_cpu(bt)
    for b, s in enumerate(schemes):
        cpu = march_cpu(s, "thomas")
        scale = np.abs(cpu).max()
        assert np.abs(gpu_algo[b] - cpu).max() / scale < 1e-12
        assert np.abs(gpu_algo[b] - numpy_batch[b]).max() / scale < 1e-12
        assert read_out(s, gpu_algo[b, :, NK, :])[0] == pytest.approx(read_out(s, cpu[:, NK, :])[0], rel=1e-12)


def test_launch_shape_keeps_lines_in_48_kb_of_shared_memory():
    assert launch_shape(200, 200)["tile"] == 4 and launch_shape(200, 200)["x_blocks"] == 101
    big = launch_shape(1500, 1500)
    assert big["tile"] == 2 and big["x_bytes"] <= 48 * 1024 and big["y_bytes"] <= 48 * 1024
    with pytest.raises(ProductError, match="use device=cpu or a smaller grid"):
        launch_shape(200, 2000)
