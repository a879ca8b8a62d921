"""``dynsparse demo``: density maps of real images, computed by simulating the RTL.

The images are streamed through the generated Verilog of
:class:`~dynsparse.hdl.pipeline.DensityPipeline` under cocotb; the densities
that come back are checked against the golden model and drawn beside the
image.
"""

import tempfile
from pathlib import Path

import numpy as np

from ..golden.density import density_map, inv_ref_var
from ..golden.images import real_image
from .blocks import make_block
from .runner import run_cocotb


__all__ = ["DEMO_IMAGES", "rtl_density_maps", "run_demo"]

DEMO_IMAGES = ("camera", "text", "hubble_deep_field")


def resized_image(name, size):
    """Image ``name`` scaled (with anti-aliasing) to ``size × size`` uint8."""
    from skimage.transform import resize
    image = real_image(name).astype(np.float64)
    scaled = resize(image, (size, size), anti_aliasing=True, preserve_range=True)
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def rtl_density_maps(frames, *, ref_std, kernel_size=3, simulator="verilator"):
    """Density maps of ``frames`` (uint8 ``[F, H, W]``) from an RTL simulation."""
    frames = np.asarray(frames, dtype=np.uint8)[..., None]
    _, height, width, _ = frames.shape
    params = {"block": {"kernel_size": kernel_size, "channels": 1,
                        "max_width": width, "max_height": height},
              "frame": [height, width]}
    inv = inv_ref_var(ref_std)
    with tempfile.TemporaryDirectory() as scratch:
        frames_in = Path(scratch) / "frames.npz"
        frames_out = Path(scratch) / "densities.npy"
        np.savez(frames_in, frames=frames, inv_ref_var=inv)
        run_cocotb(block="pipeline", component=make_block("pipeline", **params["block"]),
                   params=params, simulator=simulator, test_module="dynsparse.sim.tb.tb_pipeline",
                   testcase="stream_files",
                   extra_env={"DYNSPARSE_FRAMES_IN": str(frames_in),
                              "DYNSPARSE_FRAMES_OUT": str(frames_out)})
        return np.load(frames_out)[..., 0], inv


def run_demo(*, images=None, size=128, simulator="verilator", ref_std=24.0, kernel_size=3,
             out=Path("docs/images")):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = list(images or DEMO_IMAGES)
    frames = np.stack([resized_image(name, size) for name in images])
    print(f"streaming {len(images)} images of {size}×{size} through the RTL on {simulator} ...", flush=True)
    maps, inv = rtl_density_maps(frames, ref_std=ref_std, kernel_size=kernel_size, simulator=simulator)
    for name, frame, rtl in zip(images, frames, maps):
        golden = density_map(frame[..., None], kernel_size=kernel_size, inv_ref_var=inv)[..., 0]
        if not np.array_equal(rtl, golden):
            raise AssertionError(f"{name}: RTL density differs from the golden model "
                                 f"at {np.count_nonzero(rtl != golden)} pixels")

    out.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(len(images), 2, figsize=(7, 3.3 * len(images)), squeeze=False)
    for row, (name, frame, rtl) in enumerate(zip(images, frames, maps)):
        axes[row, 0].imshow(frame, cmap="gray", vmin=0, vmax=255)
        axes[row, 0].set_title(f"{name} ({size}×{size})", fontsize=9)
        shown = axes[row, 1].imshow(rtl / 256, cmap="magma", vmin=0, vmax=1)
        low = np.mean(rtl < 64)
        axes[row, 1].set_title(f"RTL density, K={kernel_size}, ref std {ref_std:g}\n"
                               f"{low:.0%} of pixels below 0.25", fontsize=9)
        figure.colorbar(shown, ax=axes[row, 1], fraction=0.046)
        for axis in axes[row]:
            axis.set_xticks([])
            axis.set_yticks([])
        print(f"  {name:18} mean density {rtl.mean() / 256:.3f}, below 0.25: {low:.1%}, "
              f"saturated: {np.mean(rtl == 256):.1%}; RTL == golden")
    figure.tight_layout()
    path = out / "density_demo.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    print(f"wrote {path}")
    return 0
