"""Real images bundled with scikit-image, as uint8 grayscale frames."""

import numpy as np


__all__ = ["IMAGE_NAMES", "real_image"]

#: Images used by tests, demos and benchmarks (all ship inside the scikit-image wheel).
IMAGE_NAMES = ("camera", "text", "hubble_deep_field", "page", "moon", "coins")


def real_image(name, *, size=None, offset=None):
    """Load image ``name`` as a uint8 ``[H, W]`` array.

    With ``size=(height, width)`` a crop of that size is taken, at ``offset``
    ``(y, x)`` or, by default, around the image's centre.
    """
    import skimage.data
    from skimage.color import rgb2gray

    if name not in IMAGE_NAMES:
        raise ValueError(f"image must be one of {', '.join(IMAGE_NAMES)}, not {name!r}")
    image = getattr(skimage.data, name)()
    if image.ndim == 3:
        image = np.round(rgb2gray(image[..., :3]) * 255)
    image = np.asarray(image).astype(np.uint8)
    if size is not None:
        height, width = size
        if height > image.shape[0] or width > image.shape[1]:
            raise ValueError(f"crop {height}×{width} is larger than {name} ({image.shape[0]}×{image.shape[1]})")
        if offset is None:
            offset = ((image.shape[0] - height) // 2, (image.shape[1] - width) // 2)
        y, x = offset
        image = image[y:y + height, x:x + width]
    return np.ascontiguousarray(image)
