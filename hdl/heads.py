"""Sampled-offset heads (seed 004) on the sparse-tap engine: a run-time head table and the layer.

A head reads ``k`` inputs at offsets within ``[-n, n]`` (one weight each); on
:class:`~dynsparse.hdl.sparseconv.SparseConv` it is one tap list, the same at
every output position, in a window of ``K = 2n + 1``. :class:`HeadTaps`
holds the lists of ``H`` heads in registers, loaded at run time, and offers
them with every window; :class:`HeadLayer` joins a
:class:`~dynsparse.hdl.window.WindowGenerator`, the table and the engine.
The host side (sampling, training, ranking, export) is
:mod:`dynsparse.golden.heads`; :func:`dynsparse.golden.heads.tap_lists` gives
what the engine sees.
"""

from amaranth.hdl import Module, Signal, signed as _signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out, connect

from .convpipe import StreamFork
from .frame import check_int, coord_width, pixel_layout
from .skid import StreamRegister
from .sparseconv import SparseConv, SparseConvErrors
from .taps import index_width, list_capacity, tap_layout, tap_lists_layout
from .sequence import SequenceWindow
from .window import PadMode, WindowErrors, WindowGenerator


__all__ = ["HeadTapsErrors", "HeadTaps", "HeadLayerErrors", "HeadLayer", "window_memory_bits"]


def window_memory_bits(*, reach, channels, max_width, pixel_bits=8):
    """Line-buffer bits a layer of reach ``n`` needs: ``2n`` rows of ``max_width`` pixels of
    ``channels × pixel_bits`` (the :class:`~dynsparse.hdl.window.WindowGenerator`'s block RAM)."""
    return 2 * reach * max_width * channels * pixel_bits


class HeadTapsErrors(data.Struct):
    """Sticky error flags of :class:`HeadTaps`."""
    bad_write: 1


