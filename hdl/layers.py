"""A one-MAC-a-cycle engine for a chain of small convolution layers, shared by
:class:`~dynsparse.hdl.spn.ScalePredictor` and :class:`~dynsparse.hdl.spnloop.EncodingLoop`.

Every layer is a ``K × K`` convolution, stride 1, zero padding, of ``C_in``
maps of ``H × L`` values into ``C_out`` maps, with a bias, requantisation and
ReLU (seed 003's integer semantics, :func:`dynsparse.golden.spn.conv_int`)::

    acc = b[t][co] + Σ_{ci, dy, dx} w[co][ci][dy][dx] · z[ci][y + dy − r][x + dx − r]   (0 outside)
    z'  = max(0, clamp((acc · M[t] + 2^(S[t] − 1)) >> S[t], −128, 127))

The maps live in two memories of the caller (addressed ``channel · 2^(y+x) +
y · 2^x + x``); a layer reads channels ``source_channel …`` of one and writes
channels ``target_channel …`` of one (the same memory is allowed when the two
ranges do not overlap). A layer without a target sums each of its (two)
output maps instead, and the engine then requantises both sums to the scale
codes ``clamp(32 + u, 32, 128)`` of the scale prediction network.

The engine issues one tap a cycle in the order ``co, y, x, ci, dy, dx``; a
value reaches its memory :attr:`LayerEngine.DRAIN` cycles after its last tap,
and the next layer of the chain starts then.
"""

from dataclasses import dataclass

from amaranth.hdl import Array, C, Cat, Mux, Signal, signed, unsigned
from amaranth.lib.memory import Memory

from ..golden.sparseconv import SHIFT_MAX
from ..golden.spn import SCALE_MAX_CODE, SCALE_MIN_CODE
from .requant import REQUANT_STAGES, requantize_stages


__all__ = ["Layer", "LayerEngine", "MapLoader", "REGION_WEIGHTS", "REGION_BIASES", "REGION_REQUANT",
           "parameter_memories"]


@dataclass(frozen=True)
class Layer:
    """One convolution layer of a :class:`LayerEngine` chain."""
    c_in: int
    c_out: int
    source: int                 # map memory read (0 or 1)
    source_channel: int         # its first channel read
    target: int                 # map memory written (0 or 1), or None: sum the two output maps
    target_channel: int         # its first channel written
    weight_base: int            # address of the layer's first weight (order co, ci, dy, dx)
    bias_base: int              # its first bias within an iteration's bias row
    constant: int               # its (multiplier, shift) within an iteration's constant row
    following: int = None       # index of the next layer of the chain, or None


