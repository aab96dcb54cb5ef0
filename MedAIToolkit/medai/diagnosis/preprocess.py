"""X-ray -> network input: checks, percentile intensity scaling, square resize, optional CLAHE standardisation."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MedAIInputError

PERCENTILES = (0.5, 99.5)
INTENSITY_MODES = ("percentile", "clahe")
CLAHE_CLIP_LIMIT = 0.01  # scikit-image's default; tiles of 1/8 of the image side


def check_xray_array(array: np.ndarray, name: str = "image") -> np.ndarray:
    """A 2D finite, non-constant grey image (a one-slice volume ``(1, H, W)`` is accepted)."""
    array = np.asarray(array)
    if array.ndim == 3 and 1 in array.shape:
        array = array.reshape([n for n in array.shape if n != 1] or [1])
    if array.ndim != 2:
        raise MedAIInputError(f"{name}: a chest X-ray is one 2D image; got an array of shape {tuple(array.shape)} "
                              f"(a CT/MR volume or a multi-frame series?)")
    if array.dtype.kind not in "uif" or array.dtype.kind == "c":
        raise MedAIInputError(f"{name}: unsupported pixel type {array.dtype}")
    if min(array.shape) < 16:
        raise MedAIInputError(f"{name}: image of {array.shape[1]}x{array.shape[0]} pixels is too small for a chest X-ray")
    array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
        raise MedAIInputError(f"{name}: the image contains NaN or infinite pixel values")
    if float(array.max() - array.min()) == 0.0:
        raise MedAIInputError(f"{name}: the image is empty (all pixels equal {float(array.min()):g})")
    return array


def preprocess(array: np.ndarray, size: int, name: str = "image", intensity: str = "percentile") -> torch.Tensor:
    """(1, size, size) float32 tensor: intensities clipped to the 0.5-99.5 percentiles and scaled to 0-1
    (bit depth and window independent: 8-bit PNG and 16-bit DICOM give the same input), then resized.

    ``intensity="clahe"`` then equalises the histogram locally on the network grid (CLAHE, scikit-image): sources
    that differ in exposure, processing and contrast look alike to the network (the model card names the mode).
    """
    if intensity not in INTENSITY_MODES:
        raise ValueError(f"unknown intensity standardisation '{intensity}' ({', '.join(INTENSITY_MODES)})")
    array = check_xray_array(array, name)
    low, high = np.percentile(array, PERCENTILES)
    if high <= low:
        low, high = float(array.min()), float(array.max())
    scaled = np.clip((array - low) / (high - low), 0.0, 1.0).astype(np.float32)
    tensor = torch.from_numpy(scaled)[None, None]
    resized = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    resized = resized[0].clamp_(0.0, 1.0)
    if intensity == "clahe":
        from skimage.exposure import equalize_adapthist

        resized = torch.from_numpy(equalize_adapthist(resized[0].numpy().astype(np.float64),
                                                      clip_limit=CLAHE_CLIP_LIMIT).astype(np.float32))[None]
    return resized
