"""cocotb testbench: SparseConvPipeline, pixels in, against the golden chain
density_map → tap_densities → tap_lists → sparse_conv (→ requantize)."""

import numpy as np

import cocotb
from cocotb.triggers import RisingEdge

from dynsparse.golden.density import density_map, inv_ref_var
from dynsparse.golden.images import real_image
from dynsparse.golden.padmask import mask_length
from dynsparse.golden.sparseconv import dense_tap_lists, requantize, sparse_conv, tap_densities, tap_lists
from dynsparse.hdl.convpipe import SparseConvPipeline
from dynsparse.sim.packing import pack, unpack
from dynsparse.sim.sparseconv_io import mask_writes
from dynsparse.sim.stalls import STALL_PATTERNS
from dynsparse.sim.tb.streams import TB, StreamSink, StreamSource, params


PARAMS = params()
BLOCK = SparseConvPipeline(**PARAMS["block"])
PIXEL_LAYOUT = BLOCK.i_stream.payload.shape()
OUTPUT_LAYOUT = BLOCK.o_stream.payload.shape()
K = BLOCK.kernel_size
C_IN, C_OUT = BLOCK.in_channels, BLOCK.out_channels
REQUANTIZE = PARAMS["block"].get("requantize", False)
PAD_MODES = ("zero", "replicate", "reflect")
COUNTERS = {"cycles": "cycles", "performed": "performed", "skipped_pruned": "pruned",
            "skipped_zero": "zero", "skipped_padding": "padding"}


def expected(frame, weights, *, ref_std, threshold, pad_mode, mask, dense, multiplier, shift):
    height, width, _ = frame.shape
    if dense:
        lists = dense_tap_lists(weights, (height, width))
    else:
        density = density_map(frame, kernel_size=3, inv_ref_var=inv_ref_var(ref_std))
        lists = tap_lists(weights, tap_densities(density, kernel_size=K), prune_threshold=threshold)
    acc, counters = sparse_conv(frame, lists, kernel_size=K, pad_mode=pad_mode, mask=mask,
                                block_size=4, lanes=BLOCK.lanes, dense=dense)
    if REQUANTIZE:
        acc = requantize(acc, multiplier=multiplier, shift=shift)
    return acc, counters


async def check_frames(dut, frames, weights, *, ref_std=16.0, threshold=64, pad_mode="zero", mask=None,
                       dense=False, multiplier=300, shift=10, src="none", sink="none", seed=0):
    """Reset, write weights and mask, stream ``frames``; compare results and counters with golden."""
    tb = TB(dut)
    height, width, _ = frames[0].shape
    dut.width.value, dut.height.value = width, height
    dut.inv_ref_var.value = inv_ref_var(ref_std)
    dut.prune_threshold.value = threshold
    dut.dense.value = int(dense)
    dut.pad_mode.value = PAD_MODES.index(pad_mode)
    for name in ("weight_write", "mask_write", "clear_counters", "clear_errors"):
        getattr(dut, name).value = 0
    if REQUANTIZE:
        dut.multiplier.value, dut.shift.value = multiplier, shift
    source = StreamSource(dut, "i_stream", tb.clock)
    receiver = StreamSink(dut, "o_stream", tb.clock)
    await tb.reset()
    flat = weights.reshape(C_OUT, -1)
    tap_bits = max(1, (flat.shape[1] - 1).bit_length())
    for co in range(C_OUT):
        for tap in range(flat.shape[1]):
            dut.weight_addr.value = tap | (co << tap_bits)
            dut.weight_data.value = int(flat[co, tap])
            dut.weight_write.value = 1
            await RisingEdge(tb.clock)
    dut.weight_write.value = 0
    if mask is not None:
        for band, index, value in mask_writes(mask, width, height, kernel_size=K, block_size=4):
            dut.mask_band.value, dut.mask_index.value, dut.mask_value.value = band, index, value
            dut.mask_write.value = 1
            await RisingEdge(tb.clock)
        dut.mask_write.value = 0
    words = []
    for frame in frames:
        count = height * width
        marks = np.zeros((2, count), np.int64)
        marks[0, 0] = marks[1, -1] = 1
        words += pack(PIXEL_LAYOUT, {"data": frame.reshape(count, C_IN).astype(np.int64),
                                     "first": marks[0], "last": marks[1]}, count)
    cocotb.start_soon(source.send(words, pattern=src, seed=seed))
    received = await receiver.receive(len(words), pattern=sink, seed=seed + 1,
                                      timeout_cycles=len(words) * (C_OUT * C_IN * K * K + 20) + 5000)
    await receiver.expect_idle(80)
    assert int(dut.errors.value) == 0, f"errors {dut.errors.value}"
    got = unpack(OUTPUT_LAYOUT, received)
    totals = dict.fromkeys(COUNTERS.values(), 0)
    size = height * width
    for index, frame in enumerate(frames):
        acc, counters = expected(frame, weights, ref_std=ref_std, threshold=threshold, pad_mode=pad_mode,
                                 mask=mask, dense=dense, multiplier=multiplier, shift=shift)
        np.testing.assert_equal(got["data"][index * size:(index + 1) * size], acc.reshape(size, -1))
        for name in totals:
            totals[name] += counters[name]
    hardware = {golden: int(getattr(dut, port).value) for port, golden in COUNTERS.items()}
    assert hardware == totals, (hardware, totals)
    dut._log.info("counters %s", hardware)


