"""HeadTaps and HeadLayer (sampled-offset heads on the sparse-tap engine) against golden.heads."""

import numpy as np
import pytest
from amaranth.hdl import Value, signed

from dynsparse.golden import heads as H
from dynsparse.golden.sparseconv import requantize, sparse_conv
from dynsparse.hdl.heads import HeadLayer, HeadTaps, window_memory_bits
from dynsparse.hdl.window import PadMode
from dynsparse.sim.packing import pack, unpack
from dynsparse.sim.pysim import run_simulation, stream_receive, stream_send
from dynsparse.sim.stalls import STALL_PATTERNS


COUNTERS = ("cycles", "performed", "skipped_pruned", "skipped_zero", "skipped_padding")


def table_writes(export):
    """``(kind, head, entry, tap-or-count)`` writes that load an export's heads."""
    writes = []
    n = int(export["reach"])
    for h, count in enumerate(np.asarray(export["count"])):
        for i in range(int(count)):
            writes.append(("tap", h, i, {"ci": int(export["ci"][h, i]), "dy": int(export["oy"][h, i]) + n,
                                         "dx": int(export["ox"][h, i]) + n, "weight": int(export["weight"][h, i])}))
        writes.append(("count", h, 0, int(count)))
    return writes


async def load_table(ctx, dut, writes):
    for kind, head, entry, value in writes:
        ctx.set(dut.write_head, head)
        if kind == "tap":
            ctx.set(dut.write_entry, entry)
            ctx.set(dut.write_tap, value)
            ctx.set(dut.tap_write, 1)
        else:
            ctx.set(dut.write_count, value)
            ctx.set(dut.count_write, 1)
        await ctx.tick()
        ctx.set(dut.tap_write, 0)
        ctx.set(dut.count_write, 0)


def golden(frame, export, *, pad_mode, lanes, multiplier=None, shift=None):
    height, width = frame.shape[:2]
    lists = H.tap_lists(export, height=height, width=width)
    acc, counters = sparse_conv(frame, lists, kernel_size=2 * int(export["reach"]) + 1, pad_mode=pad_mode,
                                lanes=lanes)
    if multiplier is not None:
        acc = requantize(acc, multiplier=multiplier, shift=shift)
    return acc, counters


def simulate(dut, frames, export, *, pad_mode="zero", source="none", sink="none", seed=0, multiplier=None,
             shift=None, extra_writes=()):
    """Stream ``frames`` (``[H, W, C]``, same size) through ``dut`` with ``export``'s heads loaded."""
    height, width, channels = frames[0].shape
    layout = dut.i_stream.payload.shape()
    words = []
    for frame in frames:
        count = height * width
        marks = np.zeros((2, count), np.int64)
        marks[0, 0] = marks[1, -1] = 1
        words += pack(layout, {"data": frame.reshape(count, channels).astype(np.int64),
                               "first": marks[0], "last": marks[1]}, count)
    received, state = [], {}

    async def send(ctx):
        ctx.set(dut.width, width)
        ctx.set(dut.height, height)
        ctx.set(dut.pad_mode, PadMode[pad_mode.upper()])
        if multiplier is not None:
            ctx.set(dut.multiplier, multiplier)
            ctx.set(dut.shift, shift)
        await load_table(ctx, dut, list(extra_writes) + table_writes(export))
        state["load_errors"] = ctx.get(Value.cast(dut.errors))
        ctx.set(dut.clear_errors, 1)
        await ctx.tick()
        ctx.set(dut.clear_errors, 0)
        await stream_send(ctx, dut.i_stream, words, pattern=source, seed=seed)

    async def receive(ctx):
        received.extend(await stream_receive(ctx, dut.o_stream, len(words), pattern=sink, seed=seed + 1,
                                             raw=True))
        ctx.set(dut.o_stream.ready, 1)
        for _ in range(40):
            await ctx.tick()
            assert not ctx.get(dut.o_stream.valid), "extra output"
        for name in COUNTERS:
            state[name] = ctx.get(getattr(dut, name))
        state["errors"] = ctx.get(Value.cast(dut.errors))
        state["busy"] = ctx.get(dut.busy)

    k_total = int(np.asarray(export["count"]).sum())
    run_simulation(dut, [send, receive], deadline_cycles=len(words) * (k_total * 4 + 40) + 5000)
    fields = unpack(dut.o_stream.payload.shape(), received)
    totals = dict.fromkeys(("cycles", "performed", "padding"), 0)
    size = height * width
    for index, frame in enumerate(frames):
        expected, counters = golden(frame, export, pad_mode=pad_mode, lanes=dut.lanes, multiplier=multiplier,
                                    shift=shift)
        got = fields["data"][index * size:(index + 1) * size].reshape(height, width, -1)
        np.testing.assert_equal(got, expected, err_msg=f"frame {index}, {pad_mode}, {source}/{sink}")
        for name in totals:
            totals[name] += counters[name]
    assert state["errors"] == 0 and state["busy"] == 0
    assert (state["cycles"], state["performed"], state["skipped_padding"]) == \
        (totals["cycles"], totals["performed"], totals["padding"])
    assert state["skipped_pruned"] == state["skipped_zero"] == 0
    return state


