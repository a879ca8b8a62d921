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


__all__ = ["tap_layout", "tap_list_layout", "tap_lists_layout", "tap_density_layout", "index_width"]


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


def tap_list_layout(*, kernel_size, in_channels):
    """One output channel's list: ``count``, ``pruned``, ``zero`` and ``taps[N]``, ``N = C_in·K²``."""
    n = in_channels * kernel_size * kernel_size
    return data.StructLayout({
        "count":  unsigned(n.bit_length()),
        "pruned": unsigned(n.bit_length()),
        "zero":   unsigned(n.bit_length()),
        "taps":   data.ArrayLayout(tap_layout(kernel_size=kernel_size, in_channels=in_channels), n),
    })


def tap_lists_layout(*, kernel_size, in_channels, out_channels, max_width, max_height):
    """Payload of a tap-list stream: ``lists[co]`` of one output position, ``x``, ``y``, ``first``, ``last``."""
    check_int("kernel size", kernel_size, minimum=1, maximum=15, odd=True)
    check_int("input channel count", in_channels, minimum=1)
    check_int("output channel count", out_channels, minimum=1)
    return data.StructLayout({
        "lists": data.ArrayLayout(tap_list_layout(kernel_size=kernel_size, in_channels=in_channels),
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
