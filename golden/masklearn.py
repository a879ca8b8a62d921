"""Learning the padding mask of seed 001 (host side, float).

The convolution engine skips every multiplication that reads a padding pixel
whose block's mask bit is 0 (:mod:`dynsparse.golden.padmask` gives the block
geometry). In float terms a *masked convolution* is the "same"-size, stride-1
correlation of the padded frame in which the pixels of excluded blocks are set
to 0; included blocks hold the padding of ``pad_mode`` (``replicate``: nearest
border pixel, ``reflect``: mirrored about the border pixel, not repeated). With
``zero`` padding the padding is 0, so the mask changes nothing.

Mask learning, per epoch:

1. the weights are trained (Adam, by hand) with the current mask;
2. the *relevance* of every block is measured on the training set: the mean
   absolute gradient of the loss with respect to the values fed into the
   multiplications at the block's padded positions (:func:`block_relevance`),
   divided by the largest block's (:func:`normalise_relevance`);
3. the threshold is moved by the seed's rule
   ``threshold += (avg_out − avg_in) · lr``, clamped to [0, 1], where
   ``avg_out``/``avg_in`` are the mean relevance of the blocks the current
   mask excludes/includes (:func:`update_threshold`; ``rule="prose"`` takes
   the opposite sign, which the seed's prose asks for, see docs/padmask.md);
4. the mask is recomputed: bit = 1 (included) where relevance > threshold.

The task (:func:`image_filter_task`) is real: 16×16 crops of the images of
:mod:`dynsparse.golden.images` must be mapped by one K×K conv layer to the
responses of fixed filters computed on the *whole* image, so that at the crop
border the padding stands in for context the layer never sees.

``python -m dynsparse.golden.masklearn`` runs it for ``replicate`` and
``reflect`` padding and both rules, prints the held-out losses with the learned mask, all
blocks included, all excluded and zero padding, writes ``docs/images/padmask.png``
and the learned mask memory files (:func:`export_mask`).
"""

import argparse
import math
import os
import re
import sys
import time

import numpy as np

from .images import real_image
from .padmask import BANDS, block_map, check_mask, mask_layout, mask_length
from .window import _mode_name


__all__ = [
    "MASK_FORMAT", "MASK_FORMAT_VERSION",
    "padding_keep", "masked_conv2d", "masked_conv2d_backward", "block_relevance",
    "normalise_relevance", "threshold_mask", "THRESHOLD_RULES", "update_threshold", "padding_reads",
    "skipped_padding", "TASK_IMAGES", "target_filters", "image_filter_task", "task_loss", "train",
    "mask_learning_report", "threshold_sweep", "format_sweep", "format_report", "plot_report", "mask_words", "mask_band_writes", "format_mask", "export_mask",
    "parse_mask", "load_mask", "main",
]

_NUMPY_MODE = {"zero": "constant", "replicate": "edge", "reflect": "reflect"}


# --- masked convolution ------------------------------------------------------------------------

