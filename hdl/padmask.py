"""The padding mask of seed 001 in block RAM: one bit per padding block, looked up per window element."""

from amaranth.hdl import C, Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .frame import check_int, coord_width


__all__ = ["PaddingMask"]


#: Mask bits per memory word.
WORD_BITS = 16


class PaddingMask(wiring.Component):
    """Mask bits of the padding blocks a window reads (geometry of :mod:`dynsparse.golden.padmask`).

    The ring of padding around a ``width × height`` frame is cut into blocks
    of ``B`` pixels: bands ``top`` (0), ``bottom`` (1), ``left`` (2) and
    ``right`` (3), each sized for a ``max_width × max_height`` frame (top and
    bottom ``ceil((max_width + 2r) / B)`` blocks, left and right
    ``ceil(max_height / B)``), so no runtime frame can have a block the memory
    lacks. One bit per block, 1 = included.

    Each band is a memory of 16-bit words (block RAM) read at two words per
    lookup, plus one flip-flop per word that says the word was not written
    since reset: such a word reads as all ones, and the first write to it
    writes the whole word. So the mask *resets to all-included* in one cycle
    without clearing the memory.

    A window element ``(dy, dx)`` of the window centred on ``(x, y)`` that lies
    outside the frame belongs to the top band if its row is outside and
    ``dy < r``, to the bottom band if its row is outside and ``dy > r``, else
    to the left band if ``dx < r`` and to the right band if ``dx > r``. Along
    top and bottom its block is ``(x + dx) >> log2(B)``; along left and right
    ``(y + dy - r) >> log2(B)``. The K elements of a window row (column) touch
    at most :attr:`spread` consecutive blocks, which lie in two consecutive words.

    Parameters
    ----------
    kernel_size : int
        ``K``, odd, 1 to 15 (``r = K // 2``; ``K = 1`` has no padding and no mask).
    block_size : int
        ``B``, a power of two in [1, 64].
    max_width, max_height : int
        Largest frame.

    Members
    -------
    lookup : In(1)
        Look up the window ``x``, ``y``, ``pad`` offered in this cycle.
    x, y : In(unsigned), pad : In(ArrayLayout(ArrayLayout(1, K), K))
        The window's centre and padding flags (``pad[dy][r]``: its row is
        outside, ``pad[r][dx]``: its column).
    bits : Out(ArrayLayout(ArrayLayout(1, K), K))
        From the cycle after a lookup until the next one: the mask bit of the
        block of each element of the window looked up (1 for elements inside the frame).
    write : In(1)
        Strobe: set bit ``index`` of band ``band`` to ``value``.
    band : In(2), index : In(unsigned), value : In(1)
        The write's band (``top``, ``bottom``, ``left``, ``right`` = 0 … 3), block and value.
    width, height : In(unsigned)
        The frame's size; a write to a block beyond its band (``index·B ≥ width
        + 2r`` along top and bottom, ``index·B ≥ height`` along left and right)
        is ignored and raises ``bad_write``.
    bad_write : Out(1)
        Combinational: the write offered in this cycle is out of range.
    """

    def __init__(self, *, kernel_size, block_size, max_width, max_height):
        self._kernel_size = check_int("kernel size", kernel_size, minimum=1, maximum=15, odd=True)
        self._block_size  = check_int("block size", block_size, minimum=1, maximum=64)
        if block_size & (block_size - 1):
            raise ValueError(f"block size must be a power of two in [1, 64], not {block_size!r}")
        self._max_width   = check_int("maximum width", max_width, minimum=1)
        self._max_height  = check_int("maximum height", max_height, minimum=1)
        r, b = kernel_size // 2, block_size
        self._sizes = (-(-(max_width + 2 * r) // b),) * 2 + (-(-max_height // b),) * 2 if r else (0,) * 4
        k = kernel_size
        flags = data.ArrayLayout(data.ArrayLayout(unsigned(1), k), k)
        super().__init__({
            "lookup":    In(1),
            "x":         In(coord_width(max_width)),
            "y":         In(coord_width(max_height)),
            "pad":       In(flags),
            "bits":      Out(flags),
            "write":     In(1),
            "band":      In(2),
            "index":     In(self.index_width),
            "value":     In(1),
            "width":     In(range(max_width + 1)),
            "height":    In(range(max_height + 1)),
            "bad_write": Out(1),
        })

    @property
    def band_sizes(self):
        """Blocks of each band (top, bottom, left, right) for the largest frame."""
        return self._sizes

    @property
    def index_width(self):
        return max(1, (max(self._sizes) - 1).bit_length())

    @property
    def spread(self):
        """Most blocks of one band that the K elements of a window row or column touch."""
        k, b = self._kernel_size, self._block_size
        return min(k, (k - 2) // b + 2) if k > 1 else 1

    def elaborate(self, platform):
        m = Module()
        k, r = self._kernel_size, self._kernel_size // 2
        shift = self._block_size.bit_length() - 1
        if r == 0:
            m.d.comb += self.bad_write.eq(self.write)
            return m
        word_shift = WORD_BITS.bit_length() - 1

        # Writes: the block's first pixel along the band must lie inside the band.
        start = Cat(C(0, shift), self.index)
        in_range = Mux(self.band[1], start < self.height, start < self.width + 2 * r)
        m.d.comb += self.bad_write.eq(self.write & ~in_range)
        # Memory word w + 1 holds bits 16·w … 16·w + 15 of a band: a lookup's first block
        # may be -1 … -ceil(r / B) (rows above the frame, unused), which then lies in word 0.
        word, bit = (self.index >> word_shift) + 1, self.index[:word_shift]

        # Lookups: along top/bottom, the blocks of columns x - r + dx are (x >> b) + d with
        # d = ((x mod B) + dx) >> b; along left/right the blocks of rows y - r + dy are
        # base + d with base = ((y - r + R) >> b) - R / B, R a multiple of B >= r (rows
        # above the frame give a negative block, but those elements are in the top band).
        lift = self._block_size * -(-r // self._block_size)
        y_lifted = self.y + (lift - r)
        # base + WORD_BITS (below) as one addition of a constant before the shift
        # (((v >> b) + c) = ((v + c·B) >> b) for an integer c): one carry chain from x or y
        # to each RAM address instead of three in a row
        column_offset = WORD_BITS << shift
        row_offset = (lift - r) + ((WORD_BITS - lift // self._block_size) << shift)

        def registered(value, name):
            reg = Signal.like(value, name=name, reset_less=True)
            with m.If(self.lookup):
                m.d.sync += reg.eq(value)
            return reg

        windows = []                 # per band: the 2·16 bits from the looked-up block on
        for number, (size, name) in enumerate(zip(self._sizes, ("top", "bottom", "left", "right"))):
            words = -(-size // WORD_BITS) + 2            # word 0 below, and one above for the second read
            # Block RAM even when small: in logic, 2 read ports of 16-bit words cost far more.
            # (Left to Yosys, ECP5 gets LUT RAM; nextpnr-ecp5 did not finish placing and
            # routing that design within 28 minutes.) no_rw_check: no read-during-write
            # logic; a lookup in the cycle of a write reads undefined bits (SparseConv never
            # accepts a window in the cycle of a mask write).
            memory = Memory(shape=WORD_BITS, depth=words, init=[(1 << WORD_BITS) - 1] * words,
                            attrs={"ram_style": "block", "no_rw_check": 1})
            m.submodules[f"mask_{name}"] = memory
            unwritten = Signal(words, init=(1 << words) - 1, name=f"unwritten_{name}")
            writer = memory.write_port(granularity=1)
            fresh = unwritten.bit_select(word, 1)
            m.d.comb += [
                writer.addr.eq(word),
                writer.data.eq(Mux(fresh, ~(C(1, WORD_BITS) << bit), 0) | Mux(self.value, C(-1, WORD_BITS), 0)),
                writer.en.eq(Mux(self.write & in_range & (self.band == number),
                                 Mux(fresh, C(-1, WORD_BITS), C(1, WORD_BITS) << bit), 0)),
            ]
            with m.If(self.write & in_range & (self.band == number)):
                m.d.sync += unwritten.bit_select(word, 1).eq(0)
            coordinate, offset = (self.x, column_offset) if number < 2 else (self.y, row_offset)
            base = ((coordinate + offset) >> shift)[:self.index_width + word_shift]
            # the two words' addresses, each one addition of a constant away from x or y (the
            # second word is base + WORD_BITS)
            addresses = [base >> word_shift,
                         ((coordinate + (offset + (WORD_BITS << shift))) >> shift)
                         [:self.index_width + word_shift + 1] >> word_shift]
            halves, stales = [], []
            for half in range(2):
                reader = memory.read_port(domain="sync")
                m.d.comb += [reader.addr.eq(addresses[half]), reader.en.eq(self.lookup)]
                stales.append(registered(unwritten.bit_select(addresses[half], 1), f"unwritten_{name}{half}"))
                halves.append(reader.data)
            windows.append((Cat(*halves), stales, base[:word_shift], name))

        pad = registered(self.pad.as_value(), "pad")
        column_phase = self.x[:shift] if shift else C(0, 1)
        row_phase = y_lifted[:shift] if shift else C(0, 1)

        indices = {}

        def pick(band, phase, distance):
            # One multiplexer from the read data to the bit, and its index (and whether the word
            # is unwritten) in a register, computed while the RAM is read. (Selecting the
            # band's spread first and the element's bit after doubled the logic behind the
            # RAM, whose clock-to-output is 5.6 ns on ECP5; an index added up after the RAM
            # was the UP5K's critical path.)
            raw, stales, offset, name = band
            if (name, distance) not in indices:
                indices[name, distance] = registered((offset + ((phase + distance) >> shift))[:word_shift + 1],
                                                     f"index_{name}_{distance}")
            index = indices[name, distance]
            return raw.bit_select(index, 1) | Mux(index[word_shift], stales[1], stales[0])

        top, bottom, left, right = windows
        for dy in range(k):
            for dx in range(k):
                row_band = top if dy < r else bottom if dy > r else None
                column_band = left if dx < r else right if dx > r else None
                row_bit = pick(row_band, column_phase, dx) if row_band is not None else C(1, 1)
                column_bit = pick(column_band, row_phase, dy) if column_band is not None else C(1, 1)
                m.d.comb += self.bits[dy][dx].eq(Mux(pad[dy * k + r], row_bit,
                                                     Mux(pad[r * k + dx], column_bit, 1)))
        return m
