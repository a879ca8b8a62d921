"""Sampled-offset sparse heads (seed 004, host side): sampling, training, ranking, resampling, export.

A *head* reads ``k`` inputs at offsets drawn from a distribution ``D`` within
``[-n, n]`` around its output position and has one weight per input. On the
sparse-tap engine a head is one tap list, the same at every position: a layer
of ``H`` heads is a :class:`~dynsparse.hdl.sparseconv.SparseConv` with
``C_out = H`` and a ``K × K`` window, ``K = 2n + 1``.

Geometry (:class:`HeadSpace`)
-----------------------------

* 1-D (sequences): input ``[C, L]``; a tap is ``(c, o)`` with ``o`` in
  ``[-n, n]``; head ``h`` at position ``p`` computes
  ``y_h[p] = b_h + Σ_i w_i · x[c_i, p + o_i]``.
* 2-D (images): input ``[C, H, W]``; a tap is ``(c, oy, ox)``,
  ``y_h[p, q] = b_h + Σ_i w_i · x[c_i, p + oy_i, q + ox_i]``.
* Inputs outside the sequence or image read 0 (zero padding, as the engine's
  ``pad_mode = ZERO``, which skips those taps).
* Every position of the input is an output position (stride 1, "same" size).

A tap's flat index in the candidate grid of ``F = C · (2n + 1)^dims`` entries
is ``c · (2n+1)^dims + (oy + n) · (2n+1) + (ox + n)`` (``oy`` absent in 1-D);
a layer's architecture is a boolean *mask* ``[H, F]``.

Distributions
-------------

* ``D`` (:class:`OffsetDistribution`), per axis, on the integers of
  ``[-n, n]``: the continuous density evaluated at each integer, truncated to
  ``[-n, n]`` and renormalised. ``normal`` (``σ = scale``), ``student-t``
  (``ν = dof``, scale), ``uniform``, and ``gennorm``, ``exp(−|o/σ|^β)``
  (``β = shape``: 2 is normal, 1 Laplace, large β approaches uniform), the
  family :func:`fit_offsets` fits to the best heads. In 2-D the two axes are
  drawn independently from the same ``D``; the channel from its own
  categorical distribution (uniform by default).
* ``E`` (:class:`TapCount`) for ``k``: ``constant``; ``poisson``,
  ``k = 1 + Poisson(mean − 1)``; ``uniform`` on ``[low, high]``; always
  clipped to ``[1, F]``.
* A head's ``k`` taps are distinct: they are drawn without replacement from
  the grid with probability ``p_c(c) · p_D(oy) · p_D(ox)``
  (:meth:`TapDistribution.sample`).

Model
-----

``heads → ReLU → mean over positions → linear classifier → softmax``,
trained with Adam on cross entropy (NumPy, float64). The sampled layer is a
dense layer on the candidate grid (:func:`patches`) whose weights outside the
mask are held at 0 (their gradients are masked), so training costs the same
for every ``k``; the engine's cost is ``k`` per head.

Ranking and resampling (:func:`rank_heads`, :func:`resample`)
-------------------------------------------------------------

With ``g_h`` a head's pooled activation over the training set:

* *entropy*: of ``g_h``'s histogram over 16 equal bins between its minimum and
  maximum, in bits (0 for a head whose output never changes, 4 at most);
* *independence*: ``1 − max_{j≠h} |corr(g_h, g_j)|``;
* *outgoing*: ``‖out[:, h]‖₂ · std(g_h)``, the spread the head gives the
  logits, normalised by its largest value over the layer;
* score ``= (entropy / 4) · independence · outgoing − cost · k_h / k_max``:
  the compute-cost term prefers fewer connections.

A resampling step drops, of every pair with ``|corr| ≥ similarity``, the
lower-scoring head, then the lowest-scoring heads up to ``drop`` of the layer
(dead heads, zero entropy, always), and draws as many new heads from the
``initial`` distribution, the empirical distribution of the ``best`` heads (a
quarter of the layer, add-one smoothed), or a ``fitted`` ``gennorm`` with the
best heads' channel frequencies. New heads start with He-initialised
weights and zero outgoing weights, so the classifier starts without them.
With ``prune > 0`` the step also removes, in every kept head, the taps whose
``|w|`` is below ``prune · max |w|`` of the head (one tap always stays).

Integer model (:func:`quantise`, :func:`forward_int`)
-------------------------------------------------------

Input codes ``x`` (int8 peptide codes with scale 1/127, or uint8 pixel codes)
of scale ``s_x``. Head weights int8 symmetric per layer, ``s_w = max|w|/127``;
biases in accumulator units; per layer requantisation ``M``, ``S``
(:func:`~dynsparse.golden.sparseconv.requantize`) to activations of scale
``s_a``; ReLU; the sum (not the mean) over positions; classifier weights int8
(``s_o``) and bias in logit units ``s_a · s_o / positions``::

    acc[h, p] = Σ_i w[h, i] · x[c_i, p + o_i] + bias[h]         (int64, exact)
    a[h, p]   = max(0, clamp((acc · M + 2^(S−1)) >> S, −128, 127))
    g[h]      = Σ_p a[h, p]
    logit[j]  = Σ_h out[j, h] · g[h] + out_b[j]                  class = argmax

``acc − bias`` is exactly what :func:`~dynsparse.golden.sparseconv.sparse_conv`
gives for :func:`tap_lists` (the engine's tap lists, ``K = 2n + 1``, dy = n in
1-D on a one-row frame), which the tests check.
"""

import argparse
import dataclasses
import json
import math
import os
import sys
import time

import numpy as np

from .masklearn import _check_float
from .sparseconv import TapLists, _check_int, requantize
from .spn import choose_multiplier
from .weighttrain import _Adam, _single_thread

__all__ = [
    "OffsetDistribution", "TapCount", "HeadSpace", "TapDistribution", "ResamplePolicy",
    "fit_offsets", "patches", "init_params", "forward", "loss_and_gradients", "accuracy",
    "train", "rank_heads", "resample", "prune_taps", "quantise", "check_export", "forward_int",
    "head_taps", "tap_lists", "sequence_heads", "load_task", "TASKS", "k_sweep", "find_a", "main",
]

OFFSET_KINDS = ("normal", "student-t", "uniform", "gennorm")
TAP_COUNT_KINDS = ("constant", "poisson", "uniform")
SOURCES = ("initial", "best", "fitted")
ENTROPY_BINS = 16
REACH_MAX = 7                   # K = 2n + 1 <= 15, the engine's largest window
EXPORT_VERSION = 1


