"""WindowGenerator against its golden model, in amaranth.sim."""

import re

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import signed
from amaranth.lib import data

from dynsparse.golden.window import windows
from dynsparse.hdl.window import PadMode, WindowErrors, WindowGenerator
from dynsparse.sim.packing import pack, unpack
from dynsparse.sim.pysim import run_simulation, stream_receive, stream_send


def frame_payloads(dut, frame, *, first=True, last=True):
    height, width, _ = frame.shape
    count = height * width
    marks_first = np.zeros(count, dtype=np.int64)
    marks_last = np.zeros(count, dtype=np.int64)
    marks_first[0] = first
    marks_last[-1] = last
    return pack(dut.i_stream.payload.shape(), {
        "data": frame.reshape(count, -1), "first": marks_first, "last": marks_last,
    }, count)


def expected_fields(frame, kernel_size, pad_mode):
    height, width, channels = frame.shape
    values, pad = windows(frame, kernel_size=kernel_size, pad_mode=pad_mode)
    ys, xs = np.mgrid[0:height, 0:width]
    first = np.zeros(height * width, dtype=np.int64)
    last = np.zeros(height * width, dtype=np.int64)
    first[0] = last[-1] = 1
    return {
        "data": values.reshape(height * width, kernel_size, kernel_size, channels),
        "pad": pad.reshape(height * width, kernel_size, kernel_size),
        "x": xs.ravel(), "y": ys.ravel(), "first": first, "last": last,
    }


def error_names(value):
    fields = unpack(data.Layout.cast(WindowErrors), [value])
    return {name for name, flag in fields.items() if flag[0]}


def assert_fields_equal(received, expected):
    for name, value in expected.items():
        np.testing.assert_equal(received[name], value, err_msg=f"field {name}")


def simulate(dut, frames, *, width, height, pad_mode, src="none", sink="none", seed=0,
             payload_lists=None, expect_windows=None, extra=None):
    payloads = payload_lists if payload_lists is not None else \
        [p for frame in frames for p in frame_payloads(dut, frame)]
    count = expect_windows if expect_windows is not None else sum(f.shape[0] * f.shape[1] for f in frames)
    result = {}

    async def send(ctx):
        ctx.set(dut.width, width)
        ctx.set(dut.height, height)
        ctx.set(dut.pad_mode, pad_mode)
        await stream_send(ctx, dut.i_stream, payloads, pattern=src, seed=seed)

    async def receive(ctx):
        result["words"] = await stream_receive(ctx, dut.o_stream, count, pattern=sink,
                                               seed=seed + 1, raw=True)
        # Nothing more may come out.
        ctx.set(dut.o_stream.ready, 1)
        for _ in range(3 * width + 8):
            _, _, valid = await ctx.tick().sample(dut.o_stream.valid)
            assert not valid, "window emitted after the expected ones"
        result["errors"] = ctx.get(dut.errors.as_value())
        result["busy"] = ctx.get(dut.busy)

    run_simulation(dut, [send, receive], deadline_cycles=20 * (len(payloads) + count) + 1000)
    return unpack(dut.o_stream.payload.shape(), result["words"]), result


@pytest.mark.parametrize("pad_mode", list(PadMode))
@pytest.mark.parametrize("kernel_size,channels", [(3, 1), (5, 2), (1, 1)])
def test_random_frame(kernel_size, channels, pad_mode):
    rng = np.random.default_rng(kernel_size * 10 + channels)
    height, width = 7, 9
    frame = rng.integers(0, 256, size=(height, width, channels))
    dut = WindowGenerator(kernel_size=kernel_size, channels=channels, max_width=12, max_height=10)
    received, status = simulate(dut, [frame], width=width, height=height, pad_mode=pad_mode)
    assert_fields_equal(received, expected_fields(frame, kernel_size, pad_mode))
    assert status["errors"] == 0 and not status["busy"]


@pytest.mark.parametrize("src,sink", [("fixed", "fixed"), ("random", "random"),
                                       ("none", "random"), ("random", "none")])
def test_backpressure_two_frames(src, sink):
    rng = np.random.default_rng(7)
    dut = WindowGenerator(kernel_size=5, channels=1, max_width=16, max_height=16)
    frames = [rng.integers(0, 256, size=(6, 8, 1)) for _ in range(2)]
    received, status = simulate(dut, frames, width=8, height=6, pad_mode=PadMode.REFLECT,
                                src=src, sink=sink, seed=11)
    expected = [expected_fields(f, 5, PadMode.REFLECT) for f in frames]
    both = {name: np.concatenate([e[name] for e in expected]) for name in expected[0]}
    assert_fields_equal(received, both)
    assert status["errors"] == 0


