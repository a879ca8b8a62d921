"""cocotb testbench: EncodingLoop against golden.spn.forward_int (the whole loop and the head).

On Verilator the first variant also runs a trained model on the held-out peptides: the first
``DYNSPARSE_HELD_OUT`` of them (the variant's count by default, ``all`` for every one), and
checks that the hardware's classifications give the integer model's accuracy.
"""

import os

import numpy as np

import cocotb
from amaranth.lib import data
from cocotb.triggers import RisingEdge

from dynsparse.golden import spn as golden
from dynsparse.hdl.anisopool import PoolMode
from dynsparse.hdl.spnloop import EncodingLoop, EncodingLoopErrors
from dynsparse.sim.packing import pack, unpack
from dynsparse.sim.stalls import STALL_PATTERNS
from dynsparse.sim.tb.peptides import loop_words, trained_trace, varied
from dynsparse.sim.tb.streams import TB, StreamSink, StreamSource, params


PARAMS = params()
BLOCK = EncodingLoop(**PARAMS["block"])
LAYOUT = BLOCK.i_stream.payload.shape()
OUT_LAYOUT = BLOCK.o_stream.payload.shape()
LENGTH = PARAMS["length"]
CONFIG = golden.SPNConfig(length=LENGTH, iterations=BLOCK.iterations, channels=BLOCK.channels,
                          spn_channels=BLOCK.spn_channels, conv_kernel=BLOCK.kernel_size)


def make_export():
    """An untrained model quantised on real peptides, its scales moved off 1.0 (:func:`varied`)."""
    sequences = golden.load_dataset("AMPvsTM")[0][:40]
    x = golden.encode(sequences, length=LENGTH).astype(np.float64) / 127
    export = golden.quantise(golden.init_params(CONFIG, seed=2), CONFIG, x)[0]
    return varied(export, np.linspace(0.1, 0.9, 2 * BLOCK.iterations).reshape(BLOCK.iterations, 2))


EXPORT = make_export()


def map_words(x, *, first=True, last=True):
    count = x.size
    marks = np.zeros((2, count), dtype=np.int64)
    marks[0, 0], marks[1, -1] = first, last
    return pack(LAYOUT, {"data": x.ravel(), "first": marks[0], "last": marks[1]}, count)


def error_names(dut):
    value = dut.errors.value
    assert value.is_resolvable, f"errors {value}"
    errors = unpack(data.Layout.cast(EncodingLoopErrors), [int(value)])
    return {name for name, flag in errors.items() if flag[0]}


async def start(dut, export):
    """Streams idle, reset, ``export`` loaded; returns ``(tb, source, sink)``."""
    tb = TB(dut)
    source = StreamSource(dut, "i_stream", tb.clock)
    receiver = StreamSink(dut, "o_stream", tb.clock)
    dut.clear_errors.value = 0
    dut.param_write.value = 0
    await tb.reset()
    for addr, value in BLOCK.parameter_writes(export):
        dut.param_addr.value, dut.param_data.value, dut.param_write.value = addr, value, 1
        await RisingEdge(tb.clock)
    dut.param_write.value = 0
    dut.adaptive.value = int(export["adaptive"])
    dut.mode.value = PoolMode.MAX.value if int(export["pool_max"]) else PoolMode.AVERAGE.value
    dut.height.value = golden.HEIGHT
    return tb, source, receiver


async def run_maps(dut, maps, *, export=EXPORT, src="none", sink="none", seed=0, stream=None, expected=None):
    """Send ``maps`` (``[H, L]`` codes, or the raw ``stream`` of words); check the words of
    ``expected`` maps (default: ``maps``)."""
    tb, source, receiver = await start(dut, export)
    expected = maps if expected is None else expected
    dut.length.value = expected[0].shape[1]

    async def send():
        await source.send(stream if stream is not None else [w for x in maps for w in map_words(x)],
                          pattern=src, seed=seed)

    cocotb.start_soon(send())
    model = dict(export, length=np.int64(expected[0].shape[1]))
    want = loop_words(model, np.stack(expected))
    sizes = [[(w >> 16 & 0xFF, w >> 24) for w in words[:BLOCK.iterations]] for words in want]
    work = sum(BLOCK.sequence_cycles(golden.HEIGHT, x.shape[1], s) for x, s in zip(expected, sizes))
    received = await receiver.receive(len(expected) * BLOCK.words, pattern=sink, seed=seed + 1,
                                      timeout_cycles=3 * work + 5000)
    await receiver.expect_idle(100)
    got = unpack(OUT_LAYOUT, received)
    words = [int(v) for v in got["data"]]
    for index, w in enumerate(want):
        assert words[index * BLOCK.words:(index + 1) * BLOCK.words] == w, f"map {index} (seed {seed})"
    assert [int(v) for v in got["last"]] == [int(i % BLOCK.words == BLOCK.words - 1) for i in range(len(words))]
    assert not int(dut.busy.value), "busy after the last map"


