"""Chest X-ray records of the diagnosis tasks, read from ``../shared/data/chest_xray/labels.csv``.

Two held-out sets, both by patient (every image of a group ``source`` + ``patient_id`` lands in one split, so a
patient is in the same split for every task and one task's model can initialise the other's):

- ``external``: whole sub-sources the models never train on, built as an independent test on unseen sources is
  built (:func:`is_external`): the last block of COVID-19 Radiography file numbers (the database numbers its
  images by sub-source), the last block of Kermany patient numbers of each naming series (later acquisitions),
  and whole ieee8023 patients (a hash of the patient).
- ``train`` / ``val`` / ``test``: the rest, split at random by a hash of the group (``test`` is the "random split").

The COVID-19 Radiography set has no patient ids: its images are split one by one (stated in the model cards).
"""
from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from ..errors import MedAIInputError
from ..io import read_xray
from ..paths import cache_dir, shared_data
from .preprocess import preprocess
from .registry import DiagnosisTask

SPLIT_FRACTIONS = {"test": 0.15, "val": 0.15}  # of what is not external; the rest trains
SPLIT_SALT = "medai-cxr-2026"
# external blocks: (source, id pattern, first held-out number); about the last fifth of each series
EXTERNAL_BLOCKS = (
    ("covid19_radiography_224", re.compile(r"/COVID-(\d+)\."), 2201),
    ("covid19_radiography_224", re.compile(r"/Normal-(\d+)\."), 5901),
    ("kermany_224", re.compile(r"/person(\d+)$"), 1465),
    ("kermany_224", re.compile(r"/IM-(\d+)$"), 643),
    ("kermany_224", re.compile(r"/NORMAL2-IM-(\d+)$"), 1190),
)
EXTERNAL_PATIENT_FRACTION = {"ieee8023_covid_subset_512": 0.30}  # whole patients, by hash

# label in labels.csv -> class, per task
LABEL_MAPS = {
    "pneumonia": {"NORMAL": "NORMAL", "PNEUMONIA_BACTERIAL": "PNEUMONIA", "PNEUMONIA_VIRAL": "PNEUMONIA"},
    "covid": {"COVID": "COVID", "NORMAL": "NORMAL", "PNEUMONIA_BACTERIAL": "OTHER_PNEUMONIA",
              "PNEUMONIA_VIRAL": "OTHER_PNEUMONIA", "PNEUMONIA_FUNGAL": "OTHER_PNEUMONIA",
              "PNEUMONIA_UNSPECIFIED": "OTHER_PNEUMONIA"},
}
TASK_SOURCES = {
    "pneumonia": ("kermany_224",),
    # Kermany normals are included with the adult RSNA normals so that "child" does not mean "pneumonia".
    "covid": ("kermany_224", "covid19_radiography_224", "ieee8023_covid_subset_512"),
}
AGE_GROUP = {"kermany_224": "pediatric", "covid19_radiography_224": "adult", "ieee8023_covid_subset_512": "adult"}


@dataclass(frozen=True)
class Record:
    path: str  # relative to the chest_xray folder
    label: str  # class of the task
    raw_label: str  # label in labels.csv
    source: str
    group: str  # patient grouping key (source/patient, or source/path when the source has no ids)
    lung_boxes: tuple = ()  # ((x, y, w, h), ...) in pixels of the stored image (ieee8023 only)

    @property
    def age_group(self) -> str:
        return AGE_GROUP.get(self.source, "unknown")


