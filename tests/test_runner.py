"""The simulation runner reports failures: a failing cocotb test and an Icarus assertion."""

import pytest
from amaranth.hdl import Assert, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from dynsparse.sim.runner import SimulationFailed, run_cocotb, simulator_available


class Tripwire(wiring.Component):
    """A counter with an assertion that ``trip`` stays low."""
    trip: In(1)
    count: Out(8)

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.count.eq(self.count + 1)
        m.d.sync += Assert(~self.trip, "trip raised")
        return m


def run(simulator, mode):
    return run_cocotb(block="tripwire", component=Tripwire(), params={"selfcheck": 1},
                      simulator=simulator, test_module="dynsparse.sim.tb.tb_selfcheck",
                      extra_env={"SELFCHECK": mode}, testcase=None)


@pytest.mark.cocotb
@pytest.mark.parametrize("simulator", ["icarus", "verilator"])
def test_passing_run_passes(simulator):
    if not simulator_available(simulator):
        pytest.skip(f"{simulator} not installed")
    run(simulator, "pass")


@pytest.mark.cocotb
@pytest.mark.parametrize("simulator", ["icarus", "verilator"])
def test_failing_cocotb_test_fails(simulator):
    if not simulator_available(simulator):
        pytest.skip(f"{simulator} not installed")
    with pytest.raises(SimulationFailed, match="deliberate failure|1 of 1 cocotb tests failed"):
        run(simulator, "failure")


@pytest.mark.cocotb
@pytest.mark.parametrize("simulator", ["icarus", "verilator"])
def test_verilog_assertion_fails_the_run(simulator):
    """Icarus only prints ``ERROR:`` (the runner looks for it); Verilator stops the simulation."""
    if not simulator_available(simulator):
        pytest.skip(f"{simulator} not installed")
    with pytest.raises(SimulationFailed, match="assertion errors|failed"):
        run(simulator, "assertion")
