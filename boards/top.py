"""Board tops: a pipeline behind a UART host link.

:class:`DensityBoard` (the density map) and :class:`ConvBoard` (the sparse
convolution engine) are whole designs between the two UART pins; they are what
the simulated board tests drive (``sim/tb/tb_board.py``, ``sim/tb/tb_convboard.py``).
Both are a :class:`LinkBoard`: UART receiver and transmitter, host link and the
register slices between them, with the pipeline attached by the subclass.
:class:`BoardTop` puts one of them (``design``) on a board from amaranth-boards:
the platform's default clock and reset, its first UART, and an LED that lights
while a frame is in flight.
"""

from amaranth.hdl import Array, Cat, Const, Elaboratable, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out, connect

from ..golden.padmask import BANDS, mask_layout
from ..hdl.convpipe import SparseConvPipeline
from ..hdl.frame import check_int
from ..hdl.hostlink import HostLink, result_layout
from ..hdl.maskdecoder import byte_layout
from ..hdl.pipeline import DensityPipeline
from ..hdl.reconstructor import WeightReconstructor
from ..hdl.skid import StreamRegister
from ..hdl.uart import UARTReceiver, UARTTransmitter
from .protocol import RESULT_BYTES, Design, Register


__all__ = ["LinkBoard", "DensityBoard", "ConvBoard", "SPNBoard", "ResultSerializer", "BoardTop", "DESIGNS"]


