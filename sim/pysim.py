"""Stream drivers for quick :mod:`amaranth.sim` tests.

``stream_send`` offers payloads on a stream's ``valid``/``payload`` and
``stream_receive`` collects them from its ``ready`` side, each paced by a stall
pattern from :mod:`.stalls`. Both are ``async`` testbench helpers for
``Simulator.add_testbench``.
"""

from amaranth.hdl import Value
from amaranth.sim import Simulator

from .stalls import stall_pattern


__all__ = ["stream_send", "stream_receive", "run_simulation"]


async def stream_send(ctx, stream, payloads, *, pattern="none", seed=0):
    """Send every payload in ``payloads``: flat integers (see :mod:`.packing`) or
    anything ``ctx.set`` accepts for the payload (a dict for a struct layout)."""
    allow = stall_pattern(pattern, seed=seed)
    for payload in payloads:
        while not next(allow):
            ctx.set(stream.valid, 0)
            await ctx.tick()
        ctx.set(stream.valid, 1)
        if isinstance(payload, int):
            ctx.set(Value.cast(stream.payload), payload)
        else:
            ctx.set(stream.payload, payload)
        await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def stream_receive(ctx, stream, count, *, pattern="none", seed=0, raw=False):
    """Receive ``count`` payloads and return them as a list.

    Each payload is the value :meth:`ctx.get` gives for ``stream.payload`` (a
    :class:`~amaranth.lib.data.Const` view for struct layouts), or with
    ``raw`` its flat integer, for :func:`.packing.unpack`.
    """
    payload_value = Value.cast(stream.payload) if raw else stream.payload
    allow = stall_pattern(pattern, seed=seed)
    received = []
    while len(received) < count:
        ready = next(allow)
        ctx.set(stream.ready, ready)
        _, _, valid, payload = await ctx.tick().sample(stream.valid, payload_value)
        if ready and valid:
            received.append(payload)
    ctx.set(stream.ready, 0)
    return received


def run_simulation(dut, testbenches, *, processes=(), deadline_cycles=1_000_000, vcd=None):
    """Simulate ``dut`` (``sync`` clock of 1 µs) until every testbench returns.

    A run still going after ``deadline_cycles`` clock cycles raises
    :class:`AssertionError`: a block that hangs fails its test instead of
    hanging the suite.
    """
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for testbench in testbenches:
        sim.add_testbench(testbench)
    for process in processes:
        sim.add_process(process)

    cycles = 0

    async def watchdog(ctx):
        nonlocal cycles
        async for _ in ctx.tick():
            cycles += 1

    sim.add_testbench(watchdog, background=True)

    def run():
        while sim.advance():
            if cycles > deadline_cycles:
                raise AssertionError(f"simulation did not finish within {deadline_cycles} cycles")

    if vcd is None:
        run()
    else:
        with sim.write_vcd(vcd):
            run()
    return sim
