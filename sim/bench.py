"""``dynsparse bench``: what density-shaped kernels and padding skips buy on real images.

For every image and prune threshold the bit-exact models of the density
unit, the kernel scaler and the sparse convolution engine
(:mod:`dynsparse.golden`) give the tap lists, the accumulators and the
engine's counters; the engine's cycle counts come from its cycle model
(:func:`~dynsparse.golden.sparseconv.engine_cycles`, which the RTL is checked
against, cycle for cycle, by the tests). Figures written: ``build/bench/bench.json``, ``docs/bench.md`` and a
skip map per image in ``docs/images/skipmap.png``.

Speedup is ``dense cycles / sparse cycles`` of the same engine; the ideal is
``dense MACs / performed MACs``. The engine passes at most one output
position per cycle (its input, the window generator, delivers one window per
cycle), so the ideal it can reach is also reported bounded by that rate.
"""

import json
import math
import time
from pathlib import Path

import numpy as np

from ..golden.density import density_map, density_map_float, inv_ref_var
from ..golden.images import real_image
from ..golden.sparseconv import (
    FINISHED_SLOTS, QUEUE_DEPTH, conv_float, dense_tap_lists, engine_cycles, expand_tiles, sparse_conv,
    tap_densities, tap_densities_float, tap_lists,
)
from ..golden.laneconv import lane_cycles
from ..golden.packedconv import RESULT_SLOTS, RING_DEPTH, packed_cycles
from .schedule import decoupled_cycles, flat_cycles, flat_empty_free_cycles, fluid_cycles, walker_cycles


__all__ = ["BENCH_IMAGES", "FILTER_BANK", "SCHEDULE_DEPTHS", "FLUID_DEPTHS", "EMPTY_FREE_WAITING",
           "TARGET_FRACTION", "filter_bank", "bench_image", "run_bench",
           "run_weight_bench", "WEIGHT_BENCH_BEGIN", "WEIGHT_BENCH_END"]

#: Markers around the generated part of docs/weightstream.md's *Measured* section.
WEIGHT_BENCH_BEGIN = "<!-- dynsparse bench --suite weights: begin -->"
WEIGHT_BENCH_END = "<!-- dynsparse bench --suite weights: end -->"

#: Buffer depths (positions) of the decoupled-lane schedule model (:mod:`dynsparse.sim.schedule`).
SCHEDULE_DEPTHS = (16, 64)
#: Buffer depths (positions) of the fluid bound (:func:`dynsparse.sim.schedule.fluid_cycles`).
FLUID_DEPTHS = (64, 1024)
#: Buffer depths (non-empty positions) of the fluid bound with empty positions free.
FLUID_FREE_DEPTHS = (16, 64)
#: Non-empty positions that may wait while one walks in the *flat, empty positions free* model.
EMPTY_FREE_WAITING = 1
#: The project's target: sparse speedup at least this fraction of the (rate-bounded) ideal.
TARGET_FRACTION = 0.8

BENCH_IMAGES = ("camera", "text", "page", "hubble_deep_field")
#: Largest side measured: larger images are centre-cropped (hubble_deep_field is 872×1000).
MAX_SIDE = 512

#: The eight 3×3 output channels of the benchmark layer (int8, C_in = 1).
FILTER_BANK = {
    "sobel_x":   32 * np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]),
    "sobel_y":   32 * np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]]),
    "laplacian": 31 * np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]]),
    "gaussian":  31 * np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]),
    "sharpen":   25 * np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]]),
    "diagonal":  40 * np.array([[2, 1, 0], [1, 0, -1], [0, -1, -2]]),
    "box":       np.full((3, 3), 127),
    "random":    np.random.default_rng(2024).integers(-127, 128, size=(3, 3)),
}


def filter_bank():
    """The benchmark layer's weights, int64 ``[8, 1, 3, 3]``."""
    return np.stack(list(FILTER_BANK.values()))[:, None].astype(np.int64)


def _image(name, max_side=MAX_SIDE):
    image = real_image(name)
    height, width = image.shape
    size = (min(height, max_side), min(width, max_side))
    return real_image(name, size=size) if size != image.shape else image


def _rel_rms(value, reference):
    scale = math.sqrt(float(np.mean(reference ** 2))) or 1.0
    return math.sqrt(float(np.mean((value - reference) ** 2))) / scale


