"""Bit-exact model of :class:`dynsparse.hdl.density.DensityUnit`, and its float reference.

The density of a pixel is the population standard deviation of its K×K
neighbourhood, divided by a reference standard deviation and saturated at 1.0,
per channel. It is UQ1.8 in 9 bits: 0..256, where 256 is exactly 1.0.

Window elements outside the frame (padding) are excluded from the count and
from the sums, so the density does not depend on the padding mode. The centre
is always inside the frame, so ``N >= 1``.

Exact integer semantics, per pixel and channel (every division below is a
right shift, so the gateware needs no divider)::

    N  = number of non-pad elements                      1 <= N <= K*K
    S1 = sum of x, S2 = sum of x*x over the non-pad elements
    V  = N*S2 - S1*S1                                    exact, = N*N*variance
    var_q = (V * RN[N]) >> G                             variance, FV fraction bits
    A  = (var_q * inv_ref_var) >> (FV + 23 - 16)         ~ 65536 * variance / ref_std**2
    density = 256 if A >= 65536 else isqrt(A)            isqrt = floor square root

with ``FV = VAR_FRAC_BITS = 16``, ``G = rn_shift(K) = 2 * bit_length(K*K)``
and the ROM ``RN[N] = round_half_up(2**(G + FV) / N**2)`` for ``N >= 2``;
``RN[0] = RN[1] = 0`` (with one element ``V`` is 0 anyway; ``N = 0`` cannot
come from a frame and yields density 0). ``G + FV = 2*bit_length(K*K) + 16``
keeps the relative error of ``RN`` below ``2**-17``; ``FV = 16`` keeps the
truncation of ``var_q`` below ``1 / ref_std**2`` units of ``A``.

``inv_ref_var = clamp(round_half_up(2**23 / ref_std**2), 1, 2**24 - 1)``, see
:func:`inv_ref_var`. The float reference is ``min(1, std / ref_std)`` in
float64 with the population std over the non-pad neighbourhood.
"""

from fractions import Fraction
import math
import numbers
import operator

import numpy as np


__all__ = [
    "VAR_FRAC_BITS", "INV_REF_VAR_BITS", "INV_REF_VAR_FRAC_BITS", "DENSITY_ONE", "MAX_KERNEL_SIZE",
    "rn_shift", "rn_table", "inv_ref_var", "error_bound", "isqrt",
    "neighbourhood_sums", "density_from_sums", "density_of_windows",
    "density_map", "local_std_float", "density_map_float",
]


#: ``FV``: fraction bits of the variance ``var_q``.
VAR_FRAC_BITS = 16
#: Width of the ``inv_ref_var`` configuration input.
INV_REF_VAR_BITS = 24
#: Fraction bits of ``inv_ref_var`` (it holds ``2**23 / ref_std**2``).
INV_REF_VAR_FRAC_BITS = 23
#: Density of 1.0 in UQ1.8.
DENSITY_ONE = 256
#: Largest kernel size supported (``N <= 225`` keeps every product below 64 bits).
MAX_KERNEL_SIZE = 15

#: ``A`` is ``65536 * variance / ref_std**2``: 16 fraction bits of the density squared.
_A_SHIFT = VAR_FRAC_BITS + INV_REF_VAR_FRAC_BITS - 16


def _check_kernel_size(kernel_size):
    if not isinstance(kernel_size, numbers.Integral) or isinstance(kernel_size, bool):
        raise TypeError(f"kernel size must be an odd integer in [1, {MAX_KERNEL_SIZE}], "
                        f"not {kernel_size!r}")
    if not (1 <= kernel_size <= MAX_KERNEL_SIZE) or kernel_size % 2 == 0:
        raise ValueError(f"kernel size must be an odd integer in [1, {MAX_KERNEL_SIZE}], "
                         f"not {kernel_size!r}")
    return int(kernel_size)


def _check_inv_ref_var(value):
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"inv_ref_var must be an integer in [1, {2**INV_REF_VAR_BITS - 1}], "
                        f"not {value!r}") from None
    if not 1 <= value < 2**INV_REF_VAR_BITS:
        raise ValueError(f"inv_ref_var must be an integer in [1, {2**INV_REF_VAR_BITS - 1}], "
                         f"not {value!r}")
    return value


def _check_frame(frame):
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise TypeError(f"frame must be a uint8 array, not {frame.dtype}")
    if frame.ndim != 3 or 0 in frame.shape:
        raise ValueError(f"frame must have the shape [H, W, C] with H, W, C >= 1, not {frame.shape}")
    return frame


