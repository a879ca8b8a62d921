"""DensityUnit against its golden model in amaranth.sim; the golden model against float."""

import math

import numpy as np
import pytest
from amaranth.back import verilog

from dynsparse.golden.density import (density_map, density_map_float, density_of_windows,
                                      error_bound, inv_ref_var, isqrt, neighbourhood_sums,
                                      rn_shift, rn_table, VAR_FRAC_BITS)
from dynsparse.golden.images import real_image
from dynsparse.golden.measure_density_error import measure_density_error
from dynsparse.golden.window import PAD_MODES, windows
from dynsparse.hdl.density import DensityUnit
from dynsparse.sim.packing import pack, unpack
from dynsparse.sim.pysim import run_simulation, stream_receive
from dynsparse.sim.stalls import stall_pattern


STALLS = [("none", "none"), ("fixed", "fixed"), ("random", "random"),
          ("none", "random"), ("random", "none")]


def sample_frame(seed, height=7, width=9, channels=1):
    """Noise around 128 (std 12) with a flat block and a saturating block, so that
    zero, saturated and everything-between densities all occur."""
    rng = np.random.default_rng(seed)
    frame = np.clip(np.round(rng.normal(128, 12, (height, width, channels))), 0, 255)
    if height >= 5 and width >= 6:
        frame[:3, :3] = 77
        frame[-2:, -3:] = rng.integers(0, 256, (2, 3, channels))
    return frame.astype(np.uint8)


def assert_within_bound(fixed, float_density, *, ref_std, kernel_size):
    lower, upper = error_bound(ref_std, kernel_size=kernel_size)
    error = 256 * float_density - fixed
    assert error.min() >= lower - 1e-9, (error.min(), lower)
    assert error.max() <= upper + 1e-9, (error.max(), upper)


# --- golden model --------------------------------------------------------------------------

def test_inv_ref_var_values():
    assert inv_ref_var(8) == 2**23 // 64
    assert inv_ref_var(1) == 2**23
    assert inv_ref_var(3) == 932068                     # 932067.56 rounds up
    assert inv_ref_var(np.float32(16.0)) == 32768
    assert inv_ref_var(0.5) == 2**24 - 1                # clamped
    assert inv_ref_var(1e6) == 1                        # clamped
    assert inv_ref_var(4096) == 1                       # 0.5 rounds half up to 1
    assert inv_ref_var(4097) == 1                       # clamped


@pytest.mark.parametrize("value", [0, -1, -0.5, math.inf, math.nan])
def test_inv_ref_var_value_error(value):
    with pytest.raises(ValueError, match=r"^reference std must be a finite number > 0, not "):
        inv_ref_var(value)


@pytest.mark.parametrize("value", ["8", None, True, 1j])
def test_inv_ref_var_type_error(value):
    with pytest.raises(TypeError, match=r"^reference std must be a finite number > 0, not "):
        inv_ref_var(value)


def test_isqrt():
    values = np.arange(1 << 18, dtype=np.int64)
    np.testing.assert_equal(isqrt(values), [math.isqrt(v) for v in values.tolist()])
    roots = np.array([2**31 - 1, 2**30 + 12345, 2**31 - 12345], dtype=np.int64)
    for offset in (-1, 0, 1):
        values = roots * roots + offset
        np.testing.assert_equal(isqrt(values), [math.isqrt(v) for v in values.tolist()])


@pytest.mark.parametrize("kernel_size", [1, 3, 5, 15])
def test_rn_table(kernel_size):
    table = rn_table(kernel_size)
    scale = 1 << (rn_shift(kernel_size) + VAR_FRAC_BITS)
    assert len(table) == kernel_size ** 2 + 1 and table[:2] == (0, 0)
    for n in range(2, len(table)):
        assert abs(table[n] * n * n - scale) <= n * n // 2     # round half up
        assert abs(table[n] * n * n / scale - 1) < 2**-17


@pytest.mark.parametrize("kernel_size", [1, 3, 5, 7])
@pytest.mark.parametrize("pad_mode", PAD_MODES)
def test_windows_match_map(kernel_size, pad_mode):
    frame = sample_frame(kernel_size, channels=2)
    values, pad = windows(frame, kernel_size=kernel_size, pad_mode=pad_mode)
    inv = inv_ref_var(16)
    np.testing.assert_equal(density_of_windows(values, pad, inv_ref_var=inv),
                            density_map(frame, kernel_size=kernel_size, inv_ref_var=inv))


