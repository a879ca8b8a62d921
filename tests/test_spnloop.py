"""EncodingLoop against golden.spn.forward_int in amaranth.sim."""

import numpy as np
import pytest

from dynsparse.golden import spn as golden
from dynsparse.hdl.anisopool import PoolMode
from dynsparse.hdl.spnloop import EncodingLoop
from dynsparse.sim.pysim import run_simulation, stream_receive, stream_send
from dynsparse.sim.tb.peptides import loop_words, varied


CONFIG = golden.SPNConfig(length=10, iterations=2, channels=3, spn_channels=2, conv_kernel=3)


def export_for(config, *, adaptive=True, seed=1, count=40):
    """A quantised export of an untrained model, calibrated on real peptides."""
    sequences = golden.load_dataset("AMPvsTM")[0][:count]
    x = golden.encode(sequences, length=config.length).astype(np.float64) / 127
    params = golden.init_params(config, seed=seed)
    return golden.quantise(params, config, x, adaptive=adaptive)[0]


@pytest.fixture(scope="module")
def export():
    return export_for(CONFIG)


def make(config=CONFIG, **kwargs):
    return EncodingLoop(**{"channels": config.channels, "spn_channels": config.spn_channels,
                           "kernel_size": config.conv_kernel, "max_height": 8, "max_length": 16,
                           "iterations": config.iterations, "base_h": config.base_h, "base_l": config.base_l,
                           "k_h_min": config.k_h_range[0], "k_h_max": config.k_h_range[1],
                           "k_l_min": config.k_l_range[0], "k_l_max": config.k_l_range[1], **kwargs})


def words(a, *, first=True, last=True):
    flat = np.asarray(a).ravel()
    return [{"data": int(v), "first": int(first and i == 0), "last": int(last and i == len(flat) - 1)}
            for i, v in enumerate(flat)]


def simulate(dut, export, maps, *, source="none", sink="none", seed=0, stream=None, count=None, timing=False):
    """Load ``export``, send ``maps`` (or the raw ``stream`` of words); return received words, errors, cycles."""
    writes = dut.parameter_writes(export)
    received, state = [], {"times": []}
    count = count if count is not None else len(maps) * dut.words

    async def send(ctx):
        for addr, value in writes:
            ctx.set(dut.param_addr, addr)
            ctx.set(dut.param_data, value)
            ctx.set(dut.param_write, 1)
            await ctx.tick()
        ctx.set(dut.param_write, 0)
        ctx.set(dut.adaptive, int(export["adaptive"]))
        ctx.set(dut.mode, PoolMode.MAX if int(export["pool_max"]) else PoolMode.AVERAGE)
        ctx.set(dut.height, golden.HEIGHT)
        ctx.set(dut.length, int(export["length"]))
        items = stream if stream is not None else [w for x in maps for w in words(x)]
        await stream_send(ctx, dut.i_stream, items, pattern=source, seed=seed)

    async def receive(ctx):
        received.extend(await stream_receive(ctx, dut.o_stream, count, pattern=sink, seed=seed + 1))
        ctx.set(dut.o_stream.ready, 1)
        for _ in range(50):
            await ctx.tick()
            assert not ctx.get(dut.o_stream.valid), "extra output"
        state["errors"] = {n: ctx.get(dut.errors[n]) for n in ("bad_value", "misframed", "bad_size", "bad_param",
                                                                 "pool")}
        state["busy"] = ctx.get(dut.busy)

    async def clock(ctx):
        cycle = 0
        async for _, _, i_valid, i_ready, first, o_valid, o_last in ctx.tick().sample(
                dut.i_stream.valid, dut.i_stream.ready, dut.i_stream.payload.first, dut.o_stream.valid,
                dut.o_stream.payload.last):
            if i_valid and i_ready and first:
                state["times"].append(("first", cycle))
            if o_valid and o_last and (not state["times"] or state["times"][-1] != ("last", cycle - 1)):
                state["times"].append(("last", cycle))
            cycle += 1

    run_simulation(dut, [send, receive], processes=[clock] if timing else [], deadline_cycles=40_000_000)
    return received, state


def split_words(dut, received):
    return [[r["data"] for r in received[i:i + dut.words]] for i in range(0, len(received), dut.words)]


def check(dut, export, x, **kwargs):
    received, state = simulate(dut, export, list(x), **kwargs)
    expected = loop_words(export, x)
    assert split_words(dut, received) == expected
    assert [r["first"] for r in received] == [int(i % dut.words == 0) for i in range(len(received))]
    assert [r["last"] for r in received] == [int(i % dut.words == dut.words - 1) for i in range(len(received))]
    assert not any(state["errors"].values()) and not state["busy"], state
    return expected, state


def scales(expected, iterations):
    """The (scale_h, scale_l) codes in ``expected`` words."""
    return {(w[t] & 0xFF, w[t] >> 8 & 0xFF) for w in expected for t in range(iterations)}


def test_real_peptides(export):
    sequences = golden.load_dataset("AMPvsTM")[0][200:202]
    x = golden.encode(sequences, length=CONFIG.length)
    model = varied(export, [[0.3, 0.9], [0.6, 0.1]])
    expected, _ = check(make(), model, x)
    assert scales(expected, CONFIG.iterations) == {(61, 118), (90, 42)}        # windows 3 × 9, then 4 × 3


