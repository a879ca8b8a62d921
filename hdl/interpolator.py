"""Interpolator: rebuild the entries a weight stream dropped (zero, linear, learned), bit-exact."""

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..golden.sparsify import LEARNED_OFFSETS
from ..golden.weightstream import MAX_ENTRIES
from .frame import check_int
from .maskdecoder import tensor_layout


__all__ = ["weight_layout", "Interpolator"]

#: Linear rule's neighbours, in the order of the slots that read them: left, right, up, down.
LINEAR_OFFSETS = ((0, -1), (0, 1), (-1, 0), (1, 0))


def weight_layout(max_entries):
    """One rebuilt weight: its value, its flat index (matrix view), frame marks."""
    return data.StructLayout({"data": signed(8), "index": range(max_entries), "first": 1, "last": 1})


class Interpolator(wiring.Component):
    """Walks the decoder's good bank in flat order and streams every weight, dropped ones rebuilt.

    Bit-exact with :func:`dynsparse.golden.sparsify.interpolate` (``docs/weightstream.md``,
    *Interpolation*): sent entries pass unchanged; a dropped entry is 0 (``zero``), the
    rounded mean of its sent left/right neighbours, else of its up/down neighbours, else 0
    (``linear``), or ``clamp((Σ c_j·v_j + 2^(s−1)) >> s, −127, 127)`` over its eight
    neighbours with dropped or off-plane ones as 0 (``learned``). Neighbours never cross a
    plane: a K × K kernel of a 4-D tensor, or the whole matrix.

    Only sent entries are read, never a rebuilt one, so the order does not matter; the block
    reads the entry, then (if it was dropped and the rule needs them) its neighbours, one
    read per cycle through the decoder's read port (``rd_addr`` → ``rd_data``/``rd_sent``
    one cycle later), and offers the weight on ``o_stream``.

    Parameters
    ----------
    max_entries : int
        As the :class:`~dynsparse.hdl.maskdecoder.MaskDecoder` it reads (8 … 2**24).

    Members
    -------
    tensor : In(tensor_layout(max_entries))
        The decoder's ``tensor`` port: shape, method, predictor; sampled at ``start``.
    start : In(1)
        Begin a pass over the tensor (ignored while ``busy``).
    rd_addr : Out(range(max_entries))
    rd_data : In(signed(8))
    rd_sent : In(1)
        The decoder's read port.
    o_stream : Out(stream.Signature(weight_layout(max_entries)))
        Every entry ``0 … N − 1`` in flat order, ``first`` on entry 0, ``last`` on ``N − 1``.
    busy : Out(1)
        A pass is running.
    """

    def __init__(self, *, max_entries=2048):
        self._max_entries = check_int("maximum entry count", max_entries, minimum=8, maximum=MAX_ENTRIES)
        super().__init__({
            "tensor": In(tensor_layout(max_entries)),
            "start": In(1),
            "rd_addr": Out(range(max_entries)),
            "rd_data": In(signed(8)),
            "rd_sent": In(1),
            "o_stream": Out(stream.Signature(weight_layout(max_entries))),
            "busy": Out(1),
        })

    @property
    def max_entries(self):
        return self._max_entries

    @staticmethod
    def entry_cycles(sent, method):
        """Cycles one entry takes with ``o_stream`` always ready: 3 if sent or ``zero``
        (read, sample, emit), 8 for a dropped entry under ``linear``, 12 under ``learned``
        (read the entry and its 4 or 8 neighbours, sample the last, compute, emit)."""
        if sent or method == 0:
            return 3
        return 4 + (len(LINEAR_OFFSETS) if method == 1 else len(LEARNED_OFFSETS))

    def elaborate(self, platform):
        m = Module()
        ew = self._max_entries.bit_length()

        method = Signal(2)
        height = Signal(ew)                   # plane height and width
        width = Signal(ew)
        entries = Signal(ew)
        coefficients = Signal(data.ArrayLayout(signed(8), 8))
        shift = Signal(4)

        entry = Signal(ew + 1)                # flat index of the entry being rebuilt
        y = Signal(ew)
        x = Signal(ew)

        slot = Signal(4)                      # read slot issued this cycle: 0 = the entry, 1 … = neighbours
        slots = Mux(method == 1, 1 + len(LINEAR_OFFSETS), 1 + len(LEARNED_OFFSETS))
        centre_value = Signal(signed(8))
        centre_sent = Signal()
        near_value = Signal(data.ArrayLayout(signed(8), 4))   # linear: left, right, up, down (0 if not sent)
        near_sent = Signal(4)
        accumulator = Signal(signed(20))      # learned: |Σ| ≤ 8·127·127 < 2^17
        result = Signal(signed(8))

        def neighbour(offsets):
            """(address, inside the plane) of each neighbour offset of the current entry."""
            out = []
            for dy, dx in offsets:
                inside = Const(1)
                if dy < 0:
                    inside &= y >= -dy
                if dy > 0:
                    inside &= y + dy < height
                if dx < 0:
                    inside &= x >= -dx
                if dx > 0:
                    inside &= x + dx < width
                out.append((entry + dy * width + dx if dy else entry + dx, inside))
            return out

        linear = neighbour(LINEAR_OFFSETS)
        learned = neighbour(LEARNED_OFFSETS)

        # address of the slot issued this cycle, and whether its neighbour is inside the plane
        issue_addr = Signal(ew + 2)
        with m.Switch(slot):
            with m.Case(0):
                m.d.comb += issue_addr.eq(entry)
            for number in range(len(LEARNED_OFFSETS)):
                with m.Case(number + 1):
                    if number < len(LINEAR_OFFSETS):
                        m.d.comb += issue_addr.eq(Mux(method == 1, linear[number][0], learned[number][0]))
                    else:
                        m.d.comb += issue_addr.eq(learned[number][0])
        m.d.comb += self.rd_addr.eq(issue_addr)
        issued_inside = Signal(len(LEARNED_OFFSETS) + 1)       # per slot, registered when issued
        returned = Signal(4)                                   # slot whose data is on rd_data now
        inside_now = Signal()
        with m.Switch(slot):
            with m.Case(0):
                m.d.comb += inside_now.eq(1)
            for number in range(len(LEARNED_OFFSETS)):
                with m.Case(number + 1):
                    if number < len(LINEAR_OFFSETS):
                        m.d.comb += inside_now.eq(Mux(method == 1, linear[number][1], learned[number][1]))
                    else:
                        m.d.comb += inside_now.eq(learned[number][1])
        returned_inside = Signal()

        sampled = Mux(returned_inside & self.rd_sent, self.rd_data, 0)      # 0 when dropped or off-plane
        # c·v as shift-and-add over the coefficient's bits (two's complement: the top bit weighs
        # −128), LUT logic: the block's one product stays out of the DSPs, which the decoder needs
        coefficient = Signal(signed(8))
        m.d.comb += coefficient.eq(coefficients[(returned - 1)[:3]])
        term = Signal(signed(17))
        partials = [Mux(coefficient[bit], sampled << bit, 0) for bit in range(7)]
        m.d.comb += term.eq(sum(partials) - Mux(coefficient[7], sampled << 7, 0))

        # the linear rule
        horizontal = near_sent[0] + near_sent[1]
        vertical = near_sent[2] + near_sent[3]
        h_sum = near_value[0] + near_value[1]
        v_sum = near_value[2] + near_value[3]
        linear_guess = Mux(horizontal == 2, (h_sum + 1) >> 1,
                           Mux(horizontal == 1, h_sum,
                               Mux(vertical == 2, (v_sum + 1) >> 1, Mux(vertical == 1, v_sum, 0))))
        # the learned rule
        half = (Const(1, 17) << shift) >> 1                 # 2^(s-1), 0 when s = 0
        rounded = Signal(signed(20))
        m.d.comb += rounded.eq((accumulator + half) >> shift)
        learned_guess = Mux(rounded > 127, 127, Mux(rounded < -127, -127, rounded))

        payload = self.o_stream.payload
        m.d.comb += [payload.data.eq(result), payload.index.eq(entry),
                     payload.first.eq(entry == 0), payload.last.eq(entry + 1 == entries)]
        tensor = self.tensor

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [
                        method.eq(tensor.interpolation),
                        height.eq(Mux(tensor.ndim == 4, tensor.dims[2], tensor.rows)),
                        width.eq(Mux(tensor.ndim == 4, tensor.dims[3], tensor.cols)),
                        entries.eq(tensor.entries),
                        coefficients.eq(tensor.coefficients),
                        shift.eq(tensor.shift),
                        entry.eq(0), y.eq(0), x.eq(0), slot.eq(0),
                    ]
                    with m.If(tensor.entries != 0):
                        m.next = "READ"

            with m.State("READ"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [slot.eq(slot + 1), returned.eq(slot), returned_inside.eq(inside_now)]
                with m.If(slot == 0):
                    m.d.sync += [accumulator.eq(0), near_sent.eq(0), near_value.eq(0)]
                with m.Else():
                    # rd_data holds the slot issued in the previous cycle (`returned`)
                    with m.If(returned == 0):
                        m.d.sync += [centre_value.eq(self.rd_data), centre_sent.eq(self.rd_sent)]
                        with m.If(self.rd_sent | (method == 0)):
                            m.d.sync += result.eq(Mux(self.rd_sent, self.rd_data, 0))
                            m.next = "EMIT"
                    with m.Else():
                        with m.If(method == 1):
                            for number in range(len(LINEAR_OFFSETS)):
                                with m.If(returned == number + 1):
                                    m.d.sync += [near_value[number].eq(sampled),
                                                 near_sent[number].eq(returned_inside & self.rd_sent)]
                        with m.Else():
                            m.d.sync += accumulator.eq(accumulator + term)
                        with m.If(returned == slots - 1):
                            m.next = "FINISH"

            with m.State("FINISH"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += result.eq(Mux(method == 1, linear_guess, learned_guess))
                m.next = "EMIT"

            with m.State("EMIT"):
                m.d.comb += [self.busy.eq(1), self.o_stream.valid.eq(1)]
                with m.If(self.o_stream.ready):
                    m.d.sync += [entry.eq(entry + 1), slot.eq(0)]
                    with m.If(x + 1 == width):
                        m.d.sync += x.eq(0)
                        m.d.sync += y.eq(Mux(y + 1 == height, 0, y + 1))
                    with m.Else():
                        m.d.sync += x.eq(x + 1)
                    with m.If(entry + 1 == entries):
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "READ"

        return m
