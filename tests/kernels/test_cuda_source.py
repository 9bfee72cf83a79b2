"""The CUDA source, checked without a GPU: it compiles for the GPUs orch targets, and the very same
line functions, compiled for the host by nvcc, march the scheme to the numpy Thomas result.

What this cannot check: the thread-index arithmetic of the two ``__global__`` wrappers and the
cupy launch code; tests/kernels/test_gpu.py covers those on a machine with a GPU.
"""

from __future__ import annotations

import ctypes
import subprocess

import numpy as np
import pytest

from kernels.els import create_sample_els
from kernels.els.cuda import CUDA_SOURCE
from kernels.els.fdm import march_cpu
from kernels.els.scheme import NK, build_scheme, read_out
from tests.kernels.support import requires_nvcc, standard_product

pytestmark = requires_nvcc

HARNESS = r"""
#include "osm.cu"
extern "C" void host_x_sweep(const double* U, double* Us, const double* a, const double* cp, const double* inv,
                             const double* wx, const double* wy, int n1, int n2)
{
    for (int t = 0; t < 2 * (n2 + 1); ++t)  // what the 2 (n2 + 1) threads of osm_x_sweep do
        osm_x_line(U, Us, a, cp, inv, wx, wy, n1, n2, t / (n2 + 1), t % (n2 + 1));
}
extern "C" void host_y_sweep(const double* Us, double* U, const double* a, const double* cp, const double* inv,
                             const double* wx, const double* wy, int n1, int n2,
                             int ki_rows, int ki_cols, int ac_row, int ac_col, double ac_value)
{
    for (int i = 0; i <= n1; ++i)  // what the n1 + 1 threads of osm_y_sweep do
        osm_y_row(Us, U, a, cp, inv, wx, wy, n1, n2, i, ki_rows, ki_cols, ac_row, ac_col, ac_value);
}
"""


def nvcc(*args: str, cwd) -> None:
    run = subprocess.run(["nvcc", *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("arch", ["sm_75", "sm_90"])  # T4 (Kaggle, Colab), H100
def test_cuda_source_compiles(tmp_path, arch):
    assert "#include" not in CUDA_SOURCE  # NVRTC, which cupy uses, has no host headers
    (tmp_path / "osm.cu").write_text(CUDA_SOURCE)
    nvcc("--ptx", f"-arch={arch}", "-std=c++14", "-o", "osm.ptx", "osm.cu", cwd=tmp_path)
    ptx = (tmp_path / "osm.ptx").read_text()
    assert ".entry osm_x_sweep" in ptx and ".entry osm_y_sweep" in ptx


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory):
    """The CUDA line functions compiled for the host into a shared library."""
    d = tmp_path_factory.mktemp("osm")
    (d / "osm.cu").write_text(CUDA_SOURCE)
    (d / "harness.cu").write_text(HARNESS)
    nvcc("-shared", "-Xcompiler", "-fPIC", "-std=c++14", "-o", "libosm.so", "harness.cu", cwd=d)
    lib = ctypes.CDLL(str(d / "libosm.so"))
    ptr = ctypes.POINTER(ctypes.c_double)
    lib.host_x_sweep.argtypes = [ptr] * 7 + [ctypes.c_int] * 2
    lib.host_y_sweep.argtypes = [ptr] * 7 + [ctypes.c_int] * 6 + [ctypes.c_double]
    return lib


def march_with_cuda_source(lib, s) -> np.ndarray:
    """The GPU's time loop (kernels.els.cuda.march_gpu), with each launch run on the host."""
    p = lambda a: a.ctypes.data_as(ctypes.POINTER(ctypes.c_double))  # noqa: E731
    U = np.ascontiguousarray(s.terminal.copy())
    Us = np.empty_like(U)
    fx = [np.ascontiguousarray(v) for v in (s.fx.a, s.fx.cp, s.fx.inv)]
    fy = [np.ascontiguousarray(v) for v in (s.fy.a, s.fy.cp, s.fy.inv)]
    wx, wy = np.ascontiguousarray(s.wx), np.ascontiguousarray(s.wy)
    for m in range(1, s.nt + 1):
        lib.host_x_sweep(p(U), p(Us), *map(p, fx), p(wx), p(wy), s.n1, s.n2)
        row, col, value = s.events.get(m, (-1, 0, 0.0))
        lib.host_y_sweep(p(Us), p(U), *map(p, fy), p(wx), p(wy), s.n1, s.n2, s.ki_rows, s.ki_cols, row, col, value)
    return U


@pytest.mark.parametrize(
    "product, grid",
    [
        (create_sample_els(), (40, 40, 80)),
        (create_sample_els().replace(spots=(100.0, 70.0)), (48, 36, 120)),  # non-square, unequal spots
        (standard_product(), (100, 100, 200)),
    ],
)
def test_cuda_line_functions_reproduce_the_cpu_march(host_kernels, product, grid):
    s = build_scheme(product, *grid)
    gpu_algo = march_with_cuda_source(host_kernels, s)
    cpu = march_cpu(s, "thomas")
    blocks = march_cpu(s, "blocks")
    scale = np.abs(cpu).max()
    assert np.abs(gpu_algo - cpu).max() / scale < 1e-12
    assert np.abs(gpu_algo - blocks).max() / scale < 1e-12
    assert read_out(s, gpu_algo[:, NK, :])[0] == pytest.approx(read_out(s, cpu[:, NK, :])[0], rel=1e-12)
