"""The scale prediction network of seed 003 in gateware: ``ScalePredictor``.

From the ``F`` feature maps of the loop's convolution (``H × L`` each, values
in [0, 127] after ReLU), three ``K × K`` convolutions with ReLU
(``F → S → S → 2``, zero padding, stride 1) and a sum over the two last maps
give two UQ2.6 scale codes (64 = 1.0) for :class:`~dynsparse.hdl.anisopool.AnisoPool`.
Integer semantics of :func:`dynsparse.golden.spn.forward_int`, step ``t``:

    acc = b[t][co] + Σ_{ci, dy, dx} w[co][ci][dy][dx] · z[ci][y + dy − r][x + dx − r]   (0 outside)
    z'  = max(0, clamp((acc · M[t] + 2^(S[t] − 1)) >> S[t], −128, 127))             per layer
    u   = clamp((Σ_{y, x} r3[c][y][x] · M_u[t] + 2^(S_u[t] − 1)) >> S_u[t], −128, 127)
    code = clamp(32 + u, 32, 128)                                  (c = 0: height, 1: length)

One multiply-accumulate a cycle, the maps in block RAM, weights, biases and
requantisation constants in memories written through a parameter port.
"""

from amaranth.hdl import C, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..golden.sparseconv import MULTIPLIER_MAX, SHIFT_MAX
from ..golden.spn import SCALE_MAX_CODE, SCALE_MIN_CODE
from .frame import check_int, frame_layout
from .requant import REQUANT_STAGES, requantize_stages


__all__ = ["ScalePredictor", "ScalePredictorErrors", "scale_layout"]


class ScalePredictorErrors(data.Struct):
    """Sticky error flags of :class:`ScalePredictor`."""
    negative: 1     # an input value below 0 (taken as 0)
    misframed: 1    # a map set whose ``last`` is not on its ``F · H · L``-th value, or values outside one
    bad_size: 1     # ``height``/``length``/``iteration`` out of range at a map set's first value
    bad_param: 1    # a parameter write to an address outside every region (ignored)


#: Payload of the scales: both UQ2.6 codes of one map set.
scale_layout = data.StructLayout({"scale_h": unsigned(8), "scale_l": unsigned(8)})

#: Parameter regions, in the two top bits of ``param_addr``.
REGION_WEIGHTS, REGION_BIASES, REGION_REQUANT = 0, 1, 2


