"""Board top: the density pipeline behind a UART host link.

:class:`DensityBoard` is the whole design between the two UART pins; it is
what the simulated board test drives (``sim/tb/tb_board.py``).
:class:`BoardTop` puts it on a board from amaranth-boards: the platform's
default clock and reset, its first UART, and an LED that lights while a
frame is in flight.
"""

from amaranth.hdl import Elaboratable, Module, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out, connect

from ..hdl.frame import check_int
from ..hdl.hostlink import HostLink
from ..hdl.pipeline import DensityPipeline
from ..hdl.skid import StreamRegister
from ..hdl.uart import UARTReceiver, UARTTransmitter
from .protocol import RESULT_BYTES


__all__ = ["DensityBoard", "BoardTop"]


class DensityBoard(wiring.Component):
    """UART in, UART out: host link, density pipeline and their glue.

    Parameters
    ----------
    clk_freq : int
        Clock frequency in Hz; sets the UART divisor and the host link's watchdog.
    baud : int
        UART bit rate; ``clk_freq / baud`` must be at least 4.
    kernel_size, max_width, max_height : int
        Passed to :class:`~dynsparse.hdl.pipeline.DensityPipeline` (one channel).
    watchdog_ms : int
        Silence, in milliseconds, after which the host link abandons a command
        or completes an interrupted frame (see ``docs/protocol.md``).

    Members
    -------
    uart_rx : In(1)
        From the host (idle high).
    uart_tx : Out(1)
        To the host (idle high).
    busy : Out(1)
        A frame is in the pipeline.
    """

    def __init__(self, *, clk_freq, baud=115200, kernel_size=3, max_width=256, max_height=256,
                 watchdog_ms=100):
        self._clk_freq = check_int("clock frequency", clk_freq, minimum=1)
        self._baud = check_int("baud rate", baud, minimum=1)
        divisor = round(clk_freq / baud)
        if divisor < 4:
            raise ValueError(f"baud rate must be at most clock frequency / 4 = {clk_freq // 4}, not {baud}")
        if abs(clk_freq / divisor - baud) / baud > 0.02:
            raise ValueError(f"baud rate {baud} is more than 2 % away from what {clk_freq} Hz "
                             f"can make ({clk_freq / divisor:.0f})")
        self._divisor = divisor
        self.pipeline = DensityPipeline(kernel_size=kernel_size, channels=1,
                                        max_width=max_width, max_height=max_height)
        self.link = HostLink(channels=1, max_width=max_width, max_height=max_height,
                             min_width=self.pipeline.min_width,
                             min_height=kernel_size // 2 + 1,
                             timeout_cycles=max(16, clk_freq * watchdog_ms // 1000),
                             build_info=(kernel_size, 1, RESULT_BYTES))
        super().__init__({"uart_rx": In(1, init=1), "uart_tx": Out(1, init=1), "busy": Out(1)})

    divisor = property(lambda self: self._divisor)

    def elaborate(self, platform):
        m = Module()
        m.submodules.receiver = receiver = UARTReceiver(divisor=self._divisor)
        m.submodules.transmitter = transmitter = UARTTransmitter(divisor=self._divisor)
        m.submodules.link = link = self.link
        m.submodules.pipeline = pipeline = self.pipeline

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

        # Pixel bytes into the pipeline, densities (UQ1.8, 9 bits) back as 16-bit results,
        # through register slices: the host link's command logic and the pipeline's control
        # logic each get a full clock period instead of sharing one.
        m.submodules.to_pipeline = to_pipeline = StreamRegister(pipeline.i_stream.payload.shape())
        m.submodules.to_link = to_link = StreamRegister(link.result.payload.shape())
        m.d.comb += [
            to_pipeline.i_stream.valid.eq(link.pixel.valid),
            to_pipeline.i_stream.payload.data[0].eq(link.pixel.payload.data),
            to_pipeline.i_stream.payload.first.eq(link.pixel.payload.first),
            to_pipeline.i_stream.payload.last.eq(link.pixel.payload.last),
            link.pixel.ready.eq(to_pipeline.i_stream.ready),
            to_link.i_stream.valid.eq(pipeline.o_stream.valid),
            to_link.i_stream.payload.data.eq(pipeline.o_stream.payload.data[0]),
            to_link.i_stream.payload.last.eq(pipeline.o_stream.payload.last),
            pipeline.o_stream.ready.eq(to_link.i_stream.ready),
        ]
        connect(m, to_pipeline.o_stream, pipeline.i_stream)
        connect(m, to_link.o_stream, link.result)
        m.d.comb += [
            pipeline.width.eq(link.width),
            pipeline.height.eq(link.height),
            pipeline.inv_ref_var.eq(link.inv_ref_var),
            pipeline.clear_errors.eq(link.clear_errors),
            link.pipeline_errors.eq(pipeline.errors.as_value()),
            self.busy.eq(pipeline.busy),
        ]
        return m


class BoardTop(Elaboratable):
    """:class:`DensityBoard` on an amaranth-boards platform (its default clock, first UART, first LED)."""

    def __init__(self, *, baud=115200, **board_params):
        self._baud = baud
        self._board_params = board_params

    def elaborate(self, platform):
        m = Module()
        clk_freq = int(platform.default_clk_frequency)
        m.submodules.board = board = DensityBoard(clk_freq=clk_freq, baud=self._baud, **self._board_params)
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