def _check_kind(name, value, kinds):
    if value not in kinds:
        raise ValueError(f"{name} must be one of {', '.join(kinds)}, not {value!r}")
    return value


# --- distributions ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class OffsetDistribution:
    """``D``: a distribution of one offset axis on the integers of ``[-n, n]``.

    Members
    -------
    kind : str
        ``normal``, ``student-t``, ``uniform`` or ``gennorm``.
    scale : float
        ``σ`` (normal, gennorm) or the scale (student-t), > 0; unused by uniform.
    dof : float
        Degrees of freedom ``ν`` of student-t, > 0.
    shape : float
        ``β`` of gennorm, in [0.1, 50].
    """
    kind: str = "normal"
    scale: float = 2.0
    dof: float = 3.0
    shape: float = 2.0

    def __post_init__(self):
        _check_kind("offset distribution", self.kind, OFFSET_KINDS)
        _check_float("offset scale", self.scale, 1e-3, 1e3)
        _check_float("degrees of freedom", self.dof, 1e-2, 1e3)
        _check_float("gennorm shape", self.shape, 0.1, 50.0)

    def pmf(self, reach):
        """Probabilities of the offsets ``-n … n`` (float ``[2n + 1]``)."""
        _check_int("reach n", reach, 0, REACH_MAX)
        o = np.arange(-reach, reach + 1, dtype=np.float64)
        if self.kind == "normal":
            w = np.exp(-0.5 * (o / self.scale) ** 2)
        elif self.kind == "student-t":
            w = (1.0 + (o / self.scale) ** 2 / self.dof) ** (-(self.dof + 1) / 2)
        elif self.kind == "gennorm":
            w = np.exp(-np.abs(o / self.scale) ** self.shape)
        else:
            w = np.ones_like(o)
        w = np.maximum(w, 1e-300)
        return w / w.sum()

    def describe(self):
        if self.kind == "normal":
            return f"normal σ={self.scale:g}"
        if self.kind == "student-t":
            return f"student-t ν={self.dof:g} s={self.scale:g}"
        if self.kind == "gennorm":
            return f"gennorm σ={self.scale:.3g} β={self.shape:.3g}"
        return "uniform"


@dataclasses.dataclass(frozen=True)
class TapCount:
    """``E``: the distribution of a head's tap count ``k``.

    ``constant`` (``k``), ``poisson`` (``1 + Poisson(k − 1)``, mean ``k``) or
    ``uniform`` on ``[k, high]``; draws are clipped to ``[1, F]``.
    """
    kind: str = "constant"
    k: float = 4
    high: int = None

    def __post_init__(self):
        _check_kind("tap-count distribution", self.kind, TAP_COUNT_KINDS)
        if self.kind == "poisson":
            _check_float("mean tap count", self.k, 1.0, 1e4)
        else:
            _check_int("tap count k", self.k, 1)
        if self.kind == "uniform":
            _check_int("largest tap count", self.high, int(self.k))
        elif self.high is not None:
            raise ValueError(f"only a uniform tap count has a largest value, not {self.high!r}")

    def sample(self, rng, size, limit):
        if self.kind == "constant":
            k = np.full(size, int(self.k))
        elif self.kind == "poisson":
            k = 1 + rng.poisson(self.k - 1.0, size)
        else:
            k = rng.integers(int(self.k), self.high + 1, size)
        return np.clip(k, 1, limit).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class HeadSpace:
    """Where a head's taps may sit: ``dims`` (1 or 2), input ``channels`` and reach ``n``."""
    dims: int
    channels: int
    reach: int

    def __post_init__(self):
        _check_int("offset dimensions", self.dims, 1, 2)
        _check_int("input channel count", self.channels, 1, 64)
        _check_int("reach n", self.reach, 0, REACH_MAX)

    @property
    def side(self):
        """``2n + 1``: the window size ``K`` a head of this space needs on the engine."""
        return 2 * self.reach + 1

    @property
    def candidates(self):
        """``F``: the taps a head may choose from."""
        return self.channels * self.side ** self.dims

    def coordinates(self, index=None):
        """``(c, oy, ox)`` int arrays of the flat indices (all ``F`` by default); ``oy = 0`` in 1-D."""
        index = np.arange(self.candidates) if index is None else np.asarray(index)
        n, s = self.reach, self.side
        if self.dims == 1:
            return index // s, np.zeros_like(index), index % s - n
        return index // (s * s), (index // s) % s - n, index % s - n

    def index(self, c, oy, ox):
        """Flat index of taps ``(c, oy, ox)``; offsets outside ``[-n, n]`` raise ``ValueError``."""
        c, oy, ox = (np.asarray(v, dtype=np.int64) for v in (c, oy, ox))
        n = self.reach
        if ((c < 0) | (c >= self.channels)).any():
            raise ValueError(f"a tap's channel lies outside [0, {self.channels - 1}]")
        for name, o in (("row offset", oy), ("offset", ox)):
            if ((o < -n) | (o > n)).any():
                raise ValueError(f"a tap's {name} lies outside [-{n}, {n}]")
        if self.dims == 1:
            if (oy != 0).any():
                raise ValueError("a 1-D head's taps have row offset 0")
            return c * self.side + ox + n
        return c * self.side ** 2 + (oy + n) * self.side + ox + n