def rn_shift(kernel_size):
    """``G``: the right shift after multiplying ``V`` by ``RN[N]``."""
    kernel_size = _check_kernel_size(kernel_size)
    return max(0, 2 * (kernel_size * kernel_size).bit_length() + 16 - VAR_FRAC_BITS)


def rn_table(kernel_size):
    """The ``RN`` ROM as a tuple indexed by ``N`` in ``[0, kernel_size**2]``."""
    shift = rn_shift(kernel_size)
    numerator = 1 << (shift + VAR_FRAC_BITS)
    return (0, 0) + tuple((2 * numerator + n * n) // (2 * n * n)    # round half up
                          for n in range(2, kernel_size * kernel_size + 1))


def inv_ref_var(ref_std):
    """``clamp(round_half_up(2**23 / ref_std**2), 1, 2**24 - 1)``, computed exactly.

    Raises
    ------
    TypeError
        If ``ref_std`` is not a real number.
    ValueError
        If ``ref_std`` is not finite or not positive.
    """
    if not isinstance(ref_std, numbers.Real) or isinstance(ref_std, bool):
        raise TypeError(f"reference std must be a finite number > 0, not {ref_std!r}")
    if not math.isfinite(ref_std) or ref_std <= 0:
        raise ValueError(f"reference std must be a finite number > 0, not {ref_std!r}")
    exact_std = Fraction(ref_std) if isinstance(ref_std, numbers.Rational) else Fraction(float(ref_std))
    exact = Fraction(2**INV_REF_VAR_FRAC_BITS) / exact_std ** 2
    return min(max(math.floor(exact + Fraction(1, 2)), 1), 2**INV_REF_VAR_BITS - 1)


def error_bound(ref_std, *, kernel_size):
    """``(lower, upper)`` bounds, in LSB, of ``256 * density_map_float - density_map``.

    With ``rho`` the largest relative error of ``RN`` (below ``2**-17``),
    ``sigma = inv_ref_var * ref_std**2 / 2**23 - 1`` (0 for powers of two up
    to 2048), ``F = (1 + sigma) * (1 - rho)`` and ``delta = (1 + sigma) / ref_std**2``
    (the most the truncation of ``var_q`` takes from ``A``): an output ``m``
    means ``A < (m + 1)**2``, so the float density is below
    ``sqrt(((m + 1)**2 + delta) / F)``, which gives ``upper`` as the largest of
    those over ``m``; the floor square root never rounds up, so only
    ``(1 + rho) * (1 + sigma) > 1`` can put the integer above the float one,
    by at most ``lower``.
    """
    inv = inv_ref_var(ref_std)
    table = rn_table(kernel_size)
    scale = 1 << (rn_shift(kernel_size) + VAR_FRAC_BITS)
    rho = max((abs(table[n] * n * n / scale - 1) for n in range(2, len(table))), default=0.0)
    sigma = inv * float(ref_std) ** 2 / 2**INV_REF_VAR_FRAC_BITS - 1
    factor = (1 + sigma) * (1 - rho)
    delta = (1 + sigma) / float(ref_std) ** 2
    upper = max(math.sqrt(((m + 1) ** 2 + delta) / factor) - m for m in range(DENSITY_ONE))
    lower = -max(0.0, DENSITY_ONE * (math.sqrt((1 + rho) * (1 + sigma)) - 1))
    return lower, upper


def isqrt(value):
    """Floor square root of a non-negative integer or integer array (exact below 2**62)."""
    value = np.asarray(value, dtype=np.int64)
    if np.any(value < 0):
        raise ValueError("isqrt of a negative number")
    root = np.floor(np.sqrt(value.astype(np.float64))).astype(np.int64)
    # float sqrt may be off by one either way near perfect squares of large numbers
    root = np.where(root * root > value, root - 1, root)
    root = np.where((root + 1) * (root + 1) <= value, root + 1, root)
    return root


def density_from_sums(n, s1, s2, *, kernel_size, inv_ref_var):
    """Densities (int64, 0..256) from ``N``, ``S1``, ``S2`` (``n`` broadcasts against the sums)."""
    table = np.array(rn_table(kernel_size), dtype=np.int64)
    inv = _check_inv_ref_var(inv_ref_var)
    n = np.asarray(n, dtype=np.int64)
    s1 = np.asarray(s1, dtype=np.int64)
    s2 = np.asarray(s2, dtype=np.int64)
    variance_n2 = n * s2 - s1 * s1
    var_q = (variance_n2 * table[n]) >> rn_shift(kernel_size)
    a = (var_q * inv) >> _A_SHIFT
    return np.where(a >= 1 << 16, DENSITY_ONE, isqrt(np.minimum(a, (1 << 16) - 1)))


