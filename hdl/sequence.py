"""Windows of reach ``r`` along a sequence: the 1-D mode of the sampled-offset heads."""

from amaranth.hdl import Array, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .frame import check_int, check_shape, pixel_layout
from .window import PadMode, WindowErrors, window_layout


__all__ = ["SequenceWindow"]


class SequenceWindow(wiring.Component):
    """A ``1 × K`` window around every position of a sequence, in the ``K × K`` window layout.

    A sequence of ``length`` positions enters one position (``channels``
    values) per transfer, its first marked ``first`` and its last ``last``.
    For every position, in order, one window leaves: row ``r = K // 2`` of
    the :func:`~dynsparse.hdl.window.window_layout` holds positions
    ``p − r … p + r``, those outside the sequence filled by ``pad_mode``
    (``ZERO``, ``REPLICATE``: ``aaa|abcd|ddd``, ``REFLECT``: ``dcb|abcd|cba``)
    and flagged in ``pad``; every other row is 0 and flagged as padding.
    ``x`` is the position, ``y`` is 0. No line buffer: a shift register of
    ``K`` positions. It replaces :class:`~dynsparse.hdl.window.WindowGenerator`
    for 1-D heads, whose taps all read row ``r``.

    Parameters
    ----------
    kernel_size : int
        ``K``, odd, 1 to 15.
    channels : int
        Values per position, >= 1.
    max_length : int
        Longest sequence, at least :attr:`min_length` (``r + 1``).
    pixel_shape : shape
        ``unsigned(8)`` or ``signed(8)`` (peptide codes, feature maps).

    Members
    -------
    i_stream : In(stream.Signature(pixel_layout))
        Positions in order; ``data[c]``, ``first``, ``last``.
    o_stream : Out(stream.Signature(window_layout(..., max_width=max_length, max_height=1)))
        One window per position.
    length : In(unsigned)
        Sequence length, sampled with a sequence's ``first`` position; in
        ``[min_length, max_length]`` or the sequence is dropped (``bad_size``).
    pad_mode : In(PadMode)
        Sampled with ``length``.
    errors : Out(WindowErrors), clear_errors : In(1)
        As :class:`~dynsparse.hdl.window.WindowGenerator`: ``dropped`` (a position
        outside a sequence without ``first``, discarded), ``early_first`` (the
        sequence is completed with zeros, then the marked position starts the
        next), ``early_last`` (the rest is zeros), ``missing_last`` (the sequence
        ends at ``length`` anyway), ``bad_size`` (discarded up to ``last`` or the
        next ``first``; no window).
    busy : Out(1)
        A sequence is being received or its last windows are being given out.

    Timing
    ------
    One position a cycle in; the window of position ``p`` is offered in the
    cycle after position ``p + r`` is accepted (after the last position, the
    last ``r`` windows follow one a cycle without input): ``length + r``
    cycles a sequence when nothing stalls.

    Raises
    ------
    TypeError, ValueError
        On a bad parameter; the message names the value.
    """

    def __init__(self, *, kernel_size=3, channels=1, max_length=64, pixel_shape=unsigned(8)):
        self._kernel_size = check_int("kernel size", kernel_size, minimum=1, maximum=15, odd=True)
        self._channels = check_int("channel count", channels, minimum=1)
        self._max_length = check_int("maximum length", max_length, minimum=kernel_size // 2 + 1, maximum=65536)
        self._pixel_shape = check_shape("pixel shape", pixel_shape)
        super().__init__({
            "i_stream": In(stream.Signature(pixel_layout(pixel_shape=pixel_shape, channels=channels))),
            "o_stream": Out(stream.Signature(window_layout(kernel_size=kernel_size, channels=channels,
                                                           pixel_shape=pixel_shape, max_width=max_length,
                                                           max_height=1))),
            "length": In(range(max_length + 1), init=max_length),
            "pad_mode": In(PadMode),
            "errors": Out(WindowErrors),
            "clear_errors": In(1),
            "busy": Out(1),
        })

    kernel_size = property(lambda self: self._kernel_size)
    channels    = property(lambda self: self._channels)
    max_length  = property(lambda self: self._max_length)
    radius      = property(lambda self: self._kernel_size // 2)
    min_length  = property(lambda self: self._kernel_size // 2 + 1, doc="Shortest sequence: ``r + 1``.")

    def sequence_cycles(self, length):
        """Cycles from a sequence's first position accepted to its last window offered, no stalls."""
        return length + self.radius

    def elaborate(self, platform):
        m = Module()
        k, r = self._kernel_size, self.radius
        i, o = self.i_stream, self.o_stream
        sample_shape = i.payload.data.shape()

        # Shift register: shift[0] holds the newest position.
        shift = [Signal(sample_shape, name=f"shift_{j}") for j in range(k)]
        length = Signal.like(self.length)
        mode = Signal(PadMode)
        in_frame = Signal()          # positions of a sequence still to come
        discarding = Signal()        # a bad-size sequence is being dropped
        filling = Signal()           # the rest of the sequence is zeros
        received = Signal(range(self._max_length + 1))
        flushing = Signal()          # the last r windows, without input
        center = Signal(range(self._max_length + 1))     # position of the next window
        edge_e = Signal(range(r + 1))                    # positions received beyond the window's centre

        can = ~o.valid | o.ready
        with m.If(o.ready):
            m.d.sync += o.valid.eq(0)

        raised = Signal(WindowErrors)
        with m.If(self.clear_errors):
            m.d.sync += self.errors.eq(raised)
        with m.Else():
            m.d.sync += self.errors.eq(self.errors.as_value() | raised.as_value())

        # One step a cycle: take a sample (an input position, or a zero when filling) and emit the
        # window it completes, or emit a flush window.
        sample = Signal(sample_shape)
        take = Signal()              # a sample enters the shift register
        consume = Signal()           # the input position is accepted
        size_ok = (self.length >= self.min_length) & (self.length <= self._max_length)
        m.d.comb += i.ready.eq(0)
        last_sample = Signal()
        start = Signal()             # a good sequence's first position is taken as its sample 0
        base = Mux(start, 0, received)
        len_now = Mux(start, self.length, length)
        with m.If(can & ~flushing):
            with m.If(in_frame):
                with m.If(filling):
                    m.d.comb += [take.eq(1), sample.eq(0)]
                with m.Elif(i.valid):
                    with m.If(i.payload.first):
                        m.d.comb += [raised.early_first.eq(1), take.eq(1), sample.eq(0)]
                        m.d.sync += filling.eq(1)
                    with m.Else():
                        m.d.comb += [take.eq(1), consume.eq(1), sample.eq(i.payload.data)]
                        with m.If(i.payload.last & (received + 1 < length)):
                            m.d.comb += raised.early_last.eq(1)
                            m.d.sync += filling.eq(1)
                        with m.If(~i.payload.last & (received + 1 == length)):
                            m.d.comb += raised.missing_last.eq(1)
            with m.Elif(discarding):
                with m.If(i.valid):
                    with m.If(i.payload.first):
                        m.d.sync += discarding.eq(0)
                    with m.Else():
                        m.d.comb += consume.eq(1)
                        with m.If(i.payload.last):
                            m.d.sync += discarding.eq(0)
            with m.Elif(i.valid):
                with m.If(i.payload.first):
                    with m.If(size_ok):
                        m.d.comb += [start.eq(1), take.eq(1), consume.eq(1), sample.eq(i.payload.data)]
                        m.d.sync += [length.eq(self.length), mode.eq(self.pad_mode), in_frame.eq(1),
                                     center.eq(0), filling.eq(0)]
                        with m.If(i.payload.last & (self.length > 1)):
                            m.d.comb += raised.early_last.eq(1)
                            m.d.sync += filling.eq(1)
                        with m.If(~i.payload.last & (self.length == 1)):
                            m.d.comb += raised.missing_last.eq(1)
                    with m.Else():
                        m.d.comb += [raised.bad_size.eq(1), consume.eq(1)]
                        m.d.sync += discarding.eq(~i.payload.last)
                with m.Else():
                    m.d.comb += [raised.dropped.eq(1), consume.eq(1)]
        m.d.comb += i.ready.eq(consume)

        m.d.comb += last_sample.eq(take & (base + 1 == len_now))
        with m.If(take):
            m.d.sync += [shift[0].eq(sample)] + [shift[j].eq(shift[j - 1]) for j in range(1, k)]
            m.d.sync += received.eq(base + 1)
            with m.If(last_sample):
                m.d.sync += [in_frame.eq(0), filling.eq(0)]
                if r:
                    m.d.sync += [flushing.eq(1), edge_e.eq(r - 1)]

        # The window around `center`: after a sample, q = center + r (edge_e = r); while
        # flushing, q = length − 1 (edge_e = length − 1 − center, from r − 1 down to 0).
        emit = Signal()
        e = Signal(range(r + 1))
        with m.If(take & (base >= r)):
            m.d.comb += [emit.eq(1), e.eq(r)]
        with m.If(can & flushing):
            m.d.comb += [emit.eq(1), e.eq(edge_e)]
            with m.If(edge_e == 0):
                m.d.sync += flushing.eq(0)
            with m.Else():
                m.d.sync += edge_e.eq(edge_e - 1)
        # the shift register as it is after this cycle's sample
        now = [Mux(take, sample, shift[0])] + [Mux(take, shift[j - 1], shift[j]) for j in range(1, k)]
        now_array = Array(now)
        left = Signal(range(r + 1))       # min(center, r): how far the window reaches left of the sequence
        m.d.comb += left.eq(Mux(center < r, center, r))
        window = o.payload
        with m.If(emit):
            m.d.sync += [o.valid.eq(1), center.eq(center + 1),
                         window.x.eq(center), window.y.eq(0),
                         window.first.eq(center == 0), window.last.eq(center + 1 == len_now)]
            for dy in range(k):
                for dx in range(k):
                    if dy != r:
                        m.d.sync += [window.data[dy][dx].eq(0), window.pad[dy][dx].eq(1)]
            for dx in range(k):
                off = dx - r
                inside = Signal(name=f"inside_{dx}")
                index = Signal(range(2 * r + 1), name=f"index_{dx}")
                zero = Signal(name=f"zero_{dx}")
                outside_left = (left < -off) if off < 0 else False
                outside_right = (e < off) if off > 0 else False
                m.d.comb += [inside.eq(1), index.eq(e - off), zero.eq(0)]
                if off < 0:
                    with m.If(outside_left):
                        m.d.comb += inside.eq(0)
                        with m.Switch(mode):
                            with m.Case(PadMode.REPLICATE):
                                m.d.comb += index.eq(left + e)               # position 0
                            with m.Case(PadMode.REFLECT):
                                m.d.comb += index.eq(e + 2 * left + off)      # position −(p + off)
                            with m.Default():
                                m.d.comb += zero.eq(1)
                if off > 0:
                    with m.If(outside_right):
                        m.d.comb += inside.eq(0)
                        with m.Switch(mode):
                            with m.Case(PadMode.REPLICATE):
                                m.d.comb += index.eq(0)                      # position length − 1
                            with m.Case(PadMode.REFLECT):
                                m.d.comb += index.eq(off - e)                # position 2(length−1) − (p + off)
                            with m.Default():
                                m.d.comb += zero.eq(1)
                m.d.sync += [window.data[r][dx].eq(Mux(zero, 0, now_array[index])),
                             window.pad[r][dx].eq(~inside)]
        with m.If(emit & (center + 1 == len_now)):
            m.d.sync += center.eq(0)

        m.d.comb += self.busy.eq(in_frame | flushing | discarding | o.valid)
        return m

