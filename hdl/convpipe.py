"""Density-shaped sparse convolution of a pixel stream: the whole seed-000/001 datapath."""

from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out, connect

from .frame import check_int, pixel_layout, size_gate
from .pipeline import DensityPipeline
from .scaler import KernelScaler, ScalerErrors, tap_densities_from_window
from .skid import StreamFIFO, StreamRegister
from .tiles import TileAverager
from .sparseconv import SparseConv, SparseConvErrors
from .window import PadMode, WindowErrors, WindowGenerator


__all__ = ["ConvPipelineErrors", "SparseConvPipeline", "StreamFork"]


class ConvPipelineErrors(data.Struct):
    """Sticky error flags of :class:`SparseConvPipeline`, per block.

    ``bad_size`` is the pipeline's own: a frame whose ``width``/``height`` (at its
    ``first`` pixel) not every block takes was discarded before the fork (see
    :class:`SparseConvPipeline`, *Errors*).
    """
    frame:    WindowErrors
    scaler:   ScalerErrors
    engine:   SparseConvErrors
    bad_size: 1


class StreamFork(wiring.Component):
    """One stream to two: each input word is offered on both outputs.

    An output that took the word waits (its ``valid`` low) until the other
    has taken it too; then the input word is accepted. ``valid`` never
    depends on ``ready``.

    Members
    -------
    i_stream : In(stream.Signature(shape))
    o_a, o_b : Out(stream.Signature(shape))
    """

    def __init__(self, shape):
        super().__init__({
            "i_stream": In(stream.Signature(shape)),
            "o_a":      Out(stream.Signature(shape)),
            "o_b":      Out(stream.Signature(shape)),
        })

    def elaborate(self, platform):
        m = Module()
        done_a, done_b = Signal(), Signal()
        took_a = self.o_a.valid & self.o_a.ready
        took_b = self.o_b.valid & self.o_b.ready
        finish = (done_a | took_a) & (done_b | took_b)
        m.d.comb += [
            self.o_a.payload.eq(self.i_stream.payload),
            self.o_b.payload.eq(self.i_stream.payload),
            self.o_a.valid.eq(self.i_stream.valid & ~done_a),
            self.o_b.valid.eq(self.i_stream.valid & ~done_b),
            self.i_stream.ready.eq(finish),
        ]
        with m.If(finish):
            m.d.sync += [done_a.eq(0), done_b.eq(0)]
        with m.Else():
            m.d.sync += [done_a.eq(done_a | took_a), done_b.eq(done_b | took_b)]
        return m


