"""cocotb testbench: HeadLayer (sampled-offset heads on the sparse-tap engine) against golden.heads.

Trained heads on real data (scikit-learn digits, or peptide codes of the
modlamp set stacked one sequence per row, by variant), random heads under
every stall pair, offsets at the window's edges with extreme values, and
rejected table writes followed by an exact frame.
"""

import numpy as np

import cocotb
from cocotb.triggers import RisingEdge

from dynsparse.golden import heads as H
from dynsparse.golden.sparseconv import requantize, sparse_conv
from dynsparse.hdl.heads import HeadLayer
from dynsparse.sim.packing import pack, unpack
from dynsparse.sim.stalls import STALL_PATTERNS
from dynsparse.sim.tb.streams import TB, StreamSink, StreamSource, params


PARAMS = params()
BLOCK = HeadLayer(**PARAMS["block"])
PIXEL_LAYOUT = BLOCK.i_stream.payload.shape()
OUTPUT_LAYOUT = BLOCK.o_stream.payload.shape()
TAP_LAYOUT = BLOCK.write_tap.shape()
N = BLOCK.reach
SIGNED = PARAMS["block"].get("signed", False)
SEQUENCE = BLOCK.sequence           # 1-D mode: a frame is one sequence [L, C]
DIMS = 1 if SEQUENCE else 2
PAD_MODES = ("zero", "replicate", "reflect")
COUNTERS = {"cycles": "cycles", "performed": "performed", "skipped_padding": "padding"}


def random_frame(rng, height, width):
    if SEQUENCE:
        height = 1
    if SIGNED:
        return rng.integers(-128, 128, (height, width, BLOCK.in_channels)).astype(np.int8)
    return rng.integers(0, 256, (height, width, BLOCK.in_channels)).astype(np.uint8)


def random_export(rng, kind="normal"):
    space = H.HeadSpace(DIMS, BLOCK.in_channels, N)
    dist = H.TapDistribution.from_offsets(space, H.OffsetDistribution(kind, scale=max(N / 2, 0.5)))
    mask = dist.sample_mask(rng, BLOCK.heads, H.TapCount("uniform", 1, high=BLOCK.capacity))
    params_ = H.init_params(mask, 2, seed=int(rng.integers(1 << 30)))
    return H.quantise(params_, mask, space, rng.integers(0, 17, (4, BLOCK.in_channels) + (8,) * DIMS),
                      input_scale=1 / 16)


def trained_export():
    """Heads trained on the variant's real task, and frames of its held-out inputs."""
    task = PARAMS["task"]
    x_train, y_train, x_test, _, dims, channels, scale = H.load_task(task)
    space = H.HeadSpace(dims, channels, N)
    dist = H.TapDistribution.from_offsets(space, H.OffsetDistribution("student-t", scale=max(N / 2, 0.5), dof=1.5))
    mask = dist.sample_mask(np.random.default_rng(0), BLOCK.heads, H.TapCount("constant", BLOCK.capacity))
    params_, mask, _ = H.train(H.patches(x_train * scale, space), y_train, mask, int(y_train.max()) + 1,
                               epochs=4, policy=H.ResamplePolicy(every=2, drop=0.25, source="fitted"),
                               initial=dist, taps=H.TapCount("constant", BLOCK.capacity))
    export = H.quantise(params_, mask, space, x_train, input_scale=scale)
    height, width = PARAMS["frame"]
    if dims == 2:
        frames = [x_test[i, 0][:height, :width, None].astype(np.uint8) for i in range(2)]
    elif SEQUENCE:  # one sequence a frame
        frames = [x_test[i].T[None, :width].astype(np.int8) for i in range(3)]
    else:           # one sequence per row
        frames = [np.transpose(x_test[i * height:(i + 1) * height, :, :width], (0, 2, 1)).astype(np.int8)
                  for i in range(2)]
    return export, frames


def table_writes(export):
    writes = []
    for h, count in enumerate(np.asarray(export["count"])):
        for i in range(int(count)):
            tap = {"ci": int(export["ci"][h, i]), "dy": int(export["oy"][h, i]) + N,
                   "dx": int(export["ox"][h, i]) + N, "weight": int(export["weight"][h, i])}
            writes.append(("tap", h, i, pack(TAP_LAYOUT, tap, 1)[0]))
        writes.append(("count", h, 0, int(count)))
    return writes


