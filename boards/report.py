"""``dynsparse report``: utilisation and Fmax of every block on iCE40UP5K and ECP5-25F.

Method (see ``docs/report.md``): each block, with its default parameters, is

1. synthesised alone with Yosys (``synth_ice40 -dsp`` / ``synth_ecp5``) for its
   own cell counts: logic, carry, flip-flops, DSPs, block RAM;
2. wrapped in :class:`~dynsparse.boards.harness.SerialHarness` (every port
   behind a flip-flop, three pins in all), synthesised and placed and routed
   by nextpnr against the target clock, for the placed utilisation and the
   Fmax nextpnr reports.
"""

import json
import re
import time
from pathlib import Path

from amaranth.back import verilog

from .harness import SerialHarness, port_bits
from .toolchain import ToolError, nextpnr_summary, run_tool


__all__ = ["FAMILIES", "measure_block", "run_report"]

#: Target devices: nextpnr arguments, synthesis command, clock target (MHz) and the cells to count.
FAMILIES = {
    "ice40-up5k": {
        "label": "iCE40UP5K (iCEBreaker)",
        "synth": "synth_ice40 -dsp",
        "nextpnr": "nextpnr-ice40",
        "device": ["--up5k", "--package", "sg48", "--pcf-allow-unconstrained"],
        "target_mhz": 42.0,
        "cells": {"LUT4": "SB_LUT4", "carry": "SB_CARRY", "DSP": "SB_MAC16",
                  "BRAM": "SB_RAM40_4K", "SPRAM": "SB_SPRAM256KA"},
        "ff_prefix": "SB_DFF",
    },
    "ecp5-25f": {
        "label": "ECP5-25F (ULX3S 25F)",
        "synth": "synth_ecp5",
        "nextpnr": "nextpnr-ecp5",
        "device": ["--25k", "--package", "CABGA381", "--lpf-allow-unconstrained"],
        "target_mhz": 125.0,
        "cells": {"LUT4": "LUT4", "carry": "CCU2C", "DSP": "MULT18X18D", "BRAM": "DP16KD"},
        "ff_prefix": "TRELLIS_FF",
    },
}


def _cell_counts(stat_text, family):
    counts = {}
    for line in stat_text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            counts[parts[1]] = counts.get(parts[1], 0) + int(parts[0])
    spec = FAMILIES[family]
    result = {label: counts.get(cell, 0) for label, cell in spec["cells"].items()}
    result["FF"] = sum(n for cell, n in counts.items() if cell.startswith(spec["ff_prefix"]))
    return result


def measure_block(name, component_factory, family, build_dir, *, log=print):
    """Measure one block on one family; returns a dict (``error`` set if it did not fit or route)."""
    spec = FAMILIES[family]
    build_dir = Path(build_dir) / name / family
    build_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    block = component_factory()
    inputs, outputs = port_bits(block)
    (build_dir / "block.v").write_text(verilog.convert(block, name="block", emit_src=False))
    harness = SerialHarness(component_factory())
    (build_dir / "harness.v").write_text(verilog.convert(
        harness, name="harness", ports=harness.ports, emit_src=False))
    result = {"block": name, "family": family, "target_mhz": spec["target_mhz"],
              "harness_ff": 2 * inputs + 2 * outputs, "port_bits": [inputs, outputs]}
    try:
        run_tool("yosys", ["-q", "-p", f"read_verilog block.v; {spec['synth']} -top block; tee -q -o block.stat stat"],
                 cwd=build_dir, log="yosys_block.log")
        result["cells"] = _cell_counts((build_dir / "block.stat").read_text(), family)
        run_tool("yosys", ["-q", "-p", f"read_verilog harness.v; {spec['synth']} -top harness -json harness.json"],
                 cwd=build_dir, log="yosys_harness.log")
        run_tool(spec["nextpnr"], [*spec["device"], "--json", "harness.json", "--freq", str(spec["target_mhz"]),
                                   "--report", "report.json", "--seed", "1", "--timing-allow-fail"],
                 cwd=build_dir, log="nextpnr.log")
        summary = nextpnr_summary(build_dir / "report.json")
        result["utilisation"] = {bel: list(v) for bel, v in summary["utilisation"].items() if v[0]}
        result["fmax_mhz"] = round(min(v[0] for v in summary["fmax"].values()), 1) if summary["fmax"] else None
        result["meets_target"] = result["fmax_mhz"] is not None and result["fmax_mhz"] >= spec["target_mhz"]
        if result["cells"]["LUT4"] and result["utilisation"].get(
                "ICESTORM_LC" if family.startswith("ice40") else "TRELLIS_COMB", [0])[0] < result["cells"]["LUT4"] // 2:
            result["error"] = "the placed design is much smaller than the block: logic was optimised away"
    except ToolError as error:
        message = str(error)
        reason = re.search(r"(ERROR: .*)", message)
        result["error"] = reason.group(1) if reason else message.splitlines()[0]
    result["seconds"] = round(time.monotonic() - started, 1)
    log(f"  {name:10} {family:11} " + (
        f"Fmax {result['fmax_mhz']} MHz (target {spec['target_mhz']:g}), cells {result.get('cells')}"
        if "error" not in result else f"FAILED: {result['error']}"))
    return result


