"""The blocks the project generates and tests, with their parameters.

Each entry names the component class, the parameters a user may override
on the command line (``dynsparse verilog --block density --kernel-size 5``),
the cocotb testbench and the parameter sets it runs with.
"""

import importlib
from dataclasses import dataclass, field

from .runner import VERILATOR_OPT, run_cocotb


__all__ = ["Block", "BLOCKS", "make_block", "run_block_testbench"]


@dataclass(frozen=True)
class Block:
    name: str
    component: str                      # "module:Class" under dynsparse (e.g. "hdl.window:WindowGenerator")
    summary: str
    parameters: dict                    # name -> (default, help)
    testbench: str = None               # cocotb test module under dynsparse.sim.tb
    # variant -> {"block": {...}, ...}; "simulators": the variant's simulators, "verilator_opt": the
    # C++ optimisation of its Verilator model (runner.VERILATOR_OPT unless the simulation is long)
    test_variants: dict = field(default_factory=dict)
    #: the blocks an assembly is made of (each tested, and synthesised for iCE40, on its own):
    #: the test suite synthesises an assembly to Yosys' coarse netlist, the report harness fully
    parts: tuple = ()

    def component_class(self):
        module, cls = self.component.split(":")
        return getattr(importlib.import_module(f"dynsparse.{module}"), cls)

    def defaults(self):
        return {name: default for name, (default, _) in self.parameters.items()}


#: Parameters of the blocks that work on images.
_IMAGE_PARAMETERS = {
    "kernel_size": (3, "window size K (odd)"),
    "channels":    (1, "channels per pixel"),
    "max_width":   (640, "largest frame width (line buffer depth)"),
    "max_height":  (480, "largest frame height"),
}

#: Testbench parameter sets of the blocks that work on images: the block's and the frame's size.
_IMAGE_VARIANTS = {
    "k3c1": {"block": {"kernel_size": 3, "channels": 1, "max_width": 64, "max_height": 64},
             "frame": [16, 24]},
    "k5c2": {"block": {"kernel_size": 5, "channels": 2, "max_width": 32, "max_height": 32},
             "frame": [12, 20]},
}


