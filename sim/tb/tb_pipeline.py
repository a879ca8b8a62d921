"""cocotb testbench: DensityPipeline (window generator + density unit) against golden.density.

With ``DYNSPARSE_FRAMES_IN``/``DYNSPARSE_FRAMES_OUT`` set (by ``dynsparse demo``),
the ``stream_files`` test streams the frames of an ``.npz`` file through the
RTL and saves the densities it returns.
"""

import os

import numpy as np

import cocotb

from dynsparse.golden.density import density_map, inv_ref_var
from dynsparse.golden.images import real_image
from dynsparse.hdl.pipeline import DensityPipeline
from dynsparse.sim.packing import pack, unpack
from dynsparse.sim.stalls import STALL_PATTERNS
from dynsparse.sim.tb.streams import TB, StreamSink, StreamSource, params


PARAMS = params()
BLOCK = DensityPipeline(**PARAMS["block"])
PIXEL_LAYOUT = BLOCK.i_stream.payload.shape()
DENSITY_LAYOUT = BLOCK.o_stream.payload.shape()


def frame_words(frame):
    height, width, _ = frame.shape
    count = height * width
    marks = np.zeros((2, count), dtype=np.int64)
    marks[0, 0] = marks[1, -1] = 1
    return pack(PIXEL_LAYOUT, {"data": frame.reshape(count, -1), "first": marks[0], "last": marks[1]}, count)


async def densities(dut, frames, inv, *, src="random", sink="random", seed=0):
    """Stream ``frames`` (same size) through the DUT; return the density arrays it produces."""
    tb = TB(dut)
    height, width, _ = frames[0].shape
    dut.width.value, dut.height.value = width, height
    dut.inv_ref_var.value = inv
    dut.clear_errors.value = 0
    source = StreamSource(dut, "i_stream", tb.clock)
    receiver = StreamSink(dut, "o_stream", tb.clock)
    await tb.reset()
    words = [w for frame in frames for w in frame_words(frame)]
    cocotb.start_soon(source.send(words, pattern=src, seed=seed))
    received = await receiver.receive(len(words), pattern=sink, seed=seed + 1,
                                      timeout_cycles=20 * len(words) + 10 * width + 2000)
    await receiver.expect_idle(2 * width + 40)
    assert int(dut.errors.value) == 0, "stream errors raised"
    fields = unpack(DENSITY_LAYOUT, received)
    ys, xs = np.mgrid[0:height, 0:width]
    size = height * width
    np.testing.assert_equal(fields["x"], np.tile(xs.ravel(), len(frames)), err_msg="x")
    np.testing.assert_equal(fields["y"], np.tile(ys.ravel(), len(frames)), err_msg="y")
    assert fields["first"].sum() == len(frames) and fields["last"].sum() == len(frames)
    assert all(fields["first"][i * size] and fields["last"][(i + 1) * size - 1] for i in range(len(frames)))
    return fields["data"].reshape(len(frames), height, width, -1)


@cocotb.test()
@cocotb.parametrize(src=STALL_PATTERNS, sink=STALL_PATTERNS)
async def random_frames_under_stalls(dut, src, sink):
    """Random frames (one low-contrast, one full-scale) against golden, every stall pattern."""
    seed = 2000 + 10 * STALL_PATTERNS.index(src) + STALL_PATTERNS.index(sink)
    rng = np.random.default_rng(seed)
    height, width = PARAMS["frame"]
    channels = BLOCK.channels
    frames = [rng.integers(100, 140, size=(height, width, channels), dtype=np.uint8),
              rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)]
    inv = inv_ref_var(float(rng.choice([8.0, 20.0, 64.0])))
    dut._log.info("seed %d, inv_ref_var %d", seed, inv)
    got = await densities(dut, frames, inv, src=src, sink=sink, seed=seed)
    for frame, result in zip(frames, got):
        np.testing.assert_equal(result, density_map(frame, kernel_size=BLOCK.kernel_size, inv_ref_var=inv))


@cocotb.test()
@cocotb.parametrize(image=("camera", "text", "hubble_deep_field"), ref_std=(6.0, 32.0))
async def real_images(dut, image, ref_std):
    """Crops of scikit-image's images against golden, random stalls."""
    height, width = PARAMS["frame"]
    frame = real_image(image, size=(height, width))[:, :, None].repeat(BLOCK.channels, axis=2)
    inv = inv_ref_var(ref_std)
    got = await densities(dut, [frame], inv, seed=17)
    expected = density_map(frame, kernel_size=BLOCK.kernel_size, inv_ref_var=inv)
    np.testing.assert_equal(got[0], expected)
    assert 0 < expected.max() and expected.min() < 256, "the crop should not be flat or saturated"


@cocotb.test(skip="DYNSPARSE_FRAMES_IN" not in os.environ)
async def stream_files(dut):
    """Stream frames from DYNSPARSE_FRAMES_IN (npz: frames [F,H,W,C], inv_ref_var) without stalls."""
    archive = np.load(os.environ["DYNSPARSE_FRAMES_IN"])
    frames = list(archive["frames"])
    inv = int(archive["inv_ref_var"])
    got = await densities(dut, frames, inv, src="none", sink="none")
    np.save(os.environ["DYNSPARSE_FRAMES_OUT"], got)
