"""Measure the fixed-point density against the float reference on real images.

Run ``.venv/bin/python -m dynsparse.golden.measure_density_error`` to print the
table quoted in ``docs/density.md``. The error of a pixel is
``256 * density_map_float - density_map`` in LSBs of UQ1.8: positive where
the integer model is below the float one (the floor square root makes it so
by up to one LSB).
"""

import numpy as np

from .images import real_image
from .density import inv_ref_var, neighbourhood_sums, density_from_sums, local_std_float


__all__ = ["REAL_IMAGES", "KERNEL_SIZES", "REF_STDS", "measure_density_error", "summarise", "main"]


#: scikit-image images the measurement uses (see :mod:`.images`).
REAL_IMAGES = ("camera", "text", "page", "moon", "hubble_deep_field")


#: Kernel sizes and reference stds of the table in ``docs/density.md``.
KERNEL_SIZES = (3, 5, 7)
REF_STDS = (4, 8, 12, 16, 32, 64, 100)


def measure_density_error(*, images=REAL_IMAGES, kernel_sizes=KERNEL_SIZES, ref_stds=REF_STDS):
    """Return one dict per (image, kernel size, reference std) with the error statistics.

    Keys: ``image``, ``kernel_size``, ``ref_std``, ``inv_ref_var``, ``pixels``,
    ``max_abs`` (largest absolute error, LSB), ``max_below`` / ``max_above``
    (largest error with the integer model below / above the float one, LSB,
    both >= 0), ``mean`` (mean signed error, LSB), ``saturated`` (fraction of
    pixels at 256).
    """
    rows = []
    for name in images:
        frame = real_image(name)[..., None] if isinstance(name, str) else name
        label = name if isinstance(name, str) else "array"
        for kernel_size in kernel_sizes:
            n, s1, s2 = neighbourhood_sums(frame, kernel_size=kernel_size)
            std = local_std_float(frame, kernel_size=kernel_size)
            for ref_std in ref_stds:
                inv = inv_ref_var(ref_std)
                fixed = density_from_sums(n, s1, s2, kernel_size=kernel_size, inv_ref_var=inv)
                error = 256 * np.minimum(1.0, std / ref_std) - fixed
                rows.append({
                    "image": label, "kernel_size": kernel_size, "ref_std": ref_std,
                    "inv_ref_var": inv, "pixels": error.size,
                    "max_abs": float(np.abs(error).max()),
                    "max_below": max(0.0, float(error.max())),
                    "max_above": max(0.0, float(-error.min())),
                    "mean": float(error.mean()),
                    "saturated": float((fixed == 256).mean()),
                })
    return rows


def summarise(rows, key):
    """Worst ``max_below`` / ``max_above`` and the mean error per value of ``key``."""
    summary = {}
    for row in rows:
        below, above, total, pixels = summary.get(row[key], (0.0, 0.0, 0.0, 0))
        summary[row[key]] = (max(below, row["max_below"]), max(above, row["max_above"]),
                             total + row["mean"] * row["pixels"], pixels + row["pixels"])
    return {value: {"max_below": below, "max_above": above, "mean": total / pixels}
            for value, (below, above, total, pixels) in summary.items()}


def main():
    rows = measure_density_error()
    print(f"{'image':<18} {'K':>2} {'ref_std':>7} {'inv_ref_var':>11} {'max|err|':>9} "
          f"{'below':>9} {'above':>9} {'mean':>7} {'sat':>6}")
    for row in rows:
        print(f"{row['image']:<18} {row['kernel_size']:>2} {row['ref_std']:>7} "
              f"{row['inv_ref_var']:>11} {row['max_abs']:>9.5f} {row['max_below']:>9.5f} "
              f"{row['max_above']:>9.5f} {row['mean']:>7.4f} {row['saturated']:>6.3f}")
    for key in ("kernel_size", "ref_std"):
        print(f"\nworst over all images, by {key}:")
        for value, stats in summarise(rows, key).items():
            print(f"  {value:>7}: below {stats['max_below']:.5f}  above {stats['max_above']:.5f}  "
                  f"mean {stats['mean']:.4f} LSB")
    worst = max(row["max_abs"] for row in rows)
    above = max(row["max_above"] for row in rows)
    print(f"\nlargest |error|: {worst:.5f} LSB = {worst / 256:.6f} of full scale; "
          f"largest overshoot (integer above float): {above:.5f} LSB")


if __name__ == "__main__":
    main()
