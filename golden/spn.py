"""Scale prediction network and adaptive anisotropic pooling in an iterative loop (seed 003, host side).

A peptide is read from the labelled sets bundled in the ``modlamp`` wheel and
encoded as a 2-D map of ``H = 8`` *property rows* (Eisenberg hydrophobicity,
physiological charge, the five z-scales of Sandberg et al., bulkiness) by
``L`` *sequence positions* (default 48): one int8 code per residue and row
(:func:`encoding_table`),
``0`` for padding. The map is one input channel; the main convolution turns
it into ``F`` feature channels of the same ``H × L`` size, and the loop runs
``T`` times::

    z_0 = x                                      [1, H, L]   int8, scale 1/127
    for t in 1 … T:
        a_t = ReLU(conv_t(z_{t-1}))               [F, H, L]   conv_1 = "conv0", conv_{t>1} = "conv1" (shared)
        (s_h, s_l) = SPN(a_t)                     two scales in [0.5, 2.0] (UQ2.6 codes 32 … 128)
        k_h = clamp(round_half_up(base_h · s_h), k_h_min, k_h_max)      (same for k_l)
        z_t = AnisoPool(a_t, k_h, k_l)            [F, H, L]   stride 1, "same" size
    logit = head · mean_{H, L}(z_T) + head_b     class 1 (AMP) when logit > 0

``SPN`` is three K×K convolutions with ReLU (``F → S → S → 2``) and a global
average of the two last channels: ``s = clamp(0.5 + mean(r3), 0.5, 2.0)``.
The *fixed-kernel baseline* is the same model with ``s_h = s_l = 1``.

Pooling window (height ``k`` along rows, likewise length along positions):
output row ``y`` reads input rows ``y − (k − 1)//2 … y + k//2``; rows outside
the map are padding. *Average* divides the window sum by the full area
``k_h · k_l`` (padding counts as 0); *max* takes the largest in-map element.

Exact integer semantics (:func:`forward_int`)
----------------------------------------------

* Weights int8 in ``[-127, 127]``, per tensor, shared by the iterations;
  biases (int, accumulator units), multipliers ``M`` and shifts ``S`` are
  per iteration ``t`` (``conv_b[t]``, ``conv_m[t]``, ``spn1_b[t]``, …),
  because a layer's input scale changes from one iteration to the next.
* Convolutions: ``acc = Σ w · v + b[t]`` exact in int64 (the width each layer
  needs is :func:`accumulator_widths`), zero padding. Requantisation and ReLU
  (:func:`dynsparse.golden.sparseconv.requantize`)::

      q = max(0, clamp((acc · M[t] + 2^(S[t]−1)) >> S[t], −128, 127))   (M ≤ 65535, S ≤ 47)

* Scales, UQ2.6 (8 bits, 64 = 1.0): with ``Σ3`` the sum of ``r3`` over the
  ``H · L`` positions of each SPN output channel::

      u = clamp((Σ3 · scale_m[t] + 2^(scale_s[t]−1)) >> scale_s[t], −128, 127)     (requantize)
      scale = clamp(32 + u, 32, 128)

* Kernel size: ``k = clamp((base · scale + 32) >> 6, k_min, k_max)``.
* Average pooling without a divider, for a window sum ``n`` of values in
  ``[0, 127]`` and area ``d = k_h · k_l``::

      avg = (n · R[d] + 2^(S[d]−1)) >> S[d]  ==  floor((2n + d) / (2d))  (round half up)

  :func:`reciprocal_table` picks, for every area, the smallest ``S[d]`` with
  ``R[d] = ceil(2^S[d] / d) ≤ 65535`` for which the equality holds for *every*
  ``n`` in ``[0, 127 · d]``, checked exhaustively.
* Max pooling: the largest in-map element of the window (exact).
* Head: ``g[c] = Σ_{H,L} z_T[c]``; ``logit = Σ_c head[c] · g[c] + head_b``
  (int64, no requantisation); class 1 when ``logit > 0``.

The float model (:func:`forward`) uses the float weights and the float
scales; its *hard* path rounds the kernel size exactly as above
(``floor(base · s + 0.5)``), the *soft* path used in training interpolates
linearly between the two neighbouring integer sizes so that the loss is
differentiable in the scale (docs/spn.md).
"""

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import sys
import time

import numpy as np

from .masklearn import _check_float
from .sparseconv import MULTIPLIER_MAX, SHIFT_MAX, WEIGHT_MAX, _check_int, requantize
from .weighttrain import _Adam, _single_thread


__all__ = [
    "ALPHABET", "PROPERTY_NAMES", "PROPERTIES", "DATASETS", "HEIGHT",
    "POOL_AREA_MAX", "BIAS_CODE_MAX", "SCALE_FRACTION_BITS", "SCALE_ONE", "SCALE_MIN_CODE", "SCALE_MAX_CODE", "ACTIVATION_MAX",
    "EXPORT_VERSION", "TRAINING_PATHS", "POOL_MODES",
    "SPNConfig", "data_file", "parse_dataset", "load_dataset", "encoding_table", "encode", "split",
    "kernel_size_int", "kernel_size_float", "soft_kernel_size", "reciprocal_table", "average_int",
    "aniso_pool_int", "aniso_pool_float", "init_params", "forward", "loss_and_gradients", "train",
    "accuracy", "choose_multiplier", "quantise", "accumulator_widths", "conv_int", "spn_scale_codes",
    "forward_int", "check_export",
    "save_export", "experiment", "main",
]

#: The 20 amino acids, in the order of the encoding table's rows.
ALPHABET = "ACDEFGHIKLMNPQRSTVWY"
#: The property rows of the map (modlamp scale names; z5 has five columns).
PROPERTY_NAMES = ("eisenberg", "charge_phys", "z5_1", "z5_2", "z5_3", "z5_4", "z5_5", "bulkiness")
#: Property values per amino acid (rows in ALPHABET order), copied from ``modlamp.core.load_scale``.
PROPERTIES = np.array([
    # eis    charge   z5_1   z5_2   z5_3   z5_4   z5_5   bulk
    [0.62, 0.0, 0.24, -2.32, 0.60, -0.14, 1.30, 0.443],     # A
    [0.29, -0.1, 0.84, -1.67, 3.71, 0.18, -2.65, 0.551],    # C
    [-0.90, -1.0, 3.98, 0.93, 1.93, -2.46, 0.75, 0.453],    # D
    [-0.74, -1.0, 3.11, 0.26, -0.11, -3.04, -0.25, 0.557],  # E
    [1.20, 0.0, -4.22, 1.94, 1.06, 0.54, -0.62, 0.898],     # F
    [0.48, 0.0, 2.05, -4.06, 0.36, -0.82, -0.38, 0.0],      # G
    [-0.40, 0.1, 2.47, 1.95, 0.26, 3.90, 0.09, 0.563],      # H
    [1.40, 0.0, -3.89, -1.73, -1.71, -0.84, 0.26, 0.985],   # I
    [-1.50, 1.0, 2.29, 0.89, -2.49, 1.49, 0.31, 0.674],     # K
    [1.10, 0.0, -4.28, -1.30, -1.49, -0.72, 0.84, 0.985],   # L
    [0.64, 0.0, -2.85, -0.22, 0.47, 1.94, -0.98, 0.703],    # M
    [-0.78, 0.0, 3.05, 1.62, 1.04, -1.15, 1.61, 0.516],     # N
    [0.12, 0.0, -1.66, 0.27, 1.84, 0.70, 2.00, 0.768],      # P
    [-0.85, 0.0, 1.75, 0.50, -1.44, -1.34, 0.66, 0.605],    # Q
    [-2.50, 1.0, 3.52, 2.50, -3.50, 1.99, -0.17, 0.596],    # R
    [-0.18, 0.0, 2.39, -1.07, 1.15, -1.39, 0.67, 0.332],    # S
    [-0.05, 0.0, 0.75, -2.18, -1.12, -1.46, -0.40, 0.677],  # T
    [1.10, 0.0, -2.59, -2.64, -1.54, -0.85, -0.02, 0.995],  # V
    [0.81, 0.0, -4.36, 3.94, 0.59, 3.44, -1.59, 1.0],       # W
    [0.26, 0.0, -2.54, 2.44, 0.43, 0.04, -1.47, 0.801],     # Y
])
#: Rows of the map.
HEIGHT = len(PROPERTY_NAMES)
#: Data sets: name → (file in modlamp/data, sequences, class names for labels 0 and 1).
DATASETS = {
    "AMPvsTM": ("AMPvsTMset.csv", 412, ("TM", "AMP")),
    "ACPvsRandom": ("ACP_CancPPD_vs_Random.csv", 826, ("Random", "ACP")),
}
#: Scales are UQ2.6: 8 bits, 64 = 1.0.
SCALE_FRACTION_BITS = 6
SCALE_ONE = 1 << SCALE_FRACTION_BITS
SCALE_MIN_CODE = SCALE_ONE // 2          # 0.5
SCALE_MAX_CODE = 2 * SCALE_ONE           # 2.0
#: Largest pooling window area: 16-bit exact reciprocals exist for every area up to 202 (not 203).
POOL_AREA_MAX = 202
#: Largest activation code after a ReLU (int8).
ACTIVATION_MAX = 127
#: Largest magnitude of an exported bias code: 32-bit signed biases in the gateware, with room.
BIAS_CODE_MAX = 1 << 30
EXPORT_VERSION = 1
TRAINING_PATHS = ("soft", "straight-through")
POOL_MODES = ("average", "max")

