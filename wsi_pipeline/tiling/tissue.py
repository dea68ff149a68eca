"""Tissue detection on a low-resolution image of the slide: saturation Otsu, then clean-up by area in µm²."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TISSUE_MPP = 8.0  # µm/px of the image the mask is computed on
MIN_TISSUE_UM2 = 10_000.0  # smaller tissue objects (e.g. 100 × 100 µm) are dropped as specks
MAX_HOLE_UM2 = 10_000.0  # smaller holes inside tissue are filled


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask; pixel ``(i, j)`` covers level-0 ``[j*ds, (j+1)*ds)`` × ``[i*ds, (i+1)*ds)``
    with ``ds = mpp / mpp0``."""

    mask: np.ndarray  # bool (height, width)
    mpp: float  # µm per mask pixel
    threshold: float  # saturation threshold that was applied


def hsv_saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation ``(max − min) / max`` of uint8 RGB (0 where max is 0), as float64 in [0, 1]."""
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]  # elementwise: ~20× faster than reducing axis -1
    high = np.maximum(np.maximum(red, green), blue).astype(np.float64)
    low = np.minimum(np.minimum(red, green), blue)
    return np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)


def detect_tissue(
    rgb: np.ndarray,
    mpp: float,
    *,
    min_saturation: float = 0.05,
    min_tissue_um2: float = MIN_TISSUE_UM2,
    max_hole_um2: float = MAX_HOLE_UM2,
    sigma_um: float = 8.0,
) -> TissueMask:
    """Tissue mask of an RGB image at ``mpp`` µm/px.

    Tissue is where the (lightly smoothed) saturation exceeds its Otsu threshold — never below
    ``min_saturation``, so a blank slide stays blank. Objects smaller than ``min_tissue_um2`` are removed and
    holes smaller than ``max_hole_um2`` filled.
    """
    from skimage.filters import gaussian, threshold_otsu  # scikit-image loads scipy: only when detecting
    from skimage.morphology import remove_small_holes, remove_small_objects

    saturation = hsv_saturation(rgb)
    sigma_px = sigma_um / mpp
    if sigma_px >= 0.5:
        saturation = gaussian(saturation, sigma=sigma_px)
    otsu = threshold_otsu(saturation) if np.ptp(saturation) > 0 else 1.0
    threshold = max(float(otsu), min_saturation)
    mask = saturation > threshold
    pixel_um2 = mpp * mpp
    mask = remove_small_objects(mask, max_size=max(int(min_tissue_um2 / pixel_um2), 1))
    mask = remove_small_holes(mask, max_size=max(int(max_hole_um2 / pixel_um2), 1))
    return TissueMask(mask=mask, mpp=mpp, threshold=threshold)
