"""Simulated fluoroscopy (frames from DRRs) and CT augmentation, for training and benchmarks.

``fluoroscopy_like``: line integrals -> detected quanta (Poisson) -> log -> blur -> display gamma / contrast /
offset -> collimation (circular image intensifier or rectangular shutters) and a truncated field of view; the result
is "bright = attenuating" like :class:`medai.registration.frame.Frame`.
Dose: ``"fixed"`` tube output (10^2.5-10^4.5 quanta per pixel unattenuated, whatever the anatomy: behind an abdomen
that leaves 1-140 quanta per pixel, behind a chest 7-700, at the median body pixel), or ``"aec"``: automatic exposure
control, as every fluoroscopy C-arm has, sets the tube output so that the central measuring field (the middle half of
the detector) receives 10^1.65-10^3.2 quanta per pixel at its median: 10-40 nGy per frame at a flat panel, ~30 quanta
per mm^2 per nGy (IEC RQA5 beam), 0.5-1.5 mm pixels, a detector efficiency of ~0.6.
``carm_processing``: what a C-arm's image chain does to the log image before the display curve: dynamic-range
compression (a fraction of a wide Gaussian low-pass subtracted, so the dense and the thin parts of the body both
stay in the display window) and edge enhancement (unsharp masking); ``random_processing`` draws its settings.
``augment_ct``: HU scale and offset, noise, a random crop and a smooth random deformation; optionally the air
inside the body (lungs, bowel gas) filled with soft tissue (``fill_air``), so that one chest CT also yields
abdomen-like anatomy: spine, ribs and soft tissue without the lungs' contrast.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..geometry import Geometry
from ..io import Volume


FIXED_DOSE_LOG10 = (2.5, 4.5)
"""Quanta per pixel, unattenuated (log10 range), at a fixed tube output."""
AEC_DOSE_LOG10 = (1.65, 3.2)
"""Quanta per pixel at the median of the central measuring field (log10 range) under automatic exposure control."""


def tube_output(line_integrals: np.ndarray, level: float, dose: str = "fixed") -> float:
    """Quanta per pixel before the body for a dose ``level`` drawn in :data:`FIXED_DOSE_LOG10`: ``10 ** level``, or,
    under automatic exposure control, the same place in :data:`AEC_DOSE_LOG10` for the median pixel of the central
    measuring field (the middle half of the detector), whatever the body attenuates."""
    if dose == "fixed":
        return 10 ** level
    if dose != "aec":
        raise ValueError(f"dose must be 'fixed' or 'aec', not {dose!r}")
    share = (level - FIXED_DOSE_LOG10[0]) / (FIXED_DOSE_LOG10[1] - FIXED_DOSE_LOG10[0])
    height, width = line_integrals.shape
    centre = line_integrals[height // 4: height - height // 4, width // 4: width - width // 4]
    transmission = max(float(np.median(np.exp(-np.clip(centre, 0, 30)))), 1e-9)
    return 10 ** (AEC_DOSE_LOG10[0] + share * (AEC_DOSE_LOG10[1] - AEC_DOSE_LOG10[0])) / transmission


def random_processing(rng: np.random.Generator) -> dict:
    """Settings of :func:`carm_processing` as C-arms use them: compression of 30-70% at a 5-15% (of the image width)
    Gaussian, edge enhancement of 0.5-2x at 0.8-2.5%."""
    return {"drc_amount": float(rng.uniform(0.3, 0.7)), "drc_width": float(rng.uniform(0.05, 0.15)),
            "edge_amount": float(rng.uniform(0.5, 2.0)), "edge_width": float(rng.uniform(0.008, 0.025))}


def carm_processing(image: np.ndarray, drc_amount: float = 0.0, drc_width: float = 0.1, edge_amount: float = 0.0,
                    edge_width: float = 0.015) -> np.ndarray:
    """A log image (H, W) through a C-arm's processing: ``image - drc_amount * G(image)`` (dynamic-range
    compression), then ``+ edge_amount * (image - G(image))`` (unsharp masking); the Gaussians' sigmas are
    ``drc_width`` and ``edge_width`` times the image width."""
    image = np.asarray(image, dtype=np.float64)
    width = image.shape[-1]
    if drc_amount > 0:
        image = image - drc_amount * ndimage.gaussian_filter(image, drc_width * width, mode="nearest")
    if edge_amount > 0:
        image = image + edge_amount * (image - ndimage.gaussian_filter(image, edge_width * width, mode="nearest"))
    return image


def fluoroscopy_like(line_integrals: np.ndarray, rng: np.random.Generator, strength: float = 1.0,
                     collimate: bool = True, dose: str = "fixed", processing: dict | None = None,
                     quanta_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(image, field mask) of a degraded frame from DRR line integrals (H, W). ``strength`` 0 returns the DRR.
    ``dose``: "fixed" tube output or "aec" (see the module docstring). ``processing``: :func:`carm_processing`
    settings applied to the log image before the display curve (None: none; draws nothing from ``rng``).
    ``quanta_scale``: the quanta per pixel multiplied by this (e.g. a binned pixel's area over the pixel the dose
    ranges assume)."""
    image = np.asarray(line_integrals, dtype=np.float64)
    height, width = image.shape
    mask = np.ones(image.shape, bool)
    if strength <= 0:
        return image.astype(np.float32), mask
    photons = tube_output(image, rng.uniform(*FIXED_DOSE_LOG10), dose) * quanta_scale / strength
    quanta = rng.poisson(photons * np.exp(-np.clip(image, 0, 30))).astype(np.float64)
    image = -np.log(np.maximum(quanta, 0.5) / photons)
    sigma = rng.uniform(0.0, 1.5 * strength) * max(height, width) / 128
    if sigma > 0.2:
        image = ndimage.gaussian_filter(image, sigma)
    if processing:
        image = carm_processing(image, **processing)
    low, high = np.percentile(image, [0.5, 99.5])
    image = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    image = image ** np.exp(rng.uniform(-0.4, 0.4) * strength)
    image = image * rng.uniform(0.6, 1.4) + rng.uniform(-0.2, 0.2) * strength
    if collimate:
        rows, cols = np.mgrid[0:height, 0:width]
        kind = rng.uniform()
        if kind < 0.35 * strength:  # image intensifier: a circle, dark (unexposed = "no signal") outside
            radius = rng.uniform(0.45, 0.6) * min(height, width)
            centre = (height / 2 + rng.uniform(-0.05, 0.05) * height, width / 2 + rng.uniform(-0.05, 0.05) * width)
            mask &= (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2
        if rng.uniform() < 0.5 * strength:  # shutters / truncated field of view on up to two sides
            for _ in range(rng.integers(1, 3)):
                side = rng.integers(4)
                cut = int(rng.uniform(0.03, 0.2) * (height if side < 2 else width))
                if side == 0:
                    mask[:cut] = False
                elif side == 1:
                    mask[height - cut:] = False
                elif side == 2:
                    mask[:, :cut] = False
                else:
                    mask[:, width - cut:] = False
        if not mask.all():
            image = np.where(mask, image, image.max() + 0.1 if rng.uniform() < 0.5 else image.min() - 0.1)
    return image.astype(np.float32), mask


def fill_internal_air(hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of a HU array (k, j, i) whose air enclosed by the body in each axial slice (lungs, bowel gas) is
    replaced by soft tissue (a random level in -80..60 HU with smooth texture); air outside the body is kept."""
    body = hu > -500
    enclosed = np.zeros_like(body)
    for k in range(hu.shape[0]):
        enclosed[k] = ndimage.binary_fill_holes(body[k]) & ~body[k]
    texture = ndimage.gaussian_filter(rng.normal(0, 40, hu.shape).astype(np.float32), 2.0)
    return np.where(enclosed, rng.uniform(-80, 60) + texture, hu).astype(np.float32)


def augment_ct(volume: Volume, rng: np.random.Generator, crop: float = 0.15, deform_mm: float = 6.0,
               fill_air: float = 0.0, short_scan: float = 0.0, size: float = 0.0) -> Volume:
    """A randomly altered copy of a HU volume (the input is not modified). ``fill_air``: the probability that
    the air inside the body is filled with soft tissue (:func:`fill_internal_air`); ``short_scan``: the probability
    that only a block of 45-85% of the slices is kept (a scan covering one region, e.g. the liver: the body then
    ends inside the frame); ``size``: another patient's build: the voxel spacing (so the anatomy, and what it
    attenuates) is scaled by up to 1 +/- ``size`` across the body (width and depth apart by up to 8%) and by up to
    half that along it, so that an agent trained on one CT cannot read depth from the absolute size of its body."""
    hu = volume.array.astype(np.float32)
    if fill_air > 0 and rng.uniform() < fill_air:
        hu = fill_internal_air(hu, rng)
    shape = np.array(hu.shape)
    lo = (rng.uniform(0, crop, 3) * shape).astype(int)
    hi = shape - (rng.uniform(0, crop, 3) * shape).astype(int)
    if short_scan > 0 and rng.uniform() < short_scan:
        keep = int(rng.uniform(0.45, 0.85) * shape[0])
        lo[0] = int(rng.integers(0, shape[0] - keep + 1))
        hi[0] = lo[0] + keep
    hu = hu[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    origin = volume.geometry.index_to_lps(np.array([lo[2], lo[1], lo[0]], float))
    spacing_mm = np.asarray(volume.geometry.spacing_mm, dtype=np.float64)
    if size > 0:
        build = np.exp(rng.uniform(-np.log1p(size), np.log1p(size)))
        shape_ratio = rng.uniform(0.96, 1.04)
        along = np.exp(rng.uniform(-np.log1p(size / 2), np.log1p(size / 2)))
        spacing_mm = spacing_mm * np.array([build * shape_ratio, build / shape_ratio, along])  # (i, j, k)
    geometry = Geometry(spacing_mm, origin, volume.geometry.direction_lps)
    if deform_mm > 0:
        spacing = volume.geometry.spacing_mm[::-1]  # (k, j, i)
        coarse = [max(2, s // 16) for s in hu.shape]
        grid = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in hu.shape], indexing="ij")
        coords = []
        for axis in range(3):
            field = rng.normal(0, deform_mm / spacing[axis], coarse).astype(np.float32)
            field = ndimage.zoom(field, np.array(hu.shape) / np.array(coarse), order=3)[: hu.shape[0], : hu.shape[1],
                                                                                         : hu.shape[2]]
            coords.append(grid[axis] + field)
        hu = ndimage.map_coordinates(hu, coords, order=1, mode="nearest").astype(np.float32)
    body = hu > -500
    hu = np.where(body, hu * rng.uniform(0.85, 1.15) + rng.uniform(-60, 60), hu)
    hu = hu + rng.normal(0, rng.uniform(0, 30), hu.shape).astype(np.float32)
    return Volume(hu, geometry, dict(volume.meta))
