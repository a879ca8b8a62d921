"""Pack and unpack stream payloads between NumPy arrays and flat integers.

Amaranth flattens a struct payload into one wide Verilog port; a testbench
sees an integer. These helpers walk the payload's
:class:`~amaranth.lib.data.Layout` so that tests speak in fields and arrays:
a :class:`~amaranth.lib.data.StructLayout` becomes a ``dict``, nested
:class:`~amaranth.lib.data.ArrayLayout`\\ s of plain shapes become trailing
array dimensions, plain shapes become integer arrays (sign-extended when
signed).
"""

import numpy as np
from amaranth.hdl import Shape
from amaranth.lib import data


__all__ = ["unpack", "pack"]


def _leaves(layout):
    """(dimensions, element shape) of nested arrays ending in a plain shape."""
    dims = []
    while isinstance(layout, data.ArrayLayout):
        dims.append(layout.length)
        layout = layout.elem_shape
    return dims, layout


def unpack(layout, values):
    """Split flat payload integers into fields.

    ``values`` is a sequence of N integers; each leaf comes back as an int64
    array of shape ``[N, *dims]`` (an object array of Python ints when wider
    than 63 bits).
    """
    values = np.asarray([int(v) for v in values], dtype=object)
    return _unpack(layout, values, 0)


def _unpack(layout, values, offset):
    if isinstance(layout, data.StructLayout):
        return {name: _unpack(field.shape, values, offset + field.offset)
                for name, field in layout}
    dims, leaf = _leaves(layout)
    leaf_shape = Shape.cast(leaf)
    width = leaf_shape.width
    count = int(np.prod(dims)) if dims else 1
    mask = (1 << width) - 1
    columns = [((values >> (offset + i * width)) & mask) for i in range(count)]
    out = np.stack(columns, axis=-1) if columns else np.zeros((len(values), 0), dtype=object)
    if leaf_shape.signed:
        out = np.where(out >= (1 << (width - 1)), out - (1 << width), out)
    out = out.reshape((len(values), *dims))
    if width <= 63:
        out = out.astype(np.int64)
    return out


def pack(layout, fields, count):
    """Inverse of :func:`unpack`: ``count`` flat integers from a dict of field arrays.

    A leaf may be given as a scalar (broadcast to every payload) or an array of
    shape ``[count, *dims]``; fields left out are zero.
    """
    values = np.zeros(count, dtype=object)
    values[:] = 0
    return list(_pack(layout, fields, values, 0))


def _pack(layout, fields, values, offset):
    if isinstance(layout, data.StructLayout):
        for name, field in layout:
            if name in fields:
                values = _pack(field.shape, fields[name], values, offset + field.offset)
        return values
    dims, leaf = _leaves(layout)
    width = Shape.cast(leaf).width
    mask = (1 << width) - 1
    count = int(np.prod(dims)) if dims else 1
    array = np.broadcast_to(np.asarray(fields, dtype=object), (len(values), *dims))
    array = array.reshape(len(values), count)
    for i in range(count):
        values = values + (((array[:, i] & mask)) << (offset + i * width))
    return values
