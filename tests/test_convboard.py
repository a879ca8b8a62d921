"""ConvBoard's own logic in amaranth.sim: the result serializer; parameters (the whole board is
simulated through its UART pins by sim/tb/tb_convboard.py, `make sim BLOCK=convboard`)."""

import numpy as np
import pytest

from dynsparse.boards.protocol import Design
from dynsparse.boards.top import ConvBoard, ResultSerializer
from dynsparse.sim.pysim import run_simulation, stream_receive, stream_send


@pytest.mark.parametrize("source,sink", [("none", "none"), ("random", "random"), ("fixed", "random")])
@pytest.mark.parametrize("count", [1, 4])
def test_serializer_sends_each_byte_in_order(count, source, sink):
    rng = np.random.default_rng(count + len(source) + 3 * len(sink))
    words = [int.from_bytes(rng.integers(0, 256, count, dtype=np.uint8).tobytes(), "little") for _ in range(9)]
    dut = ResultSerializer(count)
    received = []

    async def send(ctx):
        await stream_send(ctx, dut.i_stream, words, pattern=source, seed=1)

    async def receive(ctx):
        received.extend(await stream_receive(ctx, dut.o_stream, len(words) * count, pattern=sink, seed=2))

    run_simulation(dut, [send, receive], deadline_cycles=2000)
    assert [r.data for r in received] == [word >> 8 * i & 0xFF for word in words for i in range(count)]
    assert [r.last for r in received] == [int(i == count - 1) for _ in words for i in range(count)]


def test_conv_board_describes_itself():
    board = ConvBoard(clk_freq=25_000_000, out_channels=8, lanes=4, max_width=128, max_height=96)
    assert board.link.build_info == (Design.CONV, 3, 1, 8, 1)
    assert board.weight_count == 8 * 9
    assert board.mask_band_sizes == (33, 33, 24, 24)          # ceil(130 / 4), ceil(96 / 4)
    assert board.divisor == 217 and board.link.min_height == board.pipeline.min_height


def test_conv_board_parameter_errors():
    with pytest.raises(ValueError, match=r"^byte count must be an integer >= 1, not 0$"):
        ResultSerializer(0)
    with pytest.raises(TypeError, match=r"^watchdog must be an integer >= 1, not 0\.5$"):
        ConvBoard(clk_freq=12_000_000, watchdog_ms=0.5)
    with pytest.raises(ValueError, match=r"^baud rate must be at most clock frequency / 4 = 250000, not 500000$"):
        ConvBoard(clk_freq=1_000_000, baud=500_000)
