"""cocotb testbench: ScalePredictor against golden.spn's integer model (spn_scale_codes).

On Verilator the first variant also checks a trained model on the held-out peptides: the
first ``DYNSPARSE_HELD_OUT`` of them (the variant's count by default, ``all`` for every one).
"""

import os

import numpy as np

import cocotb
from amaranth.lib import data
from cocotb.triggers import ReadOnly, RisingEdge

from dynsparse.golden import spn as golden
from dynsparse.hdl.spn import ScalePredictor, ScalePredictorErrors
from dynsparse.sim.packing import pack, unpack
from dynsparse.sim.stalls import STALL_PATTERNS
from dynsparse.sim.tb.peptides import trained_trace
from dynsparse.sim.tb.streams import TB, StreamSink, StreamSource, params


PARAMS = params()
BLOCK = ScalePredictor(**PARAMS["block"])
LAYOUT = BLOCK.i_stream.payload.shape()
OUT_LAYOUT = BLOCK.o_stream.payload.shape()
CONFIG = golden.SPNConfig(length=PARAMS["map"][1], iterations=BLOCK.iterations, channels=BLOCK.channels,
                          spn_channels=BLOCK.spn_channels, conv_kernel=BLOCK.kernel_size)


def make_export():
    """An untrained model quantised on real peptides (its constants are those training gives)."""
    sequences = golden.load_dataset("AMPvsTM")[0][:40]
    x = golden.encode(sequences, length=CONFIG.length).astype(np.float64) / 127
    return golden.quantise(golden.init_params(CONFIG, seed=2), CONFIG, x)[0]


EXPORT = make_export()


def set_words(a, *, first=True, last=True):
    count = a.size
    marks = np.zeros((2, count), dtype=np.int64)
    marks[0, 0], marks[1, -1] = first, last
    return pack(LAYOUT, {"data": a.ravel(), "first": marks[0], "last": marks[1]}, count)


def error_names(dut):
    errors = unpack(data.Layout.cast(ScalePredictorErrors), [int(dut.errors.value)])
    return {name for name, flag in errors.items() if flag[0]}


async def load(dut, tb, export):
    dut.param_write.value = 0
    for addr, value in BLOCK.parameter_writes(export):
        dut.param_addr.value, dut.param_data.value, dut.param_write.value = addr, value, 1
        await RisingEdge(tb.clock)
    dut.param_write.value = 0


async def run_sets(dut, sets, *, export=EXPORT, src="none", sink="none", seed=0, expected=None):
    """Send ``sets = [(a [F, H, L], t[, words]), ...]``; check the scale codes of ``expected``."""
    tb = TB(dut)
    dut.clear_errors.value = 0
    source = StreamSource(dut, "i_stream", tb.clock)
    receiver = StreamSink(dut, "o_stream", tb.clock)
    await tb.reset()
    await load(dut, tb, export)

    async def send():
        for a, t, *words in sets:
            dut.height.value, dut.length.value, dut.iteration.value = a.shape[1], a.shape[2], t
            await source.send(words[0] if words else set_words(a), pattern=src, seed=seed)

    cocotb.start_soon(send())
    expected = sets if expected is None else expected
    work = sum(BLOCK.run_cycles(a.shape[1], a.shape[2]) for a, *_ in sets)
    received = await receiver.receive(len(expected), pattern=sink, seed=seed + 1, timeout_cycles=3 * work + 5000)
    await receiver.expect_idle(100)
    got = unpack(OUT_LAYOUT, received)
    for index, (a, t, *_) in enumerate(expected):
        want = golden.spn_scale_codes(export, a[None], t)[0]
        assert (got["scale_h"][index], got["scale_l"][index]) == tuple(want), \
            f"set {index} {a.shape} t={t}: {got['scale_h'][index]}, {got['scale_l'][index]} != {want} (seed {seed})"
    assert not int(dut.busy.value), "busy after the last set"


@cocotb.test()
@cocotb.parametrize(src=STALL_PATTERNS, sink=STALL_PATTERNS)
async def random_maps_under_stalls(dut, src, sink):
    """Random maps and sizes, both iterations; every stall pattern."""
    seed = 500 + 10 * STALL_PATTERNS.index(src) + STALL_PATTERNS.index(sink)
    dut._log.info("seed %d", seed)
    rng = np.random.default_rng(seed)
    height, length = PARAMS["random_map"]
    sets = [(rng.integers(0, 128, (BLOCK.channels, int(rng.integers(1, height + 1)),
                                   int(rng.integers(1, length + 1)))), int(rng.integers(0, BLOCK.iterations)))
            for _ in range(2)]
    await run_sets(dut, sets, src=src, sink=sink, seed=seed)
    assert error_names(dut) == set()


