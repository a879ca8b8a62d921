"""Anisotropic pooling with a run-time window (seed 003): ``AnisoPool``.

A map of ``H`` rows by ``L`` positions (one feature channel of the encoding
loop, values in [0, 127] after ReLU) is pooled, stride 1, to a map of the same
size. The window is ``k_h`` rows by ``k_l`` positions, set when a map starts
from the scale codes of the scale predictor:

    k = clamp((base · scale + 32) >> 6, k_min, k_max)       (scale UQ2.6, 64 = 1.0)

Output ``(y, x)`` reads rows ``y − (k_h − 1)//2 … y + k_h//2`` and positions
``x − (k_l − 1)//2 … x + k_l//2``; elements outside the map are 0. *Average*
divides the window sum ``n`` by the full area ``d = k_h · k_l`` with round
half up, without a divider: ``(n · R[d] + 2^(S[d] − 1)) >> S[d]``, where the
table ``(R, S)`` (:func:`dynsparse.golden.spn.reciprocal_table`) makes that
equal to ``floor((2n + d) / (2d))`` for every possible ``n``. *Max* takes the
largest element (the window always holds its own centre, so the zeros outside
change nothing). Golden: :func:`dynsparse.golden.spn.aniso_pool_int`.
"""

from amaranth.hdl import Array, C, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..golden.spn import ACTIVATION_MAX, SCALE_FRACTION_BITS, reciprocal_table
from .frame import check_int, frame_layout
from .layers import MapLoader


__all__ = ["AnisoPool", "PoolMode", "AnisoPoolErrors"]


class PoolMode(enum.Enum, shape=1):
    AVERAGE = 0
    MAX = 1


class AnisoPoolErrors(data.Struct):
    """Sticky error flags of :class:`AnisoPool`."""
    negative: 1     # an input value below 0 (taken as 0)
    misframed: 1    # a map whose ``last`` is not at its ``H · L``-th value, or values outside a map
    bad_size: 1     # ``height``/``length`` out of range at a map's first value