def _schedule_models(counts, lists, lanes, dense_cycles, sparse_cycles, bound, depths,
                     fluid_depths=FLUID_DEPTHS, waiting=EMPTY_FREE_WAITING):
    """Fractions of the rate-bounded ideal that the schedules of :mod:`dynsparse.sim.schedule` reach.

    ``pipeline_at_most``: the engine behind the kernel scaler at tile size 1 cannot be faster
    than the slower of the two alone (``max`` of their cycle totals), so this is an upper bound.
    ``fluid_<D>``: the fluid bound, so the highest fraction any schedule with one window a cycle
    and a buffer of ``D`` positions can reach.
    """
    active = counts["active"]
    unpruned = (lists.count + lists.zero)[..., 0]
    models = {"pipeline_at_most": dense_cycles / max(walker_cycles(unpruned), sparse_cycles) / bound,
              "flat": dense_cycles / flat_cycles(active, lanes=lanes) / bound,
              "flat_empty_free": dense_cycles / flat_empty_free_cycles(active, lanes=lanes, waiting=waiting)
              / bound}
    for depth in depths:
        for rotate in (False, True):
            cycles = decoupled_cycles(active, lanes=lanes, depth=depth, rotate=rotate)
            models[f"{'rotated' if rotate else 'fixed'}_{depth}"] = dense_cycles / cycles / bound
    for depth in fluid_depths:
        models[f"fluid_{depth}"] = dense_cycles / fluid_cycles(active, lanes=lanes, depth=depth) / bound
    for depth in FLUID_FREE_DEPTHS:
        models[f"fluid_free_{depth}"] = dense_cycles / fluid_cycles(active, lanes=lanes, depth=depth,
                                                                    empty_free=True) / bound
    return models


def _fluid_buffer_for(active, lanes, cycles, limit):
    """The smallest power-of-two buffer depth at which the fluid bound takes at most ``cycles``
    (``None`` if even a buffer of every position, ``limit``, does not): the bound falls with depth,
    so with half that buffer or less no schedule of its kind reaches ``cycles``."""
    depth = 1
    while fluid_cycles(active, lanes=lanes, depth=depth) > cycles * (1 + 1e-12):
        if depth >= limit:
            return None
        depth *= 2
    return depth


