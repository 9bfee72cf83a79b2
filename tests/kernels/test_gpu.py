"""The cupy/CUDA path on a real GPU. Every test here skips, saying why, where no CUDA device is present.

Timings are never asserted; bench/els.py reports them.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from kernels.els import create_sample_els, mc_price_els, price_els, price_els_batch
from kernels.els.greeks import vol_ladder
from kernels.els.fdm import march_cpu
from kernels.els.scheme import build_scheme
from tests.kernels.support import requires_gpu, standard_product

pytestmark = requires_gpu

CASES = [
    (create_sample_els(), (40, 40, 80)),
    (create_sample_els(), (100, 100, 200)),
    (create_sample_els(), (200, 200, 1080)),
    (create_sample_els().replace(spots=(100.0, 70.0)), (48, 36, 120)),
    (standard_product(), (200, 200, 1080)),
]


def test_xp_is_cupy_when_a_gpu_is_present(monkeypatch):
    import cupy

    from kernels.xp import get_xp

    monkeypatch.delenv("ORCH_DEVICE", raising=False)
    assert get_xp() is cupy
    monkeypatch.setenv("ORCH_DEVICE", "cpu")
    assert get_xp() is np


@functools.lru_cache(maxsize=None)
def thomas_grid(case: int) -> np.ndarray:
    """The CPU reference grid of CASES[case] (the Thomas march takes seconds at 200 x 200 x 1080; do it once)."""
    product, grid = CASES[case]
    return march_cpu(build_scheme(product, *grid), "thomas")


@pytest.mark.parametrize("graphs", [True, False])  # CUDA graph replay, and the direct launches it falls back to
@pytest.mark.parametrize("case", range(len(CASES)))
def test_gpu_grid_equals_the_cpu_grid_within_1e_10(case, graphs):
    from kernels.els.cuda import march_gpu

    product, grid = CASES[case]
    gpu = march_gpu(build_scheme(product, *grid), graphs=graphs)
    cpu = thomas_grid(case)
    assert np.abs(gpu - cpu).max() / np.abs(cpu).max() < 1e-10


@pytest.mark.parametrize("product, grid", CASES)
def test_gpu_price_and_greeks_equal_the_cpu_within_1e_10(product, grid):
    gpu = price_els(product, *grid, device="gpu")
    cpu = price_els(product, *grid, device="cpu")
    assert gpu.device == "gpu" and gpu.solver == "cuda-pcr" and gpu.device_name.startswith("gpu: ")
    assert gpu.price == pytest.approx(cpu.price, rel=1e-10)
    assert gpu.delta == pytest.approx(cpu.delta, rel=1e-8)
    assert gpu.gamma == pytest.approx(cpu.gamma, rel=1e-7)


def test_gpu_batch_equals_the_numpy_batch_and_single_pricings():
    from kernels.els.batch import Batch, march_batch_cpu
    from kernels.els.cuda import march_gpu_batch

    products = [p for p, _ in CASES] + [standard_product().replace(rho=-0.3, vols=(0.2, 0.4))]
    schemes = [build_scheme(p, 60, 52, 150) for p in products]
    bt = Batch.from_schemes(schemes)
    gpu, cpu = march_gpu_batch(bt), march_batch_cpu(bt)
    assert np.abs(gpu - cpu).max() / np.abs(cpu).max() < 1e-10
    singles = price_els_batch(products, 60, 52, 150, device="gpu")
    for p, r in zip(products, singles):
        assert r.solver == "cuda-pcr"
        assert r.price == pytest.approx(price_els(p, 60, 52, 150, device="cpu").price, rel=1e-10)


def test_gpu_batch_of_64_at_200x200x1080_prices_like_the_cpu():
    products = vol_ladder(create_sample_els(), 64)
    gpu = price_els_batch(products, 200, 200, 1080, device="gpu")
    for k in (0, 17, 63):
        assert gpu[k].price == pytest.approx(price_els(products[k], 200, 200, 1080, device="cpu").price, rel=1e-10)


def test_gpu_monte_carlo_agrees_with_the_cpu_within_standard_errors():
    p = create_sample_els()
    gpu = mc_price_els(p, paths=1_000_000, steps_per_year=360, seed=3, device="gpu")
    cpu = mc_price_els(p, paths=200_000, steps_per_year=360, seed=3, device="cpu")
    assert gpu.device == "gpu" and gpu.paths == 1_000_000
    assert abs(gpu.price - cpu.price) < 4 * np.hypot(gpu.stderr, cpu.stderr)


def test_gpu_monte_carlo_exact_limit():
    p = create_sample_els().replace(autocall_barriers=(0.0,) * 6)
    r = mc_price_els(p, paths=10_000, steps_per_year=12, seed=1, device="gpu")
    assert r.price == pytest.approx(p.face * 1.04 * np.exp(-p.rate * 0.5), rel=1e-12)


def test_probe_measures_the_gpu():
    from kernels.probe import run_probe

    r = run_probe(quick=True)
    assert r["gpu"]["name"] and r["gpu"]["matmul_gflops"]["fp64"] > 0 and r["comparison"]
