"""`dynsparse demo` end to end on small images: RTL simulation, golden check, picture."""

import pytest

from dynsparse.cli import main
from dynsparse.sim.runner import simulator_available


@pytest.mark.cocotb
def test_demo_writes_picture(tmp_path, capsys):
    if not simulator_available("verilator"):
        pytest.skip("verilator not installed")
    assert main(["demo", "--size", "24", "--image", "camera", "--image", "text", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "density_demo.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert out.count("RTL == golden") == 2