def critical_path(report_path):
    """The worst path in a nextpnr report: its start and end cells and its logic and routing delays (ns)."""
    try:
        report = json.loads(Path(report_path).read_text())
        path = max(report["critical_paths"], key=lambda p: sum(step["delay"] for step in p["path"]))["path"]
    except (OSError, ValueError, KeyError):
        return None
    def short(cell):
        name = re.sub(r"(_SB_|_TRELLIS_|_LUT4|_DFF|\$).*", "", cell)
        return name if not name.endswith(".") else cell[:48]
    logic = sum(step["delay"] for step in path if step["type"] != "routing")
    routing = sum(step["delay"] for step in path if step["type"] == "routing")
    return {"from": short(path[0]["from"]["cell"]), "to": short(path[-1]["to"]["cell"]),
            "logic_ns": round(logic, 1), "routing_ns": round(routing, 1)}


def _path_text(path):
    if not path:
        return ""
    return (f"{path['from']} → {path['to']}: {path['logic_ns']} ns logic + "
            f"{path['routing_ns']} ns routing")


def _boards_markdown(boards_dir):
    rows = []
    for summary_path in sorted(Path(boards_dir).glob("*/summary.json")):
        summary = json.loads(summary_path.read_text())
        path = critical_path(summary_path.parent / "report.json")
        utilisation = ", ".join(f"{bel} {used}/{available}" for bel, (used, available)
                                in sorted(summary["utilisation"].items()) if bel != "SB_GB")
        verdict = "yes" if summary["fmax_mhz"] >= summary["target_mhz"] else \
            f"no, {summary['target_mhz'] - summary['fmax_mhz']:.1f} MHz short"
        design = summary.get("design", "density")
        if summary.get("parameters"):
            design += " (" + ", ".join(f"{k} {v}" for k, v in sorted(summary["parameters"].items())) + ")"
        design += f", seed {summary['seed']}" if summary.get("seed") is not None else ", nextpnr's default seed"
        rows.append(f"| {summary['board']} | {design} | {summary['device']} | {utilisation} | "
                    f"{summary['fmax_mhz']} | {summary['clock_mhz']:g} | {summary['target_mhz']:g} | "
                    f"{verdict} | {_path_text(path)} |")
    if not rows:
        return ""
    return "\n".join([
        "## Board tops (`make bitstream`)", "",
        "The whole board design as built by the last `make bitstream BOARD=… [ARGS=\"--design conv\"]` "
        "on this machine: UART, host link, register slices and the density pipeline (design "
        "`density`) or the sparse convolution engine (design `conv`: density unit, kernel scaler, "
        "window generators, sparse MAC engine, requantisation). It runs at the board's clock; the "
        "target is the performance goal.", "",
        "| board | design | device | utilisation | Fmax (MHz) | board clock | target | meets target | critical path |",
        "|---|---|---|---|---|---|---|---|---|", *rows, ""])


