"""Lane beats: tap lists packed for :class:`~dynsparse.hdl.laneconv.LaneConv`, the compact engine.

:class:`~dynsparse.hdl.sparseconv.SparseConv` takes every output channel's
tap list of a position in one wide transfer (``C_out · C_in · K²`` entries)
and keeps copies of them. ``LaneConv`` takes the same lists already laid
out on its lanes, one *beat* per cycle: lane ``j`` owns the output channels
``co`` with ``co mod L = j``, its *slot* ``s = co // L`` names which of
them, and a lane's entries of one position are the listed entries of its
channels, slot by slot (``s`` ascending), each list in its order. Beat
``b`` of a position carries each lane's entry ``b``:

- ``valid``: lane ``j`` has an entry ``b``;
- ``slot``, ``flush``: the entry's slot, and whether it is the last entry
  of that slot on the lane (the lane's partial sum of ``co`` is complete);
- ``ci``, ``dy``, ``dx``, ``weight``: the tap, as in a tap list;

and ``end`` (the position's last beat), ``first``/``last`` (the frame's
first and last beat) and ``pruned``/``zero`` (the position's skipped-tap
counts, on its first beat, 0 on the others).

A position has ``max(1, max_j Σ_{co ∈ lane j} count[co])`` beats (a position
without a listed tap has one beat, with no valid entry); this is also the
engine's walk steps for it (:func:`lane_steps`). An entry that reads
excluded padding is not multiplied and not counted as performed, but it
takes its lane's slot of the beat: a producer that knows the mask may leave
it out. Results and skip counters are those of
:func:`dynsparse.golden.sparseconv.sparse_conv`; the ``cycles`` counter is
the number of beats (:func:`lane_steps` summed).
"""

import numpy as np

from .sparseconv import TapLists


__all__ = ["lane_slots", "lane_steps", "lane_beats", "lane_cycles", "LANE_LATENCY"]


#: Cycles from accepting the window of a one-beat position (its beat waiting) in an idle
#: engine to offering its result, without requantisation (:class:`~dynsparse.hdl.laneconv.LaneConv`).
LANE_LATENCY = 7


def _check_lanes(lanes, out_channels):
    if not isinstance(lanes, int) or isinstance(lanes, bool):
        raise TypeError(f"lane count must be an integer in [1, {out_channels}], not {lanes!r}")
    if not 1 <= lanes <= out_channels:
        raise ValueError(f"lane count must be an integer in [1, {out_channels}], not {lanes!r}")
    return lanes


def lane_slots(out_channels, lanes):
    """``ceil(C_out / L)``: the output channels a lane owns (its slots)."""
    _check_lanes(lanes, out_channels)
    return -(-out_channels // lanes)


def _lane_entries(count, lanes):
    """Entries per lane of each position: ``count [..., C_out]`` → ``[..., L]``."""
    count = np.asarray(count, dtype=np.int64)
    c_out = count.shape[-1]
    slots = lane_slots(c_out, lanes)
    padded = np.zeros(count.shape[:-1] + (slots * lanes,), np.int64)
    padded[..., :c_out] = count
    return padded.reshape(count.shape[:-1] + (slots, lanes)).sum(axis=-2)


def lane_steps(count, *, lanes):
    """Beats (walk steps) of each position: ``max(1, max_j Σ_{co mod L = j} count[co])``.

    ``count`` is the listed taps ``[..., C_out]`` (:attr:`TapLists.count`).
    """
    return np.maximum(1, _lane_entries(count, lanes).max(axis=-1))


def lane_cycles(count, *, lanes, requantize=False):
    """Cycles from the first window accepted to the last result offered, positions
    ``count [P, C_out]`` in stream order, windows and beats always offered, results always
    taken: the latency plus one cycle per beat after the first."""
    from ..hdl.requant import REQUANT_STAGES
    steps = lane_steps(np.asarray(count).reshape(-1, np.asarray(count).shape[-1]), lanes=lanes)
    return LANE_LATENCY + (REQUANT_STAGES if requantize else 0) + int(steps.sum()) - 1


def lane_beats(lists, *, lanes):
    """The beats of :class:`TapLists` with leading shape ``[..., C_out]`` (positions in
    C order, e.g. ``[H, W, C_out]`` in raster order).

    Returns a dict of int64 arrays: ``valid``, ``slot``, ``flush``, ``ci``, ``dy``,
    ``dx``, ``weight`` of shape ``[B, L]``; ``end``, ``first``, ``last``, ``pruned``,
    ``zero`` and ``position`` (the position's index) of shape ``[B]``. ``first`` is set
    on beat 0 only, ``last`` on the final beat only: the lists are one frame's.
    """
    if not isinstance(lists, TapLists):
        raise TypeError(f"lists must be TapLists, not {lists!r}")
    c_out = lists.count.shape[-1]
    slots = lane_slots(c_out, lanes)
    count = lists.count.reshape(-1, c_out)
    positions = count.shape[0]
    n = lists.capacity
    fields = {name: getattr(lists, name).reshape(positions, c_out, n) for name in ("ci", "dy", "dx", "weight")}
    pruned = lists.pruned.reshape(positions, c_out).sum(axis=-1)
    zero = lists.zero.reshape(positions, c_out).sum(axis=-1)
    steps = lane_steps(count, lanes=lanes)
    total = int(steps.sum())
    beats = {name: np.zeros((total, lanes), np.int64)
             for name in ("valid", "slot", "flush", "ci", "dy", "dx", "weight")}
    start = np.concatenate([[0], np.cumsum(steps)[:-1]])
    position = np.repeat(np.arange(positions), steps)
    beats["position"] = position
    beats["end"] = np.zeros(total, np.int64)
    beats["end"][start + steps - 1] = 1
    beats["first"] = (np.arange(total) == 0).astype(np.int64)
    beats["last"] = (np.arange(total) == total - 1).astype(np.int64)
    beats["pruned"] = np.zeros(total, np.int64)
    beats["zero"] = np.zeros(total, np.int64)
    beats["pruned"][start] = pruned
    beats["zero"][start] = zero
    for p in range(positions):
        for j in range(lanes):
            b = start[p]
            for s in range(slots):
                co = s * lanes + j
                if co >= c_out:
                    break
                listed = int(count[p, co])
                for i in range(listed):
                    beats["valid"][b, j] = 1
                    beats["slot"][b, j] = s
                    beats["flush"][b, j] = int(i == listed - 1)
                    for name, values in fields.items():
                        beats[name][b, j] = values[p, co, i]
                    b += 1
    return beats