def random_export(rng, *, dims, channels, reach, heads, k, kind="normal"):
    space = H.HeadSpace(dims, channels, reach)
    dist = H.TapDistribution.from_offsets(space, H.OffsetDistribution(kind, scale=max(reach / 2, 0.5)))
    mask = dist.sample_mask(rng, heads, H.TapCount("constant", k) if isinstance(k, int) else k)
    params = H.init_params(mask, 2, seed=int(rng.integers(1 << 30)))
    params["b"] = rng.normal(0, 0.2, heads)
    return H.quantise(params, mask, space, rng.integers(0, 17, (4, channels) + (8,) * dims),
                      input_scale=1 / 16)


# --- trained heads on real data --------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_heads():
    x_train, y_train, x_test, y_test, dims, channels, scale = H.load_task("digits")
    space = H.HeadSpace(dims, channels, 2)
    dist = H.TapDistribution.from_offsets(space, H.OffsetDistribution("student-t", scale=1.0, dof=1.5))
    mask = dist.sample_mask(np.random.default_rng(0), 6, H.TapCount("poisson", 4.0))
    params, mask, _ = H.train(H.patches(x_train * scale, space), y_train, mask, 10, epochs=6)
    export = H.quantise(params, mask, space, x_train, input_scale=scale)
    return export, x_test


def test_trained_digit_heads(digits_heads):
    """Trained heads on real digits: the layer's accumulators and its integer model's agree."""
    export, x_test = digits_heads
    dut = HeadLayer(reach=2, in_channels=1, heads=6, lanes=2, capacity=int(export["count"].max()),
                    max_width=16, max_height=16)
    frames = [x_test[i, 0][:, :, None].astype(np.uint8) for i in range(2)]
    simulate(dut, frames, export)
    acc = H.head_accumulators(export, x_test[:2])
    golden_acc, _ = golden(frames[0], export, pad_mode="zero", lanes=2)
    np.testing.assert_array_equal(golden_acc.reshape(64, -1).T, acc[0])


def test_trained_digit_heads_requantised(digits_heads):
    export, x_test = digits_heads
    dut = HeadLayer(reach=2, in_channels=1, heads=6, lanes=3, capacity=int(export["count"].max()),
                    max_width=16, max_height=16, requantize=True)
    frames = [x_test[5, 0][:, :, None].astype(np.uint8)]
    simulate(dut, frames, export, multiplier=int(export["multiplier"]), shift=int(export["shift"]),
             source="random", sink="random", seed=3)


