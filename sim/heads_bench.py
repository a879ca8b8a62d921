"""``dynsparse bench --suite heads``: sampled-offset heads against a dense convolution of the same reach.

A layer of ``H`` heads of ``k`` taps each, offsets within ``[-n, n]``, runs
on the sparse-tap engine (:class:`~dynsparse.hdl.heads.HeadLayer`) in
``ceil``-divided walks of its listed taps; a dense convolution of the same
reach reads every input of the ``(2n + 1)``-wide window (``C · (2n+1)²`` taps
per output in 2-D, ``C · (2n + 1)`` in 1-D). Both run on the same engine
model: the dense one in dense mode (every tap, nothing skipped), the heads
with zero padding (taps beyond the frame cost nothing). Cycles are the
engine's whole-frame timeline (:func:`~dynsparse.golden.sparseconv.engine_cycles`,
matched cycle for cycle by the RTL in the tests); MACs from the bit-exact
model (:func:`~dynsparse.golden.sparseconv.sparse_conv`) on real inputs: a
crop of scikit-image's ``camera`` (2-D, one channel) and held-out peptides
of the modlamp ACP set, one per row (1-D, 8 property channels).

Written: ``build/bench/heads.json``, the generated part of ``docs/heads.md``
and ``docs/images/heads_bench.png``.
"""

import json
import time
from pathlib import Path

import numpy as np

from ..golden import heads as H
from ..golden.images import real_image
from ..golden.sparseconv import engine_cycles, sparse_conv


__all__ = ["HEADS_BENCH_BEGIN", "HEADS_BENCH_END", "heads_case", "run_heads_bench"]

HEADS_BENCH_BEGIN = "<!-- dynsparse bench --suite heads: begin -->"
HEADS_BENCH_END = "<!-- dynsparse bench --suite heads: end -->"


def _inputs(task):
    """``(frame [rows, cols, C], dims)``: the bench's real input."""
    if task == "camera":
        return real_image("camera", size=(32, 32))[:, :, None], 2
    x_train, y_train, x_test, _, _, _, _ = H.load_task("acp")
    return np.transpose(x_test[:16], (0, 2, 1)).astype(np.int8), 1        # 16 peptides × 48 positions × 8


def heads_case(frame, dims, *, reach, k, heads, lanes, seed=0):
    """One bench row: the heads' and the dense convolution's MACs and engine cycles on ``frame``."""
    channels = frame.shape[2]
    space = H.HeadSpace(dims, channels, reach)
    rng = np.random.default_rng(seed)
    dist = H.TapDistribution.from_offsets(space, H.OffsetDistribution("normal", scale=max(reach / 2, 0.5)))
    k = min(k, space.candidates)
    mask = dist.sample_mask(rng, heads, H.TapCount("constant", k))
    params = H.init_params(mask, 2, seed=seed)
    export = H.quantise(params, mask, space, np.zeros((1, channels) + (4,) * dims, np.int64), input_scale=1.0)
    export["weight"] = np.where(export["weight"] == 0, 1, export["weight"])       # every listed tap a MAC
    rows, cols = frame.shape[:2]
    lists = H.tap_lists(export, height=rows, width=cols)
    _, counters = sparse_conv(frame, lists, kernel_size=space.side, pad_mode="zero", lanes=lanes)
    active = counters["active"].reshape(rows * cols, heads)
    dense_taps = space.candidates                                    # C · (2n+1)^dims per output
    dense_active = np.full((rows * cols, heads), dense_taps)
    sparse_cycles = engine_cycles(active, lanes=lanes)
    dense_cycles = engine_cycles(dense_active, lanes=lanes)
    positions = rows * cols
    return {
        "reach": reach, "window": space.side, "dims": dims, "k": k, "heads": heads, "lanes": lanes,
        "positions": positions, "listed_taps": int(k * heads), "dense_taps": int(dense_taps * heads),
        "performed": counters["performed"], "padding_skipped": counters["padding"],
        "dense_macs": int(dense_taps * heads * positions),
        "sparse_cycles": int(sparse_cycles), "dense_cycles": int(dense_cycles),
        "speedup": dense_cycles / sparse_cycles, "ideal": dense_taps / k,
    }


