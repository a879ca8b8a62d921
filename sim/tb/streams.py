"""cocotb stream drivers and a testbench base for the generated Verilog.

Amaranth names a stream port's signals ``<port>__valid``, ``<port>__ready``
and ``<port>__payload`` (the payload flattened to one vector), the clock
``clk`` and the reset ``rst``. The drivers act on the settled values of each
cycle (sampled in ``ReadOnly``), so they behave the same on Icarus and
Verilator, and are paced by the stall patterns of :mod:`dynsparse.sim.stalls`.
"""

import json
import os

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from ..stalls import stall_pattern


__all__ = ["params", "TB", "StreamSource", "StreamSink"]


def params():
    """The block parameters the runner passed in ``DYNSPARSE_PARAMS``."""
    return json.loads(os.environ.get("DYNSPARSE_PARAMS", "{}"))


class StreamSource:
    """Drives ``<name>__valid``/``__payload`` from a list of flat payload words."""

    def __init__(self, dut, name, clock):
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.payload = getattr(dut, f"{name}__payload")
        self.clock = clock
        self.valid.value = 0
        self.sent = 0

    async def send(self, words, *, pattern="none", seed=0):
        allow = stall_pattern(pattern, seed=seed)
        for word in words:
            while not next(allow):
                self.valid.value = 0
                await RisingEdge(self.clock)
            self.valid.value = 1
            self.payload.value = int(word)
            while True:
                await ReadOnly()
                done = bool(self.ready.value)
                await RisingEdge(self.clock)
                if done:
                    break
            self.sent += 1
        self.valid.value = 0


class StreamSink:
    """Collects flat payload words from ``<name>__valid``/``__payload``, driving ``__ready``."""

    def __init__(self, dut, name, clock):
        self.valid = getattr(dut, f"{name}__valid")
        self.ready = getattr(dut, f"{name}__ready")
        self.payload = getattr(dut, f"{name}__payload")
        self.clock = clock
        self.ready.value = 0
        self.words = []

    async def receive(self, count, *, pattern="none", seed=0, timeout_cycles=1_000_000):
        """Receive ``count`` words; fail if they take more than ``timeout_cycles``."""
        allow = stall_pattern(pattern, seed=seed)
        received = []
        for cycle in range(timeout_cycles):
            if len(received) == count:
                break
            ready = next(allow)
            self.ready.value = int(ready)
            await ReadOnly()
            if ready and self.valid.value:
                received.append(int(self.payload.value))
            await RisingEdge(self.clock)
        else:
            raise AssertionError(f"{self.payload._name}: received {len(received)} of {count} "
                                 f"transfers in {timeout_cycles} cycles")
        self.ready.value = 0
        self.words.extend(received)
        return received

    async def expect_idle(self, cycles):
        """Fail if anything is offered in the next ``cycles`` cycles (with ``ready`` high)."""
        self.ready.value = 1
        for _ in range(cycles):
            await ReadOnly()
            assert not self.valid.value, f"{self.payload._name}: unexpected transfer"
            await RisingEdge(self.clock)
        self.ready.value = 0


class TB:
    """Clock (10 ns), reset and helpers around the DUT; one per cocotb test."""

    def __init__(self, dut):
        self.dut = dut
        self.clock = dut.clk
        cocotb.start_soon(Clock(self.clock, 10, unit="ns").start())

    async def reset(self, cycles=3):
        self.dut.rst.value = 1
        await ClockCycles(self.clock, cycles)
        self.dut.rst.value = 0
        await RisingEdge(self.clock)

    async def cycles(self, count):
        await ClockCycles(self.clock, count)