class AnisoPool(wiring.Component):
    """Stride-1, same-size pooling of one ``H × L`` map with a window set at run time.

    Parameters
    ----------
    max_height, max_length : int
        Largest map: rows 1 … 64, positions 1 … 256.
    base_h, base_l : int
        Base window height and length, 1 … 16: the window at scale 1.0.
    k_h_min, k_h_max, k_l_min, k_l_max : int
        Clamp range of the window height and length: ``1 <= min <= max <= 16``.

    Members
    -------
    i_stream : In(stream.Signature(frame_layout(signed(8))))
        One map, row by row (row 0 positions 0 … L − 1 first); ``first`` on
        its first value, ``last`` on its last.
    o_stream : Out(stream.Signature(frame_layout(signed(8))))
        The pooled map, same order and markers; values in [0, 127].
    mode : In(PoolMode)
        ``AVERAGE`` or ``MAX``; sampled with a map's first value.
    scale_h, scale_l : In(unsigned(8))
        UQ2.6 scale codes (64 = 1.0); sampled with a map's first value.
    height, length : In(unsigned)
        The map's size, 1 … ``max_height`` / ``max_length``; sampled with a
        map's first value.
    k_h, k_l : Out(unsigned)
        The window of the map being pooled (or last pooled).
    errors : Out(AnisoPoolErrors)
        Sticky, cleared by ``clear_errors``. A map with a framing or size
        error is dropped whole; the next map that starts with ``first`` is exact.
    busy : Out(1)
        A map is being loaded, pooled or given out.

    Timing: a map is taken at one value a cycle, pooled along its positions
    (``H · L · k_l`` cycles, one memory read a cycle) and along its rows
    (``H · L · k_h`` cycles), each result offered as it is ready. With the
    output always taken a map of ``H · L`` values takes
    ``map_cycles(height, length, k_h, k_l)`` cycles from its first value
    accepted to its last result offered; the next map is accepted once the
    last result has been offered.
    """

    #: Cycles between the last value accepted and the first position-pass read, idle
    #: cycles between the passes, and registers from the last row-pass read to the
    #: output (read, accumulator, operands, product, output).
    _START, _TURN, _STAGES = 1, 2, 5

    def __init__(self, *, max_height=8, max_length=64, base_h=3, base_l=5, k_h_min=1, k_h_max=5,
                 k_l_min=1, k_l_max=9):
        self._max_height = check_int("maximum height", max_height, minimum=1, maximum=64)
        self._max_length = check_int("maximum length", max_length, minimum=1, maximum=256)
        self._base_h = check_int("base pooling height", base_h, minimum=1, maximum=16)
        self._base_l = check_int("base pooling length", base_l, minimum=1, maximum=16)
        k_h_min = check_int("smallest pooling height", k_h_min, minimum=1, maximum=16)
        k_h_max = check_int("largest pooling height", k_h_max, minimum=k_h_min, maximum=16)
        k_l_min = check_int("smallest pooling length", k_l_min, minimum=1, maximum=16)
        k_l_max = check_int("largest pooling length", k_l_max, minimum=k_l_min, maximum=16)
        self._k_h_range, self._k_l_range = (k_h_min, k_h_max), (k_l_min, k_l_max)
        super().__init__({
            "i_stream": In(stream.Signature(frame_layout(signed(8)))),
            "o_stream": Out(stream.Signature(frame_layout(signed(8)))),
            "mode":     In(PoolMode),
            "scale_h":  In(unsigned(8)),
            "scale_l":  In(unsigned(8)),
            "height":   In(range(max_height + 1), init=max_height),
            "length":   In(range(max_length + 1), init=max_length),
            "k_h":      Out(range(k_h_max + 1)),
            "k_l":      Out(range(k_l_max + 1)),
            "errors":   Out(AnisoPoolErrors),
            "clear_errors": In(1),
            "busy":     Out(1),
        })

    max_height = property(lambda self: self._max_height)
    max_length = property(lambda self: self._max_length)
    base_h     = property(lambda self: self._base_h)
    base_l     = property(lambda self: self._base_l)
    k_h_range  = property(lambda self: self._k_h_range, doc="``(k_h_min, k_h_max)``")
    k_l_range  = property(lambda self: self._k_l_range, doc="``(k_l_min, k_l_max)``")

    def kernel_size(self, scale_code, axis):
        """The window size (``axis`` ``"h"`` or ``"l"``) for a UQ2.6 ``scale_code``."""
        base, (low, high) = ((self._base_h, self._k_h_range) if axis == "h" else
                             (self._base_l, self._k_l_range))
        return min(max((base * scale_code + (1 << (SCALE_FRACTION_BITS - 1))) >> SCALE_FRACTION_BITS, low), high)

    def map_cycles(self, height, length, k_h, k_l):
        """Cycles from a map's first value accepted to its last result offered (output always
        taken), in either mode: ``H·L·(1 + k_l + k_h) + 7``."""
        values = height * length
        return values + self._START + values * k_l + self._TURN + values * k_h + self._STAGES - 1

    def elaborate(self, platform):
        m = Module()
        max_h, max_l = self._max_height, self._max_length
        (kh_lo, kh_hi), (kl_lo, kl_hi) = self._k_h_range, self._k_l_range
        x_bits = max(1, (max_l - 1).bit_length())
        y_bits = max(1, (max_h - 1).bit_length())
        depth = max_h << x_bits
        sum_max = ACTIVATION_MAX * kh_hi * kl_hi
        row_max = ACTIVATION_MAX * kl_hi

        # -------- the window of a map: from the scale codes at its first value ---------------------
        def size(code, base, low, high):
            raw = (code * base + (1 << (SCALE_FRACTION_BITS - 1))) >> SCALE_FRACTION_BITS
            return Mux(raw < low, low, Mux(raw > high, high, raw))

        # The reciprocal of every area d = k_h · k_l, in a table indexed by (k_h, k_l).
        multipliers, shifts = reciprocal_table(kh_hi * kl_hi)
        mult_bits = max(1, int(max(multipliers)).bit_length())
        shift_bits = max(1, int(max(shifts)).bit_length())
        kl_bits = kl_hi.bit_length()
        table = [0] * ((kh_hi + 1) << kl_bits)
        for h in range(kh_lo, kh_hi + 1):
            for l in range(kl_lo, kl_hi + 1):
                table[(h << kl_bits) | l] = int(multipliers[h * l]) | (int(shifts[h * l]) << mult_bits)
        recip = Signal(mult_bits + shift_bits)
        m.d.comb += recip.eq(Array(C(v, mult_bits + shift_bits) for v in table)[Cat(self.k_l, self.k_h)])
        multiplier = Signal(mult_bits)
        shift = Signal(shift_bits)
        mode = Signal(PoolMode)

        # -------- errors ------------------------------------------------------------------------
        raised = Signal(AnisoPoolErrors)
        with m.If(self.clear_errors):
            m.d.sync += self.errors.eq(raised)
        with m.Else():
            m.d.sync += self.errors.eq(self.errors.as_value() | raised.as_value())

        # -------- memories: the map (M) and the position sums (R) ----------------------------------
        values = Memory(shape=unsigned(7), depth=depth, init=[])
        rows = Memory(shape=range(row_max + 1), depth=depth, init=[])
        m.submodules.values = values
        m.submodules.rows = rows
        values_w = values.write_port()
        values_r = values.read_port(domain="sync")
        rows_w = rows.write_port()
        rows_r = rows.read_port(domain="sync")

        # -------- load ------------------------------------------------------------------------------
        payload = self.i_stream.payload
        start_pass = Signal()
        size_ok = Signal()
        m.d.comb += size_ok.eq((self.height != 0) & (self.height <= max_h) &
                               (self.length != 0) & (self.length <= max_l))
        idle = Signal(init=1)                  # nothing to pool or give out: values are taken
        loader = MapLoader(channels=1, max_height=max_h, max_length=max_l, channel_bits=0)
        loader.build(m, i_stream=self.i_stream, enable=idle, size_ok=size_ok, height=self.height,
                     length=self.length)
        height_m1, length_m1 = loader.height_m1, loader.length_m1
        m.d.comb += [
            values_w.addr.eq(loader.addr),
            values_w.data.eq(Mux(payload.data[-1], 0, payload.data[:7])),
            values_w.en.eq(loader.write),
            start_pass.eq(loader.done),
            raised.misframed.eq(loader.misframed),
            raised.bad_size.eq(loader.bad_size),
        ]
        with m.If(self.i_stream.valid & idle):
            m.d.comb += raised.negative.eq(payload.data[-1])
        with m.If(loader.begin):
            m.d.sync += [
                self.k_h.eq(size(self.scale_h, self._base_h, kh_lo, kh_hi)),
                self.k_l.eq(size(self.scale_l, self._base_l, kl_lo, kl_hi)),
                mode.eq(self.mode),
            ]
        with m.If(loader.done):
            m.d.sync += idle.eq(0)

        # -------- the passes: along positions (M → R), then along rows (R → output) -------------------
        # Counters (y, x, j) issue one read a cycle; j walks the window. The read data, its
        # tags and the accumulator follow one and two cycles later. The row pass stops, all
        # stages together, while the output register is full and not taken.
        advance = Signal()
        issuing = Signal()
        second = Signal()                      # the row pass
        py, px = Signal(y_bits), Signal(x_bits)
        pj = Signal(range(16))
        # Set when a pass starts: its window size less one, the elements before the centre
        # and the last coordinate along it. ``offset`` is the coordinate read, kept in a
        # register: position x − before + j (first pass) or row y − before + j (second).
        k_m1 = Signal(4)
        before = Signal(3)
        limit = Signal(max(x_bits, y_bits))
        offset = Signal(signed(max(x_bits, y_bits) + 2))
        k_now = Mux(second, self.k_h, self.k_l)
        inside = (offset >= 0) & (offset <= limit)
        m.d.comb += [
            values_r.addr.eq(Cat(offset[:x_bits], py)),
            rows_r.addr.eq(Cat(px, offset[:y_bits])),
            values_r.en.eq(advance),
            rows_r.en.eq(advance),
        ]
        # stage 1: the read is in flight
        s1_valid, s1_inside, s1_first, s1_last = Signal(), Signal(), Signal(), Signal()
        s1_y, s1_x = Signal(y_bits), Signal(x_bits)
        s1_second, s1_final = Signal(), Signal()
        # stage 2: the accumulator holds the window's sum (or maximum) so far
        acc = Signal(range(sum_max + 1))
        s2_valid, s2_second, s2_final = Signal(), Signal(), Signal()
        s2_y, s2_x = Signal(y_bits), Signal(x_bits)
        read = Mux(s1_second, rows_r.data, values_r.data)
        element = Mux(s1_inside, read, 0)
        base = Mux(s1_first, 0, acc)
        total = Mux(mode == PoolMode.MAX, Mux(element > base, element, base), base + element)

        o_ready = ~self.o_stream.valid | self.o_stream.ready
        stages_busy = Signal()
        m.d.comb += advance.eq(o_ready | ~stages_busy)

        last_j = pj == k_m1
        row_end = px == length_m1
        pass_end = last_j & row_end & (py == height_m1)
        with m.If(start_pass):
            m.d.sync += [issuing.eq(0), second.eq(0), px.eq(0), py.eq(0), pj.eq(0)]
        turn = Signal(range(self._START + self._TURN + 1))
        # issuing starts _START cycles after the last value (the write must land first)
        with m.If(start_pass):
            m.d.sync += turn.eq(self._START)
        with m.Elif(turn != 0):
            m.d.sync += turn.eq(turn - 1)
            with m.If(turn == 1):
                m.d.sync += [issuing.eq(1), k_m1.eq(k_now - 1), before.eq((k_now - 1) >> 1),
                             offset.eq(-((k_now - 1) >> 1)), limit.eq(Mux(second, height_m1, length_m1))]
        with m.If(issuing & advance):
            with m.If(last_j):
                m.d.sync += pj.eq(0)
                with m.If(row_end):
                    m.d.sync += px.eq(0)
                    with m.If(py == height_m1):
                        m.d.sync += [py.eq(0), issuing.eq(0)]
                        with m.If(~second):
                            m.d.sync += [second.eq(1), turn.eq(self._TURN)]
                    with m.Else():
                        m.d.sync += py.eq(py + 1)
                        # the next element's first read: row y + 1 − before in the row pass
                        m.d.sync += offset.eq(Mux(second, py + 1, 0) - before)
                with m.Else():
                    m.d.sync += [px.eq(px + 1), offset.eq(Mux(second, py, px + 1) - before)]
            with m.Else():
                m.d.sync += [pj.eq(pj + 1), offset.eq(offset + 1)]
        with m.If(advance):
            m.d.sync += [
                s1_valid.eq(issuing), s1_inside.eq(inside), s1_first.eq(pj == 0), s1_last.eq(last_j),
                s1_y.eq(py), s1_x.eq(px), s1_second.eq(second), s1_final.eq(pass_end & second),
                s2_valid.eq(s1_valid & s1_last), s2_second.eq(s1_second), s2_final.eq(s1_final),
                s2_y.eq(s1_y), s2_x.eq(s1_x),
            ]
            with m.If(s1_valid):
                m.d.sync += acc.eq(total)
        # the first pass writes its sums into R
        m.d.comb += [
            rows_w.addr.eq(Cat(s2_x, s2_y)),
            rows_w.data.eq(acc),
            rows_w.en.eq(s2_valid & ~s2_second),
        ]

        # -------- the average without a divider, then the output ---------------------------------------
        # stage 3: operands; stage 4: product; stage 5: rounded, shifted → output register
        s3_valid, s3_final, s3_max = Signal(), Signal(), Signal()
        s3_sum = Signal(range(sum_max + 1))
        s4_valid, s4_final, s4_max = Signal(), Signal(), Signal()
        s4_product = Signal((sum_max * ((1 << mult_bits) - 1)).bit_length() + 1)
        s4_sum = Signal(7)
        with m.If(turn != 0):
            m.d.sync += [multiplier.eq(recip[:mult_bits]), shift.eq(recip[mult_bits:])]
        with m.If(advance):
            m.d.sync += [
                s3_valid.eq(s2_valid & s2_second), s3_final.eq(s2_final), s3_max.eq(mode == PoolMode.MAX),
                s3_sum.eq(acc),
                s4_valid.eq(s3_valid), s4_final.eq(s3_final), s4_max.eq(s3_max),
                s4_product.eq(s3_sum * multiplier + (C(1, 1) << shift)[1:]),
                s4_sum.eq(s3_sum[:7]),
            ]
        m.d.comb += stages_busy.eq(s4_valid)
        o_payload = self.o_stream.payload
        first_out = Signal(init=1)
        with m.If(s4_valid & o_ready):
            m.d.sync += [
                self.o_stream.valid.eq(1),
                o_payload.data.eq(Mux(s4_max, s4_sum, (s4_product >> shift)[:7])),
                o_payload.first.eq(first_out),
                o_payload.last.eq(s4_final),
                first_out.eq(s4_final),
            ]
            with m.If(s4_final):
                m.d.sync += idle.eq(1)
        with m.Elif(self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)

        m.d.comb += self.busy.eq(~idle | loader.loading | self.o_stream.valid)
        return m
