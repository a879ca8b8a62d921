"""Cycle models of lane schedules for the sparse convolution engine, built and not built.

The engine that exists (:class:`~dynsparse.hdl.sparseconv.SparseConv`) walks
each position's active MACs with lane pairs from both ends of one to-do
vector (``ceil(Σ active / 2)`` steps at ``L = 2``), lets empty positions pass
a walk through an order queue, and lets one position wait while one walks:
its cycles are :func:`dynsparse.golden.sparseconv.engine_cycles`, matched
cycle for cycle by the RTL. The models here measure, on the same
per-position work, what other schedules would reach, so a change of
architecture can be judged before it is built:

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
  at tile size 1;
- :func:`flat_empty_free_cycles`: *flat, empty positions free*: a position's
  MACs spread over all lanes (``ceil(Σ active / L)`` cycles), a position with
  no active MAC passes in its admission cycle without a lane cycle, and up to
  ``waiting`` non-empty positions wait, admitted, while one walks;
- :func:`fluid_cycles`: the *fluid bound*: every MAC spread over all lanes
  with no granularity at all (a position takes ``Σ active / L`` cycles of the
  whole lane set, fractions allowed) behind a buffer of ``depth`` positions.
  No schedule that admits at most one position a cycle, in order, into a
  buffer of ``depth`` positions and performs at most ``L`` MACs a cycle takes
  fewer cycles (see the function). With ``empty_free`` only positions with
  work hold a slot: the bound of schedules whose empty positions pass free.

These are models, not hardware: :mod:`dynsparse.sim.bench` reports them in a
section of their own, apart from the engine's measured cycles.
"""

import numpy as np


__all__ = ["flat_cycles", "flat_empty_free_cycles", "decoupled_cycles", "fluid_cycles", "walker_cycles"]


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


def _check_count(name, value, low):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, not {value}")
    return value


def flat_empty_free_cycles(active, *, lanes, waiting):
    """Cycles of the *flat, empty positions free* schedule.

    Position ``p`` carries ``c_p = ceil(Σ_co active[p, co] / lanes)`` cycles of
    work (its MACs spread evenly over the lanes). Positions are admitted in
    order, at most one a cycle: ``a_0 = 0``, ``a_p ≥ a_{p-1} + 1``. A position
    with ``c_p = 0`` only takes its admission cycle (no lane cycle, no slot).
    The non-empty positions, numbered ``n = 0, 1, …`` in order, walk one at a
    time: ``s_n = max(e_{n-1}, a_{p(n)})``, ``e_n = s_n + c_{p(n)}``; at most
    ``waiting`` of them wait, admitted, while one walks, so
    ``a_{p(n)} = max(a_{p(n)-1} + 1, e_{n-waiting-1})`` (the second term only
    for ``n > waiting``). The result is ``max(e_last, a_{P-1} + 1)``.

    ``waiting = 0`` still lets empty positions pass a walking one; with no
    empty position and ``waiting = 0`` this is :func:`flat_cycles`, which it
    never exceeds.
    """
    waiting = _check_count("waiting positions", waiting, 0)
    active = _active(active, lanes)
    work = -(-active.sum(axis=-1) // lanes)
    positions = len(work)
    if positions == 0:
        return 0
    busy = np.flatnonzero(work)
    ends = []
    end = 0
    admit, last = -1, -1                      # admission cycle of position `last`
    for n, (p, cycles) in enumerate(zip(busy.tolist(), work[busy].tolist())):
        admit += p - last
        last = p
        if n > waiting and ends[n - waiting - 1] > admit:
            admit = ends[n - waiting - 1]
        end = (end if end > admit else admit) + cycles
        ends.append(end)
    admit += positions - 1 - last
    return max(end, admit + 1)


def fluid_cycles(active, *, lanes, depth, empty_free=False):
    """The fluid bound: cycles of a schedule with no granularity behind a ``depth``-position buffer.

    With ``w_p = Σ_co active[p, co]``: position ``p`` is admitted at
    ``a_p = max(a_{p-1} + 1, r_{p-depth})`` (``a_0 = 0``; the second term only
    for ``p ≥ depth``: a slot frees when the position ``depth`` places earlier
    retires); the lane set, working on the oldest admitted work first, finishes
    it at ``f_p = max(f_{p-1}, a_p) + w_p / lanes`` (``f_{-1} = 0``); it retires
    at ``r_p = max(f_p, a_p + 1)`` (a position holds its slot for at least one
    cycle). The result is ``r_{P-1}``, a float (exact: the recurrence runs in
    integer units of ``1 / lanes`` cycle).

    It is a lower bound for every schedule that admits positions in order, at
    most one a cycle, a position only after the one ``depth`` places earlier
    has left, a position leaving no earlier than a cycle after its admission
    and not before its MACs are done, with at most ``lanes`` MACs a cycle: by
    induction on ``p``, such a schedule admits ``p`` no earlier than ``a_p``,
    and its positions up to ``p`` have all left no earlier than ``r_p``
    (the work of positions ``k … p``, available from ``a_k``, needs
    ``Σ w / lanes`` cycles, and ``f_p = max_k (a_k + Σ_{q=k}^{p} w_q / lanes)``).

    With ``depth ≥ P`` no admission waits (``a_p = p``) and the result is
    ``max(P, max_k (k + Σ_{q≥k} w_q / lanes))`` ≥ ``max(P, Σ w / lanes)``,
    the rate-bounded ideal, with equality when the work is not back-loaded.

    With ``empty_free`` a position without work (``w_p = 0``) holds no slot:
    it is admitted at ``a_p = a_{p-1} + 1`` and leaves a cycle later, and the
    slot a non-empty position waits for is the one of the non-empty position
    ``depth`` places earlier *among the non-empty ones*. The same induction
    makes it a lower bound for every schedule whose empty positions pass
    without a slot, as the engine's do (an in-order output only has to count
    them); the result is the largest retirement time.
    """
    depth = _check_count("buffer depth", depth, 1)
    work = _active(active, lanes).sum(axis=-1).tolist()
    if not work:
        return 0.0
    # times in units of 1 / lanes cycle
    retire = []                 # of the positions that hold a slot, in order
    admit, finish, last = -lanes, 0, 0
    for w in work:
        admit += lanes
        if empty_free and w == 0:
            last = max(last, admit + lanes)
            continue
        held = len(retire)
        if held >= depth and retire[held - depth] > admit:
            admit = retire[held - depth]
        finish = (finish if finish > admit else admit) + w
        retire.append(finish if finish > admit + lanes else admit + lanes)
        last = max(last, retire[-1])
    return last / lanes


def decoupled_cycles(active, *, lanes, depth, rotate):
    """Cycles of decoupled lanes with a ``depth``-position buffer (see the module text).

    Position ``p`` enters the buffer at ``a_p = max(a_{p-1} + 1, r_{p-depth})``;
    lane ``j`` starts it at ``max(f_j(p-1), a_p)`` and finishes ``w_j(p)``
    cycles later; it retires at ``r_p = max(a_p + 1, max_j f_j(p))``. The
    result is ``r`` of the last position.
    """
    depth = _check_count("buffer depth", depth, 1)
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
