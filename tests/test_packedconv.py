"""PackedConv (the packed engine) and its beats against golden.sparseconv in amaranth.sim."""

import numpy as np
import pytest
from amaranth.hdl import Value, signed
from amaranth.sim import Simulator

from dynsparse.golden.density import density_map, inv_ref_var
from dynsparse.golden.images import real_image
from dynsparse.golden.packedconv import (FLUSH_TO_EMIT, pack_beats, pack_schedule, packed_cycles,
                                         packed_entries, reach, run_beats)
from dynsparse.golden.sparseconv import dense_tap_lists, requantize, sparse_conv, tap_densities, tap_lists
from dynsparse.hdl.packedconv import PackedConv, packed_beat_layout
from dynsparse.sim.packing import unpack
from dynsparse.sim.pysim import run_simulation, stream_receive, stream_send
from dynsparse.sim.sparseconv_io import (packed_beat_words, pixel_words, random_frame, random_lists,
                                          random_mask, random_weights)


STALLS = [("none", "none"), ("fixed", "fixed"), ("random", "random"), ("none", "random"), ("random", "none")]
COUNTERS = ("cycles", "performed", "skipped_pruned", "skipped_zero", "skipped_padding")
GOLDEN = {"performed": "performed", "skipped_pruned": "pruned", "skipped_zero": "zero",
          "skipped_padding": "padding"}
ERRORS = ("misaligned", "bad_entry", "flush_conflict")


def make(**kwargs):
    return PackedConv(**{"kernel_size": 3, "in_channels": 1, "out_channels": 4, "lanes": 4,
                         "ring_depth": 64, "result_slots": 8, **kwargs})


def frame_beats(dut, frame, lists, *, pad_mode="zero", mask=None, dense=False):
    height, width, _ = frame.shape
    entries = packed_entries((height, width), lists, kernel_size=dut.kernel_size, pad_mode=pad_mode,
                             mask=mask, dense=dense)
    beats = pack_beats(entries, width=width, kernel_size=dut.kernel_size, lanes=dut.lanes,
                       ring_depth=dut.ring_depth, result_slots=dut.result_slots)
    return entries, beats


def simulate(dut, jobs, *, source="none", sink="none", seed=0, multiplier=1, shift=0, words=None,
             expect=True, outputs=None, leftover_pixels=False):
    """Run frames ``jobs = [(frame, lists, options), ...]`` back to back (or the raw
    ``words = (pixel words, beat words)``); check results, counters and errors against golden
    (``expect``); return the received fields, the counters and errors, and the span in cycles
    from the first beat accepted to the last result offered."""
    if words is None:
        pixel_payloads, beat_payloads = [], []
        for frame, lists, options in jobs:
            pixel_payloads += pixel_words(dut.i_pixels.payload.shape(), frame)
            beat_payloads += packed_beat_words(dut.i_beats.payload.shape(),
                                               frame_beats(dut, frame, lists, **options)[1])
    else:
        pixel_payloads, beat_payloads = words
    if outputs is None:
        outputs = sum(frame.shape[0] * frame.shape[1] for frame, _, _ in jobs)
    received, state = [], {}

    finished = []

    async def send_pixels(ctx):
        if dut.requantize:
            ctx.set(dut.multiplier, multiplier)
            ctx.set(dut.shift, shift)
        if leftover_pixels:
            await send_until(ctx, dut.i_pixels, pixel_payloads, finished)
        else:
            await stream_send(ctx, dut.i_pixels, pixel_payloads, pattern=source, seed=seed)

    async def send_beats(ctx):
        await stream_send(ctx, dut.i_beats, beat_payloads, pattern=source, seed=seed + 7)

    async def receive(ctx):
        received.extend(await stream_receive(ctx, dut.o_stream, outputs, pattern=sink, seed=seed + 1, raw=True))
        ctx.set(dut.o_stream.ready, 1)
        for _ in range(dut.latency + 8):
            await ctx.tick()
            assert not ctx.get(dut.o_stream.valid), "extra output"
        assert not ctx.get(dut.busy)
        for name in COUNTERS:
            state[name] = ctx.get(getattr(dut, name))
        state["errors"] = {name: ctx.get(dut.errors[name]) for name in ERRORS}
        finished.append(True)

    # (with leftover_pixels the pixels not taken when the results are in are left unsent)
    run_simulation(dut, [send_pixels, send_beats, receive],
                   deadline_cycles=20 * (len(beat_payloads) + len(pixel_payloads)) + 2000)
    fields = unpack(dut.o_stream.payload.shape(), received)
    if not expect:
        return fields, state
    message = f"source={source} sink={sink} seed={seed}"
    totals, offset, beats_total = dict.fromkeys(GOLDEN.values(), 0), 0, 0
    for frame, lists, options in jobs:
        height, width, _ = frame.shape
        size = height * width
        got = fields["data"][offset:offset + size].reshape(height, width, -1)
        assert fields["first"][offset:offset + size].tolist() == [1] + [0] * (size - 1), message
        assert fields["last"][offset:offset + size].tolist() == [0] * (size - 1) + [1], message
        offset += size
        acc, counters = sparse_conv(frame, lists, kernel_size=dut.kernel_size, **options)
        expected = requantize(acc, multiplier=multiplier, shift=shift) if dut.requantize else acc
        np.testing.assert_equal(got, expected, err_msg=message)
        for name in totals:
            totals[name] += counters[name]
        beats_total += len(frame_beats(dut, frame, lists, **options)[1]["take"])
    assert state["cycles"] == beats_total
    assert {name: state[name] for name in GOLDEN} == {name: totals[GOLDEN[name]] for name in GOLDEN}, message
    assert not any(state["errors"].values()), state["errors"]
    return fields, state


