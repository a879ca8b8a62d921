"""cocotb testbench: SparseConv fed windows and tap lists from the golden models, against golden.sparseconv."""

import numpy as np

import cocotb
from cocotb.triggers import RisingEdge

from dynsparse.golden.density import density_map, inv_ref_var
from dynsparse.golden.images import real_image
from dynsparse.golden.padmask import mask_length
from dynsparse.golden.sparseconv import (dense_tap_lists, expand_tiles, sparse_conv, tap_densities,
                                         tap_lists)
from dynsparse.hdl.sparseconv import SparseConv
from dynsparse.sim.packing import unpack
from dynsparse.sim.sparseconv_io import (mask_writes, random_frame, random_lists, random_mask,
                                         random_weights, tap_list_words, window_words)
from dynsparse.sim.stalls import STALL_PATTERNS
from dynsparse.sim.tb.streams import TB, StreamSink, StreamSource, params


PARAMS = params()
BLOCK = SparseConv(**PARAMS["block"])
WINDOW_LAYOUT = BLOCK.i_window.payload.shape()
TAPS_LAYOUT = BLOCK.i_taps.payload.shape()
OUTPUT_LAYOUT = BLOCK.o_stream.payload.shape()
K = BLOCK.kernel_size
PAD_MODES = ("zero", "replicate", "reflect")
COUNTERS = {"cycles": "cycles", "performed": "performed", "skipped_pruned": "pruned",
            "skipped_zero": "zero", "skipped_padding": "padding"}










async def check_frames(dut, tb, jobs, *, pad_mode, mask=None, dense=False, src, sink, seed):
    """Reset, load the mask, send ``jobs = [(frame, lists), ...]``; compare results and
    counters with golden."""
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
        for band, index, value in mask_writes(mask, width, height, kernel_size=K,
                                              block_size=BLOCK.block_size):
            dut.mask_band.value, dut.mask_index.value, dut.mask_value.value = band, index, value
            dut.mask_write.value = 1
            await RisingEdge(tb.clock)
        dut.mask_write.value = 0
    window_list, tap_list = [], []
    for frame, lists in jobs:
        window_list += window_words(WINDOW_LAYOUT, frame, kernel_size=K, pad_mode=pad_mode)
        tap_list += tap_list_words(TAPS_LAYOUT, lists)
    cocotb.start_soon(windows.send(window_list, pattern=src, seed=seed))
    cocotb.start_soon(taps.send(tap_list, pattern=src, seed=seed + 5))
    work = sum(int(lists.count.sum()) for _, lists in jobs)
    received = await receiver.receive(len(window_list), pattern=sink, seed=seed + 1,
                                      timeout_cycles=10 * (work + len(window_list)) + 1000)
    await receiver.expect_idle(BLOCK.latency + 10)
    assert not dut.busy.value, "busy after the last result"
    assert str(dut.errors.value) == "000", f"errors {dut.errors.value}"     # no flag, none undefined
    got = unpack(OUTPUT_LAYOUT, received)
    offset, totals = 0, dict.fromkeys(COUNTERS.values(), 0)
    for frame, lists in jobs:
        size = frame.shape[0] * frame.shape[1]
        acc, counters = sparse_conv(frame, lists, kernel_size=K, pad_mode=pad_mode, mask=mask,
                                    block_size=BLOCK.block_size, lanes=BLOCK.lanes, dense=dense)
        np.testing.assert_equal(got["data"][offset:offset + size], acc.reshape(size, -1))
        ys, xs = np.mgrid[0:frame.shape[0], 0:frame.shape[1]]
        np.testing.assert_equal(got["x"][offset:offset + size], xs.ravel())
        np.testing.assert_equal(got["y"][offset:offset + size], ys.ravel())
        assert got["first"][offset:offset + size].tolist() == [1] + [0] * (size - 1)
        assert got["last"][offset:offset + size].tolist() == [0] * (size - 1) + [1]
        for name in totals:
            totals[name] += counters[name]
        offset += size
    hardware = {golden: int(getattr(dut, port).value) for port, golden in COUNTERS.items()}
    assert hardware == totals, (hardware, totals)
    dut._log.info("counters %s", hardware)


@cocotb.test()
@cocotb.parametrize(src=STALL_PATTERNS, sink=STALL_PATTERNS)
async def random_frames_under_stalls(dut, src, sink):
    """Random sparse lists (1×1 and 2×2 tiles), random mask, every stall pair (full lists: `extremes`)."""
    seed = 5000 + 10 * STALL_PATTERNS.index(src) + STALL_PATTERNS.index(sink)
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
    rng = np.random.default_rng(31)
    density = density_map(real_image(image, size=(height, width))[:, :, None].repeat(BLOCK.in_channels, axis=2),
                          kernel_size=3, inv_ref_var=inv_ref_var(24))
    densities = tap_densities(density, kernel_size=K, tile_size=2)
    lists = expand_tiles(tap_lists(random_weights(rng, BLOCK), densities, prune_threshold=64),
                         height=height, width=width, tile_size=2)
    await check_frames(dut, TB(dut), [(frame, lists)], pad_mode="replicate",
                       mask=random_mask(rng, BLOCK, height, width),
                       src="random", sink="random", seed=23)


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
