"""The packed sparse-tap engine: the lanes follow a schedule packed on the host across positions."""

import operator

from amaranth.hdl import C, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..golden.packedconv import FLUSH_TO_EMIT, PACKED_LATENCY, RESULT_SLOTS, RING_DEPTH, packed_cycles
from ..golden.sparseconv import MULTIPLIER_MAX, SHIFT_MAX, accumulator_width
from .frame import check_int, check_shape, pixel_layout
from .requant import REQUANT_STAGES, requantize_stages
from .sparseconv import COUNTER_BITS, _sum, _tree, add_counters, sticky_errors
from .taps import index_width


__all__ = ["packed_beat_layout", "PackedConvErrors", "PackedConv"]


def _check(kernel_size, in_channels, out_channels, lanes, ring_depth, result_slots):
    check_int("kernel size", kernel_size, minimum=1, maximum=15, odd=True)
    check_int("input channel count", in_channels, minimum=1)
    check_int("output channel count", out_channels, minimum=1)
    check_int("lane count", lanes, minimum=1, maximum=out_channels)
    for name, value in (("ring depth", ring_depth), ("result slot count", result_slots)):
        check_int(name, value, minimum=2, maximum=1 << 16)
        if value & (value - 1):
            raise ValueError(f"{name} must be a power of two in [2, 65536], not {value!r}")


def packed_beat_layout(*, kernel_size, in_channels, out_channels, lanes, ring_depth=RING_DEPTH,
                       result_slots=RESULT_SLOTS):
    """Payload of a packed beat stream (:func:`dynsparse.golden.packedconv.pack_beats`):
    ``lanes[L]`` entries (``valid``, ``flush``, ``channel``, ``slot``, ``place``, ``ci``,
    ``weight``) and ``take``, ``emit``, ``mask``, ``first``, ``last``, ``pruned``, ``zero``,
    ``padding``."""
    _check(kernel_size, in_channels, out_channels, lanes, ring_depth, result_slots)
    skipped = (out_channels * in_channels * kernel_size * kernel_size).bit_length()
    entry = data.StructLayout({
        "valid":   unsigned(1),
        "flush":   unsigned(1),
        "channel": unsigned(index_width(out_channels)),
        "slot":    unsigned(index_width(result_slots)),
        "place":   unsigned(index_width(ring_depth)),
        "ci":      unsigned(index_width(in_channels)),
        "weight":  signed(8),
    })
    return data.StructLayout({
        "lanes":   data.ArrayLayout(entry, lanes),
        "take":    unsigned(1),
        "emit":    unsigned(1),
        "mask":    unsigned(out_channels),
        "first":   unsigned(1),
        "last":    unsigned(1),
        "pruned":  unsigned(skipped),
        "zero":    unsigned(skipped),
        "padding": unsigned(skipped),
    })


class PackedConvErrors(data.Struct):
    """Sticky error flags of :class:`PackedConv` (see its *Errors* section)."""
    misaligned:     1
    bad_entry:      1
    flush_conflict: 1


