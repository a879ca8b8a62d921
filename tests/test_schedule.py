"""Cycle models of lane schedules (sim/schedule.py): hand-checked cases and the built engine's formula."""

import numpy as np
import pytest

from dynsparse.golden.sparseconv import cycles_per_position, engine_cycles
from dynsparse.sim.schedule import (
    decoupled_cycles, flat_cycles, flat_empty_free_cycles, fluid_cycles, walker_cycles,
)


def test_flat_spreads_a_position_over_the_lanes():
    assert flat_cycles([[3, 1], [0, 0], [2, 2]], lanes=2) == 2 + 1 + 2


def _random_active(seed, positions=300, c_out=8, empty=0.5):
    rng = np.random.default_rng(seed)
    active = rng.integers(0, 10, size=(positions, c_out)) * (rng.random((positions, c_out)) < 0.6)
    active[rng.random(positions) < empty] = 0          # whole positions with no active MAC
    return active


def test_flat_is_the_built_walk_at_one_and_two_lanes():
    """The engine's walk at L = 1 and 2 spreads a position evenly; flat costs an empty position 1."""
    active = _random_active(7)
    for lanes in (1, 2):
        assert flat_cycles(active, lanes=lanes) == np.maximum(cycles_per_position(active, lanes=lanes), 1).sum()


def test_walker_costs_at_least_one_cycle_a_position():
    assert walker_cycles([0, 9, 1, 0]) == 1 + 9 + 1 + 1


def test_depth_one_without_rotation_is_the_group_schedule():
    """One lane per output channel (L = C_out): a position ends with its busiest lane."""
    rng = np.random.default_rng(1)
    active = rng.integers(0, 10, size=(200, 8)) * (rng.random((200, 8)) < 0.6)
    assert decoupled_cycles(active, lanes=8, depth=1, rotate=False) == np.maximum(active.max(axis=1), 1).sum()


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


def test_flat_empty_free_by_hand():
    # L = 2: work 2, 0, 0, 1, 0 cycles; position 0 walks cycles 0-1, 1 and 2 pass at 1 and 2,
    # 3 walks cycle 3, 4 is admitted at 4: five cycles (flat: 2 + 1 + 1 + 1 + 1)
    active = [[3, 1], [0, 0], [0, 0], [2, 0], [0, 0]]
    assert flat_empty_free_cycles(active, lanes=2, waiting=1) == 5
    assert flat_cycles(active, lanes=2) == 6
    # one lane, work 3, 1, 1, 0: waiting 0 admits position 1 at 3 and 2 at 4 (the empty 3 at 5, done 6);
    # waiting 1 admits 1 at 1 and 2 at 3 (when 0 is done), 3 at 4; 1 and 2 walk 3-4 and 4-5
    active = [[3], [1], [1], [0]]
    assert flat_empty_free_cycles(active, lanes=1, waiting=0) == 6
    assert flat_empty_free_cycles(active, lanes=1, waiting=1) == 5
    assert flat_empty_free_cycles(active, lanes=1, waiting=2) == 5
    assert flat_empty_free_cycles([[0, 0]] * 4, lanes=2, waiting=1) == 4
    assert flat_empty_free_cycles(np.zeros((0, 2), int), lanes=2, waiting=1) == 0


def test_flat_empty_free_without_empty_positions_or_waiting_is_flat():
    active = _random_active(3, empty=0.0) + 1
    assert flat_empty_free_cycles(active, lanes=4, waiting=0) == flat_cycles(active, lanes=4)


