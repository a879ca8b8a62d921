"""K×K sliding windows over a raster pixel stream, with padding at the borders."""

from amaranth.hdl import unsigned
from amaranth.lib import data, enum

from .frame import coord_width


__all__ = ["PadMode", "window_layout"]


class PadMode(enum.Enum, shape=2):
    """How a window element that falls outside the frame is filled.

    ``ZERO``: with 0. ``REPLICATE``: with the nearest pixel on the border
    (``aaa|abcd|ddd``). ``REFLECT``: mirrored about the border pixel, which is
    not repeated (``dcb|abcd|cba``).
    """
    ZERO      = 0
    REPLICATE = 1
    REFLECT   = 2


def window_layout(*, kernel_size, channels, pixel_shape, max_width, max_height):
    """Payload of a window stream.

    ``data[dy][dx][c]`` is channel ``c`` of the pixel at row offset ``dy - r``
    and column offset ``dx - r`` from the centre (``r = kernel_size // 2``);
    ``pad[dy][dx]`` is 1 where that element lies outside the frame (its value
    then comes from the padding mode); ``x``/``y`` are the centre's
    coordinates; ``first``/``last`` mark the frame's first and last window.
    """
    k = kernel_size
    return data.StructLayout({
        "data":  data.ArrayLayout(data.ArrayLayout(data.ArrayLayout(pixel_shape, channels), k), k),
        "pad":   data.ArrayLayout(data.ArrayLayout(unsigned(1), k), k),
        "x":     unsigned(coord_width(max_width)),
        "y":     unsigned(coord_width(max_height)),
        "first": unsigned(1),
        "last":  unsigned(1),
    })
