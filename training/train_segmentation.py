"""Train and evaluate a MedAI segmentation model (MONAI U-Net, DiceCE loss), headless.

    python training/train_segmentation.py --task em-membranes [--config training/configs/em-membranes.yaml]
        [--epochs N] [--out runs/em-membranes] [--resume] [--export]
    torchrun --nproc_per_node 2 training/train_segmentation.py --task em-membranes ...   # DDP (gloo on CPU)

``--device auto|cpu|cuda`` (auto: CUDA when there is a GPU). Under torchrun, ``batch_size`` is the global batch:
each of the N processes trains on its 1/N shard of the same seeded global batch, with each sample's augmentation
seeded by its place in the run, so N processes take the same steps as one (``medai.distributed``; the dropout
masks excepted). Rank 0 alone validates, logs and checkpoints.

Writes to ``--out``: ``metrics.csv`` (per epoch: loss, per-label validation Dice/IoU, lr, seconds),
``last.pt`` (resumable: model, optimiser, scheduler, epoch, best score), ``best.pt`` (the model to ship: the
checkpoint with the best validation Dice, or the final weights with ``select_on_validation: false``, for
validation sets too small to choose by). ``--export`` evaluates ``best.pt`` on the held-out split and writes
``Resources/Models/<task>.pt`` + its model card.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MedAIToolkit"))

from medai import distributed  # noqa: E402
from medai.errors import MedAIInputError  # noqa: E402
from medai.segmentation.data import load_split  # noqa: E402
from medai.segmentation.inference import Segmenter, case_truth, predict_case  # noqa: E402
from medai.segmentation.metrics import per_label_scores  # noqa: E402
from medai.segmentation.networks import build_network  # noqa: E402
from medai.segmentation.registry import get_task  # noqa: E402

DEFAULTS = {"epochs": 40, "iterations_per_epoch": 25, "batch_size": 8, "lr": 2e-3, "weight_decay": 1e-4,
            "seed": 0, "val_every": 2, "threads": 2, "device": "auto"}


def train_transforms(task, seed: int, config: dict | None = None):
    """MONAI dictionary transforms: crops, flips, rotations, elastic deformation, intensity changes.

    ``config``: ``scale_range`` (zoom of the elastic transform, default 0.1) and ``channel_wise_intensity``
    (scale/shift each contrast on its own, as scanners and protocols change them differently; multi-channel tasks).
    """
    from monai.transforms import (
        Compose, Rand2DElasticd, RandAdjustContrastd, RandFlipd, RandGaussianNoised, RandRotate90d,
        RandScaleIntensityd, RandShiftIntensityd, RandSpatialCropd, SpatialPadd,
    )

    config = config or {}
    scale = float(config.get("scale_range", 0.1))
    channel_wise = bool(config.get("channel_wise_intensity", False))
    intensity = ([RandScaleIntensityd("image", factors=0.25, prob=0.8, channel_wise=True),
                  RandShiftIntensityd("image", offsets=0.25, prob=0.8, channel_wise=True)] if channel_wise else
                 [RandScaleIntensityd("image", factors=0.15, prob=0.5), RandShiftIntensityd("image", offsets=0.1, prob=0.5)])
    keys = ["image", "label"]
    geometric = [RandFlipd(keys, prob=0.5, spatial_axis=0), RandFlipd(keys, prob=0.5, spatial_axis=1),
                 RandRotate90d(keys, prob=0.5, max_k=3)] if task.flips else []
    transforms = Compose([
        SpatialPadd(keys, spatial_size=task.patch_size),  # slices smaller than a patch: zero padding
        RandSpatialCropd(keys, roi_size=task.patch_size, random_size=False),
        *geometric,
        Rand2DElasticd(keys, spacing=(32, 32), magnitude_range=(1, 3), prob=0.5, rotate_range=(np.pi / 12,),
                       scale_range=(scale, scale), mode=("bilinear", "nearest"), padding_mode="reflection"),
        RandAdjustContrastd("image", prob=0.3, gamma=(0.7, 1.5)),
        *intensity,
        RandGaussianNoised("image", prob=0.3, std=0.03),
    ])
    transforms.set_random_state(seed=seed)
    return transforms


def evaluate(task, model, cases, device) -> dict:
    """Per-label Dice/IoU over all validation cases pooled (slices without a label then count through their
    false positives, instead of scoring 1.0 each when empty), with sliding-window inference."""
    segmenter = Segmenter(task, device=str(device), state_dict=_unwrap(model).state_dict())
    predictions = np.concatenate([predict_case(segmenter, case).ravel() for case in cases])
    truths = np.concatenate([case_truth(case).ravel() for case in cases])
    return per_label_scores(predictions, truths, task.labels)


def segmentation_loss(cfg: dict):
    """DiceCE (MONAI); with ``recall_weight`` w the Dice term becomes a Tversky term (false negatives weighted w,
    false positives 1 - w), for small lesions a model tends to under-segment."""
    from monai.losses import DiceCELoss, TverskyLoss

    include_background = cfg.get("dice_include_background", True)
    if not cfg.get("recall_weight"):
        return DiceCELoss(to_onehot_y=True, softmax=True, include_background=include_background)
    w = float(cfg["recall_weight"])
    tversky = TverskyLoss(to_onehot_y=True, softmax=True, include_background=include_background, alpha=1.0 - w, beta=w)

    def loss(logits, labels):
        return tversky(logits, labels) + F.cross_entropy(logits, labels[:, 0])
    return loss


def sample_batch(positives: list, n_cases: int, batch_size: int, positive_fraction: float | None,
                 rng: np.random.Generator) -> np.ndarray:
    """Case indices of a (global) batch; with ``positive_fraction``, that share comes from cases holding a label
    (rare structures such as a tumour in a few slices), the rest uniformly from all cases."""
    picks = rng.integers(n_cases, size=batch_size)
    if positive_fraction and positives:
        chosen = rng.random(batch_size) < positive_fraction
        picks[chosen] = rng.choice(positives, size=int(chosen.sum()))
    return picks


_unwrap = distributed.unwrap


def train(task_name: str, out: str, config: dict, resume: bool = False, progress: bool = True) -> dict:
    """Train; returns {"losses": [...per epoch], "best": score, "metrics_csv": path}."""
    from tqdm import tqdm

    task = get_task(task_name)
    cfg = {**DEFAULTS, **config}
    ctx = distributed.setup(cfg.get("device"))
    device, rank, world = ctx.device, ctx.rank, ctx.world
    local_batch = distributed.local_batch_size(int(cfg["batch_size"]), ctx)
    torch.set_num_threads(max(1, int(cfg["threads"]) // world))
    torch.manual_seed(cfg["seed"] + rank)  # dropout masks differ per rank; the weights are rank 0's (DDP)

    train_cases = load_split(task_name, "train", cfg.get("train_case"))
    val_cases = load_split(task_name, "val", cfg.get("train_case")) if rank == 0 else []
    transforms = train_transforms(task, cfg["seed"], cfg)
    model = build_network(task, cfg.get("dropout")).to(device)
    model = distributed.wrap(distributed.sync_batchnorm(model, ctx), ctx)
    loss_fn = segmentation_loss(cfg)
    positives = [i for i, case in enumerate(train_cases) if case["label"].max() > 0]
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=cfg["lr"],
                                                    total_steps=cfg["epochs"] * cfg["iterations_per_epoch"])
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    start_epoch, best, losses = 0, -1.0, []
    if resume and (out_dir / "last.pt").exists():
        state = torch.load(out_dir / "last.pt", map_location="cpu", weights_only=False)
        _unwrap(model).load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best, losses = state["epoch"], state["best"], state["losses"]
        torch.set_rng_state(state["rng"])

    metrics_path = out_dir / "metrics.csv"
    label_names = [name for name, _ in task.labels.values()]
    if rank == 0 and not (resume and metrics_path.exists()):
        with open(metrics_path, "w", newline="") as f:
            csv.writer(f).writerow(["epoch", "loss", "lr", "seconds"] +
                                   [f"val_{m}_{n.replace(' ', '_')}" for n in label_names for m in ("dice", "iou")])
    last_epoch = min(cfg["epochs"], start_epoch + int(cfg.get("stop_after_epochs") or cfg["epochs"]))
    for epoch in range(start_epoch, last_epoch):
        model.train()
        started = time.perf_counter()
        epoch_losses = []
        bar = tqdm(range(cfg["iterations_per_epoch"]), desc=f"epoch {epoch + 1}/{cfg['epochs']}",
                   disable=not progress or rank != 0, leave=False)
        for step in bar:
            # the same global batch on every rank (seeded by epoch and step, so --resume draws it again too)
            rng = np.random.default_rng([cfg["seed"], epoch, step])
            picks = sample_batch(positives, len(train_cases), cfg["batch_size"], cfg.get("positive_fraction"), rng)
            batch = []
            for position in distributed.shard(len(picks), ctx):  # this rank's share: local_batch samples
                transforms.set_random_state(seed=distributed.sample_seed(cfg["seed"], epoch, step, position))
                case = train_cases[picks[position]]
                batch.append(transforms({"image": case["image"], "label": case["label"]}))
            assert len(batch) == local_batch
            images = torch.stack([torch.as_tensor(b["image"]) for b in batch]).float().to(device)
            labels = torch.stack([torch.as_tensor(b["label"]) for b in batch]).long().to(device)
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(model(images), labels)
            loss.backward()
            optimiser.step()
            scheduler.step()
            epoch_losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(epoch_losses):.4f}")
        losses.append(distributed.mean_over_ranks([np.mean(epoch_losses)], ctx)[0])  # the global batch's loss
        if rank != 0:
            continue
        scores = None
        if val_cases and cfg["val_every"] and ((epoch + 1) % cfg["val_every"] == 0 or epoch + 1 == cfg["epochs"]):
            scores = evaluate(task, model, val_cases, device)
            score = float(np.mean([s["dice"] for s in scores.values()]))
            if score > best and cfg.get("select_on_validation", True):
                best = score
                torch.save(_unwrap(model).state_dict(), out_dir / "best.pt")
        with open(metrics_path, "a", newline="") as f:
            csv.writer(f).writerow([epoch + 1, f"{losses[-1]:.5f}", f"{scheduler.get_last_lr()[0]:.6f}",
                                    f"{time.perf_counter() - started:.1f}"] +
                                   ([f"{scores[n][m]:.4f}" for n in label_names for m in ("dice", "iou")]
                                    if scores else [""] * (2 * len(label_names))))
        torch.save({"model": _unwrap(model).state_dict(), "optimiser": optimiser.state_dict(),
                    "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "best": best, "losses": losses,
                    "rng": torch.get_rng_state(), "config": cfg}, out_dir / "last.pt")
        if progress:
            shown = ", ".join(f"{n} Dice {s['dice']:.4f}" for n, s in scores.items()) if scores else ""
            print(f"epoch {epoch + 1}: loss {losses[-1]:.4f} {shown}", flush=True)
    if rank == 0 and not cfg.get("select_on_validation", True) and last_epoch == cfg["epochs"]:
        torch.save(_unwrap(model).state_dict(), out_dir / "best.pt")  # the final weights are the model
    distributed.cleanup(ctx)
    return {"losses": losses, "best": best, "metrics_csv": str(metrics_path)}


def evaluate_held_out(task_name: str, out: str, config: dict) -> tuple[dict, dict, float]:
    """(mean Dice/IoU per label, per-case scores, CPU seconds per case) of ``best.pt`` on the held-out split."""
    task = get_task(task_name)
    state = torch.load(Path(out) / "best.pt", map_location="cpu", weights_only=True)
    cases = load_split(task_name, "test", config.get("train_case"))
    segmenter = Segmenter(task, state_dict=state)
    started = time.perf_counter()
    per_case = {c["id"]: per_label_scores(predict_case(segmenter, c), case_truth(c), task.labels) for c in cases}
    seconds = (time.perf_counter() - started) / len(cases)
    mean = {n: {m: round(float(np.mean([s[n][m] for s in per_case.values()])), 4) for m in ("dice", "iou")}
            for n, _ in task.labels.values()}
    return mean, per_case, seconds


def held_out_record(mean: dict, per_case: dict) -> dict:
    """The model card's ``held_out`` entry: mean and per-case Dice/IoU per label, 4 decimals."""
    return {"split": "test", "mean": mean,
            "per_case": {k: {n: {m: round(x, 4) for m, x in s.items()} for n, s in v.items()}
                         for k, v in per_case.items()}}


