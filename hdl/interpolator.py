"""Interpolator: rebuild the entries a weight stream dropped (zero, linear, learned), bit-exact,
one weight per clock."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..golden.sparsify import LEARNED_OFFSETS
from ..golden.weightstream import MAX_ENTRIES
from .frame import check_int
from .maskdecoder import tensor_layout


__all__ = ["weight_layout", "Interpolator"]

#: Linear rule's neighbours, in the order of the slots that read them: left, right, up, down.
LINEAR_OFFSETS = ((0, -1), (0, 1), (-1, 0), (1, 0))

#: Code of a dropped entry in the line buffers and the window: a sent value is never −128
#: (the decoder rejects such a stream with ``BAD_VALUE``), so 8 bits carry value and mask bit.
DROPPED = -128


def weight_layout(max_entries):
    """One rebuilt weight: its value, its flat index (matrix view), frame marks."""
    return data.StructLayout({"data": signed(8), "index": range(max_entries), "first": 1, "last": 1})


def booth_product(m, coefficient, value):
    """``coefficient · value`` (both signed 8-bit) as LUT logic, no DSP, less the correction
    returned with it: radix-4 Booth digits of ``value`` (−2 … 2) select 0, ±c or ±2c; a
    negative partial product is ``~(d·c)`` plus a 1 at its weight. The 1s of the three low
    digits fill bits of the partial products that are 0; the top digit's 1 (weight 64) is
    returned as ``negative``, for the caller to add (counted over all products at once).
    Two-operand adds into kept wires, so that Yosys maps each to a carry chain instead of
    merging them into one wide adder of LUTs. Returns ``(product, negative)``;
    ``coefficient · value = product + 64·negative``."""
    bits = Cat(Const(0, 1), value.as_unsigned())
    terms, negative = [], []
    for digit in range(4):
        low, mid, high = bits[2 * digit], bits[2 * digit + 1], bits[2 * digit + 2]
        one = low ^ mid
        two = (high & ~mid & ~low) | (~high & mid & low)
        magnitude = Mux(one, coefficient, Mux(two, coefficient << 1, 0)).as_signed()
        term = Signal(signed(10), attrs={"keep": 1})
        m.d.comb += term.eq(Mux(high, ~magnitude, magnitude))
        terms.append(term)
        negative.append(high)
    low_pair = Signal(signed(13), attrs={"keep": 1})
    high_pair = Signal(signed(16), attrs={"keep": 1})
    product = Signal(signed(16), attrs={"keep": 1})
    m.d.comb += [
        low_pair.eq(terms[0] + Cat(negative[0], Const(0, 1), terms[1]).as_signed()),
        high_pair.eq(Cat(Const(0, 2), negative[1], Const(0, 1), terms[2]).as_signed()
                     + Cat(Const(0, 4), negative[2], Const(0, 1), terms[3]).as_signed()),
        product.eq(low_pair + high_pair),
    ]
    return product, negative[3]


def adder_tree(m, operands):
    """Sum of ``operands`` as a tree of two-operand 19-bit adds (carry chains)."""
    level = list(operands)
    while len(level) > 1:
        pairs = []
        for a, b in zip(level[0::2], level[1::2]):
            pair = Signal(signed(19), attrs={"keep": 1})
            m.d.comb += pair.eq(a + b)
            pairs.append(pair)
        level = pairs + level[len(pairs) * 2:]
    return level[0]


class Interpolator(wiring.Component):
    """Streams every weight of the decoder's good bank in flat order, dropped ones rebuilt,
    one weight per clock.

    Bit-exact with :func:`dynsparse.golden.sparsify.interpolate` (``docs/weightstream.md``,
    *Interpolation*): sent entries pass unchanged; a dropped entry is 0 (``zero``), the
    rounded mean of its sent left/right neighbours, else of its up/down neighbours, else 0
    (``linear``), or ``clamp((Σ c_j·v_j + 2^(s−1)) >> s, −127, 127)`` over its eight
    neighbours with dropped or off-plane ones as 0 (``learned``). Neighbours never cross a
    plane: a K × K kernel of a 4-D tensor, or the whole matrix.

    The planes, stacked, are one raster of rows ``W`` entries wide. The block reads it once,
    in flat order, one entry per cycle through the decoder's read port (``rd_addr`` →
    ``rd_data``/``rd_sent`` one cycle later), and keeps the two rows above the entry being
    read in a line buffer (:attr:`line_entries` words of two 8-bit codes, −128 for a dropped
    entry), so a 3 × 3 window of codes slides over the raster: an entry is rebuilt when the
    entry ``W + 1`` after it has been read (for planes of one row, the next entry), with all
    its neighbours at hand; neighbours outside its plane (another plane's rows, or past a
    row's ends) are masked by the entry's position ``(y, x)``, which the block counts. The
    learned rule's eight products are Booth-coded LUT logic (no DSP), pipelined: the first
    weight leaves :meth:`fill_cycles` after ``start``, then one per clock while ``o_stream``
    is ready (backpressure at any cycle stalls the whole pipeline).

    Parameters
    ----------
    max_entries : int
        As the :class:`~dynsparse.hdl.maskdecoder.MaskDecoder` it reads (8 … 2**24).

    Members
    -------
    tensor : In(tensor_layout(max_entries))
        The decoder's ``tensor`` port: shape, method, predictor; sampled at ``start``.
    start : In(1)
        Begin a pass over the tensor (ignored while ``busy``).
    rd_addr : Out(range(max_entries))
    rd_data : In(signed(8))
    rd_sent : In(1)
        The decoder's read port.
    o_stream : Out(stream.Signature(weight_layout(max_entries)))
        Every entry ``0 … N − 1`` in flat order, ``first`` on entry 0, ``last`` on ``N − 1``.
    busy : Out(1)
        A pass is running.
    """

    #: Clock edges from ``start`` to the first weight beyond the plane width: the first read,
    #: its data, the entry that completes the window, three stages (products; their sum with
    #: the rounding term; shift, clamp and choice) and the output register.
    LATENCY = 7

    def __init__(self, *, max_entries=2048):
        self._max_entries = check_int("maximum entry count", max_entries, minimum=8, maximum=MAX_ENTRIES)
        super().__init__({
            "tensor": In(tensor_layout(max_entries)),
            "start": In(1),
            "rd_addr": Out(range(max_entries)),
            "rd_data": In(signed(8)),
            "rd_sent": In(1),
            "o_stream": Out(stream.Signature(weight_layout(max_entries))),
            "busy": Out(1),
        })

    @property
    def max_entries(self):
        return self._max_entries

    @property
    def line_entries(self):
        """Words of the line buffer: the power of two at or above ``max_entries // 2``. A plane
        of two or more rows has ``W ≤ max_entries / 2``, so every such row fits; a plane of
        one row (up to ``max_entries`` wide) has no rows above or below and does not use the
        line buffer: the entry being read goes straight into the window's middle row."""
        return 1 << max(self._max_entries // 2 - 1, 1).bit_length()

    @classmethod
    def fill_cycles(cls, width, height):
        """Clock edges from the one that takes ``start`` to the one that takes the first weight
        (``o_stream`` always ready), for planes ``height × width``: ``LATENCY + W`` (the
        window must hold entry ``W + 1``, below-right of entry 0), or ``LATENCY`` for planes
        of one row (the row being read is the window's middle row)."""
        return cls.LATENCY + (width if height > 1 else 0)

    @classmethod
    def pass_cycles(cls, entries, width, height):
        """Clock edges from the one that takes ``start`` to the one that takes the last of
        ``entries`` weights, ``o_stream`` always ready: one weight per clock after
        :meth:`fill_cycles`."""
        return cls.fill_cycles(width, height) + entries - 1

    def elaborate(self, platform):
        m = Module()
        ew = self._max_entries.bit_length()
        tensor = self.tensor

        # the pass: sampled at start
        running = Signal()
        method = Signal(2)
        x_last = Signal(ew)                   # W − 1, H − 1
        y_last = Signal(16)
        entries_last = Signal(ew)             # N − 1
        items_last = Signal(ew + 1)           # N + W (N for one-row planes): the last raster entry read;
                                              # the ones past N − 1 only flush the window
        one_row = Signal()                    # planes of one row: the entry being read is the window's middle row
        coefficients = Signal(data.ArrayLayout(signed(8), 8))
        shift = Signal(4)
        half = Signal(15)                     # 2^(s−1), 0 when s = 0
        above_max = Signal(signed(24))        # 128·2^s
        below_min = Signal(signed(24))        # −127·2^s

        out_valid = Signal()
        advance = Signal()                    # every stage moves on (a global stall while the output waits)
        m.d.comb += [advance.eq(~out_valid | self.o_stream.ready), self.busy.eq(running)]

        # A: the read issued this cycle
        item = Signal(ew + 1)                 # raster index 0 … N + W
        item_x = Signal(ew)                   # its column
        lag = Signal(ew + 1)                  # items still to read before the first one that completes a window
        issuing = Signal()
        m.d.comb += [issuing.eq(running & (item <= items_last)),
                     self.rd_addr.eq(Mux(item <= entries_last, item, 0))]

        line = Memory(shape=16, depth=self.line_entries, init=[])    # [7:0] the row above, [15:8] two rows above
        m.submodules.line = line
        line_w = line.write_port()
        line_r = line.read_port(transparent_for=(line_w,))
        m.d.comb += line_r.addr.eq(item_x)

        # B: the read's data (held while the pipeline stalls), shifted into the window
        b_valid = Signal()
        b_out = Signal()                      # its window completes an entry's neighbourhood
        b_x = Signal(ew)
        fresh = Signal()
        held = Signal(24)
        m.d.sync += fresh.eq(advance)
        arrived = Signal(24)
        m.d.comb += arrived.eq(Mux(fresh, Cat(Mux(self.rd_sent, self.rd_data, DROPPED), line_r.data), held))
        with m.If(fresh):
            m.d.sync += held.eq(arrived)
        code_in = arrived[:8].as_signed()
        above = arrived[8:16].as_signed()
        above2 = arrived[16:24].as_signed()
        m.d.comb += [line_w.addr.eq(b_x), line_w.data.eq(Cat(code_in, above)),
                     line_w.en.eq(advance & b_valid)]

        # the window: rows top (y − 1), middle (y), bottom (y + 1); columns left, centre, right
        window = [[Signal(signed(8), name=f"window_{row}_{col}") for col in range(3)] for row in range(3)]

        with m.If(advance):
            m.d.sync += [b_valid.eq(issuing), b_out.eq(lag == 0), b_x.eq(item_x)]
            with m.If(issuing):
                m.d.sync += [item.eq(item + 1), item_x.eq(Mux(item_x == x_last, 0, item_x + 1))]
                with m.If(lag != 0):
                    m.d.sync += lag.eq(lag - 1)
            with m.If(b_valid):
                for row, code in enumerate((above2, Mux(one_row, code_in, above), code_in)):
                    m.d.sync += [window[row][0].eq(window[row][1]), window[row][1].eq(window[row][2]),
                                 window[row][2].eq(code)]

        # C: the window holds entry (y, x) of its plane and its neighbours
        c_valid = Signal()
        y = Signal(16)
        x = Signal(ew)
        inside_up, inside_down = y != 0, y != y_last
        inside_left, inside_right = x != 0, x != x_last

        def neighbour(dy, dx):
            """(value or 0, sent and inside the plane) of neighbour (dy, dx)."""
            code = window[1 + dy][1 + dx]
            inside = code != DROPPED
            if dy < 0:
                inside &= inside_up
            if dy > 0:
                inside &= inside_down
            if dx < 0:
                inside &= inside_left
            if dx > 0:
                inside &= inside_right
            value = Signal(signed(8), name=f"near_{dy + 1}_{dx + 1}")
            sent = Signal(name=f"near_sent_{dy + 1}_{dx + 1}")
            m.d.comb += [sent.eq(inside), value.eq(Mux(inside, code, 0))]
            return value, sent

        (left, left_sent), (right, right_sent), (up, up_sent), (down, down_sent) = (
            neighbour(dy, dx) for dy, dx in LINEAR_OFFSETS)
        h_sum = left + right
        v_sum = up + down
        linear_guess = Mux(left_sent & right_sent, (h_sum + 1) >> 1,
                           Mux(left_sent | right_sent, h_sum,
                               Mux(up_sent & down_sent, (v_sum + 1) >> 1, Mux(up_sent | down_sent, v_sum, 0))))

        # D: the eight products, the linear guess, the centre
        d_valid = Signal()
        products = [Signal(signed(16), name=f"product_{j}") for j in range(len(LEARNED_OFFSETS))]
        negatives = Signal(len(LEARNED_OFFSETS))       # each product's missing 64
        correction = Signal(range(len(LEARNED_OFFSETS) + 1))
        m.d.comb += correction.eq(sum(negatives[j] for j in range(len(LEARNED_OFFSETS))))
        window_products = [booth_product(m, coefficients[j], neighbour(dy, dx)[0])
                           for j, (dy, dx) in enumerate(LEARNED_OFFSETS)]
        # with the rounding term 2^(s−1) (|Σ| ≤ 8·128·127 + 2^14 < 2^18)
        product_sum = adder_tree(m, products + [Cat(Const(0, 6), correction).as_unsigned(), half])
        d_linear = Signal(signed(8))
        d_centre = Signal(signed(8))
        # E: the learned sum, rounding term included
        e_valid = Signal()
        total = Signal(signed(19))
        e_linear = Signal(signed(8))
        e_centre = Signal(signed(8))

        # floor(Σ / 2^s) > 127 ⟺ Σ ≥ 128·2^s, < −127 ⟺ Σ < −127·2^s: the saturation compares
        # run beside the shift, against per-pass thresholds
        rounded = Signal(signed(8))
        m.d.comb += rounded.eq(total >> shift)
        learned_guess = Mux(total >= above_max, 127, Mux(total < below_min, -127, rounded))
        guess = Mux(method == 1, e_linear, Mux(method == 2, learned_guess, 0))

        # F: the output register
        payload = self.o_stream.payload
        result = Signal(signed(8))
        index = Signal(range(self._max_entries))
        m.d.comb += [self.o_stream.valid.eq(out_valid), payload.data.eq(result), payload.index.eq(index),
                     payload.first.eq(index == 0), payload.last.eq(index == entries_last)]

        with m.If(advance):
            m.d.sync += [c_valid.eq(b_valid & b_out), d_valid.eq(c_valid), e_valid.eq(d_valid),
                         out_valid.eq(e_valid)]
            with m.If(c_valid):
                m.d.sync += x.eq(Mux(x == x_last, 0, x + 1))
                with m.If(x == x_last):
                    m.d.sync += y.eq(Mux(y == y_last, 0, y + 1))
            m.d.sync += [d_linear.eq(linear_guess), d_centre.eq(window[1][1])]
            for j, (product, negative) in enumerate(window_products):
                m.d.sync += [products[j].eq(product), negatives[j].eq(negative)]
            m.d.sync += [total.eq(product_sum), e_linear.eq(d_linear), e_centre.eq(d_centre)]
            m.d.sync += result.eq(Mux(e_centre != DROPPED, e_centre, guess))
        with m.If(out_valid & self.o_stream.ready):
            m.d.sync += index.eq(index + 1)
            with m.If(index == entries_last):
                m.d.sync += running.eq(0)

        with m.If(~running & self.start & (tensor.entries != 0)):
            four = tensor.ndim == 4
            plane_width = Mux(four, tensor.dims[3], tensor.cols)
            plane_height = Mux(four, tensor.dims[2], tensor.rows)
            single = plane_height == 1
            m.d.sync += [
                running.eq(1),
                method.eq(tensor.interpolation),
                x_last.eq(plane_width - 1),
                y_last.eq(plane_height - 1),
                entries_last.eq(tensor.entries - 1),
                items_last.eq(tensor.entries + Mux(single, 0, plane_width)),
                one_row.eq(single),
                coefficients.eq(tensor.coefficients),
                shift.eq(tensor.shift),
                half.eq((Const(1, 16) << tensor.shift) >> 1),
                above_max.eq(Const(128, signed(24)) << tensor.shift),
                below_min.eq(Const(-127, signed(24)) << tensor.shift),
                item.eq(0), item_x.eq(0), lag.eq(Mux(single, 1, plane_width + 1)),
                y.eq(0), x.eq(0), index.eq(0),
            ]

        return m
