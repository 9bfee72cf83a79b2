"""Batched tridiagonal solves with one pre-factored matrix shared by every line.

For constant vols, rates and time step, every x-line of the OSM scheme has the same matrix, and so
does every y-line. So the LU (Thomas) factorisation is done once per direction and the
per-step work is a solve with many right-hand sides:

    forward:   d_0 = r_0 * inv_0,     d_i = (r_i - a_i * d_{i-1}) * inv_i
    backward:  x_{n-1} = d_{n-1},     x_i = d_i - cp_i * x_{i+1}

with ``inv_i = 1 / (b_i - a_i * cp_{i-1})`` and ``cp_i = c_i * inv_i``. :func:`solve_lines` runs
it vectorised over lines (one numpy operation per row, all lines at once) and serves as the
reference the GPU path (parallel cyclic reduction, :mod:`kernels.els.pcr`) is checked against.

On the CPU the time loop does not run this recurrence (it would cost ~4n numpy calls per
sweep); it applies block inverses built from these same factors with BLAS, see
:mod:`kernels.els.blocks`. Both agree to ~1e-14.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Factored", "factor", "inverse", "solve_lines"]


@dataclass(frozen=True)
class Factored:
    """One tridiagonal matrix of order ``n`` and its Thomas factors.

    ``lower``/``diag``/``upper`` are the matrix (``lower[0]`` and ``upper[n-1]`` are zero);
    ``a`` is the sub-diagonal as the recurrence uses it, ``cp`` the modified super-diagonal and
    ``inv`` the reciprocal pivots.
    """

    lower: np.ndarray
    diag: np.ndarray
    upper: np.ndarray
    a: np.ndarray
    cp: np.ndarray
    inv: np.ndarray

    @property
    def n(self) -> int:
        return int(self.inv.shape[0])


def factor(lower: np.ndarray, diag: np.ndarray, upper: np.ndarray) -> Factored:
    """Factor ``tridiag(lower, diag, upper)`` once (no pivoting: the OSM matrices are diagonally dominant).

    Args:
        lower: sub-diagonal, ``lower[i]`` multiplies ``x[i-1]`` (``lower[0]`` ignored).
        diag: main diagonal.
        upper: super-diagonal, ``upper[i]`` multiplies ``x[i+1]`` (``upper[-1]`` ignored).

    Raises:
        ZeroDivisionError: a zero pivot (never happens for a diagonally dominant matrix).
    """
    n = len(diag)
    a = np.array(lower, dtype=np.float64)
    a[0] = 0.0
    up = np.array(upper, dtype=np.float64)
    up[n - 1] = 0.0
    cp = np.zeros(n)
    inv = np.zeros(n)
    prev_cp = 0.0
    for i in range(n):
        den = float(diag[i]) - float(a[i]) * prev_cp
        if den == 0.0:
            raise ZeroDivisionError(f"zero pivot at row {i} of a tridiagonal matrix")
        inv[i] = 1.0 / den
        cp[i] = float(upper[i]) * inv[i] if i < n - 1 else 0.0
        prev_cp = cp[i]
    return Factored(lower=a.copy(), diag=np.array(diag, dtype=np.float64), upper=up, a=a, cp=cp, inv=inv)


def solve_lines(f: Factored, rhs: Any, out: Any = None, xp: Any = np) -> Any:
    """Solve ``M x = rhs`` for every line at once; lines run along ``rhs``'s axis 0.

    Args:
        f: the factors of ``M`` (order ``n = rhs.shape[0]``).
        rhs: array of shape ``(n, ...)``; each trailing index is one independent line.
        out: optional array of ``rhs``'s shape for the solution (may be ``rhs`` itself).
        xp: numpy or cupy.

    Returns:
        ``out``: the solutions, one per line.
    """
    n = f.n
    if out is None:
        out = xp.empty_like(rhs)
    tmp = xp.empty_like(rhs[0])
    xp.multiply(rhs[0], float(f.inv[0]), out=out[0])
    for i in range(1, n):  # forward sweep: d_i = (r_i - a_i d_{i-1}) * inv_i
        xp.multiply(out[i - 1], float(f.a[i]), out=tmp)
        xp.subtract(rhs[i], tmp, out=out[i])
        out[i] *= float(f.inv[i])
    for i in range(n - 2, -1, -1):  # backward sweep: x_i = d_i - cp_i x_{i+1}
        xp.multiply(out[i + 1], float(f.cp[i]), out=tmp)
        out[i] -= tmp
    return out


def inverse(f: Factored) -> np.ndarray:
    """The dense inverse ``M^{-1}`` (order n), computed by solving against the identity."""
    return solve_lines(f, np.eye(f.n))
