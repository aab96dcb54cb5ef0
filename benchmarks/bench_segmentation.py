"""Held-out segmentation accuracy, CPU time and peak memory per task (cases never used in training).

    python benchmarks/bench_segmentation.py [--threads 2]

For each shipped task: Dice and IoU per label on its held-out split, recomputed now and printed beside the
model card's numbers and the targets; inference time per case (median, after a warm-up) and the process's
peak resident memory. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedAIToolkit"))

from medai.errors import MedAIModelError  # noqa: E402
from medai.segmentation.data import load_split  # noqa: E402
from medai.segmentation.inference import Segmenter, case_truth, predict_case  # noqa: E402
from medai.segmentation.metrics import per_label_scores  # noqa: E402
from medai.segmentation.registry import TASKS  # noqa: E402

TARGETS = {"em-membranes": ("cell interior", 0.90), "brain-tumor": ("tumour", 0.75), "ct-liver": ("liver", 0.85)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in TASKS:
        try:
            segmenter = Segmenter(name)
        except MedAIModelError as exc:
            print(f"{name}: not shipped ({exc})")
            continue
        train_case = segmenter.card.get("training", {}).get("train_case")
        cases = load_split(name, "test", train_case)
        if "image" in cases[0]:
            predict_case(segmenter, cases[0])  # warm-up (3D cases are long enough to time cold)
        scores, times = [], []
        for case in cases:
            start = time.perf_counter()
            prediction = predict_case(segmenter, case)
            times.append(time.perf_counter() - start)
            scores.append(per_label_scores(prediction, case_truth(case), segmenter.task.labels))
        print(f"{name}: {len(cases)} held-out cases ({', '.join(c['id'] for c in cases)}), "
              f"{statistics.median(times):.3f} s per case on CPU ({args.threads} threads), "
              f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
        for label in scores[0]:
            dice = float(np.mean([s[label]["dice"] for s in scores]))
            iou = float(np.mean([s[label]["iou"] for s in scores]))
            card = segmenter.card["held_out"]["mean"][label]
            print(f"  {label:14s} Dice {dice:.4f} IoU {iou:.4f}  (card: Dice {card['dice']:.4f} IoU {card['iou']:.4f})")
        reverse = segmenter.card.get("reverse_direction")
        if reverse:
            print(f"  reverse direction (card, trained on {reverse['train_case']}): "
                  + ", ".join(f"{n} Dice {v['dice']:.4f} IoU {v['iou']:.4f}" for n, v in reverse["held_out"]["mean"].items()))
        target_label, target = TARGETS[name]
        achieved = float(np.mean([s[target_label]["dice"] for s in scores]))
        print(f"  target: {target_label} Dice >= {target:.2f}: {achieved:.4f} ({achieved / target:.3f} of target)")
    missing = [t for t in TARGETS if t not in TASKS]
    if missing:
        print(f"tasks not built yet: {', '.join(missing)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
