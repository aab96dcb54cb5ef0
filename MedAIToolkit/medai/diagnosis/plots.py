"""PNG plots of an evaluation: ROC curves, confusion matrix, reliability diagram."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .metrics import reliability, roc_curve


def save_evaluation_plots(probabilities: np.ndarray, truth: np.ndarray, classes, folder, title: str,
                          uncalibrated: np.ndarray | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    truth = np.asarray(truth)
    paths = []

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for k, name in enumerate(classes):
        fpr, tpr = roc_curve(probabilities[:, k], truth == k)
        ax.plot(fpr, tpr, label=name)
        if len(classes) == 2:
            break
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"ROC — {title}")
    ax.legend(loc="lower right")
    paths.append(folder / "roc.png")
    _save(fig, paths[-1])

    matrix = np.zeros((len(classes), len(classes)), dtype=int)
    np.add.at(matrix, (truth, probabilities.argmax(axis=1)), 1)
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > matrix.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=20)
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title=f"Confusion — {title}")
    paths.append(folder / "confusion_matrix.png")
    _save(fig, paths[-1])

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for probs, label, style in ((uncalibrated, "before scaling", "o--"), (probabilities, "temperature-scaled", "o-")):
        if probs is None:
            continue
        centres, accuracy, confidence, counts = reliability(probs, truth)
        keep = counts > 0
        ax.plot(confidence[keep], accuracy[keep], style, label=label)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"Reliability — {title}")
    ax.legend(loc="upper left")
    paths.append(folder / "reliability.png")
    _save(fig, paths[-1])
    return paths


def _save(fig, path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
