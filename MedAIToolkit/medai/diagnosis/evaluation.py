"""Held-out evaluation of a classifier on the shared chest X-rays: metrics, age-group shortcut check, heat maps."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import MedAIInputError
from ..io import read_xray
from ..paths import shared_data
from .batch import expand_inputs
from .data import LABEL_MAPS, labels_tensor, load_images, lung_mask, records
from .inference import Classifier, heat_mass_inside
from .metrics import classification_report, softmax


def split_logits(classifier: Classifier, split: str, progress: bool = False):
    """(records, logits numpy, truth numpy) of one split."""
    recs = records(classifier.task, split)
    images = load_images(recs, classifier.image_size, progress, classifier.intensity)
    return recs, classifier.logits(images).numpy(), labels_tensor(recs, classifier.task).numpy()


def subgroup_reports(recs, probabilities: np.ndarray, truth: np.ndarray, classes) -> dict:
    """Per class: sensitivity split by age group / source: a model using "child vs adult" as a shortcut
    shows it here (e.g. adult pneumonia called COVID, pediatric normals called pneumonia)."""
    predicted = probabilities.argmax(axis=1)
    out = {}
    for k, name in enumerate(classes):
        for key in sorted({(r.age_group, r.source) for r, t in zip(recs, truth) if t == k}):
            idx = [i for i, r in enumerate(recs) if truth[i] == k and (r.age_group, r.source) == key]
            hits = int((predicted[idx] == k).sum())
            out[f"{name} | {key[0]} ({key[1]})"] = {"n": len(idx), "sensitivity": hits / len(idx)}
    return out


def report_from_logits(recs, logits: np.ndarray, truth: np.ndarray, classes, temperature: float,
                       bias=None) -> dict:
    """Metrics of calibrated probabilities (``softmax(logits / T + bias)``), the uncalibrated ECE, and
    sensitivity per age group / source."""
    calibrated = softmax(logits, temperature, bias)
    report = classification_report(calibrated, truth, classes)
    report["ece_uncalibrated"] = classification_report(softmax(logits), truth, classes)["ece"]
    report["subgroups"] = subgroup_reports(recs, calibrated, truth, classes)
    report["temperature"] = temperature
    report["logit_bias"] = None if bias is None else [float(v) for v in bias]
    return report


def evaluate_split(classifier: Classifier, split: str = "test", progress: bool = False) -> dict:
    """Metrics (calibrated and uncalibrated) of ``classifier`` on a split of its task."""
    recs, logits, truth = split_logits(classifier, split, progress)
    return {**report_from_logits(recs, logits, truth, classifier.classes, classifier.temperature,
                                  classifier.logit_bias), "split": split}


def heatmap_lung_fraction(classifier: Classifier, split: str | None = None, limit: int | None = None,
                          records_list=None) -> dict:
    """Mean fraction of Grad-CAM mass inside the radiologist-drawn lung boxes (ieee8023 images of ``split``, or
    the boxed records of ``records_list``)."""
    from .registry import get_task

    root = shared_data("chest_xray")
    # the pneumonia task has no ieee8023 images: its classifier is followed on the covid task's boxed images
    recs = [r for r in (records_list if records_list is not None else records(get_task("covid"), split))
            if r.lung_boxes]
    recs = recs[:limit] if limit else recs
    fractions, areas = [], []
    for rec in recs:
        image = read_xray(str(root / rec.path)).array
        heat = classifier.heatmap(image, name=rec.path)
        mask = lung_mask(rec, heat.shape)
        fractions.append(heat_mass_inside(heat, mask))
        areas.append(float(mask.mean()))
    fractions = np.asarray(fractions)
    empty = np.isnan(fractions)  # an all-zero map shows no evidence: counted as 0 inside, and listed
    fractions[empty] = 0.0
    return {"images": len(recs), "mean_fraction_in_lungs": float(np.mean(fractions)),
            "median_fraction_in_lungs": float(np.median(fractions)), "empty_maps": int(empty.sum()),
            "mean_lung_box_area_fraction": float(np.mean(areas))}


def evaluate_folder(classifier: Classifier, folder, chunk: int = 32) -> dict:
    """Metrics of ``classifier`` on a labelled folder of one's own: one subfolder per class, named by the task's class
    (``COVID``, ``NORMAL``, ``OTHER_PNEUMONIA``, ``PNEUMONIA``) or by a data-set label that maps to it
    (``PNEUMONIA_BACTERIAL``, ``PNEUMONIA_VIRAL``, ...; case-insensitive). Each image goes through the product's own
    path (``read_xray``: DICOM, PNG, JPEG, TIFF; a grey X-ray with a few coloured pixels converted with a warning).

    Returns :func:`classification_report`'s metrics of the images read, plus ``refused`` (path, error) for the images the
    product refuses (counted in no metric), ``converted_to_grey`` (paths read with a warning) and ``skipped_folders``
    (subfolders naming no class of the task).
    """
    mapping = {**{c: c for c in classifier.classes}, **LABEL_MAPS.get(classifier.task.name, {})}
    folder = Path(folder)
    if not folder.is_dir():
        raise MedAIInputError(f"{folder} is not a folder (expected one subfolder of X-rays per class)")
    arrays, names, truth, refused, converted, skipped = [], [], [], [], [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        label = mapping.get(sub.name.upper())
        if label is None:
            skipped.append(sub.name)
            continue
        for path in expand_inputs([sub]):
            try:
                xray = read_xray(str(path))
            except MedAIInputError as exc:
                refused.append((str(path), str(exc)))
                continue
            if xray.meta.get("warning"):
                converted.append(str(path))
            arrays.append(xray.array)
            names.append(str(path))
            truth.append(classifier.classes.index(label))
    if not arrays:
        raise MedAIInputError(f"no readable X-ray in a class subfolder of {folder} (classes: "
                              f"{', '.join(sorted(mapping))}; skipped: {', '.join(skipped) or 'none'})")
    probabilities = np.concatenate([classifier.probabilities(arrays[i:i + chunk], names[i:i + chunk])
                                    for i in range(0, len(arrays), chunk)])
    report = classification_report(probabilities, np.asarray(truth), classifier.classes)
    return {**report, "refused": refused, "converted_to_grey": converted, "skipped_folders": skipped,
            "predictions": [{"path": n, "truth": classifier.classes[t], "prediction": classifier.classes[int(p.argmax())]}
                            for n, t, p in zip(names, truth, probabilities)]}
