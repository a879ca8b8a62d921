"""A UART on two DUT pins for cocotb, and a host-link transport over it.

:class:`PinTransport` has the ``write``/``read`` interface of
:class:`dynsparse.boards.protocol.SerialTransport`, so the host API that
talks to a real board (:class:`dynsparse.boards.protocol.HostLink`) runs
unchanged against the simulated board: it runs in a :func:`cocotb.task.bridge`
thread and each transport call resumes the simulation.
"""

import collections

import cocotb
from cocotb.task import bridge, resume
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from ...boards.protocol import HostLink
from .streams import TB


__all__ = ["UartPins", "PinTransport", "start_board", "in_thread", "collect"]


class UartPins:
    """Bit-banged 8N1 on ``rx`` (driven) and ``tx`` (monitored), ``divisor`` clock cycles per bit."""

    def __init__(self, clock, rx, tx, divisor):
        self.clock, self.rx, self.tx, self.divisor = clock, rx, tx, divisor
        self.rx.value = 1
        self.received = collections.deque()
        self.framing_errors = 0
        self._monitor = cocotb.start_soon(self._receive())

    async def send(self, data):
        for byte in data:
            for level in [0] + [(byte >> bit) & 1 for bit in range(8)] + [1]:
                self.rx.value = level
                await ClockCycles(self.clock, self.divisor)

    async def _receive(self):
        while True:
            await RisingEdge(self.clock)
            await ReadOnly()
            if self.tx.value != 0:
                continue
            await ClockCycles(self.clock, self.divisor // 2)
            byte = 0
            for bit in range(8):
                await ClockCycles(self.clock, self.divisor)
                await ReadOnly()
                byte |= int(self.tx.value) << bit
            await ClockCycles(self.clock, self.divisor)
            await ReadOnly()
            if self.tx.value != 1:
                self.framing_errors += 1
            self.received.append(byte)


class PinTransport:
    """``write(bytes)`` / ``read(n, timeout)`` over :class:`UartPins`, callable from a bridge thread.

    ``timeout`` is in seconds of simulated time at ``clk_freq``.
    """

    def __init__(self, pins, clk_freq):
        self.pins = pins
        self.clk_freq = clk_freq
        self.write = resume(self._write)
        self.read = resume(self._read)

    async def _write(self, data):
        await self.pins.send(bytes(data))

    async def _read(self, n, timeout):
        deadline = max(1, int(timeout * self.clk_freq))
        waited = 0
        while not self.pins.received and waited < deadline:
            await ClockCycles(self.pins.clock, 16)
            waited += 16
        data = bytearray()
        while self.pins.received and len(data) < n:
            data.append(self.pins.received.popleft())
        return bytes(data)


async def start_board(dut, board, *, timeout=0.05):
    """Clock, UART pins and reset for a board design (a :class:`~dynsparse.boards.top.LinkBoard`);
    returns ``(pins, transport, host)``, ``host`` the host API over the pins."""
    tb = TB(dut)
    pins = UartPins(tb.clock, dut.uart_rx, dut.uart_tx, board.divisor)
    await tb.reset()
    transport = PinTransport(pins, board.clk_freq)
    return pins, transport, HostLink(transport, timeout=timeout)


def in_thread(function, *args, **kwargs):
    """Run blocking host code (``HostLink``) in a bridge thread."""
    return bridge(function)(*args, **kwargs)


async def collect(transport, parser, count, *, seconds):
    """Parse device bytes until ``count`` items arrived or ``seconds`` of simulated time passed."""
    items = []
    step = max(1, int(0.001 * transport.clk_freq))
    deadline = int(seconds * transport.clk_freq)
    while len(items) < count and deadline > 0:
        items += parser.feed(await transport._read(1 << 16, 0.001))
        deadline -= step
    return items
