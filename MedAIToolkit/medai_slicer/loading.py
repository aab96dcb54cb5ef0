"""Files -> NEW MRML nodes through the engine's readers (geometry preserved, errors named)."""
from __future__ import annotations

import logging
import os

import numpy as np

from medai.geometry import Geometry
from medai.io import Volume, read_volume, read_xray

from .nodes import volume_to_node

XRAY_DIRECTION_LPS = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]).T  # rows: i, j, k axes
"""Radiograph placed as a coronal plane: columns run to patient Left, rows run Inferior, normal Posterior,
so Slicer's coronal view shows it as a radiologist reads a PA film."""


def _default_name(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    for suffix in (".nii.gz", ".seg.nrrd", ".nii", ".nrrd", ".mha", ".mhd", ".dcm", ".png", ".jpg", ".jpeg", ".tif", ".tiff"):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


def load_volume_node(scene, path: str, name: str | None = None, series_uid: str | None = None,
                     labelmap: bool = False):
    """Read a DICOM series folder or a volume file into a NEW scalar (or labelmap) volume node."""
    volume = read_volume(path, series_uid=series_uid)
    node_class = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = volume_to_node(scene, volume, name or volume.meta.get("series_description") or _default_name(path), node_class)
    node.SetAttribute("MedAI.sourcePath", os.path.abspath(path))
    return node


def xray_to_volume(array_2d: np.ndarray, pixel_spacing_mm=None, meta: dict | None = None) -> Volume:
    """A 2D radiograph as a one-slice :class:`Volume` in the coronal plane (see XRAY_DIRECTION_LPS)."""
    row_mm, col_mm = pixel_spacing_mm if pixel_spacing_mm else (1.0, 1.0)
    geometry = Geometry((col_mm, row_mm, 1.0), (0.0, 0.0, 0.0), XRAY_DIRECTION_LPS)
    return Volume(np.asarray(array_2d, dtype=np.float32)[np.newaxis], geometry, dict(meta or {}))


def load_xray_node(scene, path: str, name: str | None = None, frame: int = 0):
    """Read an X-ray (DICOM or image file) into a NEW one-slice volume node."""
    image = read_xray(path, frame=frame)
    volume = xray_to_volume(image.array, image.pixel_spacing_mm, image.meta)
    node = volume_to_node(scene, volume, name or _default_name(path))
    node.SetAttribute("MedAI.sourcePath", os.path.abspath(path))
    node.SetAttribute("MedAI.kind", "xray")
    node.SetAttribute("MedAI.pixelSpacingKnown", str(image.pixel_spacing_mm is not None))
    if image.meta.get("warning"):  # e.g. converted to grey from an RGB file with coloured annotations
        node.SetAttribute("MedAI.warning", image.meta["warning"])
        logging.warning(f"{path}: {image.meta['warning']}")
    return node
