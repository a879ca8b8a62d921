"""cocotb testbench: PackedConv fed pixels and packed beats from the golden models, against golden.sparseconv."""

import numpy as np

import cocotb

from dynsparse.golden.density import density_map, inv_ref_var
from dynsparse.golden.images import real_image
from dynsparse.golden.packedconv import pack_beats, packed_entries
from dynsparse.golden.padmask import mask_length
from dynsparse.golden.sparseconv import dense_tap_lists, expand_tiles, sparse_conv, tap_densities, tap_lists
from dynsparse.hdl.packedconv import PackedConv
from dynsparse.sim.packing import unpack
from dynsparse.sim.sparseconv_io import (packed_beat_words, pixel_words, random_frame, random_lists,
                                         random_mask, random_weights)
from dynsparse.sim.stalls import STALL_PATTERNS
from dynsparse.sim.tb.streams import TB, StreamSink, StreamSource, params


PARAMS = params()
BLOCK = PackedConv(**PARAMS["block"])
PIXEL_LAYOUT = BLOCK.i_pixels.payload.shape()
BEAT_LAYOUT = BLOCK.i_beats.payload.shape()
OUTPUT_LAYOUT = BLOCK.o_stream.payload.shape()
K = BLOCK.kernel_size
BLOCK_SIZE = PARAMS.get("block_size", 4)
COUNTERS = {"performed": "performed", "skipped_pruned": "pruned", "skipped_zero": "zero",
            "skipped_padding": "padding"}


def beats_of(frame, lists, **options):
    height, width, _ = frame.shape
    entries = packed_entries((height, width), lists, kernel_size=K, block_size=BLOCK_SIZE, **options)
    return pack_beats(entries, width=width, kernel_size=K, lanes=BLOCK.lanes, ring_depth=BLOCK.ring_depth,
                      result_slots=BLOCK.result_slots)


async def start(dut, tb):
    """The engine's pixel and beat sources and result sink (built before reset), then reset."""
    dut.clear_counters.value = 0
    dut.clear_errors.value = 0
    pixels = StreamSource(dut, "i_pixels", tb.clock)
    beat_source = StreamSource(dut, "i_beats", tb.clock)
    receiver = StreamSink(dut, "o_stream", tb.clock)
    await tb.reset()
    return pixels, beat_source, receiver


async def check_frames(dut, tb, jobs, *, src, sink, seed):
    """Reset, send ``jobs = [(frame, lists, options), ...]``; compare the results and the
    counters with golden."""
    pixels, beat_source, receiver = await start(dut, tb)
    pixel_list = []
    for frame, _, _ in jobs:
        pixel_list += pixel_words(PIXEL_LAYOUT, frame)
    beats = []
    for frame, lists, options in jobs:
        beats += packed_beat_words(BEAT_LAYOUT, beats_of(frame, lists, **options))
    cocotb.start_soon(pixels.send(pixel_list, pattern=src, seed=seed))
    cocotb.start_soon(beat_source.send(beats, pattern=src, seed=seed + 5))
    received = await receiver.receive(len(pixel_list), pattern=sink, seed=seed + 1,
                                      timeout_cycles=10 * (len(beats) + len(pixel_list)) + 1000)
    await receiver.expect_idle(BLOCK.latency + 10)
    assert not dut.busy.value, "busy after the last result"
    got = unpack(OUTPUT_LAYOUT, received)
    offset, totals = 0, dict.fromkeys(COUNTERS.values(), 0)
    for frame, lists, options in jobs:
        size = frame.shape[0] * frame.shape[1]
        acc, counters = sparse_conv(frame, lists, kernel_size=K, block_size=BLOCK_SIZE, **options)
        np.testing.assert_equal(got["data"][offset:offset + size], acc.reshape(size, -1))
        assert got["first"][offset:offset + size].tolist() == [1] + [0] * (size - 1)
        assert got["last"][offset:offset + size].tolist() == [0] * (size - 1) + [1]
        for name in totals:
            totals[name] += counters[name]
        offset += size
    assert str(dut.errors.value) == "000", f"errors {dut.errors.value}"
    hardware = {golden: int(getattr(dut, port).value) for port, golden in COUNTERS.items()}
    assert hardware == totals, (hardware, totals)
    assert int(dut.cycles.value) == len(beats)
    dut._log.info("counters %s in %d beats", hardware, len(beats))


@cocotb.test()
@cocotb.parametrize(src=STALL_PATTERNS, sink=STALL_PATTERNS)
async def random_frames_under_stalls(dut, src, sink):
    """Random sparse lists (1×1 and 2×2 tiles), a random mask, every stall pair."""
    seed = 7000 + 10 * STALL_PATTERNS.index(src) + STALL_PATTERNS.index(sink)
    rng = np.random.default_rng(seed)
    height, width = PARAMS["frame"]
    pad_mode = ("zero", "replicate", "reflect")[seed % 3]
    dut._log.info("seed %d, pad mode %s", seed, pad_mode)
    jobs = [(random_frame(rng, BLOCK, height, width), random_lists(rng, _Block, height, width, tile_size=tile),
             {"pad_mode": pad_mode, "mask": random_mask(rng, _Block, height, width)}) for tile in (1, 2)]
    await check_frames(dut, TB(dut), jobs, src=src, sink=sink, seed=seed)


