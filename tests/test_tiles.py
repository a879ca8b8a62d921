"""TileAverager against golden.sparseconv.tap_densities (tile size T > 1), in amaranth.sim."""

import re

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.lib import data

from dynsparse.golden.density import density_map, inv_ref_var
from dynsparse.golden.images import real_image
from dynsparse.golden.sparseconv import tap_densities
from dynsparse.hdl.tiles import TileAverager
from dynsparse.hdl.window import WindowErrors
from dynsparse.sim.packing import pack, unpack
from dynsparse.sim.pysim import run_simulation, stream_receive, stream_send
from dynsparse.sim.stalls import STALL_PATTERNS


def frame_payloads(dut, density, *, first=True, last=True):
    height, width, channels = density.shape
    count = height * width
    marks_first = np.zeros(count, dtype=np.int64)
    marks_last = np.zeros(count, dtype=np.int64)
    marks_first[0] = first
    marks_last[-1] = last
    return pack(dut.i_stream.payload.shape(), {
        "data": density.reshape(count, channels), "first": marks_first, "last": marks_last,
    }, count)


def expected_fields(density, kernel_size, tile_size):
    """``tap_densities`` of every pixel's tile, repeated per pixel, in raster order."""
    height, width, channels = density.shape
    averages = tap_densities(density, kernel_size=kernel_size, tile_size=tile_size)
    per_pixel = averages[np.arange(height) // tile_size][:, np.arange(width) // tile_size]
    ys, xs = np.mgrid[0:height, 0:width]
    first = np.zeros(height * width, dtype=np.int64)
    last = np.zeros(height * width, dtype=np.int64)
    first[0] = last[-1] = 1
    return {
        "data": per_pixel.reshape(height * width, channels, kernel_size, kernel_size),
        "x": xs.ravel(), "y": ys.ravel(), "first": first, "last": last,
    }


def concatenated(frames, kernel_size, tile_size):
    expected = [expected_fields(f, kernel_size, tile_size) for f in frames]
    return {name: np.concatenate([e[name] for e in expected]) for name in expected[0]}


def error_names(value):
    fields = unpack(data.Layout.cast(WindowErrors), [value])
    return {name for name, flag in fields.items() if flag[0]}


def assert_fields_equal(received, expected, context=""):
    for name, value in expected.items():
        np.testing.assert_equal(received[name], value, err_msg=f"field {name} {context}")


def random_density(rng, height, width, channels):
    """Random UQ1.8 densities with runs of the extremes 0 and 256."""
    density = rng.integers(0, 257, size=(height, width, channels))
    density[rng.random(density.shape) < 0.1] = 0
    density[rng.random(density.shape) < 0.1] = 256
    return density


def simulate(dut, frames, *, sizes=None, src="none", sink="none", seed=0, payload_lists=None,
             expect_count=None):
    """Send ``frames`` (each with its own size, set before its first pixel); receive every output.

    ``sizes`` overrides the ``(height, width)`` set for each frame; ``payload_lists`` the words
    sent for each frame.
    """
    sizes = sizes or [f.shape[:2] for f in frames]
    payload_lists = payload_lists or [frame_payloads(dut, f) for f in frames]
    count = expect_count if expect_count is not None else sum(f.shape[0] * f.shape[1] for f in frames)
    total = sum(len(p) for p in payload_lists)
    widest = max(width for _, width in sizes)
    result = {}

    async def send(ctx):
        for (height, width), payloads in zip(sizes, payload_lists):
            ctx.set(dut.width, width)
            ctx.set(dut.height, height)
            await stream_send(ctx, dut.i_stream, payloads, pattern=src, seed=seed)

    async def receive(ctx):
        result["words"] = await stream_receive(ctx, dut.o_stream, count, pattern=sink,
                                               seed=seed + 1, raw=True)
        # Nothing more may come out, and the block empties.
        ctx.set(dut.o_stream.ready, 1)
        for _ in range((dut.row_delay + 2) * widest + 16):
            _, _, valid = await ctx.tick().sample(dut.o_stream.valid)
            assert not valid, "output after the expected ones"
        result["errors"] = ctx.get(dut.errors.as_value())
        result["busy"] = ctx.get(dut.busy)

    run_simulation(dut, [send, receive], deadline_cycles=20 * (total + count) + 2000)
    return unpack(dut.o_stream.payload.shape(), result["words"]), result


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("kernel_size", [1, 3, 5])
@pytest.mark.parametrize("tile_size", [2, 4, 8])
def test_random_densities(tile_size, kernel_size, channels):
    """The smallest frame, then a larger one, back to back."""
    rng = np.random.default_rng(100 * tile_size + 10 * kernel_size + channels)
    dut = TileAverager(kernel_size=kernel_size, channels=channels, tile_size=tile_size,
                       max_width=4 * tile_size + 16, max_height=4 * tile_size + 16)
    frames = [random_density(rng, dut.min_height, dut.min_width, channels),
              random_density(rng, dut.min_height + tile_size, dut.min_width + 2 * tile_size, channels)]
    received, status = simulate(dut, frames)
    assert_fields_equal(received, concatenated(frames, kernel_size, tile_size))
    assert status["errors"] == 0 and not status["busy"]


@pytest.mark.parametrize("image", ["camera", "text", "hubble_deep_field"])
@pytest.mark.parametrize("tile_size,kernel_size", [(4, 3), (2, 5), (8, 1)])
def test_real_images(image, tile_size, kernel_size):
    """Density maps of crops of scikit-image's images; random stalls on both sides."""
    height, width = 16, 24
    frame = real_image(image, size=(height, width))[:, :, None]
    density = density_map(frame, kernel_size=3, inv_ref_var=inv_ref_var(16.0)).astype(np.int64)
    dut = TileAverager(kernel_size=kernel_size, channels=1, tile_size=tile_size,
                       max_width=32, max_height=32)
    received, status = simulate(dut, [density], src="random", sink="random", seed=3)
    assert_fields_equal(received, expected_fields(density, kernel_size, tile_size), image)
    assert status["errors"] == 0 and not status["busy"]


@pytest.mark.parametrize("src", STALL_PATTERNS)
@pytest.mark.parametrize("sink", STALL_PATTERNS)
def test_stalls_two_frames(src, sink):
    seed = 1000 + 10 * STALL_PATTERNS.index(src) + STALL_PATTERNS.index(sink)
    rng = np.random.default_rng(seed)
    dut = TileAverager(kernel_size=3, channels=2, tile_size=4, max_width=32, max_height=32)
    frames = [random_density(rng, 12, 16, 2), random_density(rng, 8, 20, 2)]
    received, status = simulate(dut, frames, src=src, sink=sink, seed=seed)
    assert_fields_equal(received, concatenated(frames, 3, 4), f"(seed {seed})")
    assert status["errors"] == 0 and not status["busy"]


def test_slow_sink_stalls_input():
    """A sink that takes one pixel in eight holds the input back without losing anything."""
    rng = np.random.default_rng(17)
    dut = TileAverager(kernel_size=1, channels=1, tile_size=2, max_width=16, max_height=16)
    frames = [random_density(rng, 12, 8, 1) for _ in range(2)]
    result = {}
    payloads = [p for f in frames for p in frame_payloads(dut, f)]

    async def send(ctx):
        ctx.set(dut.width, 8)
        ctx.set(dut.height, 12)
        await stream_send(ctx, dut.i_stream, payloads)

    async def receive(ctx):
        words = []
        while len(words) < len(payloads):
            for _ in range(7):
                ctx.set(dut.o_stream.ready, 0)
                await ctx.tick()
            ctx.set(dut.o_stream.ready, 1)
            _, _, valid, word = await ctx.tick().sample(dut.o_stream.valid,
                                                         dut.o_stream.payload.as_value())
            if valid:
                words.append(word)
        result["words"] = words

    run_simulation(dut, [send, receive], deadline_cycles=20 * len(payloads) + 1000)
    assert_fields_equal(unpack(dut.o_stream.payload.shape(), result["words"]),
                        concatenated(frames, 1, 2))


@pytest.mark.parametrize("tile_size,kernel_size", [(4, 3), (2, 5)])
def test_full_rate_and_look_ahead(tile_size, kernel_size):
    """With nothing stalled one pixel leaves per cycle inside a frame; the first output
    needs exactly ``look_ahead(width)`` input pixels."""
    rng = np.random.default_rng(5)
    width, height = 16, 16
    dut = TileAverager(kernel_size=kernel_size, channels=1, tile_size=tile_size,
                       max_width=width, max_height=height)
    density = random_density(rng, height, width, 1)
    payloads = frame_payloads(dut, density)
    look_ahead = dut.look_ahead(width)
    assert look_ahead == (tile_size + kernel_size // 2 + 1) * width + kernel_size // 2 + 1
    assert look_ahead < width * height
    timeline = {"accepted": [], "emitted": []}

    async def source(ctx):
        ctx.set(dut.width, width)
        ctx.set(dut.height, height)
        await stream_send(ctx, dut.i_stream, payloads[:look_ahead - 1])
        for _ in range(200):                # nothing may leave before pixel look_ahead - 1
            await ctx.tick()
        timeline["early"] = len(timeline["emitted"])
        await stream_send(ctx, dut.i_stream, payloads[look_ahead - 1:])

    async def monitor(ctx):
        cycle = 0
        async for _, _, i_valid, i_ready, o_valid, o_ready in ctx.tick().sample(
                dut.i_stream.valid, dut.i_stream.ready, dut.o_stream.valid, dut.o_stream.ready):
            cycle += 1
            if i_valid and i_ready:
                timeline["accepted"].append(cycle)
            if o_valid and o_ready:
                timeline["emitted"].append(cycle)

    async def sink(ctx):
        ctx.set(dut.o_stream.ready, 1)
        while len(timeline["emitted"]) < width * height:
            await ctx.tick()
        await ctx.tick()

    run_simulation(dut, [source, sink], processes=[monitor], deadline_cycles=5000)
    assert timeline["early"] == 0
    emitted = timeline["emitted"]
    assert len(emitted) == width * height
    assert np.all(np.diff(emitted) == 1), "output gap inside a frame"
    assert emitted[0] > timeline["accepted"][look_ahead - 1]


def test_bad_sizes_dropped_then_exact():
    rng = np.random.default_rng(23)
    dut = TileAverager(kernel_size=3, channels=1, tile_size=4, max_width=24, max_height=24)
    assert (dut.min_width, dut.min_height) == (4, 4)
    good = random_density(rng, 8, 12, 1)
    cases = [(8, 10), (6, 12), (8, 28), (28, 12), (0, 12), (8, 0)]    # (height, width)
    for height, width in cases:
        bad = random_density(rng, 8, 12, 1)
        received, status = simulate(dut, [bad, good], sizes=[(height, width), (8, 12)],
                                    expect_count=8 * 12)
        assert_fields_equal(received, expected_fields(good, 3, 4), f"after {height}×{width}")
        assert error_names(status["errors"]) == {"bad_size"}, (height, width)


def test_clear_errors():
    rng = np.random.default_rng(29)
    dut = TileAverager(kernel_size=1, channels=1, tile_size=2, max_width=8, max_height=8)
    good = random_density(rng, 4, 4, 1)
    payloads = frame_payloads(dut, good)
    result = {}

    async def source(ctx):
        ctx.set(dut.height, 4)
        ctx.set(dut.width, 6 - 1)
        await stream_send(ctx, dut.i_stream, payloads)
        ctx.set(dut.width, 4)
        await stream_send(ctx, dut.i_stream, payloads)

    async def sink(ctx):
        result["words"] = await stream_receive(ctx, dut.o_stream, 16, raw=True)
        result["errors"] = ctx.get(dut.errors.as_value())
        ctx.set(dut.clear_errors, 1)
        await ctx.tick()
        ctx.set(dut.clear_errors, 0)
        result["cleared"] = ctx.get(dut.errors.as_value())

    run_simulation(dut, [source, sink], deadline_cycles=2000)
    assert_fields_equal(unpack(dut.o_stream.payload.shape(), result["words"]),
                        expected_fields(good, 1, 2))
    assert error_names(result["errors"]) == {"bad_size"}
    assert result["cleared"] == 0


def test_malformed_streams_recover():
    """The inner window generator's marker errors: whole frames out, the next good frame exact."""
    rng = np.random.default_rng(31)
    height, width = 8, 8
    dut = TileAverager(kernel_size=3, channels=1, tile_size=4, max_width=8, max_height=8)
    good = random_density(rng, height, width, 1)
    short = random_density(rng, 4, width, 1)
    completed = np.concatenate([short, np.zeros((4, width, 1), dtype=np.int64)])
    cases = {
        "dropped": ([frame_payloads(dut, good[:1, :3], first=False, last=False)], None),
        "early_last": ([frame_payloads(dut, short)], completed),
        "early_first": ([frame_payloads(dut, short, last=False)], completed),
    }
    for flag, (prefix, first_frame) in cases.items():
        frames = ([first_frame] if first_frame is not None else []) + [good]
        payloads = [w for words in prefix for w in words] + frame_payloads(dut, good)
        received, status = simulate(dut, [good], payload_lists=[payloads],
                                    expect_count=len(frames) * height * width,
                                    src="random", sink="random", seed=len(flag))
        assert_fields_equal(received, concatenated(frames, 3, 4), flag)
        assert error_names(status["errors"]) == {flag}, flag


@pytest.mark.parametrize("kwargs,error,message", [
    ({"kernel_size": 4}, ValueError, r"^kernel size must be an odd integer in \[1, 15\], not 4$"),
    ({"kernel_size": "3"}, TypeError, r"^kernel size must be an odd integer in \[1, 15\], not '3'$"),
    ({"channels": 0}, ValueError, r"^channel count must be an integer >= 1, not 0$"),
    ({"tile_size": 3}, ValueError, r"^tile size must be a power of two in \[2, 16\], not 3$"),
    ({"tile_size": 32}, ValueError, r"^tile size must be a power of two in \[2, 16\], not 32$"),
    ({"tile_size": 4.0}, TypeError, r"^tile size must be a power of two in \[2, 16\], not 4\.0$"),
    ({"tile_size": 1}, ValueError,
     r"^tile size must be a power of two in \[2, 16\], not 1 "
     r"\(tile size 1 is a WindowGenerator with REPLICATE padding\)$"),
    ({"tile_size": 8, "kernel_size": 9}, ValueError,
     r"^tile size plus kernel size must be at most 15, not 8 \+ 9$"),
    ({"max_width": 30}, ValueError, r"^maximum width must be a multiple of the tile size 4, not 30$"),
    ({"max_width": 2, "tile_size": 2}, ValueError,
     r"^maximum width must be an integer in \[4, 65536\], not 2$"),
    ({"max_height": "64"}, TypeError, r"^maximum height must be an integer in \[4, 65536\], not '64'$"),
    ({"max_height": 18}, ValueError, r"^maximum height must be a multiple of the tile size 4, not 18$"),
])
def test_parameter_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        TileAverager(**kwargs)


def test_verilog_elaborates():
    text = verilog.convert(TileAverager(kernel_size=3, tile_size=4, max_width=32, max_height=32),
                           name="tiles")
    assert re.search(r"^module tiles\(", text, re.M)
