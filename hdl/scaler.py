"""Density-scaled kernels: the compacted tap list of every output channel, per output position."""

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..golden.sparseconv import DENSITY_ONE
from .frame import check_int, coord_width
from .taps import index_width, tap_density_layout, tap_layout, tap_lists_layout


__all__ = ["ScalerErrors", "KernelScaler", "tap_densities_from_window"]


class ScalerErrors(data.Struct):
    """Sticky error flags of :class:`KernelScaler` (see its *Errors* section)."""
    bad_weight:  1
    bad_address: 1
    bad_density: 1


def tap_densities_from_window(window):
    """The bits of a ``tap_density_layout`` payload made from a ``window_layout`` payload.

    With tile size 1, the densities of a position's taps are the K×K window of
    the density map around it, padded by replication:
    ``WindowGenerator(pixel_shape=unsigned(9), pad_mode=PadMode.REPLICATE)``
    over the density map gives them exactly. The window holds them as
    ``data[dy][dx][c]``, the scaler reads ``data[ci][ky][kx]``; this reorders
    them (wiring only) and passes ``x``, ``y``, ``first``, ``last`` through
    (``pad`` is dropped)::

        m.d.comb += scaler.i_stream.payload.eq(tap_densities_from_window(window.o_stream.payload))

    Both layouts must come from the same ``max_width``/``max_height``.
    """
    k = len(window.data)
    channels = len(window.data[0][0])
    return Cat(*(window.data[ky][kx][ci] for ci in range(channels) for ky in range(k) for kx in range(k)),
               window.x, window.y, window.first, window.last)


def _one_hot_select(one_hot, values):
    """``values[i]`` for the set bit ``i`` of ``one_hot`` (0 if none): an AND-OR tree."""
    width = max(len(Value.cast(value)) for value in values)
    terms = [Mux(one_hot[i], value, 0) for i, value in enumerate(values)]
    while len(terms) > 1:
        terms = [terms[i] | terms[i + 1] if i + 1 < len(terms) else terms[i]
                 for i in range(0, len(terms), 2)]
    return terms[0][:width]


