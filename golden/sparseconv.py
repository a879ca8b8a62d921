"""Bit-exact models of :class:`KernelScaler` and :class:`SparseConv`, and their float reference.

The two blocks implement seed 000's density-shaped kernels and seed 001's
padding masks on one abstraction, the *tap list*: for every output position
and output channel, the list of taps ``(ci, dy, dx, weight)`` that the
convolution engine multiplies; everything else costs no cycle.

Exact integer semantics
-----------------------

**Weights** are int8 ``W[co][ci][ky][kx]`` in ``[-127, 127]``. **Densities**
are UQ1.8 ``D[y][x][ci]`` in ``0 … 256`` (:mod:`dynsparse.golden.density`).
``r = K // 2``; the kernel tap ``(ky, kx)`` of output pixel ``(y, x)`` reads
input pixel ``(y + ky - r, x + kx - r)``.

*Tap densities* (``KernelScaler``, tile size ``T``, a power of two). Output
pixels are grouped in ``T × T`` tiles; tile ``(ty, tx)`` holds pixels
``ty·T … ty·T + T - 1`` (rows) by ``tx·T … tx·T + T - 1`` (columns); tiles on
the right and bottom edges may be cut by the frame. The region tap
``(ky, kx)`` touches for the tile is that ``T × T`` square shifted by
``(ky - r, kx - r)``; its pixels' coordinates are clamped into the frame
(the density map is extended by replicating its border, as the window
generator's ``replicate`` padding does)::

    A[ty][tx][ci][ky][kx] = (Σ_{i,j < T} D[clamp(ty·T + i + ky - r)][clamp(tx·T + j + kx - r)][ci]
                             + T²/2) >> log2(T²)                     (round half up)

With ``T = 1`` this is ``D`` at the tap's pixel, replicated at the borders.

*Scaled weights and pruning*::

    S = (W · A + 128) >> 8          (floor shift: round half up; A = 256 gives S = W)
    pruned  =  A < prune_threshold                    (prune_threshold: UQ1.8, 0 … 511)
    zero    =  not pruned and S == 0
    listed  =  not pruned and not zero

Each tile's list for output channel ``co`` holds its listed taps in the order
``(ci, ky, kx)`` ascending, with ``dy = ky``, ``dx = kx``, ``weight = S``.
*Dense mode* lists every tap with its original weight (nothing pruned, no
zero dropped).

*Convolution* (``SparseConv``). For output pixel ``(y, x)`` with window
``v[dy][dx][ci]`` and padding flags ``pad[dy][dx]`` (the window generator's,
in ``pad_mode``), a listed tap is *skipped for padding* when
``pad[dy][dx] = 1`` and either ``pad_mode`` is ``zero`` or the mask bit of
the padding block holding pixel ``(y + dy - r, x + dx - r)`` is 0
(:mod:`dynsparse.golden.padmask`); in dense mode nothing is skipped. Then::

    acc[y][x][co] = Σ_{listed, not skipped} weight · v[dy][dx][ci]      (exact, never overflows)

*Requantisation* (optional), TFLite-style with ``multiplier`` in
``[0, 65535]`` and ``shift`` in ``[0, 47]``::

    q = clamp((acc · multiplier + (2^(shift-1) if shift > 0 else 0)) >> shift, -128, 127)

*Cycles.* The engine has ``L`` multiplier lanes in pairs, the *walkers*
(:func:`walker_channels`): lane ``j`` owns the channels ``co mod L = j``, and
a pair walks the to-do entries of its lanes' channels from both ends, two a
step. With ``active[co]`` the number of taps performed for an output::

    steps(position) = max_q ceil(Σ_{co ∈ q} active[co] / |q|)

(``|q|`` = 2, or 1 for the last walker of an odd ``L``), 0 for a position with
no active tap, which passes the walk through the engine's order queue. A tap
that is not performed costs no cycle. The wall-clock cycles of a stream of
positions are :func:`engine_cycles`, a cycle-level model of the engine that
the RTL matches cycle for cycle.

Counters: MACs performed ``Σ active``; MACs skipped for pruning, zero
weight and padding; they add up to the dense count ``C_out · C_in · K²``
per position.
"""

