"""cocotb test: combinational outputs are defined from the first cycle (tests/test_time0.py).

The DUT's ``ready`` is driven by an ``always @*`` block that reads only a
state register, which keeps its initial value through reset: nothing wakes
the block but Yosys' time-0 trigger (see :func:`dynsparse.sim.runner.fire_time0_triggers`).
"""

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from dynsparse.sim.tb.streams import TB


@cocotb.test()
async def ready_is_defined_after_reset(dut):
    """``ready`` reads 1 (not x) in the idle state, before any input has changed."""
    tb = TB(dut)
    await tb.reset()
    await ReadOnly()
    assert dut.ready.value.is_resolvable and int(dut.ready.value) == 1, \
        f"ready is {dut.ready.value} in the idle state after reset"
    await RisingEdge(dut.clk)