_EXPORT_SCALARS = ("version", "height", "length", "iterations", "channels", "spn_channels", "conv_kernel",
                   "base_h", "base_l", "k_h_min", "k_h_max", "k_l_min", "k_l_max", "pool_max", "adaptive")
_LAYER_NAMES = ("conv0", "conv1", "spn1", "spn2", "spn3")


# --- parameters ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SPNConfig:
    """Geometry of the model; every field is checked on construction.

    Members
    -------
    length : int
        Sequence positions ``L`` of the map, in [8, 64] (longer peptides are truncated).
    iterations : int
        Loop iterations ``T``, in [1, 4].
    channels : int
        Feature channels ``F`` of the main convolution, in [1, 8].
    spn_channels : int
        Channels ``S`` of the SPN's first two layers, in [1, 8].
    conv_kernel : int
        Kernel size of every convolution (square), an odd integer in [1, 7].
    base_h, base_l : int
        Base pooling height and length, in [1, 16].
    k_h_range, k_l_range : (int, int)
        Clamp range of the pooling height and length, ``1 <= min <= max <= 16``.
    pool : str
        ``"average"`` or ``"max"``.
    """
    length: int = 48
    iterations: int = 2
    channels: int = 8
    spn_channels: int = 4
    conv_kernel: int = 3
    base_h: int = 3
    base_l: int = 5
    k_h_range: tuple = (1, 5)
    k_l_range: tuple = (1, 9)
    pool: str = "average"

    def __post_init__(self):
        _check_int("sequence length", self.length, 8, 64)
        _check_int("iteration count", self.iterations, 1, 4)
        _check_int("channel count", self.channels, 1, 8)
        _check_int("SPN channel count", self.spn_channels, 1, 8)
        if (not isinstance(self.conv_kernel, (int, np.integer)) or isinstance(self.conv_kernel, bool)):
            raise TypeError(f"kernel size must be an odd integer in [1, 7], not {self.conv_kernel!r}")
        if not (1 <= self.conv_kernel <= 7 and self.conv_kernel % 2 == 1):
            raise ValueError(f"kernel size must be an odd integer in [1, 7], not {self.conv_kernel!r}")
        _check_int("base pooling height", self.base_h, 1, 16)
        _check_int("base pooling length", self.base_l, 1, 16)
        for name, pair in (("pooling height range", self.k_h_range), ("pooling length range", self.k_l_range)):
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise TypeError(f"{name} must be a pair of integers (min, max), not {pair!r}")
            for value in pair:
                if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                    raise TypeError(f"{name} must be a pair of integers (min, max), not {pair!r}")
            if not 1 <= pair[0] <= pair[1] <= 16:
                raise ValueError(f"{name} must satisfy 1 <= min <= max <= 16, not {pair!r}")
        if self.max_area > POOL_AREA_MAX:
            raise ValueError(f"largest pooling area k_h_max · k_l_max must be at most {POOL_AREA_MAX}, "
                             f"not {self.max_area}")
        if self.pool not in POOL_MODES:
            raise ValueError(f"pooling mode must be one of {', '.join(POOL_MODES)}, not {self.pool!r}")

    @property
    def max_area(self):
        """Largest pooling window area ``k_h_max · k_l_max``."""
        return self.k_h_range[1] * self.k_l_range[1]


# --- data ------------------------------------------------------------------------------------------

def data_file(name):
    """Path of ``name`` in the installed ``modlamp`` package's data folder (modlamp is not imported)."""
    if name not in DATASETS:
        raise ValueError(f"data set must be one of {', '.join(DATASETS)}, not {name!r}")
    spec = importlib.util.find_spec("modlamp")
    if spec is None or spec.origin is None:
        raise ValueError("the modlamp package is not installed (pip install modlamp)")
    return os.path.join(os.path.dirname(spec.origin), "data", DATASETS[name][0])


def parse_dataset(text, *, source="<text>"):
    """``(sequences, labels int64, class_names)`` from modlamp's CSV text.

    The first line is ``count,1,name0,name1``; each following non-empty line
    is ``SEQUENCE,label`` with the sequence over :data:`ALPHABET` and the
    label 0 or 1. Anything else raises :class:`ValueError` naming ``source``
    and the line.
    """
    if not isinstance(text, str):
        raise TypeError(f"data set text must be a string, not {type(text).__name__}")
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"{source}: empty data set")
    header = lines[0].split(",")
    if len(header) != 4 or not header[0].isdigit() or header[1] != "1":
        raise ValueError(f"{source}: header must be 'count,1,name0,name1', not {lines[0]!r}")
    sequences, labels = [], []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split(",")
        if len(fields) != 2 or fields[1] not in ("0", "1"):
            raise ValueError(f"{source}, line {number}: expected 'SEQUENCE,0' or 'SEQUENCE,1', not {line!r}")
        sequence = fields[0].upper()
        if not sequence or any(residue not in ALPHABET for residue in sequence):
            raise ValueError(f"{source}, line {number}: sequence must use the letters {ALPHABET}, "
                             f"not {fields[0]!r}")
        sequences.append(sequence)
        labels.append(int(fields[1]))
    if len(sequences) != int(header[0]):
        raise ValueError(f"{source}: header announces {header[0]} sequences, file holds {len(sequences)}")
    return sequences, np.array(labels, dtype=np.int64), (header[2], header[3])


def load_dataset(name="AMPvsTM", *, path=None):
    """``(sequences, labels, class_names)`` of a modlamp set (``path`` overrides the bundled file)."""
    path = data_file(name) if path is None else path
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except FileNotFoundError:
        raise ValueError(f"data set file {path!r} does not exist") from None
    except UnicodeDecodeError:
        raise ValueError(f"data set file {path!r} is not ASCII text") from None
    return parse_dataset(text, source=path)


