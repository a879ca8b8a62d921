"""Packed beats: the work of many positions spread over the lanes, for :class:`~dynsparse.hdl.packedconv.PackedConv`.

:class:`~dynsparse.hdl.sparseconv.SparseConv` and
:class:`~dynsparse.hdl.laneconv.LaneConv` walk one position at a time (up to
one waiting), so a lane whose channels have few taps at a position idles
until the busiest lane is done, and a burst of work at an edge cannot borrow
the idle cycles of the flat region before it. ``PackedConv`` keeps the last
``N`` pixels of the frame (the *ring*, one copy per lane) and ``S`` result
slots, so a lane may work on any position whose pixels have arrived and
whose result slot is free: the host packs every lane's work ahead of time
and the engine follows the *beats*, one a cycle.

Jobs
----
:func:`packed_entries` resolves the tap lists of a frame into *jobs*: the
entries of output ``(p, co)`` that are performed (``p = y·W + x``, raster
order). An entry names the *source* pixel it reads, a raster index
``s = y'·W + x'`` inside the frame, and its input channel and weight:

- a tap that reads inside the frame reads ``(y + dy - r, x + dx - r)``;
- a tap that reads padding is skipped (counted as *padding*) when
  ``pad_mode`` is ``zero`` or the padding block's mask bit is 0, as in
  :func:`~dynsparse.golden.sparseconv.sparse_conv`; otherwise it reads the
  pixel the padding copies (``replicate``: the nearest edge pixel;
  ``reflect``: the mirror image, the edge not repeated);
- in dense mode nothing is skipped: a zero-padding tap becomes an entry of
  weight 0 that reads the position's own pixel (its product is 0, as the
  padding value's).

So the results and the skip counters are exactly ``sparse_conv``'s.

Schedule
--------
:func:`pack_schedule` places the jobs on beats. Beat ``t`` is cycle ``t`` of
the engine with pixels always offered and results always taken. Constants
(the engine's pipeline): a pixel taken at beat ``t`` is readable from beat
``t + 1``; a job's result, flushed at beat ``f``, is readable by an emit at
beat ``f + FLUSH_TO_EMIT`` or later.

- *Takes.* Pixel ``i`` is taken at ``take[i] = max(take[i-1] + 1, emit[i - N + reach] + 1)``
  (``reach = r·W + r``): one pixel a beat, and pixel ``i`` overwrites pixel
  ``i - N`` of the ring only after the last position that reads it
  (``i - N + reach``) has been emitted.
- *Jobs.* Position ``p``'s jobs may start at ``max(take[min(P-1, p + reach)] + 1,
  emit[p - S] + 1)``: its whole window has arrived, and its result slot
  ``p mod S`` has been read out for position ``p - S``. Its jobs
  (channels ascending) go to the lane that frees first (the lowest-numbered
  on a tie), one entry a beat; a lane's job ends with ``flush`` on its last
  entry. No two lanes flush the same channel on one beat: a job that would
  starts a beat later.
- *Emits.* Position ``p`` is emitted at ``emit[p] = max(emit[p-1] + 1,
  take[min(P-1, p + reach)] + 1, last flush of p + FLUSH_TO_EMIT)`` (the
  last term for a position with jobs); its beat carries the mask of the
  channels that had jobs (the others give 0) and its skip counts.

So the frame's last beat is the emit of its last position. This is list scheduling in
position order with a window of ``S`` positions: on the benchmark images the
cycles are within a few percent of the fluid bound of ``sim/schedule.py``
(docs/bench.md), the best any in-order schedule can do.

Beats
-----
:func:`pack_beats` gives, per beat: ``take``, ``emit``, ``mask``,
``first``/``last`` (the frame's first and last beat), ``pruned``, ``zero``,
``padding``; and per lane: ``valid``, ``flush``, ``channel``, ``slot``
(``p mod S``), ``place`` (the ring place ``s mod N`` of the source pixel),
``ci`` and ``weight``. :func:`run_beats` executes beats as the engine does, checking
every pipeline rule above; its results equal ``sparse_conv``'s.
"""

import heapq

import numpy as np

from .padmask import block_map, check_mask
from .sparseconv import TapLists
from .window import _NUMPY_MODE, _mode_name


__all__ = ["RING_DEPTH", "RESULT_SLOTS", "FLUSH_TO_EMIT", "PACKED_LATENCY", "reach",
           "packed_entries", "pack_schedule", "pack_beats", "run_beats", "packed_cycles"]


#: Pixels the ring holds by default (``N``, a power of two).
RING_DEPTH = 4096
#: Result slots by default (``S``, a power of two): positions between the oldest not emitted
#: and the newest with work.
RESULT_SLOTS = 2048
#: Beats from a job's flush to the first emit that sees its result.
FLUSH_TO_EMIT = 5
#: Cycles from an emit's beat accepted to its result offered (without requantisation).
PACKED_LATENCY = 3