async def send_until(ctx, stream, payloads, finished):
    """Offer ``payloads`` like ``stream_send``, giving up once ``finished`` is non-empty."""
    for payload in payloads:
        ctx.set(stream.valid, 1)
        ctx.set(stream.payload, payload) if not isinstance(payload, int) else \
            ctx.set(Value.cast(stream.payload), payload)
        while True:
            _, _, ready = await ctx.tick().sample(stream.ready)
            if ready:
                break
            if finished:
                ctx.set(stream.valid, 0)
                return
    ctx.set(stream.valid, 0)


def timeline(dut, frame, lists, **options):
    """Cycles from the first beat accepted to the last result offered, inputs always offered."""
    pixel_payloads = pixel_words(dut.i_pixels.payload.shape(), frame)
    beat_payloads = packed_beat_words(dut.i_beats.payload.shape(), frame_beats(dut, frame, lists, **options)[1])
    times = {}

    async def send_pixels(ctx):
        await stream_send(ctx, dut.i_pixels, pixel_payloads)

    async def send_beats(ctx):
        await stream_send(ctx, dut.i_beats, beat_payloads)

    async def receive(ctx):
        await stream_receive(ctx, dut.o_stream, frame.shape[0] * frame.shape[1])

    async def clock(ctx):
        cycle = 0
        async for _, _, bv, br, ov in ctx.tick().sample(dut.i_beats.valid, dut.i_beats.ready, dut.o_stream.valid):
            if bv and br and "first" not in times:
                times["first"] = cycle
            if ov:
                times["last"] = cycle
            cycle += 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for bench in (send_pixels, send_beats, receive):
        sim.add_testbench(bench)
    sim.add_testbench(clock, background=True)
    sim.run()
    return times["last"] - times["first"]


# --- golden: jobs, schedule, beats --------------------------------------------------------------

def test_schedule_hand_checked():
    """Two lanes, a 3 × 4 frame (K = 3, reach 5): the takes, jobs and emits of the module text."""
    count = np.zeros((12, 2), np.int64)
    count[0] = (3, 1)        # position 0: jobs of 3 and 1 entries, after pixel 5 is taken (beat 5)
    count[1] = (2, 0)
    schedule = pack_schedule(count, width=4, kernel_size=3, lanes=2, ring_depth=32, result_slots=4)
    assert schedule["take"].tolist() == list(range(12))
    # position 0 ready at beat 6: lane 0 takes (0, 0) for beats 6-8, lane 1 (0, 1) at beat 6;
    # position 1 (ready at beat 7) takes lane 1 at 7-8, flushing channel 0 at 8 like lane 0:
    # it starts a beat later (9-10)
    assert schedule["jobs"].tolist() == [[0, 0, 0, 6], [0, 1, 1, 6], [1, 0, 1, 8]]
    emit = schedule["emit"].tolist()
    assert emit[0] == 8 + FLUSH_TO_EMIT and emit[1] == 9 + FLUSH_TO_EMIT
    assert emit[2:] == list(range(emit[1] + 1, emit[1] + 11))
    assert schedule["beats"] == emit[-1] + 1


