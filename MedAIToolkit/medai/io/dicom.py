"""DICOM series -> 3D volume (pydicom; compressed transfer syntaxes such as RLE Lossless decode with numpy).

Slices are grouped by SeriesInstanceUID and sorted by their position along the slice normal
(ImagePositionPatient projected on the cross product of the ImageOrientationPatient axes), never by
file name or InstanceNumber. Documented handling of irregular series:
- several series in one folder: an error listing them, unless ``series_uid`` picks one;
- gantry tilt (slice positions not along the normal): an error; Slicer's DICOM module can resample these;
- missing slices (a gap over 1.5x the median spacing) or non-uniform spacing (over 1%): an error;
- differing orientation or matrix size inside the series: an error.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ..errors import MedAIInputError
from ..geometry import Geometry
from .volume import Volume

SPACING_TOLERANCE = 0.01  # relative deviation allowed between consecutive slice gaps
GAP_FACTOR = 1.5  # a gap this many times the median spacing is reported as a missing slice


@dataclass(frozen=True)
class SeriesSummary:
    series_uid: str
    description: str
    modality: str
    n_files: int


def is_dicom_file(path: str) -> bool:
    """True when ``path`` starts with the DICOM preamble or parses as DICOM."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
        if len(head) == 132 and head[128:132] == b"DICM":
            return True
        pydicom.dcmread(path, stop_before_pixels=True)
        return True
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError):
        return False


def _list_files(folder: str) -> list[str]:
    files = []
    for root, _dirs, names in os.walk(folder):
        files.extend(os.path.join(root, n) for n in sorted(names) if not n.startswith("."))
    return files


def read_headers(folder: str) -> dict[str, list[pydicom.Dataset]]:
    """Headers of every DICOM file under ``folder`` grouped by SeriesInstanceUID (non-DICOM files are skipped)."""
    if not os.path.isdir(folder):
        raise MedAIInputError(f"{folder}: not a folder")
    groups: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    for path in _list_files(folder):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if "SOPClassUID" not in ds and "SeriesInstanceUID" not in ds:
            continue
        ds.filename = path
        groups[str(ds.get("SeriesInstanceUID", "unknown"))].append(ds)
    if not groups:
        raise MedAIInputError(f"{folder}: no DICOM files found in this folder")
    return dict(groups)


def list_series(folder: str) -> list[SeriesSummary]:
    """One summary per series under ``folder``."""
    return [
        SeriesSummary(uid, str(dss[0].get("SeriesDescription", "")), str(dss[0].get("Modality", "")), len(dss))
        for uid, dss in read_headers(folder).items()
    ]


def _slice_axes(ds: pydicom.Dataset, path: str) -> tuple[np.ndarray, np.ndarray]:
    if "ImageOrientationPatient" not in ds or "ImagePositionPatient" not in ds:
        raise MedAIInputError(f"{path}: no ImageOrientationPatient/ImagePositionPatient; not a volume slice")
    iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    return iop[:3], iop[3:]


def _decode(ds_header: pydicom.Dataset) -> np.ndarray:
    path = ds_header.filename
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for broken pixel data
        raise MedAIInputError(
            f"{path}: pixel data could not be decoded (truncated or corrupt file?): {exc}"
        ) from exc
    if pixels.ndim != 2:
        raise MedAIInputError(f"{path}: expected one 2D frame per file, got pixel array of shape {pixels.shape}")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if slope != 1 or intercept != 0:
        scaled = pixels.astype(np.float64) * slope + intercept
        if slope == int(slope) and intercept == int(intercept):
            return scaled.astype(np.int32)
        return scaled.astype(np.float32)
    return pixels