class PackedConv(wiring.Component):
    """Convolution that follows packed beats: lanes work on any buffered position.

    The convolution of :func:`dynsparse.golden.sparseconv.sparse_conv` (and
    :func:`~dynsparse.golden.sparseconv.requantize` with ``requantize``),
    bit-exact, with the work of many positions spread over the lanes. The
    engine keeps the frame's last ``N`` pixels in a *ring* (a block RAM per
    lane, all written with the same pixel) and ``S`` result slots per output
    channel (a block RAM per channel). It does what its beats
    (:func:`dynsparse.golden.packedconv.pack_beats`) say, one beat a cycle:

    - ``take``: take the next pixel into the ring (place ``taken mod N``);
    - each lane's entry: read ring place ``place`` (input channel ``ci``),
      multiply by ``weight``, add to the lane's sum (a lane starts a new sum
      after an entry with ``flush``); on ``flush`` write the sum to result
      slot ``slot`` of output channel ``channel``;
    - ``emit``: read result slot ``emitted mod S`` of every channel and give
      it as the next position's result (a channel off ``mask`` gives 0).

    The host's schedule (:func:`~dynsparse.golden.packedconv.pack_schedule`)
    guarantees that every read finds its pixel and every emit its results;
    the engine checks only what it can (see *Errors*). A beat waits for a
    pixel when it takes one and none is offered, and for room in the output
    queue when it emits; nothing after a beat's acceptance ever waits.

    Parameters
    ----------
    kernel_size : int
        ``K``, odd, 1 to 15 (sizes the accumulators and the skip counts).
    in_channels, out_channels : int
        ``C_in``, ``C_out`` >= 1.
    lanes : int
        ``L``, multiplier lanes, 1 to ``C_out``.
    pixel_shape : shape
        ``unsigned(8)`` (images) or ``signed(8)`` (feature maps).
    ring_depth : int
        ``N``, pixels in the ring, a power of two; the host needs ``N > 2·(r·W + r)``.
    result_slots : int
        ``S``, result slots, a power of two.
    requantize : bool
        Give int8 results (``multiplier``, ``shift``) instead of accumulators.

    Members
    -------
    i_pixels : In(stream.Signature(pixel_layout))
        The frame's pixels in raster order, ``first``/``last`` on its first/last.
    i_beats : In(stream.Signature(packed_beat_layout))
        Beats; ``first``/``last`` on the frame's first and last beat.
    o_stream : Out(stream.Signature(...))
        One result per position in raster order: ``data[co]`` (signed
        :attr:`accumulator_width` bits, or ``signed(8)``), ``first``, ``last``.
    multiplier, shift : In
        Requantisation (only with ``requantize``), read as a result enters it.
    cycles, performed, skipped_pruned, skipped_zero, skipped_padding : Out(32)
        Beats executed, entries performed, and the beats' skip counts.
    clear_counters : In(1)
    errors : Out(PackedConvErrors)
        Sticky; ``clear_errors`` clears them.
    busy : Out(1)
        A beat's work or a result is in flight.

    Errors
    ------
    - ``misaligned``: the beats and the pixels disagree on where a frame starts.
      The first pixel a frame's beats take must be a frame's ``first``; a take
      that meets a ``first`` pixel later in the beats' frame drops the rest of
      that frame's beats (up to the next beat with ``first``), and a frame's
      first take that meets a pixel without ``first`` drops pixels up to the
      next ``first`` one. A beat before any frame's ``first`` beat is dropped,
      and a beat with ``first`` before the last frame's beat with ``last`` starts
      a new frame. The next well-formed frame is exact.
    - ``bad_entry``: an entry with ``channel ≥ C_out`` or ``ci ≥ C_in`` (not performed).
    - ``flush_conflict``: two lanes flush the same channel on one beat (what is written to
      that channel's slot is not defined; the next frame is exact).

    Timing
    ------
    With pixels and beats always offered and results always taken, a frame of
    ``B`` beats takes ``B - 1 + latency`` cycles from its first beat accepted to
    its last result offered (:meth:`timeline`); a beat with an ``emit`` offers
    its result :attr:`latency` cycles after it is accepted.

    Raises
    ------
    TypeError, ValueError
        On a bad parameter; the message names the value.
    """

    def __init__(self, *, kernel_size=3, in_channels=1, out_channels=8, lanes=8, pixel_shape=unsigned(8),
                 ring_depth=RING_DEPTH, result_slots=RESULT_SLOTS, requantize=False):
        _check(kernel_size, in_channels, out_channels, lanes, ring_depth, result_slots)
        self._pixel_shape = check_shape("pixel shape", pixel_shape)
        if self._pixel_shape not in (unsigned(8), signed(8)):
            raise ValueError(f"pixel shape must be unsigned(8) or signed(8), not {pixel_shape!r}")
        if not isinstance(requantize, bool):
            raise TypeError(f"requantize must be a bool, not {requantize!r}")
        self._kernel_size, self._in_channels, self._out_channels = kernel_size, in_channels, out_channels
        self._lanes, self._ring_depth, self._result_slots = lanes, ring_depth, result_slots
        self._requantize = requantize
        result_shape = signed(8) if requantize else signed(self.accumulator_width)
        ports = {
            "i_pixels": In(stream.Signature(pixel_layout(pixel_shape=self._pixel_shape, channels=in_channels))),
            "i_beats":  In(stream.Signature(packed_beat_layout(
                kernel_size=kernel_size, in_channels=in_channels, out_channels=out_channels, lanes=lanes,
                ring_depth=ring_depth, result_slots=result_slots))),
            "o_stream": Out(stream.Signature(data.StructLayout({
                "data":  data.ArrayLayout(result_shape, out_channels),
                "first": unsigned(1),
                "last":  unsigned(1),
            }))),
            **{name: Out(COUNTER_BITS) for name in
               ("cycles", "performed", "skipped_pruned", "skipped_zero", "skipped_padding")},
            "clear_counters": In(1),
            "errors":         Out(PackedConvErrors),
            "clear_errors":   In(1),
            "busy":           Out(1),
        }
        if requantize:
            ports["multiplier"] = In(range(MULTIPLIER_MAX + 1))
            ports["shift"] = In(range(SHIFT_MAX + 1))
        super().__init__(ports)

    kernel_size  = property(lambda self: self._kernel_size)
    in_channels  = property(lambda self: self._in_channels)
    out_channels = property(lambda self: self._out_channels)
    lanes        = property(lambda self: self._lanes)
    pixel_shape  = property(lambda self: self._pixel_shape)
    ring_depth   = property(lambda self: self._ring_depth)
    result_slots = property(lambda self: self._result_slots)
    requantize   = property(lambda self: self._requantize)

    @property
    def accumulator_width(self):
        """Signed accumulator bits: ``C_in · K²`` products of an int8 weight and a full-scale
        pixel (:func:`dynsparse.golden.sparseconv.accumulator_width`)."""
        return accumulator_width(taps=self._in_channels * self._kernel_size ** 2,
                                 pixel_signed=self._pixel_shape.signed)

    @property
    def latency(self):
        """Cycles from an emitting beat accepted to its result offered."""
        return PACKED_LATENCY + (REQUANT_STAGES if self._requantize else 0)

    @property
    def queue_depth(self):
        """Results the output queue holds: an emit waits while as many are emitted and not
        taken, so with results taken every cycle an emit never waits."""
        return self.latency + 1

    def timeline(self, count, *, width):
        """Cycles from the first beat accepted to the last result offered for a frame of
        ``width`` columns whose outputs perform ``count[P, C_out]`` MACs, inputs always
        offered and results always taken (:func:`dynsparse.golden.packedconv.packed_cycles`)."""
        return packed_cycles(count, width=width, kernel_size=self._kernel_size, lanes=self._lanes,
                             ring_depth=self._ring_depth, result_slots=self._result_slots,
                             requantize=self._requantize)

    def elaborate(self, platform):
        m = Module()
        lanes, c_out, c_in = self._lanes, self._out_channels, self._in_channels
        pixels, beats = self.i_pixels, self.i_beats
        beat = beats.payload

        # -------- errors ---------------------------------------------------------------------------
        raised = sticky_errors(m, self.errors, self.clear_errors)

        # -------- acceptance -----------------------------------------------------------------------
        # in_frame: a frame's beats are being followed (from a beat with ``first``); expect_first:
        # the frame has not taken a pixel yet. pending: results emitted and not yet taken from
        # o_stream (in the pipeline or the queue); an emit waits while the queue is spoken for.
        in_frame = Signal()
        expect_first = Signal()
        pending = Signal(range(self.queue_depth + 1))
        runnable = Signal()
        expected = Signal()
        go = Signal()                           # the beat is executed
        drop_beat, drop_pixel = Signal(), Signal()
        room = Signal()
        m.d.comb += [
            runnable.eq(beat.first | in_frame),
            expected.eq(beat.first | expect_first),
            room.eq(pending != self.queue_depth),
            go.eq(beats.valid & runnable & (~beat.take | (pixels.valid & (pixels.payload.first == expected)))
                  & (~beat.emit | room)),
            drop_beat.eq(beats.valid & (~runnable | (beat.take & pixels.valid & pixels.payload.first & ~expected))),
            drop_pixel.eq(beats.valid & runnable & beat.take & pixels.valid & ~pixels.payload.first & expected),
            beats.ready.eq(go | drop_beat),
            pixels.ready.eq((go & beat.take) | drop_pixel),
            # (a frame's first beat while the last frame's beats have not ended also counts)
            raised.misaligned.eq(drop_beat | drop_pixel | (go & beat.first & in_frame)),
        ]
        with m.If(go):
            m.d.sync += in_frame.eq(~beat.last)
            with m.If(beat.take):
                m.d.sync += expect_first.eq(0)
            with m.Elif(beat.first):
                m.d.sync += expect_first.eq(1)
        with m.Elif(drop_beat & runnable):
            m.d.sync += in_frame.eq(0)           # a pixel with ``first`` ended this frame's beats

        # -------- the ring: one copy per lane, written with every taken pixel -----------------------
        pixel_width = len(pixels.payload.data.as_value())
        write_place = Signal(range(self._ring_depth))
        with m.If(go & beat.take):
            m.d.sync += write_place.eq(Mux(expected, 1, write_place + 1))
        place_now = Mux(expected, 0, write_place)

        def delayed(value, name, cycles=1, reset_less=True):
            for stage in range(cycles):
                reg = Signal.like(value, name=f"{name}_{stage + 1}", reset_less=reset_less)
                m.d.sync += reg.eq(value)
                value = reg
            return value

        entry_shape = beat.lanes[0].shape()
        ring_data = []
        e1_active = []
        bad = []
        for j in range(lanes):
            entry = beat.lanes[j]
            ring = Memory(shape=unsigned(pixel_width), depth=self._ring_depth, init=[])
            m.submodules[f"ring{j}"] = ring
            write = ring.write_port()
            read = ring.read_port(domain="sync")
            m.d.comb += [
                write.addr.eq(place_now), write.data.eq(pixels.payload.data.as_value()),
                write.en.eq(go & beat.take),
                read.addr.eq(entry.place), read.en.eq(1),
            ]
            malformed = C(0, 1)
            if (1 << len(entry.channel)) > c_out:
                malformed = malformed | (entry.channel >= c_out)
            if (1 << len(entry.ci)) > c_in:
                malformed = malformed | (entry.ci >= c_in)
            bad.append(go & entry.valid & malformed)
            e1_active.append(delayed(go & entry.valid & ~malformed, f"e1_active{j}", reset_less=False))
            ring_data.append(read.data)
        m.d.comb += raised.bad_entry.eq(_tree(bad, operator.or_))

        # -------- MAC lanes ------------------------------------------------------------------------
        # e1: the ring's data arrives; e2: multiplier operands (DSP input registers); e3: the sum
        # (the accumulator register, SB_MAC16 on iCE40); e4: the per-channel write registers; the
        # result RAM is written at the end of e4, readable by an emit in the next cycle.
        e1_entry = [entry_shape(delayed(beat.lanes[j].as_value(), f"e1_entry{j}")) for j in range(lanes)]
        e1_first = delayed(go & beat.first, "e1_first", reset_less=False)
        pixel_array = data.ArrayLayout(self._pixel_shape, c_in)
        sums, flushes, channels, slots = [], [], [], []
        for j in range(lanes):
            values = pixel_array(ring_data[j])
            pixel = values[e1_entry[j].ci] if c_in > 1 else values[0]
            pixel = pixel.as_signed() if self._pixel_shape.signed else Cat(pixel, C(0, 1)).as_signed()
            e2_weight = delayed(Mux(e1_active[j], e1_entry[j].weight, 0), f"e2_weight{j}")
            e2_pixel = delayed(pixel, f"e2_pixel{j}")
            e2_active = delayed(e1_active[j], f"e2_active{j}", reset_less=False)
            e2_flush = delayed(e1_entry[j].flush, f"e2_flush{j}")
            e2_first = delayed(e1_first, f"e2_first{j}", reset_less=False)
            e2_target = delayed(Cat(e1_entry[j].channel, e1_entry[j].slot), f"e2_target{j}")
            acc = Signal(signed(self.accumulator_width), name=f"acc{j}", reset_less=True)
            fresh = Signal(name=f"fresh{j}", init=1)
            e3_flush = Signal(name=f"e3_flush{j}")
            e3_target = Signal.like(e2_target, name=f"e3_target{j}", reset_less=True)
            with m.If(e2_active):
                m.d.sync += [
                    acc.eq(Mux(fresh | e2_first, 0, acc) + e2_weight * e2_pixel),
                    fresh.eq(e2_flush),
                    e3_target.eq(e2_target),
                ]
            with m.Elif(e2_first):
                m.d.sync += fresh.eq(1)          # a frame starts: no sum carries over
            m.d.sync += e3_flush.eq(e2_active & e2_flush)
            sums.append(acc)
            flushes.append(e3_flush)
            channels.append(e3_target[:len(e1_entry[j].channel)])
            slots.append(e3_target[len(e1_entry[j].channel):])

        # -------- result RAMs: one per channel, written by the lane that flushes it ---------------
        emitted = Signal(range(self._result_slots))
        result_reads = []
        conflicts = []
        for co in range(c_out):
            hits = [flushes[j] & (channels[j] == co) for j in range(lanes)]
            # an AND-OR multiplexer: one hit at most in a well-formed beat
            winner_sum = _tree([Mux(hits[j], sums[j], 0) for j in range(lanes)], operator.or_)
            winner_slot = _tree([Mux(hits[j], slots[j], 0) for j in range(lanes)], operator.or_)
            if lanes > 1:
                conflicts.append(_sum(hits) > 1)
            e4_en = delayed(_tree(hits, operator.or_), f"e4_en{co}", reset_less=False)
            e4_slot = delayed(winner_slot, f"e4_slot{co}")
            e4_sum = delayed(winner_sum, f"e4_sum{co}")
            results = Memory(shape=signed(self.accumulator_width), depth=self._result_slots, init=[])
            m.submodules[f"results{co}"] = results
            write = results.write_port()
            read = results.read_port(domain="sync")
            m.d.comb += [
                write.addr.eq(e4_slot), write.data.eq(e4_sum), write.en.eq(e4_en),
                read.addr.eq(Mux(beat.first, 0, emitted)), read.en.eq(1),
            ]
            result_reads.append(read.data)
        m.d.comb += raised.flush_conflict.eq(_tree(conflicts, operator.or_) if conflicts else 0)

        # -------- emits ----------------------------------------------------------------------------
        emit_first = Signal()                   # the next emit is the frame's first
        with m.If(go & beat.first):
            m.d.sync += emit_first.eq(~beat.emit)
        with m.Elif(go & beat.emit):
            m.d.sync += emit_first.eq(0)
        with m.If(go & beat.first):
            m.d.sync += emitted.eq(beat.emit)
        with m.Elif(go & beat.emit):
            m.d.sync += emitted.eq(emitted + 1)
        r1_valid = delayed(go & beat.emit, "r1_valid", reset_less=False)
        r1_mask = delayed(beat.mask, "r1_mask")
        r1_first = delayed(beat.first | emit_first, "r1_first")
        r1_last = delayed(beat.last, "r1_last")
        values = [Mux(r1_mask[co], result_reads[co], 0) for co in range(c_out)]
        flags = [r1_first, r1_last]
        valid = r1_valid
        in_flight = [r1_valid]
        if self._requantize:
            values, tags, valids = requantize_stages(m, C(1, 1), values, self.multiplier, self.shift,
                                                     [r1_valid, r1_first, r1_last])
            valid, flags = tags[0], tags[1:]
            in_flight += valids
        data_shape = self.o_stream.payload.data[0].shape()
        queue = SyncFIFOBuffered(width=c_out * data_shape.width + 2, depth=self.queue_depth)
        m.submodules.queue = queue
        out = self.o_stream.payload
        m.d.comb += [
            queue.w_data.eq(Cat(*(value[:data_shape.width] for value in values), *flags)),
            queue.w_en.eq(valid),
            self.o_stream.valid.eq(queue.r_rdy),
            queue.r_en.eq(self.o_stream.ready),
            out.data.eq(queue.r_data[:c_out * data_shape.width]),
            out.first.eq(queue.r_data[c_out * data_shape.width]),
            out.last.eq(queue.r_data[c_out * data_shape.width + 1]),
        ]
        taken = self.o_stream.valid & self.o_stream.ready
        m.d.sync += pending.eq(pending + (go & beat.emit) - taken)

        # -------- counters -------------------------------------------------------------------------
        increments = {
            "cycles":          go,
            "performed":       _sum([delayed(e1_active[j], f"counted{j}") for j in range(lanes)]),
            "skipped_pruned":  Mux(go, beat.pruned, 0),
            "skipped_zero":    Mux(go, beat.zero, 0),
            "skipped_padding": Mux(go, beat.padding, 0),
        }
        add_counters(m, self, increments)

        lane_busy = [*e1_active, *flushes]
        m.d.comb += self.busy.eq(Cat(pending != 0, *in_flight, *lane_busy).any())
        return m
