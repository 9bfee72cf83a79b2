"""kernels.els.scheme: grid placement, regions and terminal values."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.els.scheme import KI, NK, build_scheme, place_axis


def node_distance(axis, level: float) -> float:
    """Distance from ``level`` to its nearest node, in cells."""
    return float(np.min(np.abs(axis.nodes - level)) / axis.h)


@pytest.mark.parametrize("n", [40, 80, 160, 200, 400])
def test_barriers_sit_mid_cell_when_the_cell_divides_their_spacing(sample, n):
    axis = place_axis(100.0, n, tuple(100.0 * k for k in sample.barrier_levels()))
    for k in sample.barrier_levels():
        assert node_distance(axis, 100.0 * k) == pytest.approx(0.5)


def test_barriers_stay_a_quarter_cell_off_nodes_when_mid_cell_is_impossible(sample):
    # h = 2 and levels 5 % apart: half the levels would fall on nodes with a half-cell shift.
    axis = place_axis(100.0, 100, tuple(100.0 * k for k in sample.barrier_levels()))
    assert min(node_distance(axis, 100.0 * k) for k in sample.barrier_levels()) == pytest.approx(0.25)


def test_grid_spans_twice_the_spot():
    axis = place_axis(50.0, 100, (25.0,))
    assert axis.h == pytest.approx(1.0) and axis.nodes[0] < 1.0 and axis.nodes[-1] >= 100.0


def test_regions_match_the_worst_performer(sample):
    s = build_scheme(sample.replace(spots=(100.0, 80.0)), 50, 40, 60)
    x, y = s.x.nodes / 100.0, s.y.nodes / 80.0
    w = np.minimum(x[:, None], y[None, :])
    knocked = np.zeros_like(w, dtype=bool)
    knocked[: s.ki_rows, :] = True
    knocked[:, : s.ki_cols] = True
    assert np.array_equal(knocked, w < sample.knock_in)
    for m, (row, col, value) in s.events.items():
        hit = np.zeros_like(knocked)
        hit[row:, col:] = True
        i = sorted(s.events).index(m)  # later tau-steps are earlier dates
        date = len(s.events) - 1 - i
        assert np.array_equal(hit, w >= sample.autocall_barriers[date])
        assert value == pytest.approx(sample.face * (1 + sample.coupons[date]))


def test_terminal_values_follow_the_payoff(sample):
    s = build_scheme(sample, 40, 40, 80)
    w = np.minimum(s.x.nodes[:, None], s.y.nodes[None, :]) / 100.0
    F = sample.face
    want_ki = np.where(w >= 0.75, F * 1.24, F * w)
    want_nk = np.where(w >= 0.75, F * 1.24, np.where(w >= 0.5, F * 1.24, F * w))
    assert np.allclose(s.terminal[:, KI, :], want_ki)
    assert np.allclose(s.terminal[:, NK, :], want_nk)


def test_events_fall_on_the_observation_steps(sample):
    s = build_scheme(sample, 40, 40, 1080)
    assert sorted(s.events) == [180, 360, 540, 720, 900]  # tau-steps of t = 2.5, 2.0, ..., 0.5


def test_tiny_grids_are_rejected(sample):
    from kernels.els import ProductError

    with pytest.raises(ProductError, match="n1: must be an integer >= 4"):
        build_scheme(sample, 3, 40, 80)