async def load(dut, tb, writes):
    for kind, head, entry, value in writes:
        dut.write_head.value = head
        if kind == "tap":
            dut.write_entry.value, dut.write_tap.value, dut.tap_write.value = entry, value, 1
        else:
            dut.write_count.value, dut.count_write.value = value, 1
        await RisingEdge(tb.clock)
        dut.tap_write.value = dut.count_write.value = 0


async def check_frames(dut, tb, export, frames, *, pad_mode, src, sink, seed, requant=None, reset=True,
                       writes=None):
    """Load ``export`` (or ``writes``), stream ``frames``; compare results and counters with golden."""
    height, width, _ = frames[0].shape
    dut.pad_mode.value = PAD_MODES.index(pad_mode)
    dut.dense.value = 0
    dut.width.value = width
    if not SEQUENCE:
        dut.height.value = height
    for name in ("tap_write", "count_write", "mask_write", "clear_counters", "clear_errors"):
        getattr(dut, name).value = 0
    if BLOCK._requantize:
        dut.multiplier.value, dut.shift.value = requant if requant else (int(export["multiplier"]),
                                                                          int(export["shift"]))
    source = StreamSource(dut, "i_stream", tb.clock)
    receiver = StreamSink(dut, "o_stream", tb.clock)
    if reset:
        await tb.reset()
    await load(dut, tb, table_writes(export) if writes is None else writes)
    words = []
    for frame in frames:
        count = height * width
        marks = np.zeros((2, count), np.int64)
        marks[0, 0] = marks[1, -1] = 1
        words += pack(PIXEL_LAYOUT, {"data": frame.reshape(count, -1).astype(np.int64),
                                     "first": marks[0], "last": marks[1]}, count)
    dut.clear_counters.value = 1
    await RisingEdge(tb.clock)
    dut.clear_counters.value = 0
    cocotb.start_soon(source.send(words, pattern=src, seed=seed))
    work = int(np.asarray(export["count"]).sum())
    received = await receiver.receive(len(words), pattern=sink, seed=seed + 1,
                                      timeout_cycles=(work + 20) * len(words) * 4 + 2000)
    await receiver.expect_idle(BLOCK.engine.latency + 20)
    assert not dut.busy.value, "busy after the last result"
    got = unpack(OUTPUT_LAYOUT, received)
    totals = dict.fromkeys(COUNTERS.values(), 0)
    size = height * width
    for index, frame in enumerate(frames):
        if SEQUENCE:
            acc, counters = H.sequence_heads(export, frame[0], pad_mode=pad_mode, lanes=BLOCK.lanes)
        else:
            lists = H.tap_lists(export, height=height, width=width)
            acc, counters = sparse_conv(frame, lists, kernel_size=2 * N + 1, pad_mode=pad_mode,
                                        lanes=BLOCK.lanes)
        if BLOCK._requantize:
            m, s = requant if requant else (int(export["multiplier"]), int(export["shift"]))
            acc = requantize(acc, multiplier=m, shift=s)
        np.testing.assert_equal(got["data"][index * size:(index + 1) * size], acc.reshape(size, -1),
                                err_msg=f"frame {index}")
        for name in totals:
            totals[name] += counters[name]
    hardware = {golden: int(getattr(dut, port).value) for port, golden in COUNTERS.items()}
    assert hardware == totals, (hardware, totals)
    dut._log.info("counters %s", hardware)


@cocotb.test()
async def trained_heads_on_real_data(dut):
    """Heads trained (with resampling) on the variant's real task, held-out inputs, random stalls."""
    export, frames = trained_export()
    tb = TB(dut)
    await check_frames(dut, tb, export, frames, pad_mode="zero", src="random", sink="random", seed=17)
    assert str(dut.errors.value).count("1") == 0, f"errors {dut.errors.value}"


@cocotb.test()
@cocotb.parametrize(src=STALL_PATTERNS, sink=STALL_PATTERNS)
async def random_heads_under_stalls(dut, src, sink):
    """Random heads (1 … capacity taps, uniform offsets) on random frames, every padding mode."""
    seed = 7000 + 10 * STALL_PATTERNS.index(src) + STALL_PATTERNS.index(sink)
    rng = np.random.default_rng(seed)
    height, width = PARAMS["frame"]
    export = random_export(rng, kind="uniform")
    frames = [random_frame(rng, height, width) for _ in range(2)]
    await check_frames(dut, TB(dut), export, frames, pad_mode=PAD_MODES[seed % 3], src=src, sink=sink, seed=seed)


