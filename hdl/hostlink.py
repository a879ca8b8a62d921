"""Command processor between the UART byte streams and the pipeline (protocol version 2).

The protocol is specified byte by byte in ``docs/protocol.md``; its constants
come from :mod:`dynsparse.boards.protocol`, the host side, so that both ends
share one definition.
"""

from amaranth.hdl import C, Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..boards.protocol import (COMMAND_MAGIC, DEVICE_ID, DEVICE_MAGIC, PROTOCOL_VERSION,
                               REPLY_MAGIC, Command, Design, Register, Status)
from .frame import check_int, frame_layout
from .maskdecoder import byte_layout
from .skid import StreamFIFO


__all__ = ["HostLink", "pixel_byte_layout", "result_layout", "crc8_next", "one_hot"]


#: Payload of the ``pixel`` stream: one byte of one channel, frame markers.
pixel_byte_layout = frame_layout(unsigned(8))

#: Payload of the ``result`` stream: one result (sent as its low ``result_bytes`` bytes).
result_layout = data.StructLayout({"data": unsigned(16), "last": unsigned(1)})


def _crc8_step(value):
    for _ in range(8):
        value = ((value << 1) ^ 0x07) & 0xFF if value & 0x80 else (value << 1) & 0xFF
    return value


def crc8_next(crc, byte):
    """CRC-8/SMBUS (polynomial 0x07, no reflection) of ``crc`` extended by ``byte``, as logic.

    The byte step is linear over GF(2): output bit ``j`` is the parity of the
    input bits ``i`` of ``crc ^ byte`` whose unit vector sets bit ``j``.
    """
    value = crc ^ byte
    columns = [_crc8_step(1 << i) for i in range(8)]
    return Cat(*(Cat(*(value[i] for i in range(8) if columns[i] >> j & 1)).xor()
                 for j in range(8)))


#: The link's own register addresses; every other address is the design's.
_LINK_REGISTERS = (Register.ID, Register.WIDTH, Register.HEIGHT, Register.INV_REF_VAR, Register.PAD_MODE,
                   Register.CONTROL, Register.CYCLES, Register.FRAMES, Register.ERRORS,
                   Register.IGNORED_BYTES, Register.BAD_COMMANDS, Register.PIXEL_CREDIT)


def one_hot(fsm):
    """Ask Yosys to encode the state register of ``fsm`` (from ``with m.FSM() as fsm``, after
    the block) one-hot: each state's next-state logic then depends on a few flip-flops instead
    of a decoder of the whole state. Only a synthesis hint (``fsm_encoding``); the state
    register is reset by the domain's reset, as Yosys' recoding assumes.
    """
    state = getattr(fsm, "_data", {}).get("signal")
    if state is not None:
        state.attrs["fsm_encoding"] = "one-hot"


