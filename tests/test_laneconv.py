"""LaneConv (the compact engine) and its beats against golden.sparseconv in amaranth.sim."""

import numpy as np
import pytest
from amaranth.hdl import signed
from amaranth.sim import Simulator

from dynsparse.golden.density import density_map, inv_ref_var
from dynsparse.golden.images import real_image
from dynsparse.golden.laneconv import lane_beats, lane_cycles, lane_slots, lane_steps
from dynsparse.golden.padmask import mask_length
from dynsparse.golden.sparseconv import (dense_tap_lists, expand_tiles, requantize, sparse_conv,
                                         tap_densities, tap_lists)
from dynsparse.hdl.laneconv import LaneConv, lane_beat_layout
from dynsparse.hdl.window import PadMode
from dynsparse.sim.packing import unpack
from dynsparse.sim.pysim import run_simulation, stream_receive, stream_send
from dynsparse.sim.sparseconv_io import (lane_beat_words, mask_writes, random_frame, random_lists,
                                          random_mask, random_weights, window_words)


STALLS = [("none", "none"), ("fixed", "fixed"), ("random", "random"), ("none", "random"), ("random", "none")]
COUNTERS = ("cycles", "performed", "skipped_pruned", "skipped_zero", "skipped_padding")
GOLDEN = {"cycles": "cycles", "performed": "performed", "skipped_pruned": "pruned",
          "skipped_zero": "zero", "skipped_padding": "padding"}


def make(**kwargs):
    return LaneConv(**{"kernel_size": 3, "in_channels": 1, "out_channels": 4, "lanes": 4,
                       "max_width": 16, "max_height": 16, **kwargs})










