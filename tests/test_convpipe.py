"""SparseConvPipeline (pixels → density → tap lists → sparse convolution) against the golden chain."""

import numpy as np
import pytest
from amaranth.hdl import Value

from dynsparse.golden.density import density_map, inv_ref_var
from dynsparse.golden.images import real_image
from dynsparse.golden.padmask import mask_length
from dynsparse.golden.sparseconv import (
    dense_tap_lists, expand_tiles, requantize, sparse_conv, tap_densities, tap_lists,
)
from dynsparse.hdl.convpipe import SparseConvPipeline, StreamFork
from dynsparse.hdl.window import PadMode
from dynsparse.sim.packing import pack, unpack
from dynsparse.sim.pysim import run_simulation, stream_receive, stream_send
from dynsparse.sim.sparseconv_io import mask_writes
from dynsparse.sim.stalls import STALL_PATTERNS


COUNTERS = ("cycles", "performed", "skipped_pruned", "skipped_zero", "skipped_padding")


def golden_chain(frame, weights, *, ref_std, threshold, pad_mode, mask, dense, lanes, density_k, block_size=4,
                 multiplier=None, shift=None, tile_size=1):
    height, width, _ = frame.shape
    k = weights.shape[-1]
    if dense:
        lists = dense_tap_lists(weights, (height, width))
    else:
        density = density_map(frame, kernel_size=density_k, inv_ref_var=inv_ref_var(ref_std))
        if tile_size == 1:
            lists = tap_lists(weights, tap_densities(density, kernel_size=k), prune_threshold=threshold)
        else:
            lists = expand_tiles(tap_lists(weights, tap_densities(density, kernel_size=k, tile_size=tile_size),
                                           prune_threshold=threshold),
                                 height=height, width=width, tile_size=tile_size)
    acc, counters = sparse_conv(frame, lists, kernel_size=k, pad_mode=pad_mode, mask=mask,
                                block_size=block_size, lanes=lanes, dense=dense)
    if multiplier is not None:
        acc = requantize(acc, multiplier=multiplier, shift=shift)
    return acc, counters


def simulate(dut, frames, weights, *, ref_std=16.0, threshold=64, pad_mode="zero", mask=None, dense=False,
             source="none", sink="none", seed=0, multiplier=1, shift=0):
    """Stream ``frames`` (same size) through the pipeline; check each against the golden chain."""
    height, width, channels = frames[0].shape
    k = dut.kernel_size
    layout = dut.i_stream.payload.shape()
    words = []
    for frame in frames:
        count = height * width
        marks = np.zeros((2, count), np.int64)
        marks[0, 0] = marks[1, -1] = 1
        words += pack(layout, {"data": frame.reshape(count, channels).astype(np.int64),
                               "first": marks[0], "last": marks[1]}, count)
    writes = mask_writes(mask, width, height, kernel_size=k, block_size=4) if mask is not None else []
    received, state = [], {}

    async def send(ctx):
        ctx.set(dut.width, width)
        ctx.set(dut.height, height)
        ctx.set(dut.inv_ref_var, inv_ref_var(ref_std))
        ctx.set(dut.prune_threshold, threshold)
        ctx.set(dut.dense, dense)
        ctx.set(dut.pad_mode, PadMode[pad_mode.upper()])
        if dut._requantize:
            ctx.set(dut.multiplier, multiplier)
            ctx.set(dut.shift, shift)
        flat = weights.reshape(weights.shape[0], -1)
        for co in range(flat.shape[0]):
            for tap in range(flat.shape[1]):
                ctx.set(dut.weight_addr, {"tap": tap, "co": co})
                ctx.set(dut.weight_data, int(flat[co, tap]))
                ctx.set(dut.weight_write, 1)
                await ctx.tick()
        ctx.set(dut.weight_write, 0)
        for band, index, value in writes:
            ctx.set(dut.mask_write, 1)
            ctx.set(dut.mask_band, band)
            ctx.set(dut.mask_index, index)
            ctx.set(dut.mask_value, value)
            await ctx.tick()
        ctx.set(dut.mask_write, 0)
        await stream_send(ctx, dut.i_stream, words, pattern=source, seed=seed)

    async def receive(ctx):
        received.extend(await stream_receive(ctx, dut.o_stream, len(words), pattern=sink, seed=seed + 1,
                                             raw=True))
        ctx.set(dut.o_stream.ready, 1)
        for _ in range(60):
            await ctx.tick()
            assert not ctx.get(dut.o_stream.valid), "extra output"
        for name in COUNTERS:
            state[name] = ctx.get(getattr(dut, name))
        state["errors"] = ctx.get(Value.cast(dut.errors))

    run_simulation(dut, [send, receive], deadline_cycles=len(words) * (weights[0].size * 8 + 40) + 5000)
    fields = unpack(dut.o_stream.payload.shape(), received)
    totals = dict.fromkeys(("cycles", "performed", "pruned", "zero", "padding"), 0)
    size = height * width
    for index, frame in enumerate(frames):
        expected, counters = golden_chain(frame, weights, ref_std=ref_std, threshold=threshold,
                                          pad_mode=pad_mode, mask=mask, dense=dense, lanes=dut.lanes,
                                          density_k=3, tile_size=dut.tile_size,
                                          multiplier=multiplier if dut._requantize else None, shift=shift)
        got = fields["data"][index * size:(index + 1) * size].reshape(height, width, -1)
        np.testing.assert_equal(got, expected, err_msg=f"frame {index}, {pad_mode}, dense={dense}, "
                                                       f"{source}/{sink}, seed {seed}")
        for name in totals:
            totals[name] += counters[name]
    assert state["errors"] == 0
    assert (state["cycles"], state["performed"], state["skipped_pruned"], state["skipped_zero"],
            state["skipped_padding"]) == (totals["cycles"], totals["performed"], totals["pruned"],
                                          totals["zero"], totals["padding"])
    return state