def _check_count(name, value, minimum, power_of_two=False):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < minimum or (power_of_two and value & (value - 1)):
        kind = "a power of two " if power_of_two else "an integer "
        raise ValueError(f"{name} must be {kind}>= {minimum}, not {value!r}")
    return value


def reach(width, kernel_size):
    """``r·W + r``: how far (raster order) a window reaches past its position."""
    r = kernel_size // 2
    return r * width + r


def _sources(height, width, kernel_size, mode):
    """Raster index of the pixel each window element reads ``[H, W, K, K]`` (-1: zero padding)."""
    r = kernel_size // 2
    index = np.arange(height * width, dtype=np.int64).reshape(height, width)
    if mode == "zero":
        padded = np.pad(index, r, mode="constant", constant_values=-1)
    else:
        if mode == "reflect" and (height < r + 1 or width < r + 1):
            raise ValueError(f"reflect padding needs a frame of at least {r + 1}×{r + 1} pixels, "
                             f"not {height}×{width}")
        padded = np.pad(index, r, mode=_NUMPY_MODE[mode])
    return np.lib.stride_tricks.sliding_window_view(padded, (kernel_size, kernel_size))


def packed_entries(shape, lists, *, kernel_size, pad_mode="zero", mask=None, block_size=4, dense=False):
    """The jobs of one frame: the performed entries of every output, sources resolved.

    Parameters
    ----------
    shape : ``(H, W)``
    lists : :class:`TapLists` with leading shape ``[H, W, C_out]``
    pad_mode, mask, block_size, dense : as :func:`~dynsparse.golden.sparseconv.sparse_conv`

    Returns
    -------
    dict
        ``count`` int64 ``[P, C_out]`` (entries of each job, 0: no job); ``source``,
        ``ci``, ``weight`` int64 ``[P, C_out, N]``, valid below ``count``; and the
        counters ``performed``, ``pruned``, ``zero``, ``padding``, ``dense`` and the
        per-position skip counts ``pruned_at``, ``zero_at``, ``padding_at`` ``[P]``.
    """
    if not isinstance(lists, TapLists):
        raise TypeError(f"lists must be TapLists, not {lists!r}")
    height, width = shape
    mode = _mode_name(pad_mode)
    if lists.count.shape[:2] != (height, width):
        raise ValueError(f"tap lists must have leading shape {(height, width)}, not {lists.count.shape[:2]}")
    c_out, n = lists.count.shape[2], lists.capacity
    for name, values, limit in (("row offset", lists.dy, kernel_size), ("column offset", lists.dx, kernel_size)):
        valid = np.arange(n) < lists.count[..., None]
        if ((values < 0) | (values >= limit))[valid].any():
            raise ValueError(f"a tap's {name} lies outside [0, {limit - 1}]")
    sources = _sources(height, width, kernel_size, mode)
    blocks = block_map(width, height, kernel_size=kernel_size, block_size=block_size)
    if mask is None:
        mask = np.ones(max(1, blocks.max() + 1), np.uint8)
    else:
        mask = check_mask(mask, width, height, kernel_size=kernel_size, block_size=block_size)
        if not mask.size:
            mask = np.ones(1, np.uint8)
    ys, xs = np.arange(height)[:, None, None, None], np.arange(width)[None, :, None, None]
    valid = np.arange(n)[None, None, None, :] < lists.count[..., None]
    source = sources[ys, xs, lists.dy, lists.dx]
    r = kernel_size // 2
    pad = (ys + lists.dy - r < 0) | (ys + lists.dy - r >= height) | \
          (xs + lists.dx - r < 0) | (xs + lists.dx - r >= width)
    block = blocks[ys + lists.dy, xs + lists.dx]
    excluded = (mode == "zero") | (mask[np.maximum(block, 0)] == 0)
    skipped = valid & pad & excluded & (not dense)
    performed = valid & ~skipped
    weight = lists.weight.copy()
    if dense and mode == "zero":                 # a zero-padding tap: weight 0 on the own pixel
        own = (ys * width + xs) + np.zeros_like(source)
        weight = np.where(pad, 0, weight)
        source = np.where(pad, own, source)
    # performed entries first, in list order
    order = np.argsort(~performed, axis=-1, kind="stable")
    positions = height * width
    take = lambda values: np.take_along_axis(values, order, axis=-1).reshape(positions, c_out, n)
    return {
        "count":      performed.sum(axis=-1).reshape(positions, c_out),
        "source":     take(source),
        "ci":         take(lists.ci),
        "weight":     take(weight),
        "performed":  int(performed.sum()),
        "pruned":     int(lists.pruned.sum()),
        "zero":       int(lists.zero.sum()),
        "padding":    int(skipped.sum()),
        "dense":      positions * c_out * n,
        "pruned_at":  lists.pruned.reshape(positions, c_out).sum(axis=-1),
        "zero_at":    lists.zero.reshape(positions, c_out).sum(axis=-1),
        "padding_at": skipped.sum(axis=-1).reshape(positions, c_out).sum(axis=-1),
    }