def simulate(dut, jobs, *, pad_mode="zero", dense=False, mask=None, source="none", sink="none", seed=0,
             multiplier=1, shift=0, beat_words=None, expect=True, timeline=False):
    """Run frames ``jobs = [(frame, lists), ...]`` back to back (or the raw ``beat_words``);
    return the results per frame, the counters, the errors and the cycles from the first
    window accepted to the last result offered."""
    k = dut.kernel_size
    height, width, _ = jobs[0][0].shape
    window_payloads = []
    for frame, _ in jobs:
        window_payloads += window_words(dut.i_window.payload.shape(), frame, kernel_size=k, pad_mode=pad_mode)
    if beat_words is None:
        beat_words = []
        for _, lists in jobs:
            beat_words += lane_beat_words(dut.i_taps.payload.shape(), lane_beats(lists, lanes=dut.lanes))
    writes = [] if mask is None else mask_writes(mask, width, height, kernel_size=k, block_size=dut.block_size)
    received, state, times = [], {}, {}

    async def send_windows(ctx):
        ctx.set(dut.pad_mode, PadMode[pad_mode.upper()])
        ctx.set(dut.dense, dense)
        ctx.set(dut.width, width)
        ctx.set(dut.height, height)
        if dut.requantize:
            ctx.set(dut.multiplier, multiplier)
            ctx.set(dut.shift, shift)
        for band, index, value in writes:
            ctx.set(dut.mask_write, 1)
            ctx.set(dut.mask_band, band)
            ctx.set(dut.mask_index, index)
            ctx.set(dut.mask_value, value)
            await ctx.tick()
        ctx.set(dut.mask_write, 0)
        await stream_send(ctx, dut.i_window, window_payloads, pattern=source, seed=seed)

    async def send_beats(ctx):
        await stream_send(ctx, dut.i_taps, beat_words, pattern=source, seed=seed + 7)

    async def receive(ctx):
        received.extend(await stream_receive(ctx, dut.o_stream, len(window_payloads), pattern=sink,
                                             seed=seed + 1, raw=True))
        ctx.set(dut.o_stream.ready, 1)
        for _ in range(dut.latency + 8):
            await ctx.tick()
            assert not ctx.get(dut.o_stream.valid), "extra output"
        assert not ctx.get(dut.busy)
        for name in COUNTERS:
            state[name] = ctx.get(getattr(dut, name))
        state["errors"] = {name: ctx.get(dut.errors[name]) for name in ("misaligned", "bad_tap", "bad_mask_write")}

    async def clock(ctx):
        cycle = 0
        async for _, _, wv, wr, ov in ctx.tick().sample(dut.i_window.valid, dut.i_window.ready, dut.o_stream.valid):
            if wv and wr and "first" not in times:
                times["first"] = cycle
            if ov:
                times["last"] = cycle
            cycle += 1

    if timeline:
        sim = Simulator(dut)
        sim.add_clock(1e-6)
        for bench in (send_windows, send_beats, receive):
            sim.add_testbench(bench)
        sim.add_testbench(clock, background=True)
        sim.run_until(1e-6 * (20 * len(beat_words) + 4 * len(window_payloads) + 2000))
        assert "errors" in state, "the run did not end"
        state["span"] = times["last"] - times["first"]
    else:
        run_simulation(dut, [send_windows, send_beats, receive],
                       deadline_cycles=20 * len(beat_words) + 4 * len(window_payloads) + 50 * len(writes) + 2000)
    fields = unpack(dut.o_stream.payload.shape(), received)
    message = f"pad_mode={pad_mode} dense={dense} source={source} sink={sink} seed={seed}"
    totals, offset, results = dict.fromkeys(GOLDEN.values(), 0), 0, []
    for frame, lists in jobs:
        size = frame.shape[0] * frame.shape[1]
        got = fields["data"][offset:offset + size].reshape(frame.shape[0], frame.shape[1], -1)
        results.append(got)
        ys, xs = np.mgrid[0:frame.shape[0], 0:frame.shape[1]]
        np.testing.assert_equal(fields["x"][offset:offset + size], xs.ravel(), err_msg=message)
        np.testing.assert_equal(fields["y"][offset:offset + size], ys.ravel(), err_msg=message)
        assert fields["first"][offset:offset + size].tolist() == [1] + [0] * (size - 1)
        assert fields["last"][offset:offset + size].tolist() == [0] * (size - 1) + [1]
        offset += size
        if not expect:
            continue
        acc, counters = sparse_conv(frame, lists, kernel_size=k, pad_mode=pad_mode, mask=mask,
                                    block_size=dut.block_size, dense=dense)
        expected = requantize(acc, multiplier=multiplier, shift=shift) if dut.requantize else acc
        np.testing.assert_equal(got, expected, err_msg=message)
        counters["cycles"] = int(lane_steps(lists.count, lanes=dut.lanes).sum())
        for name in totals:
            totals[name] += counters[name]
    if expect:
        assert {name: state[name] for name in COUNTERS} == {name: totals[GOLDEN[name]] for name in COUNTERS}, message
        assert not any(state["errors"].values()), state["errors"]
    return results, state


# --- the beats (golden) -----------------------------------------------------------------------

def test_beats_hand_checked():
    """Two channels on one lane (slots 0 and 1), one on another; an empty position."""
    count = np.array([[2, 1, 1], [0, 0, 0]])                   # positions × C_out, L = 2
    n = 9
    def field(value):
        return np.full((2, 3, n), value)
    weight = np.arange(2 * 3 * n).reshape(2, 3, n)
    from dynsparse.golden.sparseconv import TapLists
    lists = TapLists(count=count, ci=field(0), dy=field(1), dx=field(2), weight=weight,
                     pruned=np.array([[1, 0, 2], [3, 3, 3]]), zero=np.array([[0, 1, 0], [0, 0, 0]]))
    beats = lane_beats(lists, lanes=2)
    # lane 0: channel 0 (slot 0, two entries) then channel 2 (slot 1, one); lane 1: channel 1
    assert lane_steps(count, lanes=2).tolist() == [3, 1]
    assert beats["position"].tolist() == [0, 0, 0, 1]
    assert beats["end"].tolist() == [0, 0, 1, 1]
    assert beats["valid"].tolist() == [[1, 1], [1, 0], [1, 0], [0, 0]]
    assert beats["slot"][:3, 0].tolist() == [0, 0, 1]
    assert beats["flush"][:3, 0].tolist() == [0, 1, 1] and beats["flush"][0, 1] == 1
    assert beats["weight"][:3, 0].tolist() == [weight[0, 0, 0], weight[0, 0, 1], weight[0, 2, 0]]
    assert beats["weight"][0, 1] == weight[0, 1, 0]
    assert beats["pruned"].tolist() == [3, 0, 0, 9] and beats["zero"].tolist() == [1, 0, 0, 0]
    assert beats["first"].tolist() == [1, 0, 0, 0] and beats["last"].tolist() == [0, 0, 0, 1]
    assert lane_cycles(count, lanes=2) == 7 + 4 - 1
    assert lane_slots(3, 2) == 2 and lane_slots(8, 8) == 1 and lane_slots(5, 1) == 5


