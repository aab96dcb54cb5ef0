"""The fluoroscopy frame: attenuation-like image, field-of-view mask, C-arm geometry and nominal view.

Whatever the file, :class:`Frame.image` is "bright = attenuating" (like a DRR of line integrals):
- DICOM XA/RF: MONOCHROME1 is inverted on reading; Pixel Intensity Relationship LIN (proportional to the detected
  intensity) is log-transformed, LOG is used as is; Pixel Intensity Relationship Sign +1 (low value = low beam
  intensity = more attenuation) is flipped. SDD, SID, pixel spacing and positioner angles come from the tags.
- PNG/JPEG/NPY: "bright = attenuating" unless ``invert`` (a display image with bone dark: flipped) or ``linear``
  (raw detector values, proportional to the detected intensity: log-transformed, as DICOM's LIN). Only a log image
  is linear in the CT's attenuation: a raw frame merely flipped (bright = dense, but exp-compressed) left the dense
  regions' contrast to the noise and, on a low-dose sample frame, ended 55 mm off where its log ended 0.5 mm off.
The collimator / image-intensifier border is detected and left out of every similarity (:attr:`Frame.mask`): blanked,
as constant pixels connected to the image edge; not blanked (the anatomy seen through lead), by the shape of its edge
(:mod:`medai.registration.collimation`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..drr.geometry import CArmGeometry, Pose, pose_from_positioner
from ..errors import MedAIInputError
from .collimation import collimated_mask

MIN_FIELD_FRACTION = 0.05
"""A frame whose exposed field covers less than this share of the image is refused."""


@dataclass
class Frame:
    """``image`` (H, W) float32 bright = attenuating, ``mask`` (H, W) bool exposed field, ``carm`` geometry."""

    image: np.ndarray
    mask: np.ndarray
    carm: CArmGeometry
    nominal_pose: Pose | None = None
    meta: dict = field(default_factory=dict)


def field_mask(image: np.ndarray, tolerance: float = 0.01, erode_px: int = 2) -> np.ndarray:
    """Exposed field of ``image``: everything except flat regions connected to the border whose value is the
    border's typical value (blanked collimator blades, the dark ring outside an image intensifier), and what lies
    beyond the edge of a blade or of an intensifier's circle that was not blanked
    (:func:`medai.registration.collimation.collimated_mask`)."""
    low, high = float(image.min()), float(image.max())
    span = max(high - low, 1e-12)
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    mask = np.ones(image.shape, bool)
    for value in {float(np.median(border)), low, high}:
        flat = np.abs(image - value) <= tolerance * span
        if not flat[0].any() and not flat[-1].any() and not flat[:, 0].any() and not flat[:, -1].any():
            continue
        labels, _ = ndimage.label(flat)
        edge_labels = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        edge_labels = edge_labels[edge_labels > 0]
        outside = np.isin(labels, edge_labels)
        if outside.mean() > 0.002:  # a few flat edge pixels are anatomy (air), not a collimator
            mask &= ~outside
    mask &= ~collimated_mask(image, blanked=~mask)
    if erode_px:
        mask = ndimage.binary_erosion(mask, iterations=erode_px, border_value=1)
    return mask


def to_attenuation(pixels: np.ndarray, meta: dict | None = None, invert: bool = False,
                   linear: bool = False) -> np.ndarray:
    """Pixel values -> "bright = attenuating" float32, following the DICOM intensity tags when present; ``linear``:
    the values are proportional to the detected intensity (as the LIN tag says), so their log is taken."""
    if invert and linear:
        raise MedAIInputError("invert and linear together: a linear (raw detector) frame is read through its log, "
                              "which is already bright where the beam was attenuated; give linear alone")
    meta = meta or {}
    image = np.asarray(pixels, dtype=np.float64)
    relationship = "LIN" if linear else str(meta.get("pixel_intensity_relationship") or "").upper()
    sign = meta.get("pixel_intensity_relationship_sign")
    if relationship == "LIN":  # proportional to detected intensity: line integral = -log(I / I0)
        positive = image - image.min() + 1.0
        image = -np.log(positive / positive.max())
        sign = None  # already bright = attenuating
    elif sign is not None and float(sign) > 0:  # low value = low beam intensity = more attenuation
        image = -image
    if invert:
        image = -image
    return image.astype(np.float32)


def frame_from_array(pixels: np.ndarray, carm: CArmGeometry, meta: dict | None = None, invert: bool = False,
                     nominal_pose: Pose | None = None, source: str = "frame", linear: bool = False) -> Frame:
    """A :class:`Frame` from a 2D array and its C-arm geometry (checks values and the detector size); ``invert`` and
    ``linear`` as in :func:`to_attenuation`."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 3 and 1 in pixels.shape:
        pixels = pixels.reshape([n for n in pixels.shape if n != 1] or [1])
    if pixels.ndim != 2:
        raise MedAIInputError(f"{source}: a fluoroscopy frame is a 2D image, got an array of shape {pixels.shape}")
    if not (np.issubdtype(pixels.dtype, np.number) or pixels.dtype == bool) or np.iscomplexobj(pixels):
        raise MedAIInputError(f"{source}: unsupported pixel type {pixels.dtype}")
    if pixels.size == 0 or min(pixels.shape) < 16:
        raise MedAIInputError(f"{source}: the frame is too small ({pixels.shape}); at least 16 x 16 pixels")
    if not np.all(np.isfinite(pixels)):
        raise MedAIInputError(f"{source}: the frame contains NaN or infinite pixel values")
    if float(pixels.max()) == float(pixels.min()):
        raise MedAIInputError(f"{source}: the frame is blank (every pixel is {float(pixels.min()):g})")
    if (carm.height, carm.width) != pixels.shape:
        raise MedAIInputError(f"{source}: the frame is {pixels.shape[0]} x {pixels.shape[1]} pixels but the C-arm "
                              f"geometry describes a {carm.height} x {carm.width} detector")
    if linear and float(pixels.min()) < 0:
        raise MedAIInputError(f"{source}: linear (raw detector) values are intensities, never negative; this frame "
                              f"goes down to {float(pixels.min()):g} (a log or display image: register it without "
                              "linear)")
    image = to_attenuation(pixels, meta, invert, linear)
    mask = field_mask(image)
    if mask.mean() < MIN_FIELD_FRACTION:
        raise MedAIInputError(f"{source}: the exposed field covers only {100 * mask.mean():.1f}% of the frame "
                              f"(collimated shut, or not an X-ray)")
    return Frame(image, mask, carm, nominal_pose, dict(meta or {}))


