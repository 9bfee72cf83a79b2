"""The finite-difference pricer against our own Monte Carlo at matched monitoring (the issue's check).

No trustworthy published price exists for these products, so the FDM at 200 x 200 x 1080 is
compared with a 1,000,000-path antithetic MC that checks knock-in at the same 360 steps a year.
Observed with these seeds: the FDM is 0.14 % high on the sample product and 0.03 % on product A,
mostly from monitoring knock-in after each first-order implicit step (over one step it moves less
probability across the barrier than the exact Gaussian step); the gap shrinks with finer grids
and more steps (docs/kernels.md).
"""

from __future__ import annotations

import pytest

from kernels.els import create_sample_els, mc_price_els, price_els
from tests.kernels.support import standard_product

PRODUCTS = {"sample": create_sample_els, "product_a": standard_product}


@pytest.mark.parametrize("name", sorted(PRODUCTS))
def test_fdm_is_within_0_2_percent_of_a_million_path_mc(name):
    p = PRODUCTS[name]()
    nt = 1080
    fdm = price_els(p, 200, 200, nt, device="cpu")
    mc = mc_price_els(p, paths=1_000_000, steps_per_year=nt / p.maturity, seed=2024, device="cpu")
    assert mc.stderr / mc.price < 3e-4  # the comparison is meaningful at this tolerance
    assert abs(fdm.price - mc.price) / mc.price < 0.002, (fdm.price, mc.price, mc.stderr)


def test_coarse_grid_is_within_one_percent_of_matched_mc():
    p = create_sample_els()
    fdm = price_els(p, 100, 100, 200, device="cpu")
    mc = mc_price_els(p, paths=200_000, steps_per_year=200 / p.maturity, seed=7, device="cpu")
    # The public pricer's default grid: levels land a quarter cell off nodes and the time step is coarse.
    assert abs(fdm.price - mc.price) / mc.price < 0.01
