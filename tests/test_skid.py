"""StreamRegister and StreamFIFO: nothing lost, duplicated or reordered under any stall pattern; full rate."""

import pytest
from amaranth.hdl import unsigned

from dynsparse.hdl.skid import StreamFIFO, StreamRegister
from dynsparse.sim.pysim import run_simulation, stream_receive, stream_send


@pytest.mark.parametrize("src,sink", [("none", "none"), ("fixed", "fixed"), ("random", "random"),
                                       ("none", "random"), ("random", "none"), ("none", "fixed")])
def test_passes_everything_in_order(src, sink):
    dut = StreamRegister(unsigned(8))
    words = [(i * 37) % 256 for i in range(300)]
    received = []

    async def send(ctx):
        await stream_send(ctx, dut.i_stream, words, pattern=src, seed=3)

    async def receive(ctx):
        received.extend(await stream_receive(ctx, dut.o_stream, len(words), pattern=sink, seed=4))
        for _ in range(5):
            _, _, valid = await ctx.tick().sample(dut.o_stream.valid)
            assert not valid

    run_simulation(dut, [send, receive], deadline_cycles=5000)
    assert received == words


def test_full_rate():
    dut = StreamRegister(unsigned(8))
    cycles = {}

    async def send(ctx):
        await stream_send(ctx, dut.i_stream, list(range(100)))

    async def receive(ctx):
        ctx.set(dut.o_stream.ready, 1)
        count = 0
        for cycle in range(200):
            _, _, valid = await ctx.tick().sample(dut.o_stream.valid)
            count += valid
            if count == 100:
                cycles["done"] = cycle
                break

    run_simulation(dut, [send, receive], deadline_cycles=1000)
    assert cycles["done"] <= 101


@pytest.mark.parametrize("depth", [2, 5, 16])
@pytest.mark.parametrize("src,sink", [("none", "none"), ("random", "random"), ("none", "random"),
                                       ("random", "none"), ("fixed", "fixed")])
def test_fifo_passes_everything_in_order(depth, src, sink):
    dut = StreamFIFO(unsigned(8), depth=depth)
    words = [(i * 53 + 7) % 256 for i in range(300)]
    received = []

    async def send(ctx):
        await stream_send(ctx, dut.i_stream, words, pattern=src, seed=5)

    async def receive(ctx):
        received.extend(await stream_receive(ctx, dut.o_stream, len(words), pattern=sink, seed=6))
        for _ in range(5):
            _, _, valid = await ctx.tick().sample(dut.o_stream.valid)
            assert not valid

    run_simulation(dut, [send, receive], deadline_cycles=5000)
    assert received == words


def test_fifo_capacity_and_full_rate():
    dut = StreamFIFO(unsigned(8), depth=8)
    assert dut.capacity == 10
    results = {}

    async def bench(ctx):
        # With the output stalled the queue takes exactly `capacity` words.
        ctx.set(dut.i_stream.valid, 1)
        taken = 0
        for i in range(30):
            ctx.set(dut.i_stream.payload, taken)
            _, _, ready = await ctx.tick().sample(dut.i_stream.ready)
            taken += ready
        results["taken"] = taken
        ctx.set(dut.i_stream.valid, 0)
        # Then it drains one word per cycle, in order.
        ctx.set(dut.o_stream.ready, 1)
        out = []
        for _ in range(taken + 2):
            _, _, valid, payload = await ctx.tick().sample(dut.o_stream.valid, dut.o_stream.payload)
            if valid:
                out.append(payload)
        results["out"] = out

    run_simulation(dut, [bench], deadline_cycles=200)
    assert results["taken"] == 10
    assert results["out"] == list(range(10))


def test_fifo_parameter_error():
    with pytest.raises(ValueError, match="FIFO depth must be an integer >= 2, not 1"):
        StreamFIFO(unsigned(8), depth=1)