def _markdown(results):
    lines = ["Command: `dynsparse bench --suite heads` "
             f"({results['seconds']:.0f} s). {results['heads']} heads, offsets drawn from a normal "
             "distribution with σ = n/2, k taps each; cycles of the whole frame on the engine model "
             "(dense mode for the dense convolution, zero padding for the heads).", ""]
    for task, label in (("camera", "2-D: `camera`, 32 × 32, one channel"),
                        ("peptides", "1-D: 16 held-out ACP peptides × 48 positions, 8 channels, one per row")):
        rows = [r for r in results["rows"] if r["task"] == task]
        lines += [f"### {label}", "",
                  "| n | window | k | lanes | taps / output: dense → heads | dense cycles | head cycles | "
                  "speedup | ideal (dense taps / k) | cycles per position: dense → heads |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['reach']} | {r['window']}{'²' if r['dims'] == 2 else ''} | {r['k']} | {r['lanes']} | "
                         f"{r['dense_taps'] // r['heads']} → {r['k']} | {r['dense_cycles']:,} | "
                         f"{r['sparse_cycles']:,} | {r['speedup']:.1f}× | {r['ideal']:.1f}× | "
                         f"{r['dense_cycles'] / r['positions']:.1f} → {r['sparse_cycles'] / r['positions']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def _figure(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    for ax, task in zip(axes, ("camera", "peptides")):
        rows = [r for r in results["rows"] if r["task"] == task]
        for lanes in sorted({r["lanes"] for r in rows}):
            sel = [r for r in rows if r["lanes"] == lanes and r["k"] == min(x["k"] for x in rows)]
            ax.plot([r["reach"] for r in sel], [r["dense_cycles"] / r["positions"] for r in sel], "s--",
                    label=f"dense, {lanes} lanes")
            for k in sorted({r["k"] for r in rows}):
                sel = [r for r in rows if r["lanes"] == lanes and r["k"] == k]
                ax.plot([r["reach"] for r in sel], [r["sparse_cycles"] / r["positions"] for r in sel], "o-",
                        label=f"heads k={k}, {lanes} lanes")
        ax.set_yscale("log")
        ax.set_xlabel("reach n (window 2n+1)")
        ax.set_ylabel("engine cycles per output position")
        ax.set_title("2-D camera" if task == "camera" else "1-D peptides (8 channels)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7)
    fig.suptitle(f"{results['heads']} sampled heads against a dense convolution of the same reach", fontsize=9)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_heads_bench(*, reaches=(1, 2, 3, 5, 7), ks=(2, 4, 8), lanes=(2, 8), heads=16, out=Path("build/bench"),
                    docs=Path("docs"), log=print):
    """Every (task, n, k, lanes) row; writes ``heads.json`` and, with ``docs``, ``docs/heads.md``'s
    bench section and ``docs/images/heads_bench.png``."""
    if docs is not None:
        text = (docs / "heads.md").read_text()
        if HEADS_BENCH_BEGIN not in text or HEADS_BENCH_END not in text:
            raise ValueError(f"{docs / 'heads.md'} has no {HEADS_BENCH_BEGIN!r} … {HEADS_BENCH_END!r} section")
    start = time.perf_counter()
    rows = []
    for task in ("camera", "peptides"):
        frame, dims = _inputs(task)
        for reach in reaches:
            for k in ks:
                for lane_count in lanes:
                    row = heads_case(frame, dims, reach=reach, k=k, heads=heads, lanes=lane_count)
                    row["task"] = task
                    rows.append(row)
                    log(f"heads {task:>8} n={reach} k={k} L={lane_count}: dense {row['dense_cycles']:>9,} "
                        f"heads {row['sparse_cycles']:>7,} cycles ({row['speedup']:.1f}×, ideal {row['ideal']:.1f}×)")
    results = {"heads": heads, "rows": rows, "seconds": time.perf_counter() - start}
    out.mkdir(parents=True, exist_ok=True)
    (out / "heads.json").write_text(json.dumps(results, indent=1))
    markdown = _markdown(results)
    if docs is not None:
        _figure(results, docs / "images" / "heads_bench.png")
        head, rest = text.split(HEADS_BENCH_BEGIN, 1)
        _, tail = rest.split(HEADS_BENCH_END, 1)
        (docs / "heads.md").write_text(f"{head}{HEADS_BENCH_BEGIN}\n{markdown}\n{HEADS_BENCH_END}{tail}")
        log(f"wrote {out / 'heads.json'}, {docs / 'heads.md'}, {docs / 'images' / 'heads_bench.png'}")
    return results
