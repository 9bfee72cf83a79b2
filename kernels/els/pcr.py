"""Parallel cyclic reduction (PCR) with every matrix coefficient computed once, on the host.

Why: a Thomas recurrence is ``2 n`` dependent steps per line, which on a GPU is serial latency
(the first CUDA loop spent ~190 us a time step that way). PCR solves a line in
``L = ceil(log2 n)`` levels, each one independent update of every unknown. The OSM line matrices
are the same for every line and every time step, so everything that depends on the matrix alone
is done here once, and a level on the right-hand side is three multiply-adds per unknown:

    r'_i = P_i r_i + Q_i r_{i-s} + R_i r_{i+s},    s = 2^level,  terms outside 0..n-1 are 0

After ``L`` levels every unknown is decoupled and ``x = r``. Level 0 also divides by the
diagonal. The matrices are strictly diagonally dominant, where PCR is stable; it agrees with the
Thomas recurrence of :mod:`kernels.els.thomas` to ~1e-15 per solve.

:func:`solve_last` is the numpy twin of the CUDA kernels in :mod:`kernels.els.cuda` (same
coefficients, same order of operations, lines vectorised over all leading axes).
"""

from __future__ import annotations

import numpy as np

from kernels.els.thomas import Factored

__all__ = ["levels", "pcr_coefficients", "solve_last"]


def levels(n: int) -> int:
    """Number of PCR levels for order ``n``: the smallest ``L`` with ``2^L >= n``."""
    return max(1, (int(n) - 1).bit_length())


def pcr_coefficients(f: Factored) -> np.ndarray:
    """``(L, 3, n)`` array of ``P, Q, R`` per level for the matrix ``tridiag(f.lower, f.diag, f.upper)``.

    Entries whose neighbour lies outside the line are exactly zero, so a kernel may skip or
    guard them without changing the result.
    """
    n = f.n
    b = np.asarray(f.diag, dtype=np.float64)
    a = np.asarray(f.lower, dtype=np.float64) / b  # normalised system x_i + a_i x_{i-s} + c_i x_{i+s} = r_i
    c = np.asarray(f.upper, dtype=np.float64) / b
    a[0] = 0.0
    c[n - 1] = 0.0
    scale = 1.0 / b  # level 0 reads the raw right-hand side: fold the normalisation in
    out = np.zeros((levels(n), 3, n))
    s = 1
    for k in range(out.shape[0]):
        a_lo = np.zeros(n)  # a_{i+s}, c_{i-s} and friends, zero outside the line
        c_lo = np.zeros(n)
        a_hi = np.zeros(n)
        c_hi = np.zeros(n)
        if s < n:
            a_lo[s:], c_lo[s:] = a[:-s], c[:-s]
            a_hi[:-s], c_hi[:-s] = a[s:], c[s:]
        inv = 1.0 / (1.0 - a * c_lo - c * a_hi)
        P, Q, R = inv.copy(), -a * inv, -c * inv
        if k == 0:
            sc_lo = np.zeros(n)
            sc_hi = np.zeros(n)
            sc_lo[1:], sc_hi[:-1] = scale[:-1], scale[1:]
            P, Q, R = P * scale, Q * sc_lo, R * sc_hi
        out[k] = P, Q, R
        a, c = -a * a_lo * inv, -c * c_hi * inv
        s *= 2
    return out


def solve_last(coef: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve every line of ``rhs`` (lines along the last axis) with per-line coefficients.

    Args:
        coef: ``(..., L, 3, n)`` from :func:`pcr_coefficients`; its leading axes broadcast with
            ``rhs``'s after the level and P/Q/R axes are taken out (e.g. ``(B, 1, 1, L, 3, n)``
            against ``rhs`` of shape ``(B, 2, m, n)``).
        rhs: ``(..., n)`` right-hand sides.

    Returns:
        A new array of ``rhs``'s shape with the solutions.
    """
    r = np.asarray(rhs, dtype=np.float64)
    n = r.shape[-1]
    s = 1
    for k in range(coef.shape[-3]):
        P, Q, R = coef[..., k, 0, :], coef[..., k, 1, :], coef[..., k, 2, :]
        out = P * r
        if s < n:
            out[..., s:] += Q[..., s:] * r[..., :-s]
            out[..., :-s] += R[..., :-s] * r[..., s:]
        r = out
        s *= 2
    return r