def test_schedule_respects_the_ring_and_the_slots():
    """A small ring and few slots: takes wait for emits, jobs for free slots."""
    rng = np.random.default_rng(3)
    count = rng.integers(0, 10, (6 * 5, 3))
    schedule = pack_schedule(count, width=5, kernel_size=3, lanes=2, ring_depth=16, result_slots=2)
    take, emit = schedule["take"], schedule["emit"]
    ahead = reach(5, 3)
    for i in range(16, len(take)):
        assert take[i] > emit[i - 16 + ahead]
    for p, co, lane, start in schedule["jobs"]:
        assert start > take[min(len(take) - 1, p + ahead)]
        if p >= 2:
            assert start > emit[p - 2]
    assert np.all(np.diff(emit) >= 1) and np.all(np.diff(take) >= 1)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"lanes": 0}, ValueError, "lane count must be an integer >= 1, not 0"),
    ({"lanes": 2.0}, TypeError, "lane count must be an integer, not 2.0"),
    ({"ring_depth": 48}, ValueError, "ring depth must be a power of two >= 1, not 48"),
    ({"ring_depth": 8}, ValueError, r"ring depth must exceed 2·\(r·W \+ r\) = 12"),
    ({"result_slots": 3}, ValueError, "result slot count must be a power of two >= 1, not 3"),
    ({"width": 0}, ValueError, "width must be an integer >= 1, not 0"),
])
def test_schedule_parameters_checked(kwargs, error, match):
    arguments = {"width": 5, "kernel_size": 3, "lanes": 2, "ring_depth": 16, "result_slots": 4, **kwargs}
    with pytest.raises(error, match=match):
        pack_schedule(np.ones((10, 2), np.int64), **arguments)


def test_schedule_rejects_partial_rows():
    with pytest.raises(ValueError, match="11 positions are not whole rows of 5"):
        pack_schedule(np.ones((11, 2), np.int64), width=5, kernel_size=3, lanes=2, ring_depth=16)


@pytest.mark.parametrize("pad_mode", ["zero", "replicate", "reflect"])
@pytest.mark.parametrize("dense", [False, True])
def test_beats_execute_to_sparse_conv(pad_mode, dense):
    """The beats, executed by the golden executor, give sparse_conv's results; the jobs its counters."""
    rng = np.random.default_rng(len(pad_mode) + 10 * dense)
    for k, c_in, c_out, lanes in ((3, 1, 4, 4), (3, 2, 3, 2), (5, 1, 2, 1), (1, 2, 3, 3)):
        dut = make(kernel_size=k, in_channels=c_in, out_channels=c_out, lanes=lanes)
        height, width = int(rng.integers(3, 8)), int(rng.integers(3, 9))
        frame = random_frame(rng, dut, height, width).astype(np.int64)
        weights = random_weights(rng, _Block(k, c_in, c_out))
        lists = dense_tap_lists(weights, (height, width)) if dense else \
            random_lists(rng, _Block(k, c_in, c_out), height, width, weights=weights)
        mask = random_mask(rng, _Block(k, c_in, c_out), height, width)
        acc, counters = sparse_conv(frame, lists, kernel_size=k, pad_mode=pad_mode, mask=mask, dense=dense)
        entries, beats = frame_beats(dut, frame, lists, pad_mode=pad_mode, mask=mask, dense=dense)
        for name in ("performed", "pruned", "zero", "padding", "dense"):
            assert entries[name] == counters[name], name
        np.testing.assert_equal(entries["count"], counters["active"].reshape(-1, c_out))
        results = run_beats(frame, beats, out_channels=c_out, ring_depth=dut.ring_depth,
                            result_slots=dut.result_slots)
        np.testing.assert_equal(results, acc.reshape(-1, c_out))
        assert beats["first"].tolist() == [1] + [0] * (len(beats["first"]) - 1)
        assert beats["last"][-1] == 1 and beats["emit"][-1] == 1 and beats["last"].sum() == 1
        assert beats["take"].sum() == beats["emit"].sum() == height * width


