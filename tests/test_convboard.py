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


def test_cli_run_conv_writes_one_png_per_channel(tmp_path, monkeypatch, capsys):
    """`dynsparse run --design conv` against a model of the device (tests/test_protocol.py)."""
    import skimage.io
    from test_protocol import FakeDevice
    from dynsparse.boards import protocol
    from dynsparse.boards.protocol import Register
    from dynsparse.cli import main

    device = FakeDevice(design=Design.CONV, results_per_pixel=3, result_bytes=1, credit=16)
    counters = {Register.CONV_CYCLES: 70, Register.PERFORMED: 300, Register.SKIPPED_PRUNED: 100,
                Register.SKIPPED_ZERO: 20, Register.SKIPPED_PADDING: 12, Register.ENGINE_ERRORS: 0,
                Register.ERRORS: 0, Register.CYCLES: 900, Register.IGNORED_BYTES: 0, Register.BAD_COMMANDS: 0}
    device.registers.update(counters)
    monkeypatch.setattr(protocol, "SerialTransport", lambda port, baud: _Closing(device))
    image = np.random.default_rng(4).integers(0, 256, size=(6, 9), dtype=np.uint8)
    np.save(tmp_path / "image.npy", image)
    weights = np.random.default_rng(5).integers(-127, 128, size=(3, 1, 3, 3)).astype(np.int8)
    np.save(tmp_path / "w.npy", weights)
    assert main(["run", str(tmp_path / "image.npy"), "--design", "conv", "--weights", str(tmp_path / "w.npy"),
                 "--threshold", "80", "--multiplier", "300", "--shift", "12"]) == 0
    out = capsys.readouterr().out
    assert "design conv" in out and "300 of 1458 MACs performed (100 pruned, 20 zero weights, 12 padding)" in out
    assert [device.weights[i] for i in range(27)] == [int(w) & 0xFFFFFFFF for w in weights.ravel()]
    assert (Register.PRUNE_THRESHOLD, 80) in device.writes and (Register.REQUANT_SHIFT, 12) in device.writes
    for co in range(3):
        png = skimage.io.imread(tmp_path / f"image.conv{co}.png")
        expected = ((image.astype(np.int64) + 7 * co) & 0xFF).astype(np.uint8).view(np.int8).astype(np.int16) + 128
        np.testing.assert_equal(png, expected)


def test_cli_run_conv_sends_a_weight_stream(tmp_path, monkeypatch, capsys):
    """`dynsparse run --design conv --weights w.dsw`: the stream goes to the board compressed
    (WEIGHT_STREAM packets) and the board's rebuilt weights are the golden reconstruction."""
    from test_protocol import FakeDevice
    from dynsparse.boards import protocol
    from dynsparse.cli import main
    from dynsparse.golden.sparsify import reconstruct
    from dynsparse.golden.weightstream import parse_stream

    device = FakeDevice(design=Design.CONV, results_per_pixel=3, result_bytes=1, credit=16)
    device.registers.update({register: 0 for register in (
        protocol.Register.CONV_CYCLES, protocol.Register.PERFORMED, protocol.Register.SKIPPED_PRUNED,
        protocol.Register.SKIPPED_ZERO, protocol.Register.SKIPPED_PADDING, protocol.Register.ENGINE_ERRORS,
        protocol.Register.ERRORS, protocol.Register.CYCLES, protocol.Register.IGNORED_BYTES,
        protocol.Register.BAD_COMMANDS)})
    monkeypatch.setattr(protocol, "SerialTransport", lambda port, baud: _Closing(device))
    image = np.random.default_rng(6).integers(0, 256, size=(5, 5), dtype=np.uint8)
    np.save(tmp_path / "image.npy", image)
    weights = np.random.default_rng(7).integers(-127, 128, size=(3, 1, 3, 3)).astype(np.int8)
    np.save(tmp_path / "w.npy", weights)
    assert main(["compress", str(tmp_path / "w.npy"), "-o", str(tmp_path / "w.dsw"), "--encoding", "rle",
                 "--sparsity", "0.5", "--interpolation", "linear"]) == 0
    stream = (tmp_path / "w.dsw").read_bytes()
    assert main(["run", str(tmp_path / "image.npy"), "--design", "conv", "--weights", str(tmp_path / "w.dsw")]) == 0
    out = capsys.readouterr().out
    assert f"{len(stream)} bytes sent compressed, decoded and loaded" in out
    assert b"".join(data for _, data in device.chunks) == stream
    expected = reconstruct(parse_stream(stream)).ravel()
    assert [device.weights[i] for i in range(27)] == [int(w) & 0xFFFFFFFF for w in expected]
    assert not any(address == protocol.Register.WEIGHT_DATA for address, _ in device.writes)
    # a stream for another layer shape is refused before anything is sent
    np.save(tmp_path / "w5.npy", np.ones((3, 1, 5, 5), np.int8))
    assert main(["compress", str(tmp_path / "w5.npy"), "-o", str(tmp_path / "w5.dsw"), "--sparsity", "0.5"]) == 0
    chunks = len(device.chunks)
    with pytest.raises(SystemExit):
        main(["run", str(tmp_path / "image.npy"), "--design", "conv", "--weights", str(tmp_path / "w5.dsw")])
    assert "w5.dsw: the stream's tensor 3 × 1 × 5 × 5 does not fit the board's 3 × 9 weights" in capsys.readouterr().err
    assert len(device.chunks) == chunks
    # a corrupt stream is refused with the parser's message
    (tmp_path / "bad.dsw").write_bytes(stream[:-1] + bytes([stream[-1] ^ 1]))
    with pytest.raises(SystemExit):
        main(["run", str(tmp_path / "image.npy"), "--design", "conv", "--weights", str(tmp_path / "bad.dsw")])
    assert "bad.dsw: corrupt weight stream:" in capsys.readouterr().err


class _Closing:
    """A transport with ``close``, around the device model."""

    def __init__(self, device):
        self.device = device

    def write(self, data):
        self.device.write(data)

    def read(self, n, timeout):
        return self.device.read(n, timeout)

    def close(self):
        pass
