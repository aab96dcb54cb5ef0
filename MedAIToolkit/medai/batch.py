"""``medai batch segment|diagnose|register``: cohorts, resumable, nothing lost.

- One row per item is appended to the results CSV (``path, status, outputs, error, seconds`` + the task's
  columns) and flushed to disk as soon as the item is done or has failed.
- Rerun after an interruption: items whose last row says ``done`` (and whose outputs exist) are skipped; failed
  items are tried again (a new row; the last row of a path is its state).
- Outputs are written under a temporary name in the output folder and renamed into place (``os.replace``), so no
  partial file is ever left under an output name. A journal (``.medai-batch-journal`` in the output folder) lists
  what this batch is about to write and for which input, so an output renamed just before a kill is recognised as
  its own on rerun, and two inputs whose outputs would have the same name are caught (the second one fails).
- Inputs are never modified; existing outputs that this batch did not write are never overwritten unless
  ``overwrite``. A failure (unreadable file, wrong kind of image, no overlap, ...) is recorded with its reason and
  the run goes on. Models are loaded once per run; ``workers`` threads read inputs ahead of the model.
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path


from .errors import MedAIInputError, MedAIModelError

BASE_FIELDS = ["path", "status", "outputs", "error", "seconds"]
JOURNAL = ".medai-batch-journal"
PARTIAL_PREFIX = ".partial-"
POSE_COLUMNS = ("tx", "ty", "tz", "rx", "ry", "rz")


@dataclass
class Item:
    """One unit of work: ``path`` (its key in the results CSV) and task-specific fields (manifest columns)."""

    path: str
    fields: dict = field(default_factory=dict)


class ResultsCSV:
    """The results file: read back on start (a torn last line from a kill is cut off), appended row by row."""

    def __init__(self, path, fields: list[str]):
        self.path = Path(path)
        self.fields = list(fields)
        self.last: dict[str, dict] = {}
        if self.path.exists() and self.path.stat().st_size:
            text = self.path.read_text()
            if not text.endswith("\n"):  # the run was killed while writing a row: drop the torn row
                text = text[: text.rfind("\n") + 1]
                with open(self.path, "r+") as f:
                    f.truncate(len(text.encode()))
            rows = list(csv.DictReader(io.StringIO(text)))
            header = next(csv.reader(io.StringIO(text)), [])
            if header and header != self.fields:
                raise MedAIInputError(f"{self.path}: its columns ({', '.join(header)}) are not this batch's "
                                      f"({', '.join(self.fields)}); use another --csv")
            for row in rows:
                self.last[row["path"]] = row
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(self.fields)

    def done(self, item: Item) -> bool:
        row = self.last.get(item.path)
        if row is None or row["status"] != "done":
            return False
        return all(Path(p).exists() for p in row["outputs"].split(";") if p)

    def append(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore").writerow(
                {k: ("" if row.get(k) is None else row.get(k)) for k in self.fields})
            f.flush()
            os.fsync(f.fileno())
        self.last[row["path"]] = row


class OutputFolder:
    """Atomic, journalled writes into the output folder; refuses to replace what this batch did not write, and
    an output that another input of this batch wrote (two inputs whose output names collide)."""

    def __init__(self, folder, overwrite: bool = False):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.overwrite = overwrite
        self.journal = self.folder / JOURNAL
        self.owners: dict[str, str] = {}  # output path -> the input it belongs to ("" in journals of before)
        if self.journal.exists():
            text = self.journal.read_text()
            for line in text[: text.rfind("\n") + 1].splitlines():  # a line without its newline was torn
                target, _, owner = line.partition("\t")
                if target:
                    self.owners[target] = owner
        for stale in self.folder.glob(PARTIAL_PREFIX + "*"):  # left by a killed run
            stale.unlink()

    def write(self, name: str, writer, owner: str = "") -> str:
        """``writer(temporary_path)`` writes the file; it is then renamed to ``name``. ``owner``: the input it
        is the output of. Returns the final path."""
        target = self.folder / name
        key = str(target)
        if target.exists() and not self.overwrite and key not in self.owners:
            raise MedAIInputError(f"{target} already exists (not written by this batch); use --overwrite")
        if self.owners.get(key) not in (None, "", owner):
            raise MedAIInputError(f"{owner}: its output {target} is already the output of {self.owners[key]}; "
                                  "rename one of the two inputs")
        if self.owners.get(key) != owner:
            with open(self.journal, "a") as f:
                f.write(f"{key}\t{owner}\n")
                f.flush()
                os.fsync(f.fileno())
            self.owners[key] = owner
        temporary = self.folder / f"{PARTIAL_PREFIX}{name}"
        try:
            writer(temporary)
            os.replace(temporary, target)
        finally:
            if temporary.exists():
                temporary.unlink()
        return key


class Task:
    """What a batch does per item: ``read`` (in a worker thread) then ``process`` (model, outputs) -> columns."""

    fields: list[str] = []

    def read(self, item: Item):
        raise NotImplementedError

    def process(self, item: Item, data, outputs: OutputFolder | None) -> tuple[list[str], dict]:
        raise NotImplementedError


class DiagnoseTask(Task):
    def __init__(self, task: str, device: str = "cpu", heatmaps: bool = True):
        from .diagnosis.inference import Classifier

        self.classifier = Classifier(task, device=device)
        self.heatmaps = heatmaps
        self.fields = ["prediction", *(f"p_{c}" for c in self.classifier.classes), "caution", "warning"]

    def read(self, item):
        from .io import read_xray

        xray = read_xray(item.path)
        return xray.array, xray.meta.get("warning", "")

    def process(self, item, data, outputs):
        from PIL import Image

        from .diagnosis.batch import classify_image

        image, warning = data
        heatmap = outputs is not None and self.heatmaps
        columns, overlay = classify_image(self.classifier, image, item.path, heatmap=heatmap)
        written = []
        if overlay is not None:
            written.append(outputs.write(f"{Path(item.path).stem}_heatmap.png",
                                         lambda tmp: Image.fromarray(overlay).save(tmp, format="PNG"), item.path))
        return written, {**columns, "warning": warning}


class SegmentTask(Task):
    def __init__(self, task: str, device: str = "cpu", seg_nrrd: bool = False):
        from .segmentation.inference import Segmenter

        self.segmenter = Segmenter(task, device=device)
        self.seg_nrrd = seg_nrrd
        unit = "ml" if self.segmenter.task.slice_wise else "fraction"
        self.fields = [_column(name, unit) for name, _ in self.segmenter.task.labels.values()]

    def read(self, item):
        from .segmentation.batch import read_2d, read_channels

        if self.segmenter.task.slice_wise:
            return read_channels(Path(item.path), self.segmenter.task)
        return read_2d(Path(item.path))

    def process(self, item, data, outputs):
        from .segmentation.batch import label_fractions, label_volumes_ml, study_name, write_labels

        segmenter, task = self.segmenter, self.segmenter.task
        if not task.slice_wise:
            classes = segmenter(data)
            path = outputs.write(f"{Path(item.path).stem}_seg.png",
                                 lambda tmp: write_labels(segmenter, classes, tmp, fmt="png"), item.path)
            return [path], {_column(name, "fraction"): v for name, v in label_fractions(segmenter, classes).items()}
        classes = segmenter.segment_volume(data)
        geometry = data[0].geometry
        name = study_name(item.path)
        suffix, fmt = (".seg.nrrd", "seg.nrrd") if self.seg_nrrd else (".nii.gz", "volume")
        path = outputs.write(f"{name}_{task.name}{suffix}",
                             lambda tmp: write_labels(segmenter, classes, tmp, geometry, fmt=fmt), item.path)
        return [path], {_column(label, "ml"): v for label, v in label_volumes_ml(segmenter, classes, geometry).items()}


def _column(label: str, unit: str) -> str:
    return f"{label.replace(' ', '_')}_{unit}"


def register_row(item: Item) -> dict:
    """A register manifest row's frame geometry and initial pose: pixel_spacing (list or None), sdd_mm, sid_mm,
    invert, linear, init (six numbers, or None: the frame's positioner angles)."""
    f = item.fields
    number = lambda key: float(f[key]) if f.get(key) not in (None, "") else None  # noqa: E731
    flag = lambda key: str(f.get(key, "")).lower() in ("1", "true", "yes")  # noqa: E731
    init = [number(k) for k in POSE_COLUMNS]
    if any(v is None for v in init) and not all(v is None for v in init):
        raise MedAIInputError(f"{item.path}: give all six of {', '.join(POSE_COLUMNS)} or none")
    return {"pixel_spacing": [float(v) for v in str(f.get("pixel_spacing") or "").replace(",", " ").split()] or None,
            "sdd_mm": number("sdd"), "sid_mm": number("sid"),
            "invert": flag("invert"), "linear": flag("linear"),
            "init": None if init[0] is None else init}


class RegisterTask(Task):
    """Manifest rows: ct, frame, tx ty tz rx ry rz (initial pose; empty: the frame's positioner angles), and
    optional pixel_spacing, sdd, sid, invert, linear. One Registrar per CT (the last one kept: sort the manifest by CT)."""

    fields = ["ct", "confidence", "similarity", "steps", *POSE_COLUMNS]

    def __init__(self, agent: str | None = None, device: str = "cpu", refine: bool = True):
        from .registration import Agent

        self.agent = Agent.load(agent)
        self.device = device
        self.refine = refine
        self._registrar = (None, None)

    def read(self, item):
        from .registration import load_frame

        row = register_row(item)
        frame = load_frame(item.path, pixel_spacing=row["pixel_spacing"], sdd_mm=row["sdd_mm"], sid_mm=row["sid_mm"],
                           invert=row["invert"], linear=row["linear"])
        return frame, row["init"]

    def registrar(self, ct_path: str):
        from .io import read_volume
        from .registration import Registrar

        if self._registrar[0] != ct_path:
            self._registrar = (None, None)  # free the previous CT first
            self._registrar = (ct_path, Registrar(read_volume(ct_path), self.agent, device=self.device))
        return self._registrar[1]

    def process(self, item, data, outputs):
        from .drr import Pose

        frame, init = data
        ct_path = item.fields.get("ct") or ""
        if not ct_path:
            raise MedAIInputError(f"{item.path}: no 'ct' in its manifest row")
        if init is None and frame.nominal_pose is None:
            raise MedAIInputError(f"{item.path}: no initial pose (manifest tx..rz empty, no DICOM positioner angles)")
        result = self.registrar(ct_path).register(frame, Pose.from_array(init) if init else None,
                                                  refine_result=self.refine)
        record = {"ct": ct_path, "frame": item.path, "carm": frame.carm.to_dict(), **result.to_dict()}
        text = json.dumps(record, indent=2)
        path = outputs.write(f"{Path(item.path).stem}_registration.json", lambda tmp: Path(tmp).write_text(text),
                             item.path)
        return [path], {"ct": ct_path, "confidence": f"{result.confidence:.4f}", "similarity": f"{result.similarity:.4f}",
                        "steps": result.steps, **{k: f"{v:.3f}" for k, v in zip(POSE_COLUMNS, result.pose.as_array())}}


def items_from(inputs=(), manifest: str | None = None, kind: str = "diagnose", volumes: bool = False) -> list[Item]:
    """Items from a CSV manifest (column ``path``, or ``frame`` for register) or from files/folders (``volumes``:
    segment 3D inputs, a DICOM folder being one item)."""
    if manifest:
        with open(manifest, newline="") as f:
            rows = list(csv.DictReader(f))
        key = "frame" if kind == "register" else "path"
        if not rows or key not in rows[0]:
            raise MedAIInputError(f"{manifest}: a manifest needs a '{key}' column"
                                  + (" (and 'ct', tx..rz)" if kind == "register" else ""))
        base = Path(manifest).parent
        items = []
        for row in rows:
            resolve = lambda p: str(p if os.path.isabs(p) else base / p) if p else p  # noqa: E731
            fields = {**row, "ct": resolve(row.get("ct", ""))} if kind == "register" else dict(row)
            items.append(Item(resolve(row[key]), fields))
        return items
    if kind == "register":
        raise MedAIInputError("batch register needs --manifest (columns ct, frame, tx..rz, pixel_spacing, sdd, sid)")
    if kind == "diagnose":
        from .diagnosis.batch import expand_inputs

        return [Item(str(p)) for p in expand_inputs(inputs)]
    from .segmentation.batch import _inputs

    return [Item(str(p)) for p in _inputs(inputs, volumes=volumes)] if inputs else []


def run_batch(task: Task, items: list[Item], csv_path, out: str | None = None, overwrite: bool = False,
              workers: int = 1, progress: bool = True) -> dict:
    """Process ``items`` with ``task``; returns {"done", "failed", "skipped", "rows"} of this run."""
    from tqdm import tqdm

    paths = [item.path for item in items]
    if len(set(paths)) != len(paths):
        raise MedAIInputError("the same input appears twice in the batch; each input needs its own row")
    results = ResultsCSV(csv_path, BASE_FIELDS + task.fields)
    outputs = OutputFolder(out, overwrite) if out else None
    todo = [item for item in items if overwrite or not results.done(item)]
    counts = {"done": 0, "failed": 0, "skipped": len(items) - len(todo), "rows": []}

    def read(item):
        start = time.perf_counter()
        try:
            return task.read(item), None, time.perf_counter() - start
        except (MedAIInputError, MedAIModelError, OSError, ValueError) as exc:
            return None, exc, time.perf_counter() - start

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        ahead = max(1, workers) * 2
        futures = [pool.submit(read, item) for item in todo[:ahead]]
        bar = tqdm(total=len(todo), desc=f"batch {type(task).__name__[:-4].lower()}", disable=not progress,
                   unit="item")
        for index, item in enumerate(todo):
            data, error, read_seconds = futures[index].result()
            if index + ahead < len(todo):
                futures.append(pool.submit(read, todo[index + ahead]))
            futures[index] = None  # free what was read
            start = time.perf_counter()
            row = {"path": item.path, "status": "failed", "outputs": "", "error": ""}
            try:
                if error is not None:
                    raise error
                written, columns = task.process(item, data, outputs)
                row.update(columns, status="done", outputs=";".join(written))
            except (MedAIInputError, MedAIModelError, OSError, ValueError, RuntimeError) as exc:
                row["error"] = f"{type(exc).__name__}: {exc}" if not isinstance(exc, MedAIInputError) else str(exc)
            row["seconds"] = f"{read_seconds + time.perf_counter() - start:.3f}"
            results.append(row)
            counts[row["status"]] += 1
            counts["rows"].append(row)
            bar.update(1)
        bar.close()
    return counts
