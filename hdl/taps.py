"""Tap lists: the payloads between :class:`KernelScaler` and :class:`SparseConv`.

A *tap* is one multiplication of a convolution: input channel ``ci``, window
row ``dy`` and column ``dx`` (``0 … K-1``, the window's own indices) and a
signed 8-bit ``weight``. A *tap list* holds the taps an output channel
performs at one output position, compacted to the front: entries ``0 …
count - 1`` are valid, the rest are ignored. Every output position carries
one list per output channel, in one transfer, with the counts of the taps
the scaler dropped (``pruned`` for low density, ``zero`` for a zero scaled
weight) so the engine's counters see every tap. The exact semantics are in
:mod:`dynsparse.golden.sparseconv`.
"""

from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from .frame import check_int, coord_width


__all__ = ["list_capacity", "tap_layout", "tap_list_layout", "tap_lists_layout", "tap_density_layout", "index_width"]


def index_width(count):
    """Bits of an index in ``[0, count - 1]`` (at least 1)."""
    return max(1, (count - 1).bit_length())


def tap_layout(*, kernel_size, in_channels):
    """One tap: ``ci``, ``dy``, ``dx``, ``weight`` (signed 8 bits)."""
    return data.StructLayout({
        "ci":     unsigned(index_width(in_channels)),
        "dy":     unsigned(index_width(kernel_size)),
        "dx":     unsigned(index_width(kernel_size)),
        "weight": signed(8),
    })


def list_capacity(*, kernel_size, in_channels, capacity=None):
    """``N``, the entries of a tap list: ``C_in · K²`` (every tap of the window) unless a smaller
    ``capacity`` (1 … ``C_in · K²``) is given, as for the sampled heads of seed 004."""
    full = in_channels * kernel_size * kernel_size
    if capacity is None:
        return full
    return check_int("tap-list capacity", capacity, minimum=1, maximum=full)


def tap_list_layout(*, kernel_size, in_channels, capacity=None):
    """One output channel's list: ``count``, ``pruned``, ``zero`` and ``taps[N]``
    (``N``: :func:`list_capacity`); ``pruned`` and ``zero`` count up to ``C_in · K²``."""
    full = in_channels * kernel_size * kernel_size
    n = list_capacity(kernel_size=kernel_size, in_channels=in_channels, capacity=capacity)
    return data.StructLayout({
        "count":  unsigned(n.bit_length()),
        "pruned": unsigned(full.bit_length()),
        "zero":   unsigned(full.bit_length()),
        "taps":   data.ArrayLayout(tap_layout(kernel_size=kernel_size, in_channels=in_channels), n),
    })


def tap_lists_layout(*, kernel_size, in_channels, out_channels, max_width, max_height, capacity=None):
    """Payload of a tap-list stream: ``lists[co]`` of one output position, ``x``, ``y``, ``first``, ``last``."""
    check_int("kernel size", kernel_size, minimum=1, maximum=15, odd=True)
    check_int("input channel count", in_channels, minimum=1)
    check_int("output channel count", out_channels, minimum=1)
    return data.StructLayout({
        "lists": data.ArrayLayout(tap_list_layout(kernel_size=kernel_size, in_channels=in_channels,
                                                  capacity=capacity),
                                  out_channels),
        "x":     unsigned(coord_width(max_width)),
        "y":     unsigned(coord_width(max_height)),
        "first": unsigned(1),
        "last":  unsigned(1),
    })


def tap_density_layout(*, kernel_size, in_channels, max_width, max_height):
    """Payload of the scaler's input: the UQ1.8 density of every tap, ``data[ci][ky][kx]``, at one position."""
    k = kernel_size
    return data.StructLayout({
        "data":  data.ArrayLayout(data.ArrayLayout(data.ArrayLayout(unsigned(9), k), k), in_channels),
        "x":     unsigned(coord_width(max_width)),
        "y":     unsigned(coord_width(max_height)),
        "first": unsigned(1),
        "last":  unsigned(1),
    })
