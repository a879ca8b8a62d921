"""A small real CNN, trained in NumPy, whose int8 weights the weight stream carries (seed 002, section 5).

The model reads scikit-learn's bundled handwritten digits (1797 images of
8×8 pixels, 0 … 16, scaled to [0, 1]); a fixed permutation of ``seed`` keeps
450 of them out of training::

    conv 3×3, 1 → 8, zero padding ─ ReLU ─ conv 3×3, 8 → 16 ─ ReLU ─ 2×2 mean pool
    ─ flatten (channel, y, x) ─ dense 256 → 10 ─ softmax

Weights (``conv1`` 8×1×3×3, ``conv2`` 16×8×3×3, ``dense`` 10×256) are
quantised per tensor, symmetric: ``scale = max|w| / 127``, ``q = round(w /
scale)`` in [−127, 127]; the biases stay float (they are not streamed). A
model runs on ``q · scale``.

**Sparsity-aware training** (:func:`train_sparse`) starts from the dense
model and fine-tunes it with gradual magnitude pruning: at epoch ``e`` each
layer keeps the top-``k`` magnitudes for a density falling from 1 to the
target along ``d(e) = D + (1 − D)(1 − e/E_p)³`` (``E_p`` = two thirds of the
epochs, the rest at ``D``). The forward pass uses what the receiver will
rebuild, ``m·w + (1 − m)·interp(w)`` (float interpolation of
:mod:`dynsparse.golden.sparsify`), so the model learns to live with the
interpolator. The loss adds an L1 term ``λ₁ · mean|w|`` and a reconstruction
loss ``λ_r · mean over layers of Σ_dropped (interp(w) − w)² / Σ w²``, which
pulls the dropped weights towards what the interpolator predicts; for the
learned interpolator its 8 coefficients per layer are trained by the same
gradients (initialised by least squares) — the seed's "reconstruction
algorithm optimised by a reconstruction loss".
"""

import math
import os
import time

import numpy as np

from .sparsify import (
    LEARNED_OFFSETS, _shifted, fit_predictor, interpolate, linear_terms, planes, quantise_predictor, top_k_mask,
)


__all__ = [
    "LAYERS", "load_digits_split", "init_model", "forward", "loss_and_gradients", "train_dense", "accuracy",
    "quantise", "dequantise", "train_sparse", "reconstructed_accuracy", "mean_gradients", "benchmark_report",
]

LAYERS = ("conv1", "conv2", "dense")


def _single_thread(function):
    """Run with one BLAS thread: the matrices are small and threads only contend on a shared machine."""
    import functools

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        from threadpoolctl import threadpool_limits
        with threadpool_limits(1):
            return function(*args, **kwargs)
    return wrapper


