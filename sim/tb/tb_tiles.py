"""cocotb testbench: TileAverager against golden.sparseconv.tap_densities repeated per pixel."""

import numpy as np

import cocotb
from amaranth.lib import data

from dynsparse.golden.density import density_map, inv_ref_var
from dynsparse.golden.images import real_image
from dynsparse.golden.sparseconv import tap_densities
from dynsparse.hdl.tiles import TileAverager
from dynsparse.hdl.window import WindowErrors
from dynsparse.sim.packing import pack, unpack
from dynsparse.sim.stalls import STALL_PATTERNS
from dynsparse.sim.tb.streams import TB, StreamSink, StreamSource, params


PARAMS = params()
BLOCK = TileAverager(**PARAMS["block"])
PIXEL_LAYOUT = BLOCK.i_stream.payload.shape()
DENSITY_LAYOUT = BLOCK.o_stream.payload.shape()
K, C, T = BLOCK.kernel_size, BLOCK.channels, BLOCK.tile_size


def frame_words(density, *, first=True, last=True):
    height, width, _ = density.shape
    count = height * width
    marks = np.zeros((2, count), dtype=np.int64)
    marks[0, 0], marks[1, -1] = first, last
    return pack(PIXEL_LAYOUT, {"data": density.reshape(count, C), "first": marks[0], "last": marks[1]},
                count)


def random_density(rng, height, width):
    density = rng.integers(0, 257, size=(height, width, C))
    density[rng.random(density.shape) < 0.1] = 0
    density[rng.random(density.shape) < 0.1] = 256
    return density


def check_output(words, density, context=""):
    height, width, _ = density.shape
    averages = tap_densities(density, kernel_size=K, tile_size=T)
    expected = averages[np.arange(height) // T][:, np.arange(width) // T]
    got = unpack(DENSITY_LAYOUT, words)
    ys, xs = np.mgrid[0:height, 0:width]
    np.testing.assert_equal(got["data"], expected.reshape(-1, C, K, K), err_msg=f"densities {context}")
    np.testing.assert_equal(got["x"], xs.ravel(), err_msg=f"x {context}")
    np.testing.assert_equal(got["y"], ys.ravel(), err_msg=f"y {context}")
    marks = np.zeros((2, height * width), dtype=np.int64)
    marks[0, 0] = marks[1, -1] = 1
    np.testing.assert_equal(got["first"], marks[0], err_msg=f"first {context}")
    np.testing.assert_equal(got["last"], marks[1], err_msg=f"last {context}")


def error_names(dut):
    errors = unpack(data.Layout.cast(WindowErrors), [int(dut.errors.value)])
    return {name for name, flag in errors.items() if flag[0]}


async def run_frames(dut, frames, *, sizes=None, word_lists=None, expected=None,
                     src="none", sink="none", seed=0):
    """Send each frame after setting its size; check every output frame in ``expected``."""
    tb = TB(dut)
    sizes = sizes or [f.shape[:2] for f in frames]
    word_lists = word_lists or [frame_words(f) for f in frames]
    expected = frames if expected is None else expected
    dut.width.value, dut.height.value = sizes[0][1], sizes[0][0]
    dut.clear_errors.value = 0
    source = StreamSource(dut, "i_stream", tb.clock)
    receiver = StreamSink(dut, "o_stream", tb.clock)
    await tb.reset()

    async def send():
        for (height, width), words in zip(sizes, word_lists):
            dut.width.value, dut.height.value = width, height
            await source.send(words, pattern=src, seed=seed)

    cocotb.start_soon(send())
    count = sum(f.shape[0] * f.shape[1] for f in expected)
    received = await receiver.receive(count, pattern=sink, seed=seed + 1,
                                      timeout_cycles=30 * count + 5000)
    widest = max(width for _, width in sizes)
    await receiver.expect_idle((BLOCK.row_delay + 2) * widest + 20)
    offset = 0
    for index, frame in enumerate(expected):
        size = frame.shape[0] * frame.shape[1]
        check_output(received[offset:offset + size], frame, f"frame {index} (seed {seed})")
        offset += size
    assert not int(dut.busy.value), "busy after the last frame"


@cocotb.test()
@cocotb.parametrize(src=STALL_PATTERNS, sink=STALL_PATTERNS)
async def random_frames_under_stalls(dut, src, sink):
    """A frame of the variant's size, then the smallest, back to back; every stall pattern."""
    seed = 1000 + 10 * STALL_PATTERNS.index(src) + STALL_PATTERNS.index(sink)
    dut._log.info("seed %d", seed)
    rng = np.random.default_rng(seed)
    height, width = PARAMS["frame"]
    frames = [random_density(rng, height, width), random_density(rng, BLOCK.min_height, BLOCK.min_width)]
    await run_frames(dut, frames, src=src, sink=sink, seed=seed)
    assert error_names(dut) == set()


@cocotb.test()
@cocotb.parametrize(image=("camera", "text", "hubble_deep_field"))
async def real_images(dut, image):
    """Density maps of crops of scikit-image's images, random stalls on both sides."""
    height, width = PARAMS["frame"]
    frame = real_image(image, size=(height, width))[:, :, None].repeat(C, axis=2)
    density = density_map(frame, kernel_size=3, inv_ref_var=inv_ref_var(16.0)).astype(np.int64)
    await run_frames(dut, [density], src="random", sink="random", seed=7)
    assert error_names(dut) == set()


@cocotb.test()
async def bad_size_then_good_frame(dut):
    """A width that is not a multiple of T drops the frame (``bad_size``); the next one is exact."""
    rng = np.random.default_rng(5)
    height, width = PARAMS["frame"]
    bad, good = random_density(rng, height, width), random_density(rng, height, width)
    await run_frames(dut, [bad, good], sizes=[(height, width - 1), (height, width)], expected=[good],
                     src="random", sink="random", seed=5)
    assert error_names(dut) == {"bad_size"}


@cocotb.test()
async def early_last_then_good_frame(dut):
    """A frame cut short by ``last`` is completed with zero densities and flagged; the next is exact."""
    rng = np.random.default_rng(3)
    height, width = PARAMS["frame"]
    short = random_density(rng, 2, width)
    good = random_density(rng, height, width)
    completed = np.concatenate([short, np.zeros((height - 2, width, C), dtype=np.int64)])
    await run_frames(dut, [good], sizes=[(height, width)], expected=[completed, good],
                     word_lists=[frame_words(short) + frame_words(good)], src="random", sink="random",
                     seed=3)
    assert error_names(dut) == {"early_last"}
