"""cocotb testbench: LaneConv fed windows and lane beats from the golden models, against golden.sparseconv."""

import numpy as np

import cocotb
from cocotb.triggers import RisingEdge

from dynsparse.golden.density import density_map, inv_ref_var
from dynsparse.golden.images import real_image
from dynsparse.golden.laneconv import lane_beats, lane_steps
from dynsparse.golden.padmask import mask_length
from dynsparse.golden.sparseconv import dense_tap_lists, expand_tiles, sparse_conv, tap_densities, tap_lists
from dynsparse.hdl.laneconv import LaneConv
from dynsparse.sim.packing import unpack
from dynsparse.sim.sparseconv_io import (lane_beat_words, mask_writes, random_frame, random_lists,
                                         random_mask, random_weights, window_words)
from dynsparse.sim.stalls import STALL_PATTERNS
from dynsparse.sim.tb.streams import TB, StreamSink, StreamSource, params


PARAMS = params()
BLOCK = LaneConv(**PARAMS["block"])
WINDOW_LAYOUT = BLOCK.i_window.payload.shape()
BEAT_LAYOUT = BLOCK.i_taps.payload.shape()
OUTPUT_LAYOUT = BLOCK.o_stream.payload.shape()
K = BLOCK.kernel_size
PAD_MODES = ("zero", "replicate", "reflect")
COUNTERS = {"cycles": "cycles", "performed": "performed", "skipped_pruned": "pruned",
            "skipped_zero": "zero", "skipped_padding": "padding"}










async def check_frames(dut, tb, jobs, *, pad_mode, mask=None, dense=False, src, sink, seed, beats=None,
                       expect=None):
    """Reset, load the mask, send ``jobs = [(frame, lists), ...]`` (or the raw ``beats``);
    compare results with golden (the frames whose index is in ``expect``, every frame by
    default) and, for well-formed beats, the counters."""
    height, width, _ = jobs[0][0].shape
    dut.pad_mode.value = PAD_MODES.index(pad_mode)
    dut.dense.value = int(dense)
    dut.width.value = width
    dut.height.value = height
    dut.mask_write.value = 0
    dut.clear_counters.value = 0
    dut.clear_errors.value = 0
    windows = StreamSource(dut, "i_window", tb.clock)
    taps = StreamSource(dut, "i_taps", tb.clock)
    receiver = StreamSink(dut, "o_stream", tb.clock)
    await tb.reset()
    if mask is not None:
        for band, index, value in mask_writes(mask, width, height, kernel_size=K, block_size=BLOCK.block_size):
            dut.mask_band.value, dut.mask_index.value, dut.mask_value.value = band, index, value
            dut.mask_write.value = 1
            await RisingEdge(tb.clock)
        dut.mask_write.value = 0
    window_list = []
    for frame, _ in jobs:
        window_list += window_words(WINDOW_LAYOUT, frame, kernel_size=K, pad_mode=pad_mode)
    well_formed = beats is None
    if well_formed:
        beats = []
        for _, lists in jobs:
            beats += lane_beat_words(BEAT_LAYOUT, lane_beats(lists, lanes=BLOCK.lanes))
    cocotb.start_soon(windows.send(window_list, pattern=src, seed=seed))
    cocotb.start_soon(taps.send(beats, pattern=src, seed=seed + 5))
    received = await receiver.receive(len(window_list), pattern=sink, seed=seed + 1,
                                      timeout_cycles=10 * (len(beats) + len(window_list)) + 1000)
    await receiver.expect_idle(BLOCK.latency + 10)
    assert not dut.busy.value, "busy after the last result"
    got = unpack(OUTPUT_LAYOUT, received)
    offset, totals = 0, dict.fromkeys(COUNTERS.values(), 0)
    for index, (frame, lists) in enumerate(jobs):
        size = frame.shape[0] * frame.shape[1]
        acc, counters = sparse_conv(frame, lists, kernel_size=K, pad_mode=pad_mode, mask=mask,
                                    block_size=BLOCK.block_size, dense=dense)
        if expect is None or index in expect:
            np.testing.assert_equal(got["data"][offset:offset + size], acc.reshape(size, -1))
        ys, xs = np.mgrid[0:frame.shape[0], 0:frame.shape[1]]
        np.testing.assert_equal(got["x"][offset:offset + size], xs.ravel())
        np.testing.assert_equal(got["y"][offset:offset + size], ys.ravel())
        assert got["first"][offset:offset + size].tolist() == [1] + [0] * (size - 1)
        assert got["last"][offset:offset + size].tolist() == [0] * (size - 1) + [1]
        counters["cycles"] = int(lane_steps(lists.count, lanes=BLOCK.lanes).sum())
        for name in totals:
            totals[name] += counters[name]
        offset += size
    if well_formed:
        assert str(dut.errors.value) == "000", f"errors {dut.errors.value}"
        hardware = {golden: int(getattr(dut, port).value) for port, golden in COUNTERS.items()}
        assert hardware == totals, (hardware, totals)
        dut._log.info("counters %s", hardware)
    return int(dut.errors.value)