def load_digits_split(seed=0, held_out=450):
    """``(x_train, y_train, x_test, y_test)``: digits as float ``[N, 8, 8]`` in [0, 1], labels int."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = digits.images.astype(np.float64) / 16.0
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    test, train = order[:held_out], order[held_out:]
    return x[train], y[train], x[test], y[test]


def init_model(seed=0):
    rng = np.random.default_rng(seed)

    def he(shape, fan_in):
        return rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)

    return {
        "conv1": he((8, 1, 3, 3), 9), "conv1_b": np.zeros(8),
        "conv2": he((16, 8, 3, 3), 72), "conv2_b": np.zeros(16),
        "dense": he((10, 256), 256) * 0.5, "dense_b": np.zeros(10),
    }


def _im2col(x):
    """``[B, C, H, W]`` → ``[B, H, W, C·9]``, zero padding 1, columns in (c, ky, kx) order."""
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))   # B, C, H, W, 3, 3
    b, c, h, w = x.shape
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(b, h, w, c * 9)


def _col2im(cols, shape):
    b, c, h, w = shape
    cols = cols.reshape(b, h, w, c, 3, 3)
    padded = np.zeros((b, c, h + 2, w + 2))
    for ky in range(3):
        for kx in range(3):
            padded[:, :, ky:ky + h, kx:kx + w] += cols[..., ky, kx].transpose(0, 3, 1, 2)
    return padded[:, :, 1:-1, 1:-1]


def _conv(x, weights, bias):
    cols = _im2col(x)
    out = cols @ weights.reshape(weights.shape[0], -1).T + bias
    return out.transpose(0, 3, 1, 2), cols


def forward(params, x, weights=None):
    """Logits ``[B, 10]`` and the cache for :func:`loss_and_gradients`; ``weights`` overrides the layers."""
    weights = weights or {name: params[name] for name in LAYERS}
    x = x[:, None]
    a1, cols1 = _conv(x, weights["conv1"], params["conv1_b"])
    h1 = np.maximum(a1, 0)
    a2, cols2 = _conv(h1, weights["conv2"], params["conv2_b"])
    h2 = np.maximum(a2, 0)
    b = x.shape[0]
    pooled = h2.reshape(b, 16, 4, 2, 4, 2).mean(axis=(3, 5))
    flat = pooled.reshape(b, 256)
    logits = flat @ weights["dense"].T + params["dense_b"]
    return logits, (x, cols1, a1, h1, cols2, a2, flat)


def loss_and_gradients(params, x, y, weights=None):
    """Mean cross-entropy and its gradients with respect to the effective weights and the biases."""
    weights = weights or {name: params[name] for name in LAYERS}
    logits, (x4, cols1, a1, h1, cols2, a2, flat) = forward(params, x, weights)
    b = len(y)
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    loss = -np.mean(np.log(probs[np.arange(b), y] + 1e-300))
    d_logits = probs
    d_logits[np.arange(b), y] -= 1
    d_logits /= b
    grads = {"dense": d_logits.T @ flat, "dense_b": d_logits.sum(axis=0)}
    d_pooled = (d_logits @ weights["dense"]).reshape(b, 16, 4, 1, 4, 1)
    d_h2 = np.broadcast_to(d_pooled / 4, (b, 16, 4, 2, 4, 2)).reshape(b, 16, 8, 8)
    d_a2 = (d_h2 * (a2 > 0)).transpose(0, 2, 3, 1).reshape(-1, 16)
    grads["conv2"] = (d_a2.T @ cols2.reshape(-1, 72)).reshape(16, 8, 3, 3)
    grads["conv2_b"] = d_a2.sum(axis=0)
    d_h1 = _col2im(d_a2 @ weights["conv2"].reshape(16, 72), h1.shape)
    d_a1 = (d_h1 * (a1 > 0)).transpose(0, 2, 3, 1).reshape(-1, 8)
    grads["conv1"] = (d_a1.T @ cols1.reshape(-1, 9)).reshape(8, 1, 3, 3)
    grads["conv1_b"] = d_a1.sum(axis=0)
    return loss, grads


def accuracy(params, x, y, weights=None):
    logits, _ = forward(params, x, weights)
    return float(np.mean(np.argmax(logits, axis=1) == y))


class _Adam:
    def __init__(self, lr):
        self.lr, self.m, self.v, self.t = lr, {}, {}, 0

    def step(self, params, grads):
        self.t += 1
        for name, g in grads.items():
            m = self.m[name] = 0.9 * self.m.get(name, 0) + 0.1 * g
            v = self.v[name] = 0.999 * self.v.get(name, 0) + 0.001 * g * g
            params[name] = params[name] - self.lr * (m / (1 - 0.9 ** self.t)) / (
                np.sqrt(v / (1 - 0.999 ** self.t)) + 1e-8)


@_single_thread
def train_dense(seed=0, epochs=30, batch=64, lr=3e-3):
    """Float model trained with Adam on the training split (fixed seeds)."""
    x, y, _, _ = load_digits_split(seed)
    params = init_model(seed)
    rng = np.random.default_rng(seed + 1)
    adam = _Adam(lr)
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(y), batch):
            idx = order[start:start + batch]
            _, grads = loss_and_gradients(params, x[idx], y[idx])
            adam.step(params, grads)
    return params


def quantise(params):
    """``({layer: int8 q}, {layer: scale})``, per-tensor symmetric."""
    q, scales = {}, {}
    for name in LAYERS:
        w = params[name]
        scale = float(np.abs(w).max()) / 127 or 1.0
        scales[name] = scale
        q[name] = np.clip(np.floor(w / scale + 0.5), -127, 127).astype(np.int8)
    return q, scales


def dequantise(q, scales):
    return {name: q[name].astype(np.float64) * scales[name] for name in LAYERS}


def mean_gradients(params, x, y):
    """Mean cross-entropy gradient of each layer's weights over a data set (for the gradient criterion)."""
    _, grads = loss_and_gradients(params, x, y)
    return {name: grads[name] for name in LAYERS}


