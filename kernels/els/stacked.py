"""B schemes of one grid size stacked along a leading axis: :class:`Batch`.

Its own module so that both marches of a batch, :func:`kernels.els.batch.march_batch_cpu`
(numpy) and :func:`kernels.els.cuda.march_gpu_batch` (cupy), read it without importing
each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from kernels.els.pcr import pcr_coefficients
from kernels.els.product import ProductError
from kernels.els.scheme import Scheme

__all__ = ["Batch"]


@dataclass(frozen=True)
class Batch:
    """B schemes of one size, stacked (float64 / int32, C-contiguous, ready to upload).

    Attributes:
        U: terminal values, ``(B, n1 + 1, 2, n2 + 1)``.
        cx, cy: PCR coefficients of the x- and y-line matrices, ``(B, L, 3, n - 1)``.
        wx, wy: cross weights, ``(B, n1 + 1)`` and ``(B, n2 + 1)``.
        ki_rows, ki_cols: knock-in regions, ``(B,)``.
        ev_row, ev_col, ev_val: autocall after step ``m`` for product ``b`` at ``[m, b]``
            (``ev_row = -1``: none), ``(nt + 1, B)``.
    """

    n1: int
    n2: int
    nt: int
    U: np.ndarray
    cx: np.ndarray
    cy: np.ndarray
    wx: np.ndarray
    wy: np.ndarray
    ki_rows: np.ndarray
    ki_cols: np.ndarray
    ev_row: np.ndarray
    ev_col: np.ndarray
    ev_val: np.ndarray

    @property
    def size(self) -> int:
        return int(self.U.shape[0])

    @classmethod
    def from_schemes(cls, schemes: Sequence[Scheme]) -> "Batch":
        """Stack schemes that share ``n1, n2, nt``.

        Raises:
            ProductError: no schemes, or two of different sizes.
        """
        if not schemes:
            raise ProductError("batch: no products to price")
        n1, n2, nt = schemes[0].n1, schemes[0].n2, schemes[0].nt
        if any((s.n1, s.n2, s.nt) != (n1, n2, nt) for s in schemes):
            raise ProductError("batch: every pricing in a batch needs the same n1, n2 and nt")
        B = len(schemes)
        ev_row = np.full((nt + 1, B), -1, dtype=np.int32)
        ev_col = np.zeros((nt + 1, B), dtype=np.int32)
        ev_val = np.zeros((nt + 1, B))
        for b, s in enumerate(schemes):
            for m, (row, col, value) in s.events.items():
                ev_row[m, b], ev_col[m, b], ev_val[m, b] = row, col, value
        return cls(
            n1=n1, n2=n2, nt=nt,
            U=np.ascontiguousarray(np.stack([s.terminal for s in schemes])),
            cx=np.ascontiguousarray(np.stack([pcr_coefficients(s.fx) for s in schemes])),
            cy=np.ascontiguousarray(np.stack([pcr_coefficients(s.fy) for s in schemes])),
            wx=np.ascontiguousarray(np.stack([s.wx for s in schemes])),
            wy=np.ascontiguousarray(np.stack([s.wy for s in schemes])),
            ki_rows=np.array([s.ki_rows for s in schemes], dtype=np.int32),
            ki_cols=np.array([s.ki_cols for s in schemes], dtype=np.int32),
            ev_row=ev_row, ev_col=ev_col, ev_val=ev_val,
        )
