"""Held-out evaluation of a classifier on the shared chest X-rays: metrics, age-group shortcut check, heat maps."""
from __future__ import annotations

import numpy as np

from ..io import read_xray
from ..paths import shared_data
from .data import labels_tensor, load_images, lung_mask, records
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
