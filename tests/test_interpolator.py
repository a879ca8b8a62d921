"""Interpolator and WeightReconstructor (amaranth.sim): every weight of a stream rebuilt
bit-exactly with golden.sparsify.reconstruct, zero/linear/learned, random and trained
weights, output stalls, decoding overlapped with the interpolation pass."""

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.sim import Simulator

from dynsparse.golden.sparsify import fit_predictor, quantise_predictor, reconstruct, sparsify
from dynsparse.golden.weightstream import StreamError, encode_stream, parse_stream
from dynsparse.golden.weighttrain import quantise, train_dense
from dynsparse.hdl.interpolator import Interpolator
from dynsparse.hdl.reconstructor import WeightReconstructor
from dynsparse.sim.maskdecoder_io import corrupt, decoder_result, random_tensor_stream
from dynsparse.sim.stalls import stall_pattern


def rebuild(dut, streams, *, sink="none", seed=0, back_to_back=False):
    """Send ``streams``; return ``(codes, passes, cycles)``: each stream's code, the weights of
    every interpolation pass (flat, in order) and the cycle each pass's first/last weight left.

    With ``back_to_back`` the streams follow each other without waiting for the passes, so the
    next stream is decoded while a pass runs."""
    codes, passes, marks, ends = [], [], [], []
    cycle = [0]
    finished = [False]

    async def counter(ctx):
        async for _ in ctx.tick():
            cycle[0] += 1

    async def send(ctx):
        for data in streams:
            for position, byte in enumerate(data):
                ctx.set(dut.i_stream.valid, 1)
                ctx.set(dut.i_stream.payload, {"data": byte, "last": position == len(data) - 1})
                await ctx.tick().until(dut.i_stream.ready)
            ends.append(cycle[0])
            ctx.set(dut.i_stream.valid, 0)
            while not ctx.get(dut.done):
                await ctx.tick()
            codes.append(ctx.get(dut.error))
            if not back_to_back:
                await ctx.tick()
                while ctx.get(dut.busy):
                    await ctx.tick()
        finished[0] = True

    async def receive(ctx):
        allow = stall_pattern(sink, seed=seed)
        current = []
        while True:
            ready = next(allow)
            ctx.set(dut.o_stream.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.o_stream.valid, dut.o_stream.payload)
            if ready and valid:
                if payload.first:
                    current, start = [], cycle[0]
                assert payload.index == len(current)
                current.append(payload.data)
                if payload.last:
                    passes.append(np.array(current))
                    marks.append((start, cycle[0]))
            if finished[0] and not ctx.get(dut.busy) and not valid:
                return

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(send)
    sim.add_testbench(receive)
    sim.add_testbench(counter, background=True)
    limit = sum(40 * len(s) + 20 * dut.max_entries for s in streams) + 1000
    while sim.advance():
        assert cycle[0] < limit, f"no end within {limit} cycles"
    rebuild.stream_ends = ends
    return codes, passes, marks


def expected_weights(data):
    return reconstruct(parse_stream(data)).ravel()


def check(dut, streams, **kwargs):
    codes, passes, marks = rebuild(dut, streams, **kwargs)
    good = [data for data in streams if decoder_result(data, dut.max_entries)[0] == StreamError.OK]
    assert codes == [decoder_result(data, dut.max_entries)[0] for data in streams]
    assert len(passes) == len(good)
    for number, (data, weights) in enumerate(zip(good, passes)):
        np.testing.assert_equal(weights, expected_weights(data), err_msg=f"good stream {number}")
    return marks


@pytest.mark.parametrize("interpolation", ["zero", "linear", "learned"])
def test_random_tensors(interpolation):
    rng = np.random.default_rng(["zero", "linear", "learned"].index(interpolation) + 40)
    dut = WeightReconstructor(max_entries=128, timeout_cycles=64)
    streams = [random_tensor_stream(rng, 128, encoding=encoding, interpolation=interpolation, density=density)
               for encoding, density in (("bitmask", 0.5), ("rle", 0.1), ("csr", 0.3), ("csc", 0.0),
                                         ("bitmask", 1.0))]
    check(dut, streams)