# --- float interpolation as a linear operator, with its transpose ------------------------------------

def _operator(mask, method, coefficients=None):
    """``(terms [J, P, H, W], offsets)``: interp = Σ_j terms_j · shift_j(m·w) on the planes."""
    if method == "zero":
        return np.zeros((0,) + planes(mask.shape)), ()
    if method == "linear":
        return linear_terms(mask)
    dropped = 1.0 - mask.reshape(planes(mask.shape))
    return np.stack([c * dropped for c in coefficients]), LEARNED_OFFSETS


def _apply(terms, offsets, stack):
    out = np.zeros_like(stack)
    for t, (dy, dx) in zip(terms, offsets):
        out += t * _shifted(stack, dy, dx)
    return out


def _apply_transpose(terms, offsets, stack):
    out = np.zeros_like(stack)
    for t, (dy, dx) in zip(terms, offsets):
        out += _shifted(t * stack, -dy, -dx)
    return out


def _effective(w, mask, method, coefficients):
    """``(w_eff, interp, terms, offsets)`` of one layer."""
    stack_shape = planes(w.shape)
    m = mask.reshape(stack_shape).astype(np.float64)
    sent = w.reshape(stack_shape) * m
    terms, offsets = _operator(mask, method, coefficients)
    guess = _apply(terms, offsets, sent)
    w_eff = sent + (1 - m) * guess
    return w_eff.reshape(w.shape), guess, terms, offsets