def export(task_name: str, out: str, config: dict, command: str) -> dict:
    """Evaluate ``best.pt`` on the held-out split and ship it with a model card."""
    from medai.models import save_model
    from medai.segmentation.data import describe_split

    task = get_task(task_name)
    state = torch.load(Path(out) / "best.pt", map_location="cpu", weights_only=True)
    mean, per_case, seconds = evaluate_held_out(task_name, out, config)
    card = {
        "description": task.description,
        "network": {"class": "monai.networks.nets.UNet", **task.network, "spatial_dims": task.spatial_dims},
        "labels": {str(k): v[0] for k, v in task.labels.items()},
        "output_values": {str(k): v for k, v in task.output_values.items()},
        **describe_split(task_name, config.get("train_case")),
        "held_out": held_out_record(mean, per_case),
        "cpu_seconds_per_case": round(seconds, 3),
        "training": {k: v for k, v in config.items()},
        "command": command,
    }
    save_model(task_name, state, card)
    return card


def record_reverse(task_name: str, out: str, config: dict, command: str) -> dict:
    """Evaluate ``best.pt`` of a run trained on the OTHER patient on its held-out split and record it in the
    shipped model's card as ``reverse_direction`` (the shipped model and its checksum are unchanged)."""
    from medai.models import models_dir, read_card

    card = read_card(task_name)
    shipped_case = card.get("training", {}).get("train_case")
    if not shipped_case or shipped_case == config.get("train_case"):
        raise SystemExit(f"--report-reverse: this run trains on '{config.get('train_case')}', the shipped "
                         f"{task_name} model on '{shipped_case}'; the reverse direction needs the other patient")
    mean, per_case, _ = evaluate_held_out(task_name, out, config)
    card["reverse_direction"] = {
        "train_case": config["train_case"],
        "held_out": held_out_record(mean, per_case),
        "command": command,
        "note": "same recipe trained on the other patient; not shipped, reported for the cross-patient claim in "
                "both directions"}
    (models_dir() / f"{task_name}.json").write_text(json.dumps(card, indent=2) + "\n")
    return card["reverse_direction"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True)
    parser.add_argument("--config", help="YAML with training settings (default training/configs/<task>.yaml)")
    parser.add_argument("--out", help="run folder (default runs/<task>)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="auto (default: CUDA when there is a GPU), cpu, cuda, cuda:N")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--stop-after-epochs", type=int, help="stop after this many epochs (continue with --resume)")
    parser.add_argument("--export", action="store_true", help="evaluate on the held-out split and ship the model")
    parser.add_argument("--export-only", action="store_true", help="skip training; export best.pt of --out")
    parser.add_argument("--evaluate", action="store_true", help="print best.pt's held-out Dice/IoU (nothing shipped)")
    parser.add_argument("--report-reverse", action="store_true",
                        help="a run trained on the other patient (train_case): record its held-out Dice/IoU in the "
                             "shipped model's card as the reverse direction")
    args = parser.parse_args()
    config_path = Path(args.config or REPO / "training" / "configs" / f"{args.task}.yaml")
    config = yaml.safe_load(config_path.read_text()) if config_path.exists() else {}
    for key in ("epochs", "seed", "device", "stop_after_epochs"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    out = args.out or str(REPO / "runs" / args.task)
    if not args.export_only:
        try:
            train(args.task, out, config, resume=args.resume)
        except MedAIInputError as exc:  # e.g. --device cuda without a GPU, a batch that does not split
            print(f"train_segmentation: {exc}", file=sys.stderr)
            return 2
    if args.evaluate and not (args.export or args.export_only) and int(os.environ.get("RANK", 0)) == 0:
        mean, _, seconds = evaluate_held_out(args.task, out, config)
        print(json.dumps({"held_out": mean, "cpu_seconds_per_case": round(seconds, 3)}, indent=2))
    if args.report_reverse and int(os.environ.get("RANK", 0)) == 0:
        command = "python training/train_segmentation.py " + " ".join(sys.argv[1:])
        print(json.dumps(record_reverse(args.task, out, config, command)["held_out"]["mean"], indent=2))
    if (args.export or args.export_only) and int(os.environ.get("RANK", 0)) == 0:
        # the command that trains and ships this model again (an --export-only run was trained before)
        argv = ["--export" if a == "--export-only" else a for a in sys.argv[1:] if a != "--evaluate"]
        command = "python training/train_segmentation.py " + " ".join(argv)
        card = export(args.task, out, config, command)
        print(json.dumps(card["held_out"]["mean"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