def _unit_hash(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def is_external(group: str) -> bool:
    """Whether a patient group belongs to the external (unseen sub-source) split."""
    source = group.split("/", 1)[0]
    for block_source, pattern, first in EXTERNAL_BLOCKS:
        match = pattern.search(group) if block_source == source else None
        if match:
            return int(match.group(1)) >= first
    fraction = EXTERNAL_PATIENT_FRACTION.get(source)
    return fraction is not None and _unit_hash(f"{SPLIT_SALT}:external:{group}") < fraction


def split_of(group: str) -> str:
    """'external', 'train', 'val' or 'test' for a patient group (stable, independent of the task and file order)."""
    if is_external(group):
        return "external"
    u = _unit_hash(f"{SPLIT_SALT}:{group}")
    if u < SPLIT_FRACTIONS["test"]:
        return "test"
    if u < SPLIT_FRACTIONS["test"] + SPLIT_FRACTIONS["val"]:
        return "val"
    return "train"


def _boxes(row) -> tuple:
    boxes = []
    for key in ("right_lung_bbox_xywh", "left_lung_bbox_xywh"):
        text = (row.get(key) or "").strip()
        if text:
            boxes.append(tuple(float(v) for v in text.replace(",", " ").split()))
    return tuple(boxes)


def records(task: DiagnosisTask, split: str | None = None) -> list[Record]:
    """Records of a task (optionally one split), in labels.csv order."""
    root = shared_data("chest_xray")
    mapping, sources = LABEL_MAPS[task.name], TASK_SOURCES[task.name]
    out = []
    with open(root / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["source"] not in sources or row["label"] not in mapping:
                continue
            pid = row["patient_id"].strip()
            group = f"{row['source']}/{pid}" if pid else f"{row['source']}/{row['path']}"
            rec = Record(row["path"], mapping[row["label"]], row["label"], row["source"], group, _boxes(row))
            if split is None or split_of(group) == split:
                out.append(rec)
    if not out:
        raise MedAIInputError(f"no chest X-rays found for task '{task.name}' split '{split}' in {root}")
    return out


def load_images(recs: list[Record], size: int, progress: bool = True, intensity: str = "percentile",
                cache: bool = True) -> torch.Tensor:
    """(N, 1, size, size) network inputs of the records.

    Cached under ``.cache/diagnosis_inputs`` (a float16 file per record list, size and intensity mode), so that
    training runs and benchmarks read the ~10,000 X-rays once."""
    root = shared_data("chest_xray")
    key = hashlib.sha256("\n".join([str(root.resolve()), str(size), intensity, *[r.path for r in recs]]).encode())
    path = cache_dir() / "diagnosis_inputs" / f"{key.hexdigest()[:24]}.pt"
    if cache and path.exists():
        return torch.load(path, weights_only=True).float()
    items = tqdm(recs, desc=f"reading {len(recs)} X-rays", disable=not progress, leave=False)
    images = torch.stack([preprocess(read_xray(str(root / r.path)).array, size, r.path, intensity) for r in items])
    if cache and len(recs) > 32:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(images.half(), path)
        images = images.half().float()  # what a cached read gives, every time
    return images


def labels_tensor(recs: list[Record], task: DiagnosisTask) -> torch.Tensor:
    return torch.tensor([task.classes.index(r.label) for r in recs], dtype=torch.long)


def describe_split(task: DiagnosisTask) -> dict:
    """Counts per split, class and source (for the model card)."""
    table: dict = {}
    for rec in records(task):
        split = split_of(rec.group)
        entry = table.setdefault(split, {"images": 0, "patients": set(), "classes": {}, "sources": {}})
        entry["images"] += 1
        entry["patients"].add(rec.group)
        entry["classes"][rec.label] = entry["classes"].get(rec.label, 0) + 1
        entry["sources"][rec.source] = entry["sources"].get(rec.source, 0) + 1
    for entry in table.values():
        entry["patients"] = len(entry["patients"])
    return table


def lung_mask(rec: Record, shape) -> np.ndarray:
    """Boolean mask of the union of the record's lung boxes on an image of ``shape``."""
    mask = np.zeros(shape, dtype=bool)
    for x, y, w, h in rec.lung_boxes:
        mask[int(round(y)):int(round(y + h)), int(round(x)):int(round(x + w))] = True
    return mask


def lung_box_masks(recs: list[Record], size: int) -> torch.Tensor:
    """(N, 1, size, size) lung-box masks of boxed records on the network's input grid (area-resampled, 0-1)."""
    import torch.nn.functional as F

    root = shared_data("chest_xray")
    masks = []
    for rec in recs:
        shape = read_xray(str(root / rec.path)).array.shape[-2:]
        mask = torch.from_numpy(lung_mask(rec, shape).astype(np.float32))[None, None]
        masks.append(F.interpolate(mask, size=(size, size), mode="area")[0])
    return torch.stack(masks) if masks else torch.zeros(0, 1, size, size)


def lung_regions(recs: list[Record], size: int, prior_records: list[Record]) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a chest X-ray's evidence should lie, per record, on the ``size`` grid: the record's own lung boxes
    where drawn (ieee8023), else the lung prior, the mean box mask of ``prior_records`` (all sources are framed
    alike, PA chest views). Returns ``(regions (N, 1, S, S), has_boxes (N,) bool)``."""
    boxed = [r for r in prior_records if r.lung_boxes]
    if not boxed:
        raise MedAIInputError("no records with lung boxes to build the lung prior from")
    own = [i for i, r in enumerate(recs) if r.lung_boxes]
    unique = {r.path: r for r in boxed + [recs[i] for i in own]}  # each boxed image read once
    masks = dict(zip(unique, lung_box_masks(list(unique.values()), size)))
    prior = torch.stack([masks[r.path] for r in boxed]).mean(0)
    has_boxes = torch.tensor([bool(r.lung_boxes) for r in recs])
    regions = prior.expand(len(recs), 1, size, size).clone()
    for i in own:
        regions[i] = masks[recs[i].path]
    return regions, has_boxes
