"""cocotb testbench: WindowGenerator against golden.window on random and real frames."""

import numpy as np

import cocotb
from amaranth.lib import data

from dynsparse.golden.images import real_image
from dynsparse.golden.window import PAD_MODES, windows
from dynsparse.hdl.window import WindowErrors, WindowGenerator
from dynsparse.sim.packing import pack, unpack
from dynsparse.sim.stalls import STALL_PATTERNS
from dynsparse.sim.tb.streams import TB, StreamSink, StreamSource, params


PARAMS = params()
BLOCK = WindowGenerator(**PARAMS["block"])
PIXEL_LAYOUT = BLOCK.i_stream.payload.shape()
WINDOW_LAYOUT = BLOCK.o_stream.payload.shape()


def frame_words(frame, *, first=True, last=True):
    height, width, _ = frame.shape
    count = height * width
    marks = np.zeros((2, count), dtype=np.int64)
    marks[0, 0], marks[1, -1] = first, last
    return pack(PIXEL_LAYOUT, {"data": frame.reshape(count, -1),
                               "first": marks[0], "last": marks[1]}, count)


def check_windows(words, frame, pad_mode):
    height, width, channels = frame.shape
    k = BLOCK.kernel_size
    values, pad = windows(frame, kernel_size=k, pad_mode=pad_mode)
    got = unpack(WINDOW_LAYOUT, words)
    ys, xs = np.mgrid[0:height, 0:width]
    np.testing.assert_equal(got["data"], values.reshape(-1, k, k, channels), err_msg="window values")
    np.testing.assert_equal(got["pad"], pad.reshape(-1, k, k), err_msg="padding flags")
    np.testing.assert_equal(got["x"], xs.ravel(), err_msg="x")
    np.testing.assert_equal(got["y"], ys.ravel(), err_msg="y")
    marks = np.zeros((2, height * width), dtype=np.int64)
    marks[0, 0] = marks[1, -1] = 1
    np.testing.assert_equal(got["first"], marks[0], err_msg="first")
    np.testing.assert_equal(got["last"], marks[1], err_msg="last")


async def run_frames(dut, frames, pad_mode, *, src="none", sink="none", seed=0):
    tb = TB(dut)
    dut.width.value = frames[0].shape[1]
    dut.height.value = frames[0].shape[0]
    dut.pad_mode.value = PAD_MODES.index(pad_mode)
    dut.clear_errors.value = 0
    source = StreamSource(dut, "i_stream", tb.clock)
    receiver = StreamSink(dut, "o_stream", tb.clock)
    await tb.reset()
    words = [w for frame in frames for w in frame_words(frame)]
    count = sum(f.shape[0] * f.shape[1] for f in frames)
    cocotb.start_soon(source.send(words, pattern=src, seed=seed))
    received = await receiver.receive(count, pattern=sink, seed=seed + 1,
                                      timeout_cycles=20 * count + 2000)
    await receiver.expect_idle(2 * frames[0].shape[1] + 10)
    assert int(dut.errors.value) == 0, f"errors raised: {dut.errors.value}"
    offset = 0
    for frame in frames:
        size = frame.shape[0] * frame.shape[1]
        check_windows(received[offset:offset + size], frame, pad_mode)
        offset += size


@cocotb.test()
@cocotb.parametrize(src=STALL_PATTERNS, sink=STALL_PATTERNS)
async def random_frames_under_stalls(dut, src, sink):
    """Two random frames back to back, every source/sink stall pattern, seeded."""
    seed = 1000 + 10 * STALL_PATTERNS.index(src) + STALL_PATTERNS.index(sink)
    rng = np.random.default_rng(seed)
    height, width = PARAMS["frame"]
    frames = [rng.integers(0, 256, size=(height, width, BLOCK.channels)) for _ in range(2)]
    pad_mode = PAD_MODES[seed % 3]
    dut._log.info("seed %d, padding %s", seed, pad_mode)
    await run_frames(dut, frames, pad_mode, src=src, sink=sink, seed=seed)


@cocotb.test()
@cocotb.parametrize(image=("camera", "text", "hubble_deep_field"), pad_mode=PAD_MODES)
async def real_images(dut, image, pad_mode):
    """Crops of scikit-image's images, every padding mode, random stalls on both sides."""
    height, width = PARAMS["frame"]
    frame = real_image(image, size=(height, width))[:, :, None].repeat(BLOCK.channels, axis=2)
    await run_frames(dut, [frame], pad_mode, src="random", sink="random", seed=7)


@cocotb.test()
async def early_last_then_good_frame(dut):
    """A frame cut short by ``last`` is completed with zeros and flagged; the next frame is exact."""
    tb = TB(dut)
    height, width = PARAMS["frame"]
    dut.width.value, dut.height.value, dut.pad_mode.value = width, height, 1
    dut.clear_errors.value = 0
    rng = np.random.default_rng(3)
    short = rng.integers(0, 256, size=(2, width, BLOCK.channels))
    good = rng.integers(0, 256, size=(height, width, BLOCK.channels))
    source = StreamSource(dut, "i_stream", tb.clock)
    receiver = StreamSink(dut, "o_stream", tb.clock)
    await tb.reset()
    cocotb.start_soon(source.send(frame_words(short) + frame_words(good), pattern="random", seed=3))
    received = await receiver.receive(2 * height * width, pattern="random", seed=4,
                                      timeout_cycles=50 * height * width)
    completed = np.concatenate([short, np.zeros((height - 2, width, BLOCK.channels), dtype=int)])
    check_windows(received[:height * width], completed, "replicate")
    check_windows(received[height * width:], good, "replicate")
    errors = unpack(data.Layout.cast(WindowErrors), [int(dut.errors.value)])
    assert errors["early_last"][0] == 1 and sum(int(v[0]) for v in errors.values()) == 1, errors
