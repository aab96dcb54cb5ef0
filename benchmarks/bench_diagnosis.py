"""Chest X-ray classification on the random split and on the external split (unseen sub-sources), side by side.

    python benchmarks/bench_diagnosis.py [--threads 2] [--json benchmarks/results/bench_diagnosis.json]
    python benchmarks/bench_diagnosis.py --images MY_XRAYS [--tasks covid] [--json ...]

For each shipped task: accuracy, macro AUC, per-class sensitivity, ECE before and after temperature scaling on the
random test split (``test``) and on the ``external`` split (whole sub-sources never trained on: the last block of
COVID-19 Radiography file numbers, later Kermany patient numbers, held-out ieee8023 patients; see
``medai.diagnosis.data``). For ``covid`` also the adult part of the external split alone (the make-up of an
independent test on unseen sources: no Kermany children) and sensitivity per age group / source (a model that learnt
"child = other pneumonia" shows it there). Then the share of Grad-CAM mass inside the radiologist lung boxes of the
held-out ieee8023 patients (test + external), and CPU latency per image (read + preprocess + classify).

``--images FOLDER`` measures the shipped models on X-rays of one's own instead: one subfolder per class (``NORMAL``,
``PNEUMONIA``, ``COVID``, ``OTHER_PNEUMONIA``, or a data-set label such as ``PNEUMONIA_BACTERIAL``), read as
``medai diagnose`` reads them; it prints the same metrics, the images refused and those converted to grey.

References measured in the same run: a logistic regression on 32x32 pixels of the same training patients (what the
CNN adds), child-vs-adult probes on 32x32 pixels and on the network's own pooled features (how easily the age
shortcut is available to it), and MONAI DenseNet121's CPU forward time at the same input size. Targets are printed;
nothing is asserted.
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
from medai.diagnosis.evaluation import (evaluate_folder, heatmap_lung_fraction, report_from_logits,  # noqa: E402
                                        split_logits)
from medai.diagnosis.inference import Classifier  # noqa: E402
from medai.diagnosis.registry import TASKS, get_task  # noqa: E402
from medai.errors import MedAIInputError, MedAIModelError  # noqa: E402
from medai.io import read_xray  # noqa: E402
from medai.paths import shared_data  # noqa: E402

TARGETS = {"pneumonia": {"accuracy": 0.93, "auc_macro": 0.97}, "covid": {"accuracy": 0.88, "sensitivity": 0.80}}
ECE_TARGET, LUNG_TARGET, LATENCY_TARGET_S = 0.05, 0.75, 0.100


def logistic_probe(x_train, y_train, x_test, classes: int, l2: float = 1e-2) -> np.ndarray:
    """Multinomial logistic regression on standardised features (LBFGS); returns test predictions."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    a, b = ((x_train - mean) / std).double(), ((x_test - mean) / std).double()
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


def thumbnails(x: torch.Tensor, size: int = 32) -> torch.Tensor:
    return F.adaptive_avg_pool2d(x, size).flatten(1)


@torch.no_grad()
def pooled_features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The classifier head's input (global-average-pooled last stage) of the compact network, else None."""
    if not hasattr(model, "features"):
        return None
    return torch.cat([model.pool(model.features(x[i:i + 128])).flatten(1) for i in range(0, len(x), 128)])


def latency(fn, repeats: int = 30) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def print_report(title: str, report: dict) -> None:
    ece = (f"ECE {report['ece_uncalibrated']:.4f} -> {report['ece']:.4f} calibrated" if "ece_uncalibrated" in report
           else f"ECE {report['ece']:.4f} (calibrated)")
    print(f"  {title}: images {report['n']}  accuracy {report['accuracy']:.4f}  balanced "
          f"{report['balanced_accuracy']:.4f}  macro AUC {report['auc_macro']:.4f}  {ece}")
    print("    sensitivity: " + "  ".join(f"{c} {m['sensitivity']:.3f} (n={m['n']})" for c, m in report["per_class"].items()))


def model_checks(name: str, report: dict, where: str = "") -> dict:
    """The task's accuracy, AUC and per-class sensitivity targets on ``report`` (labels prefixed by ``where``)."""
    targets, prefix = TARGETS[name], f"{where} " if where else ""
    checks = {f"{prefix}accuracy >= {targets['accuracy']}": report["accuracy"] >= targets["accuracy"]}
    if "auc_macro" in targets:
        checks[f"{prefix}AUC >= {targets['auc_macro']}"] = report["auc_macro"] >= targets["auc_macro"]
    if "sensitivity" in targets:
        checks[f"{where + ': ' if where else ''}every class sensitivity >= {targets['sensitivity']}"] = all(
            m["sensitivity"] >= targets["sensitivity"] for m in report["per_class"].values() if m["n"])
    return checks