class KernelScaler(wiring.Component):
    """Density-scaled weights, pruned and compacted into one tap list per output channel.

    For every output position, from the UQ1.8 density ``A[i]`` of each of its
    ``N = C_in·K²`` taps (``i`` in ``(ci, ky, kx)`` order) and the int8
    weights ``W[co][i]`` held in a weight memory, computes bit-exactly
    :func:`dynsparse.golden.sparseconv.tap_lists` (one position)::

        S = (W·A + 128) >> 8          (arithmetic shift: round half up; A = 256 gives S = W)
        pruned = A < prune_threshold;  zero = not pruned and S == 0

    and lists, per output channel, the remaining taps ``(ci, dy = ky, dx = kx,
    weight = S)`` in ascending ``i``, compacted to the front; entries at and
    after ``count`` are 0. In dense mode every tap is listed with its weight
    ``W`` and nothing is pruned or zero
    (:func:`~dynsparse.golden.sparseconv.dense_tap_lists`).

    The block walks a position's unpruned taps one per cycle (highest ``i``
    first, from a priority encoder over the unpruned mask) and scales the
    tap's weight for all ``C_out`` channels at once: ``C_out`` 8×9-bit
    products as shift-and-add LUT logic over three registered stages, never a
    DSP. Each channel's list is a shift register that takes the tap at its
    front when ``S != 0``, so it ends in ascending order with zeros behind.
    A finished list moves to the output register while the next position is
    walked.

    Parameters
    ----------
    kernel_size : int
        Odd kernel size ``K`` in ``[1, 15]``.
    in_channels, out_channels : int
        ``C_in`` and ``C_out``, ``>= 1``.
    max_width, max_height : int
        Largest frame, ``>= 1``; they set only the widths of ``x``/``y``.

    Members
    -------
    i_stream : ``In(stream.Signature(tap_density_layout(...)))``
        One position per transfer: ``data[ci][ky][kx]`` (UQ1.8, 0 … 256),
        ``x``, ``y``, ``first``, ``last``. With tile size 1 this is the
        density map's replicate-padded window (:func:`tap_densities_from_window`).
    o_stream : ``Out(stream.Signature(tap_lists_layout(...)))``
        One transfer per position, in input order: ``lists[co]`` =
        ``count``, ``pruned``, ``zero``, ``taps[N]`` (``ci``, ``dy``, ``dx``,
        ``weight``), and ``x``, ``y``, ``first``, ``last`` passed through.
    prune_threshold : ``In(unsigned(9))``
        UQ1.8 threshold; taps with ``A < prune_threshold`` are pruned (0
        prunes nothing, above 256 everything). Sampled with the frame's
        ``first`` position; the whole frame uses that value.
    dense : ``In(1)``
        Dense mode, sampled like ``prune_threshold``.
    weight_addr : ``In(StructLayout({"tap": unsigned(index_width(N)), "co": unsigned(index_width(C_out))}))``
        Which weight ``weight_write`` writes: tap ``i`` (low bits) of output
        channel ``co`` (high bits).
    weight_data : ``In(signed(8))``
        The weight, in ``[-127, 127]``; -128 is written as -127 (``bad_weight``).
    weight_write : ``In(1)``
        Writes ``weight_data`` at ``weight_addr`` in this cycle. Write while
        ``busy`` is 0 (between frames): a write while a position is walked
        may reach it or not. The weights are not reset.
    errors : ``Out(ScalerErrors)``
        Sticky error flags, cleared by ``clear_errors``.
    clear_errors : ``In(1)``
        Clears ``errors`` (a flag raised in the same cycle stays raised).
    busy : ``Out(1)``
        A position is somewhere in the block (walked, in the pipeline, or in
        the output register).

    Timing
    ------
    A position costs ``max(1, walked)`` cycles of the walker, ``walked``
    being its unpruned taps (``N`` in dense mode); :meth:`position_cycles`
    computes it. The walker takes the next position in the cycle it emits
    the last tap of the current one, and the output register is filled
    while the next position is walked, so with a ready sink positions leave
    at that rate, without bubbles. A position accepted in cycle ``t``
    leaves in cycle ``t + latency + cycles - 1`` when nothing stalls
    (``latency = 7``). All stages stall together, only when a finished list
    cannot move to a full output register.

    Errors
    ------
    - ``bad_weight``: a write of -128 (outside ``[-127, 127]``); -127 is stored.
    - ``bad_address``: a write with ``tap >= N`` or ``co >= C_out``; ignored.
    - ``bad_density``: a walked tap (not dense mode) had ``A > 256``; it is
      scaled as ``A = 256`` (it was compared with the threshold unchanged).

    Raises
    ------
    TypeError
        If a parameter is not an integer.
    ValueError
        If a parameter is out of range or ``kernel_size`` is even.
    """

    #: Cycles from accepting a position to offering its list, for a position of one cycle.
    LATENCY = 7

    def __init__(self, *, kernel_size, in_channels, out_channels, max_width, max_height):
        self._kernel_size  = check_int("kernel size", kernel_size, minimum=1, maximum=15, odd=True)
        self._in_channels  = check_int("input channel count", in_channels, minimum=1)
        self._out_channels = check_int("output channel count", out_channels, minimum=1)
        self._max_width    = check_int("maximum width", max_width, minimum=1)
        self._max_height   = check_int("maximum height", max_height, minimum=1)
        self._taps = in_channels * kernel_size * kernel_size
        self._weight_addr_layout = data.StructLayout({
            "tap": unsigned(index_width(self._taps)),
            "co":  unsigned(index_width(out_channels)),
        })
        super().__init__({
            "i_stream":        In(stream.Signature(tap_density_layout(
                kernel_size=kernel_size, in_channels=in_channels,
                max_width=max_width, max_height=max_height))),
            "o_stream":        Out(stream.Signature(tap_lists_layout(
                kernel_size=kernel_size, in_channels=in_channels, out_channels=out_channels,
                max_width=max_width, max_height=max_height))),
            "prune_threshold": In(unsigned(9)),
            "dense":           In(1),
            "weight_addr":     In(self._weight_addr_layout),
            "weight_data":     In(signed(8)),
            "weight_write":    In(1),
            "errors":          Out(ScalerErrors),
            "clear_errors":    In(1),
            "busy":            Out(1),
        })

    kernel_size  = property(lambda self: self._kernel_size)
    in_channels  = property(lambda self: self._in_channels)
    out_channels = property(lambda self: self._out_channels)
    max_width    = property(lambda self: self._max_width)
    max_height   = property(lambda self: self._max_height)
    taps         = property(lambda self: self._taps, doc="Taps per output channel, ``N = C_in·K²``.")

    @property
    def latency(self):
        """Cycles from accepting a position to offering its list, for a position of one cycle
        when nothing stalls (a position of ``c`` cycles takes ``latency + c - 1``)."""
        return self.LATENCY

    def position_cycles(self, densities, *, prune_threshold, dense=False):
        """Walker cycles of each position: ``max(1, unpruned taps)``, ``N`` in dense mode.

        ``densities [..., C_in, K, K]`` give an int64 array ``[...]``.
        """
        densities = np.asarray(densities, dtype=np.int64)
        if dense:
            return np.full(densities.shape[:-3], self._taps, np.int64)
        return np.maximum(1, (densities >= prune_threshold).sum(axis=(-3, -2, -1)))

    def elaborate(self, platform):
        m = Module()
        n, k, c_out = self._taps, self._kernel_size, self._out_channels
        count_width = n.bit_length()
        entry_layout = tap_layout(kernel_size=k, in_channels=self._in_channels)
        side_layout = data.StructLayout({
            "x":     unsigned(coord_width(self._max_width)),
            "y":     unsigned(coord_width(self._max_height)),
            "first": unsigned(1),
            "last":  unsigned(1),
        })

        # Every stage moves on `advance`; only a finished list that cannot leave stops them.
        advance = Signal()
        output_free = Signal()
        build_complete = Signal()
        m.d.comb += [
            output_free.eq(~self.o_stream.valid | self.o_stream.ready),
            advance.eq(~build_complete | output_free),
        ]

        # Weights: one memory word per tap, the C_out weights of that tap side by side, so
        # one read gives every channel's weight of the walked tap.
        memory = Memory(shape=unsigned(8 * c_out), depth=n, init=[])
        m.submodules.weights = memory
        write = memory.write_port(granularity=8)
        read = memory.read_port(domain="sync")
        address = self.weight_addr
        in_range = (address.tap < n) & (address.co < c_out)
        saturated = Mux(self.weight_data == -128, -127, self.weight_data)
        m.d.comb += [
            write.addr.eq(address.tap),
            write.data.eq(Cat(*(saturated.as_unsigned()[:8] for _ in range(c_out)))),
            write.en.eq(Mux(self.weight_write & in_range, Const(1, c_out) << address.co, 0)),
        ]
        with m.If(self.clear_errors):
            m.d.sync += self.errors.eq(0)
        with m.If(self.weight_write):
            with m.If(self.weight_data == -128):
                m.d.sync += self.errors.bad_weight.eq(1)
            with m.If(~in_range):
                m.d.sync += self.errors.bad_address.eq(1)

        # Walker: the accepted position, its unpruned taps still to walk.
        active    = Signal()
        starting  = Signal()
        # (flip-flops that only matter beside a valid flag have no reset, so that clearing
        # a list is the flip-flop's only synchronous reset: no logic cell per bit on iCE40)
        mask      = Signal(n, reset_less=True)
        densities = Signal(data.ArrayLayout(unsigned(9), n), reset_less=True)   # clamped to 256
        too_high  = Signal(n, reset_less=True)
        dense     = Signal(reset_less=True)
        side      = Signal(side_layout, reset_less=True)
        frame_threshold = Signal(9)
        frame_dense     = Signal()

        # The highest set bit of the mask, one-hot: a bit with no set bit above it. `above`
        # is a parallel suffix OR (log2(N) levels), so nothing waits for an encoded index.
        suffix = mask
        for distance in (1 << level for level in range(max(0, (n - 1).bit_length()))):
            suffix = suffix | (suffix >> distance)
        above = Signal(n)
        one_hot = Signal(n)
        remaining = Signal(n)
        any_tap = mask.any()
        last_tap = Signal()
        m.d.comb += [
            above.eq(suffix >> 1),
            one_hot.eq(mask & ~above),
            remaining.eq(mask & above),
            last_tap.eq(~remaining.any()),
            self.i_stream.ready.eq(~active | (last_tap & advance)),
            read.addr.eq(_one_hot_select(one_hot, [Const(i, index_width(n)) for i in range(n)])),
            read.en.eq(advance),
        ]
        density = _one_hot_select(one_hot, [densities[i] for i in range(n)])
        coordinates = entry_layout(_one_hot_select(one_hot, [
            entry_layout.const({"ci": i // (k * k), "dy": i // k % k, "dx": i % k}).as_value()
            for i in range(n)]))

        with m.If(active & advance):
            m.d.sync += [mask.eq(remaining), starting.eq(0)]
            with m.If(last_tap):
                m.d.sync += active.eq(0)
            with m.If((one_hot & too_high).any()):
                m.d.sync += self.errors.bad_density.eq(1)

        payload = self.i_stream.payload
        with m.If(self.i_stream.valid & self.i_stream.ready):
            threshold = Mux(payload.first, self.prune_threshold, frame_threshold)
            dense_now = Mux(payload.first, self.dense, frame_dense)
            with m.If(payload.first):
                m.d.sync += [frame_threshold.eq(self.prune_threshold), frame_dense.eq(self.dense)]
            flat = data.ArrayLayout(unsigned(9), n)(payload.data.as_value())
            m.d.sync += [
                active.eq(1),
                starting.eq(1),
                mask.eq(Cat(dense_now | (flat[i] >= threshold) for i in range(n))),
                too_high.eq(Cat(~dense_now & (flat[i] > DENSITY_ONE) for i in range(n))),
                densities.eq(Cat(Mux(dense_now | (flat[i] > DENSITY_ONE), DENSITY_ONE, flat[i])
                                 for i in range(n))),
                dense.eq(dense_now),
                side.eq(Cat(payload.x, payload.y, payload.first, payload.last)),
            ]

        # Stage 1: the tap's density (clamped to 1.0; 1.0 in dense mode) while its
        # weights are read.
        tap_layout_ = data.StructLayout({
            "tap": 1, "start": 1, "end": 1, "dense": 1, "entry": entry_layout, "side": side_layout,
        })

        def stage(value, valid, name):
            reg = Signal(tap_layout_, name=name, reset_less=True)
            reg_valid = Signal(name=f"{name}_valid")
            with m.If(advance):
                m.d.sync += [reg.eq(value), reg_valid.eq(valid)]
            return reg, reg_valid

        walked = Signal(tap_layout_)
        m.d.comb += [
            walked.tap.eq(any_tap),
            walked.start.eq(starting),
            walked.end.eq(last_tap),
            walked.dense.eq(dense),
            walked.entry.eq(coordinates),
            walked.side.eq(side),
        ]
        stage1, stage1_valid = stage(walked, active, "stage1")
        stage1_density = Signal(9, reset_less=True)
        with m.If(advance):
            m.d.sync += stage1_density.eq(density)

        # Stage 2: the masked copies of W whose shifted sum is W·A: `A[j] ? W : 0` for
        # j < 8. A = 256 has A[0:8] = 0; it makes the two top terms 8·W each (so that they
        # sum to 256·W). Each term bit is one 4-input function of registered bits, and the
        # terms are registered, so the densities' fan-out to every channel's terms is
        # the only thing on the path.
        weights = [read.data[8 * co:8 * co + 8].as_signed() for co in range(c_out)]
        a = stage1_density
        stage2, stage2_valid = stage(stage1, stage1_valid, "stage2")
        terms = []
        for co, weight in enumerate(weights):
            values = [Mux(a[j], weight, 0) for j in range(6)] + [
                Mux(a[8], weight << 1, Mux(a[6], weight, 0)),          # ·4: 8·W when A = 256
                Mux(a[7] | a[8], weight, 0)]
            registers = [Signal(signed(len(value)), name=f"term_{co}_{j}", reset_less=True)
                         for j, value in enumerate(values)]
            with m.If(advance):
                m.d.sync += [register.eq(value) for register, value in zip(registers, values)]
            terms.append(registers)

        # Stage 2b: W·A[0:4] and W·A[4:8], each a sum of four shifted terms (two adder levels).
        def tree(values):
            values = [value << (j % 4) for j, value in enumerate(values)]
            return ((values[0] + values[1]) + (values[2] + values[3]))[:12].as_signed()

        stage2b, stage2b_valid = stage(stage2, stage2_valid, "stage2b")
        low_half, high_half = [], []
        for co in range(c_out):
            low = Signal(signed(12), name=f"low_{co}", reset_less=True)
            high = Signal(signed(12), name=f"high_{co}", reset_less=True)
            with m.If(advance):
                m.d.sync += [low.eq(tree(terms[co][:4])), high.eq(tree(terms[co][4:]))]
            low_half.append(low)
            high_half.append(high)

        # Stage 3: S = (W·A + 128) >> 8, and whether the tap is listed.
        stage3, stage3_valid = stage(stage2b, stage2b_valid, "stage3")
        scaled, listed, zero = [], [], []
        for co in range(c_out):
            total = (high_half[co] << 4) + low_half[co] + 128
            value = total[8:16].as_signed()
            s = Signal(signed(8), name=f"scaled_{co}", reset_less=True)
            is_listed = Signal(name=f"listed_{co}", reset_less=True)
            is_zero = Signal(name=f"zero_{co}", reset_less=True)
            with m.If(advance):
                m.d.sync += [
                    s.eq(value),
                    is_listed.eq(stage2b.tap & (stage2b.dense | value.any())),
                    is_zero.eq(stage2b.tap & ~stage2b.dense & ~value.any()),
                ]
            scaled.append(s)
            listed.append(is_listed)
            zero.append(is_zero)

        # Stage 4: each channel's list, a shift register that takes a listed tap at its
        # front (taps arrive in descending i, so the list ends ascending). The first tap
        # of a position clears it.
        lists = [Signal(data.ArrayLayout(entry_layout, n), name=f"list_{co}", reset_less=True)
                 for co in range(c_out)]
        counts = [Signal(count_width, name=f"count_{co}", reset_less=True) for co in range(c_out)]
        zeros = [Signal(count_width, name=f"zeros_{co}", reset_less=True) for co in range(c_out)]
        build_side = Signal(side_layout, reset_less=True)

        output = Signal(self.o_stream.payload.shape(), reset_less=True)
        m.d.comb += self.o_stream.payload.eq(output)
        with m.If(build_complete & output_free):
            for co in range(c_out):
                m.d.sync += [
                    output.lists[co].count.eq(counts[co]),
                    output.lists[co].zero.eq(zeros[co]),
                    output.lists[co].pruned.eq(n - counts[co] - zeros[co]),
                    output.lists[co].taps.eq(lists[co]),
                ]
            m.d.sync += [
                output.x.eq(build_side.x), output.y.eq(build_side.y),
                output.first.eq(build_side.first), output.last.eq(build_side.last),
                self.o_stream.valid.eq(1),
                build_complete.eq(0),
            ]
        with m.Elif(self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)

        with m.If(advance & stage3_valid):
            m.d.sync += [build_complete.eq(stage3.end), build_side.eq(stage3.side)]
            for co in range(c_out):
                entry = Signal(entry_layout, name=f"entry_{co}")
                m.d.comb += [entry.eq(stage3.entry), entry.weight.eq(scaled[co])]
                with m.If(stage3.start):
                    m.d.sync += [
                        lists[co].eq(0),
                        counts[co].eq(listed[co]),
                        zeros[co].eq(zero[co]),
                    ]
                    with m.If(listed[co]):
                        m.d.sync += lists[co][0].eq(entry)
                with m.Else():
                    with m.If(listed[co]):
                        m.d.sync += [lists[co][j].eq(lists[co][j - 1]) for j in range(1, n)]
                        m.d.sync += [lists[co][0].eq(entry), counts[co].eq(counts[co] + 1)]
                    with m.If(zero[co]):
                        m.d.sync += zeros[co].eq(zeros[co] + 1)

        m.d.comb += self.busy.eq(active | stage1_valid | stage2_valid | stage2b_valid | stage3_valid |
                                 build_complete | self.o_stream.valid)
        return m