@_single_thread
def train_sparse(dense, *, density, method, seed=0, epochs=12, batch=64, lr=1e-3, l1=1e-4, recon=0.05):
    """Fine-tune ``dense`` for ``density`` and interpolation ``method``; return ``(params, masks, coefficients)``.

    ``coefficients`` maps each layer to its float learned-predictor coefficients (``learned`` only).
    """
    x, y, _, _ = load_digits_split(seed)
    params = {name: value.copy() for name, value in dense.items()}
    if method == "learned":
        for name in LAYERS:
            mask = top_k_mask(np.abs(params[name]), _keep(params[name].size, density))
            params["coef_" + name] = fit_predictor(params[name], mask)
    rng = np.random.default_rng(seed + 2)
    adam = _Adam(lr)
    prune_epochs = max(1, (2 * epochs) // 3)
    masks = {}
    for epoch in range(epochs):
        current = density + (1 - density) * (1 - min(1.0, (epoch + 1) / prune_epochs)) ** 3
        masks = {name: top_k_mask(np.abs(params[name]), _keep(params[name].size, current)) for name in LAYERS}
        order = rng.permutation(len(y))
        for start in range(0, len(y), batch):
            idx = order[start:start + batch]
            adam.step(params, _sparse_step_gradients(params, masks, method, x[idx], y[idx], l1, recon))
    coefficients = {name: params.pop("coef_" + name) for name in LAYERS if "coef_" + name in params}
    return params, masks, coefficients


def _keep(size, density):
    return size - math.floor((1 - density) * size + 0.5)


def _sparse_step_gradients(params, masks, method, x, y, l1, recon):
    effective, parts = {}, {}
    for name in LAYERS:
        effective[name], guess, terms, offsets = _effective(params[name], masks[name], method,
                                                            params.get("coef_" + name))
        parts[name] = (guess, terms, offsets)
    _, grads = loss_and_gradients(params, x, y, effective)
    for name in LAYERS:
        w, mask = params[name], masks[name]
        stack_shape = planes(w.shape)
        m = mask.reshape(stack_shape).astype(np.float64)
        dropped = 1 - m
        guess, terms, offsets = parts[name]
        g_eff = grads[name].reshape(stack_shape)
        ws = w.reshape(stack_shape)
        norm = float(np.sum(ws * ws)) + 1e-12
        # reconstruction loss recon/len(LAYERS) · Σ_dropped (guess − w)² / Σ w²
        residual = dropped * (guess - ws)
        g_rec = (2 * recon / len(LAYERS) / norm) * residual
        g_guess = dropped * g_eff + g_rec                   # gradient with respect to the guess
        g_w = m * g_eff + m * _apply_transpose(terms, offsets, g_guess) - g_rec
        g_w -= (2 * recon / len(LAYERS) * float(np.sum(residual * residual)) / norm ** 2) * ws   # through Σ w²
        g_w += l1 / w.size * np.sign(ws)
        grads[name] = g_w.reshape(w.shape)
        if method == "learned":
            sent = ws * m
            grads["coef_" + name] = np.array([np.sum(dropped * g_guess * _shifted(sent, dy, dx))
                                              for dy, dx in LEARNED_OFFSETS])
    return grads


def reconstructed_accuracy(params, masks, method, x, y, *, coefficients=None):
    """Accuracy of the int8 model whose dropped weights a receiver rebuilds with the integer ``method``.

    Returns ``(accuracy, {layer: (int8 q, rebuilt int64, coefficient int8, shift)})``. ``learned``
    uses ``coefficients`` (float, per layer) if given, else a least-squares fit on ``q``.
    """
    q, scales = quantise(params)
    rebuilt, details = {}, {}
    for name in LAYERS:
        kw = {}
        if method == "learned":
            c = coefficients[name] if coefficients else fit_predictor(q[name], masks[name])
            kw["coefficients"], kw["shift"] = quantise_predictor(c)
        r = interpolate(q[name], masks[name], method, **kw)
        rebuilt[name] = r.astype(np.float64) * scales[name]
        details[name] = (q[name], r, kw.get("coefficients"), kw.get("shift"))
    return accuracy(params, x, y, rebuilt), details


# --- the benchmark ------------------------------------------------------------------------------------

METHODS = ("zero", "linear", "learned")


@_single_thread
def benchmark_report(*, seed=0, image=None, out=None, quick=False, densities=(0.5, 0.25, 0.1), record=None,
                     examples=True):
    """Train, export, measure; return the Markdown of docs/weightstream.md's measured section.

    ``record``, a dict, receives the figures as data: ``sizes`` (rows of :func:`size_table`),
    ``accuracy`` (density, method, post-hoc and sparsity-aware held-out accuracy) and the
    dense model's ``float_accuracy`` / ``int8_accuracy``. ``examples``: include the annotated
    worked-example streams (docs/weightstream.md shows them in their own section).
    """
    from .sparsify import interpolate_float, scores
    from .weightstream import DENSITIES, ENCODINGS, annotate_stream, encode_stream, size_table
    start = time.perf_counter()
    epochs, fine = (6, 4) if quick else (30, 12)
    if quick:
        densities = densities[1:2]
    x, y, xt, yt = load_digits_split(seed)
    dense = train_dense(seed, epochs=epochs)
    q, scales = quantise(dense)
    lines = []
    dense_acc = accuracy(dense, xt, yt)
    int8_acc = accuracy(dense, xt, yt, dequantise(q, scales))
    if record is not None:
        record.update({"seed": seed, "epochs": epochs, "float_accuracy": dense_acc, "int8_accuracy": int8_acc})
    lines.append(f"Model: digits, {len(y)} training / {len(yt)} held-out images, seed {seed}, "
                 f"{epochs} epochs. Held-out accuracy: float {dense_acc:.4f}, int8 {int8_acc:.4f}.")
    if out:
        os.makedirs(out, exist_ok=True)
        grads = mean_gradients(dense, x, y)
        for name in LAYERS:
            np.save(os.path.join(out, f"{name}.npy"), q[name])
            np.save(os.path.join(out, f"{name}_grad.npy"), grads[name])
        lines.append(f"Weights exported to `{out}/<layer>.npy` (int8), mean gradients to `<layer>_grad.npy`.")
    lines.append("")
    # worked example
    example_mask = top_k_mask(np.abs(q["conv1"]), _keep(q["conv1"].size, 0.25))
    for encoding in ("bitmask", "csr") if examples else ():
        example = encode_stream(q["conv1"], example_mask, encoding=encoding, interpolation="linear",
                                criterion="magnitude", selection="sparsity", parameter=750000)
        lines.append(f"Worked example: `conv1` (8×1×3×3), magnitude, sparsity 0.75, {encoding}, linear "
                     f"interpolation, {len(example)} bytes:")
        lines.append("")
        lines.append("```")
        lines.append("offset bytes                                               field")
        lines.extend(annotate_stream(example))
        lines.append("```")
        lines.append("")
    # sizes
    table = size_table(q, DENSITIES)
    if record is not None:
        record["sizes"] = table
    lines.append("| density | kept | " + " | ".join(ENCODINGS) + " | winner |")
    lines.append("|---|---|" + "---|" * len(ENCODINGS) + "---|")
    worst = 0.0
    for row in table:
        cells = []
        for name in ENCODINGS:
            worst = max(worst, abs(row[name] / row[name + "_analytic"] - 1))
            cells.append(f"{row[name]} ({row[name] / row['dense']:.3f})")
        winner = min(ENCODINGS, key=lambda name: row[name])
        lines.append(f"| {row['density']:.2f} | {row['kept']} | " + " | ".join(cells) + f" | {winner} |")
    lines.append("")
    lines.append(f"Bytes on the wire for all three layers ({table[0]['dense']} int8 weights = dense bytes), "
                 f"three streams with their headers and CRCs; in brackets the ratio to dense int8. "
                 f"Largest deviation from the analytic size: {100 * worst:.2f} %.")
    lines.append("")
    lines.append("| layer | entries | density | " + " | ".join(ENCODINGS) + " | winner |")
    lines.append("|---|---|---|" + "---|" * len(ENCODINGS) + "---|")
    for name in LAYERS:
        for density in (0.1, 0.5):
            row = size_table({name: q[name]}, (density,))[0]
            cells = [f"{row[e]} ({row[e] / row['dense']:.3f})" for e in ENCODINGS]
            winner = min(ENCODINGS, key=lambda e: row[e])
            lines.append(f"| {name} | {q[name].size} | {density:.2f} | " + " | ".join(cells) + f" | {winner} |")
    lines.append("")
    # reconstruction error
    lines.append("| criterion | density | method | RMS error (LSB), dropped entries | largest error | "
                 "integer vs float, largest |")
    lines.append("|---|---|---|---|---|---|")
    grads = mean_gradients(dense, x, y)
    for criterion in ("magnitude", "gradient"):
        for density in densities:
            masks = {}
            for name in LAYERS:
                kw = {"gradients": grads[name]} if criterion == "gradient" else {}
                masks[name] = top_k_mask(scores(q[name], criterion, **kw), _keep(q[name].size, density))
            for method in METHODS:
                errors, float_gap = [], 0.0
                for name in LAYERS:
                    kw, fkw = {}, {}
                    if method == "learned":
                        c = fit_predictor(q[name], masks[name])
                        kw["coefficients"], kw["shift"] = quantise_predictor(c)
                        fkw["coefficients"] = c
                    r = interpolate(q[name], masks[name], method, **kw)
                    f = interpolate_float(q[name], masks[name], method, **fkw)
                    dropped = ~masks[name]
                    errors.append((r - q[name].astype(np.int64))[dropped])
                    float_gap = max(float_gap, float(np.abs(r - f).max()))
                errors = np.concatenate(errors)
                lines.append(f"| {criterion} | {density:.2f} | {method} | "
                             f"{np.sqrt(np.mean(errors.astype(float) ** 2)):.2f} | "
                             f"{np.abs(errors).max()} | {float_gap:.2f} |")
    lines.append("")
    # accuracy
    lines.append("| density | method | post-hoc (dense model pruned) | sparsity-aware fine-tuned |")
    lines.append("|---|---|---|---|")
    accuracy_rows = []
    for density in densities:
        masks = {name: top_k_mask(np.abs(q[name]), _keep(q[name].size, density)) for name in LAYERS}
        for method in METHODS:
            post, _ = reconstructed_accuracy(dense, masks, method, xt, yt)
            tuned, tuned_masks, coefficients = train_sparse(dense, density=density, method=method, seed=seed,
                                                            epochs=fine)
            aware, _ = reconstructed_accuracy(tuned, tuned_masks, method, xt, yt,
                                              coefficients=coefficients or None)
            accuracy_rows.append((density, method, post, aware))
            lines.append(f"| {density:.2f} | {method} | {post:.4f} | {aware:.4f} |")
    lines.append("")
    if record is not None:
        record["accuracy"] = [{"density": d, "method": m, "post_hoc": p, "sparsity_aware": a}
                              for d, m, p, a in accuracy_rows]
    # criteria
    lines.append("| density | criterion | post-hoc accuracy, zero interpolation |")
    lines.append("|---|---|---|")
    for density in densities:
        for criterion in ("magnitude", "gradient", "channel"):
            masks = {}
            for name in LAYERS:
                kw = {"gradients": grads[name]} if criterion == "gradient" else {}
                masks[name] = top_k_mask(scores(q[name], criterion, **kw), _keep(q[name].size, density))
            acc, _ = reconstructed_accuracy(dense, masks, "zero", xt, yt)
            lines.append(f"| {density:.2f} | {criterion} | {acc:.4f} |")
    lines.append("")
    lines.append(f"({time.perf_counter() - start:.0f} s)")
    if image:
        _plot(table, accuracy_rows, image)
    return "\n".join(lines)


def _plot(table, accuracy_rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from .weightstream import ENCODINGS
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    density = [row["density"] for row in table]
    for name in ENCODINGS:
        left.plot(density, [row[name] / row["dense"] for row in table], marker="o", label=name)
    left.axhline(1.0, color="gray", linestyle="--", label="dense int8")
    left.set_xlabel("density (kept fraction)")
    left.set_ylabel("bytes on the wire / dense int8")
    left.set_title("Stream size, trained digits CNN")
    left.legend()
    for colour, method in zip(("C0", "C3", "C2"), METHODS):
        rows = [r for r in accuracy_rows if r[1] == method]
        right.plot([r[0] for r in rows], [r[2] for r in rows], marker="o", linestyle="--", color=colour,
                   label=f"{method}, pruned after training")
        right.plot([r[0] for r in rows], [r[3] for r in rows], marker="s", color=colour,
                   label=f"{method}, sparsity-aware")
    right.set_xlabel("density (kept fraction)")
    right.set_ylabel("held-out accuracy")
    right.set_title("Accuracy with reconstructed weights")
    right.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
