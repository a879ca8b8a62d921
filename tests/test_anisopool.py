"""AnisoPool against golden.spn.aniso_pool_int in amaranth.sim: results, timing, errors."""

import numpy as np
import pytest

from dynsparse.golden.spn import aniso_pool_int, encode, kernel_size_int, load_dataset, reciprocal_table
from dynsparse.hdl.anisopool import AnisoPool, PoolMode
from dynsparse.sim.pysim import run_simulation, stream_receive, stream_send


STALLS = [("none", "none"), ("random", "random"), ("fixed", "none"), ("none", "fixed")]


def make(**kwargs):
    return AnisoPool(**{"max_height": 4, "max_length": 12, "base_h": 3, "base_l": 5,
                        "k_h_min": 1, "k_h_max": 5, "k_l_min": 1, "k_l_max": 9, **kwargs})


def golden(dut, a, scale_h, scale_l, mode):
    k_h = kernel_size_int(scale_h, base=dut.base_h, k_min=dut.k_h_range[0], k_max=dut.k_h_range[1])
    k_l = kernel_size_int(scale_l, base=dut.base_l, k_min=dut.k_l_range[0], k_max=dut.k_l_range[1])
    table = reciprocal_table(dut.k_h_range[1] * dut.k_l_range[1])
    name = "max" if mode == PoolMode.MAX else "average"
    out = aniso_pool_int(np.clip(a, 0, None)[None, None], np.array([k_h]), np.array([k_l]), mode=name, table=table)
    return out[0, 0], int(k_h), int(k_l)


def words(a, *, first=True, last=True):
    flat = np.asarray(a).ravel()
    return [{"data": int(v), "first": int(first and i == 0), "last": int(last and i == len(flat) - 1)}
            for i, v in enumerate(flat)]


def simulate(dut, maps, *, source="none", sink="none", seed=0, extra=()):
    """Pool ``maps = [(a, scale_h, scale_l, mode), ...]`` back to back (each map's settings are
    set while it is sent); return the results and the errors."""
    received, state = [], {}
    expected_count = sum(a.size for a, *_ in maps)

    async def send(ctx):
        for a, scale_h, scale_l, mode in maps:
            ctx.set(dut.height, a.shape[0])
            ctx.set(dut.length, a.shape[1])
            ctx.set(dut.scale_h, scale_h)
            ctx.set(dut.scale_l, scale_l)
            ctx.set(dut.mode, mode)
            await stream_send(ctx, dut.i_stream, words(a), pattern=source, seed=seed)
        for payload in extra:
            await stream_send(ctx, dut.i_stream, [payload], pattern=source, seed=seed)

    async def receive(ctx):
        received.extend(await stream_receive(ctx, dut.o_stream, expected_count, pattern=sink, seed=seed + 1))
        ctx.set(dut.o_stream.ready, 1)
        for _ in range(40):
            await ctx.tick()
            assert not ctx.get(dut.o_stream.valid), "extra output"
        state["errors"] = {name: ctx.get(dut.errors[name]) for name in ("negative", "misframed", "bad_size")}
        state["busy"] = ctx.get(dut.busy)

    work = sum(a.size * (20 + 2 * 16) for a, *_ in maps)
    run_simulation(dut, [send, receive], deadline_cycles=4 * work + 2000)
    results, offset = [], 0
    for a, *_ in maps:
        got = received[offset:offset + a.size]
        assert [p.first for p in got] == [1] + [0] * (a.size - 1)
        assert [p.last for p in got] == [0] * (a.size - 1) + [1]
        results.append(np.array([p.data for p in got]).reshape(a.shape))
        offset += a.size
    return results, state


@pytest.mark.parametrize("source, sink", STALLS)
def test_random_maps(source, sink):
    dut = make()
    rng = np.random.default_rng(hash((source, sink)) % 1000)
    maps = []
    for _ in range(4):
        h, l = int(rng.integers(1, 5)), int(rng.integers(1, 13))
        a = rng.integers(0, 128, (h, l))
        maps.append((a, int(rng.integers(0, 256)), int(rng.integers(0, 256)),
                     PoolMode(int(rng.integers(0, 2)))))
    results, state = simulate(dut, maps, source=source, sink=sink, seed=3)
    for (a, sh, sl, mode), got in zip(maps, results):
        want, *_ = golden(dut, a, sh, sl, mode)
        np.testing.assert_equal(got, want, err_msg=f"{a.shape} {sh} {sl} {mode}")
    assert state["errors"] == {"negative": 0, "misframed": 0, "bad_size": 0}
    assert not state["busy"]


