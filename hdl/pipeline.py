"""Density pipeline: WindowGenerator followed by DensityUnit."""

from amaranth.hdl import Module, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out, connect

from .density import DensityUnit
from .skid import StreamRegister
from .window import PadMode, WindowErrors, WindowGenerator


__all__ = ["DensityPipeline"]


class DensityPipeline(wiring.Component):
    """Raster pixels in, one UQ1.8 density per pixel and channel out.

    The :class:`~dynsparse.hdl.window.WindowGenerator` (zero padding; the
    density excludes padding, so the mode does not matter) feeds the
    :class:`~dynsparse.hdl.density.DensityUnit` through a register slice
    (:class:`~dynsparse.hdl.skid.StreamRegister`), so that the stall signal
    of one does not run through the control logic of the other in the same
    cycle; the throughput is one pixel per clock inside a frame.

    Parameters
    ----------
    kernel_size, channels, max_width, max_height : int
        As for the two blocks.

    Members
    -------
    i_stream : In(stream.Signature(pixel_layout))
        8-bit pixels in raster order, ``first``/``last`` marking the frame.
    o_stream : Out(stream.Signature(density layout))
        Densities in raster order with ``x``, ``y``, ``first``, ``last``.
    width, height : In(unsigned)
        Frame size, sampled at each frame's first pixel.
    inv_ref_var : In(unsigned(24))
        Reciprocal reference variance, sampled at each frame's first window.
    errors : Out(WindowErrors)
        Sticky stream errors from the window generator.
    clear_errors : In(1)
        Clears ``errors``.
    busy : Out(1)
        The window generator is inside a frame.
    """

    def __init__(self, *, kernel_size=3, channels=1, max_width=640, max_height=480):
        self._window = WindowGenerator(kernel_size=kernel_size, channels=channels,
                                       max_width=max_width, max_height=max_height)
        self._density = DensityUnit(kernel_size=kernel_size, channels=channels,
                                    max_width=max_width, max_height=max_height)
        super().__init__({
            "i_stream":     In(self._window.i_stream.signature.flip()),
            "o_stream":     Out(self._density.o_stream.signature),
            "width":        In(self._window.width.shape(), init=max_width),
            "height":       In(self._window.height.shape(), init=max_height),
            "inv_ref_var":  In(self._density.inv_ref_var.shape()),
            "errors":       Out(WindowErrors),
            "clear_errors": In(1),
            "busy":         Out(1),
        })

    kernel_size = property(lambda self: self._window.kernel_size)
    channels    = property(lambda self: self._window.channels)
    max_width   = property(lambda self: self._window.max_width)
    max_height  = property(lambda self: self._window.max_height)
    min_width   = property(lambda self: self._window.min_width)

    def pixel_delay(self, width):
        """Cycles from accepting pixel ``n`` to offering its density, with no stalls."""
        return self._window.window_delay(width) + 1 + self._density.latency

    def elaborate(self, platform):
        m = Module()
        m.submodules.window = window = self._window
        m.submodules.density = density = self._density
        connect(m, wiring.flipped(self.i_stream), window.i_stream)
        m.submodules.slice = slice_ = StreamRegister(window.o_stream.payload.shape())
        connect(m, window.o_stream, slice_.i_stream)
        connect(m, slice_.o_stream, density.i_stream)
        connect(m, density.o_stream, wiring.flipped(self.o_stream))
        m.d.comb += [
            window.width.eq(self.width),
            window.height.eq(self.height),
            window.pad_mode.eq(PadMode.ZERO),
            window.clear_errors.eq(self.clear_errors),
            density.inv_ref_var.eq(self.inv_ref_var),
            self.errors.eq(window.errors),
            self.busy.eq(window.busy),
        ]
        return m