def test_executor_catches_a_broken_schedule():
    """run_beats refuses beats that read a pixel before its take or emit too early."""
    dut = make(out_channels=2, lanes=2)
    rng = np.random.default_rng(4)
    frame = rng.integers(0, 256, (4, 5, 1))
    lists = dense_tap_lists(random_weights(rng, _Block(3, 1, 2)), (4, 5))
    _, beats = frame_beats(dut, frame, lists)
    early = {name: values.copy() for name, values in beats.items()}
    early["take"][:] = 0
    early["take"][-20:] = 1                       # every pixel taken at the end
    with pytest.raises(AssertionError, match="before its take"):
        run_beats(frame, early, out_channels=2, ring_depth=dut.ring_depth, result_slots=dut.result_slots)
    hasty = {name: values.copy() for name, values in beats.items()}
    first_emit = int(np.flatnonzero(hasty["emit"])[0])
    for name in ("emit", "mask"):
        hasty[name][first_emit - 1], hasty[name][first_emit] = hasty[name][first_emit], 0
    with pytest.raises(AssertionError, match="emit before channel"):
        run_beats(frame, hasty, out_channels=2, ring_depth=dut.ring_depth, result_slots=dut.result_slots)


class _Block:
    """The parameters random_weights / random_lists / random_mask read."""
    def __init__(self, k, c_in, c_out, block_size=4):
        self.kernel_size, self.in_channels, self.out_channels, self.block_size = k, c_in, c_out, block_size


# --- the engine ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, match", [
    ({"kernel_size": 4}, ValueError, "kernel size must be an odd integer in \\[1, 15\\], not 4"),
    ({"lanes": 0}, ValueError, "lane count must be an integer in \\[1, 4\\], not 0"),
    ({"lanes": 5}, ValueError, "lane count must be an integer in \\[1, 4\\], not 5"),
    ({"in_channels": 0}, ValueError, "input channel count must be an integer >= 1, not 0"),
    ({"ring_depth": 100}, ValueError, "ring depth must be a power of two in \\[2, 65536\\], not 100"),
    ({"result_slots": 1}, ValueError, "result slot count must be an integer in \\[2, 65536\\], not 1"),
    ({"pixel_shape": signed(16)}, ValueError, "pixel shape must be unsigned\\(8\\) or signed\\(8\\)"),
    ({"requantize": 1}, TypeError, "requantize must be a bool, not 1"),
])
def test_bad_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        make(**kwargs)


@pytest.mark.parametrize("source, sink", STALLS)
@pytest.mark.parametrize("c_out, lanes", [(4, 4), (4, 2), (3, 2), (5, 1)])
def test_random_frames(source, sink, c_out, lanes):
    rng = np.random.default_rng(c_out * 10 + lanes)
    dut = make(out_channels=c_out, lanes=lanes)
    block = _Block(3, 1, c_out)
    jobs = []
    for pad_mode in ("zero", "replicate", "reflect"):
        height, width = int(rng.integers(3, 7)), int(rng.integers(3, 8))
        frame = random_frame(rng, dut, height, width)
        lists = random_lists(rng, block, height, width)
        jobs.append((frame, lists, {"pad_mode": pad_mode, "mask": random_mask(rng, block, height, width)}))
    simulate(dut, jobs, source=source, sink=sink, seed=int(rng.integers(1000)))


@pytest.mark.parametrize("kwargs", [
    {"kernel_size": 5, "in_channels": 2, "out_channels": 3, "lanes": 2},
    {"kernel_size": 1, "in_channels": 3, "out_channels": 2, "lanes": 2},
    {"pixel_shape": signed(8), "in_channels": 2},
])
def test_other_shapes(kwargs):
    dut = make(**kwargs)
    rng = np.random.default_rng(len(kwargs))
    block = _Block(dut.kernel_size, dut.in_channels, dut.out_channels)
    jobs = []
    for pad_mode in ("zero", "reflect"):
        height, width = 6, 7
        frame = random_frame(rng, dut, height, width)
        jobs.append((frame, random_lists(rng, block, height, width),
                     {"pad_mode": pad_mode, "mask": random_mask(rng, block, height, width)}))
    simulate(dut, jobs, source="random", sink="random", seed=3)


def test_real_image():
    """A camera crop with the scaler's density-shaped lists, eight channels on eight lanes."""
    dut = make(out_channels=8, lanes=8)
    frame = real_image("camera", size=(12, 16))[:, :, None]
    rng = np.random.default_rng(8)
    weights = rng.integers(-127, 128, (8, 1, 3, 3))
    density = density_map(frame, kernel_size=3, inv_ref_var=inv_ref_var(24))
    lists = tap_lists(weights, tap_densities(density, kernel_size=3), prune_threshold=16)
    assert 0 < lists.count.sum() < lists.count.size * 9
    simulate(dut, [(frame, lists, {"pad_mode": "replicate", "mask": random_mask(rng, _Block(3, 1, 8), 12, 16)})],
             source="random", sink="random", seed=8)


