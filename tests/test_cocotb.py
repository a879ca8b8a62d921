"""Every block's generated Verilog under its cocotb testbench, on Icarus and Verilator."""

import pytest

from dynsparse.sim.blocks import BLOCKS, run_block_testbench
from dynsparse.sim.runner import simulator_available


CASES = [(name, variant) for name, block in BLOCKS.items() for variant in block.test_variants]


@pytest.mark.cocotb
@pytest.mark.parametrize("simulator", ["icarus", "verilator"])
@pytest.mark.parametrize("block,variant", CASES)
def test_block(block, variant, simulator):
    if not simulator_available(simulator):
        pytest.skip(f"{simulator} not installed")
    run_block_testbench(block, simulator, variant=variant)
