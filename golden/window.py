"""Golden model of :class:`dynsparse.hdl.window.WindowGenerator`.

Exact semantics: the window of pixel ``(y, x)`` holds, at ``[dy][dx]``, the
pixel ``(y + dy - r, x + dx - r)`` when it lies inside the frame. Outside, it
holds 0 (``zero``), the nearest border pixel (``replicate``: ``aaa|abcd|ddd``)
or the pixel mirrored about the border pixel, which is not repeated
(``reflect``: ``dcb|abcd|cba``), and its ``pad`` flag is 1 in every mode.
Reflection needs ``r + 1`` pixels per side, which is also the hardware's
minimum frame size.
"""

import numpy as np


__all__ = ["PAD_MODES", "windows"]

#: Padding modes by name, in the order of the hardware enumeration's values.
PAD_MODES = ("zero", "replicate", "reflect")

_NUMPY_MODE = {"zero": "constant", "replicate": "edge", "reflect": "reflect"}


def _mode_name(pad_mode):
    name = getattr(pad_mode, "name", pad_mode)
    if isinstance(name, str) and name.lower() in PAD_MODES:
        return name.lower()
    raise ValueError(f"padding mode must be one of {', '.join(PAD_MODES)}, not {pad_mode!r}")


def windows(frame, *, kernel_size, pad_mode="zero"):
    """All K×K windows of a frame.

    Parameters
    ----------
    frame : array ``[H, W, C]`` (or ``[H, W]``, taken as one channel)
    kernel_size : odd int
    pad_mode : ``"zero"``, ``"replicate"``, ``"reflect"`` or a :class:`PadMode`

    Returns
    -------
    values : array ``[H, W, K, K, C]`` of the frame's dtype
    pad : uint8 array ``[H, W, K, K]``, 1 where the element lies outside the frame
    """
    frame = np.asarray(frame)
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.ndim != 3:
        raise ValueError(f"frame must have shape [H, W] or [H, W, C], not {frame.shape}")
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel size must be an odd integer >= 1, not {kernel_size!r}")
    mode = _mode_name(pad_mode)
    r = kernel_size // 2
    height, width, _ = frame.shape
    if mode == "reflect" and (height < r + 1 or width < r + 1):
        raise ValueError(f"reflect padding needs a frame of at least {r + 1}×{r + 1} pixels, "
                         f"not {height}×{width}")
    padded = np.pad(frame, ((r, r), (r, r), (0, 0)), mode=_NUMPY_MODE[mode])
    view = np.lib.stride_tricks.sliding_window_view(padded, (kernel_size, kernel_size), axis=(0, 1))
    values = np.ascontiguousarray(view.transpose(0, 1, 3, 4, 2))      # [H, W, K, K, C]
    inside = np.zeros((height + 2 * r, width + 2 * r), dtype=np.uint8)
    inside[r:r + height, r:r + width] = 1
    pad = 1 - np.lib.stride_tricks.sliding_window_view(inside, (kernel_size, kernel_size))
    return values, np.ascontiguousarray(pad.astype(np.uint8))