BLOCKS = {block.name: block for block in [
    Block(
        name="window",
        component="hdl.window:WindowGenerator",
        summary="K×K windows around every pixel, zero/replicate/reflect padding, padding flags",
        parameters=_IMAGE_PARAMETERS,
        testbench="dynsparse.sim.tb.tb_window",
        test_variants=_IMAGE_VARIANTS,
    ),
    Block(
        name="density",
        component="hdl.density:DensityUnit",
        summary="local standard deviation over K×K, normalised by a reference, UQ1.8 density",
        parameters=_IMAGE_PARAMETERS,
        testbench="dynsparse.sim.tb.tb_density",
        test_variants=_IMAGE_VARIANTS,
    ),
    Block(
        name="pipeline",
        component="hdl.pipeline:DensityPipeline",
        summary="window generator + density unit: raster pixels in, density map out",
        parts=("window", "density"),
        parameters=_IMAGE_PARAMETERS,
        testbench="dynsparse.sim.tb.tb_pipeline",
        test_variants={
            **_IMAGE_VARIANTS,
            # a line buffer deeper than the frame
            "k3c1": {"block": {"kernel_size": 3, "channels": 1, "max_width": 256, "max_height": 256},
                     "frame": [16, 24]},
        },
    ),
    Block(
        name="scaler",
        component="hdl.scaler:KernelScaler",
        summary="density-scaled weights, pruned and compacted: one tap list per output channel and position",
        parameters={
            "kernel_size":  (3, "kernel size K (odd)"),
            "in_channels":  (1, "input channels C_in"),
            "out_channels": (8, "output channels C_out (one list each)"),
            "max_width":    (640, "largest frame width"),
            "max_height":   (480, "largest frame height"),
        },
        testbench="dynsparse.sim.tb.tb_scaler",
        test_variants={
            "k3ci1co4": {"block": {"kernel_size": 3, "in_channels": 1, "out_channels": 4,
                                   "max_width": 32, "max_height": 32},
                         "frame": [8, 12]},
            "k5ci2co3": {"block": {"kernel_size": 5, "in_channels": 2, "out_channels": 3,
                                   "max_width": 16, "max_height": 16},
                         "frame": [6, 8]},
        },
    ),
    Block(
        name="tiles",
        component="hdl.tiles:TileAverager",
        summary="tap densities of T×T tiles (tile size > 1), repeated for every pixel of the tile",
        parameters={
            "kernel_size": (3, "kernel size K (odd)"),
            "channels":    (1, "channels of the density map"),
            "tile_size":   (4, "tile size T (power of two, T + K <= 15)"),
            "max_width":   (640, "largest frame width (a multiple of T)"),
            "max_height":  (480, "largest frame height (a multiple of T)"),
        },
        testbench="dynsparse.sim.tb.tb_tiles",
        test_variants={
            "k3c1t4": {"block": {"kernel_size": 3, "channels": 1, "tile_size": 4,
                                 "max_width": 32, "max_height": 32},
                       "frame": [16, 24]},
            "k5c2t2": {"block": {"kernel_size": 5, "channels": 2, "tile_size": 2,
                                 "max_width": 16, "max_height": 16},
                       "frame": [8, 12]},
        },
    ),
    Block(
        name="uart_rx",
        component="hdl.uart:UARTReceiver",
        summary="UART receiver, 8N1, framing and overrun flags",
        parameters={"divisor": (104, "clock cycles per bit")},
    ),
    Block(
        name="uart_tx",
        component="hdl.uart:UARTTransmitter",
        summary="UART transmitter, 8N1",
        parameters={"divisor": (104, "clock cycles per bit")},
    ),
    Block(
        name="hostlink",
        component="hdl.hostlink:HostLink",
        summary="host command protocol over a byte stream: registers, frames, counters, watchdog",
        parameters={
            "channels":       (1, "channels per pixel"),
            "max_width":      (640, "largest frame width"),
            "max_height":     (480, "largest frame height"),
            "timeout_cycles": (600_000, "watchdog: silence in cycles before a command or frame is abandoned"),
        },
    ),
    Block(
        name="board",
        component="boards.top:DensityBoard",
        summary="UART pins to UART pins: host link + density pipeline (the board top without pins)",
        parts=("hostlink", "uart_rx", "uart_tx", "pipeline"),
        parameters={
            "clk_freq":    (12_000_000, "clock frequency in Hz"),
            "baud":        (115_200, "UART bit rate"),
            "kernel_size": (3, "density neighbourhood K (odd)"),
            "max_width":   (256, "largest frame width"),
            "max_height":  (256, "largest frame height"),
            "watchdog_ms": (100, "host link watchdog in milliseconds"),
        },
        testbench="dynsparse.sim.tb.tb_board",
        test_variants={
            "sim": {"block": {"clk_freq": 1_000_000, "baud": 125_000, "kernel_size": 3,
                              "max_width": 32, "max_height": 32, "watchdog_ms": 2},
                    "frame": [10, 14]},
        },
    ),
    Block(
        name="convboard",
        component="boards.top:ConvBoard",
        summary="UART pins to UART pins: host link + sparse convolution engine (the conv board top without pins)",
        parts=("hostlink", "uart_rx", "uart_tx", "convpipe", "reconstructor"),
        parameters={
            "clk_freq":     (12_000_000, "clock frequency in Hz"),
            "baud":         (115_200, "UART bit rate"),
            "kernel_size":  (3, "convolution kernel K (odd)"),
            "out_channels": (4, "output channels C_out (int8 results per pixel)"),
            "lanes":        (2, "multiplier lanes (1 … C_out)"),
            "max_width":    (64, "largest frame width"),
            "max_height":   (64, "largest frame height"),
            "watchdog_ms":  (100, "host link watchdog in milliseconds"),
        },
        testbench="dynsparse.sim.tb.tb_convboard",
        test_variants={
            "sim": {"block": {"clk_freq": 1_000_000, "baud": 250_000, "kernel_size": 3, "out_channels": 4,
                              "lanes": 2, "max_width": 32, "max_height": 32, "watchdog_ms": 4},
                    "frame": [10, 12], "verilator_opt": "-O1"},
        },
    ),
    Block(
        name="spnboard",
        component="boards.top:SPNBoard",
        summary="UART pins to UART pins: host link + the encoding loop (the SPN board top without pins)",
        parts=("hostlink", "uart_rx", "uart_tx", "spnloop"),
        parameters={
            "clk_freq":     (12_000_000, "clock frequency in Hz"),
            "baud":         (115_200, "UART bit rate"),
            "channels":     (8, "feature maps F"),
            "spn_channels": (4, "maps of the SPN's first two layers S"),
            "kernel_size":  (3, "kernel K (odd)"),
            "max_length":   (48, "largest peptide map length L"),
            "iterations":   (2, "loop iterations T"),
            "watchdog_ms":  (100, "host link watchdog in milliseconds"),
        },
        testbench="dynsparse.sim.tb.tb_spnboard",
        test_variants={
            "sim": {"block": {"clk_freq": 1_000_000, "baud": 250_000, "channels": 3, "spn_channels": 2,
                              "kernel_size": 3, "max_length": 12, "iterations": 2, "watchdog_ms": 30},
                    "length": 10, "verilator_opt": "-O1"},
        },
    ),
    Block(
        name="sparseconv",
        component="hdl.sparseconv:SparseConv",
        summary="sparse-tap convolution: MAC lanes walk tap lists, skip pruned and masked padding taps",
        parameters={
            "kernel_size":  (3, "window size K (odd)"),
            "in_channels":  (1, "input channels C_in"),
            "out_channels": (8, "output channels C_out"),
            "lanes":        (8, "multiplier lanes (1 … C_out)"),
            "max_width":    (640, "largest frame width"),
            "max_height":   (480, "largest frame height"),
            "block_size":   (4, "padding-block size (power of two)"),
        },
        testbench="dynsparse.sim.tb.tb_sparseconv",
        test_variants={
            "k3ci1co4l2": {"block": {"kernel_size": 3, "in_channels": 1, "out_channels": 4, "lanes": 2,
                                     "max_width": 64, "max_height": 64, "block_size": 4},
                           "frame": [10, 12]},
            "k5ci2co3l3": {"block": {"kernel_size": 5, "in_channels": 2, "out_channels": 3, "lanes": 3,
                                     "max_width": 32, "max_height": 32, "block_size": 2},
                           "frame": [6, 7]},
        },
    ),
    Block(
        name="laneconv",
        component="hdl.laneconv:LaneConv",
        summary="compact sparse-tap convolution: tap entries streamed per lane, no list copies (small FPGAs)",
        parameters={
            "kernel_size":  (3, "window size K (odd)"),
            "in_channels":  (1, "input channels C_in"),
            "out_channels": (8, "output channels C_out"),
            "lanes":        (8, "multiplier lanes (1 … C_out)"),
            "max_width":    (640, "largest frame width"),
            "max_height":   (480, "largest frame height"),
            "block_size":   (4, "padding-block size (power of two)"),
        },
        testbench="dynsparse.sim.tb.tb_laneconv",
        test_variants={
            "k3ci1co8l8": {"block": {"kernel_size": 3, "in_channels": 1, "out_channels": 8, "lanes": 8,
                                     "max_width": 64, "max_height": 64, "block_size": 4},
                           "frame": [10, 12]},
            "k5ci2co3l2": {"block": {"kernel_size": 5, "in_channels": 2, "out_channels": 3, "lanes": 2,
                                     "max_width": 32, "max_height": 32, "block_size": 2},
                           "frame": [6, 7]},
        },
    ),
    Block(
        name="packedconv",
        component="hdl.packedconv:PackedConv",
        summary="packed sparse-tap convolution: lanes follow a host-packed schedule over many positions",
        parameters={
            "kernel_size":  (3, "window size K (odd)"),
            "in_channels":  (1, "input channels C_in"),
            "out_channels": (8, "output channels C_out"),
            "lanes":        (8, "multiplier lanes (1 … C_out)"),
            "ring_depth":   (4096, "pixels kept (power of two, > 2·(r·W + r))"),
            "result_slots": (2048, "result slots per channel (power of two)"),
        },
        testbench="dynsparse.sim.tb.tb_packedconv",
        test_variants={
            "k3ci1co8l8": {"block": {"kernel_size": 3, "in_channels": 1, "out_channels": 8, "lanes": 8,
                                     "ring_depth": 64, "result_slots": 16},
                           "frame": [10, 12]},
            "k5ci2co3l2": {"block": {"kernel_size": 5, "in_channels": 2, "out_channels": 3, "lanes": 2,
                                     "ring_depth": 64, "result_slots": 8},
                           "frame": [6, 7], "block_size": 2},
        },
    ),
    Block(
        name="seqwindow",
        component="hdl.sequence:SequenceWindow",
        summary="1×K window around every position of a sequence, on a shift register (the heads' 1-D mode)",
        parameters={
            "kernel_size": (7, "window size K (odd)"),
            "channels":    (8, "values per position"),
            "max_length":  (64, "longest sequence"),
        },
    ),
    Block(
        name="headlayer",
        component="hdl.heads:HeadLayer",
        summary="sampled-offset heads (seed 004): window of reach n, run-time head table, sparse-tap engine",
        parameters={
            "reach":       (2, "offset reach n (window 2n+1, 0 … 7)"),
            "in_channels": (1, "input channels C_in"),
            "heads":       (8, "heads H (output channels)"),
            "lanes":       (2, "multiplier lanes (1 … H)"),
            "capacity":    (8, "taps a head may hold (1 … C_in·(2n+1)²)"),
            "max_width":   (64, "largest frame width"),
            "max_height":  (64, "largest frame height"),
            "signed":      (False, "signed 8-bit inputs (feature maps, peptide codes)"),
            "sequence":    (False, "1-D mode: one sequence a frame, a shift-register window, no line buffer"),
            "requantize":  (False, "int8 results (multiplier, shift)"),
        },
        testbench="dynsparse.sim.tb.tb_headlayer",
        test_variants={
            # task: the real data of the trained-heads test; frame: [height, width] of every frame
            # (peptides: 1-D mode, one sequence of 20 positions a frame).
            "digits": {"block": {"reach": 2, "in_channels": 1, "heads": 6, "lanes": 2, "capacity": 5,
                                 "max_width": 16, "max_height": 16},
                       "task": "digits", "frame": [8, 8], "verilator_opt": "-O1"},
            "peptides": {"block": {"reach": 3, "in_channels": 8, "heads": 4, "lanes": 3, "capacity": 4,
                                   "max_width": 32, "signed": True, "sequence": True, "requantize": True},
                         "task": "amp", "frame": [1, 20], "simulators": ["icarus", "verilator"]},
        },
    ),
    Block(
        name="convpipe",
        component="hdl.convpipe:SparseConvPipeline",
        summary="pixels to sparse convolution: density, kernel scaler, pixel FIFO, windows, sparse engine",
        parts=("pipeline", "window", "tiles", "scaler", "sparseconv"),
        parameters={
            "kernel_size":  (3, "convolution kernel K (odd)"),
            "in_channels":  (1, "input channels C_in"),
            "out_channels": (8, "output channels C_out"),
            "lanes":        (8, "multiplier lanes (1 … C_out)"),
            "max_width":    (640, "largest frame width"),
            "max_height":   (480, "largest frame height"),
            "requantize":   (False, "int8 results (multiplier, shift) instead of accumulators"),
        },
        testbench="dynsparse.sim.tb.tb_convpipe",
        test_variants={
            "k3ci1co4l2": {"block": {"kernel_size": 3, "in_channels": 1, "out_channels": 4, "lanes": 2,
                                     "max_width": 32, "max_height": 32},
                           "frame": [10, 14]},
            "k3ci2co3l3q": {"block": {"kernel_size": 3, "in_channels": 2, "out_channels": 3, "lanes": 3,
                                      "max_width": 16, "max_height": 16, "requantize": True},
                            "frame": [8, 11]},
        },
    ),
    Block(
        name="anisopool",
        component="hdl.anisopool:AnisoPool",
        summary="anisotropic pooling (average or max) of an H×L map, window set at run time from scale codes",
        parameters={
            "max_height": (8, "largest map height H (rows)"),
            "max_length": (64, "largest map length L (positions)"),
            "base_h":     (3, "window height at scale 1.0"),
            "base_l":     (5, "window length at scale 1.0"),
            "k_h_min":    (1, "smallest window height"),
            "k_h_max":    (5, "largest window height"),
            "k_l_min":    (1, "smallest window length"),
            "k_l_max":    (9, "largest window length"),
        },
        testbench="dynsparse.sim.tb.tb_anisopool",
        test_variants={
            "h8l48": {"block": {"max_height": 8, "max_length": 48, "base_h": 3, "base_l": 5,
                                "k_h_min": 1, "k_h_max": 5, "k_l_min": 1, "k_l_max": 9},
                      "map": [8, 20], "trained": [0, 30, 3]},
        },
    ),
    Block(
        name="spn",
        component="hdl.spn:ScalePredictor",
        summary="scale prediction network: three int8 conv layers with ReLU and a sum to two UQ2.6 scale codes",
        parameters={
            "channels":     (8, "input maps F"),
            "spn_channels": (4, "maps of the first two layers S"),
            "kernel_size":  (3, "kernel K (odd)"),
            "max_height":   (8, "largest map height H"),
            "max_length":   (64, "largest map length L"),
            "iterations":   (2, "loop iterations whose constants are held"),
            "bias_bits":    (32, "signed bias width"),
        },
        testbench="dynsparse.sim.tb.tb_spn",
        test_variants={
            # the model's geometry (golden.spn.SPNConfig); trained: (seed, epochs, peptides) of the
            # model whose held-out peptides the Verilator run checks (DYNSPARSE_HELD_OUT=all: every one)
            "f8s4k3": {"block": {"channels": 8, "spn_channels": 4, "kernel_size": 3, "max_height": 8,
                                 "max_length": 48, "iterations": 2},
                       "map": [8, 48], "random_map": [3, 8], "trained": [0, 30, 16], "verilator_opt": "-O1"},
            "f3s2k3": {"block": {"channels": 3, "spn_channels": 2, "kernel_size": 3, "max_height": 8,
                                 "max_length": 16, "iterations": 2},
                       "map": [6, 10], "random_map": [6, 10]},
        },
    ),
    Block(
        name="spnloop",
        component="hdl.spnloop:EncodingLoop",
        summary="the encoding loop: conv → scale prediction → anisotropic pooling, T times, and the linear head",
        parts=("spn", "anisopool"),
        parameters={
            "channels":     (8, "feature maps F"),
            "spn_channels": (4, "maps of the SPN's first two layers S"),
            "kernel_size":  (3, "kernel K of every convolution (odd)"),
            "max_height":   (8, "largest map height H"),
            "max_length":   (64, "largest map length L"),
            "iterations":   (2, "loop iterations T"),
            "bias_bits":    (32, "signed bias width"),
            "base_h":       (3, "pooling window height at scale 1.0"),
            "base_l":       (5, "pooling window length at scale 1.0"),
            "k_h_min":      (1, "smallest pooling height"),
            "k_h_max":      (5, "largest pooling height"),
            "k_l_min":      (1, "smallest pooling length"),
            "k_l_max":      (9, "largest pooling length"),
        },
        testbench="dynsparse.sim.tb.tb_spnloop",
        test_variants={
            # length: of the maps the tests send (at least 8); random_length, random_maps: the longest
            # random map and how many each stall test sends; trained: (seed, epochs, peptides) of the model whose held-out peptides the
            # Verilator run checks (DYNSPARSE_HELD_OUT=all: every one). The same testbench runs the
            # small geometry on Icarus and the model's own (about 100 000 cycles a map, too slow for
            # Icarus) on Verilator.
            "f3s2k3": {"block": {"channels": 3, "spn_channels": 2, "kernel_size": 3, "max_height": 8,
                                 "max_length": 16, "iterations": 2},
                       "length": 10, "random_length": 12, "random_maps": 1, "simulators": ["icarus"]},
            "f8s4k3": {"block": {"channels": 8, "spn_channels": 4, "kernel_size": 3, "max_height": 8,
                                 "max_length": 48, "iterations": 2},
                       "length": 8, "random_length": 8, "random_maps": 2, "trained": [0, 30, 8],
                       "simulators": ["verilator"], "verilator_opt": "-O1"},
        },
    ),
    Block(
        name="reconstructor",
        component="hdl.reconstructor:WeightReconstructor",
        summary="mask decoder + interpolator: compressed weight stream in, every weight (zero/linear/learned) out",
        parameters={
            "max_entries":    (2048, "largest tensor N (entries per buffer bank)"),
            "timeout_cycles": (1_000_000, "watchdog: cycles without a byte before a stream is abandoned"),
        },
        testbench="dynsparse.sim.tb.tb_reconstructor",
        test_variants={
            "e320": {"block": {"max_entries": 320, "timeout_cycles": 100}},
        },
    ),
    Block(
        name="maskdecoder",
        component="hdl.maskdecoder:MaskDecoder",
        summary="weight-stream decoder: header, CRC-32, bitmask/RLE/CSR/CSC into a double-buffered tensor, error codes",
        parameters={
            "max_entries":    (2048, "largest tensor N (entries per buffer bank)"),
            "timeout_cycles": (1_000_000, "watchdog: cycles without a byte before a stream is abandoned"),
        },
        testbench="dynsparse.sim.tb.tb_maskdecoder",
        test_variants={
            "e320": {"block": {"max_entries": 320, "timeout_cycles": 100}, "fuzz": 60},
        },
    ),
]}


def make_block(name, **overrides):
    """Instantiate block ``name`` with its defaults updated by ``overrides``."""
    if name not in BLOCKS:
        raise ValueError(f"block must be one of {', '.join(BLOCKS)}, not {name!r}")
    block = BLOCKS[name]
    unknown = set(overrides) - set(block.parameters)
    if unknown:
        raise ValueError(f"block {name} has no parameter {', '.join(sorted(unknown))}; "
                         f"it has {', '.join(block.parameters)}")
    return block.component_class()(**{**block.defaults(), **overrides})


def run_block_testbench(name, simulator, *, variant=None, waves=False, testcase=None,
                        extra_env=None):
    """Run block ``name``'s cocotb testbench on ``simulator`` with one of its test variants."""
    block = BLOCKS[name]
    variant = variant or next(iter(block.test_variants))
    params = block.test_variants[variant]
    return run_cocotb(block=name, component=make_block(name, **params["block"]), params=params,
                      simulator=simulator, test_module=block.testbench, waves=waves,
                      testcase=testcase, extra_env=extra_env,
                      verilator_opt=params.get("verilator_opt", VERILATOR_OPT))
