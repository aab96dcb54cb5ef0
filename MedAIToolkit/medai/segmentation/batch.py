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


def segment_files(segmenter: Segmenter, inputs, out: str, seg_nrrd: bool = False) -> list[dict]:
    """Segment every input; write ``out`` (a file for one input, else a folder of ``<name>_seg.png``).

    Returns one record per input: {"path", "out", "error", and per-label pixel fractions}.
    """
    from PIL import Image

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
        Image.fromarray(segmenter.to_output_values(classes)).save(target)
        fractions = {name: round(float((classes == index).mean()), 4)
                     for index, (name, _) in segmenter.task.labels.items()}
        records.append({"path": str(path), "out": str(target), "error": None, **fractions})
    return records


VOLUME_OUTPUTS = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd")


def _segment_volumes(segmenter: Segmenter, files: list[Path], out: str, seg_nrrd: bool = False) -> list[dict]:
    """3D inputs (DICOM folders, NIfTI, NRRD) -> label volumes on the input grid (values as in the registry):
    ``.nii.gz``/``.nrrd`` label maps, or Slicer ``.seg.nrrd`` segmentations with named, coloured segments."""
    from ..io import Volume, write_volume

    from .labels import write_seg_nrrd

    single = len(files) == 1 and str(out).lower().endswith(VOLUME_OUTPUTS)
    if not single:
        os.makedirs(out, exist_ok=True)
    suffix = ".seg.nrrd" if str(out).lower().endswith(".seg.nrrd") or seg_nrrd else ".nii.gz"
    records = []
    for path in files:
        name = path.name.split(".")[0] or "volume"
        target = Path(out) if single else Path(out) / f"{name}_{segmenter.task.name}{suffix}"
        try:
            volumes = read_channels(path, segmenter.task)
            volume = volumes[0]
            classes = segmenter.segment_volume(volumes)
        except MedAIInputError as exc:
            records.append({"path": str(path), "out": None, "error": str(exc)})
            continue
        if str(target).lower().endswith(".seg.nrrd"):
            write_seg_nrrd(classes, volume.geometry, segmenter.task.labels, segmenter.task.output_values, str(target))
        else:
            write_volume(Volume(segmenter.to_output_values(classes), volume.geometry), str(target))
        voxel_ml = float(np.prod(volume.geometry.spacing_mm)) / 1000.0
        volumes = {f"{name}_ml": round(float((classes == index).sum()) * voxel_ml, 1)
                   for index, (name, _) in segmenter.task.labels.items()}
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
