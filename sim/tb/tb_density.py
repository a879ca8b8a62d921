"""cocotb testbench: DensityUnit alone, fed windows built by golden.window, against golden.density."""

import numpy as np

import cocotb

from dynsparse.golden.density import density_map, inv_ref_var
from dynsparse.golden.images import real_image
from dynsparse.golden.window import windows
from dynsparse.hdl.density import DensityUnit
from dynsparse.sim.packing import pack, unpack
from dynsparse.sim.stalls import STALL_PATTERNS
from dynsparse.sim.tb.streams import TB, StreamSink, StreamSource, params


PARAMS = params()
BLOCK = DensityUnit(**PARAMS["block"])
WINDOW_LAYOUT = BLOCK.i_stream.payload.shape()
DENSITY_LAYOUT = BLOCK.o_stream.payload.shape()


def window_words(frame, rng):
    """The frame's windows, with random values in the padding (the unit must ignore them)."""
    height, width, channels = frame.shape
    k = BLOCK.kernel_size
    values, pad = windows(frame, kernel_size=k, pad_mode="zero")
    values = values.reshape(-1, k, k, channels).astype(np.int64)
    pad = pad.reshape(-1, k, k)
    garbage = rng.integers(0, 256, size=values.shape)
    values = np.where(pad[..., None] == 1, garbage, values)
    ys, xs = np.mgrid[0:height, 0:width]
    marks = np.zeros((2, height * width), dtype=np.int64)
    marks[0, 0] = marks[1, -1] = 1
    return pack(WINDOW_LAYOUT, {"data": values, "pad": pad, "x": xs.ravel(), "y": ys.ravel(),
                                "first": marks[0], "last": marks[1]}, height * width)


async def check_frames(dut, frames, inv, *, src, sink, seed):
    tb = TB(dut)
    dut.inv_ref_var.value = inv
    rng = np.random.default_rng(seed)
    source = StreamSource(dut, "i_stream", tb.clock)
    receiver = StreamSink(dut, "o_stream", tb.clock)
    await tb.reset()
    words = [w for frame in frames for w in window_words(frame, rng)]
    cocotb.start_soon(source.send(words, pattern=src, seed=seed))
    received = await receiver.receive(len(words), pattern=sink, seed=seed + 1,
                                      timeout_cycles=20 * len(words) + 1000)
    await receiver.expect_idle(BLOCK.latency + 10)
    got = unpack(DENSITY_LAYOUT, received)
    offset = 0
    for frame in frames:
        height, width, _ = frame.shape
        size = height * width
        expected = density_map(frame, kernel_size=BLOCK.kernel_size, inv_ref_var=inv)
        np.testing.assert_equal(got["data"][offset:offset + size], expected.reshape(size, -1))
        ys, xs = np.mgrid[0:height, 0:width]
        np.testing.assert_equal(got["x"][offset:offset + size], xs.ravel())
        np.testing.assert_equal(got["y"][offset:offset + size], ys.ravel())
        assert got["first"][offset] == 1 and got["last"][offset + size - 1] == 1
        assert got["first"][offset:offset + size].sum() == 1 and got["last"][offset:offset + size].sum() == 1
        offset += size


@cocotb.test()
@cocotb.parametrize(src=STALL_PATTERNS, sink=STALL_PATTERNS)
async def random_frames_under_stalls(dut, src, sink):
    """Random frames, low and full contrast, every source/sink stall pattern."""
    seed = 3000 + 10 * STALL_PATTERNS.index(src) + STALL_PATTERNS.index(sink)
    rng = np.random.default_rng(seed)
    height, width = PARAMS["frame"]
    frames = [rng.integers(118, 138, size=(height, width, BLOCK.channels), dtype=np.uint8),
              rng.integers(0, 256, size=(height, width, BLOCK.channels), dtype=np.uint8)]
    inv = inv_ref_var(float(rng.choice([4.0, 16.0, 100.0])))
    dut._log.info("seed %d, inv_ref_var %d", seed, inv)
    await check_frames(dut, frames, inv, src=src, sink=sink, seed=seed)


@cocotb.test()
@cocotb.parametrize(image=("camera", "text", "hubble_deep_field"))
async def real_images(dut, image):
    """Crops of scikit-image's images, random stalls."""
    height, width = PARAMS["frame"]
    frame = real_image(image, size=(height, width))[:, :, None].repeat(BLOCK.channels, axis=2)
    await check_frames(dut, [frame], inv_ref_var(12.0), src="random", sink="random", seed=23)


@cocotb.test()
async def extremes(dut):
    """Flat frame (density 0), full-scale checkerboard (saturated), smallest reference."""
    height, width = PARAMS["frame"]
    flat = np.full((height, width, BLOCK.channels), 77, dtype=np.uint8)
    ys, xs = np.mgrid[0:height, 0:width]
    checker = (((ys + xs) % 2) * 255).astype(np.uint8)[:, :, None].repeat(BLOCK.channels, axis=2)
    for inv in (1, inv_ref_var(1.0), 2**24 - 1):
        await check_frames(dut, [flat, checker], inv, src="fixed", sink="fixed", seed=inv % 97)
