"""A register slice for streams: every signal between its two sides comes from a flip-flop."""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out


__all__ = ["StreamRegister"]


class StreamRegister(wiring.Component):
    """Full-throughput register slice (a skid buffer) for a stream of ``shape``.

    ``o_stream.valid``/``payload`` and ``i_stream.ready`` are registers, so no
    combinational path crosses the slice in either direction; one transfer per
    cycle passes when nothing stalls, with one cycle of latency. When the
    output stalls, the word that was in flight waits in a second register.

    Parameters
    ----------
    shape : shape-castable
        Payload shape.

    Members
    -------
    i_stream : In(stream.Signature(shape))
    o_stream : Out(stream.Signature(shape))
    """

    def __init__(self, shape):
        super().__init__({
            "i_stream": In(stream.Signature(shape)),
            "o_stream": Out(stream.Signature(shape)),
        })
        self._shape = shape

    def elaborate(self, platform):
        m = Module()
        spare = Signal.like(self.o_stream.payload)
        spare_valid = Signal()
        m.d.comb += self.i_stream.ready.eq(~spare_valid)
        with m.If(self.o_stream.ready | ~self.o_stream.valid):
            with m.If(spare_valid):
                m.d.sync += [self.o_stream.payload.eq(spare), self.o_stream.valid.eq(1),
                             spare_valid.eq(0)]
            with m.Else():
                m.d.sync += [self.o_stream.payload.eq(self.i_stream.payload),
                             self.o_stream.valid.eq(self.i_stream.valid)]
        with m.Elif(self.i_stream.valid & ~spare_valid):
            m.d.sync += [spare.eq(self.i_stream.payload), spare_valid.eq(1)]
        return m