@dataclasses.dataclass
class TapDistribution:
    """Per-axis probabilities of a tap: ``channel [C]``, ``row [2n+1]`` (1-D: unused), ``col [2n+1]``."""
    space: HeadSpace
    channel: np.ndarray
    row: np.ndarray
    col: np.ndarray
    label: str = ""

    @classmethod
    def from_offsets(cls, space, offsets, channel=None):
        """``offsets`` (an :class:`OffsetDistribution`) on both axes, channels uniform unless given."""
        if not isinstance(offsets, OffsetDistribution):
            raise TypeError(f"offsets must be an OffsetDistribution, not {offsets!r}")
        p = offsets.pmf(space.reach)
        channel = np.full(space.channels, 1.0 / space.channels) if channel is None else channel
        return cls(space, np.asarray(channel, np.float64), p, p, offsets.describe())

    @classmethod
    def empirical(cls, space, mask, smoothing=1.0):
        """Frequencies of the taps of the heads in ``mask [H, F]``, add-``smoothing`` per value."""
        c, oy, ox = space.coordinates(np.nonzero(np.asarray(mask, bool))[1])
        n, s = space.reach, space.side

        def freq(values, size):
            counts = np.bincount(values, minlength=size) + smoothing
            return counts / counts.sum()

        if space.dims == 1:
            return cls(space, freq(c, space.channels), np.ones(1), freq(ox + n, s), "best heads")
        both = np.concatenate([oy, ox]) + n
        p = freq(both, s)
        return cls(space, freq(c, space.channels), p, p, "best heads")

    @classmethod
    def fitted(cls, space, mask):
        """A ``gennorm`` fitted to the offsets of the heads in ``mask`` (:func:`fit_offsets`),
        with their channel frequencies."""
        c, oy, ox = space.coordinates(np.nonzero(np.asarray(mask, bool))[1])
        offsets = ox if space.dims == 1 else np.concatenate([oy, ox])
        dist = fit_offsets(offsets, space.reach)
        channel = np.bincount(c, minlength=space.channels) + 1.0
        return cls.from_offsets(space, dist, channel / channel.sum())

    def grid(self):
        """Probability of every candidate tap (float ``[F]``)."""
        if self.space.dims == 1:
            p = self.channel[:, None] * self.col[None, :]
        else:
            p = self.channel[:, None, None] * self.row[None, :, None] * self.col[None, None, :]
        p = p.reshape(-1)
        return p / p.sum()

    def sample(self, rng, k):
        """Flat indices of ``k`` distinct taps."""
        p = self.grid()
        k = _check_int("tap count k", int(k), 1, int(np.count_nonzero(p)))
        return np.sort(rng.choice(p.size, size=k, replace=False, p=p))

    def sample_mask(self, rng, heads, taps=TapCount()):
        """Mask ``[heads, F]`` of ``heads`` heads with ``k ~ taps`` each."""
        _check_int("head count", heads, 1)
        mask = np.zeros((heads, self.space.candidates), bool)
        for h, k in enumerate(taps.sample(rng, heads, np.count_nonzero(self.grid()))):
            mask[h, self.sample(rng, k)] = True
        return mask


def fit_offsets(offsets, reach):
    """Maximum-likelihood ``gennorm`` (``σ``, ``β`` on a grid) for integer ``offsets`` in ``[-n, n]``."""
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
    _check_int("reach n", reach, 0, REACH_MAX)
    if offsets.size == 0:
        raise ValueError("fitting needs at least one offset")
    if (np.abs(offsets) > reach).any():
        raise ValueError(f"offsets must lie in [-{reach}, {reach}]")
    counts = np.bincount(offsets + reach, minlength=2 * reach + 1)
    best = None
    for shape in (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 10.0):
        for scale in np.geomspace(0.25, 4.0 * max(reach, 1), 48):
            dist = OffsetDistribution("gennorm", scale=float(scale), shape=shape)
            ll = float(counts @ np.log(dist.pmf(reach)))
            if best is None or ll > best[0] + 1e-12:
                best = (ll, dist)
    return best[1]


# --- the model -------------------------------------------------------------------------------------