def test_trained_peptide_heads_on_a_row_frame():
    """1-D heads on real peptide codes (signed, 8 channels) through a 2-D layer: one sequence per row."""
    x_train, y_train, x_test, y_test, dims, channels, scale = H.load_task("amp")
    space = H.HeadSpace(1, channels, 2)
    dist = H.TapDistribution.from_offsets(space, H.OffsetDistribution("normal", scale=1.0))
    mask = dist.sample_mask(np.random.default_rng(1), 4, H.TapCount("constant", 3))
    params, mask, _ = H.train(H.patches(x_train * scale, space), y_train, mask, 2, epochs=4)
    export = H.quantise(params, mask, space, x_train, input_scale=scale)
    # three sequences stacked as rows: 1-D taps (dy = n) never read another row
    frame = np.transpose(x_test[:3, :, :16], (0, 2, 1)).astype(np.int8)          # [3, 16, 8]
    dut = HeadLayer(reach=2, in_channels=channels, heads=4, lanes=2, capacity=3, max_width=16,
                    max_height=8, signed=True)
    simulate(dut, [frame], export)
    rows = H.head_accumulators(export, x_test[:3, :, :16])                       # [3, heads, 16]
    acc, _ = golden(frame, export, pad_mode="zero", lanes=2)
    np.testing.assert_array_equal(np.transpose(acc, (0, 2, 1)), rows)


# --- random heads, padding, stalls, edges ----------------------------------------------------------

@pytest.mark.parametrize("pad_mode", ["zero", "replicate", "reflect"])
def test_random_heads(pad_mode):
    rng = np.random.default_rng(11)
    export = random_export(rng, dims=2, channels=2, reach=2, heads=4, k=H.TapCount("uniform", 1, high=6))
    dut = HeadLayer(reach=2, in_channels=2, heads=4, lanes=2, capacity=6, max_width=16, max_height=16)
    frames = [rng.integers(0, 256, (7, 9, 2), dtype=np.uint8) for _ in range(2)]
    simulate(dut, frames, export, pad_mode=pad_mode)


@pytest.mark.parametrize("source", STALL_PATTERNS)
@pytest.mark.parametrize("sink", STALL_PATTERNS)
def test_stalls(source, sink):
    rng = np.random.default_rng(5)
    export = random_export(rng, dims=2, channels=1, reach=1, heads=3, k=3)
    dut = HeadLayer(reach=1, in_channels=1, heads=3, lanes=2, capacity=3, max_width=8, max_height=8)
    frames = [rng.integers(0, 256, (4, 5, 1), dtype=np.uint8)]
    simulate(dut, frames, export, source=source, sink=sink, seed=int(rng.integers(100)))


def test_offsets_at_the_window_edges():
    """Every head reads the window's corners and edges, ±127 weights, full-scale pixels."""
    n = 3
    k = 2 * n + 1
    corners = [(-n, -n), (-n, n), (n, -n), (n, n), (0, -n), (0, n), (-n, 0), (n, 0)]
    heads = 2
    oy = np.array([[c[0] for c in corners[:4]], [c[0] for c in corners[4:]]])
    ox = np.array([[c[1] for c in corners[:4]], [c[1] for c in corners[4:]]])
    export = {"version": 1, "dims": 2, "channels": 1, "reach": n, "count": np.array([4, 4]),
              "ci": np.zeros((2, 4), np.int64), "oy": oy, "ox": ox,
              "weight": np.array([[127, -127, 127, -127], [-127, -127, 127, 127]]),
              "bias": np.zeros(2, np.int64), "multiplier": 1, "shift": 0, "out": np.ones((2, 2), np.int64),
              "out_b": np.zeros(2, np.int64), "positions": 64}
    H.check_export(export)
    dut = HeadLayer(reach=n, in_channels=1, heads=heads, lanes=2, capacity=4, max_width=16, max_height=16)
    rng = np.random.default_rng(2)
    frame = np.where(rng.random((9, 10, 1)) < 0.5, 255, 0).astype(np.uint8)
    for pad_mode in ("zero", "reflect"):
        simulate(dut, [frame], export, pad_mode=pad_mode)
    assert k == dut.kernel_size


