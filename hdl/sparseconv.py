"""The sparse-tap convolution engine: pairs of MAC lanes that walk tap lists from both ends."""

import operator
from types import SimpleNamespace

from amaranth.hdl import Array, C, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..golden.sparseconv import (FINISHED_SLOTS, MULTIPLIER_MAX, QUEUE_DEPTH, SHIFT_MAX, accumulator_width,
                               cycles_per_position, engine_cycles, walker_channels)
from .frame import check_int, check_shape, coord_width
from .padmask import PaddingMask
from .requant import REQUANT_STAGES, requantize_stages
from .taps import list_capacity as _list_capacity, tap_layout, tap_lists_layout
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


def _sum(values):
    """Sum of ``values`` as a balanced tree of adders."""
    return _tree(values, operator.add)


class _Queue:
    """The order queue's ports, as :class:`amaranth.lib.fifo.SyncFIFO` names them."""
    def __init__(self, slots, head, level, depth):
        self.w_en = Signal(name="queue_w_en")
        self.w_data = Signal(len(slots[0]), name="queue_w_data")
        self.r_en = Signal(name="queue_r_en")
        self.w_rdy = level != depth
        self.r_rdy = level != 0
        self.r_data = Array(slots)[head] if depth > 1 else slots[0]


class SparseConvErrors(data.Struct):
    """Sticky error flags of :class:`SparseConv` (see its *Errors* section)."""
    misaligned:     1
    bad_tap:        1
    bad_mask_write: 1


#: Counter width; every counter wraps modulo ``2**32``.
COUNTER_BITS = 32


def sticky_errors(m, port, clear):
    """Drive the error-flag output ``port`` (a struct view) from a sticky register that
    ``clear`` resets; returns the flags raised in this cycle (assign them)."""
    errors = Signal(port.shape())
    raised = Signal(port.shape())
    m.d.comb += port.eq(errors)
    with m.If(clear):
        m.d.sync += errors.eq(raised)
    with m.Else():
        m.d.sync += errors.eq(errors.as_value() | raised.as_value())
    return raised


def add_counters(m, component, increments):
    """Counter ``component.<name>`` adds ``increments[name]`` every cycle;
    ``component.clear_counters`` zeroes them all."""
    for name, increment in increments.items():
        counter = getattr(component, name)
        with m.If(component.clear_counters):
            m.d.sync += counter.eq(0)
        with m.Else():
            m.d.sync += counter.eq(counter + increment)


