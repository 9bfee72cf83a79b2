"""Two-asset worst-of step-down ELS pricing: OSM finite differences (CPU/GPU) and Monte Carlo.

    from kernels.els import create_sample_els, price_els, mc_price_els
    product = create_sample_els()
    price_els(product, n1=200, n2=200, nt=1080).price
    price_els_batch([product, product.replace(rho=0.3)], n1=200, n2=200, nt=1080)  # one time loop
    mc_price_els(product, paths=1_000_000, steps_per_year=360, seed=1).price

The maths, and why the public pricer this replaces is wrong, are in docs/kernels.md.
"""

from kernels.els.batch import price_els_batch
from kernels.els.fdm import ELSResult, price_els
from kernels.els.greeks import price_els_greeks
from kernels.els.mc import MCResult, mc_price_els
from kernels.els.product import ELSProduct, ProductError, create_sample_els, load_product, load_products

__all__ = [
    "ELSProduct",
    "ELSResult",
    "MCResult",
    "ProductError",
    "create_sample_els",
    "load_product",
    "load_products",
    "mc_price_els",
    "price_els",
    "price_els_batch",
    "price_els_greeks",
]