class ScalePredictor(wiring.Component):
    """Three convolution layers with ReLU and a sum to two scale codes, one MAC a cycle.

    Parameters
    ----------
    channels : int
        ``F``, input maps, 1 … 8.
    spn_channels : int
        ``S``, maps of the first two layers, 1 … 8.
    kernel_size : int
        ``K``, odd, 1 … 7.
    max_height, max_length : int
        Largest map: 1 … 16 rows, 1 … 64 positions.
    iterations : int
        ``T``, loop iterations whose biases and requantisation constants the
        block holds (one row each), 1 … 4.
    bias_bits : int
        Signed width of a bias, 8 … 32 (default 32).

    Members
    -------
    i_stream : In(stream.Signature(frame_layout(signed(8))))
        One *map set*: map 0 row by row, then map 1, …, map ``F − 1``;
        ``first`` on its first value, ``last`` on its last.
    o_stream : Out(stream.Signature(scale_layout))
        The two scale codes of each map set.
    height, length, iteration : In(unsigned)
        The maps' size and the loop iteration ``t`` (which row of biases and
        constants), sampled with a map set's first value.
    param_addr, param_data, param_write : In
        Parameter writes (:meth:`parameter_writes` gives them for an export):
        ``param_addr`` = region (two top bits) and index; weights are int8
        (``param_data[:8]``), biases ``bias_bits`` signed, constants
        ``multiplier | shift << 16``.
    errors : Out(ScalePredictorErrors)
        Sticky, cleared by ``clear_errors``. A map set with a framing or
        size error is dropped whole; the next that starts with ``first`` is exact.
    busy : Out(1)

    Timing: :meth:`run_cycles` from a map set's first value accepted to its
    scales offered, with the output taken: ``F·H·L`` to load, then per layer
    ``C_out · H·L · C_in · K²`` MAC cycles and a drain of the pipeline, then
    the two scale codes through the requantiser.
    """

    #: Registers from an issued tap to the requantiser's input (read, operands, accumulator),
    #: then the requantiser's, its output register, then the write.
    _MAC_STAGES = 3
    _DRAIN = _MAC_STAGES + REQUANT_STAGES + 2

    def __init__(self, *, channels=8, spn_channels=4, kernel_size=3, max_height=8, max_length=64, iterations=2,
                 bias_bits=32):
        self._channels = check_int("channel count", channels, minimum=1, maximum=8)
        self._spn_channels = check_int("SPN channel count", spn_channels, minimum=1, maximum=8)
        self._kernel_size = check_int("kernel size", kernel_size, minimum=1, maximum=7, odd=True)
        self._max_height = check_int("maximum height", max_height, minimum=1, maximum=16)
        self._max_length = check_int("maximum length", max_length, minimum=1, maximum=64)
        self._iterations = check_int("iteration count", iterations, minimum=1, maximum=4)
        self._bias_bits = check_int("bias width", bias_bits, minimum=8, maximum=32)
        f, s, k = channels, spn_channels, kernel_size
        #: (C_in, C_out, first weight address, first bias of a row) of each layer
        self._layers = [(f, s, 0, 0), (s, s, s * f * k * k, s), (s, 2, s * f * k * k + s * s * k * k, 2 * s)]
        self._weight_count = s * f * k * k + s * s * k * k + 2 * s * k * k
        self._bias_row = 2 * s + 2
        self._index_bits = max(self._weight_count, iterations * self._bias_row, iterations * 4 - 1).bit_length()
        super().__init__({
            "i_stream":    In(stream.Signature(frame_layout(signed(8)))),
            "o_stream":    Out(stream.Signature(scale_layout)),
            "height":      In(range(max_height + 1), init=max_height),
            "length":      In(range(max_length + 1), init=max_length),
            "iteration":   In(range(max(2, iterations))),
            "param_addr":  In(self._index_bits + 2),
            "param_data":  In(32),
            "param_write": In(1),
            "errors":      Out(ScalePredictorErrors),
            "clear_errors": In(1),
            "busy":        Out(1),
        })

    channels     = property(lambda self: self._channels)
    spn_channels = property(lambda self: self._spn_channels)
    kernel_size  = property(lambda self: self._kernel_size)
    max_height   = property(lambda self: self._max_height)
    max_length   = property(lambda self: self._max_length)
    iterations   = property(lambda self: self._iterations)
    bias_bits    = property(lambda self: self._bias_bits)

    @property
    def accumulator_width(self):
        """Signed bits of the accumulator: ``max(C_in) · K² · 127 · 127`` plus the largest bias."""
        bound = max(c for c, *_ in self._layers) * self._kernel_size ** 2 * 127 * 127 + (1 << (self._bias_bits - 1))
        return bound.bit_length() + 1

    def run_cycles(self, height, length):
        """Cycles from a map set's first value accepted to its scales offered (output taken):
        ``F·H·L`` to load, 3 to start, each layer's ``C_out·H·L·C_in·K²`` MAC cycles with
        a drain of 9 between layers, and 16 from the last MAC to the scales."""
        area, k2 = height * length, self._kernel_size ** 2
        work = sum(c_out * area * c_in * k2 for c_in, c_out, *_ in self._layers)
        return self._channels * area + 3 + work + 2 * self._DRAIN + 16

    def parameter_writes(self, export):
        """``[(param_addr, param_data), ...]`` loading an export of :func:`dynsparse.golden.spn.quantise`.

        Raises :class:`ValueError` when the export's geometry differs from the
        block's or a bias does not fit ``bias_bits``.
        """
        from ..golden.spn import check_export
        import numpy as np
        config = check_export(export)
        if not int(export["adaptive"]):
            raise ValueError("export has no scale prediction network (a fixed-kernel model)")
        for name, have, want in (("channel count", config.channels, self._channels),
                                 ("SPN channel count", config.spn_channels, self._spn_channels),
                                 ("kernel size", config.conv_kernel, self._kernel_size),
                                 ("iteration count", config.iterations, self._iterations)):
            if have != want:
                raise ValueError(f"export {name} is {have}, the block's is {want}")
        writes = []
        weights = np.concatenate([np.asarray(export[n], np.int64).ravel() for n in ("spn1_w", "spn2_w", "spn3_w")])
        writes += [((REGION_WEIGHTS << self._index_bits) | i, int(w) & 0xFF) for i, w in enumerate(weights)]
        limit = 1 << (self._bias_bits - 1)
        for t in range(self._iterations):
            row = np.concatenate([np.asarray(export[n], np.int64)[t] for n in ("spn1_b", "spn2_b", "spn3_b")])
            if np.abs(row).max(initial=0) >= limit:
                raise ValueError(f"export biases of iteration {t} must fit {self._bias_bits} signed bits, "
                                 f"not {int(np.abs(row).max())}")
            writes += [((REGION_BIASES << self._index_bits) | (t * self._bias_row + j), int(b) & 0xFFFFFFFF)
                       for j, b in enumerate(row)]
            for j, name in enumerate(("spn1", "spn2", "spn3", "scale")):
                m, sh = int(export[name + "_m"][t]), int(export[name + "_s"][t])
                writes.append(((REGION_REQUANT << self._index_bits) | (t * 4 + j), m | sh << 16))
        return writes

    def elaborate(self, platform):
        m = Module()
        f, s, k = self._channels, self._spn_channels, self._kernel_size
        r = k // 2
        x_bits = max(1, (self._max_length - 1).bit_length())
        y_bits = max(1, (self._max_height - 1).bit_length())
        c_bits = max(1, (max(f, s) - 1).bit_length())
        ib = self._index_bits

        # -------- errors ---------------------------------------------------------------------------
        raised = Signal(ScalePredictorErrors)
        with m.If(self.clear_errors):
            m.d.sync += self.errors.eq(raised)
        with m.Else():
            m.d.sync += self.errors.eq(self.errors.as_value() | raised.as_value())

        # -------- parameters -------------------------------------------------------------------------
        weights = Memory(shape=signed(8), depth=self._weight_count, init=[])
        biases = Memory(shape=signed(self._bias_bits), depth=self._iterations * self._bias_row, init=[])
        constants = Memory(shape=unsigned(16 + 6), depth=self._iterations * 4, init=[])
        m.submodules.weights, m.submodules.biases, m.submodules.constants = weights, biases, constants
        w_wr, b_wr, c_wr = weights.write_port(), biases.write_port(), constants.write_port()
        region, index = self.param_addr[ib:], self.param_addr[:ib]
        m.d.comb += [
            w_wr.addr.eq(index), w_wr.data.eq(self.param_data[:8]),
            b_wr.addr.eq(index), b_wr.data.eq(self.param_data[:self._bias_bits]),
            c_wr.addr.eq(index), c_wr.data.eq(Cat(self.param_data[:16], self.param_data[16:22])),
        ]
        with m.If(self.param_write):
            with m.If((region == REGION_WEIGHTS) & (index < self._weight_count)):
                m.d.comb += w_wr.en.eq(1)
            with m.Elif((region == REGION_BIASES) & (index < self._iterations * self._bias_row)):
                m.d.comb += b_wr.en.eq(1)
            with m.Elif((region == REGION_REQUANT) & (index < self._iterations * 4) &
                        (self.param_data[16:22] <= SHIFT_MAX)):
                m.d.comb += c_wr.en.eq(1)
            with m.Else():
                m.d.comb += raised.bad_param.eq(1)

        # -------- maps: mem0 holds the input, then layer 2's output; mem1 layer 1's ------------------
        depth0 = max(f, s) << (y_bits + x_bits)
        mem0 = Memory(shape=unsigned(7), depth=depth0, init=[])
        mem1 = Memory(shape=unsigned(7), depth=s << (y_bits + x_bits), init=[])
        m.submodules.mem0, m.submodules.mem1 = mem0, mem1
        mem0_w, mem0_r = mem0.write_port(), mem0.read_port(domain="sync")
        mem1_w, mem1_r = mem1.write_port(), mem1.read_port(domain="sync")

        # -------- load -------------------------------------------------------------------------------
        payload = self.i_stream.payload
        idle = Signal(init=1)
        loading = Signal()
        lc, ly, lx = Signal(c_bits), Signal(y_bits), Signal(x_bits)
        height_m1, length_m1 = Signal(y_bits), Signal(x_bits)
        iteration = Signal(range(max(2, self._iterations)))
        start = Signal()
        size_ok = ((self.height != 0) & (self.height <= self._max_height) & (self.length != 0) &
                   (self.length <= self._max_length) & (self.iteration < self._iterations))
        load_write = Signal()
        load_addr = Signal(len(mem0_w.addr))
        load_data = Signal(7)
        m.d.comb += [
            self.i_stream.ready.eq(idle),
            load_addr.eq(Cat(Mux(payload.first, 0, lx), Mux(payload.first, 0, ly), Mux(payload.first, 0, lc))),
            load_data.eq(Mux(payload.data[-1], 0, payload.data[:7])),
        ]
        single = (self.height == 1) & (self.length == 1) if f == 1 else C(0, 1)
        at_end = (lc == f - 1) & (ly == height_m1) & (lx == length_m1)
        with m.If(self.i_stream.valid & idle):
            m.d.comb += raised.negative.eq(payload.data[-1])
            with m.If(payload.first):
                with m.If(loading):
                    m.d.comb += raised.misframed.eq(1)          # the previous set was cut short
                with m.If(~size_ok):
                    m.d.comb += raised.bad_size.eq(1)
                    m.d.sync += loading.eq(0)
                with m.Else():
                    m.d.comb += load_write.eq(1)
                    m.d.sync += [height_m1.eq(self.height - 1), length_m1.eq(self.length - 1),
                                 iteration.eq(self.iteration), lc.eq(0), ly.eq(0), lx.eq(0)]
                    with m.If(single):
                        m.d.sync += loading.eq(0)
                        with m.If(payload.last):
                            m.d.comb += start.eq(1)
                        with m.Else():
                            m.d.comb += raised.misframed.eq(1)
                    with m.Elif(payload.last):
                        m.d.comb += raised.misframed.eq(1)
                        m.d.sync += loading.eq(0)
                    with m.Else():
                        m.d.sync += loading.eq(1)
                        # the position after (0, 0, 0)
                        with m.If(self.length != 1):
                            m.d.sync += lx.eq(1)
                        with m.Elif(self.height != 1):
                            m.d.sync += ly.eq(1)
                        with m.Else():
                            m.d.sync += lc.eq(1)
            with m.Elif(~loading):
                m.d.comb += raised.misframed.eq(1)
            with m.Else():
                m.d.comb += load_write.eq(1)
                with m.If(at_end):
                    m.d.sync += loading.eq(0)
                    with m.If(payload.last):
                        m.d.comb += start.eq(1)
                    with m.Else():
                        m.d.comb += raised.misframed.eq(1)
                with m.Elif(payload.last):
                    m.d.comb += raised.misframed.eq(1)
                    m.d.sync += loading.eq(0)
                with m.Elif(lx != length_m1):
                    m.d.sync += lx.eq(lx + 1)
                with m.Elif(ly != height_m1):
                    m.d.sync += [lx.eq(0), ly.eq(ly + 1)]
                with m.Else():
                    m.d.sync += [lx.eq(0), ly.eq(0), lc.eq(lc + 1)]
        with m.If(start):
            m.d.sync += idle.eq(0)

        # -------- the layers: one tap issued a cycle ---------------------------------------------------
        layer = Signal(range(4))                # 0 … 2, 3: the scale codes
        issuing = Signal()
        co, ci = Signal(3), Signal(3)
        py, px = Signal(y_bits), Signal(x_bits)
        dy, dx = Signal(range(k)), Signal(range(k))
        w_addr, w_base = Signal(range(self._weight_count + 1)), Signal(range(self._weight_count + 1))
        c_in = Mux(layer == 0, f, s)
        c_out = Mux(layer == 2, 2, s)
        taps = Mux(layer == 0, f * k * k, s * k * k)
        first_weight = Mux(layer == 0, 0, Mux(layer == 1, self._layers[1][2], self._layers[2][2]))
        bias_base = Mux(layer == 0, 0, Mux(layer == 1, s, 2 * s))
        drain = Signal(range(self._DRAIN + 2))
        row = Signal(y_bits + 4, init=0)
        col = Signal(x_bits + 4, init=0)
        m.d.comb += [row.eq(py + dy - r), col.eq(px + dx - r)]
        inside = (row.as_signed() >= 0) & (row.as_signed() <= height_m1) & \
                 (col.as_signed() >= 0) & (col.as_signed() <= length_m1)
        tap_first = (ci == 0) & (dy == 0) & (dx == 0)
        tap_last = (ci == c_in - 1) & (dy == k - 1) & (dx == k - 1)
        element_last = tap_last & (px == length_m1) & (py == height_m1)
        layer_last = element_last & (co == c_out - 1)
        read_addr = Cat(col[:x_bits], row[:y_bits], ci[:c_bits])
        m.d.comb += [
            mem0_r.addr.eq(read_addr), mem1_r.addr.eq(read_addr),
        ]
        w_rd = weights.read_port(domain="sync")
        b_rd = biases.read_port(domain="sync")
        c_rd = constants.read_port(domain="sync")
        m.d.comb += [
            w_rd.addr.eq(w_addr),
            b_rd.addr.eq(iteration * self._bias_row + bias_base + co),
            c_rd.addr.eq(iteration * 4 + layer),
        ]

        with m.If(start):
            m.d.sync += [layer.eq(0), drain.eq(3), co.eq(0), ci.eq(0), py.eq(0), px.eq(0), dy.eq(0), dx.eq(0)]
        with m.Elif(drain != 0):
            m.d.sync += drain.eq(drain - 1)
            with m.If(drain == 1):
                with m.If(layer == 3):
                    pass
                with m.Else():
                    m.d.sync += [issuing.eq(1), w_addr.eq(first_weight), w_base.eq(first_weight)]
        with m.If(issuing):
            with m.If(dx != k - 1):
                m.d.sync += [dx.eq(dx + 1), w_addr.eq(w_addr + 1)]
            with m.Elif(dy != k - 1):
                m.d.sync += [dx.eq(0), dy.eq(dy + 1), w_addr.eq(w_addr + 1)]
            with m.Elif(ci != c_in - 1):
                m.d.sync += [dx.eq(0), dy.eq(0), ci.eq(ci + 1), w_addr.eq(w_addr + 1)]
            with m.Else():
                m.d.sync += [dx.eq(0), dy.eq(0), ci.eq(0), w_addr.eq(w_base)]
                with m.If(px != length_m1):
                    m.d.sync += px.eq(px + 1)
                with m.Elif(py != height_m1):
                    m.d.sync += [px.eq(0), py.eq(py + 1)]
                with m.Else():
                    m.d.sync += [px.eq(0), py.eq(0)]
                    with m.If(co != c_out - 1):
                        m.d.sync += [co.eq(co + 1), w_addr.eq(w_base + taps), w_base.eq(w_base + taps)]
                    with m.Else():
                        m.d.sync += [co.eq(0), issuing.eq(0), layer.eq(layer + 1), drain.eq(self._DRAIN)]

        # stage 1: reads in flight
        s1 = {name: Signal(shape, name=f"s1_{name}") for name, shape in
              (("valid", 1), ("inside", 1), ("first", 1), ("last", 1), ("co", 3), ("y", y_bits), ("x", x_bits),
               ("layer", 2))}
        m.d.sync += [s1["valid"].eq(issuing), s1["inside"].eq(inside), s1["first"].eq(tap_first),
                     s1["last"].eq(tap_last), s1["co"].eq(co), s1["y"].eq(py), s1["x"].eq(px),
                     s1["layer"].eq(layer)]
        # stage 2: operands
        s2_valid, s2_first, s2_last = Signal(), Signal(), Signal()
        s2_w, s2_v = Signal(signed(8)), Signal(signed(8))
        s2_bias = Signal(signed(self._bias_bits))
        s2_tags = [Signal(3, name="s2_co"), Signal(y_bits, name="s2_y"), Signal(x_bits, name="s2_x"),
                   Signal(2, name="s2_layer")]
        value = Mux(s1["layer"] == 1, mem1_r.data, mem0_r.data)
        m.d.sync += [s2_valid.eq(s1["valid"]), s2_first.eq(s1["first"]), s2_last.eq(s1["last"]),
                     s2_w.eq(w_rd.data), s2_v.eq(Mux(s1["inside"], value, 0)), s2_bias.eq(b_rd.data),
                     *(a.eq(b) for a, b in zip(s2_tags, (s1["co"], s1["y"], s1["x"], s1["layer"])))]
        # stage 3: the accumulator
        acc = Signal(signed(self.accumulator_width))
        s3_done = Signal()
        s3_tags = [Signal(3, name="s3_co"), Signal(y_bits, name="s3_y"), Signal(x_bits, name="s3_x"),
                   Signal(2, name="s3_layer")]
        with m.If(s2_valid):
            m.d.sync += acc.eq(Mux(s2_first, s2_bias, acc) + s2_w * s2_v)
        m.d.sync += [s3_done.eq(s2_valid & s2_last), *(a.eq(b) for a, b in zip(s3_tags, s2_tags))]

        # the scale sums and the final two values through the requantiser
        area_max = self._max_height * self._max_length * 127
        sums = [Signal(range(area_max + 1), name=f"sum3_{c}") for c in range(2)]
        constant = Signal(22)
        with m.If(drain == 2):
            # this layer's M and S, read at its address of the cycle before; the previous
            # layer's last value entered the requantiser long before
            m.d.sync += constant.eq(c_rd.data)
        feed = Signal(range(3))                          # 1, 2: the scale values enter the requantiser
        with m.If((layer == 3) & (drain == 1)):
            m.d.sync += feed.eq(1)
        with m.Elif(feed == 1):
            m.d.sync += feed.eq(2)
        with m.Elif(feed == 2):
            m.d.sync += feed.eq(0)
        rq_in = Mux(feed == 0, acc, Mux(feed == 1, sums[0], sums[1]))
        rq_valid = Mux(feed == 0, s3_done, 1)
        rq_tags = [rq_valid, Mux(feed == 0, s3_tags[0], feed == 2), *s3_tags[1:3], Mux(feed == 0, s3_tags[3], 3)]
        (rq_q,), rq_out, _ = requantize_stages(m, C(1, 1), [rq_in], constant[:16], constant[16:22], rq_tags)
        # one more register after the requantiser's clamp
        q = Signal(signed(8))
        out_valid, out_co, out_y, out_x, out_layer = (Signal.like(tag, name=f"out_{i}") for i, tag in enumerate(rq_out))
        m.d.sync += [q.eq(rq_q), out_valid.eq(rq_out[0]), out_co.eq(rq_out[1]), out_y.eq(rq_out[2]),
                     out_x.eq(rq_out[3]), out_layer.eq(rq_out[4])]
        relu = Mux(q < 0, 0, q[:7])
        m.d.comb += [
            mem1_w.addr.eq(Cat(out_x, out_y, out_co[:c_bits])), mem1_w.data.eq(relu),
            mem1_w.en.eq(out_valid & (out_layer == 0)),
            mem0_w.addr.eq(Mux(idle, load_addr, Cat(out_x, out_y, out_co[:c_bits]))),
            mem0_w.data.eq(Mux(idle, load_data, relu)),
            mem0_w.en.eq(Mux(idle, load_write, out_valid & (out_layer == 1))),
        ]
        with m.If(start):
            m.d.sync += [sums[0].eq(0), sums[1].eq(0)]
        with m.Elif(out_valid & (out_layer == 2)):
            for c in range(2):
                with m.If(out_co == c):
                    m.d.sync += sums[c].eq(sums[c] + relu)

        # -------- the scale codes ------------------------------------------------------------------------
        codes = [Signal(8, name="code_h"), Signal(8, name="code_l")]
        code = Signal(signed(10))
        m.d.comb += code.eq(SCALE_MIN_CODE + q)
        clamped = Mux(code < SCALE_MIN_CODE, SCALE_MIN_CODE, Mux(code > SCALE_MAX_CODE, SCALE_MAX_CODE, code))
        with m.If(out_valid & (out_layer == 3)):
            with m.If(out_co == 0):
                m.d.sync += codes[0].eq(clamped)
            with m.Else():
                m.d.sync += [self.o_stream.valid.eq(1), self.o_stream.payload.scale_h.eq(codes[0]),
                             self.o_stream.payload.scale_l.eq(clamped)]
        with m.If(self.o_stream.valid & self.o_stream.ready):
            m.d.sync += [self.o_stream.valid.eq(0), idle.eq(1), layer.eq(0)]

        m.d.comb += self.busy.eq(~idle | loading | self.o_stream.valid)
        return m
