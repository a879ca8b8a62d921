"""Stream payloads shared by every block.

Every block speaks :class:`amaranth.lib.stream.Signature` streams whose payload
is a :class:`~amaranth.lib.data.StructLayout`. A frame is a run of transfers
whose first one carries ``first = 1`` and whose last one carries ``last = 1``;
both flags sit in the payload, beside the data.
"""

from amaranth.hdl import Shape, ShapeCastable, Signal, unsigned
from amaranth.lib import data


__all__ = ["check_int", "check_shape", "frame_layout", "pixel_layout", "coord_width"]


def check_int(name, value, *, minimum=None, maximum=None, odd=False):
    """Check an integer parameter and return it.

    Raises
    ------
    TypeError
        If ``value`` is not an ``int`` (``bool`` is refused too).
    ValueError
        If ``value`` is outside ``[minimum, maximum]`` or, with ``odd``, even.
    """
    what = "an odd integer" if odd else "an integer"
    if minimum is not None and maximum is not None:
        what += f" in [{minimum}, {maximum}]"
    elif minimum is not None:
        what += f" >= {minimum}"
    elif maximum is not None:
        what += f" <= {maximum}"
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be {what}, not {value!r}")
    if (minimum is not None and value < minimum) or \
            (maximum is not None and value > maximum) or \
            (odd and value % 2 == 0):
        raise ValueError(f"{name} must be {what}, not {value!r}")
    return value


def check_shape(name, value):
    """Check that ``value`` is a shape-castable object and return it as a :class:`Shape`."""
    if not isinstance(value, (Shape, ShapeCastable, int)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a shape, not {value!r}")
    return Shape.cast(value)


def coord_width(maximum):
    """Bits needed to hold a coordinate in ``[0, maximum - 1]`` (at least 1)."""
    return max(1, (maximum - 1).bit_length())


def frame_layout(data_shape):
    """Payload of a framed stream: ``data`` plus the ``first``/``last`` frame markers."""
    return data.StructLayout({
        "data":  data_shape,
        "first": unsigned(1),
        "last":  unsigned(1),
    })


def pixel_layout(*, pixel_shape, channels):
    """Payload of a raster pixel stream: one pixel of ``channels`` channels per transfer."""
    return frame_layout(data.ArrayLayout(pixel_shape, channels))


def size_gate(m, i_stream, o_stream, *, frame_start, size_ok, clear_errors):
    """Pass ``i_stream`` to ``o_stream`` (valid/ready; the payload is the caller's to connect),
    discarding whole frames of a bad size.

    When ``frame_start & ~size_ok`` (sampled with a frame's ``first`` pixel), the frame is
    discarded up to its ``last`` pixel, or up to the next ``first`` after at least one pixel.
    Returns ``(bad_size, draining)``: a sticky flag, cleared by ``clear_errors`` (a frame
    discarded in the same cycle keeps it), and whether a frame is being discarded.
    """
    payload = i_stream.payload
    draining = Signal()
    drain_took = Signal()
    raise_bad_size = Signal()
    bad_size = Signal()
    with m.If(clear_errors):
        m.d.sync += bad_size.eq(raise_bad_size)
    with m.Else():
        m.d.sync += bad_size.eq(bad_size | raise_bad_size)
    with m.If(draining):
        with m.If(i_stream.valid):
            with m.If(payload.first & drain_took):
                m.d.sync += draining.eq(0)
            with m.Else():
                m.d.comb += i_stream.ready.eq(1)
                m.d.sync += drain_took.eq(1)
                with m.If(payload.last):
                    m.d.sync += draining.eq(0)
    with m.Elif(frame_start & ~size_ok):
        m.d.comb += raise_bad_size.eq(1)
        m.d.sync += [draining.eq(1), drain_took.eq(0)]
    with m.Else():
        m.d.comb += [o_stream.valid.eq(i_stream.valid), i_stream.ready.eq(o_stream.ready)]
    return bad_size, draining
