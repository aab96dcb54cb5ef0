"""2D X-ray images: DICOM CR/DX/XA/RF (single or multi-frame) and PNG/JPEG/TIFF (8 or 16 bit).

Pixel values are returned so that brighter = more attenuation (MONOCHROME2 display convention):
MONOCHROME1 DICOMs are inverted. Colour files whose channels are equal (RGB-that-is-grey) are accepted;
colour photographs are refused. Geometry tags needed for 2D/3D registration are kept in ``meta``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import MedAIInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
XRAY_MODALITIES = ("CR", "DX", "XA", "RF", "MG", "PX", "DRR", "OT")
GREY_TOLERANCE = 3  # max channel difference (in 8-bit units) for an RGB file to count as grey


@dataclass
class XRayImage:
    """One X-ray frame ``array[row, col]`` (float32), its pixel spacing and acquisition tags."""

    array: np.ndarray
    pixel_spacing_mm: tuple[float, float] | None = None  # (between rows, between columns)
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.array.shape


def read_xray(path: str, frame: int = 0) -> XRayImage:
    """Read one X-ray frame from a DICOM or image file; raises :class:`MedAIInputError` naming the problem."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MedAIInputError(f"{path}: no such file")
    from .dicom import is_dicom_file

    if path.lower().endswith(IMAGE_SUFFIXES):
        image = _read_image_file(path)
    elif is_dicom_file(path):
        image = _read_dicom_xray(path, frame)
    else:
        raise MedAIInputError(f"{path}: not an X-ray image (expected DICOM or {', '.join(IMAGE_SUFFIXES)})")
    if image.array.size == 0:
        raise MedAIInputError(f"{path}: the image has no pixels")
    if not np.all(np.isfinite(image.array)):
        raise MedAIInputError(f"{path}: the image contains NaN or infinite pixel values")
    return image


COLOUR_CHROMA = 24.0
"""8-bit units: after removing a uniform tint, a pixel whose channels still differ by more carries colour."""
MAX_COLOURED_FRACTION = 0.025
"""Up to this share of coloured pixels (burned-in annotations, a colour scale bar, JPEG chroma noise around text) a
grey X-ray is read as grey with a warning; beyond, it is a colour image and refused. Measured
(docs/models/xray_colour_rule.md): real annotated X-rays ~0.1%; 40 ieee8023 X-rays with heavy synthetic coloured
annotations saved as JPEG 0.2-1.8% (median 0.8%); photographs 2.9% (Hubble deep field) to 54%."""
MAX_TINT = 0.25
"""A uniform tint (each channel a gain of the luminance) within +/-25% is a grey X-ray displayed warm or cold."""