def bench_folder(folder: str, tasks, json_path: str | None = None) -> dict:
    """The shipped models on a labelled folder of one's own (:func:`evaluate_folder`); tasks whose classes name no
    subfolder there are skipped."""
    results = {}
    for name in tasks:
        classifier = Classifier(name)
        try:
            report = evaluate_folder(classifier, folder)
        except MedAIInputError as exc:
            print(f"\n=== {name}: skipped ({exc}) ===")
            continue
        print(f"\n=== {name} on {folder}: {', '.join(classifier.classes)} ===")
        print_report("your images", report)
        print(f"    refused {len(report['refused'])}, converted to grey with a warning "
              f"{len(report['converted_to_grey'])}; subfolders naming no class: "
              f"{', '.join(report['skipped_folders']) or 'none'}")
        for path, error in report["refused"]:
            print(f"      refused {path}: {error}")
        checks = {**model_checks(name, report), f"ECE <= {ECE_TARGET}": report["ece"] <= ECE_TARGET}
        print("  targets: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in checks.items()))
        results[name] = {**report, "targets": checks}
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tasks", nargs="*", default=sorted(TASKS))
    parser.add_argument("--images", help="a labelled folder of one's own (a subfolder per class) instead of the splits")
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.images:
        bench_folder(args.images, args.tasks, args.json)
        return 0
    results = {}
    for name in args.tasks:
        task = get_task(name)
        try:
            classifier = Classifier(name)
        except MedAIModelError as exc:
            print(f"{name}: not installed ({exc})")
            continue
        print(f"\n=== {name}: {', '.join(task.classes)} (network {classifier.network_spec.get('name')}, "
              f"{classifier.image_size} px, intensity {classifier.intensity}, TTA {classifier.tta}, "
              f"T = {classifier.temperature:.3f}) ===")
        entry = {"splits": {}}
        for split in ("test", "external"):
            recs, logits, truth = split_logits(classifier, split)
            report = report_from_logits(recs, logits, truth, task.classes, classifier.temperature,
                                        classifier.logit_bias)
            print_report("random split (test)" if split == "test" else "external split (unseen sub-sources)", report)
            entry["splits"][split] = report
            if split == "external" and name == "covid":
                adult = [i for i, r in enumerate(recs) if r.age_group == "adult"]
                adult_report = report_from_logits([recs[i] for i in adult], logits[adult], truth[adult], task.classes,
                                                  classifier.temperature, classifier.logit_bias)
                print_report("external, adults only (no Kermany children)", adult_report)
                entry["splits"]["external_adult"] = adult_report
            if name == "covid":
                for key, m in report["subgroups"].items():
                    print(f"      {key:55s} n={m['n']:4d}  sensitivity {m['sensitivity']:.3f}")

        train_recs, test_recs = records(task, "train"), records(task, "test")
        x_train64, x_test64 = load_images(train_recs, 64, False), load_images(test_recs, 64, False)
        y_train, y_test = labels_tensor(train_recs, task), labels_tensor(test_recs, task).numpy()
        pixel = float((logistic_probe(thumbnails(x_train64), y_train, thumbnails(x_test64), task.num_classes)
                       == y_test).mean())
        entry["reference_pixel_logistic_accuracy"] = pixel
        print(f"  reference: logistic regression on 32x32 pixels, same patients, random split: accuracy {pixel:.4f} "
              f"(CNN / reference = {entry['splits']['test']['accuracy'] / pixel:.3f})")
        if len({r.age_group for r in train_recs}) > 1:
            age = lambda recs: torch.tensor([r.age_group == "adult" for r in recs], dtype=torch.long)  # noqa: E731
            probe = float((logistic_probe(thumbnails(x_train64), age(train_recs), thumbnails(x_test64), 2)
                           == age(test_recs).numpy()).mean())
            x_train = load_images(train_recs, classifier.image_size, False, classifier.intensity)
            x_test = load_images(test_recs, classifier.image_size, False, classifier.intensity)
            f_train, f_test = pooled_features(classifier.model, x_train), pooled_features(classifier.model, x_test)
            feature_probe = (float((logistic_probe(f_train, age(train_recs), f_test, 2) == age(test_recs).numpy()).mean())
                             if f_train is not None else float("nan"))
            entry["age_probe_accuracy"] = {"pixels_32": probe, "network_features": feature_probe}
            print(f"  age shortcut: child vs adult predicted from 32x32 pixels with accuracy {probe:.4f}, from the "
                  f"network's pooled features {feature_probe:.4f}")

        boxed = [r for split in ("test", "external") for r in records(get_task("covid"), split) if r.lung_boxes]
        heat = heatmap_lung_fraction(classifier, records_list=boxed)
        entry["heatmap"] = heat
        print(f"  Grad-CAM mass inside the lung boxes: mean {heat['mean_fraction_in_lungs']:.4f}, median "
              f"{heat['median_fraction_in_lungs']:.4f} on {heat['images']} held-out ieee8023 X-rays (test + external "
              f"patients; the boxes cover {heat['mean_lung_box_area_fraction']:.1%} of the image: a uniform map "
              f"scores that)")

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
        entry["latency_s"] = {"read_classify": t_read_classify, "heatmap": t_heat, "forward": t_ours,
                              "densenet121_forward": t_dense}
        print(f"  CPU latency ({args.threads} threads): read + preprocess + classify {t_read_classify * 1000:.1f} "
              f"ms/image (TTA {classifier.tta}), heat map {t_heat * 1000:.1f} ms; one network forward "
              f"{t_ours * 1000:.2f} ms vs MONAI DenseNet121 {t_dense * 1000:.2f} ms at the same size "
              f"(ratio {t_dense / t_ours:.1f}x)")

        external = entry["splits"]["external"]
        checks = {**model_checks(name, external, "external"),
                  f"ECE <= {ECE_TARGET} (random and external)": max(external["ece"],
                                                                    entry["splits"]["test"]["ece"]) <= ECE_TARGET,
                  f"heat-map mass in lungs >= {LUNG_TARGET}": heat["mean_fraction_in_lungs"] >= LUNG_TARGET,
                  f"latency < {LATENCY_TARGET_S * 1000:.0f} ms": t_read_classify < LATENCY_TARGET_S}
        if "sensitivity" in TARGETS[name]:
            adult = entry["splits"]["external_adult"]["per_class"]
            checks[f"external adults: every class sensitivity >= {TARGETS[name]['sensitivity']}"] = all(
                m["sensitivity"] >= TARGETS[name]["sensitivity"] for m in adult.values() if m["n"])
        print("  targets: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in checks.items()))
        entry["targets"] = checks
        results[name] = entry
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
