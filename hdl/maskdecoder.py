"""MaskDecoder: parse and check a compressed weight stream, rebuild the tensor in a double buffer."""

import operator
from functools import reduce

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..golden.weightstream import MAGIC, MAX_ENTRIES, VERSION, StreamError
from .crc import CRC32_INIT, CRC32_RESIDUE, crc32_next
from .frame import check_int


__all__ = ["byte_layout", "tensor_layout", "MaskDecoder"]


#: One stream byte; ``last`` marks the final byte of a stream.
byte_layout = data.StructLayout({"data": unsigned(8), "last": 1})

#: ceil(2**32 / 255) = 2**24 + 2**16 + 2**8 + 2: (x * _DIV255) >> 32 == x // 255 for
#: 0 <= x <= 2**24 (the error, x · 254 / (255 · 2**32), stays below 1/255).
_DIV255 = 0x01010102


def tensor_layout(max_entries):
    """What the decoder knows of the tensor in its good bank (see :class:`MaskDecoder`)."""
    entry_width = max_entries.bit_length()
    return data.StructLayout({
        "valid": 1,                                  # a good stream has been decoded
        "encoding": 2,
        "interpolation": 2,
        "ndim": 3,
        "dims": data.ArrayLayout(16, 4),             # (rows, cols, 1, 1) or (C_out, C_in, K, K)
        "rows": 16,                                  # matrix view
        "cols": entry_width,
        "entries": entry_width,                      # N = rows · cols
        "kept": entry_width,
        "coefficients": data.ArrayLayout(signed(8), 8),
        "shift": 4,
    })


def _width_shift(value):
    """log2 of the byte width of a field holding 0 … ``value``: 0 (1 byte), 1 (2) or 2 (4)."""
    return Mux(value <= 0xFF, 0, Mux(value <= 0xFFFF, 1, 2))