@cocotb.test()
@cocotb.parametrize(image=("camera", "text"))
async def real_images(dut, image):
    """Crops of scikit-image's images; tap lists from their density map; random stalls."""
    height, width = PARAMS["frame"]
    frame = real_image(image, size=(height, width))[:, :, None].repeat(BLOCK.in_channels, axis=2)
    density = density_map(frame, kernel_size=3, inv_ref_var=inv_ref_var(24))
    if BLOCK.pixel_shape.signed:
        frame = (frame.astype(np.int16) - 128).astype(np.int8)
    rng = np.random.default_rng(37)
    lists = expand_tiles(tap_lists(random_weights(rng, _Block), tap_densities(density, kernel_size=K, tile_size=2),
                                   prune_threshold=16), height=height, width=width, tile_size=2)
    assert 0 < lists.count.sum() < lists.count.size * lists.capacity
    await check_frames(dut, TB(dut), [(frame, lists, {"pad_mode": "replicate",
                                                      "mask": random_mask(rng, _Block, height, width)})],
                       src="random", sink="random", seed=29)


@cocotb.test()
async def extremes(dut):
    """Full-scale pixels and ±127 weights, everything pruned, every block masked, dense mode."""
    height, width = PARAMS["frame"]
    low, high = (-128, 127) if BLOCK.pixel_shape.signed else (0, 255)
    dtype = np.int8 if BLOCK.pixel_shape.signed else np.uint8
    shape = (BLOCK.out_channels, BLOCK.in_channels, K, K)
    masked = np.zeros(mask_length(width, height, kernel_size=K, block_size=BLOCK_SIZE), np.uint8)
    everything = np.full((height, width, BLOCK.in_channels, K, K), 256)
    nothing = np.zeros((height, width, BLOCK.in_channels, K, K), np.int64)
    full = np.full((height, width, BLOCK.in_channels), high, dtype)
    reflect = {"pad_mode": "reflect", "mask": masked}
    jobs = [
        (full, dense_tap_lists(np.full(shape, 127), (height, width)), reflect),
        (np.full((height, width, BLOCK.in_channels), low, dtype), dense_tap_lists(np.full(shape, -127), (height, width)),
         {"pad_mode": "zero", "dense": True}),
        (full, tap_lists(np.full(shape, -127), nothing, prune_threshold=1), reflect),
        (full, tap_lists(np.full(shape, 99), everything, prune_threshold=0), {"pad_mode": "replicate", "dense": True}),
    ]
    await check_frames(dut, TB(dut), jobs, src="fixed", sink="fixed", seed=1)


@cocotb.test()
async def bad_beats_then_good_frame(dut):
    """A frame whose beats flush one channel from two lanes, name a channel beyond C_out and
    end early: ``flush_conflict``, ``bad_entry`` and ``misaligned`` rise, the next frame is exact."""
    height, width = PARAMS["frame"]
    rng = np.random.default_rng(41)
    block = _Block
    dense = {"pad_mode": "replicate"}
    bad = (random_frame(rng, BLOCK, height, width), dense_tap_lists(random_weights(rng, block), (height, width)), dense)
    good = (random_frame(rng, BLOCK, height, width), random_lists(rng, block, height, width), dense)
    beats = beats_of(bad[0], bad[1], **dense)
    flushing = np.flatnonzero(beats["flush"].sum(axis=1) >= 2)
    errors_expected = 0b100                             # flush_conflict (bit 2)
    if flushing.size:
        t = int(flushing[0])
        lanes = np.flatnonzero(beats["flush"][t])
        beats["channel"][t, lanes[1]] = beats["channel"][t, lanes[0]]
    else:                                               # one lane: no conflict can be built
        errors_expected = 0
    if BLOCK.out_channels & (BLOCK.out_channels - 1):   # a channel number beyond C_out fits the field
        beats["channel"][int(np.flatnonzero(beats["valid"][:, 0])[3]), 0] = BLOCK.out_channels
        errors_expected |= 0b010
    cut = len(beats["take"]) * 2 // 3
    words = packed_beat_words(BEAT_LAYOUT, {name: values[:cut] for name, values in beats.items()})
    words += packed_beat_words(BEAT_LAYOUT, beats_of(good[0], good[1], **dense))
    errors_expected |= 0b001
    # the cut frame gives fewer results: only the good frame's, the last ones, are compared
    errors = await _run_cut(dut, bad, good, words)
    assert errors == errors_expected, f"errors {errors:03b}, expected {errors_expected:03b}"


async def _run_cut(dut, bad, good, words):
    pixels, beat_source, receiver = await start(dut, TB(dut))
    cocotb.start_soon(pixels.send(pixel_words(PIXEL_LAYOUT, bad[0]) + pixel_words(PIXEL_LAYOUT, good[0]),
                                  pattern="random", seed=3))
    cocotb.start_soon(beat_source.send(words, pattern="random", seed=4))
    size = good[0].shape[0] * good[0].shape[1]
    received = []
    while True:
        received += await receiver.receive(1, pattern="random", seed=len(received),
                                           timeout_cycles=20 * (len(words) + 2 * size) + 1000)
        got = unpack(OUTPUT_LAYOUT, received)
        if got["last"][-1] and len(received) >= size and got["first"][-size]:
            break
    got = unpack(OUTPUT_LAYOUT, received[-size:])
    acc, _ = sparse_conv(good[0], good[1], kernel_size=K, block_size=BLOCK_SIZE, **good[2])
    np.testing.assert_equal(got["data"], acc.reshape(size, -1))
    await receiver.expect_idle(BLOCK.latency + 10)
    return int(dut.errors.value)


class _Block:
    """What random_weights / random_lists / random_mask read of the engine."""
    kernel_size = BLOCK.kernel_size
    in_channels = BLOCK.in_channels
    out_channels = BLOCK.out_channels
    pixel_shape = BLOCK.pixel_shape
    block_size = BLOCK_SIZE
