"""Held-out chest X-ray classification: accuracy, AUC, sensitivity, ECE, shortcut check, heat maps, CPU latency.

    python benchmarks/bench_diagnosis.py [--threads 2] [--json benchmarks/results/bench_diagnosis.json]

For each shipped task, on its test patients (never seen in training or calibration): accuracy, per-class
sensitivity/specificity/AUC, confusion matrix, ECE before and after temperature scaling; sensitivity per
age group / source (a model that learnt "child vs adult" shows it there); the share of Grad-CAM mass inside the
ieee8023 lung boxes. References measured in the same run: a logistic regression on 32x32 pixels trained on
the same training patients (what the CNN adds), an age-group probe (how easy the child/adult shortcut is),
and MONAI DenseNet121's CPU latency (the usual chest X-ray network). Targets are printed; nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedAIToolkit"))

from medai.diagnosis.data import labels_tensor, load_images, records  # noqa: E402
from medai.diagnosis.evaluation import evaluate_split, heatmap_lung_fraction  # noqa: E402
from medai.diagnosis.inference import Classifier  # noqa: E402
from medai.diagnosis.registry import TASKS  # noqa: E402
from medai.errors import MedAIModelError  # noqa: E402
from medai.io import read_xray  # noqa: E402
from medai.paths import shared_data  # noqa: E402

TARGETS = {"pneumonia": {"accuracy": 0.92, "auc_macro": 0.96}, "covid": {"accuracy": 0.90, "sensitivity": 0.85}}
ECE_TARGET, LUNG_TARGET, LATENCY_TARGET_S = 0.05, 0.70, 0.100


def pixel_logistic(x_train, y_train, x_test, classes: int, size: int = 32, l2: float = 1e-2) -> np.ndarray:
    """Multinomial logistic regression on size x size thumbnails (LBFGS); returns test predictions."""
    def features(x):
        f = F.adaptive_avg_pool2d(x, size).flatten(1)
        return (f - mean) / std

    flat = F.adaptive_avg_pool2d(x_train, size).flatten(1)
    mean, std = flat.mean(0), flat.std(0) + 1e-6
    a, b = features(x_train).double(), features(x_test).double()
    w = torch.zeros(a.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], max_iter=300)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(a @ w + bias, y_train) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return (b @ w + bias).argmax(1).detach().numpy()


def latency(fn, repeats: int = 30) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for name, task in TASKS.items():
        try:
            classifier = Classifier(name)
        except MedAIModelError as exc:
            print(f"{name}: not installed ({exc})")
            continue
        print(f"\n=== {name}: {', '.join(task.classes)} — held-out test patients ===")
        report = evaluate_split(classifier, "test")
        print(f"images {report['n']}  accuracy {report['accuracy']:.4f}  balanced {report['balanced_accuracy']:.4f}  "
              f"macro AUC {report['auc_macro']:.4f}  ECE {report['ece_uncalibrated']:.4f} -> {report['ece']:.4f} "
              f"(T = {classifier.temperature:.3f})")
        for cls, m in report["per_class"].items():
            print(f"  {cls:16s} n={m['n']:4d}  sensitivity {m['sensitivity']:.4f}  specificity {m['specificity']:.4f}  "
                  f"AUC {m['auc']:.4f}")
        print("  confusion (rows true, columns predicted):", report["confusion_matrix"])
        print("  sensitivity by age group / source:")
        for key, m in report["subgroups"].items():
            print(f"    {key:55s} n={m['n']:4d}  {m['sensitivity']:.4f}")

        train_recs, test_recs = records(task, "train"), records(task, "test")
        x_train, x_test = load_images(train_recs, 64, False), load_images(test_recs, 64, False)
        y_train, y_test = labels_tensor(train_recs, task), labels_tensor(test_recs, task).numpy()
        baseline = float((pixel_logistic(x_train, y_train, x_test, task.num_classes) == y_test).mean())
        print(f"  reference: logistic regression on 32x32 pixels, same patients: accuracy {baseline:.4f} "
              f"(CNN / reference = {report['accuracy'] / baseline:.3f})")
        probe = None
        if len({r.age_group for r in train_recs}) > 1:
            age = lambda recs: torch.tensor([r.age_group == "adult" for r in recs], dtype=torch.long)  # noqa: E731
            probe = float((pixel_logistic(x_train, age(train_recs), x_test, 2) == age(test_recs).numpy()).mean())
            print(f"  shortcut probe: child vs adult from 32x32 pixels, accuracy {probe:.4f} (the shortcut is that easy)")

        heat = heatmap_lung_fraction(classifier, "test")
        print(f"  Grad-CAM mass inside the lung boxes: mean {heat['mean_fraction_in_lungs']:.4f} median "
              f"{heat['median_fraction_in_lungs']:.4f} on {heat['images']} ieee8023 test images (boxes cover "
              f"{heat['mean_lung_box_area_fraction']:.1%} of the image: a uniform map would score that)")

        path = str(shared_data("chest_xray") / test_recs[0].path)
        image = read_xray(path).array
        t_read_classify = latency(lambda: classifier.probabilities([read_xray(path).array]))
        t_heat = latency(lambda: classifier.heatmap(image), repeats=10)
        from monai.networks.nets import DenseNet121

        dense = DenseNet121(spatial_dims=2, in_channels=1, out_channels=task.num_classes).eval()
        x = torch.rand(1, 1, classifier.image_size, classifier.image_size)
        with torch.no_grad():
            t_dense = latency(lambda: dense(x))
            t_ours = latency(lambda: classifier.model(x))
        print(f"  CPU latency ({args.threads} threads): read + classify {t_read_classify * 1000:.1f} ms/image, "
              f"+ heat map {t_heat * 1000:.1f} ms; network forward {t_ours * 1000:.2f} ms vs MONAI DenseNet121 "
              f"{t_dense * 1000:.2f} ms at the same size (ratio {t_dense / t_ours:.1f}x)")
        targets = TARGETS[name]
        checks = {f"accuracy >= {targets['accuracy']}": report["accuracy"] >= targets["accuracy"],
                  f"ECE <= {ECE_TARGET}": report["ece"] <= ECE_TARGET,
                  f"heat mass in lungs >= {LUNG_TARGET}": heat["mean_fraction_in_lungs"] >= LUNG_TARGET,
                  f"latency < {LATENCY_TARGET_S * 1000:.0f} ms": t_read_classify < LATENCY_TARGET_S}
        if "auc_macro" in targets:
            checks[f"AUC >= {targets['auc_macro']}"] = report["auc_macro"] >= targets["auc_macro"]
        if "sensitivity" in targets:
            checks[f"every class sensitivity >= {targets['sensitivity']}"] = all(
                m["sensitivity"] >= targets["sensitivity"] for m in report["per_class"].values())
        print("  targets: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in checks.items()))
        results[name] = {"report": report, "baseline_pixel_logistic_accuracy": baseline, "age_probe_accuracy": probe,
                         "heatmap": heat, "latency_s": {"read_classify": t_read_classify, "heatmap": t_heat,
                                                        "forward": t_ours, "densenet121_forward": t_dense},
                         "targets": checks}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