class LayerEngine:
    """The chain's control, MAC pipeline, requantiser and scale codes, built into a module.

    ``LayerEngine(...).build(m, ...)`` adds its logic to ``m``; the caller owns
    the memories and connects the signals the engine exposes after ``build``:

    * ``start`` (in, a pulse) with ``start_layer`` (in) starts a chain;
      ``single`` (in) stops it after that layer;
    * ``read_addr`` (out) for both map memories' read ports (data the cycle
      after), ``weight_addr``, ``bias_addr``, ``constant_addr`` likewise;
    * ``write_en``, ``write_target``, ``write_addr``, ``write_data`` (out): one
      value into a map memory;
    * ``done`` (out): one cycle, when the chain's last value is in its memory,
      or, for a chain ending in a summing layer, the cycle ``codes_valid`` is;
    * ``codes_valid``, ``code_h``, ``code_l`` (out): the two scale codes;
    * ``active`` (out): between ``start`` and ``done``.
    """

    #: Registers from an issued tap to the requantiser's input (read, operands, accumulator),
    #: then the requantiser's, its output register, then the write.
    MAC_STAGES = 3
    DRAIN = MAC_STAGES + REQUANT_STAGES + 2
    #: Cycles from ``start`` to the first tap issued.
    START = 3
    #: Cycles from the last tap of a summing layer to ``codes_valid``.
    CODES = DRAIN + 7

    def __init__(self, layers, *, kernel_size, max_height, max_length, channel_bits, bias_bits, bias_row,
                 constant_row, scale_constant, iterations):
        self.layers = list(layers)
        self.kernel_size = kernel_size
        self.y_bits = max(1, (max_height - 1).bit_length())
        self.x_bits = max(1, (max_length - 1).bit_length())
        self.c_bits = channel_bits
        self.bias_bits = bias_bits
        self.bias_row, self.constant_row, self.scale_constant = bias_row, constant_row, scale_constant
        self.iterations = iterations
        self.max_height, self.max_length = max_height, max_length
        self.weight_count = max(l.weight_base + l.c_out * l.c_in * kernel_size ** 2 for l in self.layers)
        bound = (max(l.c_in for l in self.layers) * kernel_size ** 2 * 127 * 128 + (1 << (bias_bits - 1)))
        self.accumulator_width = bound.bit_length() + 1
        n = len(self.layers)
        self.start = Signal(name="engine_start")
        self.start_layer = Signal(range(max(2, n)), name="engine_start_layer")
        self.single = Signal(name="engine_single")
        self.iteration = Signal(range(max(2, iterations)), name="engine_iteration")
        self.height_m1 = Signal(self.y_bits, name="engine_height_m1")
        self.length_m1 = Signal(self.x_bits, name="engine_length_m1")
        address_bits = self.c_bits + self.y_bits + self.x_bits
        self.read_addr = Signal(address_bits, name="engine_read_addr")
        self.weight_addr = Signal(range(self.weight_count + 1), name="engine_weight_addr")
        self.bias_addr = Signal(range(iterations * bias_row + 1), name="engine_bias_addr")
        self.constant_addr = Signal(range(iterations * constant_row + 1), name="engine_constant_addr")
        self.write_en = Signal(name="engine_write_en")
        self.write_target = Signal(name="engine_write_target")
        self.write_addr = Signal(address_bits, name="engine_write_addr")
        self.write_data = Signal(7, name="engine_write_data")
        self.done = Signal(name="engine_done")
        self.codes_valid = Signal(name="engine_codes_valid")
        self.code_h = Signal(8, name="engine_code_h")
        self.code_l = Signal(8, name="engine_code_l")
        self.active = Signal(name="engine_active")

    def work_cycles(self, chain, height, length):
        """Cycles from ``start`` to ``done`` for the layer indices ``chain`` run in order."""
        area, k2 = height * length, self.kernel_size ** 2
        cycles = self.START
        for index in chain:
            layer = self.layers[index]
            cycles += layer.c_out * area * layer.c_in * k2
        cycles += self.DRAIN * (len(chain) - 1)
        return cycles + (self.CODES if self.layers[chain[-1]].target is None else self.DRAIN)

    def build(self, m, *, map_data, weight_data, bias_data, constant_data):
        """Add the engine to ``m``. ``map_data`` are the two map memories' read data (``[0, 127]``
        unsigned or int8), the others the parameter memories' read data."""
        k = self.kernel_size
        r = k // 2
        y_bits, x_bits, c_bits = self.y_bits, self.x_bits, self.c_bits
        layers = self.layers
        n = len(layers)
        l_bits = max(1, (n - 1).bit_length())

        def table(values, shape=None):
            shape = shape or range(max(values) + 1)
            return Array(C(v, shape) for v in values)

        # phases after a drain: issue the layer, feed the scale sums, or end the chain
        LAYER, CODES, FINISH = 0, 1, 2
        layer = Signal(l_bits, name="engine_layer")
        phase = Signal(2, name="engine_phase")
        issuing = Signal(name="engine_issuing")
        co, ci = Signal(3, name="engine_co"), Signal(3, name="engine_ci")
        py, px = Signal(y_bits, name="engine_py"), Signal(x_bits, name="engine_px")
        dy, dx = Signal(range(k), name="engine_dy"), Signal(range(k), name="engine_dx")
        w_base = Signal.like(self.weight_addr, name="engine_weight_base")
        c_in = table([l.c_in for l in layers])[layer]
        c_out = table([l.c_out for l in layers])[layer]
        taps = table([l.c_in * k * k for l in layers])[layer]
        first_weight = table([l.weight_base for l in layers])[layer]
        bias_base = table([l.bias_base for l in layers])[layer]
        source = table([l.source for l in layers], unsigned(1))[layer]
        source_channel = table([l.source_channel for l in layers], unsigned(c_bits + 1))[layer]
        constant_index = table([l.constant for l in layers] + [self.scale_constant])[
            Mux(phase == CODES, n, layer)]
        following = [l.following if l.following is not None else i for i, l in enumerate(layers)]
        has_next = table([int(l.following is not None) for l in layers], unsigned(1))[layer]
        sums_layer = table([int(l.target is None) for l in layers], unsigned(1))[layer]
        drain = Signal(range(self.DRAIN + 2), name="engine_drain")
        row = Signal(y_bits + 4, name="engine_row")
        col = Signal(x_bits + 4, name="engine_col")
        channel = Signal(c_bits + 1, name="engine_channel")
        m.d.comb += [row.eq(py + dy - r), col.eq(px + dx - r), channel.eq(ci + source_channel)]
        inside = (row.as_signed() >= 0) & (row.as_signed() <= self.height_m1) & \
                 (col.as_signed() >= 0) & (col.as_signed() <= self.length_m1)
        tap_first = (ci == 0) & (dy == 0) & (dx == 0)
        tap_last = (ci == c_in - 1) & (dy == k - 1) & (dx == k - 1)
        m.d.comb += [
            self.read_addr.eq(Cat(col[:x_bits], row[:y_bits], channel[:c_bits])),
            self.bias_addr.eq(self.iteration * self.bias_row + bias_base + co),
            self.constant_addr.eq(self.iteration * self.constant_row + constant_index),
        ]

        with m.If(self.start):
            m.d.sync += [layer.eq(self.start_layer), phase.eq(LAYER), drain.eq(self.START), self.active.eq(1),
                         co.eq(0), ci.eq(0), py.eq(0), px.eq(0), dy.eq(0), dx.eq(0)]
        with m.Elif(drain != 0):
            m.d.sync += drain.eq(drain - 1)
            with m.If(drain == 1):
                with m.Switch(phase):
                    with m.Case(LAYER):
                        m.d.sync += [issuing.eq(1), self.weight_addr.eq(first_weight), w_base.eq(first_weight)]
                    with m.Case(FINISH):
                        m.d.comb += self.done.eq(1)
                        m.d.sync += self.active.eq(0)
        with m.If(issuing):
            with m.If(dx != k - 1):
                m.d.sync += [dx.eq(dx + 1), self.weight_addr.eq(self.weight_addr + 1)]
            with m.Elif(dy != k - 1):
                m.d.sync += [dx.eq(0), dy.eq(dy + 1), self.weight_addr.eq(self.weight_addr + 1)]
            with m.Elif(ci != c_in - 1):
                m.d.sync += [dx.eq(0), dy.eq(0), ci.eq(ci + 1), self.weight_addr.eq(self.weight_addr + 1)]
            with m.Else():
                m.d.sync += [dx.eq(0), dy.eq(0), ci.eq(0), self.weight_addr.eq(w_base)]
                with m.If(px != self.length_m1):
                    m.d.sync += px.eq(px + 1)
                with m.Elif(py != self.height_m1):
                    m.d.sync += [px.eq(0), py.eq(py + 1)]
                with m.Else():
                    m.d.sync += [px.eq(0), py.eq(0)]
                    with m.If(co != c_out - 1):
                        m.d.sync += [co.eq(co + 1), self.weight_addr.eq(w_base + taps), w_base.eq(w_base + taps)]
                    with m.Else():
                        m.d.sync += [co.eq(0), issuing.eq(0), drain.eq(self.DRAIN)]
                        with m.If(sums_layer):
                            m.d.sync += phase.eq(CODES)
                        with m.Elif(has_next & ~self.single):
                            m.d.sync += layer.eq(table(following)[layer])
                        with m.Else():
                            m.d.sync += phase.eq(FINISH)

        # stage 1: reads in flight
        s1 = {name: Signal(shape, name=f"engine_s1_{name}") for name, shape in
              (("valid", 1), ("inside", 1), ("first", 1), ("last", 1), ("co", 3), ("y", y_bits), ("x", x_bits),
               ("layer", l_bits), ("source", 1))}
        m.d.sync += [s1["valid"].eq(issuing), s1["inside"].eq(inside), s1["first"].eq(tap_first),
                     s1["last"].eq(tap_last), s1["co"].eq(co), s1["y"].eq(py), s1["x"].eq(px),
                     s1["layer"].eq(layer), s1["source"].eq(source)]
        # stage 2: operands
        s2_valid, s2_first, s2_last = (Signal(name=f"engine_s2_{n}") for n in ("valid", "first", "last"))
        s2_w, s2_v = Signal(signed(8), name="engine_s2_w"), Signal(signed(9), name="engine_s2_v")
        s2_bias = Signal(signed(self.bias_bits), name="engine_s2_bias")
        s2_tags = [Signal(3, name="engine_s2_co"), Signal(y_bits, name="engine_s2_y"),
                   Signal(x_bits, name="engine_s2_x"), Signal(l_bits, name="engine_s2_layer")]
        value = Mux(s1["source"], map_data[1], map_data[0])
        m.d.sync += [s2_valid.eq(s1["valid"]), s2_first.eq(s1["first"]), s2_last.eq(s1["last"]),
                     s2_w.eq(weight_data), s2_v.eq(Mux(s1["inside"], value, 0)), s2_bias.eq(bias_data),
                     *(a.eq(b) for a, b in zip(s2_tags, (s1["co"], s1["y"], s1["x"], s1["layer"])))]
        # stage 3: the accumulator
        acc = Signal(signed(self.accumulator_width), name="engine_acc")
        s3_done = Signal(name="engine_s3_done")
        s3_tags = [Signal.like(tag, name=tag.name.replace("s2", "s3")) for tag in s2_tags]
        with m.If(s2_valid):
            m.d.sync += acc.eq(Mux(s2_first, s2_bias, acc) + s2_w * s2_v)
        m.d.sync += [s3_done.eq(s2_valid & s2_last), *(a.eq(b) for a, b in zip(s3_tags, s2_tags))]

        # the scale sums and the final two values through the requantiser
        area_max = self.max_height * self.max_length * 127
        sums = [Signal(range(area_max + 1), name=f"engine_sum_{c}") for c in range(2)]
        constant = Signal(22, name="engine_constant")
        with m.If(drain == 2):
            # this layer's M and S, read at its address of the cycle before; the previous
            # layer's last value entered the requantiser long before
            m.d.sync += constant.eq(constant_data)
        feed = Signal(range(3), name="engine_feed")      # 1, 2: the scale sums enter the requantiser
        with m.If((phase == CODES) & (drain == 1)):
            m.d.sync += feed.eq(1)
        with m.Elif(feed == 1):
            m.d.sync += feed.eq(2)
        with m.Elif(feed == 2):
            m.d.sync += feed.eq(0)
        rq_in = Mux(feed == 0, acc, Mux(feed == 1, sums[0], sums[1]))
        rq_valid = Mux(feed == 0, s3_done, 1)
        rq_tags = [rq_valid, Mux(feed == 0, s3_tags[0], feed == 2), *s3_tags[1:], feed != 0]
        (rq_q,), rq_out, _ = requantize_stages(m, C(1, 1), [rq_in], constant[:16], constant[16:22], rq_tags)
        # one more register after the requantiser's clamp
        q = Signal(signed(8), name="engine_q")
        out_valid, out_co, out_y, out_x, out_layer, out_code = (
            Signal.like(tag, name=f"engine_out_{i}") for i, tag in enumerate(rq_out))
        m.d.sync += [q.eq(rq_q), *(a.eq(b) for a, b in zip(
            (out_valid, out_co, out_y, out_x, out_layer, out_code), rq_out))]
        relu = Mux(q < 0, 0, q[:7])
        target = table([l.target or 0 for l in layers], unsigned(1))[out_layer]
        target_channel = table([l.target_channel for l in layers], unsigned(c_bits + 1))[out_layer]
        writes = table([int(l.target is not None) for l in layers], unsigned(1))[out_layer]
        out_channel = Signal(c_bits + 1, name="engine_out_channel")
        m.d.comb += [
            out_channel.eq(out_co + target_channel),
            self.write_en.eq(out_valid & ~out_code & writes),
            self.write_target.eq(target),
            self.write_addr.eq(Cat(out_x, out_y, out_channel[:c_bits])),
            self.write_data.eq(relu),
        ]
        with m.If(self.start):
            m.d.sync += [sums[0].eq(0), sums[1].eq(0)]
        with m.Elif(out_valid & ~out_code & ~writes):
            for c in range(2):
                with m.If(out_co == c):
                    m.d.sync += sums[c].eq(sums[c] + relu)

        # the scale codes
        code = Signal(signed(10), name="engine_code")
        m.d.comb += code.eq(SCALE_MIN_CODE + q)
        clamped = Mux(code < SCALE_MIN_CODE, SCALE_MIN_CODE, Mux(code > SCALE_MAX_CODE, SCALE_MAX_CODE, code))
        with m.If(out_valid & out_code):
            with m.If(out_co == 0):
                m.d.sync += self.code_h.eq(clamped)
            with m.Else():
                m.d.comb += [self.codes_valid.eq(1), self.code_l.eq(clamped), self.done.eq(1)]
                m.d.sync += self.active.eq(0)
        return m


