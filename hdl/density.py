"""Local standard deviation of each window, normalised by a reference: the density map."""

import math

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..golden.density import (DENSITY_ONE, INV_REF_VAR_BITS, INV_REF_VAR_FRAC_BITS, MAX_KERNEL_SIZE,
                              VAR_FRAC_BITS, rn_shift, rn_table)
from .frame import check_int, coord_width
from .window import window_layout


__all__ = ["DensityUnit"]


#: Operand chunk of a multiplier: one SB_MAC16 (iCE40) or MULT18X18D (ECP5) each.
_MUL_CHUNK = 16
#: Chunk products with at most this many partial-product bits are shift-and-add LUT logic.
_LUT_PRODUCT_AREA = 80
#: Values an adder-tree stage sums (two adder levels per stage, for Fmax on iCE40).
_TREE_ARITY = 4
#: Result bits of the density's square root (``A < 2**16``).
_ROOT_BITS = 8
#: Result bits of the square root found in each of its stages, most significant first.
_ROOT_STAGES = (3, 1, 1, 1, 1, 1)
#: Delays of at least this many stages are a memory, not a chain of registers.
_MEMORY_DELAY_MIN = 4


def _tree_stages(count):
    stages = 0
    while count > 1:
        count = -(-count // _TREE_ARITY)
        stages += 1
    return stages


def _sum(values):
    """Sum of ``values`` as a balanced tree of adders."""
    values = list(values)
    if not values:
        return Const(0, 1)
    while len(values) > 1:
        values = [values[i] + values[i + 1] if i + 1 < len(values) else values[i]
                  for i in range(0, len(values), 2)]
    return values[0]


def _masked_terms(a, b):
    """Shifted, masked copies of the wider operand whose sum is ``a * b``."""
    a, b = Value.cast(a), Value.cast(b)
    if len(a) < len(b):
        a, b = b, a
    return [Mux(b[i], a, 0) << i for i in range(len(b))]


def _shift_add(a, b):
    """``a * b`` as a tree of adders; never a ``$mul`` that synthesis could map to a DSP."""
    return _sum(_masked_terms(a, b))[:len(Value.cast(a)) + len(Value.cast(b))]


def _chunk_product(a, b, group):
    """``a * b`` as values to add: one multiplier product if it is wide, else
    shift-and-add LUT logic in sums of ``group`` terms."""
    if len(a) * len(b) > _LUT_PRODUCT_AREA:
        return [a * b]
    terms = _masked_terms(a, b)
    # terms i .. i + group - 1 sum to less than 2**(max(len(a), len(b)) + i + group)
    width = max(len(a), len(b))
    return [_sum(terms[i:i + group])[:width + min(len(terms), i + group)]
            for i in range(0, len(terms), group)]


def _rows(partials):
    """``(shift, value)`` partials packed into rows ``[shift, value]``: partials that do
    not overlap share a row (concatenated, no adder)."""
    rows = []
    for shift, value in sorted(partials, key=lambda partial: partial[0]):
        for row in rows:
            if row[0] + len(row[1]) <= shift:
                row[1] = Cat(row[1], Const(0, shift - row[0] - len(row[1])), value)
                break
        else:
            rows.append([shift, Value.cast(value)])
    return rows


def _partial_sums(partials):
    """The rows of ``partials`` (see :func:`_rows`) summed in groups of ``_TREE_ARITY``
    (two adder levels), as ``(shift, value)`` partials again."""
    rows = _rows(partials)
    sums = []
    for i in range(0, len(rows), _TREE_ARITY):
        group = rows[i:i + _TREE_ARITY]
        shift = min(row_shift for row_shift, _ in group)
        sums.append((shift, _total([(row_shift - shift, row) for row_shift, row in group])))
    return sums


def _total(partials, *, saturate_at=None):
    """Sum of ``(shift, value)`` partial products.

    The rows of :func:`_rows` are added in a balanced tree, each adder starting at
    its operands' lowest overlapping bit. With ``saturate_at``, returns
    ``(sum mod 2**saturate_at, sum >= 2**saturate_at)``: each row is cut at bit
    ``saturate_at`` (a row with a bit above it saturates the sum by itself, as
    every partial is non-negative), which keeps the carry chains short.
    """
    rows, saturated = _rows(partials), Const(0, 1)
    if saturate_at is not None:
        for row in rows:
            keep = max(0, saturate_at - row[0])
            saturated = saturated | row[1][keep:].any()
            row[1] = row[1][:keep]

    def add(x, y):
        (x_shift, x_value), (y_shift, y_value) = sorted([x, y], key=lambda row: row[0])
        low = y_shift - x_shift
        return [x_shift, Cat(x_value[:low], Const(0, max(0, low - len(x_value))),
                             x_value[low:] + y_value)]

    while len(rows) > 1:
        rows = [add(rows[i], rows[i + 1]) if i + 1 < len(rows) else rows[i]
                for i in range(0, len(rows), 2)]
    shift, value = rows[0]
    total = Cat(Const(0, shift), value)
    if saturate_at is None:
        return total
    return total[:saturate_at], saturated | total[saturate_at:].any()


#: Squares of 4-bit values: one 4-input LUT per result bit.
_NIBBLE_SQUARES = Array(Const(n * n, 8) for n in range(16))


def _square_partials(x):
    """``x * x`` in LUT logic, as ``(shift, value)`` partials for :func:`_total`.

    With the 4-bit nibbles ``n_i`` of ``x``,
    ``x² = Σ n_i² · 2**(8 i) + Σ_{i<j} n_i n_j · 2**(4 (i + j) + 1)``: the
    nibble squares are 4-input tables and lie side by side (one partial, no
    adder); each cross product is a shift-and-add of four terms.
    """
    nibbles = [x[i:i + 4] for i in range(0, len(x), 4)]
    return [(0, Cat(*(_NIBBLE_SQUARES[nibble] for nibble in nibbles)))] + [
        (4 * (i + j) + 1, _shift_add(nibbles[i], nibbles[j]))
        for i in range(len(nibbles)) for j in range(i + 1, len(nibbles))]


class DensityUnit(wiring.Component):
    """Density of each window: its local std over a reference std, saturated at 1.0.

    Per channel, from the non-pad elements of each window (padding is excluded,
    so the result is independent of the padding mode), computes bit-exactly
    :func:`dynsparse.golden.density.density_of_windows`::

        V = N*S2 - S1*S1;  var_q = (V * RN[N]) >> G
        A = (var_q * inv_ref_var) >> 23;  density = 256 if A >= 65536 else isqrt(A)

    with ``S1``/``S2`` the sums of ``x``/``x*x``, ``N`` their count, ``RN`` a
    ROM of ``2**(G+16) / N**2`` and ``G = rn_shift(kernel_size)`` (see that
    module for the full contract and error bound). Fully pipelined, no divider:
    one window in and one density out per clock when nothing stalls. Squares
    and narrow products are LUT logic; only wide 16-bit operand chunks of
    ``V*RN`` and ``var_q*inv_ref_var`` are multipliers (5 per channel for
    ``K = 3``: ``SB_MAC16`` on iCE40, ``MULT18X18D`` on ECP5).

    Parameters
    ----------
    kernel_size : int
        Odd window size ``K`` in ``[1, 15]``.
    channels : int
        Channels per pixel ``C``, ``>= 1``.
    max_width, max_height : int
        Largest frame size, ``>= 1``; they set only the widths of ``x``/``y``.

    Members
    -------
    i_stream : ``In(stream.Signature(window_layout(...)))``
        Windows of 8-bit pixels from :mod:`dynsparse.hdl.window`: ``data``,
        ``pad`` (data of pad elements is ignored), ``x``, ``y``, ``first``, ``last``.
    o_stream : ``Out(stream.Signature(StructLayout({"data": ArrayLayout(unsigned(9), C), ...})))``
        One density per channel (UQ1.8, 0..256) per window, in window order,
        with ``x``/``y``/``first``/``last`` of that window.
    inv_ref_var : ``In(unsigned(24))``
        ``2**23 / ref_std**2``, from :func:`dynsparse.golden.density.inv_ref_var`.
        Sampled when a window with ``first = 1`` is accepted; the whole frame
        uses that value. Before the first ``first`` after reset it reads as 0.

    The pipeline stalls as a whole: every stage moves when
    ``~o_stream.valid | o_stream.ready``, which is also ``i_stream.ready``.
    A window accepted in cycle ``t`` appears on ``o_stream`` in cycle
    ``t + latency``, ``latency = 16 + ceil(log4(K*K))`` (18 for K = 3; the
    ``latency`` property). Stages and widths are listed in ``docs/density.md``.

    Raises
    ------
    TypeError
        If a parameter is not an integer.
    ValueError
        If a parameter is out of range or ``kernel_size`` is even.
    """

    def __init__(self, *, kernel_size, channels, max_width, max_height):
        self._kernel_size = check_int("kernel size", kernel_size, minimum=1,
                                      maximum=MAX_KERNEL_SIZE, odd=True)
        self._channels   = check_int("channel count", channels, minimum=1)
        self._max_width  = check_int("maximum width", max_width, minimum=1)
        self._max_height = check_int("maximum height", max_height, minimum=1)

        self._input_layout = window_layout(kernel_size=kernel_size, channels=channels,
                                           pixel_shape=unsigned(8), max_width=max_width,
                                           max_height=max_height)
        self._side_layout = data.StructLayout({
            "x":     unsigned(coord_width(max_width)),
            "y":     unsigned(coord_width(max_height)),
            "first": unsigned(1),
            "last":  unsigned(1),
        })
        output_layout = data.StructLayout({
            "data": data.ArrayLayout(unsigned(9), channels),
            **{name: field.shape for name, field in self._side_layout},
        })
        super().__init__({
            "i_stream":    In(stream.Signature(self._input_layout)),
            "o_stream":    Out(stream.Signature(output_layout)),
            "inv_ref_var": In(unsigned(INV_REF_VAR_BITS)),
        })

    @property
    def kernel_size(self):
        return self._kernel_size

    @property
    def channels(self):
        return self._channels

    @property
    def max_width(self):
        return self._max_width

    @property
    def max_height(self):
        return self._max_height

    @property
    def latency(self):
        """Cycles from accepting a window to offering its density, with no stalls."""
        # input, squares (2), sum trees, N*S2 and S1^2 (2), V*RN (3), var_q*inv (2), isqrt
        return 1 + 2 + _tree_stages(self._kernel_size ** 2) + 2 + 3 + 2 + len(_ROOT_STAGES)

    def elaborate(self, platform):
        m = Module()
        k, elements, channels = self._kernel_size, self._kernel_size ** 2, self._channels
        rn = rn_table(k)
        v_max = [65025 * (n * n // 4) for n in range(elements + 1)]
        v_width = max(1, max(v_max).bit_length())
        var_q_width = max(1, max((v * r) >> rn_shift(k) for v, r in zip(v_max, rn)).bit_length())
        a_shift = VAR_FRAC_BITS + INV_REF_VAR_FRAC_BITS - 16

        advance = Signal()
        m.d.comb += [
            advance.eq(~self.o_stream.valid | self.o_stream.ready),
            self.i_stream.ready.eq(advance),
        ]

        def register(value, shape=None, name=None):
            value = Value.cast(value)
            reg = Signal(value.shape() if shape is None else shape, name=name, reset_less=True)
            with m.If(advance):
                m.d.sync += reg.eq(value)
            return reg

        def delay(value, stages, name):
            """``value`` through ``stages`` registers that load on ``advance``. Long delays
            are a memory with one write and one read per advance (block RAM on iCE40,
            distributed RAM on ECP5) instead of flip-flops, which would cost a logic
            cell each on iCE40."""
            value = Value.cast(value)
            if stages < _MEMORY_DELAY_MIN:
                for _ in range(stages):
                    value = register(value, name=name)
                return value
            # depth > stages - 1, so that the read address never equals the write address
            depth = 1 << (stages - 1).bit_length()
            memory = Memory(shape=len(value), depth=depth, init=[])
            m.submodules[name] = memory
            write, read = memory.write_port(), memory.read_port(domain="sync")
            pointer = Signal(range(depth), name=f"{name}_pointer")
            with m.If(advance):
                m.d.sync += pointer.eq(pointer + 1)
            m.d.comb += [
                write.addr.eq(pointer), write.data.eq(value), write.en.eq(advance),
                read.addr.eq(pointer - (stages - 1)), read.en.eq(advance),
            ]
            return read.data

        # valid travels beside the data, one register per stage (x/y/first/last in a delay
        # line, at the end).
        valid, stage_count = self.i_stream.valid, 0

        def next_stage():
            nonlocal valid, stage_count
            stage_count += 1
            new_valid = Signal(name=f"valid_{stage_count}")
            with m.If(advance):
                m.d.sync += new_valid.eq(valid)
            valid = new_valid

        def multiply(a, b, name, *, saturate_at=None, group=_TREE_ARITY):
            """Registered partial products ``(shift, value)`` of ``a * b`` (:func:`_total`
            sums them), and a registered flag.

            The flag is 0 without ``saturate_at``. With it, only the sum's value below
            ``2**saturate_at`` and whether it reaches ``2**saturate_at`` matter: a wide
            chunk product ``x * y`` at shift ``s`` with ``L = saturate_at - s`` is replaced
            by ``x[:L] * y[:L]`` if that is narrow enough for LUT logic, and the flag is set
            if ``x >= 2**L`` and ``y >= 1`` or the other way round. If the flag is 0,
            either operand is 0 or both are below ``2**L``, so the replacement is exact;
            if it is 1, ``x * y >= 2**L`` and the whole product is ``>= 2**saturate_at``.
            """
            partials, large = [], Const(0, 1)
            for i in range(0, len(a), _MUL_CHUNK):
                for j in range(0, len(b), _MUL_CHUNK):
                    x, y = a[i:i + _MUL_CHUNK], b[j:j + _MUL_CHUNK]
                    if saturate_at is not None and len(x) * len(y) > _LUT_PRODUCT_AREA:
                        limit = max(0, saturate_at - i - j)
                        if min(limit, len(x)) * min(limit, len(y)) <= _LUT_PRODUCT_AREA:
                            large = large | (x[limit:].any() & y.any()) | (y[limit:].any() & x.any())
                            x, y = x[:limit], y[:limit]
                    partials += [(i + j, register(value, name=f"{name}_{i}_{j}"))
                                 for value in _chunk_product(x, y, group)]
            return partials, register(large, name=f"{name}_large")

        def reduce(values, name):
            """One stage of an adder tree; a single value is only registered."""
            return [register(sum(values[i + 1:i + _TREE_ARITY], values[i]), name=name)
                    for i in range(0, len(values), _TREE_ARITY)]

        # Stage 1: register the window with pad elements zeroed; pick the frame's inv_ref_var.
        payload = self.i_stream.payload
        inv_frame = Signal(INV_REF_VAR_BITS)
        with m.If(self.i_stream.valid & advance & payload.first):
            m.d.sync += inv_frame.eq(self.inv_ref_var)
        inv = register(Mux(payload.first, self.inv_ref_var, inv_frame), name="inv")
        inside = [register(~payload.pad[dy][dx], name=f"inside_{dy}_{dx}")
                  for dy in range(k) for dx in range(k)]
        pixels = [[register(Mux(payload.pad[dy][dx], 0, payload.data[dy][dx][c]), unsigned(8),
                            name=f"pixel_{dy}_{dx}_{c}")
                   for dy in range(k) for dx in range(k)] for c in range(channels)]
        next_stage()

        # Stages 2 and 3: squares in LUT logic (see _square_partials), then their sums.
        # N and S1 start their adder trees meanwhile.
        squares = [[[(shift, register(value, name=f"square_partial_{c}"))
                     for shift, value in _square_partials(x)] for x in pixels[c]]
                   for c in range(channels)]
        pixels = [reduce(values, f"sum_{c}") for c, values in enumerate(pixels)]
        inside = reduce(inside, "count")
        next_stage()
        squares = [[register(_total(partials), unsigned(16), name=f"square_{c}")
                    for partials in squares[c]] for c in range(channels)]
        pixels = [reduce(values, f"sum_{c}") for c, values in enumerate(pixels)]
        inside = reduce(inside, "count")
        next_stage()

        # Sum trees for S2, and N and S1 (which start early), _TREE_ARITY terms per stage.
        while len(squares[0]) > 1:
            inside = reduce(inside, "count")
            pixels = [reduce(values, f"sum_{c}") for c, values in enumerate(pixels)]
            squares = [reduce(values, f"square_sum_{c}") for c, values in enumerate(squares)]
            next_stage()
        count = inside[0][:elements.bit_length()]
        sums = [values[0][:(255 * elements).bit_length()] for values in pixels]
        square_sums = [values[0][:(65025 * elements).bit_length()] for values in squares]

        # S1*S1 in LUT logic like the squares, N*S2 by shift-and-add (N has few bits);
        # RN[N] from a ROM.
        rn_lookup = Signal(max(1, max(rn).bit_length()))
        with m.Switch(count):
            for n, entry in enumerate(rn):
                if entry:
                    with m.Case(n):
                        m.d.comb += rn_lookup.eq(entry)
        n_s2 = [register(_shift_add(count, s2), name=f"n_s2_{c}") for c, s2 in enumerate(square_sums)]
        s1_s1 = [[(shift, register(value, name=f"s1_s1_{c}")) for shift, value in _square_partials(s1)]
                 for c, s1 in enumerate(sums)]
        rn_value = register(rn_lookup, name="rn")
        next_stage()

        # V = N*S2 - S1^2 is exact and never negative, so its low bits are all of it.
        variance_n2 = [register(n_s2[c] - _total(s1_s1[c]), unsigned(v_width),
                                name=f"variance_n2_{c}") for c in range(channels)]
        rn_value = register(rn_value, name="rn")
        next_stage()

        # var_q = (V * RN[N]) >> G
        # (its LUT chunks in sums of two terms: their rows are added over two stages)
        partials = [multiply(v, rn_value, f"v_rn_{c}", group=2)[0]
                    for c, v in enumerate(variance_n2)]
        next_stage()
        # the rows of the partials summed in two stages, two adder levels each
        partials = [[(shift, register(value, name=f"v_rn_sum_{c}"))
                     for shift, value in _partial_sums(p)] for c, p in enumerate(partials)]
        next_stage()
        var_q = [register(_total(p) >> rn_shift(k), unsigned(var_q_width), name=f"var_q_{c}")
                 for c, p in enumerate(partials)]
        next_stage()

        # var_q * inv_ref_var: bits [a_shift, a_shift + 16) are A, any one above saturates.
        # inv was registered in stage 1; it meets var_q at the multiplier inputs.
        inv = register(delay(inv, stage_count - 2, "inv_delay"), name="inv")
        products = [multiply(v, inv, f"v_inv_{c}", saturate_at=a_shift + 16)
                    for c, v in enumerate(var_q)]
        next_stage()
        radicand, saturated = [], []
        for c, (p, large) in enumerate(products):
            total, above = _total(p, saturate_at=a_shift + 16)
            radicand.append(register(total[a_shift:], name=f"radicand_{c}"))
            saturated.append(register(above | large, name=f"saturated_{c}"))
        next_stage()

        # Restoring square root of A, most significant result bits first; the last stage
        # is the output register. The first stage looks its bits up: the root of the top
        # 2 b bits of A and the remainder (at most 2 (2**b - 1)) are what b steps give.
        top_bits = 2 * _ROOT_STAGES[0]
        tops = [r[len(r) - top_bits:] for r in radicand]
        root = [Array(Const(math.isqrt(t), _ROOT_STAGES[0]) for t in range(1 << top_bits))[top]
                for top in tops]
        remainder = [Array(Const(t - math.isqrt(t) ** 2, _ROOT_STAGES[0] + 1)
                           for t in range(1 << top_bits))[top] for top in tops]
        for stage, stage_bits in enumerate(_ROOT_STAGES):
            last = stage == len(_ROOT_STAGES) - 1
            remaining = _ROOT_BITS - sum(_ROOT_STAGES[:stage + 1])
            bits = range(remaining + stage_bits - 1, remaining - 1, -1) if stage else []
            for c in range(channels):
                for bit in bits:
                    candidate = Cat(radicand[c][2 * bit:2 * bit + 2], remainder[c])
                    difference = candidate - Cat(Const(1, 2), root[c])
                    fits = difference >= 0
                    remainder[c] = Mux(fits, difference, candidate)[:_ROOT_BITS + 1]
                    root[c] = Cat(fits, root[c])
                if not last:
                    remainder[c] = register(remainder[c], name=f"remainder_{c}")
                    root[c] = register(root[c], name=f"root_{c}")
                    radicand[c] = register(radicand[c][:2 * remaining], name=f"radicand_{c}")
                    saturated[c] = register(saturated[c], name=f"saturated_{c}")
                else:
                    with m.If(advance):
                        m.d.sync += self.o_stream.payload.data[c].eq(
                            Mux(saturated[c], DENSITY_ONE, root[c]))
            if not last:
                next_stage()

        side = Signal(self._side_layout)
        m.d.comb += [side[name].eq(self.i_stream.payload[name]) for name, _ in self._side_layout]
        side = self._side_layout(delay(side.as_value(), stage_count, "side_delay"))
        with m.If(advance):
            m.d.sync += self.o_stream.valid.eq(valid)
            m.d.sync += [self.o_stream.payload[name].eq(side[name]) for name, _ in self._side_layout]
        stage_count += 1
        assert stage_count == self.latency, (stage_count, self.latency)
        return m