def patches(x, space):
    """Every candidate tap's input at every position: float ``[N, F, positions]``, zero padding.

    ``x`` is ``[N, C, L]`` (1-D) or ``[N, C, H, W]`` (2-D).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != space.dims + 2 or x.shape[1] != space.channels:
        raise ValueError(f"inputs must have shape [N, {space.channels}, "
                         f"{'L' if space.dims == 1 else 'H, W'}], not {list(x.shape)}")
    n = space.reach
    c, oy, ox = space.coordinates()
    if space.dims == 1:
        length = x.shape[2]
        padded = np.pad(x, ((0, 0), (0, 0), (n, n)))
        out = np.stack([padded[:, ci, n + o:n + o + length] for ci, o in zip(c, ox)], axis=1)
        return out
    height, width = x.shape[2:]
    padded = np.pad(x, ((0, 0), (0, 0), (n, n), (n, n)))
    out = np.stack([padded[:, ci, n + dy:n + dy + height, n + dx:n + dx + width]
                    for ci, dy, dx in zip(c, oy, ox)], axis=1)
    return out.reshape(x.shape[0], space.candidates, height * width)


def init_params(mask, classes, *, seed=0):
    """He-initialised head weights on ``mask [H, F]``, zero biases, a random classifier."""
    mask = np.asarray(mask, bool)
    _check_int("class count", classes, 2)
    rng = np.random.default_rng(seed)
    k = np.maximum(mask.sum(axis=1, keepdims=True), 1)
    heads = mask.shape[0]
    return {
        "w": rng.normal(0.0, 1.0, mask.shape) * np.sqrt(2.0 / k) * mask,
        "b": np.zeros(heads),
        "out": rng.normal(0.0, math.sqrt(1.0 / heads), (classes, heads)),
        "out_b": np.zeros(classes),
    }


def _head_outputs(w, b, P):
    # [N, F, P] -> [N, H, P]
    return np.einsum("hf,nfp->nhp", w, P, optimize=True) + b[None, :, None]


def forward(params, mask, P):
    """``(logits [N, classes], pooled [N, H], pre-activations [N, H, P])`` of patches ``P``."""
    y = _head_outputs(params["w"] * mask, params["b"], P)
    a = np.maximum(y, 0.0)
    g = a.mean(axis=2)
    return g @ params["out"].T + params["out_b"], g, y


def _softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def loss_and_gradients(params, mask, P, y, *, l2=1e-4):
    """Mean cross entropy (plus ``l2 · Σ w²`` of the head and classifier weights) and its gradients."""
    logits, g, pre = forward(params, mask, P)
    prob = _softmax(logits)
    n = len(y)
    loss = -np.mean(np.log(prob[np.arange(n), y] + 1e-300))
    loss += l2 * (np.sum((params["w"] * mask) ** 2) + np.sum(params["out"] ** 2))
    d_logits = prob.copy()
    d_logits[np.arange(n), y] -= 1.0
    d_logits /= n
    grads = {"out": d_logits.T @ g + 2 * l2 * params["out"], "out_b": d_logits.sum(axis=0)}
    d_g = d_logits @ params["out"]                                   # [N, H]
    d_y = (d_g[:, :, None] / pre.shape[2]) * (pre > 0)              # [N, H, P]
    grads["w"] = (np.einsum("nhp,nfp->hf", d_y, P, optimize=True) + 2 * l2 * params["w"]) * mask
    grads["b"] = d_y.sum(axis=(0, 2))
    return float(loss), grads


def accuracy(logits, y):
    """Fraction of samples whose largest logit is their class."""
    return float(np.mean(np.argmax(logits, axis=1) == np.asarray(y)))


# --- ranking and resampling ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ResamplePolicy:
    """When and how :func:`train` resamples heads.

    Members
    -------
    every : int
        Epochs between resampling steps (>= 1).
    until : float
        Resample only in the first ``until`` of the epochs (in (0, 1]), then fine-tune.
    drop : float
        Fraction of the heads dropped by score per step (in [0, 1)); dead heads always go.
    similarity : float
        ``|corr|`` at or above which two heads count as similar (in (0, 1]).
    source : str
        ``initial``, ``best`` or ``fitted``: where new heads are drawn from.
    cost : float
        Weight of the compute-cost term ``k_h / k_max`` in the score (>= 0).
    prune : float
        Remove taps with ``|w| < prune · max|w|`` of their head (in [0, 1)).
    """
    every: int = 5
    until: float = 0.6
    drop: float = 0.25
    similarity: float = 0.95
    source: str = "best"
    cost: float = 0.0
    prune: float = 0.0

    def __post_init__(self):
        _check_int("resampling interval", self.every, 1)
        _check_float("resampling span", self.until, 1e-9, 1.0)
        _check_float("drop fraction", self.drop, 0.0, 0.999)
        _check_float("similarity threshold", self.similarity, 1e-9, 1.0)
        _check_kind("resampling source", self.source, SOURCES)
        _check_float("cost weight", self.cost, 0.0)
        _check_float("prune fraction", self.prune, 0.0, 0.999)


def rank_heads(params, mask, P, *, cost=0.0):
    """Scores of every head on patches ``P`` (module docstring): a dict of float ``[H]`` arrays
    ``entropy``, ``independence``, ``outgoing``, ``taps`` and ``score``, and ``correlation [H, H]``."""
    _, g, _ = forward(params, mask, P)
    heads = g.shape[1]
    entropy = np.zeros(heads)
    for h in range(heads):
        low, high = g[:, h].min(), g[:, h].max()
        if high - low <= 1e-12 * max(1.0, abs(high)):
            continue
        counts, _ = np.histogram(g[:, h], bins=ENTROPY_BINS, range=(low, high))
        p = counts[counts > 0] / counts.sum()
        entropy[h] = float(-(p * np.log2(p)).sum())
    std = g.std(axis=0)
    live = std > 1e-12
    corr = np.zeros((heads, heads))
    if live.sum() > 1:
        corr[np.ix_(live, live)] = np.corrcoef(g[:, live].T)
    np.fill_diagonal(corr, 0.0)
    independence = 1.0 - np.abs(corr).max(axis=1) if heads > 1 else np.ones(heads)
    independence[~live] = 0.0
    outgoing = np.linalg.norm(params["out"], axis=0) * std
    outgoing = outgoing / outgoing.max() if outgoing.max() > 0 else outgoing
    taps = mask.sum(axis=1).astype(np.float64)
    score = (entropy / math.log2(ENTROPY_BINS)) * independence * outgoing - cost * taps / max(taps.max(), 1)
    return {"entropy": entropy, "independence": independence, "outgoing": outgoing, "taps": taps,
            "score": score, "correlation": corr}


def prune_taps(params, mask, fraction):
    """Mask without the taps whose ``|w|`` is below ``fraction · max|w|`` of their head (one tap stays)."""
    fraction = _check_float("prune fraction", fraction, 0.0, 0.999)
    w = np.abs(params["w"]) * mask
    keep = mask & (w >= fraction * w.max(axis=1, keepdims=True))
    keep[np.arange(mask.shape[0]), np.argmax(w, axis=1)] |= mask.any(axis=1)
    return keep


def resample(params, mask, ranking, policy, *, initial, taps, rng):
    """One resampling step (module docstring): ``(params, mask, info)`` with the new heads in place.

    ``initial`` is the :class:`TapDistribution` the layer was drawn from and
    ``taps`` its :class:`TapCount`; ``info`` names the dropped heads and why.
    """
    params = {name: value.copy() for name, value in params.items()}
    mask = mask.copy()
    heads = mask.shape[0]
    score = ranking["score"]
    corr = np.abs(ranking["correlation"])
    dropped = {}
    for h in np.flatnonzero(ranking["entropy"] == 0):
        dropped[int(h)] = "dead"
    for i in range(heads):
        for j in range(i + 1, heads):
            if corr[i, j] >= policy.similarity and i not in dropped and j not in dropped:
                loser = i if score[i] < score[j] else j
                dropped[int(loser)] = "similar"
    quota = int(math.floor(policy.drop * heads))
    for h in np.argsort(score, kind="stable"):
        if len(dropped) >= quota:
            break
        dropped.setdefault(int(h), "low score")
    keep = np.array([h not in dropped for h in range(heads)])
    if policy.prune:
        mask[keep] = prune_taps(params, mask, policy.prune)[keep]
        params["w"] *= mask
    if dropped:
        order = [h for h in np.argsort(-score, kind="stable") if keep[h]]
        best = order[:max(1, heads // 4)] if order else list(range(heads))
        if policy.source == "initial":
            source = initial
        elif policy.source == "best":
            source = TapDistribution.empirical(initial.space, mask[best])
        else:
            source = TapDistribution.fitted(initial.space, mask[best])
        new = np.array(sorted(dropped))
        fresh = source.sample_mask(rng, len(new), taps)
        mask[new] = fresh
        k = np.maximum(fresh.sum(axis=1, keepdims=True), 1)
        params["w"][new] = rng.normal(0.0, 1.0, fresh.shape) * np.sqrt(2.0 / k) * fresh
        params["b"][new] = 0.0
        params["out"][:, new] = 0.0
    return params, mask, {"dropped": dropped, "connections": int(mask.sum())}


@_single_thread
def train(P, y, mask, classes, *, seed=0, epochs=40, batch=64, lr=1e-2, l2=1e-4, policy=None,
          initial=None, taps=None, progress=None):
    """Train on patches ``P [N, F, positions]`` and labels ``y``: ``(params, mask, history)``.

    With a :class:`ResamplePolicy` (and the ``initial`` :class:`TapDistribution`
    and :class:`TapCount` the mask came from), heads are ranked on the
    training set and resampled every ``policy.every`` epochs in the first
    ``policy.until`` of training. ``history`` has a row per epoch (loss,
    connections, dropped heads).
    """
    _check_int("epoch count", epochs, 1)
    _check_int("batch size", batch, 1)
    mask = np.asarray(mask, bool).copy()
    y = np.asarray(y, dtype=np.int64)
    if P.shape[1] != mask.shape[1]:
        raise ValueError(f"patches have {P.shape[1]} candidate taps, the mask {mask.shape[1]}")
    if policy is not None and (initial is None or taps is None):
        raise ValueError("resampling needs the initial tap distribution and tap count")
    params = init_params(mask, classes, seed=seed)
    rng = np.random.default_rng(seed + 1)
    adam = _Adam(lr)
    history = []
    for epoch in range(epochs):
        order = rng.permutation(len(y))
        total = 0.0
        for start in range(0, len(y), batch):
            idx = order[start:start + batch]
            loss, grads = loss_and_gradients(params, mask, P[idx], y[idx], l2=l2)
            adam.step(params, grads)
            total += loss * len(idx)
        row = {"epoch": epoch + 1, "loss": total / len(y), "connections": int(mask.sum())}
        if (policy is not None and (epoch + 1) % policy.every == 0
                and epoch + 1 <= policy.until * epochs and epoch + 1 < epochs):
            ranking = rank_heads(params, mask, P, cost=policy.cost)
            params, mask, info = resample(params, mask, ranking, policy, initial=initial, taps=taps, rng=rng)
            for name in ("w", "b", "out"):           # a new head's moments start afresh
                if name in adam.m:
                    adam.m[name] = adam.m[name] * (mask if name == "w" else 1)
            row.update(dropped=info["dropped"], connections=info["connections"])
        history.append(row)
        if progress:
            progress(row)
    return params, mask, history


# --- int8 export and the integer model -------------------------------------------------------------

def quantise(params, mask, space, x_codes, *, input_scale, percentile=99.9):
    """The int8 layer and classifier (module docstring) calibrated on input codes ``x_codes``.

    Returns a dict: ``version``, ``dims``, ``channels``, ``reach``, ``count [H]``,
    ``ci``, ``oy``, ``ox``, ``weight [H, k_max]`` (compacted, valid below
    ``count``), ``bias [H]``, ``multiplier``, ``shift``, ``out [classes, H]``,
    ``out_b [classes]`` and ``positions``.
    """
    input_scale = _check_float("input scale", input_scale, 1e-12)
    mask = np.asarray(mask, bool)
    x_codes = np.asarray(x_codes)
    w = params["w"] * mask
    s_w = float(np.abs(w).max()) / 127 or 1.0
    w_int = np.clip(np.floor(w / s_w + 0.5), -127, 127).astype(np.int64) * mask
    s_acc = input_scale * s_w
    bias = np.floor(params["b"] / s_acc + 0.5).astype(np.int64)
    pre = _head_outputs(w, params["b"], patches(x_codes * input_scale, space))
    top = float(np.percentile(np.maximum(pre, 0.0), percentile)) or 1.0
    s_a = top / 127
    multiplier, shift = choose_multiplier(s_acc / s_a)
    positions = int(np.prod(x_codes.shape[2:]))
    s_o = float(np.abs(params["out"]).max()) / 127 or 1.0
    out = np.clip(np.floor(params["out"] / s_o + 0.5), -127, 127).astype(np.int64)
    out_b = np.floor(params["out_b"] / (s_a * s_o / positions) + 0.5).astype(np.int64)
    heads = mask.shape[0]
    count = mask.sum(axis=1)
    width = max(1, int(count.max()))
    ci, oy, ox, weight = (np.zeros((heads, width), np.int64) for _ in range(4))
    for h in range(heads):
        index = np.flatnonzero(mask[h])
        c, dy, dx = space.coordinates(index)
        k = len(index)
        ci[h, :k], oy[h, :k], ox[h, :k], weight[h, :k] = c, dy, dx, w_int[h, index]
    return {"version": EXPORT_VERSION, "dims": space.dims, "channels": space.channels, "reach": space.reach,
            "count": count.astype(np.int64), "ci": ci, "oy": oy, "ox": ox, "weight": weight,
            "bias": bias, "multiplier": multiplier, "shift": shift, "out": out, "out_b": out_b,
            "positions": positions, "scales": {"input": input_scale, "weight": s_w, "activation": s_a,
                                               "out": s_o}}


def check_export(export):
    """``export`` checked (types, ranges, offsets within the reach) as a :class:`HeadSpace` and the export."""
    if not isinstance(export, dict):
        raise TypeError(f"a head export must be a dict, not {type(export).__name__}")
    for name in ("version", "dims", "channels", "reach", "count", "ci", "oy", "ox", "weight", "bias",
                 "multiplier", "shift", "out", "out_b", "positions"):
        if name not in export:
            raise ValueError(f"a head export needs the field {name!r}")
    if int(export["version"]) != EXPORT_VERSION:
        raise ValueError(f"head export version must be {EXPORT_VERSION}, not {export['version']!r}")
    space = HeadSpace(int(export["dims"]), int(export["channels"]), int(export["reach"]))
    count = np.asarray(export["count"])
    heads = count.shape[0] if count.ndim == 1 else -1
    if heads < 1:
        raise ValueError(f"count must be a 1-D array of the heads' tap counts, not shape {count.shape}")
    arrays = {name: np.asarray(export[name]) for name in ("ci", "oy", "ox", "weight")}
    for name, value in arrays.items():
        if value.ndim != 2 or value.shape[0] != heads:
            raise ValueError(f"{name} must have shape [{heads}, k_max], not {list(value.shape)}")
    k_max = arrays["weight"].shape[1]
    if ((count < 0) | (count > k_max)).any():
        raise ValueError(f"every head's tap count must lie in [0, {k_max}]")
    valid = np.arange(k_max)[None, :] < count[:, None]
    if (np.abs(arrays["weight"][valid]) > 127).any():
        raise ValueError("tap weights must lie in [-127, 127]")
    index = space.index(arrays["ci"][valid], arrays["oy"][valid], arrays["ox"][valid])
    rows = np.repeat(np.arange(heads), count)
    if len(np.unique(rows * space.candidates + index)) != len(index):
        raise ValueError("a head lists the same tap twice")
    if np.asarray(export["out"]).shape[1:] != (heads,):
        raise ValueError(f"out must have shape [classes, {heads}]")
    if np.asarray(export["bias"]).shape != (heads,):
        raise ValueError(f"bias must have shape [{heads}]")
    return space


def head_taps(export):
    """Flat candidate indices and weights: ``(mask [H, F] bool, weights [H, F] int64)``."""
    space = check_export(export)
    heads, k_max = np.asarray(export["weight"]).shape
    mask = np.zeros((heads, space.candidates), bool)
    weights = np.zeros((heads, space.candidates), np.int64)
    for h in range(heads):
        k = int(export["count"][h])
        index = space.index(export["ci"][h, :k], export["oy"][h, :k], export["ox"][h, :k])
        mask[h, index] = True
        weights[h, index] = export["weight"][h, :k]
    return mask, weights


def head_accumulators(export, x_codes):
    """``acc − bias``: int64 ``[N, H, positions]`` of input codes ``x_codes``."""
    space = check_export(export)
    _, weights = head_taps(export)
    P = patches(np.asarray(x_codes, np.int64), space).astype(np.int64)
    return np.einsum("hf,nfp->nhp", weights, P)


def forward_int(export, x_codes):
    """``(logits [N, classes], activations [N, H, positions])`` of the integer model, int64."""
    acc = head_accumulators(export, x_codes) + np.asarray(export["bias"], np.int64)[None, :, None]
    a = np.maximum(requantize(acc, multiplier=int(export["multiplier"]),
                              shift=int(export["shift"])).astype(np.int64), 0)
    g = a.sum(axis=2)
    return g @ np.asarray(export["out"], np.int64).T + np.asarray(export["out_b"], np.int64), a


def tap_lists(export, *, height, width):
    """The engine's tap lists (:class:`~dynsparse.golden.sparseconv.TapLists`, ``[height, width, H]``,
    window ``K = 2n + 1``): a head's list is the same at every position; 1-D heads read row ``n``."""
    space = check_export(export)
    n = space.reach
    heads, k_max = np.asarray(export["weight"]).shape
    shape = (height, width, heads)
    full = lambda v: np.broadcast_to(np.asarray(v, np.int64), (*shape, k_max)).copy()
    count = np.asarray(export["count"], np.int64)
    valid = np.arange(k_max)[None, :] < count[:, None]
    return TapLists(count=np.broadcast_to(count, shape).copy(),
                    ci=full(np.where(valid, export["ci"], 0)),
                    dy=full(np.where(valid, np.asarray(export["oy"]) + n, 0)),
                    dx=full(np.where(valid, np.asarray(export["ox"]) + n, 0)),
                    weight=full(np.where(valid, export["weight"], 0)),
                    pruned=np.zeros(shape, np.int64), zero=np.zeros(shape, np.int64))


