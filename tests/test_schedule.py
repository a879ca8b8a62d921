"""Cycle models of lane schedules (sim/schedule.py): hand-checked cases and the built engine's formula."""

import numpy as np
import pytest

from dynsparse.golden.sparseconv import cycles_per_position
from dynsparse.sim.schedule import decoupled_cycles, flat_cycles, walker_cycles


def test_flat_spreads_a_position_over_the_lanes():
    assert flat_cycles([[3, 1], [0, 0], [2, 2]], lanes=2) == 2 + 1 + 2


def test_walker_costs_at_least_one_cycle_a_position():
    assert walker_cycles([0, 9, 1, 0]) == 1 + 9 + 1 + 1


def test_depth_one_without_rotation_is_the_built_engine():
    rng = np.random.default_rng(1)
    active = rng.integers(0, 10, size=(200, 8)) * (rng.random((200, 8)) < 0.6)
    assert decoupled_cycles(active, lanes=8, depth=1, rotate=False) == cycles_per_position(active, lanes=8).sum()


def test_one_lane_with_a_deep_buffer_is_bounded_by_work_or_positions():
    assert decoupled_cycles([[3], [0], [0]], lanes=1, depth=8, rotate=False) == 3
    assert decoupled_cycles([[0], [0], [0]], lanes=1, depth=8, rotate=False) == 3


def test_rotation_shares_a_busy_channel_between_lanes():
    active = [[4, 0]] * 4
    assert decoupled_cycles(active, lanes=2, depth=4, rotate=False) == 16
    # lane 0 takes positions 0 and 2 (4 + 4 cycles), lane 1 positions 1 and 3 (from cycle 1)
    assert decoupled_cycles(active, lanes=2, depth=4, rotate=True) == 9


def test_a_shallow_buffer_holds_the_lanes_together():
    active = [[4, 0], [0, 4]] * 4
    deep = decoupled_cycles(active, lanes=2, depth=8, rotate=False)
    shallow = decoupled_cycles(active, lanes=2, depth=1, rotate=False)
    assert deep == 17 and shallow == 32


@pytest.mark.parametrize("kwargs,error,message", [
    ({"lanes": 0, "depth": 4}, ValueError, r"lane count must be in \[1, 2\], not 0"),
    ({"lanes": 2.0, "depth": 4}, TypeError, r"lane count must be an integer, not 2\.0"),
    ({"lanes": 2, "depth": 0}, ValueError, r"buffer depth must be >= 1, not 0"),
])
def test_parameter_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        decoupled_cycles([[1, 2]], rotate=False, **kwargs)
