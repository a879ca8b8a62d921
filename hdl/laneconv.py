"""The compact sparse-tap engine: tap entries arrive already laid out on the lanes, one beat a cycle."""

import operator

from amaranth.hdl import Array, C, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring

from ..golden.laneconv import LANE_LATENCY, lane_cycles, lane_slots, lane_steps
from ..golden.sparseconv import accumulator_width
from .frame import check_int
from .requant import REQUANT_STAGES, requantize_stages
from .sparseconv import _ConvEngine, _sum, _tree
from .taps import index_width


__all__ = ["lane_beat_layout", "LaneConv"]


def lane_beat_layout(*, kernel_size, in_channels, out_channels, lanes):
    """Payload of a beat stream (:mod:`dynsparse.golden.laneconv`): ``lanes[L]`` entries
    (``valid``, ``flush``, ``slot``, ``ci``, ``dy``, ``dx``, ``weight``), ``end``,
    ``first``, ``last``, ``pruned``, ``zero``."""
    check_int("kernel size", kernel_size, minimum=1, maximum=15, odd=True)
    check_int("input channel count", in_channels, minimum=1)
    check_int("output channel count", out_channels, minimum=1)
    check_int("lane count", lanes, minimum=1, maximum=out_channels)
    skipped = out_channels * in_channels * kernel_size * kernel_size
    entry = data.StructLayout({
        "valid":  unsigned(1),
        "flush":  unsigned(1),
        "slot":   unsigned(index_width(lane_slots(out_channels, lanes))),
        "ci":     unsigned(index_width(in_channels)),
        "dy":     unsigned(index_width(kernel_size)),
        "dx":     unsigned(index_width(kernel_size)),
        "weight": signed(8),
    })
    return data.StructLayout({
        "lanes":  data.ArrayLayout(entry, lanes),
        "end":    unsigned(1),
        "first":  unsigned(1),
        "last":   unsigned(1),
        "pruned": unsigned(skipped.bit_length()),
        "zero":   unsigned(skipped.bit_length()),
    })


