"""cocotb testbench: KernelScaler against golden.sparseconv.tap_lists / dense_tap_lists."""

import numpy as np

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from dynsparse.golden.density import density_map, inv_ref_var
from dynsparse.golden.images import real_image
from dynsparse.golden.sparseconv import dense_tap_lists, tap_densities, tap_lists
from dynsparse.hdl.scaler import KernelScaler
from dynsparse.hdl.taps import index_width
from dynsparse.sim.packing import pack, unpack
from dynsparse.sim.stalls import STALL_PATTERNS
from dynsparse.sim.tb.streams import TB, StreamSink, StreamSource, params


PARAMS = params()
BLOCK = KernelScaler(**PARAMS["block"])
DENSITY_LAYOUT = BLOCK.i_stream.payload.shape()
LISTS_LAYOUT = BLOCK.o_stream.payload.shape()
FIELDS = ("count", "pruned", "zero", "ci", "dy", "dx", "weight")
K, C_IN, C_OUT = BLOCK.kernel_size, BLOCK.in_channels, BLOCK.out_channels


def position_words(densities):
    height, width = densities.shape[:2]
    count = height * width
    ys, xs = np.mgrid[0:height, 0:width]
    marks = np.zeros((2, count), dtype=np.int64)
    marks[0, 0] = marks[1, -1] = 1
    return pack(DENSITY_LAYOUT, {"data": densities.reshape(count, C_IN, K, K), "x": xs.ravel(),
                                 "y": ys.ravel(), "first": marks[0], "last": marks[1]}, count)


def decode(words):
    """Flat output words as golden-shaped arrays (``count [P, C_out]``, ``ci [P, C_out, N]`` …)."""
    fields = unpack(LISTS_LAYOUT, words)
    positions = len(words)
    list_layout = LISTS_LAYOUT["lists"].shape.elem_shape
    lists = unpack(list_layout, fields["lists"].ravel())
    taps = unpack(list_layout["taps"].shape.elem_shape, lists["taps"].ravel())
    result = {name: lists[name].reshape(positions, C_OUT) for name in ("count", "pruned", "zero")}
    result.update({name: taps[name].reshape(positions, C_OUT, -1) for name in ("ci", "dy", "dx", "weight")})
    result.update({name: fields[name] for name in ("x", "y", "first", "last")})
    return result


async def wait_idle(dut, clock):
    while True:
        await ReadOnly()
        busy = bool(dut.busy.value)
        await RisingEdge(clock)
        if not busy:
            return


async def write_weights(dut, clock, weights):
    flat = weights.reshape(C_OUT, -1)
    tap_bits = index_width(BLOCK.taps)
    for co in range(C_OUT):
        for tap in range(flat.shape[1]):
            dut.weight_addr.value = (co << tap_bits) | tap
            dut.weight_data.value = int(flat[co, tap]) & 0xff
            dut.weight_write.value = 1
            await RisingEdge(clock)
    dut.weight_write.value = 0


async def run_frames(dut, frames, *, src, sink, seed):
    """``frames``: dicts with ``densities [H, W, C_in, K, K]``, ``threshold``, ``dense`` and
    optionally ``weights`` (written once the block is idle). Threshold and mode are random
    after each frame's first position, which must not change the result."""
    tb = TB(dut)
    rng = np.random.default_rng(seed)
    for name in ("prune_threshold", "dense", "weight_addr", "weight_data", "weight_write", "clear_errors"):
        getattr(dut, name).value = 0
    source = StreamSource(dut, "i_stream", tb.clock)
    receiver = StreamSink(dut, "o_stream", tb.clock)
    await tb.reset()
    total = sum(f["densities"].shape[0] * f["densities"].shape[1] for f in frames)

    async def send():
        for frame in frames:
            if "weights" in frame:
                await wait_idle(dut, tb.clock)
                await write_weights(dut, tb.clock, frame["weights"])
            words = position_words(frame["densities"])
            dut.prune_threshold.value = frame["threshold"]
            dut.dense.value = frame["dense"]
            await source.send(words[:1], pattern=src, seed=seed)
            dut.prune_threshold.value = int(rng.integers(0, 512))
            dut.dense.value = int(rng.integers(0, 2))
            await source.send(words[1:], pattern=src, seed=seed + 2)

    cocotb.start_soon(send())
    received = await receiver.receive(total, pattern=sink, seed=seed + 1,
                                      timeout_cycles=40 * total * (BLOCK.taps + 2) + 20_000)
    await receiver.expect_idle(BLOCK.latency + BLOCK.taps + 10)
    assert not dut.busy.value, "busy after the last list"
    assert int(dut.errors.value) == 0, f"errors {int(dut.errors.value):#b}"
    got = decode(received)
    offset, weights, outputs = 0, None, []
    for number, frame in enumerate(frames):
        weights = frame.get("weights", weights)
        densities = frame["densities"]
        height, width = densities.shape[:2]
        size = height * width
        expected = (dense_tap_lists(weights, (height, width)) if frame["dense"] else
                    tap_lists(weights, densities, prune_threshold=frame["threshold"]))
        part = {name: values[offset:offset + size] for name, values in got.items()}
        for name in FIELDS:
            values = getattr(expected, name)
            np.testing.assert_equal(part[name], values.reshape(size, *values.shape[2:]),
                                    err_msg=f"frame {number}: {name} (seed {seed})")
        ys, xs = np.mgrid[0:height, 0:width]
        np.testing.assert_equal(part["x"], xs.ravel())
        np.testing.assert_equal(part["y"], ys.ravel())
        assert part["first"][0] == 1 and part["first"].sum() == 1
        assert part["last"][-1] == 1 and part["last"].sum() == 1
        outputs.append(part)
        offset += size
    return outputs