def make(**kwargs):
    params = {"kernel_size": 3, "in_channels": 1, "out_channels": 4, "lanes": 2, "max_width": 16,
              "max_height": 16}
    params.update(kwargs)
    return SparseConvPipeline(**params)


@pytest.mark.parametrize("pad_mode", ["zero", "replicate", "reflect"])
def test_random_frames(pad_mode):
    rng = np.random.default_rng(7)
    dut = make()
    frames = [rng.integers(0, 256, size=(9, 12, 1), dtype=np.uint8) for _ in range(2)]
    weights = rng.integers(-127, 128, size=(4, 1, 3, 3))
    mask = rng.integers(0, 2, size=mask_length(12, 9, kernel_size=3))
    simulate(dut, frames, weights, pad_mode=pad_mode, mask=mask, threshold=int(rng.integers(0, 200)))


@pytest.mark.parametrize("source", STALL_PATTERNS)
@pytest.mark.parametrize("sink", STALL_PATTERNS)
def test_stalls_on_a_real_image(source, sink):
    rng = np.random.default_rng(11)
    dut = make()
    frame = real_image("camera", size=(10, 14))[:, :, None]
    weights = rng.integers(-127, 128, size=(4, 1, 3, 3))
    simulate(dut, [frame], weights, pad_mode="replicate", threshold=48, source=source, sink=sink,
             seed=3 * STALL_PATTERNS.index(source) + STALL_PATTERNS.index(sink))


def test_dense_mode_and_extremes():
    rng = np.random.default_rng(5)
    dut = make(max_width=16, max_height=12)
    frame = real_image("text", size=(8, 16))[:, :, None]
    weights = np.where(rng.integers(0, 2, size=(4, 1, 3, 3)) == 1, 127, -127)
    state = simulate(dut, [frame], weights, dense=True, pad_mode="reflect")
    assert state["cycles"] == 8 * 16 * 2 * 9
    simulate(dut, [frame], weights, threshold=511)                        # every tap pruned
    simulate(dut, [np.full((8, 16, 1), 255, np.uint8)], weights, threshold=0, pad_mode="replicate",
             mask=np.zeros(mask_length(16, 8, kernel_size=3), np.uint8))  # every block masked