def read_dicom_series(folder: str, series_uid: str | None = None) -> Volume:
    """Read one DICOM series under ``folder`` into a :class:`Volume` (array ``[k, j, i]``, LPS geometry)."""
    groups = read_headers(folder)
    if series_uid is None:
        if len(groups) > 1:
            listing = "; ".join(
                f"{uid} ({dss[0].get('Modality', '?')} '{dss[0].get('SeriesDescription', '')}', {len(dss)} files)"
                for uid, dss in groups.items()
            )
            raise MedAIInputError(
                f"{folder}: the folder mixes {len(groups)} DICOM series; choose one with series_uid: {listing}"
            )
        series_uid = next(iter(groups))
    if series_uid not in groups:
        raise MedAIInputError(f"{folder}: no series with SeriesInstanceUID {series_uid}")
    headers = groups[series_uid]

    first = headers[0]
    row_dir, col_dir = _slice_axes(first, first.filename)
    normal = np.cross(row_dir, col_dir)
    shape = (int(first.Rows), int(first.Columns))
    for ds in headers[1:]:
        r, c = _slice_axes(ds, ds.filename)
        if not (np.allclose(r, row_dir, atol=1e-4) and np.allclose(c, col_dir, atol=1e-4)):
            raise MedAIInputError(f"{folder}: slice orientation differs inside the series ({ds.filename})")
        if (int(ds.Rows), int(ds.Columns)) != shape:
            raise MedAIInputError(f"{folder}: slice matrix size differs inside the series ({ds.filename})")

    positions = np.array([np.asarray(ds.ImagePositionPatient, dtype=np.float64) for ds in headers])
    distance = positions @ normal
    order = np.argsort(distance, kind="stable")
    headers = [headers[i] for i in order]
    positions, distance = positions[order], distance[order]
    if len(np.unique(np.round(distance, 4))) != len(distance):
        raise MedAIInputError(f"{folder}: two or more slices share one position (duplicate files or several acquisitions)")

    if len(headers) > 1:
        steps = np.diff(positions, axis=0)
        gaps = np.diff(distance)
        spacing_k = float(np.median(gaps))
        off_axis = np.linalg.norm(steps - np.outer(gaps, normal), axis=1)
        if np.any(off_axis > 1e-2 * np.maximum(gaps, 1e-6)):
            raise MedAIInputError(
                f"{folder}: gantry tilt or sheared slices (slice positions are not along the slice normal); "
                "resample the series first (e.g. with Slicer's DICOM module)"
            )
        if np.any(gaps > GAP_FACTOR * spacing_k):
            where = int(np.argmax(gaps))
            raise MedAIInputError(
                f"{folder}: missing slice(s): gap of {gaps[where]:.3f} mm after slice {where} "
                f"where the spacing is {spacing_k:.3f} mm"
            )
        if np.any(np.abs(gaps - spacing_k) > SPACING_TOLERANCE * spacing_k):
            raise MedAIInputError(f"{folder}: slice spacing is not uniform ({gaps.min():.3f}-{gaps.max():.3f} mm)")
    else:
        spacing_k = float(first.get("SpacingBetweenSlices", 0) or first.get("SliceThickness", 0) or 1.0)

    if "PixelSpacing" not in first:
        raise MedAIInputError(f"{first.filename}: no PixelSpacing; cannot place the volume in space")
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)  # (between rows, between columns)

    slices = [_decode(ds) for ds in headers]
    dtypes = {s.dtype for s in slices}
    array = np.stack([s.astype(np.result_type(*dtypes), copy=False) for s in slices])

    geometry = Geometry(
        spacing_mm=(col_spacing, row_spacing, spacing_k),
        origin_lps=positions[0],
        direction_lps=np.column_stack([row_dir, col_dir, normal]),
    )
    meta = {
        "source": "dicom-series",
        "modality": str(first.get("Modality", "")),
        "series_uid": series_uid,
        "series_description": str(first.get("SeriesDescription", "")),
        "study_uid": str(first.get("StudyInstanceUID", "")),
        "n_files": len(headers),
        "files": [ds.filename for ds in headers],
    }
    return Volume(array=array, geometry=geometry, meta=meta)