from dataclasses import dataclass

import collections

import numpy as np

from .padmask import block_map, check_mask
from .window import PAD_MODES, _mode_name, windows


__all__ = [
    "WEIGHT_MAX", "DENSITY_ONE", "PRUNE_THRESHOLD_MAX", "MULTIPLIER_MAX", "SHIFT_MAX",
    "TapLists", "check_weights", "check_tile_size", "accumulator_width",
    "tap_densities", "scale_weights", "tap_lists", "dense_tap_lists", "expand_tiles",
    "sparse_conv", "requantize", "cycles_per_position", "engine_cycles", "walker_channels", "FINISHED_SLOTS", "QUEUE_DEPTH",
    "tap_densities_float", "conv_float",
]

#: Largest weight magnitude (int8 symmetric).
WEIGHT_MAX = 127
#: Density of 1.0 in UQ1.8.
DENSITY_ONE = 256
#: Largest prune threshold (9 bits, UQ1.8; above 256 prunes every tap).
PRUNE_THRESHOLD_MAX = 511
#: Largest requantisation multiplier (16 bits).
MULTIPLIER_MAX = 65535
#: Largest requantisation shift.
SHIFT_MAX = 47


def _check_int(name, value, minimum, maximum=None):
    what = f"an integer in [{minimum}, {maximum}]" if maximum is not None else f"an integer >= {minimum}"
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name} must be {what}, not {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {what}, not {value!r}")
    return int(value)


def check_tile_size(tile_size):
    """Return ``tile_size`` after checking that it is a power of two in [1, 64]."""
    _check_int("tile size", tile_size, 1, 64)
    if tile_size & (tile_size - 1):
        raise ValueError(f"tile size must be a power of two in [1, 64], not {tile_size!r}")
    return int(tile_size)


def check_weights(weights):
    """Return ``weights`` as int64 ``[C_out, C_in, K, K]`` after checking shape and range.

    Raises
    ------
    ValueError
        If the array is not 4-D with square odd kernels, or a weight is outside
        ``[-127, 127]``.
    """
    weights = np.asarray(weights)
    if weights.ndim != 4 or weights.shape[2] != weights.shape[3] or weights.shape[2] % 2 == 0:
        raise ValueError(f"weights must have shape [C_out, C_in, K, K] with K odd, not {weights.shape}")
    if not np.issubdtype(weights.dtype, np.integer):
        raise ValueError(f"weights must be integers, not {weights.dtype}")
    if weights.size and np.abs(weights.astype(np.int64)).max() > WEIGHT_MAX:
        raise ValueError(f"weights must lie in [-{WEIGHT_MAX}, {WEIGHT_MAX}], "
                         f"not [{weights.min()}, {weights.max()}]")
    return weights.astype(np.int64)


def accumulator_width(*, taps, pixel_signed=False, weight_bits=8):
    """Bits of a signed accumulator that never overflows.

    A list holds at most ``taps`` entries (``C_in · K²``), each a signed
    ``weight_bits`` weight (``-2^(b-1)`` included, so a malformed list cannot
    overflow either) times an 8-bit pixel (``0 … 255`` unsigned, ``-128 … 127``
    signed).
    """
    _check_int("tap count", taps, 1)
    w_min, w_max = -(1 << (weight_bits - 1)), (1 << (weight_bits - 1)) - 1
    p_min, p_max = (-128, 127) if pixel_signed else (0, 255)
    products = [w_min * p_min, w_min * p_max, w_max * p_min, w_max * p_max]
    low, high = taps * min(products), taps * max(products)
    width = 1
    while not (-(1 << (width - 1)) <= low and high <= (1 << (width - 1)) - 1):
        width += 1
    return width


@dataclass
class TapLists:
    """Tap lists, one per position (pixel or tile) and output channel.

    Arrays share the leading shape ``[..., C_out]``; entries ``[..., C_out, N]``
    with ``N = C_in · K²``, valid below ``count``.

    Members
    -------
    count : int64 ``[..., C_out]``
        Listed taps.
    ci, dy, dx, weight : int64 ``[..., C_out, N]``
        Input channel, window row and column (``0 … K-1``) and weight of each entry.
    pruned, zero : int64 ``[..., C_out]``
        Taps dropped for low density and for a zero scaled weight.
    """
    count: np.ndarray
    ci: np.ndarray
    dy: np.ndarray
    dx: np.ndarray
    weight: np.ndarray
    pruned: np.ndarray
    zero: np.ndarray

    @property
    def capacity(self):
        return self.ci.shape[-1]

    def map(self, function):
        return TapLists(**{name: function(getattr(self, name)) for name in
                           ("count", "ci", "dy", "dx", "weight", "pruned", "zero")})


def _clamped_region_sum(density, tile_size, kernel_size):
    """``Σ`` of the T×T region of every (tile, tap); density ``[H, W, C]`` -> ``[TY, TX, C, K, K]``."""
    height, width, channels = density.shape
    r, t = kernel_size // 2, tile_size
    tiles_y, tiles_x = -(-height // t), -(-width // t)
    # rows[ty, ky, i] = clamp(ty·T + i + ky - r): the density rows of each region
    rows = np.clip(np.arange(tiles_y)[:, None, None] * t + np.arange(kernel_size)[None, :, None]
                   - r + np.arange(t)[None, None, :], 0, height - 1)
    cols = np.clip(np.arange(tiles_x)[:, None, None] * t + np.arange(kernel_size)[None, :, None]
                   - r + np.arange(t)[None, None, :], 0, width - 1)
    # sum over columns first: [H, TX, KX, C]
    column_sums = density[:, cols, :].sum(axis=3)
    # then rows: [TY, KY, TX, KX, C]
    sums = column_sums[rows].sum(axis=2)
    return sums.transpose(0, 2, 4, 1, 3)


def tap_densities(density, *, kernel_size, tile_size=1):
    """Average density of the region each tap touches in each tile (see the module docstring).

    Parameters
    ----------
    density : int array ``[H, W, C_in]`` (or ``[H, W]``) in 0 … 256
    kernel_size : odd int
    tile_size : power of two

    Returns
    -------
    int64 ``[ceil(H/T), ceil(W/T), C_in, K, K]`` in 0 … 256
    """
    density = np.asarray(density)
    if density.ndim == 2:
        density = density[:, :, None]
    if density.ndim != 3:
        raise ValueError(f"density map must have shape [H, W] or [H, W, C], not {density.shape}")
    if density.size and (density.min() < 0 or density.max() > DENSITY_ONE):
        raise ValueError(f"densities must lie in [0, {DENSITY_ONE}]")
    _check_int("kernel size", kernel_size, 1)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel size must be an odd integer >= 1, not {kernel_size!r}")
    t = check_tile_size(tile_size)
    sums = _clamped_region_sum(density.astype(np.int64), t, kernel_size)
    shift = 2 * (t.bit_length() - 1)
    return (sums + ((1 << shift) >> 1)) >> shift


def scale_weights(weights, densities, *, prune_threshold):
    """Scaled weights and the drop reasons.

    ``weights [C_out, C_in, K, K]`` and ``densities [..., C_in, K, K]`` give
    ``(scaled, pruned, zero)``, each ``[..., C_out, C_in, K, K]``.
    """
    weights = check_weights(weights)
    _check_int("prune threshold", prune_threshold, 0, PRUNE_THRESHOLD_MAX)
    a = np.asarray(densities, dtype=np.int64)[..., None, :, :, :]
    scaled = (weights * a + 128) >> 8
    pruned = np.broadcast_to(a < prune_threshold, scaled.shape)
    zero = ~pruned & (scaled == 0)
    return scaled, pruned, zero


def _compact(keep, weight, ci, dy, dx):
    """Compact the entries where ``keep`` (``[..., N]``) is set to the front, order kept."""
    order = np.argsort(~keep, axis=-1, kind="stable")
    take = lambda values: np.take_along_axis(np.broadcast_to(values, keep.shape), order, axis=-1)
    count = keep.sum(axis=-1)
    valid = np.arange(keep.shape[-1]) < count[..., None]
    return count, *(np.where(valid, take(values), 0) for values in (ci, dy, dx, weight))


def _tap_coordinates(channels, kernel_size):
    ci, ky, kx = np.meshgrid(np.arange(channels), np.arange(kernel_size), np.arange(kernel_size),
                             indexing="ij")
    return ci.reshape(-1), ky.reshape(-1), kx.reshape(-1)


def tap_lists(weights, densities, *, prune_threshold):
    """``KernelScaler``: the compacted tap list of every position (tile) and output channel.

    ``densities [..., C_in, K, K]`` (from :func:`tap_densities`) give
    :class:`TapLists` with leading shape ``[..., C_out]``.
    """
    scaled, pruned, zero = scale_weights(weights, densities, prune_threshold=prune_threshold)
    n = int(np.prod(scaled.shape[-3:]))
    flat = lambda values: values.reshape(*values.shape[:-3], n)
    ci, ky, kx = _tap_coordinates(scaled.shape[-3], scaled.shape[-1])
    keep = ~flat(pruned) & ~flat(zero)
    count, ci, dy, dx, weight = _compact(keep, flat(scaled), ci, ky, kx)
    return TapLists(count=count, ci=ci, dy=dy, dx=dx, weight=weight,
                    pruned=flat(pruned).sum(axis=-1), zero=flat(zero).sum(axis=-1))


def dense_tap_lists(weights, shape=()):
    """Dense mode: every tap with its original weight, for positions of ``shape``."""
    weights = check_weights(weights)
    c_out, c_in, k, _ = weights.shape
    n = c_in * k * k
    ci, ky, kx = _tap_coordinates(c_in, k)
    full = lambda values: np.broadcast_to(values, (*shape, c_out, n)).copy()
    return TapLists(count=full(np.full((c_out, 1), n))[..., 0], ci=full(ci), dy=full(ky), dx=full(kx),
                    weight=full(weights.reshape(c_out, n)),
                    pruned=np.zeros((*shape, c_out), np.int64), zero=np.zeros((*shape, c_out), np.int64))


def expand_tiles(lists, *, height, width, tile_size):
    """Per-tile lists ``[TY, TX, C_out]`` to per-pixel lists ``[H, W, C_out]``."""
    t = check_tile_size(tile_size)
    rows, cols = np.arange(height) // t, np.arange(width) // t
    return lists.map(lambda values: values[rows][:, cols])


def walker_channels(out_channels, lanes):
    """The output channels each walker of :class:`~dynsparse.hdl.sparseconv.SparseConv` walks.

    Lane ``j`` takes the channels ``co`` with ``co mod L = j``; lanes ``2q`` and
    ``2q + 1`` form walker ``q``, whose channels are those of its lanes in
    increasing order. Returns ``[(lanes of walker q, channels of walker q), ...]``.
    """
    _check_int("output channel count", out_channels, 1)
    _check_int("lane count", lanes, 1, out_channels)
    walkers = []
    for q in range(-(-lanes // 2)):
        ids = [j for j in (2 * q, 2 * q + 1) if j < lanes]
        walkers.append((ids, [co for co in range(out_channels) if co % lanes in ids]))
    return walkers


def cycles_per_position(active, *, lanes):
    """Walk steps per position for ``active [..., C_out]``: ``max_q ceil(v_q / |q|)``.

    Walker ``q`` (:func:`walker_channels`) has ``|q|`` lanes (2, or 1 for the last
    walker of an odd ``L``) and ``v_q = Σ_{co ∈ q} active[co]`` entries to do;
    its lanes take them from both ends of one vector, two a step. A position
    without any active tap takes no step (0).
    """
    active = np.asarray(active, dtype=np.int64)
    c_out = active.shape[-1]
    steps = np.zeros(active.shape[:-1], np.int64)
    for ids, channels in walker_channels(c_out, lanes):
        work = active[..., channels].sum(axis=-1)
        steps = np.maximum(steps, -(-work // len(ids)))
    return steps


#: Register stages from a walk step to the finished-results register, without and with
#: requantisation (stage 1 the selected entries, 2 the operands, 3 the accumulators, then
#: the four requantisation stages).
RESULT_STAGES = (3, 7)


#: Finished results the engine holds while earlier positions are given out (default).
FINISHED_SLOTS = 4

#: Positions admitted and not yet given out (default).
QUEUE_DEPTH = 64


def engine_cycles(active, *, lanes, queue_depth=QUEUE_DEPTH, finished_slots=FINISHED_SLOTS, requantize=False,
                  _skip=True):
    """Cycles of :class:`~dynsparse.hdl.sparseconv.SparseConv` over positions ``active [P, C_out]``.

    A cycle-level model of the engine's position flow, matched cycle for cycle
    by the RTL when windows and tap lists are always offered and results always
    taken: counted from the cycle the first window is accepted (cycle 0) to the
    cycle the last result is offered. Windows pass two registers (W0, W1);
    from W1 (the *front*) a position is *admitted* into the order queue
    (``queue_depth`` entries) when the queue has room and either it is empty
    (no active tap: it needs no walk), or the next register is free, or the
    walk register ends its walk in that cycle. A non-empty position goes to
    the walk register when that is free (or ends its walk) and the next
    register is empty, otherwise to the next register, which moves into the
    walk register when the walk ends. A walked position takes
    :func:`cycles_per_position` steps; its result reaches the finished
    results (``finished_slots`` of them) :data:`RESULT_STAGES` cycles
    after its last step and waits there until the queue's head is that
    position. One result is given out per cycle, an empty position's zeros as
    soon as it is at the head. The walk stops while a finished result finds
    every slot taken.
    """
    walk = cycles_per_position(np.asarray(active).reshape(-1, np.shape(active)[-1]), lanes=lanes).tolist()
    depth = _check_int("queue depth", queue_depth, 1)
    slots = _check_int("finished slot count", finished_slots, 1)
    stages = RESULT_STAGES[bool(requantize)]
    positions = len(walk)
    if positions == 0:
        return 0
    offered = 0                                  # windows accepted
    w0 = w1 = wr = wn = None                     # W0, W1, walk register, next register
    left = 0                                     # steps left to the walked position
    pipe = [False] * stages                      # last-step tags between a step and the result
    finished = 0                                 # finished results held
    queue = collections.deque()                  # admitted, not given out: True = empty position
    given, cycle = 0, 0
    while True:
        if _skip and wr is not None and left > 1 and not any(pipe) and not (queue and (queue[0] or finished)) \
                and (w1 is None or (walk[w1] and wn is not None) or len(queue) >= depth) \
                and (w0 is None or w1 is not None) and (w0 is not None or offered == positions):
            # nothing but the walk can change before its last step: go to it
            cycle += left - 1
            left = 1
        final = pipe[-1]
        give = bool(queue) and (queue[0] or finished > 0)
        take = give and not queue[0]
        advance = not (final and finished == slots and not take)
        step = wr is not None and advance
        last_step = step and left == 1
        wr_free = wr is None or last_step
        admit = w1 is not None and len(queue) < depth and (walk[w1] == 0 or wn is None or wr_free)
        move = w0 is not None and (w1 is None or admit)
        accept = offered < positions and (w0 is None or move)
        if give:
            queue.popleft()
            given += 1
            if given == positions:
                return cycle + 1
        if admit:
            queue.append(walk[w1] == 0)
        if advance:
            finished += final - take
            pipe = [last_step] + pipe[:-1]
        else:
            finished -= take
        if step and not last_step:
            left -= 1
        loaded = admit and walk[w1] > 0
        if wr_free and wn is not None:
            wr, left, wn = wn, walk[wn], (w1 if loaded else None)
        elif loaded and wr_free:
            wr, left = w1, walk[w1]
        elif loaded:
            wn = w1
        elif last_step:
            wr = None
        if move:
            w1 = w0
        elif admit:
            w1 = None
        if accept:
            w0, offered = offered, offered + 1
        elif move:
            w0 = None
        cycle += 1


def sparse_conv(frame, lists, *, kernel_size, pad_mode="zero", mask=None, block_size=4, lanes=1,
                dense=False):
    """``SparseConv``: accumulators and counters of one frame.

    Parameters
    ----------
    frame : int array ``[H, W, C_in]`` (or ``[H, W]``), uint8 pixels or int8 features
    lists : :class:`TapLists` with leading shape ``[H, W, C_out]`` (:func:`expand_tiles`)
    pad_mode : ``"zero"``, ``"replicate"`` or ``"reflect"``
    mask : 0/1 array of :func:`~dynsparse.golden.padmask.mask_length` bits, 1 = included;
        ``None`` includes every block
    lanes : int
        Multiplier lanes ``L`` (``1 … C_out``), for the cycle count.
    dense : bool
        Skip nothing for padding (dense mode).

    Returns
    -------
    acc : int64 ``[H, W, C_out]``
    counters : dict
        ``cycles``, ``performed``, ``pruned``, ``zero``, ``padding`` (MAC counts),
        ``dense`` (``C_out · C_in · K²`` per position) and ``active`` (int64
        ``[H, W, C_out]``, taps performed per output).
    """
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = frame[:, :, None]
    height, width, c_in = frame.shape
    mode = _mode_name(pad_mode)
    r = kernel_size // 2
    if lists.count.shape[:2] != (height, width):
        raise ValueError(f"tap lists must have leading shape {(height, width)}, not {lists.count.shape[:2]}")
    c_out = lists.count.shape[2]
    n = lists.capacity
    for name, values, limit in (("input channel", lists.ci, c_in), ("row offset", lists.dy, kernel_size),
                                ("column offset", lists.dx, kernel_size)):
        valid = np.arange(n) < lists.count[..., None]
        if ((values < 0) | (values >= limit))[valid].any():
            raise ValueError(f"a tap's {name} lies outside [0, {limit - 1}]")
    values, pad = windows(frame, kernel_size=kernel_size, pad_mode=mode)     # [H, W, K, K, C]
    blocks = block_map(width, height, kernel_size=kernel_size, block_size=block_size)
    if mask is None:
        mask = np.ones(max(1, blocks.max() + 1), np.uint8)
    else:
        mask = check_mask(mask, width, height, kernel_size=kernel_size, block_size=block_size)
        if not mask.size:               # K = 1: no padding, no block; the lookup below needs a bit
            mask = np.ones(1, np.uint8)
    ys, xs = np.arange(height)[:, None, None, None], np.arange(width)[None, :, None, None]
    valid = np.arange(n)[None, None, None, :] < lists.count[..., None]
    # window value, padding flag and block of each entry: [H, W, C_out, N]
    v = values[ys, xs, lists.dy, lists.dx, lists.ci].astype(np.int64)
    p = pad[ys, xs, lists.dy, lists.dx].astype(bool)
    block = blocks[ys + lists.dy, xs + lists.dx]
    excluded = (mode == "zero") | (mask[np.maximum(block, 0)] == 0)
    skipped = valid & p & excluded & (not dense)
    performed = valid & ~skipped
    acc = np.where(performed, lists.weight * v, 0).sum(axis=-1)
    active = performed.sum(axis=-1)
    counters = {
        "cycles":    int(cycles_per_position(active, lanes=lanes).sum()),
        "performed": int(active.sum()),
        "pruned":    int(lists.pruned.sum()),
        "zero":      int(lists.zero.sum()),
        "padding":   int(skipped.sum()),
        "dense":     height * width * c_out * n,
        "active":    active,
    }
    return acc, counters


def requantize(acc, *, multiplier, shift):
    """``clamp((acc · multiplier + round) >> shift, -128, 127)`` as int8 (module docstring)."""
    _check_int("requantisation multiplier", multiplier, 0, MULTIPLIER_MAX)
    _check_int("requantisation shift", shift, 0, SHIFT_MAX)
    product = np.asarray(acc, dtype=np.int64) * multiplier
    rounding = (1 << (shift - 1)) if shift else 0
    return np.clip((product + rounding) >> shift, -128, 127).astype(np.int8)


# -- float reference --------------------------------------------------------------------------

def tap_densities_float(density, *, kernel_size, tile_size=1):
    """Float tap densities ``[TY, TX, C_in, K, K]`` in [0, 1]: the same regions, exact mean."""
    density = np.asarray(density, dtype=np.float64)
    if density.ndim == 2:
        density = density[:, :, None]
    t = check_tile_size(tile_size)
    return _clamped_region_sum(density, t, kernel_size) / (t * t)


def conv_float(frame, weights, densities=None, *, prune_threshold=0.0, pad_mode="zero", mask=None,
               block_size=4, tile_size=1):
    """Float reference of the whole engine: ``Σ W · a · v`` over taps with ``a >= threshold``.

    ``densities`` are float tap densities ``[TY, TX, C_in, K, K]`` in [0, 1]
    (:func:`tap_densities_float`), or ``None`` for the unscaled dense
    convolution; ``prune_threshold`` is in [0, 1] units. Padding follows the
    same mask rule as the integer model. Returns float64 ``[H, W, C_out]``.
    """
    frame = np.asarray(frame, dtype=np.float64)
    if frame.ndim == 2:
        frame = frame[:, :, None]
    weights = np.asarray(weights, dtype=np.float64)
    c_out, c_in, k, _ = weights.shape
    height, width, _ = frame.shape
    mode = _mode_name(pad_mode)
    values, pad = windows(frame, kernel_size=k, pad_mode=mode)          # [H, W, K, K, C]
    blocks = block_map(width, height, kernel_size=k, block_size=block_size)
    if mask is None:
        mask = np.ones(max(1, blocks.max() + 1), np.uint8)
    r = k // 2
    ys, xs = np.arange(height)[:, None, None, None], np.arange(width)[None, :, None, None]
    dys, dxs = np.arange(k)[None, None, :, None], np.arange(k)[None, None, None, :]
    excluded = pad.astype(bool) & ((mode == "zero") | (mask[np.maximum(blocks[ys + dys, xs + dxs], 0)] == 0))
    values = np.where(excluded[..., None], 0.0, values)
    if densities is None:
        factor = np.ones((height, width, c_in, k, k))
    else:
        t = check_tile_size(tile_size)
        a = np.asarray(densities, dtype=np.float64)[np.arange(height) // t][:, np.arange(width) // t]
        factor = np.where(a >= prune_threshold, a, 0.0)
    # out[y, x, co] = Σ_{ci, ky, kx} W[co, ci, ky, kx] · factor[y, x, ci, ky, kx] · v[y, x, ky, kx, ci]
    return np.einsum("oikl,yxikl,yxkli->yxo", weights, factor, values, optimize=True)