@pytest.mark.parametrize("bad, error", [(0, ValueError), (5, ValueError), (2.0, TypeError), (True, TypeError)])
def test_lane_count_checked(bad, error):
    with pytest.raises(error, match=rf"lane count must be an integer in \[1, 4\], not {bad!r}"):
        lane_slots(4, bad)


def test_beats_reject_other_input():
    with pytest.raises(TypeError, match="lists must be TapLists"):
        lane_beats(np.zeros((2, 2)), lanes=1)


# --- parameters -------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    ({"kernel_size": 4}, ValueError, "kernel size must be an odd integer in \\[1, 15\\], not 4"),
    ({"lanes": 0}, ValueError, "lane count must be an integer in \\[1, 4\\], not 0"),
    ({"lanes": 5}, ValueError, "lane count must be an integer in \\[1, 4\\], not 5"),
    ({"in_channels": 0}, ValueError, "input channel count must be an integer >= 1, not 0"),
    ({"block_size": 3}, ValueError, "block size must be a power of two"),
    ({"requantize": 1}, TypeError, "requantize must be a bool, not 1"),
    ({"pixel_shape": signed(9)}, ValueError, "pixel shape must be unsigned\\(8\\) or signed\\(8\\)"),
    ({"max_width": 0}, ValueError, "maximum width must be an integer in \\[1, 65536\\], not 0"),
])
def test_bad_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        make(**kwargs)


def test_beat_layout_is_narrow():
    """Eight lanes, K = 3, C_in = 1: 16 bits an entry (valid, flush, slot, ci, dy, dx, weight)."""
    layout = lane_beat_layout(kernel_size=3, in_channels=1, out_channels=8, lanes=8)
    assert layout["lanes"].shape.elem_shape.size == 16
    assert layout.size == 8 * 16 + 3 + 2 * 7


# --- results against golden -------------------------------------------------------------------

@pytest.mark.parametrize("source, sink", STALLS)
@pytest.mark.parametrize("c_out, lanes", [(4, 4), (4, 2), (3, 2), (5, 1)])
def test_random_frames(source, sink, c_out, lanes):
    seed = 100 * c_out + 10 * lanes + STALLS.index((source, sink))
    rng = np.random.default_rng(seed)
    dut = make(out_channels=c_out, lanes=lanes)
    height, width = 5, 7
    pad_mode = ("zero", "replicate", "reflect")[seed % 3]
    jobs = [(random_frame(rng, dut, height, width), random_lists(rng, dut, height, width, tile_size=t))
            for t in (1, 2)]
    jobs.append((random_frame(rng, dut, height, width),
                 dense_tap_lists(random_weights(rng, dut), shape=(height, width))))
    simulate(dut, jobs, pad_mode=pad_mode, mask=random_mask(rng, dut, height, width),
             source=source, sink=sink, seed=seed)


@pytest.mark.parametrize("kwargs", [
    {"kernel_size": 5, "in_channels": 2, "out_channels": 3, "lanes": 3, "block_size": 2},
    {"kernel_size": 1, "in_channels": 3, "out_channels": 2, "lanes": 2},
    {"pixel_shape": signed(8), "out_channels": 4, "lanes": 2},
])
def test_other_shapes(kwargs):
    rng = np.random.default_rng(7)
    dut = make(**kwargs)
    height, width = 6, 5
    jobs = [(random_frame(rng, dut, height, width), random_lists(rng, dut, height, width))]
    mask = random_mask(rng, dut, height, width) if dut.kernel_size > 1 else None
    simulate(dut, jobs, pad_mode="reflect", mask=mask, source="random", sink="random", seed=3)


