"""kernels.els.fdm: the OSM finite-difference pricer on the CPU.

Reference values are exact limits, a closed form, symmetry and self-convergence; the comparison
with Monte Carlo lives in test_fdm_vs_mc.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from kernels.els import ProductError, price_els
from tests.kernels.support import single_date_price, single_date_product


def test_result_reports_price_greeks_grid_time_and_device(sample):
    r = price_els(sample, 40, 40, 80, device="cpu")
    assert 90 < r.price < 100
    assert all(np.isfinite(r.delta)) and all(np.isfinite(r.gamma))
    assert (r.n1, r.n2, r.nt, r.device, r.solver) == (40, 40, 80, "cpu", "blocks")
    assert r.seconds > 0 and r.device_name.startswith("cpu: ")
    assert set(r.as_dict()) >= {"price", "delta", "gamma", "n1", "n2", "nt", "seconds", "device"}


@pytest.mark.parametrize("nt", [200, 1080])
def test_no_knock_in_and_unreachable_autocalls_pay_the_dummy_coupon_discounted(sample, nt):
    p = sample.replace(knock_in=0.0, autocall_barriers=(10.0,) * 6)
    expected = p.face * (1 + p.dummy_coupon) * math.exp(-p.rate * p.maturity)
    # Each step discounts by (1 + r dt / 2)^-2, first order in dt: 1e-5 relative at nt = 200.
    assert price_els(p, 60, 60, nt, device="cpu").price == pytest.approx(expected, rel=2e-5)


@pytest.mark.parametrize("nt", [240, 1080])  # the first date (t = 0.5) falls exactly on a step
def test_autocall_barriers_at_zero_redeem_at_the_first_date(sample, nt):
    p = sample.replace(autocall_barriers=(0.0,) * 6)
    expected = p.face * (1 + p.coupons[0]) * math.exp(-p.rate * p.observation_times[0])
    assert price_els(p, 60, 60, nt, device="cpu").price == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("grid", [(100, 100, 200), (60, 80, 300), (200, 200, 1080)])
def test_swapping_the_assets_does_not_change_the_price(sample, product_a, grid):
    n1, n2, nt = grid
    for p in (sample, product_a):
        a = price_els(p, n1, n2, nt, device="cpu").price
        b = price_els(p.swap_assets(), n2, n1, nt, device="cpu").price
        # Only the order of the two implicit sweeps differs: an O(dt) splitting effect of ~1e-7.
        assert b == pytest.approx(a, rel=1e-6)


def test_swapping_the_assets_swaps_the_greeks(sample):
    a = price_els(sample, 80, 80, 150, device="cpu")
    b = price_els(sample.swap_assets(), 80, 80, 150, device="cpu")
    assert b.delta[::-1] == pytest.approx(a.delta, rel=1e-4)
    assert b.gamma[::-1] == pytest.approx(a.gamma, rel=1e-3)


@pytest.mark.parametrize("fixture", ["sample", "product_a"])
def test_differences_between_successive_refinements_shrink(fixture, request):
    p = request.getfixturevalue(fixture)
    prices = [price_els(p, n, n, nt, device="cpu").price for n, nt in ((40, 270), (80, 540), (160, 1080))]
    d1, d2 = abs(prices[1] - prices[0]), abs(prices[2] - prices[1])
    assert d2 < 0.7 * d1


def test_worst_of_digital_matches_its_closed_form():
    p = single_date_product()
    assert price_els(p, 200, 200, 540, device="cpu").price == pytest.approx(single_date_price(p), rel=5e-4)


def test_block_dense_and_thomas_solvers_agree(sample):
    prices = [price_els(sample, 64, 48, 120, device="cpu", solver=s).price for s in ("blocks", "dense", "thomas")]
    assert prices[1] == pytest.approx(prices[0], rel=1e-12)
    assert prices[2] == pytest.approx(prices[0], rel=1e-12)


def test_deltas_and_gammas_converge_with_the_grid(sample):
    coarse = price_els(sample, 100, 100, 540, device="cpu")
    fine = price_els(sample, 200, 200, 1080, device="cpu")
    assert all(d > 0 for d in fine.delta)  # the note gains when either asset rises
    assert fine.delta == pytest.approx(coarse.delta, rel=0.1)
    assert fine.gamma == pytest.approx(coarse.gamma, rel=0.2)


def test_unknown_solver_and_tiny_grids_are_clear_errors(sample):
    with pytest.raises(ValueError, match="solver='lu'"):
        price_els(sample, 40, 40, 80, device="cpu", solver="lu")
    with pytest.raises(ProductError, match="cannot separate 6 observation dates"):
        price_els(sample, 40, 40, 5, device="cpu")