def bench_image(name, *, thresholds, lanes, tile_sizes=(1,), ref_std=24.0, pad_mode="zero",
                max_side=MAX_SIDE, log=print, schedule_depths=SCHEDULE_DEPTHS, fluid_depths=FLUID_DEPTHS):
    """Measure one image, centre-cropped to ``max_side``; returns ``(rows, frame, skip maps by threshold)``."""
    frame = _image(name, max_side)
    height, width = frame.shape
    weights = filter_bank()
    c_out, _, k, _ = weights.shape
    density = density_map(frame[..., None], kernel_size=k, inv_ref_var=inv_ref_var(ref_std))
    density_f = density_map_float(frame[..., None], kernel_size=k, ref_std=ref_std)
    _, dense_counts = sparse_conv(frame, dense_tap_lists(weights, (height, width)), kernel_size=k,
                                  pad_mode=pad_mode, dense=True, lanes=c_out)
    dense_cycles = {lane: sparse_conv_cycles(dense_counts["active"], lane) for lane in lanes}
    packed_dense = {lane: packed_cycles(dense_counts["active"].reshape(-1, c_out), width=width, kernel_size=k,
                                        lanes=lane) for lane in lanes}
    rows, skip_maps = [], {}
    for tile in tile_sizes:
        reference = conv_float(frame, weights, tap_densities_float(density_f, kernel_size=k, tile_size=tile),
                               pad_mode=pad_mode, tile_size=tile)
        for threshold in thresholds:
            started = time.monotonic()
            lists = expand_tiles(tap_lists(weights, tap_densities(density, kernel_size=k, tile_size=tile),
                                           prune_threshold=threshold),
                                 height=height, width=width, tile_size=tile)
            acc, counts = sparse_conv(frame, lists, kernel_size=k, pad_mode=pad_mode, lanes=c_out)
            pruned_f = conv_float(frame, weights,
                                  tap_densities_float(density_f, kernel_size=k, tile_size=tile),
                                  prune_threshold=threshold / 256, pad_mode=pad_mode, tile_size=tile)
            ideal = counts["dense"] / max(counts["performed"], 1)
            row = {
                "image": name, "height": height, "width": width, "tile_size": tile,
                "prune_threshold": threshold, "prune_threshold_float": threshold / 256,
                "density_mean": float(density.mean() / 256),
                "density_below_threshold": float(np.mean(density < threshold)),
                "dense_macs": counts["dense"], "performed_macs": counts["performed"],
                "skipped_pruned": counts["pruned"], "skipped_zero": counts["zero"],
                "skipped_padding": counts["padding"],
                "ideal_speedup": ideal,
                "error_vs_float_scaled": _rel_rms(acc, reference),
                "error_vs_float_same_pruning": _rel_rms(acc, pruned_f),
                "max_abs_error_same_pruning": float(np.abs(acc - pruned_f).max()),
                "lanes": {},
            }
            for lane in lanes:
                sparse = sparse_conv_cycles(counts["active"], lane)
                speedup = dense_cycles[lane] / sparse
                floor = dense_cycles[lane] / (height * width)        # one position per cycle
                balanced = max(height * width, -(-counts["performed"] // lane))
                row["lanes"][str(lane)] = {
                    "dense_cycles": dense_cycles[lane], "sparse_cycles": sparse,
                    "speedup": speedup,
                    "fraction_of_ideal": speedup / ideal,
                    "ideal_at_one_position_per_cycle": min(ideal, floor),
                    "fraction_of_rate_bounded_ideal": speedup / min(ideal, floor),
                    "dense_lane_busy": counts["dense"] / (lane * dense_cycles[lane]),
                    "sparse_lane_busy": counts["performed"] / (lane * sparse),
                    "balanced_cycles": balanced,
                    "balanced_fraction_of_ideal": dense_cycles[lane] / balanced / ideal,
                }
                # the compact engine (LaneConv): one beat a cycle, every listed entry a lane slot
                compact = lane_cycles(lists.count.reshape(-1, c_out), lanes=lane)
                compact_dense = lane_cycles(np.full((height * width, c_out), weights[0].size), lanes=lane)
                row["lanes"][str(lane)]["compact"] = {
                    "dense_cycles": compact_dense, "sparse_cycles": compact,
                    "speedup": compact_dense / compact,
                    "fraction_of_rate_bounded_ideal": compact_dense / compact / min(ideal, floor),
                }
                # the packed engine (PackedConv): the host's schedule over every buffered position
                packed = packed_cycles(counts["active"].reshape(-1, c_out), width=width, kernel_size=k,
                                       lanes=lane)
                row["lanes"][str(lane)]["packed"] = {
                    "dense_cycles": packed_dense[lane], "sparse_cycles": packed,
                    "speedup": packed_dense[lane] / packed,
                    "fraction_of_ideal": packed_dense[lane] / packed / ideal,
                    "fraction_of_rate_bounded_ideal": packed_dense[lane] / packed / min(ideal, floor),
                    "sparse_lane_busy": counts["performed"] / (lane * packed),
                }
                if tile == 1 and schedule_depths:
                    row["lanes"][str(lane)]["schedule_models"] = _schedule_models(
                        counts, lists, lane, dense_cycles[lane], sparse, min(ideal, floor), schedule_depths,
                        fluid_depths)
                    row["lanes"][str(lane)]["fluid_buffer_for_target"] = _fluid_buffer_for(
                        counts["active"], lane, dense_cycles[lane] / (min(ideal, floor) * TARGET_FRACTION),
                        height * width)
            rows.append(row)
            if tile == tile_sizes[0]:
                skip_maps[threshold] = 1 - counts["active"].sum(axis=-1) / (c_out * weights[0].size)
            lane_text = ", ".join(f"L={lane}: {row['lanes'][str(lane)]['speedup']:.2f}× "
                                  f"({row['lanes'][str(lane)]['fraction_of_ideal']:.0%} of ideal)"
                                  for lane in lanes)
            log(f"  {name:18} T={tile} threshold {threshold:3}: MACs {counts['performed']:>9,} of "
                f"{counts['dense']:>9,} (ideal {ideal:5.2f}×), {lane_text}, "
                f"error {row['error_vs_float_scaled']:.4f} [{time.monotonic() - started:.1f} s]")
    return rows, frame, skip_maps


def sparse_conv_cycles(active, lanes):
    """The engine's cycles over a frame, positions in raster order (:func:`engine_cycles`:
    windows and tap lists always offered, results always taken; the RTL matches it cycle for cycle)."""
    return engine_cycles(np.asarray(active).reshape(-1, np.shape(active)[-1]), lanes=lanes)


def _markdown(rows, *, lanes, thresholds, ref_std, pad_mode, command):
    lines = [
        "# Sparse convolution benchmark",
        "",
        f"Written by `{command}`; the same figures are in `build/bench/bench.json`.",
        "",
        "## Set-up",
        "",
        "- Layer: 3×3, one input channel, eight output channels: "
        + ", ".join(f"`{name}`" for name in FILTER_BANK) + " (int8, `sim/bench.py`).",
        f"- Density: K = 3, reference std {ref_std:g}; padding `{pad_mode}` (padding taps skipped).",
        f"- Prune thresholds (UQ1.8): {', '.join(str(t) for t in thresholds)} "
        f"(= {', '.join(f'{t / 256:g}' for t in thresholds)}); tile size 1 unless marked.",
        f"- Engine: {' and '.join(str(lane) for lane in lanes)} lanes, queue depth {QUEUE_DEPTH}, "
        f"{FINISHED_SLOTS} finished slots (the defaults); cycles from the "
        "engine's cycle model (`engine_cycles`: first window accepted to last result offered, inputs "
        "always offered), which the RTL matches cycle for cycle. A position takes "
        "`max_q ceil(v_q / 2)` walk steps (walker q: a lane pair and the v_q active taps of its "
        "channels), an empty position none.",
        "- Images larger than 512 pixels a side are centre-cropped to 512.",
        "- *error*: RMS of (integer sparse output − float reference with float densities, scaled, "
        "unpruned) / RMS(reference): the accuracy cost of pruning plus fixed point. *fixed point*: "
        "the same against the float reference pruned at the same threshold.",
        "- *ideal* = dense MACs / performed MACs; *bounded* = the ideal capped at one output position "
        "per cycle (the engine's input rate).",
        "- *balanced*: the fraction of the ideal that a schedule spreading the MACs evenly over the "
        "lanes (across output channels and positions) would reach, `max(positions, ceil(performed / L))` "
        "cycles: the headroom left by the engine's schedule.",
        "",
        "## Results",
        "",
    ]
    header = ["image", "T", "threshold", "mean density", "below thr.", "performed / dense MACs",
              "pruned", "zero", "padding", "ideal"]
    for lane in lanes:
        header += [f"L={lane} dense cyc.", f"L={lane} sparse cyc.", f"L={lane} speedup",
                   f"L={lane} of ideal", f"L={lane} of bounded", f"L={lane} balanced"]
    header += ["error", "fixed point"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["image"], str(row["tile_size"]), str(row["prune_threshold"]),
                 f"{row['density_mean']:.3f}", f"{row['density_below_threshold']:.1%}",
                 f"{row['performed_macs']:,} / {row['dense_macs']:,}",
                 f"{row['skipped_pruned']:,}", f"{row['skipped_zero']:,}", f"{row['skipped_padding']:,}",
                 f"{row['ideal_speedup']:.2f}×"]
        for lane in lanes:
            figures = row["lanes"][str(lane)]
            cells += [f"{figures['dense_cycles']:,}", f"{figures['sparse_cycles']:,}",
                      f"{figures['speedup']:.2f}×", f"{figures['fraction_of_ideal']:.0%}",
                      f"{figures['fraction_of_rate_bounded_ideal']:.0%}",
                      f"{figures['balanced_fraction_of_ideal']:.0%}"]
        cells += [f"{row['error_vs_float_scaled']:.4f}", f"{row['error_vs_float_same_pruning']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if all("compact" in row["lanes"][str(lane)] for row in rows for lane in lanes):
        lines += ["", "### The compact engine (`LaneConv`)", "",
                  "The same cases on `LaneConv` (`hdl/laneconv.py`, docs/laneconv.md), whose tap entries "
                  "arrive laid out on the lanes, one beat a cycle: a position takes `max(1, max_j "
                  "entries of lane j)` beats (`golden.laneconv.lane_cycles`, which the RTL matches cycle "
                  "for cycle), every position at least one, and a listed entry that reads excluded padding "
                  "keeps its lane slot. *flat*: `SparseConv` (above). Fractions are of the bounded ideal.",
                  ""]
        header = ["image", "T", "threshold", "ideal"]
        for lane in lanes:
            header += [f"L={lane} flat speedup", f"L={lane} flat", f"L={lane} compact speedup",
                       f"L={lane} compact"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in rows:
            cells = [row["image"], str(row["tile_size"]), str(row["prune_threshold"]),
                     f"{row['ideal_speedup']:.2f}×"]
            for lane in lanes:
                flat, compact = row["lanes"][str(lane)], row["lanes"][str(lane)]["compact"]
                cells += [f"{flat['speedup']:.2f}×", f"{flat['fraction_of_rate_bounded_ideal']:.0%}",
                          f"{compact['speedup']:.2f}×", f"{compact['fraction_of_rate_bounded_ideal']:.0%}"]
            lines.append("| " + " | ".join(cells) + " |")
    if all("packed" in row["lanes"][str(lane)] for row in rows for lane in lanes):
        lines += ["", "### The packed engine (`PackedConv`)", "",
                  "The same cases on `PackedConv` (`hdl/packedconv.py`, docs/packedconv.md): the host "
                  "packs every output's performed MACs onto the lanes across positions (list scheduling "
                  f"in raster order), with a ring of the last {RING_DEPTH:,} pixels and {RESULT_SLOTS:,} "
                  "result slots per channel, one pixel taken and one result given a beat at most "
                  "(`golden.packedconv.packed_cycles`, which the RTL matches cycle for cycle). Its dense "
                  "cycles are its own dense mode's. Fractions are of the bounded ideal.", ""]
        header = ["image", "T", "threshold", "ideal"]
        for lane in lanes:
            header += [f"L={lane} dense cyc.", f"L={lane} sparse cyc.", f"L={lane} speedup",
                       f"L={lane} of bounded", f"L={lane} lanes busy"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in rows:
            cells = [row["image"], str(row["tile_size"]), str(row["prune_threshold"]),
                     f"{row['ideal_speedup']:.2f}×"]
            for lane in lanes:
                packed = row["lanes"][str(lane)]["packed"]
                cells += [f"{packed['dense_cycles']:,}", f"{packed['sparse_cycles']:,}", f"{packed['speedup']:.2f}×",
                          f"{packed['fraction_of_rate_bounded_ideal']:.1%}", f"{packed['sparse_lane_busy']:.0%}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        for lane in lanes:
            values = [row["lanes"][str(lane)]["packed"]["fraction_of_rate_bounded_ideal"] for row in rows]
            worst = rows[int(np.argmin(values))]
            reached = sum(value >= TARGET_FRACTION for value in values)
            lines.append(f"- L = {lane}: lowest {min(values):.1%} ({worst['image']} T={worst['tile_size']} "
                         f"threshold {worst['prune_threshold']}); {reached} of {len(values)} cases at or above "
                         f"the {TARGET_FRACTION:g} target.")
    modelled = [row for row in rows if any("schedule_models" in f for f in row["lanes"].values())]
    if modelled:
        names = list(next(f for f in modelled[0]["lanes"].values() if "schedule_models" in f)["schedule_models"])
        depths = sorted({int(n.split("_")[1]) for n in names if n.startswith("fixed_")})
        fluid_depths = sorted({int(n.split("_")[1]) for n in names if n.startswith("fluid_")
                               and not n.startswith("fluid_free_")})
        free_depths = sorted({int(n.split("_")[2]) for n in names if n.startswith("fluid_free_")})
        lines += ["", "## Schedules: what the engine reaches and what other schedules would (models)", "",
                  "Fractions of the rate-bounded ideal, tile size 1. *engine*: the engine as built (the "
                  "table above). The rest are cycle models of schedules that are **not built** "
                  "(`sim/schedule.py`), on the same per-position work:",
                  "",
                  "- *pipeline ≤*: an upper bound for the engine fed by the kernel scaler "
                  "(`SparseConvPipeline`, tile size 1), whose walk costs `max(1, unpruned taps)` cycles a "
                  "position: the slower of the two totals;",
                  "- *flat*: each position's MACs spread over all lanes, `max(1, ceil(Σ active / L))`;",
                  "- *flat + empty free*: the same, except that a position with no active MAC costs no lane "
                  "cycle, only its admission cycle (at most one window a cycle), and non-empty positions "
                  "walk one at a time while up to `waiting` others wait, admitted (`flat_empty_free_cycles`, "
                  f"`waiting = {EMPTY_FREE_WAITING}`). The engine at L = 2 is built after it, with two "
                  "differences: the waiting position holds the engine's front, so empty positions behind "
                  "it wait too, and a position admitted to an idle walker takes its first step in the "
                  "next cycle;",
                  "- *fixed D* / *rotated D*: lanes decoupled through a buffer of D positions (windows and "
                  "tap lists), each lane walking its own channels (*fixed*) or, at position p, the channels "
                  "of lane `(j + p) mod L` (*rotated*);",
                  "- *fluid D*: the fluid bound, not a schedule: every MAC spread over all lanes with no "
                  "granularity (a position takes `Σ active / L` cycles of the whole lane set, fractions "
                  "allowed), positions admitted in order, one a cycle, into a buffer of D positions, each "
                  "holding its slot for at least one cycle (`fluid_cycles`). No schedule that admits "
                  "windows in order, at most one a cycle, into a buffer of D positions (a position leaves "
                  "when its MACs are done) and performs at most L MACs a cycle takes fewer cycles, so "
                  "*fluid D* is the highest fraction any of them can reach. *fluid buffer for "
                  f"{TARGET_FRACTION:.0%}*: the smallest power-of-two D at which it reaches "
                  f"{TARGET_FRACTION:.0%}.",
                  "- *fluid free D*: the same bound when a position with no active MAC holds no slot (it "
                  "passes in its admission cycle, as in the engine), D counting the positions with work "
                  "(`fluid_cycles(..., empty_free=True)`): the highest fraction a schedule whose empty "
                  "positions pass free can reach with a buffer of D positions that have work.",
                  ""]
        kinds = [("engine", None), ("pipeline ≤", "pipeline_at_most"), ("flat", "flat"),
                 ("flat + empty free", "flat_empty_free")] + [
            (f"{kind} {depth}", f"{kind}_{depth}") for depth in depths for kind in ("fixed", "rotated")] + [
            (f"fluid {depth}", f"fluid_{depth}") for depth in fluid_depths] + [
            (f"fluid free {depth}", f"fluid_free_{depth}") for depth in free_depths]

        def fractions(lane, key):
            return [row["lanes"][str(lane)]["fraction_of_rate_bounded_ideal"] if key is None
                    else row["lanes"][str(lane)]["schedule_models"][key] for row in modelled]

        for lane in lanes:
            lowest = [f"{label} {min(fractions(lane, key)):.0%}" for label, key in kinds]
            lines.append(f"- Lowest over the table at L = {lane}: " + ", ".join(lowest) + ".")
        lines += [""] + _target_text(modelled, lanes, kinds, fractions, fluid_depths, free_depths)
        lines.append("")
        header = ["image", "threshold", "L"] + [label for label, _ in kinds] + [
            f"fluid buffer for {TARGET_FRACTION:.0%}"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        table = {lane: [fractions(lane, key) for _, key in kinds] for lane in lanes}
        for index, row in enumerate(modelled):
            for lane in lanes:
                cells = [row["image"], str(row["prune_threshold"]), str(lane)]
                cells += [f"{values[index]:.0%}" for values in table[lane]]
                cells.append(_buffer_text(row["lanes"][str(lane)].get("fluid_buffer_for_target")))
                lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Lanes busy on dense work", ""]
    for lane in lanes:
        busy = rows[0]["lanes"][str(lane)]["dense_lane_busy"]
        lines.append(f"- {lane} lanes: {busy:.1%} of lane-cycles perform a MAC in dense mode.")
    lines += ["", "## Skip maps", "",
              "![skip maps](images/skipmap.png)", "",
              "Fraction of the layer's multiplications skipped at each output pixel "
              f"(threshold {thresholds[len(thresholds) // 2]}), beside the image.", ""]
    return "\n".join(lines)


def _buffer_text(depth):
    return "none" if depth is None else f"{depth:,}"


def _target_text(modelled, lanes, kinds, fractions, fluid_depths, free_depths=()):
    """The paragraph on the target: the buffer the fluid bound needs for it, which schedules reach it."""
    target = TARGET_FRACTION
    lines = [f"**The {target:g} target.** The project asks for a sparse speedup of at least {target:g} of "
             "the ideal; with one window a cycle that is the rate-bounded ideal."]
    labels = dict((key, label) for label, key in kinds)
    for lane in lanes:
        text = [f"At L = {lane}:"]
        needs = [(row["lanes"][str(lane)]["fluid_buffer_for_target"], row) for row in modelled]
        unreachable = [row for depth, row in needs if depth is None]
        needs = sorted(((depth, row) for depth, row in needs if depth is not None and depth > 1),
                       key=lambda item: -item[0])
        if needs:
            depth, worst = needs[0]
            cases = "; ".join(f"{row['image']} {row['prune_threshold']}: {depth:,} positions, not {depth // 2:,}"
                              for depth, row in needs)
            text.append(f"the fluid bound reaches {target:.0%} with a buffer of (smallest power of two, column "
                        f"*fluid buffer for {target:.0%}*) {cases}. So no schedule that admits one window a "
                        "cycle, every position holding a slot, meets the target there with the smaller buffer"
                        + (" of each pair" if len(needs) > 1 else "") + " or less: on "
                        f"{worst['image']} {worst['prune_threshold']} not with {depth // 2:,} positions")
            shallow = [d for d in fluid_depths if d < depth]
            if shallow:
                index = modelled.index(worst)
                text[-1] += " (fluid " + ", ".join(
                    f"{d}: {fractions(lane, f'fluid_{d}')[index]:.0%}" for d in shallow) + ")"
            text[-1] += (". The work comes in bursts in space (edges): flat regions cannot lend their idle "
                         "lane cycles to later edges without holding their windows in the buffer.")
        else:
            text.append(f"the fluid bound reaches {target:.0%} on every case with a buffer of one position.")
        if free_depths:
            free = [(d, fractions(lane, f"fluid_free_{d}")) for d in free_depths]
            text.append("With empty positions free (no slot) the bound is higher: lowest "
                        + ", ".join(f"{min(values):.0%} with {d} positions with work" for d, values in free)
                        + " (*fluid free*)" + (
                            f"; a schedule that spreads the MACs of up to {min(d for d, v in free if min(v) >= target)}"
                            " buffered positions with work over the lanes, and lets empty ones pass, could "
                            "reach the target on every case." if any(min(v) >= target for _, v in free) else
                            f": no such schedule reaches {target:.0%} on every case with {max(free_depths)}."))
        if unreachable:
            text.append("Not even a buffer of every position reaches it on "
                        + ", ".join(f"{row['image']} {row['prune_threshold']}" for row in unreachable) + ".")
        engine = fractions(lane, None)
        worst = modelled[int(np.argmin(engine))]
        text.append(f"The engine as built: lowest {min(engine):.0%} ({worst['image']} "
                    f"{worst['prune_threshold']}), " + ("at or above" if min(engine) >= target else "below")
                    + f" the target on {'every' if min(engine) >= target else 'that'} case "
                    f"({sum(value >= target for value in engine)} of {len(engine)} cases reach it).")
        if all("packed" in row["lanes"][str(lane)] for row in modelled):
            packed = [row["lanes"][str(lane)]["packed"]["fraction_of_rate_bounded_ideal"] for row in modelled]
            worst = modelled[int(np.argmin(packed))]
            text.append(f"The packed engine (`PackedConv`, above), which spreads the MACs of up to "
                        f"{RESULT_SLOTS:,} positions over the lanes: lowest {min(packed):.1%} ({worst['image']} "
                        f"{worst['prune_threshold']}), " + ("at or above" if min(packed) >= target else "below")
                        + f" the target on {'every' if min(packed) >= target else 'that'} case "
                        f"({sum(value >= target for value in packed)} of {len(packed)} cases reach it).")
        # schedules only: not the engine, not the bounds (pipeline ≤, fluid)
        schedules = [(label, key) for label, key in kinds if key is not None and key != "pipeline_at_most"
                     and not key.startswith("fluid_")]
        reaching = [label for label, key in schedules if min(fractions(lane, key)) >= target]
        if reaching:
            text.append("Schedules at or above the target on every case: " + ", ".join(f"*{r}*" for r in reaching)
                        + ".")
            if labels.get("flat_empty_free") in reaching:
                values = fractions(lane, "flat_empty_free")
                worst = modelled[int(np.argmin(values))]
                text.append(f"*{labels['flat_empty_free']}* does so with `waiting = {EMPTY_FREE_WAITING}` "
                            f"(lowest {min(values):.0%}, {worst['image']} {worst['prune_threshold']}; "
                            f"*flat* alone {min(fractions(lane, 'flat')):.0%}, the engine "
                            f"{min(fractions(lane, None)):.0%}): its empty positions hold no slot (their "
                            "result needs no MAC; an in-order output only has to count them), so the fluid "
                            "bound of a small buffer does not hold it back.")
        elif schedules:
            best = max(schedules, key=lambda item: min(fractions(lane, item[1])))
            text.append(f"No modelled schedule reaches {target:.0%} on every case; the closest, "
                        f"*{best[0]}*, is at {min(fractions(lane, best[1])):.0%} at worst.")
        lines += ["", " ".join(text)]
    return lines


def _skip_figure(frames, skip_maps, threshold, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(frames), 2, figsize=(7, 3.3 * len(frames)), squeeze=False)
    for row, (name, frame) in enumerate(frames.items()):
        skip = skip_maps[name][threshold]
        axes[row, 0].imshow(frame, cmap="gray", vmin=0, vmax=255)
        axes[row, 0].set_title(f"{name} ({frame.shape[0]}×{frame.shape[1]})", fontsize=9)
        shown = axes[row, 1].imshow(skip, cmap="viridis", vmin=0, vmax=1)
        axes[row, 1].set_title(f"multiplications skipped, threshold {threshold / 256:g}\n"
                               f"{skip.mean():.0%} of the layer's MACs skipped", fontsize=9)
        figure.colorbar(shown, ax=axes[row, 1], fraction=0.046)
        for axis in axes[row]:
            axis.set_xticks([])
            axis.set_yticks([])
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def run_bench(*, images=BENCH_IMAGES, thresholds=(0, 32, 64, 128), lanes=(8, 2), tile_sizes=(1, 4),
              ref_std=24.0, pad_mode="zero", out=Path("build/bench"), docs=Path("docs"), log=print,
              command="make bench"):
    """Run the benchmark, write JSON, Markdown and the skip maps; return the rows."""
    rows, frames, skip_maps = [], {}, {}
    log(f"benchmark: {len(images)} images × {len(thresholds)} thresholds × tile sizes "
        f"{', '.join(map(str, tile_sizes))}, lanes {', '.join(map(str, lanes))}")
    for name in images:
        image_rows, frame, maps = bench_image(name, thresholds=thresholds, lanes=lanes, tile_sizes=tile_sizes,
                                              ref_std=ref_std, pad_mode=pad_mode, log=log)
        rows += image_rows
        frames[name], skip_maps[name] = frame, maps
    out.mkdir(parents=True, exist_ok=True)
    result = {"config": {"images": list(images), "thresholds": list(thresholds), "lanes": list(lanes),
                         "tile_sizes": list(tile_sizes), "ref_std": ref_std, "pad_mode": pad_mode,
                         "filters": {name: f.tolist() for name, f in FILTER_BANK.items()}},
              "rows": rows}
    (out / "bench.json").write_text(json.dumps(result, indent=1))
    if docs is not None:
        (docs / "bench.md").write_text(_markdown(rows, lanes=lanes, thresholds=thresholds, ref_std=ref_std,
                                                 pad_mode=pad_mode, command=command))
        _skip_figure(frames, skip_maps, thresholds[len(thresholds) // 2], docs / "images" / "skipmap.png")
        log(f"wrote {out / 'bench.json'}, {docs / 'bench.md'}, {docs / 'images' / 'skipmap.png'}")
    return rows


def run_weight_bench(*, seed=0, out=Path("build/bench"), docs=Path("docs"), log=print, quick=False):
    """Seed 002's benchmark: train the digits model, then stream sizes per encoding and density,
    reconstruction error and accuracy per interpolation method (:func:`dynsparse.golden.weighttrain.
    benchmark_report`). Writes ``build/bench/weightstream.json`` and, with ``docs``, the generated part
    of ``docs/weightstream.md`` (between its markers) and ``docs/images/weightstream.png``."""
    from ..golden.weighttrain import benchmark_report
    if docs is not None:
        text = (docs / "weightstream.md").read_text()
        if WEIGHT_BENCH_BEGIN not in text or WEIGHT_BENCH_END not in text:
            raise ValueError(f"{docs / 'weightstream.md'} has no {WEIGHT_BENCH_BEGIN!r} … "
                             f"{WEIGHT_BENCH_END!r} section to update")
    log(f"weight streams: training the digits model (seed {seed}) and measuring; about a minute ...")
    record = {}
    markdown = benchmark_report(seed=seed, image=str(docs / "images" / "weightstream.png") if docs else None,
                                out=str(out / "weights"), quick=quick, record=record, examples=False)
    out.mkdir(parents=True, exist_ok=True)
    record["markdown"] = markdown
    (out / "weightstream.json").write_text(json.dumps(record, indent=1))
    log(f"wrote {out / 'weightstream.json'}")
    if docs is not None:
        path = docs / "weightstream.md"
        head, rest = text.split(WEIGHT_BENCH_BEGIN, 1)
        _, tail = rest.split(WEIGHT_BENCH_END, 1)
        path.write_text(f"{head}{WEIGHT_BENCH_BEGIN}\n{markdown}\n{WEIGHT_BENCH_END}{tail}")
        log(f"wrote {path}, {docs / 'images' / 'weightstream.png'}")
    return record