@pytest.mark.parametrize("source,sink", [("random", "random"), ("none", "fixed")])
def test_stalls(export, source, sink):
    rng = np.random.default_rng(5)
    x = rng.integers(-127, 128, (1, golden.HEIGHT, CONFIG.length))
    check(make(), varied(export, [[0.8, 0.5], [0.2, 0.4]]), x, source=source, sink=sink, seed=7)


def test_scale_clamps_and_extremes(export):
    """Scales clamped at 2.0 and at 0.5 in both iterations (largest and smallest windows) on a map of
    full-scale codes of both signs; then every weight ±127."""
    x = np.random.default_rng(2).choice([-127, 127], (1, golden.HEIGHT, CONFIG.length))
    expected, _ = check(make(), varied(export, [[1.5, 1.5], [1.5, 1.5]]), x)
    assert scales(expected, 2) == {(128, 128)}
    expected, _ = check(make(), varied(export, [[-1, -1], [-1, -1]]), x)
    assert scales(expected, 2) == {(32, 32)}
    signs = dict(export)
    for name in ("conv0_w", "conv1_w", "spn1_w", "spn2_w", "spn3_w", "head_w"):
        signs[name] = np.where(np.asarray(export[name]) < 0, -127, 127).astype(np.int8)
    check(make(), signs, np.full((1, golden.HEIGHT, CONFIG.length), 127))


def test_fixed_kernel_max_pooling():
    config = golden.SPNConfig(length=9, iterations=3, channels=2, spn_channels=1, conv_kernel=3, pool="max")
    export = export_for(config, adaptive=False, seed=4)
    x = golden.encode(golden.load_dataset("AMPvsTM")[0][300:302], length=9)
    expected, _ = check(make(config, max_length=9), export, x)
    assert scales(expected, 3) == {(64, 64)}


def test_sequence_cycles(export):
    dut = make()
    model = varied(export, [[0.3, 0.9], [0.6, 0.1]])
    x = golden.encode(golden.load_dataset("AMPvsTM")[0][10:12], length=CONFIG.length)
    received, state = simulate(dut, model, list(x), timing=True)
    _, trace = golden.forward_int(model, x)
    times = state["times"]
    assert [kind for kind, _ in times] == ["first", "last", "first", "last"], times
    for b in range(2):
        sizes = [tuple(int(v) for v in k) for k in trace["kernel_sizes"][b]]
        assert times[2 * b + 1][1] - times[2 * b][1] == dut.sequence_cycles(golden.HEIGHT, CONFIG.length, sizes)


def test_bad_maps_then_good(export):
    """A map cut short by ``first``, one missing its ``last``, one with an early ``last``, a value
    outside any map: each flagged and dropped (no words); a −128 code taken as −127 and flagged;
    the good maps exact."""
    dut = make()
    model = varied(export, [[0.3, 0.9], [0.6, 0.1]])
    x = golden.encode(golden.load_dataset("AMPvsTM")[0][50:52], length=CONFIG.length).astype(np.int64)
    bad = x[1].copy()
    bad[3, 4] = -128
    fixed = bad.copy()
    fixed[3, 4] = -127
    stream = words(x[0])[:7]                                    # cut short by the next first
    stream += words(x[0])[:-1] + [{"data": 1, "first": 0, "last": 0}]  # misses its last: the next first cuts it
    stream += words(x[1])[:20]
    stream[-1] = dict(stream[-1], last=1)                       # early last
    stream += [{"data": 3, "first": 0, "last": 0}]              # a value outside any map
    stream += words(x[0]) + words(bad)
    received, state = simulate(dut, model, [], stream=stream, count=2 * dut.words)
    assert split_words(dut, received) == loop_words(model, np.stack([x[0], fixed]))
    assert state["errors"] == {"bad_value": 1, "misframed": 1, "bad_size": 0, "bad_param": 0, "pool": 0}


@pytest.mark.parametrize("kwargs, error, message", [
    ({"channels": 9}, ValueError, r"^channel count must be an integer in \[1, 8\], not 9$"),
    ({"spn_channels": 0}, ValueError, r"^SPN channel count must be an integer in \[1, 8\], not 0$"),
    ({"kernel_size": 2}, ValueError, r"^kernel size must be an odd integer in \[1, 7\], not 2$"),
    ({"max_height": 17}, ValueError, r"^maximum height must be an integer in \[1, 16\], not 17$"),
    ({"iterations": 5}, ValueError, r"^iteration count must be an integer in \[1, 4\], not 5$"),
    ({"bias_bits": 33}, ValueError, r"^bias width must be an integer in \[8, 32\], not 33$"),
    ({"k_l_max": 17}, ValueError, r"^largest pooling length must be an integer in \[1, 16\], not 17$"),
    ({"max_length": 2.0}, TypeError, r"^maximum length must be an integer in \[1, 64\], not 2.0$"),
])
def test_parameter_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        make(**kwargs)


def test_export_mismatch(export):
    with pytest.raises(ValueError, match=r"^export channel count is 3, the block's is 4$"):
        make(channels=4).parameter_writes(export)
    with pytest.raises(ValueError, match=r"^export base pooling length is 5, the block's is 3$"):
        make(base_l=3).parameter_writes(export)
    with pytest.raises(ValueError, match=r"^export length 10 exceeds the block's maximum 8$"):
        make(max_length=8).parameter_writes(export)
    with pytest.raises(ValueError, match=r"^export bias of the head = .* does not fit 32 signed bits$"):
        big = dict(export)
        big["head_b"] = np.array([1 << 33])
        make().parameter_writes(big)