@cocotb.test()
async def offsets_at_the_window_edges(dut):
    """Taps at the window's corners and edge middles, ±127 weights, full-scale pixels."""
    edges = ([(0, -N), (0, N), (0, -N + 1), (0, N - 1), (0, 0)] if SEQUENCE else
             [(-N, -N), (-N, N), (N, -N), (N, N), (0, -N), (0, N), (-N, 0), (N, 0)])
    edges = list(dict.fromkeys(edges))
    heads, cap = BLOCK.heads, BLOCK.capacity
    count = np.full(heads, min(cap, len(edges)))
    oy, ox, ci, weight = (np.zeros((heads, count[0]), np.int64) for _ in range(4))
    for h in range(heads):
        for i in range(count[0]):
            oy[h, i], ox[h, i] = edges[(h + i) % len(edges)]
            ci[h, i] = (h + i) % BLOCK.in_channels
            weight[h, i] = 127 if (h + i) % 2 else -127
    export = {"version": 1, "dims": DIMS, "channels": BLOCK.in_channels, "reach": N, "count": count, "ci": ci,
              "oy": oy, "ox": ox, "weight": weight, "bias": np.zeros(heads, np.int64), "multiplier": 1,
              "shift": 0, "out": np.ones((2, heads), np.int64), "out_b": np.zeros(2, np.int64), "positions": 1}
    H.check_export(export)
    height, width = PARAMS["frame"]
    rng = np.random.default_rng(3)
    high = 127 if SIGNED else 255
    low = -128 if SIGNED else 0
    frame = np.where(rng.random((1 if SEQUENCE else height, width, BLOCK.in_channels)) < 0.5, high, low)
    frame = frame.astype(np.int8 if SIGNED else np.uint8)
    tb = TB(dut)
    for pad_mode in ("zero", "reflect"):
        await check_frames(dut, tb, export, [frame], pad_mode=pad_mode, src="fixed", sink="fixed", seed=5,
                           requant=(1, 0))


@cocotb.test()
async def bad_table_writes(dut):
    """Each bad write raises ``bad_write`` and is ignored; the next frame is exact."""
    rng = np.random.default_rng(9)
    export = random_export(rng)
    k = 2 * N + 1
    bad = [("tap", 0, 0, {"ci": 0, "dy": k, "dx": 0, "weight": 5}),
           ("tap", 0, 0, {"ci": 0, "dy": 0, "dx": k, "weight": 5}),
           ("tap", BLOCK.heads, 0, {"ci": 0, "dy": 0, "dx": 0, "weight": 5}),
           ("tap", 0, BLOCK.capacity, {"ci": 0, "dy": 0, "dx": 0, "weight": 5}),
           ("count", 0, 0, BLOCK.capacity + 1)]
    if BLOCK.in_channels < (1 << TAP_LAYOUT["ci"].shape.width):
        bad.append(("tap", 0, 0, {"ci": BLOCK.in_channels, "dy": 0, "dx": 0, "weight": 5}))
    height, width = PARAMS["frame"]
    frame = random_frame(rng, height, width)
    tb = TB(dut)
    first = True
    for kind, head, entry, value in bad:
        write = (kind, head, entry, pack(TAP_LAYOUT, value, 1)[0] if kind == "tap" else value)
        dut.clear_errors.value = 0
        await check_frames(dut, tb, export, [frame], pad_mode="zero", src="none", sink="none", seed=1,
                           reset=first, writes=[write] + table_writes(export))
        first = False
        flags = int(dut.errors.value)
        table_bit = 1 << 5              # errors.frame holds the window generator's five flags
        assert flags == table_bit, f"{kind} write {value}: errors {dut.errors.value}"
        dut.clear_errors.value = 1
        await RisingEdge(tb.clock)
        dut.clear_errors.value = 0
        await RisingEdge(tb.clock)
        assert int(dut.errors.value) == 0


@cocotb.test()
async def real_image(dut):
    """A crop of scikit-image's ``camera`` (in 1-D mode: its rows as sequences), random heads, replicate
    padding, random stalls."""
    from dynsparse.golden.images import real_image as load_image
    height, width = PARAMS["frame"]
    rng = np.random.default_rng(41)
    image = load_image("camera", size=(max(height, 2), width)).astype(np.int16)
    if SIGNED:
        image = image - 128
    image = np.repeat(image[:, :, None], BLOCK.in_channels, axis=2)
    frames = [image[i:i + 1] for i in range(2)] if SEQUENCE else [image[:height]]
    frames = [f.astype(np.int8 if SIGNED else np.uint8) for f in frames]
    await check_frames(dut, TB(dut), random_export(rng), frames, pad_mode="replicate", src="random", sink="random",
                       seed=43)
