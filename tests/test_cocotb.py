"""Every block's generated Verilog under its cocotb testbench, on Icarus and Verilator.

Every test variant of a block runs on Icarus; its first variant runs on Verilator too. A
Verilator model costs a C++ build of one to four minutes, so further variants (other kernel
sizes, channel counts) add build time on a fresh machine without testing the simulator more.
``make sim BLOCK=… SIM=verilator ARGS="--variant …"`` runs any variant on Verilator.
"""

import pytest

from dynsparse.sim.blocks import BLOCKS, run_block_testbench
from dynsparse.sim.runner import simulator_available


CASES = [(name, variant, simulator)
         for name, block in BLOCKS.items()
         for index, variant in enumerate(block.test_variants)
         for simulator in (("icarus", "verilator") if index == 0 else ("icarus",))]


@pytest.mark.cocotb
@pytest.mark.parametrize("block,variant,simulator", CASES)
def test_block(block, variant, simulator):
    if not simulator_available(simulator):
        pytest.skip(f"{simulator} not installed")
    run_block_testbench(block, simulator, variant=variant)
