"""The iterative encoding loop of seed 003 in gateware: ``EncodingLoop``.

A peptide's map ``x`` (``H`` property rows by ``L`` positions, int8 codes of
:func:`dynsparse.golden.spn.encode`) goes ``T`` times through
convolution → scale prediction → anisotropic pooling, and a linear head reads
the channel sums of the last pooled map (:func:`dynsparse.golden.spn.forward_int`,
bit-exact)::

    z_0 = x
    for t in 0 … T − 1:
        a_t = ReLU(requant(conv_t(z_t)))          conv0 at t = 0, conv1 after    [F, H, L]
        (s_h, s_l) = SPN_t(a_t)                   UQ2.6 codes; 64, 64 when not adaptive
        z_{t+1} = AnisoPool(a_t, k(s_h), k(s_l))                                  [F, H, L]
    g[c]  = Σ_{y, x} z_T[c][y][x]                 the embedding
    logit = head_b + Σ_c head[c] · g[c]           class 1 when logit > 0

The convolutions and the scale prediction network share one
multiply-accumulate (:class:`~dynsparse.hdl.layers.LayerEngine`); the
pooling is an :class:`~dynsparse.hdl.anisopool.AnisoPool`; the head has its
own multiplier. All maps stay in two on-chip memories: ``M0`` holds ``x``,
then the SPN's first two layers' maps, then the pooled maps; ``M1`` the
convolution's maps ``a_t``. The sparse-tap engine (:class:`~dynsparse.hdl.sparseconv.SparseConv`)
does not fit here: it streams unsigned pixels through a line buffer with
one shared requantisation, while the loop's layers read signed and
unsigned maps from memory with per-iteration biases and constants.
"""

from amaranth.hdl import C, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..golden.spn import HEIGHT, SCALE_ONE
from .anisopool import AnisoPool, PoolMode
from .frame import check_int, frame_layout
from .layers import REGION_BIASES, REGION_REQUANT, REGION_WEIGHTS, Layer, LayerEngine, MapLoader, parameter_memories


__all__ = ["EncodingLoop", "EncodingLoopErrors"]


class EncodingLoopErrors(data.Struct):
    """Sticky error flags of :class:`EncodingLoop`."""
    bad_value: 1    # an input code of −128 (taken as −127)
    misframed: 1    # a map whose ``last`` is not on its ``H · L``-th value, or values outside one
    bad_size: 1     # ``height``/``length`` out of range at a map's first value (the map is dropped)
    bad_param: 1    # a parameter write outside every region, or a shift above 47 (ignored)
    pool: 1         # the pooling block flagged an error (a fault of the loop itself)


#: Requantisation constants of an iteration: the convolution, SPN layers 1 … 3, the scale.
_CONSTANTS = ("conv", "spn1", "spn2", "spn3", "scale")