def test_empty_heads_give_zeros():
    export = random_export(np.random.default_rng(4), dims=2, channels=1, reach=1, heads=2, k=2)
    export["count"] = np.array([2, 0])               # the table may hold an empty head
    dut = HeadLayer(reach=1, in_channels=1, heads=2, lanes=2, capacity=2, max_width=8, max_height=8)
    frame = np.random.default_rng(5).integers(0, 256, (4, 4, 1), dtype=np.uint8)
    simulate(dut, [frame], export)


def test_bad_table_writes_are_flagged_and_ignored():
    """Offsets beyond the window, a missing channel, a head or entry out of range, a count over the
    capacity: ``bad_write``, nothing written; the loaded table then convolves exactly."""
    rng = np.random.default_rng(6)
    export = random_export(rng, dims=2, channels=1, reach=1, heads=3, k=2)
    dut = HeadLayer(reach=1, in_channels=1, heads=3, lanes=2, capacity=2, max_width=8, max_height=8)
    bad = [("tap", 0, 0, {"ci": 0, "dy": 3, "dx": 0, "weight": 5}),
           ("tap", 0, 0, {"ci": 0, "dy": 0, "dx": 3, "weight": 5}),
           ("tap", 0, 0, {"ci": 1, "dy": 0, "dx": 0, "weight": 5}),
           ("tap", 3, 0, {"ci": 0, "dy": 0, "dx": 0, "weight": 5}),
           ("tap", 0, 2, {"ci": 0, "dy": 0, "dx": 0, "weight": 5}),
           ("count", 0, 0, 3), ("count", 3, 0, 1)]
    frame = rng.integers(0, 256, (4, 5, 1), dtype=np.uint8)
    for write in bad:
        state = simulate(dut, [frame], export, extra_writes=[write])
        assert state["load_errors"] == 1 << 5, write        # errors.table.bad_write (after frame's 5 bits)


def test_table_alone():
    """HeadTaps: one transfer per position, the position passed through, the lists from the table."""
    dut = HeadTaps(kernel_size=3, in_channels=2, heads=2, capacity=2, max_width=8, max_height=8)
    writes = [("tap", 1, 1, {"ci": 1, "dy": 2, "dx": 0, "weight": -7}), ("count", 1, 0, 2)]
    positions = [{"x": x, "y": 1, "first": int(x == 0), "last": int(x == 3)} for x in range(4)]
    got = []

    async def bench(ctx):
        await load_table(ctx, dut, writes)
        ctx.set(dut.o_stream.ready, 1)
        await stream_send(ctx, dut.i_stream, positions)

    async def take(ctx):
        got.extend(await stream_receive(ctx, dut.o_stream, 4, pattern="random", seed=1))

    run_simulation(dut, [bench, take], deadline_cycles=200)
    for position, word in zip(positions, got):
        assert (word.x, word.y, word.first, word.last) == tuple(position.values())
        assert word.lists[0].count == 0 and word.lists[1].count == 2
        tap = word.lists[1].taps[1]
        assert (tap.ci, tap.dy, tap.dx, tap.weight) == (1, 2, 0, -7)


# --- parameters ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, text", [
    ({"reach": 8}, ValueError, "reach n"),
    ({"reach": -1}, ValueError, "reach n"),
    ({"capacity": 0}, ValueError, "tap-list capacity"),
    ({"capacity": 26}, ValueError, r"tap-list capacity must be an integer in \[1, 25\]"),
    ({"heads": 0}, ValueError, "head count"),
    ({"lanes": 9}, ValueError, "lane count"),
    ({"in_channels": 1.5}, TypeError, "channel count"),
    ({"signed": 1}, TypeError, "signed must be a bool"),
])
def test_bad_parameters(kwargs, error, text):
    params = {"reach": 2, "in_channels": 1, "heads": 8, "lanes": 2, "capacity": 8}
    params.update(kwargs)
    with pytest.raises(error, match=text):
        HeadLayer(**params)


