"""``medai diagnose``: X-ray files or folders in, one CSV row per image (+ optional heat-map PNGs), errors per file."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from ..errors import MedAIInputError
from ..io import read_xray
from ..io.xray import IMAGE_SUFFIXES
from .inference import Classifier


def _candidate(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_SUFFIXES + (".dcm", ".dicom"):
        return True
    if path.suffix == "":
        from ..io.dicom import is_dicom_file

        return is_dicom_file(str(path))
    return False


def expand_inputs(paths) -> list[Path]:
    """Files as given; folders searched recursively for DICOM/PNG/JPEG/TIFF files (sorted)."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and _candidate(p)))
        else:
            files.append(path)
    if not files:
        raise MedAIInputError(f"no X-ray images found in {', '.join(map(str, paths))}")
    return files


def overlay_rgb(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """uint8 RGB: the X-ray in grey with the heat map blended in a 'jet' colour scale where it is warm."""
    from matplotlib import colormaps

    low, high = np.percentile(image, (0.5, 99.5))
    grey = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    colour = colormaps["jet"](heat)[..., :3]
    weight = alpha * np.clip(heat * 1.5, 0, 1)[..., None]
    rgb = grey[..., None] * (1 - weight) + colour * weight
    return (rgb * 255).round().astype(np.uint8)


def classify_image(classifier: Classifier, image: np.ndarray, name: str, heatmap: bool = False):
    """One X-ray -> (columns ``prediction``, ``p_<CLASS>`` (4 decimals), ``caution`` (the model card's caution for the
    predicted class, '' when none), the heat map blended over the X-ray as uint8 RGB or None). What ``medai diagnose``
    and ``medai batch diagnose`` write per image."""
    classes = classifier.classes
    probabilities = classifier.probabilities([image], [name])[0]
    k = int(np.argmax(probabilities))
    columns = {"prediction": classes[k], **{f"p_{c}": f"{p:.4f}" for c, p in zip(classes, probabilities)},
               "caution": classifier.caution(classes[k])}
    overlay = overlay_rgb(image, classifier.heatmap(image, k, name)) if heatmap else None
    return columns, overlay


def diagnose_files(classifier: Classifier, inputs, csv_path: str | None = None, heatmaps: str | None = None) -> list[dict]:
    """Classify every input. Returns one row per file: path, prediction, p_<CLASS>..., caution, warning (the input's:
    e.g. converted to grey), error (empty when done).

    A file that cannot be read (or is not a grey 2D X-ray) gets its error in its row; the others are still done.
    """
    from PIL import Image

    classes = classifier.classes
    rows = []
    if heatmaps:
        os.makedirs(heatmaps, exist_ok=True)
    for path in expand_inputs(inputs):
        row = {"path": str(path), "prediction": "", **{f"p_{c}": "" for c in classes}, "caution": "", "warning": "",
               "error": ""}
        try:
            xray = read_xray(str(path))
            row["warning"] = xray.meta.get("warning", "")
            columns, overlay = classify_image(classifier, xray.array, str(path), heatmap=bool(heatmaps))
            row.update(columns)
            if overlay is not None:
                Image.fromarray(overlay).save(Path(heatmaps) / f"{path.stem}_heatmap.png")
        except MedAIInputError as exc:
            row["error"] = str(exc)
        rows.append(row)
    if csv_path:
        Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return rows


def report_text(classes, probabilities, name: str = "", task_description: str = "", temperature: float = 1.0,
                caution: str = "") -> str:
    """A short human-readable report of one image's calibrated probabilities (``caution``: the model card's
    caution for the predicted class, shown under the prediction)."""
    order = np.argsort(probabilities)[::-1]
    lines = [f"MedAI Diagnosis — {name}".rstrip(" —"), task_description,
             f"Prediction: {classes[order[0]]} (probability {probabilities[order[0]]:.1%})"]
    lines += [f"  {classes[k]}: {probabilities[k]:.1%}" for k in order]
    if caution:
        lines.append(f"Caution: {caution}")
    lines.append(f"Probabilities calibrated by temperature scaling (T = {temperature:.2f}) on validation patients. "
                 "The heat map (Grad-CAM) shows where the evidence for the predicted class lies. "
                 "Research use only; not a medical device.")
    return "\n".join(line for line in lines if line)