@cocotb.test()
async def real_peptides(dut):
    """The main convolution's maps of real peptides (modlamp's AMP/TM set), random stalls."""
    height, length = PARAMS["random_map"]
    sequences = golden.load_dataset("AMPvsTM")[0][100:103]
    x = golden.encode(sequences, length=length).astype(np.int64)[:, :height]
    a = golden.conv_int(EXPORT, x, 0)
    await run_sets(dut, [(a[i], i % BLOCK.iterations) for i in range(3)], src="random", sink="random", seed=3)
    assert error_names(dut) == set()


@cocotb.test()
async def scale_clamps(dut):
    """Constants that drive both codes to 32 (0.5) and to 128 (2.0)."""
    rng = np.random.default_rng(4)
    height, length = PARAMS["random_map"]
    a = rng.integers(64, 128, (BLOCK.channels, height, length))
    for multiplier, shift, code in ((0, 0, golden.SCALE_MIN_CODE), (65535, 0, golden.SCALE_MAX_CODE)):
        export = dict(EXPORT)
        export["spn3_b"] = np.full_like(np.asarray(EXPORT["spn3_b"]), 1 << 20)
        export["scale_m"] = np.full(BLOCK.iterations, multiplier)
        export["scale_s"] = np.full(BLOCK.iterations, shift)
        assert tuple(golden.spn_scale_codes(export, a[None], 0)[0]) == (code, code)
        await run_sets(dut, [(a, 0)], export=export)


@cocotb.test()
async def bad_sets_then_good(dut):
    """A set cut short, one running long and a bad size are dropped with their flags; the
    sets after them are exact."""
    rng = np.random.default_rng(6)
    height, length = PARAMS["random_map"]
    a = rng.integers(0, 128, (BLOCK.channels, height, length))
    words = set_words(a)
    short = set_words(a[:1, :1], last=True)
    long = set_words(a, last=False) + set_words(np.array([[[5]]]), first=False)
    good = (a, 1)
    bad_size = (np.zeros((BLOCK.channels, BLOCK.max_height + 1, 1), np.int64), 0, words[:1])
    sets = [(a, 0, short), good, (a, 0, long), good, bad_size, good]
    await run_sets(dut, sets, expected=[good, good, good], seed=5)
    assert error_names(dut) == {"misframed", "bad_size"}


@cocotb.test(skip=cocotb.SIM_NAME.lower().startswith("icarus") or "trained" not in PARAMS)
async def trained_model_held_out_peptides(dut):
    """A model trained on modlamp's AMP/TM set (``golden.spn.train``, the variant's seed): the
    maps of both iterations of every held-out peptide, as the integer loop computes them, give
    its scale codes exactly. Verilator only (400 000 cycles a peptide)."""
    seed, epochs, count = PARAMS["trained"]
    export, test_idx, trace = trained_trace(seed, epochs, os.environ.get("DYNSPARSE_HELD_OUT", count))
    tb = TB(dut)
    source = StreamSource(dut, "i_stream", tb.clock)
    await tb.reset()
    await load(dut, tb, export)
    dut.o_stream__ready.value = 1
    height, length = trace["activations"].shape[-2:]
    checked = 0
    for index in range(len(test_idx)):
        for t in range(BLOCK.iterations):
            dut.height.value, dut.length.value, dut.iteration.value = height, length, t
            await source.send(set_words(trace["activations"][index, t]))
            while True:                     # wait for the scales without polling every cycle
                await RisingEdge(dut.o_stream__valid)
                await ReadOnly()
                if int(dut.o_stream__valid.value):
                    break
            got = unpack(OUT_LAYOUT, [int(dut.o_stream__payload.value)])
            want = trace["scale_codes"][index, t]
            assert (got["scale_h"][0], got["scale_l"][0]) == tuple(want), f"peptide {test_idx[index]} t={t}"
            await RisingEdge(tb.clock)
            checked += 1
    dut._log.info("%d held-out peptides, %d scale pairs exact", len(test_idx), checked)
    assert error_names(dut) == set()