class HostLink(wiring.Component):
    """Registers, counters and frame transfer over a byte link.

    Commands arrive on ``rx`` and replies leave on ``tx`` as packets with a
    CRC-8. RUN_FRAME forwards ``width · height · channels`` pixel bytes from
    ``rx`` to ``pixel`` through a FIFO of ``pixel_buffer`` bytes, and sends
    ``width · height · results_per_pixel`` results from ``result`` back, each as
    ``result_bytes`` bytes, LSB first, then a trailer. A watchdog bounds every
    wait (see ``docs/protocol.md``, *Timeouts*). Register addresses that are
    not the link's own (``0x20`` and up, by convention) go to the design through
    the ``reg_*`` ports.

    Parameters
    ----------
    channels : int
        Pixel bytes per pixel, at least 1.
    results_per_pixel : int
        Results per pixel, 1 to 255; ``None`` (default): ``channels``.
    per_frame : bool
        ``results_per_pixel`` results per *frame*, whatever its size (a design
        that reduces a frame to a few values, like the encoding loop).
    result_bytes : int
        Bytes per result on the wire, 1 or 2.
    design : int
        What the board computes, byte 5 of the PING reply (:class:`~dynsparse.boards.protocol.Design`).
    kernel_size : int
        Kernel size reported in the PING reply, 1 to 255.
    max_width, max_height : int
        Largest frame, at least 1 each.
    min_width, min_height : int
        Smallest frame the pipeline accepts, 1 to ``max_…``; smaller frames get
        BAD_FRAME_SIZE instead of a pipeline that drops them (and a timeout).
    timeout_cycles : int
        Cycles of silence, at least 16, after which a command packet is
        dropped or a frame's missing pixels are replaced with zeros; results
        missing for four times as long are replaced with zeros.
    weight_stream : bool
        Take WEIGHT_STREAM packets: their bytes leave on ``stream`` once the
        packet's CRC has been checked (a 256-byte block RAM holds the packet).
        Without it WEIGHT_STREAM is an unknown command and ``stream`` never
        offers a byte.
    pixel_buffer : int
        Depth of the pixel FIFO in bytes, at least 2, read back as the
        PIXEL_CREDIT register. The host keeps at most this many pixel bytes
        without their results in flight, so it must exceed the pipeline's
        latency in pixel bytes (bytes taken before the first result leaves)
        at ``max_width``, or a full-width frame stalls until the watchdog.

    Members
    -------
    rx : In(stream.Signature(unsigned(8)))
        Bytes from the UART receiver.
    tx : Out(stream.Signature(unsigned(8)))
        Bytes to the UART transmitter.
    pixel : Out(stream.Signature(pixel_byte_layout))
        Pixel bytes of a frame, raster order, channels interleaved.
    result : In(stream.Signature(result_layout))
        ``results_per_pixel`` results per pixel, in order; ``last`` is not used (the count is).
    stream : Out(stream.Signature(byte_layout))
        The bytes of WEIGHT_STREAM packets, in order, each packet's only after its
        CRC has been checked; ``last`` on the final byte of a packet that ends a
        stream (flags bit 0). The reply is sent when every byte has been taken.
    width, height : Out(unsigned)
        The WIDTH and HEIGHT registers, or 0 when above ``max_…``.
    inv_ref_var : Out(unsigned(24))
        The INV_REF_VAR register.
    pad_mode : Out(unsigned(2))
        The PAD_MODE register.
    pipeline_errors : In(5)
        Error flags of the pipeline, read in ERRORS bits 0-4.
    clear_errors : Out(1)
        Pulses for one cycle when CONTROL bit 0 is written with 1.
    uart_errors : In(2)
        Framing error and overrun pulses from the UART receiver (bits 0, 1).
    frame_start : Out(1)
        Pulses for one cycle when RUN_FRAME starts a frame (after its size check).
    reg_addr : Out(8), reg_value : Out(32)
        Address and value of the last WRITE_REG/READ_REG packet (registers,
        stable from the packet's payload until the next packet's).
    reg_readable, reg_writable, reg_value_ok : In(1), reg_rdata : In(32)
        The design's answer for ``reg_addr``/``reg_value`` (combinational is
        fine: they are registered before use): the address is a readable or
        writable design register, the value is allowed, the register's value.
    reg_write : Out(1)
        Pulses for one cycle when WRITE_REG of ``reg_value`` to the design's
        register ``reg_addr`` is executed (``reg_writable`` and ``reg_value_ok``).

    Raises
    ------
    TypeError, ValueError
        On a bad parameter; the message names the value.
    """

    def __init__(self, *, channels=1, max_width=640, max_height=480, min_width=1, min_height=1,
                 timeout_cycles=600_000, pixel_buffer=1024, results_per_pixel=None, result_bytes=2,
                 design=Design.DENSITY, kernel_size=3, weight_stream=False, per_frame=False):
        self._channels = check_int("channel count", channels, minimum=1, maximum=255)
        if results_per_pixel is None:
            results_per_pixel = channels
        self._results_per_pixel = check_int("results per pixel", results_per_pixel, minimum=1, maximum=255)
        if result_bytes not in (1, 2) or isinstance(result_bytes, bool):
            raise ValueError(f"result bytes must be 1 or 2, not {result_bytes!r}")
        self._result_bytes = result_bytes
        self._design = check_int("design code", int(design) if isinstance(design, Design) else design,
                                 minimum=0, maximum=255)
        self._kernel_size = check_int("kernel size", kernel_size, minimum=1, maximum=255)
        self._max_width = check_int("maximum width", max_width, minimum=1)
        self._max_height = check_int("maximum height", max_height, minimum=1)
        self._min_width = check_int("minimum width", min_width, minimum=1, maximum=max_width)
        self._min_height = check_int("minimum height", min_height, minimum=1, maximum=max_height)
        self._timeout_cycles = check_int("timeout", timeout_cycles, minimum=16)
        self._pixel_buffer = check_int("pixel buffer depth", pixel_buffer, minimum=2)
        if not isinstance(weight_stream, bool):
            raise TypeError(f"weight_stream must be a bool, not {weight_stream!r}")
        self._weight_stream = weight_stream
        if not isinstance(per_frame, bool):
            raise TypeError(f"per_frame must be a bool, not {per_frame!r}")
        self._per_frame = per_frame
        if max_width * max_height * max(channels, results_per_pixel * result_bytes) >= 2 ** 32:
            raise ValueError(f"frame of {max_width}×{max_height} pixels, {channels} bytes and "
                             f"{results_per_pixel}×{result_bytes} result bytes each, must have "
                             f"fewer than 2**32 bytes")
        super().__init__({
            "rx":              In(stream.Signature(unsigned(8))),
            "tx":              Out(stream.Signature(unsigned(8))),
            "pixel":           Out(stream.Signature(pixel_byte_layout)),
            "result":          In(stream.Signature(result_layout)),
            "stream":          Out(stream.Signature(byte_layout)),
            "width":           Out(range(max_width + 1)),
            "height":          Out(range(max_height + 1)),
            "inv_ref_var":     Out(unsigned(24)),
            "pad_mode":        Out(unsigned(2)),
            "pipeline_errors": In(5),
            "clear_errors":    Out(1),
            "uart_errors":     In(2),
            "frame_start":     Out(1),
            "reg_addr":        Out(8),
            "reg_value":       Out(32),
            "reg_write":       Out(1),
            "reg_readable":    In(1),
            "reg_writable":    In(1),
            "reg_value_ok":    In(1),
            "reg_rdata":       In(32),
        })

    channels       = property(lambda self: self._channels)
    max_width      = property(lambda self: self._max_width)
    max_height     = property(lambda self: self._max_height)
    min_width      = property(lambda self: self._min_width)
    min_height     = property(lambda self: self._min_height)
    timeout_cycles = property(lambda self: self._timeout_cycles)
    results_per_pixel = property(lambda self: self._results_per_pixel)
    result_bytes   = property(lambda self: self._result_bytes)
    design         = property(lambda self: self._design)
    kernel_size    = property(lambda self: self._kernel_size)
    build_info     = property(lambda self: (self._design, self._kernel_size, self._channels,
                                            self._results_per_pixel, self._result_bytes),
                              doc="Bytes 5-9 of the PING reply.")
    pixel_buffer   = property(lambda self: self._pixel_buffer)
    weight_stream  = property(lambda self: self._weight_stream)
    per_frame      = property(lambda self: self._per_frame)

    def elaborate(self, platform):
        m = Module()
        timeout = self._timeout_cycles
        m.submodules.pixel_fifo = fifo = StreamFIFO(unsigned(8), depth=self._pixel_buffer)

        # -------- registers, counters, error flags -------------------------------------------
        width_reg    = Signal(32)
        height_reg   = Signal(32)
        inv_ref_var  = Signal(24)
        pad_mode     = Signal(2)
        cycles       = Signal(32)
        frames       = Signal(32)
        ignored      = Signal(32)
        bad_commands = Signal(32)
        link_errors  = Signal(5)     # ERRORS bits 8-12
        raised       = Signal(5)
        clear        = Signal()
        count_ignored = Signal()
        count_bad     = Signal()

        m.d.comb += [
            self.inv_ref_var.eq(inv_ref_var),
            self.pad_mode.eq(pad_mode),
            self.clear_errors.eq(clear),
            raised[0:2].eq(self.uart_errors),
        ]
        # Counts are registered before they are added (the decision to count comes out of the
        # command FSM, the add is a 32-bit carry chain). A flag raised or a count made in the
        # cycle of a clear survives it.
        counted_ignored = Signal()
        counted_bad = Signal()
        m.d.sync += [counted_ignored.eq(count_ignored), counted_bad.eq(count_bad)]
        with m.If(clear):
            m.d.sync += [link_errors.eq(raised), ignored.eq(counted_ignored),
                         bad_commands.eq(counted_bad)]
        with m.Else():
            m.d.sync += [link_errors.eq(link_errors | raised), ignored.eq(ignored + counted_ignored),
                         bad_commands.eq(bad_commands + counted_bad)]
        errors_value = Cat(self.pipeline_errors, C(0, 3), link_errors)

        # -------- tx: one output register; the CRC follows the bytes loaded into it ------------
        can_send  = ~self.tx.valid | self.tx.ready
        send      = Signal()
        send_byte = Signal(8)
        crc_op    = Signal(2)        # 0: include the byte, 1: leave the CRC, 2: restart at 0
        tx_crc    = Signal(8)
        # The CRC takes in a byte a cycle after it is loaded, from the tx register: the choice of
        # the byte (a multiplexer over the states) stays out of the CRC's logic. A state that
        # sends the CRC waits while a byte is still pending (`crc_busy`).
        crc_busy  = Signal()
        crc_todo  = Signal(2)
        with m.If(self.tx.ready):
            m.d.sync += self.tx.valid.eq(0)
        m.d.sync += crc_busy.eq(send)
        with m.If(send):
            m.d.sync += [self.tx.valid.eq(1), self.tx.payload.eq(send_byte), crc_todo.eq(crc_op)]
        with m.If(crc_busy):
            with m.Switch(crc_todo):
                with m.Case(0):
                    m.d.sync += tx_crc.eq(crc8_next(tx_crc, self.tx.payload))
                with m.Case(2):
                    m.d.sync += tx_crc.eq(0)

        # A state that has a byte to send says so (`want`), whether or not the tx register can
        # take it; `can_send`, the latest signal (it comes from the transmitter's side), joins
        # only in the last gate. The wire is kept so that synthesis does not fold it deeper.
        want = Signal(attrs={"keep": 1})
        m.d.comb += send.eq(want & can_send)

        def emit(byte, op=0):
            """Offer ``byte`` to the tx register; it is loaded when ``can_send``."""
            return [want.eq(1), send_byte.eq(byte), crc_op.eq(op)]

        # -------- watchdog: cycles without any transfer ------------------------------------------
        idle_cycles = Signal(range(4 * timeout + 1))
        progress = ((self.rx.valid & self.rx.ready) | (self.tx.valid & self.tx.ready) |
                    (self.pixel.valid & self.pixel.ready) | (self.result.valid & self.result.ready) |
                    (self.stream.valid & self.stream.ready))
        # The handshakes come out of the FSM's logic: they reset the count a cycle later, through
        # a register, and `expired`/`aborted` ignore the count in that cycle, when it is stale.
        moved = Signal()
        m.d.sync += moved.eq(progress)
        # `long_idle` and `at_limit` are idle_cycles >= timeout and == 4·timeout, kept as flags
        # (set from the count before its increment) so no wide comparison sits in the FSM's paths.
        long_idle = Signal()
        at_limit = Signal()
        with m.If(moved):
            m.d.sync += [idle_cycles.eq(0), long_idle.eq(0), at_limit.eq(0)]
        with m.Else():
            with m.If(~at_limit):
                m.d.sync += idle_cycles.eq(idle_cycles + 1)
            m.d.sync += [long_idle.eq(idle_cycles >= timeout - 1),
                         at_limit.eq(idle_cycles >= 4 * timeout - 1)]
        expired = ~moved & long_idle
        aborted = ~moved & at_limit

        # -------- frame pixel path: rx (or zeros) → FIFO → pixel, independent of the FSM ---------
        max_pixels = self._max_width * self._max_height * self._channels
        max_results = self._results_per_pixel * (1 if self._per_frame else self._max_width * self._max_height)
        frame_pixels = Signal(range(max_pixels + 1))
        last_pixel   = Signal.like(frame_pixels)     # frame_pixels - 1
        before_last  = Signal.like(frame_pixels)     # frame_pixels - 2 (modulo), for final_result
        # "pixels_in != frame_pixels" and the like, kept as flags: wide comparisons in the
        # handshake paths would be the critical path.
        writing      = Signal()                       # pixels still to enter the FIFO
        taking       = Signal()                       # pixels still to leave it for the pipeline
        awaiting     = Signal()                       # results still to come
        pixels_in    = Signal.like(frame_pixels)     # bytes written into the FIFO
        pixels_out   = Signal.like(frame_pixels)     # bytes taken by the pipeline
        in_last      = Signal()                       # pixels_in == last_pixel
        out_first    = Signal()                       # pixels_out == 0
        out_last     = Signal()                       # pixels_out == last_pixel
        results_in   = Signal(range(max_results + 1)) # results taken (or replaced by zeros)
        before_last_result = Signal.like(results_in)  # results of the frame - 2 (modulo)
        final_result = Signal()                       # results_in == results - 1, kept as a flag
        filling      = Signal()                       # the rest of the frame is zeros
        aborting     = Signal()                       # the rest of the results are zeros
        timed_out    = Signal()
        in_frame     = Signal()                       # from RUN_FRAME's execution to its trailer,
                                                      # rx carries pixels (even during the header)

        with m.If(writing):
            with m.If(filling):
                m.d.comb += [fifo.i_stream.valid.eq(1), fifo.i_stream.payload.eq(0)]
            with m.Elif(in_frame):
                m.d.comb += [self.rx.ready.eq(fifo.i_stream.ready), fifo.i_stream.valid.eq(self.rx.valid),
                             fifo.i_stream.payload.eq(self.rx.payload)]
        with m.If(fifo.i_stream.valid & fifo.i_stream.ready):
            m.d.sync += [pixels_in.eq(pixels_in + 1), in_last.eq(pixels_in == before_last)]
            with m.If(in_last):
                m.d.sync += writing.eq(0)

        m.d.comb += [
            self.pixel.valid.eq(fifo.o_stream.valid),
            self.pixel.payload.data.eq(fifo.o_stream.payload),
            self.pixel.payload.first.eq(out_first),
            self.pixel.payload.last.eq(out_last),
            fifo.o_stream.ready.eq(self.pixel.ready),
        ]
        counting = Signal()
        cycle_count = Signal(32)
        with m.If(counting):
            m.d.sync += cycle_count.eq(cycle_count + 1)
        with m.If(self.pixel.valid & self.pixel.ready):
            m.d.sync += [pixels_out.eq(pixels_out + 1), out_first.eq(0),
                         out_last.eq(pixels_out == before_last)]
            with m.If(out_last):
                m.d.sync += taking.eq(0)
            with m.If(out_first):
                m.d.sync += [counting.eq(1), cycle_count.eq(1)]

        # -------- command packets ----------------------------------------------------------------
        rx_byte = self.rx.payload
        # In the packet states `rx.ready` is 1 (the FSM's assignment overrides the pixel path's),
        # so a byte is taken whenever one is offered; saying so keeps the FIFO's full flag out
        # of the packet logic's timing paths.
        rx_got = self.rx.valid
        rx_crc = Signal(8)
        # What EXECUTE decides on is decoded as the bytes arrive, into flags: the command (one
        # flag per command), the length (0, 1 or 5), the register address, the CRC check.
        is_ping, is_write, is_read, is_run, is_stream = (
            Signal(name=f"is_{n}") for n in ("ping", "write", "read", "run", "stream"))
        length_0, length_1, length_5, length_2_up = Signal(), Signal(), Signal(), Signal()
        payload_left = Signal(8)     # payload bytes still to come
        payload_last = Signal()      # payload_left == 1
        slot = Signal(5)             # one-hot: which of the first 5 payload bytes comes next
        payload = Signal(40)         # the first 5 payload bytes: address, u32 value
        address = payload[0:8]
        value = payload[8:40]
        writable = {name: Signal(name=f"writes_{name.lower()}") for name in
                    ("WIDTH", "HEIGHT", "INV_REF_VAR", "PAD_MODE", "CONTROL")}
        crc_ok = Signal()
        # Addresses that are none of the link's own go to the design (`reg_*` ports). Its answer
        # for the address and value held in `payload` is registered every cycle: the payload is
        # complete at least a byte time before EXECUTE reads the registered flags.
        external = Signal()                  # the address is not a link register
        ext_readable, ext_writable, ext_value_ok = Signal(), Signal(), Signal()
        ext_rdata = Signal(32)
        pad_mode_ok = Signal()               # value < 3, registered like the design's answer
        m.d.comb += [self.reg_addr.eq(address), self.reg_value.eq(value)]
        m.d.sync += [ext_readable.eq(self.reg_readable), ext_writable.eq(self.reg_writable),
                     ext_value_ok.eq(self.reg_value_ok), ext_rdata.eq(self.reg_rdata),
                     pad_mode_ok.eq(value < 3)]
        # The size ports feed the pipeline's control logic: registered, and the range check of a
        # written size is made on the packet's value before the write (registered every cycle,
        # like the flags above) and kept as a flag, so no 32-bit comparison sits in front of them.
        width_fits, height_fits = Signal(), Signal()           # value in [1, max_…]
        width_ok, height_ok = Signal(), Signal()               # the same for WIDTH, HEIGHT
        m.d.sync += [
            width_fits.eq((value >= 1) & (value <= self._max_width)),
            height_fits.eq((value >= 1) & (value <= self._max_height)),
            self.width.eq(Mux(width_ok, width_reg, 0)),
            self.height.eq(Mux(height_ok, height_reg, 0)),
        ]

        reply_status = Signal(8)
        reply_length = Signal(4)
        reply_data   = Signal(80)
        reply_index  = Signal(4)
        frame_after  = Signal()      # the reply is RUN_FRAME's header: the frame follows

        # The reply's payload is chosen by a small code and loaded in REPLY_MAGIC, a cycle after
        # the decision: the many conditions that pick the reply stay out of the data's paths.
        reply_source = Signal(2)     # 0: none, 1: PING, 2: register read, 3: frame size
        reply_sources = {"none": 0, "ping": 1, "register": 2, "frame": 3}

        def reply(status, length=0, source="none", *, frame=False):
            if status != Status.OK:
                m.d.comb += count_bad.eq(1)
            m.d.sync += [reply_status.eq(status), reply_length.eq(length),
                         reply_source.eq(reply_sources[source]), frame_after.eq(frame)]
            m.next = "REPLY_MAGIC"

        # Register reads: the address is decoded into one flag per register as it arrives
        # (`readable`, set in PAYLOAD), and the value is an AND-OR of the flags and the
        # registers, registered: it is ready a whole byte time before EXECUTE uses it.
        readable = [(Signal(name=f"reads_{register.name.lower()}"), register, source) for register, source in (
            (Register.ID, DEVICE_ID), (Register.WIDTH, width_reg),
            (Register.HEIGHT, height_reg), (Register.INV_REF_VAR, inv_ref_var),
            (Register.PAD_MODE, pad_mode), (Register.CYCLES, cycles),
            (Register.FRAMES, frames), (Register.ERRORS, errors_value),
            (Register.IGNORED_BYTES, ignored), (Register.BAD_COMMANDS, bad_commands),
            (Register.PIXEL_CREDIT, self._pixel_buffer))]
        read_value = Mux(external, ext_rdata, 0)
        for flag, _, source in readable:
            read_value = read_value | Mux(flag, source, 0)
        read_value_q = Signal(32)
        read_ok_q = Signal()
        m.d.sync += read_value_q.eq(read_value)

        area = Signal(range(self._max_width * self._max_height + 1))
        multiplicand = Signal.like(area)
        multiplier = Signal.like(self.height)
        multiplier_zero = Signal()   # multiplier == 0, kept as a flag
        def times(value, constant):
            """``value · constant`` by shifts and adds, without a multiplier."""
            terms = [value << i for i in range(constant.bit_length()) if constant >> i & 1]
            return sum(terms[1:], terms[0])
        total = times(area, self._channels)                     # pixel bytes of the frame
        if self._per_frame:
            result_total = C(self._results_per_pixel, range(max_results + 1))
        else:
            result_total = times(area, self._results_per_pixel)     # results of the frame

        ping_data = int.from_bytes(DEVICE_MAGIC + bytes([PROTOCOL_VERSION, *self.build_info]),
                                   "little")
        size_ok = Signal()           # registered: the size ports settle long before RUN_FRAME
        m.d.sync += size_ok.eq((self.width >= self._min_width) & (self.height >= self._min_height))
        packet_timeout = ~self.rx.valid & expired

        # WEIGHT_STREAM packets: payload bytes 1 … len-1 are written into the chunk memory as
        # they arrive and read out only after the CRC has been checked.
        chunk_count = Signal(8)      # payload bytes after the first (the flags) received
        chunk_next = Signal(8)       # the next chunk byte to read
        stream_final = Signal()      # flags bit 0: the chunk ends a stream
        if self._weight_stream:
            m.submodules.chunk = chunk = Memory(shape=unsigned(8), depth=256, init=[])
            chunk_write = chunk.write_port()
            chunk_read = chunk.read_port(transparent_for=())
            m.d.comb += [chunk_write.addr.eq(chunk_count), chunk_write.data.eq(rx_byte),
                         self.stream.payload.data.eq(chunk_read.data)]

        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.comb += [self.rx.ready.eq(1), self.result.ready.eq(1)]   # drain stray results
                with m.If(rx_got):
                    with m.If(rx_byte == COMMAND_MAGIC):
                        m.d.sync += rx_crc.eq(0)
                        m.next = "COMMAND"
                    with m.Else():
                        m.d.comb += count_ignored.eq(1)

            # The four states inside a packet share the CRC and the packet timeout.
            for state in ("COMMAND", "LENGTH", "PAYLOAD", "CHECK"):
                with m.State(state):
                    m.d.comb += [self.rx.ready.eq(1), self.result.ready.eq(1)]
                    with m.If(rx_got):
                        m.d.sync += rx_crc.eq(crc8_next(rx_crc, rx_byte))
                        if state == "COMMAND":
                            m.d.sync += [is_ping.eq(rx_byte == Command.PING),
                                         is_write.eq(rx_byte == Command.WRITE_REG),
                                         is_read.eq(rx_byte == Command.READ_REG),
                                         is_run.eq(rx_byte == Command.RUN_FRAME),
                                         is_stream.eq(rx_byte == Command.WEIGHT_STREAM)]
                            m.next = "LENGTH"
                        elif state == "LENGTH":
                            m.d.sync += [length_0.eq(rx_byte == 0), length_1.eq(rx_byte == 1),
                                         length_5.eq(rx_byte == 5), length_2_up.eq(rx_byte >= 2),
                                         payload_left.eq(rx_byte), payload_last.eq(rx_byte == 1),
                                         slot.eq(1), chunk_count.eq(0)]
                            m.next = "PAYLOAD"
                            with m.If(rx_byte == 0):
                                m.next = "CHECK"
                        elif state == "PAYLOAD":
                            for i in range(5):
                                with m.If(slot[i]):
                                    m.d.sync += payload[8 * i:8 * i + 8].eq(rx_byte)
                            with m.If(slot[0]):
                                m.d.sync += [flag.eq(rx_byte == Register[name])
                                             for name, flag in writable.items()]
                                m.d.sync += external.eq(~Cat(*(rx_byte == register for register in
                                                               _LINK_REGISTERS)).any())
                                m.d.sync += [flag.eq(rx_byte == register)
                                             for flag, register, _ in readable]
                                m.d.sync += read_ok_q.eq(
                                    Cat(*(rx_byte == register for _, register, _ in readable)).any())
                            # every payload byte after the first goes into the chunk memory;
                            # only WEIGHT_STREAM reads it back
                            if self._weight_stream:
                                with m.If(~slot[0]):
                                    m.d.comb += chunk_write.en.eq(1)
                                    m.d.sync += chunk_count.eq(chunk_count + 1)
                            m.d.sync += [slot.eq(slot << 1), payload_left.eq(payload_left - 1),
                                         payload_last.eq(payload_left == 2)]
                            with m.If(payload_last):
                                m.next = "CHECK"
                        else:
                            m.d.sync += crc_ok.eq(rx_byte == rx_crc)
                            m.next = "VERIFY"
                    with m.Elif(packet_timeout):
                        m.d.comb += raised[2].eq(1)
                        reply(Status.TIMEOUT)

            # The CRC byte is checked a cycle after it arrives (the comparison is registered).
            with m.State("VERIFY"):
                with m.If(crc_ok):
                    m.next = "EXECUTE"
                with m.Else():
                    m.d.comb += raised[3].eq(1)
                    reply(Status.BAD_CRC)

            with m.State("EXECUTE"):
                with m.If(is_ping):
                    with m.If(~length_0):
                        reply(Status.BAD_LENGTH)
                    with m.Else():
                        reply(Status.OK, 10, "ping")
                with m.Elif(is_write):
                    with m.If(~length_5):
                        reply(Status.BAD_LENGTH)
                    with m.Else():
                        reply(Status.OK)
                        with m.If(writable["WIDTH"]):
                            m.d.sync += [width_reg.eq(value), width_ok.eq(width_fits)]
                        with m.Elif(writable["HEIGHT"]):
                            m.d.sync += [height_reg.eq(value), height_ok.eq(height_fits)]
                        with m.Elif(writable["INV_REF_VAR"]):
                            m.d.sync += inv_ref_var.eq(value)
                        with m.Elif(writable["PAD_MODE"]):
                            with m.If(pad_mode_ok):
                                m.d.sync += pad_mode.eq(value)
                            with m.Else():
                                reply(Status.BAD_VALUE)
                        with m.Elif(writable["CONTROL"]):
                            m.d.comb += clear.eq(value[0])
                        with m.Elif(external & ext_writable):
                            with m.If(ext_value_ok):
                                m.d.comb += self.reg_write.eq(1)
                            with m.Else():
                                reply(Status.BAD_VALUE)
                        with m.Else():
                            reply(Status.BAD_REGISTER)
                with m.Elif(is_read):
                    with m.If(~length_1):
                        reply(Status.BAD_LENGTH)
                    with m.Elif(read_ok_q | (external & ext_readable)):
                        reply(Status.OK, 4, "register")
                    with m.Else():
                        reply(Status.BAD_REGISTER)
                with m.Elif(is_run):
                    with m.If(~length_0):
                        reply(Status.BAD_LENGTH)
                    with m.Elif(~size_ok):
                            reply(Status.BAD_FRAME_SIZE)
                    with m.Elif(taking):
                        # The previous frame's pixels are still not taken: the pipeline hangs.
                        reply(Status.TIMEOUT)
                    with m.Else():
                        m.d.sync += [area.eq(0), multiplicand.eq(self.width),
                                     multiplier.eq(self.height), multiplier_zero.eq(self.height == 0)]
                        m.next = "FRAME_SIZE"
                if self._weight_stream:
                    with m.Elif(is_stream):
                        with m.If(~length_2_up):
                            reply(Status.BAD_LENGTH)
                        with m.Elif(address[1:] != 0):
                            reply(Status.BAD_VALUE)
                        with m.Else():
                            m.d.sync += [chunk_next.eq(0), stream_final.eq(address[0])]
                            m.next = "STREAM"
                with m.Else():
                    reply(Status.UNKNOWN_COMMAND)

            if self._weight_stream:
                # WEIGHT_STREAM: the checked packet's bytes, from the chunk memory to `stream`. The
                # memory's read data is the payload; `en` holds it while the byte waits.
                with m.State("STREAM"):
                    load = ~self.stream.valid | self.stream.ready
                    m.d.comb += [chunk_read.addr.eq(chunk_next), chunk_read.en.eq(load)]
                    with m.If(load):
                        with m.If(chunk_next != chunk_count):
                            m.d.sync += [self.stream.valid.eq(1), chunk_next.eq(chunk_next + 1),
                                         self.stream.payload.last.eq(stream_final &
                                                                     (chunk_next == chunk_count - 1))]
                        with m.Else():
                            m.d.sync += self.stream.valid.eq(0)
                            reply(Status.OK)
                    with m.Elif(expired):
                        # the design stopped taking bytes: the rest of the packet is dropped
                        m.d.sync += self.stream.valid.eq(0)
                        m.d.comb += raised[2].eq(1)
                        reply(Status.TIMEOUT)

            # width · height by shift and add, one bit of the height per cycle: a multiplier
            # here would take a DSP block from the pipeline.
            with m.State("FRAME_SIZE"):
                with m.If(multiplier_zero):
                    m.next = "FRAME_START"
                with m.Else():
                    with m.If(multiplier[0]):
                        m.d.sync += area.eq(area + multiplicand)
                    m.d.sync += [multiplicand.eq(multiplicand << 1), multiplier.eq(multiplier >> 1),
                                 multiplier_zero.eq(multiplier[1:] == 0)]

            # The frame's counters start a cycle after the size is known (a shorter path).
            with m.State("FRAME_START"):
                reply(Status.OK, 4, "frame", frame=True)
                m.d.comb += self.frame_start.eq(1)
                m.d.sync += [
                    in_frame.eq(1),
                    frame_pixels.eq(total), last_pixel.eq(total - 1), before_last.eq(total - 2),
                    pixels_in.eq(0), pixels_out.eq(0), results_in.eq(0),
                    in_last.eq(total == 1), out_first.eq(1), out_last.eq(total == 1),
                    before_last_result.eq(result_total - 2), final_result.eq(result_total == 1),
                    writing.eq(1), taking.eq(1), awaiting.eq(1),
                    filling.eq(0), aborting.eq(0), timed_out.eq(0),
                ]

            # ---- reply packet: magic, status, length, payload, CRC ----
            with m.State("REPLY_MAGIC"):
                with m.Switch(reply_source):
                    with m.Case(1):
                        m.d.sync += reply_data.eq(ping_data)
                    with m.Case(2):
                        m.d.sync += reply_data.eq(read_value_q)
                    with m.Case(3):          # result bytes of the frame
                        m.d.sync += reply_data.eq(Cat(C(0, self._result_bytes - 1), result_total))
                m.d.comb += emit(REPLY_MAGIC, op=2)
                with m.If(can_send):
                    m.next = "REPLY_STATUS"
            with m.State("REPLY_STATUS"):
                m.d.comb += emit(reply_status)
                with m.If(can_send):
                    m.next = "REPLY_LENGTH"
            with m.State("REPLY_LENGTH"):
                m.d.comb += emit(reply_length)
                with m.If(can_send):
                    m.d.sync += reply_index.eq(0)
                    m.next = "REPLY_DATA"
                    with m.If(reply_length == 0):
                        m.next = "REPLY_CRC"
            with m.State("REPLY_DATA"):
                m.d.comb += emit(reply_data[0:8])
                with m.If(can_send):
                    m.d.sync += [reply_data.eq(reply_data >> 8), reply_index.eq(reply_index + 1)]
                    with m.If(reply_index == reply_length - 1):
                        m.next = "REPLY_CRC"
            with m.State("REPLY_CRC"):
                with m.If(~crc_busy):
                    m.d.comb += emit(tx_crc, op=2)
                with m.If(can_send & ~crc_busy):
                    m.next = "IDLE"
                    with m.If(frame_after):
                        m.next = "FRAME"

            # ---- RUN_FRAME: pixels in, results out (LSB first), then the trailer ----
            with m.State("FRAME"):
                result_word = Signal(16)
                result_full = Signal()
                result_high = Signal()
                waiting_host = writing & ~filling & fifo.i_stream.ready
                with m.If(waiting_host & expired):
                    m.d.sync += [filling.eq(1), timed_out.eq(1)]
                    m.d.comb += raised[4].eq(1)
                with m.If(aborted):
                    m.d.sync += [filling.eq(1), aborting.eq(1), timed_out.eq(1)]
                    m.d.comb += raised[4].eq(1)

                with m.If(aborting):
                    m.d.comb += self.result.ready.eq(1)       # late results are discarded
                with m.If(~result_full & awaiting):
                    with m.If(aborting):
                        m.d.sync += [result_word.eq(0), result_full.eq(1),
                                     results_in.eq(results_in + 1),
                                     final_result.eq(results_in == before_last_result)]
                        with m.If(final_result):
                            m.d.sync += awaiting.eq(0)
                    with m.Else():
                        m.d.comb += self.result.ready.eq(1)
                        with m.If(self.result.valid):
                            m.d.sync += [result_word.eq(self.result.payload.data),
                                         result_full.eq(1), results_in.eq(results_in + 1),
                                         final_result.eq(results_in == before_last_result)]
                            with m.If(final_result):
                                m.d.sync += [cycles.eq(cycle_count), counting.eq(0), awaiting.eq(0)]

                with m.If(result_full):
                    m.d.comb += emit(Mux(result_high, result_word[8:16], result_word[0:8]))
                    with m.If(can_send):
                        if self._result_bytes == 2:
                            m.d.sync += result_high.eq(~result_high)
                            with m.If(result_high):
                                m.d.sync += result_full.eq(0)
                        else:
                            m.d.sync += result_full.eq(0)
                with m.Elif(~awaiting):
                    m.d.sync += in_frame.eq(0)
                    m.next = "TRAILER_STATUS"
            with m.State("TRAILER_STATUS"):
                with m.If(counting):                          # the frame was cut short
                    m.d.sync += [cycles.eq(cycle_count), counting.eq(0)]
                m.d.comb += emit(Mux(timed_out, Status.TIMEOUT, Status.OK), op=1)
                with m.If(can_send):
                    m.next = "TRAILER_CRC"
            with m.State("TRAILER_CRC"):
                with m.If(~crc_busy):
                    m.d.comb += emit(tx_crc, op=2)
                with m.If(can_send & ~crc_busy):
                    m.d.sync += frames.eq(frames + 1)
                    m.next = "IDLE"
        one_hot(fsm)
        return m
