"""The golden models of KernelScaler and SparseConv against direct definitions."""

import re

import numpy as np
import pytest

from dynsparse.golden.density import density_map, density_map_float, inv_ref_var
from dynsparse.golden.images import real_image
from dynsparse.golden.padmask import block_map, check_mask, mask_layout, mask_length
from dynsparse.golden.sparseconv import (
    accumulator_width, conv_float, cycles_per_position, dense_tap_lists, engine_cycles, expand_tiles, requantize,
    scale_weights, sparse_conv, tap_densities, tap_densities_float, tap_lists, walker_channels,
)


def reference_tap_densities(density, k, t):
    """Loop version of the module docstring's definition."""
    height, width, channels = density.shape
    r = k // 2
    out = np.zeros((-(-height // t), -(-width // t), channels, k, k), np.int64)
    for ty in range(out.shape[0]):
        for tx in range(out.shape[1]):
            for ky in range(k):
                for kx in range(k):
                    total = np.zeros(channels, np.int64)
                    for i in range(t):
                        for j in range(t):
                            y = min(max(ty * t + i + ky - r, 0), height - 1)
                            x = min(max(tx * t + j + kx - r, 0), width - 1)
                            total += density[y, x]
                    out[ty, tx, :, ky, kx] = (total + t * t // 2) // (t * t)
    return out


def reference_conv(frame, lists, k, pad_mode, mask, block_size):
    """Loop version of sparse_conv's accumulators and padding skips."""
    height, width, _ = frame.shape
    r = k // 2
    np_mode = {"zero": "constant", "replicate": "edge", "reflect": "reflect"}[pad_mode]
    padded = np.pad(frame.astype(np.int64), ((r, r), (r, r), (0, 0)), mode=np_mode)
    blocks = block_map(width, height, kernel_size=k, block_size=block_size)
    c_out = lists.count.shape[2]
    acc = np.zeros((height, width, c_out), np.int64)
    skipped = 0
    for y in range(height):
        for x in range(width):
            for co in range(c_out):
                for i in range(lists.count[y, x, co]):
                    dy, dx, ci = lists.dy[y, x, co, i], lists.dx[y, x, co, i], lists.ci[y, x, co, i]
                    block = blocks[y + dy, x + dx]
                    if block >= 0 and (pad_mode == "zero" or mask[block] == 0):
                        skipped += 1
                        continue
                    acc[y, x, co] += lists.weight[y, x, co, i] * padded[y + dy, x + dx, ci]
    return acc, skipped


@pytest.mark.parametrize("t", [1, 2, 4])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_tap_densities_match_definition(k, t):
    rng = np.random.default_rng(k * 10 + t)
    density = rng.integers(0, 257, size=(7, 10, 2))
    np.testing.assert_equal(tap_densities(density, kernel_size=k, tile_size=t),
                            reference_tap_densities(density, k, t))


def test_tap_densities_tile_one_is_replicated_window():
    from dynsparse.golden.window import windows
    rng = np.random.default_rng(3)
    density = rng.integers(0, 257, size=(6, 9, 2))
    values, _ = windows(density, kernel_size=3, pad_mode="replicate")       # [H, W, K, K, C]
    np.testing.assert_equal(tap_densities(density, kernel_size=3), values.transpose(0, 1, 4, 2, 3))


def test_scaling_rounds_half_up_and_keeps_full_density():
    weights = np.array([[[[127, -127, 1], [-1, 3, -3], [0, 64, -64]]]])
    full = np.full((1, 3, 3), 256)
    scaled, pruned, zero = scale_weights(weights, full, prune_threshold=0)
    np.testing.assert_equal(scaled, weights)
    half = np.full((1, 3, 3), 128)
    scaled, _, zero = scale_weights(weights, half, prune_threshold=0)
    # w/2 rounded half up: 63.5 -> 64, -63.5 -> -63, 0.5 -> 1, -0.5 -> 0, 1.5 -> 2, -1.5 -> -1
    np.testing.assert_equal(scaled[0, 0], [[64, -63, 1], [0, 2, -1], [0, 32, -32]])
    np.testing.assert_equal(zero[0, 0], [[0, 0, 0], [1, 0, 0], [1, 0, 0]])


def test_pruning_and_lists():
    rng = np.random.default_rng(5)
    weights = rng.integers(-127, 128, size=(3, 2, 3, 3))
    densities = rng.integers(0, 257, size=(4, 5, 2, 3, 3))
    lists = tap_lists(weights, densities, prune_threshold=100)
    scaled, pruned, zero = scale_weights(weights, densities, prune_threshold=100)
    for y in range(4):
        for x in range(5):
            for co in range(3):
                expected = [(ci, ky, kx, scaled[y, x, co, ci, ky, kx])
                            for ci in range(2) for ky in range(3) for kx in range(3)
                            if densities[y, x, ci, ky, kx] >= 100 and scaled[y, x, co, ci, ky, kx] != 0]
                n = lists.count[y, x, co]
                got = list(zip(lists.ci[y, x, co, :n], lists.dy[y, x, co, :n], lists.dx[y, x, co, :n],
                               lists.weight[y, x, co, :n]))
                assert got == expected
                assert not lists.weight[y, x, co, n:].any()
                assert lists.pruned[y, x, co] == (densities[y, x] < 100).sum()
                assert lists.count[y, x, co] + lists.pruned[y, x, co] + lists.zero[y, x, co] == 18
    everything = tap_lists(weights, densities, prune_threshold=511)
    assert not everything.count.any() and (everything.pruned == 18).all()


@pytest.mark.parametrize("pad_mode", ["zero", "replicate", "reflect"])
def test_sparse_conv_matches_loops(pad_mode):
    rng = np.random.default_rng(11)
    height, width, k, t = 9, 11, 3, 2
    frame = rng.integers(0, 256, size=(height, width, 2), dtype=np.uint8)
    weights = rng.integers(-127, 128, size=(3, 2, k, k))
    density = rng.integers(0, 257, size=(height, width, 2))
    lists = expand_tiles(tap_lists(weights, tap_densities(density, kernel_size=k, tile_size=t),
                                   prune_threshold=90), height=height, width=width, tile_size=t)
    mask = rng.integers(0, 2, size=mask_length(width, height, kernel_size=k))
    acc, counters = sparse_conv(frame, lists, kernel_size=k, pad_mode=pad_mode, mask=mask, lanes=2)
    expected, skipped = reference_conv(frame, lists, k, pad_mode, mask, 4)
    np.testing.assert_equal(acc, expected)
    assert counters["padding"] == skipped
    assert counters["performed"] + counters["pruned"] + counters["zero"] + counters["padding"] == \
        counters["dense"] == height * width * 3 * 18


def test_dense_mode_equals_float_convolution():
    rng = np.random.default_rng(2)
    frame = real_image("camera", size=(12, 14))
    weights = rng.integers(-127, 128, size=(4, 1, 5, 5))
    for mode in ("zero", "replicate", "reflect"):
        acc, counters = sparse_conv(frame, dense_tap_lists(weights, (12, 14)), kernel_size=5,
                                    pad_mode=mode, lanes=4, dense=True)
        np.testing.assert_equal(acc, conv_float(frame, weights, pad_mode=mode))
        assert counters["cycles"] == 12 * 14 * 25
        assert counters["performed"] == counters["dense"]


def test_integer_model_tracks_float_reference():
    frame = real_image("camera", size=(48, 48))
    rng = np.random.default_rng(4)
    weights = rng.integers(-127, 128, size=(4, 1, 3, 3))
    inv = inv_ref_var(24.0)
    density = density_map(frame[..., None], kernel_size=3, inv_ref_var=inv)
    density_f = density_map_float(frame[..., None], kernel_size=3, ref_std=24.0)
    lists = tap_lists(weights, tap_densities(density, kernel_size=3), prune_threshold=0)
    acc, _ = sparse_conv(frame, lists, kernel_size=3, pad_mode="replicate", lanes=4)
    reference = conv_float(frame, weights, tap_densities_float(density_f, kernel_size=3),
                           pad_mode="replicate")
    # per tap: weight rounding <= 0.5 and density error <= ~1 LSB of 256 times |w| <= 127
    bound = 9 * 255 * (0.5 + 127 * 1.01 / 256)
    assert np.abs(acc - reference).max() <= bound


def test_cycles_per_position():
    active = np.array([[3, 1, 0, 5], [0, 0, 0, 0], [2, 2, 2, 2]])
    # walkers: L = 4 → (channels 0, 1), (2, 3); L = 2 → all; L = 3 → (0, 1, 3), (2) alone
    np.testing.assert_equal(cycles_per_position(active, lanes=4), [3, 0, 2])
    np.testing.assert_equal(cycles_per_position(active, lanes=2), [5, 0, 4])
    np.testing.assert_equal(cycles_per_position(active, lanes=1), [9, 0, 8])
    np.testing.assert_equal(cycles_per_position(active, lanes=3), [5, 0, 3])
    assert walker_channels(4, 3) == [([0, 1], [0, 1, 3]), ([2], [2])]
    assert walker_channels(8, 8) == [([0, 1], [0, 1]), ([2, 3], [2, 3]), ([4, 5], [4, 5]), ([6, 7], [6, 7])]
    with pytest.raises(ValueError, match=r"^lane count must be an integer in \[1, 4\], not 0$"):
        cycles_per_position(active, lanes=0)
    with pytest.raises(ValueError, match=r"^lane count must be an integer in \[1, 4\], not 5$"):
        cycles_per_position(active, lanes=5)


def test_engine_cycles_hand_checked():
    # one position into an idle engine: latency 8 (12 requantised) plus its steps after the first
    assert engine_cycles([[4, 1]], lanes=2) == 8 + 3 - 1
    assert engine_cycles([[4, 1]], lanes=2, requantize=True) == 12 + 3 - 1
    # an empty position: W0, W1 (admitted), queue head, offered
    assert engine_cycles([[0, 0]], lanes=2) == 4
    # empty positions, one a cycle
    assert engine_cycles([[0, 0]] * 50, lanes=1) == 50 + 3
    # walked back to back without a bubble
    assert engine_cycles([[3, 3]] * 40, lanes=2) == 8 + 40 * 3 - 1
    # empty positions and the next one pass a long walk (a queue of 16): all eleven leave
    # right behind its result, one a cycle ...
    long = [[30, 30]] + [[0, 0]] * 10 + [[1, 1]]
    assert engine_cycles(long, lanes=2) == 8 + 30 - 1 + 11
    # ... but with a queue of 2 they wait for its result
    assert engine_cycles(long, lanes=2, queue_depth=2) > 8 + 30 - 1 + 11
    # a long walk, ten empties, six one-step walks and a long walk: with six finished slots
    # the short results wait there while the empties leave, and the walks go back to back;
    # with fewer, the walk stops while every slot is taken and the last walk starts later
    burst = [[30, 30]] + [[0, 0]] * 10 + [[1, 1]] * 6 + [[30, 30]]
    assert [engine_cycles(burst, lanes=2, finished_slots=s) for s in range(1, 9)] == \
        [83, 82, 81, 80, 79] + [8 + 30 + 6 + 30 - 1] * 3


def test_engine_cycles_skip_is_exact():
    """The model's skip over a long walk gives the cycle-by-cycle answer."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        c_out = int(rng.integers(1, 9))
        lanes = int(rng.integers(1, c_out + 1))
        active = rng.integers(0, 12, (int(rng.integers(1, 50)), c_out)) * (rng.random((1, 1)) < 0.9)
        active[rng.random(len(active)) < 0.5] = 0
        for depth in (1, 3, 16):
            for requant in (False, True):
                kwargs = {"lanes": lanes, "queue_depth": depth, "requantize": requant,
                          "finished_slots": int(rng.integers(1, 5))}
                assert engine_cycles(active, **kwargs) == engine_cycles(active, _skip=False, **kwargs)


def test_engine_cycles_bounds():
    """At least the walk and one cycle a position; at most the walk plus the fill per position."""
    rng = np.random.default_rng(4)
    for _ in range(100):
        active = rng.integers(0, 12, (60, 4)) * (rng.random((60, 1)) < 0.5)
        for lanes in (1, 2, 3, 4):
            walk = int(cycles_per_position(active, lanes=lanes).sum())
            cycles = engine_cycles(active, lanes=lanes)
            assert max(walk, len(active)) <= cycles <= walk + 12 * len(active)


def test_requantize():
    acc = np.array([-1000, 1000, 3, -3, 2, -2, 6, -6, 0])
    np.testing.assert_equal(requantize(acc, multiplier=1, shift=2), [-128, 127, 1, -1, 1, 0, 2, -1, 0])
    np.testing.assert_equal(requantize(acc, multiplier=3, shift=0), [-128, 127, 9, -9, 6, -6, 18, -18, 0])
    with pytest.raises(ValueError, match=r"^requantisation shift must be an integer in \[0, 47\], not 48$"):
        requantize(acc, multiplier=1, shift=48)
    with pytest.raises(ValueError, match=r"^requantisation multiplier must be an integer in \[0, 65535\], not -1$"):
        requantize(acc, multiplier=-1, shift=0)


def test_accumulator_width():
    # 9 taps of -128 * 255: -293760 needs 20 bits signed
    assert accumulator_width(taps=9) == 20
    assert accumulator_width(taps=9, pixel_signed=True) == 19      # 9 * 16384 = 147456
    assert accumulator_width(taps=1) == 16                          # -32640 and 32385 fit
    assert accumulator_width(taps=225 * 4) == 26


def test_mask_geometry():
    layout = mask_layout(6, 5, kernel_size=3, block_size=4)
    assert layout == {"top": (0, 2), "bottom": (2, 2), "left": (4, 2), "right": (6, 2)}
    blocks = block_map(6, 5, kernel_size=3, block_size=4)
    assert blocks[0, 0] == 0 and blocks[0, 4] == 1 and blocks[-1, -1] == 3
    assert blocks[1, 0] == 4 and blocks[5, 0] == 5 and blocks[1, -1] == 6
    assert (blocks[1:-1, 1:-1] == -1).all()
    assert mask_length(6, 5, kernel_size=1) == 0


def test_bad_inputs():
    weights = np.zeros((1, 1, 3, 3), np.int64)
    with pytest.raises(ValueError, match=r"^weights must lie in \[-127, 127\], not \[-128, 0\]$"):
        bad = weights.copy()
        bad[0, 0, 1, 1] = -128
        scale_weights(bad, np.zeros((1, 3, 3)), prune_threshold=0)
    with pytest.raises(ValueError, match=r"^weights must have shape \[C_out, C_in, K, K\] with K odd, not \(1, 1, 2, 2\)$"):
        tap_lists(np.zeros((1, 1, 2, 2), np.int64), np.zeros((1, 2, 2)), prune_threshold=0)
    with pytest.raises(ValueError, match=r"^tile size must be a power of two in \[1, 64\], not 3$"):
        tap_densities(np.zeros((4, 4)), kernel_size=3, tile_size=3)
    with pytest.raises(ValueError, match=r"^prune threshold must be an integer in \[0, 511\], not 512$"):
        tap_lists(weights, np.zeros((1, 3, 3)), prune_threshold=512)
    with pytest.raises(ValueError, match=re.escape("padding mask must have 8 bits for a 6×5 frame with K=3 "
                                                   "and blocks of 4, not 9")):
        check_mask(np.ones(9), 6, 5, kernel_size=3)
    lists = dense_tap_lists(np.ones((1, 1, 3, 3), np.int64), (4, 4))
    lists.dx[1, 1, 0, 2] = 3
    with pytest.raises(ValueError, match=r"^a tap's column offset lies outside \[0, 2\]$"):
        sparse_conv(np.zeros((4, 4), np.uint8), lists, kernel_size=3)
