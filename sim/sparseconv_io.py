"""Payloads and mask writes for :class:`~dynsparse.hdl.sparseconv.SparseConv`, shared by its tests.

Windows come from :func:`dynsparse.golden.window.windows`, tap lists from
:mod:`dynsparse.golden.sparseconv` (:class:`TapLists`); both are packed into
the flat integers the stream drivers send.
"""

import numpy as np
from amaranth.hdl import Shape
from amaranth.lib import data

from ..golden.padmask import BANDS, mask_layout, mask_length
from ..golden.sparseconv import expand_tiles, tap_densities, tap_lists
from ..golden.window import windows


__all__ = ["pack_nested", "window_words", "tap_list_words", "lane_beat_words", "packed_beat_words", "pixel_words",
           "mask_writes", "frame_marks",
           "random_frame", "random_weights", "random_lists", "random_mask"]


def pack_nested(layout, fields, count):
    """Flat payload integers of ``count`` transfers from nested fields.

    A :class:`~amaranth.lib.data.StructLayout` takes a dict; an
    :class:`~amaranth.lib.data.ArrayLayout` takes an array whose axis 1 is the
    array's index (after the transfer axis 0), or a list of per-element fields
    when its elements are structs; a plain shape takes an array ``[count]`` or a scalar.
    """
    values = np.zeros(count, dtype=object)
    values[:] = 0
    return [int(v) for v in _pack(layout, fields, values, 0, count)]


def _pack(layout, fields, values, offset, count):
    if isinstance(layout, data.StructLayout):
        for name, field in layout:
            if name in fields:
                values = _pack(field.shape, fields[name], values, offset + field.offset, count)
        return values
    if isinstance(layout, data.ArrayLayout):
        elem_size = Shape.cast(layout.elem_shape).width
        for i in range(layout.length):
            element = fields[i] if isinstance(fields, (list, tuple)) else np.asarray(fields)[:, i]
            values = _pack(layout.elem_shape, element, values, offset + i * elem_size, count)
        return values
    width = Shape.cast(layout).width
    array = np.broadcast_to(np.asarray(fields, dtype=object), (count,))
    return values + ((array & ((1 << width) - 1)) << offset)


def frame_marks(count):
    first, last = np.zeros(count, np.int64), np.zeros(count, np.int64)
    first[0] = last[-1] = 1
    return first, last


def window_words(layout, frame, *, kernel_size, pad_mode):
    """Flat window payloads of every pixel of ``frame [H, W, C]``, raster order."""
    height, width, channels = frame.shape
    count = height * width
    values, pad = windows(frame, kernel_size=kernel_size, pad_mode=pad_mode)
    ys, xs = np.mgrid[0:height, 0:width]
    first, last = frame_marks(count)
    return pack_nested(layout, {
        "data": values.reshape(count, kernel_size, kernel_size, channels).astype(np.int64),
        "pad": pad.reshape(count, kernel_size, kernel_size).astype(np.int64),
        "x": xs.ravel(), "y": ys.ravel(), "first": first, "last": last}, count)


def tap_list_words(layout, lists):
    """Flat tap-list payloads of :class:`TapLists` with leading shape ``[H, W, C_out]``."""
    height, width, c_out = lists.count.shape
    count = height * width
    flat = lambda values: np.asarray(values).reshape(count, c_out, *np.asarray(values).shape[3:])
    ci, dy, dx, weight = (flat(v) for v in (lists.ci, lists.dy, lists.dx, lists.weight))
    per_channel = [{
        "count": flat(lists.count)[:, co], "pruned": flat(lists.pruned)[:, co],
        "zero": flat(lists.zero)[:, co],
        "taps": [{"ci": ci[:, co, i], "dy": dy[:, co, i], "dx": dx[:, co, i], "weight": weight[:, co, i]}
                 for i in range(lists.capacity)],
    } for co in range(c_out)]
    ys, xs = np.mgrid[0:height, 0:width]
    first, last = frame_marks(count)
    return pack_nested(layout, {"lists": per_channel, "x": xs.ravel(), "y": ys.ravel(),
                                "first": first, "last": last}, count)


def lane_beat_words(layout, beats):
    """Flat beat payloads of :func:`dynsparse.golden.laneconv.lane_beats` (``LaneConv``'s ``i_taps``)."""
    count = len(beats["end"])
    lanes = beats["valid"].shape[1]
    entries = [{name: beats[name][:, j] for name in ("valid", "flush", "slot", "ci", "dy", "dx", "weight")}
               for j in range(lanes)]
    return pack_nested(layout, {"lanes": entries, **{name: beats[name] for name in
                                                     ("end", "first", "last", "pruned", "zero")}}, count)


def packed_beat_words(layout, beats):
    """Flat beat payloads of :func:`dynsparse.golden.packedconv.pack_beats` (``PackedConv``'s ``i_beats``)."""
    count = len(beats["take"])
    lanes = beats["valid"].shape[1]
    entries = [{name: beats[name][:, j] for name in ("valid", "flush", "channel", "slot", "place", "ci", "weight")}
               for j in range(lanes)]
    return pack_nested(layout, {"lanes": entries, **{name: beats[name] for name in
                                                     ("take", "emit", "mask", "first", "last", "pruned",
                                                      "zero", "padding")}}, count)


def pixel_words(layout, frame):
    """Flat pixel payloads (``data[C]``, ``first``, ``last``) of ``frame [H, W, C]``, raster order."""
    height, width, channels = frame.shape
    first, last = frame_marks(height * width)
    return pack_nested(layout, {"data": frame.reshape(-1, channels).astype(np.int64),
                                "first": first, "last": last}, height * width)


def mask_writes(mask, width, height, *, kernel_size, block_size):
    """``(band, index, value)`` writes that load a golden mask (every bit, in order)."""
    writes = []
    for band_number, band in enumerate(BANDS):
        first, count = mask_layout(width, height, kernel_size=kernel_size, block_size=block_size)[band]
        writes += [(band_number, index, int(mask[first + index])) for index in range(count)]
    return writes


# -------- random test data for an engine (SparseConv, LaneConv): its channels, K, pixel shape -----

def random_frame(rng, block, height, width):
    """A random frame ``[H, W, C_in]`` of ``block``'s pixel shape."""
    if block.pixel_shape.signed:
        return rng.integers(-128, 128, (height, width, block.in_channels)).astype(np.int8)
    return rng.integers(0, 256, (height, width, block.in_channels)).astype(np.uint8)


def random_weights(rng, block, low=-127, high=127):
    """Random weights ``[C_out, C_in, K, K]`` in ``[low, high]``."""
    k = block.kernel_size
    return rng.integers(low, high + 1, (block.out_channels, block.in_channels, k, k))


def random_lists(rng, block, height, width, *, tile_size=1, weights=None):
    """Tap lists ``[H, W, C_out]`` of random densities (a fifth of the pixels full, the rest
    anywhere from 0) and a random prune threshold in [0, 200)."""
    weights = random_weights(rng, block) if weights is None else weights
    density = rng.integers(0, 257, (height, width, block.in_channels))
    density[rng.random(density.shape) < 0.2] = 256
    densities = tap_densities(density, kernel_size=block.kernel_size, tile_size=tile_size)
    lists = tap_lists(weights, densities, prune_threshold=int(rng.integers(0, 200)))
    return expand_tiles(lists, height=height, width=width, tile_size=tile_size)


def random_mask(rng, block, height, width):
    """A random padding mask, each block included with probability 1/2."""
    length = mask_length(width, height, kernel_size=block.kernel_size, block_size=block.block_size)
    return (rng.random(length) < 0.5).astype(np.uint8)
