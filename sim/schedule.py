"""Cycle models of lane schedules for the sparse convolution engine, built and not built.

The engine that exists (:class:`~dynsparse.hdl.sparseconv.SparseConv`) gives
each lane one output channel of a group and ends a position when its busiest
lane is done: ``max(1, Σ_groups max_{co∈g} active[co])`` cycles per position
(:func:`dynsparse.golden.sparseconv.cycles_per_position`, matched cycle for
cycle by the RTL). The models here measure, on the same per-position work,
what other schedules would reach, so a change of architecture can be judged
before it is built:

- :func:`flat_cycles`: every position's MACs spread over all lanes
  (``max(1, ceil(Σ active / L))``), positions still taken one at a time;
- :func:`decoupled_cycles`: each lane walks its own work through a buffer of
  ``depth`` positions (windows and tap lists), so lanes drift apart by up to
  ``depth`` positions; the buffer admits one position per cycle, and a slot
  frees when every lane has finished its position. Lane ``j`` takes the
  channels ``{j, j + L, …}`` (``rotate=False``) or, at position ``p``, the
  channels of ``(j + p) mod L`` (``rotate=True``: every lane sees every
  channel's work in turn, so a channel with more taps does not bound one lane);
- :func:`walker_cycles`: the kernel scaler's walk, ``max(1, unpruned taps)``
  per position, which bounds a pipeline that feeds the engine from the scaler
  at tile size 1.

These are models, not hardware: :mod:`dynsparse.sim.bench` reports them in a
section of their own, apart from the engine's measured cycles.
"""

import numpy as np


__all__ = ["flat_cycles", "decoupled_cycles", "walker_cycles"]


def _active(active, lanes):
    active = np.asarray(active, dtype=np.int64)
    if active.ndim < 1 or active.shape[-1] < 1:
        raise ValueError(f"active must have a channel axis, not shape {active.shape}")
    if np.any(active < 0):
        raise ValueError("active counts must be >= 0")
    c_out = active.shape[-1]
    if not isinstance(lanes, int) or isinstance(lanes, bool):
        raise TypeError(f"lane count must be an integer, not {lanes!r}")
    if not 1 <= lanes <= c_out:
        raise ValueError(f"lane count must be in [1, {c_out}], not {lanes}")
    return active.reshape(-1, c_out)


def flat_cycles(active, *, lanes):
    """``Σ_p max(1, ceil(Σ_co active[p, co] / lanes))``."""
    work = _active(active, lanes).sum(axis=-1)
    return int(np.maximum(1, -(-work // lanes)).sum())


def _lane_work(active, lanes, rotate):
    positions, c_out = active.shape
    groups = -(-c_out // lanes)
    padded = np.zeros((positions, groups * lanes), np.int64)
    padded[:, :c_out] = active
    if rotate:
        # lane j at position p takes the channel group that lane (j + p) mod L would have had
        index = (np.arange(lanes)[None, :] + np.arange(positions)[:, None]) % lanes
        per_lane = padded.reshape(positions, groups, lanes).sum(axis=1)
        return np.take_along_axis(per_lane, index, axis=1)
    return padded.reshape(positions, groups, lanes).sum(axis=1)


def decoupled_cycles(active, *, lanes, depth, rotate):
    """Cycles of decoupled lanes with a ``depth``-position buffer (see the module text).

    Position ``p`` enters the buffer at ``a_p = max(a_{p-1} + 1, r_{p-depth})``;
    lane ``j`` starts it at ``max(f_j(p-1), a_p)`` and finishes ``w_j(p)``
    cycles later; it retires at ``r_p = max(a_p + 1, max_j f_j(p))``. The
    result is ``r`` of the last position.
    """
    if not isinstance(depth, int) or isinstance(depth, bool):
        raise TypeError(f"buffer depth must be an integer, not {depth!r}")
    if depth < 1:
        raise ValueError(f"buffer depth must be >= 1, not {depth}")
    work = _lane_work(_active(active, lanes), lanes, bool(rotate)).tolist()
    finish = [0] * lanes
    retire = []
    admit = -1
    for p, row in enumerate(work):
        admit += 1
        if p >= depth and retire[p - depth] > admit:
            admit = retire[p - depth]
        end = admit + 1
        for j in range(lanes):
            start = finish[j] if finish[j] > admit else admit
            finish[j] = start + row[j]
            if finish[j] > end:
                end = finish[j]
        retire.append(end)
    return retire[-1] if retire else 0


def walker_cycles(unpruned):
    """``Σ_p max(1, unpruned[p])``: the kernel scaler's walk at tile size 1."""
    unpruned = np.asarray(unpruned, dtype=np.int64)
    return int(np.maximum(1, unpruned).sum())