def sequence_heads(export, sequence, *, pad_mode="zero", lanes=1):
    """The engine on one sequence in 1-D mode (``HeadLayer(sequence=True)``): ``(acc [L, H], counters)``.

    ``sequence [L, C]`` int codes; positions beyond the ends are filled by
    ``pad_mode`` along the sequence only (``zero``, ``replicate``, ``reflect``,
    as :func:`dynsparse.golden.window.windows`), and with ``zero`` skipped.
    ``acc`` excludes the bias, as :func:`~dynsparse.golden.sparseconv.sparse_conv`;
    ``counters`` has ``cycles``, ``performed``, ``padding`` and ``active [L, H]``.
    """
    from .sparseconv import cycles_per_position, sparse_conv
    space = check_export(export)
    if space.dims != 1:
        raise ValueError("sequence mode runs 1-D heads, not 2-D ones")
    sequence = np.asarray(sequence)
    if sequence.ndim != 2 or sequence.shape[1] != space.channels:
        raise ValueError(f"a sequence must have shape [L, {space.channels}], not {list(sequence.shape)}")
    n, length = space.reach, sequence.shape[0]
    # the sequence in the middle row of 2n+1 identical rows: 1-D taps (dy = n) read only the middle row,
    # padded along the sequence exactly as a 1-D window
    frame = np.repeat(sequence[None], 2 * n + 1, axis=0)
    lists = tap_lists(export, height=2 * n + 1, width=length)
    acc, counters = sparse_conv(frame, lists, kernel_size=space.side, pad_mode=pad_mode, lanes=lanes)
    active = counters["active"][n]
    listed = int(np.asarray(export["count"]).sum()) * length
    return acc[n], {"cycles": int(cycles_per_position(active, lanes=lanes).sum()),
                    "performed": int(active.sum()), "padding": listed - int(active.sum()), "active": active}