def pack_schedule(count, *, width, kernel_size, lanes, ring_depth=RING_DEPTH, result_slots=RESULT_SLOTS):
    """Place the jobs ``count [P, C_out]`` (entries of each output, raster order) on beats.

    Returns a dict: ``take`` and ``emit`` int64 ``[P]`` (beats), ``jobs`` int64 ``[J, 4]``
    rows ``(p, co, lane, start)``, and ``beats``, the number of beats (see the module text).
    """
    count = np.asarray(count, dtype=np.int64)
    if count.ndim != 2:
        raise ValueError(f"job counts must have shape [P, C_out], not {count.shape}")
    positions, c_out = count.shape
    _check_count("lane count", lanes, 1)
    _check_count("ring depth", ring_depth, 1, power_of_two=True)
    _check_count("result slot count", result_slots, 1, power_of_two=True)
    _check_count("width", width, 1)
    ahead = reach(width, kernel_size)
    if ring_depth <= 2 * ahead:
        raise ValueError(f"ring depth must exceed 2·(r·W + r) = {2 * ahead} for a width of {width} "
                         f"and K = {kernel_size}, not {ring_depth}")
    if positions % width:
        raise ValueError(f"{positions} positions are not whole rows of {width}")
    take = np.zeros(positions, np.int64)
    emit = np.zeros(positions, np.int64)
    jobs = []
    free = [(0, j) for j in range(lanes)]
    flushes = set()                         # (beat, channel)
    taken = 0                               # pixels whose take beat is known
    last_take, last_emit, end = -1, -1, 0

    def take_up_to(i):
        nonlocal taken, last_take
        while taken <= i:
            t = last_take + 1
            old = taken - ring_depth + ahead
            if old >= 0:
                t = max(t, int(emit[old]) + 1)
            take[taken] = last_take = t
            taken += 1

    rows = count.tolist()
    for p, row in enumerate(rows):
        need = min(positions - 1, p + ahead)
        if need - ring_depth + ahead >= p:
            raise AssertionError("ring too small")            # excluded by the depth check
        take_up_to(need)
        ready = int(take[need]) + 1
        if p >= result_slots:
            ready = max(ready, int(emit[p - result_slots]) + 1)
        done = -1
        for co, n in enumerate(row):
            if not n:
                continue
            free_at, lane = heapq.heappop(free)
            start = max(free_at, ready)
            while (start + n - 1, co) in flushes:
                start += 1
            flushes.add((start + n - 1, co))
            heapq.heappush(free, (start + n, lane))
            jobs.append((p, co, lane, start))
            done = max(done, start + n - 1)
        e = max(last_emit + 1, int(take[need]) + 1)
        if done >= 0:
            e = max(e, done + FLUSH_TO_EMIT)
        emit[p] = last_emit = e
        end = max(end, done + 1)
    take_up_to(positions - 1)
    beats = max(end, int(take[-1]) + 1, int(emit[-1]) + 1) if positions else 0
    return {"take": take, "emit": emit, "jobs": np.array(jobs, np.int64).reshape(-1, 4), "beats": beats}


def packed_cycles(count, *, width, kernel_size, lanes, ring_depth=RING_DEPTH, result_slots=RESULT_SLOTS,
                  requantize=False):
    """Cycles from the first beat accepted to the last result offered, pixels and beats always
    offered, results always taken: the beats, less one, plus the latency."""
    from ..hdl.requant import REQUANT_STAGES
    beats = pack_schedule(count, width=width, kernel_size=kernel_size, lanes=lanes, ring_depth=ring_depth,
                          result_slots=result_slots)["beats"]
    return beats - 1 + PACKED_LATENCY + (REQUANT_STAGES if requantize else 0)


