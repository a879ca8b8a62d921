"""Every block's generated Verilog under its cocotb testbench, on Icarus and Verilator.

Every test variant of a block runs on Icarus; its first variant runs on Verilator too. A
Verilator model costs a C++ build of one to four minutes, so further variants (other kernel
sizes, channel counts) add build time on a fresh machine without testing the simulator more.
``make sim BLOCK=… SIM=verilator ARGS="--variant …"`` runs any variant on Verilator. A variant
may name its simulators (``"simulators"``): a model too large for Icarus's speed runs on
Verilator alone, beside a smaller variant that runs on both.
"""

import pytest

from dynsparse.sim.blocks import BLOCKS, run_block_testbench
from dynsparse.sim.runner import simulator_available


CASES = [(name, variant, simulator)
         for name, block in BLOCKS.items()
         for index, (variant, params) in enumerate(block.test_variants.items())
         for simulator in params.get("simulators", ("icarus", "verilator") if index == 0 else ("icarus",))]


@pytest.mark.cocotb
@pytest.mark.parametrize("block,variant,simulator", CASES)
def test_block(block, variant, simulator):
    if not simulator_available(simulator):
        pytest.skip(f"{simulator} not installed")
    run_block_testbench(block, simulator, variant=variant)