def load_frame(path: str, size=None, pixel_spacing=None, sdd_mm: float | None = None, sid_mm: float | None = None,
               invert: bool = False, linear: bool = False) -> Frame:
    """Read a frame (.dcm XA/RF/DX, .png/.jpg, .npy); DICOM tags give the geometry, arguments fill or override it;
    ``invert`` and ``linear`` as in :func:`to_attenuation`.

    Raises :class:`MedAIInputError` naming what is missing (e.g. a PNG without ``pixel_spacing``/``sdd``/``sid``).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MedAIInputError(f"{path}: no such file")
    meta: dict = {}
    if path.lower().endswith(".npy"):
        try:
            pixels = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise MedAIInputError(f"{path}: not a readable .npy array ({exc})") from exc
        meta = {"source": "npy"}
    else:
        from ..io import read_xray

        xray = read_xray(path)
        pixels, meta = xray.array, dict(xray.meta)
        if meta.get("source") == "dicom":
            meta.update(_intensity_tags(path))
        if xray.pixel_spacing_mm and pixel_spacing is None and meta.get("imager_pixel_spacing_mm") is None:
            meta["imager_pixel_spacing_mm"] = list(xray.pixel_spacing_mm)
    pixels = np.asarray(pixels)
    if pixels.ndim not in (2,) and not (pixels.ndim == 3 and 1 in pixels.shape):
        raise MedAIInputError(f"{path}: a fluoroscopy frame is a 2D image, got an array of shape {pixels.shape}")
    height, width = pixels.reshape([n for n in pixels.shape if n != 1]).shape if pixels.ndim == 3 else pixels.shape
    if size is not None and tuple(size) != (height, width):
        raise MedAIInputError(f"{path}: --size {size[0]} {size[1]} given but the frame is {height} x {width} pixels")
    spacing = pixel_spacing if pixel_spacing is not None else meta.get("imager_pixel_spacing_mm")
    sdd = sdd_mm if sdd_mm is not None else meta.get("distance_source_to_detector_mm")
    sid = sid_mm if sid_mm is not None else meta.get("distance_source_to_patient_mm")
    missing = [name for name, value in (("pixel spacing (--pixel-spacing)", spacing), ("source-detector distance "
               "(--sdd)", sdd), ("source-isocentre distance (--sid)", sid)) if value is None]
    if missing:
        raise MedAIInputError(f"{path}: the frame carries no C-arm geometry for " + ", ".join(missing)
                              + "; give it on the command line")
    spacing = [float(v) for v in np.atleast_1d(spacing)]
    row_mm, col_mm = (spacing[0], spacing[0]) if len(spacing) == 1 else spacing[:2]
    carm = CArmGeometry(float(sdd), float(sid), height, width, row_mm, col_mm)
    nominal = None
    if meta.get("positioner_primary_angle_deg") is not None or meta.get("positioner_secondary_angle_deg") is not None:
        nominal = pose_from_positioner(meta.get("positioner_primary_angle_deg"), meta.get("positioner_secondary_angle_deg"))
    return frame_from_array(pixels, carm, meta, invert, nominal, source=path, linear=linear)


def _intensity_tags(path: str) -> dict:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    sign = ds.get("PixelIntensityRelationshipSign")
    return {"pixel_intensity_relationship": str(ds.get("PixelIntensityRelationship", "") or ""),
            "pixel_intensity_relationship_sign": None if sign in (None, "") else int(sign)}
