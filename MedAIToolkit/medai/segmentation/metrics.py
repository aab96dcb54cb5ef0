"""Per-label Dice and IoU on label maps."""
from __future__ import annotations

import numpy as np


def dice_iou(prediction: np.ndarray, truth: np.ndarray, label: int) -> tuple[float, float]:
    """Dice and IoU of one label (1.0 when both are empty)."""
    p, t = prediction == label, truth == label
    inter = np.logical_and(p, t).sum(dtype=np.int64)
    total = p.sum(dtype=np.int64) + t.sum(dtype=np.int64)
    union = total - inter
    if total == 0:
        return 1.0, 1.0
    return float(2 * inter / total), float(inter / union)


def per_label_scores(prediction: np.ndarray, truth: np.ndarray, labels: dict) -> dict:
    """{segment name: {"dice": d, "iou": i}} for every class index in ``labels``."""
    return {name: dict(zip(("dice", "iou"), dice_iou(prediction, truth, index)))
            for index, (name, _color) in labels.items()}
