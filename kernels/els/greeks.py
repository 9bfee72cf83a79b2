"""Bump-and-reprice sensitivities priced as one batch: vega per asset, rate rho, correlation.

Why a batch: each sensitivity is two more pricings of the same size; on a GPU the nine pricings
of :func:`price_els_greeks` cost about what one does (:mod:`kernels.els.batch`). Delta and gamma
come from the base grid itself (:func:`kernels.els.scheme.read_out`), no bump needed.
Central differences with absolute bumps; every bumped pricing has its own grid placement and
line matrices, so the bumps are exact re-pricings, not perturbations of one grid.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels.els.batch import price_els_batch
from kernels.els.product import ELSProduct

__all__ = ["BUMPS", "bump_set", "price_els_greeks", "vol_ladder"]

#: parameter -> absolute bump (vols and correlation by 0.01, the rate by one basis point)
BUMPS = {"vol1": 0.01, "vol2": 0.01, "rate": 1e-4, "rho": 0.01}


def _bumped(p: ELSProduct, name: str, h: float) -> ELSProduct:
    if name == "vol1":
        return p.replace(vols=(p.vols[0] + h, p.vols[1]))
    if name == "vol2":
        return p.replace(vols=(p.vols[0], p.vols[1] + h))
    return p.replace(**{name: getattr(p, name) + h})


def bump_set(product: ELSProduct) -> list[tuple[str, ELSProduct]]:
    """The base product, then an up and a down copy per entry of :data:`BUMPS` (9 in all).

    Raises:
        kernels.els.product.ProductError: a bump leaves the valid range (e.g. ``rho`` within 0.01 of 1).
    """
    out = [("base", product)]
    for name, h in BUMPS.items():
        out += [(f"{name}+", _bumped(product, name, h)), (f"{name}-", _bumped(product, name, -h))]
    return out


def price_els_greeks(product: ELSProduct, n1: int, n2: int, nt: int, device: str = "auto") -> dict[str, Any]:
    """Price and every sensitivity of ``product`` from one batch of 9 pricings.

    Returns:
        ``price``, ``delta``, ``gamma`` (per asset, from the base grid), ``vega`` (``dP/dsigma``
        per asset), ``rate_rho`` (``dP/dr``), ``correlation`` (``dP/drho``), ``bumps``, and
        ``seconds`` (wall time of the whole batch) and ``device_name``.
    """
    names = bump_set(product)
    res = dict(zip((n for n, _ in names), price_els_batch([p for _, p in names], n1, n2, nt, device=device)))

    def slope(name: str) -> float:
        return (res[f"{name}+"].price - res[f"{name}-"].price) / (2.0 * BUMPS[name])

    base = res["base"]
    return {
        "price": base.price,
        "delta": list(base.delta),
        "gamma": list(base.gamma),
        "vega": [slope("vol1"), slope("vol2")],
        "rate_rho": slope("rate"),
        "correlation": slope("rho"),
        "bumps": dict(BUMPS),
        "pricings": len(names),
        "seconds": base.seconds * len(names),
        "device_name": base.device_name,
        "solver": base.solver,
    }


def vol_ladder(product: ELSProduct, count: int, spread: float = 0.2) -> list[ELSProduct]:
    """``count`` copies of ``product`` with both vols scaled from ``1 - spread`` to ``1 + spread`` (a vega ladder)."""
    return [product.replace(vols=tuple(v * f for v in product.vols)) for f in np.linspace(1 - spread, 1 + spread, count)]