def pack_beats(entries, *, width, kernel_size, lanes, ring_depth=RING_DEPTH,
               result_slots=RESULT_SLOTS):
    """The beats of one frame's jobs (:func:`packed_entries`).

    Returns a dict of int64 arrays: ``valid``, ``flush``, ``channel``, ``slot``,
    ``place``, ``ci``, ``weight`` of shape ``[B, L]``; ``take``, ``emit``, ``mask``, ``first``,
    ``last``, ``pruned``, ``zero``, ``padding`` of shape ``[B]``.
    """
    count = entries["count"]
    positions, c_out = count.shape
    schedule = pack_schedule(count, width=width, kernel_size=kernel_size, lanes=lanes,
                             ring_depth=ring_depth, result_slots=result_slots)
    total = schedule["beats"]
    beats = {name: np.zeros((total, lanes), np.int64)
             for name in ("valid", "flush", "channel", "slot", "place", "ci", "weight")}
    for name in ("take", "emit", "mask", "first", "last", "pruned", "zero", "padding"):
        beats[name] = np.zeros(total, np.int64)
    beats["take"][schedule["take"]] = 1
    emit = schedule["emit"]
    beats["emit"][emit] = 1
    beats["mask"][emit] = ((count > 0) << np.arange(c_out)).sum(axis=-1)
    for name in ("pruned", "zero", "padding"):
        beats[name][emit] = entries[f"{name}_at"]
    if total:
        beats["first"][0] = 1
        beats["last"][total - 1] = 1
    for p, co, lane, start in schedule["jobs"].tolist():
        n = int(count[p, co])
        t = slice(start, start + n)
        beats["valid"][t, lane] = 1
        beats["channel"][t, lane] = co
        beats["slot"][t, lane] = p % result_slots
        beats["place"][t, lane] = entries["source"][p, co, :n] % ring_depth
        beats["ci"][t, lane] = entries["ci"][p, co, :n]
        beats["weight"][t, lane] = entries["weight"][p, co, :n]
        beats["flush"][start + n - 1, lane] = 1
    return beats


def run_beats(frame, beats, *, out_channels, ring_depth=RING_DEPTH, result_slots=RESULT_SLOTS):
    """Execute ``beats`` on ``frame [H, W, C_in]`` as the engine does, pixels always offered.

    Checks every rule the engine relies on (a read of a pixel not yet taken or already
    overwritten, a flush into a slot not yet emitted, two flushes of one channel on a beat,
    an emit before its results are written) and raises ``AssertionError`` on a breach.
    Returns the emitted results ``[P, C_out]`` (int64, 0 for a channel off the mask).
    """
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = frame[:, :, None]
    height, width, c_in = frame.shape
    pixels = frame.reshape(-1, c_in).astype(np.int64)
    ring = np.zeros(ring_depth * c_in, np.int64)
    owner = np.full(ring_depth, -1, np.int64)          # pixel in each ring place
    take_beat = {}
    lanes = beats["valid"].shape[1]
    acc = np.zeros(lanes, np.int64)
    fresh = np.ones(lanes, bool)
    slots = np.zeros((out_channels, result_slots), np.int64)
    written = np.full((out_channels, result_slots), -10**9, np.int64)     # beat of the write's flush
    last_read = np.full(ring_depth, -1, np.int64)       # beat of each ring place's last read
    flushed = set()
    taken = emitted = 0
    results = []
    for t in range(len(beats["take"])):
        for j in range(lanes):
            if not beats["valid"][t, j]:
                continue
            place, ci = int(beats["place"][t, j]), int(beats["ci"][t, j])
            pixel = int(owner[place])
            assert pixel >= 0 and take_beat[pixel] < t, f"beat {t} lane {j} reads place {place} before its take"
            last_read[place] = t
            acc[j] = (0 if fresh[j] else acc[j]) + int(beats["weight"][t, j]) * int(ring[place * c_in + ci])
            fresh[j] = bool(beats["flush"][t, j])
            if fresh[j]:
                co, slot = int(beats["channel"][t, j]), int(beats["slot"][t, j])
                assert written[co, slot] != t and (t, co) not in flushed, f"beat {t}: two flushes of channel {co}"
                flushed.add((t, co))
                slots[co, slot] = acc[j]
                written[co, slot] = t
        if beats["emit"][t]:
            slot = emitted % result_slots
            mask = int(beats["mask"][t])
            row = np.zeros(out_channels, np.int64)
            for co in range(out_channels):
                if mask >> co & 1:
                    assert written[co, slot] <= t - FLUSH_TO_EMIT, f"beat {t}: emit before channel {co} is written"
                    row[co] = slots[co, slot]
            results.append(row)
            emitted += 1
        if beats["take"][t]:
            place = taken % ring_depth
            old = int(owner[place])
            assert last_read[place] < t, f"beat {t}: pixel {taken} overwrites place {place} while it is read"
            owner[place] = taken
            ring[place * c_in:(place + 1) * c_in] = pixels[taken]
            take_beat[taken] = t
            if old >= 0:
                take_beat.pop(old)
            taken += 1
    assert taken == height * width and emitted == height * width, (taken, emitted)
    return np.array(results, np.int64).reshape(height * width, out_channels)
