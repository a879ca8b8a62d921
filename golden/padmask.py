"""Padding blocks and the padding mask of seed 001 (geometry only).

A ``W × H`` frame convolved with a K×K kernel is surrounded by a ring of
padding ``r = K // 2`` pixels thick. The ring is cut into *padding blocks*
of ``B`` pixels along the border (``B`` = ``block_size``, 4 by default), each
``r`` pixels deep:

- **top** band, rows ``-r … -1``, every column ``-r … W + r - 1`` (corners
  included): block ``(x + r) // B``, ``ceil((W + 2r) / B)`` blocks;
- **bottom** band, rows ``H … H + r - 1``, numbered the same way;
- **left** band, columns ``-r … -1``, rows ``0 … H - 1``: block ``y // B``,
  ``ceil(H / B)`` blocks;
- **right** band, columns ``W … W + r - 1``, numbered like the left band.

The mask holds one bit per block, 1 = the block is *included* (its padding
values take part in the convolution), 0 = *excluded* (every multiplication
that reads it is skipped). Its bits are in the order top, bottom, left,
right, each band from its block 0; bit ``i`` of the mask memory is
``mask[i]``. With ``pad_mode = zero`` the padding is 0 and every tap that
reads padding is skipped whatever the mask says.
"""

import numpy as np


__all__ = ["BANDS", "mask_layout", "mask_length", "block_map", "check_mask"]

#: Order of the bands in the mask.
BANDS = ("top", "bottom", "left", "right")


def _check_geometry(width, height, kernel_size, block_size):
    for name, value, minimum in (("width", width, 1), ("height", height, 1),
                                 ("kernel size", kernel_size, 1), ("block size", block_size, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise TypeError(f"{name} must be an integer >= {minimum}, not {value!r}")
        if value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, not {value!r}")
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel size must be an odd integer >= 1, not {kernel_size!r}")


def mask_layout(width, height, *, kernel_size, block_size=4):
    """``{band: (first bit, block count)}`` of a frame's mask, bands in :data:`BANDS` order."""
    _check_geometry(width, height, kernel_size, block_size)
    r = kernel_size // 2
    counts = {
        "top":    -(-(width + 2 * r) // block_size),
        "bottom": -(-(width + 2 * r) // block_size),
        "left":   -(-height // block_size),
        "right":  -(-height // block_size),
    }
    if r == 0:
        counts = dict.fromkeys(BANDS, 0)
    layout, first = {}, 0
    for band in BANDS:
        layout[band] = (first, counts[band])
        first += counts[band]
    return layout


def mask_length(width, height, *, kernel_size, block_size=4):
    """Number of padding blocks (mask bits) of a ``width × height`` frame."""
    return sum(count for _, count in mask_layout(width, height, kernel_size=kernel_size,
                                                 block_size=block_size).values())


def block_map(width, height, *, kernel_size, block_size=4):
    """Mask bit index of every position of the padded frame.

    Returns an int32 array ``[H + 2r, W + 2r]``: at ``[y + r, x + r]`` the index
    of the mask bit of the padding block holding pixel ``(y, x)``, or -1 for a
    pixel inside the frame.
    """
    layout = mask_layout(width, height, kernel_size=kernel_size, block_size=block_size)
    r = kernel_size // 2
    ys = np.arange(-r, height + r)[:, None]
    xs = np.arange(-r, width + r)[None, :]
    index = np.full((height + 2 * r, width + 2 * r), -1, dtype=np.int32)
    column_block = np.broadcast_to((xs + r) // block_size, index.shape)
    row_block = np.broadcast_to(np.clip(ys, 0, None) // block_size, index.shape)
    top, bottom = np.broadcast_to(ys < 0, index.shape), np.broadcast_to(ys >= height, index.shape)
    inside_rows = ~top & ~bottom
    left = inside_rows & (xs < 0)
    right = inside_rows & (xs >= width)
    index[top] = layout["top"][0] + column_block[top]
    index[bottom] = layout["bottom"][0] + column_block[bottom]
    index[left] = layout["left"][0] + row_block[left]
    index[right] = layout["right"][0] + row_block[right]
    return index


def check_mask(mask, width, height, *, kernel_size, block_size=4):
    """Return ``mask`` as a uint8 array of 0/1 after checking its length against the frame.

    Raises
    ------
    ValueError
        If the mask has more or fewer bits than the frame has padding blocks, or a
        value other than 0 or 1.
    """
    expected = mask_length(width, height, kernel_size=kernel_size, block_size=block_size)
    mask = np.asarray(mask)
    if mask.ndim != 1:
        raise ValueError(f"padding mask must be a 1-D array of 0/1, not shape {mask.shape}")
    if mask.size != expected:
        raise ValueError(f"padding mask must have {expected} bits for a {width}×{height} frame "
                         f"with K={kernel_size} and blocks of {block_size}, not {mask.size}")
    if mask.size and not np.isin(mask, (0, 1)).all():
        raise ValueError("padding mask bits must be 0 or 1")
    return mask.astype(np.uint8)