def test_every_window_size():
    """Every (k_h, k_l) in range, both modes, extremes of the values (0 and 127)."""
    dut = make(k_h_max=4, k_l_min=2, k_l_max=7)
    rng = np.random.default_rng(5)
    maps = []
    for k_h in range(1, 5):
        for k_l in range(2, 8):
            # a scale code giving exactly this size: k = (base · s + 32) >> 6
            sh = next(s for s in range(256) if kernel_size_int(s, base=3, k_min=1, k_max=4) == k_h)
            sl = next(s for s in range(256) if kernel_size_int(s, base=5, k_min=2, k_max=7) == k_l)
            a = rng.choice([0, 127, int(rng.integers(0, 128))], (4, 12))
            maps.append((a, sh, sl, PoolMode.AVERAGE if (k_h + k_l) % 2 else PoolMode.MAX))
    results, state = simulate(dut, maps)
    for (a, sh, sl, mode), got in zip(maps, results):
        np.testing.assert_equal(got, golden(dut, a, sh, sl, mode)[0])


def test_scale_clamps():
    """Scale codes 0 and 255 clamp to k_min and k_max; full-scale maps average to 127."""
    dut = make()
    full = np.full((4, 12), 127)
    maps = [(full, 0, 0, PoolMode.AVERAGE), (full, 255, 255, PoolMode.AVERAGE), (full, 255, 0, PoolMode.MAX)]
    results, _ = simulate(dut, maps)
    assert golden(dut, full, 0, 0, PoolMode.AVERAGE)[1:] == (1, 1)
    assert golden(dut, full, 255, 255, PoolMode.AVERAGE)[1:] == (5, 9)
    for (a, sh, sl, mode), got in zip(maps, results):
        np.testing.assert_equal(got, golden(dut, a, sh, sl, mode)[0])
    np.testing.assert_equal(results[0], full)


def test_real_peptides():
    """Encoded peptides of the real AMP/TM set (absolute codes as post-ReLU activations)."""
    dut = make(max_height=8, max_length=48)
    sequences = load_dataset("AMPvsTM")[0]
    x = np.abs(encode(sequences[:3], length=48).astype(np.int64)).clip(0, 127)
    maps = [(x[i].reshape(8, 48), s, t, mode) for i, (s, t, mode) in
            enumerate([(64, 64, PoolMode.AVERAGE), (128, 40, PoolMode.MAX), (90, 100, PoolMode.AVERAGE)])]
    results, _ = simulate(dut, maps, source="random", sink="random", seed=9)
    for (a, sh, sl, mode), got in zip(maps, results):
        np.testing.assert_equal(got, golden(dut, a, sh, sl, mode)[0])


def test_map_cycles():
    """First value accepted to last result offered, output always taken: ``map_cycles``."""
    dut = make()
    a = np.arange(4 * 12).reshape(4, 12) % 128
    for scale_h, scale_l, mode in ((64, 64, PoolMode.AVERAGE), (255, 0, PoolMode.MAX)):
        seen = []

        async def bench(ctx):
            ctx.set(dut.height, 4)
            ctx.set(dut.length, 12)
            ctx.set(dut.scale_h, scale_h)
            ctx.set(dut.scale_l, scale_l)
            ctx.set(dut.mode, mode)
            ctx.set(dut.o_stream.ready, 1)
            items, sent, received, cycle = words(a), 0, 0, 0
            while received < a.size:
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
                    received += 1
                    if received == a.size:
                        seen.append(cycle)
                cycle += 1

        run_simulation(dut, [bench], deadline_cycles=5000)
        k_h, k_l = dut.kernel_size(scale_h, "h"), dut.kernel_size(scale_l, "l")
        assert seen[1] - seen[0] == dut.map_cycles(4, 12, k_h, k_l)


