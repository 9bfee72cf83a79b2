"""Fixtures for the kernel tests (helpers live in ``tests/kernels/support.py``)."""

from __future__ import annotations

import pytest

from kernels.els import ELSProduct, create_sample_els
from tests.kernels.support import standard_product


@pytest.fixture
def sample() -> ELSProduct:
    """Product B: the public pricer's sample product."""
    return create_sample_els()


@pytest.fixture
def product_a() -> ELSProduct:
    """Product A: a standard 3-year step-down (face 10,000, KI 60 %)."""
    return standard_product()