def test_pad_values_ignored():
    frame = sample_frame(1)
    values, pad = windows(frame, kernel_size=5)
    garbage = np.random.default_rng(1).integers(0, 256, values.shape)
    values = np.where(pad[..., None].astype(bool), garbage, values)
    np.testing.assert_equal(density_of_windows(values, pad, inv_ref_var=8192),
                            density_map(frame, kernel_size=5, inv_ref_var=8192))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("ref_std", [4, 8, 12, 32, 100])
def test_fixed_against_float_random(seed, kernel_size, ref_std):
    rng = np.random.default_rng(seed)
    frame = np.concatenate([
        rng.integers(0, 256, (24, 32, 1)),                           # uniform noise
        np.clip(np.round(rng.normal(128, ref_std, (24, 32, 1))), 0, 255),
        rng.integers(100, 104, (24, 32, 1)),                         # low contrast
    ]).astype(np.uint8)
    assert_within_bound(density_map(frame, kernel_size=kernel_size, inv_ref_var=inv_ref_var(ref_std)),
                        density_map_float(frame, kernel_size=kernel_size, ref_std=ref_std),
                        ref_std=ref_std, kernel_size=kernel_size)


def test_fixed_against_float_real_images():
    rows = measure_density_error(kernel_sizes=(3, 5), ref_stds=(8, 16, 32, 64, 100))
    for row in rows:
        lower, upper = error_bound(row["ref_std"], kernel_size=row["kernel_size"])
        assert -row["max_above"] >= lower - 1e-9, row
        assert row["max_below"] <= upper + 1e-9, row
    assert max(row["max_below"] for row in rows) < 1.001


def test_saturation_flat_and_single_element():
    checkerboard = (np.indices((8, 8)).sum(axis=0) % 2 * 255).astype(np.uint8)[..., None]
    assert (density_map(checkerboard, kernel_size=3, inv_ref_var=inv_ref_var(64)) == 256).all()
    flat = np.full((6, 5, 2), 200, dtype=np.uint8)
    assert (density_map(flat, kernel_size=5, inv_ref_var=inv_ref_var(1)) == 0).all()
    noise = np.random.default_rng(0).integers(0, 256, (6, 5, 2), dtype=np.uint8)
    assert (density_map(noise, kernel_size=1, inv_ref_var=inv_ref_var(1)) == 0).all()
    assert density_map(noise, kernel_size=3, inv_ref_var=1).max() < 256


def test_golden_argument_errors():
    frame = np.zeros((4, 4, 1), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"^kernel size must be an odd integer in \[1, 15\], not 4$"):
        density_map(frame, kernel_size=4, inv_ref_var=1)
    with pytest.raises(ValueError, match=r"^inv_ref_var must be an integer in \[1, 16777215\], not 0$"):
        density_map(frame, kernel_size=3, inv_ref_var=0)
    with pytest.raises(TypeError, match=r"^inv_ref_var must be an integer"):
        density_map(frame, kernel_size=3, inv_ref_var=1.5)
    with pytest.raises(TypeError, match=r"^frame must be a uint8 array, not float64$"):
        density_map(frame.astype(float), kernel_size=3, inv_ref_var=1)
    with pytest.raises(ValueError, match=r"^frame must have the shape \[H, W, C\]"):
        density_map(frame[..., 0], kernel_size=3, inv_ref_var=1)


# --- gateware ------------------------------------------------------------------------------

def window_payloads(dut, frame, rng):
    """Flat payloads of every window of ``frame``, with garbage in the pad elements."""
    height, width, channels = frame.shape
    count = height * width
    values, pad = windows(frame, kernel_size=dut.kernel_size)
    garbage = rng.integers(0, 256, values.shape)
    values = np.where(pad[..., None].astype(bool), garbage, values)
    ys, xs = np.mgrid[0:height, 0:width]
    first, last = np.zeros(count, np.int64), np.zeros(count, np.int64)
    first[0] = last[-1] = 1
    return pack(dut.i_stream.payload.shape(), {
        "data": values.reshape(count, dut.kernel_size, dut.kernel_size, channels),
        "pad": pad.reshape(count, dut.kernel_size, dut.kernel_size),
        "x": xs.ravel(), "y": ys.ravel(), "first": first, "last": last,
    }, count)