class EncodingLoop(wiring.Component):
    """The whole conv → SPN → pool loop and the head, one map in, the embedding out.

    Parameters
    ----------
    channels : int
        ``F``, feature maps, 1 … 8.
    spn_channels : int
        ``S``, maps of the SPN's first two layers, 1 … 8.
    kernel_size : int
        ``K`` of every convolution, odd, 1 … 7.
    max_height, max_length : int
        Largest map: 1 … 16 rows, 1 … 64 positions.
    iterations : int
        ``T``, 1 … 4.
    bias_bits : int
        Signed width of a bias, 8 … 32.
    base_h, base_l, k_h_min, k_h_max, k_l_min, k_l_max : int
        The pooling window (:class:`~dynsparse.hdl.anisopool.AnisoPool`).

    Members
    -------
    i_stream : In(stream.Signature(frame_layout(signed(8))))
        One map ``x``, row by row; ``first`` on its first code, ``last`` on its last.
    o_stream : Out(stream.Signature(frame_layout(signed(32))))
        Per map, ``T + F + 1`` words: for each iteration ``scale_h | scale_l << 8 |
        k_h << 16 | k_l << 24``, then ``g[0] … g[F − 1]``, then the logit (``last``).
    height, length, mode, adaptive : In
        The map's size, the pooling mode (:class:`~dynsparse.hdl.anisopool.PoolMode`)
        and whether the SPN runs (else both scales are 1.0, the fixed-kernel
        model); sampled with a map's first code.
    param_addr, param_data, param_write : In
        Parameter writes (:meth:`parameter_writes`): region (two top bits of
        ``param_addr``) and index; weights int8, biases ``bias_bits`` signed,
        constants ``multiplier | shift << 16``.
    errors : Out(EncodingLoopErrors)
        Sticky, cleared by ``clear_errors``. A map with a framing or size error
        is dropped whole and produces no words; the next map that starts with
        ``first`` is exact.
    busy : Out(1)

    Timing: :meth:`sequence_cycles` from a map's first code accepted to its
    last word offered, with the output always taken; one map at a time.
    """

    def __init__(self, *, channels=8, spn_channels=4, kernel_size=3, max_height=HEIGHT, max_length=64,
                 iterations=2, bias_bits=32, base_h=3, base_l=5, k_h_min=1, k_h_max=5, k_l_min=1, k_l_max=9):
        self._channels = check_int("channel count", channels, minimum=1, maximum=8)
        self._spn_channels = check_int("SPN channel count", spn_channels, minimum=1, maximum=8)
        self._kernel_size = check_int("kernel size", kernel_size, minimum=1, maximum=7, odd=True)
        self._max_height = check_int("maximum height", max_height, minimum=1, maximum=16)
        self._max_length = check_int("maximum length", max_length, minimum=1, maximum=64)
        self._iterations = check_int("iteration count", iterations, minimum=1, maximum=4)
        self._bias_bits = check_int("bias width", bias_bits, minimum=8, maximum=32)
        self._pool = AnisoPool(max_height=max_height, max_length=max_length, base_h=base_h, base_l=base_l,
                               k_h_min=k_h_min, k_h_max=k_h_max, k_l_min=k_l_min, k_l_max=k_l_max)
        f, s, k = channels, spn_channels, kernel_size
        k2 = k * k
        bases = [0, f * k2, f * k2 + f * f * k2]
        bases += [bases[2] + s * f * k2, bases[2] + s * f * k2 + s * s * k2]
        self._head_base = bases[4] + 2 * s * k2
        self._weight_count = self._head_base + f
        self._bias_row = f + 2 * s + 2
        self._head_bias = iterations * self._bias_row
        # conv0 and conv1: M0 (x, or the pooled maps) → M1; spn1: M1 → M0 [0, S); spn2: M0 [0, S) → M0 [S, 2S);
        # spn3: M0 [S, 2S) → the two sums
        self._layers = [
            Layer(1, f, 0, 0, 1, 0, bases[0], 0, 0, following=2),
            Layer(f, f, 0, 0, 1, 0, bases[1], 0, 0, following=2),
            Layer(f, s, 1, 0, 0, 0, bases[2], f, 1, following=3),
            Layer(s, s, 0, 0, 0, s, bases[3], f + s, 2, following=4),
            Layer(s, 2, 0, s, None, 0, bases[4], f + 2 * s, 3),
        ]
        self._c_bits = max(1, (max(f, 2 * s) - 1).bit_length())
        self._index_bits = max(self._weight_count, self._head_bias + 1, iterations * len(_CONSTANTS)).bit_length()
        super().__init__({
            "i_stream":    In(stream.Signature(frame_layout(signed(8)))),
            "o_stream":    Out(stream.Signature(frame_layout(signed(32)))),
            "height":      In(range(max_height + 1), init=min(HEIGHT, max_height)),
            "length":      In(range(max_length + 1), init=max_length),
            "mode":        In(PoolMode),
            "adaptive":    In(1, init=1),
            "param_addr":  In(self._index_bits + 2),
            "param_data":  In(32),
            "param_write": In(1),
            "errors":      Out(EncodingLoopErrors),
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
    pool         = property(lambda self: self._pool, doc="The :class:`AnisoPool` inside (its parameters).")

    @property
    def words(self):
        """Words given out per map: ``T + F + 1``."""
        return self._iterations + self._channels + 1

    def _engine(self):
        return LayerEngine(self._layers, kernel_size=self._kernel_size, max_height=self._max_height,
                           max_length=self._max_length, channel_bits=self._c_bits, bias_bits=self._bias_bits,
                           bias_row=self._bias_row, constant_row=len(_CONSTANTS), scale_constant=4,
                           iterations=self._iterations)

    @property
    def accumulator_width(self):
        """Signed bits of the layers' accumulator: ``max(C_in) · K² · 127 · 128`` plus the largest bias."""
        return self._engine().accumulator_width

    #: Cycles an iteration adds to its engine run and pooling (the engine's start register, the
    #: turn into the pooling, the first memory read), and the head's beyond its ``F`` multiplies.
    _ITERATION, _HEAD = 3, 2

    def sequence_cycles(self, height, length, kernel_sizes, *, adaptive=True):
        """Cycles from a map's first code accepted to its last word offered (output taken).

        ``kernel_sizes`` are the ``(k_h, k_l)`` of every iteration. The sum of
        ``H·L`` to load; per iteration the layer engine's run (the convolution,
        then the SPN when ``adaptive``), ``F`` maps through the pooling
        (:meth:`AnisoPool.map_cycles` each; a map is read out of memory while
        the one before is pooled) and 3; the head's ``F`` multiplies and 2; one
        cycle per word.
        """
        engine, area = self._engine(), height * length
        cycles = area
        for t, (k_h, k_l) in enumerate(kernel_sizes):
            chain = [0 if t == 0 else 1] + ([2, 3, 4] if adaptive else [])
            cycles += engine.work_cycles(chain, height, length) + self._ITERATION
            cycles += self._channels * self._pool.map_cycles(height, length, k_h, k_l)
        return cycles + self._channels + self._HEAD + self.words

    def parameter_writes(self, export):
        """``[(param_addr, param_data), ...]`` loading an export of :func:`dynsparse.golden.spn.quantise`.

        A fixed-kernel export (``adaptive = 0``) loads no SPN parameters (run
        it with ``adaptive`` low). Raises :class:`ValueError` when the export's
        geometry differs from the block's or a bias does not fit ``bias_bits``.
        """
        import numpy as np
        from ..golden.spn import check_export
        config = check_export(export)
        pool = self._pool
        for name, have, want in (("channel count", config.channels, self._channels),
                                 ("SPN channel count", config.spn_channels, self._spn_channels),
                                 ("kernel size", config.conv_kernel, self._kernel_size),
                                 ("iteration count", config.iterations, self._iterations),
                                 ("base pooling height", config.base_h, pool.base_h),
                                 ("base pooling length", config.base_l, pool.base_l),
                                 ("pooling height range", config.k_h_range, pool.k_h_range),
                                 ("pooling length range", config.k_l_range, pool.k_l_range)):
            if have != want:
                raise ValueError(f"export {name} is {have}, the block's is {want}")
        if config.length > self._max_length:
            raise ValueError(f"export length {config.length} exceeds the block's maximum {self._max_length}")
        adaptive = bool(int(export["adaptive"]))
        ib = self._index_bits
        names = ("conv0_w", "conv1_w") + (("spn1_w", "spn2_w", "spn3_w") if adaptive else ())
        writes = []
        base = 0
        for name in names:
            values = np.asarray(export[name], np.int64).ravel()
            if name == "spn1_w":
                base = self._layers[2].weight_base
            writes += [((REGION_WEIGHTS << ib) | (base + i), int(w) & 0xFF) for i, w in enumerate(values)]
            base += len(values)
        writes += [((REGION_WEIGHTS << ib) | (self._head_base + i), int(w) & 0xFF)
                   for i, w in enumerate(np.asarray(export["head_w"], np.int64))]
        limit = 1 << (self._bias_bits - 1)

        def bias(index, value, what):
            if not -limit < value < limit:
                raise ValueError(f"export bias {what} = {value} does not fit {self._bias_bits} signed bits")
            return ((REGION_BIASES << ib) | index, value & 0xFFFFFFFF)

        for t in range(self._iterations):
            row = list(np.asarray(export["conv_b"], np.int64)[t])
            if adaptive:
                row += [v for n in ("spn1_b", "spn2_b", "spn3_b") for v in np.asarray(export[n], np.int64)[t]]
            writes += [bias(t * self._bias_row + j, int(b), f"of iteration {t}") for j, b in enumerate(row)]
            for j, name in enumerate(_CONSTANTS if adaptive else _CONSTANTS[:1]):
                m, sh = int(export[name + "_m"][t]), int(export[name + "_s"][t])
                writes.append(((REGION_REQUANT << ib) | (t * len(_CONSTANTS) + j), m | sh << 16))
        writes.append(bias(self._head_bias, int(export["head_b"][0]), "of the head"))
        return writes

    def elaborate(self, platform):
        m = Module()
        f, t_max = self._channels, self._iterations
        c_bits, ib = self._c_bits, self._index_bits
        engine = self._engine()
        y_bits, x_bits = engine.y_bits, engine.x_bits
        m.submodules.pool = pool = self._pool

        # -------- errors ---------------------------------------------------------------------------
        raised = Signal(EncodingLoopErrors)
        # The pooling's flags go straight into the register, not through ``raised.pool``: that
        # combinational assignment of a value that never changes becomes an ``always @*`` block
        # Icarus never runs, and the flag would read X.
        pool_offset = data.Layout.cast(EncodingLoopErrors)["pool"].offset
        flags = Cat(raised.as_value()[:pool_offset], pool.errors.as_value().any())
        with m.If(self.clear_errors):
            m.d.sync += self.errors.eq(flags)
        with m.Else():
            m.d.sync += self.errors.eq(self.errors.as_value() | flags)
        m.d.comb += pool.clear_errors.eq(self.clear_errors)

        # -------- parameters -------------------------------------------------------------------------
        w_rd, b_rd, c_rd = parameter_memories(
            m, weights=self._weight_count, biases=self._head_bias + 1, constants=t_max * len(_CONSTANTS),
            bias_bits=self._bias_bits, index_bits=ib, addr=self.param_addr, data=self.param_data,
            write=self.param_write, bad=raised.bad_param)

        # -------- the maps ---------------------------------------------------------------------------
        map_bits = y_bits + x_bits
        mem0 = Memory(shape=signed(8), depth=max(f, 2 * self._spn_channels) << map_bits, init=[])
        mem1 = Memory(shape=unsigned(7), depth=f << map_bits, init=[])
        m.submodules.mem0, m.submodules.mem1 = mem0, mem1
        mem0_w, mem0_r = mem0.write_port(), mem0.read_port(domain="sync")
        mem1_w, mem1_r = mem1.write_port(), mem1.read_port(domain="sync")

        # -------- the sequence of a map ------------------------------------------------------------------
        IDLE, RUN, POOL, HEAD, OUTPUT = range(5)
        phase = Signal(range(5))
        iteration = Signal(range(max(2, t_max)))
        adaptive = Signal()
        mode = Signal(PoolMode)
        height, length = Signal(range(self._max_height + 1)), Signal(range(self._max_length + 1))

        # load x into M0 channel 0
        payload = self.i_stream.payload
        loader = MapLoader(channels=1, max_height=self._max_height, max_length=self._max_length,
                           channel_bits=c_bits)
        size_ok = ((self.height != 0) & (self.height <= self._max_height) & (self.length != 0) &
                   (self.length <= self._max_length))
        loader.build(m, i_stream=self.i_stream, enable=phase == IDLE, size_ok=size_ok, height=self.height,
                     length=self.length)
        code = Mux(payload.data == -128, -127, payload.data)
        m.d.comb += [raised.misframed.eq(loader.misframed), raised.bad_size.eq(loader.bad_size)]
        with m.If(self.i_stream.valid & (phase == IDLE)):
            m.d.comb += raised.bad_value.eq(payload.data == -128)
        with m.If(loader.begin):
            m.d.sync += [adaptive.eq(self.adaptive), mode.eq(self.mode), height.eq(self.height),
                         length.eq(self.length)]

        # the layers: conv_t, then the SPN when adaptive
        m.d.comb += [
            engine.iteration.eq(iteration), engine.height_m1.eq(loader.height_m1),
            engine.length_m1.eq(loader.length_m1), engine.single.eq(~adaptive),
            c_rd.addr.eq(engine.constant_addr),
        ]
        engine.build(m, map_data=[mem0_r.data, mem1_r.data], weight_data=w_rd.data, bias_data=b_rd.data,
                     constant_data=c_rd.data)
        code_h, code_l = Signal(8, init=SCALE_ONE), Signal(8, init=SCALE_ONE)
        with m.If(engine.codes_valid):
            m.d.sync += [code_h.eq(engine.code_h), code_l.eq(engine.code_l)]
        with m.If(loader.done):
            m.d.sync += [phase.eq(RUN), iteration.eq(0), engine.start.eq(1), engine.start_layer.eq(0),
                         code_h.eq(SCALE_ONE), code_l.eq(SCALE_ONE)]
        with m.Else():
            m.d.sync += engine.start.eq(0)

        # the pooling: M1 channel by channel into the pool, its results into M0
        feeding = Signal()
        fc, fy, fx = Signal(3), Signal(y_bits), Signal(x_bits)
        f_valid, f_first, f_last = pool.i_stream.valid, pool.i_stream.payload.first, pool.i_stream.payload.last
        read_en = ~f_valid | pool.i_stream.ready
        map_end = (fy == loader.height_m1) & (fx == loader.length_m1)
        with m.If(read_en):
            m.d.sync += f_valid.eq(feeding)
            with m.If(feeding):
                m.d.sync += [f_first.eq((fy == 0) & (fx == 0)), f_last.eq(map_end)]
                with m.If(fx != loader.length_m1):
                    m.d.sync += fx.eq(fx + 1)
                with m.Elif(fy != loader.height_m1):
                    m.d.sync += [fx.eq(0), fy.eq(fy + 1)]
                with m.Else():
                    m.d.sync += [fx.eq(0), fy.eq(0), fc.eq(fc + 1)]
                    with m.If(fc == f - 1):
                        m.d.sync += feeding.eq(0)
        m.d.comb += [
            pool.i_stream.payload.data.eq(mem1_r.data),
            pool.scale_h.eq(code_h), pool.scale_l.eq(code_l), pool.mode.eq(mode),
            pool.height.eq(height), pool.length.eq(length),
            pool.o_stream.ready.eq(1),
            mem1_r.addr.eq(Mux(phase == POOL, Cat(fx, fy, fc[:c_bits]), engine.read_addr)),
            mem1_r.en.eq(Mux(phase == POOL, read_en, 1)),
            mem0_r.addr.eq(engine.read_addr),
        ]
        # the collector: pooled values into M0, their sums at the last iteration
        cc, cy, cx = Signal(3), Signal(y_bits), Signal(x_bits)
        last_iteration = iteration == t_max - 1
        area_max = self._max_height * self._max_length * 127
        g = [Signal(range(area_max + 1), name=f"g{c}") for c in range(f)]
        g_acc = Signal(range(area_max + 1))
        pooled = pool.o_stream.valid
        pooled_value = pool.o_stream.payload.data[:7]
        with m.If(pooled):
            with m.If(cx != loader.length_m1):
                m.d.sync += [cx.eq(cx + 1), g_acc.eq(g_acc + pooled_value)]
            with m.Elif(cy != loader.height_m1):
                m.d.sync += [cx.eq(0), cy.eq(cy + 1), g_acc.eq(g_acc + pooled_value)]
            with m.Else():
                m.d.sync += [cx.eq(0), cy.eq(0), cc.eq(cc + 1), g_acc.eq(0)]
                with m.If(last_iteration):
                    m.d.sync += [g[-1].eq(g_acc + pooled_value), *(g[c].eq(g[c + 1]) for c in range(f - 1))]
        m.d.comb += [
            mem0_w.addr.eq(Mux(phase == IDLE, loader.addr, Mux(phase == POOL, Cat(cx, cy, cc[:c_bits]),
                                                                engine.write_addr))),
            mem0_w.data.eq(Mux(phase == IDLE, code, Mux(phase == POOL, pooled_value, engine.write_data))),
            mem0_w.en.eq(Mux(phase == IDLE, loader.write, Mux(phase == POOL, pooled,
                                                               engine.write_en & (engine.write_target == 0)))),
            mem1_w.addr.eq(engine.write_addr), mem1_w.data.eq(engine.write_data),
            mem1_w.en.eq(engine.write_en & (engine.write_target == 1)),
        ]

        # per iteration: scale codes and window sizes, shifted in at the end of its pooling
        iteration_words = [Signal(32, name=f"iteration_word{t}") for t in range(t_max)]
        pool_done = pooled & (cc == f - 1) & (cy == loader.height_m1) & (cx == loader.length_m1)
        with m.Switch(phase):
            with m.Case(RUN):
                with m.If(engine.done):
                    m.d.sync += [phase.eq(POOL), feeding.eq(1), fc.eq(0), fy.eq(0), fx.eq(0),
                                 cc.eq(0), cy.eq(0), cx.eq(0), g_acc.eq(0)]
            with m.Case(POOL):
                with m.If(pool_done):
                    word = Cat(code_h, code_l, pool.k_h, C(0, 8 - len(pool.k_h)), pool.k_l, C(0, 8 - len(pool.k_l)))
                    m.d.sync += [iteration_words[-1].eq(word),
                                 *(iteration_words[t].eq(iteration_words[t + 1]) for t in range(t_max - 1))]
                    with m.If(last_iteration):
                        m.d.sync += phase.eq(HEAD)
                    with m.Else():
                        m.d.sync += [phase.eq(RUN), iteration.eq(iteration + 1), engine.start.eq(1),
                                     engine.start_layer.eq(1)]

        # the head: logit = head_b + Σ head[c] · g[c], the g rotated through g[0]
        head_index = Signal(range(f + 2))
        logit = Signal(signed(32))
        head_valid = Signal()
        m.d.comb += [
            w_rd.addr.eq(Mux(phase == HEAD, self._head_base + head_index, engine.weight_addr)),
            b_rd.addr.eq(Mux(phase == HEAD, self._head_bias, engine.bias_addr)),
        ]
        with m.If(phase != HEAD):
            m.d.sync += [head_index.eq(0), head_valid.eq(0)]
        with m.Else():
            m.d.sync += [head_index.eq(head_index + 1), head_valid.eq(head_index < f)]
            with m.If(head_valid):
                m.d.sync += [logit.eq(Mux(head_index == 1, b_rd.data, logit) + w_rd.data * g[0]),
                             g[-1].eq(g[0]), *(g[c].eq(g[c + 1]) for c in range(f - 1))]
            with m.If(head_index == f + 1):
                m.d.sync += phase.eq(OUTPUT)

        # the words: iteration words, then g, then the logit, shifted out
        out_index = Signal(range(self.words + 1))
        o_payload = self.o_stream.payload
        o_free = ~self.o_stream.valid | self.o_stream.ready
        with m.If(self.o_stream.valid & self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)
        with m.If(phase != OUTPUT):
            m.d.sync += out_index.eq(0)
        with m.Elif(o_free):
            with m.If(out_index == self.words):
                m.d.sync += phase.eq(IDLE)
            with m.Else():
                m.d.sync += [
                    self.o_stream.valid.eq(1), out_index.eq(out_index + 1),
                    o_payload.first.eq(out_index == 0), o_payload.last.eq(out_index == self.words - 1),
                    o_payload.data.eq(Mux(out_index < t_max, iteration_words[0],
                                          Mux(out_index < t_max + f, g[0], logit))),
                ]
                with m.If(out_index < t_max):
                    m.d.sync += [iteration_words[t].eq(iteration_words[t + 1]) for t in range(t_max - 1)]
                with m.Elif(out_index < t_max + f):
                    m.d.sync += [g[c].eq(g[c + 1]) for c in range(f - 1)]

        m.d.comb += self.busy.eq((phase != IDLE) | loader.loading | self.o_stream.valid)
        return m
