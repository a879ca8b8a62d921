"""StreamRegister: nothing lost, duplicated or reordered under any stall pattern; full rate."""

import pytest
from amaranth.hdl import unsigned

from dynsparse.hdl.skid import StreamRegister
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