class MapLoader:
    """Takes a *map set* (``channels`` maps of ``H × L`` values, map 0 row by row first) from a
    framed stream into a memory, built into a module like :class:`LayerEngine`.

    ``build(m, i_stream, enable, size_ok)`` makes ``i_stream.ready`` follow
    ``enable``; ``height`` and ``length`` (the caller's inputs) are sampled
    with a set's first value. After ``build`` the caller reads:

    * ``write``, ``addr`` (comb): a value into the memory (address
      ``channel · 2^(y+x) + y · 2^x + x``, as :class:`LayerEngine` reads);
    * ``begin`` (comb): the set's first value is taken (sample per-set inputs);
    * ``done`` (comb): its last value is taken and the set is whole;
    * ``misframed``, ``bad_size`` (comb): a ``last`` not on the set's last value,
      a value outside a set, a set cut short by a ``first``; a size out of
      range at a ``first`` (that set is dropped);
    * ``height_m1``, ``length_m1`` (registers): the set's size less one;
    * ``loading`` (register): inside a set.
    """

    def __init__(self, *, channels, max_height, max_length, channel_bits=None):
        self.channels = channels
        self.y_bits = max(1, (max_height - 1).bit_length())
        self.x_bits = max(1, (max_length - 1).bit_length())
        self.c_bits = channel_bits if channel_bits is not None else max(1, (channels - 1).bit_length())
        self.write = Signal(name="load_write")
        self.addr = Signal(self.c_bits + self.y_bits + self.x_bits, name="load_addr")
        self.begin = Signal(name="load_begin")
        self.done = Signal(name="load_done")
        self.misframed = Signal(name="load_misframed")
        self.bad_size = Signal(name="load_bad_size")
        self.height_m1 = Signal(self.y_bits, name="load_height_m1")
        self.length_m1 = Signal(self.x_bits, name="load_length_m1")
        self.loading = Signal(name="load_loading")

    def build(self, m, *, i_stream, enable, size_ok, height, length):
        payload = i_stream.payload
        lc = Signal(self.c_bits, name="load_c")
        ly, lx = Signal(self.y_bits, name="load_y"), Signal(self.x_bits, name="load_x")
        loading = self.loading
        m.d.comb += [
            i_stream.ready.eq(enable),
            self.addr.eq(Cat(Mux(payload.first, 0, lx), Mux(payload.first, 0, ly), Mux(payload.first, 0, lc))),
        ]
        single = (height == 1) & (length == 1) if self.channels == 1 else C(0, 1)
        at_end = (lc == self.channels - 1) & (ly == self.height_m1) & (lx == self.length_m1)
        with m.If(i_stream.valid & enable):
            with m.If(payload.first):
                with m.If(loading):
                    m.d.comb += self.misframed.eq(1)            # the previous set was cut short
                with m.If(~size_ok):
                    m.d.comb += self.bad_size.eq(1)
                    m.d.sync += loading.eq(0)
                with m.Else():
                    m.d.comb += [self.write.eq(1), self.begin.eq(1)]
                    m.d.sync += [self.height_m1.eq(height - 1), self.length_m1.eq(length - 1),
                                 lc.eq(0), ly.eq(0), lx.eq(0)]
                    with m.If(single):
                        m.d.sync += loading.eq(0)
                        with m.If(payload.last):
                            m.d.comb += self.done.eq(1)
                        with m.Else():
                            m.d.comb += self.misframed.eq(1)
                    with m.Elif(payload.last):
                        m.d.comb += self.misframed.eq(1)
                        m.d.sync += loading.eq(0)
                    with m.Else():
                        m.d.sync += loading.eq(1)
                        # the position after (0, 0, 0)
                        with m.If(length != 1):
                            m.d.sync += lx.eq(1)
                        with m.Elif(height != 1):
                            m.d.sync += ly.eq(1)
                        with m.Else():
                            m.d.sync += lc.eq(1)
            with m.Elif(~loading):
                m.d.comb += self.misframed.eq(1)                # a value outside a set
            with m.Else():
                m.d.comb += self.write.eq(1)
                with m.If(at_end):
                    m.d.sync += loading.eq(0)
                    with m.If(payload.last):
                        m.d.comb += self.done.eq(1)
                    with m.Else():
                        m.d.comb += self.misframed.eq(1)
                with m.Elif(payload.last):
                    m.d.comb += self.misframed.eq(1)
                    m.d.sync += loading.eq(0)
                with m.Elif(lx != self.length_m1):
                    m.d.sync += lx.eq(lx + 1)
                with m.Elif(ly != self.height_m1):
                    m.d.sync += [lx.eq(0), ly.eq(ly + 1)]
                with m.Else():
                    m.d.sync += [lx.eq(0), ly.eq(0), lc.eq(lc + 1)]
        return m


