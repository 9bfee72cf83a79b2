"""The discrete OSM scheme for one product and grid, shared by the CPU and GPU steppers.

Everything a stepper needs is computed here once, on the host, in float64: the grid (with every
barrier placed between nodes), the pre-factored line matrices, the cross-term weights, the
knock-in and autocall regions, and the terminal values. The steppers in :mod:`kernels.els.fdm`
(CPU) and :mod:`kernels.els.cuda` (GPU) only march it; :func:`read_out` turns the final grid into
price and Greeks, so both devices share every line of code except the time loop itself.

Scheme (docs/kernels.md), in ``tau = T - t``, value grids ``U[i, g, j]`` at ``x_i, y_j`` with ``g = NK``
(not yet knocked in) or ``g = KI`` (knocked in), one time step of size ``dt``:

1. x-sweep, implicit in x:  ``(I - dt Lx) u* = u + dt/2 Lxy u``  on every column ``j``;
2. y-sweep, implicit in y:  ``(I - dt Ly) u' = u* + dt/2 Lxy u*`` on every row ``i``;
3. at an observation step, ``u' := F (1 + c_i)`` where ``W >= K_i`` (both grids);
4. knock-in switch, ``u'_NK := u'_KI`` where ``W < KI`` (monitors every step).

``Lx = 1/2 s1^2 x^2 Dxx + (r - q1) x Dx - r/2`` (central differences), ``Ly`` likewise and
``Lxy = rho s1 s2 x y Dxy`` with the four-point cross stencil. Boundaries use linear
extrapolation (``u_0 = 2 u_1 - u_2``, ``u_N = 2 u_{N-1} - u_{N-2}``), folded into the first and
last rows of each line matrix and re-applied after each sweep. Extrapolating a boundary *column*
of the x-sweep's right-hand side is the same linear map as extrapolating the solved column, which
lets every line (boundary ones included) be solved independently — on the GPU, one thread each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from kernels.els.product import ELSProduct, ProductError, observation_steps
from kernels.els.thomas import Factored, factor

__all__ = ["KI", "NK", "Axis", "Scheme", "build_scheme", "place_axis", "read_out"]

NK = 0  #: index of the not-yet-knocked-in value grid
KI = 1  #: index of the knocked-in value grid

DOMAIN_WIDTH = 2.0  #: each asset's grid spans [0, 2 S0] (plus the shift); wider changed nothing for these products


@dataclass(frozen=True)
class Axis:
    """Uniform nodes ``(i + shift) * h`` for ``i = 0..n``; ``shift`` in [0, 1) keeps barriers off nodes."""

    nodes: np.ndarray
    h: float
    shift: float

    @property
    def n(self) -> int:
        """Number of intervals (nodes - 1)."""
        return len(self.nodes) - 1

    def first_at_or_above(self, level: float) -> int:
        """Index of the first node ``>= level`` (``n + 1`` when none)."""
        return int(np.searchsorted(self.nodes, level, side="left"))


def place_axis(spot: float, n: int, levels: tuple[float, ...]) -> Axis:
    """Build ``n`` intervals of width ``2 spot / n`` shifted so every barrier level sits mid-cell.

    On-node barriers cost O(h) accuracy: the sample product at 200 x 200 x 1080 prices 0.54 %
    above a matched Monte Carlo on nodes 0, h, 2h, ..., and 0.14 % with this placement. The
    fractional positions ``frac(L / h)`` of all levels are points on a circle; the shift goes to
    the middle of the widest gap between them, which maximises the distance from every level to
    its nearest node. When all levels
    share one fractional position (h divides their spacing) that is exactly mid-cell; otherwise
    (e.g. h = 2 with 5 % steps) it is the best any single shift can do.

    Args:
        spot: the asset's reference level ``S0``.
        n: number of intervals.
        levels: barrier levels in price units (``K * S0``); those off the grid are ignored.
    """
    h = DOMAIN_WIDTH * spot / n
    top = (n + 1) * h
    fracs = sorted({round((lv / h) % 1.0, 9) % 1.0 for lv in levels if 0.0 < lv < top})
    if not fracs:
        shift = 0.5
    else:
        best_gap, shift = -1.0, 0.5
        for k, f in enumerate(fracs):
            nxt = fracs[k + 1] if k + 1 < len(fracs) else fracs[0] + 1.0
            gap = nxt - f
            if gap > best_gap + 1e-12:
                best_gap, shift = gap, (f + gap / 2.0) % 1.0
    nodes = (np.arange(n + 1, dtype=np.float64) + shift) * h
    return Axis(nodes=nodes, h=h, shift=shift)


def _line_factors(axis: Axis, vol: float, drift: float, rate: float, dt: float) -> Factored:
    """Factor ``I - dt * L`` on the interior nodes, with linear extrapolation folded in."""
    z = axis.nodes[1:-1] / axis.h  # x_i / h for interior nodes
    d = 0.5 * vol * vol * z * z
    v = 0.5 * drift * z
    lower = -dt * (d - v)
    diag = 1.0 + dt * (2.0 * d + 0.5 * rate)
    upper = -dt * (d + v)
    # u_0 = 2 u_1 - u_2 in the first row, u_N = 2 u_{N-1} - u_{N-2} in the last.
    diag[0] += 2.0 * lower[0]
    upper[0] -= lower[0]
    diag[-1] += 2.0 * upper[-1]
    lower[-1] -= upper[-1]
    return factor(lower, diag, upper)


@dataclass(frozen=True)
class Scheme:
    """One product discretised on an ``(n1 + 1) x (n2 + 1)`` grid with ``nt`` time steps.

    Attributes:
        x, y: the two asset axes.
        fx, fy: Thomas factors of the x-line and y-line matrices (orders ``n1 - 1``, ``n2 - 1``).
        wx, wy: cross-term weights; the explicit half cross term at ``(i, j)`` is
            ``wx[i] * wy[j] * (u[i+1,j+1] - u[i+1,j-1] - u[i-1,j+1] + u[i-1,j-1])``.
        ki_rows, ki_cols: the knock-in region ``W < KI`` is rows ``< ki_rows`` or columns ``< ki_cols``.
        events: ``{tau_step: (row, col, value)}``: after that step, ``U[row:, :, col:] = value``.
        terminal: ``U`` at maturity, shape ``(n1 + 1, 2, n2 + 1)``.
    """

    product: ELSProduct
    n1: int
    n2: int
    nt: int
    dt: float
    x: Axis
    y: Axis
    fx: Factored
    fy: Factored
    wx: np.ndarray
    wy: np.ndarray
    ki_rows: int
    ki_cols: int
    events: dict[int, tuple[int, int, float]] = field(default_factory=dict)
    terminal: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n1 + 1, 2, self.n2 + 1)


def build_scheme(product: ELSProduct, n1: int, n2: int, nt: int) -> Scheme:
    """Discretise ``product`` with ``n1 x n2`` space intervals and ``nt`` time steps.

    Raises:
        ProductError: grid too small (``n1, n2 >= 4`` and ``nt >= 1``), or too few steps for the dates.
    """
    for name, value, low in (("n1", n1, 4), ("n2", n2, 4), ("nt", nt, 1)):
        if int(value) != value or value < low:
            raise ProductError(f"{name}: must be an integer >= {low}, got {value!r}")
    p = product
    s1, s2 = p.spots
    levels = p.barrier_levels()
    x = place_axis(s1, n1, tuple(k * s1 for k in levels))
    y = place_axis(s2, n2, tuple(k * s2 for k in levels))
    dt = p.maturity / nt
    fx = _line_factors(x, p.vols[0], p.rate - p.dividends[0], p.rate, dt)
    fy = _line_factors(y, p.vols[1], p.rate - p.dividends[1], p.rate, dt)
    # dt/2 * rho s1 s2 x y * (four-point stencil) / (4 h1 h2)
    cross = dt * p.rho * p.vols[0] * p.vols[1] / 8.0
    wx = cross * x.nodes / x.h
    wy = y.nodes / y.h

    ki_rows = x.first_at_or_above(p.knock_in * s1)
    ki_cols = y.first_at_or_above(p.knock_in * s2)
    steps = observation_steps(p, nt)
    events: dict[int, tuple[int, int, float]] = {}
    for k, barrier, coupon in zip(steps[:-1], p.autocall_barriers[:-1], p.coupons[:-1]):
        events[nt - k] = (x.first_at_or_above(barrier * s1), y.first_at_or_above(barrier * s2), p.face * (1.0 + coupon))

    U = np.empty((n1 + 1, 2, n2 + 1))
    worst = np.minimum(x.nodes[:, None] / s1, y.nodes[None, :] / s2)
    U[:, KI, :] = p.face * worst
    U[:, NK, :] = p.face * (1.0 + p.dummy_coupon)
    U[:ki_rows, NK, :] = U[:ki_rows, KI, :]
    U[ki_rows:, NK, :ki_cols] = U[ki_rows:, KI, :ki_cols]
    last_row = x.first_at_or_above(p.autocall_barriers[-1] * s1)
    last_col = y.first_at_or_above(p.autocall_barriers[-1] * s2)
    U[last_row:, :, last_col:] = p.face * (1.0 + p.coupons[-1])

    return Scheme(
        product=p, n1=n1, n2=n2, nt=nt, dt=dt, x=x, y=y, fx=fx, fy=fy, wx=wx, wy=wy,
        ki_rows=ki_rows, ki_cols=ki_cols, events=events, terminal=U,
    )


def _bilinear(axis_x: Axis, axis_y: Axis, values: np.ndarray, px: float, py: float) -> float:
    i = int(np.searchsorted(axis_x.nodes, px, side="right")) - 1
    j = int(np.searchsorted(axis_y.nodes, py, side="right")) - 1
    if not (0 <= i < len(axis_x.nodes) - 1 and 0 <= j < len(axis_y.nodes) - 1):
        raise ProductError(f"spots: ({px}, {py}) lies outside the grid")
    fx = (px - axis_x.nodes[i]) / axis_x.h
    fy = (py - axis_y.nodes[j]) / axis_y.h
    v = values[i : i + 2, j : j + 2]
    return float((1 - fx) * ((1 - fy) * v[0, 0] + fy * v[0, 1]) + fx * ((1 - fy) * v[1, 0] + fy * v[1, 1]))


def read_out(s: Scheme, values: np.ndarray) -> tuple[float, tuple[float, float], tuple[float, float]]:
    """Price, deltas and gammas at the spots from the final not-knocked-in grid ``values[i, j]``.

    The price is the bilinear interpolant at ``(S1(0), S2(0))``; delta and gamma interpolate the
    nodal central differences the same way (second order in h, no re-pricing needed).
    """
    px, py = s.product.spots
    hx, hy = s.x.h, s.y.h
    v = values
    d1 = np.zeros_like(v)
    g1 = np.zeros_like(v)
    d2 = np.zeros_like(v)
    g2 = np.zeros_like(v)
    d1[1:-1] = (v[2:] - v[:-2]) / (2 * hx)
    g1[1:-1] = (v[2:] - 2 * v[1:-1] + v[:-2]) / (hx * hx)
    d2[:, 1:-1] = (v[:, 2:] - v[:, :-2]) / (2 * hy)
    g2[:, 1:-1] = (v[:, 2:] - 2 * v[:, 1:-1] + v[:, :-2]) / (hy * hy)
    price = _bilinear(s.x, s.y, v, px, py)
    delta = (_bilinear(s.x, s.y, d1, px, py), _bilinear(s.x, s.y, d2, px, py))
    gamma = (_bilinear(s.x, s.y, g1, px, py), _bilinear(s.x, s.y, g2, px, py))
    if not all(math.isfinite(q) for q in (price, *delta, *gamma)):
        raise FloatingPointError("the FDM solution is not finite; check the product parameters")
    return price, delta, gamma
