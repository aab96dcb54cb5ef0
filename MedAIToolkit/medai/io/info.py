"""``medai info``: a JSON-ready summary of any image the toolkit reads."""
from __future__ import annotations

import os

import numpy as np

from ..errors import MedAIInputError
from .dicom import is_dicom_file
from .volume import has_volume_suffix, read_volume
from .xray import IMAGE_SUFFIXES, XRAY_MODALITIES, read_xray


def _is_xray_dicom(path: str) -> bool:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    modality = str(ds.get("Modality", ""))
    return modality in XRAY_MODALITIES or "ImagerPixelSpacing" in ds or "DistanceSourceToDetector" in ds


def _value_range(array: np.ndarray) -> list[float]:
    return [float(np.min(array)), float(np.max(array))]


def describe(path: str) -> dict:
    """Kind, shape, spacing, origin, direction, modality and value range of the image at ``path``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MedAIInputError(f"{path}: no such file or folder")
    is_xray = path.lower().endswith(IMAGE_SUFFIXES) or (
        os.path.isfile(path) and not has_volume_suffix(path) and is_dicom_file(path) and _is_xray_dicom(path)
    )
    if is_xray:
        image = read_xray(path)
        spacing = image.pixel_spacing_mm
        summary = {
            "path": path,
            "kind": "xray",
            "shape": list(image.shape),
            "spacing_mm": list(spacing) if spacing else None,
            "origin": None,
            "direction": None,
            "modality": image.meta.get("modality", ""),
            "value_range": _value_range(image.array),
        }
        summary.update({k: v for k, v in image.meta.items() if k not in summary})
        return summary
    volume = read_volume(path)
    geo = volume.geometry.to_dict()
    return {
        "path": path,
        "kind": "volume",
        "shape": list(volume.shape_ijk),
        "spacing_mm": geo["spacing_mm"],
        "origin": geo["origin_lps"],
        "direction": geo["direction_lps"],
        "space": "LPS",
        "modality": volume.meta.get("modality", ""),
        "dtype": str(volume.array.dtype),
        "value_range": _value_range(volume.array),
        "series_description": volume.meta.get("series_description"),
    }
