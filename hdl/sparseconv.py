"""The sparse-tap convolution engine: output-stationary MAC lanes that walk tap lists."""

import operator

from amaranth.hdl import Array, C, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..golden.sparseconv import MULTIPLIER_MAX, SHIFT_MAX, accumulator_width, cycles_per_position
from .frame import check_int, check_shape, coord_width
from .padmask import PaddingMask
from .requant import REQUANT_STAGES, requantize_stages
from .taps import index_width, tap_layout, tap_lists_layout
from .window import PadMode, window_layout


__all__ = ["SparseConvErrors", "SparseConv"]


def _tree(values, combine):
    """``values`` combined pairwise as a balanced tree (depth ``log2 n``, not ``n``: shorter
    logic, and expressions shallow enough for the Python simulator at any list length)."""
    values = list(values)
    while len(values) > 1:
        values = [combine(values[i], values[i + 1]) if i + 1 < len(values) else values[i]
                  for i in range(0, len(values), 2)]
    return values[0]


def _prefix_or(value):
    """Bit ``i``: any of ``value[0 … i - 1]`` is set (bit 0 is 0): a balanced prefix tree."""
    bits = [value[i] for i in range(len(value))]
    below, span = [C(0, 1)] + bits[:-1], 1
    while span < len(bits):
        below = [below[i] | below[i - span] if i >= span else below[i] for i in range(len(bits))]
        span *= 2
    return Cat(*below)


def _at_most_one(value):
    """1 when at most one bit of ``value`` is set: a balanced tree of (any, several) pairs."""
    def combine(a, b):
        return (a[0] | b[0], a[1] | b[1] | (a[0] & b[0]))
    return ~_tree(((value[i], C(0, 1)) for i in range(len(value))), combine)[1]


def _sum(values):
    """Sum of ``values`` as a balanced tree of adders."""
    return _tree(values, operator.add)


class SparseConvErrors(data.Struct):
    """Sticky error flags of :class:`SparseConv` (see its *Errors* section)."""
    misaligned:     1
    bad_tap:        1
    bad_mask_write: 1


#: Counter width; every counter wraps modulo ``2**32``.
COUNTER_BITS = 32