def test_memory_cost():
    dut = HeadLayer(reach=3, in_channels=2, heads=4, lanes=2, capacity=4, max_width=48, max_height=8)
    assert dut.line_buffer_bits == window_memory_bits(reach=3, channels=2, max_width=48) == 6 * 48 * 2 * 8
    assert dut.engine.taps_per_list == 4
    # the accumulators hold N = capacity products, not C_in · K²
    assert dut.engine.accumulator_width < HeadLayer(reach=3, in_channels=2, heads=4, lanes=2,
                                                    capacity=98).engine.accumulator_width


# --- 1-D mode: SequenceWindow and HeadLayer(sequence=True) -----------------------------------------

from dynsparse.golden.window import windows as golden_windows          # noqa: E402
from dynsparse.hdl.sequence import SequenceWindow                     # noqa: E402


def sequence_words(layout, sequences, marks=None):
    words = []
    for index, seq in enumerate(sequences):
        count = len(seq)
        first = np.zeros(count, np.int64)
        last = np.zeros(count, np.int64)
        first[0] = last[-1] = 1
        if marks is not None and marks[index] is not None:
            first, last = marks[index]
        words += pack(layout, {"data": np.asarray(seq).astype(np.int64), "first": first, "last": last}, count)
    return words


def expected_sequence_windows(seq, k, pad_mode):
    r = k // 2
    values, pad = golden_windows(np.repeat(np.asarray(seq)[None], k, axis=0), kernel_size=k, pad_mode=pad_mode)
    data = np.zeros((len(seq), k, k, seq.shape[1]), np.int64)
    flags = np.ones((len(seq), k, k), np.int64)
    data[:, r] = values[r, :, r]
    flags[:, r] = pad[r, :, r]
    return data, flags


def run_sequence_window(dut, words, count, *, length, pad_mode, source="none", sink="none", seed=0):
    received, state = [], {}

    async def send(ctx):
        ctx.set(dut.length, length)
        ctx.set(dut.pad_mode, PadMode[pad_mode.upper()])
        await stream_send(ctx, dut.i_stream, words, pattern=source, seed=seed)

    async def receive(ctx):
        received.extend(await stream_receive(ctx, dut.o_stream, count, pattern=sink, seed=seed + 1, raw=True))
        ctx.set(dut.o_stream.ready, 1)
        for _ in range(20):
            await ctx.tick()
            assert not ctx.get(dut.o_stream.valid), "extra window"
        state["errors"] = ctx.get(Value.cast(dut.errors))
        state["busy"] = ctx.get(dut.busy)

    run_simulation(dut, [send, receive], deadline_cycles=20 * len(words) + 2000)
    return unpack(dut.o_stream.payload.shape(), received), state


@pytest.mark.parametrize("pad_mode", ["zero", "replicate", "reflect"])
@pytest.mark.parametrize("k", [1, 3, 7])
def test_sequence_window(pad_mode, k):
    rng = np.random.default_rng(k)
    dut = SequenceWindow(kernel_size=k, channels=2, max_length=12, pixel_shape=signed(8))
    for length in sorted({dut.min_length, 5, 12}):
        sequences = [rng.integers(-128, 128, (length, 2)) for _ in range(2)]
        got, state = run_sequence_window(dut, sequence_words(dut.i_stream.payload.shape(), sequences),
                                         2 * length, length=length, pad_mode=pad_mode, source="random",
                                         sink="random", seed=length)
        assert state["errors"] == 0 and state["busy"] == 0
        for index, seq in enumerate(sequences):
            data, flags = expected_sequence_windows(seq, k, pad_mode)
            part = slice(index * length, (index + 1) * length)
            np.testing.assert_array_equal(got["data"][part], data, err_msg=f"K={k} L={length} {pad_mode}")
            np.testing.assert_array_equal(got["pad"][part], flags)
            assert got["x"][part].tolist() == list(range(length)) and not got["y"][part].any()
            assert got["first"][part].tolist() == [1] + [0] * (length - 1)
            assert got["last"][part].tolist() == [0] * (length - 1) + [1]