def test_smallest_frame_and_signed_pixels():
    rng = np.random.default_rng(3)
    dut = WindowGenerator(kernel_size=5, channels=1, max_width=8, max_height=8, pixel_shape=signed(8))
    frame = rng.integers(-128, 128, size=(3, 3, 1))
    for mode in PadMode:
        received, _ = simulate(dut, [frame], width=3, height=3, pad_mode=mode, src="random",
                               sink="random", seed=5)
        assert_fields_equal(received, expected_fields(frame, 5, mode))


def test_full_rate_and_delay():
    """One window per cycle inside a frame; first window after window_delay(width) cycles."""
    dut = WindowGenerator(kernel_size=3, channels=1, max_width=16, max_height=16)
    width, height = 10, 6
    frame = np.arange(width * height).reshape(height, width, 1) % 256
    payloads = frame_payloads(dut, frame)
    timeline = {}

    async def source(ctx):
        ctx.set(dut.width, width)
        ctx.set(dut.height, height)
        cycle = 0
        ctx.set(dut.i_stream.valid, 1)
        for index, payload in enumerate(payloads):
            ctx.set(dut.i_stream.payload.as_value(), payload)
            while True:
                _, _, ready = await ctx.tick().sample(dut.i_stream.ready)
                cycle += 1
                if ready:
                    timeline.setdefault("accepted", []).append(cycle)
                    break
        ctx.set(dut.i_stream.valid, 0)

    async def sink(ctx):
        ctx.set(dut.o_stream.ready, 1)
        cycle = 0
        while len(timeline.get("emitted", [])) < width * height:
            _, _, valid = await ctx.tick().sample(dut.o_stream.valid)
            cycle += 1
            if valid:
                timeline.setdefault("emitted", []).append(cycle)

    run_simulation(dut, [source, sink], deadline_cycles=1000)
    accepted, emitted = timeline["accepted"], timeline["emitted"]
    assert np.all(np.diff(accepted) == 1), "input stalled inside a frame"
    assert np.all(np.diff(emitted) == 1), "output gap inside a frame"
    assert emitted[0] - accepted[0] == dut.window_delay(width)
    assert emitted[-1] == dut.frame_cycles(width, height)


def test_runtime_size_and_mode_change():
    rng = np.random.default_rng(9)
    dut = WindowGenerator(kernel_size=3, channels=1, max_width=12, max_height=12)
    for width, height, mode in [(12, 12, PadMode.ZERO), (4, 2, PadMode.REPLICATE), (3, 5, PadMode.REFLECT)]:
        frame = rng.integers(0, 256, size=(height, width, 1))
        received, status = simulate(dut, [frame], width=width, height=height, pad_mode=mode)
        assert_fields_equal(received, expected_fields(frame, 3, mode))


def test_malformed_streams_recover():
    """Each malformed frame raises its flag, the output stays whole frames, and the next good frame is exact."""
    rng = np.random.default_rng(21)
    width, height = 5, 4
    dut = WindowGenerator(kernel_size=3, channels=1, max_width=8, max_height=8)
    good = rng.integers(0, 256, size=(height, width, 1))
    good_words = frame_payloads(dut, good)
    short = rng.integers(0, 256, size=(2, width, 1))

    cases = {
        # pixel outside a frame, then a good frame
        "dropped": ([frame_payloads(dut, good[:1, :2], first=False, last=False)], None),
        # a frame cut short by last: completed with zeros
        "early_last": ([frame_payloads(dut, short)], np.concatenate([short, np.zeros((2, width, 1), int)])),
        # a frame cut short by the next first
        "early_first": ([frame_payloads(dut, short, last=False)], np.concatenate([short, np.zeros((2, width, 1), int)])),
        # a frame whose last pixel lacks last, followed by stray pixels
        "missing_last": ([frame_payloads(dut, good, last=False),
                          frame_payloads(dut, good[:1, :3], first=False, last=False)], good),
    }
    for flag, (prefix, first_frame) in cases.items():
        payloads = [w for words in prefix for w in words] + good_words
        frames = ([first_frame] if first_frame is not None else []) + [good]
        received, status = simulate(dut, None, width=width, height=height, pad_mode=PadMode.REPLICATE,
                                    payload_lists=payloads, expect_windows=len(frames) * width * height)
        expected = [expected_fields(f, 3, PadMode.REPLICATE) for f in frames]
        both = {name: np.concatenate([e[name] for e in expected]) for name in expected[0]}
        assert_fields_equal(received, both)
        raised = error_names(status["errors"])
        expected_raised = {flag, "dropped"} if flag == "missing_last" else {flag}
        assert raised == expected_raised, (flag, raised)


