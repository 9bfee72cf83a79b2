"""kernels.els.product: the product definition, YAML loading and the observation schedule."""

from __future__ import annotations

from pathlib import Path

import pytest

import kernels.els
from kernels.els import ELSProduct, ProductError, create_sample_els, load_product
from kernels.els.product import observation_steps

yaml = pytest.importorskip("yaml")  # the GPU check machine has only cupy, numpy and pytest

SAMPLE_YAML = Path(kernels.els.__file__).with_name("sample.yaml")


def test_sample_product_matches_the_issue():
    p = create_sample_els()
    assert p.maturity == 3.0 and p.observation_times == (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
    assert p.autocall_barriers == (0.95, 0.95, 0.90, 0.85, 0.80, 0.75)
    assert p.coupons == pytest.approx((0.04, 0.08, 0.12, 0.16, 0.20, 0.24))
    assert p.dummy_coupon == p.coupons[-1] and p.knock_in == 0.5
    assert (p.vols, p.rho, p.rate, p.dividends, p.face) == ((0.25, 0.30), 0.5, 0.03, (0.02, 0.015), 100.0)


def test_sample_yaml_is_the_sample_product():
    assert load_product(SAMPLE_YAML) == create_sample_els()


def test_yaml_round_trip(tmp_path):
    p = create_sample_els().replace(rho=0.3, face=10_000.0)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(p.to_dict()))
    assert load_product(path) == p


@pytest.mark.parametrize(
    "change, message",
    [
        ({"vol": [0.2, 0.2]}, "unknown field 'vol'"),
        ({"coupons": [0.04, 0.08]}, "coupons: expected 6 numbers, got 2"),
        ({"vols": [0.25, -0.3]}, "vols: must be positive"),
        ({"rho": 1.5}, "rho: must lie in [-1, 1]"),
        ({"observation_times": [0.5, 1.0, 1.5, 2.0, 2.5, 2.9]}, "the last date must equal maturity"),
        ({"knock_in": "half"}, "knock_in: expected a number"),
    ],
)
def test_bad_yaml_fields_name_the_file_and_the_field(tmp_path, change, message):
    data = {**create_sample_els().to_dict(), **change}
    if "vol" in change:
        data.pop("vols")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ProductError) as err:
        load_product(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_missing_field_and_missing_file_and_broken_yaml(tmp_path):
    data = create_sample_els().to_dict()
    del data["knock_in"]
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ProductError, match="missing field 'knock_in'"):
        load_product(tmp_path / "a.yaml")
    with pytest.raises(ProductError, match="cannot read product file"):
        load_product(tmp_path / "nope.yaml")
    (tmp_path / "b.yaml").write_text("maturity: [1, 2\n")
    with pytest.raises(ProductError, match="not valid YAML"):
        load_product(tmp_path / "b.yaml")


def test_observation_steps_round_to_the_nearest_step():
    p = create_sample_els()
    assert observation_steps(p, 1080) == (180, 360, 540, 720, 900, 1080)
    assert observation_steps(p, 200) == (33, 67, 100, 133, 167, 200)  # 33.3, 66.7, ...


def test_too_few_steps_for_the_dates_is_an_error():
    with pytest.raises(ProductError, match="cannot separate 6 observation dates"):
        observation_steps(create_sample_els(), 4)


def test_swap_assets_swaps_every_per_asset_field():
    p = create_sample_els().replace(spots=(100.0, 50.0))
    q = p.swap_assets()
    assert (q.vols, q.dividends, q.spots) == ((0.30, 0.25), (0.015, 0.02), (50.0, 100.0))
    assert q.swap_assets() == p


def test_products_are_immutable_and_hashable():
    p = create_sample_els()
    with pytest.raises(Exception):
        p.rho = 0.1  # type: ignore[misc]
    assert hash(p) == hash(create_sample_els())
    assert isinstance(ELSProduct.from_dict(p.to_dict()), ELSProduct)
