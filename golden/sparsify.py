"""The Sparsification Engine of seed 002 (host side) and the reconstruction rules.

Which entries of an int8 weight tensor are sent (the *mask*) and how the
receiver fills the others. Tensors are 2-D matrices or 4-D
``C_out × C_in × K × K`` convolution weights; the encodings see them through
the matrix view of :mod:`dynsparse.golden.weightstream` (row = output channel).

**Scores** (:func:`scores`), higher = more worth sending:

- ``magnitude``: ``|w|``.
- ``gradient``: the first-order Taylor saliency ``|w · g|`` of the given
  gradients ``g`` (the loss change if ``w`` were set to 0).
- ``channel``: structured, whole output channels (rows of the matrix view).
  Channels are ranked greedily: first the row of largest L2 norm; then, again
  and again, the row whose largest ``|ρ|`` (Pearson correlation over the row's
  entries) with the rows already ranked is smallest — the most novel channel;
  ties go to the larger norm, then the lower index. A row whose entries are all
  equal has ``ρ = 0`` with every row. The entry score is
  ``(rows − rank) · 256 + |w|``, so whole channels are kept in rank order and
  the last, partly kept channel keeps its largest entries. The channels dropped
  first are the ones most correlated with a kept channel.

**Selection** (:func:`sparsify`, exactly one of):

- ``sparsity = s`` in [0, 1]: keep the ``k = N − floor(s·N + 1/2)`` highest scores;
- ``keep = k``: keep the ``k`` highest scores;
- ``threshold = t``: keep every entry with score ``>= t``;
- ``budget = B`` bytes (:func:`adaptive_keep`): the largest ``k`` whose stream,
  header and CRC included, is at most ``B`` bytes.

Ties between equal scores go to the lower flat index (C order): the order is
NumPy's stable sort of ``-score``. The top-``k`` masks are nested (the mask of
``k`` is inside that of ``k + 1``), and every encoding's size grows by at least
one byte per kept entry, so the budget search is a bisection (proof in
docs/weightstream.md).

**Interpolation** (:func:`interpolate`) works on *planes*: the ``K × K``
kernels of a 4-D tensor (``C_out·C_in`` planes) or the whole matrix (one
plane). Only sent entries are read, never reconstructed ones, so the result
does not depend on an order:

- ``zero``: a dropped entry is 0.
- ``linear``: the sent entries among its left and right neighbours in the
  plane row; if there are none, among its upper and lower neighbours; the
  value is their mean, rounded half up (``a`` for one, ``(a + b + 1) >> 1``
  for two: an adder and a shift); 0 if all four are dropped or outside the plane.
- ``learned``: ``sat(Σ c_j · v_j + 2^(s−1)) >> s`` over the 8 neighbours of
  :data:`LEARNED_OFFSETS`, ``v_j`` the neighbour if sent, else 0 (outside the
  plane: 0); ``c_j`` int8, ``s`` in 0 … 15 (no rounding term for ``s = 0``),
  ``>>`` arithmetic (floor), saturated to [−127, 127]. The accumulator needs
  18 bits signed (``8 · 127 · 127 < 2^17``). Coefficients are fitted by least
  squares on the dropped entries of the real tensor (:func:`fit_predictor`) and
  quantised with the largest shift that keeps them in [−127, 127].

Float references (:func:`interpolate_float`) drop the rounding and the
saturation and use the unquantised coefficients.
"""

import math
import struct

import numpy as np

from .weightstream import (
    Criterion, Encoding, Interpolation, PREDICTOR_TAPS, Selection, _check_enum, matrix_shape, stream_size,
)


__all__ = [
    "LEARNED_OFFSETS", "scores", "channel_ranking", "top_k_mask", "sparsify", "adaptive_keep", "planes",
    "interpolate", "interpolate_float", "fit_predictor", "quantise_predictor", "reconstruct",
    "sparsification_metadata",
]

#: Neighbourhood of the learned predictor, ``(dy, dx)`` in coefficient order.
LEARNED_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
VALUE_MAX = 127


def _check_weights(weights, integer=True):
    weights = np.asarray(weights)
    if weights.ndim not in (2, 4) or (weights.ndim == 4 and weights.shape[2] != weights.shape[3]):
        raise ValueError(f"weights must be a 2-D matrix or a 4-D C_out × C_in × K × K tensor, not shape {weights.shape}")
    if weights.size == 0:
        raise ValueError(f"weights must not be empty, not shape {weights.shape}")
    if integer:
        if not np.issubdtype(weights.dtype, np.integer):
            raise TypeError(f"weights must be integers (int8 values), not {weights.dtype}")
        if np.abs(weights.astype(np.int64)).max() > VALUE_MAX:
            raise ValueError(f"weights must lie in [-127, 127], not [{weights.min()}, {weights.max()}]")
        return weights.astype(np.int64)
    return weights.astype(np.float64)