def test_narrowest_frame_for_k3_is_three_pixels():
    dut = WindowGenerator(kernel_size=3, channels=1, max_width=8, max_height=8)
    assert dut.min_width == 3
    good = np.arange(9).reshape(3, 3, 1)
    payloads = frame_payloads(dut, np.zeros((2, 2, 1), int)) + frame_payloads(dut, good)
    result = {}

    async def send(ctx):
        ctx.set(dut.height, 2)
        ctx.set(dut.width, 2)
        await stream_send(ctx, dut.i_stream, payloads[:4])
        ctx.set(dut.width, 3)
        ctx.set(dut.height, 3)
        await stream_send(ctx, dut.i_stream, payloads[4:])

    async def receive(ctx):
        result["words"] = await stream_receive(ctx, dut.o_stream, 9, raw=True)
        result["errors"] = ctx.get(dut.errors.as_value())

    run_simulation(dut, [send, receive], deadline_cycles=500)
    assert_fields_equal(unpack(dut.o_stream.payload.shape(), result["words"]),
                        expected_fields(good, 3, PadMode.ZERO))
    assert error_names(result["errors"]) == {"bad_size"}


def test_bad_size_frame_is_dropped():
    rng = np.random.default_rng(5)
    dut = WindowGenerator(kernel_size=5, channels=1, max_width=8, max_height=8)
    good = rng.integers(0, 256, size=(4, 4, 1))
    payloads = frame_payloads(dut, good) + frame_payloads(dut, good)
    widths = {}

    async def source(ctx):
        ctx.set(dut.height, 4)
        ctx.set(dut.width, 2)       # below r + 1 = 3: the first frame is dropped
        await stream_send(ctx, dut.i_stream, payloads[:16])
        ctx.set(dut.width, 4)
        await stream_send(ctx, dut.i_stream, payloads[16:])

    async def sink(ctx):
        widths["words"] = await stream_receive(ctx, dut.o_stream, 16, raw=True)
        widths["errors"] = ctx.get(dut.errors.as_value())
        ctx.set(dut.clear_errors, 1)
        await ctx.tick()
        ctx.set(dut.clear_errors, 0)
        widths["cleared"] = ctx.get(dut.errors.as_value())

    run_simulation(dut, [source, sink], deadline_cycles=2000)
    assert_fields_equal(unpack(dut.o_stream.payload.shape(), widths["words"]),
                        expected_fields(good, 5, PadMode.ZERO))
    assert error_names(widths["errors"]) == {"bad_size"}
    assert widths["cleared"] == 0


@pytest.mark.parametrize("kwargs,error,message", [
    ({"kernel_size": 4}, ValueError, r"^kernel size must be an odd integer in \[1, 15\], not 4$"),
    ({"kernel_size": 3.0}, TypeError, r"^kernel size must be an odd integer in \[1, 15\], not 3\.0$"),
    ({"kernel_size": 17}, ValueError, r"^kernel size must be an odd integer in \[1, 15\], not 17$"),
    ({"channels": 0}, ValueError, r"^channel count must be an integer >= 1, not 0$"),
    ({"max_width": 2, "kernel_size": 5}, ValueError, r"^maximum width must be an integer in \[3, 65536\], not 2$"),
    ({"max_height": "64"}, TypeError, r"^maximum height must be an integer in \[2, 65536\], not '64'$"),
    ({"pixel_shape": "u8"}, TypeError, r"^pixel shape must be a shape, not 'u8'$"),
])
def test_parameter_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        WindowGenerator(**kwargs)


def test_verilog_elaborates():
    text = verilog.convert(WindowGenerator(kernel_size=3, max_width=32, max_height=32), name="window")
    assert re.search(r"^module window\(", text, re.M)
