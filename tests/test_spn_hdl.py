"""ScalePredictor against golden.spn's integer model in amaranth.sim."""

import numpy as np
import pytest

from dynsparse.golden import spn as golden
from dynsparse.hdl.spn import ScalePredictor
from dynsparse.sim.pysim import run_simulation, stream_receive, stream_send


CONFIG = golden.SPNConfig(length=12, iterations=2, channels=3, spn_channels=2, conv_kernel=3)


@pytest.fixture(scope="module")
def export():
    """A quantised export of an untrained model, calibrated on real peptides."""
    sequences = golden.load_dataset("AMPvsTM")[0][:40]
    x = golden.encode(sequences, length=CONFIG.length).astype(np.float64) / 127
    params = golden.init_params(CONFIG, seed=1)
    return golden.quantise(params, CONFIG, x)[0]


def make(**kwargs):
    return ScalePredictor(**{"channels": 3, "spn_channels": 2, "kernel_size": 3, "max_height": 8,
                             "max_length": 12, "iterations": 2, **kwargs})


def words(a, *, first=True, last=True):
    flat = np.asarray(a).ravel()
    return [{"data": int(v), "first": int(first and i == 0), "last": int(last and i == len(flat) - 1)}
            for i, v in enumerate(flat)]


def simulate(dut, export, sets, *, source="none", sink="none", seed=0):
    """Load ``export``, then send ``sets = [(a [F, H, L], t), ...]``; return the scale pairs and errors."""
    writes = dut.parameter_writes(export)
    received, state = [], {}

    async def send(ctx):
        for addr, value in writes:
            ctx.set(dut.param_addr, addr)
            ctx.set(dut.param_data, value)
            ctx.set(dut.param_write, 1)
            await ctx.tick()
        ctx.set(dut.param_write, 0)
        for a, t in sets:
            ctx.set(dut.height, a.shape[1])
            ctx.set(dut.length, a.shape[2])
            ctx.set(dut.iteration, t)
            await stream_send(ctx, dut.i_stream, words(a), pattern=source, seed=seed)

    async def receive(ctx):
        received.extend(await stream_receive(ctx, dut.o_stream, len(sets), pattern=sink, seed=seed + 1))
        ctx.set(dut.o_stream.ready, 1)
        for _ in range(50):
            await ctx.tick()
            assert not ctx.get(dut.o_stream.valid), "extra output"
        state["errors"] = {n: ctx.get(dut.errors[n]) for n in ("negative", "misframed", "bad_size", "bad_param")}
        state["busy"] = ctx.get(dut.busy)

    work = sum(dut.run_cycles(a.shape[1], a.shape[2]) for a, _ in sets)
    run_simulation(dut, [send, receive], deadline_cycles=3 * work + len(writes) + 2000)
    return [(p.scale_h, p.scale_l) for p in received], state


def expected(export, a, t):
    return tuple(int(c) for c in golden.spn_scale_codes(export, np.asarray(a)[None], t)[0])


def test_real_peptides(export):
    """The main convolution's maps of real peptides, both iterations' constants."""
    dut = make()
    sequences = golden.load_dataset("AMPvsTM")[0][40:43]
    x = golden.encode(sequences, length=CONFIG.length).astype(np.int64)
    a = golden.conv_int(export, x, 0)
    sets = [(a[0], 0), (a[1], 1), (a[2], 0)]
    got, state = simulate(dut, export, sets)
    assert got == [expected(export, m, t) for m, t in sets]
    assert state["errors"] == {"negative": 0, "misframed": 0, "bad_size": 0, "bad_param": 0}


@pytest.mark.parametrize("source, sink", [("random", "random"), ("fixed", "none")])
def test_random_maps(export, source, sink):
    """Random maps and sizes; the scale constants varied so that codes land inside and at both clamps."""
    dut = make()
    rng = np.random.default_rng(7)
    export = dict(export)
    export["scale_m"] = np.array([int(rng.integers(1, 60000)), int(rng.integers(1, 60000))])
    export["scale_s"] = np.array([int(rng.integers(8, 20)), int(rng.integers(8, 20))])
    sets = [(rng.integers(0, 128, (3, int(rng.integers(1, 9)), int(rng.integers(1, 13)))), int(rng.integers(0, 2)))
            for _ in range(4)]
    got, state = simulate(dut, export, sets, source=source, sink=sink, seed=2)
    assert got == [expected(export, m, t) for m, t in sets]
    assert not state["busy"]


def test_run_cycles(export):
    dut = make()
    a = np.random.default_rng(3).integers(0, 128, (3, 4, 5))
    seen = []

    async def bench(ctx):
        for addr, value in dut.parameter_writes(export):
            ctx.set(dut.param_addr, addr)
            ctx.set(dut.param_data, value)
            ctx.set(dut.param_write, 1)
            await ctx.tick()
        ctx.set(dut.param_write, 0)
        ctx.set(dut.height, 4)
        ctx.set(dut.length, 5)
        ctx.set(dut.o_stream.ready, 1)
        items, sent, cycle = words(a), 0, 0
        while len(seen) < 2:
            ctx.set(dut.i_stream.valid, sent < len(items))
            if sent < len(items):
                ctx.set(dut.i_stream.payload, items[sent])
            _, _, i_valid, i_ready, o_valid = await ctx.tick().sample(
                dut.i_stream.valid, dut.i_stream.ready, dut.o_stream.valid)
            if i_valid and i_ready:
                if not sent:
                    seen.append(cycle)
                sent += 1
            if o_valid:
                seen.append(cycle)
            cycle += 1

    run_simulation(dut, [bench], deadline_cycles=20000)
    assert seen[1] - seen[0] == dut.run_cycles(4, 5)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"channels": 0}, ValueError, r"^channel count must be an integer in \[1, 8\], not 0$"),
    ({"spn_channels": 9}, ValueError, r"^SPN channel count must be an integer in \[1, 8\], not 9$"),
    ({"kernel_size": 4}, ValueError, r"^kernel size must be an odd integer in \[1, 7\], not 4$"),
    ({"max_length": 65}, ValueError, r"^maximum length must be an integer in \[1, 64\], not 65$"),
    ({"iterations": "2"}, TypeError, r"^iteration count must be an integer in \[1, 4\], not '2'$"),
    ({"bias_bits": 7}, ValueError, r"^bias width must be an integer in \[8, 32\], not 7$"),
])
def test_parameter_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        make(**kwargs)


def test_export_mismatch(export):
    with pytest.raises(ValueError, match=r"^export SPN channel count is 2, the block's is 4$"):
        make(spn_channels=4).parameter_writes(export)
    with pytest.raises(ValueError, match=r"^export biases of iteration 0 must fit 8 signed bits"):
        big = dict(export)
        big["spn1_b"] = np.array(big["spn1_b"]) + 1000
        make(bias_bits=8).parameter_writes(big)