@cocotb.test()
@cocotb.parametrize(src=STALL_PATTERNS, sink=STALL_PATTERNS)
async def random_frames_under_stalls(dut, src, sink):
    """Random sparse lists (1×1 and 2×2 tiles), random mask, every stall pair (full lists: `extremes`)."""
    seed = 6000 + 10 * STALL_PATTERNS.index(src) + STALL_PATTERNS.index(sink)
    rng = np.random.default_rng(seed)
    height, width = PARAMS["frame"]
    pad_mode = PAD_MODES[seed % 3]
    dut._log.info("seed %d, pad mode %s", seed, pad_mode)
    jobs = [(random_frame(rng, BLOCK, height, width), random_lists(rng, BLOCK, height, width, tile_size=tile))
            for tile in (1, 2)]
    await check_frames(dut, TB(dut), jobs, pad_mode=pad_mode, mask=random_mask(rng, BLOCK, height, width),
                       src=src, sink=sink, seed=seed)


@cocotb.test()
@cocotb.parametrize(image=("camera", "text"))
async def real_images(dut, image):
    """Crops of scikit-image's images; tap lists from their density map; random stalls."""
    height, width = PARAMS["frame"]
    frame = real_image(image, size=(height, width))[:, :, None].repeat(BLOCK.in_channels, axis=2)
    if BLOCK.pixel_shape.signed:
        frame = (frame.astype(np.int16) - 128).astype(np.int8)
    rng = np.random.default_rng(37)
    density = density_map(real_image(image, size=(height, width))[:, :, None].repeat(BLOCK.in_channels, axis=2),
                          kernel_size=3, inv_ref_var=inv_ref_var(24))
    lists = expand_tiles(tap_lists(random_weights(rng, BLOCK), tap_densities(density, kernel_size=K, tile_size=2),
                                   prune_threshold=64), height=height, width=width, tile_size=2)
    await check_frames(dut, TB(dut), [(frame, lists)], pad_mode="replicate",
                       mask=random_mask(rng, BLOCK, height, width),
                       src="random", sink="random", seed=29)


@cocotb.test()
async def extremes(dut):
    """Full-scale pixels and ±127 weights, everything pruned, every block masked, dense mode."""
    height, width = PARAMS["frame"]
    low, high = (-128, 127) if BLOCK.pixel_shape.signed else (0, 255)
    dtype = np.int8 if BLOCK.pixel_shape.signed else np.uint8
    shape = (BLOCK.out_channels, BLOCK.in_channels, K, K)
    masked = np.zeros(mask_length(width, height, kernel_size=K, block_size=BLOCK.block_size), np.uint8)
    everything = np.full((height, width, BLOCK.in_channels, K, K), 256)
    nothing = np.zeros((height, width, BLOCK.in_channels, K, K), np.int64)
    jobs = [
        (np.full((height, width, BLOCK.in_channels), high, dtype), dense_tap_lists(np.full(shape, 127), (height, width))),
        (np.full((height, width, BLOCK.in_channels), low, dtype), dense_tap_lists(np.full(shape, -127), (height, width))),
        (np.full((height, width, BLOCK.in_channels), high, dtype), tap_lists(np.full(shape, -127), nothing, prune_threshold=1)),
        (np.full((height, width, BLOCK.in_channels), high, dtype), tap_lists(np.full(shape, 99), everything, prune_threshold=0)),
    ]
    tb = TB(dut)
    await check_frames(dut, tb, jobs, pad_mode="reflect", mask=masked, src="fixed", sink="fixed", seed=1)
    await check_frames(dut, tb, jobs[:2], pad_mode="zero", dense=True, src="none", sink="none", seed=2)


@cocotb.test()
async def bad_beats_then_good_frame(dut):
    """A frame whose beats lose a position's end and carry an entry outside the window:
    ``misaligned`` and ``bad_tap`` rise, every window gives a result, the next frame is exact."""
    height, width = PARAMS["frame"]
    rng = np.random.default_rng(41)
    bad = (random_frame(rng, BLOCK, height, width), random_lists(rng, BLOCK, height, width))
    good = (random_frame(rng, BLOCK, height, width), random_lists(rng, BLOCK, height, width))
    beats = lane_beats(bad[1], lanes=BLOCK.lanes)
    ends = np.flatnonzero(beats["end"])
    beats["end"][ends[5]] = 0
    beats["valid"][ends[9], 0], beats["dy"][ends[9], 0] = 1, K if K < (1 << (K - 1).bit_length()) else 0
    beats["ci"][ends[9], 0] = BLOCK.in_channels if BLOCK.in_channels & (BLOCK.in_channels - 1) else 0
    words = lane_beat_words(BEAT_LAYOUT, beats) + lane_beat_words(BEAT_LAYOUT, lane_beats(good[1], lanes=BLOCK.lanes))
    errors = await check_frames(dut, TB(dut), [bad, good], pad_mode="zero", src="random", sink="random",
                                seed=43, beats=words, expect={1})
    assert errors & 1, f"misaligned not raised: {errors:03b}"
    assert errors & 2, f"bad_tap not raised: {errors:03b}"