def simulate(dut, frames, ref_stds, *, source="none", sink="none", seed=0):
    """Send ``frames`` back to back, the ``i``-th with ``inv_ref_var(ref_stds[i])`` set while
    its first window is offered and random values on ``inv_ref_var`` after that; check
    the received densities and side fields, and that nothing more comes out."""
    rng = np.random.default_rng(seed)
    payloads, configs = [], []
    for frame, ref_std in zip(frames, ref_stds):
        frame_payloads = window_payloads(dut, frame, rng)
        payloads += frame_payloads
        configs += [inv_ref_var(ref_std)] + rng.integers(0, 2**24, len(frame_payloads) - 1).tolist()
    received = []

    async def send(ctx):
        allow = stall_pattern(source, seed=seed)
        for payload, config in zip(payloads, configs):
            ctx.set(dut.inv_ref_var, config)
            while not next(allow):
                ctx.set(dut.i_stream.valid, 0)
                await ctx.tick()
            ctx.set(dut.i_stream.valid, 1)
            ctx.set(dut.i_stream.payload.as_value(), payload)
            await ctx.tick().until(dut.i_stream.ready)
            ctx.set(dut.inv_ref_var, int(rng.integers(0, 2**24)))
        ctx.set(dut.i_stream.valid, 0)

    async def receive(ctx):
        received.extend(await stream_receive(ctx, dut.o_stream, len(payloads), pattern=sink,
                                             seed=seed + 1, raw=True))
        ctx.set(dut.o_stream.ready, 1)
        for _ in range(dut.latency + 4):
            await ctx.tick()
            assert not ctx.get(dut.o_stream.valid), "extra output"

    run_simulation(dut, [send, receive], deadline_cycles=20 * (len(payloads) + dut.latency) + 1000)
    fields = unpack(dut.o_stream.payload.shape(), received)
    message = f"source={source} sink={sink} seed={seed}"
    expected_data = np.concatenate([
        density_map(frame, kernel_size=dut.kernel_size, inv_ref_var=inv_ref_var(ref_std))
        .reshape(-1, dut.channels) for frame, ref_std in zip(frames, ref_stds)])
    np.testing.assert_equal(fields["data"], expected_data, err_msg=message)
    for name in ("x", "y", "first", "last"):
        expected = np.concatenate([
            {"x": np.tile(np.arange(f.shape[1]), f.shape[0]),
             "y": np.repeat(np.arange(f.shape[0]), f.shape[1]),
             "first": np.eye(1, f.shape[0] * f.shape[1], 0, dtype=int)[0],
             "last": np.eye(1, f.shape[0] * f.shape[1], f.shape[0] * f.shape[1] - 1, dtype=int)[0],
             }[name] for f in frames])
        np.testing.assert_equal(fields[name], expected, err_msg=f"{name}: {message}")


@pytest.mark.parametrize("source, sink", STALLS)
@pytest.mark.parametrize("kernel_size, channels", [(3, 1), (5, 2)])
def test_random_frames(kernel_size, channels, source, sink):
    dut = DensityUnit(kernel_size=kernel_size, channels=channels, max_width=16, max_height=16)
    frames = [sample_frame(seed, channels=channels) for seed in (1, 2)]
    simulate(dut, frames, [16, 40], source=source, sink=sink, seed=kernel_size * 10 + channels)


@pytest.mark.parametrize("source, sink", STALLS)
def test_camera_crop(source, sink):
    dut = DensityUnit(kernel_size=3, channels=1, max_width=12, max_height=10)
    frame = real_image("camera", size=(10, 12), offset=(100, 220))[..., None]
    simulate(dut, [frame], [24], source=source, sink=sink, seed=7)


def test_inv_ref_var_latched_per_frame():
    """Tiny frames (one and two windows) keep several frames in flight, each with its own value."""
    dut = DensityUnit(kernel_size=3, channels=1, max_width=4, max_height=4)
    frames = [sample_frame(seed, height=h, width=w) for seed, (h, w) in
              enumerate([(1, 1), (1, 2), (2, 3), (1, 2), (3, 3), (2, 1)])]
    frames[1][0, 1] = 255 - frames[1][0, 0]                      # a non-zero density in 2 pixels
    simulate(dut, frames, [2, 3, 5, 8, 13, 21], source="random", sink="random", seed=3)