@cocotb.test()
@cocotb.parametrize(src=STALL_PATTERNS, sink=STALL_PATTERNS)
async def random_maps_under_stalls(dut, src, sink):
    """Random codes over the whole int8 range, random length; every stall pattern (one map, or two
    back to back)."""
    seed = 700 + 10 * STALL_PATTERNS.index(src) + STALL_PATTERNS.index(sink)
    dut._log.info("seed %d", seed)
    rng = np.random.default_rng(seed)
    length = int(rng.integers(8, PARAMS["random_length"] + 1))
    maps = [rng.integers(-127, 128, (golden.HEIGHT, length)) for _ in range(PARAMS["random_maps"])]
    await run_maps(dut, maps, src=src, sink=sink, seed=seed)
    assert error_names(dut) == set()


@cocotb.test()
async def real_peptides(dut):
    """Real peptides (modlamp's AMP/TM set), random stalls."""
    x = golden.encode(golden.load_dataset("AMPvsTM")[0][100:102], length=LENGTH).astype(np.int64)
    await run_maps(dut, list(x), src="random", sink="random", seed=3)
    assert error_names(dut) == set()


@cocotb.test()
async def scale_clamps(dut):
    """SPN biases that drive both scales to 2.0 (largest windows), then to 0.5 (smallest)."""
    x = golden.encode(golden.load_dataset("AMPvsTM")[0][5:6], length=LENGTH).astype(np.int64)
    for level, code in ((1.5, golden.SCALE_MAX_CODE), (-1.0, golden.SCALE_MIN_CODE)):
        export = varied(EXPORT, np.full((BLOCK.iterations, 2), level))
        export["scale_m"] = np.full(BLOCK.iterations, 65535)           # any positive sum saturates
        _, trace = golden.forward_int(export, x)
        assert (trace["scale_codes"] == code).all()
        await run_maps(dut, list(x), export=export)


@cocotb.test()
async def bad_maps_then_good(dut):
    """A map cut short, one running long, stray values and a −128 code: flagged, dropped (or the
    code taken as −127); the maps after them are exact."""
    rng = np.random.default_rng(6)
    x = rng.integers(-127, 128, (golden.HEIGHT, LENGTH))
    short = map_words(x[:1, :3], last=False)
    long = map_words(x, last=False) + map_words(np.array([[5]]), first=False)
    stray = map_words(np.array([[7]]), first=False, last=False)
    bad = x.copy()
    bad[2, 0] = -128
    fixed = bad.copy()
    fixed[2, 0] = -127
    stream = short + map_words(x) + long + stray + map_words(bad)
    await run_maps(dut, [], stream=stream, expected=[x, fixed], seed=5)
    assert error_names(dut) == {"misframed", "bad_value"}


@cocotb.test(skip=cocotb.SIM_NAME.lower().startswith("icarus") or "trained" not in PARAMS)
async def trained_model_held_out_peptides(dut):
    """A model trained on modlamp's AMP/TM set (``golden.spn.train``, the variant's seed) on the
    held-out peptides: scales, windows, embedding and logit of every peptide equal the integer
    model's, so the hardware's accuracy is the int8 model's. Verilator only."""
    seed, epochs, count = PARAMS["trained"]
    export, test_idx, trace = trained_trace(seed, epochs, os.environ.get("DYNSPARSE_HELD_OUT", count))
    sequences, labels, _ = golden.load_dataset("AMPvsTM")
    x = golden.encode([sequences[i] for i in test_idx], length=int(export["length"])).astype(np.int64)
    tb, source, receiver = await start(dut, export)
    dut.length.value = x.shape[2]
    want = loop_words(export, x)
    correct = 0
    for index in range(len(x)):
        await source.send(map_words(x[index]))
        await RisingEdge(dut.o_stream__valid)           # the run, without a Python step a cycle
        got = unpack(OUT_LAYOUT, await receiver.receive(BLOCK.words, timeout_cycles=3_000_000))
        words = [int(v) for v in got["data"]]
        assert words == want[index], f"peptide {test_idx[index]}"
        correct += int((words[-1] > 0) == bool(labels[test_idx[index]]))
    logits, _ = golden.forward_int(export, x)
    int8_correct = int(((logits > 0) == labels[test_idx].astype(bool)).sum())
    assert correct == int8_correct
    dut._log.info("%d held-out peptides exact; hardware accuracy %d/%d = %.3f (int8 model the same)",
                  len(x), correct, len(x), correct / len(x))
    assert error_names(dut) == set()