def test_real_image():
    """A crop of camera, tap lists from its density map (2×2 tiles), replicate padding, a mask."""
    rng = np.random.default_rng(11)
    dut = make(out_channels=4, lanes=4, max_width=32, max_height=32)
    frame = real_image("camera", size=(12, 16))[:, :, None]
    density = density_map(frame, kernel_size=3, inv_ref_var=inv_ref_var(24))
    lists = expand_tiles(tap_lists(random_weights(rng, dut), tap_densities(density, kernel_size=3, tile_size=2),
                                   prune_threshold=64), height=12, width=16, tile_size=2)
    simulate(dut, [(frame, lists)], pad_mode="replicate", mask=random_mask(rng, dut, 12, 16),
             source="random", sink="random", seed=5)


def test_extremes_and_dense():
    """±127 weights on full-scale pixels, everything pruned, every block masked, dense mode."""
    dut = make()
    height, width = 4, 5
    shape = (4, 1, 3, 3)
    full = np.full((height, width, 1), 255, np.uint8)
    masked = np.zeros(mask_length(width, height, kernel_size=3, block_size=4), np.uint8)
    nothing = np.zeros((height, width, 1, 3, 3), np.int64)
    jobs = [(full, dense_tap_lists(np.full(shape, 127), (height, width))),
            (np.zeros_like(full), dense_tap_lists(np.full(shape, -127), (height, width))),
            (full, tap_lists(np.full(shape, -127), nothing, prune_threshold=1))]
    simulate(dut, jobs, pad_mode="reflect", mask=masked, source="fixed", sink="fixed", seed=1)
    simulate(dut, jobs[:2], pad_mode="zero", dense=True, source="none", sink="random", seed=2)


def test_requantize():
    rng = np.random.default_rng(13)
    dut = make(requantize=True, lanes=2)
    jobs = [(random_frame(rng, dut, 4, 6), random_lists(rng, dut, 4, 6))]
    for multiplier, shift in ((1, 0), (40000, 17), (65535, 47)):
        simulate(dut, jobs, pad_mode="zero", source="random", sink="random", seed=shift,
                 multiplier=multiplier, shift=shift)


# --- timing -----------------------------------------------------------------------------------

@pytest.mark.parametrize("requant", [False, True])
@pytest.mark.parametrize("lanes", [1, 2, 4])
def test_timeline(lanes, requant):
    """Cycles from the first window accepted to the last result offered equal the model."""
    rng = np.random.default_rng(lanes)
    dut = make(lanes=lanes, requantize=requant)
    frame = random_frame(rng, dut, 5, 6)
    lists = random_lists(rng, dut, 5, 6)
    _, state = simulate(dut, [(frame, lists)], pad_mode="replicate", timeline=True)
    assert state["span"] == dut.timeline(lists.count.reshape(-1, 4))


def test_latency():
    """One position of one beat into an idle engine: the result is offered ``latency`` cycles on."""
    dut = make(max_width=1, max_height=1)
    frame = np.full((1, 1, 1), 3, np.uint8)
    lists = dense_tap_lists(np.zeros((4, 1, 3, 3), np.int64), (1, 1))
    lists.count[:] = 1
    _, state = simulate(dut, [(frame, lists)], pad_mode="replicate", timeline=True)
    assert state["span"] == dut.latency == 7


# --- malformed beats --------------------------------------------------------------------------

