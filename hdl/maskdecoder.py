"""MaskDecoder: parse and check a compressed weight stream, rebuild the tensor in a double buffer."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..golden.weightstream import MAGIC, MAX_ENTRIES, VERSION, StreamError
from .crc import CRC32_INIT, CRC32_XOR_OUT, crc32_next
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
        (two before an index or bitmask value section, one before other value sections,
        one at the end, and the clear).
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
        list_width = max(2 * ew, words.bit_length() + 8)

        # --- memories -------------------------------------------------------------------------
        values = [Memory(shape=8, depth=max_entries, init=[]) for _ in range(2)]
        masks = [Memory(shape=8, depth=words, init=[]) for _ in range(2)]
        # compact list: bitmask -> (word, mask byte) of the nonzero mask bytes;
        # CSR/CSC -> (major index, end pointer) of the nonempty rows/columns
        items = Memory(shape=list_width, depth=max_entries, init=[])
        positions = Memory(shape=range(max_entries), depth=max_entries, init=[])
        for bank in range(2):
            m.submodules[f"values{bank}"] = values[bank]
            m.submodules[f"mask{bank}"] = masks[bank]
        m.submodules.items = items
        m.submodules.positions = positions
        value_w = [mem.write_port() for mem in values]
        value_r = [mem.read_port() for mem in values]
        mask_w = [mem.write_port() for mem in masks]
        mask_r = [mem.read_port() for mem in masks]
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
        crc = Signal(32, init=CRC32_INIT)
        stored_crc = Signal(32)
        magic_bad = Signal()
        version_bad = Signal()
        header_bad = Signal()
        length_bad = Signal()
        header_ok = Signal()                              # header checked and good: total is known
        fault = Signal(4)                                 # first structural fault (0 = none)
        timed_out = Signal()
        idle = Signal(range(self._timeout_cycles + 1))

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
        # derived from the header (registered; settled long before byte 31)
        p23 = Signal(32)
        cols_full = Signal(48)
        cols = Signal(25)
        entries_full = Signal(41)
        entries = Signal(25)
        too_big = Signal()
        rle_gap_entries = Signal(25)
        rle_escape_max = Signal(25)
        pw_shift = Signal(2)                              # pointer width: 1 << pw_shift bytes
        csr_iw_shift = Signal(2)
        csc_iw_shift = Signal(2)
        predictor_bytes = Signal(4)
        expected_length = Signal(36)
        rle_low = Signal(36)
        rle_high = Signal(36)
        rle_codes_expected = Signal(36)
        m.d.sync += [
            p23.eq(dims[2] * dims[3]),
            cols_full.eq(dims[1] * p23),
            cols.eq(cols_full),
            entries_full.eq(dims[0] * cols_full[:25]),
            too_big.eq((cols_full > MAX_ENTRIES) | (entries_full > MAX_ENTRIES)),
            entries.eq(entries_full),
            rle_gap_entries.eq(entries - kept),
            # x * 0x01010102 as four shifted copies: no multiplier for a constant
            rle_escape_max.eq(((rle_gap_entries << 24) + (rle_gap_entries << 16) + (rle_gap_entries << 8)
                               + (rle_gap_entries << 1)) >> 32),
            pw_shift.eq(_width_shift(kept)),
            csr_iw_shift.eq(_width_shift(cols - 1)),
            csc_iw_shift.eq(_width_shift(dims[0] - 1)),
            predictor_bytes.eq(Mux(interpolation == 2, 12, 0)),
        ]
        fixed = predictor_bytes + kept
        with m.Switch(encoding):
            with m.Case(0):
                m.d.sync += expected_length.eq(fixed + ((entries + 7) >> 3))
            with m.Case(2):
                m.d.sync += expected_length.eq(fixed + ((dims[0] + 1) << pw_shift) + (kept << csr_iw_shift))
            with m.Default():
                m.d.sync += expected_length.eq(fixed + ((cols + 1) << pw_shift) + (kept << csc_iw_shift))
        m.d.sync += [
            rle_low.eq(fixed + 4 + kept),
            rle_high.eq(fixed + 4 + kept + rle_escape_max),
            rle_codes_expected.eq(length - predictor_bytes - 4 - kept),
        ]
        is_bitmask, is_rle, is_csr = encoding == 0, encoding == 1, encoding == 2
        major_count = Mux(is_csr, dims[0], cols)          # pointers: major_count + 1
        minor_count = Mux(is_csr, cols, dims[0])
        iw_shift = Mux(is_csr, csr_iw_shift, csc_iw_shift)

        # tensor of the good bank
        coefficients = Signal(64)
        shift = Signal(8)
        tensor = Signal(tensor_layout(max_entries))
        m.d.comb += self.tensor.eq(tensor)
        # mask words of each bank that may hold ones; after a reset the memories may hold anything
        # (a reset does not clear them), so both banks start dirty and are cleared before use
        extent = [Signal(range(words + 1), name=f"extent{bank}", init=words) for bank in range(2)]

        # --- the byte handshake ---------------------------------------------------------------
        accepting = Signal()
        m.d.comb += self.i_stream.ready.eq(accepting)
        take = accepting & self.i_stream.valid
        byte = self.i_stream.payload.data
        last = self.i_stream.payload.last
        m.d.comb += self.busy.eq((count != 0) | ~accepting)

        # --- walk state -----------------------------------------------------------------------
        section_left = Signal(count_width)                # bytes left in the current section
        field = Signal(32)                                # multi-byte field being assembled
        field_byte = Signal(2)
        index = Signal(ew + 1)                            # entry / pointer / mask byte / predictor byte
        list_count = Signal(range(max_entries + 1))       # items written
        item = Signal(range(max_entries + 1))             # items consumed
        item_major = Signal(ew)
        item_end = Signal(ew)
        item_bits = Signal(8)
        previous = Signal(33)                             # previous pointer or index
        line_first = Signal()                             # next index opens its row/column
        first_bad = Signal()
        decreasing = Signal()
        population = Signal(range(max_entries + 1))
        position = Signal(26)                             # RLE: entries walked (saturates at N + 1)
        past_end = Signal()
        value_codes = Signal(count_width)                 # RLE value codes so far (<= C <= L)
        rle_codes = Signal(32)
        prefill = Signal()
        clear_word = Signal(range(words + 1))

        items_advance = Signal()
        items_addr_override = Signal()
        m.d.comb += items_r.addr.eq(Mux(items_addr_override, 0, Mux(items_advance, item + 2, item + 1)))
        item_data = data.View(data.StructLayout({"major": ew, "end": ew}), items_r.data)
        item_word = data.View(data.StructLayout({"word": list_width - 8, "bits": 8}), items_r.data)

        pos_advance = Signal()
        m.d.comb += pos_r.addr.eq(Mux(pos_advance, index + 1, index))

        # value writes (work bank)
        write_value = Signal()
        write_pos = Signal(26)
        for bank in range(2):
            m.d.comb += [
                value_w[bank].addr.eq(write_pos),
                value_w[bank].data.eq(byte),
                value_w[bank].en.eq(write_value & (work == bank) & (write_pos < entries)),
            ]

        # mask writes: direct (bitmask), read-modify-write (other encodings), clear
        mask_direct = Signal()
        mask_direct_word = Signal(range(words))
        set_bit = Signal()
        set_pos = Signal(26)
        clearing = Signal()
        rmw_valid = Signal()
        rmw_word = Signal(range(words))
        rmw_bit = Signal(3)
        forward_valid = Signal()
        forward_word = Signal(range(words))
        forward_data = Signal(8)
        set_in_range = set_bit & (set_pos < entries)
        m.d.sync += [
            rmw_valid.eq(set_in_range),
            rmw_word.eq(set_pos >> 3),
            rmw_bit.eq(set_pos[:3]),
        ]
        rmw_old = Mux(forward_valid & (forward_word == rmw_word), forward_data,
                      Mux(work, mask_r[1].data, mask_r[0].data))
        rmw_new = rmw_old | (1 << rmw_bit)[:8]
        m.d.sync += [
            forward_valid.eq(rmw_valid),
            forward_word.eq(rmw_word),
            forward_data.eq(rmw_new),
        ]
        for bank in range(2):
            mine = work == bank
            with m.If(mine & clearing):
                m.d.comb += [mask_w[bank].addr.eq(clear_word), mask_w[bank].data.eq(0), mask_w[bank].en.eq(1)]
            with m.Elif(mine & mask_direct):
                m.d.comb += [mask_w[bank].addr.eq(mask_direct_word), mask_w[bank].data.eq(byte),
                             mask_w[bank].en.eq(1)]
            with m.Elif(mine & rmw_valid):
                m.d.comb += [mask_w[bank].addr.eq(rmw_word), mask_w[bank].data.eq(rmw_new),
                             mask_w[bank].en.eq(1)]
            m.d.comb += mask_r[bank].addr.eq(Mux(mine, set_pos >> 3, self.rd_addr >> 3))
            m.d.comb += value_r[bank].addr.eq(self.rd_addr)

        # consumer read port
        read_bank = Signal()
        read_bit = Signal(3)
        m.d.sync += [read_bank.eq(good), read_bit.eq(self.rd_addr[:3])]
        sent = Mux(read_bank, mask_r[1].data, mask_r[0].data).bit_select(read_bit, 1)
        m.d.comb += [
            self.rd_sent.eq(sent),
            self.rd_data.eq(Mux(sent, Mux(read_bank, value_r[1].data, value_r[0].data), 0)),
        ]

        # --- per-byte checks common to every state ----------------------------------------------
        m.d.sync += self.done.eq(0)
        with m.If(take):
            m.d.sync += count.eq(Mux(count == (1 << count_width) - 1, count, count + 1))
            with m.If(count < 4):
                magic_byte = Const(int.from_bytes(MAGIC, "little"), 32).word_select(count[:2], 8)
                m.d.sync += magic_bad.eq(magic_bad | (byte != magic_byte))
            with m.If(count == 4):
                m.d.sync += version_bad.eq(byte != VERSION)
            with m.If((count < 32) | (header_ok & (count < total - 4))):
                m.d.sync += crc.eq(crc32_next(crc, byte))
            with m.If(header_ok & (count >= total - 4) & (count < total)):
                m.d.sync += stored_crc.eq(Cat(stored_crc[8:], byte))
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

        # header verdict at byte 31
        length_full = Cat(length[:24], byte)
        bad_fields = ((encoding > 3) | (value_bits != 8) | (interpolation > 2) |
                      ~((ndim == 2) | (ndim == 4)) | (criterion > 3) | (selection > 3) | (reserved != 0) |
                      (dims[0] == 0) | (dims[1] == 0) | (dims[2] == 0) | (dims[3] == 0) |
                      Mux(ndim == 2, (dims[2] != 1) | (dims[3] != 1), dims[2] != dims[3]) |
                      too_big | (entries > max_entries) | (kept > entries))
        bad_length = Mux(is_rle, (length_full < rle_low) | (length_full > rle_high),
                         length_full != expected_length)

        # --- the decision -----------------------------------------------------------------------
        code = Signal(4)
        with m.If(magic_bad):
            m.d.comb += code.eq(StreamError.BAD_MAGIC)
        with m.Elif(count < 5):
            m.d.comb += code.eq(StreamError.TRUNCATED)
        with m.Elif(version_bad):
            m.d.comb += code.eq(StreamError.BAD_VERSION)
        with m.Elif(count < 32):
            m.d.comb += code.eq(StreamError.TRUNCATED)
        with m.Elif(header_bad):
            m.d.comb += code.eq(StreamError.BAD_HEADER)
        with m.Elif(length_bad):
            m.d.comb += code.eq(StreamError.BAD_LENGTH)
        with m.Elif(timed_out | (count < total)):
            m.d.comb += code.eq(StreamError.TRUNCATED)
        with m.Elif(count > total):
            m.d.comb += code.eq(StreamError.OVERLONG)
        with m.Elif((crc ^ CRC32_XOR_OUT) != stored_crc):
            m.d.comb += code.eq(StreamError.BAD_CRC)
        with m.Else():
            m.d.comb += code.eq(fault)

        # --- watchdog ---------------------------------------------------------------------------
        watchdog = Signal()
        with m.If(accepting & (count != 0) & ~self.i_stream.valid):
            m.d.sync += idle.eq(idle + 1)
            m.d.comb += watchdog.eq(idle == self._timeout_cycles - 1)
        with m.Else():
            m.d.sync += idle.eq(0)

        def fail(m, reason):
            m.d.sync += fault.eq(reason)
            m.next = "TAIL"

        def start_values(m):
            """After the index section: the values, or nothing when kept = 0."""
            m.d.sync += index.eq(0)
            with m.If(kept == 0):
                m.next = "TAIL"
            with m.Elif(is_bitmask):
                m.d.sync += prefill.eq(0)
                m.next = "PREFILL_ITEMS"
            with m.Else():
                m.next = "PREFILL_POSITIONS"

        def start_index(m):
            """After the header (and predictor): the first index section."""
            m.d.sync += [index.eq(0), field_byte.eq(0), list_count.eq(0), population.eq(0), position.eq(0),
                         past_end.eq(0), value_codes.eq(0), first_bad.eq(0), decreasing.eq(0)]
            with m.If(is_bitmask):
                m.d.sync += section_left.eq((entries + 7) >> 3)
                m.next = "MASK"
            with m.Elif(is_rle):
                m.d.sync += section_left.eq(4)
                m.next = "RLE_COUNT"
            with m.Else():
                m.d.sync += section_left.eq((major_count + 1) << pw_shift)
                m.next = "POINTERS"

        def stream_end(m):
            """A stream ends on its `last` byte or when the watchdog fires (called last in each byte state)."""
            with m.If(take & last):
                m.next = "DECIDE"
            with m.If(watchdog):
                m.d.sync += timed_out.eq(1)
                m.next = "DECIDE"

        lowest = Signal(3)
        for bit in reversed(range(8)):
            with m.If(item_bits[bit]):
                m.d.comb += lowest.eq(bit)

        with m.FSM(init="CLEAR"):
            with m.State("HEADER"):
                m.d.comb += accepting.eq(1)
                with m.If(take & (count == 31)):
                    ok = ~magic_bad & ~version_bad & ~bad_fields & ~bad_length
                    m.d.sync += [
                        header_bad.eq(bad_fields),
                        length_bad.eq(~bad_fields & bad_length),
                        header_ok.eq(ok),
                        total.eq(length_full + 36),
                    ]
                    m.d.sync += extent[0].eq(Mux(ok & (work == 0), (entries + 7) >> 3, extent[0]))
                    m.d.sync += extent[1].eq(Mux(ok & (work == 1), (entries + 7) >> 3, extent[1]))
                    with m.If(~ok):
                        m.next = "TAIL"
                    with m.Elif(interpolation == 2):
                        m.d.sync += [section_left.eq(12), index.eq(0)]
                        m.next = "PREDICTOR"
                    with m.Else():
                        start_index(m)
                stream_end(m)

            with m.State("PREDICTOR"):
                m.d.comb += accepting.eq(1)
                with m.If(take):
                    m.d.sync += [index.eq(index + 1), section_left.eq(section_left - 1)]
                    with m.If(index < 8):
                        m.d.sync += coefficients.word_select(index[:3], 8).eq(byte)
                    with m.Elif(index == 8):
                        m.d.sync += [shift.eq(byte), first_bad.eq(byte > 15)]
                    with m.Else():
                        m.d.sync += first_bad.eq(first_bad | (byte != 0))
                    with m.If(section_left == 1):
                        with m.If(first_bad | (byte != 0)):
                            fail(m, StreamError.BAD_PREDICTOR)
                        with m.Else():
                            start_index(m)
                stream_end(m)

            with m.State("MASK"):
                m.d.comb += accepting.eq(1)
                mask_word_index = Signal(list_width - 8)         # the item's `word` field, zero-extended
                m.d.comb += mask_word_index.eq(index)
                popcount = sum(byte[i] for i in range(8))
                m.d.comb += mask_direct_word.eq(index)
                with m.If(take):
                    m.d.comb += mask_direct.eq(1)
                    m.d.sync += [index.eq(index + 1), section_left.eq(section_left - 1),
                                 population.eq(population + popcount)]
                    with m.If(byte != 0):
                        m.d.comb += [items_w.addr.eq(list_count), items_w.data.eq(Cat(mask_word_index, byte)),
                                     items_w.en.eq(1)]
                        m.d.sync += list_count.eq(list_count + 1)
                    with m.If(section_left == 1):
                        spare = entries[:3]
                        padding = Mux(spare == 0, 0, byte & ~((Const(1, 9) << spare) - 1)[:8])
                        with m.If(padding != 0):
                            fail(m, StreamError.BAD_PADDING)
                        with m.Elif(population + popcount != kept):
                            fail(m, StreamError.COUNT_MISMATCH)
                        with m.Else():
                            start_values(m)
                stream_end(m)

            with m.State("RLE_COUNT"):
                m.d.comb += accepting.eq(1)
                with m.If(take):
                    m.d.sync += [rle_codes.eq(Cat(rle_codes[8:], byte)), section_left.eq(section_left - 1)]
                    with m.If(section_left == 1):
                        codes = Cat(rle_codes[8:], byte)
                        m.d.sync += section_left.eq(codes)
                        with m.If(codes != rle_codes_expected):
                            fail(m, StreamError.BAD_LENGTH)
                        with m.Elif(codes == 0):
                            with m.If(kept != 0):
                                fail(m, StreamError.COUNT_MISMATCH)
                            with m.Else():
                                m.next = "TAIL"
                        with m.Else():
                            m.next = "RLE_CODES"
                stream_end(m)

            with m.State("RLE_CODES"):
                m.d.comb += accepting.eq(1)
                escape = byte == 255
                step = Mux(escape, 255, byte + 1)
                walked = position + step
                past = past_end | (walked > entries)
                codes_now = value_codes + ~escape
                with m.If(take):
                    m.d.sync += [section_left.eq(section_left - 1), value_codes.eq(codes_now),
                                 position.eq(Mux(past, entries + 1, walked)), past_end.eq(past)]
                    with m.If(~escape & (position + byte < entries) & ~past_end):
                        m.d.comb += [set_bit.eq(1), set_pos.eq(position + byte)]
                        with m.If(value_codes < kept):
                            m.d.comb += [pos_w.addr.eq(value_codes), pos_w.data.eq(position + byte),
                                         pos_w.en.eq(1)]
                    with m.If(section_left == 1):
                        with m.If(past):
                            fail(m, StreamError.RUN_PAST_END)
                        with m.Elif(escape):
                            fail(m, StreamError.DANGLING_ESCAPE)
                        with m.Elif(codes_now != kept):
                            fail(m, StreamError.COUNT_MISMATCH)
                        with m.Else():
                            start_values(m)
                stream_end(m)

            with m.State("POINTERS"):
                m.d.comb += accepting.eq(1)
                pointer = Signal(32)
                m.d.comb += pointer.eq(Mux(field_byte == 0, byte,
                                           Mux(field_byte == 1, Cat(field[:8], byte),
                                               Mux(field_byte == 2, Cat(field[:16], byte), Cat(field[:24], byte)))))
                complete = field_byte == (1 << pw_shift) - 1
                with m.If(take):
                    m.d.sync += [section_left.eq(section_left - 1), field.eq(pointer),
                                 field_byte.eq(Mux(complete, 0, field_byte + 1))]
                    with m.If(complete):
                        m.d.sync += [index.eq(index + 1), previous.eq(pointer)]
                        with m.If(index == 0):
                            m.d.sync += first_bad.eq(pointer != 0)
                        with m.Elif(pointer < previous):
                            m.d.sync += decreasing.eq(1)
                        with m.Elif((pointer > previous) & ~decreasing & (list_count < max_entries)):
                            m.d.comb += [items_w.addr.eq(list_count), items_w.data.eq(Cat((index - 1)[:ew], pointer[:ew])),
                                         items_w.en.eq(1)]
                            m.d.sync += list_count.eq(list_count + 1)
                    with m.If(section_left == 1):
                        with m.If(first_bad | (pointer != kept)):
                            fail(m, StreamError.COUNT_MISMATCH)
                        with m.Elif(decreasing | (pointer < previous)):
                            fail(m, StreamError.NON_MONOTONIC)
                        with m.Elif(kept == 0):
                            m.next = "TAIL"
                        with m.Else():
                            m.d.sync += [index.eq(0), prefill.eq(1), section_left.eq(kept << iw_shift)]
                            m.next = "PREFILL_ITEMS"
                stream_end(m)

            with m.State("PREFILL_ITEMS"):
                # two cycles: read item 0 (addr forced), then hold it; items_r then shows item 1
                m.d.comb += items_addr_override.eq(1)
                m.d.sync += item.eq(0)
                m.next = "PREFILL_ITEMS_2"
            with m.State("PREFILL_ITEMS_2"):
                m.d.sync += [item_major.eq(item_data.major), item_end.eq(item_data.end),
                             item_bits.eq(item_word.bits), line_first.eq(1), field_byte.eq(0)]
                with m.If(prefill):
                    m.next = "INDICES"
                with m.Else():
                    m.d.sync += item_major.eq(item_word.word)
                    m.next = "VALUES_BITMASK"

            with m.State("INDICES"):
                m.d.comb += accepting.eq(1)
                value = Signal(32)
                m.d.comb += value.eq(Mux(field_byte == 0, byte,
                                         Mux(field_byte == 1, Cat(field[:8], byte),
                                             Mux(field_byte == 2, Cat(field[:16], byte), Cat(field[:24], byte)))))
                complete = field_byte == (1 << iw_shift) - 1
                row = Mux(is_csr, item_major, value)[:16]
                column = Mux(is_csr, value, item_major)
                flat = Signal(42)
                m.d.comb += flat.eq(row * cols + column)
                with m.If(take):
                    m.d.sync += [field.eq(value), field_byte.eq(Mux(complete, 0, field_byte + 1))]
                    with m.If(complete):
                        with m.If(value >= minor_count):
                            fail(m, StreamError.INDEX_OUT_OF_RANGE)
                        with m.Elif(~line_first & (value <= previous)):
                            fail(m, StreamError.NON_MONOTONIC)
                        with m.Else():
                            m.d.comb += [set_bit.eq(1), set_pos.eq(flat),
                                         pos_w.addr.eq(index), pos_w.data.eq(flat), pos_w.en.eq(1)]
                            m.d.sync += [index.eq(index + 1), previous.eq(value), line_first.eq(0)]
                            with m.If(index + 1 == item_end):
                                m.d.comb += items_advance.eq(1)
                                m.d.sync += [item.eq(item + 1), item_major.eq(item_data.major),
                                             item_end.eq(item_data.end), line_first.eq(1)]
                            with m.If(index + 1 == kept):
                                start_values(m)
                stream_end(m)

            with m.State("PREFILL_POSITIONS"):
                m.next = "VALUES"

            with m.State("VALUES"):
                m.d.comb += accepting.eq(1)
                with m.If(take):
                    m.d.comb += pos_advance.eq(1)
                    m.d.sync += index.eq(index + 1)
                    with m.If(byte == 0x80):
                        fail(m, StreamError.BAD_VALUE)
                    with m.Else():
                        m.d.comb += [write_value.eq(1), write_pos.eq(pos_r.data)]
                        with m.If(index + 1 == kept):
                            m.next = "TAIL"
                stream_end(m)

            with m.State("VALUES_BITMASK"):
                m.d.comb += accepting.eq(1)
                remaining = item_bits & (item_bits - 1)
                with m.If(take):
                    m.d.sync += [index.eq(index + 1), item_bits.eq(remaining)]
                    with m.If(byte == 0x80):
                        fail(m, StreamError.BAD_VALUE)
                    with m.Else():
                        m.d.comb += [write_value.eq(1), write_pos.eq(Cat(lowest, item_major))]
                        with m.If(remaining == 0):
                            m.d.comb += items_advance.eq(1)
                            m.d.sync += [item.eq(item + 1), item_major.eq(item_word.word),
                                         item_bits.eq(item_word.bits)]
                        with m.If(index + 1 == kept):
                            m.next = "TAIL"
                stream_end(m)

            with m.State("TAIL"):
                # CRC bytes, bytes past the end, or the rest of a stream with a fault
                m.d.comb += accepting.eq(1)
                stream_end(m)

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
                                 header_bad.eq(0), length_bad.eq(0), header_ok.eq(0), fault.eq(0),
                                 timed_out.eq(0), clear_word.eq(0)]
                    m.next = "CLEAR"

            with m.State("CLEAR"):
                # zero the mask words the new work bank may hold, one per cycle
                bank_extent = Mux(work, extent[1], extent[0])
                with m.If(clear_word < bank_extent):
                    m.d.comb += clearing.eq(1)
                    m.d.sync += clear_word.eq(clear_word + 1)
                with m.Else():
                    m.d.sync += extent[0].eq(Mux(work == 0, 0, extent[0]))
                    m.d.sync += extent[1].eq(Mux(work == 1, 0, extent[1]))
                    m.next = "HEADER"


        return m
