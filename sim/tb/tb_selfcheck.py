"""cocotb tests that must fail: they prove the runner reports failures (tests/test_runner.py)."""

import os

import cocotb
from cocotb.triggers import ClockCycles

from dynsparse.sim.tb.streams import TB


@cocotb.test(skip=os.environ.get("SELFCHECK") != "assertion")
async def trip_assertion(dut):
    """Raise the DUT's ``trip`` input, which violates its Verilog assertion."""
    tb = TB(dut)
    dut.trip.value = 0
    await tb.reset()
    dut.trip.value = 1
    await ClockCycles(dut.clk, 3)
    dut.trip.value = 0
    await ClockCycles(dut.clk, 2)


@cocotb.test(skip=os.environ.get("SELFCHECK") != "failure")
async def failing_check(dut):
    """A Python check that fails."""
    tb = TB(dut)
    dut.trip.value = 0
    await tb.reset()
    assert int(dut.count.value) == 12345, "deliberate failure"


@cocotb.test(skip=os.environ.get("SELFCHECK") != "pass")
async def passing_check(dut):
    """The same DUT, nothing wrong."""
    tb = TB(dut)
    dut.trip.value = 0
    await tb.reset()
    await ClockCycles(dut.clk, 4)
    assert int(dut.count.value) >= 4
