"""Interpolator and WeightReconstructor (amaranth.sim): every weight of a stream rebuilt
bit-exactly with golden.sparsify.reconstruct, zero/linear/learned, random and trained
weights, plane rows up to the line buffer's limit and past it, output stalls, one weight
per clock, decoding overlapped with the interpolation pass."""

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.sim import Simulator

from dynsparse.golden.sparsify import fit_predictor, planes, quantise_predictor, reconstruct, sparsify
from dynsparse.golden.weightstream import StreamError, encode_stream, parse_stream
from dynsparse.golden.weighttrain import quantise, train_dense
from dynsparse.hdl.interpolator import Interpolator
from dynsparse.hdl.reconstructor import WeightReconstructor
from dynsparse.sim.maskdecoder_io import corrupt, decoder_result, random_tensor_stream
from dynsparse.sim.stalls import stall_pattern


def rebuild(dut, streams, *, sink="none", seed=0, back_to_back=False):
    """Send ``streams``; return ``(codes, passes, cycles)``: each stream's code, the weights of
    every interpolation pass (flat, in order) and the cycle each pass's first/last weight left.
    ``rebuild.passes`` holds ``(start, first, last)`` of each pass: the clock edges at which
    its ``start`` (a good stream's ``done``) and its first and last weights were taken, all
    sampled by one process, so their differences are exact cycle counts.

    With ``back_to_back`` the streams follow each other without waiting for the passes, so the
    next stream is decoded while a pass runs."""
    codes, passes, marks, ends, starts = [], [], [], [], []
    cycle = [0]
    finished = [False]

    async def counter(ctx):
        async for _ in ctx.tick():
            cycle[0] += 1

    async def watch(ctx):
        edge = 0
        async for _, _, done, error, valid, ready, payload in ctx.tick().sample(
                dut.done, dut.error, dut.o_stream.valid, dut.o_stream.ready, dut.o_stream.payload):
            edge += 1
            if done and error == 0:
                starts.append([edge])
            if valid and ready and (payload.first or payload.last):
                starts[-1].append(edge)

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
    sim.add_testbench(watch, background=True)
    limit = sum(40 * len(s) + 20 * dut.max_entries for s in streams) + 1000
    while sim.advance():
        assert cycle[0] < limit, f"no end within {limit} cycles"
    rebuild.stream_ends = ends
    rebuild.passes = [tuple(edges) if len(edges) == 3 else (*edges, edges[-1]) for edges in starts]
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


def plane(data):
    """``(N, W, H)`` of a stream's tensor: entries, plane width and height."""
    values = parse_stream(data).values
    _, height, width = planes(values.shape)
    return values.size, width, height


def test_decoding_overlaps_the_pass():
    """Streams back to back: stream i+1 is decoded while the pass over stream i runs (double
    buffering); a bad stream between them changes nothing; every pass is exact and gives one
    weight per clock. The same streams one after the other (each pass finished before the
    next stream) take longer."""
    rng = np.random.default_rng(70)
    first = encode_stream(rng.integers(-127, 128, (16, 16)), rng.random((16, 16)) < 0.3, encoding="bitmask",
                          interpolation="learned", coefficients=rng.integers(-127, 128, 8), shift=9)
    second = encode_stream(rng.integers(-127, 128, (2, 1, 3, 3)), rng.random((2, 1, 3, 3)) < 0.3, encoding="rle",
                           interpolation="linear")
    bad = second
    while decoder_result(bad, 256)[0] == StreamError.OK:
        _, bad = corrupt(rng, second)
    streams = [first, bad, second, first]
    marks = check(WeightReconstructor(max_entries=256, timeout_cycles=64), streams, back_to_back=True)
    ends, passes = rebuild.stream_ends, rebuild.passes
    serial = check(WeightReconstructor(max_entries=256, timeout_cycles=64), streams)
    print(f"overlapped: streams' last bytes taken at cycles {ends}, passes (first, last weight) {marks}, "
          f"(start, first, last) edges {passes}; serial: last weight at {serial[-1][1]}, overlapped: {marks[-1][1]}")
    good = [first, second, first]
    assert len(passes) == len(good)
    for (start, begin, end), data in zip(passes, good):
        entries, width, height = plane(data)
        assert (begin - start, end - start) == (Interpolator.fill_cycles(width, height),
                                                Interpolator.pass_cycles(entries, width, height))
    # `bad` and all of `second` were taken while the pass over `first` ran
    assert marks[0][0] < ends[1] < ends[2] < marks[0][1]
    # `second` was committed only after that pass (hold): `busy` falls as the last weight is
    # taken, the decoder commits and its `done` starts the next pass (2 cycles now)
    assert passes[0][2] < passes[1][0] <= passes[0][2] + 4
    assert marks[-1][1] < serial[-1][1]


def test_fill_and_pass_cycles():
    assert [Interpolator.fill_cycles(3, 3), Interpolator.fill_cycles(1, 1), Interpolator.fill_cycles(128, 2),
            Interpolator.fill_cycles(256, 1), Interpolator.pass_cycles(1152, 3, 3),
            Interpolator.pass_cycles(256, 128, 2), Interpolator.pass_cycles(256, 256, 1)] == [
        10, 7, 135, 7, 1161, 390, 262]
    assert [Interpolator(max_entries=n).line_entries for n in (8, 9, 100, 256, 2048)] == [4, 4, 64, 128, 1024]


# plane rows of every class at max_entries = 256 (line buffer 128 words): a 16 × 16 matrix,
# kernels of 3 and 5, 1 × 1 kernels and one row as wide as the bank (one-row planes, which
# bypass the line buffer), two rows as wide as the line buffer, one column
PASS_SHAPES = [(16, 16), (8, 3, 3, 3), (3, 2, 5, 5), (5, 7, 1, 1), (1, 256), (2, 128), (128, 2), (256, 1)]


@pytest.mark.parametrize("interpolation", ["zero", "linear", "learned"])
def test_one_weight_per_clock(interpolation):
    """With ``o_stream`` always ready every pass takes exactly ``pass_cycles`` (the first
    weight ``fill_cycles`` after start, then one per clock), whatever the plane width, and
    every weight is exact: row widths at and past the line buffer, all dropped, all sent."""
    rng = np.random.default_rng(80 + ["zero", "linear", "learned"].index(interpolation))
    dut = WeightReconstructor(max_entries=256, timeout_cycles=64)
    streams = []
    for shape in PASS_SHAPES:
        for density in (0.4, 0.0, 1.0) if shape in ((1, 256), (2, 128)) else (0.4,):
            extra = {} if interpolation != "learned" else {
                "coefficients": rng.integers(-127, 128, 8), "shift": int(rng.integers(0, 16))}
            streams.append(encode_stream(rng.integers(-127, 128, shape), rng.random(shape) < density,
                                         encoding="bitmask", interpolation=interpolation, **extra))
    check(dut, streams)
    assert len(rebuild.passes) == len(streams)
    for (start, begin, end), data in zip(rebuild.passes, streams):
        entries, width, height = plane(data)
        assert (begin - start, end - start) == (Interpolator.fill_cycles(width, height),
                                                Interpolator.pass_cycles(entries, width, height)), (entries, width)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"max_entries": 4}, ValueError, r"^maximum entry count must be an integer in \[8, 16777216\], not 4$"),
    ({"max_entries": None}, TypeError, r"^maximum entry count must be an integer in \[8, 16777216\], not None$"),
])
def test_parameter_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        Interpolator(**kwargs)


def test_verilog():
    assert "module reconstructor" in verilog.convert(WeightReconstructor(max_entries=64), name="reconstructor")
