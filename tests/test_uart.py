"""UARTReceiver and UARTTransmitter in amaranth.sim: loopback, waveform, errors."""

import random

import pytest
from amaranth.back import verilog
from amaranth.hdl import Elaboratable, Module

from dynsparse.hdl.uart import UARTReceiver, UARTTransmitter
from dynsparse.sim.pysim import run_simulation, stream_receive, stream_send


class Loopback(Elaboratable):
    def __init__(self, divisor):
        self.transmitter = UARTTransmitter(divisor=divisor)
        self.receiver = UARTReceiver(divisor=divisor)

    def elaborate(self, platform):
        m = Module()
        m.submodules.transmitter = self.transmitter
        m.submodules.receiver = self.receiver
        m.d.comb += self.receiver.rx.eq(self.transmitter.tx)
        return m


def watch_flags(receiver, flags):
    async def process(ctx):
        async for _, _, error, overrun in ctx.tick().sample(receiver.error, receiver.overrun):
            flags["error"] += error
            flags["overrun"] += overrun
    return process


@pytest.mark.parametrize("divisor", [4, 5, 16, 104])
@pytest.mark.parametrize("src,sink", [("none", "none"), ("fixed", "fixed"), ("random", "random")])
def test_8n1_loopback(divisor, src, sink):
    seed = divisor * 7 + len(src)
    rng = random.Random(seed)
    count = 12 if divisor == 104 else 40
    sent = [rng.randrange(256) for _ in range(count)] + [0x00, 0xFF, 0x55]
    dut = Loopback(divisor)
    received, flags = {}, {"error": 0, "overrun": 0}

    async def send(ctx):
        await stream_send(ctx, dut.transmitter.i_stream, sent, pattern=src, seed=seed)

    async def receive(ctx):
        received["bytes"] = await stream_receive(ctx, dut.receiver.o_stream, len(sent),
                                                 pattern=sink, seed=seed + 1)

    run_simulation(dut, [send, receive], processes=[watch_flags(dut.receiver, flags)],
                   deadline_cycles=12 * divisor * len(sent) * 2 + 1000)
    assert received["bytes"] == sent, f"seed {seed}"
    assert flags == {"error": 0, "overrun": 0}


def test_tx_waveform_and_idle_high():
    divisor = 6
    dut = UARTTransmitter(divisor=divisor)
    line = []

    async def bench(ctx):
        for _ in range(10):
            assert ctx.get(dut.tx) == 1
            await ctx.tick()
        ctx.set(dut.i_stream.valid, 1)
        ctx.set(dut.i_stream.payload, 0xB4)
        await ctx.tick().until(dut.i_stream.ready)
        ctx.set(dut.i_stream.valid, 0)
        for _ in range(12 * divisor):
            line.append(ctx.get(dut.tx))
            await ctx.tick()

    run_simulation(dut, [bench], deadline_cycles=1000)
    bits = [0] + [(0xB4 >> i) & 1 for i in range(8)] + [1]
    expected = [bit for bit in bits for _ in range(divisor)] + [1] * (2 * divisor)
    assert line == expected


async def drive_frame(ctx, receiver, divisor, byte, *, stop=1):
    for bit in [0] + [(byte >> i) & 1 for i in range(8)] + [stop]:
        ctx.set(receiver.rx, bit)
        await ctx.tick().repeat(divisor)
    ctx.set(receiver.rx, 1)


def test_rx_bad_stop_bit_then_good_byte():
    divisor = 8
    dut = UARTReceiver(divisor=divisor)
    flags = {"error": 0, "overrun": 0}
    received = []

    async def line(ctx):
        await ctx.tick().repeat(5)
        await drive_frame(ctx, dut, divisor, 0x3C, stop=0)
        await ctx.tick().repeat(2 * divisor)
        await drive_frame(ctx, dut, divisor, 0xA7)
        await ctx.tick().repeat(3 * divisor)

    async def sink(ctx):
        ctx.set(dut.o_stream.ready, 1)
        async for _, _, valid, payload in ctx.tick().sample(dut.o_stream.valid, dut.o_stream.payload):
            if valid:
                received.append(payload)

    sim_processes = [watch_flags(dut, flags), sink]
    run_simulation(dut, [line], processes=sim_processes, deadline_cycles=1000)
    assert received == [0xA7]
    assert flags == {"error": 1, "overrun": 0}


def test_rx_ignores_glitch():
    divisor = 16
    dut = UARTReceiver(divisor=divisor)
    received = []

    async def line(ctx):
        await ctx.tick().repeat(5)
        ctx.set(dut.rx, 0)
        await ctx.tick().repeat(divisor // 2 - 3)
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(12 * divisor)
        await drive_frame(ctx, dut, divisor, 0x81)
        await ctx.tick().repeat(2 * divisor)

    async def sink(ctx):
        ctx.set(dut.o_stream.ready, 1)
        async for _, _, valid, payload in ctx.tick().sample(dut.o_stream.valid, dut.o_stream.payload):
            if valid:
                received.append(payload)

    run_simulation(dut, [line], processes=[sink], deadline_cycles=2000)
    assert received == [0x81]


def test_rx_overrun_keeps_first_byte():
    divisor = 4
    dut = UARTReceiver(divisor=divisor)
    flags = {"error": 0, "overrun": 0}
    result = {}

    async def line(ctx):
        await ctx.tick().repeat(3)
        await drive_frame(ctx, dut, divisor, 0x11)
        await drive_frame(ctx, dut, divisor, 0x22)
        await ctx.tick().repeat(3 * divisor)
        result["first"] = await stream_receive(ctx, dut.o_stream, 1)
        await ctx.tick().repeat(4)
        result["valid_after"] = ctx.get(dut.o_stream.valid)

    run_simulation(dut, [line], processes=[watch_flags(dut, flags)], deadline_cycles=1000)
    assert result == {"first": [0x11], "valid_after": 0}
    assert flags == {"error": 0, "overrun": 1}


@pytest.mark.parametrize("block", [UARTReceiver, UARTTransmitter])
def test_divisor_errors(block):
    with pytest.raises(ValueError, match=r"^divisor must be an integer >= 4, not 3$"):
        block(divisor=3)
    with pytest.raises(TypeError, match=r"^divisor must be an integer >= 4, not 4\.0$"):
        block(divisor=4.0)
    with pytest.raises(TypeError, match=r"^divisor must be an integer >= 4, not True$"):
        block(divisor=True)


def test_verilog():
    assert "module uart_rx" in verilog.convert(UARTReceiver(divisor=104), name="uart_rx")
    assert "module uart_tx" in verilog.convert(UARTTransmitter(divisor=104), name="uart_tx")


@pytest.mark.parametrize("divisor", [4, 5, 104])
def test_rx_latency(divisor):
    dut = UARTReceiver(divisor=divisor)
    seen = []

    async def line(ctx):
        await ctx.tick().repeat(3)
        await drive_frame(ctx, dut, divisor, 0x5E)    # its falling edge is set before cycle 0
        await ctx.tick().repeat(2 * divisor)

    async def sink(ctx):
        ctx.set(dut.o_stream.ready, 1)
        await ctx.tick().repeat(3)
        edges = 0       # clock edges since the falling edge reached rx
        async for _, _, valid, payload in ctx.tick().sample(dut.o_stream.valid, dut.o_stream.payload):
            if valid:
                seen.append((edges, payload))
            edges += 1

    run_simulation(dut, [line], processes=[sink], deadline_cycles=20 * divisor + 100)
    assert seen == [(9 * divisor + divisor // 2 + 3, 0x5E)]