@pytest.mark.parametrize("kernel_size,in_channels", [(3, 2), (5, 1)])
def test_requantized(kernel_size, in_channels):
    """Requantised results, with K = 5 and with two input channels (both together: the engine's
    and the kernel scaler's k5ci2co3 cocotb variants)."""
    rng = np.random.default_rng(9 + kernel_size + in_channels)
    dut = make(kernel_size=kernel_size, in_channels=in_channels, out_channels=3, lanes=3, max_width=12,
               max_height=12, requantize=True)
    # K = 5 on 6 × 7: two rows and three positions whose windows lie wholly inside, the rest on a border
    size = (8, 9) if kernel_size == 3 else (6, 7)
    frame = rng.integers(0, 256, size=size + (in_channels,), dtype=np.uint8)
    weights = rng.integers(-127, 128, size=(3, in_channels, kernel_size, kernel_size))
    simulate(dut, [frame], weights, pad_mode="reflect", threshold=32, multiplier=300, shift=12)


@pytest.mark.parametrize("tile_size,kernel_size,in_channels", [(2, 3, 2), (4, 3, 1), (2, 5, 1)])
def test_tiles(tile_size, kernel_size, in_channels):
    """Tap densities averaged over T×T tiles: a real image and a random frame back to back."""
    rng = np.random.default_rng(40 + tile_size + kernel_size)
    dut = make(kernel_size=kernel_size, in_channels=in_channels, out_channels=3, lanes=3, tile_size=tile_size)
    height, width = (8, 12) if kernel_size == 3 else (6, 8)
    image = real_image("camera", size=(height, width))[:, :, None].repeat(in_channels, axis=2)
    frames = [image, rng.integers(0, 256, size=(height, width, in_channels), dtype=np.uint8)]
    weights = rng.integers(-127, 128, size=(3, in_channels, kernel_size, kernel_size))
    simulate(dut, frames, weights, pad_mode="replicate", threshold=40)


@pytest.mark.parametrize("source,sink", [("random", "random"), ("none", "fixed")])
def test_tiles_under_stalls(source, sink):
    rng = np.random.default_rng(43)
    dut = make(tile_size=4)
    frame = real_image("text", size=(12, 16))[:, :, None]
    weights = rng.integers(-127, 128, size=(4, 1, 3, 3))
    simulate(dut, [frame], weights, pad_mode="zero", threshold=56, source=source, sink=sink, seed=5)


def test_fifo_covers_the_tile_look_ahead():
    dut = make(max_width=640, max_height=480, tile_size=4)
    # density r_d = 1, then the tile averager's look-ahead beyond the pixel window's r·W + r
    assert dut.fifo_depth >= (1 + 4 + 1) * 640 + 2 + SparseConvPipeline.FIFO_SLACK
    assert make(max_width=640, max_height=480).fifo_depth == 1024


def test_fifo_covers_the_density_look_ahead():
    dut = make(max_width=640, max_height=480)
    assert dut.fifo_depth >= 640 + 1 + SparseConvPipeline.FIFO_SLACK
    assert dut.fifo_depth & (dut.fifo_depth - 1) == 0


def test_fork_offers_each_word_to_both_sides():
    from amaranth.hdl import unsigned
    dut = StreamFork(unsigned(8))
    words = list(range(40))
    got = {}

    async def send(ctx):
        await stream_send(ctx, dut.i_stream, words, pattern="random", seed=1)

    def receiver(port, seed):
        async def receive(ctx):
            got[port] = await stream_receive(ctx, getattr(dut, port), len(words), pattern="random",
                                             seed=seed)
        return receive

    run_simulation(dut, [send, receiver("o_a", 2), receiver("o_b", 3)], deadline_cycles=2000)
    assert got["o_a"] == words and got["o_b"] == words