def test_extremes_and_dense():
    """±127 weights on full-scale pixels, dense mode with zero padding, every tap pruned."""
    dut = make()
    frame = np.full((5, 6, 1), 255, np.uint8)
    frame[::2, ::3] = 0
    weights = np.full((4, 1, 3, 3), 127)
    weights[1] = -127
    dense = dense_tap_lists(weights, (5, 6))
    pruned = tap_lists(weights, np.zeros((5, 6, 1, 3, 3), np.int64), prune_threshold=1)
    assert pruned.count.sum() == 0
    simulate(dut, [(frame, dense, {"pad_mode": "zero", "dense": True}),
                   (frame, dense, {"pad_mode": "reflect"}),
                   (frame, pruned, {"pad_mode": "zero"})], source="random", sink="fixed", seed=2)


def test_requantize():
    dut = make(requantize=True)
    rng = np.random.default_rng(12)
    block = _Block(3, 1, 4)
    frame = random_frame(rng, dut, 5, 6)
    simulate(dut, [(frame, random_lists(rng, block, 5, 6), {"pad_mode": "replicate"})],
             source="random", sink="random", multiplier=300, shift=12)


@pytest.mark.parametrize("requant", [False, True])
@pytest.mark.parametrize("lanes", [1, 2, 4])
def test_timeline(lanes, requant):
    """Inputs always offered, results always taken: the span is the golden timeline."""
    dut = make(lanes=lanes, requantize=requant)
    rng = np.random.default_rng(lanes)
    block = _Block(3, 1, 4)
    frame = random_frame(rng, dut, 6, 7)
    lists = random_lists(rng, block, 6, 7)
    entries, _ = frame_beats(dut, frame, lists)
    assert timeline(dut, frame, lists) == dut.timeline(entries["count"], width=7)


def test_latency():
    """An emit offers its result ``latency`` cycles after its beat is accepted."""
    dut = make()
    frame = np.ones((3, 4, 1), np.uint8)
    lists = tap_lists(np.ones((4, 1, 3, 3), np.int64), np.zeros((3, 4, 1, 3, 3), np.int64), prune_threshold=1)
    entries, beats = frame_beats(dut, frame, lists)
    # no job anywhere: the beats are the takes, and emits from the reach on
    assert timeline(dut, frame, lists) == len(beats["take"]) - 1 + dut.latency


def test_bad_entries_flagged_and_next_frame_exact():
    """A channel or input channel out of range, two flushes of one channel: flagged; the next
    frame is exact."""
    dut = make(in_channels=3, out_channels=3, lanes=3)
    rng = np.random.default_rng(5)
    block = _Block(3, 3, 3)
    frame = random_frame(rng, dut, 4, 5)
    lists = dense_tap_lists(random_weights(rng, block), (4, 5))
    _, beats = frame_beats(dut, frame, lists)
    layout = dut.i_beats.payload.shape()
    for field, value, error in (("channel", 3, "bad_entry"), ("ci", 3, "bad_entry"), ("channel", None, "flush_conflict")):
        broken = {name: values.copy() for name, values in beats.items()}
        flush_beats = np.flatnonzero(broken["flush"].sum(axis=1) >= 2)
        t = int(flush_beats[0])
        lanes_flushing = np.flatnonzero(broken["flush"][t])
        if value is None:                         # two lanes flush the first one's channel
            broken["channel"][t, lanes_flushing[1]] = broken["channel"][t, lanes_flushing[0]]
        else:
            broken[field][t, lanes_flushing[0]] = value
        words = (pixel_words(dut.i_pixels.payload.shape(), frame) * 2,
                 packed_beat_words(layout, broken) + packed_beat_words(layout, beats))
        fields, state = simulate(dut, [], words=words, expect=False, outputs=40)
        assert state["errors"][error] == 1 and sum(state["errors"].values()) == 1, (field, state["errors"])
        acc, _ = sparse_conv(frame, lists, kernel_size=3)
        np.testing.assert_equal(fields["data"][20:], acc.reshape(20, 3))