class SparseConvPipeline(wiring.Component):
    """Raster pixels in, a density-shaped, padding-masked sparse convolution out.

    The pixel stream is forked:

    - **density branch**: :class:`~dynsparse.hdl.pipeline.DensityPipeline`
      (``density_kernel_size``) gives each pixel's UQ1.8 density per channel; a
      :class:`~dynsparse.hdl.window.WindowGenerator` with ``REPLICATE`` padding
      turns the density map into each output position's tap densities (tile size
      1, :func:`~dynsparse.hdl.scaler.tap_densities_from_window`), or with
      ``tile_size > 1`` a :class:`~dynsparse.hdl.tiles.TileAverager` gives each
      position its tile's tap densities; the
      :class:`~dynsparse.hdl.scaler.KernelScaler` scales, prunes and compacts the
      weights into one tap list per output channel;
    - **pixel branch**: a block-RAM FIFO (:attr:`fifo_depth` pixels) holds the
      pixels while the density branch, which needs ``r_d`` rows more of look-ahead,
      catches up; a :class:`~dynsparse.hdl.window.WindowGenerator` in ``pad_mode``
      gives the windows;

    and :class:`~dynsparse.hdl.sparseconv.SparseConv` joins each window with its
    tap lists. Bit-exact with ``golden.density.density_map`` →
    ``golden.sparseconv.tap_densities`` (``tile_size``) → ``tap_lists`` →
    (``expand_tiles``) → ``sparse_conv`` (→ ``requantize``); in ``dense`` mode
    with ``dense_tap_lists`` and nothing skipped.

    Parameters
    ----------
    kernel_size : int
        Convolution kernel ``K`` (odd).
    density_kernel_size : int
        Neighbourhood of the density (odd), 3 by default.
    in_channels, out_channels, lanes, block_size, requantize
        As :class:`~dynsparse.hdl.sparseconv.SparseConv`.
    max_width, max_height : int
        Largest frame.
    tile_size : int
        Tile size ``T`` of the tap densities: 1 (default) for every pixel's own
        K×K window, or a power of two 2 … 8 with ``T + K <= 15``
        (:class:`~dynsparse.hdl.tiles.TileAverager`). With ``T > 1`` the frame's
        width and height must be multiples of T (and ``max_width``/``max_height``
        too); the pixel FIFO grows by the tile averager's look-ahead.

    Members
    -------
    i_stream : In(stream.Signature(pixel_layout))
        8-bit pixels of ``in_channels`` channels in raster order, ``first``/``last``.
    o_stream : Out(stream.Signature(...))
        :class:`~dynsparse.hdl.sparseconv.SparseConv`'s results, one transfer per pixel.
    width, height : In(unsigned)
        Frame size, sampled at each frame's first pixel by every block.
    inv_ref_var : In(unsigned(24))
        Density reference (``golden.density.inv_ref_var``).
    prune_threshold : In(unsigned(9)), dense : In(1), pad_mode : In(PadMode)
        Runtime configuration, sampled per frame; change between frames.
    weight_addr, weight_data, weight_write
        The scaler's weight write port.
    mask_write, mask_band, mask_index, mask_value
        The engine's padding-mask write port.
    multiplier, shift
        Requantisation (with ``requantize``).
    cycles, performed, skipped_pruned, skipped_zero, skipped_padding : Out(unsigned(32))
        The engine's counters; ``clear_counters`` clears them.
    errors : Out(ConvPipelineErrors), clear_errors : In(1)
        Sticky errors of the frame (pixel window generator), the scaler and the engine,
        and the pipeline's own ``bad_size``.
    busy : Out(1)
        Some block holds part of a frame.

    Errors
    ------
    ``bad_size``: at a frame's ``first`` pixel, ``width`` is not in
    ``[min_width, max_width]`` or ``height`` not in ``[min_height, max_height]``,
    or, with ``tile_size > 1``, either is not a multiple of T. The frame is
    discarded before the fork, up to its ``last`` pixel or the next ``first``:
    no result comes out, nothing waits, and the next good frame is exact. Every
    block behind the gate would drop such a frame too, but not all of them: the
    branches' limits differ (the tile averager needs multiples of T, the window
    generators' minimum widths depend on their kernels), and a frame only one
    branch took would leave the engine waiting forever.

    Raises
    ------
    TypeError, ValueError
        On a bad parameter; the message names the value.
    """

    #: Pixels of slack in the pixel FIFO beyond the density branch's look-ahead.
    FIFO_SLACK = 64

    def __init__(self, *, kernel_size=3, density_kernel_size=3, in_channels=1, out_channels=8, lanes=8,
                 max_width=640, max_height=480, block_size=4, requantize=False, tile_size=1):
        check_int("density kernel size", density_kernel_size, minimum=1, maximum=15, odd=True)
        # tile_size 1 keeps the replicate window generator; larger tiles use a TileAverager,
        # which checks T + K and the frame limits against T.
        check_int("tile size", tile_size, minimum=1, maximum=16)
        if tile_size & (tile_size - 1):
            raise ValueError(f"tile size must be a power of two in [1, 16], not {tile_size!r}")
        self._tile_size = tile_size
        self._kernel_size = kernel_size
        self._density_kernel_size = density_kernel_size
        self._tiles = None
        if tile_size > 1:
            self._tiles = TileAverager(kernel_size=kernel_size, channels=in_channels, tile_size=tile_size,
                                       max_width=max_width, max_height=max_height)
        self._density = DensityPipeline(kernel_size=density_kernel_size, channels=in_channels,
                                        max_width=max_width, max_height=max_height)
        self._density_window = WindowGenerator(kernel_size=kernel_size, channels=in_channels,
                                               max_width=max_width, max_height=max_height,
                                               pixel_shape=unsigned(9))
        self._scaler = KernelScaler(kernel_size=kernel_size, in_channels=in_channels,
                                    out_channels=out_channels, max_width=max_width, max_height=max_height)
        self._window = WindowGenerator(kernel_size=kernel_size, channels=in_channels,
                                       max_width=max_width, max_height=max_height)
        self._engine = SparseConv(kernel_size=kernel_size, in_channels=in_channels,
                                  out_channels=out_channels, lanes=lanes, max_width=max_width,
                                  max_height=max_height, block_size=block_size, requantize=requantize)
        self._pixel_layout = pixel_layout(pixel_shape=unsigned(8), channels=in_channels)
        r_d = density_kernel_size // 2
        # The density branch consumes r_d rows and r_d pixels more than the pixel branch
        # before a position's tap list exists; its pipelines hold a few more.
        look_ahead = r_d * max_width + r_d
        if self._tiles is not None:
            # The tile averager needs look_ahead(width) density pixels where the replicate window
            # needed r·width + r (matched by the pixel branch's own window generator).
            r = kernel_size // 2
            look_ahead += self._tiles.look_ahead(max_width) - (r * max_width + r)
        self._fifo_depth = 1 << (look_ahead + self.FIFO_SLACK - 1).bit_length()
        self._requantize = requantize
        ports = {
            "i_stream":        In(stream.Signature(self._pixel_layout)),
            "o_stream":        Out(self._engine.o_stream.signature),
            "width":           In(self._window.width.shape(), init=max_width),
            "height":          In(self._window.height.shape(), init=max_height),
            "inv_ref_var":     In(self._density.inv_ref_var.shape()),
            "prune_threshold": In(unsigned(9)),
            "dense":           In(1),
            "pad_mode":        In(PadMode),
            "weight_addr":     In(self._scaler.weight_addr.shape()),
            "weight_data":     In(self._scaler.weight_data.shape()),
            "weight_write":    In(1),
            "mask_write":      In(1),
            "mask_band":       In(self._engine.mask_band.shape()),
            "mask_index":      In(self._engine.mask_index.shape()),
            "mask_value":      In(1),
            **{name: Out(getattr(self._engine, name).shape()) for name in
               ("cycles", "performed", "skipped_pruned", "skipped_zero", "skipped_padding")},
            "clear_counters":  In(1),
            "errors":          Out(ConvPipelineErrors),
            "clear_errors":    In(1),
            "busy":            Out(1),
        }
        if requantize:
            ports["multiplier"] = In(self._engine.multiplier.shape())
            ports["shift"] = In(self._engine.shift.shape())
        super().__init__(ports)

    kernel_size  = property(lambda self: self._window.kernel_size)
    in_channels  = property(lambda self: self._window.channels)
    out_channels = property(lambda self: self._engine.out_channels)
    lanes        = property(lambda self: self._engine.lanes)
    max_width    = property(lambda self: self._window.max_width)
    max_height   = property(lambda self: self._window.max_height)
    min_width    = property(lambda self: max(self._window.min_width, self._density.min_width,
                                             self._tiles.min_width if self._tiles is not None else 1))
    min_height   = property(lambda self: max(self._kernel_size // 2 + 1, self._density_kernel_size // 2 + 1,
                                             self._tiles.min_height if self._tiles is not None else 1),
                            doc="Lowest frame every block takes.")
    tile_size    = property(lambda self: self._tile_size)
    fifo_depth   = property(lambda self: self._fifo_depth,
                            doc="Pixels the pixel branch's FIFO holds (its memory's depth).")

    def elaborate(self, platform):
        m = Module()
        m.submodules.fork = fork = StreamFork(self._pixel_layout)
        m.submodules.density = density = self._density
        if self._tiles is None:
            m.submodules.density_window = density_window = self._density_window
        else:
            m.submodules.density_tiles = density_window = self._tiles
        m.submodules.scaler = scaler = self._scaler
        m.submodules.pixel_fifo = fifo = StreamFIFO(self._pixel_layout, depth=self._fifo_depth)
        m.submodules.window = window = self._window
        m.submodules.engine = engine = self._engine
        # Register slices where a ready chain would otherwise cross blocks: after the fork on
        # both branches (the fork's `ready` joins the two), before the engine's window input
        # (the engine's position end reaching back through the window generator and the FIFO)
        # and before the kernel scaler (the engine's position end, through the scaler, reaching
        # the density window and the density unit). The engine's tap lists are not sliced: a
        # slice would hold two copies of C_out lists.
        m.submodules.to_density = to_density = StreamRegister(self._pixel_layout)
        m.submodules.to_fifo = to_fifo = StreamRegister(self._pixel_layout)
        m.submodules.to_engine = to_engine = StreamRegister(window.o_stream.payload.shape())
        m.submodules.to_scaler = to_scaler = StreamRegister(scaler.i_stream.payload.shape())

        # -------- size gate: a frame some block would drop never reaches either branch --------------
        # (the branches check sizes against different limits: one dropping a frame the other takes
        # would leave the engine waiting for tap lists or windows that never come).
        size_ok = ((self.width >= self.min_width) & (self.width <= self.max_width) &
                   (self.height >= self.min_height) & (self.height <= self.max_height))
        if self._tile_size > 1:
            shift = self._tile_size.bit_length() - 1
            size_ok &= (self.width[:shift] == 0) & (self.height[:shift] == 0)
        m.d.comb += fork.i_stream.payload.eq(self.i_stream.payload)
        bad_size, draining = size_gate(m, self.i_stream, fork.i_stream,
                                       frame_start=self.i_stream.valid & self.i_stream.payload.first,
                                       size_ok=size_ok, clear_errors=self.clear_errors)

        # density branch
        connect(m, fork.o_a, to_density.i_stream)
        connect(m, to_density.o_stream, density.i_stream)
        m.d.comb += [
            density_window.i_stream.valid.eq(density.o_stream.valid),
            density_window.i_stream.payload.data.eq(density.o_stream.payload.data),
            density_window.i_stream.payload.first.eq(density.o_stream.payload.first),
            density_window.i_stream.payload.last.eq(density.o_stream.payload.last),
            density.o_stream.ready.eq(density_window.i_stream.ready),
            to_scaler.i_stream.valid.eq(density_window.o_stream.valid),
            density_window.o_stream.ready.eq(to_scaler.i_stream.ready),
        ]
        if self._tiles is None:
            m.d.comb += to_scaler.i_stream.payload.eq(
                tap_densities_from_window(density_window.o_stream.payload))
        else:
            m.d.comb += to_scaler.i_stream.payload.eq(density_window.o_stream.payload)
        connect(m, to_scaler.o_stream, scaler.i_stream)
        connect(m, scaler.o_stream, engine.i_taps)

        # pixel branch
        connect(m, fork.o_b, to_fifo.i_stream)
        connect(m, to_fifo.o_stream, fifo.i_stream)
        connect(m, fifo.o_stream, window.i_stream)
        connect(m, window.o_stream, to_engine.i_stream)
        connect(m, to_engine.o_stream, engine.i_window)
        connect(m, engine.o_stream, wiring.flipped(self.o_stream))

        m.d.comb += [
            density.width.eq(self.width), density.height.eq(self.height),
            density.inv_ref_var.eq(self.inv_ref_var),
            density_window.width.eq(self.width), density_window.height.eq(self.height),
            window.width.eq(self.width), window.height.eq(self.height),
            window.pad_mode.eq(self.pad_mode),
            scaler.prune_threshold.eq(self.prune_threshold),
            scaler.dense.eq(self.dense),
            scaler.weight_addr.eq(self.weight_addr),
            scaler.weight_data.eq(self.weight_data),
            scaler.weight_write.eq(self.weight_write),
            engine.pad_mode.eq(self.pad_mode),
            engine.dense.eq(self.dense),
            engine.width.eq(self.width), engine.height.eq(self.height),
            engine.mask_write.eq(self.mask_write),
            engine.mask_band.eq(self.mask_band),
            engine.mask_index.eq(self.mask_index),
            engine.mask_value.eq(self.mask_value),
            engine.clear_counters.eq(self.clear_counters),
            self.cycles.eq(engine.cycles),
            self.performed.eq(engine.performed),
            self.skipped_pruned.eq(engine.skipped_pruned),
            self.skipped_zero.eq(engine.skipped_zero),
            self.skipped_padding.eq(engine.skipped_padding),
            self.errors.frame.eq(window.errors),
            self.errors.scaler.eq(scaler.errors),
            self.errors.engine.eq(engine.errors),
            self.errors.bad_size.eq(bad_size),
            density.clear_errors.eq(self.clear_errors),
            density_window.clear_errors.eq(self.clear_errors),
            window.clear_errors.eq(self.clear_errors),
            scaler.clear_errors.eq(self.clear_errors),
            engine.clear_errors.eq(self.clear_errors),
            self.busy.eq(density.busy | density_window.busy | scaler.busy | window.busy | engine.busy
                         | fifo.o_stream.valid | draining | to_density.o_stream.valid
                         | to_fifo.o_stream.valid | to_engine.o_stream.valid | to_scaler.o_stream.valid),
        ]
        if self._tiles is None:
            m.d.comb += density_window.pad_mode.eq(PadMode.REPLICATE)
        if self._requantize:
            m.d.comb += [engine.multiplier.eq(self.multiplier), engine.shift.eq(self.shift)]
        return m