def density_of_windows(windows, pad, *, inv_ref_var):
    """Densities of windows as the gateware sees them.

    ``windows`` is ``[..., K, K, C]`` (integers 0..255), ``pad`` is ``[..., K, K]``
    (true outside the frame; those elements are ignored whatever they hold).
    Returns uint16 ``[..., C]``.
    """
    windows = np.asarray(windows, dtype=np.int64)
    pad = np.asarray(pad, dtype=bool)
    if windows.ndim < 3 or windows.shape[-3] != windows.shape[-2] or \
            pad.shape != windows.shape[:-1]:
        raise ValueError(f"windows [..., K, K, C] and pad [..., K, K] do not match: "
                         f"{windows.shape}, {pad.shape}")
    kernel_size = _check_kernel_size(windows.shape[-2])
    inside = ~pad
    values = np.where(inside[..., None], windows, 0)
    n = inside.sum(axis=(-2, -1))[..., None]
    s1 = values.sum(axis=(-3, -2))
    s2 = (values * values).sum(axis=(-3, -2))
    return density_from_sums(n, s1, s2, kernel_size=kernel_size,
                             inv_ref_var=inv_ref_var).astype(np.uint16)


def _box_sum(values, kernel_size):
    """Sum over the K×K box around each pixel of a zero-padded ``[H + 2r, W + 2r, ...]`` array."""
    integral = np.zeros((values.shape[0] + 1, values.shape[1] + 1) + values.shape[2:], np.int64)
    integral[1:, 1:] = values.cumsum(axis=0, dtype=np.int64).cumsum(axis=1)
    k = kernel_size
    return integral[k:, k:] - integral[:-k, k:] - integral[k:, :-k] + integral[:-k, :-k]


def neighbourhood_sums(frame, *, kernel_size):
    """``(N [H, W, 1], S1 [H, W, C], S2 [H, W, C])`` over each pixel's in-frame neighbourhood."""
    frame = _check_frame(frame)
    kernel_size = _check_kernel_size(kernel_size)
    r = kernel_size // 2
    padded = np.pad(frame.astype(np.int64), ((r, r), (r, r), (0, 0)))
    inside = np.pad(np.ones(frame.shape[:2] + (1,), dtype=np.int64), ((r, r), (r, r), (0, 0)))
    return (_box_sum(inside, kernel_size), _box_sum(padded, kernel_size),
            _box_sum(padded * padded, kernel_size))


def density_map(frame, *, kernel_size, inv_ref_var):
    """Bit-exact density map: uint8 ``[H, W, C]`` frame to uint16 ``[H, W, C]`` in 0..256."""
    n, s1, s2 = neighbourhood_sums(frame, kernel_size=kernel_size)
    return density_from_sums(n, s1, s2, kernel_size=kernel_size,
                             inv_ref_var=inv_ref_var).astype(np.uint16)


def local_std_float(frame, *, kernel_size, rows_per_chunk=64):
    """Population std (float64 ``[H, W, C]``) of each pixel's in-frame K×K neighbourhood.

    Computed independently of the integer sums: two-pass ``nanstd`` over
    NaN-padded windows, a band of rows at a time to bound memory.
    """
    frame = _check_frame(frame)
    kernel_size = _check_kernel_size(kernel_size)
    r = kernel_size // 2
    padded = np.pad(frame.astype(np.float64), ((r, r), (r, r), (0, 0)), constant_values=np.nan)
    view = np.lib.stride_tricks.sliding_window_view
    result = np.empty(frame.shape, dtype=np.float64)
    for top in range(0, frame.shape[0], rows_per_chunk):
        band = padded[top:top + rows_per_chunk + 2 * r]
        windows = view(band, (kernel_size, kernel_size), axis=(0, 1))
        result[top:top + rows_per_chunk] = np.nanstd(windows, axis=(-2, -1))
    return result


def density_map_float(frame, *, kernel_size, ref_std):
    """Float reference: ``min(1, std / ref_std)``, float64 ``[H, W, C]`` in [0, 1]."""
    inv_ref_var(ref_std)    # the same argument checks as the integer path
    std = local_std_float(frame, kernel_size=kernel_size)
    return np.minimum(1.0, std / float(ref_std))