def encoding_table():
    """int8 ``[20, H]``: each property scaled to [−127, 127] about the middle of its range.

    ``code = floor(127 · (v − centre) / half_range + 0.5)`` with ``centre``
    and ``half_range`` of the property over the 20 amino acids. Padding is 0.
    """
    low, high = PROPERTIES.min(axis=0), PROPERTIES.max(axis=0)
    centre, half = (high + low) / 2, (high - low) / 2
    return np.clip(np.floor(127 * (PROPERTIES - centre) / half + 0.5), -127, 127).astype(np.int8)


def encode(sequences, *, length):
    """int8 ``[N, H, length]``: residue ``i`` in column ``i``; truncated after ``length``, zero-padded."""
    _check_int("sequence length", length, 1, 1024)
    if isinstance(sequences, str):
        raise TypeError("sequences must be a list of strings, not a single string")
    table = encoding_table()
    out = np.zeros((len(sequences), HEIGHT, length), np.int8)
    for n, sequence in enumerate(sequences):
        if not isinstance(sequence, str):
            raise TypeError(f"sequences must be strings, not {sequence!r}")
        index = [ALPHABET.find(residue) for residue in sequence.upper()[:length]]
        if min(index, default=0) < 0:
            raise ValueError(f"sequence must use the letters {ALPHABET}, not {sequence!r}")
        out[n, :, :len(index)] = table[index].T
    return out