class MaskDecoder(wiring.Component):
    """Weight-stream decoder: checks a stream and rebuilds its tensor in a double buffer.

    Takes the byte stream of ``docs/weightstream.md`` (:mod:`dynsparse.golden.weightstream`)
    on ``i_stream``, one byte per transfer, ``last`` set on a stream's final byte. While
    the bytes arrive it checks the header, computes the CRC-32, decodes the index section
    (bitmask, RLE, CSR or CSC) and writes every sent value, and the mask of sent entries,
    into the *work* bank of a two-bank reconstruction buffer. When ``last`` arrives it
    decides the stream's code with the golden parser's check order
    (:class:`~dynsparse.golden.weightstream.StreamError`): a good stream swaps the banks
    (the consumer now reads it), a bad one leaves the last good tensor in place. Then the
    mask of the new work bank is cleared (one 8-entry word per cycle) and the next stream
    may start. ``docs/maskdecoder.md`` gives the timing and every error case.

    Parameters
    ----------
    max_entries : int
        Largest tensor (``N`` entries) a bank holds, 8 … 2**24. A stream whose ``N`` is
        larger is refused with ``BAD_HEADER``.
    timeout_cycles : int
        Watchdog: cycles without a byte inside a stream (after its first byte, before
        ``last``) after which the stream is abandoned as ``TRUNCATED``.

    Members
    -------
    i_stream : In(stream.Signature(byte_layout))
        The stream bytes. ``ready`` is high except for the cycles listed in the docs
        (two before a bitmask value section, four before CSR/CSC indices, one before RLE
        and three before CSR/CSC values, two at the end, and the clear).
    rd_addr : In(range(max_entries))
        Consumer read port on the good bank: entry (flat index of the matrix view).
    rd_data : Out(signed(8))
        The entry's value one cycle after ``rd_addr``: the sent value, or 0 if dropped.
    rd_sent : Out(1)
        The entry was sent (its mask bit), with ``rd_data``.
    tensor : Out(tensor_layout(max_entries))
        Shape, kept count, interpolation and learned predictor of the good bank.
    done : Out(1)
        One-cycle pulse when a stream has been decided; ``error`` holds its code.
    error : Out(4)
        Code of the last decided stream (0 = OK), the golden ``StreamError`` value.
    streams_ok, streams_bad : Out(32)
        Streams decided good / bad since reset.
    busy : Out(1)
        Inside a stream, deciding it, or clearing.
    hold : In(1)
        The consumer is reading the good bank: a good stream waits (input not ready) before
        it replaces the good bank until ``hold`` is low. Tie to 0 if unused.
    """

    def __init__(self, *, max_entries=2048, timeout_cycles=1_000_000):
        self._max_entries = check_int("maximum entry count", max_entries, minimum=8, maximum=MAX_ENTRIES)
        self._timeout_cycles = check_int("watchdog timeout", timeout_cycles, minimum=2, maximum=2**32 - 1)
        super().__init__({
            "i_stream": In(stream.Signature(byte_layout)),
            "rd_addr": In(range(max_entries)),
            "rd_data": Out(signed(8)),
            "rd_sent": Out(1),
            "tensor": Out(tensor_layout(max_entries)),
            "done": Out(1),
            "error": Out(4),
            "streams_ok": Out(32),
            "streams_bad": Out(32),
            "busy": Out(1),
            "hold": In(1),
        })

    @property
    def max_entries(self):
        return self._max_entries

    @property
    def timeout_cycles(self):
        return self._timeout_cycles

    @property
    def words(self):
        """Mask words (8 entries each) per bank."""
        return -(-self._max_entries // 8)

    @property
    def read_latency(self):
        """Cycles from ``rd_addr`` to ``rd_data``/``rd_sent``."""
        return 1

    def elaborate(self, platform):
        m = Module()
        max_entries, words = self._max_entries, self.words
        ew = max_entries.bit_length()                 # holds 0 … max_entries
        ib = max(max_entries - 1, 1).bit_length()        # an entry index: 0 … max_entries − 1
        list_width = max(2 * ib + 1, words.bit_length() + 9)

        # --- memories -------------------------------------------------------------------------
        # both banks in one memory each, the bank the top address bit: no bank multiplexer
        # behind a read port
        entry_bits = (max_entries - 1).bit_length()
        word_bits = max(words - 1, 1).bit_length()
        values = Memory(shape=8, depth=2 << entry_bits, init=[])
        masks = Memory(shape=8, depth=2 << word_bits, init=[])
        # compact list: bitmask -> (word, mask byte) of the nonzero mask bytes;
        # CSR/CSC -> (major index, end pointer) of the nonempty rows/columns
        items = Memory(shape=list_width, depth=max_entries, init=[])
        positions = Memory(shape=range(max_entries), depth=max_entries, init=[])
        m.submodules.values = values
        m.submodules.masks = masks
        m.submodules.items = items
        m.submodules.positions = positions
        value_w, value_r = values.write_port(), values.read_port()
        mask_w = masks.write_port()
        mask_r = masks.read_port()                         # the consumer's, on the good bank
        mask_rmw = masks.read_port()                       # read-modify-write, on the work bank
        items_w, items_r = items.write_port(), items.read_port()
        pos_w, pos_r = positions.write_port(), positions.read_port()

        good = Signal()                                   # bank the consumer reads
        work = ~good

        # --- per-stream state -----------------------------------------------------------------
        # The longest stream whose header this decoder accepts: 32 + 12 + (a CSR/CSC index
        # section of at most 4·(N + 1) + 4·N bytes) + N values + 4, N <= max_entries. Byte
        # counts saturate above it, so they need only these bits, not the 34 of 32 + 2**32 + 4.
        stream_bound = 9 * max_entries + 52
        count_width = stream_bound.bit_length() + 1
        count = Signal(count_width)                       # bytes received in this stream (saturating)
        # CRC-32 register over every byte of the stream, the stored CRC included: for a stream of
        # exactly 32 + L + 4 bytes it ends at CRC32_RESIDUE if and only if the stored CRC matches
        crc = Signal(32, init=CRC32_INIT)
        magic_bad = Signal()
        header_last = Signal()                            # count == 31
        version_bad = Signal()
        header_bad = Signal()
        length_bad = Signal()
        fault = Signal(4)                                 # first structural fault (0 = none)
        timed_out = Signal()
        idle = Signal(range(self._timeout_cycles + 1))
        code = Signal(4)                                  # the decision, registered in CHECK

        # header fields
        encoding = Signal(8)
        value_bits = Signal(8)
        interpolation = Signal(8)
        ndim = Signal(8)
        criterion = Signal(8)
        selection = Signal(8)
        reserved = Signal(8)
        dims = [Signal(16, name=f"dim{i}") for i in range(4)]
        kept = Signal(32)
        length = Signal(32)
        total = Signal(count_width)                       # 32 + L + 4 (used only when the header is good)
        # Derived from the header: a chain of registers, one adder or multiplier each, that
        # settles while bytes 20 … 30 arrive (at most 10 stages after dims, 8 after kept).
        is_bitmask, is_rle, is_csr, is_learned = Signal(), Signal(), Signal(), Signal()
        m.d.sync += [is_bitmask.eq(encoding == 0), is_rle.eq(encoding == 1), is_csr.eq(encoding == 2),
                     is_learned.eq(interpolation == 2)]
        p23 = Signal(32)
        cols_full = Signal(48)
        cols = Signal(25)
        entries_full = Signal(41)
        entries = Signal(25)
        too_big = Signal()
        rle_gap_entries = Signal(25)
        div_high = Signal(50)
        div_low = Signal(34)
        rle_escape_max = Signal(25)
        pw_shift = Signal(2)                              # pointer width: 1 << pw_shift bytes
        csr_iw_shift = Signal(2)
        csc_iw_shift = Signal(2)
        iw_shift = Signal(2)
        fixed = Signal(33)                                # P + k
        fixed4 = Signal(33)                               # P + 4 + k
        mask_bytes = Signal(22)                           # ceil(N / 8)
        pointer_bytes = Signal(28)                        # (major + 1) << pw_shift
        index_bytes = Signal(35)                          # k << iw_shift
        csx_bytes = Signal(36)
        expected_length = Signal(36)
        rle_low = Signal(36)
        rle_high = Signal(36)
        rle_codes_expected = Signal(36)
        fields_bad = Signal()
        bytes_bad, dims_bad, size_bad = Signal(), Signal(), Signal()
        kept_last_2 = Signal(ew + 1)                      # k − 2: the index before the last value's
        kept_zero = Signal()
        header_good = Signal()                            # magic, version and fields good
        index_section = Signal(count_width)               # bytes of the first index section
        index_section_one = Signal()
        kept_one = Signal()
        major_count = Mux(is_csr, dims[0], cols)          # pointers: major_count + 1
        minor_count = Mux(is_csr, cols, dims[0])
        m.d.sync += [
            p23.eq(dims[2] * dims[3]),
            cols_full.eq(dims[1] * p23),
            cols.eq(cols_full),
            entries_full.eq(dims[0] * cols_full[:25]),
            too_big.eq((cols_full > MAX_ENTRIES) | (entries_full > MAX_ENTRIES)),
            entries.eq(entries_full),
            rle_gap_entries.eq(entries - kept),
            # x * 0x01010102 as four shifted copies, two additions a stage: no multiplier
            div_high.eq((rle_gap_entries << 24) + (rle_gap_entries << 16)),
            div_low.eq((rle_gap_entries << 8) + (rle_gap_entries << 1)),
            rle_escape_max.eq((div_high + div_low) >> 32),
            pw_shift.eq(_width_shift(kept)),
            csr_iw_shift.eq(_width_shift(cols - 1)),
            csc_iw_shift.eq(_width_shift(dims[0] - 1)),
            iw_shift.eq(Mux(is_csr, csr_iw_shift, csc_iw_shift)),
            fixed.eq(Mux(is_learned, 12, 0) + kept),
            kept_last_2.eq(kept - 2),
            kept_zero.eq(kept == 0),
            header_good.eq(~magic_bad & ~version_bad & ~fields_bad),
            index_section.eq(Mux(is_bitmask, mask_bytes, Mux(is_rle, 4, pointer_bytes))),
            index_section_one.eq(is_bitmask & (mask_bytes == 1)),
            kept_one.eq(kept == 1),
            fixed4.eq(Mux(is_learned, 16, 4) + kept),
            mask_bytes.eq((entries + 7) >> 3),
            pointer_bytes.eq((major_count + 1) << pw_shift),
            index_bytes.eq(kept << iw_shift),
            csx_bytes.eq(pointer_bytes + index_bytes),
            expected_length.eq(fixed + Mux(is_bitmask, mask_bytes, csx_bytes)),
            rle_low.eq(fixed4 + kept),
            rle_high.eq(rle_low + rle_escape_max),
            rle_codes_expected.eq(length - fixed4),
            # golden's field checks, in three registered parts, then their OR
            bytes_bad.eq((encoding > 3) | (value_bits != 8) | (interpolation > 2) |
                         ~((ndim == 2) | (ndim == 4)) | (criterion > 3) | (selection > 3) | (reserved != 0)),
            dims_bad.eq((dims[0] == 0) | (dims[1] == 0) | (dims[2] == 0) | (dims[3] == 0) |
                        Mux(ndim == 2, (dims[2] != 1) | (dims[3] != 1), dims[2] != dims[3])),
            size_bad.eq(too_big | (entries > max_entries) | (kept > entries)),
            fields_bad.eq(bytes_bad | dims_bad | size_bad),
        ]

        # tensor of the good bank
        coefficients = Signal(64)
        shift = Signal(8)
        tensor = Signal(tensor_layout(max_entries))
        m.d.comb += self.tensor.eq(tensor)
        # mask words of each bank that may hold ones; after a reset the memories may hold anything
        # (a reset does not clear them), so both banks start dirty and are cleared before use
        extent = [Signal(range(words + 1), name=f"extent{bank}", init=words) for bank in range(2)]

        # --- the byte handshake ---------------------------------------------------------------
        accepting = Signal()                              # registered with the FSM's next state
        m.d.comb += self.i_stream.ready.eq(accepting)
        take = accepting & self.i_stream.valid
        byte = self.i_stream.payload.data
        last = self.i_stream.payload.last
        in_stream = Signal()                              # count != 0
        m.d.comb += self.busy.eq(in_stream | ~accepting)

        # --- walk state -----------------------------------------------------------------------
        section_left = Signal(count_width)                # bytes left in the current section
        section_one = Signal()                            # section_left == 1
        field = Signal(32)                                # multi-byte field being assembled
        field_byte = Signal(2)
        field_last = Signal()                             # field_byte is the field's last byte

        def next_field_byte(m, shift, complete):
            """field_byte and field_last after a byte of a (1 << shift)-byte field."""
            with m.If(complete):
                m.d.sync += [field_byte.eq(0), field_last.eq(shift == 0)]
            with m.Else():
                m.d.sync += [field_byte.eq(field_byte + 1),
                             field_last.eq(Mux(shift == 1, field_byte == 0, field_byte == 2))]
        index = Signal(ew + 1)                            # entry / pointer / mask byte / predictor byte
        list_count = Signal(range(max_entries + 1))       # items written
        item = Signal(range(max_entries + 1))             # items consumed
        item_major = Signal(ew)
        item_last = Signal(ew)                            # the item's end pointer − 1
        item_bits = Signal(8)
        bits_last = Signal()                              # item_bits has one bit set (or none)

        def at_most_one(bits):
            return (bits & (bits - 1)) == 0
        # Pointers and indices are checked as ew + 1 bits, a larger value saturated to all ones:
        # above any kept count or minor dimension, which keeps every comparison's outcome
        value_width = ew + 1
        pointer_previous = Signal(value_width)
        index_previous = Signal(value_width)
        line_first = Signal()                             # next index opens its row/column
        line_last = Signal()                              # next index closes it (index == item_last)
        index_last = Signal()                             # index == k − 1 (values, CSR/CSC indices)
        first_bad = Signal()
        predictor_bad = Signal()
        decreasing = Signal()
        population = Signal(range(max_entries + 1))
        # RLE: entries walked (skips plus values); no saturation, wide enough for every code
        # of the longest stream at 256 entries each
        position = Signal(count_width + 8)
        value_codes = Signal(count_width)                 # RLE value codes so far (<= C <= L)
        no_codes = Signal()                               # RLE: the code count is 0
        rle_codes = Signal(32)
        prefill = Signal()
        wait = Signal(2)                                  # prefill cycles still to wait
        clear_word = Signal(range(words + 1))

        # Deferred checks: a byte's operands are registered with it and checked the next cycle
        # (the FSM goes on meanwhile; a fault stops the walk the cycle after it is recorded).
        check_predictor = Signal()                        # the last predictor byte was taken, and is bad
        check_mask = Signal()                             # the last mask byte was taken
        check_padding = Signal()
        check_count = Signal()                            # the RLE code count was taken
        check_codes = Signal()                            # the last RLE code was taken
        check_escape = Signal()
        check_pointer = Signal()                          # a pointer was completed
        check_pointer_value = Signal(value_width)
        check_pointer_first = Signal()
        check_pointer_last = Signal()
        check_pointer_major = Signal(ew)
        check_value = Signal()                            # a value of −128 was taken
        check_index = Signal()                            # an index was completed
        check_index_value = Signal(value_width)
        check_index_row = Signal(16)
        check_index_col = Signal(25)
        check_index_first = Signal()
        check_index_entry = Signal(ew + 1)
        m.d.sync += [check_predictor.eq(0), check_value.eq(0), check_mask.eq(0), check_count.eq(0), check_codes.eq(0), check_pointer.eq(0),
                     check_index.eq(0)]
        found = Signal(4)                                 # a fault the deferred checks found last cycle
        abort = Signal()                                  # stop walking: the stream is bad (registered)

        items_advance = Signal()
        items_addr_override = Signal()
        item_1 = Signal.like(item)                         # item + 1 and item + 2, registered
        item_2 = Signal.like(item)
        m.d.comb += items_r.addr.eq(Mux(items_addr_override, 0, Mux(items_advance, item_2, item_1)))
        item_data = data.View(data.StructLayout({"major": ib, "last": ib, "single": 1}), items_r.data)
        item_word = data.View(data.StructLayout({"word": list_width - 9, "bits": 8, "single": 1}), items_r.data)

        pos_advance = Signal()
        m.d.comb += pos_r.addr.eq(Mux(pos_advance, index + 1, index))

        # value writes (work bank), registered: the position may come straight from a memory
        write_value = Signal()
        write_pos = Signal(26)
        value_we = Signal()
        value_addr = Signal(26)
        value_data = Signal(8)
        m.d.sync += [value_we.eq(write_value), value_addr.eq(write_pos), value_data.eq(byte)]
        m.d.comb += [
            value_w.addr.eq(Cat(value_addr[:entry_bits], work)),
            value_w.data.eq(value_data),
            value_w.en.eq(value_we & (value_addr < entries)),
        ]

        # mask writes: direct (bitmask), read-modify-write (other encodings), clear
        mask_direct = Signal()
        mask_direct_word = Signal(range(words))
        set_bit = Signal()                                # set_pos is a sent entry, inside the tensor
        set_pos = Signal(26)
        set_bit_r = Signal()                              # registered: the read of the mask word
        set_pos_r = Signal(26)
        clearing = Signal()
        rmw_valid = Signal()
        rmw_word = Signal(range(words))
        rmw_bit = Signal(3)
        forward_valid = Signal()
        forward_word = Signal(range(words))
        forward_data = Signal(8)
        m.d.sync += [
            set_bit_r.eq(set_bit),
            set_pos_r.eq(set_pos),
            rmw_valid.eq(set_bit_r & in_stream),
            rmw_word.eq(set_pos_r >> 3),
            rmw_bit.eq(set_pos_r[:3]),
        ]
        rmw_old = Mux(forward_valid & (forward_word == rmw_word), forward_data, mask_rmw.data)
        rmw_new = rmw_old | (1 << rmw_bit)[:8]
        m.d.sync += [
            forward_valid.eq(rmw_valid),
            forward_word.eq(rmw_word),
            forward_data.eq(rmw_new),
        ]
        with m.If(clearing):
            m.d.comb += [mask_w.addr.eq(Cat(clear_word[:word_bits], work)), mask_w.data.eq(0), mask_w.en.eq(1)]
        with m.Elif(mask_direct):
            m.d.comb += [mask_w.addr.eq(Cat(mask_direct_word[:word_bits], work)), mask_w.data.eq(byte),
                         mask_w.en.eq(1)]
        with m.Elif(rmw_valid):
            m.d.comb += [mask_w.addr.eq(Cat(rmw_word[:word_bits], work)), mask_w.data.eq(rmw_new),
                         mask_w.en.eq(1)]
        m.d.comb += [
            mask_rmw.addr.eq(Cat((set_pos_r >> 3)[:word_bits], work)),
            mask_r.addr.eq(Cat((self.rd_addr >> 3)[:word_bits], good)),
            value_r.addr.eq(Cat(self.rd_addr[:entry_bits], good)),
        ]

        # consumer read port
        read_bit = Signal(3)
        m.d.sync += read_bit.eq(self.rd_addr[:3])
        sent = mask_r.data.bit_select(read_bit, 1)
        m.d.comb += [
            self.rd_sent.eq(sent),
            self.rd_data.eq(Mux(sent, value_r.data, 0)),
        ]

        # --- per-byte checks common to every state ----------------------------------------------
        m.d.sync += self.done.eq(0)
        with m.If(take):
            m.d.sync += [count.eq(Mux(count == (1 << count_width) - 1, count, count + 1)),
                         crc.eq(crc32_next(crc, byte)), header_last.eq(count == 30), in_stream.eq(1)]
            with m.If(count < 4):
                magic_byte = Const(int.from_bytes(MAGIC, "little"), 32).word_select(count[:2], 8)
                m.d.sync += magic_bad.eq(magic_bad | (byte != magic_byte))
            with m.If(count == 4):
                m.d.sync += version_bad.eq(byte != VERSION)
            with m.Switch(count):
                for offset, target in ((5, encoding), (6, value_bits), (7, interpolation), (8, ndim),
                                       (9, criterion), (10, selection), (11, reserved)):
                    with m.Case(offset):
                        m.d.sync += target.eq(byte)
                for offset in range(12, 20):
                    with m.Case(offset):
                        dim = dims[(offset - 12) // 2]
                        m.d.sync += dim.word_select((offset - 12) % 2, 8).eq(byte)
                for offset in range(20, 24):
                    with m.Case(offset):
                        m.d.sync += kept.word_select(offset - 20, 8).eq(byte)
                for offset in range(28, 32):
                    with m.Case(offset):
                        m.d.sync += length.word_select(offset - 28, 8).eq(byte)

        # header verdict at byte 31: the field checks are registered (fields_bad); only the length
        # check needs this byte, and it goes straight into length_bad (the walk stops a cycle later)
        length_full = Cat(length[:24], byte)
        bad_length = Mux(is_rle, (length_full < rle_low) | (length_full > rle_high),
                         length_full != expected_length)

        # --- the decision (registered in CHECK, acted on in DECIDE) ---------------------------------
        decision = Signal(4)
        with m.If(magic_bad):
            m.d.comb += decision.eq(StreamError.BAD_MAGIC)
        with m.Elif(count < 5):
            m.d.comb += decision.eq(StreamError.TRUNCATED)
        with m.Elif(version_bad):
            m.d.comb += decision.eq(StreamError.BAD_VERSION)
        with m.Elif(count < 32):
            m.d.comb += decision.eq(StreamError.TRUNCATED)
        with m.Elif(header_bad):
            m.d.comb += decision.eq(StreamError.BAD_HEADER)
        with m.Elif(length_bad):
            m.d.comb += decision.eq(StreamError.BAD_LENGTH)
        with m.Elif(timed_out | (count < total)):
            m.d.comb += decision.eq(StreamError.TRUNCATED)
        with m.Elif(count > total):
            m.d.comb += decision.eq(StreamError.OVERLONG)
        with m.Elif(crc != CRC32_RESIDUE):
            m.d.comb += decision.eq(StreamError.BAD_CRC)
        with m.Else():
            m.d.comb += decision.eq(fault)

        # --- watchdog ---------------------------------------------------------------------------
        watchdog = Signal()
        idle_last = Signal()                              # idle == timeout_cycles − 1
        with m.If(accepting & in_stream & ~self.i_stream.valid):
            m.d.sync += [idle.eq(idle + 1), idle_last.eq(idle == self._timeout_cycles - 2)]
            m.d.comb += watchdog.eq(idle_last)
        with m.Else():
            m.d.sync += [idle.eq(0), idle_last.eq(0)]

        accepting_states = {"HEADER", "PREDICTOR", "MASK", "RLE_COUNT", "RLE_CODES", "POINTERS", "INDICES",
                            "VALUES", "VALUES_BITMASK", "TAIL"}

        def go(m, state):
            m.next = state
            m.d.sync += accepting.eq(state in accepting_states)

        # the first fault is the stream's (DECIDE clears it: its assignment comes later)
        # (`in_stream` falls in DECIDE: a fault found after it belongs to no stream)
        with m.If((found != 0) & (fault == 0) & in_stream):
            m.d.sync += fault.eq(found)
        m.d.sync += abort.eq((found != 0) | (fault != 0) | length_bad)

        # kept and the minor dimension as ew + 1 bits (exact whenever the header is good)
        minor_limit = Signal(value_width)
        kept_limit = Signal(value_width)
        m.d.sync += [minor_limit.eq(minor_count), kept_limit.eq(kept)]

        def saturated(value):
            return Mux(value[value_width:] != 0, (1 << value_width) - 1, value[:value_width])

        def start_values(m):
            """After the index section: the values, or nothing when kept = 0."""
            m.d.sync += [index.eq(0), index_last.eq(kept_one)]
            with m.If(kept_zero):
                go(m, "TAIL")
            with m.Elif(is_bitmask):
                m.d.sync += [prefill.eq(0), wait.eq(0)]
                go(m, "PREFILL_ITEMS")
            with m.Elif(is_rle):
                m.d.sync += wait.eq(0)
                go(m, "PREFILL_POSITIONS")
            with m.Else():
                m.d.sync += wait.eq(2)          # the last index's position is written 2 cycles later
                go(m, "PREFILL_POSITIONS")

        def start_index(m):
            """After the header (and predictor): the first index section."""
            m.d.sync += [index.eq(0), section_left.eq(index_section), section_one.eq(index_section_one)]
            with m.If(is_bitmask):
                go(m, "MASK")
            with m.Elif(is_rle):
                go(m, "RLE_COUNT")
            with m.Else():
                go(m, "POINTERS")

        def reset_walk(m):
            """In the header and predictor: the index section's counters start from 0."""
            m.d.sync += [field_byte.eq(0), field_last.eq(pw_shift == 0), list_count.eq(0), population.eq(0),
                         position.eq(0),
                         value_codes.eq(0), first_bad.eq(0), decreasing.eq(0)]

        def walk_end(m):
            """Called last in every state of the walk: a bad stream stops walking, and a stream
            ends on its `last` byte or when the watchdog fires."""
            with m.If(abort):
                go(m, "TAIL")
            stream_end(m)

        def stream_end(m):
            with m.If(take & last):
                go(m, "CHECK")
            with m.If(watchdog):
                m.d.sync += timed_out.eq(1)
                go(m, "CHECK")

        lowest = Signal(3)
        for bit in reversed(range(8)):
            with m.If(item_bits[bit]):
                m.d.comb += lowest.eq(bit)

        # RLE walk: the position of a value code, registered, sets its mask bit the next cycle
        rle_set = Signal()
        rle_set_pos = Signal(count_width + 8)
        m.d.sync += rle_set.eq(0)

        with m.FSM(init="CLEAR"):
            with m.State("HEADER"):
                reset_walk(m)
                with m.If(take & header_last):
                    fields_ok = header_good
                    m.d.sync += [
                        header_bad.eq(fields_bad),
                        length_bad.eq(~fields_bad & bad_length),
                        total.eq(length_full + 36),
                    ]
                    # the walk may write the work bank from the next byte on (until a bad length
                    # stops it): its extent covers every entry of this header
                    m.d.sync += extent[0].eq(Mux(fields_ok & (work == 0), mask_bytes, extent[0]))
                    m.d.sync += extent[1].eq(Mux(fields_ok & (work == 1), mask_bytes, extent[1]))
                    with m.If(~fields_ok):
                        go(m, "TAIL")
                    with m.Elif(is_learned):
                        m.d.sync += [section_left.eq(12), section_one.eq(0), index.eq(0)]
                        go(m, "PREDICTOR")
                    with m.Else():
                        start_index(m)
                stream_end(m)

            with m.State("PREDICTOR"):
                reset_walk(m)
                with m.If(take):
                    m.d.sync += [index.eq(index + 1), section_left.eq(section_left - 1), section_one.eq(section_left == 2)]
                    with m.If(index < 8):
                        m.d.sync += coefficients.word_select(index[:3], 8).eq(byte)
                    with m.Elif(index == 8):
                        m.d.sync += [shift.eq(byte), predictor_bad.eq(byte > 15)]
                    with m.Else():
                        m.d.sync += predictor_bad.eq(predictor_bad | (byte != 0))
                    with m.If(section_one):
                        m.d.sync += check_predictor.eq(predictor_bad | (byte != 0))
                        start_index(m)
                walk_end(m)

            with m.State("MASK"):
                mask_word_index = Signal(list_width - 9)         # the item's `word` field, zero-extended
                m.d.comb += mask_word_index.eq(index)
                popcount = sum(byte[i] for i in range(8))
                m.d.comb += mask_direct_word.eq(index)
                with m.If(take):
                    m.d.comb += mask_direct.eq(1)
                    m.d.sync += [index.eq(index + 1), section_left.eq(section_left - 1), section_one.eq(section_left == 2),
                                 population.eq(population + popcount)]
                    with m.If(byte != 0):
                        m.d.comb += [items_w.addr.eq(list_count), items_w.data.eq(Cat(mask_word_index, byte, at_most_one(byte))),
                                     items_w.en.eq(1)]
                        m.d.sync += list_count.eq(list_count + 1)
                    with m.If(section_one):
                        spare = entries[:3]
                        padding = Mux(spare == 0, 0, byte & ~((Const(1, 9) << spare) - 1)[:8])
                        m.d.sync += [check_mask.eq(1), check_padding.eq(padding != 0)]
                        start_values(m)
                walk_end(m)

            with m.State("RLE_COUNT"):
                with m.If(take):
                    codes = Cat(rle_codes[8:], byte)
                    m.d.sync += [rle_codes.eq(codes), section_left.eq(section_left - 1), section_one.eq(section_left == 2)]
                    with m.If(section_one):
                        m.d.sync += [section_left.eq(codes), section_one.eq(codes == 1), no_codes.eq(codes == 0), check_count.eq(1)]
                        go(m, "RLE_CODES")
                walk_end(m)

            with m.State("RLE_CODES"):
                escape = byte == 255
                with m.If(no_codes):
                    # no codes: this byte is past the index section (COUNT_MISMATCH if kept > 0)
                    go(m, "TAIL")
                with m.Elif(take):
                    m.d.sync += [section_left.eq(section_left - 1), section_one.eq(section_left == 2), value_codes.eq(value_codes + ~escape),
                                 position.eq(position + Mux(escape, 255, byte + 1)),
                                 rle_set.eq(~escape), rle_set_pos.eq(position + byte)]
                    with m.If(~escape & (value_codes < kept)):
                        m.d.comb += [pos_w.addr.eq(value_codes), pos_w.data.eq(position + byte),
                                     pos_w.en.eq(1)]
                    with m.If(section_one):
                        m.d.sync += [check_codes.eq(1), check_escape.eq(escape)]
                        start_values(m)
                walk_end(m)

            with m.State("POINTERS"):
                pointer = Signal(32)
                m.d.comb += pointer.eq(Mux(field_byte == 0, byte,
                                           Mux(field_byte == 1, Cat(field[:8], byte),
                                               Mux(field_byte == 2, Cat(field[:16], byte), Cat(field[:24], byte)))))
                complete = field_last
                with m.If(take):
                    m.d.sync += [section_left.eq(section_left - 1), section_one.eq(section_left == 2),
                                 field.eq(pointer)]
                    next_field_byte(m, pw_shift, complete)
                    with m.If(complete):
                        m.d.sync += [index.eq(index + 1), check_pointer.eq(1), check_pointer_value.eq(saturated(pointer)),
                                     check_pointer_first.eq(index == 0), check_pointer_major.eq(index - 1),
                                     check_pointer_last.eq(section_one)]
                    with m.If(section_one):
                        with m.If(kept_zero):
                            go(m, "TAIL")
                        with m.Else():
                            # the last pointer's item is written two cycles after its byte
                            m.d.sync += [index.eq(0), index_last.eq(kept_one), prefill.eq(1), wait.eq(2)]
                            go(m, "PREFILL_ITEMS")
                walk_end(m)

            with m.State("PREFILL_ITEMS"):
                # read item 0 (addr forced; `wait` more cycles first), then hold it in
                # PREFILL_ITEMS_2; items_r then shows item 1
                m.d.comb += items_addr_override.eq(1)
                m.d.sync += [item.eq(0), item_1.eq(1), item_2.eq(2), wait.eq(wait - 1)]
                with m.If(wait == 0):
                    go(m, "PREFILL_ITEMS_2")
                walk_end(m)
            with m.State("PREFILL_ITEMS_2"):
                m.d.sync += [item_major.eq(item_data.major), item_last.eq(item_data.last),
                             line_last.eq(item_data.single),
                             item_bits.eq(item_word.bits), bits_last.eq(item_word.single),
                             line_first.eq(1), field_byte.eq(0), field_last.eq(iw_shift == 0)]
                with m.If(prefill):
                    go(m, "INDICES")
                with m.Else():
                    m.d.sync += item_major.eq(item_word.word)
                    go(m, "VALUES_BITMASK")
                walk_end(m)

            with m.State("INDICES"):
                value = Signal(32)
                m.d.comb += value.eq(Mux(field_byte == 0, byte,
                                         Mux(field_byte == 1, Cat(field[:8], byte),
                                             Mux(field_byte == 2, Cat(field[:16], byte), Cat(field[:24], byte)))))
                complete = field_last
                with m.If(take):
                    m.d.sync += field.eq(value)
                    next_field_byte(m, iw_shift, complete)
                    with m.If(complete):
                        m.d.sync += [check_index.eq(1), check_index_value.eq(saturated(value)),
                                     check_index_row.eq(Mux(is_csr, item_major, value)),
                                     check_index_col.eq(Mux(is_csr, value, item_major)),
                                     check_index_first.eq(line_first),
                                     check_index_entry.eq(index),
                                     index.eq(index + 1), index_last.eq(index == kept_last_2), line_first.eq(0),
                                     line_last.eq(index + 1 == item_last)]
                        with m.If(line_last):
                            m.d.comb += items_advance.eq(1)
                            m.d.sync += [item.eq(item_1), item_1.eq(item_2), item_2.eq(item + 3), item_major.eq(item_data.major),
                                         item_last.eq(item_data.last), line_first.eq(1),
                                         line_last.eq(item_data.single)]
                        with m.If(index_last):
                            start_values(m)
                walk_end(m)

            with m.State("PREFILL_POSITIONS"):
                # read position 0 (after `wait` cycles: CSR/CSC positions are written late)
                m.d.sync += wait.eq(wait - 1)
                with m.If(wait == 0):
                    go(m, "VALUES")
                walk_end(m)

            with m.State("VALUES"):
                with m.If(take):
                    m.d.comb += [pos_advance.eq(1), write_value.eq(1), write_pos.eq(pos_r.data)]
                    m.d.sync += [index.eq(index + 1), index_last.eq(index == kept_last_2),
                                 check_value.eq(byte == 0x80)]
                    with m.If(index_last):
                        go(m, "TAIL")
                walk_end(m)

            with m.State("VALUES_BITMASK"):
                remaining = item_bits & (item_bits - 1)
                with m.If(take):
                    m.d.comb += [write_value.eq(1), write_pos.eq(Cat(lowest, item_major))]
                    m.d.sync += [index.eq(index + 1), index_last.eq(index == kept_last_2), item_bits.eq(remaining),
                                 bits_last.eq(at_most_one(remaining)), check_value.eq(byte == 0x80)]
                    with m.If(bits_last):
                        m.d.comb += items_advance.eq(1)
                        m.d.sync += [item.eq(item_1), item_1.eq(item_2), item_2.eq(item + 3), item_major.eq(item_word.word),
                                     item_bits.eq(item_word.bits), bits_last.eq(item_word.single)]
                    with m.If(index_last):
                        go(m, "TAIL")
                walk_end(m)

            with m.State("TAIL"):
                # CRC bytes, bytes past the end, or the rest of a stream with a fault
                stream_end(m)

            with m.State("CHECK"):
                m.d.sync += code.eq(decision)
                go(m, "DECIDE")

            with m.State("DECIDE"):
                with m.If((code == StreamError.OK) & self.hold):
                    pass                             # the consumer still reads the good bank
                with m.Else():
                    m.d.sync += [self.done.eq(1), self.error.eq(code)]
                    with m.If(code == StreamError.OK):
                        m.d.sync += [
                            self.streams_ok.eq(self.streams_ok + 1),
                            good.eq(work),
                            tensor.valid.eq(1),
                            tensor.encoding.eq(encoding),
                            tensor.interpolation.eq(interpolation),
                            tensor.ndim.eq(ndim),
                            tensor.dims[0].eq(dims[0]), tensor.dims[1].eq(dims[1]),
                            tensor.dims[2].eq(dims[2]), tensor.dims[3].eq(dims[3]),
                            tensor.rows.eq(dims[0]),
                            tensor.cols.eq(cols),
                            tensor.entries.eq(entries),
                            tensor.kept.eq(kept),
                            tensor.coefficients.eq(0),
                            tensor.shift.eq(0),
                        ]
                        with m.If(interpolation == 2):
                            m.d.sync += [tensor.coefficients.eq(coefficients), tensor.shift.eq(shift)]
                    with m.Else():
                        m.d.sync += self.streams_bad.eq(self.streams_bad + 1)
                    m.d.sync += [count.eq(0), crc.eq(CRC32_INIT), magic_bad.eq(0), version_bad.eq(0),
                                 header_bad.eq(0), length_bad.eq(0), fault.eq(0), timed_out.eq(0), header_last.eq(0), in_stream.eq(0),
                                 clear_word.eq(0)]
                    go(m, "CLEAR")

            with m.State("CLEAR"):
                # zero the mask words the new work bank may hold, one per cycle
                bank_extent = Mux(work, extent[1], extent[0])
                with m.If(clear_word < bank_extent):
                    m.d.comb += clearing.eq(1)
                    m.d.sync += clear_word.eq(clear_word + 1)
                with m.Else():
                    m.d.sync += extent[0].eq(Mux(work == 0, 0, extent[0]))
                    m.d.sync += extent[1].eq(Mux(work == 1, 0, extent[1]))
                    go(m, "HEADER")

        # --- the deferred checks and the pipelined writes ------------------------------------------
        # Every fault goes through the same pipeline, so they stay in byte order: the byte's
        # operands are registered with it (check_*), compared the next cycle into registered
        # flags, which the cycle after give the code (golden's order inside a section; at most
        # one section's check is due in a cycle, so the codes are ORed) into `found`, which
        # becomes the stream's fault the cycle after that if it is the first.
        faults = []

        def found_if(valid, *rules):
            due = Signal()
            m.d.sync += due.eq(valid)
            code = 0
            for condition, reason in reversed(rules):
                flag = Signal()
                m.d.sync += flag.eq(condition)
                code = Mux(flag, reason, code)
            faults.append(Mux(due, code, 0))

        # predictor: a shift above 15 or a reserved byte not 0
        found_if(check_predictor, (1, StreamError.BAD_PREDICTOR))

        # bitmask, after the mask: BAD_PADDING, then COUNT_MISMATCH
        found_if(check_mask, (check_padding, StreamError.BAD_PADDING),
                 (population != kept, StreamError.COUNT_MISMATCH))

        # RLE code count: C = L − P − 4 − k (golden raises BAD_LENGTH), and no codes for kept > 0
        found_if(check_count, (rle_codes != rle_codes_expected, StreamError.BAD_LENGTH),
                 (no_codes & ~kept_zero, StreamError.COUNT_MISMATCH))

        # RLE, after the codes: RUN_PAST_END, DANGLING_ESCAPE, COUNT_MISMATCH (golden's order)
        found_if(check_codes, (position > entries, StreamError.RUN_PAST_END),
                 (check_escape, StreamError.DANGLING_ESCAPE),
                 (value_codes != kept, StreamError.COUNT_MISMATCH))

        # values: −128
        found_if(check_value, (1, StreamError.BAD_VALUE))

        # RLE walk: the mask bit of a value code inside the tensor
        with m.If(rle_set & (rle_set_pos < entries)):
            m.d.comb += [set_bit.eq(1), set_pos.eq(rle_set_pos)]

        # CSR/CSC pointers: order and count; the nonempty rows/columns go to the item list
        below = check_pointer_value < pointer_previous
        above = check_pointer_value > pointer_previous
        with m.If(check_pointer):
            m.d.sync += pointer_previous.eq(check_pointer_value)
            with m.If(check_pointer_first):
                m.d.sync += first_bad.eq(check_pointer_value != 0)
            with m.Elif(below):
                m.d.sync += decreasing.eq(1)
        # a nonempty row/column (its index, its last entry, whether it has only one) is written
        # to the item list the cycle after (the list's address is in range whatever the bytes)
        item_write = Signal()
        item_entry = Signal(list_width)
        m.d.sync += [
            item_write.eq(check_pointer & ~check_pointer_first & ~below & above & ~decreasing),
            item_entry.eq(Cat(check_pointer_major[:ib], (check_pointer_value - 1)[:ib],
                              check_pointer_value == pointer_previous + 1)),
        ]
        with m.If(item_write):
            m.d.comb += [items_w.addr.eq(list_count), items_w.data.eq(item_entry), items_w.en.eq(1)]
            m.d.sync += list_count.eq(list_count + 1)
        found_if(check_pointer & check_pointer_last,
                 (first_bad | (check_pointer_value != kept_limit), StreamError.COUNT_MISMATCH),
                 (decreasing | below, StreamError.NON_MONOTONIC))

        # CSR/CSC indices: range, then order within the row/column; a good index's flat position
        # (row · cols + col) is a product registered one cycle and a sum the next
        index_entry = Signal(ew + 1)
        index_ok = Signal()
        product = Signal(26)
        minor = Signal(25)
        out_of_range = check_index_value >= minor_limit
        not_increasing = ~check_index_first & (check_index_value <= index_previous)
        with m.If(check_index):
            m.d.sync += index_previous.eq(check_index_value)
        found_if(check_index, (out_of_range, StreamError.INDEX_OUT_OF_RANGE),
                 (not_increasing, StreamError.NON_MONOTONIC))
        m.d.sync += [
            index_ok.eq(check_index & ~out_of_range & ~not_increasing),
            product.eq(check_index_row * cols),
            minor.eq(check_index_col),
            index_entry.eq(check_index_entry),
        ]
        flat = Signal(26)
        m.d.comb += flat.eq(product + minor)
        with m.If(index_ok):
            m.d.comb += [set_bit.eq(1), set_pos.eq(flat),
                         pos_w.addr.eq(index_entry), pos_w.data.eq(flat), pos_w.en.eq(1)]

        m.d.sync += found.eq(reduce(operator.or_, faults))

        return m
