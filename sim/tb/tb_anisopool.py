"""cocotb testbench: AnisoPool against golden.spn.aniso_pool_int.

On Verilator the first variant also pools the maps a trained model gives the first
``DYNSPARSE_HELD_OUT`` held-out peptides (the variant's count by default, ``all``: every one).
"""

import os

import numpy as np

import cocotb
from amaranth.lib import data

from dynsparse.golden.spn import aniso_pool_int, encode, kernel_size_int, load_dataset, reciprocal_table
from dynsparse.hdl.anisopool import AnisoPool, AnisoPoolErrors
from dynsparse.sim.packing import pack, unpack
from dynsparse.sim.stalls import STALL_PATTERNS
from dynsparse.sim.tb.peptides import trained_trace
from dynsparse.sim.tb.streams import TB, StreamSink, StreamSource, params


PARAMS = params()
BLOCK = AnisoPool(**PARAMS["block"])
LAYOUT = BLOCK.i_stream.payload.shape()
OUT_LAYOUT = BLOCK.o_stream.payload.shape()
AVERAGE, MAX = 0, 1


def map_words(a, *, first=True, last=True):
    count = a.size
    marks = np.zeros((2, count), dtype=np.int64)
    marks[0, 0], marks[1, -1] = first, last
    return pack(LAYOUT, {"data": a.ravel(), "first": marks[0], "last": marks[1]}, count)


def golden(a, scale_h, scale_l, mode):
    (h_lo, h_hi), (l_lo, l_hi) = BLOCK.k_h_range, BLOCK.k_l_range
    k_h = kernel_size_int(scale_h, base=BLOCK.base_h, k_min=h_lo, k_max=h_hi)
    k_l = kernel_size_int(scale_l, base=BLOCK.base_l, k_min=l_lo, k_max=l_hi)
    table = reciprocal_table(h_hi * l_hi)
    return aniso_pool_int(np.clip(a, 0, None)[None, None], np.array([k_h]), np.array([k_l]),
                          mode="max" if mode == MAX else "average", table=table)[0, 0]


def error_names(dut):
    errors = unpack(data.Layout.cast(AnisoPoolErrors), [int(dut.errors.value)])
    return {name for name, flag in errors.items() if flag[0]}


async def run_maps(dut, maps, *, src="none", sink="none", seed=0, expected=None):
    """Send ``maps = [(a, scale_h, scale_l, mode), ...]``, each with its settings; check the
    pooled maps (``expected``: the maps whose results come out, default all)."""
    tb = TB(dut)
    dut.clear_errors.value = 0
    source = StreamSource(dut, "i_stream", tb.clock)
    receiver = StreamSink(dut, "o_stream", tb.clock)
    await tb.reset()

    async def send():
        for a, scale_h, scale_l, mode, *words in maps:
            dut.height.value, dut.length.value = a.shape
            dut.scale_h.value, dut.scale_l.value, dut.mode.value = scale_h, scale_l, mode
            await source.send(words[0] if words else map_words(a), pattern=src, seed=seed)

    cocotb.start_soon(send())
    expected = maps if expected is None else expected
    count = sum(m[0].size for m in expected)
    received = await receiver.receive(count, pattern=sink, seed=seed + 1, timeout_cycles=80 * count + 5000)
    await receiver.expect_idle(200)
    got = unpack(OUT_LAYOUT, received)
    offset = 0
    for index, (a, scale_h, scale_l, mode, *_) in enumerate(expected):
        size = a.size
        context = f"map {index} {a.shape} scales {scale_h}/{scale_l} mode {mode} (seed {seed})"
        np.testing.assert_equal(got["data"][offset:offset + size], golden(a, scale_h, scale_l, mode).ravel(),
                                err_msg=context)
        marks = np.zeros((2, size), dtype=np.int64)
        marks[0, 0] = marks[1, -1] = 1
        np.testing.assert_equal(got["first"][offset:offset + size], marks[0], err_msg=context)
        np.testing.assert_equal(got["last"][offset:offset + size], marks[1], err_msg=context)
        offset += size
    assert not int(dut.busy.value), "busy after the last map"


