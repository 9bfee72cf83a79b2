"""A two-asset worst-of step-down ELS and the Black–Scholes model it is priced under.

Payoff (both pricers implement exactly this; docs/kernels.md has the details):

* worst performer ``W(t) = min(S1(t)/S1(0), S2(t)/S2(0))``, face value ``F``;
* at observation date ``t_i`` (not the last), if not yet redeemed and ``W(t_i) >= K_i``, pay
  ``F * (1 + c_i)`` and stop; coupons ``c_i`` are cumulative (``c_i = i * per-period coupon``);
* knock-in is the event ``W < KI`` on *any* monitored time step, maturity included;
* at maturity ``T``: ``W(T) >= K_last`` pays ``F * (1 + c_last)``; otherwise no knock-in ever pays
  ``F * (1 + dummy)``; otherwise ``F * W(T)``;
* risk-neutral GBM with drift ``r - q_j``, constant correlation ``rho``, discounting at ``r``.

Barriers and coupons are fractions (``0.95`` is 95 %, ``0.04`` is 4 %).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["ELSProduct", "ProductError", "create_sample_els", "load_product", "load_products", "observation_steps"]


class ProductError(ValueError):
    """A product definition is invalid; the message names the source, the field and the fix."""


def _floats(name: str, value: Any, length: int | None = None) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ProductError(f"{name}: expected a list of numbers, got {value!r}")
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ProductError(f"{name}: expected a list of numbers, got {value!r}") from None
    if length is not None and len(out) != length:
        raise ProductError(f"{name}: expected {length} numbers, got {len(out)}")
    if not all(math.isfinite(v) for v in out):
        raise ProductError(f"{name}: numbers must be finite, got {list(out)}")
    return out


def _float(name: str, value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ProductError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ProductError(f"{name}: expected a finite number, got {value!r}")
    return out


@dataclass(frozen=True)
class ELSProduct:
    """One two-asset step-down ELS together with its market model.

    Attributes:
        maturity: ``T`` in years.
        observation_times: early-redemption dates in years, increasing, the last equal to ``T``.
        autocall_barriers: ``K_i`` on the worst performer, one per observation date.
        coupons: cumulative coupons ``c_i`` paid as ``F * (1 + c_i)``, one per observation date.
        dummy_coupon: paid at maturity as ``F * (1 + dummy)`` when knock-in never happened.
        knock_in: ``KI``; monitored at every time step (``W < KI``). ``0`` disables it.
        vols: ``(sigma1, sigma2)``.
        rho: correlation of the two Brownian motions.
        rate: continuously compounded risk-free rate ``r``.
        dividends: ``(q1, q2)`` continuous dividend yields.
        face: face value ``F``.
        spots: reference (and current) levels ``(S1(0), S2(0))``.
    """

    maturity: float
    observation_times: tuple[float, ...]
    autocall_barriers: tuple[float, ...]
    coupons: tuple[float, ...]
    dummy_coupon: float
    knock_in: float
    vols: tuple[float, float]
    rho: float
    rate: float
    dividends: tuple[float, float] = (0.0, 0.0)
    face: float = 100.0
    spots: tuple[float, float] = field(default=(100.0, 100.0))

    def __post_init__(self) -> None:
        # Normalise lists from YAML/JSON into tuples so the product stays hashable and immutable.
        set_ = object.__setattr__
        set_(self, "maturity", _float("maturity", self.maturity))
        set_(self, "observation_times", _floats("observation_times", self.observation_times))
        n = len(self.observation_times)
        set_(self, "autocall_barriers", _floats("autocall_barriers", self.autocall_barriers, n))
        set_(self, "coupons", _floats("coupons", self.coupons, n))
        for name in ("dummy_coupon", "knock_in", "rho", "rate", "face"):
            set_(self, name, _float(name, getattr(self, name)))
        for name in ("vols", "dividends", "spots"):
            set_(self, name, _floats(name, getattr(self, name), 2))
        self._validate()

    def _validate(self) -> None:
        times = self.observation_times
        if self.maturity <= 0:
            raise ProductError(f"maturity: must be positive, got {self.maturity}")
        if not times:
            raise ProductError("observation_times: at least one date (the maturity) is required")
        if any(t <= 0 for t in times) or any(b <= a for a, b in zip(times, times[1:])):
            raise ProductError(f"observation_times: must be positive and strictly increasing, got {list(times)}")
        if abs(times[-1] - self.maturity) > 1e-9 * self.maturity:
            raise ProductError(f"observation_times: the last date must equal maturity {self.maturity}, got {times[-1]}")
        if any(k < 0 for k in self.autocall_barriers):
            raise ProductError(f"autocall_barriers: must be >= 0, got {list(self.autocall_barriers)}")
        if self.knock_in < 0:
            raise ProductError(f"knock_in: must be >= 0 (0 disables knock-in), got {self.knock_in}")
        if any(v <= 0 for v in self.vols):
            raise ProductError(f"vols: must be positive, got {list(self.vols)}")
        if not -1.0 <= self.rho <= 1.0:
            raise ProductError(f"rho: must lie in [-1, 1], got {self.rho}")
        if self.face <= 0:
            raise ProductError(f"face: must be positive, got {self.face}")
        if any(s <= 0 for s in self.spots):
            raise ProductError(f"spots: must be positive, got {list(self.spots)}")

    # -- conversions -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "product") -> "ELSProduct":
        """Build a product from a mapping (parsed YAML/JSON), naming ``source`` in every error.

        Raises:
            ProductError: ``"<source>: <field>: <problem>"`` for unknown, missing or bad fields.
        """
        if not isinstance(data, Mapping):
            raise ProductError(f"{source}: expected a mapping of product fields, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ProductError(f"{source}: unknown field {unknown[0]!r}; expected some of {', '.join(names)}")
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            raise ProductError(f"{source}: missing field {missing[0]!r} (required: {', '.join(required)})")
        try:
            return cls(**dict(data))
        except ProductError as exc:
            raise ProductError(f"{source}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready fields (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def swap_assets(self) -> "ELSProduct":
        """The same product with asset 1 and asset 2 exchanged (the price must not change)."""
        flip = lambda pair: (pair[1], pair[0])  # noqa: E731
        return dataclasses.replace(self, vols=flip(self.vols), dividends=flip(self.dividends), spots=flip(self.spots))

    def replace(self, **changes: Any) -> "ELSProduct":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def barrier_levels(self) -> tuple[float, ...]:
        """Every level of ``W`` at which the payoff or the monitoring switches (``KI`` and ``K_i``)."""
        return tuple(sorted({self.knock_in, *self.autocall_barriers}))


def observation_steps(product: ELSProduct, n_steps: int) -> tuple[int, ...]:
    """The time step (counted forward from ``t = 0``, 1..n_steps) each observation date falls on.

    Dates are rounded to the nearest step (half up), the rule both the FDM and the MC pricer use so
    that their monitoring is matched. The last date is always ``n_steps``.

    Raises:
        ProductError: two dates land on the same step (too few steps for the schedule).
    """
    T = product.maturity
    steps = tuple(max(1, min(n_steps, int(math.floor(t / T * n_steps + 0.5)))) for t in product.observation_times)
    if len(set(steps)) != len(steps):
        raise ProductError(
            f"time steps: {n_steps} steps cannot separate {len(steps)} observation dates; use more steps"
        )
    return steps


def create_sample_els() -> ELSProduct:
    """The sample product of the public pricer this workload came from ("product B" in docs/kernels.md).

    T = 3, semiannual observations, barriers 95/95/90/85/80/75 %, 4 % coupon per half-year
    (cumulative), dummy = last coupon, knock-in 50 %, sigma 0.25/0.30, rho 0.5, r 0.03,
    q 0.02/0.015, face 100.
    """
    return ELSProduct(
        maturity=3.0,
        observation_times=(0.5, 1.0, 1.5, 2.0, 2.5, 3.0),
        autocall_barriers=(0.95, 0.95, 0.90, 0.85, 0.80, 0.75),
        coupons=(0.04, 0.08, 0.12, 0.16, 0.20, 0.24),
        dummy_coupon=0.24,
        knock_in=0.50,
        vols=(0.25, 0.30),
        rho=0.5,
        rate=0.03,
        dividends=(0.02, 0.015),
        face=100.0,
        spots=(100.0, 100.0),
    )


def _read_yaml(path: str | Path) -> tuple[Path, Any]:
    """Parse a YAML file, turning every failure into one ProductError that names the file."""
    import yaml

    p = Path(path)
    try:
        return p, yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProductError(f"{p}: cannot read product file ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ProductError(f"{p}: not valid YAML{line}") from None


def load_product(path: str | Path) -> ELSProduct:
    """Load a product from a YAML file whose keys are :class:`ELSProduct` fields.

    Raises:
        ProductError: the file is missing, is not YAML, or a field is wrong; the message names the file.
    """
    p, data = _read_yaml(path)
    return ELSProduct.from_dict(data, source=str(p))


MAX_BATCH = 4096  #: products one batch file may hold (a cap on untrusted input, far above any real book)


def load_products(path: str | Path) -> list[ELSProduct]:
    """Load a YAML *list* of products (each a mapping of :class:`ELSProduct` fields) for a batch.

    Raises:
        ProductError: not a non-empty list (of at most :data:`MAX_BATCH`), or a bad entry; the
            message names the file and the entry (``FILE: [3]: rho: ...``).
    """
    p, data = _read_yaml(path)
    if not isinstance(data, list) or not data:
        raise ProductError(f"{p}: expected a non-empty YAML list of products (one mapping of product fields per entry)")
    if len(data) > MAX_BATCH:
        raise ProductError(f"{p}: {len(data)} products; a batch file holds at most {MAX_BATCH}, split it")
    return [ELSProduct.from_dict(d, source=f"{p}: [{k}]") for k, d in enumerate(data)]