def colour_content(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """(per-channel gains against the luminance, share of pixels carrying colour once that tint is removed) of an
    (H, W, 3) image in 8-bit units."""
    rgb = np.asarray(rgb, dtype=np.float32)
    luminance = rgb.mean(axis=-1)
    energy = max(float((luminance * luminance).sum()), 1e-6)
    gains = np.array([float((rgb[..., c] * luminance).sum()) / energy for c in range(3)])
    residual = np.abs(rgb - gains * luminance[..., None]).max(axis=-1)
    return gains, float((residual > COLOUR_CHROMA).mean())


def _to_grey(pixels: np.ndarray, path: str, max_value: float) -> tuple[np.ndarray, str]:
    """(grey image, warning): RGB that is grey passes silently; a grey X-ray with a few coloured pixels or a slight
    tint becomes its luminance with a warning; a colour image is refused."""
    if pixels.ndim == 2:
        return pixels, ""
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        rgb = pixels[..., :3].astype(np.float32)
        spread = float(np.max(np.abs(rgb - rgb.mean(axis=-1, keepdims=True)))) / max_value * 255.0
        if spread <= GREY_TOLERANCE:
            return rgb[..., 0], ""
        gains, coloured = colour_content(rgb * (255.0 / max_value))
        tinted = float(np.abs(gains - 1).max())
        if tinted > MAX_TINT or coloured > MAX_COLOURED_FRACTION:
            raise MedAIInputError(
                f"{path}: a colour image ({100 * coloured:.1f}% of pixels carry colour, channel gains "
                f"{', '.join(f'{g:.2f}' for g in gains)}); an X-ray is greyscale (a grey X-ray may carry colour in at "
                f"most {100 * MAX_COLOURED_FRACTION:.0f}% of its pixels, or a tint within {100 * MAX_TINT:.0f}%)")
        reasons = []
        if coloured > 0:
            reasons.append(f"{100 * coloured:.2f}% of its pixels carry colour (annotations?)")
        if tinted > 0.02:
            reasons.append(f"a tint (channel gains {', '.join(f'{g:.2f}' for g in gains)})")
        grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return grey, "converted to grey: " + (" and ".join(reasons) or f"channels differ by up to {spread:.0f}/255")
    raise MedAIInputError(f"{path}: expected a 2D greyscale image, got pixel array of shape {pixels.shape}")


def _read_image_file(path: str) -> XRayImage:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            mode = im.mode
            n_frames = getattr(im, "n_frames", 1)
            if mode == "P":
                im = im.convert("RGB")
            elif mode in ("LA", "PA"):
                im = im.convert("L")
            pixels = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise MedAIInputError(f"{path}: the image file could not be read (not an image, truncated or corrupt): {exc}") from exc
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * 255
    max_value = 65535.0 if pixels.dtype.itemsize >= 2 else 255.0
    grey, warning = _to_grey(pixels, path, max_value)
    grey = grey.astype(np.float32)
    meta = {"source": "image", "format": os.path.splitext(path)[1].lower().lstrip("."), "mode": mode,
            "bits": 16 if max_value > 255 else 8, "modality": "", "n_frames": n_frames,
            "photometric": "MONOCHROME2"}
    if warning:
        meta["warning"] = warning
    return XRayImage(grey, None, meta)


def _float_tag(ds, name):
    value = ds.get(name)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _read_dicom_xray(path: str, frame: int) -> XRayImage:
    import pydicom

    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as exc:
        raise MedAIInputError(f"{path}: DICOM pixel data could not be decoded (truncated or corrupt file?): {exc}") from exc
    modality = str(ds.get("Modality", ""))
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if n_frames > 1:
        if not 0 <= frame < n_frames:
            raise MedAIInputError(f"{path}: frame {frame} requested but the file has {n_frames} frames")
        pixels = pixels[frame]
    elif samples == 1 and pixels.ndim == 3:
        raise MedAIInputError(f"{path}: a 3D pixel array {pixels.shape}; this looks like a volume, not an X-ray")
    if modality in ("CT", "MR", "PT", "NM", "US") and not _has_xray_geometry(ds):
        raise MedAIInputError(f"{path}: a {modality} image was given where an X-ray (CR/DX/XA/RF) is expected")
    bits = int(ds.get("BitsStored", 8) or 8)
    grey, warning = _to_grey(pixels, path, float(2**bits - 1))
    grey = grey.astype(np.float32)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "MONOCHROME1":  # stored bright = less attenuation: invert within the stored bit range
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        grey = (low + high) - grey
    slope, intercept = _float_tag(ds, "RescaleSlope"), _float_tag(ds, "RescaleIntercept")
    if slope is not None or intercept is not None:
        grey = grey * (slope if slope is not None else 1.0) + (intercept if intercept is not None else 0.0)

    spacing_tag = ds.get("ImagerPixelSpacing") or ds.get("PixelSpacing")
    spacing = tuple(float(v) for v in spacing_tag) if spacing_tag else None
    meta = {
        "source": "dicom",
        "modality": modality,
        "photometric": photometric,
        "bits": bits,
        "n_frames": n_frames,
        "frame": frame,
        "distance_source_to_detector_mm": _float_tag(ds, "DistanceSourceToDetector"),
        "distance_source_to_patient_mm": _float_tag(ds, "DistanceSourceToPatient"),
        "positioner_primary_angle_deg": _float_tag(ds, "PositionerPrimaryAngle"),
        "positioner_secondary_angle_deg": _float_tag(ds, "PositionerSecondaryAngle"),
        "imager_pixel_spacing_mm": [float(v) for v in ds.ImagerPixelSpacing] if "ImagerPixelSpacing" in ds else None,
        "sop_class_uid": str(ds.get("SOPClassUID", "")),
    }
    if warning:
        meta["warning"] = warning
    return XRayImage(grey, spacing, meta)


def _has_xray_geometry(ds) -> bool:
    return "DistanceSourceToDetector" in ds or "ImagerPixelSpacing" in ds
