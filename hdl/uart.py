"""8N1 UART receiver and transmitter with byte streams.

One start bit (0), eight data bits LSB first, one stop bit (1), no parity.
The bit period is ``divisor`` clock cycles: ``divisor = round(f_clk / baud)``
(12 MHz / 115200 → 104).
"""

from amaranth.hdl import Cat, Module, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .frame import check_int


__all__ = ["UARTReceiver", "UARTTransmitter"]


def _check_divisor(divisor):
    return check_int("divisor", divisor, minimum=4)


class UARTReceiver(wiring.Component):
    """Bytes from an 8N1 serial line.

    The line passes through a two-flop synchroniser. A falling edge starts a
    frame; the start bit is sampled again at mid-bit and a glitch shorter than
    half a bit is ignored. Data bits and the stop bit are sampled at mid-bit.
    A stop bit that reads 0 is a framing error: the byte is dropped, ``error``
    pulses, and the receiver waits for the line to return high (so a break
    condition yields one error, not a stream of zero bytes).

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, at least 4.

    Members
    -------
    rx : In(1)
        The serial line (idle high); may be asynchronous to the clock.
    o_stream : Out(stream.Signature(unsigned(8)))
        Received bytes. A one-byte buffer holds a byte until it is taken.
    error : Out(1)
        Pulses for one cycle when a byte is dropped for a bad stop bit.
    overrun : Out(1)
        Pulses for one cycle when a byte completes while the previous one is
        still in the buffer; the new byte is dropped, the buffered one kept.

    Timing
    ------
    ``o_stream.valid`` rises ``9 · divisor + divisor // 2 + 3`` clock edges
    after the falling edge of the start bit reaches ``rx`` (two synchroniser
    flops, the middle of the stop bit, the output register).
    """

    def __init__(self, *, divisor):
        self._divisor = _check_divisor(divisor)
        super().__init__({
            "rx":       In(1, init=1),
            "o_stream": Out(stream.Signature(unsigned(8))),
            "error":    Out(1),
            "overrun":  Out(1),
        })

    divisor = property(lambda self: self._divisor)

    def elaborate(self, platform):
        m = Module()
        divisor = self._divisor

        # Two flops against metastability; both start high so reset does not look like a start bit.
        meta = Signal(init=1)
        line = Signal(init=1)
        m.d.sync += [meta.eq(self.rx), line.eq(meta)]

        timer = Signal(range(divisor))
        bit_index = Signal(range(8))
        shift = Signal(8)
        done = Signal()               # a byte with a good stop bit completes this cycle

        with m.If(self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)
        with m.If(done):
            with m.If(self.o_stream.valid & ~self.o_stream.ready):
                m.d.comb += self.overrun.eq(1)
            with m.Else():
                m.d.sync += [self.o_stream.valid.eq(1), self.o_stream.payload.eq(shift)]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(divisor // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer == 0):
                    with m.If(~line):
                        m.d.sync += [timer.eq(divisor - 1), bit_index.eq(0)]
                        m.next = "DATA"
                    with m.Else():
                        m.next = "IDLE"          # a glitch, not a start bit
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("DATA"):
                with m.If(timer == 0):
                    m.d.sync += [shift.eq(Cat(shift[1:], line)), timer.eq(divisor - 1),
                                 bit_index.eq(bit_index + 1)]
                    with m.If(bit_index == 7):
                        m.next = "STOP"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("STOP"):
                with m.If(timer == 0):
                    with m.If(line):
                        m.d.comb += done.eq(1)
                        m.next = "IDLE"
                    with m.Else():
                        m.d.comb += self.error.eq(1)
                        m.next = "BREAK"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("BREAK"):
                with m.If(line):
                    m.next = "IDLE"
        return m


class UARTTransmitter(wiring.Component):
    """Bytes onto an 8N1 serial line.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, at least 4.

    Members
    -------
    i_stream : In(stream.Signature(unsigned(8)))
        Bytes to send; one is taken when the previous stop bit has ended.
    tx : Out(1)
        The serial line, driven from a flip-flop; high when idle and after reset.

    Timing
    ------
    A byte taken at cycle ``t`` starts its start bit at ``t + 1``; the line is
    busy for ``10 · divisor`` cycles, and the next byte is taken in the last
    cycle of the stop bit, so back-to-back bytes have no idle gap.
    """

    def __init__(self, *, divisor):
        self._divisor = _check_divisor(divisor)
        super().__init__({
            "i_stream": In(stream.Signature(unsigned(8))),
            "tx":       Out(1, init=1),
        })

    divisor = property(lambda self: self._divisor)

    def elaborate(self, platform):
        m = Module()
        divisor = self._divisor

        # shift[0] drives the line: start bit, 8 data bits LSB first, stop bit.
        shift = Signal(10, init=1)
        bits_left = Signal(range(11))
        timer = Signal(range(divisor))
        m.d.comb += self.tx.eq(shift[0])

        last_cycle = (bits_left == 0) | ((bits_left == 1) & (timer == 0))
        m.d.comb += self.i_stream.ready.eq(last_cycle)
        with m.If(self.i_stream.valid & last_cycle):
            m.d.sync += [
                shift.eq(Cat(0, self.i_stream.payload, 1)),
                bits_left.eq(10),
                timer.eq(divisor - 1),
            ]
        with m.Elif(bits_left != 0):
            with m.If(timer == 0):
                m.d.sync += [
                    shift.eq(Cat(shift[1:], 1)),
                    bits_left.eq(bits_left - 1),
                    timer.eq(divisor - 1),
                ]
            with m.Else():
                m.d.sync += timer.eq(timer - 1)
        return m