def test_bad_streams_recover():
    """A map cut short, a map running long, a value outside a map, a negative value and a
    bad size each raise their flag; the map after each is exact."""
    dut = make()
    rng = np.random.default_rng(2)
    a = rng.integers(0, 128, (3, 7))
    good = (a, 80, 70, PoolMode.AVERAGE)
    received, state = [], {}

    async def send(ctx):
        ctx.set(dut.scale_h, 80)
        ctx.set(dut.scale_l, 70)
        ctx.set(dut.mode, PoolMode.AVERAGE)
        ctx.set(dut.height, 3)
        ctx.set(dut.length, 7)
        flat = words(a)
        short = flat[:5] + [dict(flat[5], last=1)]
        long = flat[:-1] + [dict(flat[-1], last=0), {"data": 1, "first": 0, "last": 1}]
        await stream_send(ctx, dut.i_stream, short)                     # cut short
        await stream_send(ctx, dut.i_stream, flat)
        await stream_send(ctx, dut.i_stream, long)                      # runs long
        await stream_send(ctx, dut.i_stream, [{"data": 3, "first": 0, "last": 0}])   # outside
        await stream_send(ctx, dut.i_stream, flat)
        ctx.set(dut.height, 5)                                          # bad size
        await stream_send(ctx, dut.i_stream, flat[:1])
        ctx.set(dut.height, 3)
        await stream_send(ctx, dut.i_stream, flat)

    async def receive(ctx):
        received.extend(await stream_receive(ctx, dut.o_stream, 3 * a.size))
        ctx.set(dut.o_stream.ready, 1)
        for _ in range(400):
            await ctx.tick()
            assert not ctx.get(dut.o_stream.valid), "extra output"
        state["errors"] = {name: ctx.get(dut.errors[name]) for name in ("negative", "misframed", "bad_size")}

    run_simulation(dut, [send, receive], deadline_cycles=20000)
    want = golden(dut, *good)[0].ravel()
    for i in range(3):
        np.testing.assert_equal([p.data for p in received[i * a.size:(i + 1) * a.size]], want)
    assert state["errors"] == {"negative": 0, "misframed": 1, "bad_size": 1}


def test_negative_values_count_as_zero():
    dut = make()
    a = np.array([[-5, 10, -128, 127, 3]])
    results, state = simulate(dut, [(a, 64, 64, PoolMode.AVERAGE)])
    np.testing.assert_equal(results[0], golden(dut, np.clip(a, 0, None), 64, 64, PoolMode.AVERAGE)[0])
    assert state["errors"]["negative"] == 1


@pytest.mark.parametrize("kwargs, error, message", [
    ({"max_height": 0}, ValueError, r"^maximum height must be an integer in \[1, 64\], not 0$"),
    ({"max_length": 257}, ValueError, r"^maximum length must be an integer in \[1, 256\], not 257$"),
    ({"max_length": 4.0}, TypeError, r"^maximum length must be an integer in \[1, 256\], not 4\.0$"),
    ({"base_h": 17}, ValueError, r"^base pooling height must be an integer in \[1, 16\], not 17$"),
    ({"base_l": "5"}, TypeError, r"^base pooling length must be an integer in \[1, 16\], not '5'$"),
    ({"k_h_min": 3, "k_h_max": 2}, ValueError, r"^largest pooling height must be an integer in \[3, 16\], not 2$"),
    ({"k_l_min": 0}, ValueError, r"^smallest pooling length must be an integer in \[1, 16\], not 0$"),
    ({"k_l_max": 17}, ValueError, r"^largest pooling length must be an integer in \[1, 16\], not 17$"),
    ({"k_h_min": None}, TypeError, r"^smallest pooling height must be an integer in \[1, 16\], not None$"),
])
def test_parameter_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        make(**kwargs)


def test_map_edges():
    """Maps of one value, one row and one position, back to back, under stalls."""
    dut = make()
    rng = np.random.default_rng(8)
    maps = [(rng.integers(0, 128, shape), int(rng.integers(0, 256)), int(rng.integers(0, 256)), mode)
            for shape in ((1, 1), (1, 12), (4, 1), (1, 1), (4, 12)) for mode in PoolMode]
    results, state = simulate(dut, maps, source="random", sink="random", seed=4)
    for (a, sh, sl, mode), got in zip(maps, results):
        np.testing.assert_equal(got, golden(dut, a, sh, sl, mode)[0], err_msg=f"{a.shape} {mode}")
    assert state["errors"] == {"negative": 0, "misframed": 0, "bad_size": 0}
