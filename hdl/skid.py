"""Stream buffering: a register slice (every signal between its two sides comes from a
flip-flop) and a block-RAM FIFO whose output comes from a flip-flop."""

from amaranth.hdl import Module, Mux, Shape, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out


__all__ = ["StreamRegister", "StreamFIFO"]


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


class StreamFIFO(wiring.Component):
    """First-in first-out queue of ``depth`` words in a block RAM, with a registered output.

    The word leaving on ``o_stream`` comes from a fabric register loaded straight from
    the memory's read data (no logic between them), so the memory's clock-to-output
    time, long on block RAMs without an output register (ECP5's ``DP16KD``: 5.8 ns),
    is the whole of that path. A word written into an empty queue is offered three
    cycles later; one word passes per cycle when nothing stalls. The queue holds
    ``depth + 2`` words (the memory, its read register and the output register).

    The memory is never read and written at the same address in the same cycle (a
    word is read only when the memory holds one, written only when it has room), so
    it carries Yosys' ``no_rw_check`` attribute: no read-during-write logic sits
    behind the read data.

    Parameters
    ----------
    shape : shape-castable
        Payload shape.
    depth : int
        Words held in the memory, at least 2.

    Members
    -------
    i_stream : In(stream.Signature(shape))
    o_stream : Out(stream.Signature(shape))
    """

    def __init__(self, shape, *, depth):
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 2:
            raise ValueError(f"FIFO depth must be an integer >= 2, not {depth!r}")
        self._shape = shape
        self._depth = depth
        super().__init__({
            "i_stream": In(stream.Signature(shape)),
            "o_stream": Out(stream.Signature(shape)),
        })

    depth    = property(lambda self: self._depth)
    capacity = property(lambda self: self._depth + 2)

    def elaborate(self, platform):
        m = Module()
        depth = self._depth
        width = Shape.cast(self._shape).width
        m.submodules.storage = storage = Memory(shape=unsigned(width), depth=depth, init=[],
                                                attrs={"no_rw_check": 1})
        wr = storage.write_port()
        rd = storage.read_port(domain="sync")

        def incr(pointer):
            if depth & (depth - 1) == 0:
                return (pointer + 1)[:len(pointer)]
            return Mux(pointer == depth - 1, 0, pointer + 1)

        produce  = Signal(range(depth))
        consume  = Signal(range(depth))
        count    = Signal(range(depth + 1))      # words in the memory
        full     = Signal()                      # count == depth
        nonempty = Signal()                      # count != 0
        staged   = Signal()                      # the read register holds a word
        out_data = Signal(width, reset_less=True)

        do_write = self.i_stream.valid & ~full
        load     = staged & (~self.o_stream.valid | self.o_stream.ready)
        do_read  = nonempty & (~staged | load)
        m.d.comb += [
            self.i_stream.ready.eq(~full),
            wr.addr.eq(produce),
            wr.data.eq(self.i_stream.payload),
            wr.en.eq(do_write),
            rd.addr.eq(consume),
            rd.en.eq(do_read),
            self.o_stream.payload.eq(out_data),
        ]
        with m.If(do_write):
            m.d.sync += produce.eq(incr(produce))
        with m.If(do_read):
            m.d.sync += [consume.eq(incr(consume)), staged.eq(1)]
        with m.Elif(load):
            m.d.sync += staged.eq(0)
        with m.If(load):
            m.d.sync += [out_data.eq(rd.data), self.o_stream.valid.eq(1)]
        with m.Elif(self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)
        with m.If(do_write & ~do_read):
            m.d.sync += [count.eq(count + 1), full.eq(count == depth - 1), nonempty.eq(1)]
        with m.Elif(do_read & ~do_write):
            m.d.sync += [count.eq(count - 1), full.eq(0), nonempty.eq(count != 1)]
        return m
