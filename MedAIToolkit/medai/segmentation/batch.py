"""``medai segment``: files or folders in, label files out (the task's label convention), errors per file."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import MedAIInputError
from ..io.xray import IMAGE_SUFFIXES
from .inference import Segmenter


def _inputs(paths, volumes: bool = False) -> list[Path]:
    files = []
    for path in map(Path, paths):
        if volumes:  # a DICOM folder is one input; a folder of volume files is several
            from ..io import has_volume_suffix

            inside = sorted(p for p in path.iterdir() if has_volume_suffix(str(p))) if path.is_dir() else []
            files.extend(inside or [path])
        elif path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES + (".dcm",)))
        else:
            files.append(path)
    if not files:
        raise MedAIInputError(f"no input images found in {', '.join(map(str, paths))}")
    return files


def read_2d(path: Path) -> np.ndarray:
    from ..io import read_xray

    return read_xray(str(path)).array


def label_fractions(segmenter: Segmenter, classes: np.ndarray) -> dict:
    """{label name: share of the pixels}, 4 decimals (2D tasks)."""
    return {name: round(float((classes == index).mean()), 4) for index, (name, _) in segmenter.task.labels.items()}


def label_volumes_ml(segmenter: Segmenter, classes: np.ndarray, geometry) -> dict:
    """{label name: volume in ml}, 1 decimal (3D inputs)."""
    voxel_ml = float(np.prod(geometry.spacing_mm)) / 1000.0
    return {name: round(float((classes == index).sum()) * voxel_ml, 1)
            for index, (name, _) in segmenter.task.labels.items()}


def write_labels(segmenter: Segmenter, classes: np.ndarray, target, geometry=None, fmt: str | None = None) -> None:
    """Write a label result in the task's output values: ``png`` (2D), ``seg.nrrd`` (Slicer segmentation, named
    and coloured segments) or a label volume (``.nii.gz``/``.nrrd``); ``fmt`` defaults to ``target``'s suffix
    (given when ``target`` is a temporary name)."""
    from PIL import Image

    from ..io import Volume, write_volume
    from .labels import write_seg_nrrd

    fmt = fmt or ("png" if str(target).lower().endswith(".png") else
                  "seg.nrrd" if str(target).lower().endswith(".seg.nrrd") else "volume")
    if fmt == "png":
        Image.fromarray(segmenter.to_output_values(classes)).save(target, format="PNG")
    elif fmt == "seg.nrrd":
        write_seg_nrrd(classes, geometry, segmenter.task.labels, segmenter.task.output_values, str(target))
    else:
        write_volume(Volume(segmenter.to_output_values(classes), geometry), str(target))


def segment_files(segmenter: Segmenter, inputs, out: str, seg_nrrd: bool = False) -> list[dict]:
    """Segment every input; write ``out`` (a file for one input, else a folder of ``<name>_seg.png``).

    Returns one record per input: {"path", "out", "error", and per-label pixel fractions}.
    """
    if segmenter.task.slice_wise:
        return _segment_volumes(segmenter, _inputs(inputs, volumes=True), out, seg_nrrd)
    files = _inputs(inputs)
    single = len(files) == 1 and Path(out).suffix.lower() == ".png"
    if not single:
        os.makedirs(out, exist_ok=True)
    records = []
    for path in files:
        target = Path(out) if single else Path(out) / f"{path.stem}_seg.png"
        try:
            classes = segmenter(read_2d(path))
        except MedAIInputError as exc:
            records.append({"path": str(path), "out": None, "error": str(exc)})
            continue
        write_labels(segmenter, classes, target)
        records.append({"path": str(path), "out": str(target), "error": None, **label_fractions(segmenter, classes)})
    return records


VOLUME_OUTPUTS = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd")


def study_name(path) -> str:
    """An input's name for its outputs: a folder's name, or a file's name without its volume suffix (only that:
    ``case.17_3mm.nrrd`` -> ``case.17_3mm``, so that inputs differing after a dot get different outputs)."""
    from ..io.volume import VOLUME_SUFFIXES

    name = Path(path).name
    for suffix in sorted(set(VOLUME_SUFFIXES) | {".dcm", ".dicom"}, key=len, reverse=True):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name or "volume"


def _segment_volumes(segmenter: Segmenter, files: list[Path], out: str, seg_nrrd: bool = False) -> list[dict]:
    """3D inputs (DICOM folders, NIfTI, NRRD) -> label volumes on the input grid (values as in the registry):
    ``.nii.gz``/``.nrrd`` label maps, or Slicer ``.seg.nrrd`` segmentations with named, coloured segments."""
    single = len(files) == 1 and str(out).lower().endswith(VOLUME_OUTPUTS)
    if not single:
        os.makedirs(out, exist_ok=True)
    suffix = ".seg.nrrd" if str(out).lower().endswith(".seg.nrrd") or seg_nrrd else ".nii.gz"
    records = []
    for path in files:
        name = study_name(path)
        target = Path(out) if single else Path(out) / f"{name}_{segmenter.task.name}{suffix}"
        try:
            volumes = read_channels(path, segmenter.task)
            volume = volumes[0]
            classes = segmenter.segment_volume(volumes)
        except MedAIInputError as exc:
            records.append({"path": str(path), "out": None, "error": str(exc)})
            continue
        write_labels(segmenter, classes, target, volume.geometry)
        volumes = {f"{name}_ml": ml for name, ml in label_volumes_ml(segmenter, classes, volume.geometry).items()}
        records.append({"path": str(path), "out": str(target), "error": None, **volumes})
    return records


def read_channels(path: Path, task) -> list:
    """Input volumes of a task: the file/DICOM folder itself, or for multi-channel tasks one entry per
    channel inside ``path`` (a sub-folder or volume file whose name starts with the channel name)."""
    from ..io import read_volume

    if task.in_channels == 1:
        return [read_volume(str(path))]
    if not path.is_dir():
        raise MedAIInputError(f"{path}: task '{task.name}' needs a folder holding {', '.join(task.channels)}")
    volumes = []
    for channel in task.channels:
        matches = sorted(p for p in path.iterdir() if p.name.split(".")[0] == channel)
        if not matches:
            raise MedAIInputError(f"{path}: no '{channel}' series or file (needs {', '.join(task.channels)})")
        volumes.append(read_volume(str(matches[0])))
    return volumes