# --- tasks and the k sweep -------------------------------------------------------------------------

TASKS = {
    "acp":    "ACP_CancPPD_vs_Random peptides (modlamp): 8 property channels × 48 positions, 1-D, 2 classes",
    "amp":    "AMPvsTMset peptides (modlamp): 8 property channels × 48 positions, 1-D, 2 classes",
    "digits": "scikit-learn digits: 8 × 8 images of codes 0 … 16, 2-D, 10 classes",
}
_PEPTIDE_SETS = {"acp": "ACPvsRandom", "amp": "AMPvsTM"}


def load_task(name, *, seed=0):
    """``(x_train, y_train, x_test, y_test, dims, channels, input_scale)``: integer input codes."""
    _check_kind("task", name, tuple(TASKS))
    if name in _PEPTIDE_SETS:
        from .spn import encode, load_dataset, split
        sequences, labels, _ = load_dataset(_PEPTIDE_SETS[name])
        x = encode(sequences, length=48).astype(np.int64)          # [N, 8, 48]
        labels = np.asarray(labels, np.int64)
        train_idx, test_idx = split(labels, seed=seed)
        return x[train_idx], labels[train_idx], x[test_idx], labels[test_idx], 1, x.shape[1], 1 / 127
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = digits.images.astype(np.int64)[:, None]                     # [N, 1, 8, 8], codes 0 … 16
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    test, train_idx = order[:450], order[450:]
    return x[train_idx], y[train_idx], x[test], y[test], 2, 1, 1 / 16


def k_sweep(task, *, reach, ks, kinds, seeds, heads=16, epochs=40, progress=None):
    """Held-out accuracy and loss of ``heads`` heads with ``k`` taps each (``E`` constant), for every
    offset distribution in ``kinds`` (:class:`OffsetDistribution`), ``k`` in ``ks`` and seed."""
    x_train, y_train, x_test, y_test, dims, channels, scale = load_task(task)
    space = HeadSpace(dims, channels, reach)
    P_train, P_test = patches(x_train * scale, space), patches(x_test * scale, space)
    classes = int(max(y_train.max(), y_test.max())) + 1
    rows = []
    for kind in kinds:
        for k in ks:
            for seed in seeds:
                start = time.perf_counter()
                rng = np.random.default_rng(1000 * seed + k)
                dist = TapDistribution.from_offsets(space, kind)
                mask = dist.sample_mask(rng, heads, TapCount("constant", k))
                params, mask, _ = train(P_train, y_train, mask, classes, seed=seed, epochs=epochs)
                logits, _, _ = forward(params, mask, P_test)
                prob = _softmax(logits)
                row = {"task": task, "distribution": kind.describe(), "k": int(k), "seed": int(seed),
                       "accuracy": accuracy(logits, y_test),
                       "loss": float(-np.mean(np.log(prob[np.arange(len(y_test)), y_test] + 1e-300))),
                       "seconds": time.perf_counter() - start}
                rows.append(row)
                if progress:
                    progress(row)
    return rows


