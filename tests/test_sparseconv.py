"""SparseConv against golden.sparseconv in amaranth.sim: results, counters, errors, timing."""

import numpy as np
import pytest
from amaranth.hdl import signed, unsigned

from dynsparse.golden.density import density_map, inv_ref_var
from dynsparse.golden.images import real_image
from dynsparse.golden.padmask import mask_length
from dynsparse.golden.sparseconv import (dense_tap_lists, expand_tiles, requantize, sparse_conv,
                                         tap_densities, tap_lists)
from dynsparse.hdl.padmask import PaddingMask
from dynsparse.hdl.sparseconv import SparseConv
from dynsparse.hdl.window import PadMode
from dynsparse.sim.packing import unpack
from dynsparse.sim.pysim import run_simulation, stream_receive, stream_send
from dynsparse.sim.sparseconv_io import (mask_writes, random_frame, random_lists, random_mask,
                                          random_weights, tap_list_words, window_words)


STALLS = [("none", "none"), ("fixed", "fixed"), ("random", "random"),
          ("none", "random"), ("random", "none"), ("fixed", "none")]
PAD_MODES = ("zero", "replicate", "reflect")








def simulate(dut, jobs, *, pad_mode="zero", dense=False, mask=None, source="none", sink="none",
             seed=0, multiplier=1, shift=0, check_counters=True, writes=None):
    """Run frames ``jobs = [(frame, lists), ...]`` back to back; return the results per
    frame, the counters and the errors. Checks every result against golden (unless a
    frame's expected results are ``None``), that nothing more comes out, and the counters."""
    k = dut.kernel_size
    height, width, _ = jobs[0][0].shape
    window_payloads, tap_payloads = [], []
    for frame, lists in jobs:
        window_payloads += window_words(dut.i_window.payload.shape(), frame, kernel_size=k,
                                        pad_mode=pad_mode)
        tap_payloads += tap_list_words(dut.i_taps.payload.shape(), lists)
    if writes is None and mask is not None:
        writes = mask_writes(mask, width, height, kernel_size=k, block_size=dut.block_size)
    received, state = [], {}
    settle = dut.latency + 8

    async def send_windows(ctx):
        ctx.set(dut.pad_mode, PadMode[pad_mode.upper()])
        ctx.set(dut.dense, dense)
        ctx.set(dut.width, width)
        ctx.set(dut.height, height)
        if dut.requantize:
            ctx.set(dut.multiplier, multiplier)
            ctx.set(dut.shift, shift)
        for band, index, value in writes or []:
            ctx.set(dut.mask_write, 1)
            ctx.set(dut.mask_band, band)
            ctx.set(dut.mask_index, index)
            ctx.set(dut.mask_value, value)
            await ctx.tick()
        ctx.set(dut.mask_write, 0)
        await stream_send(ctx, dut.i_window, window_payloads, pattern=source, seed=seed)

    async def send_taps(ctx):
        await stream_send(ctx, dut.i_taps, tap_payloads, pattern=source, seed=seed + 7)

    async def receive(ctx):
        received.extend(await stream_receive(ctx, dut.o_stream, len(window_payloads), pattern=sink,
                                             seed=seed + 1, raw=True))
        ctx.set(dut.o_stream.ready, 1)
        for _ in range(settle):
            await ctx.tick()
            assert not ctx.get(dut.o_stream.valid), "extra output"
        assert not ctx.get(dut.busy)
        for name in ("cycles", "performed", "skipped_pruned", "skipped_zero", "skipped_padding"):
            state[name] = ctx.get(getattr(dut, name))
        state["errors"] = {name: ctx.get(dut.errors[name])
                           for name in ("misaligned", "bad_tap", "bad_mask_write")}

    work = sum(int(lists.count.sum()) for _, lists in jobs) + len(window_payloads)
    run_simulation(dut, [send_windows, send_taps, receive],
                   deadline_cycles=8 * work + 50 * len(writes or []) + 2000)
    fields = unpack(dut.o_stream.payload.shape(), received)
    message = f"pad_mode={pad_mode} dense={dense} source={source} sink={sink} seed={seed}"
    totals, offset, results = {}, 0, []
    for frame, lists in jobs:
        size = frame.shape[0] * frame.shape[1]
        got = fields["data"][offset:offset + size].reshape(frame.shape[0], frame.shape[1], -1)
        results.append(got)
        ys, xs = np.mgrid[0:frame.shape[0], 0:frame.shape[1]]
        np.testing.assert_equal(fields["x"][offset:offset + size], xs.ravel(), err_msg=message)
        np.testing.assert_equal(fields["y"][offset:offset + size], ys.ravel(), err_msg=message)
        assert fields["first"][offset] == 1 and fields["first"][offset:offset + size].sum() == 1
        assert fields["last"][offset + size - 1] == 1 and fields["last"][offset:offset + size].sum() == 1
        offset += size
        if not check_counters:
            continue
        acc, counters = sparse_conv(frame, lists, kernel_size=k, pad_mode=pad_mode, mask=mask,
                                    block_size=dut.block_size, lanes=dut.lanes, dense=dense)
        expected = requantize(acc, multiplier=multiplier, shift=shift) if dut.requantize else acc
        np.testing.assert_equal(got, expected, err_msg=message)
        for name in ("cycles", "performed", "pruned", "zero", "padding"):
            totals[name] = totals.get(name, 0) + counters[name]
    if check_counters:
        assert {name: state[name] for name in ("cycles", "performed")} == \
            {name: totals[name] for name in ("cycles", "performed")}, message
        assert (state["skipped_pruned"], state["skipped_zero"], state["skipped_padding"]) == \
            (totals["pruned"], totals["zero"], totals["padding"]), message
        assert not any(state["errors"].values()), state["errors"]
    return results, state


