"""The generated Verilog of WindowGenerator on Icarus and Verilator (cocotb)."""

import pytest

from dynsparse.sim.blocks import BLOCKS, run_block_testbench
from dynsparse.sim.runner import simulator_available


@pytest.mark.cocotb
@pytest.mark.parametrize("simulator", ["icarus", "verilator"])
@pytest.mark.parametrize("variant", sorted(BLOCKS["window"].test_variants))
def test_window_generator(simulator, variant):
    if not simulator_available(simulator):
        pytest.skip(f"{simulator} not installed")
    run_block_testbench("window", simulator, variant=variant)