def channel_ranking(weights):
    """Output channels (rows of the matrix view) in the order the channel criterion keeps them."""
    rows, cols = matrix_shape(np.shape(weights))
    matrix = np.asarray(weights, np.float64).reshape(rows, cols)
    norms = np.sqrt((matrix ** 2).sum(axis=1))
    centred = matrix - matrix.mean(axis=1, keepdims=True)
    spread = np.sqrt((centred ** 2).sum(axis=1))
    unit = np.divide(centred, spread[:, None], out=np.zeros_like(centred), where=spread[:, None] > 0)
    rho = np.abs(unit @ unit.T)
    order = [int(np.lexsort((np.arange(rows), -norms))[0])]
    closest = rho[order[0]].copy()
    remaining = [r for r in range(rows) if r != order[0]]
    while remaining:
        candidates = np.array(remaining)
        # smallest largest-|ρ| first, then larger norm, then lower index
        pick = candidates[np.lexsort((candidates, -norms[candidates], closest[candidates]))[0]]
        order.append(int(pick))
        remaining.remove(pick)
        closest = np.maximum(closest, rho[pick])
    return np.array(order)


def scores(weights, criterion="magnitude", *, gradients=None):
    """Score of every entry (float64, the tensor's shape); higher = kept first. See the module docstring."""
    criterion = _check_enum(Criterion, criterion)
    if criterion == Criterion.NONE:
        raise ValueError("criterion must be one of magnitude, gradient, channel, not 'none'")
    weights = np.asarray(weights)
    wf = _check_weights(weights, integer=False)
    if criterion == Criterion.GRADIENT:
        if gradients is None:
            raise ValueError("the gradient criterion needs gradients")
        gradients = np.asarray(gradients, np.float64)
        if gradients.shape != weights.shape:
            raise ValueError(f"gradients must have the weights' shape {weights.shape}, not {gradients.shape}")
        if not np.isfinite(gradients).all():
            raise ValueError("gradients must be finite")
        return np.abs(wf * gradients)
    if gradients is not None:
        raise ValueError(f"gradients belong to the gradient criterion, not {criterion.name.lower()}")
    if criterion == Criterion.MAGNITUDE:
        return np.abs(wf)
    rows, cols = matrix_shape(weights.shape)
    rank = np.empty(rows, np.int64)
    rank[channel_ranking(wf)] = np.arange(rows)
    return ((rows - rank)[:, None] * 256.0 + np.abs(wf.reshape(rows, cols))).reshape(weights.shape)


def top_k_mask(score, keep):
    """Boolean mask of the ``keep`` highest scores, ties to the lower flat index."""
    score = np.asarray(score, np.float64)
    order = np.argsort(-score.ravel(), kind="stable")
    mask = np.zeros(score.size, bool)
    mask[order[:keep]] = True
    return mask.reshape(score.shape)