def make(**kwargs):
    return SparseConv(**{"kernel_size": 3, "in_channels": 1, "out_channels": 4, "lanes": 2,
                         "max_width": 16, "max_height": 16, **kwargs})




# --- results against golden -----------------------------------------------------------------

@pytest.mark.parametrize("pad_mode", PAD_MODES)
@pytest.mark.parametrize("kernel_size, in_channels, out_channels, lanes, pixel_shape", [
    (3, 1, 4, 1, unsigned(8)),
    (3, 1, 4, 2, signed(8)),
    (3, 2, 4, 4, unsigned(8)),
    (5, 1, 3, 2, signed(8)),
    (1, 2, 3, 2, unsigned(8)),
])
def test_random(kernel_size, in_channels, out_channels, lanes, pixel_shape, pad_mode):
    dut = make(kernel_size=kernel_size, in_channels=in_channels, out_channels=out_channels,
               lanes=lanes, pixel_shape=pixel_shape, block_size=2)
    seed = kernel_size * 1000 + in_channels * 100 + out_channels * 10 + lanes + PAD_MODES.index(pad_mode)
    rng = np.random.default_rng(seed)
    height, width = 6, 7
    jobs = [(random_frame(rng, dut, height, width), random_lists(rng, dut, height, width, tile_size=t))
            for t in (1, 2)]
    simulate(dut, jobs, pad_mode=pad_mode, mask=random_mask(rng, dut, height, width), seed=seed)


@pytest.mark.parametrize("source, sink", STALLS)
def test_stalls(source, sink):
    dut = make(lanes=2, block_size=2)
    rng = np.random.default_rng(41)
    height, width = 5, 6
    jobs = [(random_frame(rng, dut, height, width), random_lists(rng, dut, height, width)),
            (random_frame(rng, dut, height, width),
             dense_tap_lists(random_weights(rng, dut), shape=(height, width)))]
    simulate(dut, jobs, pad_mode="reflect", mask=random_mask(rng, dut, height, width),
             source=source, sink=sink, seed=5)


@pytest.mark.parametrize("queue_depth, lanes, source, sink", [
    (1, 2, "random", "random"), (2, 3, "none", "random"), (16, 4, "random", "fixed")])