class HeadTaps(wiring.Component):
    """The tap lists of ``heads`` heads, loaded at run time, offered with every window.

    For every position that enters (``x``, ``y``, ``first``, ``last`` of a
    window), one transfer leaves with the same position and ``lists[h]`` =
    head ``h``'s ``count`` and taps (``pruned = zero = 0``). One register
    slice (:class:`~dynsparse.hdl.skid.StreamRegister`) carries the position;
    the lists come straight from the table, so write the table between frames.

    Parameters
    ----------
    kernel_size : int
        ``K = 2n + 1``, odd, 1 to 15.
    in_channels, heads : int
        ``C_in`` and ``H`` (the engine's ``C_out``), >= 1.
    capacity : int
        Taps a head may hold, 1 to ``C_in · K²``.
    max_width, max_height : int
        Largest frame (they size ``x`` and ``y``).

    Members
    -------
    i_stream : In(stream.Signature(...))
        Positions: ``x``, ``y``, ``first``, ``last``.
    o_stream : Out(stream.Signature(tap_lists_layout(..., capacity)))
        One transfer of every head's list per position.
    tap_write : In(1), write_head : In(unsigned), write_entry : In(unsigned), write_tap : In(tap_layout)
        Writes entry ``write_entry`` of head ``write_head``.
    count_write : In(1), write_count : In(unsigned)
        Sets head ``write_head``'s tap count (entries ``0 … count − 1`` are its taps).
        The table resets to counts of 0: every head empty.
    errors : Out(HeadTapsErrors), clear_errors : In(1)
        ``bad_write``: a write to a head ``>= H``, an entry ``>= capacity``, a count
        ``> capacity``, or a tap with ``dy``/``dx >= K`` or ``ci >= C_in`` (an offset
        outside ``[-n, n]`` or a missing channel). The write is ignored.

    Timing
    ------
    One cycle from a position in to its lists out; full throughput; a write takes
    effect in the next cycle.

    Raises
    ------
    TypeError, ValueError
        On a bad parameter; the message names the value.
    """

    def __init__(self, *, kernel_size, in_channels, heads, capacity, max_width, max_height):
        self._kernel_size = check_int("kernel size", kernel_size, minimum=1, maximum=15, odd=True)
        self._in_channels = check_int("input channel count", in_channels, minimum=1)
        self._heads = check_int("head count", heads, minimum=1)
        self._capacity = list_capacity(kernel_size=kernel_size, in_channels=in_channels, capacity=capacity)
        self._max_width = check_int("maximum width", max_width, minimum=1, maximum=65536)
        self._max_height = check_int("maximum height", max_height, minimum=1, maximum=65536)
        self._meta_layout = data.StructLayout({
            "x": unsigned(coord_width(max_width)), "y": unsigned(coord_width(max_height)),
            "first": unsigned(1), "last": unsigned(1)})
        self._tap_layout = tap_layout(kernel_size=kernel_size, in_channels=in_channels)
        super().__init__({
            "i_stream":    In(stream.Signature(self._meta_layout)),
            "o_stream":    Out(stream.Signature(tap_lists_layout(
                kernel_size=kernel_size, in_channels=in_channels, out_channels=heads,
                max_width=max_width, max_height=max_height, capacity=capacity))),
            "tap_write":   In(1),
            "count_write": In(1),
            "write_head":  In(unsigned(index_width(heads + 1))),
            "write_entry": In(unsigned(index_width(self._capacity + 1))),
            "write_tap":   In(self._tap_layout),
            "write_count": In(unsigned(index_width(self._capacity + 2))),
            "errors":      Out(HeadTapsErrors),
            "clear_errors": In(1),
        })

    kernel_size = property(lambda self: self._kernel_size)
    in_channels = property(lambda self: self._in_channels)
    heads       = property(lambda self: self._heads)
    capacity    = property(lambda self: self._capacity)
    meta_layout = property(lambda self: self._meta_layout)

    def elaborate(self, platform):
        m = Module()
        k, heads, capacity = self._kernel_size, self._heads, self._capacity
        m.submodules.meta = meta = StreamRegister(self._meta_layout)
        connect(m, wiring.flipped(self.i_stream), meta.i_stream)
        out = self.o_stream
        m.d.comb += [
            out.valid.eq(meta.o_stream.valid),
            meta.o_stream.ready.eq(out.ready),
            out.payload.x.eq(meta.o_stream.payload.x),
            out.payload.y.eq(meta.o_stream.payload.y),
            out.payload.first.eq(meta.o_stream.payload.first),
            out.payload.last.eq(meta.o_stream.payload.last),
        ]
        tap = self.write_tap
        tap_ok = (self.write_head < heads) & (self.write_entry < capacity) & \
            (tap.dy < k) & (tap.dx < k) & (tap.ci < self._in_channels)
        count_ok = (self.write_head < heads) & (self.write_count <= capacity)
        for h in range(heads):
            entry = out.payload.lists[h]
            count = Signal.like(entry.count, name=f"count_{h}")
            taps = [Signal(self._tap_layout, name=f"tap_{h}_{i}", reset_less=True) for i in range(capacity)]
            m.d.comb += [entry.count.eq(count), entry.pruned.eq(0), entry.zero.eq(0)]
            m.d.comb += [entry.taps[i].eq(taps[i]) for i in range(capacity)]
            with m.If(self.count_write & count_ok & (self.write_head == h)):
                m.d.sync += count.eq(self.write_count)
            for i in range(capacity):
                with m.If(self.tap_write & tap_ok & (self.write_head == h) & (self.write_entry == i)):
                    m.d.sync += taps[i].eq(tap)
        bad = (self.tap_write & ~tap_ok) | (self.count_write & ~count_ok)
        with m.If(self.clear_errors):
            m.d.sync += self.errors.bad_write.eq(bad)
        with m.Elif(bad):
            m.d.sync += self.errors.bad_write.eq(1)
        return m


class HeadLayerErrors(data.Struct):
    """Sticky error flags of :class:`HeadLayer`, per block."""
    frame:  WindowErrors
    table:  HeadTapsErrors
    engine: SparseConvErrors