def random_weights(rng):
    return rng.integers(-127, 128, (C_OUT, C_IN, K, K))


def random_densities(rng, height, width):
    shape = (height, width, C_IN, K, K)
    choice = rng.random(shape)
    return np.where(choice < 0.15, 0, np.where(choice < 0.3, 256, rng.integers(0, 257, shape)))


@cocotb.test()
@cocotb.parametrize(src=STALL_PATTERNS, sink=STALL_PATTERNS)
async def random_frames_under_stalls(dut, src, sink):
    """Random densities and weights, several thresholds, dense mode, new weights between frames."""
    seed = 5000 + 10 * STALL_PATTERNS.index(src) + STALL_PATTERNS.index(sink)
    rng = np.random.default_rng(seed)
    dut._log.info("seed %d", seed)
    height, width = PARAMS["frame"]
    frames = [
        {"densities": random_densities(rng, height, width), "threshold": 96, "dense": 0,
         "weights": random_weights(rng)},
        {"densities": random_densities(rng, 2, 3), "threshold": 0, "dense": 0},
        {"densities": random_densities(rng, 2, 3), "threshold": 300, "dense": 1},
        {"densities": random_densities(rng, 3, 3), "threshold": 200, "dense": 0,
         "weights": random_weights(rng)},
    ]
    await run_frames(dut, frames, src=src, sink=sink, seed=seed)


@cocotb.test()
@cocotb.parametrize(image=("camera", "text", "hubble_deep_field"))
async def real_images(dut, image):
    """Density maps of scikit-image crops, tile size 1, random stalls."""
    height, width = PARAMS["frame"]
    frame = real_image(image, size=(height, width))[:, :, None].repeat(C_IN, axis=2)
    density = density_map(frame, kernel_size=K, inv_ref_var=inv_ref_var(4.0))
    densities = tap_densities(density, kernel_size=K, tile_size=1)
    rng = np.random.default_rng(len(image))
    frames = [{"densities": densities, "threshold": 64, "dense": 0, "weights": random_weights(rng)},
              {"densities": densities, "threshold": 160, "dense": 0}]
    await run_frames(dut, frames, src="random", sink="random", seed=31)


@cocotb.test()
async def extremes(dut):
    """±127 and zero weights; densities 0 and 256; thresholds 0 and 511; dense mode."""
    shape = (2, 3, C_IN, K, K)
    full, empty = np.full(shape, 256), np.zeros(shape, np.int64)
    mixed = np.where(np.random.default_rng(1).random(shape) < 0.5, 0, 256)
    extreme = np.where(np.arange(C_OUT)[:, None, None, None] % 2, 127, -127) * np.ones((C_OUT, C_IN, K, K),
                                                                                       np.int64)
    frames = [
        {"densities": full, "threshold": 0, "dense": 0, "weights": extreme},
        {"densities": empty, "threshold": 0, "dense": 0},
        {"densities": full, "threshold": 511, "dense": 0},
        {"densities": mixed, "threshold": 256, "dense": 0},
        {"densities": empty, "threshold": 511, "dense": 1},
        {"densities": full, "threshold": 0, "dense": 0, "weights": np.zeros((C_OUT, C_IN, K, K), np.int64)},
        {"densities": full, "threshold": 0, "dense": 1},
    ]
    outputs = await run_frames(dut, frames, src="fixed", sink="fixed", seed=7)
    n = BLOCK.taps
    assert (outputs[0]["count"] == n).all() and (outputs[1]["zero"] == n).all()
    assert (outputs[2]["pruned"] == n).all() and (outputs[5]["zero"] == n).all()
    assert (outputs[6]["count"] == n).all()
