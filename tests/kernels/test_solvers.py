"""Batched tridiagonal solves: the Thomas recurrence (the GPU's algorithm) and the CPU block solver."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.els.blocks import BlockSolver
from kernels.els.thomas import factor, inverse, solve_lines


def random_dominant(n: int, seed: int):
    rng = np.random.default_rng(seed)
    lower, upper = -rng.random(n), -rng.random(n)
    diag = 1.0 + np.abs(lower) + np.abs(upper) + rng.random(n)
    m = np.diag(diag) + np.diag(lower[1:], -1) + np.diag(upper[:-1], 1)
    return factor(lower, diag, upper), m


@pytest.mark.parametrize("n", [3, 7, 99, 199])
def test_thomas_solves_every_line_at_once(n):
    f, m = random_dominant(n, n)
    rhs = np.random.default_rng(1).random((n, 2, 5))
    x = solve_lines(f, rhs)
    assert np.allclose(np.einsum("ij,jkl->ikl", m, x), rhs, rtol=0, atol=1e-13)


def test_thomas_can_overwrite_its_input():
    f, m = random_dominant(20, 2)
    rhs = np.random.default_rng(2).random((20, 4))
    expected = np.linalg.solve(m, rhs)
    solve_lines(f, rhs, out=rhs)
    assert np.allclose(rhs, expected, atol=1e-14)


def test_inverse_is_the_matrix_inverse():
    f, m = random_dominant(31, 3)
    assert np.allclose(inverse(f) @ m, np.eye(31), atol=1e-14)


def extrapolate(x: np.ndarray, axis: int) -> np.ndarray:
    x = np.moveaxis(x, axis, 0)
    full = np.concatenate([2 * x[:1] - x[1:2], x, 2 * x[-1:] - x[-2:-1]])
    return np.moveaxis(full, 0, axis)


@pytest.mark.parametrize("n, block_rows", [(4, 28), (39, 28), (99, 28), (199, 28), (199, 5), (57, 1_000)])
def test_block_solver_equals_the_inverse_with_extrapolated_ends(n, block_rows):
    f, m = random_dominant(n, n + block_rows)
    solver = BlockSolver(f, block_rows)
    rhs = np.random.default_rng(4).random((n, 9))
    want = extrapolate(np.linalg.solve(m, rhs), 0)
    out, tmp = np.empty((n + 2, 9)), np.empty((n + 2, 9))
    solver.solve_cols(rhs, out, tmp)
    assert np.abs(out - want).max() < 1e-13
    rows = np.ascontiguousarray(rhs.T)
    out_r, tmp_r = np.empty((9, n + 2)), np.empty((9, n + 2))
    solver.solve_rows(rows, out_r, tmp_r)
    assert np.abs(out_r - want.T).max() < 1e-13


def test_block_solver_splits_into_blocks_of_about_28_rows():
    f, _ = random_dominant(199, 9)
    assert len(BlockSolver(f).blocks) == 7
    assert len(BlockSolver(f, 1_000).blocks) == 1


@pytest.mark.parametrize("n", [2, 3, 8, 9, 99, 199, 399])
def test_pcr_agrees_with_thomas_on_every_line(n):
    from kernels.els.pcr import levels, pcr_coefficients, solve_last

    f, m = random_dominant(n, n + 7)
    coef = pcr_coefficients(f)
    assert coef.shape == (levels(n), 3, n) and 2 ** levels(n) >= n
    rhs = np.random.default_rng(3).random((n, 6))
    x = solve_last(coef, rhs.T).T
    assert np.abs(x - solve_lines(f, rhs)).max() < 1e-14 * np.abs(x).max() * n
    assert np.allclose(m @ x, rhs, rtol=0, atol=1e-13)


def test_pcr_coefficients_reaching_outside_the_line_are_exactly_zero():
    from kernels.els.pcr import pcr_coefficients

    coef = pcr_coefficients(random_dominant(13, 4)[0])
    for k in range(coef.shape[0]):
        s = 1 << k
        assert not coef[k, 1, :s].any() and not coef[k, 2, 13 - s :].any()
