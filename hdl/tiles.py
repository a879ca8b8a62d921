"""Tap densities of T×T tiles (tile size T > 1): the kernel scaler's input, one transfer per pixel."""

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .frame import check_int, coord_width, pixel_layout, size_gate
from .taps import tap_density_layout
from .window import PadMode, WindowErrors, WindowGenerator


__all__ = ["TileAverager"]


def _tree_sum(values):
    """Sum of ``values`` as a balanced adder tree (depth ``log2(len)``)."""
    values = list(values)
    while len(values) > 1:
        values = [values[i] + values[i + 1] if i + 1 < len(values) else values[i]
                  for i in range(0, len(values), 2)]
    return values[0]


def _round_up(value, multiple):
    return -(-value // multiple) * multiple


class TileAverager(wiring.Component):
    """The tap densities of every pixel's T×T tile, from a raster density map.

    The density map (UQ1.8, ``0 … 256`` per channel) enters in raster order.
    For every pixel ``(y, x)``, in the same order, one transfer leaves with the
    tap densities of the tile holding it,
    ``data[ci][ky][kx] = A[y // T][x // T][ci][ky][kx]``, bit-exact with
    :func:`dynsparse.golden.sparseconv.tap_densities` (``tile_size = T``)
    repeated over the tile's pixels::

        A[ty][tx][ci][ky][kx] = (Σ_{i,j < T} D[clamp(ty·T + i + ky - r)][clamp(tx·T + j + kx - r)][ci]
                                 + T²/2) >> log2(T²)

    (coordinates clamped into the frame: the map's border is replicated).

    A :class:`~dynsparse.hdl.window.WindowGenerator` of size ``T + 2r + 1``
    with ``REPLICATE`` padding runs over the map. Its window centred on a
    tile's centre pixel ``(ty·T + T/2, tx·T + T/2)`` holds the
    ``(T + 2r)²`` square every tap of the tile reads (window rows and
    columns ``0 … T + 2r - 1``); the other windows are discarded. From a
    centre window, ``K·(T + 2r)·C`` column sums of T elements (one
    registered stage), then ``K²·C`` row sums of T column sums with the
    rounding (a second stage) give the tile's ``A``, written to a tile-row
    memory in block RAM: two banks of ``max_width / T`` entries of
    ``K²·C·9`` bits. While one bank is filled with the next tile row, the
    other is replayed T times, once per pixel row of its tile row, one pixel
    per cycle.

    Parameters
    ----------
    kernel_size : int
        Odd kernel size ``K`` in ``[1, 15]``; ``r = K // 2``.
    channels : int
        Channels ``C`` of the density map, at least 1.
    tile_size : int
        ``T``, a power of two in ``[2, 16]`` with ``T + K <= 15`` (the inner
        window, ``T + 2r + 1``, is at most 15). Tile size 1 needs no
        averaging: it is a ``WindowGenerator`` with ``REPLICATE`` padding
        (:func:`~dynsparse.hdl.scaler.tap_densities_from_window`).
    max_width, max_height : int
        Largest frame, multiples of T, at least :attr:`min_width` and
        :attr:`min_height`.

    Members
    -------
    i_stream : In(stream.Signature(pixel_layout(pixel_shape=unsigned(9), channels=C)))
        The density map in raster order: ``data[c]`` (UQ1.8), ``first``, ``last``.
    o_stream : Out(stream.Signature(tap_density_layout(kernel_size=K, in_channels=C, ...)))
        One transfer per pixel, raster order: ``data[ci][ky][kx]`` of the
        pixel's tile, ``x``, ``y``, ``first``, ``last``.
    width, height : In(unsigned)
        Frame size, sampled when a frame's ``first`` pixel arrives. Each must
        be a multiple of T in ``[min_width, max_width]`` (``[min_height,
        max_height]``), or the frame is dropped (``errors.bad_size``).
    errors : Out(WindowErrors)
        Sticky error flags; cleared by ``clear_errors``.
    clear_errors : In(1)
        Clears ``errors`` (a flag raised in the same cycle stays raised).
    busy : Out(1)
        Part of a frame is inside the block.

    Timing
    ------
    The output of a tile row exists once its last tile's centre window has
    left the window generator, which takes the input up to the first
    ``r + 1`` pixels of row ``ty·T + T + r + 1``: the output of pixel ``n``
    (raster index) needs input pixels ``0 … n + look_ahead(width) - 1``,
    :meth:`look_ahead` ``= (T + r + 1)·width + r + 1`` (fewer near the
    frame's end, whose last rows the window generator pushes out without
    input). A pipeline in front of this block must hold at least that many
    pixels of slack. Inside a frame, with nothing stalling, one pixel enters
    and one leaves per cycle; the input stalls only if the output has not
    replayed a tile row by the time the tile row two below it is computed
    (backpressure on ``o_stream``).

    Errors
    ------
    ``bad_size``: ``width`` or ``height`` at a frame's ``first`` pixel is not
    a multiple of T in range; the input is discarded up to ``last`` or the
    next ``first``, nothing is emitted. ``dropped``, ``early_first``,
    ``early_last`` and ``missing_last`` are the inner window generator's: the
    frame is completed with zero densities, or stray pixels discarded, and
    the output always carries whole frames.

    Raises
    ------
    TypeError, ValueError
        On a bad parameter; the message names the value.
    """

    def __init__(self, *, kernel_size=3, channels=1, tile_size=4, max_width=640, max_height=480):
        self._kernel_size = check_int("kernel size", kernel_size, minimum=1, maximum=15, odd=True)
        self._channels = check_int("channel count", channels, minimum=1)
        if not isinstance(tile_size, int) or isinstance(tile_size, bool):
            raise TypeError(f"tile size must be a power of two in [2, 16], not {tile_size!r}")
        if tile_size == 1:
            raise ValueError("tile size must be a power of two in [2, 16], not 1 "
                             "(tile size 1 is a WindowGenerator with REPLICATE padding)")
        if tile_size < 2 or tile_size > 16 or tile_size & (tile_size - 1):
            raise ValueError(f"tile size must be a power of two in [2, 16], not {tile_size!r}")
        if tile_size + kernel_size > 15:
            raise ValueError(f"tile size plus kernel size must be at most 15, "
                             f"not {tile_size} + {kernel_size}")
        self._tile_size = tile_size
        self._max_width = check_int("maximum width", max_width, minimum=self.min_width, maximum=65536)
        if max_width % tile_size:
            raise ValueError(f"maximum width must be a multiple of the tile size {tile_size}, "
                             f"not {max_width}")
        self._max_height = check_int("maximum height", max_height, minimum=self.min_height,
                                     maximum=65536)
        if max_height % tile_size:
            raise ValueError(f"maximum height must be a multiple of the tile size {tile_size}, "
                             f"not {max_height}")
        self._window = WindowGenerator(kernel_size=self.window_size, channels=channels,
                                       max_width=max_width, max_height=max_height,
                                       pixel_shape=unsigned(9))
        super().__init__({
            "i_stream":     In(stream.Signature(pixel_layout(pixel_shape=unsigned(9), channels=channels))),
            "o_stream":     Out(stream.Signature(tap_density_layout(
                kernel_size=kernel_size, in_channels=channels, max_width=max_width,
                max_height=max_height))),
            "width":        In(range(max_width + 1), init=max_width),
            "height":       In(range(max_height + 1), init=max_height),
            "errors":       Out(WindowErrors),
            "clear_errors": In(1),
            "busy":         Out(1),
        })

    kernel_size = property(lambda self: self._kernel_size)
    channels    = property(lambda self: self._channels)
    tile_size   = property(lambda self: self._tile_size)
    max_width   = property(lambda self: self._max_width)
    max_height  = property(lambda self: self._max_height)
    radius      = property(lambda self: self._kernel_size // 2)
    window_size = property(lambda self: self._tile_size + 2 * self.radius + 1,
                           doc="Size of the inner window generator's windows, ``T + 2r + 1``.")

    @property
    def min_width(self):
        """Narrowest frame: the inner window generator's ``min_width``, rounded up to a multiple of T."""
        return _round_up(WindowGenerator.min_width_for(self.window_size), self._tile_size)

    @property
    def min_height(self):
        """Lowest frame: ``T/2 + r + 1`` rows (the inner window's radius + 1), rounded up to a multiple of T."""
        return _round_up(self.window_size // 2 + 1, self._tile_size)

    @property
    def row_delay(self):
        """Input rows the input runs ahead of the output at a tile row's start, ``T + r + 1``
        (plus ``r + 1`` pixels: see :meth:`look_ahead`)."""
        return self._tile_size + self.radius + 1

    def look_ahead(self, width):
        """Input pixels needed beyond the output's position: output pixel ``n`` leaves only
        after input pixel ``n + look_ahead(width) - 1`` (or the frame's last) was accepted."""
        return self.row_delay * width + self.radius + 1

    def elaborate(self, platform):
        m = Module()
        k, r, c, t = self._kernel_size, self.radius, self._channels, self._tile_size
        shift = t.bit_length() - 1                  # log2(T)
        tiles_max = self._max_width // t            # entries of one bank
        m.submodules.window = window = self._window

        # -------- front: frames of a bad size never reach the window generator --------------------
        # The window generator's own size check is looser than this one, so it never drains: it is
        # idle (not busy) exactly when it would take a `first` pixel as a new frame.
        size_ok = ((self.width >= self.min_width) & (self.width <= self._max_width) &
                   (self.width[:shift] == 0) &
                   (self.height >= self.min_height) & (self.height <= self._max_height) &
                   (self.height[:shift] == 0))
        i_payload = self.i_stream.payload
        frame_start = ~window.busy & self.i_stream.valid & i_payload.first
        m.d.comb += [
            window.width.eq(self.width),
            window.height.eq(self.height),
            window.pad_mode.eq(PadMode.REPLICATE),
            window.clear_errors.eq(self.clear_errors),
            window.i_stream.payload.eq(i_payload),
        ]
        bad_size, draining = size_gate(m, self.i_stream, window.i_stream, frame_start=frame_start,
                                       size_ok=size_ok, clear_errors=self.clear_errors)
        # Only bad_size is raised here; the marker errors are the window generator's.
        m.d.comb += [
            self.errors.eq(window.errors),
            self.errors.bad_size.eq(window.errors.bad_size | bad_size),
        ]

        # Frame geometry in tiles, for the windows: `next_*` is loaded when the window generator
        # takes a frame, `frame_*` when that frame's first window is taken (the previous frame's
        # last windows may still be leaving the window generator in between).
        tiles_x_shape = range(tiles_max)
        tiles_y_shape = range(self._max_height // t)
        next_tiles_x_m1 = Signal(tiles_x_shape)
        next_tiles_y_m1 = Signal(tiles_y_shape)
        frame_tiles_x_m1 = Signal(tiles_x_shape)
        frame_tiles_y_m1 = Signal(tiles_y_shape)
        frames_inside = Signal(range(3))            # frames taken whose last window is not taken
        window_load = frame_start & size_ok & ~draining
        with m.If(window_load):
            m.d.sync += [
                next_tiles_x_m1.eq((self.width >> shift) - 1),
                next_tiles_y_m1.eq((self.height >> shift) - 1),
            ]

        # -------- tile rows: two banks, filled from the centre windows, replayed to the output ----
        # banks_used: banks allocated to a tile row that the output has not finished replaying;
        # rows_ready: of those, the tile rows whose every tile is written.
        banks_used = Signal(range(3))
        rows_ready = Signal(range(3))
        fill_bank = Signal()                        # the bank of the tile row being filled
        alloc_bank = Signal()                       # the bank the next tile row gets
        read_bank = Signal()                        # the bank being replayed
        bank_tiles_x_m1 = [Signal(tiles_x_shape, name=f"bank{b}_tiles_x_m1") for b in range(2)]
        bank_ty = [Signal(tiles_y_shape, name=f"bank{b}_ty") for b in range(2)]
        bank_final = [Signal(name=f"bank{b}_final") for b in range(2)]    # the frame's last tile row

        # -------- centre windows ----------------------------------------------------------------
        w_payload = window.o_stream.payload
        half = t // 2
        centre = (w_payload.x[:shift] == half) & (w_payload.y[:shift] == half)
        tile_x = w_payload.x[shift:]
        tile_y = w_payload.y[shift:]
        row_start = centre & (tile_x == 0)
        # A tile row starts filling only into a free bank; every other window passes at once.
        m.d.comb += window.o_stream.ready.eq(~row_start | (banks_used != 2))
        take = window.o_stream.valid & window.o_stream.ready
        row_started = take & row_start

        with m.If(take & w_payload.first):
            m.d.sync += [frame_tiles_x_m1.eq(next_tiles_x_m1), frame_tiles_y_m1.eq(next_tiles_y_m1)]
        with m.If(window_load & ~(take & w_payload.last)):
            m.d.sync += frames_inside.eq(frames_inside + 1)
        with m.Elif(~window_load & take & w_payload.last):
            m.d.sync += frames_inside.eq(frames_inside - 1)

        with m.If(row_started):
            m.d.sync += [fill_bank.eq(alloc_bank), alloc_bank.eq(~alloc_bank)]
            for b in range(2):
                with m.If(alloc_bank == b):
                    m.d.sync += [
                        bank_tiles_x_m1[b].eq(frame_tiles_x_m1),
                        bank_ty[b].eq(tile_y),
                        bank_final[b].eq(tile_y == frame_tiles_y_m1),
                    ]

        # Data registers (qualified by a valid flag) have no reset: a reset would gate the
        # flip-flops' enables on iCE40.
        # Stage 1: column sums. Window row i + ky, column d (0 … T + 2r - 1) is density row
        # ty·T + i + ky - r, column tx·T + d - r of the replicate-extended map.
        span = t + 2 * r
        s1_valid = Signal()
        s1_bank = Signal(reset_less=True)
        s1_tile_x = Signal(tiles_x_shape, reset_less=True)
        s1_row_end = Signal(reset_less=True)
        column_sums = [[[Signal(9 + shift, name=f"column_sum_{ky}_{d}_{ci}", reset_less=True) for ci in range(c)]
                        for d in range(span)] for ky in range(k)]
        m.d.sync += s1_valid.eq(take & centre)
        with m.If(take & centre):
            m.d.sync += [
                s1_bank.eq(Mux(row_start, alloc_bank, fill_bank)),
                s1_tile_x.eq(tile_x),
                s1_row_end.eq(tile_x == frame_tiles_x_m1),
            ]
            for ky in range(k):
                for d in range(span):
                    for ci in range(c):
                        m.d.sync += column_sums[ky][d][ci].eq(
                            _tree_sum(w_payload.data[ky + i][d][ci] for i in range(t)))

        # Stage 2: row sums of T column sums, rounded: the tile's A.
        s2_valid = Signal()
        s2_address = Signal(range(2 * tiles_max), reset_less=True)
        s2_row_end = Signal(reset_less=True)
        averages = [[[Signal(9, name=f"average_{ci}_{ky}_{kx}", reset_less=True) for kx in range(k)] for ky in range(k)]
                    for ci in range(c)]
        m.d.sync += s2_valid.eq(s1_valid)
        with m.If(s1_valid):
            m.d.sync += [
                s2_address.eq(Mux(s1_bank, s1_tile_x + tiles_max, s1_tile_x)),
                s2_row_end.eq(s1_row_end),
            ]
            for ci in range(c):
                for ky in range(k):
                    for kx in range(k):
                        total = _tree_sum(column_sums[ky][kx + j][ci] for j in range(t))
                        m.d.sync += averages[ci][ky][kx].eq((total + (t * t // 2)) >> (2 * shift))

        # Stage 3: the tile row memory.
        o_payload = self.o_stream.payload
        tile_rows = Memory(shape=o_payload.data.shape(), depth=2 * tiles_max, init=[])
        m.submodules.tile_rows = tile_rows
        wr = tile_rows.write_port()
        rd = tile_rows.read_port(domain="sync")
        m.d.comb += [
            wr.addr.eq(s2_address),
            wr.en.eq(s2_valid),
            wr.data.eq(Cat(*(averages[ci][ky][kx] for ci in range(c) for ky in range(k)
                             for kx in range(k)))),
        ]
        row_written = s2_valid & s2_row_end

        # -------- replay: T pixel rows per tile row, one pixel per cycle --------------------------
        advance = ~self.o_stream.valid | self.o_stream.ready
        out_x = Signal(coord_width(self._max_width))
        out_row = Signal(range(t))                  # pixel row inside the tile row
        replay_tiles_x_m1 = Mux(read_bank, bank_tiles_x_m1[1], bank_tiles_x_m1[0])
        replay_ty = Mux(read_bank, bank_ty[1], bank_ty[0])
        replay_final = Mux(read_bank, bank_final[1], bank_final[0])
        out_tile_x = out_x[shift:]
        row_end = (out_tile_x == replay_tiles_x_m1) & (out_x[:shift] == t - 1)
        tile_row_end = row_end & (out_row == t - 1)
        step = advance & (rows_ready != 0)
        row_replayed = step & tile_row_end

        sr_valid = Signal()
        sr_x = Signal.like(o_payload.x, reset_less=True)
        sr_y = Signal.like(o_payload.y, reset_less=True)
        sr_first = Signal(reset_less=True)
        sr_last = Signal(reset_less=True)
        m.d.comb += [
            rd.addr.eq(Mux(read_bank, out_tile_x + tiles_max, out_tile_x)),
            rd.en.eq(advance),
        ]
        with m.If(advance):
            m.d.sync += [
                sr_valid.eq(step),
                sr_x.eq(out_x),
                sr_y.eq(Cat(out_row, replay_ty)),
                sr_first.eq((replay_ty == 0) & (out_row == 0) & (out_x == 0)),
                sr_last.eq(replay_final & tile_row_end),
                self.o_stream.valid.eq(sr_valid),
                o_payload.data.eq(rd.data),
                o_payload.x.eq(sr_x),
                o_payload.y.eq(sr_y),
                o_payload.first.eq(sr_first),
                o_payload.last.eq(sr_last),
            ]
        with m.If(step):
            with m.If(row_end):
                m.d.sync += out_x.eq(0)
                with m.If(out_row == t - 1):
                    m.d.sync += [out_row.eq(0), read_bank.eq(~read_bank)]
                with m.Else():
                    m.d.sync += out_row.eq(out_row + 1)
            with m.Else():
                m.d.sync += out_x.eq(out_x + 1)

        m.d.sync += [
            banks_used.eq(banks_used + row_started - row_replayed),
            rows_ready.eq(rows_ready + row_written - row_replayed),
        ]
        m.d.comb += self.busy.eq((frames_inside != 0) | window.busy | s1_valid | s2_valid |
                                 (banks_used != 0) | sr_valid | self.o_stream.valid)
        return m