class SparseConv(wiring.Component):
    """Convolution over tap lists: only listed, unmasked taps cost a cycle and a multiplication.

    Bit-exact with :func:`dynsparse.golden.sparseconv.sparse_conv` (and
    :func:`~dynsparse.golden.sparseconv.requantize` with ``requantize``). Each
    output position takes one window (from :class:`~dynsparse.hdl.window.WindowGenerator`)
    and one transfer of tap lists (one list per output channel, :mod:`dynsparse.hdl.taps`)
    and gives one transfer of ``C_out`` results.

    Architecture (output-stationary): output channels are processed in groups
    of ``lanes``; lane ``j`` of group ``g`` computes channel ``g·L + j`` and
    walks its own list, taking the first entry still to do each cycle. An
    entry is done when it is performed or skipped: beyond ``count``, malformed,
    or reading a padding element that ``pad_mode = ZERO`` or a mask bit of 0
    excludes (nothing is excluded in ``dense`` mode). A group ends when all its
    lanes are empty; groups without work cost no cycle, a position without any
    work costs one. Windows pass two registers: W0 takes a window and reads its
    padding-mask bits, W1 holds the window being walked with its excluded
    elements in flip-flops. The next position (window in W0, tap list held by
    its source) is taken in the cycle the current one ends: no bubble. Per
    lane: entry select → pixel select → registered multiplier operands →
    multiply-accumulate into the accumulator register (one ``SB_MAC16`` with
    its accumulator on iCE40; ``MULT18X18D`` and a fabric adder on ECP5).

    Parameters
    ----------
    kernel_size : int
        ``K``, odd, 1 to 15.
    in_channels, out_channels : int
        ``C_in``, ``C_out`` >= 1.
    lanes : int
        ``L``, multiplier lanes, 1 to ``C_out``.
    pixel_shape : shape
        ``unsigned(8)`` (images) or ``signed(8)`` (feature maps).
    max_width, max_height : int
        Largest frame (as :class:`~dynsparse.hdl.window.WindowGenerator`); they size
        ``x``/``y`` and the padding mask.
    block_size : int
        ``B``, padding-block size, a power of two in [1, 64].
    requantize : bool
        Give int8 results (``multiplier``, ``shift``) instead of accumulators.

    Members
    -------
    i_window : In(stream.Signature(window_layout))
        Windows with ``pad`` flags, ``x``, ``y``, ``first``, ``last``.
    i_taps : In(stream.Signature(tap_lists_layout))
        One transfer per output position: ``lists[co]`` (``count``, ``pruned``,
        ``zero``, ``taps[N]``), ``x``, ``y``, ``first``, ``last``.
    o_stream : Out(stream.Signature(...))
        ``data[co]`` (signed :attr:`accumulator_width` bits, or ``signed(8)``
        with ``requantize``), ``x``, ``y``, ``first``, ``last`` of the window.
    pad_mode : In(PadMode)
        The window generator's mode; ``ZERO`` skips every tap that reads padding.
    dense : In(1)
        Skip nothing for padding. ``pad_mode`` and ``dense`` are sampled with a
        window that has ``first = 1``.
    width, height : In(unsigned)
        Frame size, for the range check of mask writes.
    multiplier : In(unsigned(16)), shift : In(range(48))
        Requantisation, read while results are requantised (change them
        between frames); present only with ``requantize``.
    mask_write, mask_band, mask_index, mask_value : In
        Padding-mask write port (:class:`~dynsparse.hdl.padmask.PaddingMask`); the
        mask resets to all-included.
    cycles, performed, skipped_pruned, skipped_zero, skipped_padding : Out(unsigned(32))
        Counters, wrapping modulo ``2**32``: engine steps (cycles in which the
        engine performed a MAC step or passed a position without work; stall
        cycles are not counted), MACs performed, and taps skipped for pruning,
        zero weight and padding. ``performed`` lags a step by one cycle, the skip
        counters a position's first step by two; all are final when ``busy`` is 0.
    clear_counters : In(1)
        Sets every counter to 0 (an increment in the same cycle is lost).
    errors : Out(SparseConvErrors), clear_errors : In(1)
        Sticky error flags; ``clear_errors`` clears them (a flag raised in the same cycle stays).
    busy : Out(1)
        A position is buffered, in the engine, in the pipeline or offered.

    Errors
    ------
    - ``misaligned``: a tap list's ``x``/``y``/``first``/``last`` differ from its
      window's; the pair is processed anyway (the output carries the window's).
    - ``bad_tap``: a listed entry with ``dy ≥ K``, ``dx ≥ K`` or ``ci ≥ C_in``
      (that entry is not performed), or ``count > N`` (no entry of that list is
      performed). Nothing hangs; the next good frame is exact.
    - ``bad_mask_write``: a mask write beyond its band for the current
      ``width``/``height``; it is ignored.

    Timing
    ------
    A position costs ``max(1, Σ_g max_{co∈g} active[co])`` engine steps
    (:meth:`cycles_per_position`). When the engine is idle and the tap list
    waits, a window accepted in cycle ``t`` has its result offered in cycle
    ``t + latency + steps - 1``. ``o_stream`` may stall at any cycle; the
    engine then stops only when a finished position cannot leave.

    Raises
    ------
    TypeError, ValueError
        On a bad parameter; the message names the value.
    """

    #: Registers from a position's last engine step to its result register: entry,
    #: operands, accumulator, result (the two window registers come first: W0 takes the
    #: window and looks its mask bits up, W1 holds it, with its excluded bits, while the steps happen).
    _MAC_STAGES = 4
    _WINDOW_STAGES = 2

    def __init__(self, *, kernel_size=3, in_channels=1, out_channels=8, lanes=8,
                 pixel_shape=unsigned(8), max_width=640, max_height=480, block_size=4,
                 requantize=False):
        self._kernel_size  = check_int("kernel size", kernel_size, minimum=1, maximum=15, odd=True)
        self._in_channels  = check_int("input channel count", in_channels, minimum=1)
        self._out_channels = check_int("output channel count", out_channels, minimum=1)
        self._lanes        = check_int("lane count", lanes, minimum=1, maximum=out_channels)
        self._pixel_shape  = check_shape("pixel shape", pixel_shape)
        if self._pixel_shape not in (unsigned(8), signed(8)):
            raise ValueError(f"pixel shape must be unsigned(8) or signed(8), not {pixel_shape!r}")
        self._max_width    = check_int("maximum width", max_width, minimum=1, maximum=65536)
        self._max_height   = check_int("maximum height", max_height, minimum=1, maximum=65536)
        self._block_size   = check_int("block size", block_size, minimum=1, maximum=64)
        if block_size & (block_size - 1):
            raise ValueError(f"block size must be a power of two in [1, 64], not {block_size!r}")
        if not isinstance(requantize, bool):
            raise TypeError(f"requantize must be a bool, not {requantize!r}")
        self._requantize = requantize
        self._mask = PaddingMask(kernel_size=kernel_size, block_size=block_size,
                                 max_width=max_width, max_height=max_height)

        result_shape = signed(8) if requantize else signed(self.accumulator_width)
        output_layout = data.StructLayout({
            "data":  data.ArrayLayout(result_shape, out_channels),
            "x":     unsigned(coord_width(max_width)),
            "y":     unsigned(coord_width(max_height)),
            "first": unsigned(1),
            "last":  unsigned(1),
        })
        ports = {
            "i_window": In(stream.Signature(window_layout(
                kernel_size=kernel_size, channels=in_channels, pixel_shape=self._pixel_shape,
                max_width=max_width, max_height=max_height))),
            "i_taps":   In(stream.Signature(tap_lists_layout(
                kernel_size=kernel_size, in_channels=in_channels, out_channels=out_channels,
                max_width=max_width, max_height=max_height))),
            "o_stream": Out(stream.Signature(output_layout)),
            "pad_mode": In(PadMode),
            "dense":    In(1),
            "width":    In(range(max_width + 1), init=max_width),
            "height":   In(range(max_height + 1), init=max_height),
            "mask_write": In(1),
            "mask_band":  In(2),
            "mask_index": In(self._mask.index_width),
            "mask_value": In(1),
            **{name: Out(COUNTER_BITS) for name in
               ("cycles", "performed", "skipped_pruned", "skipped_zero", "skipped_padding")},
            "clear_counters": In(1),
            "errors":       Out(SparseConvErrors),
            "clear_errors": In(1),
            "busy":         Out(1),
        }
        if requantize:
            ports["multiplier"] = In(range(MULTIPLIER_MAX + 1))
            ports["shift"] = In(range(SHIFT_MAX + 1))
        super().__init__(ports)

    kernel_size  = property(lambda self: self._kernel_size)
    in_channels  = property(lambda self: self._in_channels)
    out_channels = property(lambda self: self._out_channels)
    lanes        = property(lambda self: self._lanes)
    pixel_shape  = property(lambda self: self._pixel_shape)
    max_width    = property(lambda self: self._max_width)
    max_height   = property(lambda self: self._max_height)
    block_size   = property(lambda self: self._block_size)
    requantize   = property(lambda self: self._requantize)

    @property
    def taps_per_list(self):
        """``N = C_in · K²``, the capacity of a tap list."""
        return self._in_channels * self._kernel_size ** 2

    @property
    def groups(self):
        """``ceil(C_out / L)`` output-channel groups."""
        return -(-self._out_channels // self._lanes)

    @property
    def accumulator_width(self):
        """Signed accumulator bits: ``N`` products of an int8 weight (``-128`` included, so
        a malformed list cannot overflow either) and a full-scale pixel fit, whatever
        the list (:func:`dynsparse.golden.sparseconv.accumulator_width`)."""
        return accumulator_width(taps=self.taps_per_list, pixel_signed=self._pixel_shape.signed)

    @property
    def latency(self):
        """Cycles from accepting a window into an idle engine (its tap list waiting) to
        offering its result, for a position of one step; add ``steps - 1`` otherwise."""
        return self._WINDOW_STAGES + self._MAC_STAGES + (REQUANT_STAGES if self._requantize else 0)

    def cycles_per_position(self, active):
        """Engine steps of positions whose outputs perform ``active[..., C_out]`` taps."""
        return cycles_per_position(active, lanes=self._lanes)

    def elaborate(self, platform):
        m = Module()
        k, r, n = self._kernel_size, self._kernel_size // 2, self.taps_per_list
        c_out, lanes, groups = self._out_channels, self._lanes, self.groups
        window, taps = self.i_window, self.i_taps
        meta_layout = data.StructLayout({name: self.o_stream.payload.shape()[name].shape
                                         for name in ("x", "y", "first", "last")})

        # The engine stops only when a finished position cannot enter the output register.
        advance = Signal()
        final_position = Signal()           # the result stage writes a finished position
        m.d.comb += advance.eq(~(final_position & self.o_stream.valid & ~self.o_stream.ready))

        errors = Signal(SparseConvErrors)
        raised = Signal(SparseConvErrors)
        m.d.comb += self.errors.eq(errors)
        with m.If(self.clear_errors):
            m.d.sync += errors.eq(raised)
        with m.Else():
            m.d.sync += errors.eq(errors.as_value() | raised.as_value())

        # -------- padding mask and the two window registers ---------------------------------------
        m.submodules.mask = mask = self._mask
        m.d.comb += [
            mask.write.eq(self.mask_write), mask.band.eq(self.mask_band),
            mask.index.eq(self.mask_index), mask.value.eq(self.mask_value),
            mask.width.eq(self.width), mask.height.eq(self.height),
            raised.bad_mask_write.eq(mask.bad_write),
            mask.x.eq(window.payload.x), mask.y.eq(window.payload.y), mask.pad.eq(window.payload.pad),
        ]
        frame_mode, frame_dense = Signal(PadMode), Signal()
        mode = Mux(window.payload.first, self.pad_mode, frame_mode)
        dense = Mux(window.payload.first, self.dense, frame_dense)

        # W0 takes the window from i_window and looks its mask bits up (block RAM: they arrive
        # the next cycle); W1, the engine's window, takes the window from W0 with its
        # *excluded* bits computed and registered, so the engine's tap selection starts from
        # flip-flops. W0 fills while W1's position is walked: no bubble between positions.
        pixels_layout = window.payload.shape()["data"].shape
        w0_valid = Signal()
        w0_pixels = Signal(pixels_layout, reset_less=True)
        w0_pad = Signal(k * k, reset_less=True)             # element (dy, dx) at bit dy·K + dx
        w0_zero, w0_dense = Signal(reset_less=True), Signal(reset_less=True)
        w0_meta = Signal(meta_layout, reset_less=True)
        w1_valid = Signal()
        w_pixels = Signal(pixels_layout, reset_less=True)
        w_excluded = Signal(k * k, reset_less=True)
        w_meta = Signal(meta_layout, reset_less=True)
        done = Signal()                                     # the position in the engine ends
        move = Signal()                                     # W0 → W1
        m.d.comb += [
            move.eq(w0_valid & (~w1_valid | done)),
            # (a lookup never meets a mask write: the block RAMs' read-during-write result
            # is undefined, no_rw_check; the window waits one cycle and sees the write)
            window.ready.eq((~w0_valid | move) & ~self.mask_write),
            # The mask is read every cycle at the offered window (nothing in the read path
            # waits for the engine); the bits of an accepted window arrive the next cycle,
            # when they are kept in W0 or taken straight into W1.
            mask.lookup.eq(1),
        ]
        looked = Signal()                                   # W0 was loaded in the last cycle
        w0_excluded = Signal(k * k, reset_less=True)
        excluded = Signal(k * k)
        m.d.sync += looked.eq(window.valid & window.ready)
        m.d.comb += excluded.eq(Cat(~w0_dense & w0_pad[dy * k + dx] & (w0_zero | ~mask.bits[dy][dx])
                                    for dy in range(k) for dx in range(k)))
        with m.If(looked):
            m.d.sync += w0_excluded.eq(excluded)
        with m.If(window.valid & window.ready):
            m.d.sync += [
                w0_valid.eq(1),
                w0_pixels.eq(window.payload.data),
                w0_pad.eq(window.payload.pad.as_value()),
                w0_zero.eq(mode == PadMode.ZERO),
                w0_dense.eq(dense),
                w0_meta.eq(Cat(window.payload.x, window.payload.y,
                               window.payload.first, window.payload.last)),
            ]
            with m.If(window.payload.first):
                m.d.sync += [frame_mode.eq(self.pad_mode), frame_dense.eq(self.dense)]
        with m.Elif(move):
            m.d.sync += w0_valid.eq(0)
        with m.If(move):
            m.d.sync += [
                w1_valid.eq(1),
                w_pixels.eq(w0_pixels),
                w_meta.eq(w0_meta),
                w_excluded.eq(Mux(looked, excluded, w0_excluded)),
            ]
        with m.Elif(done):
            m.d.sync += w1_valid.eq(0)

        # -------- engine: the position being walked ----------------------------------------------
        # The position is the window in W1 and the tap list offered on i_taps, which its
        # source holds until the position's last step takes it; the next window waits in W0
        # meanwhile. Both enter in the cycle the position ends: no bubble, and no copy of the
        # lists in this block.
        started = Signal()                                  # the position's first step is done
        pending = [Signal(n, name=f"pending_{co}", reset_less=True) for co in range(c_out)]

        # entries of the offered tap lists: performed, skipped for padding, malformed
        lists = taps.payload.lists
        tap_shape = tap_layout(kernel_size=k, in_channels=self._in_channels)
        excluded_rows = Array(Array(w_excluded[dy * k + dx] for dx in range(k)) for dy in range(k))
        todo, padding, bad_bits = [], [], []
        for co in range(c_out):
            count = lists[co].count
            count_bad = count > n if (1 << len(count)) - 1 > n else C(0, 1)
            todo_bits, padding_bits = [], []
            for i, tap in enumerate(lists[co].taps):
                listed = (count > i) & ~count_bad
                malformed = (tap.dy >= k) | (tap.dx >= k) | (tap.ci >= self._in_channels)
                excluded = excluded_rows[tap.dy][tap.dx]
                todo_bits.append(listed & ~malformed & ~excluded)
                padding_bits.append(listed & ~malformed & excluded)
                bad_bits.append(listed & malformed)
            bad_bits.append(count_bad)
            todo.append(Signal(n, name=f"todo_{co}"))
            padding.append(Signal(n, name=f"padding_{co}"))
            m.d.comb += [todo[-1].eq(Cat(*todo_bits)), padding[-1].eq(Cat(*padding_bits))]
        bad = _tree(bad_bits, operator.or_)

        # the entries still to do: all of the list at the first step
        vectors = [Signal(n, name=f"vector_{co}") for co in range(c_out)]
        m.d.comb += [vectors[co].eq(Mux(started, pending[co], todo[co])) for co in range(c_out)]
        # the group walked this step: the first one with work
        group_work = [Cat(*vectors[g * lanes:(g + 1) * lanes]).any() for g in range(groups)]
        group = Signal(range(max(2, groups)))
        for g in reversed(range(groups)):
            with m.If(group_work[g]):
                m.d.comb += group.eq(g)
        later_work = Cat(*(group_work[g] & (group != g) for g in range(groups))).any()

        def of_group(values):
            """``values[g]`` for the current group (0 past the last output channel)."""
            return values[0] if groups == 1 else Array(values)[group]

        lane_taps, lane_active, lane_rest, lane_single = [], [], [], []
        for j in range(lanes):
            vector = of_group([vectors[g * lanes + j] if g * lanes + j < c_out else C(0, n)
                               for g in range(groups)])
            lane_vector, first = Signal(n, name=f"lane_vector{j}"), Signal(n, name=f"lane_first{j}")
            lane_rest.append(Signal(n, name=f"lane_rest{j}"))
            lane_active.append(Signal(name=f"lane_active{j}"))
            lane_single.append(Signal(name=f"lane_single{j}"))
            # the lowest set bit: each bit without a set bit below it (a prefix OR, no carry chain)
            below = _prefix_or(lane_vector)
            m.d.comb += [
                lane_vector.eq(vector),
                first.eq(lane_vector & ~below),
                lane_rest[j].eq(lane_vector & below),
                lane_active[j].eq(lane_vector.any()),
                lane_single[j].eq(_at_most_one(lane_vector)),   # nothing left after this step
            ]
            entries = [of_group([lists[g * lanes + j].taps[i].as_value() if g * lanes + j < c_out
                                 else C(0, tap_shape.size) for g in range(groups)]) for i in range(n)]
            # one-hot select: an AND-OR of the entries
            lane_taps.append(_tree((Mux(first[i], entries[i], 0) for i in range(n)), operator.or_))
        group_end, position_end = Signal(), Signal()
        m.d.comb += [
            group_end.eq(Cat(*lane_single).all()),
            position_end.eq(group_end & ~later_work),
        ]

        step = Signal()
        first_step = Signal()
        # (plain assignments, not under m.If: Icarus may never run a combinational process
        # whose inputs do not change after time 0, which would leave these undefined)
        m.d.comb += [
            step.eq(advance & w1_valid & taps.valid),
            first_step.eq(step & ~started),
            done.eq(step & position_end),
            taps.ready.eq(done),
            raised.bad_tap.eq(first_step & bad),
            raised.misaligned.eq(first_step & (w_meta.as_value() != Cat(
                taps.payload.x, taps.payload.y, taps.payload.first, taps.payload.last))),
        ]
        with m.If(step):
            m.d.sync += started.eq(~position_end)
            for g in range(groups):
                m.d.sync += [pending[g * lanes + j].eq(Mux(group == g, lane_rest[j], vectors[g * lanes + j]))
                             for j in range(lanes) if g * lanes + j < c_out]

        # -------- MAC lanes ----------------------------------------------------------------------
        def register(value, name, reset_less=True):
            reg = Signal.like(value, name=name, reset_less=reset_less)
            with m.If(advance):
                m.d.sync += reg.eq(value)
            return reg

        tags = {"step": step, "group_end": group_end, "position_end": position_end}
        tag_group, tag_meta = group, w_meta
        in_flight = []                      # the step tag of every stage, for busy

        def delay_tags(stage):
            nonlocal tags, tag_group, tag_meta
            tags = {name: register(value, f"{stage}_{name}", reset_less=False)
                    for name, value in tags.items()}
            tag_group = register(tag_group, f"{stage}_group")
            tag_meta = meta_layout(register(tag_meta.as_value(), f"{stage}_meta"))
            in_flight.append(tags["step"])

        # stage 1: the selected entries, and the window they read
        e1_active = [register(lane_active[j], f"e1_active{j}") for j in range(lanes)]
        e1_taps = [tap_shape(register(lane_taps[j], f"e1_tap{j}")) for j in range(lanes)]
        e1_pixels = pixels_layout(register(w_pixels.as_value(), "e1_pixels"))
        delay_tags("e1")
        e1_step = tags["step"]
        # stage 2: multiplier operands (DSP input registers)
        # (an idle lane selected no entry: its one-hot select gave weight 0)
        weights = [register(e1_taps[j].weight, f"e2_weight{j}") for j in range(lanes)]
        # (nested Arrays become multiplexers; a dynamic index into the flat window would
        # become a shifter)
        pixel_array = Array(Array(Array(e1_pixels[dy][dx][ci] for ci in range(self._in_channels))
                                  for dx in range(k)) for dy in range(k))
        # (a signed operand register, as wide as the multiplier needs: with an extension
        # between the register and the product Yosys would not pack the register into the DSP)
        pixel_values = [register(pixel_array[e1_taps[j].dy][e1_taps[j].dx][e1_taps[j].ci].as_signed()
                                 if self._pixel_shape.signed else
                                 Cat(pixel_array[e1_taps[j].dy][e1_taps[j].dx][e1_taps[j].ci], C(0, 1)).as_signed(),
                                 f"e2_pixel{j}") for j in range(lanes)]
        delay_tags("e2")
        # stage 3: the accumulators, cleared at a group's first step: multiply-accumulate
        # with registered operands and a registered sum (one SB_MAC16 per lane on iCE40, its
        # accumulator included; a MULT18X18D and an adder on ECP5)
        accumulators = [Signal(signed(self.accumulator_width), name=f"acc{j}", reset_less=True)
                        for j in range(lanes)]
        fresh = Signal(init=1)
        with m.If(advance & tags["step"]):
            m.d.sync += [accumulators[j].eq(Mux(fresh, 0, accumulators[j]) + weights[j] * pixel_values[j])
                         for j in range(lanes)]
            m.d.sync += fresh.eq(tags["group_end"])
        delay_tags("acc")
        results = accumulators
        result_valid = tags["step"] & tags["group_end"]
        if self._requantize:
            results, (result_valid, position_last, tag_group, meta), valids = requantize_stages(
                m, advance, results, self.multiplier, self.shift,
                [result_valid, tags["position_end"], tag_group, tag_meta.as_value()])
            tag_meta = meta_layout(meta)
            in_flight += valids
        else:
            position_last = tags["position_end"]

        # -------- counters ---------------------------------------------------------------------
        # MACs are counted as their steps leave stage 1; the skip counts of a loaded position
        # are registered raw, summed per list the next cycle and added up the cycle after.
        loaded, summed = Signal(), Signal()
        skip_pruned = [Signal.like(lists[co].pruned, name=f"skip_pruned_{co}") for co in range(c_out)]
        skip_zero = [Signal.like(lists[co].zero, name=f"skip_zero_{co}") for co in range(c_out)]
        skip_padding = [Signal(n, name=f"skip_padding_{co}") for co in range(c_out)]
        list_padding = [Signal(range(n + 1), name=f"list_padding_{co}") for co in range(c_out)]
        total_pruned, total_zero = (Signal(range(n * c_out + 1), name=f"total_{name}")
                                    for name in ("pruned", "zero"))
        m.d.sync += [loaded.eq(first_step), summed.eq(loaded)]
        with m.If(first_step):
            m.d.sync += [skip_pruned[co].eq(lists[co].pruned) for co in range(c_out)]
            m.d.sync += [skip_zero[co].eq(lists[co].zero) for co in range(c_out)]
            m.d.sync += [skip_padding[co].eq(padding[co]) for co in range(c_out)]
        with m.If(loaded):
            m.d.sync += [list_padding[co].eq(_sum(list(skip_padding[co]))) for co in range(c_out)]
            m.d.sync += [total_pruned.eq(_sum(skip_pruned)), total_zero.eq(_sum(skip_zero))]
        increments = {
            "cycles":          step,
            "performed":       Mux(advance & e1_step, _sum(e1_active), 0),
            "skipped_pruned":  Mux(summed, total_pruned, 0),
            "skipped_zero":    Mux(summed, total_zero, 0),
            "skipped_padding": Mux(summed, _sum(list_padding), 0),
        }
        for name, increment in increments.items():
            counter = getattr(self, name)
            with m.If(self.clear_counters):
                m.d.sync += counter.eq(0)
            with m.Else():
                m.d.sync += counter.eq(counter + increment)

        # -------- results: collected per group, offered per position ----------------------------
        collected = [Signal(self.o_stream.payload.data[co].shape(), name=f"collected_{co}",
                            reset_less=True) for co in range(c_out)]
        merged = [Mux(tag_group == co // lanes, results[co % lanes], collected[co]) for co in range(c_out)]
        m.d.comb += final_position.eq(result_valid & position_last)
        with m.If(self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)
        with m.If(advance & result_valid):
            with m.If(position_last):
                m.d.sync += [self.o_stream.valid.eq(1), self.o_stream.payload.x.eq(tag_meta.x),
                             self.o_stream.payload.y.eq(tag_meta.y),
                             self.o_stream.payload.first.eq(tag_meta.first),
                             self.o_stream.payload.last.eq(tag_meta.last)]
                m.d.sync += [self.o_stream.payload.data[co].eq(merged[co]) for co in range(c_out)]
                m.d.sync += [collected[co].eq(0) for co in range(c_out)]
            with m.Else():
                m.d.sync += [collected[co].eq(merged[co]) for co in range(c_out)]

        m.d.comb += self.busy.eq(Cat(w0_valid, w1_valid, self.o_stream.valid, *in_flight).any())
        return m