def _markdown(results, build_dir=None):
    lines = []
    for family, spec in FAMILIES.items():
        rows = [r for r in results if r["family"] == family]
        if not rows:
            continue
        labels = list(spec["cells"]) + ["FF"]
        lines += [f"### {spec['label']}, target {spec['target_mhz']:g} MHz", "",
                  "| block | " + " | ".join(labels) + " | harness FF | Fmax (MHz) | meets target | critical path |",
                  "|---|" + "---|" * (len(labels) + 4)]
        for r in rows:
            cells = r.get("cells", {})
            if "error" in r:
                fmax, meets = "—", f"no: {r['error']}"
            elif r["fmax_mhz"] is None:
                fmax, meets = "—", "no clock left after synthesis"
            else:
                fmax = f"{r['fmax_mhz']}"
                meets = "yes" if r["meets_target"] else \
                    f"no, {spec['target_mhz'] - r['fmax_mhz']:.1f} MHz short"
            path = critical_path(Path(build_dir) / r["block"] / family / "report.json") if build_dir else None
            lines.append(f"| {r['block']} | " + " | ".join(str(cells.get(l, "—")) for l in labels) +
                         f" | {r['harness_ff']} | {fmax} | {meets} | {_path_text(path)} |")
        lines.append("")
    return "\n".join(lines)


_REPORT_HEADER = """# Utilisation and timing

Written by `make report` (`dynsparse report`); the same figures are in
`docs/report.json`. Every block with its default parameters (`make list`).

## Method

1. **Cells**: the block alone, synthesised by Yosys (`synth_ice40 -dsp` for
   iCE40, `synth_ecp5` for ECP5): 4-input LUTs, carry cells, flip-flops, DSPs
   (`SB_MAC16` / `MULT18X18D`) and block RAMs (`SB_RAM40_4K` / `DP16KD`).
2. **Fmax**: the block inside a measurement harness (`boards/harness.py`):
   every input port is driven from a flip-flop loaded from a serial shift
   register, every output port is captured into a shift register read out
   serially, so the design has three pins and nothing can be optimised away.
   The harness adds only flip-flops (the *harness FF* column) and no logic in
   the block's paths, so the critical path nextpnr reports is the block's own.
   Since the host link's rows of 2026-11-24 the harness's flip-flops have no
   reset, and the block's reset comes from a flip-flop loaded from the `rst`
   pin (as from a board's reset synchroniser), so no path starts at a pad.
   nextpnr (`--up5k --package sg48`, `--25k --package CABGA381`, seed 1) places
   and routes it against the target clock and reports the Fmax.
3. Targets: 42 MHz on iCE40UP5K, 125 MHz on ECP5-25F. A block that misses
   one is marked with how much it misses by. nextpnr-ice40 does not time
   `SB_MAC16` paths, so every block registers its DSP inputs and outputs.

"""

_REPORT_FOOTER = """
Commands: `make report` (all blocks, both families, a few minutes);
`make report ARGS="--block density --family ice40-up5k"` for one.
"""


def run_report(blocks, *, families=None, build_dir=Path("build/report"), docs=Path("docs"), log=print,
               reuse=False, boards_dir=Path("build/boards")):
    """Measure ``blocks`` (name -> component factory) on ``families``; write JSON and Markdown.

    Rows of blocks or families not measured in this run are kept from the
    published figures (``docs/report.json``, or ``build_dir/report.json`` without
    ``docs``). With ``reuse``, those figures are formatted again without running
    the tools.
    """
    families = families or list(FAMILIES)
    build_dir = Path(build_dir)
    previous_path = build_dir / "report.json"
    # The published figures (docs/report.json) are the base: the last run's file in build/ may
    # hold only the blocks a partial run measured.
    base_path = Path(docs) / "report.json" if docs is not None and (Path(docs) / "report.json").exists() \
        else previous_path
    previous = json.loads(base_path.read_text()) if base_path.exists() else []
    if reuse:
        results = previous
    else:
        measured = []
        total = len(blocks) * len(families)
        for name, factory in blocks.items():
            for family in families:
                log(f"[{len(measured) + 1}/{total}] {name} on {family} ...")
                measured.append(measure_block(name, factory, family, build_dir, log=log))
        # The rows of blocks and families not measured now are kept from the last run, so that
        # `--block hostlink` updates its rows instead of dropping every other block's.
        new = {(r["block"], r["family"]): r for r in measured}
        results = [new.pop((r["block"], r["family"]), r) for r in previous] + list(new.values())
        build_dir.mkdir(parents=True, exist_ok=True)
        previous_path.write_text(json.dumps(results, indent=2))
    table = _markdown(results, build_dir) + "\n" + _boards_markdown(boards_dir)
    if docs is not None:
        (Path(docs) / "report.json").write_text(json.dumps(results, indent=2))
        (Path(docs) / "report.md").write_text(_REPORT_HEADER + table + _REPORT_FOOTER)
    log(table)
    return results
