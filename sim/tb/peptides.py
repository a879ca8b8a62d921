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


__all__ = ["trained_trace"]


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