def find_a(curve, *, ratio=0.75, chance=0.0):
    """Smallest ``k`` whose mean quality reaches ``ratio`` of the quality at the largest ``k``.

    ``curve`` maps ``k`` to a mean accuracy; with ``chance`` the ratio applies
    above chance (``(q − chance) ≥ ratio · (q_n − chance)``). Returns
    ``(a, target)``.
    """
    ks = sorted(curve)
    top = curve[ks[-1]]
    target = chance + ratio * (top - chance)
    for k in ks:
        if curve[k] >= target:
            return k, target
    return ks[-1], target


def _mean(rows, **where):
    values = [r["accuracy"] for r in rows if all(r[key] == value for key, value in where.items())]
    return float(np.mean(values)), float(np.std(values))


def _sweep_job(job):
    task, kind, k, seed, reach, heads, epochs = job
    return k_sweep(task, reach=reach, ks=(k,), kinds=(kind,), seeds=(seed,), heads=heads, epochs=epochs)[0]


def resampling_study(task, *, reach, k, offsets, policies, seeds, heads=16, epochs=40):
    """Held-out accuracy and connections with each resampling policy (``None``: no resampling)."""
    x_train, y_train, x_test, y_test, dims, channels, scale = load_task(task)
    space = HeadSpace(dims, channels, reach)
    P_train, P_test = patches(x_train * scale, space), patches(x_test * scale, space)
    classes = int(max(y_train.max(), y_test.max())) + 1
    initial = TapDistribution.from_offsets(space, offsets)
    taps = TapCount("constant", k)
    rows = []
    for name, policy in policies.items():
        for seed in seeds:
            mask = initial.sample_mask(np.random.default_rng(1000 * seed + k), heads, taps)
            params, mask, history = train(P_train, y_train, mask, classes, seed=seed, epochs=epochs,
                                          policy=policy, initial=initial, taps=taps)
            logits, _, _ = forward(params, mask, P_test)
            replaced = sum(len(row.get("dropped", {})) for row in history)
            rows.append({"task": task, "policy": name, "seed": int(seed), "accuracy": accuracy(logits, y_test),
                         "connections": int(mask.sum()), "replaced": replaced})
    return rows


def int8_study(task, *, reach, k, offsets, seeds, heads=16, epochs=40):
    """Float against int8 (:func:`quantise`, :func:`forward_int`) on the held-out split, per seed."""
    x_train, y_train, x_test, y_test, dims, channels, scale = load_task(task)
    space = HeadSpace(dims, channels, reach)
    P_train, P_test = patches(x_train * scale, space), patches(x_test * scale, space)
    classes = int(max(y_train.max(), y_test.max())) + 1
    initial = TapDistribution.from_offsets(space, offsets)
    rows = []
    for seed in seeds:
        mask = initial.sample_mask(np.random.default_rng(1000 * seed + k), heads, TapCount("constant", k))
        params, mask, _ = train(P_train, y_train, mask, classes, seed=seed, epochs=epochs)
        logits, _, _ = forward(params, mask, P_test)
        export = quantise(params, mask, space, x_train, input_scale=scale)
        logits_int, _ = forward_int(export, x_test)
        unit = export["scales"]["activation"] * export["scales"]["out"] / export["positions"]
        rows.append({"task": task, "seed": int(seed), "float": accuracy(logits, y_test),
                     "int8": accuracy(logits_int, y_test),
                     "agreement": float(np.mean(np.argmax(logits, 1) == np.argmax(logits_int, 1))),
                     "logit_error": float(np.abs(logits_int * unit - logits).max() / np.abs(logits).max())})
    return rows


#: Resampling policies of the study (:func:`resampling_study`).
STUDY_POLICIES = {
    "none": None,
    "initial": ResamplePolicy(source="initial"),
    "best": ResamplePolicy(source="best"),
    "fitted": ResamplePolicy(source="fitted"),
    "best, cost 0.1, prune 0.3": ResamplePolicy(source="best", cost=0.1, prune=0.3),
}

_CHANCE = {"acp": 0.5, "amp": 0.5, "digits": 0.1}


def study_distributions(reach):
    """The study's offset distributions ``D`` for reach ``n``."""
    half = max(reach / 2, 0.5)
    return (OffsetDistribution("normal", scale=half),
            OffsetDistribution("student-t", scale=half / 2, dof=1.5),
            OffsetDistribution("uniform"))


def format_study(results):
    """Markdown tables of a study's results."""
    lines = []
    for task in results["tasks"]:
        sweep = [r for r in results["sweep"] if r["task"] == task]
        kinds = list(dict.fromkeys(r["distribution"] for r in sweep))
        ks = sorted({r["k"] for r in sweep})
        lines += [f"### {task}: {TASKS[task]}", "",
                  f"Held-out accuracy, mean ± std over seeds {results['seeds']}, "
                  f"{results['heads']} heads, reach n = {results['reach']}, E constant.", "",
                  "| k | " + " | ".join(kinds) + " |", "|---:|" + "---:|" * len(kinds)]
        for k in ks:
            cells = [("{:.3f} ± {:.3f}".format(*_mean(sweep, distribution=d, k=k))) for d in kinds]
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
        lines += ["", "| D | l_n (k = n) | a: E[l_a] ≥ ¾ E[l_n] | a, above chance | "
                      "loss at k = 1 / k = n |", "|---|---:|---:|---:|---:|"]
        for d in kinds:
            curve = {k: _mean(sweep, distribution=d, k=k)[0] for k in ks}
            a, target = find_a(curve)
            a_c, target_c = find_a(curve, chance=_CHANCE[task])
            loss = lambda k: float(np.mean([r["loss"] for r in sweep if r["distribution"] == d and r["k"] == k]))
            lines.append(f"| {d} | {curve[ks[-1]]:.3f} | {a} (target {target:.3f}) | "
                         f"{a_c} (target {target_c:.3f}) | {loss(ks[0]):.3f} / {loss(ks[-1]):.3f} |")
        lines.append("")
        rs = [r for r in results.get("resampling", []) if r["task"] == task]
        if rs:
            lines += [f"Resampling at k = {results['resample_k']} ({results['resample_distribution']}): "
                      f"held-out accuracy and connections after training, mean over seeds.", "",
                      "| policy | accuracy | connections | heads replaced |", "|---|---:|---:|---:|"]
            for name in dict.fromkeys(r["policy"] for r in rs):
                sel = [r for r in rs if r["policy"] == name]
                lines.append(f"| {name} | {np.mean([r['accuracy'] for r in sel]):.3f} ± "
                             f"{np.std([r['accuracy'] for r in sel]):.3f} | "
                             f"{np.mean([r['connections'] for r in sel]):.1f} | "
                             f"{np.mean([r['replaced'] for r in sel]):.1f} |")
            lines.append("")
        qs = [r for r in results.get("int8", []) if r["task"] == task]
        if qs:
            mean = lambda key: float(np.mean([r[key] for r in qs]))
            lines += [f"int8 (weights symmetric per layer, requantised activations, integer classifier) against "
                      f"float at k = {results['resample_k']}, mean over seeds: accuracy float {mean('float'):.3f}, "
                      f"int8 {mean('int8'):.3f}; decisions agree on {mean('agreement'):.1%} of the held-out "
                      f"inputs; largest logit error {mean('logit_error'):.1%} of the largest float logit.", ""]
    return "\n".join(lines)