class LaneConv(_ConvEngine, wiring.Component):
    """Convolution over tap entries streamed per lane: the compact engine for small FPGAs.

    The same convolution as :class:`~dynsparse.hdl.sparseconv.SparseConv`
    (bit-exact with :func:`dynsparse.golden.sparseconv.sparse_conv`, and
    :func:`~dynsparse.golden.sparseconv.requantize` with ``requantize``), the
    same windows, padding mask, counters and errors, but the tap lists arrive
    as *beats* (:func:`dynsparse.golden.laneconv.lane_beats`): one entry per
    lane a cycle, already laid out on the lanes, so the engine keeps no copy
    of the lists and selects nothing. Lane ``j`` owns the output channels
    ``co = s·L + j`` (its *slots* ``s``). A beat's entries go straight to the
    lanes: each lane selects its pixel, multiplies and accumulates; a lane's
    partial sum of a slot is written when the entry says ``flush`` or at the
    position's ``end``. Its input is ``L`` entries wide (16 bits each at
    ``K = 3``, ``C_in = 1``, ``C_out = L``) instead of ``C_out · C_in · K²``.

    Costs: a position takes ``max(1, max_j entries of lane j)`` beats
    (:meth:`steps`); pruned and zero taps cost nothing (they are not in the
    beats); an entry that reads padding excluded by ``pad_mode = ZERO`` or
    the mask is not multiplied, but takes its lane's place in its beat.

    Parameters
    ----------
    kernel_size : int
        ``K``, odd, 1 to 15.
    in_channels, out_channels : int
        ``C_in``, ``C_out`` >= 1.
    lanes : int
        ``L``, multiplier lanes, 1 to ``C_out``.
    pixel_shape : shape
        ``unsigned(8)`` (images) or ``signed(8)`` (feature maps).
    max_width, max_height : int
        Largest frame; they size ``x``/``y`` and the padding mask.
    block_size : int
        ``B``, padding-block size, a power of two in [1, 64].
    requantize : bool
        Give int8 results (``multiplier``, ``shift``) instead of accumulators.

    Members
    -------
    i_window : In(stream.Signature(window_layout))
        Windows with ``pad`` flags, ``x``, ``y``, ``first``, ``last``.
    i_taps : In(stream.Signature(lane_beat_layout))
        Beats: a position's beats end with ``end = 1``.
    o_stream : Out(stream.Signature(...))
        ``data[co]`` (signed :attr:`accumulator_width` bits, or ``signed(8)``), ``x``,
        ``y``, ``first``, ``last`` of the window.
    pad_mode, dense, width, height, mask_write, mask_band, mask_index, mask_value,
    multiplier, shift, cycles, performed, skipped_pruned, skipped_zero,
    skipped_padding, clear_counters, errors, clear_errors, busy
        As :class:`~dynsparse.hdl.sparseconv.SparseConv`'s; ``cycles`` counts beats.

    Errors
    ------
    - ``misaligned``: the beats and the windows disagree on where a frame starts or
      ends (a beat's ``first`` marks a frame's first beat, ``last`` its last). The
      engine realigns at the next frame: beats met by a frame's first window before
      a frame's first beat are dropped; a frame's first beat met by any other
      window ends that window with the entries it had. Every window gives a result;
      the next well-formed frame is exact.
    - ``bad_tap``: an entry with ``dy ≥ K``, ``dx ≥ K``, ``ci ≥ C_in`` or a slot
      beyond ``C_out`` (not performed), or a lane given a new slot before it
      flushed the last (the partial sum goes to the new slot).
    - ``bad_mask_write``: as ``SparseConv``.

    Timing
    ------
    One beat a cycle. With windows and beats always offered and results always
    taken, the cycles from the first window accepted to the last result offered are
    :meth:`timeline` (:func:`dynsparse.golden.laneconv.lane_cycles`): :attr:`latency`
    plus one per beat after the first. ``o_stream`` may stall at any cycle; the beats
    stop only when a position ends while both finished slots are taken.

    Raises
    ------
    TypeError, ValueError
        On a bad parameter; the message names the value.
    """

    def __init__(self, *, kernel_size=3, in_channels=1, out_channels=8, lanes=8,
                 pixel_shape=unsigned(8), max_width=640, max_height=480, block_size=4,
                 requantize=False):
        self._check_parameters(kernel_size=kernel_size, in_channels=in_channels, out_channels=out_channels,
                               lanes=lanes, pixel_shape=pixel_shape, max_width=max_width,
                               max_height=max_height, block_size=block_size, requantize=requantize)
        super().__init__(self._ports(lane_beat_layout(
            kernel_size=kernel_size, in_channels=in_channels, out_channels=out_channels, lanes=lanes)))

    @property
    def slots(self):
        """``ceil(C_out / L)``: the output channels each lane owns."""
        return lane_slots(self._out_channels, self._lanes)

    @property
    def accumulator_width(self):
        """Signed accumulator bits: ``C_in · K²`` products of an int8 weight and a full-scale
        pixel (:func:`dynsparse.golden.sparseconv.accumulator_width`). A well-formed
        position lists each tap of a channel at most once; a stream that lists more
        wraps modulo ``2**accumulator_width``."""
        taps = self._in_channels * self._kernel_size ** 2
        return accumulator_width(taps=taps, pixel_signed=self._pixel_shape.signed)

    @property
    def latency(self):
        """Cycles from accepting a window into an idle engine (its one beat waiting) to
        offering its result; add ``beats - 1`` for a longer position."""
        return LANE_LATENCY + (REQUANT_STAGES if self._requantize else 0)

    def steps(self, count):
        """Beats of positions whose lists hold ``count[..., C_out]`` taps
        (:func:`dynsparse.golden.laneconv.lane_steps`)."""
        return lane_steps(count, lanes=self._lanes)

    def timeline(self, count):
        """Cycles from the first window accepted to the last result offered, for positions
        ``count[P, C_out]`` in stream order, inputs always offered and results always taken."""
        return lane_cycles(count, lanes=self._lanes, requantize=self._requantize)

    def elaborate(self, platform):
        m = Module()
        k = self._kernel_size
        c_out, lanes, slots = self._out_channels, self._lanes, self.slots
        window, taps = self.i_window, self.i_taps
        beat = taps.payload
        meta_layout = data.StructLayout({name: self.o_stream.payload.shape()[name].shape
                                         for name in ("x", "y", "first", "last")})

        advance = Signal()          # every stage moves; 0 only when a result cannot be kept

        raised = self._error_flags(m)
        done = Signal()                         # the front's position takes its last step
        front = self._window_front(m, raised, done, meta_layout)
        w1_valid, w_pixels, w_excluded, w_meta = front.w1_valid, front.pixels, front.excluded, front.meta
        pixels_layout = front.pixels_layout

        # -------- the front: W1's window meets the offered beat -----------------------------------
        # A beat's ``first`` marks a frame's first beat, ``last`` its last. A frame's first window
        # that has not started waits for a frame's first beat: other beats are dropped. A
        # frame's first beat met by any other window ends that window (a step with no entry).
        pair = Signal()
        drop, cut = Signal(), Signal()
        started = Signal()                      # W1's position has taken a step
        lane_error = Signal()                   # a new slot before a flush (at the accumulators)
        step = Signal()                         # a step enters the MAC lanes
        m.d.comb += [
            pair.eq(w1_valid & taps.valid),
            drop.eq(w_meta.first & ~started & ~beat.first),
            cut.eq(beat.first & (~w_meta.first | started)),
            step.eq(pair & advance & ~drop),
            taps.ready.eq(w1_valid & advance & ~cut),
            done.eq(step & (beat.end | cut)),
            raised.misaligned.eq(pair & advance & (drop | cut | (beat.end & (beat.last != w_meta.last)))),
        ]
        with m.If(done):
            m.d.sync += started.eq(0)
        with m.Elif(step):
            m.d.sync += started.eq(1)
        excluded_rows = Array(Array(w_excluded[dy * k + dx] for dx in range(k)) for dy in range(k))
        listed, active, padding, bad_bits = [], [], [], []
        for j in range(lanes):
            entry = beat.lanes[j]
            # (a slot beyond C_out is possible only if the field can name one)
            owned = (entry.slot * lanes + j < c_out) if ((1 << len(entry.slot)) - 1) * lanes + j >= c_out \
                else C(1, 1)
            malformed = (entry.dy >= k) | (entry.dx >= k) | (entry.ci >= self._in_channels) | ~owned
            listed.append(Signal(name=f"listed{j}"))
            active.append(Signal(name=f"active{j}"))
            padding.append(Signal(name=f"padding{j}"))
            is_excluded = excluded_rows[entry.dy][entry.dx]
            m.d.comb += [
                listed[j].eq(entry.valid & ~cut),
                active[j].eq(listed[j] & ~malformed & ~is_excluded),
                padding[j].eq(listed[j] & ~malformed & is_excluded),
            ]
            bad_bits.append(listed[j] & malformed)
        m.d.comb += raised.bad_tap.eq((step & _tree(bad_bits, operator.or_)) | lane_error)

        # -------- MAC lanes ----------------------------------------------------------------------
        def register(value, name, reset_less=True):
            reg = Signal.like(value, name=name, reset_less=reset_less)
            with m.If(advance):
                m.d.sync += reg.eq(value)
            return reg

        tap_shape = beat.lanes[0].shape()
        in_flight = []
        # stage 1: the entries and the window they read
        e1_step = register(step, "e1_step", reset_less=False)
        e1_end = register(done, "e1_end", reset_less=False)
        e1_listed = [register(listed[j] & step, f"e1_listed{j}", reset_less=False) for j in range(lanes)]
        e1_active = [register(active[j] & step, f"e1_active{j}", reset_less=False) for j in range(lanes)]
        e1_padding = [register(padding[j] & step, f"e1_padding{j}", reset_less=False) for j in range(lanes)]
        e1_entry = [tap_shape(register(beat.lanes[j].as_value(), f"e1_entry{j}")) for j in range(lanes)]
        e1_pixels = pixels_layout(register(w_pixels, "e1_pixels"))
        e1_meta = register(w_meta.as_value(), "e1_meta")
        in_flight.append(e1_step)
        # stage 2: multiplier operands (DSP input registers); an entry not performed has weight 0
        weights = [register(Mux(e1_active[j], e1_entry[j].weight, 0), f"e2_weight{j}") for j in range(lanes)]
        pixel_array = Array(Array(Array(e1_pixels[dy][dx][ci] for ci in range(self._in_channels))
                                  for dx in range(k)) for dy in range(k))
        pixel_values = [register(pixel_array[e1_entry[j].dy][e1_entry[j].dx][e1_entry[j].ci].as_signed()
                                 if self._pixel_shape.signed else
                                 Cat(pixel_array[e1_entry[j].dy][e1_entry[j].dx][e1_entry[j].ci],
                                     C(0, 1)).as_signed(),
                                 f"e2_pixel{j}") for j in range(lanes)]
        e2_step = register(e1_step, "e2_step", reset_less=False)
        e2_end = register(e1_end, "e2_end", reset_less=False)
        e2_listed = [register(e1_listed[j], f"e2_listed{j}", reset_less=False) for j in range(lanes)]
        e2_flush = [register(e1_entry[j].flush, f"e2_flush{j}") for j in range(lanes)]
        e2_slot = [register(e1_entry[j].slot, f"e2_slot{j}") for j in range(lanes)]
        e2_meta = register(e1_meta, "e2_meta")
        in_flight.append(e2_step)
        # stage 3: the accumulators (one SB_MAC16 per lane with its accumulator on iCE40). A
        # lane holds a partial sum of one slot until an entry flushes it or the position ends.
        accumulators = [Signal(signed(self.accumulator_width), name=f"acc{j}", reset_less=True)
                        for j in range(lanes)]
        holding = [Signal(name=f"holding{j}") for j in range(lanes)]
        acc_slot = [Signal.like(e2_slot[j], name=f"acc_slot{j}", reset_less=True) for j in range(lanes)]
        acc_flush = [Signal(name=f"acc_flush{j}") for j in range(lanes)]
        acc_step, acc_end = Signal(), Signal()
        m.d.comb += lane_error.eq(advance & e2_step & _tree(
            (e2_listed[j] & holding[j] & (e2_slot[j] != acc_slot[j]) for j in range(lanes)), operator.or_))
        acc_meta = register(e2_meta, "acc_meta")
        with m.If(advance):
            m.d.sync += [acc_step.eq(e2_step), acc_end.eq(e2_step & e2_end)]
        with m.If(advance & e2_step):
            for j in range(lanes):
                flush = (e2_listed[j] & e2_flush[j]) | e2_end
                m.d.sync += [
                    accumulators[j].eq(Mux(holding[j], accumulators[j], 0) + weights[j] * pixel_values[j]),
                    holding[j].eq((holding[j] | e2_listed[j]) & ~flush),
                    acc_flush[j].eq(flush & (holding[j] | e2_listed[j])),
                ]
                with m.If(e2_listed[j]):
                    m.d.sync += acc_slot[j].eq(e2_slot[j])
        with m.Elif(advance):
            m.d.sync += [acc_flush[j].eq(0) for j in range(lanes)]
        in_flight.append(acc_step)

        results = accumulators
        result_valid, result_slot = acc_flush, acc_slot
        position_last, result_meta = acc_end, acc_meta
        # what position_last will be in the next cycle (for the registered stall below)
        position_last_next = Mux(advance, e2_step & e2_end, acc_end)
        if self._requantize:
            results, delayed, valids = requantize_stages(
                m, advance, results, self.multiplier, self.shift,
                [position_last, result_meta, *result_valid, *result_slot])
            position_last, result_meta = delayed[0], delayed[1]
            result_valid = delayed[2:2 + lanes]
            result_slot = delayed[2 + lanes:]
            in_flight += valids
            position_last_next = Mux(advance, valids[-2], position_last)
        result_meta = meta_layout(result_meta)

        # -------- counters -----------------------------------------------------------------------
        # MACs and padding skips are counted as their step leaves stage 1; a beat's pruned and
        # zero counts are registered and added the cycle after.
        counted = Signal()
        beat_pruned, beat_zero = Signal.like(beat.pruned), Signal.like(beat.zero)
        m.d.sync += counted.eq(step & ~cut)
        with m.If(step & ~cut):
            m.d.sync += [beat_pruned.eq(beat.pruned), beat_zero.eq(beat.zero)]
        increments = {
            "cycles":          step,
            "performed":       Mux(advance, _sum(e1_active), 0),
            "skipped_pruned":  Mux(counted, beat_pruned, 0),
            "skipped_zero":    Mux(counted, beat_zero, 0),
            "skipped_padding": Mux(advance, _sum(e1_padding), 0),
        }
        self._counters(m, increments)

        # -------- results: collected per channel, two finished slots, the output register --------
        data_shape = self.o_stream.payload.data[0].shape()
        collected = [Signal(data_shape, name=f"collected_{co}", reset_less=True) for co in range(c_out)]
        merged = []
        for co in range(c_out):
            j, s = co % lanes, co // lanes
            hit = result_valid[j] & (result_slot[j] == s) if slots > 1 else result_valid[j]
            merged.append(Mux(hit, results[j], collected[co]))
        # Two finished slots, the oldest in slot 0: the stall looks at the slots' count only
        # (registers), not at o_stream.ready, so no path runs from the output's ready to every
        # register's enable; with results taken every cycle one slot is in use.
        depth = 2                               # finished slots (not the lanes' channel slots)
        finished = [[Signal(data_shape, name=f"finished_{n}_{co}", reset_less=True) for co in range(c_out)]
                    for n in range(depth)]
        finished_meta = [Signal(meta_layout, name=f"finished_meta_{n}", reset_less=True) for n in range(depth)]
        finished_count = Signal(range(depth + 1))
        give, arrive = Signal(), Signal()
        stall = Signal()
        free_slot = Signal(range(depth + 1))
        m.d.comb += [
            give.eq((~self.o_stream.valid | self.o_stream.ready) & (finished_count != 0)),
            advance.eq(~stall),
            arrive.eq(advance & position_last),
            free_slot.eq(finished_count - give),
        ]
        with m.If(advance):
            with m.If(position_last):
                m.d.sync += [collected[co].eq(0) for co in range(c_out)]
            with m.Else():
                m.d.sync += [collected[co].eq(merged[co]) for co in range(c_out)]
        for n in range(depth):
            with m.If(arrive & (free_slot == n)):
                m.d.sync += [finished[n][co].eq(merged[co]) for co in range(c_out)]
                m.d.sync += finished_meta[n].eq(result_meta)
            if n + 1 < depth:
                with m.Elif(give):
                    m.d.sync += [finished[n][co].eq(finished[n + 1][co]) for co in range(c_out)]
                    m.d.sync += finished_meta[n].eq(finished_meta[n + 1])
        count_next = Signal.like(finished_count)
        m.d.comb += count_next.eq(finished_count + arrive - give)
        m.d.sync += finished_count.eq(count_next)
        # advance = ~(position_last & (finished_count == depth)), both registers: computed a
        # cycle ahead into a register, so the engine-wide enable leaves a flip-flop
        m.d.sync += stall.eq(position_last_next & (count_next == depth))
        with m.If(give):
            out = self.o_stream.payload
            m.d.sync += [self.o_stream.valid.eq(1), out.data.eq(Cat(*finished[0])),
                         out.x.eq(finished_meta[0].x), out.y.eq(finished_meta[0].y),
                         out.first.eq(finished_meta[0].first), out.last.eq(finished_meta[0].last)]
        with m.Elif(self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)

        m.d.comb += self.busy.eq(Cat(front.w0_valid, w1_valid, finished_count != 0, self.o_stream.valid,
                                     *in_flight).any())
        return m