@pytest.mark.parametrize("kwargs,error,message", [
    ({"density_kernel_size": 4}, ValueError, r"^density kernel size must be an odd integer in \[1, 15\], not 4$"),
    ({"lanes": 0}, ValueError, r"^lane count must be an integer in \[1, 4\], not 0$"),
    ({"kernel_size": 2}, ValueError, r"^kernel size must be an odd integer in \[1, 15\], not 2$"),
    ({"tile_size": 3}, ValueError, r"^tile size must be a power of two in \[1, 16\], not 3$"),
    ({"tile_size": 0}, ValueError, r"^tile size must be an integer in \[1, 16\], not 0$"),
    ({"tile_size": 8, "kernel_size": 9}, ValueError, r"^tile size plus kernel size must be at most 15, not 8 \+ 9$"),
])
def test_parameter_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        make(**kwargs)


@pytest.mark.parametrize("tile_size,size", [(4, (10, 12)), (4, (12, 14)), (1, (2, 8)), (2, (8, 2))])
def test_bad_frame_size_is_discarded_and_the_next_frame_is_exact(tile_size, size):
    """A frame some branch would drop (not a multiple of T, below a minimum) is discarded whole
    before the fork: ``errors.bad_size``, no output, nothing hangs, the next frame exact."""
    rng = np.random.default_rng(50 + tile_size)
    dut = make(tile_size=tile_size, kernel_size=5 if tile_size == 1 else 3)
    height, width = size
    weights = rng.integers(-127, 128, size=(4, 1, dut.kernel_size, dut.kernel_size))
    bad = rng.integers(0, 256, size=(height * width, 1))
    good = real_image("camera", size=(8, 8))[:, :, None]
    layout = dut.i_stream.payload.shape()
    marks = np.zeros((2, len(bad)), np.int64)
    marks[0, 0] = marks[1, -1] = 1
    bad_words = pack(layout, {"data": bad, "first": marks[0], "last": marks[1]}, len(bad))
    received, state = [], {}

    async def send(ctx):
        ctx.set(dut.inv_ref_var, inv_ref_var(16.0))
        ctx.set(dut.prune_threshold, 48)
        flat = weights.reshape(4, -1)
        for co in range(4):
            for tap in range(flat.shape[1]):
                ctx.set(dut.weight_addr, {"tap": tap, "co": co})
                ctx.set(dut.weight_data, int(flat[co, tap]))
                ctx.set(dut.weight_write, 1)
                await ctx.tick()
        ctx.set(dut.weight_write, 0)
        ctx.set(dut.width, width)
        ctx.set(dut.height, height)
        await stream_send(ctx, dut.i_stream, bad_words)
        for _ in range(20):
            await ctx.tick()
        state["bad_size"] = ctx.get(dut.errors.bad_size)
        state["busy"] = ctx.get(dut.busy)
        ctx.set(dut.width, 8)
        ctx.set(dut.height, 8)
        good_marks = np.zeros((2, 64), np.int64)
        good_marks[0, 0] = good_marks[1, -1] = 1
        await stream_send(ctx, dut.i_stream, pack(layout, {"data": good.reshape(64, 1).astype(np.int64),
                                                           "first": good_marks[0], "last": good_marks[1]}, 64))

    async def receive(ctx):
        received.extend(await stream_receive(ctx, dut.o_stream, 64, raw=True))
        ctx.set(dut.o_stream.ready, 1)
        for _ in range(60):
            await ctx.tick()
            assert not ctx.get(dut.o_stream.valid), "extra output"

    run_simulation(dut, [send, receive], deadline_cycles=64 * 100 + len(bad) * 10 + 5000)
    assert state == {"bad_size": 1, "busy": 0}
    expected, _ = golden_chain(good, weights, ref_std=16.0, threshold=48, pad_mode="zero", mask=None,
                               dense=False, lanes=2, density_k=3, tile_size=tile_size)
    got = unpack(dut.o_stream.payload.shape(), received)["data"].reshape(8, 8, -1)
    np.testing.assert_equal(got, expected)


def test_minimum_frame_covers_every_block():
    dut = make(kernel_size=7, tile_size=1)
    assert dut.min_width == 4 and dut.min_height == 4
    dut = make(kernel_size=3, tile_size=4)
    assert dut.min_width % 4 == 0 and dut.min_height % 4 == 0