def plot_study(results, path):
    """Accuracy against k per task and distribution, with the ¾ targets and ``a`` marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tasks = results["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        sweep = [r for r in results["sweep"] if r["task"] == task]
        ks = sorted({r["k"] for r in sweep})
        for i, d in enumerate(dict.fromkeys(r["distribution"] for r in sweep)):
            stats = np.array([_mean(sweep, distribution=d, k=k) for k in ks])
            line, = ax.plot(ks, stats[:, 0], "o-", label=d)
            ax.fill_between(ks, stats[:, 0] - stats[:, 1], stats[:, 0] + stats[:, 1],
                            color=line.get_color(), alpha=0.15)
            a, target = find_a(dict(zip(ks, stats[:, 0])))
            ax.axhline(target, color=line.get_color(), ls=":", lw=0.8)
            ax.plot([a], [stats[ks.index(a), 0]], "s", color=line.get_color(), ms=9, mfc="none")
        ax.axhline(_CHANCE[task], color="grey", lw=0.8, ls="--", label="chance")
        ax.set_title(f"{task} (n = {results['reach']}, {results['heads']} heads)")
        ax.set_xlabel("taps per head k")
        ax.set_ylabel("held-out accuracy")
        ax.set_xticks(ks)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("k sweep: dotted = ¾ of the accuracy at k = n, square = a", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def study(*, tasks=("acp", "digits"), reach=7, ks=None, seeds=(0, 1, 2), heads=16, epochs=40,
          resample_k=2, jobs=1, progress=None):
    """The k sweep (every task, :func:`study_distributions`, ``k = 1 … n``) and the resampling table."""
    for task in tasks:
        _check_kind("task", task, tuple(TASKS))
    _check_int("reach n", reach, 1, REACH_MAX)
    ks = tuple(range(1, reach + 1)) if ks is None else tuple(ks)
    _check_int("job count", jobs, 1, 64)
    jobs_list = [(task, kind, k, seed, reach, heads, epochs)
                 for task in tasks for kind in study_distributions(reach) for k in ks for seed in seeds]
    sweep = []
    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(jobs) as pool:
            for row in pool.map(_sweep_job, jobs_list):
                sweep.append(row)
                if progress:
                    progress(row)
    else:
        for job in jobs_list:
            sweep.append(_sweep_job(job))
            if progress:
                progress(sweep[-1])
    offsets = study_distributions(reach)[0]
    resampling = []
    if resample_k:
        for task in tasks:
            resampling += resampling_study(task, reach=reach, k=resample_k, offsets=offsets,
                                           policies=STUDY_POLICIES, seeds=seeds, heads=heads, epochs=epochs)
            if progress:
                progress({"task": task, "resampling": True})
    quantised = []
    if resample_k:
        for task in tasks:
            quantised += int8_study(task, reach=reach, k=resample_k, offsets=offsets, seeds=seeds, heads=heads,
                                    epochs=epochs)
    return {"int8": quantised, "tasks": list(tasks), "reach": reach, "ks": list(ks), "seeds": list(seeds), "heads": heads,
            "epochs": epochs, "sweep": sweep, "resampling": resampling, "resample_k": resample_k,
            "resample_distribution": offsets.describe()}


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="dynsparse heads",
        description="Seed 004's first study: sweep the taps per head k for several offset distributions D "
                    "and find a with E[l_a] ≈ ¾ E[l_n]; then compare resampling policies.")
    parser.add_argument("--tasks", default="acp,digits", help="comma-separated: " + ", ".join(TASKS))
    parser.add_argument("--reach", type=int, default=7, help="offset reach n (window 2n+1 <= 15)")
    parser.add_argument("--ks", default=None, help="comma-separated k (default 1 … n)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--resample-k", type=int, default=2, help="k of the resampling table (0: none)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--out", default="build/heads", help="directory for study.json, study.md, study.png")
    args = parser.parse_args(argv)
    try:
        tasks = tuple(t for t in args.tasks.split(",") if t)
        seeds = tuple(int(s) for s in args.seeds.split(","))
        ks = None if args.ks is None else tuple(int(k) for k in args.ks.split(","))
    except ValueError as e:
        parser.error(f"bad list: {e}")
    start = time.perf_counter()

    def progress(row):
        if "k" in row:
            print(f"{row['task']:>7} {row['distribution']:<24} k={row['k']:<2} seed {row['seed']}: "
                  f"accuracy {row['accuracy']:.3f}  loss {row['loss']:.3f}  ({row['seconds']:.1f} s)",
                  file=sys.stderr, flush=True)
        else:
            print(f"{row['task']:>7} resampling table done", file=sys.stderr, flush=True)

    try:
        results = study(tasks=tasks, reach=args.reach, ks=ks, seeds=seeds, heads=args.heads,
                        epochs=args.epochs, resample_k=args.resample_k, jobs=args.jobs, progress=progress)
    except (TypeError, ValueError) as e:
        parser.error(str(e))
    results["command"] = "dynsparse heads " + " ".join(argv if argv is not None else sys.argv[1:])
    results["seconds"] = time.perf_counter() - start
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "study.json"), "w") as f:
        json.dump(results, f, indent=1)
    table = format_study(results)
    with open(os.path.join(args.out, "study.md"), "w") as f:
        f.write(f"Command: `{results['command'].strip()}` ({results['seconds']:.0f} s)\n\n" + table + "\n")
    plot_study(results, os.path.join(args.out, "study.png"))
    print(table)
    print(f"written {args.out}/study.json, study.md, study.png; total {results['seconds']:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