def test_sequence_window_timing():
    """``length + r`` cycles a sequence, one position a cycle, when nothing stalls."""
    dut = SequenceWindow(kernel_size=5, channels=1, max_length=16)
    words = sequence_words(dut.i_stream.payload.shape(), [np.arange(10)[:, None]])
    times = {}

    async def send(ctx):
        ctx.set(dut.length, 10)
        await stream_send(ctx, dut.i_stream, words)

    async def watch(ctx):
        ctx.set(dut.o_stream.ready, 1)
        cycle = 0
        while "last" not in times:
            if ctx.get(dut.i_stream.valid) and ctx.get(dut.i_stream.ready) and "first" not in times:
                times["first"] = cycle
            if ctx.get(dut.o_stream.valid) and ctx.get(dut.o_stream.payload.last):
                times["last"] = cycle
            await ctx.tick()
            cycle += 1

    run_simulation(dut, [send, watch], deadline_cycles=200)
    assert times["last"] - times["first"] == dut.sequence_cycles(10) == 12


@pytest.mark.parametrize("case", ["early_first", "early_last", "missing_last", "dropped", "bad_size"])
def test_sequence_window_errors(case):
    """A malformed sequence raises its flag; the good sequence after it comes out exact."""
    rng = np.random.default_rng(3)
    dut = SequenceWindow(kernel_size=3, channels=1, max_length=8)
    layout = dut.i_stream.payload.shape()
    good = rng.integers(0, 256, (6, 1))
    bad = rng.integers(0, 256, (6, 1))
    one = lambda *bits: np.array(bits, np.int64)
    if case == "early_first":        # a first inside: the sequence is completed with zeros
        words = sequence_words(layout, [bad[:3], good])
        bad_out = np.concatenate([bad[:3], np.zeros((3, 1), np.int64)])
        marks_ok = True
        words = sequence_words(layout, [bad[:3]], [(one(1, 0, 0), one(0, 0, 0))]) + sequence_words(layout, [good])
    elif case == "early_last":
        words = sequence_words(layout, [bad[:4], good])
        bad_out = np.concatenate([bad[:4], np.zeros((2, 1), np.int64)])
    elif case == "missing_last":     # the sequence ends at its length; the stray position is dropped
        words = sequence_words(layout, [bad], [(one(1, 0, 0, 0, 0, 0), one(0, 0, 0, 0, 0, 0))])
        words += sequence_words(layout, [bad[:1]], [(one(0), one(1))]) + sequence_words(layout, [good])
        bad_out = bad
    elif case == "dropped":
        words = sequence_words(layout, [bad[:2]], [(one(0, 0), one(0, 1))]) + sequence_words(layout, [good])
        bad_out = None
    else:
        words = sequence_words(layout, [bad[:6]]) + sequence_words(layout, [good])
        bad_out = None
    count = 6 * (2 if bad_out is not None else 1)
    length = 6
    received, state = [], {}

    async def send(ctx):
        ctx.set(dut.length, 9 if case == "bad_size" else length)
        ctx.set(dut.pad_mode, PadMode.REFLECT)
        for n, word in enumerate(words):
            if case == "bad_size" and n == 6:
                ctx.set(dut.length, length)
            await stream_send(ctx, dut.i_stream, [word])

    async def receive(ctx):
        received.extend(await stream_receive(ctx, dut.o_stream, count, raw=True))
        ctx.set(dut.o_stream.ready, 1)
        for _ in range(20):
            await ctx.tick()
            assert not ctx.get(dut.o_stream.valid), "extra window"
        state["errors"] = ctx.get(dut.errors)
        state["busy"] = ctx.get(dut.busy)

    run_simulation(dut, [send, receive], deadline_cycles=2000)
    got = unpack(dut.o_stream.payload.shape(), received)
    assert getattr(state["errors"], case) == 1
    assert sum(getattr(state["errors"], name) for name in
               ("early_first", "early_last", "missing_last", "dropped", "bad_size")) == \
        (2 if case == "missing_last" else 1)            # the stray position after it is dropped
    assert state["busy"] == 0
    expected = [good] if bad_out is None else [bad_out, good]
    for index, seq in enumerate(expected):
        data, _ = expected_sequence_windows(seq, 3, "reflect")
        np.testing.assert_array_equal(got["data"][index * 6:(index + 1) * 6], data, err_msg=case)


