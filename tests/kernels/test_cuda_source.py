"""The CUDA source, checked without a GPU: it compiles for the GPUs orch targets, and the very same
source, compiled as plain C++ with a few shims, marches a batch of schemes to the numpy result when
driven by the launch plan the GPU code uses (kernels.els.cuda.step_launches).

The shims make the CUDA keywords empty, give ``blockIdx`` a host variable and ``extern __shared__``
a host array; outside ``__CUDA_ARCH__`` the source's ``OSM_FOR`` runs each phase of a block in
order and ``OSM_SYNC`` is a no-op (see kernels/els/cuda.py). So this checks the kernels' maths,
shared-memory indexing, PCR levels, boundaries, autocall and knock-in, the device-side step counter,
the ``__global__`` wrappers' block indices and the launch plan's arguments, grids and shared sizes.
What it cannot check: NVRTC inside cupy, thread-level races, and the graph capture;
tests/kernels/test_gpu.py covers those on a machine with a GPU.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from kernels.els import create_sample_els
from kernels.els.batch import Batch, march_batch_cpu
from kernels.els.cuda import CUDA_SOURCE, launch_shape, step_launches
from kernels.els.fdm import march_cpu
from kernels.els.product import ProductError
from kernels.els.scheme import NK, build_scheme, read_out
from tests.kernels.support import requires_nvcc, standard_product

SHARED_DOUBLES = 1 << 13  # 64 KB, more than any block may use (48 KB)

HOST_SHIMS = f"""
// Host shims: the CUDA keywords the source uses, for a plain C++ compiler.
#define __host__
#define __device__
#define __global__
#define __shared__
struct osm_dim3 {{ unsigned x, y, z; }};
static osm_dim3 blockIdx;
double sh[{SHARED_DOUBLES}];  // what `extern __shared__ double sh[]` names on the host
extern "C" void osm_set_block(unsigned x, unsigned y) {{ blockIdx.x = x; blockIdx.y = y; }}
"""


def nvcc(*args: str, cwd) -> None:
    run = subprocess.run(["nvcc", *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr


@requires_nvcc
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
    """The CUDA source compiled as C++ for the host into a shared library."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++) on PATH")
    d = tmp_path_factory.mktemp("osm")
    (d / "osm.cpp").write_text(HOST_SHIMS + CUDA_SOURCE)
    run = subprocess.run([cxx, "-std=c++14", "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o", "libosm.so", "osm.cpp"],
                         cwd=d, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return ctypes.CDLL(str(d / "libosm.so"))


def c_arg(a):
    """A launch argument as ctypes passes it: arrays by pointer, numpy scalars by value."""
    if isinstance(a, np.ndarray):
        return ctypes.c_void_p(a.ctypes.data)
    return ctypes.c_int(int(a)) if isinstance(a, np.int32) else ctypes.c_double(float(a))


def march_with_cuda_source(lib, bt: Batch, tile: int = 4) -> np.ndarray:
    """kernels.els.cuda.march_gpu_batch's time loop, each launch's blocks run one after another."""
    U, launches = step_launches(bt, np, tile)
    for ln in launches:
        assert ln.shared_bytes <= 48 * 1024 and ln.block[0] % 32 == 0
    plan = [(getattr(lib, ln.kernel), ln.grid, [c_arg(a) for a in ln.args]) for ln in launches]
    for _ in range(bt.nt):
        for kernel, (gx, gy), args in plan:
            for by in range(gy):
                for bx in range(gx):
                    lib.osm_set_block(bx, by)
                    kernel(*args)
    step = launches[0].args[-1]
    assert step[0] == bt.nt  # the device-side step counter advanced once per step
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


@pytest.mark.parametrize("tile", [1, 3, 8])  # the widths bench/els.py times, and one that leaves ragged tiles
def test_every_x_tile_width_gives_the_same_march(host_kernels, tile):
    schemes = [build_scheme(p, 30, 26, 50) for p in PRODUCTS[:2]]
    bt = Batch.from_schemes(schemes)
    ref = march_batch_cpu(bt)
    assert np.abs(march_with_cuda_source(host_kernels, bt, tile) - ref).max() < 1e-12 * np.abs(ref).max()


def test_launch_shape_keeps_lines_in_48_kb_of_shared_memory():
    assert launch_shape(200, 200)["tile"] == 4 and launch_shape(200, 200)["x_blocks"] == 101
    big = launch_shape(1500, 1500)
    assert big["tile"] == 2 and big["x_bytes"] <= 48 * 1024 and big["y_bytes"] <= 48 * 1024
    with pytest.raises(ProductError, match="use device=cpu or a smaller grid"):
        launch_shape(200, 2000)
