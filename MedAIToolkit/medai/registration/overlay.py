"""2D views of a registration: the DRR over the frame as a blend, a checkerboard or an edge overlay.

All take two (H, W) images on the same detector grid (the frame and the DRR at a pose), "bright =
attenuating", and return (H, W, 3) uint8 RGB. Each image is windowed on its own (robust percentiles inside
the frame's field), because a DRR and a fluoroscopy frame do not share an intensity scale.
"""
from __future__ import annotations

import numpy as np

OVERLAY_KINDS = ("blend", "checkerboard", "edges")


def to_grey(image: np.ndarray, mask: np.ndarray | None = None, low: float = 1.0, high: float = 99.5) -> np.ndarray:
    """(H, W) -> float32 in [0, 1], window from the ``low``/``high`` percentiles (inside ``mask`` if given)."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"expected a 2D image, got shape {image.shape}")
    values = image[mask] if mask is not None and mask.any() else image[np.isfinite(image)]
    if values.size == 0:
        return np.zeros(image.shape, np.float32)
    lo, hi = np.percentile(values, [low, high])
    return np.clip((np.nan_to_num(image, nan=lo) - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)


def _rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def _check_pair(frame, drr):
    frame, drr = np.asarray(frame), np.asarray(drr)
    if frame.shape != drr.shape or frame.ndim != 2:
        raise ValueError(f"frame {frame.shape} and DRR {drr.shape} must be 2D images of the same shape")
    return frame, drr


def blend(frame, drr, alpha: float = 0.5, mask=None) -> np.ndarray:
    """Frame in grey, DRR in orange at ``alpha``: where they agree the anatomy looks single, not doubled."""
    frame, drr = _check_pair(frame, drr)
    f, d = to_grey(frame, mask), to_grey(drr, mask)
    tint = np.array([1.0, 0.55, 0.1], np.float32)
    out = (1 - alpha) * _rgb(f) + alpha * d[..., None] * tint
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


def checkerboard(frame, drr, tiles: int = 8, mask=None) -> np.ndarray:
    """Alternating tiles of frame and DRR: edges run straight across tile borders when aligned."""
    frame, drr = _check_pair(frame, drr)
    f, d = to_grey(frame, mask), to_grey(drr, mask)
    h, w = frame.shape
    rows = (np.arange(h) * tiles // h)[:, None]
    cols = (np.arange(w) * tiles // w)[None, :]
    out = np.where((rows + cols) % 2 == 0, f, d)
    return (_rgb(out) * 255).astype(np.uint8)


def edges(image: np.ndarray, mask=None, sigma: float = 1.5) -> np.ndarray:
    """Boolean edge map (Canny on the windowed image)."""
    from skimage.feature import canny

    return canny(to_grey(image, mask), sigma=sigma, mask=mask)


def edge_overlay(frame, drr, mask=None, sigma: float = 1.5) -> np.ndarray:
    """Frame in grey with the DRR's edges in green: the edges sit on the frame's anatomy when aligned."""
    frame, drr = _check_pair(frame, drr)
    out = _rgb(to_grey(frame, mask))
    out[edges(drr, mask, sigma)] = (0.1, 1.0, 0.2)
    return (out * 255).astype(np.uint8)


def overlay(frame, drr, kind: str = "blend", mask=None) -> np.ndarray:
    """One of ``OVERLAY_KINDS``."""
    if kind == "blend":
        return blend(frame, drr, mask=mask)
    if kind == "checkerboard":
        return checkerboard(frame, drr, mask=mask)
    if kind == "edges":
        return edge_overlay(frame, drr, mask=mask)
    raise ValueError(f"unknown overlay {kind!r}; one of {OVERLAY_KINDS}")
