"""price_els_batch and the bumped Greeks on the CPU: a batch prices each product as a single pricing does."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.els import ProductError, create_sample_els, price_els, price_els_batch, price_els_greeks
from kernels.els.batch import Batch, march_batch_cpu
from kernels.els.fdm import march_cpu
from kernels.els.greeks import BUMPS, bump_set, vol_ladder
from kernels.els.scheme import build_scheme
from tests.kernels.support import standard_product

BOOK = [
    create_sample_els(),
    standard_product(),  # other dates, coupons, knock-in and face value
    create_sample_els().replace(spots=(100.0, 70.0), rho=-0.2),
    create_sample_els().replace(vols=(0.4, 0.15), rate=0.05, maturity=2.0, observation_times=(0.5, 1.0, 1.5, 2.0),
                                autocall_barriers=(0.9, 0.9, 0.85, 0.8), coupons=(0.05, 0.1, 0.15, 0.2), dummy_coupon=0.2),
]


@pytest.mark.parametrize("solver", ["pcr-batch", "blocks"])
@pytest.mark.parametrize("grid", [(40, 40, 80), (48, 36, 120)])
def test_a_batch_prices_every_product_as_a_single_pricing_does(grid, solver):
    batch = price_els_batch(BOOK, *grid, device="cpu", solver=solver)
    assert len(batch) == len(BOOK)
    for product, r in zip(BOOK, batch):
        one = price_els(product, *grid, device="cpu")
        assert (r.n1, r.n2, r.nt, r.solver, r.device) == (*grid, solver, "cpu")
        assert r.price == pytest.approx(one.price, rel=1e-10)
        assert r.delta == pytest.approx(one.delta, rel=1e-8)
        assert r.gamma == pytest.approx(one.gamma, rel=1e-7)


def test_the_numpy_batch_march_equals_the_thomas_march_of_each_product():
    schemes = [build_scheme(p, 36, 44, 100) for p in BOOK]
    U = march_batch_cpu(Batch.from_schemes(schemes))
    for b, s in enumerate(schemes):
        ref = march_cpu(s, "thomas")
        assert np.abs(U[b] - ref).max() < 1e-12 * np.abs(ref).max()


def test_batch_events_sit_at_each_products_own_steps():
    bt = Batch.from_schemes([build_scheme(p, 20, 20, 120) for p in BOOK])
    for b, p in enumerate(BOOK):
        assert int((bt.ev_row[:, b] >= 0).sum()) == len(p.observation_times) - 1
    assert bt.U.shape == (4, 21, 2, 21) and bt.cx.shape[0] == 4 and bt.U.flags.c_contiguous


def test_an_empty_batch_or_an_unknown_solver_is_a_clear_error():
    with pytest.raises(ProductError, match="batch: no products"):
        price_els_batch([], 20, 20, 40, device="cpu")
    with pytest.raises(ValueError, match="expected pcr-batch or one of blocks"):
        price_els_batch(BOOK, 20, 20, 40, device="cpu", solver="cuda")


def test_bumped_greeks_are_central_differences_of_single_pricings():
    p, grid = create_sample_els(), (30, 30, 60)
    g = price_els_greeks(p, *grid, device="cpu")
    assert g["pricings"] == 9 and g["price"] == pytest.approx(price_els(p, *grid, device="cpu").price, rel=1e-10)
    h = BUMPS["rho"]
    up, down = (price_els(p.replace(rho=p.rho + s * h), *grid, device="cpu").price for s in (1, -1))
    assert g["correlation"] == pytest.approx((up - down) / (2 * h), rel=1e-6)
    assert g["vega"][0] < 0 and g["vega"][1] < 0  # a worst-of note loses value with volatility
    assert g["correlation"] > 0


def test_a_bump_out_of_range_names_the_field():
    with pytest.raises(ProductError, match="rho"):
        bump_set(create_sample_els().replace(rho=0.995))


def test_vol_ladder_spans_the_spread():
    ladder = vol_ladder(create_sample_els(), 5)
    assert len(ladder) == 5 and ladder[0].vols[0] == pytest.approx(0.2) and ladder[-1].vols[1] == pytest.approx(0.36)