def test_empty_positions(queue_depth, lanes, source, sink):
    """Runs of empty positions (zeros out, no walk step) between walked ones, under stalls:
    every result in order with its coordinates, none lost, none left over."""
    dut = make(lanes=lanes, queue_depth=queue_depth)
    rng = np.random.default_rng(queue_depth)
    height, width = 4, 6
    jobs = []
    for _ in range(2):
        lists = random_lists(rng, dut, height, width)
        lists.count[rng.random((height, width)) < 0.6] = 0
        lists.count[1, :4] = 0
        jobs.append((random_frame(rng, dut, height, width), lists))
    results, state = simulate(dut, jobs, pad_mode="reflect", source=source, sink=sink, seed=queue_depth)
    for (_, lists), got in zip(jobs, results):
        assert not got[(lists.count == 0).all(axis=-1)].any()


@pytest.mark.parametrize("pad_mode", PAD_MODES)
@pytest.mark.parametrize("lanes", [1, 2, 4])
def test_dense_mode(lanes, pad_mode):
    """Dense lists, nothing skipped: C_out a multiple of L keeps every lane busy every step."""
    dut = make(lanes=lanes)
    rng = np.random.default_rng(lanes)
    height, width = 5, 6
    lists = dense_tap_lists(random_weights(rng, dut), shape=(height, width))
    frame = random_frame(rng, dut, height, width)
    _, state = simulate(dut, [(frame, lists)], pad_mode=pad_mode, dense=True,
                        mask=np.zeros(mask_length(width, height, kernel_size=3, block_size=4), np.uint8))
    per_position = -(-4 // lanes) * 9
    assert state["cycles"] == height * width * per_position
    assert state["performed"] == state["cycles"] * lanes          # lanes busy 100 %


def test_camera_crop():
    """Real image, densities from the density map, 2×2 tiles, random mask, random stalls."""
    dut = make(out_channels=4, lanes=2, max_width=32, max_height=32)
    height, width = 12, 16
    frame = real_image("camera", size=(height, width), offset=(100, 220))[..., None]
    density = density_map(frame, kernel_size=3, inv_ref_var=inv_ref_var(24))
    rng = np.random.default_rng(9)
    densities = tap_densities(density, kernel_size=3, tile_size=2)
    lists = expand_tiles(tap_lists(random_weights(rng, dut), densities, prune_threshold=64),
                         height=height, width=width, tile_size=2)
    assert lists.pruned.sum() > 0 and (lists.count > 0).sum() > 0
    for pad_mode in PAD_MODES:
        simulate(dut, [(frame, lists)], pad_mode=pad_mode, mask=random_mask(rng, dut, height, width),
                 source="random", sink="random", seed=17)


def test_extremes():
    """Full-scale weights and pixels, every tap pruned, nothing pruned, every block masked."""
    height, width = 4, 5
    for pixel_shape, pixel in ((unsigned(8), 255), (signed(8), -128), (signed(8), 127)):
        dut = make(pixel_shape=pixel_shape, lanes=4)
        frame = np.full((height, width, 1), pixel, dtype=np.int8 if pixel_shape.signed else np.uint8)
        for weight in (127, -127, -128):                # -128 only from a malformed list
            lists = dense_tap_lists(np.full((4, 1, 3, 3), 1), shape=(height, width))
            lists.weight[...] = weight
            simulate(dut, [(frame, lists)], pad_mode="replicate", seed=weight)
        pruned = tap_lists(np.full((4, 1, 3, 3), 100), np.zeros((height, width, 1, 3, 3), np.int64),
                           prune_threshold=1)
        assert (pruned.count == 0).all()
        _, state = simulate(dut, [(frame, pruned)], pad_mode="reflect")
        # every position empty: no walk step at all
        assert state["cycles"] == 0 and state["skipped_pruned"] == height * width * 36
        everything = tap_lists(np.full((4, 1, 3, 3), 100), np.full((height, width, 1, 3, 3), 256),
                               prune_threshold=0)
        masked = np.zeros(mask_length(width, height, kernel_size=3, block_size=4), np.uint8)
        _, state = simulate(dut, [(frame, everything)], pad_mode="replicate", mask=masked)
        # every window element outside the frame, for each of the 4 output channels
        assert state["skipped_padding"] == 4 * (2 * 3 * width + 2 * 3 * height - 4)
        assert state["performed"] == 4 * height * width * 9 - state["skipped_padding"]


@pytest.mark.parametrize("shift, multiplier", [(0, 1), (0, 3), (7, 300), (12, 65535), (47, 65535), (20, 0)])
def test_requantize(shift, multiplier):
    dut = make(requantize=True, lanes=2, pixel_shape=signed(8))
    rng = np.random.default_rng(shift)
    height, width = 4, 5
    jobs = [(random_frame(rng, dut, height, width), random_lists(rng, dut, height, width))]
    simulate(dut, jobs, pad_mode="replicate", mask=random_mask(rng, dut, height, width),
             multiplier=multiplier, shift=shift, source="random", sink="random", seed=shift)


# --- errors ---------------------------------------------------------------------------------

def test_malformed_lists_then_exact():
    dut = make(lanes=2)
    rng = np.random.default_rng(3)
    height, width = 4, 5
    frame = random_frame(rng, dut, height, width)
    for field, value in (("dy", 3), ("dx", 3), ("ci", 1), ("count", 15)):
        bad = random_lists(rng, dut, height, width)
        if field == "count":
            bad.count[1, 2, 0] = value
        else:
            getattr(bad, field)[1, 2, 0, 0] = value
            bad.count[1, 2, 0] = max(1, bad.count[1, 2, 0])
        good = random_lists(rng, dut, height, width)
        results, state = simulate(dut, [(frame, bad), (frame, good)], check_counters=False,
                                  pad_mode="zero")
        assert state["errors"] == {"misaligned": 0, "bad_tap": 1, "bad_mask_write": 0}, field
        acc, _ = sparse_conv(frame, good, kernel_size=3, pad_mode="zero", lanes=2)
        np.testing.assert_equal(results[1], acc)
        # the other outputs of the bad frame are exact too
        bad.count[1, 2, 0] = 0
        bad.dy[1, 2, 0, 0] = bad.dx[1, 2, 0, 0] = bad.ci[1, 2, 0, 0] = 0
        acc, _ = sparse_conv(frame, bad, kernel_size=3, pad_mode="zero", lanes=2)
        keep = np.ones(acc.shape, bool)
        keep[1, 2, 0] = False
        np.testing.assert_equal(results[0][keep], acc[keep])


@pytest.mark.parametrize("field", ["x", "y", "first", "last"])
def test_misaligned(field):
    """A tap list whose marker disagrees with its window is flagged and processed anyway."""
    dut = make(lanes=4)
    rng = np.random.default_rng(4)
    height, width = 3, 4
    frame = random_frame(rng, dut, height, width)
    lists = random_lists(rng, dut, height, width)
    layout = dut.i_taps.payload.shape()
    words = tap_list_words(layout, lists)
    words[5] ^= 1 << layout[field].offset
    received, errors = [], {}

    async def send_windows(ctx):
        await stream_send(ctx, dut.i_window, window_words(dut.i_window.payload.shape(), frame,
                                                          kernel_size=3, pad_mode="zero"))

    async def send_taps(ctx):
        await stream_send(ctx, dut.i_taps, words[:5])
        assert not ctx.get(dut.errors.misaligned)
        await stream_send(ctx, dut.i_taps, words[5:])
        await ctx.tick().repeat(2)
        errors.update(misaligned=ctx.get(dut.errors.misaligned))
        ctx.set(dut.clear_errors, 1)
        await ctx.tick()
        ctx.set(dut.clear_errors, 0)
        errors.update(cleared=ctx.get(dut.errors.misaligned))

    async def receive(ctx):
        received.extend(await stream_receive(ctx, dut.o_stream, height * width, raw=True))

    run_simulation(dut, [send_windows, send_taps, receive], deadline_cycles=2000)
    assert errors == {"misaligned": 1, "cleared": 0}
    acc, _ = sparse_conv(frame, lists, kernel_size=3, lanes=4)
    np.testing.assert_equal(unpack(dut.o_stream.payload.shape(), received)["data"],
                            acc.reshape(height * width, -1))


def test_mask_write_out_of_range():
    dut = make(lanes=4, block_size=2)
    rng = np.random.default_rng(5)
    height, width = 4, 6                                # top 4 blocks, left 2 blocks
    mask = random_mask(rng, dut, height, width)
    writes = mask_writes(mask, width, height, kernel_size=3, block_size=2)
    bad_writes = [(0, 4, 0), (1, 7, 0), (2, 2, 0), (3, 7, 0)]
    frame = random_frame(rng, dut, height, width)
    lists = random_lists(rng, dut, height, width)
    # bad writes after the good ones change nothing: the results are those of the mask
    results, state = simulate(dut, [(frame, lists)], pad_mode="reflect", mask=mask,
                              writes=writes + bad_writes, check_counters=False)
    assert state["errors"] == {"misaligned": 0, "bad_tap": 0, "bad_mask_write": 1}
    acc, _ = sparse_conv(frame, lists, kernel_size=3, pad_mode="reflect", mask=mask, block_size=2, lanes=4)
    np.testing.assert_equal(results[0], acc)


# --- timing and parameters ------------------------------------------------------------------

def test_latency():
    for requant in (False, True):
        dut = make(lanes=4, requantize=requant)
        rng = np.random.default_rng(6)
        lists = random_lists(rng, dut, 1, 3)
        lists.count[0, 0] = [0, 0, 0, 0]
        lists.count[0, 1] = [1, 0, 0, 0]
        lists.count[0, 2] = [3, 1, 2, 0]
        window = window_words(dut.i_window.payload.shape(), random_frame(rng, dut, 1, 3),
                              kernel_size=3, pad_mode="replicate")
        taps = tap_list_words(dut.i_taps.payload.shape(), lists)

        _, counters = sparse_conv(np.zeros((1, 3, 1), np.uint8), lists, kernel_size=3, pad_mode="replicate")
        walk = dut.cycles_per_position(counters["active"][0]).tolist()
        assert walk == [0, 1, 2]

        async def bench(ctx):
            ctx.set(dut.pad_mode, PadMode.REPLICATE)
            ctx.set(dut.o_stream.ready, 1)
            for position, steps in enumerate(walk):
                ctx.set(dut.i_taps.payload.as_value(), taps[position])
                ctx.set(dut.i_taps.valid, 1)
                ctx.set(dut.i_window.payload.as_value(), window[position])
                ctx.set(dut.i_window.valid, 1)
                await ctx.tick()
                ctx.set(dut.i_window.valid, 0)
                cycles = 1
                while not ctx.get(dut.o_stream.valid):
                    await ctx.tick()
                    cycles += 1
                # an empty position: W0, W1 (admitted), queue head, output
                assert cycles == (dut.latency + steps - 1 if steps else 4), (position, cycles)
                ctx.set(dut.i_taps.valid, 0)
                await ctx.tick().repeat(3)

        run_simulation(dut, [bench], deadline_cycles=500)


@pytest.mark.parametrize("lanes, queue_depth, slots, requant", [
    (2, 2, 1, False), (2, 16, 1, False), (3, 16, 2, True), (1, 1, 4, False), (2, 32, 4, True), (2, 64, 3, False)])
def test_timeline(lanes, queue_depth, slots, requant):
    """Inputs always offered, results always taken: first window accepted to last result
    offered is ``engine_cycles`` exactly (empty positions pass a walk; a full queue holds them)."""
    dut = make(lanes=lanes, out_channels=4, queue_depth=queue_depth, finished_slots=slots, requantize=requant)
    rng = np.random.default_rng(lanes * 10 + queue_depth + slots)
    height, width = 4, 7
    frame = random_frame(rng, dut, height, width)
    lists = random_lists(rng, dut, height, width)
    lists.count[rng.random((height, width)) < 0.5] = 0
    lists.count[0, 1] = 9                                   # a long walk, the next position waiting
    lists.count[0, 2] = 3                                   # beside it, then empties behind them
    lists.count[0, 3:6] = 0
    lists.count[1, 0] = 9
    lists.count[1, 1:4] = 0
    lists.count[2, 0] = 9                                   # a long walk, empties, then short walks
    lists.count[2, 1:6] = 0                                 # that finish while the empties leave
    lists.count[2, 6] = lists.count[3, 0:3] = 1
    _, counters = sparse_conv(frame, lists, kernel_size=3, pad_mode="replicate", lanes=lanes)
    windows = window_words(dut.i_window.payload.shape(), frame, kernel_size=3, pad_mode="replicate")
    taps = tap_list_words(dut.i_taps.payload.shape(), lists)
    seen = []

    async def bench(ctx):
        ctx.set(dut.pad_mode, PadMode.REPLICATE)
        ctx.set(dut.o_stream.ready, 1)
        if requant:
            ctx.set(dut.multiplier, 1)
        sent_windows = sent_taps = received = cycle = 0
        while received < height * width:
            ctx.set(dut.i_window.valid, sent_windows < len(windows))
            ctx.set(dut.i_window.payload.as_value(), windows[min(sent_windows, len(windows) - 1)])
            ctx.set(dut.i_taps.valid, sent_taps < len(taps))
            ctx.set(dut.i_taps.payload.as_value(), taps[min(sent_taps, len(taps) - 1)])
            _, _, w_valid, w_ready, t_valid, t_ready, o_valid = await ctx.tick().sample(
                dut.i_window.valid, dut.i_window.ready, dut.i_taps.valid, dut.i_taps.ready, dut.o_stream.valid)
            if w_valid and w_ready:
                if not sent_windows:
                    seen.append(cycle)
                sent_windows += 1
            sent_taps += t_valid and t_ready
            if o_valid:
                received += 1
                if received == height * width:
                    seen.append(cycle)
            cycle += 1

    run_simulation(dut, [bench], deadline_cycles=3000)
    assert seen[1] - seen[0] == dut.timeline(counters["active"].reshape(-1, 4))


def test_window_waits_for_mask_write():
    """No window is accepted in a cycle with a mask write (the mask RAMs have no
    read-during-write logic); the window offered then is taken in the first cycle without one."""
    dut = make(lanes=4)
    rng = np.random.default_rng(11)
    window = window_words(dut.i_window.payload.shape(), random_frame(rng, dut, 1, 3), kernel_size=3,
                          pad_mode="replicate")
    accepted = []

    async def bench(ctx):
        ctx.set(dut.pad_mode, PadMode.REPLICATE)
        ctx.set(dut.width, 3)
        ctx.set(dut.height, 1)
        ctx.set(dut.o_stream.ready, 1)
        ctx.set(dut.i_window.payload.as_value(), window[0])
        ctx.set(dut.i_window.valid, 1)
        for write in (1, 1, 0):
            ctx.set(dut.mask_write, write)
            ctx.set(dut.mask_band, 0)
            ctx.set(dut.mask_index, 0)
            ctx.set(dut.mask_value, 0)
            accepted.append(ctx.get(dut.i_window.ready))
            await ctx.tick()
        ctx.set(dut.i_window.valid, 0)
        ctx.set(dut.mask_write, 0)

    run_simulation(dut, [bench], deadline_cycles=100)
    assert accepted == [0, 0, 1]


def test_properties():
    dut = SparseConv(kernel_size=5, in_channels=2, out_channels=6, lanes=4, pixel_shape=signed(8))
    assert (dut.kernel_size, dut.in_channels, dut.out_channels, dut.lanes) == (5, 2, 6, 4)
    assert dut.taps_per_list == 50 and dut.walkers == 2 and dut.queue_depth == 64
    assert dut.finished_slots == 4
    assert dut.accumulator_width == 21              # 50 · 128 · 128 = 819200 > 2**19
    assert dut.o_stream.payload.shape()["data"].shape.elem_shape == signed(21)
    assert SparseConv(requantize=True).o_stream.payload.shape()["data"].shape.elem_shape == signed(8)
    assert SparseConv().accumulator_width == 20     # 9 · 128 · 255 = 293760
    # walker 0 (lanes 0, 1) walks channels 0, 1, 4, 5: 11 entries, 6 steps; walker 1 none
    assert dut.cycles_per_position(np.array([3, 1, 0, 0, 2, 5])).item() == 6
    assert dut.cycles_per_position(np.array([3, 1, 9, 0, 2, 5])).item() == 6
    assert dut.cycles_per_position(np.array([3, 1, 9, 4, 2, 5])).item() == 7
    assert dut.cycles_per_position(np.zeros(6, int)).item() == 0
    assert SparseConv(out_channels=5, lanes=3).cycles_per_position(np.array([2, 2, 5, 2, 2])).item() == 5
    assert dut.latency == 8 and SparseConv(requantize=True).latency == 12
    assert PaddingMask(kernel_size=3, block_size=4, max_width=640, max_height=480).band_sizes == \
        (161, 161, 120, 120)
    with pytest.raises(AttributeError):
        dut.lanes = 2


@pytest.mark.parametrize("kwargs, error, message", [
    ({"kernel_size": 4}, ValueError, r"^kernel size must be an odd integer in \[1, 15\], not 4$"),
    ({"kernel_size": 17}, ValueError, r"^kernel size must be an odd integer in \[1, 15\], not 17$"),
    ({"kernel_size": "3"}, TypeError, r"^kernel size must be an odd integer in \[1, 15\], not '3'$"),
    ({"in_channels": 0}, ValueError, r"^input channel count must be an integer >= 1, not 0$"),
    ({"out_channels": 0}, ValueError, r"^output channel count must be an integer >= 1, not 0$"),
    ({"out_channels": 2.0}, TypeError, r"^output channel count must be an integer >= 1, not 2\.0$"),
    ({"lanes": 0}, ValueError, r"^lane count must be an integer in \[1, 4\], not 0$"),
    ({"lanes": 5}, ValueError, r"^lane count must be an integer in \[1, 4\], not 5$"),
    ({"lanes": True}, TypeError, r"^lane count must be an integer in \[1, 4\], not True$"),
    ({"pixel_shape": unsigned(9)}, ValueError,
     r"^pixel shape must be unsigned\(8\) or signed\(8\), not unsigned\(9\)$"),
    ({"pixel_shape": "u8"}, TypeError, r"^pixel shape must be a shape, not 'u8'$"),
    ({"max_width": 0}, ValueError, r"^maximum width must be an integer in \[1, 65536\], not 0$"),
    ({"max_height": 1.5}, TypeError, r"^maximum height must be an integer in \[1, 65536\], not 1\.5$"),
    ({"block_size": 3}, ValueError, r"^block size must be a power of two in \[1, 64\], not 3$"),
    ({"block_size": 128}, ValueError, r"^block size must be an integer in \[1, 64\], not 128$"),
    ({"requantize": 1}, TypeError, r"^requantize must be a bool, not 1$"),
    ({"queue_depth": 0}, ValueError, r"^queue depth must be an integer in \[1, 64\], not 0$"),
    ({"queue_depth": 2.5}, TypeError, r"^queue depth must be an integer in \[1, 64\], not 2\.5$"),
    ({"finished_slots": 0}, ValueError, r"^finished slot count must be an integer in \[1, 8\], not 0$"),
    ({"finished_slots": "4"}, TypeError, r"^finished slot count must be an integer in \[1, 8\], not '4'$"),
])
def test_parameter_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        SparseConv(**{"kernel_size": 3, "in_channels": 1, "out_channels": 4, "lanes": 2,
                      "max_width": 16, "max_height": 16, **kwargs})