@pytest.mark.parametrize("lanes", [1, 2, 8])
def test_flat_empty_free_is_never_slower_than_flat_and_gains_with_waiting(lanes):
    for seed in range(5):
        active = _random_active(seed)
        cycles = [flat_empty_free_cycles(active, lanes=lanes, waiting=w) for w in (0, 1, 2, 4, 300)]
        assert cycles[0] <= flat_cycles(active, lanes=lanes)
        assert all(a >= b for a, b in zip(cycles, cycles[1:]))
        # never below the positions or the lane-cycles of the work
        assert cycles[-1] >= max(len(active), -(-active.sum(axis=-1) // lanes).sum())


def test_fluid_by_hand():
    # L = 2, work 6, 0, 0: the lanes finish at 3 > the three admissions
    assert fluid_cycles([[6, 0], [0, 0], [0, 0]], lanes=2, depth=4) == 3.0
    # work 0, 0, 3: admitted at 2, done 1.5 cycles later
    assert fluid_cycles([[0, 0], [0, 0], [3, 0]], lanes=2, depth=4) == 3.5
    # depth 1: each position holds the buffer until it is done: max(1, w / 2) each
    assert fluid_cycles([[0, 0], [3, 0], [1, 0]], lanes=2, depth=1) == 1 + 1.5 + 1
    # depth 2: position 2 waits for position 0 (retired at 1); it starts when 1 is done (2.5)
    assert fluid_cycles([[0, 0], [3, 0], [1, 0]], lanes=2, depth=2) == 3.0
    assert fluid_cycles(np.zeros((0, 2), int), lanes=2, depth=1) == 0.0
    # depth 1, work 6, 0, 0, 1: every position waits for the one before it (3, 4, 5, then 5.5,
    # held to 6) ...
    assert fluid_cycles([[6, 0], [0, 0], [0, 0], [1, 0]], lanes=2, depth=1) == 6.0
    # ... but with empty positions free they pass at 1 and 2, and position 3 waits only for
    # position 0 (3): done at 3.5, holding its slot to 4
    assert fluid_cycles([[6, 0], [0, 0], [0, 0], [1, 0]], lanes=2, depth=1, empty_free=True) == 4.0
    # an empty position after the work leaves a cycle after its admission: max(1.5, 2 + 1)
    assert fluid_cycles([[3, 0], [0, 0], [0, 0]], lanes=2, depth=1, empty_free=True) == 3.0


def test_fluid_with_a_buffer_of_every_position_is_the_rate_bound_or_the_late_work():
    for seed in range(4):
        active = _random_active(seed)
        for lanes in (1, 3, 8):
            work = active.sum(axis=-1)
            positions = len(work)
            suffix = np.cumsum(work[::-1])[::-1]
            expected = max(positions, float(np.max(np.arange(positions) + suffix / lanes)))
            for depth in (positions, 10 * positions):
                got = fluid_cycles(active, lanes=lanes, depth=depth)
                assert got == pytest.approx(expected, rel=1e-12)
                assert got >= max(positions, work.sum() / lanes)
    # front-loaded work: exactly the rate-bounded ideal max(P, W / L)
    assert fluid_cycles([[8, 8]] + [[0, 0]] * 3, lanes=2, depth=4) == 8.0
    assert fluid_cycles([[2, 2]] + [[0, 0]] * 3, lanes=2, depth=4) == 4.0


@pytest.mark.parametrize("lanes", [1, 2, 8])
def test_fluid_falls_with_depth_and_bounds_the_built_and_modelled_schedules(lanes):
    for seed in range(3):
        active = _random_active(seed, empty=0.3)
        fluid = [fluid_cycles(active, lanes=lanes, depth=d) for d in (1, 2, 4, 16, 64, 300)]
        assert all(a >= b for a, b in zip(fluid, fluid[1:]))
        for depth in (1, 4, 16):
            bound = fluid_cycles(active, lanes=lanes, depth=depth)
            assert decoupled_cycles(active, lanes=lanes, depth=depth, rotate=False) >= bound - 1e-9
            assert decoupled_cycles(active, lanes=lanes, depth=depth, rotate=True) >= bound - 1e-9
        # the built engine admits in order, one a cycle, and performs at most L MACs a cycle
        assert engine_cycles(active, lanes=lanes) >= fluid[-1] - 1e-9
        assert flat_cycles(active, lanes=lanes) >= fluid[0] - 1e-9
        # empty positions hold no slot, so only the unbounded buffer's bound applies ...
        assert flat_empty_free_cycles(active, lanes=lanes, waiting=1) >= fluid[-1] - 1e-9
        # ... or the bound with empty positions free, whose buffer counts positions with work:
        # the engine and flat + empty free hold two of them (walked and waiting)
        free = [fluid_cycles(active, lanes=lanes, depth=d, empty_free=True) for d in (1, 2, 4, 16, 300)]
        assert all(a >= b for a, b in zip(free, free[1:]))
        assert all(f <= g + 1e-9 for f, g in zip(free, (fluid[0], fluid[1], fluid[2], fluid[3], fluid[5])))
        assert engine_cycles(active, lanes=lanes) >= free[1] - 1e-9
        assert flat_empty_free_cycles(active, lanes=lanes, waiting=1) >= free[1] - 1e-9


@pytest.mark.parametrize("function,kwargs,error,message", [
    (fluid_cycles, {"lanes": 2, "depth": 0}, ValueError, r"buffer depth must be >= 1, not 0"),
    (fluid_cycles, {"lanes": 2, "depth": 4.0}, TypeError, r"buffer depth must be an integer, not 4\.0"),
    (fluid_cycles, {"lanes": 3, "depth": 4}, ValueError, r"lane count must be in \[1, 2\], not 3"),
    (fluid_cycles, {"lanes": True, "depth": 4}, TypeError, r"lane count must be an integer, not True"),
    (flat_empty_free_cycles, {"lanes": 2, "waiting": -1}, ValueError, r"waiting positions must be >= 0, not -1"),
    (flat_empty_free_cycles, {"lanes": 2, "waiting": "1"}, TypeError,
     r"waiting positions must be an integer, not '1'"),
    (flat_empty_free_cycles, {"lanes": 0, "waiting": 1}, ValueError, r"lane count must be in \[1, 2\], not 0"),
])
def test_new_model_parameter_errors(function, kwargs, error, message):
    with pytest.raises(error, match=message):
        function([[1, 2]], **kwargs)


def test_negative_active_counts_are_refused():
    with pytest.raises(ValueError, match="active counts must be >= 0"):
        fluid_cycles([[1, -2]], lanes=1, depth=1)
    with pytest.raises(ValueError, match="active counts must be >= 0"):
        flat_empty_free_cycles([[1, -2]], lanes=1, waiting=1)


@pytest.mark.parametrize("kwargs,error,message", [
    ({"lanes": 0, "depth": 4}, ValueError, r"lane count must be in \[1, 2\], not 0"),
    ({"lanes": 2.0, "depth": 4}, TypeError, r"lane count must be an integer, not 2\.0"),
    ({"lanes": 2, "depth": 0}, ValueError, r"buffer depth must be >= 1, not 0"),
])
def test_parameter_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        decoupled_cycles([[1, 2]], rotate=False, **kwargs)


def test_bench_reports_the_models_consistently():
    from dynsparse.sim.bench import _markdown, bench_image
    rows, _, _ = bench_image("text", thresholds=(0, 128), lanes=(8, 2), tile_sizes=(1,), max_side=48,
                             log=lambda *_: None, schedule_depths=(16,), fluid_depths=(16, 64))
    for row in rows:
        for figures in row["lanes"].values():
            model = figures["schedule_models"]
            assert model["flat_empty_free"] >= model["flat"]
            # (the engine's dense cycles include its pipeline fill, 7 cycles; the models have none)
            assert model["fluid_16"] <= model["fluid_64"] <= 1 + 1e-3
            # the bound holds the schedules with the same buffer, and the engine
            assert max(model["fixed_16"], model["rotated_16"]) <= model["fluid_16"] + 1e-12
            assert figures["fraction_of_rate_bounded_ideal"] <= model["fluid_16"] + 1e-12
            # freeing the empty positions only raises the bound; it still holds the engine and
            # flat + empty free (their buffers of positions with work are 2 deep)
            assert model["fluid_16"] <= model["fluid_free_16"] + 1e-12
            assert model["fluid_free_16"] <= model["fluid_free_64"] + 1e-12
            assert figures["fraction_of_rate_bounded_ideal"] <= model["fluid_free_16"] + 1e-12
            assert model["flat_empty_free"] <= model["fluid_free_16"] + 1e-12
            # the smallest power-of-two buffer at which the fluid bound reaches the target
            buffer = figures["fluid_buffer_for_target"]
            assert buffer is not None and buffer & (buffer - 1) == 0
            assert (buffer <= 16) == (model["fluid_16"] >= 0.8) and (buffer <= 64) == (model["fluid_64"] >= 0.8)
    text = _markdown(rows, lanes=(8, 2), thresholds=(0, 128), ref_std=24.0, pad_mode="zero", command="x")
    assert "| flat + empty free | fixed 16 | rotated 16 | fluid 16 | fluid 64 | fluid free 16 | fluid free 64 | " \
        "fluid buffer for 80% |" in text
    assert "**The 0.8 target.**" in text
    for lane in (8, 2):
        lowest = next(line for line in text.splitlines() if line.startswith(f"- Lowest over the table at L = {lane}:"))
        assert "flat + empty free " in lowest and "fluid 64 " in lowest