@pytest.mark.parametrize("pad_mode", ["zero", "reflect", "replicate"])
def test_trained_peptide_heads_in_sequence_mode(pad_mode):
    """1-D mode on real peptides: one sequence a frame, no line buffer, 8 signed channels."""
    x_train, y_train, x_test, y_test, dims, channels, scale = H.load_task("amp")
    space = H.HeadSpace(1, channels, 3)
    dist = H.TapDistribution.from_offsets(space, H.OffsetDistribution("student-t", scale=1.0, dof=1.5))
    mask = dist.sample_mask(np.random.default_rng(2), 4, H.TapCount("constant", 3))
    params, mask, _ = H.train(H.patches(x_train * scale, space), y_train, mask, 2, epochs=4)
    export = H.quantise(params, mask, space, x_train, input_scale=scale)
    dut = HeadLayer(reach=3, in_channels=channels, heads=4, lanes=2, capacity=3, max_width=48, signed=True,
                    sequence=True)
    assert dut.line_buffer_bits == 0 and not hasattr(dut, "height")
    sequences = [x_test[i].T[:24].astype(np.int8) for i in range(3)]               # [24, 8]
    layout = dut.i_stream.payload.shape()
    words = sequence_words(layout, sequences)
    received, state = [], {}

    async def send(ctx):
        ctx.set(dut.width, 24)
        ctx.set(dut.pad_mode, PadMode[pad_mode.upper()])
        await load_table(ctx, dut, table_writes(export))
        await stream_send(ctx, dut.i_stream, words, pattern="random", seed=4)

    async def receive(ctx):
        received.extend(await stream_receive(ctx, dut.o_stream, len(words), pattern="random", seed=5,
                                             raw=True))
        ctx.set(dut.o_stream.ready, 1)
        for _ in range(40):
            await ctx.tick()
            assert not ctx.get(dut.o_stream.valid), "extra output"
        for name in COUNTERS:
            state[name] = ctx.get(getattr(dut, name))
        state["errors"] = ctx.get(Value.cast(dut.errors))

    run_simulation(dut, [send, receive], deadline_cycles=20000)
    got = unpack(dut.o_stream.payload.shape(), received)
    totals = dict.fromkeys(("cycles", "performed", "padding"), 0)
    for index, seq in enumerate(sequences):
        acc, counters = H.sequence_heads(export, seq, pad_mode=pad_mode, lanes=2)
        np.testing.assert_array_equal(got["data"][index * 24:(index + 1) * 24], acc)
        for name in totals:
            totals[name] += counters[name]
        if pad_mode == "zero":
            np.testing.assert_array_equal(acc.T, H.head_accumulators(export, seq.T[None].astype(np.int64))[0])
    assert state["errors"] == 0
    assert (state["cycles"], state["performed"], state["skipped_padding"]) == \
        (totals["cycles"], totals["performed"], totals["padding"])
