"""3D volumes: the :class:`Volume` record and file I/O (DICOM series, NIfTI, NRRD, MHA)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from ..errors import MedAIInputError
from ..geometry import Geometry

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
SUPPORTED_DTYPES = (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.float32, np.float64)


@dataclass
class Volume:
    """A 3D image: ``array[k, j, i]`` and its LPS :class:`Geometry`; ``meta`` holds tags worth keeping."""

    array: np.ndarray
    geometry: Geometry
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.array.ndim != 3:
            raise MedAIInputError(f"a volume must be 3D, got an array of shape {self.array.shape}")

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        k, j, i = self.array.shape
        return (i, j, k)

    def to_sitk(self) -> sitk.Image:
        image = sitk.GetImageFromArray(self.array)
        self.geometry.apply_to_sitk(image)
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, meta: dict | None = None) -> "Volume":
        return cls(sitk.GetArrayFromImage(image), Geometry.from_sitk(image), dict(meta or {}))


def has_volume_suffix(path: str) -> bool:
    return str(path).lower().endswith(VOLUME_SUFFIXES)


def check_image_values(array: np.ndarray, what: str) -> None:
    """Raise if ``array`` has an unsupported dtype, no voxels or non-finite values."""
    if array.dtype == bool:
        return
    if not any(array.dtype == np.dtype(t) for t in SUPPORTED_DTYPES):
        raise MedAIInputError(f"{what}: unsupported voxel type {array.dtype}")
    if array.size == 0:
        raise MedAIInputError(f"{what}: the image has no voxels (shape {array.shape})")
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise MedAIInputError(f"{what}: {bad} voxels are NaN or infinite; clean the image first")


STORED_VALUE_OFFSET_HU = 1024.0
"""The rescale intercept most CT scanners store (-1024): stored values put air near 0 and water near 1024."""
MAX_DENSE_BONE_SHARE = 0.10
"""The share of a CT's voxels at 874-1174 HU (soft tissue and fat, had the values been stored 1024 higher) above which
:func:`check_hounsfield` refuses it, unless air (-1100 to -900 HU) is more common still. In HU that range is dense
bone: 0.0-0.3% of the voxels of the chest, abdominal and sample CTs, whole or cropped to their central 30-50%; stored
without the intercept, the same volumes put 28-87% there, and more than lies at air's HU (none once cropped, 21% in
the chest CT, whose padding of -2048 HU reads as air then). A bone phantom in air passes (the module's self-test)."""


def check_hounsfield(array: np.ndarray, what: str = "CT volume", max_samples: int = 1_000_000) -> None:
    """Raise if a CT's values do not look like Hounsfield units (air -1000, water 0), e.g. stored values without the
    scan's rescale intercept (air near 0, water near 1024), which a DRR would read as a block of water."""
    values = np.asarray(array).ravel()
    values = values[:: max(1, values.size // max_samples)]
    low, high = STORED_VALUE_OFFSET_HU - 150, STORED_VALUE_OFFSET_HU + 150
    share = float(np.mean((values >= low) & (values <= high)))
    air = float(np.mean((values >= -1100) & (values <= -900)))
    if share > MAX_DENSE_BONE_SHARE and share > air:
        raise MedAIInputError(
            f"{what}: the values do not look like Hounsfield units: {share:.0%} of the voxels lie at {low:g}-{high:g}, "
            f"dense bone in HU but soft tissue in values stored without the rescale intercept (air near 0 instead of "
            f"-1000), and {air:.0%} at air's HU. Subtract {STORED_VALUE_OFFSET_HU:g} (the usual intercept) or load a CT "
            "in HU")


def read_volume(path: str, series_uid: str | None = None) -> Volume:
    """Read a 3D volume from a DICOM folder (one series) or a NIfTI / NRRD / MHA file.

    Raises :class:`MedAIInputError` naming the problem for anything that is not a finite 3D image.
    """
    from .dicom import is_dicom_file, read_dicom_series

    path = os.fspath(path)
    if not os.path.exists(path):
        raise MedAIInputError(f"{path}: no such file or folder")
    if os.path.isdir(path):
        volume = read_dicom_series(path, series_uid=series_uid)
    elif has_volume_suffix(path):
        volume = _read_sitk_volume(path)
    elif is_dicom_file(path):
        volume = read_dicom_series(os.path.dirname(path) or ".", series_uid=series_uid or _series_uid(path))
    else:
        raise MedAIInputError(
            f"{path}: not a volume file (expected a DICOM folder or {', '.join(VOLUME_SUFFIXES)})"
        )
    check_image_values(volume.array, path)
    return volume


def _series_uid(path: str) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).get("SeriesInstanceUID", ""))


def _read_sitk_volume(path: str) -> Volume:
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise MedAIInputError(f"{path}: not a readable image file ({_first_line(exc)})") from exc
    dim = reader.GetDimension()
    size = reader.GetSize()
    if dim == 4 or (dim == 3 and reader.GetNumberOfComponents() > 1):
        raise MedAIInputError(
            f"{path}: a {dim}D image of size {size} with {reader.GetNumberOfComponents()} component(s) "
            "was given where a 3D scalar volume is needed; extract one time point / component first"
        )
    if dim != 3:
        raise MedAIInputError(f"{path}: a {dim}D image of size {size} was given where a 3D volume is needed")
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise MedAIInputError(f"{path}: image data could not be read (truncated or corrupt?) ({_first_line(exc)})") from exc
    if path.lower().endswith((".nii", ".nii.gz")) and "float" in image.GetPixelIDTypeAsString():
        _check_nifti_finite(path)
    return Volume.from_sitk(image, {"source": os.path.basename(path), "modality": ""})


def _check_nifti_finite(path: str) -> None:
    """ITK's NIfTI reader silently turns NaN voxels into 0: count them on the raw data with nibabel."""
    import nibabel as nib

    data = np.asanyarray(nib.load(path).dataobj)
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise MedAIInputError(f"{path}: {bad} voxels are NaN or infinite; clean the image first")


def write_volume(volume: Volume, path: str) -> None:
    """Write NIfTI / NRRD / MHA with the geometry (compressed)."""
    if not has_volume_suffix(path):
        raise MedAIInputError(f"{path}: unsupported output format (use {', '.join(VOLUME_SUFFIXES)})")
    sitk.WriteImage(volume.to_sitk(), os.fspath(path), useCompression=True)


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    msg = next((ln for ln in lines if "rror" in ln or "annot" in ln), lines[-1] if lines else "")
    return msg[:200]


def resample_volume(volume: Volume, spacing_mm, interpolator: str = "linear", default_value: float | None = None,
                    keep_extent: bool = False) -> Volume:
    """Resample onto a grid of the same physical extent and direction with new spacing (i, j, k) mm.

    The new grid has a whole number of voxels, so its far end can fall up to half a new voxel short of, or beyond,
    the old one; ``keep_extent=True`` instead adjusts each axis's spacing (to the nearest whole number of voxels of
    about ``spacing_mm``) so that the grid spans exactly the old extent, with the same centre (what a DRR needs:
    the scan's end faces stay where they are). Downsampling is anti-aliased (Gaussian, sigma = half the new
    spacing) for ``linear``; labels use ``nearest``.
    """
    image = volume.to_sitk()
    old_spacing = np.array(image.GetSpacing())
    new_spacing = np.asarray(spacing_mm, dtype=np.float64) * np.ones(3)
    size = np.array(image.GetSize())
    new_size = np.maximum(np.round(size * old_spacing / new_spacing).astype(int), 1)
    if keep_extent:
        new_spacing = size * old_spacing / new_size
    # keep the physical extent: first new voxel centre sits half a new voxel inside the old extent
    start = (new_spacing / old_spacing - 1.0) / 2.0
    origin = volume.geometry.index_to_lps(start)
    if default_value is None:
        default_value = float(volume.array.min())
    if interpolator == "linear":
        source = sitk.Cast(image, sitk.sitkFloat32)
        sigma = np.where(new_spacing > old_spacing, new_spacing / 2.0, 0.0)
        if np.any(sigma > 0):
            source = sitk.SmoothingRecursiveGaussian(source, [float(max(s, 1e-3)) for s in sigma])
        method = sitk.sitkLinear
    elif interpolator == "nearest":
        source, method = image, sitk.sitkNearestNeighbor
    else:
        raise MedAIInputError(f"unknown interpolator '{interpolator}' (linear or nearest)")
    out = sitk.Resample(source, [int(s) for s in new_size], sitk.Transform(), method, origin.tolist(),
                        new_spacing.tolist(), image.GetDirection(), default_value, source.GetPixelID())
    array = sitk.GetArrayFromImage(out)
    if interpolator == "linear" and np.issubdtype(volume.array.dtype, np.integer):
        array = np.round(array).astype(volume.array.dtype)
    return Volume(array, Geometry.from_sitk(out), dict(volume.meta))


def slice_grid_axes(direction_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(permutation, signs) that turn a volume's axes into those closest to L, P, S: output axis ``n`` is
    input axis ``perm[n]`` times ``signs[n]``. An exact permutation for axis-aligned (e.g. flipped) volumes."""
    from itertools import permutations

    direction = np.asarray(direction_lps, dtype=np.float64)
    perm = max(permutations(range(3)), key=lambda p: sum(abs(direction[n, p[n]]) for n in range(3)))
    signs = np.array([1.0 if direction[n, perm[n]] >= 0 else -1.0 for n in range(3)])
    return np.array(perm), signs


def resample_to_slice_grid(volume: Volume, spacing_xy_mm: float, interpolator: str = "linear",
                           default_value: float | None = None) -> Volume:
    """Resample IN-PLANE ONLY onto ``spacing_xy_mm``, keeping the acquisition's own slice planes and slice spacing.

    The axes are reordered/flipped to the LPS axes they are closest to (rows run about anterior->posterior,
    columns right->left, slices inferior->superior), so slice-wise 2D networks see every input in one
    orientation; the slices stay those that were acquired: a tilted (oblique) thick-slice MRI is never
    interpolated across its slice gap, which would blend anatomy several millimetres apart (resampling a
    tumour mask of 6.5 mm-spaced, 10 degree-tilted slices to true axial planes and back keeps Dice 0.81-0.88).
    For an axis-aligned volume the grid is the axial grid covering its bounding box."""
    geometry = volume.geometry
    direction = np.asarray(geometry.direction_lps, dtype=np.float64)
    perm, signs = slice_grid_axes(direction)
    axes = direction[:, perm] * signs  # columns: the output grid's i, j, k directions in LPS
    old = np.asarray(geometry.spacing_mm, dtype=np.float64)
    spacing = np.array([spacing_xy_mm, spacing_xy_mm, old[perm[2]]])
    k, j, i = volume.array.shape
    corners = np.array([[a, b, c] for a in (0, i - 1) for b in (0, j - 1) for c in (0, k - 1)], dtype=np.float64)
    projected = geometry.index_to_lps(corners) @ axes  # corner coordinates along the output axes
    low, high = projected.min(axis=0), projected.max(axis=0)
    size = np.maximum(np.floor((high - low) / spacing + 1e-3).astype(int) + 1, 1)
    if default_value is None:
        default_value = float(volume.array.min())
    image = volume.to_sitk()
    source, method = image, sitk.sitkNearestNeighbor
    if interpolator == "linear":
        source, method = sitk.Cast(image, sitk.sitkFloat32), sitk.sitkLinear
        out_spacing_of_input_axis = spacing[np.argsort(perm)]
        if np.any(out_spacing_of_input_axis > old * 1.2):  # anti-alias before downsampling (in-plane only)
            sigma = [float(max(s / 2.0, 1e-3)) if s > o * 1.2 else 1e-3 for s, o in zip(out_spacing_of_input_axis, old)]
            source = sitk.SmoothingRecursiveGaussian(source, sigma)
    out = sitk.Resample(source, [int(s) for s in size], sitk.Transform(), method, (axes @ low).tolist(),
                        spacing.tolist(), axes.ravel().tolist(), default_value, source.GetPixelID())
    return Volume(sitk.GetArrayFromImage(out), Geometry.from_sitk(out), dict(volume.meta))


def resample_like(array_kji: np.ndarray, geometry: Geometry, reference: Volume, interpolator: str = "linear",
                  default_value: float = 0.0) -> np.ndarray:
    """Resample ``array`` (on ``geometry``) onto ``reference``'s grid exactly (same shape and geometry)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_kji))
    geometry.apply_to_sitk(image)
    target = sitk.Image(*[int(s) for s in reference.shape_ijk], image.GetPixelID())
    reference.geometry.apply_to_sitk(target)
    method = sitk.sitkLinear if interpolator == "linear" else sitk.sitkNearestNeighbor
    return sitk.GetArrayFromImage(sitk.Resample(image, target, sitk.Transform(), method, default_value))
