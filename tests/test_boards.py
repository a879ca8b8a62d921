"""Board flow: the report harness on the open toolchain, bitstream and flash errors, `dynsparse run` errors."""

import re

import pytest

from dynsparse.boards.build import BOARDS, BuildFailed, flash_bitstream
from dynsparse.boards.harness import SerialHarness, port_bits
from dynsparse.boards.report import FAMILIES, measure_block
from dynsparse.boards.top import DensityBoard
from dynsparse.cli import main
from dynsparse.hdl.uart import UARTTransmitter


@pytest.mark.parametrize("family", list(FAMILIES))
def test_report_measures_a_block(family, tmp_path):
    """Synthesis, harness, place and route and the report parsing, on a small block."""
    result = measure_block("uart_tx", lambda: UARTTransmitter(divisor=104), family, tmp_path, log=lambda _: None)
    assert "error" not in result, result
    assert result["cells"]["LUT4"] > 5 and result["cells"]["FF"] > 5
    assert result["fmax_mhz"] > result["target_mhz"]
    assert result["meets_target"]
    assert result["port_bits"] == [9, 2] and result["harness_ff"] == 2 * 9 + 2 * 2


def test_harness_port_count():
    block = UARTTransmitter(divisor=16)
    inputs, outputs = port_bits(block)
    assert inputs == 8 + 1          # payload, valid (ready is an output)
    assert outputs == 1 + 1         # ready, tx
    SerialHarness(block)


def test_board_parameter_errors():
    with pytest.raises(ValueError, match=r"^baud rate must be at most clock frequency / 4 = 250000, not 500000$"):
        DensityBoard(clk_freq=1_000_000, baud=500_000)
    with pytest.raises(ValueError, match=r"more than 2 % away"):
        DensityBoard(clk_freq=1_000_000, baud=115_200)
    with pytest.raises(TypeError, match=r"^clock frequency must be an integer >= 1, not 12\.0$"):
        DensityBoard(clk_freq=12.0)


def test_flash_without_bitstream_is_a_clear_error(tmp_path):
    with pytest.raises(BuildFailed, match=r"no bitstream at .*: run `make bitstream BOARD=icebreaker` first"):
        flash_bitstream("icebreaker", build_root=tmp_path)


def test_unknown_board(capsys):
    with pytest.raises(SystemExit):
        main(["bitstream", "--board", "nope"])
    assert re.search(r"unknown board 'nope'; boards are: icebreaker, ulx3s-85f", capsys.readouterr().err)
    assert set(BOARDS) >= {"icebreaker", "ulx3s-85f", "ulx3s-25f"}


def test_run_without_a_board(tmp_path, capsys):
    import numpy as np
    image = tmp_path / "image.npy"
    np.save(image, np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(image), "--port", str(tmp_path / "ttyUSB7")])
    assert exit_info.value.code == 2
    assert "is the board plugged in and flashed?" in capsys.readouterr().err


def test_run_rejects_a_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(SystemExit):
        main(["run", str(bad)])
    assert re.search(r"bad\.png: cannot read the image", capsys.readouterr().err)


def test_conv_board_parameters():
    from dynsparse.boards.top import BoardTop, ConvBoard
    board = ConvBoard(clk_freq=1_000_000, baud=250_000, out_channels=4, lanes=2, max_width=32, max_height=32)
    assert board.link.build_info == (1, 3, 1, 4, 1)        # conv design, K 3, 1 channel, 4 int8 results
    assert board.weight_count == 36 and board.mask_band_sizes == (9, 9, 8, 8)
    with pytest.raises(ValueError, match=r"lane"):
        ConvBoard(clk_freq=1_000_000, baud=250_000, out_channels=2, lanes=3)
    with pytest.raises(ValueError, match=r"^design must be one of density, conv, spn, not 'nope'$"):
        BoardTop(design="nope")


def test_bitstream_conv_parameters_need_the_conv_design(capsys):
    with pytest.raises(SystemExit):
        main(["bitstream", "--board", "icebreaker", "--lanes", "2"])
    assert "--lanes is a parameter of --design conv" in capsys.readouterr().err


def test_flash_conv_without_bitstream(tmp_path):
    with pytest.raises(BuildFailed, match=r'run `make bitstream BOARD=ulx3s-25f ARGS="--design conv"` first'):
        flash_bitstream("ulx3s-25f", design="conv", build_root=tmp_path)