def random_weights(rng):
    return rng.integers(-127, 128, (C_OUT, C_IN, K, K))


@cocotb.test()
@cocotb.parametrize(src=STALL_PATTERNS, sink=STALL_PATTERNS)
async def random_frames_under_stalls(dut, src, sink):
    """Two random frames, random weights, threshold and mask, every stall pair."""
    seed = 7000 + 10 * STALL_PATTERNS.index(src) + STALL_PATTERNS.index(sink)
    rng = np.random.default_rng(seed)
    height, width = PARAMS["frame"]
    pad_mode = PAD_MODES[seed % 3]
    dut._log.info("seed %d, pad mode %s", seed, pad_mode)
    frames = [rng.integers(0, 256, (height, width, C_IN)).astype(np.uint8) for _ in range(2)]
    mask = (rng.random(mask_length(width, height, kernel_size=K)) < 0.5).astype(np.uint8)
    await check_frames(dut, frames, random_weights(rng), threshold=int(rng.integers(0, 200)), pad_mode=pad_mode,
                       mask=mask, src=src, sink=sink, seed=seed)


@cocotb.test()
@cocotb.parametrize(image=("camera", "text", "hubble_deep_field"))
async def real_images(dut, image):
    """Crops of scikit-image's images, replicate padding, random stalls."""
    height, width = PARAMS["frame"]
    frame = real_image(image, size=(height, width))[:, :, None].repeat(C_IN, axis=2)
    rng = np.random.default_rng(41)
    await check_frames(dut, [frame], random_weights(rng), ref_std=12.0, threshold=64, pad_mode="replicate",
                       src="random", sink="random", seed=17)


@cocotb.test()
async def dense_and_extremes(dut):
    """Dense mode; ±127 weights on full-scale pixels; everything pruned; every block masked."""
    height, width = PARAMS["frame"]
    rng = np.random.default_rng(3)
    extreme = np.where(rng.integers(0, 2, (C_OUT, C_IN, K, K)) == 1, 127, -127)
    frame = real_image("camera", size=(height, width))[:, :, None].repeat(C_IN, axis=2)
    await check_frames(dut, [frame], extreme, dense=True, pad_mode="reflect", src="fixed", sink="fixed")
    full = np.full((height, width, C_IN), 255, np.uint8)
    await check_frames(dut, [full, frame], extreme, threshold=511, seed=4)
    masked = np.zeros(mask_length(width, height, kernel_size=K), np.uint8)
    await check_frames(dut, [frame], extreme, threshold=0, pad_mode="replicate", mask=masked, seed=5)
