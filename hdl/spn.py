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

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .frame import check_int, frame_layout
from .layers import REGION_BIASES, REGION_REQUANT, REGION_WEIGHTS, Layer, LayerEngine, MapLoader, parameter_memories


__all__ = ["ScalePredictor", "ScalePredictorErrors", "scale_layout"]


class ScalePredictorErrors(data.Struct):
    """Sticky error flags of :class:`ScalePredictor`."""
    negative: 1     # an input value below 0 (taken as 0)
    misframed: 1    # a map set whose ``last`` is not on its ``F · H · L``-th value, or values outside one
    bad_size: 1     # ``height``/``length``/``iteration`` out of range at a map set's first value
    bad_param: 1    # a parameter write to an address outside every region (ignored)


#: Payload of the scales: both UQ2.6 codes of one map set.
scale_layout = data.StructLayout({"scale_h": unsigned(8), "scale_l": unsigned(8)})



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

    def _engine(self):
        f, s, k = self._channels, self._spn_channels, self._kernel_size
        # spn1: mem0 (the input) → mem1; spn2: mem1 → mem0; spn3: mem0 → the two sums
        layers = [Layer(f, s, 0, 0, 1, 0, self._layers[0][2], 0, 0, following=1),
                  Layer(s, s, 1, 0, 0, 0, self._layers[1][2], s, 1, following=2),
                  Layer(s, 2, 0, 0, None, 0, self._layers[2][2], 2 * s, 2)]
        return LayerEngine(layers, kernel_size=k, max_height=self._max_height, max_length=self._max_length,
                           channel_bits=max(1, (max(f, s) - 1).bit_length()), bias_bits=self._bias_bits,
                           bias_row=self._bias_row, constant_row=4, scale_constant=3, iterations=self._iterations)

    @property
    def accumulator_width(self):
        """Signed bits of the accumulator: ``max(C_in) · K² · 127 · 128`` plus the largest bias."""
        return self._engine().accumulator_width

    def run_cycles(self, height, length):
        """Cycles from a map set's first value accepted to its scales offered (output taken):
        ``F·H·L`` to load, 3 to start, each layer's ``C_out·H·L·C_in·K²`` MAC cycles with
        a drain of 9 between layers, and 16 from the last MAC to the scales."""
        return self._channels * height * length + self._engine().work_cycles([0, 1, 2], height, length)

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
        f, s = self._channels, self._spn_channels
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
        w_rd, b_rd, c_rd = parameter_memories(
            m, weights=self._weight_count, biases=self._iterations * self._bias_row, constants=self._iterations * 4,
            bias_bits=self._bias_bits, index_bits=ib, addr=self.param_addr, data=self.param_data,
            write=self.param_write, bad=raised.bad_param)

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
        iteration = Signal(range(max(2, self._iterations)))
        loader = MapLoader(channels=f, max_height=self._max_height, max_length=self._max_length,
                           channel_bits=c_bits)
        size_ok = ((self.height != 0) & (self.height <= self._max_height) & (self.length != 0) &
                   (self.length <= self._max_length) & (self.iteration < self._iterations))
        loader.build(m, i_stream=self.i_stream, enable=idle, size_ok=size_ok, height=self.height,
                     length=self.length)
        load_data = Mux(payload.data[-1], 0, payload.data[:7])
        start, height_m1, length_m1 = loader.done, loader.height_m1, loader.length_m1
        m.d.comb += [raised.misframed.eq(loader.misframed), raised.bad_size.eq(loader.bad_size)]
        with m.If(self.i_stream.valid & idle):
            m.d.comb += raised.negative.eq(payload.data[-1])
        with m.If(loader.begin):
            m.d.sync += iteration.eq(self.iteration)
        with m.If(start):
            m.d.sync += idle.eq(0)

        # -------- the layers: one tap issued a cycle ---------------------------------------------------
        engine = self._engine()
        m.d.comb += [
            engine.start.eq(start), engine.start_layer.eq(0), engine.iteration.eq(iteration),
            engine.height_m1.eq(height_m1), engine.length_m1.eq(length_m1),
            mem0_r.addr.eq(engine.read_addr), mem1_r.addr.eq(engine.read_addr),
            w_rd.addr.eq(engine.weight_addr), b_rd.addr.eq(engine.bias_addr), c_rd.addr.eq(engine.constant_addr),
        ]
        engine.build(m, map_data=[mem0_r.data, mem1_r.data], weight_data=w_rd.data, bias_data=b_rd.data,
                     constant_data=c_rd.data)
        m.d.comb += [
            mem1_w.addr.eq(engine.write_addr), mem1_w.data.eq(engine.write_data),
            mem1_w.en.eq(engine.write_en & (engine.write_target == 1)),
            mem0_w.addr.eq(Mux(idle, loader.addr, engine.write_addr)),
            mem0_w.data.eq(Mux(idle, load_data, engine.write_data)),
            mem0_w.en.eq(Mux(idle, loader.write, engine.write_en & (engine.write_target == 0))),
        ]
        with m.If(engine.codes_valid):
            m.d.sync += [self.o_stream.valid.eq(1), self.o_stream.payload.scale_h.eq(engine.code_h),
                         self.o_stream.payload.scale_l.eq(engine.code_l)]
        with m.If(self.o_stream.valid & self.o_stream.ready):
            m.d.sync += [self.o_stream.valid.eq(0), idle.eq(1)]

        m.d.comb += self.busy.eq(~idle | loader.loading | self.o_stream.valid)
        return m