def test_learned_saturates_and_rounds():
    """Large coefficients and every shift class: clamping at ±127, rounding half up, shift 0."""
    rng = np.random.default_rng(5)
    dut = WeightReconstructor(max_entries=64, timeout_cycles=64)
    weights = rng.integers(-127, 128, (2, 1, 3, 3))
    weights[0] = 127
    mask = rng.random(weights.shape) < 0.6
    streams = [encode_stream(weights, mask, encoding="bitmask", interpolation="learned",
                             coefficients=coefficients, shift=shift)
               for coefficients, shift in ((np.full(8, 127), 0), (np.full(8, -127), 3),
                                           (np.arange(8) * 9 - 30, 15), (np.array([5, -3, 7, 1, 0, 2, -9, 4]), 1))]
    check(dut, streams)


@pytest.mark.parametrize("sink", ["fixed", "random"])
def test_output_stalls(sink):
    rng = np.random.default_rng(60)
    dut = WeightReconstructor(max_entries=128, timeout_cycles=64)
    streams = [random_tensor_stream(rng, 128, interpolation=interpolation) for interpolation in ("linear", "learned")]
    check(dut, streams, sink=sink, seed=61)


def test_trained_conv2_learned_and_linear():
    """conv2 of the digits CNN (16 × 8 × 3 × 3), magnitude mask at 25 %, the host's fitted predictor."""
    q, _ = quantise(train_dense(seed=0, epochs=2))
    weights = q["conv2"].astype(np.int64)
    mask = sparsify(weights, criterion="magnitude", sparsity=0.75)
    coefficients, shift = quantise_predictor(fit_predictor(weights, mask))
    streams = [encode_stream(weights, mask, encoding="bitmask", interpolation="learned",
                             coefficients=coefficients, shift=shift),
               encode_stream(weights, mask, encoding="rle", interpolation="linear")]
    dut = WeightReconstructor(max_entries=2048, timeout_cycles=64)
    check(dut, streams)


def test_decoding_overlaps_the_pass():
    """Streams back to back: stream i+1 is decoded while the pass over stream i runs (double
    buffering); a bad stream between them changes nothing; every pass is exact. The same
    streams one after the other (each pass finished before the next stream) take longer."""
    rng = np.random.default_rng(70)
    first = random_tensor_stream(rng, 256, encoding="bitmask", interpolation="learned", density=0.3)
    second = random_tensor_stream(rng, 256, encoding="rle", interpolation="linear", density=0.05)
    bad = second
    while decoder_result(bad, 256)[0] == StreamError.OK:
        _, bad = corrupt(rng, second)
    streams = [first, bad, second, first]
    marks = check(WeightReconstructor(max_entries=256, timeout_cycles=64), streams, back_to_back=True)
    ends = rebuild.stream_ends
    serial = check(WeightReconstructor(max_entries=256, timeout_cycles=64), streams)
    print(f"overlapped: streams' last bytes taken at cycles {ends}, passes (first, last weight) {marks}; "
          f"serial: last weight at {serial[-1][1]}, overlapped: {marks[-1][1]}")
    # `bad` and all of `second` were taken while the pass over `first` ran
    assert marks[0][0] < ends[1] < ends[2] < marks[0][1]
    # `second` was committed only after that pass (hold); its pass follows at once
    assert marks[0][1] < marks[1][0] <= marks[0][1] + 20
    assert marks[-1][1] < serial[-1][1]


def test_entry_cycles():
    assert [Interpolator.entry_cycles(True, 2), Interpolator.entry_cycles(False, 0),
            Interpolator.entry_cycles(False, 1), Interpolator.entry_cycles(False, 2)] == [3, 3, 8, 12]


def test_pass_cycles_match_entry_cycles():
    rng = np.random.default_rng(80)
    dut = WeightReconstructor(max_entries=128, timeout_cycles=64)
    for interpolation in (0, 1, 2):
        data = random_tensor_stream(rng, 128, interpolation=("zero", "linear", "learned")[interpolation], density=0.4)
        _, _, marks = rebuild(dut, [data])
        mask = parse_stream(data).mask.ravel()
        expected = sum(Interpolator.entry_cycles(bool(sent), interpolation) for sent in mask)
        start, end = marks[0]
        first_cycles = Interpolator.entry_cycles(bool(mask[0]), interpolation)
        assert end - start == expected - first_cycles, (interpolation, end - start, expected)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"max_entries": 4}, ValueError, r"^maximum entry count must be an integer in \[8, 16777216\], not 4$"),
    ({"max_entries": None}, TypeError, r"^maximum entry count must be an integer in \[8, 16777216\], not None$"),
])
def test_parameter_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        Interpolator(**kwargs)


def test_verilog():
    assert "module reconstructor" in verilog.convert(WeightReconstructor(max_entries=64), name="reconstructor")
