"""kernels.els.mc: the Monte Carlo pricer."""

from __future__ import annotations

import math

import pytest

from kernels.els import ProductError, mc_price_els
from tests.kernels.support import single_date_price, single_date_product


def test_autocall_at_zero_redeems_every_path_at_the_first_date(sample):
    p = sample.replace(autocall_barriers=(0.0,) * 6)
    r = mc_price_els(p, paths=1000, steps_per_year=12, seed=1, device="cpu")
    assert r.price == pytest.approx(p.face * 1.04 * math.exp(-p.rate * 0.5), rel=1e-12)
    assert r.stderr == pytest.approx(0.0, abs=1e-9)


def test_no_knock_in_and_unreachable_autocalls_pay_the_dummy_coupon(sample):
    p = sample.replace(knock_in=0.0, autocall_barriers=(50.0,) * 6)
    r = mc_price_els(p, paths=1000, steps_per_year=12, seed=1, device="cpu")
    assert r.price == pytest.approx(p.face * 1.24 * math.exp(-p.rate * 3.0), rel=1e-12)


def test_worst_of_digital_matches_its_closed_form_within_four_standard_errors():
    p = single_date_product()
    r = mc_price_els(p, paths=200_000, steps_per_year=4, seed=11, device="cpu")
    assert abs(r.price - single_date_price(p)) < 4 * r.stderr


def test_same_seed_same_price_and_paths_round_up_to_pairs(sample):
    a = mc_price_els(sample, paths=2001, steps_per_year=52, seed=5, device="cpu")
    b = mc_price_els(sample, paths=2001, steps_per_year=52, seed=5, device="cpu")
    c = mc_price_els(sample, paths=2001, steps_per_year=52, seed=6, device="cpu")
    assert a.price == b.price and a.price != c.price
    assert (a.paths, a.steps) == (2002, 156)
    assert a.stderr > 0


def test_more_frequent_monitoring_knocks_in_more_often(sample):
    # Same paths' worth of noise, weekly vs daily: daily monitoring sees more knock-ins, so it is cheaper.
    weekly = mc_price_els(sample, paths=100_000, steps_per_year=52, seed=2, device="cpu")
    daily = mc_price_els(sample, paths=100_000, steps_per_year=360, seed=2, device="cpu")
    assert daily.price < weekly.price + 2 * weekly.stderr


def test_too_few_paths_or_steps_are_clear_errors(sample):
    with pytest.raises(ProductError, match="paths: need at least 2"):
        mc_price_els(sample, paths=1, device="cpu")
    with pytest.raises(ProductError, match="cannot separate"):
        mc_price_els(sample, paths=10, steps_per_year=1, device="cpu")