class HeadLayer(wiring.Component):
    """A layer of sampled-offset heads over a pixel (or feature) stream.

    ``WindowGenerator (K = 2n + 1, pad_mode) → fork → SparseConv``, the fork's
    other branch giving each window's position to :class:`HeadTaps`, whose
    lists join the window in the engine. Output ``h`` at a position is
    ``Σ_i w_i · x[c_i, y + oy_i, x + ox_i]`` over head ``h``'s taps (inputs
    outside the frame: ``pad_mode``, and with ``ZERO`` they cost no cycle),
    bit-exact with ``golden.heads.tap_lists`` → ``golden.sparseconv.sparse_conv``
    (→ ``requantize``). Cycles scale with the taps the heads hold,
    ``ceil``-divided over the lanes (:meth:`SparseConv.cycles_per_position`),
    not with ``K²``.

    Memory: the window generator's line buffers hold ``2n`` rows of
    ``max_width`` pixels (:func:`window_memory_bits`); the window and the
    engine's window copies hold ``K² · C_in`` pixels each, in flip-flops.

    Parameters
    ----------
    reach : int
        ``n``, 0 to 7: offsets lie in ``[-n, n]``, ``K = 2n + 1``.
    in_channels, heads, lanes : int
        ``C_in``; ``H`` heads (output channels); ``L`` multiplier lanes (1 … ``H``).
    capacity : int
        Taps a head may hold, 1 to ``C_in · K²``.
    max_width, max_height : int
        Largest frame; ``max_height`` at least ``n + 1``.
    signed : bool
        Inputs are ``signed(8)`` (feature maps, peptide codes) instead of ``unsigned(8)`` pixels.
    sequence : bool
        1-D mode: a :class:`~dynsparse.hdl.sequence.SequenceWindow` (a shift register,
        no line buffer) in place of the window generator; a frame is one sequence of
        ``width`` positions (``max_width`` the longest), there is no ``height``, and the
        heads' taps sit in row ``n`` (``dy = n``).
    block_size, requantize
        As :class:`~dynsparse.hdl.sparseconv.SparseConv`.

    Members
    -------
    i_stream : In(stream.Signature(pixel_layout))
        Pixels of ``C_in`` channels in raster order, ``first``/``last``.
    o_stream : Out(stream.Signature(...))
        The engine's results: ``data[h]`` per position, ``x``, ``y``, ``first``, ``last``.
    width, height : In(unsigned), pad_mode : In(PadMode), dense : In(1)
        Frame size and padding, sampled per frame (``dense``: skip nothing for padding).
    tap_write, count_write, write_head, write_entry, write_tap, write_count
        :class:`HeadTaps`'s table port (``write_tap.dy = oy + n``, ``dx = ox + n``).
    mask_write, mask_band, mask_index, mask_value
        The engine's padding-mask port.
    multiplier, shift
        Requantisation (with ``requantize``).
    cycles, performed, skipped_pruned, skipped_zero, skipped_padding : Out(unsigned(32))
        The engine's counters; ``clear_counters`` clears them.
    errors : Out(HeadLayerErrors), clear_errors : In(1)
    busy : Out(1)

    Raises
    ------
    TypeError, ValueError
        On a bad parameter; the message names the value.
    """

    def __init__(self, *, reach=2, in_channels=1, heads=8, lanes=2, capacity=8, max_width=64, max_height=64,
                 signed=False, sequence=False, block_size=4, requantize=False):
        self._reach = check_int("reach n", reach, minimum=0, maximum=7)
        for name, value in (("signed", signed), ("sequence", sequence)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, not {value!r}")
        pixel_shape = _signed(8) if signed else unsigned(8)
        k = 2 * reach + 1
        self._sequence = sequence
        if sequence:
            max_height = 1
            self._window = SequenceWindow(kernel_size=k, channels=in_channels, max_length=max_width,
                                          pixel_shape=pixel_shape)
        else:
            self._window = WindowGenerator(kernel_size=k, channels=in_channels, max_width=max_width,
                                           max_height=max_height, pixel_shape=pixel_shape)
        self._table = HeadTaps(kernel_size=k, in_channels=in_channels, heads=heads, capacity=capacity,
                               max_width=max_width, max_height=max_height)
        self._engine = SparseConv(kernel_size=k, in_channels=in_channels, out_channels=heads, lanes=lanes,
                                  pixel_shape=pixel_shape, max_width=max_width, max_height=max_height,
                                  block_size=block_size, requantize=requantize, list_capacity=capacity)
        self._pixel_layout = pixel_layout(pixel_shape=pixel_shape, channels=in_channels)
        self._requantize = requantize
        self._max_width = max_width
        engine, table = self._engine, self._table
        ports = {
            "i_stream":    In(stream.Signature(self._pixel_layout)),
            "o_stream":    Out(engine.o_stream.signature),
            "width":       In(range(max_width + 1), init=max_width),
            **({} if sequence else {"height": In(self._window.height.shape(), init=max_height)}),
            "pad_mode":    In(PadMode),
            "dense":       In(1),
            **{name: In(getattr(table, name).shape()) for name in
               ("tap_write", "count_write", "write_head", "write_entry", "write_tap", "write_count")},
            **{name: In(getattr(engine, name).shape()) for name in
               ("mask_write", "mask_band", "mask_index", "mask_value")},
            **{name: Out(getattr(engine, name).shape()) for name in
               ("cycles", "performed", "skipped_pruned", "skipped_zero", "skipped_padding")},
            "clear_counters": In(1),
            "errors":      Out(HeadLayerErrors),
            "clear_errors": In(1),
            "busy":        Out(1),
        }
        if requantize:
            ports["multiplier"] = In(engine.multiplier.shape())
            ports["shift"] = In(engine.shift.shape())
        super().__init__(ports)

    reach        = property(lambda self: self._reach)
    kernel_size  = property(lambda self: 2 * self._reach + 1)
    in_channels  = property(lambda self: self._engine.in_channels)
    heads        = property(lambda self: self._engine.out_channels)
    lanes        = property(lambda self: self._engine.lanes)
    capacity     = property(lambda self: self._table.capacity)
    max_height   = property(lambda self: 1 if self._sequence else self._window.max_height)
    sequence     = property(lambda self: self._sequence)
    max_width    = property(lambda self: self._max_width)
    min_width    = property(lambda self: self._window.min_length if self._sequence else self._window.min_width)
    engine       = property(lambda self: self._engine, doc="The :class:`SparseConv` (for its timing model).")

    @property
    def line_buffer_bits(self):
        """Bits of the window generator's line buffers (:func:`window_memory_bits`); 0 in sequence
        mode (a shift register of ``K`` positions)."""
        if self._sequence:
            return 0
        return window_memory_bits(reach=self._reach, channels=self.in_channels, max_width=self.max_width,
                                  pixel_bits=self._pixel_layout["data"].shape.elem_shape.width)

    def elaborate(self, platform):
        m = Module()
        m.submodules.window = window = self._window
        m.submodules.table = table = self._table
        m.submodules.engine = engine = self._engine
        m.submodules.fork = fork = StreamFork(window.o_stream.payload.shape())
        m.submodules.to_engine = to_engine = StreamRegister(window.o_stream.payload.shape())

        connect(m, wiring.flipped(self.i_stream), window.i_stream)
        connect(m, window.o_stream, fork.i_stream)
        connect(m, fork.o_a, to_engine.i_stream)
        connect(m, to_engine.o_stream, engine.i_window)
        m.d.comb += [
            table.i_stream.valid.eq(fork.o_b.valid),
            fork.o_b.ready.eq(table.i_stream.ready),
            table.i_stream.payload.x.eq(fork.o_b.payload.x),
            table.i_stream.payload.y.eq(fork.o_b.payload.y),
            table.i_stream.payload.first.eq(fork.o_b.payload.first),
            table.i_stream.payload.last.eq(fork.o_b.payload.last),
        ]
        connect(m, table.o_stream, engine.i_taps)
        connect(m, engine.o_stream, wiring.flipped(self.o_stream))

        if self._sequence:
            m.d.comb += [window.length.eq(self.width), engine.height.eq(1)]
        else:
            m.d.comb += [window.height.eq(self.height), window.width.eq(self.width),
                         engine.height.eq(self.height)]
        m.d.comb += [
            window.pad_mode.eq(self.pad_mode), engine.width.eq(self.width),
            engine.pad_mode.eq(self.pad_mode), engine.dense.eq(self.dense),
            engine.clear_counters.eq(self.clear_counters),
        ]
        for name in ("tap_write", "count_write", "write_head", "write_entry", "write_tap", "write_count"):
            m.d.comb += getattr(table, name).eq(getattr(self, name))
        for name in ("mask_write", "mask_band", "mask_index", "mask_value"):
            m.d.comb += getattr(engine, name).eq(getattr(self, name))
        for name in ("cycles", "performed", "skipped_pruned", "skipped_zero", "skipped_padding"):
            m.d.comb += getattr(self, name).eq(getattr(engine, name))
        if self._requantize:
            m.d.comb += [engine.multiplier.eq(self.multiplier), engine.shift.eq(self.shift)]
        m.d.comb += [
            self.errors.frame.eq(window.errors), self.errors.table.eq(table.errors),
            self.errors.engine.eq(engine.errors),
            window.clear_errors.eq(self.clear_errors), table.clear_errors.eq(self.clear_errors),
            engine.clear_errors.eq(self.clear_errors),
            self.busy.eq(window.busy | fork.i_stream.valid | to_engine.o_stream.valid | table.o_stream.valid
                         | engine.busy),
        ]
        return m
