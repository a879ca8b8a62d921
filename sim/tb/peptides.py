"""A model trained on modlamp's AMP/TM peptides for the testbenches, cached between runs.

``trained_trace(seed, epochs, count)`` trains the default :class:`~dynsparse.golden.spn.SPNConfig`
model (``golden.spn.train``, soft path) on the seed's training split, quantises it and runs the
integer loop on the first ``count`` held-out peptides (``"all"``: every one). Training takes
about 20 s, so the export is kept in the temporary directory, keyed by seed and epochs, and
written atomically (testbenches may run side by side).
"""

import os
import tempfile

import numpy as np

from dynsparse.golden import spn as golden


__all__ = ["trained_trace", "varied", "loop_words"]


def trained_trace(seed, epochs, count):
    """``(export, held-out indices, integer-loop trace)``."""
    config = golden.SPNConfig()
    sequences, labels, _ = golden.load_dataset("AMPvsTM")
    x = golden.encode(sequences, length=config.length)
    train_idx, test_idx = golden.split(labels, seed=seed)
    path = os.path.join(tempfile.gettempdir(), f"dynsparse-spn-AMPvsTM-soft-seed{seed}-epochs{epochs}.npz")
    try:
        with np.load(path) as stored:
            export = {key: stored[key] for key in stored.files}
        golden.check_export(export)
    except (OSError, ValueError, TypeError):
        params = golden.train(x[train_idx], labels[train_idx], config, seed=seed, epochs=epochs, path="soft")
        export = golden.quantise(params, config, x[train_idx])[0]
        partial = f"{path}.{os.getpid()}.npz"
        golden.save_export(export, partial)
        os.replace(partial, path)
    test_idx = test_idx if count == "all" else test_idx[:int(count)]
    _, trace = golden.forward_int(export, x[test_idx])
    return export, test_idx, trace


def varied(export, levels):
    """``export`` with the SPN's last biases set so that its outputs ``r3`` sit near
    ``levels[t][c] · 127`` (an untrained SPN is nearly dead: its biases decide), and a scale
    multiplier that maps them onto the whole code range: ``u = Σ r3 · 620 >> 16``, about
    ``0.76 · r3`` on 8 × 10 maps. Levels of 0 or less give 0.5, of 1 or more 2.0."""
    export = dict(export)
    m, s = np.asarray(export["spn3_m"], np.float64), np.asarray(export["spn3_s"], np.float64)
    unit = 2.0 ** s / m                                         # accumulator units per r3 step
    export["spn3_b"] = np.floor(np.asarray(levels, np.float64) * 127 * unit[:, None]).astype(np.int64)
    export["scale_m"] = np.full(len(levels), 620, np.int64)
    export["scale_s"] = np.full(len(levels), 16, np.int64)
    return export


def loop_words(export, x):
    """The words :class:`~dynsparse.hdl.spnloop.EncodingLoop` gives out for the maps ``x [B, H, L]``,
    from the integer model: per map, one word per iteration (scale and window codes), the
    channel sums ``g`` and the logit."""
    logits, trace = golden.forward_int(export, x)
    out = []
    for b in range(len(x)):
        words = [int(c[0]) | int(c[1]) << 8 | int(k[0]) << 16 | int(k[1]) << 24
                 for c, k in zip(trace["scale_codes"][b], trace["kernel_sizes"][b])]
        words += [int(v) for v in trace["pooled"][b].sum(axis=(1, 2))]
        out.append(words + [int(logits[b])])
    return out