#: Parameter regions, in the two top bits of a parameter address.
REGION_WEIGHTS, REGION_BIASES, REGION_REQUANT = 0, 1, 2


def parameter_memories(m, *, weights, biases, constants, bias_bits, index_bits, addr, data, write, bad):
    """The weight (int8), bias (``bias_bits`` signed) and constant (``M | S << 16``) memories of
    ``weights``, ``biases`` and ``constants`` entries, written through a parameter port.

    ``addr`` is a region (its two top bits, :data:`REGION_WEIGHTS` …) and an
    ``index_bits`` index; a write (``write`` high) outside its region's
    entries, or of a shift above 47, is ignored and drives ``bad`` for that
    cycle. Returns the three memories' read ports (``sync``, data the cycle
    after the address).
    """
    memories = [Memory(shape=signed(8), depth=weights, init=[]),
                Memory(shape=signed(bias_bits), depth=biases, init=[]),
                Memory(shape=unsigned(16 + 6), depth=constants, init=[])]
    m.submodules.weights, m.submodules.biases, m.submodules.constants = memories
    w_wr, b_wr, c_wr = (memory.write_port() for memory in memories)
    region, index = addr[index_bits:], addr[:index_bits]
    m.d.comb += [
        w_wr.addr.eq(index), w_wr.data.eq(data[:8]),
        b_wr.addr.eq(index), b_wr.data.eq(data[:bias_bits]),
        c_wr.addr.eq(index), c_wr.data.eq(data[:22]),
    ]
    with m.If(write):
        with m.If((region == REGION_WEIGHTS) & (index < weights)):
            m.d.comb += w_wr.en.eq(1)
        with m.Elif((region == REGION_BIASES) & (index < biases)):
            m.d.comb += b_wr.en.eq(1)
        with m.Elif((region == REGION_REQUANT) & (index < constants) & (data[16:22] <= SHIFT_MAX)):
            m.d.comb += c_wr.en.eq(1)
        with m.Else():
            m.d.comb += bad.eq(1)
    return [memory.read_port(domain="sync") for memory in memories]