def split(labels, *, seed, held_out=0.25):
    """``(train_indices, test_indices)``: a seeded, class-stratified hold-out of ``held_out`` of each class."""
    _check_int("seed", seed, 0)
    held_out = _check_float("held-out fraction", held_out, 0.05, 0.95)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = int(round(held_out * len(members)))
        test.append(members[:cut])
        train.append(members[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


# --- kernel sizes and pooling ---------------------------------------------------------------------

def kernel_size_int(scale_code, *, base, k_min, k_max):
    """``clamp((base · scale_code + 32) >> 6, k_min, k_max)`` for UQ2.6 codes in [0, 255] (int64)."""
    _check_int("base kernel size", base, 1, 16)
    _check_int("smallest kernel size", k_min, 1, 16)
    _check_int("largest kernel size", k_max, k_min, 16)
    code = np.asarray(scale_code)
    if not np.issubdtype(code.dtype, np.integer):
        raise TypeError(f"scale codes must be integers, not {code.dtype}")
    if code.size and (code.min() < 0 or code.max() > 255):
        raise ValueError(f"scale codes must lie in [0, 255] (UQ2.6), not [{code.min()}, {code.max()}]")
    size = (base * code.astype(np.int64) + (SCALE_ONE >> 1)) >> SCALE_FRACTION_BITS
    return np.clip(size, k_min, k_max)


def kernel_size_float(scale, *, base, k_min, k_max):
    """``clamp(floor(base · scale + 0.5), k_min, k_max)`` (int64), the float model's hard kernel size."""
    return np.clip(np.floor(base * np.asarray(scale, dtype=np.float64) + 0.5), k_min, k_max).astype(np.int64)


def soft_kernel_size(scale, *, base, k_min, k_max):
    """``(k0, k1, fraction, inside)``: ``clip(base · s) = k0 + fraction``, ``k1 = min(k0 + 1, k_max)``."""
    continuous = np.asarray(base * np.asarray(scale, dtype=np.float64))
    inside = (continuous > k_min) & (continuous < k_max)
    continuous = np.clip(continuous, k_min, k_max)
    k0 = np.minimum(np.floor(continuous), max(k_min, k_max - 1)).astype(np.int64)
    fraction = continuous - k0
    k1 = np.minimum(k0 + 1, k_max)
    return k0, k1, fraction, inside


def reciprocal_table(max_area, *, value_max=ACTIVATION_MAX):
    """``(multipliers, shifts)``, int64 ``[max_area + 1]`` (index 0 unused): exact round-half-up averages.

    For each area ``d`` the smallest shift ``S`` such that ``R = ceil(2^S / d)``
    fits 16 bits and ``(n · R + 2^(S−1)) >> S == floor((2n + d) / (2d))`` for
    every window sum ``n`` in ``[0, value_max · d]`` (checked exhaustively).
    """
    _check_int("largest pooling area", max_area, 1, POOL_AREA_MAX)
    _check_int("largest pooled value", value_max, 1, 255)
    multipliers, shifts = np.zeros(max_area + 1, np.int64), np.zeros(max_area + 1, np.int64)
    for d in range(1, max_area + 1):
        sums = np.arange(value_max * d + 1, dtype=np.int64)
        exact = (2 * sums + d) // (2 * d)
        for shift in range(SHIFT_MAX + 1):
            multiplier = -(-(1 << shift) // d)
            if multiplier > MULTIPLIER_MAX:
                raise ValueError(f"no 16-bit reciprocal reproduces division by {d}")   # first for d = 203
            rounding = (1 << (shift - 1)) if shift else 0
            if np.array_equal((sums * multiplier + rounding) >> shift, exact):
                multipliers[d], shifts[d] = multiplier, shift
                break
    return multipliers, shifts


def _box_sum(x, k_h, k_l, *, transpose=False):
    """Per-sample window sums of ``x [B, C, H, L]`` (zero outside); ``transpose`` gives the adjoint."""
    batch, channels, height, length = x.shape
    totals = np.zeros((batch, channels, height + 1, length + 1), x.dtype)
    totals[:, :, 1:, 1:] = x.cumsum(axis=2).cumsum(axis=3)
    k_h, k_l = np.asarray(k_h, np.int64), np.asarray(k_l, np.int64)
    before_h, after_h = (k_h - 1) // 2, k_h // 2
    before_l, after_l = (k_l - 1) // 2, k_l // 2
    if transpose:
        before_h, after_h, before_l, after_l = after_h, before_h, after_l, before_l
    rows, columns = np.arange(height), np.arange(length)
    top = np.clip(rows[None, :] - before_h[:, None], 0, height)[:, None, :, None]
    bottom = np.clip(rows[None, :] + after_h[:, None] + 1, 0, height)[:, None, :, None]
    left = np.clip(columns[None, :] - before_l[:, None], 0, length)[:, None, None, :]
    right = np.clip(columns[None, :] + after_l[:, None] + 1, 0, length)[:, None, None, :]
    b = np.arange(batch)[:, None, None, None]
    c = np.arange(channels)[None, :, None, None]
    return (totals[b, c, bottom, right] - totals[b, c, top, right]
            - totals[b, c, bottom, left] + totals[b, c, top, left])


def _box_max(x, k_h, k_l):
    """Per-sample window maxima over the in-map elements of each window."""
    lowest = np.iinfo(x.dtype).min if np.issubdtype(x.dtype, np.integer) else -np.inf
    out = np.empty_like(x)
    _, _, height, length = x.shape
    for h, l in sorted(set(zip(np.asarray(k_h).tolist(), np.asarray(k_l).tolist()))):
        members = np.flatnonzero((np.asarray(k_h) == h) & (np.asarray(k_l) == l))
        before_h, before_l = (h - 1) // 2, (l - 1) // 2
        padded = np.pad(x[members], ((0, 0), (0, 0), (before_h, h - 1 - before_h), (before_l, l - 1 - before_l)),
                        constant_values=lowest)
        best = np.full(padded[:, :, :height, :length].shape, lowest, x.dtype)
        for dy in range(h):
            for dx in range(l):
                best = np.maximum(best, padded[:, :, dy:dy + height, dx:dx + length])
        out[members] = best
    return out


def _check_sizes(x, k_h, k_l):
    k_h, k_l = np.asarray(k_h), np.asarray(k_l)
    if x.ndim != 4:
        raise ValueError(f"activations must have shape [B, C, H, L], not {x.shape}")
    for name, k in (("pooling heights", k_h), ("pooling lengths", k_l)):
        if k.shape != (x.shape[0],) or not np.issubdtype(k.dtype, np.integer):
            raise ValueError(f"{name} must be {x.shape[0]} integers, one per sample, not {k.shape} {k.dtype}")
        if k.size and (k.min() < 1 or k.max() > 16):
            raise ValueError(f"{name} must lie in [1, 16], not [{k.min()}, {k.max()}]")
    return k_h.astype(np.int64), k_l.astype(np.int64)


def average_int(sums, areas, table):
    """``(sums · R[area] + 2^(S−1)) >> S[area]`` through :func:`requantize`, one group per area."""
    multipliers, shifts = table
    sums, areas = np.asarray(sums, np.int64), np.asarray(areas, np.int64)
    out = np.empty(sums.shape, np.int64)
    for area in np.unique(areas):
        if not 1 <= area < len(multipliers) or multipliers[area] == 0:
            raise ValueError(f"pooling area must be in the reciprocal table [1, {len(multipliers) - 1}], not {area}")
        members = areas == area
        out[members] = requantize(sums[members], multiplier=int(multipliers[area]), shift=int(shifts[area]))
    return out


def aniso_pool_int(a, k_h, k_l, *, mode, table):
    """AnisoPool on int activations ``[B, C, H, L]`` in [0, 127] with per-sample sizes (int64 result)."""
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"activations must be integers, not {a.dtype}")
    if a.size and (a.min() < 0 or a.max() > ACTIVATION_MAX):
        raise ValueError(f"activations must lie in [0, {ACTIVATION_MAX}], not [{a.min()}, {a.max()}]")
    k_h, k_l = _check_sizes(a, k_h, k_l)
    a = a.astype(np.int64)
    if mode == "max":
        return _box_max(a, k_h, k_l)
    if mode != "average":
        raise ValueError(f"pooling mode must be one of {', '.join(POOL_MODES)}, not {mode!r}")
    sums = _box_sum(a, k_h, k_l)
    areas = np.broadcast_to((k_h * k_l)[:, None, None, None], sums.shape)
    return average_int(sums, areas, table)


def aniso_pool_float(a, k_h, k_l, *, mode):
    """Float AnisoPool: exact mean over the full window area (padding 0), or the in-map maximum."""
    a = np.asarray(a, dtype=np.float64)
    k_h, k_l = _check_sizes(a, k_h, k_l)
    if mode == "max":
        return _box_max(a, k_h, k_l)
    if mode != "average":
        raise ValueError(f"pooling mode must be one of {', '.join(POOL_MODES)}, not {mode!r}")
    return _box_sum(a, k_h, k_l) / (k_h * k_l)[:, None, None, None]


# --- float model -----------------------------------------------------------------------------------

def init_params(config, *, seed=0):
    """He-initialised float parameters; the SPN's last bias is 0.5 so every scale starts at 1.0."""
    rng = np.random.default_rng(seed)
    k, f, s = config.conv_kernel, config.channels, config.spn_channels

    def he(shape):
        fan_in = int(np.prod(shape[1:]))
        return rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)

    return {
        "conv0": he((f, 1, k, k)), "conv0_b": np.zeros(f),
        "conv1": he((f, f, k, k)), "conv1_b": np.zeros(f),
        "spn1": he((s, f, k, k)) * 0.5, "spn1_b": np.zeros(s),
        "spn2": he((s, s, k, k)) * 0.5, "spn2_b": np.zeros(s),
        "spn3": he((2, s, k, k)) * 0.1, "spn3_b": np.full(2, 0.5),
        "head": rng.normal(0.0, 0.5, f), "head_b": np.zeros(1),
    }


def _im2col(x, k):
    """``[B, C, H, L]`` → ``[B, H, L, C·k·k]``, zero padding ``k // 2``, columns in (c, ky, kx) order."""
    r = k // 2
    padded = np.pad(x, ((0, 0), (0, 0), (r, r), (r, r)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(2, 3))
    b, c, h, w = x.shape
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(b, h, w, c * k * k)


def _col2im(cols, shape, k):
    b, c, h, w = shape
    r = k // 2
    cols = cols.reshape(b, h, w, c, k, k)
    padded = np.zeros((b, c, h + 2 * r, w + 2 * r))
    for ky in range(k):
        for kx in range(k):
            padded[:, :, ky:ky + h, kx:kx + w] += cols[..., ky, kx].transpose(0, 3, 1, 2)
    return padded[:, :, r:r + h, r:r + w]


def _conv(x, weights, bias):
    cols = _im2col(x, weights.shape[-1])
    out = cols @ weights.reshape(weights.shape[0], -1).T + bias
    return out.transpose(0, 3, 1, 2), cols


def _conv_backward(d_out, cols, weights, x_shape):
    c_out = weights.shape[0]
    d = d_out.transpose(0, 2, 3, 1).reshape(-1, c_out)
    d_w = (d.T @ cols.reshape(len(d), -1)).reshape(weights.shape)
    d_x = _col2im(d @ weights.reshape(c_out, -1), x_shape, weights.shape[-1])
    return d_w, d.sum(axis=0), d_x


def _spn_forward(params, a):
    r0 = a
    cache = []
    for name in ("spn1", "spn2", "spn3"):
        pre, cols = _conv(r0, params[name], params[name + "_b"])
        cache.append((r0.shape, cols, pre))
        r0 = np.maximum(pre, 0)
    u = r0.mean(axis=(2, 3))                                               # [B, 2]
    raw = 0.5 + u
    scale = np.clip(raw, SCALE_MIN_CODE / SCALE_ONE, SCALE_MAX_CODE / SCALE_ONE)
    return scale, (cache, raw)


def _spn_backward(params, spn_cache, d_scale, grads):
    cache, raw = spn_cache
    inside = (raw > SCALE_MIN_CODE / SCALE_ONE) & (raw < SCALE_MAX_CODE / SCALE_ONE)
    x_shape, cols, pre = cache[-1]
    area = pre.shape[2] * pre.shape[3]
    d_r = np.broadcast_to((d_scale * inside / area)[:, :, None, None], pre.shape)
    for name, (x_shape, cols, pre) in zip(("spn3", "spn2", "spn1"), reversed(cache)):
        d_pre = d_r * (pre > 0)
        d_w, d_b, d_r = _conv_backward(d_pre, cols, params[name], x_shape)
        grads[name] = grads.get(name, 0) + d_w
        grads[name + "_b"] = grads.get(name + "_b", 0) + d_b
    return d_r                                                             # gradient into the SPN's input


def forward(params, x, config, *, adaptive=True, path="hard"):
    """Float logits ``[B]`` and a cache; ``x`` is int8 codes or float ``[B, H, L]`` (divided by 127).

    ``path``: ``"hard"`` (rounded kernel sizes, as the integer model),
    ``"soft"`` (linear interpolation between neighbouring sizes) or
    ``"straight-through"`` (hard forward, soft gradient).
    """
    if path not in ("hard",) + TRAINING_PATHS:
        raise ValueError(f"kernel path must be one of hard, {', '.join(TRAINING_PATHS)}, not {path!r}")
    z = np.asarray(x, dtype=np.float64)[:, None] / 127.0
    steps, sizes = [], []
    batch = z.shape[0]
    for t in range(config.iterations):
        name = "conv0" if t == 0 else "conv1"
        pre, cols = _conv(z, params[name], params[name + "_b"])
        a = np.maximum(pre, 0)
        if adaptive:
            scale, spn_cache = _spn_forward(params, a)
        else:
            scale, spn_cache = np.ones((batch, 2)), None
        hard = [kernel_size_float(scale[:, i], base=base, k_min=r[0], k_max=r[1])
                for i, (base, r) in enumerate(((config.base_h, config.k_h_range), (config.base_l, config.k_l_range)))]
        step = {"name": name, "x_shape": z.shape, "cols": cols, "pre": pre, "a": a, "spn": spn_cache,
                "scale": scale, "hard": hard}
        sizes.append(np.stack(hard, axis=1))
        if path == "hard" or not adaptive or config.pool == "max":
            z = aniso_pool_float(a, hard[0], hard[1], mode=config.pool)
        else:
            soft = [soft_kernel_size(scale[:, i], base=base, k_min=r[0], k_max=r[1])
                    for i, (base, r) in enumerate(((config.base_h, config.k_h_range),
                                                   (config.base_l, config.k_l_range)))]
            corners = {}
            for i in (0, 1):
                for j in (0, 1):
                    corners[i, j] = aniso_pool_float(a, soft[0][i], soft[1][j], mode="average")
            fh, fl = soft[0][2][:, None, None, None], soft[1][2][:, None, None, None]
            step.update(soft=soft, corners=corners)
            if path == "soft":
                z = ((1 - fh) * (1 - fl) * corners[0, 0] + (1 - fh) * fl * corners[0, 1]
                     + fh * (1 - fl) * corners[1, 0] + fh * fl * corners[1, 1])
            else:
                z = aniso_pool_float(a, hard[0], hard[1], mode="average")
        steps.append(step)
    features = z.mean(axis=(2, 3))
    logits = features @ params["head"] + params["head_b"][0]
    return logits, {"steps": steps, "features": features, "z": z, "sizes": np.stack(sizes, axis=1), "path": path,
                    "adaptive": adaptive}


def loss_and_gradients(params, x, y, config, *, adaptive=True, path="soft", l1=0.0, l2=0.0):
    """Mean binary cross-entropy (+ L1/L2 on the SPN weights) and its gradients for every parameter."""
    if config.pool != "average":
        raise ValueError("training needs average pooling (max pooling has no kernel-size gradient)")
    logits, cache = forward(params, x, config, adaptive=adaptive, path=path)
    y = np.asarray(y, dtype=np.float64)
    batch = len(y)
    loss = float(np.mean(np.logaddexp(0, logits) - y * logits))
    d_logits = (1 / (1 + np.exp(-logits)) - y) / batch
    grads = {"head": cache["features"].T @ d_logits, "head_b": np.array([d_logits.sum()])}
    steps = cache["steps"]
    height, length = steps[-1]["a"].shape[2:]
    d_z = np.broadcast_to((d_logits[:, None] * params["head"][None, :] / (height * length))[:, :, None, None],
                          cache["z"].shape)
    for step in reversed(steps):
        if "soft" in step:
            (h0, h1, fh, inside_h), (l0, l1_, fl, inside_l) = step["soft"]
            corners = step["corners"]
            if path == "soft":
                weights = {(0, 0): (1 - fh) * (1 - fl), (0, 1): (1 - fh) * fl,
                           (1, 0): fh * (1 - fl), (1, 1): fh * fl}
                d_a = 0
                for (i, j), w in weights.items():
                    kh, kl = (h0, h1)[i], (l0, l1_)[j]
                    d_a = d_a + _box_sum(d_z * w[:, None, None, None], kh, kl, transpose=True) / \
                        (kh * kl)[:, None, None, None]
            else:                       # straight-through: the forward pass pooled with the hard sizes
                kh, kl = step["hard"]
                d_a = _box_sum(d_z, kh, kl, transpose=True) / (kh * kl)[:, None, None, None]
            fh4, fl4 = fh[:, None, None, None], fl[:, None, None, None]
            d_fh = np.sum(d_z * ((1 - fl4) * (corners[1, 0] - corners[0, 0]) + fl4 * (corners[1, 1] - corners[0, 1])),
                          axis=(1, 2, 3))
            d_fl = np.sum(d_z * ((1 - fh4) * (corners[0, 1] - corners[0, 0]) + fh4 * (corners[1, 1] - corners[1, 0])),
                          axis=(1, 2, 3))
            d_scale = np.stack([d_fh * inside_h * config.base_h, d_fl * inside_l * config.base_l], axis=1)
        else:                           # hard sizes: no gradient reaches the scales
            kh, kl = step["hard"]
            d_a = _box_sum(d_z, kh, kl, transpose=True) / (kh * kl)[:, None, None, None]
            d_scale = None
        if adaptive and d_scale is not None:
            d_a = d_a + _spn_backward(params, step["spn"], d_scale, grads)
        d_pre = d_a * (step["pre"] > 0)
        d_w, d_b, d_z = _conv_backward(d_pre, step["cols"], params[step["name"]], step["x_shape"])
        grads[step["name"]] = grads.get(step["name"], 0) + d_w
        grads[step["name"] + "_b"] = grads.get(step["name"] + "_b", 0) + d_b
    for name in ("conv0", "conv1", "spn1", "spn2", "spn3"):
        for suffix in ("", "_b"):
            grads.setdefault(name + suffix, np.zeros_like(params[name + suffix]))
    if adaptive:
        for name in ("spn1", "spn2", "spn3"):
            w = params[name]
            loss += l1 * float(np.abs(w).sum()) + l2 * float(np.sum(w * w))
            grads[name] = grads[name] + l1 * np.sign(w) + 2 * l2 * w
    return loss, grads


@_single_thread
def train(x, y, config, *, seed=0, adaptive=True, path="soft", epochs=30, batch=32, lr=1e-2, l1=1e-6, l2=1e-6,
          progress=None):
    """Float parameters trained jointly (main model and SPN) with Adam; deterministic for a seed."""
    _check_int("seed", seed, 0)
    _check_int("epoch count", epochs, 0)
    _check_int("batch size", batch, 1)
    _check_float("learning rate", lr, 0.0)
    _check_float("L1 weight", l1, 0.0)
    _check_float("L2 weight", l2, 0.0)
    if path not in TRAINING_PATHS:
        raise ValueError(f"training path must be one of {', '.join(TRAINING_PATHS)}, not {path!r}")
    params = init_params(config, seed=seed)
    rng = np.random.default_rng(seed + 1000)
    adam = _Adam(lr)
    for epoch in range(epochs):
        order = rng.permutation(len(y))
        total = 0.0
        for start in range(0, len(y), batch):
            idx = order[start:start + batch]
            loss, grads = loss_and_gradients(params, x[idx], y[idx], config, adaptive=adaptive, path=path,
                                             l1=l1, l2=l2)
            if not adaptive:
                grads = {name: g for name, g in grads.items() if not name.startswith("spn")}
            adam.step(params, grads)
            total += loss * len(idx)
        if progress:
            progress(epoch, total / len(y))
    return params


def accuracy(logits, y):
    """Fraction of samples with ``(logit > 0) == y``."""
    return float(np.mean((np.asarray(logits) > 0) == (np.asarray(y) == 1)))


# --- quantisation and export -----------------------------------------------------------------------

def choose_multiplier(ratio):
    """``(M, S)`` with ``M / 2^S ≈ ratio``: the largest shift whose ``M = floor(ratio · 2^S + 0.5)`` fits 16 bits."""
    ratio = _check_float("requantisation ratio", ratio, 0.0)
    if ratio == 0.0:
        return 0, 0
    if ratio >= MULTIPLIER_MAX + 0.5:
        raise ValueError(f"requantisation ratio must be below {MULTIPLIER_MAX + 0.5}, not {ratio!r}")
    best = (int(math.floor(ratio + 0.5)), 0)
    for shift in range(SHIFT_MAX + 1):
        multiplier = int(math.floor(ratio * 2 ** shift + 0.5))
        if multiplier > MULTIPLIER_MAX:
            break
        best = (multiplier, shift)
    return best


def _weight_code(w):
    scale = float(np.abs(w).max()) / WEIGHT_MAX or 1.0
    return np.clip(np.floor(w / scale + 0.5), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8), scale


def quantise(params, config, x_calibration, *, adaptive=True, percentile=99.9, spn_percentile=100.0):
    """``(export, scales)``: the integer model the gateware loads and the float scales behind it.

    Activation scales are calibrated on ``x_calibration`` (the training
    split), separately for each iteration ``t``: ``scale = P / 127`` with
    ``P`` the ``percentile`` of the main convolution's outputs and the
    ``spn_percentile`` of each SPN layer's (100 = the maximum; larger values
    saturate at 127). The SPN keeps its maximum because its output is a
    mean over the whole map, which the few largest values dominate. Two
    floors keep a (nearly) dead ReLU layer representable: ``P`` is at least
    1/256 of the same percentile of the layer's ``|pre-activation|`` (else the
    next layer's bias codes explode), and ``s_w · s_x / s_y < 2^15``; a
    third keeps every bias code within ``±BIAS_CODE_MAX = ±2^30`` (the
    gateware's biases are 32-bit): a layer's output scale is at least the
    largest bias of the layer that reads it over that layer's weight scale
    times ``2^30`` (the head's bias likewise).
    Weights are int8 per tensor and shared by the iterations; biases,
    multipliers and shifts are per iteration (row ``t``), since the input
    scale of a layer changes from one iteration to the next. ``export``
    holds only integers (:func:`check_export` lists its keys and shapes).
    """
    percentile = _check_float("calibration percentile", percentile, 50.0, 100.0)
    spn_percentile = _check_float("SPN calibration percentile", spn_percentile, 50.0, 100.0)
    _, cache = forward(params, x_calibration, config, adaptive=adaptive, path="hard")
    steps = cache["steps"]
    iterations = config.iterations
    s_in = 1 / 127
    weight_scales = {name: _weight_code(params[name])[1] for name in ("conv0", "conv1", "spn1", "spn2", "spn3")}

    def output_scale(pre, s_w, s_x, level, floor=0.0):
        top = max(float(np.percentile(np.maximum(pre, 0), level)), float(np.percentile(np.abs(pre), level)) / 256)
        return max(top / ACTIVATION_MAX, s_w * s_x / 2 ** 15, floor, 1e-12)

    def bias_floor(name):
        """The smallest input scale of layer ``name`` whose bias codes stay within ±BIAS_CODE_MAX."""
        return float(np.abs(params[name + "_b"]).max(initial=0.0)) / (weight_scales[name] * BIAS_CODE_MAX)

    s_head = _weight_code(params["head"])[1]
    s_a = []
    for t, step in enumerate(steps):
        floor = bias_floor("spn1") if adaptive else 0.0
        if t + 1 < iterations:
            floor = max(floor, bias_floor("conv1"))
        else:       # the head's bias, in units of s_head · s_a / (H · L)
            floor = max(floor, abs(float(params["head_b"][0])) * HEIGHT * config.length / (s_head * BIAS_CODE_MAX))
        s_a.append(output_scale(step["pre"], weight_scales["conv0" if t == 0 else "conv1"], s_a[-1] if t else s_in,
                                percentile, floor))
    export = {"version": EXPORT_VERSION, "height": HEIGHT, "length": config.length,
              "iterations": iterations, "channels": config.channels, "spn_channels": config.spn_channels,
              "conv_kernel": config.conv_kernel, "base_h": config.base_h, "base_l": config.base_l,
              "k_h_min": config.k_h_range[0], "k_h_max": config.k_h_range[1],
              "k_l_min": config.k_l_range[0], "k_l_max": config.k_l_range[1],
              "pool_max": int(config.pool == "max"), "adaptive": int(adaptive),
              "encoding": encoding_table()}
    scales = {"input": s_in, "activation": s_a}
    for name in ("conv0", "conv1") + (("spn1", "spn2", "spn3") if adaptive else ()):
        export[name + "_w"] = _weight_code(params[name])[0]
    scales["weights"] = weight_scales

    def requantisation(layer, name, rows):
        """Per-iteration bias codes, multipliers and shifts of one layer; rows = [(s_x, s_y)] per t."""
        s_w = weight_scales[name]
        export[layer + "_b"] = np.stack([np.floor(params[name + "_b"] / (s_w * s_x) + 0.5)
                                         for s_x, _ in rows]).astype(np.int64)
        pairs = [choose_multiplier(s_w * s_x / s_y) for s_x, s_y in rows]
        export[layer + "_m"] = np.array([m for m, _ in pairs], np.int64)
        export[layer + "_s"] = np.array([sh for _, sh in pairs], np.int64)

    inputs = [s_in] + s_a[:-1]
    # iteration 0 uses conv0's weights, the others conv1's: one bias row per iteration, from its own weights
    conv_rows = []
    for t in range(iterations):
        name = "conv0" if t == 0 else "conv1"
        s_w = weight_scales[name]
        conv_rows.append((np.floor(params[name + "_b"] / (s_w * inputs[t]) + 0.5),
                          choose_multiplier(s_w * inputs[t] / s_a[t])))
    export["conv_b"] = np.stack([row[0] for row in conv_rows]).astype(np.int64)
    export["conv_m"] = np.array([row[1][0] for row in conv_rows], np.int64)
    export["conv_s"] = np.array([row[1][1] for row in conv_rows], np.int64)
    if adaptive:
        spn_scales = []
        for t, step in enumerate(steps):
            x_spn, s_x, chain = step["a"], s_a[t], []
            for name, following in (("spn1", "spn2"), ("spn2", "spn3"), ("spn3", None)):
                pre = _conv(x_spn, params[name], params[name + "_b"])[0]
                s_x = output_scale(pre, weight_scales[name], s_x, spn_percentile,
                                   bias_floor(following) if following else 0.0)
                chain.append(s_x)
                x_spn = np.maximum(pre, 0)
            spn_scales.append(chain)
        scales["spn"] = spn_scales
        requantisation("spn1", "spn1", [(s_a[t], spn_scales[t][0]) for t in range(iterations)])
        requantisation("spn2", "spn2", [(spn_scales[t][0], spn_scales[t][1]) for t in range(iterations)])
        requantisation("spn3", "spn3", [(spn_scales[t][1], spn_scales[t][2]) for t in range(iterations)])
        # u in UQ2.6 = mean(r3) · 64 = Σ3 · s3 · 64 / (H · L)
        pairs = [choose_multiplier(spn_scales[t][2] * SCALE_ONE / (HEIGHT * config.length))
                 for t in range(iterations)]
        export["scale_m"] = np.array([m for m, _ in pairs], np.int64)
        export["scale_s"] = np.array([sh for _, sh in pairs], np.int64)
    code, s_head = _weight_code(params["head"])
    export["head_w"] = code
    # logit = Σ head · mean(z_T) + b = s_head · s_a[T−1] / (H · L) · (Σ head_q · g) + b
    logit_unit = s_head * s_a[-1] / (HEIGHT * config.length)
    export["head_b"] = np.array([math.floor(params["head_b"][0] / logit_unit + 0.5)], np.int64)
    scales["head"], scales["logit"] = s_head, logit_unit
    multipliers, shifts = reciprocal_table(config.max_area)
    export["avg_m"], export["avg_s"] = multipliers, shifts
    check_export(export)
    return export, scales


def check_export(export):
    """Check that ``export`` is a complete integer model; return its :class:`SPNConfig`.

    Raises :class:`TypeError` for a non-integer entry (the integer model
    takes no float) and :class:`ValueError` for a missing key, a wrong shape
    or a weight outside ``[-127, 127]``.
    """
    if not isinstance(export, dict):
        raise TypeError(f"export must be a dict, not {type(export).__name__}")
    for key in _EXPORT_SCALARS:
        if key not in export:
            raise ValueError(f"export has no {key!r}")
    for key, value in export.items():
        array = np.asarray(value)
        if not np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
            raise TypeError(f"export entry {key!r} must be integer, not {array.dtype}")
    if int(export["version"]) != EXPORT_VERSION:
        raise ValueError(f"export version must be {EXPORT_VERSION}, not {int(export['version'])}")
    config = SPNConfig(length=int(export["length"]), iterations=int(export["iterations"]),
                       channels=int(export["channels"]), spn_channels=int(export["spn_channels"]),
                       conv_kernel=int(export["conv_kernel"]), base_h=int(export["base_h"]),
                       base_l=int(export["base_l"]),
                       k_h_range=(int(export["k_h_min"]), int(export["k_h_max"])),
                       k_l_range=(int(export["k_l_min"]), int(export["k_l_max"])),
                       pool="max" if int(export["pool_max"]) else "average")
    k, f, s = config.conv_kernel, config.channels, config.spn_channels
    t = config.iterations
    shapes = {"conv0_w": (f, 1, k, k), "conv1_w": (f, f, k, k), "conv_b": (t, f), "conv_m": (t,), "conv_s": (t,),
              "head_w": (f,), "head_b": (1,), "encoding": (len(ALPHABET), HEIGHT),
              "avg_m": (config.max_area + 1,), "avg_s": (config.max_area + 1,)}
    if int(export["adaptive"]):
        shapes.update({"spn1_w": (s, f, k, k), "spn1_b": (t, s), "spn2_w": (s, s, k, k), "spn2_b": (t, s),
                       "spn3_w": (2, s, k, k), "spn3_b": (t, 2), "scale_m": (t,), "scale_s": (t,)})
        shapes.update({f"spn{i}_{x}": (t,) for i in (1, 2, 3) for x in ("m", "s")})
    for key, shape in shapes.items():
        if key not in export:
            raise ValueError(f"export has no {key!r}")
        if np.shape(export[key]) != shape:
            raise ValueError(f"export entry {key!r} must have shape {shape}, not {np.shape(export[key])}")
        if key.endswith("_w") and np.abs(np.asarray(export[key], np.int64)).max(initial=0) > WEIGHT_MAX:
            raise ValueError(f"export entry {key!r} must lie in [-{WEIGHT_MAX}, {WEIGHT_MAX}]")
        for suffix, top in (("_m", MULTIPLIER_MAX), ("_s", SHIFT_MAX)):
            values = np.asarray(export[key])
            if key.endswith(suffix) and (values.min() < 0 or values.max() > top):
                raise ValueError(f"export entry {key!r} must lie in [0, {top}]")
    return config


def accumulator_widths(export):
    """Signed bits each accumulator needs, derived from the kernel and the exported biases."""
    config = check_export(export)
    widths = {}

    def bits(bound):
        width = 1
        while bound > (1 << (width - 1)) - 1:
            width += 1
        return width

    taps = config.conv_kernel ** 2
    inputs = {"conv0": 1, "conv1": config.channels, "spn1": config.channels, "spn2": config.spn_channels,
              "spn3": config.spn_channels}
    biases = {"conv0": export["conv_b"][:1], "conv1": export["conv_b"][1:]}
    for name in _LAYER_NAMES:
        if name + "_w" in export and (name != "conv1" or config.iterations > 1):
            bias = biases[name] if name in biases else export[name + "_b"]
            # inputs are int8 (conv0: [-127, 127]) or ReLU outputs in [0, 127]; |w| <= 127
            bound = inputs[name] * taps * 127 * 128 + int(np.abs(np.asarray(bias, np.int64)).max())
            widths[name] = bits(bound)
    area = HEIGHT * config.length
    widths["scale_sum"] = bits(area * ACTIVATION_MAX)
    widths["pool_sum"] = bits(config.max_area * ACTIVATION_MAX)
    widths["head"] = bits(config.channels * area * ACTIVATION_MAX * 127 + int(abs(int(export["head_b"][0]))))
    return widths


def _conv_int(z, weights, bias):
    cols = _im2col(z, weights.shape[-1])
    acc = cols @ np.asarray(weights, np.int64).reshape(weights.shape[0], -1).T + np.asarray(bias, np.int64)
    return acc.transpose(0, 3, 1, 2)


def _layer_int(weights, bias, multiplier, shift, z):
    acc = _conv_int(z, weights, bias)
    q = requantize(acc, multiplier=int(multiplier), shift=int(shift))
    return np.maximum(q.astype(np.int64), 0)


def conv_int(export, z, t):
    """The loop's convolution of iteration ``t`` (``conv0`` at ``t = 0``, ``conv1`` after) with
    requantisation and ReLU: int64 ``[B, F, H, L]`` in [0, 127] from ``z`` (``[B, H, L]`` codes
    at ``t = 0``, the pooled ``[B, F, H, L]`` after)."""
    z = np.asarray(z, np.int64)
    if z.ndim == 3:
        z = z[:, None]
    return _layer_int(export["conv0_w" if t == 0 else "conv1_w"], export["conv_b"][t], export["conv_m"][t],
                      export["conv_s"][t], z)


def spn_scale_codes(export, a, t):
    """The scale prediction network of iteration ``t`` on ``a [B, F, H, L]``: int64 UQ2.6 codes
    ``[B, 2]`` (height, length), ``clamp(32 + u, 32, 128)`` (module docstring); what
    :class:`~dynsparse.hdl.spn.ScalePredictor` computes."""
    r = np.asarray(a, np.int64)
    for name in ("spn1", "spn2", "spn3"):
        r = _layer_int(export[name + "_w"], export[name + "_b"][t], export[name + "_m"][t],
                       export[name + "_s"][t], r)
    u = requantize(r.sum(axis=(2, 3)), multiplier=int(export["scale_m"][t]), shift=int(export["scale_s"][t]))
    return np.clip(SCALE_MIN_CODE + u.astype(np.int64), SCALE_MIN_CODE, SCALE_MAX_CODE)


def forward_int(export, x):
    """Bit-exact integer model of the whole loop: ``(logits int64 [B], trace)``.

    ``x`` is int8 codes ``[B, H, L]`` (:func:`encode`). ``trace`` holds, per
    iteration, the int scale codes ``[B, 2]``, kernel sizes ``[B, 2]`` and
    the convolution's maps ``[B, F, H, L]`` (what the scale predictor and
    the pooling read; stacked on axis 1), and the final pooled map; every
    array in it is an integer array.
    """
    config = check_export(export)
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"input codes must be integers, not {x.dtype}")
    if x.ndim != 3 or x.shape[1:] != (HEIGHT, config.length):
        raise ValueError(f"input codes must have shape [B, {HEIGHT}, {config.length}], not {x.shape}")
    if x.size and np.abs(x.astype(np.int64)).max() > 127:
        raise ValueError("input codes must lie in [-127, 127]")
    table = (np.asarray(export["avg_m"], np.int64), np.asarray(export["avg_s"], np.int64))
    z = x.astype(np.int64)[:, None]
    batch = len(x)
    trace = {"scale_codes": [], "kernel_sizes": [], "activations": []}
    for t in range(config.iterations):
        a = conv_int(export, z, t)
        if int(export["adaptive"]):
            codes = spn_scale_codes(export, a, t)
        else:
            codes = np.full((batch, 2), SCALE_ONE, np.int64)
        k_h = kernel_size_int(codes[:, 0], base=config.base_h, k_min=config.k_h_range[0], k_max=config.k_h_range[1])
        k_l = kernel_size_int(codes[:, 1], base=config.base_l, k_min=config.k_l_range[0], k_max=config.k_l_range[1])
        z = aniso_pool_int(a, k_h, k_l, mode=config.pool, table=table)
        trace["activations"].append(a)
        trace["scale_codes"].append(codes)
        trace["kernel_sizes"].append(np.stack([k_h, k_l], axis=1))
    g = z.sum(axis=(2, 3))
    logits = g @ np.asarray(export["head_w"], np.int64) + int(export["head_b"][0])
    trace["scale_codes"] = np.stack(trace["scale_codes"], axis=1)
    trace["kernel_sizes"] = np.stack(trace["kernel_sizes"], axis=1)
    trace["activations"] = np.stack(trace["activations"], axis=1)
    trace["pooled"] = z
    return logits, trace


def save_export(export, path):
    """Write ``export`` as an ``.npz`` (one array per key; scalars as 0-d int64)."""
    check_export(export)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    np.savez(path, **{key: np.asarray(value) for key, value in export.items()})


# --- the experiment --------------------------------------------------------------------------------

VARIANTS = {"fixed": dict(adaptive=False, path="soft"),
            "spn-soft": dict(adaptive=True, path="soft"),
            "spn-ste": dict(adaptive=True, path="straight-through")}


def experiment(*, dataset="AMPvsTM", seeds=(0, 1, 2), variants=tuple(VARIANTS), config=None, epochs=30,
               percentile=99.9, out=None, progress=None):
    """Train each variant for each seed on a held-out split; measure float and int8 accuracy.

    Returns a JSON-ready dict. ``out``: directory for the exported ``.npz`` models.
    """
    config = config or SPNConfig()
    if not isinstance(config, SPNConfig):
        raise TypeError(f"config must be an SPNConfig, not {config!r}")
    for variant in variants:
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
    sequences, labels, names = load_dataset(dataset)
    x = encode(sequences, length=config.length)
    lengths = np.array([len(s) for s in sequences])
    rows = []
    for seed in seeds:
        train_idx, test_idx = split(labels, seed=seed)
        for variant in variants:
            options = VARIANTS[variant]
            start = time.perf_counter()
            params = train(x[train_idx], labels[train_idx], config, seed=seed, epochs=epochs, **options)
            adaptive = options["adaptive"]
            logits_float, cache = forward(params, x[test_idx], config, adaptive=adaptive, path="hard")
            export, scales = quantise(params, config, x[train_idx], adaptive=adaptive, percentile=percentile)
            logits_int, trace = forward_int(export, x[test_idx])
            logits_deq = logits_int * scales["logit"]
            float_scale_codes = np.stack([step["scale"] for step in cache["steps"]], axis=1) * SCALE_ONE
            row = {
                "seed": seed, "variant": variant, "train": len(train_idx), "test": len(test_idx),
                "float_accuracy": accuracy(logits_float, labels[test_idx]),
                "int8_accuracy": accuracy(logits_int, labels[test_idx]),
                "train_accuracy": accuracy(forward(params, x[train_idx], config, adaptive=adaptive)[0],
                                           labels[train_idx]),
                "decision_agreement": float(np.mean((logits_int > 0) == (logits_float > 0))),
                "logit_error_max": float(np.abs(logits_deq - logits_float).max()),
                "logit_error_rms": float(np.sqrt(np.mean((logits_deq - logits_float) ** 2))),
                "logit_range": float(np.abs(logits_float).max()),
                "scale_code_error_max": float(np.abs(trace["scale_codes"] - float_scale_codes).max()),
                "scale_code_error_p99": float(np.percentile(np.abs(trace["scale_codes"] - float_scale_codes), 99)),
                "scale_code_error_median": float(np.median(np.abs(trace["scale_codes"] - float_scale_codes))),
                "kernel_size_agreement": float(np.mean(trace["kernel_sizes"] == cache["sizes"])),
                "kernel_h_histogram": np.bincount(trace["kernel_sizes"][..., 0].ravel(), minlength=17).tolist(),
                "kernel_l_histogram": np.bincount(trace["kernel_sizes"][..., 1].ravel(), minlength=17).tolist(),
                "accumulator_bits": accumulator_widths(export),
                "seconds": time.perf_counter() - start,
            }
            rows.append(row)
            if out:
                save_export(export, os.path.join(out, f"{dataset}_{variant}_seed{seed}.npz"))
            if progress:
                progress(row)
    multipliers, shifts = reciprocal_table(config.max_area)
    summary = {}
    for variant in variants:
        chosen = [r for r in rows if r["variant"] == variant]
        summary[variant] = {key: (float(np.mean([r[key] for r in chosen])), float(np.std([r[key] for r in chosen])))
                            for key in ("float_accuracy", "int8_accuracy", "decision_agreement", "logit_error_max",
                                        "kernel_size_agreement")}
    return {"dataset": dataset, "classes": list(names), "sequences": len(sequences),
            "class_counts": np.bincount(labels).tolist(), "truncated": int(np.sum(lengths > config.length)),
            "config": dataclasses.asdict(config), "epochs": epochs, "seeds": list(seeds), "percentile": percentile,
            "reciprocal_table": {"multipliers": multipliers.tolist(), "shifts": shifts.tolist()},
            "rows": rows, "summary": summary}


def format_results(results):
    """Markdown table of :func:`experiment`'s summary (mean ± std over seeds)."""
    lines = [f"Data set {results['dataset']} ({results['sequences']} sequences, classes "
             f"{results['classes'][0]}={results['class_counts'][0]} / {results['classes'][1]}="
             f"{results['class_counts'][1]}, {results['truncated']} truncated to {results['config']['length']}), "
             f"{results['epochs']} epochs, seeds {', '.join(map(str, results['seeds']))}; held-out 25 % per class.",
             "",
             "| variant | float accuracy | int8 accuracy | int8/float decisions agree | largest logit error "
             "| kernel sizes agree |",
             "|---|---|---|---|---|---|"]
    for variant, s in results["summary"].items():
        cells = [f"{s[key][0]:.4f} ± {s[key][1]:.4f}" for key in
                 ("float_accuracy", "int8_accuracy", "decision_agreement", "logit_error_max", "kernel_size_agreement")]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines += ["", "| seed | variant | float | int8 | train | kernel heights (count by size) "
              "| kernel lengths (count by size) |", "|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        hist_h = ", ".join(f"{k}:{n}" for k, n in enumerate(r["kernel_h_histogram"]) if n)
        hist_l = ", ".join(f"{k}:{n}" for k, n in enumerate(r["kernel_l_histogram"]) if n)
        lines.append(f"| {r['seed']} | {r['variant']} | {r['float_accuracy']:.4f} | {r['int8_accuracy']:.4f} | "
                     f"{r['train_accuracy']:.4f} | {hist_h} | {hist_l} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m dynsparse.golden.spn",
        description="Train seed 003's SPN + adaptive anisotropic pooling against a fixed kernel on peptides.")
    parser.add_argument("--dataset", default="AMPvsTM", choices=tuple(DATASETS))
    parser.add_argument("--seeds", default="0,1,2,3", help="comma-separated seeds")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: " + ", ".join(VARIANTS))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--percentile", type=float, default=99.9,
                        help="activation calibration percentile (100 = maximum)")
    parser.add_argument("--out", default="build/spn", help="directory for results.json, results.md and models")
    args = parser.parse_args(argv)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    variants = tuple(args.variants.split(","))
    for variant in variants:
        if variant not in VARIANTS:
            parser.error(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
    start = time.perf_counter()

    def progress(row):
        print(f"seed {row['seed']} {row['variant']:>8}: float {row['float_accuracy']:.4f}  "
              f"int8 {row['int8_accuracy']:.4f}  agree {row['decision_agreement']:.4f}  "
              f"({row['seconds']:.1f} s)", file=sys.stderr, flush=True)

    results = experiment(dataset=args.dataset, seeds=seeds, variants=variants, epochs=args.epochs,
                         percentile=args.percentile, out=args.out, progress=progress)
    results["command"] = "python -m dynsparse.golden.spn " + " ".join(argv if argv is not None else sys.argv[1:])
    results["seconds"] = time.perf_counter() - start
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    table = format_results(results)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    print(f"\nwritten {args.out}/results.json, {args.out}/results.md; total {results['seconds']:.1f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