@pytest.mark.parametrize("fault", ["pixels short", "pixels long", "beats short", "beats without first"])
def test_framing_errors_realign(fault):
    """The beats and pixels of a frame disagree: misaligned, no hang, the next frame exact."""
    dut = make(out_channels=2, lanes=2)
    rng = np.random.default_rng(6)
    block = _Block(3, 1, 2)
    frame = random_frame(rng, dut, 4, 5)
    lists = random_lists(rng, block, 4, 5)
    _, beats = frame_beats(dut, frame, lists)
    pixel_layout, beat_layout = dut.i_pixels.payload.shape(), dut.i_beats.payload.shape()
    good_pixels, good_beats = pixel_words(pixel_layout, frame), packed_beat_words(beat_layout, beats)
    bad_pixels, bad_beats = good_pixels, good_beats
    outputs = 40
    if fault == "pixels short":                  # the beats' frame meets the next frame's first pixel
        bad_pixels = good_pixels[:12]
        outputs = None
    elif fault == "pixels long":                 # the next frame's first take meets old pixels
        bad_pixels = good_pixels + good_pixels[5:9]
    elif fault == "beats short":                 # the next frame's beats meet the old frame's pixels
        bad_beats = good_beats[:len(good_beats) // 2]
        outputs = None
    else:                                        # beats before any first
        bad_beats = good_beats[1:]
        outputs = None
    words = (bad_pixels + good_pixels, bad_beats + good_beats)
    if outputs is None:
        # the broken frame gives however many results it emitted before it was cut: collect
        # them by running until the good frame's last result
        emitted = _emitted_before_cut(dut, words)
        outputs = emitted + 20
    fields, state = simulate(dut, [], words=words, expect=False, outputs=outputs, leftover_pixels=True)
    assert state["errors"]["misaligned"] == 1
    acc, _ = sparse_conv(frame, lists, kernel_size=3)
    np.testing.assert_equal(fields["data"][-20:], acc.reshape(20, 2))
    assert fields["first"][-20] == 1 and fields["last"][-1] == 1


def _emitted_before_cut(dut, words):
    """Results a run of ``words`` gives before the last frame's first one."""
    received = []

    finished = []

    async def send_pixels(ctx):
        await send_until(ctx, dut.i_pixels, words[0], finished)

    async def send_beats(ctx):
        await stream_send(ctx, dut.i_beats, words[1])

    async def receive(ctx):
        ctx.set(dut.o_stream.ready, 1)
        idle = 0
        while idle < 200:
            _, _, valid, payload = await ctx.tick().sample(dut.o_stream.valid, dut.o_stream.payload)
            if valid:
                received.append(int(payload.first))
                idle = 0
            else:
                idle += 1
        finished.append(True)

    run_simulation(dut, [send_pixels, send_beats, receive], deadline_cycles=20000)
    return len(received) - 20


def test_clear_counters_and_errors():
    dut = make(out_channels=2, lanes=2)
    rng = np.random.default_rng(9)
    frame = random_frame(rng, dut, 3, 4)
    lists = random_lists(rng, _Block(3, 1, 2), 3, 4)
    _, beats = frame_beats(dut, frame, lists)
    words = (pixel_words(dut.i_pixels.payload.shape(), frame),
             packed_beat_words(dut.i_beats.payload.shape(), beats)[1:])      # no first: misaligned
    state = {}

    async def bench(ctx):
        await stream_send(ctx, dut.i_beats, words[1])
        for _ in range(5):
            await ctx.tick()
        assert ctx.get(dut.errors.misaligned) and ctx.get(dut.cycles) == 0
        ctx.set(dut.clear_errors, 1)
        ctx.set(dut.clear_counters, 1)
        await ctx.tick()
        ctx.set(dut.clear_errors, 0)
        ctx.set(dut.clear_counters, 0)
        await ctx.tick()
        state["after"] = ctx.get(dut.errors.misaligned), ctx.get(dut.cycles)

    run_simulation(dut, [bench], deadline_cycles=5000)
    assert state["after"] == (0, 0)


def test_beat_layout():
    layout = packed_beat_layout(kernel_size=3, in_channels=1, out_channels=8, lanes=8)
    entry = layout["lanes"].shape.elem_shape
    # valid, flush, channel (3), slot (11), place (12), ci (1), weight (8)
    assert entry.size == 1 + 1 + 3 + 11 + 12 + 1 + 8
    assert layout.size == 8 * entry.size + 1 + 1 + 8 + 1 + 1 + 3 * 7