def test_inv_ref_var_extremes():
    """``inv_ref_var`` from 1 to ``2**24 - 1`` against variances from 0 to far above the
    reference. The gateware replaces the high chunk product of ``var_q * inv_ref_var``
    by a clamped narrow one and cuts the rows of its sum at ``2**39`` (``A >= 65536``);
    the frames are chosen so that both sides of those cuts occur, checked here."""
    stds = [0, 0.3, 0.6, 1, 2, 4, 8, 11, 16, 40]
    ref_stds = [0.5, 0.75, 1, 1.5, 3, 8, 9.5, 11.3, 11.4, 100, 5000]
    rng = np.random.default_rng(11)
    frames = [np.clip(np.round(128 + rng.normal(0, 1, (len(stds), 8, 1)) *
                               np.array(stds)[:, None, None]), 0, 255).astype(np.uint8)
              for _ in ref_stds]
    for frame in frames[::2]:       # the largest variances: V >= 2**20 where N >= 8
        frame[3:6] = (np.indices((3, 8)).sum(axis=0) % 2 * 255)[..., None]
    # var_q and inv_ref_var split at bit 16 as the gateware does
    high_chunks, boundary, large_v = set(), 0, 0
    for frame, ref_std in zip(frames, ref_stds):
        n, s1, s2 = neighbourhood_sums(frame, kernel_size=3)
        large_v += int((n * s2 - s1 * s1 >= 2**20).sum())
        var_q = ((n * s2 - s1 * s1) * np.array(rn_table(3))[n]) >> rn_shift(3)
        inv = inv_ref_var(ref_std)
        a = (var_q * inv) >> 23
        high_chunks |= {(bool(q), (q * (inv >> 16)) >= 128) for q in (var_q >> 16).ravel() if inv >> 16}
        boundary += int(((a >= 60000) & (a < 70000)).sum())
    assert high_chunks == {(False, False), (True, False), (True, True)} and boundary and large_v
    dut = DensityUnit(kernel_size=3, channels=1, max_width=8, max_height=len(stds))
    simulate(dut, frames, ref_stds, source="random", sink="random", seed=11)


@pytest.mark.parametrize("kernel_size", [1, 3, 5, 7])
def test_latency_and_throughput(kernel_size):
    dut = DensityUnit(kernel_size=kernel_size, channels=1, max_width=8, max_height=8)
    frame = sample_frame(0, height=4, width=5)
    payloads = window_payloads(dut, frame, np.random.default_rng(0))
    arrivals = []

    async def testbench(ctx):
        ctx.set(dut.o_stream.ready, 1)
        ctx.set(dut.inv_ref_var, inv_ref_var(16))
        cycle = 0
        for payload in payloads + [None] * (dut.latency + 2):
            ctx.set(dut.i_stream.valid, payload is not None)
            if payload is not None:
                ctx.set(dut.i_stream.payload.as_value(), payload)
                assert ctx.get(dut.i_stream.ready)
            await ctx.tick()
            cycle += 1
            if ctx.get(dut.o_stream.valid):
                arrivals.append(cycle)

    run_simulation(dut, [testbench])
    # the window accepted in cycle t is offered in cycle t + latency, one per cycle
    assert arrivals == [dut.latency + t for t in range(len(payloads))]
    assert dut.latency == 16 + {1: 0, 3: 2, 5: 3, 7: 3}[kernel_size]


def test_properties():
    dut = DensityUnit(kernel_size=5, channels=3, max_width=640, max_height=480)
    assert (dut.kernel_size, dut.channels, dut.max_width, dut.max_height) == (5, 3, 640, 480)
    assert dut.latency == 19
    assert dut.o_stream.payload.shape().size == 3 * 9 + 10 + 9 + 2
    with pytest.raises(AttributeError):
        dut.kernel_size = 3


@pytest.mark.parametrize("kwargs, error, message", [
    ({"kernel_size": 4}, ValueError, r"^kernel size must be an odd integer in \[1, 15\], not 4$"),
    ({"kernel_size": 0}, ValueError, r"^kernel size must be an odd integer in \[1, 15\], not 0$"),
    ({"kernel_size": 17}, ValueError, r"^kernel size must be an odd integer in \[1, 15\], not 17$"),
    ({"kernel_size": 3.0}, TypeError, r"^kernel size must be an odd integer in \[1, 15\], not 3\.0$"),
    ({"channels": 0}, ValueError, r"^channel count must be an integer >= 1, not 0$"),
    ({"channels": "2"}, TypeError, r"^channel count must be an integer >= 1, not '2'$"),
    ({"max_width": 0}, ValueError, r"^maximum width must be an integer >= 1, not 0$"),
    ({"max_height": True}, TypeError, r"^maximum height must be an integer >= 1, not True$"),
])
def test_parameter_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        DensityUnit(**{"kernel_size": 3, "channels": 1, "max_width": 8, "max_height": 8, **kwargs})


@pytest.mark.parametrize("kernel_size, channels", [(1, 1), (3, 2), (7, 1)])
def test_verilog(kernel_size, channels):
    text = verilog.convert(DensityUnit(kernel_size=kernel_size, channels=channels,
                                       max_width=640, max_height=480), name="density")
    assert "module density" in text