def _check_int(name, value, minimum):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer >= {minimum}, not {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, not {value!r}")
    return int(value)


def _check_float(name, value, low=None, high=None):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, not {value!r}")
    value = float(value)
    if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
        bounds = f" in [{low}, {high}]" if high is not None else (f" >= {low}" if low is not None else "")
        raise ValueError(f"{name} must be a finite number{bounds}, not {value!r}")
    return value


def _check_conv(frames, weights, bias, pad_mode):
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim == 3:
        frames = frames[..., None]
    if frames.ndim != 4:
        raise ValueError(f"frames must have shape [N, H, W] or [N, H, W, C_in], not {frames.shape}")
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 4 or weights.shape[2] != weights.shape[3] or weights.shape[2] % 2 == 0:
        raise ValueError(f"weights must have shape [C_out, C_in, K, K] with K odd, not {weights.shape}")
    if weights.shape[1] != frames.shape[3]:
        raise ValueError(f"weights take {weights.shape[1]} input channels, the frames have {frames.shape[3]}")
    if bias is not None:
        bias = np.asarray(bias, dtype=np.float64)
        if bias.shape != (weights.shape[0],):
            raise ValueError(f"bias must have shape ({weights.shape[0]},), not {bias.shape}")
    mode = _mode_name(pad_mode)
    r = weights.shape[2] // 2
    _, height, width, _ = frames.shape
    if mode == "reflect" and (height < r + 1 or width < r + 1):
        raise ValueError(f"reflect padding needs a frame of at least {r + 1}×{r + 1} pixels, "
                         f"not {height}×{width}")
    return frames, weights, bias, mode


def padding_keep(width, height, *, kernel_size, pad_mode, mask=None, block_size=4):
    """Factor applied to each position of the padded frame: float64 ``[H + 2r, W + 2r]``.

    1 inside the frame; in the padding ``mask[block]`` (1 = included, 0 =
    excluded), or 0 everywhere with ``pad_mode = zero``. ``mask=None`` includes
    every block.
    """
    mode = _mode_name(pad_mode)
    blocks = block_map(width, height, kernel_size=kernel_size, block_size=block_size)
    if mask is None:
        mask = np.ones(mask_length(width, height, kernel_size=kernel_size, block_size=block_size), np.uint8)
    mask = check_mask(mask, width, height, kernel_size=kernel_size, block_size=block_size)
    keep = np.ones(blocks.shape)
    padding = blocks >= 0
    keep[padding] = 0.0 if mode == "zero" else mask[blocks[padding]]
    return keep


def _pad_sources(height, width, r, mode):
    """Flat frame index each padded position copies (-1 where zero padding holds 0)."""
    index = np.arange(height * width).reshape(height, width)
    if mode == "zero":
        return np.pad(index, r, mode="constant", constant_values=-1)
    return np.pad(index, r, mode=_NUMPY_MODE[mode])


def _padded(frames, r, mode):
    n, height, width, c = frames.shape
    sources = _pad_sources(height, width, r, mode)
    flat = frames.reshape(n, height * width, c)
    padded = flat[:, np.maximum(sources, 0), :]
    if mode == "zero":
        padded[:, sources < 0, :] = 0.0
    return padded, sources


def _columns(fed, k):
    """``[N·H·W, C·K·K]`` matrix of the K×K windows of the padded frames (im2col).

    Products are taken with ``np.einsum`` without ``optimize``, which does not
    call BLAS: these are tall, thin products a multithreaded BLAS runs slower
    than a plain loop on a loaded machine.
    """
    windows = np.lib.stride_tricks.sliding_window_view(fed, (k, k), axis=(1, 2))   # [N, H, W, C, K, K]
    return np.ascontiguousarray(windows).reshape(-1, fed.shape[3] * k * k)


def masked_conv2d(frames, weights, bias=None, *, pad_mode, mask=None, block_size=4):
    """Float masked convolution, stride 1, "same" size.

    ``out[n, y, x, o] = bias[o] + Σ_{i, ky, kx} weights[o, i, ky, kx] · keep[y + ky, x + kx]
    · padded[n, y + ky, x + kx, i]`` where ``padded`` is the frame padded by
    ``r = K // 2`` in ``pad_mode`` and ``keep`` is :func:`padding_keep`
    (a correlation, the kernel is not flipped).

    Parameters
    ----------
    frames : array ``[N, H, W, C_in]`` (or ``[N, H, W]``, one channel)
    weights : array ``[C_out, C_in, K, K]``, K odd
    bias : array ``[C_out]`` or ``None`` (no bias)
    pad_mode : ``"zero"``, ``"replicate"`` or ``"reflect"``
    mask : 0/1 array of :func:`~dynsparse.golden.padmask.mask_length` bits, or ``None`` (all included)
    block_size : int, padding block length B

    Returns
    -------
    float64 array ``[N, H, W, C_out]``
    """
    frames, weights, bias, mode = _check_conv(frames, weights, bias, pad_mode)
    n, height, width, _ = frames.shape
    k = weights.shape[2]
    padded, _ = _padded(frames, k // 2, mode)
    keep = padding_keep(width, height, kernel_size=k, pad_mode=mode, mask=mask, block_size=block_size)
    fed = padded * keep[None, :, :, None]
    out = np.einsum("pj,oj->po", _columns(fed, k), weights.reshape(weights.shape[0], -1))
    out = out.reshape(n, height, width, weights.shape[0])
    if bias is not None:
        out += bias
    return out


def masked_conv2d_backward(grad_output, frames, weights, *, pad_mode, mask=None, block_size=4):
    """Gradients of a loss through :func:`masked_conv2d`, given ``grad_output = ∂L/∂out``.

    Returns
    -------
    dict
        ``weights`` ``[C_out, C_in, K, K]``, ``bias`` ``[C_out]``, ``frames``
        ``[N, H, W, C_in]`` (padding gradients of included blocks added to the
        frame pixels they copy), and ``fed`` ``[N, H + 2r, W + 2r, C_in]``:
        ``∂L/∂v`` for the value ``v`` fed into the multiplications at each padded
        position, for *every* position, masked or not; a masked-out pixel feeds
        ``v = 0``, and ``fed`` there is the slope of the loss if it fed its
        padding value instead (what :func:`block_relevance` scores).
    """
    frames, weights, _, mode = _check_conv(frames, weights, None, pad_mode)
    n, height, width, c_in = frames.shape
    c_out, _, k, _ = weights.shape
    grad_output = np.asarray(grad_output, dtype=np.float64)
    if grad_output.shape != (n, height, width, c_out):
        raise ValueError(f"grad_output must have shape {(n, height, width, c_out)}, not {grad_output.shape}")
    r = k // 2
    padded, sources = _padded(frames, r, mode)
    keep = padding_keep(width, height, kernel_size=k, pad_mode=mode, mask=mask, block_size=block_size)
    fed = padded * keep[None, :, :, None]
    rows = grad_output.reshape(-1, c_out)
    grad_weights = np.einsum("po,pj->oj", rows, _columns(fed, k)).reshape(weights.shape)
    # Channels ahead of rows and columns, so that the additions run along image rows.
    columns = np.einsum("nyxo,oikl->klniyx", grad_output, weights)
    grad_fed = np.zeros((n, c_in, height + 2 * r, width + 2 * r))
    for ky in range(k):
        for kx in range(k):
            grad_fed[:, :, ky:ky + height, kx:kx + width] += columns[ky, kx]
    grad_fed = np.ascontiguousarray(grad_fed.transpose(0, 2, 3, 1))
    # Inside pixels feed themselves; a kept padding position adds its gradient to the pixel it copies.
    grad_frames = grad_fed[:, r:r + height, r:r + width, :].reshape(n, height * width, c_in).copy()
    copies = np.flatnonzero((sources.reshape(-1) >= 0) & (keep.reshape(-1) != 0))
    copies = copies[block_map(width, height, kernel_size=k, block_size=block_size).reshape(-1)[copies] >= 0]
    np.add.at(grad_frames, (slice(None), sources.reshape(-1)[copies]), grad_fed.reshape(n, -1, c_in)[:, copies])
    grad_frames = grad_frames.reshape(n, height, width, c_in)
    return {
        "weights": grad_weights,
        "bias": grad_output.sum(axis=(0, 1, 2)),
        "frames": grad_frames,
        "fed": grad_fed,
    }


# --- relevance and threshold ------------------------------------------------------------------

def block_relevance(grad_fed, *, kernel_size, block_size=4):
    """Raw relevance of every padding block: mean ``|∂L/∂v|`` over its positions.

    ``grad_fed`` is the ``fed`` gradient of :func:`masked_conv2d_backward`,
    ``[N, H + 2r, W + 2r, C]`` (or without the batch axis). Score ``b`` is the
    mean of ``|grad_fed|`` over the samples, the channels and the padded
    positions of block ``b``; the mask bit plays no part, so excluded blocks
    are scored too. Returns float64 ``[mask_length]`` in mask-bit order.
    """
    grad_fed = np.abs(np.asarray(grad_fed, dtype=np.float64))
    if grad_fed.ndim == 3:
        grad_fed = grad_fed[None]
    if grad_fed.ndim != 4:
        raise ValueError(f"gradient must have shape [N, H + 2r, W + 2r, C], not {grad_fed.shape}")
    r = kernel_size // 2
    height, width = grad_fed.shape[1] - 2 * r, grad_fed.shape[2] - 2 * r
    blocks = block_map(width, height, kernel_size=kernel_size, block_size=block_size)
    per_position = grad_fed.mean(axis=(0, 3)).reshape(-1)
    index = blocks.reshape(-1)
    padding = index >= 0
    count = mask_length(width, height, kernel_size=kernel_size, block_size=block_size)
    sums = np.bincount(index[padding], weights=per_position[padding], minlength=count)
    sizes = np.bincount(index[padding], minlength=count)
    return sums / np.maximum(sizes, 1)


def normalise_relevance(raw):
    """Relevance in [0, 1]: ``raw / max(raw)``; all 0 when every raw score is 0."""
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim != 1 or (raw.size and (raw.min() < 0 or not np.isfinite(raw).all())):
        raise ValueError("raw relevance must be a 1-D array of finite non-negative numbers")
    top = raw.max() if raw.size else 0.0
    return raw / top if top > 0 else np.zeros_like(raw)


def threshold_mask(relevance, threshold):
    """Mask of the seed: bit 1 (included) where ``relevance > threshold``, else 0. Returns uint8."""
    threshold = _check_float("threshold", threshold, 0.0, 1.0)
    return (np.asarray(relevance, dtype=np.float64) > threshold).astype(np.uint8)


#: Threshold rules: the seed's formula, and the sign its prose asks for.
THRESHOLD_RULES = ("formula", "prose")


def update_threshold(relevance, mask, threshold, *, lr, rule="formula"):
    """One step of the seed's threshold rule; returns ``(new threshold, avg_out, avg_in)``.

    ``avg_out`` is the mean relevance of the blocks ``mask`` excludes (bit 0),
    ``avg_in`` that of the included ones (bit 1), and with ``rule="formula"``
    ``new = clamp(threshold + (avg_out − avg_in) · lr, 0, 1)``, the formula of
    the seed as written; ``rule="prose"`` subtracts the same step instead,
    which is what the seed's prose asks for ("if the average gradient within
    masked-out regions is significantly higher than in included regions,
    *increase* the threshold to include more padding": with blocks above the
    threshold included, including more means lowering it). When either group is empty the step is 0 (a mean
    over no block is undefined) and the empty group's average is returned as
    ``nan``.

    ``mask`` is the one in force while the gradients were measured, so a block
    can be scored above the threshold and still be in the excluded group.
    Note the sign: blocks above the threshold are included, so a rising
    threshold includes *fewer* blocks, although the seed's prose says it
    includes more.
    """
    threshold = _check_float("threshold", threshold, 0.0, 1.0)
    lr = _check_float("threshold learning rate", lr, 0.0)
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold rule must be one of {', '.join(THRESHOLD_RULES)}, not {rule!r}")
    relevance = np.asarray(relevance, dtype=np.float64)
    mask = np.asarray(mask)
    if mask.shape != relevance.shape or relevance.ndim != 1:
        raise ValueError(f"mask and relevance must be 1-D of the same length, not {mask.shape} and {relevance.shape}")
    out, inside = relevance[mask == 0], relevance[mask == 1]
    avg_out = float(out.mean()) if out.size else float("nan")
    avg_in = float(inside.mean()) if inside.size else float("nan")
    if not (out.size and inside.size):
        return threshold, avg_out, avg_in
    step = (avg_out - avg_in) * lr
    return min(1.0, max(0.0, threshold + (step if rule == "formula" else -step))), avg_out, avg_in


def padding_reads(width, height, *, kernel_size, block_size=4):
    """Multiplications per channel pair reading each padding block: int64 ``[mask_length]``.

    A padded position ``(py, px)`` is read by ``(#y with py − y ∈ [0, K)) ·
    (#x with px − x ∈ [0, K))`` output pixels of a "same" convolution.
    """
    k, r = kernel_size, kernel_size // 2
    blocks = block_map(width, height, kernel_size=k, block_size=block_size)
    def covered(length):
        positions = np.arange(length + 2 * r)[:, None] - np.arange(length)[None, :]
        return ((positions >= 0) & (positions < k)).sum(axis=1)
    reads = covered(height)[:, None] * covered(width)[None, :]
    padding = blocks >= 0
    count = mask_length(width, height, kernel_size=k, block_size=block_size)
    return np.bincount(blocks[padding], weights=reads[padding], minlength=count).astype(np.int64)


def skipped_padding(mask, width, height, *, kernel_size, block_size=4):
    """Multiplications a mask skips in one frame (per input/output channel pair).

    Returns ``{"skipped", "padding", "total", "of_padding", "of_total"}``: MACs
    reading excluded blocks, MACs reading any padding, ``H · W · K²``, and the
    two ratios.
    """
    mask = check_mask(mask, width, height, kernel_size=kernel_size, block_size=block_size)
    reads = padding_reads(width, height, kernel_size=kernel_size, block_size=block_size)
    skipped, padding = int(reads[mask == 0].sum()), int(reads.sum())
    total = width * height * kernel_size ** 2
    return {"skipped": skipped, "padding": padding, "total": total,
            "of_padding": skipped / padding if padding else 0.0, "of_total": skipped / total}


# --- the task ----------------------------------------------------------------------------------

#: Images the task's crops are cut from (top halves for training, bottom halves held out).
TASK_IMAGES = ("camera", "coins", "moon", "text", "page")


def target_filters(kernel_size):
    """The two K×K filters the layer learns: ``[2, 1, K, K]``.

    Channel 0 is a Gaussian blur (σ = max(0.5, r / 2), sum 1); channel 1 its
    x derivative, scaled so that a ramp rising 1 per pixel to the right gives 1.
    """
    r = kernel_size // 2
    sigma = max(0.5, r / 2)
    d = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-d ** 2 / (2 * sigma ** 2))
    blur = np.outer(g, g) / np.outer(g, g).sum()
    derivative = np.outer(g, d * g)
    derivative /= (derivative * d[None, :]).sum()
    return np.stack([blur, derivative])[:, None]


def image_filter_task(*, crop_size=16, kernel_size=5, train_crops=512, test_crops=256, seed=0):
    """Crops of real images and the filter responses a conv layer must reproduce.

    Each crop of ``crop_size × crop_size`` pixels (scaled to [0, 1]) is cut
    at a seeded random place from one of :data:`TASK_IMAGES`, training crops
    from the images' top halves, held-out crops from their bottom halves.
    Its targets are :func:`target_filters` applied to the *whole image* around
    it, so the responses at the crop border depend on pixels outside the
    crop, which a layer can only guess through its padding.

    Returns
    -------
    dict
        ``train_x``/``test_x`` ``[N, S, S, 1]``, ``train_y``/``test_y``
        ``[N, S, S, 2]``, ``filters`` ``[2, 1, K, K]``, ``crop_size``,
        ``kernel_size``, ``images``.
    """
    crop_size = _check_int("crop size", crop_size, 1)
    kernel_size = _check_int("kernel size", kernel_size, 1)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel size must be an odd integer >= 1, not {kernel_size!r}")
    for name, value in (("training crop count", train_crops), ("held-out crop count", test_crops)):
        _check_int(name, value, 1)
    rng = np.random.default_rng(seed)
    r = kernel_size // 2
    filters = target_filters(kernel_size)
    images = [real_image(name).astype(np.float64) / 255 for name in TASK_IMAGES]
    task = {"filters": filters, "crop_size": crop_size, "kernel_size": kernel_size, "images": TASK_IMAGES}
    for split, count in (("train", train_crops), ("test", test_crops)):
        context = np.empty((count, crop_size + 2 * r, crop_size + 2 * r))
        for i, which in enumerate(rng.integers(len(images), size=count)):
            image = images[which]
            half = image.shape[0] // 2
            rows = image[:half] if split == "train" else image[half:]
            y = rng.integers(rows.shape[0] - crop_size - 2 * r + 1)
            x = rng.integers(rows.shape[1] - crop_size - 2 * r + 1)
            context[i] = rows[y:y + crop_size + 2 * r, x:x + crop_size + 2 * r]
        target = np.zeros((count, crop_size, crop_size, len(filters)))
        for ky in range(kernel_size):
            for kx in range(kernel_size):
                target += context[:, ky:ky + crop_size, kx:kx + crop_size, None] * filters[:, 0, ky, kx]
        task[f"{split}_x"] = context[:, r:r + crop_size, r:r + crop_size, None].copy()
        task[f"{split}_y"] = target
    return task


def _loss_and_grad(x, y, weights, bias, pad_mode, mask, block_size):
    out = masked_conv2d(x, weights, bias, pad_mode=pad_mode, mask=mask, block_size=block_size)
    error = out - y
    return float(np.mean(error ** 2)), 2 * error / error.size


def task_loss(task, split, weights, bias, *, pad_mode, mask=None, block_size=4):
    """Mean squared error of the layer on ``task``'s ``"train"`` or ``"test"`` split."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    loss, _ = _loss_and_grad(task[f"{split}_x"], task[f"{split}_y"], weights, bias,
                             _mode_name(pad_mode), mask, block_size)
    return loss


def train(task, *, pad_mode, mask="learned", epochs=24, batch_size=32, lr=0.05, threshold_lr=0.5,
          initial_threshold=0.5, rule="formula", block_size=4, seed=0, progress=None):
    """Train one conv layer on ``task``, learning the padding mask or with a fixed one.

    Weights start as seeded normal numbers (σ = 1 / K²), the bias at 0; each
    epoch runs Adam (β = 0.9, 0.999, ε = 1e-8, step ``lr``) over seeded
    shuffled batches of the training crops with the current mask. With
    ``mask="learned"`` the mask starts as ``relevance > initial_threshold``
    with relevance measured on the initial weights with every block included,
    and after each epoch relevance is measured on the whole training set with
    the current mask, the threshold moved by :func:`update_threshold` (with
    ``rule``) and the
    mask recomputed by :func:`threshold_mask`. A fixed ``mask`` (0/1 array) is
    used as it is.

    Parameters
    ----------
    progress : callable or None
        Called with each epoch's history entry.

    Returns
    -------
    dict
        ``weights``, ``bias``, ``mask``, ``threshold`` (None for a fixed mask),
        ``relevance`` (normalised, last measured), ``raw_relevance``,
        ``history`` (per epoch: ``epoch``, ``train_loss``, ``test_loss``,
        ``threshold``, ``avg_out``, ``avg_in``, ``included``, ``mask``),
        ``pad_mode``, ``width``, ``height``, ``kernel_size``, ``block_size``.
    """
    mode = _mode_name(pad_mode)
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold rule must be one of {', '.join(THRESHOLD_RULES)}, not {rule!r}")
    epochs = _check_int("epoch count", epochs, 0)
    batch_size = _check_int("batch size", batch_size, 1)
    lr = _check_float("learning rate", lr, 0.0)
    threshold = _check_float("initial threshold", initial_threshold, 0.0, 1.0)
    x, y = task["train_x"], task["train_y"]
    size, k = task["crop_size"], task["kernel_size"]
    c_out, c_in = y.shape[-1], x.shape[-1]
    rng = np.random.default_rng(seed)
    weights = rng.normal(0.0, 1.0 / k ** 2, size=(c_out, c_in, k, k))
    bias = np.zeros(c_out)
    learned = isinstance(mask, str)
    if learned and mask != "learned":
        raise ValueError(f"mask must be 'learned' or a 0/1 array, not {mask!r}")

    def relevance(current):
        _, grad_out = _loss_and_grad(x, y, weights, bias, mode, current, block_size)
        grads = masked_conv2d_backward(grad_out, x, weights, pad_mode=mode, mask=current, block_size=block_size)
        raw = block_relevance(grads["fed"], kernel_size=k, block_size=block_size)
        return raw, normalise_relevance(raw)

    if learned:
        raw, scores = relevance(None)
        current = threshold_mask(scores, threshold)
    else:
        current = check_mask(mask, size, size, kernel_size=k, block_size=block_size)
        raw, scores, threshold = None, None, None
    moments = [np.zeros_like(weights), np.zeros_like(bias), np.zeros_like(weights), np.zeros_like(bias)]
    step, history = 0, []
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(x))
        for first in range(0, len(x), batch_size):
            batch = order[first:first + batch_size]
            _, grad_out = _loss_and_grad(x[batch], y[batch], weights, bias, mode, current, block_size)
            grads = masked_conv2d_backward(grad_out, x[batch], weights, pad_mode=mode, mask=current,
                                           block_size=block_size)
            step += 1
            for i, (param, grad) in enumerate(((weights, grads["weights"]), (bias, grads["bias"]))):
                moments[i] = 0.9 * moments[i] + 0.1 * grad
                moments[i + 2] = 0.999 * moments[i + 2] + 0.001 * grad ** 2
                param -= lr * (moments[i] / (1 - 0.9 ** step)) / (np.sqrt(moments[i + 2] / (1 - 0.999 ** step)) + 1e-8)
        entry = {"epoch": epoch,
                 "train_loss": task_loss(task, "train", weights, bias, pad_mode=mode, mask=current, block_size=block_size),
                 "test_loss": task_loss(task, "test", weights, bias, pad_mode=mode, mask=current, block_size=block_size),
                 "threshold": threshold, "avg_out": float("nan"), "avg_in": float("nan")}
        if learned:
            raw, scores = relevance(current)
            threshold, entry["avg_out"], entry["avg_in"] = update_threshold(scores, current, threshold, lr=threshold_lr,
                                                                          rule=rule)
            entry["threshold"] = threshold
            current = threshold_mask(scores, threshold)
        entry["included"] = int(current.sum())
        entry["mask"] = current.copy()
        history.append(entry)
        if progress is not None:
            progress(entry)
    return {"weights": weights, "bias": bias, "mask": current, "threshold": threshold,
            "relevance": scores, "raw_relevance": raw, "history": history, "pad_mode": mode,
            "width": size, "height": size, "kernel_size": k, "block_size": block_size}


def mask_learning_report(*, pad_modes=("replicate", "reflect"), rules=THRESHOLD_RULES, crop_size=16,
                         kernel_size=5, block_size=4, train_crops=384, test_crops=256, epochs=24,
                         batch_size=32, lr=0.05, threshold_lr=0.5, initial_threshold=0.5, seed=0,
                         progress=None):
    """Learn a mask for each padding mode and rule, and compare it with fixed masks on held-out crops.

    All layers are trained from the same seeded initial weights with the same
    seeded batches (:func:`train`). Per mode of ``pad_modes``: one layer per
    threshold rule of ``rules`` learns its mask; one is trained with every
    block included and one with every block excluded. One more layer uses
    ``zero`` padding. Each is scored on the held-out crops with the mask it was
    trained with; each learned layer also with every block included and every
    block excluded (same weights). ``progress`` receives ``(label, history
    entry)`` after each epoch.

    Returns
    -------
    dict
        ``config`` (the arguments), ``task`` (crop counts, images, mask bits),
        ``zero`` (held-out loss with zero padding), and ``modes``: per mode
        ``included`` and ``excluded`` (held-out losses of the fixed-mask
        layers) and ``rules``: per rule ``learned`` (the :func:`train`
        result), ``loss`` (held-out, learned mask), ``same_weights``
        (``included``/``excluded``), ``skipped`` (:func:`skipped_padding` of
        the learned mask), ``seconds`` (time of the learning run).
    """
    config = dict(pad_modes=tuple(pad_modes), rules=tuple(rules), crop_size=crop_size,
                  kernel_size=kernel_size, block_size=block_size, train_crops=train_crops,
                  test_crops=test_crops, epochs=epochs, batch_size=batch_size, lr=lr,
                  threshold_lr=threshold_lr, initial_threshold=initial_threshold, seed=seed)
    for mode in config["pad_modes"]:
        if _mode_name(mode) == "zero":
            raise ValueError("pad modes to learn a mask for must be replicate or reflect, not 'zero'")
    for rule in config["rules"]:
        if rule not in THRESHOLD_RULES:
            raise ValueError(f"threshold rule must be one of {', '.join(THRESHOLD_RULES)}, not {rule!r}")
    task = image_filter_task(crop_size=crop_size, kernel_size=kernel_size, train_crops=train_crops,
                             test_crops=test_crops, seed=seed)
    bits = mask_length(crop_size, crop_size, kernel_size=kernel_size, block_size=block_size)
    fixed = {"included": np.ones(bits, np.uint8), "excluded": np.zeros(bits, np.uint8)}
    common = dict(epochs=epochs, batch_size=batch_size, lr=lr, block_size=block_size, seed=seed,
                  threshold_lr=threshold_lr, initial_threshold=initial_threshold)

    def run(label, mode, mask, rule="formula"):
        report = None if progress is None else (lambda entry: progress(label, entry))
        return train(task, pad_mode=mode, mask=mask, rule=rule, progress=report, **common)

    def held_out(result, mask):
        return task_loss(task, "test", result["weights"], result["bias"], pad_mode=result["pad_mode"],
                         mask=mask, block_size=block_size)

    zero = run("zero", "zero", fixed["included"])
    report = {"config": config, "zero": held_out(zero, zero["mask"]), "modes": {},
              "task": {"train_crops": train_crops, "test_crops": test_crops, "images": TASK_IMAGES,
                       "mask_bits": bits}}
    for mode in (_mode_name(mode) for mode in config["pad_modes"]):
        entry = {name: held_out(run(f"{mode} {name}", mode, mask), mask) for name, mask in fixed.items()}
        entry["rules"] = {}
        for rule in config["rules"]:
            start = time.perf_counter()
            learned = run(f"{mode} {rule}", mode, "learned", rule)
            entry["rules"][rule] = {
                "learned": learned, "seconds": time.perf_counter() - start,
                "loss": held_out(learned, learned["mask"]),
                "same_weights": {name: held_out(learned, mask) for name, mask in fixed.items()},
                "skipped": skipped_padding(learned["mask"], crop_size, crop_size, kernel_size=kernel_size,
                                           block_size=block_size),
            }
        report["modes"][mode] = entry
    return report


def threshold_sweep(*, pad_modes=("replicate", "reflect"), rules=THRESHOLD_RULES,
                    threshold_lrs=(0.05, 0.2, 0.5, 1.0), trainings=((0.05, 32), (0.02, 64)),
                    train_crops=384, test_crops=256, epochs=24, seed=0, progress=None):
    """Where the threshold rule ends for several threshold and weight learning rates.

    One :func:`train` run per combination of ``pad_modes``, ``rules``,
    ``threshold_lrs`` and ``trainings`` (pairs of Adam step and batch size) on
    the task of :func:`image_filter_task`. Returns a list of dicts with
    ``pad_mode``, ``rule``, ``threshold_lr``, ``lr``, ``batch_size``,
    ``thresholds`` (after each epoch), ``included`` (final block count),
    ``bits`` and ``loss`` (held-out, final mask).
    """
    task = image_filter_task(train_crops=train_crops, test_crops=test_crops, seed=seed)
    rows = []
    for mode in pad_modes:
        for rule in rules:
            for threshold_lr in threshold_lrs:
                for lr, batch_size in trainings:
                    result = train(task, pad_mode=mode, rule=rule, threshold_lr=threshold_lr, lr=lr,
                                   batch_size=batch_size, epochs=epochs, seed=seed)
                    rows.append({"pad_mode": result["pad_mode"], "rule": rule, "threshold_lr": threshold_lr,
                                 "lr": lr, "batch_size": batch_size,
                                 "thresholds": [step["threshold"] for step in result["history"]],
                                 "included": int(result["mask"].sum()), "bits": int(result["mask"].size),
                                 "loss": task_loss(task, "test", result["weights"], result["bias"],
                                                   pad_mode=mode, mask=result["mask"])})
                    if progress is not None:
                        progress(rows[-1])
    return rows


def format_sweep(rows):
    """The rows of :func:`threshold_sweep` as a Markdown table."""
    lines = ["| padding | rule | threshold lr | Adam step, batch | threshold after epochs 1, 2, 4, 8, 16, last "
             "| blocks included | held-out loss |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        path = row["thresholds"]
        shown = [path[i - 1] for i in (1, 2, 4, 8, 16) if i <= len(path)] + path[-1:]
        lines.append(f"| {row['pad_mode']} | {row['rule']} | {row['threshold_lr']} | {row['lr']}, "
                     f"{row['batch_size']} | {' '.join(f'{value:.2f}' for value in shown)} "
                     f"| {row['included']}/{row['bits']} | {row['loss']:.6f} |")
    return "\n".join(lines)


# --- mask memory contents ----------------------------------------------------------------------

#: First word of a mask file's first line, and the format version this module writes and reads.
MASK_FORMAT = "dynsparse-padmask"
MASK_FORMAT_VERSION = 1


def mask_words(mask):
    """The mask as 32-bit mask-memory words: bit ``i`` of the mask is bit ``i % 32`` of word ``i // 32``.

    Returns a list of ``ceil(len(mask) / 32)`` ints in ``[0, 2**32)``, word 0
    first (one register write each); bits past the mask's end are 0.
    """
    mask = np.asarray(mask)
    if mask.ndim != 1 or (mask.size and not np.isin(mask, (0, 1)).all()):
        raise ValueError("padding mask must be a 1-D array of 0/1")
    words = [0] * -(-mask.size // 32)
    for i in np.flatnonzero(mask):
        words[i // 32] |= 1 << int(i % 32)
    return words


def mask_band_writes(mask, width, height, *, kernel_size, block_size=4):
    """The mask as per-block writes ``(band, index, value)``, bit 0 first.

    ``band`` is the band's position in :data:`~dynsparse.golden.padmask.BANDS`
    (top 0, bottom 1, left 2, right 3) and ``index`` the block's number within
    its band: the form of a ``PaddingMask`` write (``mask_band``,
    ``mask_index``, ``mask_value``, docs/sparseconv.md).
    """
    mask = check_mask(mask, width, height, kernel_size=kernel_size, block_size=block_size)
    layout = mask_layout(width, height, kernel_size=kernel_size, block_size=block_size)
    return [(band, index, int(mask[first + index]))
            for band, (first, count) in enumerate(layout[name] for name in BANDS)
            for index in range(count)]


def format_mask(mask, width, height, *, kernel_size, block_size=4):
    """Text of a mask file (see :func:`export_mask`)."""
    mask = check_mask(mask, width, height, kernel_size=kernel_size, block_size=block_size)
    lines = [f"{MASK_FORMAT} {MASK_FORMAT_VERSION}",
             f"width={width} height={height} kernel_size={kernel_size} block_size={block_size} bits={mask.size}"]
    lines += [f"{word:08x}" for word in mask_words(mask)]
    return "\n".join(lines) + "\n"


def export_mask(mask, path, *, width, height, kernel_size, block_size=4):
    """Write a padding mask as the mask memory's contents.

    Format (text, ASCII, ``\\n`` line ends)::

        dynsparse-padmask 1
        width=16 height=16 kernel_size=5 block_size=4 bits=18
        0003c00f

    line 1 names the format and its version, line 2 the frame geometry the
    mask is for and its bit count (:func:`~dynsparse.golden.padmask.mask_length`),
    then one line per 32-bit word of :func:`mask_words`, word 0 first, as 8
    lower-case hexadecimal digits (bit ``i`` of the mask = bit ``i % 32`` of
    word ``i // 32``; bits past the mask's end are 0).
    """
    text = format_mask(mask, width, height, kernel_size=kernel_size, block_size=block_size)
    with open(path, "w", encoding="ascii", newline="\n") as file:
        file.write(text)


_GEOMETRY = re.compile(r"width=(\d+) height=(\d+) kernel_size=(\d+) block_size=(\d+) bits=(\d+)")
_WORD = re.compile(r"[0-9a-fA-F]{8}")


def parse_mask(text, width, height, *, kernel_size, block_size=4):
    """Mask bits (uint8 0/1) of a mask file's text; see :func:`load_mask`."""
    expected = mask_length(width, height, kernel_size=kernel_size, block_size=block_size)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    header = lines[0] if lines else ""
    version = re.fullmatch(re.escape(MASK_FORMAT) + r" (\d+)", header)
    if version is None:
        raise ValueError(f"padding mask file must start with '{MASK_FORMAT} {MASK_FORMAT_VERSION}', "
                         f"not {header[:40]!r}")
    if int(version[1]) != MASK_FORMAT_VERSION:
        raise ValueError(f"padding mask file format version {version[1]} is not supported "
                         f"(this module reads version {MASK_FORMAT_VERSION})")
    geometry = _GEOMETRY.fullmatch(lines[1]) if len(lines) > 1 else None
    if geometry is None:
        raise ValueError("padding mask file line 2 must read 'width=W height=H kernel_size=K "
                         f"block_size=B bits=N', not {(lines[1] if len(lines) > 1 else '')[:60]!r}")
    found = tuple(int(value) for value in geometry.groups())
    if found[:4] != (width, height, kernel_size, block_size):
        raise ValueError(f"padding mask file is for a {found[0]}×{found[1]} frame with K={found[2]} "
                         f"and blocks of {found[3]}, not {width}×{height} with K={kernel_size} "
                         f"and blocks of {block_size}")
    if found[4] != expected:
        raise ValueError(f"padding mask file declares {found[4]} bits, a {width}×{height} frame with "
                         f"K={kernel_size} and blocks of {block_size} has {expected}")
    words = lines[2:]
    if len(words) != -(-expected // 32):
        raise ValueError(f"padding mask file must hold {-(-expected // 32)} words of 32 bits "
                         f"after its header, not {len(words)}")
    mask = np.zeros(expected, np.uint8)
    for number, word in enumerate(words):
        if _WORD.fullmatch(word) is None:
            raise ValueError(f"padding mask file line {number + 3} must be 8 hexadecimal digits, "
                             f"not {word[:40]!r}")
        value = int(word, 16)
        bits = min(32, expected - 32 * number)
        if value >> bits:
            raise ValueError(f"padding mask file line {number + 3} sets bits past the mask's "
                             f"{expected} bits")
        mask[32 * number:32 * number + bits] = (value >> np.arange(bits)) & 1
    return mask


def load_mask(path, width, height, *, kernel_size, block_size=4):
    """Read a mask file written by :func:`export_mask` for this frame geometry.

    Returns the mask as uint8 0/1 ``[mask_length]``.

    Raises
    ------
    ValueError
        If the file is not ASCII text, has another format name or version,
        another geometry or bit count, too few or too many word lines, a line
        that is not 8 hexadecimal digits, or bits set past the mask's end.
    """
    with open(path, "rb") as file:
        data = file.read()
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as error:
        raise ValueError(f"padding mask file must be ASCII text, byte {error.start} is "
                         f"0x{data[error.start]:02x}") from None
    return parse_mask(text, width, height, kernel_size=kernel_size, block_size=block_size)


# --- command line ------------------------------------------------------------------------------

def _mask_string(mask):
    return "".join(str(int(bit)) for bit in mask)


def format_report(report):
    """The report of :func:`mask_learning_report` as Markdown tables."""
    config = report["config"]
    bits = report["task"]["mask_bits"]
    lines = [
        f"held-out mean squared error, {report['task']['test_crops']} crops of "
        f"{config['crop_size']}×{config['crop_size']} (K={config['kernel_size']}, "
        f"blocks of {config['block_size']}, {bits} mask bits); zero padding: {report['zero']:.6f}",
        "",
        "| padding | rule | learned mask | all included | all excluded "
        "| learned weights, all included | learned weights, all excluded "
        "| blocks included | threshold | padding MACs skipped | all MACs skipped | learning time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, entry in report["modes"].items():
        for rule, result in entry["rules"].items():
            same, skipped, learned = result["same_weights"], result["skipped"], result["learned"]
            lines.append(
                f"| {mode} | {rule} | {result['loss']:.6f} | {entry['included']:.6f} "
                f"| {entry['excluded']:.6f} | {same['included']:.6f} | {same['excluded']:.6f} "
                f"| {int(learned['mask'].sum())}/{bits} | {learned['threshold']:.3f} "
                f"| {skipped['skipped']}/{skipped['padding']} ({100 * skipped['of_padding']:.1f} %) "
                f"| {100 * skipped['of_total']:.1f} % | {result['seconds']:.1f} s |")
    lines += ["", "threshold after epochs 1 to 4, every 8th and the last (avg_out / avg_in: mean "
              "relevance of the blocks the epoch's mask excluded / included):", "",
              "| padding | rule | epoch | held-out loss | avg_out | avg_in | threshold | mask (bit 0 first) |",
              "|---|---|---|---|---|---|---|---|"]
    for mode, entry in report["modes"].items():
        for rule, result in entry["rules"].items():
            history = result["learned"]["history"]
            for step in history:
                if step["epoch"] > 4 and step["epoch"] % 8 and step is not history[-1]:
                    continue
                lines.append(f"| {mode} | {rule} | {step['epoch']} | {step['test_loss']:.6f} "
                             f"| {step['avg_out']:.3f} | {step['avg_in']:.3f} | {step['threshold']:.3f} "
                             f"| `{_mask_string(step['mask'])}` |")
    return "\n".join(lines)


def plot_report(report, path):
    """Picture of the learned masks: relevance per block around the frame and the threshold's path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = report["config"]
    size, k, b = config["crop_size"], config["kernel_size"], config["block_size"]
    blocks = block_map(size, size, kernel_size=k, block_size=b)
    modes = list(report["modes"])
    rules = list(config["rules"])
    figure = plt.figure(figsize=(3.3 * len(modes) + 6, 3.4 * len(rules)))
    grid = figure.add_gridspec(len(rules), len(modes) + 2, width_ratios=[1] * len(modes) + [0.06, 1.6],
                               wspace=0.3)
    for row, rule in enumerate(rules):
        for column, mode in enumerate(modes):
            learned = report["modes"][mode]["rules"][rule]["learned"]
            axis = figure.add_subplot(grid[row, column])
            picture = np.full(blocks.shape, np.nan)
            picture[blocks >= 0] = learned["relevance"][blocks[blocks >= 0]]
            shown = axis.imshow(picture, cmap="viridis", vmin=0, vmax=1)
            axis.add_patch(matplotlib.patches.Rectangle((k // 2 - 0.5, k // 2 - 0.5), size, size,
                                                        fill=False, edgecolor="black"))
            for bit, value in enumerate(learned["relevance"]):
                ys, xs = np.nonzero(blocks == bit)
                axis.text(xs.mean(), ys.mean(), str(int(learned["mask"][bit])), ha="center", va="center",
                          fontsize=9, color="white" if value < 0.5 else "black")
            axis.set_title(f"{mode}, {rule} rule\nthreshold {learned['threshold']:.3f}, "
                           f"{int(learned['mask'].sum())}/{learned['mask'].size} included", fontsize=8)
            axis.set_xticks([])
            axis.set_yticks([])
    figure.colorbar(shown, cax=figure.add_subplot(grid[:, -2]), label="relevance (÷ largest block's)")
    curve = figure.add_subplot(grid[:, -1])
    runs = [(mode, rule, report["modes"][mode]["rules"][rule]["learned"]) for rule in rules for mode in modes]
    for mode, rule, learned in runs:
        epochs = [step["epoch"] for step in learned["history"]]
        curve.plot(epochs, [step["threshold"] for step in learned["history"]], label=f"{mode}, {rule}",
                   linestyle="-" if mode == modes[0] else "--", marker="o" if rule == rules[0] else "x",
                   markersize=3)
    curve.set_xlabel("epoch")
    curve.set_ylabel("threshold")
    curve.yaxis.set_label_position("right")
    curve.yaxis.tick_right()
    curve.set_ylim(-0.05, 1.05)
    curve.legend(fontsize=7)
    curve.set_title("threshold after each epoch", fontsize=8)
    figure.suptitle(f"padding blocks of a {size}×{size} frame, K={k}, B={b}: relevance (colour) and "
                    f"learned mask bit (1 = included)", fontsize=9)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m dynsparse.golden.masklearn",
        description="Learn seed 001's padding mask on crops of real images and measure its effect.")
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--rules", default=",".join(THRESHOLD_RULES),
                        help="threshold rules to run, comma-separated (formula, prose)")
    parser.add_argument("--threshold-lr", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image", default="docs/images/padmask.png", help="picture to write ('' for none)")
    parser.add_argument("--mask-dir", default="build/padmask", help="directory for the mask files")
    parser.add_argument("--sweep", action="store_true",
                        help="instead, run the threshold rule for several learning rates (minutes)")
    args = parser.parse_args(argv)
    if args.sweep:
        rows = threshold_sweep(seed=args.seed, epochs=args.epochs, rules=tuple(args.rules.split(",")),
                               progress=lambda row: print(row, file=sys.stderr, flush=True))
        print(format_sweep(rows))
        return 0

    def progress(label, entry):
        print(f"{label:>20} epoch {entry['epoch']:3d}  train {entry['train_loss']:.6f}  "
              f"held-out {entry['test_loss']:.6f}  threshold "
              f"{'-' if entry['threshold'] is None else format(entry['threshold'], '.3f')}  "
              f"included {entry['included']}", file=sys.stderr, flush=True)

    start = time.perf_counter()
    report = mask_learning_report(epochs=args.epochs, threshold_lr=args.threshold_lr, seed=args.seed,
                                  rules=tuple(args.rules.split(",")), progress=progress)
    config = report["config"]
    print(format_report(report))
    print()
    os.makedirs(args.mask_dir, exist_ok=True)
    for mode, entry in report["modes"].items():
        for rule, result in entry["rules"].items():
            path = os.path.join(args.mask_dir, f"{mode}_{rule}.mask")
            geometry = dict(width=config["crop_size"], height=config["crop_size"],
                            kernel_size=config["kernel_size"], block_size=config["block_size"])
            export_mask(result["learned"]["mask"], path, **geometry)
            words = " ".join(f"0x{word:08x}" for word in mask_words(result["learned"]["mask"]))
            print(f"{mode}, {rule} rule: mask memory words {words}, written to {path}")
    if args.image:
        plot_report(report, args.image)
        print(f"picture: {args.image}")
    print(f"total {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