def test_run_conv_needs_weights(tmp_path, capsys):
    import numpy as np
    image = tmp_path / "image.npy"
    np.save(image, np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(SystemExit):
        main(["run", str(image), "--design", "conv", "--port", str(tmp_path / "ttyUSB7")])
    assert "--design conv needs --weights" in capsys.readouterr().err
    weights = tmp_path / "w.npy"
    np.save(weights, np.full((4, 1, 3, 3), 200))
    with pytest.raises(SystemExit):
        main(["run", str(image), "--design", "conv", "--weights", str(weights)])
    assert "weights must be an int array [C_out, C_in, K, K] in [-127, 127]" in capsys.readouterr().err
    np.save(weights, np.ones((4, 1, 3, 3), np.int8))
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(image), "--design", "conv", "--weights", str(weights),
              "--port", str(tmp_path / "ttyUSB7")])
    assert exit_info.value.code == 2
    assert "is the board plugged in and flashed?" in capsys.readouterr().err


@pytest.mark.parametrize("board,design,seed,expected", [
    ("icebreaker", "density", None, "--seed 2"),      # the seed that meets 42 MHz (docs/boards.md)
    ("icebreaker", "density", 5, "--seed 5"),
    ("icebreaker", "conv", None, None),
    ("ulx3s-25f", "density", None, None),
])
def test_bitstream_placement_seed(board, design, seed, expected, tmp_path, monkeypatch):
    from dynsparse.boards import build

    class Stop(Exception):
        pass

    seen = {}

    class Platform:
        device = "fake"

        def build(self, top, **kwargs):
            seen.update(kwargs)
            raise Stop()

    monkeypatch.setattr(build.Board, "platform_class", lambda self: Platform)
    params = {"out_channels": 2, "lanes": 1, "max_width": 16, "max_height": 16} if design == "conv" else {}
    with pytest.raises(BuildFailed):
        build.build_bitstream(board, design=design, build_root=tmp_path, seed=seed, log=lambda *_: None,
                              **params)
    options = seen["nextpnr_opts"]
    if expected is None:
        assert "--seed" not in options
    else:
        assert re.search(rf"{expected}\b", options)


def test_peptides_rejects_bad_models_and_a_missing_board(tmp_path, capsys):
    import numpy as np
    from dynsparse.golden import spn
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a model")
    with pytest.raises(SystemExit):
        main(["peptides", "--model", str(bad)])
    assert "bad.npz: not a dynsparse SPN model (not an .npz archive)" in capsys.readouterr().err
    partial = tmp_path / "partial.npz"
    np.savez(partial, version=np.int64(1))
    with pytest.raises(SystemExit):
        main(["peptides", "--model", str(partial)])
    assert re.search(r"partial\.npz: not a dynsparse SPN model \(export has no 'height'\)", capsys.readouterr().err)
    with pytest.raises(SystemExit):
        main(["peptides", "--model", str(tmp_path / "none.npz")])
    assert "none.npz: no such file" in capsys.readouterr().err
    # a good model, no board on the port
    config = spn.SPNConfig(length=8, iterations=1, channels=2, spn_channels=1)
    x = spn.encode(spn.load_dataset("AMPvsTM")[0][:10], length=8).astype(np.float64) / 127
    model = tmp_path / "model.npz"
    spn.save_export(spn.quantise(spn.init_params(config, seed=0), config, x)[0], str(model))
    with pytest.raises(SystemExit) as exit_info:
        main(["peptides", "--model", str(model), "--port", str(tmp_path / "ttyUSB7"), "--count", "2"])
    assert exit_info.value.code == 2
    assert "is the board plugged in and flashed?" in capsys.readouterr().err


def test_spn_board_parameters():
    from dynsparse.boards.top import BoardTop, SPNBoard
    board = SPNBoard(clk_freq=1_000_000, baud=250_000, channels=3, spn_channels=2, max_length=12)
    assert board.link.per_frame and board.link.results_per_pixel == 4 * (2 + 3 + 1)
    assert board.link.pixel_buffer >= 8 * 12          # a whole map fits in flight
    with pytest.raises(ValueError, match=r"^channel count must be an integer in \[1, 8\], not 9$"):
        SPNBoard(clk_freq=12_000_000, channels=9)
    BoardTop(design="spn")
