"""Icarus under cocotb (``iverilog -g2012``) runs every ``always @*`` block at time 0.

Without :func:`dynsparse.sim.runner.fire_time0_triggers`, a combinational
output whose inputs keep their initial values through reset stays ``x``: the
host link's ``rx.ready`` in its idle state was ``x`` until the first byte, so
the register slice in front of it held that byte for a second cycle and the
link read the magic byte again as the command (the first PING after reset
answered ``BAD_CRC`` in the board test).
"""

import shutil
import subprocess

import pytest
from amaranth.back import verilog
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from dynsparse.sim.runner import fire_time0_triggers, run_cocotb, simulator_available


class IdleReady(wiring.Component):
    """``ready`` is 1 in the idle state of a two-state machine (as the host link's ``rx.ready``)."""
    go: In(1)
    ready: Out(1)

    def elaborate(self, platform):
        m = Module()
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.ready.eq(1)
                with m.If(self.go):
                    m.next = "BUSY"
            with m.State("BUSY"):
                m.next = "IDLE"
        return m


_BENCH = """
`timescale 1ns/1ps
module bench;
  reg clk = 0, rst = 1, go = 0;
  wire ready;
  idle dut(.clk(clk), .rst(rst), .go(go), .ready(ready));
  initial begin #5 $display("ready=%b", ready); $finish; end
endmodule
"""


def _icarus_ready(tmp_path, text):
    (tmp_path / "idle.v").write_text(text)
    (tmp_path / "bench.v").write_text(_BENCH)
    subprocess.run(["iverilog", "-g2012", "-o", str(tmp_path / "a.out"), str(tmp_path / "bench.v"),
                    str(tmp_path / "idle.v")], check=True)
    out = subprocess.run(["vvp", str(tmp_path / "a.out")], check=True, capture_output=True, text=True)
    return out.stdout.split("ready=")[1][0]


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog not installed")
def test_yosys_trigger_alone_leaves_x_under_g2012(tmp_path):
    """The mechanism: Amaranth's Verilog as it is leaves ``ready`` at x; with the trigger fired, 1."""
    text = verilog.convert(IdleReady(), name="idle", emit_src=False)
    assert _icarus_ready(tmp_path, text) == "x"
    fixed = fire_time0_triggers(text)
    assert fixed.count("initial #0") == 1          # one module, one trigger
    assert _icarus_ready(tmp_path, fixed) == "1"


@pytest.mark.cocotb
@pytest.mark.parametrize("simulator", ["icarus", "verilator"])
def test_combinational_output_defined_after_reset(simulator):
    """Through the runner, as every block's testbench runs: ``ready`` is 1 right after reset."""
    if not simulator_available(simulator):
        pytest.skip(f"{simulator} not installed")
    run_cocotb(block="idle", component=IdleReady(), params={"time0": 1}, simulator=simulator,
               test_module="dynsparse.sim.tb.tb_time0")
