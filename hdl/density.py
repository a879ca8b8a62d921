"""Local standard deviation of each window, normalised by a reference: the density map."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..golden.density import (DENSITY_ONE, INV_REF_VAR_BITS, INV_REF_VAR_FRAC_BITS, MAX_KERNEL_SIZE,
                              VAR_FRAC_BITS, rn_shift, rn_table)
from .frame import check_int, coord_width
from .window import window_layout


__all__ = ["DensityUnit"]


#: Operand chunk of a pipelined multiply: one SB_MAC16 (iCE40) or MULT18X18D (ECP5) each.
_MUL_CHUNK = 16
#: Values an adder-tree stage sums (two adder levels per stage, for Fmax on iCE40).
_TREE_ARITY = 4
#: Result bits of the density's square root (``A < 2**16``).
_ROOT_BITS = 8


def _tree_stages(count):
    stages = 0
    while count > 1:
        count = -(-count // _TREE_ARITY)
        stages += 1
    return stages


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
    one window in and one density out per clock when nothing stalls.

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
        # input, squares, sum trees, N*S2 and S1^2 (2), V*RN (2), var_q*inv (2), isqrt
        return 1 + 1 + _tree_stages(self._kernel_size ** 2) + 2 + 2 + 2 + _ROOT_BITS

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

        # valid and x/y/first/last travel beside the data, one register per stage.
        valid, side, stage_count = self.i_stream.valid, self.i_stream.payload, 0

        def next_stage():
            nonlocal valid, side, stage_count
            stage_count += 1
            new_valid = Signal(name=f"valid_{stage_count}")
            new_side = Signal(self._side_layout, name=f"side_{stage_count}", reset_less=True)
            with m.If(advance):
                m.d.sync += new_valid.eq(valid)
                m.d.sync += [new_side[name].eq(side[name]) for name, _ in self._side_layout]
            valid, side = new_valid, new_side

        def multiply(a, b, name):
            """Registered 16x16 partial products of ``a * b``; :func:`total` sums them."""
            return [(i + j, register(a[i:i + _MUL_CHUNK] * b[j:j + _MUL_CHUNK],
                                     name=f"{name}_{i}_{j}"))
                    for i in range(0, len(a), _MUL_CHUNK) for j in range(0, len(b), _MUL_CHUNK)]

        def total(partials):
            return sum((partial << shift for shift, partial in partials), Const(0, 1))

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

        # Stage 2: squares, registered in and out so that they map to DSPs.
        squares = [[register(x * x, name=f"square_{c}") for x in pixels[c]] for c in range(channels)]
        pixels = [[register(x, name=f"pixel_{c}") for x in pixels[c]] for c in range(channels)]
        inside = [register(bit, name="inside") for bit in inside]
        inv = register(inv, name="inv")
        next_stage()

        # Sum trees for N, S1 and S2, _TREE_ARITY terms per stage.
        def reduce(values, name):
            return [register(sum(values[i + 1:i + _TREE_ARITY], values[i]), name=name)
                    for i in range(0, len(values), _TREE_ARITY)]
        while len(inside) > 1:
            inside = reduce(inside, "count")
            pixels = [reduce(values, f"sum_{c}") for c, values in enumerate(pixels)]
            squares = [reduce(values, f"square_sum_{c}") for c, values in enumerate(squares)]
            inv = register(inv, name="inv")
            next_stage()
        count = inside[0][:elements.bit_length()]
        sums = [values[0][:(255 * elements).bit_length()] for values in pixels]
        square_sums = [values[0][:(65025 * elements).bit_length()] for values in squares]

        # N*S2 and S1*S1 as partial products; RN[N] from a ROM.
        rn_lookup = Signal(max(1, max(rn).bit_length()))
        with m.Switch(count):
            for n, entry in enumerate(rn):
                if entry:
                    with m.Case(n):
                        m.d.comb += rn_lookup.eq(entry)
        n_s2 = [multiply(count, s2, f"n_s2_{c}") for c, s2 in enumerate(square_sums)]
        s1_s1 = [multiply(s1, s1, f"s1_s1_{c}") for c, s1 in enumerate(sums)]
        rn_value = register(rn_lookup, name="rn")
        inv = register(inv, name="inv")
        next_stage()

        # V = N*S2 - S1^2 is exact and never negative, so its low bits are all of it.
        variance_n2 = [register(total(n_s2[c]) - total(s1_s1[c]), unsigned(v_width),
                                name=f"variance_n2_{c}") for c in range(channels)]
        rn_value = register(rn_value, name="rn")
        inv = register(inv, name="inv")
        next_stage()

        # var_q = (V * RN[N]) >> G
        partials = [multiply(v, rn_value, f"v_rn_{c}") for c, v in enumerate(variance_n2)]
        inv = register(inv, name="inv")
        next_stage()
        var_q = [register(total(p) >> rn_shift(k), unsigned(var_q_width), name=f"var_q_{c}")
                 for c, p in enumerate(partials)]
        inv = register(inv, name="inv")
        next_stage()

        # var_q * inv_ref_var: bits [a_shift, a_shift + 16) are A, the ones above saturate.
        partials = [multiply(v, inv, f"v_inv_{c}") for c, v in enumerate(var_q)]
        next_stage()
        scaled = [register(total(p), unsigned(var_q_width + INV_REF_VAR_BITS), name=f"scaled_{c}")
                  for c, p in enumerate(partials)]
        next_stage()

        # Restoring square root of A, one result bit per stage, most significant first;
        # the last stage is the output register.
        radicand = [s[a_shift:a_shift + 16] for s in scaled]
        saturated = [s[a_shift + 16:].any() for s in scaled]
        remainder = [Const(0, 0)] * channels
        root = [Const(0, 0)] * channels
        for bit in reversed(range(_ROOT_BITS)):
            for c in range(channels):
                candidate = Cat(radicand[c][2 * bit:2 * bit + 2], remainder[c])
                difference = candidate - Cat(Const(1, 2), root[c])
                fits = difference >= 0
                if bit:
                    remainder[c] = register(Mux(fits, difference, candidate),
                                            unsigned(_ROOT_BITS + 1), name=f"remainder_{c}")
                    root[c] = register(Cat(fits, root[c]), name=f"root_{c}")
                    radicand[c] = register(radicand[c][:2 * bit], name=f"radicand_{c}")
                    saturated[c] = register(saturated[c], name=f"saturated_{c}")
                else:
                    with m.If(advance):
                        m.d.sync += self.o_stream.payload.data[c].eq(
                            Mux(saturated[c], DENSITY_ONE, Cat(fits, root[c])))
            if bit:
                next_stage()

        with m.If(advance):
            m.d.sync += self.o_stream.valid.eq(valid)
            m.d.sync += [self.o_stream.payload[name].eq(side[name]) for name, _ in self._side_layout]
        stage_count += 1
        assert stage_count == self.latency, (stage_count, self.latency)
        return m