class _ConvEngine:
    """What :class:`SparseConv` and :class:`~dynsparse.hdl.laneconv.LaneConv` share: the
    parameters and their checks, the ports but the tap-list stream, the error flags, the
    window front (padding mask, W0, W1) and the counters."""

    def _check_parameters(self, *, kernel_size, in_channels, out_channels, lanes, pixel_shape,
                          max_width, max_height, block_size, requantize):
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

    def _ports(self, taps_layout):
        """Every port; ``i_taps`` carries ``taps_layout``."""
        max_width, max_height = self._max_width, self._max_height
        result_shape = signed(8) if self._requantize else signed(self.accumulator_width)
        output_layout = data.StructLayout({
            "data":  data.ArrayLayout(result_shape, self._out_channels),
            "x":     unsigned(coord_width(max_width)),
            "y":     unsigned(coord_width(max_height)),
            "first": unsigned(1),
            "last":  unsigned(1),
        })
        ports = {
            "i_window": In(stream.Signature(window_layout(
                kernel_size=self._kernel_size, channels=self._in_channels, pixel_shape=self._pixel_shape,
                max_width=max_width, max_height=max_height))),
            "i_taps":   In(stream.Signature(taps_layout)),
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
        if self._requantize:
            ports["multiplier"] = In(range(MULTIPLIER_MAX + 1))
            ports["shift"] = In(range(SHIFT_MAX + 1))
        return ports

    kernel_size  = property(lambda self: self._kernel_size)
    in_channels  = property(lambda self: self._in_channels)
    out_channels = property(lambda self: self._out_channels)
    lanes        = property(lambda self: self._lanes)
    pixel_shape  = property(lambda self: self._pixel_shape)
    max_width    = property(lambda self: self._max_width)
    max_height   = property(lambda self: self._max_height)
    block_size   = property(lambda self: self._block_size)
    requantize   = property(lambda self: self._requantize)

    def _error_flags(self, m):
        """The sticky ``errors`` register; returns the flags raised in this cycle (assign them)."""
        return sticky_errors(m, self.errors, self.clear_errors)

    def _counters(self, m, increments):
        """Each counter adds its increment every cycle; ``clear_counters`` zeroes them."""
        add_counters(m, self, increments)

    def _window_front(self, m, raised, done, meta_layout):
        """The padding mask and the window registers W0 and W1 (see *Architecture* in
        docs/sparseconv.md). ``done``: W1's position ends in this cycle. Returns the front's
        signals: ``w0_valid``, ``w1_valid``, ``pixels`` (flat), ``excluded`` (bit ``dy·K + dx``),
        ``meta`` and ``pixels_layout``."""
        k = self._kernel_size
        window = self.i_window
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
        # The window's pixels are held in flat registers (the layout is put back on at E1):
        # a register with the nested array layout gets wires named "w_pixels[0]" and
        # "w_pixels[0][2]", whose bit names ("w_pixels[0]" bit 2 → "w_pixels[0][2]") collide
        # in Yosys' ABC9 reintegration (abc_ops_reintegrate: "GetSize(conn.first) ==
        # GetSize(conn.second)" in 0.70, "count_id(wire->name) == 0" in 0.69).
        pixels_width = pixels_layout.size
        w0_valid = Signal()
        w0_pixels = Signal(pixels_width, reset_less=True)
        w0_pad = Signal(k * k, reset_less=True)             # element (dy, dx) at bit dy·K + dx
        w0_zero, w0_dense = Signal(reset_less=True), Signal(reset_less=True)
        w0_meta = Signal(meta_layout, reset_less=True)
        w1_valid = Signal()
        w_pixels = Signal(pixels_width, reset_less=True)
        w_excluded = Signal(k * k, reset_less=True)
        w_meta = Signal(meta_layout, reset_less=True)
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

        return SimpleNamespace(w0_valid=w0_valid, w1_valid=w1_valid, pixels=w_pixels, excluded=w_excluded,
                               meta=w_meta, pixels_layout=pixels_layout)


class SparseConv(_ConvEngine, wiring.Component):
    """Convolution over tap lists: only listed, unmasked taps cost a cycle and a multiplication.

    Bit-exact with :func:`dynsparse.golden.sparseconv.sparse_conv` (and
    :func:`~dynsparse.golden.sparseconv.requantize` with ``requantize``). Each
    output position takes one window (from :class:`~dynsparse.hdl.window.WindowGenerator`)
    and one transfer of tap lists (one list per output channel, :mod:`dynsparse.hdl.taps`)
    and gives one transfer of ``C_out`` results.

    Architecture (output-stationary, flat, empty positions free). An entry of
    a list is *to do* unless it is beyond ``count``, malformed, or reads a
    padding element that ``pad_mode = ZERO`` or a mask bit of 0 excludes
    (nothing is excluded in ``dense`` mode). Lane ``j`` owns the output
    channels ``co`` with ``co mod L = j``; lanes ``2q`` and ``2q + 1`` form
    *walker* ``q``, which walks the to-do bits of its lanes' channels as one
    vector: lane A (``2q``) takes the lowest bit still set each step, lane B
    (``2q + 1``) the highest, so a walker of ``v`` bits takes ``ceil(v / 2)``
    steps, and at ``L = 2`` a position's MACs are spread evenly over both
    lanes whatever their channels. Each lane accumulates the products of one
    channel and flushes the partial sum when nothing of that channel is left;
    when A and B both end one channel in the same step, A's result takes
    their sum. Per lane: entry select → pixel select → registered multiplier
    operands → multiply-accumulate into the accumulator register (one
    ``SB_MAC16`` with its accumulator on iCE40; ``MULT18X18D`` and a fabric
    adder on ECP5).

    Position flow. Windows pass two registers: W0 takes a window and reads
    its padding-mask bits, W1 holds it with its excluded elements in
    flip-flops, facing the offered tap list (the *front*). From the front a
    position is *admitted* into the order queue (``queue_depth`` entries of
    four bits: ``first``, ``last``, row start, empty; the output counts ``x``
    and ``y`` from them, so windows come in raster order, as
    :class:`~dynsparse.hdl.window.WindowGenerator` gives them): a position
    with no entry to do is *empty*, needs no walk and is admitted at once,
    even while another position walks. Any other position loads its tap
    entries, pixels and
    to-do bits into the walk register when that is free or takes its last
    step in that cycle (no bubble) and the *next* register is empty, and
    into the next register otherwise (if that is empty or moves up into the
    walk register in that cycle). So one position waits, admitted, while one
    walks, and the empty positions behind both pass. Results leave in
    admission order: a walked position's results wait in one of the finished
    slots (``finished_slots``) until it is the queue's head; an empty position
    at the head gives zeros (``requantize`` maps 0 to 0).

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
    queue_depth : int
        Positions admitted and not yet given out, 1 to 64 (default 64; flip-flops): how far
        empty positions may run ahead of a walked one.
    finished_slots : int
        Walked positions whose results wait for the positions admitted before them to be
        given out, 1 to 8 (default 4; ``C_out`` results each).
    list_capacity : int or None
        ``N``, the entries of a tap list, 1 to ``C_in · K²`` (the default). Lists
        of sampled heads (:mod:`dynsparse.hdl.heads`) hold a few taps of a large
        window; a smaller ``N`` shrinks every copy of the lists and the
        accumulators (``N`` products).

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
        Counters, wrapping modulo ``2**32``: walk steps (cycles in which the lanes
        took a step; empty positions and stall cycles are not counted), MACs
        performed, and taps skipped for pruning, zero weight and padding.
        ``performed`` lags a step by one cycle, the skip counters a position's
        admission by two; all are final when ``busy`` is 0.
    clear_counters : In(1)
        Sets every counter to 0 (an increment in the same cycle is lost).
    errors : Out(SparseConvErrors), clear_errors : In(1)
        Sticky error flags; ``clear_errors`` clears them (a flag raised in the same cycle stays).
    busy : Out(1)
        A position is buffered, walked, queued, in the pipeline or offered.

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
    A non-empty position takes ``max_q ceil(v_q / |q|)`` walk steps (walker
    ``q`` with ``|q|`` lanes and ``v_q`` entries to do), an empty one none
    (:meth:`cycles_per_position`). With windows and tap lists always offered
    and results always taken, the cycles from the first window accepted to
    the last result offered are :meth:`timeline`
    (:func:`dynsparse.golden.sparseconv.engine_cycles`), exactly. Into an idle
    engine, a window accepted in cycle ``t`` with its tap list waiting has its
    result offered in cycle ``t + latency + steps - 1`` (an empty position's
    in cycle ``t + 4``). ``o_stream`` may stall at any cycle; the walk then
    stops only when a finished result finds every finished slot taken, and
    admission only when the queue is full.

    Raises
    ------
    TypeError, ValueError
        On a bad parameter; the message names the value.
    """

    #: Registers from a position's last walk step to ``o_stream``: entry, operands,
    #: accumulator, finished results, output (requantisation adds its four). Before
    #: them: W0 (the window, its mask bits looked up), W1 (the front) and the walk register.
    _MAC_STAGES = 5
    _WINDOW_STAGES = 3

    def __init__(self, *, kernel_size=3, in_channels=1, out_channels=8, lanes=8,
                 pixel_shape=unsigned(8), max_width=640, max_height=480, block_size=4,
                 requantize=False, queue_depth=QUEUE_DEPTH, finished_slots=FINISHED_SLOTS,
                 list_capacity=None):
        self._check_parameters(kernel_size=kernel_size, in_channels=in_channels, out_channels=out_channels,
                               lanes=lanes, pixel_shape=pixel_shape, max_width=max_width,
                               max_height=max_height, block_size=block_size, requantize=requantize)
        self._queue_depth = check_int("queue depth", queue_depth, minimum=1, maximum=64)
        self._finished_slots = check_int("finished slot count", finished_slots, minimum=1, maximum=8)
        self._list_capacity = _list_capacity(kernel_size=self._kernel_size, in_channels=self._in_channels,
                                             capacity=list_capacity)
        super().__init__(self._ports(tap_lists_layout(
            kernel_size=kernel_size, in_channels=in_channels, out_channels=out_channels,
            max_width=max_width, max_height=max_height, capacity=list_capacity)))

    queue_depth  = property(lambda self: self._queue_depth)
    finished_slots = property(lambda self: self._finished_slots)

    @property
    def taps_per_list(self):
        """``N``, the capacity of a tap list: ``list_capacity``, ``C_in · K²`` by default."""
        return self._list_capacity

    @property
    def walkers(self):
        """``ceil(L / 2)`` walkers: lanes ``2q`` and ``2q + 1`` walk one to-do vector."""
        return -(-self._lanes // 2)

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
        """Walk steps of positions whose outputs perform ``active[..., C_out]`` taps (0 for a
        position without any)."""
        return cycles_per_position(active, lanes=self._lanes)

    def timeline(self, active):
        """Cycles from the first window accepted to the last result offered, for positions
        ``active[P, C_out]`` in stream order, windows and tap lists always offered and results
        always taken (:func:`dynsparse.golden.sparseconv.engine_cycles` plus the latency)."""
        return engine_cycles(active, lanes=self._lanes, queue_depth=self._queue_depth,
                             finished_slots=self._finished_slots, requantize=self._requantize)

    def elaborate(self, platform):
        m = Module()
        k, r, n = self._kernel_size, self._kernel_size // 2, self.taps_per_list
        c_out, lanes = self._out_channels, self._lanes
        window, taps = self.i_window, self.i_taps
        meta_layout = data.StructLayout({name: self.o_stream.payload.shape()[name].shape
                                         for name in ("x", "y", "first", "last")})

        # The engine stops only when a finished position cannot enter the output register.
        advance = Signal()
        final_position = Signal()           # the result stage writes a finished position

        raised = self._error_flags(m)
        done = Signal()                                     # the position in the engine ends
        front = self._window_front(m, raised, done, meta_layout)
        w0_valid, w1_valid = front.w0_valid, front.w1_valid
        w_pixels, w_excluded, w_meta, pixels_layout = front.pixels, front.excluded, front.meta, front.pixels_layout
        pixels_width = pixels_layout.size

        # -------- admission: the front position (W1's window and the offered tap list) ---------
        # Every position is *admitted* from the front into the order queue, in order, one a
        # cycle at most. A position with no entry to do (empty) needs no MAC: its result is 0
        # and it only takes its queue entry. Another position enters the walk register, with
        # its tap entries, pixels and to-do bits, when the register is free or its position
        # takes its last step in that cycle; meanwhile it waits at the front.
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
        front_empty = Signal()
        m.d.comb += front_empty.eq(~_tree((todo[co].any() for co in range(c_out)), operator.or_))

        # The order queue: flip-flops and a read multiplexer (a memory with an asynchronous
        # read port stops Yosys' opt_mem on ECP5 inside the conv board: assertion in mem.cc).
        depth = self._queue_depth
        # An entry: the position's ``first``, ``last``, whether it starts a row (x = 0) and
        # whether it is empty; the output counts x and y from them (windows come in raster order).
        queue_layout = data.StructLayout({"first": 1, "last": 1, "row_start": 1, "empty": 1})
        queue_slots = [Signal(queue_layout.size, name=f"queue_{i}", reset_less=True) for i in range(depth)]
        queue_head = Signal(range(max(2, depth)))
        queue_tail = Signal(range(max(2, depth)))
        queue_level = Signal(range(depth + 1))
        queue = _Queue(queue_slots, queue_head, queue_level, depth)
        wr_valid, wn_valid = Signal(), Signal()
        wr_free = Signal()                  # the walk register can load in this cycle
        admit, load = Signal(), Signal()
        to_walk, to_next, promote = Signal(), Signal(), Signal()
        m.d.comb += [
            admit.eq(w1_valid & taps.valid & queue.w_rdy & (front_empty | ~wn_valid | wr_free)),
            load.eq(admit & ~front_empty),
            # a non-empty position goes to the walk register if that is free and nothing is
            # next, otherwise to the next register; the next register moves up when the walk ends
            promote.eq(wr_free & wn_valid),
            to_walk.eq(load & wr_free & ~wn_valid),
            to_next.eq(load & ~to_walk),
            done.eq(admit),
            taps.ready.eq(admit),
            queue.w_en.eq(admit),
            queue.w_data.eq(Cat(w_meta.first, w_meta.last, w_meta.x == 0, front_empty)),
            raised.bad_tap.eq(admit & bad),
            raised.misaligned.eq(admit & (w_meta.as_value() != Cat(
                taps.payload.x, taps.payload.y, taps.payload.first, taps.payload.last))),
        ]

        # -------- the walk register and the walkers ---------------------------------------------
        # Lane j takes the output channels co with co mod L = j; lanes 2q and 2q + 1 form
        # walker q, which walks the to-do bits of its lanes' channels as one vector (channel
        # by channel, entries in list order): lane 2q (A) takes the lowest bit still set,
        # lane 2q + 1 (B) the highest. A walker of v bits takes ceil(v / 2) steps; at L = 2
        # one walker holds every channel, so a position takes ceil(Σ active / 2) steps.
        # The next register holds a position admitted while another walks, so that the empty
        # positions behind it are admitted too; it has the walk register's contents.
        wr_entries = [[Signal(tap_shape, name=f"wr_tap_{co}_{i}", reset_less=True) for i in range(n)]
                      for co in range(c_out)]
        wr_pixels = Signal(pixels_width, reset_less=True)
        pending = [Signal(n, name=f"pending_{co}", reset_less=True) for co in range(c_out)]
        wn_entries = [[Signal(tap_shape, name=f"wn_tap_{co}_{i}", reset_less=True) for i in range(n)]
                      for co in range(c_out)]
        wn_pixels = Signal(pixels_width, reset_less=True)
        wn_pending = [Signal(n, name=f"wn_pending_{co}", reset_less=True) for co in range(c_out)]
        with m.If(to_next):
            m.d.sync += [wn_entries[co][i].eq(lists[co].taps[i]) for co in range(c_out) for i in range(n)]
            m.d.sync += [wn_pixels.eq(w_pixels)] + [wn_pending[co].eq(todo[co]) for co in range(c_out)]
        with m.If(promote):
            m.d.sync += [wr_entries[co][i].eq(wn_entries[co][i]) for co in range(c_out) for i in range(n)]
            m.d.sync += [wr_pixels.eq(wn_pixels)] + [pending[co].eq(wn_pending[co]) for co in range(c_out)]
        with m.Elif(to_walk):
            m.d.sync += [wr_entries[co][i].eq(lists[co].taps[i]) for co in range(c_out) for i in range(n)]
            m.d.sync += [wr_pixels.eq(w_pixels)] + [pending[co].eq(todo[co]) for co in range(c_out)]

        channel_bits = max(1, (c_out - 1).bit_length())
        walkers = walker_channels(c_out, lanes)

        lane_taps = [None] * lanes
        lane_active = [None] * lanes
        lane_channel = [None] * lanes
        lane_flush = [None] * lanes
        walker_rest, walker_more = [], []
        for q, (lane_ids, channels) in enumerate(walkers):
            vector = Signal(len(channels) * n, name=f"walk{q}_vector")
            m.d.comb += vector.eq(Cat(*(pending[co] for co in channels)))
            entries = [wr_entries[co][i].as_value() for co in channels for i in range(n)]
            # (the prefix trees go into signals: the simulator would otherwise copy their
            # expressions into every bit that uses them)
            below = Signal.like(vector, name=f"walk{q}_below")
            first = Signal.like(vector, name=f"walk{q}_first")
            m.d.comb += [below.eq(_prefix_or(vector)), first.eq(vector & ~below)]
            picks = [first]
            if len(lane_ids) == 2:
                # the highest set bit, unless it is the lowest too (A takes a single bit)
                flipped = Signal.like(vector, name=f"walk{q}_flipped")
                above_flipped = Signal.like(vector, name=f"walk{q}_above_flipped")
                highest = Signal.like(vector, name=f"walk{q}_last")
                m.d.comb += [
                    flipped.eq(Cat(*reversed(list(vector)))),
                    above_flipped.eq(_prefix_or(flipped)),
                    highest.eq(vector & ~Cat(*reversed(list(above_flipped))) & below),
                ]
                picks.append(highest)
            rest = Signal.like(vector, name=f"walk{q}_rest")
            m.d.comb += rest.eq(vector & ~_tree(picks, operator.or_))
            walker_rest.append(rest)
            rest_channel = [rest[c * n:(c + 1) * n].any() for c in range(len(channels))]
            for j, pick in zip(lane_ids, picks):
                picked_channel = [pick[c * n:(c + 1) * n].any() for c in range(len(channels))]
                lane_taps[j] = _tree((Mux(pick[i], entries[i], 0) for i in range(len(entries))),
                                     operator.or_)
                lane_active[j] = Signal(name=f"lane_active{j}")
                lane_channel[j] = Signal(channel_bits, name=f"lane_channel{j}")
                lane_flush[j] = Signal(name=f"lane_flush{j}")
                m.d.comb += [
                    lane_active[j].eq(pick.any()),
                    lane_channel[j].eq(_tree((Mux(picked_channel[c], C(co, channel_bits), 0)
                                              for c, co in enumerate(channels)), operator.or_)),
                    # the lane's partial sum of its channel is complete: nothing of the
                    # channel is left for either lane of the walker
                    lane_flush[j].eq(~_tree((picked_channel[c] & rest_channel[c]
                                             for c in range(len(channels))), operator.or_)),
                ]
        position_end = Signal()
        m.d.comb += position_end.eq(~_tree((rest.any() for rest in walker_rest), operator.or_))

        step = Signal()
        # (plain assignments, not under m.If: Icarus may never run a combinational process
        # whose inputs do not change after time 0, which would leave these undefined)
        m.d.comb += [
            step.eq(advance & wr_valid),
            wr_free.eq(~wr_valid | (step & position_end)),
        ]
        with m.If(promote | to_walk):
            m.d.sync += wr_valid.eq(1)
        with m.Elif(step & position_end):
            m.d.sync += wr_valid.eq(0)
        with m.If(to_next):
            m.d.sync += wn_valid.eq(1)
        with m.Elif(promote):
            m.d.sync += wn_valid.eq(0)
        with m.If(step & ~position_end):
            for (lane_ids, channels), rest in zip(walkers, walker_rest):
                m.d.sync += [pending[co].eq(rest[c * n:(c + 1) * n]) for c, co in enumerate(channels)]

        # -------- MAC lanes ----------------------------------------------------------------------
        def register(value, name, reset_less=True):
            reg = Signal.like(value, name=name, reset_less=reset_less)
            with m.If(advance):
                m.d.sync += reg.eq(value)
            return reg

        tags = {"step": step, "position_end": position_end}
        in_flight = []                      # the step tag of every stage, for busy

        def delay(values, name):
            return [register(value, f"{name}{j}") for j, value in enumerate(values)]

        def delay_tags(stage):
            nonlocal tags
            tags = {name: register(value, f"{stage}_{name}", reset_less=False)
                    for name, value in tags.items()}
            in_flight.append(tags["step"])

        # stage 1: the selected entries, and the window they read
        e1_active = [register(lane_active[j] & step, f"e1_active{j}", reset_less=False)
                     for j in range(lanes)]
        e1_taps = [tap_shape(register(lane_taps[j], f"e1_tap{j}")) for j in range(lanes)]
        e1_channel = delay(lane_channel, "e1_channel")
        e1_flush = delay(lane_flush, "e1_flush")
        e1_pixels = pixels_layout(register(wr_pixels, "e1_pixels"))
        delay_tags("e1")
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
        e2_active = delay(e1_active, "e2_active")
        e2_channel = delay(e1_channel, "e2_channel")
        e2_flush = delay(e1_flush, "e2_flush")
        delay_tags("e2")
        # stage 3: the accumulators: multiply-accumulate with registered operands and a
        # registered sum (one SB_MAC16 per lane on iCE40, its accumulator included; a
        # MULT18X18D and an adder on ECP5). A lane *holds* a partial sum until it flushes it
        # (its channel has nothing left); an idle lane that holds one flushes at its walker's
        # last step, which leaves nothing.
        accumulators = [Signal(signed(self.accumulator_width), name=f"acc{j}", reset_less=True)
                        for j in range(lanes)]
        holding = [Signal(name=f"holding{j}") for j in range(lanes)]
        acc_channel = [Signal(channel_bits, name=f"acc_channel{j}", reset_less=True) for j in range(lanes)]
        acc_flush = [Signal(name=f"acc_flush{j}") for j in range(lanes)]
        with m.If(advance & tags["step"]):
            for j in range(lanes):
                m.d.sync += accumulators[j].eq(Mux(holding[j], accumulators[j], 0) + weights[j] * pixel_values[j])
                flush = Mux(e2_active[j], e2_flush[j], holding[j])
                m.d.sync += [holding[j].eq((e2_active[j] | holding[j]) & ~flush), acc_flush[j].eq(flush)]
                with m.If(e2_active[j]):
                    m.d.sync += acc_channel[j].eq(e2_channel[j])
        with m.Elif(advance):
            m.d.sync += [acc_flush[j].eq(0) for j in range(lanes)]
        delay_tags("acc")

        # a walker's two partials of one channel are flushed in the same step: A takes their sum
        results, result_valid = [], []
        for lane_ids, channels in walkers:
            a = lane_ids[0]
            if len(lane_ids) == 2:
                b = lane_ids[1]
                meet = acc_flush[a] & acc_flush[b] & (acc_channel[a] == acc_channel[b])
                results += [accumulators[a] + Mux(meet, accumulators[b], 0), accumulators[b]]
                result_valid += [acc_flush[a], acc_flush[b] & ~meet]
            else:
                results.append(accumulators[a])
                result_valid.append(acc_flush[a])
        # (the sum of two partials fits the accumulator: it is a sum of listed products)
        results = [value[:self.accumulator_width].as_signed() for value in results]
        result_channel = acc_channel
        position_last = tags["position_end"] & tags["step"]
        if self._requantize:
            results, delayed, valids = requantize_stages(
                m, advance, results, self.multiplier, self.shift,
                [position_last, *result_valid, *result_channel])
            position_last = delayed[0]
            result_valid = delayed[1:1 + lanes]
            result_channel = delayed[1 + lanes:]
            in_flight += valids

        # -------- counters ---------------------------------------------------------------------
        # MACs are counted as their steps leave stage 1; the skip counts of an admitted
        # position are registered raw, summed per list the next cycle and added up the cycle after.
        loaded, summed = Signal(), Signal()
        skip_pruned = [Signal.like(lists[co].pruned, name=f"skip_pruned_{co}") for co in range(c_out)]
        skip_zero = [Signal.like(lists[co].zero, name=f"skip_zero_{co}") for co in range(c_out)]
        skip_padding = [Signal(n, name=f"skip_padding_{co}") for co in range(c_out)]
        list_padding = [Signal(range(n + 1), name=f"list_padding_{co}") for co in range(c_out)]
        full = self._in_channels * k * k
        total_pruned, total_zero = (Signal(range(full * c_out + 1), name=f"total_{name}")
                                    for name in ("pruned", "zero"))
        m.d.sync += [loaded.eq(admit), summed.eq(loaded)]
        with m.If(admit):
            m.d.sync += [skip_pruned[co].eq(lists[co].pruned) for co in range(c_out)]
            m.d.sync += [skip_zero[co].eq(lists[co].zero) for co in range(c_out)]
            m.d.sync += [skip_padding[co].eq(padding[co]) for co in range(c_out)]
        with m.If(loaded):
            m.d.sync += [list_padding[co].eq(_sum(list(skip_padding[co]))) for co in range(c_out)]
            m.d.sync += [total_pruned.eq(_sum(skip_pruned)), total_zero.eq(_sum(skip_zero))]
        increments = {
            "cycles":          step,
            "performed":       Mux(advance, _sum(e1_active), 0),
            "skipped_pruned":  Mux(summed, total_pruned, 0),
            "skipped_zero":    Mux(summed, total_zero, 0),
            "skipped_padding": Mux(summed, _sum(list_padding), 0),
        }
        self._counters(m, increments)

        # -------- results: collected per channel, then given out in admission order --------------
        # A walked position's results wait in ``finished`` until the queue's head is that
        # position; an empty position at the head is given out as zeros.
        data_shape = self.o_stream.payload.data[0].shape()
        collected = [Signal(data_shape, name=f"collected_{co}", reset_less=True) for co in range(c_out)]
        merged = []
        for co in range(c_out):
            value = collected[co]
            for j in reversed(walkers[(co % lanes) // 2][0]):
                value = Mux(result_valid[j] & (result_channel[j] == co), results[j], value)
            merged.append(value)
        # ``finished_slots`` finished positions, the oldest in slot 0
        slots = self._finished_slots
        finished_count = Signal(range(slots + 1))
        finished = [[Signal(data_shape, name=f"finished_{s}_{co}", reset_less=True) for co in range(c_out)]
                    for s in range(slots)]
        arrive = Signal()
        head = Signal(queue_layout)
        head_empty = head.empty
        give = Signal()
        take_finished = Signal()
        m.d.comb += [
            head.eq(queue.r_data),
            final_position.eq(position_last),
            give.eq((~self.o_stream.valid | self.o_stream.ready) & queue.r_rdy &
                    (head_empty | (finished_count != 0))),
            take_finished.eq(give & ~head_empty),
            queue.r_en.eq(give),
            advance.eq(~(final_position & (finished_count == slots) & ~take_finished)),
            arrive.eq(advance & position_last),
        ]
        with m.If(advance):
            with m.If(position_last):
                m.d.sync += [collected[co].eq(0) for co in range(c_out)]
            with m.Else():
                m.d.sync += [collected[co].eq(merged[co]) for co in range(c_out)]
        # the slots shift down when the oldest is given out; an arriving position takes the
        # first free slot after the shift
        free_slot = Signal(range(slots + 1))
        m.d.comb += free_slot.eq(finished_count - take_finished)
        for s in range(slots):
            with m.If(arrive & (free_slot == s)):
                m.d.sync += [finished[s][co].eq(merged[co]) for co in range(c_out)]
            if s + 1 < slots:
                with m.Elif(take_finished):
                    m.d.sync += [finished[s][co].eq(finished[s + 1][co]) for co in range(c_out)]
        m.d.sync += finished_count.eq(finished_count + arrive - take_finished)
        with m.If(give):
            out = self.o_stream.payload
            m.d.sync += [self.o_stream.valid.eq(1), out.first.eq(head.first), out.last.eq(head.last),
                         out.x.eq(Mux(head.row_start, 0, out.x + 1))]
            with m.If(head.first):
                m.d.sync += out.y.eq(0)
            with m.Elif(head.row_start):
                m.d.sync += out.y.eq(out.y + 1)
            m.d.sync += [self.o_stream.payload.data[co].eq(Mux(head_empty, 0, finished[0][co]))
                         for co in range(c_out)]
        with m.Elif(self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)

        def following(pointer):
            return Mux(pointer == depth - 1, 0, pointer + 1) if depth > 1 else C(0, 1)

        with m.If(queue.w_en & queue.w_rdy):
            m.d.sync += [Array(queue_slots)[queue_tail].eq(queue.w_data), queue_tail.eq(following(queue_tail))]
        with m.If(queue.r_en & queue.r_rdy):
            m.d.sync += queue_head.eq(following(queue_head))
        with m.If((queue.w_en & queue.w_rdy) & ~(queue.r_en & queue.r_rdy)):
            m.d.sync += queue_level.eq(queue_level + 1)
        with m.Elif(~(queue.w_en & queue.w_rdy) & (queue.r_en & queue.r_rdy)):
            m.d.sync += queue_level.eq(queue_level - 1)

        m.d.comb += self.busy.eq(Cat(w0_valid, w1_valid, wr_valid, wn_valid, queue.r_rdy, finished_count != 0,
                                     self.o_stream.valid, *in_flight).any())
        return m