def random_maps(rng, count):
    height, length = PARAMS["map"]
    maps = []
    for _ in range(count):
        h, l = int(rng.integers(1, height + 1)), int(rng.integers(1, length + 1))
        maps.append((rng.integers(0, 128, (h, l)), int(rng.integers(0, 256)), int(rng.integers(0, 256)),
                     int(rng.integers(0, 2))))
    return maps


@cocotb.test()
@cocotb.parametrize(src=STALL_PATTERNS, sink=STALL_PATTERNS)
async def random_maps_under_stalls(dut, src, sink):
    """Random maps, sizes, scales and modes back to back; every stall pattern."""
    seed = 300 + 10 * STALL_PATTERNS.index(src) + STALL_PATTERNS.index(sink)
    dut._log.info("seed %d", seed)
    await run_maps(dut, random_maps(np.random.default_rng(seed), 3), src=src, sink=sink, seed=seed)
    assert error_names(dut) == set()


@cocotb.test()
async def real_peptides(dut):
    """Encoded peptides of modlamp's AMP/TM set (absolute codes as post-ReLU activations),
    random stalls, both modes, the scale clamps."""
    height, length = PARAMS["map"]
    sequences = load_dataset("AMPvsTM")[0]
    codes = np.abs(encode(sequences[:4], length=length).astype(np.int64))[:, :height].clip(0, 127)
    maps = [(codes[i], sh, sl, mode) for i, (sh, sl, mode) in
            enumerate([(64, 64, AVERAGE), (0, 255, MAX), (255, 0, AVERAGE), (100, 77, MAX)])]
    await run_maps(dut, maps, src="random", sink="random", seed=11)
    assert error_names(dut) == set()


@cocotb.test()
async def bad_maps_then_good(dut):
    """A map cut short, one running long and a bad size are dropped with their flags; the
    maps after them are exact."""
    rng = np.random.default_rng(6)
    height, length = PARAMS["map"]
    a = rng.integers(0, 128, (height, length))
    words = map_words(a)
    short = map_words(a[:1], last=True) if height > 1 else map_words(a[:, :1])
    long = map_words(a, last=False) + map_words(np.array([[5]]), first=False)
    good = (a, 70, 90, AVERAGE)
    maps = [(a, 70, 90, AVERAGE, short), good, (a, 70, 90, MAX, long), good,
            (np.zeros((BLOCK.max_height + 1, 1), np.int64), 70, 90, AVERAGE, words[:1]), good]
    await run_maps(dut, maps, expected=[good, good, good], seed=5)
    assert error_names(dut) == {"misframed", "bad_size"}


@cocotb.test(skip=cocotb.SIM_NAME.lower().startswith("icarus") or "trained" not in PARAMS)
async def trained_model_held_out_peptides(dut):
    """A model trained on modlamp's AMP/TM set: every feature map of both iterations of the
    held-out peptides, pooled with the window its scale predictor chose, is the integer loop's
    (the pooled maps of the last iteration are the loop's output; the first's feed its second
    convolution). Verilator only."""
    seed, epochs, count = PARAMS["trained"]
    export, test_idx, trace = trained_trace(seed, epochs, os.environ.get("DYNSPARSE_HELD_OUT", count))
    mode = MAX if int(export["pool_max"]) else AVERAGE
    maps = []
    for index in range(len(test_idx)):
        for t in range(trace["activations"].shape[1]):
            scale_h, scale_l = (int(c) for c in trace["scale_codes"][index, t])
            for a in trace["activations"][index, t]:
                maps.append((a, scale_h, scale_l, mode))
    # the maps of the last iteration pooled are the loop's output: the golden the RTL is
    # compared with map by map agrees with the loop's own trace
    iterations, channels = trace["activations"].shape[1:3]
    for i in range(len(test_idx)):
        for c in range(channels):
            a, sh, sl, md = maps[(i * iterations + iterations - 1) * channels + c]
            assert np.array_equal(golden(a, sh, sl, md), trace["pooled"][i, c])
    await run_maps(dut, maps, seed=9)
    dut._log.info("%d held-out peptides, %d maps exact", len(test_idx), len(maps))
    assert error_names(dut) == set()