class LinkBoard(wiring.Component):
    """UART pins, host link and register slices; subclasses attach a pipeline in :meth:`attach`.

    Parameters
    ----------
    clk_freq : int
        Clock frequency in Hz; sets the UART divisor and the host link's watchdog.
    baud : int
        UART bit rate; ``clk_freq / baud`` must be at least 4 and within 2 %.
    watchdog_ms : int
        Silence, in milliseconds, after which the host link abandons a command
        or completes an interrupted frame (see ``docs/protocol.md``).
    link_params : dict
        The :class:`~dynsparse.hdl.hostlink.HostLink`'s parameters (all but the timeout).

    Members
    -------
    uart_rx : In(1)
        From the host (idle high).
    uart_tx : Out(1)
        To the host (idle high).
    busy : Out(1)
        A frame is in the pipeline.
    """

    def __init__(self, *, clk_freq, baud, watchdog_ms, link_params):
        self._clk_freq = check_int("clock frequency", clk_freq, minimum=1)
        self._baud = check_int("baud rate", baud, minimum=1)
        check_int("watchdog", watchdog_ms, minimum=1)
        divisor = round(clk_freq / baud)
        if divisor < 4:
            raise ValueError(f"baud rate must be at most clock frequency / 4 = {clk_freq // 4}, not {baud}")
        if abs(clk_freq / divisor - baud) / baud > 0.02:
            raise ValueError(f"baud rate {baud} is more than 2 % away from what {clk_freq} Hz "
                             f"can make ({clk_freq / divisor:.0f})")
        self._divisor = divisor
        self.link = HostLink(timeout_cycles=max(16, clk_freq * watchdog_ms // 1000), **link_params)
        super().__init__({"uart_rx": In(1, init=1), "uart_tx": Out(1, init=1), "busy": Out(1)})

    divisor = property(lambda self: self._divisor)
    clk_freq = property(lambda self: self._clk_freq)

    def attach(self, m, link):
        """Add the pipeline to ``m`` and connect it to ``link`` (its pixel, result, register ports)."""
        raise NotImplementedError

    def elaborate(self, platform):
        m = Module()
        m.submodules.receiver = receiver = UARTReceiver(divisor=self._divisor)
        m.submodules.transmitter = transmitter = UARTTransmitter(divisor=self._divisor)
        m.submodules.link = link = self.link
        m.d.comb += [
            receiver.rx.eq(self.uart_rx),
            self.uart_tx.eq(transmitter.tx),
            link.uart_errors.eq(receiver.error | (receiver.overrun << 1)),
        ]
        # Register slices on both byte streams too: the transmitter's `ready` comes from its bit
        # timer, and the host link's `rx.ready` from its command state machine.
        m.submodules.from_uart = from_uart = StreamRegister(unsigned(8))
        m.submodules.to_uart = to_uart = StreamRegister(unsigned(8))
        connect(m, receiver.o_stream, from_uart.i_stream)
        connect(m, from_uart.o_stream, link.rx)
        connect(m, link.tx, to_uart.i_stream)
        connect(m, to_uart.o_stream, transmitter.i_stream)
        self.attach(m, link)
        return m


def _pixels_into(m, link, i_stream):
    """Pixel bytes from ``link`` into a one-channel pipeline input, through a register slice: the
    host link's command logic and the pipeline's control logic each get a whole clock period."""
    m.submodules.to_pipeline = to_pipeline = StreamRegister(i_stream.payload.shape())
    m.d.comb += [
        to_pipeline.i_stream.valid.eq(link.pixel.valid),
        to_pipeline.i_stream.payload.data[0].eq(link.pixel.payload.data),
        to_pipeline.i_stream.payload.first.eq(link.pixel.payload.first),
        to_pipeline.i_stream.payload.last.eq(link.pixel.payload.last),
        link.pixel.ready.eq(to_pipeline.i_stream.ready),
    ]
    connect(m, to_pipeline.o_stream, i_stream)


class DensityBoard(LinkBoard):
    """UART in, UART out: host link and density pipeline.

    Parameters
    ----------
    clk_freq, baud, watchdog_ms
        As :class:`LinkBoard`.
    kernel_size, max_width, max_height : int
        Passed to :class:`~dynsparse.hdl.pipeline.DensityPipeline` (one channel).
    """

    def __init__(self, *, clk_freq, baud=115200, kernel_size=3, max_width=256, max_height=256,
                 watchdog_ms=100):
        self.pipeline = DensityPipeline(kernel_size=kernel_size, channels=1,
                                        max_width=max_width, max_height=max_height)
        super().__init__(clk_freq=clk_freq, baud=baud, watchdog_ms=watchdog_ms, link_params=dict(
            channels=1, max_width=max_width, max_height=max_height,
            min_width=self.pipeline.min_width, min_height=kernel_size // 2 + 1,
            design=Design.DENSITY, kernel_size=kernel_size, results_per_pixel=1,
            result_bytes=RESULT_BYTES))

    def attach(self, m, link):
        m.submodules.pipeline = pipeline = self.pipeline
        _pixels_into(m, link, pipeline.i_stream)
        # Densities (UQ1.8, 9 bits) back as 16-bit results, through a register slice.
        m.submodules.to_link = to_link = StreamRegister(link.result.payload.shape())
        m.d.comb += [
            to_link.i_stream.valid.eq(pipeline.o_stream.valid),
            to_link.i_stream.payload.data.eq(pipeline.o_stream.payload.data[0]),
            to_link.i_stream.payload.last.eq(pipeline.o_stream.payload.last),
            pipeline.o_stream.ready.eq(to_link.i_stream.ready),
        ]
        connect(m, to_link.o_stream, link.result)
        m.d.comb += [
            pipeline.width.eq(link.width),
            pipeline.height.eq(link.height),
            pipeline.inv_ref_var.eq(link.inv_ref_var),
            pipeline.clear_errors.eq(link.clear_errors),
            link.pipeline_errors.eq(pipeline.errors.as_value()),
            self.busy.eq(pipeline.busy),
        ]


class ResultSerializer(wiring.Component):
    """One word of ``count`` bytes in, ``count`` results out (byte 0 first), from registers only.

    ``i_stream.ready``, ``o_stream.valid`` and ``o_stream.payload`` are flip-flops,
    so it doubles as a register slice; a word is taken when the previous one has
    left completely (one idle cycle between words).

    Members
    -------
    i_stream : In(stream.Signature(unsigned(8 · count)))
    o_stream : Out(stream.Signature(result_layout))
        ``data`` is the byte, zero-extended; ``last`` is 1 on the last byte of a word.
    """

    def __init__(self, count):
        self._count = check_int("byte count", count, minimum=1)
        super().__init__({
            "i_stream": In(stream.Signature(unsigned(8 * count))),
            "o_stream": Out(stream.Signature(result_layout)),
        })

    def elaborate(self, platform):
        m = Module()
        count = self._count
        word = Signal(8 * count)
        left = Signal(range(count + 1))          # bytes still to send, 0 when empty
        m.d.comb += [
            self.i_stream.ready.eq(left == 0),
            self.o_stream.valid.eq(left != 0),
            self.o_stream.payload.data.eq(word[:8]),
            self.o_stream.payload.last.eq(left == 1),
        ]
        with m.If(self.i_stream.valid & (left == 0)):
            m.d.sync += [word.eq(self.i_stream.payload), left.eq(count)]
        with m.Elif(self.o_stream.valid & self.o_stream.ready):
            m.d.sync += [word.eq(word >> 8), left.eq(left - 1)]
        return m


class ConvBoard(LinkBoard):
    """UART in, UART out: host link and the sparse convolution engine (:class:`SparseConvPipeline`).

    A gray image in, ``out_channels`` requantised int8 results per pixel out;
    weights, threshold, requantisation, dense mode and padding mask are design
    registers of the host link (``docs/protocol.md``, *Convolution design*), the
    engine's counters (per frame: cleared when a frame starts) and error flags
    are read-only registers. Weights also arrive compressed: WEIGHT_STREAM
    packets feed a :class:`~dynsparse.hdl.reconstructor.WeightReconstructor`
    (decoder, CRC and fault checks, interpolation of the dropped weights), and a
    good stream whose tensor is ``C_out × K²`` (matrix view) is written into
    the engine's weights, flat order, as the interpolator streams it.

    Parameters
    ----------
    clk_freq, baud, watchdog_ms
        As :class:`LinkBoard`.
    kernel_size, out_channels, lanes, max_width, max_height, block_size, tile_size
        As :class:`~dynsparse.hdl.convpipe.SparseConvPipeline` (one input
        channel, requantised results, density neighbourhood 3).
    """

    def __init__(self, *, clk_freq, baud=115200, kernel_size=3, out_channels=4, lanes=2,
                 max_width=64, max_height=64, block_size=4, tile_size=1, watchdog_ms=100):
        self.pipeline = SparseConvPipeline(kernel_size=kernel_size, in_channels=1,
                                           out_channels=out_channels, lanes=lanes,
                                           max_width=max_width, max_height=max_height,
                                           block_size=block_size, requantize=True, tile_size=tile_size)
        self._block_size = block_size
        super().__init__(clk_freq=clk_freq, baud=baud, watchdog_ms=watchdog_ms, link_params=dict(
            channels=1, max_width=max_width, max_height=max_height,
            min_width=self.pipeline.min_width, min_height=self.pipeline.min_height,
            design=Design.CONV, kernel_size=kernel_size, results_per_pixel=out_channels,
            result_bytes=1, weight_stream=True))
        # (after the link's checks of the clock and watchdog) the decoder's watchdog: a stream whose
        # next packet does not come within the link's own watchdog is abandoned (TRUNCATED), so the
        # next stream starts clean
        self.reconstructor = WeightReconstructor(max_entries=max(8, self.weight_count),
                                                 timeout_cycles=max(16, clk_freq * watchdog_ms // 1000))

    weight_count = property(lambda self: self.pipeline.out_channels * self.pipeline.kernel_size ** 2,
                            doc="Weights: C_out × C_in × K × K (C_in = 1).")

    @property
    def mask_band_sizes(self):
        """Blocks of each padding band (top, bottom, left, right) for the largest frame."""
        layout = mask_layout(self.pipeline.max_width, self.pipeline.max_height,
                             kernel_size=self.pipeline.kernel_size, block_size=self._block_size)
        return tuple(layout[band][1] for band in BANDS)

    def attach(self, m, link):
        m.submodules.pipeline = pipeline = self.pipeline
        c_out = pipeline.out_channels
        taps = pipeline.kernel_size ** 2                  # per output channel (C_in = 1)
        _pixels_into(m, link, pipeline.i_stream)

        m.submodules.serializer = serializer = ResultSerializer(c_out)
        m.d.comb += [
            serializer.i_stream.valid.eq(pipeline.o_stream.valid),
            serializer.i_stream.payload.eq(pipeline.o_stream.payload.data.as_value()),
            pipeline.o_stream.ready.eq(serializer.i_stream.ready),
        ]
        connect(m, serializer.o_stream, link.result)

        # -------- design registers ------------------------------------------------------------
        weight_addr = Signal(range(self.weight_count))        # WEIGHT_ADDR, flat
        weight_co = Signal(range(c_out))                      # the same as (co, tap)
        weight_tap = Signal(range(taps))
        threshold = Signal(9)
        multiplier = Signal(16)
        shift = Signal(range(48))
        dense = Signal()
        address, value = link.reg_addr, link.reg_value

        # WEIGHT_ADDR's (co, tap) for the value being written: co = #{j ≥ 1 : value ≥ j·taps},
        # by comparisons with constants (no divider), a cycle later the tap by one subtraction.
        # The value is complete a byte time before the write executes.
        pre_co = Signal.like(weight_co)
        pre_tap = Signal.like(weight_tap)
        co_base = Array(Const(co * taps, range(self.weight_count)) for co in range(c_out))
        m.d.sync += [
            pre_co.eq(sum((value >= j * taps for j in range(1, c_out)), Const(0, pre_co.shape()))),
            pre_tap.eq(value - co_base[pre_co]),
        ]

        band_sizes = self.mask_band_sizes
        mask_index = value[0:16]
        mask_band = value[16:18]
        mask_value = value[24]
        mask_ok = (value & ~0x0103_FFFF) == 0
        index_ok = 0
        for band, size in enumerate(band_sizes):
            index_ok = index_ok | ((mask_band == band) & (mask_index < size))

        # -------- compressed weights: WEIGHT_STREAM bytes → reconstructor → weight memory ------
        m.submodules.reconstructor = rec = self.reconstructor
        m.submodules.to_decoder = to_decoder = StreamRegister(byte_layout)
        connect(m, link.stream, to_decoder.i_stream)
        connect(m, to_decoder.o_stream, rec.i_stream)
        # The tensor must be C_out × K² (matrix view) to be loaded; the interpolator's first
        # weight comes cycles after the commit that changes `tensor`, so a registered check is current.
        shape_ok = Signal()
        m.d.sync += shape_ok.eq((rec.tensor.rows == c_out) & (rec.tensor.cols == taps))
        stream_co = Signal(range(c_out))                      # where the next rebuilt weight goes
        stream_tap = Signal(range(taps))
        register_weight = Signal()                            # a WEIGHT_DATA write this cycle
        stream_take = rec.o_stream.valid & ~register_weight   # the register write goes first
        stream_write = stream_take & shape_ok
        bad_shape = Signal()
        busy_decoding = Signal()
        loads = Signal(32)
        m.d.comb += rec.o_stream.ready.eq(~register_weight)
        m.d.sync += busy_decoding.eq(rec.busy | to_decoder.o_stream.valid)
        with m.If(stream_take):
            m.d.sync += stream_tap.eq(stream_tap + 1)
            with m.If(stream_tap == taps - 1):
                m.d.sync += [stream_tap.eq(0), stream_co.eq(stream_co + 1)]
            with m.If(rec.o_stream.payload.last):
                m.d.sync += [stream_tap.eq(0), stream_co.eq(0), bad_shape.eq(~shape_ok)]
                with m.If(shape_ok):
                    m.d.sync += loads.eq(loads + 1)
        weight_status = Cat(rec.error, bad_shape, busy_decoding)

        counters = {Register.CONV_CYCLES: pipeline.cycles, Register.PERFORMED: pipeline.performed,
                    Register.SKIPPED_PRUNED: pipeline.skipped_pruned,
                    Register.SKIPPED_ZERO: pipeline.skipped_zero,
                    Register.SKIPPED_PADDING: pipeline.skipped_padding,
                    Register.ENGINE_ERRORS: pipeline.errors.as_value(),
                    Register.WEIGHT_STREAM_STATUS: weight_status,
                    Register.WEIGHT_STREAMS_OK: rec.streams_ok,
                    Register.WEIGHT_STREAMS_BAD: rec.streams_bad,
                    Register.WEIGHT_LOADS: loads}
        int8_ok = ((value[7:] == 0) | (value[7:] == (1 << 25) - 1)) & (value != 0xFFFF_FF80)
        with m.Switch(address):
            for register, readable, check, current in (
                    (Register.WEIGHT_ADDR, True, value < self.weight_count, weight_addr),
                    (Register.WEIGHT_DATA, False, int8_ok, None),
                    (Register.PRUNE_THRESHOLD, True, value < 512, threshold),
                    (Register.REQUANT_MULTIPLIER, True, value < 1 << 16, multiplier),
                    (Register.REQUANT_SHIFT, True, value < 48, shift),
                    (Register.DENSE, True, value < 2, dense),
                    (Register.PAD_MASK, False, mask_ok & index_ok, None)):
                with m.Case(register):
                    m.d.comb += [link.reg_writable.eq(1), link.reg_value_ok.eq(check)]
                    if readable:
                        m.d.comb += [link.reg_readable.eq(1), link.reg_rdata.eq(current)]
            for register, source in counters.items():
                with m.Case(register):
                    m.d.comb += [link.reg_readable.eq(1), link.reg_rdata.eq(source)]

        # Writes take effect a cycle after the host link executes them (registered strobes).
        write = Signal()
        write_addr = Signal(8)
        write_value = Signal(32)
        m.d.sync += [write.eq(link.reg_write), write_addr.eq(address), write_value.eq(value)]
        weight_write = Signal()
        mask_write = Signal()
        with m.If(write):
            with m.Switch(write_addr):
                with m.Case(Register.WEIGHT_ADDR):
                    m.d.sync += [weight_addr.eq(write_value), weight_co.eq(pre_co), weight_tap.eq(pre_tap)]
                with m.Case(Register.WEIGHT_DATA):
                    m.d.comb += weight_write.eq(1)
                    # auto-increment in C_out × C_in × K × K order, back to 0 after the last weight
                    last_tap = weight_tap == taps - 1
                    m.d.sync += [weight_addr.eq(weight_addr + 1), weight_tap.eq(weight_tap + 1)]
                    with m.If(last_tap):
                        m.d.sync += [weight_tap.eq(0), weight_co.eq(weight_co + 1)]
                        with m.If(weight_co == c_out - 1):
                            m.d.sync += [weight_co.eq(0), weight_addr.eq(0)]
                with m.Case(Register.PRUNE_THRESHOLD):
                    m.d.sync += threshold.eq(write_value)
                with m.Case(Register.REQUANT_MULTIPLIER):
                    m.d.sync += multiplier.eq(write_value)
                with m.Case(Register.REQUANT_SHIFT):
                    m.d.sync += shift.eq(write_value)
                with m.Case(Register.DENSE):
                    m.d.sync += dense.eq(write_value[0])
                with m.Case(Register.PAD_MASK):
                    m.d.comb += mask_write.eq(1)
        clear_counters = Signal()
        m.d.sync += clear_counters.eq(link.frame_start)
        errors = pipeline.errors
        m.d.comb += [
            register_weight.eq(weight_write),
            pipeline.weight_addr.tap.eq(Mux(weight_write, weight_tap, stream_tap)),
            pipeline.weight_addr.co.eq(Mux(weight_write, weight_co, stream_co)),
            pipeline.weight_data.eq(Mux(weight_write, write_value[:8], rec.o_stream.payload.data)),
            pipeline.weight_write.eq(weight_write | stream_write),
            pipeline.mask_write.eq(mask_write),
            pipeline.mask_band.eq(write_value[16:18]),
            pipeline.mask_index.eq(write_value[0:16]),
            pipeline.mask_value.eq(write_value[24]),
            pipeline.prune_threshold.eq(threshold),
            pipeline.multiplier.eq(multiplier),
            pipeline.shift.eq(shift),
            pipeline.dense.eq(dense),
            pipeline.width.eq(link.width),
            pipeline.height.eq(link.height),
            pipeline.inv_ref_var.eq(link.inv_ref_var),
            pipeline.pad_mode.as_value().eq(link.pad_mode),
            pipeline.clear_errors.eq(link.clear_errors),
            pipeline.clear_counters.eq(clear_counters),
            # ERRORS bits 0-3: any window, scaler or engine error, bad frame size (ENGINE_ERRORS has each flag)
            link.pipeline_errors.eq(Cat(errors.frame.as_value().any(), errors.scaler.as_value().any(),
                                        errors.engine.as_value().any(), errors.bad_size)),
            self.busy.eq(pipeline.busy),
        ]


class SPNBoard(LinkBoard):
    """UART in, UART out: host link and the encoding loop (:class:`~dynsparse.hdl.spnloop.EncodingLoop`).

    RUN_FRAME takes one peptide map, ``H`` rows (HEIGHT) of ``L`` int8 codes
    (WIDTH), sent as bytes, and returns the loop's ``T + F + 1`` words, four
    bytes each, little-endian: per iteration the scale and window codes, the
    embedding ``g``, the logit (``docs/protocol.md``, *Encoding-loop design*).
    The model's parameters are written through SPN_PARAM_ADDR and
    SPN_PARAM_DATA (which advances the address); SPN_POOL_MAX and
    SPN_ADAPTIVE set the pooling mode and the fixed-kernel baseline;
    SPN_ERRORS and SPN_CYCLES (of the last map) are read-only.

    Parameters
    ----------
    clk_freq, baud, watchdog_ms
        As :class:`LinkBoard`.
    channels, spn_channels, kernel_size, max_length, iterations, bias_bits, base_h, base_l,
    k_h_min, k_h_max, k_l_min, k_l_max
        As :class:`~dynsparse.hdl.spnloop.EncodingLoop` (``max_height`` is the
        encoding's 8 property rows).
    """

    def __init__(self, *, clk_freq, baud=115200, channels=8, spn_channels=4, kernel_size=3, max_length=48,
                 iterations=2, bias_bits=32, base_h=3, base_l=5, k_h_min=1, k_h_max=5, k_l_min=1, k_l_max=9,
                 watchdog_ms=100):
        from ..golden.spn import HEIGHT
        from ..hdl.spnloop import EncodingLoop
        self.loop = EncodingLoop(channels=channels, spn_channels=spn_channels, kernel_size=kernel_size,
                                 max_height=HEIGHT, max_length=max_length, iterations=iterations,
                                 bias_bits=bias_bits, base_h=base_h, base_l=base_l, k_h_min=k_h_min,
                                 k_h_max=k_h_max, k_l_min=k_l_min, k_l_max=k_l_max)
        super().__init__(clk_freq=clk_freq, baud=baud, watchdog_ms=watchdog_ms, link_params=dict(
            channels=1, max_width=max_length, max_height=HEIGHT, design=Design.SPN, kernel_size=kernel_size,
            results_per_pixel=4 * self.loop.words, result_bytes=1, per_frame=True,
            pixel_buffer=max(2, 1 << (HEIGHT * max_length - 1).bit_length())))

    def attach(self, m, link):
        m.submodules.loop = loop = self.loop
        m.submodules.to_loop = to_loop = StreamRegister(loop.i_stream.payload.shape())
        m.d.comb += [
            to_loop.i_stream.valid.eq(link.pixel.valid),
            to_loop.i_stream.payload.data.eq(link.pixel.payload.data),     # the byte is an int8 code
            to_loop.i_stream.payload.first.eq(link.pixel.payload.first),
            to_loop.i_stream.payload.last.eq(link.pixel.payload.last),
            link.pixel.ready.eq(to_loop.i_stream.ready),
        ]
        connect(m, to_loop.o_stream, loop.i_stream)
        m.submodules.serializer = serializer = ResultSerializer(4)
        m.d.comb += [
            serializer.i_stream.valid.eq(loop.o_stream.valid),
            serializer.i_stream.payload.eq(loop.o_stream.payload.data),
            loop.o_stream.ready.eq(serializer.i_stream.ready),
        ]
        connect(m, serializer.o_stream, link.result)

        # -------- design registers ------------------------------------------------------------
        param_addr = Signal.like(loop.param_addr)
        pool_max = Signal()
        adaptive = Signal(init=1)
        cycles = Signal(32)                      # of the last map: from its first code to its last word
        counting = Signal()
        address, value = link.reg_addr, link.reg_value
        with m.Switch(address):
            for register, readable, check, current in (
                    (Register.SPN_PARAM_ADDR, True, value < 1 << len(param_addr), param_addr),
                    (Register.SPN_PARAM_DATA, False, 1, None),
                    (Register.SPN_POOL_MAX, True, value < 2, pool_max),
                    (Register.SPN_ADAPTIVE, True, value < 2, adaptive)):
                with m.Case(register):
                    m.d.comb += [link.reg_writable.eq(1), link.reg_value_ok.eq(check)]
                    if readable:
                        m.d.comb += [link.reg_readable.eq(1), link.reg_rdata.eq(current)]
            for register, source in ((Register.SPN_ERRORS, loop.errors.as_value()),
                                     (Register.SPN_CYCLES, cycles)):
                with m.Case(register):
                    m.d.comb += [link.reg_readable.eq(1), link.reg_rdata.eq(source)]

        # Writes take effect a cycle after the host link executes them (registered strobes).
        write = Signal()
        write_addr = Signal(8)
        write_value = Signal(32)
        m.d.sync += [write.eq(link.reg_write), write_addr.eq(address), write_value.eq(value),
                     loop.param_write.eq(0)]
        with m.If(write):
            with m.Switch(write_addr):
                with m.Case(Register.SPN_PARAM_ADDR):
                    m.d.sync += param_addr.eq(write_value)
                with m.Case(Register.SPN_PARAM_DATA):
                    m.d.sync += [loop.param_write.eq(1), loop.param_addr.eq(param_addr),
                                 loop.param_data.eq(write_value), param_addr.eq(param_addr + 1)]
                with m.Case(Register.SPN_POOL_MAX):
                    m.d.sync += pool_max.eq(write_value[0])
                with m.Case(Register.SPN_ADAPTIVE):
                    m.d.sync += adaptive.eq(write_value[0])
        with m.If(link.frame_start):
            m.d.sync += [cycles.eq(0), counting.eq(1)]
        with m.Elif(counting):
            m.d.sync += cycles.eq(cycles + 1)
            with m.If(loop.o_stream.valid & loop.o_stream.ready & loop.o_stream.payload.last):
                m.d.sync += counting.eq(0)
        m.d.comb += [
            loop.height.eq(link.height),
            loop.length.eq(link.width),
            loop.mode.eq(pool_max),
            loop.adaptive.eq(adaptive),
            loop.clear_errors.eq(link.clear_errors),
            link.pipeline_errors.eq(loop.errors.as_value()),
            self.busy.eq(loop.busy),
        ]


#: Board designs by name (``BoardTop(design=…)``, ``make bitstream ARGS="--design conv"``).
DESIGNS = {"density": DensityBoard, "conv": ConvBoard, "spn": SPNBoard}


class BoardTop(Elaboratable):
    """A board design (``design``: ``"density"`` or ``"conv"``) on an amaranth-boards platform
    (its default clock, first UART, first LED)."""

    def __init__(self, *, design="density", baud=115200, **board_params):
        if design not in DESIGNS:
            raise ValueError(f"design must be one of {', '.join(DESIGNS)}, not {design!r}")
        self._design = design
        self._baud = baud
        self._board_params = board_params

    def elaborate(self, platform):
        m = Module()
        clk_freq = int(platform.default_clk_frequency)
        m.submodules.board = board = DESIGNS[self._design](clk_freq=clk_freq, baud=self._baud,
                                                           **self._board_params)
        uart = platform.request("uart", 0)
        m.d.comb += [board.uart_rx.eq(uart.rx.i), uart.tx.o.eq(board.uart_tx)]
        resources = {name for name, _ in platform.resources}
        if "led" in resources:
            m.d.comb += platform.request("led", 0).o.eq(board.busy)
        if "esp32" in resources:
            # ULX3S: the ESP32's GPIO0 held high keeps it from resetting the board into its loader.
            esp32 = platform.request("esp32", 0, dir={"gpio0": "o"})
            m.d.comb += [esp32.gpio0.o.eq(1), esp32.en.o.eq(1)]
        return m
