"""Classification metrics: accuracy, per-class sensitivity/specificity/ROC AUC, confusion matrix,
expected calibration error, and bias-corrected temperature scaling fitted on validation logits."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def softmax(logits, temperature: float = 1.0, bias=None) -> np.ndarray:
    """``softmax(logits / T + b)``: temperature scaling, with the per-class bias of bias-corrected temperature
    scaling where given (it undoes the class prior that class-balanced sampling teaches)."""
    z = torch.as_tensor(logits, dtype=torch.float64) / temperature
    if bias is not None:
        z = z + torch.as_tensor(bias, dtype=torch.float64)
    return F.softmax(z, dim=1).numpy()


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); NaN when one class is absent."""
    from monai.metrics import compute_roc_auc

    positives = np.asarray(positives).astype(int)
    if positives.min() == positives.max():
        return float("nan")
    return float(compute_roc_auc(torch.as_tensor(scores, dtype=torch.float64), torch.as_tensor(positives)))


def roc_curve(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) over all thresholds."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    pos = np.asarray(positives, dtype=bool)[order]
    tpr = np.concatenate([[0.0], np.cumsum(pos) / max(pos.sum(), 1)])
    fpr = np.concatenate([[0.0], np.cumsum(~pos) / max((~pos).sum(), 1)])
    return fpr, tpr


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """``matrix[true, predicted]`` counts."""
    matrix = np.zeros((num_classes, num_classes), dtype=int)
    np.add.at(matrix, (np.asarray(truth), np.asarray(predicted)), 1)
    return matrix


def expected_calibration_error(probabilities: np.ndarray, truth: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-class confidence, equal-width bins (the usual definition)."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(truth)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)


def reliability(probabilities: np.ndarray, truth: np.ndarray, bins: int = 10):
    """(bin centres, accuracy per bin, confidence per bin, count per bin) for a reliability diagram."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(truth)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    accuracy = np.bincount(index, weights=correct, minlength=bins) / np.maximum(counts, 1)
    mean_conf = np.bincount(index, weights=confidence, minlength=bins) / np.maximum(counts, 1)
    return (edges[:-1] + edges[1:]) / 2, accuracy, mean_conf, counts


def classification_report(probabilities: np.ndarray, truth: np.ndarray, classes) -> dict:
    """Accuracy, balanced accuracy, per-class sensitivity/specificity/AUC, confusion matrix, ECE."""
    truth = np.asarray(truth)
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(truth, predicted, len(classes))
    per_class = {}
    for k, name in enumerate(classes):
        tp = matrix[k, k]
        fn = matrix[k].sum() - tp
        fp = matrix[:, k].sum() - tp
        tn = matrix.sum() - tp - fn - fp
        per_class[name] = {
            "n": int(matrix[k].sum()),
            "sensitivity": float(tp / max(tp + fn, 1)),
            "specificity": float(tn / max(tn + fp, 1)),
            "auc": roc_auc(probabilities[:, k], truth == k),
        }
    sens = [v["sensitivity"] for v in per_class.values()]
    return {
        "n": int(len(truth)),
        "accuracy": float((predicted == truth).mean()),
        "balanced_accuracy": float(np.mean(sens)),
        "auc_macro": float(np.nanmean([v["auc"] for v in per_class.values()])),
        "ece": expected_calibration_error(probabilities, truth),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }


def class_weights(truth, classes: int) -> torch.Tensor:
    """Per-class loss weights under which every class present in ``truth`` weighs the same in a mean loss."""
    counts = torch.bincount(torch.as_tensor(np.asarray(truth), dtype=torch.long), minlength=classes).double()
    return torch.where(counts > 0, counts.sum() / counts.clamp(min=1) / int((counts > 0).sum()), 0.0)


def fit_calibration(logits, truth, iterations: int = 300, class_balanced: bool = True) -> tuple[float, list]:
    """Bias-corrected temperature scaling (Alexandari et al. 2020): ``T`` and a zero-mean per-class bias ``b``
    minimising the validation negative log-likelihood of ``softmax(logits / T + b)``.

    ``class_balanced``: every class weighs the same in that likelihood, so the probabilities are those of equal class
    priors. A site's prevalence is unknown, and the validation set's class mix is only how the data were put together:
    fitted to it, the bias also learns that mix (covid: -0.68 on COVID, against -0.40 class-balanced), and the argmax
    then favours the classes that happened to be frequent."""
    logits = torch.as_tensor(logits, dtype=torch.float64)
    truth = torch.as_tensor(np.asarray(truth), dtype=torch.long)
    weight = class_weights(truth, logits.shape[1]) if class_balanced else None
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(logits.shape[1], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t, bias], lr=0.1, max_iter=iterations)

    def closure():
        optimiser.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp() + (bias - bias.mean()), truth, weight=weight)
        loss.backward()
        return loss

    optimiser.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0)), (bias - bias.mean()).detach().tolist()
