"""Exact block-partitioned solve of one tridiagonal matrix against many right-hand sides (CPU).

Why not run the Thomas recurrence on the CPU? Driven from Python it costs ~4n numpy calls per
sweep (about 0.8 ms at n = 200, 2 ms per step), which alone would miss the 1.5 s target at
200 x 200 x 1080. Multiplying by the dense inverse ``G = M^-1`` is one BLAS-3 call but 2 n^2 flops
per line. The partition method keeps BLAS-3 and cuts the flops by the number of blocks ``p``:

    M = D + E,  D = blockdiag(M_1 .. M_p),  E = the 2 (p - 1) couplings between blocks
    Y = D^-1 R                              (p small matrix products)
    X = Y - P Y[J]                          (one thin product, J = the rows next to a cut)

with ``P = D^-1 E[:, J] (I + (D^-1 E)[J, J])^-1`` precomputed. Only the rows ``J`` of ``E X``
are non-zero, so ``X[J]`` solves a k x k system (k = 2 (p - 1)) and the rest follows; no
approximation is involved (it is the SPIKE / Sherman–Morrison–Woodbury identity). ``M`` is
strictly diagonally dominant, so every block and the small system are well conditioned; the
result matches the recurrence to ~1e-15.

Blocks of about 28 rows measured fastest on a 2-core AVX-512 EPYC: 2x faster than the dense
inverse at n = 199, 1.5x at n = 99 (one block, i.e. the dense inverse, below ~40 rows).
"""

from __future__ import annotations

import numpy as np

from kernels.els.thomas import Factored

__all__ = ["BlockSolver"]

BLOCK_ROWS = 28


def _dense(f: Factored, a: int, b: int) -> np.ndarray:
    """Rows/columns ``a:b`` of the tridiagonal matrix as a dense block."""
    m = np.diag(f.diag[a:b])
    idx = np.arange(b - a - 1)
    m[idx + 1, idx] = f.lower[a + 1 : b]
    m[idx, idx + 1] = f.upper[a : b - 1]
    return m


def _extrapolated(rows: np.ndarray, head: bool, tail: bool) -> np.ndarray:
    """Prepend ``2 r0 - r1`` and/or append ``2 r[-1] - r[-2]`` (linear extrapolation rows)."""
    parts = [2.0 * rows[:1] - rows[1:2]] if head else []
    parts.append(rows)
    if tail:
        parts.append(2.0 * rows[-1:] - rows[-2:-1])
    return np.ascontiguousarray(np.concatenate(parts))


class BlockSolver:
    """``M^-1`` applied to many lines with a few BLAS calls; ``M`` given by its :class:`Factored`.

    The solution comes back with the two boundary nodes already extrapolated (``u_0 = 2 u_1 -
    u_2``, ``u_N = 2 u_{N-1} - u_{N-2}``): the first and last blocks' inverses and ``P`` carry
    the extrapolation rows, so the output is one contiguous ``n + 2`` run and needs no fix-up.
    """

    def __init__(self, f: Factored, block_rows: int = BLOCK_ROWS):
        n = f.n
        p = max(1, min(n // 2, int(round(n / block_rows))))
        edges = np.linspace(0, n, p + 1).round().astype(int)
        self.blocks = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
        inv = [np.linalg.inv(_dense(f, a, b)) for a, b in self.blocks]
        last = len(self.blocks) - 1
        # Output rows of block k: its own rows shifted by one, plus an extrapolated end row.
        self.out_blocks = [(0 if k == 0 else a + 1, n + 2 if k == last else b + 1) for k, (a, b) in enumerate(self.blocks)]
        self.inv = [_extrapolated(g, k == 0, k == last) for k, g in enumerate(inv)]
        self.inv_t = [np.ascontiguousarray(g.T) for g in self.inv]
        d_inv = np.zeros((n, n))
        for (a, b), g in zip(self.blocks, inv):
            d_inv[a:b, a:b] = g
        cuts = [b for _, b in self.blocks[:-1]]
        J = np.array([r for c in cuts for r in (c - 1, c)], dtype=np.intp)
        self.J = J + 1  # positions in the extrapolated output
        cols = []
        for c in cuts:
            cols.append(f.lower[c] * d_inv[:, c])  # row c couples to x[c - 1]
            cols.append(f.upper[c - 1] * d_inv[:, c - 1])  # row c - 1 couples to x[c]
        if cols:
            F = np.stack(cols, axis=1)  # D^-1 E[:, J], n x k
            small = np.eye(len(J)) + F[J, :]
            self.P = _extrapolated(F @ np.linalg.inv(small), True, True)
        else:
            self.P = np.zeros((n + 2, 0))
        self.P_t = np.ascontiguousarray(self.P.T)

    def solve_cols(self, rhs: np.ndarray, out: np.ndarray, tmp: np.ndarray) -> None:
        """``out = E M^-1 rhs`` down the columns: ``rhs`` is ``(n, lines)``, ``out``/``tmp`` ``(n + 2, lines)``."""
        for (a, b), (c, d), g in zip(self.blocks, self.out_blocks, self.inv):
            np.matmul(g, rhs[a:b], out=out[c:d])
        if len(self.J):
            np.matmul(self.P, out[self.J], out=tmp)
            out -= tmp

    def solve_rows(self, rhs: np.ndarray, out: np.ndarray, tmp: np.ndarray) -> None:
        """The same along rows: ``rhs`` is ``(lines, n)``, ``out``/``tmp`` ``(lines, n + 2)``."""
        for (a, b), (c, d), g in zip(self.blocks, self.out_blocks, self.inv_t):
            np.matmul(rhs[:, a:b], g, out=out[:, c:d])
        if len(self.J):
            np.matmul(out[:, self.J], self.P_t, out=tmp)
            out -= tmp