def test_bad_entries_flagged_and_next_frame_exact():
    """An entry beyond the window or the channels is not performed and raises ``bad_tap``; a
    lane given a new slot before a flush too; the next frame is exact."""
    rng = np.random.default_rng(17)
    dut = make(out_channels=3, lanes=2)
    layout = dut.i_taps.payload.shape()
    height, width = 3, 4
    bad_frame, bad_lists = random_frame(rng, dut, height, width), random_lists(rng, dut, height, width)
    good = (random_frame(rng, dut, height, width), random_lists(rng, dut, height, width))
    beats = lane_beats(bad_lists, lanes=2)
    beats["dy"][0, 0], beats["valid"][0, 0] = 3, 1
    beats["slot"][1, 1], beats["valid"][1, 1] = 1, 1          # lane 1 owns no channel 3
    beats["flush"][:, 0] = 0                                  # lane 0 never flushes its slots
    words = lane_beat_words(layout, beats) + lane_beat_words(layout, lane_beats(good[1], lanes=2))
    results, state = simulate(dut, [(bad_frame, bad_lists), good], beat_words=words, expect=False,
                              source="random", sink="random", seed=4)
    assert state["errors"]["bad_tap"] and not state["errors"]["misaligned"]
    acc, _ = sparse_conv(good[0], good[1], kernel_size=3)
    np.testing.assert_equal(results[1], acc)


@pytest.mark.parametrize("fault", ["missing end", "extra end", "beats cut short", "extra beats"])
def test_framing_errors_realign(fault):
    """Beats that lose or gain a position are flagged; every window still gives a result and
    the next frame is exact."""
    rng = np.random.default_rng(23)
    dut = make()
    layout = dut.i_taps.payload.shape()
    height, width = 3, 5
    bad = (random_frame(rng, dut, height, width), random_lists(rng, dut, height, width))
    good = (random_frame(rng, dut, height, width), random_lists(rng, dut, height, width))
    beats = lane_beats(bad[1], lanes=4)
    ends = np.flatnonzero(beats["end"])
    if fault == "missing end":
        beats["end"][ends[3]] = 0
    elif fault == "extra end":
        beats["end"][ends[3] + 1] = 1 if ends[4] > ends[3] + 1 else beats["end"][ends[3] + 1]
        beats["end"][0] = 1
    words = lane_beat_words(layout, beats)
    if fault == "beats cut short":
        words = words[:ends[6] + 1]
    elif fault == "extra beats":
        words = words + words[ends[2] + 1:ends[4] + 1]
    words += lane_beat_words(layout, lane_beats(good[1], lanes=4))
    results, state = simulate(dut, [bad, good], beat_words=words, expect=False, source="random",
                              sink="random", seed=6)
    assert state["errors"]["misaligned"]
    acc, _ = sparse_conv(good[0], good[1], kernel_size=3)
    np.testing.assert_equal(results[1], acc)


def test_clear_counters_and_errors():
    """``clear_counters`` zeroes every counter, ``clear_errors`` the flags."""
    rng = np.random.default_rng(29)
    dut = make()
    frame, lists = random_frame(rng, dut, 3, 3), random_lists(rng, dut, 3, 3)
    beats = lane_beats(lists, lanes=4)
    beats["dx"][0, 0], beats["valid"][0, 0] = 3, 1
    words = lane_beat_words(dut.i_taps.payload.shape(), beats)
    states = {}

    async def bench(ctx):
        ctx.set(dut.pad_mode, PadMode.ZERO)
        ctx.set(dut.width, 3)
        ctx.set(dut.height, 3)
        ctx.set(dut.o_stream.ready, 1)
        await stream_send(ctx, dut.i_window, window_words(dut.i_window.payload.shape(), frame, kernel_size=3,
                                                          pad_mode="zero"))
        for _ in range(30):
            await ctx.tick()
        states["before"] = ctx.get(dut.cycles), ctx.get(dut.errors.bad_tap)
        ctx.set(dut.clear_counters, 1)
        ctx.set(dut.clear_errors, 1)
        await ctx.tick()
        ctx.set(dut.clear_counters, 0)
        ctx.set(dut.clear_errors, 0)
        await ctx.tick()
        states["after"] = [ctx.get(getattr(dut, name)) for name in COUNTERS] + [ctx.get(dut.errors.as_value())]

    async def beats_in(ctx):
        await stream_send(ctx, dut.i_taps, words)

    run_simulation(dut, [bench, beats_in], deadline_cycles=500)
    assert states["before"][0] > 0 and states["before"][1] == 1
    assert states["after"] == [0] * 6