def _check_count(name, value, maximum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer in [0, {maximum}], not {value!r}")
    if not 0 <= value <= maximum:
        raise ValueError(f"{name} must be an integer in [0, {maximum}], not {value!r}")
    return int(value)


def _check_real(name, value, low=None, high=None):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, not {value!r}")
    value = float(value)
    if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
        bounds = f" in [{low}, {high}]" if high is not None else ""
        raise ValueError(f"{name} must be a finite number{bounds}, not {value!r}")
    return value


def sparsify(weights, *, criterion="magnitude", sparsity=None, keep=None, threshold=None, budget=None,
             gradients=None, encoding="bitmask", interpolation="zero"):
    """Mask (bool, the tensor's shape) of the entries to send. Exactly one of
    ``sparsity``, ``keep``, ``threshold``, ``budget``; ``encoding`` and
    ``interpolation`` matter only for ``budget``.

    Raises
    ------
    TypeError, ValueError
        Naming the parameter at fault.
    """
    given = [name for name, value in (("sparsity", sparsity), ("keep", keep), ("threshold", threshold),
                                      ("budget", budget)) if value is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of sparsity, keep, threshold, budget, not {given or 'none'}")
    score = scores(weights, criterion, gradients=gradients)
    entries = score.size
    if sparsity is not None:
        sparsity = _check_real("sparsity", sparsity, 0.0, 1.0)
        keep = entries - math.floor(sparsity * entries + 0.5)
    elif threshold is not None:
        threshold = _check_real("threshold", threshold)
        return score >= threshold
    elif budget is not None:
        keep = adaptive_keep(score, budget, encoding=encoding, interpolation=interpolation)
    keep = _check_count("keep", keep, entries)
    return top_k_mask(score, keep)


def adaptive_keep(score, budget, *, encoding="bitmask", interpolation="zero"):
    """Largest ``k`` whose top-``k`` stream fits in ``budget`` bytes (bisection; sizes grow with ``k``).

    Raises ``ValueError`` if not even the empty stream fits.
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise TypeError(f"budget must be an integer number of bytes, not {budget!r}")
    score = np.asarray(score, np.float64)
    order = np.argsort(-score.ravel(), kind="stable")

    def size(k):
        mask = np.zeros(score.size, bool)
        mask[order[:k]] = True
        return stream_size(mask.reshape(score.shape), encoding, interpolation)

    if size(0) > budget:
        raise ValueError(f"budget must be at least {size(0)} bytes (an empty stream of this shape), not {budget}")
    low, high = 0, score.size          # size(low) <= budget; answer in [low, high]
    while low < high:
        middle = (low + high + 1) // 2
        if size(middle) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def sparsification_metadata(*, criterion="magnitude", sparsity=None, keep=None, threshold=None, budget=None):
    """``(criterion, selection, parameter)`` header fields of a :func:`sparsify` call."""
    criterion = _check_enum(Criterion, criterion)
    if sparsity is not None:
        return criterion, Selection.SPARSITY, int(math.floor(float(sparsity) * 1e6 + 0.5))
    if threshold is not None:
        return criterion, Selection.THRESHOLD, struct.unpack("<I", struct.pack("<f", float(threshold)))[0]
    if budget is not None:
        return criterion, Selection.BUDGET, int(budget)
    return criterion, Selection.MASK, 0


# --- interpolation --------------------------------------------------------------------------------

def planes(shape):
    """Shape ``(P, H, W)`` of the interpolation planes of a 2-D or 4-D tensor."""
    shape = tuple(shape)
    if len(shape) == 4:
        return shape[0] * shape[1], shape[2], shape[3]
    if len(shape) == 2:
        return 1, shape[0], shape[1]
    raise ValueError(f"shape must have 2 or 4 dimensions, not {shape}")


def _shifted(plane_stack, dy, dx):
    """``out[p, y, x] = in[p, y + dy, x + dx]``, 0 outside the plane."""
    p, h, w = plane_stack.shape
    out = np.zeros_like(plane_stack)
    ys, yd = slice(max(dy, 0), h + min(dy, 0)), slice(max(-dy, 0), h + min(-dy, 0))
    xs, xd = slice(max(dx, 0), w + min(dx, 0)), slice(max(-dx, 0), w + min(-dx, 0))
    out[:, yd, xd] = plane_stack[:, ys, xs]
    return out


def _check_mask(mask, shape):
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise ValueError(f"mask must have the weights' shape {tuple(shape)}, not {mask.shape}")
    if mask.dtype != bool:
        if not np.issubdtype(mask.dtype, np.integer) or not np.isin(mask, (0, 1)).all():
            raise ValueError("mask must hold only 0/1 or booleans")
    return mask.astype(bool)


def linear_terms(mask):
    """Per dropped entry, which neighbours the linear rule averages: ``(weights [4, P, H, W], offsets)``.

    ``weights[j]`` is 1/count for the neighbours used (left/right, else up/down), 0 otherwise.
    """
    m = mask.reshape(planes(mask.shape)).astype(np.float64)
    offsets = ((0, -1), (0, 1), (-1, 0), (1, 0))
    present = [_shifted(m, dy, dx) for dy, dx in offsets]
    horizontal = present[0] + present[1]
    vertical = present[2] + present[3]
    use_h = horizontal > 0
    use_v = ~use_h & (vertical > 0)
    count = np.where(use_h, horizontal, np.where(use_v, vertical, 1.0))
    terms = np.stack([present[0] * use_h, present[1] * use_h, present[2] * use_v, present[3] * use_v]) / count
    return terms * (1 - m), offsets


def _check_predictor(coefficients, shift, integer):
    coefficients = np.asarray(coefficients)
    if coefficients.shape != (PREDICTOR_TAPS,):
        raise ValueError(f"coefficients must be {PREDICTOR_TAPS} numbers, not shape {coefficients.shape}")
    if integer:
        if not np.issubdtype(coefficients.dtype, np.integer) or np.abs(coefficients.astype(np.int64)).max() > 127:
            raise ValueError(f"coefficients must be integers in [-127, 127], not {coefficients.tolist()}")
        if isinstance(shift, bool) or not isinstance(shift, (int, np.integer)) or not 0 <= shift <= 15:
            raise ValueError(f"shift must be an integer in [0, 15], not {shift!r}")
        return coefficients.astype(np.int64), int(shift)
    return coefficients.astype(np.float64), None


def interpolate(values, mask, method, *, coefficients=None, shift=None):
    """Integer reconstruction (int64, the tensor's shape): sent entries as they are, the others by ``method``.

    ``values`` holds the sent entries (other entries are ignored); see the
    module docstring for the rules.
    """
    method = _check_enum(Interpolation, method)
    values = _check_weights(values)
    mask = _check_mask(mask, values.shape)
    sent = np.where(mask, values, 0)
    if method == Interpolation.ZERO:
        return sent
    stack = sent.reshape(planes(values.shape))
    m = mask.reshape(stack.shape)
    if method == Interpolation.LINEAR:
        left, right = _shifted(stack, 0, -1), _shifted(stack, 0, 1)
        up, down = _shifted(stack, -1, 0), _shifted(stack, 1, 0)
        ml, mr = _shifted(m, 0, -1), _shifted(m, 0, 1)
        mu, md = _shifted(m, -1, 0), _shifted(m, 1, 0)
        h_count, v_count = ml.astype(int) + mr, mu.astype(int) + md
        h_value = np.where(h_count == 2, (left + right + 1) >> 1, left + right)   # one of them is 0 if count 1
        v_value = np.where(v_count == 2, (up + down + 1) >> 1, up + down)
        guess = np.where(h_count > 0, h_value, np.where(v_count > 0, v_value, 0))
    else:
        coefficients, shift = _check_predictor(coefficients, shift, integer=True)
        total = sum(c * _shifted(stack, dy, dx) for c, (dy, dx) in zip(coefficients, LEARNED_OFFSETS))
        if shift:
            total = (total + (1 << (shift - 1))) >> shift
        guess = np.clip(total, -VALUE_MAX, VALUE_MAX)
    return np.where(m, stack, guess).reshape(values.shape)


def interpolate_float(values, mask, method, *, coefficients=None):
    """Float reference of :func:`interpolate`: no rounding, no saturation, float coefficients."""
    method = _check_enum(Interpolation, method)
    values = np.asarray(values, np.float64)
    _check_weights(values, integer=False)
    mask = _check_mask(mask, values.shape)
    sent = np.where(mask, values, 0.0)
    if method == Interpolation.ZERO:
        return sent
    stack = sent.reshape(planes(values.shape))
    m = mask.reshape(stack.shape)
    if method == Interpolation.LINEAR:
        terms, offsets = linear_terms(mask)
        guess = sum(t * _shifted(stack, dy, dx) for t, (dy, dx) in zip(terms, offsets))
    else:
        coefficients, _ = _check_predictor(coefficients, None, integer=False)
        guess = sum(c * _shifted(stack, dy, dx) for c, (dy, dx) in zip(coefficients, LEARNED_OFFSETS))
    return np.where(m, stack, guess).reshape(values.shape)


def predictor_features(values, mask):
    """``[N, 8]`` float features (sent neighbours, 0 otherwise) of every entry, in flat order."""
    stack = np.where(np.asarray(mask, bool), np.asarray(values, np.float64), 0.0).reshape(planes(np.shape(values)))
    return np.stack([_shifted(stack, dy, dx).ravel() for dy, dx in LEARNED_OFFSETS], axis=1)


def fit_predictor(values_list, mask_list, *, ridge=1e-6):
    """Least-squares float coefficients predicting the dropped entries from their sent neighbours.

    ``values_list`` / ``mask_list``: one tensor or a list (e.g. every layer of a model).
    Minimises ``Σ_dropped (w − Σ_j c_j v_j)²`` (plus ``ridge·|c|²·scale``).
    """
    if isinstance(values_list, np.ndarray):
        values_list, mask_list = [values_list], [mask_list]
    features, targets = [], []
    for values, mask in zip(values_list, mask_list):
        mask = np.asarray(mask, bool)
        dropped = ~mask.ravel()
        features.append(predictor_features(values, mask)[dropped])
        targets.append(np.asarray(values, np.float64).ravel()[dropped])
    a, b = np.concatenate(features), np.concatenate(targets)
    gram = a.T @ a
    gram += ridge * (np.trace(gram) / PREDICTOR_TAPS + 1.0) * np.eye(PREDICTOR_TAPS)
    return np.linalg.solve(gram, a.T @ b)


def quantise_predictor(coefficients):
    """``(int8 coefficients, shift)``: ``round(c · 2^s)`` with the largest ``s`` in 0 … 15 that fits [−127, 127]."""
    coefficients = np.asarray(coefficients, np.float64)
    for shift in range(15, -1, -1):
        q = np.floor(coefficients * (1 << shift) + 0.5)
        if np.abs(q).max() <= VALUE_MAX:
            return q.astype(np.int8), shift
    return np.clip(np.floor(coefficients + 0.5), -VALUE_MAX, VALUE_MAX).astype(np.int8), 0


def reconstruct(stream):
    """The tensor a receiver rebuilds from a parsed :class:`~dynsparse.golden.weightstream.WeightStream` (int64)."""
    return interpolate(stream.values, stream.mask, stream.header.interpolation,
                       coefficients=stream.coefficients, shift=stream.shift)
