"""Helpers for the kernel tests: reference products, an exact reference price, device skip markers."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from kernels.els import ELSProduct
from kernels.xp import gpu_status

_GPU_OK, _GPU_REASON = gpu_status()

#: Skip marker for tests that need a CUDA device; the reason says why there is none.
requires_gpu = pytest.mark.skipif(not _GPU_OK, reason=f"no CUDA GPU: {_GPU_REASON}")

#: Skip marker for tests that compile the CUDA source with nvcc.
requires_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")


def standard_product() -> ELSProduct:
    """Product A, a standard 3-year step-down: 90/90/85/85/80/80, 3 % a period, KI 60 %, no dividends, face 10,000."""
    return ELSProduct(
        maturity=3.0,
        observation_times=(0.5, 1.0, 1.5, 2.0, 2.5, 3.0),
        autocall_barriers=(0.90, 0.90, 0.85, 0.85, 0.80, 0.80),
        coupons=tuple(0.03 * i for i in range(1, 7)),
        dummy_coupon=0.18,
        knock_in=0.60,
        vols=(0.25, 0.30),
        rho=0.5,
        rate=0.03,
        dividends=(0.0, 0.0),
        face=10_000.0,
    )


def single_date_product(barrier: float = 0.8, coupon: float = 0.18) -> ELSProduct:
    """One observation at maturity and no knock-in: a worst-of digital with a closed form."""
    return standard_product().replace(
        observation_times=(3.0,), autocall_barriers=(barrier,), coupons=(coupon,), knock_in=0.0, dummy_coupon=0.0
    )


def both_above_probability(p: ELSProduct, barrier: float) -> float:
    """P(S1(T) >= K S1(0) and S2(T) >= K S2(0)) under the product's GBM, by Simpson's rule."""
    T = p.maturity
    a = [
        (math.log(barrier) - (p.rate - q - 0.5 * v * v) * T) / (v * math.sqrt(T))
        for q, v in zip(p.dividends, p.vols)
    ]
    r = p.rho
    z = np.linspace(a[0], a[0] + 14.0, 40_001)
    tail = np.array([0.5 * math.erfc((a[1] - r * zi) / math.sqrt(1.0 - r * r) / math.sqrt(2.0)) for zi in z])
    f = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi) * tail
    h = z[1] - z[0]
    return float(h / 3.0 * (f[0] + f[-1] + 4.0 * f[1:-1:2].sum() + 2.0 * f[2:-1:2].sum()))


def single_date_price(p: ELSProduct) -> float:
    """Exact price of :func:`single_date_product`."""
    prob = both_above_probability(p, p.autocall_barriers[0])
    pay_up, pay_down = p.face * (1.0 + p.coupons[0]), p.face * (1.0 + p.dummy_coupon)
    return math.exp(-p.rate * p.maturity) * (prob * pay_up + (1.0 - prob) * pay_down)
