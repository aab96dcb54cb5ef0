"""Train, calibrate and evaluate a MedAI chest X-ray classifier (MONAI networks), headless.

    python training/train_diagnosis.py --task pneumonia [--config training/configs/pneumonia.yaml]
        [--network compact|densenet121|resnet10] [--init CHECKPOINT] [--epochs N] [--out runs/pneumonia]
        [--resume] [--export] [--compare runs/a runs/b ...] [--optuna N]
    python training/train_diagnosis.py --task covid --add-to-card runs/covid-budget-densenet121   # card only
    python training/train_diagnosis.py --task covid --recalibrate   # shipped model: calibration refitted, card only
    torchrun --nproc_per_node 2 training/train_diagnosis.py --task pneumonia ...   # DDP (gloo on CPU)

``--device auto|cpu|cuda`` (auto: CUDA when there is a GPU). Under torchrun, ``batch_size`` is the global batch:
each of the N processes trains on its 1/N shard of the same epoch order, with each image's augmentation seeded by
its place in the run and BatchNorm statistics synchronised over the processes, so N processes take the same steps
as one (``medai.distributed``; dropout masks excepted). Rank 0 alone validates, logs and checkpoints.

Patient-level splits (medai.diagnosis.data). Class-balanced sampling, MONAI augmentation, AdamW + one-cycle
schedule, an exponential moving average of the weights (what is validated and saved), early stopping on the
validation loss (not before ``min_epochs``). Writes to ``--out``: ``metrics.csv`` (per epoch), ``last.pt`` (resumable), ``best.pt``,
``eval/`` (temperature and class bias fitted on validation, every class weighing the same; held-out test metrics ``eval.json`` and ROC / confusion /
reliability PNGs). ``--init`` starts from another model's weights (cross-task pre-training; the class head is
re-initialised when the classes differ). ``--export`` writes ``Resources/Models/<task>.pt`` and its model card.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
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
from medai.models import read_card  # noqa: E402
from medai.diagnosis.data import (  # noqa: E402
    describe_split, labels_tensor, load_images, lung_box_masks, lung_regions, records,
)
from medai.diagnosis.evaluation import heatmap_lung_fraction, report_from_logits, split_logits  # noqa: E402
from medai.diagnosis.inference import Classifier  # noqa: E402
from medai.diagnosis.metrics import classification_report, class_weights, fit_calibration, softmax  # noqa: E402
from medai.diagnosis.networks import (  # noqa: E402
    CompactCXRNet, build_classifier, contrast_maps, energy_outside, heat_mass_inside_maps,
)
from medai.diagnosis.plots import save_evaluation_plots  # noqa: E402
from medai.diagnosis.registry import get_task  # noqa: E402

DEFAULTS = {"epochs": 30, "batch_size": 32, "lr": 2e-3, "weight_decay": 1e-4, "label_smoothing": 0.0,
            "ema_decay": 0.98, "patience": 6, "min_epochs": 15, "balance": "class", "seed": 0, "threads": 2, "dropout": 0.2,
            "network": None, "lung_attention": 0.0, "lung_prior_weight": 0.5, "age_adversary": 0.0, "device": "auto",
            "intensity": "percentile", "augmentation": "standard", "image_size": None, "bn_update_images": None}


HEATMAP_METHOD = ("MONAI GradCAM on the last convolutional stage for the score 'logit of the class minus the mean of "
                  "the other logits' (medai.diagnosis.networks.ClassContrast), rectified, bilinearly resized to the "
                  "X-ray's own pixel grid and scaled to 0-1; 'heatmap' = mean share of its mass inside the ieee8023 "
                  "radiologist lung boxes (empty maps count 0)")
SELECTION_RULE = ("among the runs in 'comparison' and this one: the lowest calibrated validation NLL (after the "
                  "calibration and TTA choice fitted on validation, i.e. the probabilities the model ships; raw "
                  "validation losses are not comparable across runs trained with class-balanced sampling) of those "
                  "whose validation heat maps hold >= 0.70 of their mass in the lung boxes")


class Augmentation:
    """MONAI array transforms on (1, S, S) inputs: small rotations/zoom/shift (no left-right flips: the heart
    is on the left), contrast/gamma, intensity scale/shift, noise, blur. A lung region given with the image
    gets the same spatial transform (and no intensity change).

    ``strength="strong"`` (for sources the model never saw): wider rotation/zoom/shift and shear, aspect-ratio
    changes (public copies squash originals of any aspect to a square), wider gamma, histogram shifts, a smooth
    bias field (uneven exposure), sharpening as well as blur, more noise, and a random dark band cut out
    (burned-in text, collimator edges)."""

    def __init__(self, size: int, seed: int, strength: str = "standard"):
        from monai.transforms import (
            Compose, RandAdjustContrast, RandAffine, RandBiasField, RandCoarseDropout, RandGaussianNoise,
            RandGaussianSharpen, RandGaussianSmooth, RandHistogramShift, RandScaleIntensity, RandShiftIntensity,
        )

        if strength not in ("standard", "strong"):
            raise ValueError(f"unknown augmentation strength '{strength}' (standard, strong)")
        if strength == "standard":
            self.spatial = RandAffine(prob=0.9, rotate_range=(np.pi / 18,), scale_range=(0.12, 0.12),
                                      translate_range=(0.07 * size, 0.07 * size), padding_mode="zeros")
            self.intensity = Compose([
                RandAdjustContrast(prob=0.5, gamma=(0.7, 1.5)),
                RandScaleIntensity(factors=0.15, prob=0.5),
                RandShiftIntensity(offsets=0.08, prob=0.5),
                RandGaussianSmooth(prob=0.2, sigma_x=(0.3, 1.0), sigma_y=(0.3, 1.0)),
                RandGaussianNoise(prob=0.3, std=0.02),
            ])
        else:
            self.spatial = RandAffine(prob=0.95, rotate_range=(np.pi / 12,), shear_range=(0.08, 0.08),
                                      scale_range=(0.2, 0.12), translate_range=(0.1 * size, 0.1 * size),
                                      padding_mode="zeros")
            self.intensity = Compose([
                RandAdjustContrast(prob=0.6, gamma=(0.6, 1.7)),
                RandHistogramShift(num_control_points=(5, 12), prob=0.3),
                RandBiasField(coeff_range=(0.0, 0.25), prob=0.3),
                RandScaleIntensity(factors=0.2, prob=0.5),
                RandShiftIntensity(offsets=0.1, prob=0.5),
                RandGaussianSmooth(prob=0.2, sigma_x=(0.3, 1.2), sigma_y=(0.3, 1.2)),
                RandGaussianSharpen(prob=0.15),
                RandGaussianNoise(prob=0.4, std=0.03),
                RandCoarseDropout(holes=1, spatial_size=(size // 16, size // 4), fill_value=0.0, prob=0.2),
            ])
        # seeded AFTER building: a new Compose re-draws its transforms' random states from fresh entropy
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the random draws from ``seed`` (training seeds every image by its place in the run)."""
        self.spatial.set_random_state(seed=seed)
        self.intensity.set_random_state(seed=seed + 1)

    def __call__(self, image: torch.Tensor, region: torch.Tensor | None = None):
        stacked = image if region is None else torch.cat([image, region])
        moved = torch.as_tensor(self.spatial(stacked))
        augmented = torch.as_tensor(self.intensity(moved[:1])).float()
        return augmented if region is None else (augmented, moved[1:].float())


def balanced_indices(labels: torch.Tensor, generator: torch.Generator, groups: torch.Tensor | None = None,
                     count: int | None = None) -> torch.Tensor:
    """``count`` (default: as many as samples) indices, every class drawn equally often; with ``groups`` (e.g. age group) every
    group within a class too, so that a class seen mostly in children is also learnt from its adults."""
    counts = torch.bincount(labels).float()
    weights = 1.0 / counts[labels]
    if groups is not None:
        strata = labels * (int(groups.max()) + 1) + groups
        stratum_counts = torch.bincount(strata).float()
        per_class = torch.zeros(len(counts))
        for s in torch.unique(strata):
            per_class[s // (int(groups.max()) + 1)] += 1
        weights = 1.0 / (stratum_counts[strata] * per_class[labels])
    return torch.multinomial(weights, count or len(labels), replacement=True, generator=generator)


def load_init(model: torch.nn.Module, path: str) -> list[str]:
    """Copy matching weights from a checkpoint (``best.pt``/``last.pt``/shipped ``<task>.pt``); returns skipped keys."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("ema") or state.get("model") or state  # our checkpoints, or a bare state dict
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))


def train(task_name: str, out: str, config: dict, resume: bool = False, progress: bool = True,
          init: str | None = None) -> dict:
    """Train one classifier; returns the best validation scores. DDP when launched by torchrun."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn
    from tqdm import tqdm

    cfg = {**DEFAULTS, **config}
    task = get_task(task_name)
    spec = dict(task.network)
    if cfg.get("network"):
        spec = {"name": cfg["network"]} if cfg["network"] != spec.get("name") else spec
    spec["dropout"] = cfg["dropout"]
    size = int(cfg.get("image_size") or task.image_size)
    intensity = cfg["intensity"]
    ctx = distributed.setup(cfg.get("device"))
    device, rank, world = ctx.device, ctx.rank, ctx.world
    local_batch = distributed.local_batch_size(int(cfg["batch_size"]), ctx)
    torch.set_num_threads(max(1, int(cfg["threads"]) // world))
    torch.manual_seed(cfg["seed"] + rank)  # dropout masks differ per rank; the weights are rank 0's (DDP)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    train_recs, val_recs = records(task, "train"), records(task, "val")
    if cfg.get("limit_images"):  # smoke tests: the first N images of each split
        train_recs, val_recs = train_recs[: cfg["limit_images"]], val_recs[: cfg["limit_images"]]
    x_train = load_images(train_recs, size, progress and rank == 0, intensity)
    y_train = labels_tensor(train_recs, task)
    x_val, y_val = load_images(val_recs, size, progress and rank == 0, intensity), labels_tensor(val_recs, task)
    attention = float(cfg.get("lung_attention") or 0.0)
    regions = image_weights = val_boxed = None
    if attention > 0:  # keep each class's activation map inside the lungs (boxes where drawn, else the prior)
        prior_recs = records(get_task("covid"), "train")
        regions, has_boxes = lung_regions(train_recs, size, prior_recs)
        image_weights = torch.where(has_boxes, 1.0, float(cfg["lung_prior_weight"]))
    if rank == 0:  # validation patients' lung boxes (ieee8023, in the covid task) to follow the heat maps
        val_boxed = [r for r in records(get_task("covid"), "val") if r.lung_boxes]
        val_boxed = (load_images(val_boxed, size, False, intensity), lung_box_masks(val_boxed, size))
    is_adult = torch.tensor([r.age_group == "adult" for r in train_recs], dtype=torch.float32)
    age_groups = is_adult.long() if cfg.get("balance") == "class_and_age" else None
    adversary_weight = float(cfg.get("age_adversary") or 0.0)

    model = build_classifier(spec, task.num_classes)
    if (attention > 0 or adversary_weight > 0) and not isinstance(model, CompactCXRNet):
        raise SystemExit("lung_attention and age_adversary need the compact network "
                         "(a global-average-pool + linear head)")
    skipped = load_init(model, init) if init else []
    model = model.to(device)
    adversary = AgeAdversary(model.head.in_features, task.num_classes).to(device) if adversary_weight > 0 else None
    # EMA of the weights only; its BatchNorm statistics are recomputed on the (clean) training images before
    # each validation: averaged running statistics do not match averaged weights (measured: class bias flips).
    # Built before the BatchNorm layers are synchronised: rank 0 validates it alone, without collectives.
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg["ema_decay"]), use_buffers=False)
    model = distributed.sync_batchnorm(model, ctx)
    net = distributed.wrap(model, ctx)
    steps_per_epoch = int(cfg.get("steps_per_epoch") or max(1, len(y_train) // cfg["batch_size"]))
    parameters = list(model.parameters()) + (list(adversary.parameters()) if adversary is not None else [])
    optimiser = torch.optim.AdamW(parameters, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=cfg["lr"], total_steps=cfg["epochs"] * steps_per_epoch,
                                                    pct_start=0.15)
    start, best, stale, epoch_losses = 0, {"val_loss": float("inf")}, 0, []
    started = time.time()
    if resume and (out / "last.pt").exists():
        state = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema_full"], strict=False)
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        start, best, stale = state["epoch"] + 1, state["best"], state["stale"]
        if adversary is not None and "adversary" in state:
            adversary.load_state_dict(state["adversary"])
    augment = Augmentation(size, cfg["seed"], cfg["augmentation"])
    log_path = out / "metrics.csv"
    fields = ["epoch", "train_loss", "train_energy_outside_lungs", "train_age_adversary_loss", "val_loss",
              "val_accuracy", "val_auc_macro", "val_heatmap_mass_in_lungs", "lr", "seconds"]
    if rank == 0 and (start == 0 or not log_path.exists()):
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerow(fields)
    writer = _tensorboard(out) if rank == 0 else None

    for epoch in range(start, cfg["epochs"]):
        t0 = time.time()
        net.train()
        generator = torch.Generator().manual_seed(cfg["seed"] * 1000 + epoch)
        draws = steps_per_epoch * cfg["batch_size"]
        order = balanced_indices(y_train, generator, age_groups, max(draws, len(y_train)))[:draws]
        positions = distributed.shard(cfg["batch_size"], ctx)  # this rank's places in every global batch
        losses, outside_losses, adversary_losses = [], [], []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg['epochs']}", disable=not progress or rank, leave=False)
        for step in bar:
            global_batch = order[step * cfg["batch_size"]:(step + 1) * cfg["batch_size"]]
            idx = global_batch[positions]
            assert len(idx) == local_batch
            pairs = []
            for position, i in zip(positions, idx.tolist()):
                augment.reseed(distributed.sample_seed(cfg["seed"], epoch, step, position))
                pairs.append(augment(x_train[i], regions[i]) if attention > 0 else (augment(x_train[i]),))
            batch, labels = torch.stack([p[0] for p in pairs]).to(device), y_train[idx].to(device)
            if attention > 0 or adversary is not None:
                logits, features = net(batch, return_features=True)
                loss = F.cross_entropy(logits, labels, label_smoothing=cfg["label_smoothing"])
                if attention > 0:
                    region = torch.stack([p[1] for p in pairs]).to(device)
                    outside_loss = energy_outside_lungs(model.head.weight, features, logits, labels, region,
                                                        image_weights[idx].to(device))
                    loss = loss + attention * outside_loss
                    outside_losses.append(float(outside_loss.detach()))
                if adversary is not None:
                    adversary_loss, confusion_loss = adversary.losses(features, labels, is_adult[idx].to(device))
                    loss = loss + adversary_loss + adversary_weight * confusion_loss
                    adversary_losses.append(float(adversary_loss.detach()))  # ln 2 = 0.693: age unreadable
            else:
                loss = F.cross_entropy(net(batch), labels, label_smoothing=cfg["label_smoothing"])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            ema.update_parameters(model)
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses):.3f}")
        # the global batch's losses (mean over ranks of equal shards)
        train_loss, train_outside, train_adversary = distributed.mean_over_ranks(
            [np.mean(losses), np.mean(outside_losses) if outside_losses else float("nan"),
             np.mean(adversary_losses) if adversary_losses else float("nan")], ctx)
        epoch_losses.append(train_loss)
        stop = False
        if rank == 0:
            if cfg["bn_update_images"]:  # a fixed random subset (the records are ordered by source)
                keep = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(cfg["seed"]))
                bn_images = x_train[keep[: int(cfg["bn_update_images"])]]
            else:
                bn_images = x_train
            update_bn([bn_images[i:i + 64] for i in range(0, len(bn_images), 64)], ema, device=device)
            ema.eval()
            with torch.no_grad():
                val_logits = torch.cat([ema(x_val[i:i + 256].to(device)).cpu() for i in range(0, len(x_val), 256)])
                val_in_lungs = heatmap_mass_in_lungs(ema.module, *(v.to(device) for v in val_boxed))
            val_loss = float(F.cross_entropy(val_logits, y_val))
            report = classification_report(softmax(val_logits.numpy()), y_val.numpy(), task.classes)
            row = [epoch + 1, train_loss, train_outside, train_adversary, val_loss,
                   report["accuracy"], report["auc_macro"], val_in_lungs, scheduler.get_last_lr()[0], time.time() - t0]
            with open(log_path, "a", newline="") as f:
                csv.writer(f).writerow([f"{v:.5g}" if isinstance(v, float) else v for v in row])
            if writer:
                for name, value in zip(fields[1:-1], row[1:-1]):
                    writer.add_scalar(name, value, epoch + 1)
            if progress:
                print(f"epoch {epoch + 1}: train loss {train_loss:.4f}  val loss {val_loss:.4f}  "
                      f"acc {report['accuracy']:.3f}  AUC {report['auc_macro']:.4f}  heat map in lungs "
                      f"{val_in_lungs:.3f}  ({time.time() - t0:.0f} s)")
            if val_loss < best["val_loss"]:
                best = {"epoch": epoch + 1, "val_loss": val_loss, "val_accuracy": report["accuracy"],
                        "val_auc_macro": report["auc_macro"], "val_heatmap_mass_in_lungs": val_in_lungs}
                stale = 0
                torch.save({"ema": ema.module.state_dict(), "network": spec, "task": task.name, "best": best,
                            "image_size": size, "intensity": intensity}, out / "best.pt")
            else:
                stale += 1
            torch.save({"model": model.state_dict(), "ema_full": ema.state_dict(), "optimiser": optimiser.state_dict(),
                        "scheduler": scheduler.state_dict(), "epoch": epoch, "best": best, "stale": stale,
                        "network": spec, "config": cfg,
                        **({"adversary": adversary.state_dict()} if adversary is not None else {})}, out / "last.pt")
            # no early stop while the learning rate is high (BN statistics and weights still move fast)
            stop = stale >= cfg["patience"] and epoch + 1 >= cfg["min_epochs"]
        stop = distributed.broadcast_flag(stop, ctx)
        if cfg.get("stop_after_epochs") and epoch + 1 - start >= cfg["stop_after_epochs"]:
            break  # an interrupted run (tests, time-limited jobs): --resume continues from last.pt
        if stop:
            if rank == 0 and progress:
                print(f"early stop: validation loss has not improved for {cfg['patience']} epochs")
            break
    distributed.cleanup(ctx)
    best["train_losses"] = epoch_losses
    best["init"] = init
    best["init_skipped_keys"] = skipped
    if rank == 0:
        (out / "train_summary.json").write_text(json.dumps({"task": task.name, "best": best, "network": spec, "config": cfg,
                                                            "seconds": time.time() - started}, indent=2))
    return best


class AgeAdversary(torch.nn.Module):
    """Reads child vs adult from the pooled features *within each class* (one linear score per class). It learns on
    detached features; the network is asked to leave it undecided (probability 1/2: a bounded confusion loss, where
    reversing its gradient made the features grow without limit), so that a class's adults and children look alike
    to the head (against "child = other pneumonia"). A class with one age group (COVID: adults) teaches it nothing."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.score = torch.nn.Linear(channels, num_classes)

    def losses(self, features: torch.Tensor, labels: torch.Tensor, is_adult: torch.Tensor):
        """(the adversary's own loss, the network's confusion loss)."""
        pooled = features.mean(dim=(2, 3))
        own = F.linear(pooled.detach(), self.score.weight, self.score.bias).gather(1, labels[:, None])[:, 0]
        fooled = F.linear(pooled, self.score.weight.detach(), self.score.bias.detach()).gather(1, labels[:, None])[:, 0]
        return (F.binary_cross_entropy_with_logits(own, is_adult),
                F.binary_cross_entropy_with_logits(fooled, torch.full_like(fooled, 0.5)))


def energy_outside_lungs(head_weight, features, logits, labels, regions, weights) -> torch.Tensor:
    """Weighted mean share of class-contrast map energy outside the lung regions, for the true class's map and
    the predicted class's map (the one a user is shown)."""
    classes = logits.shape[1]
    outside = energy_outside(contrast_maps(head_weight, features), regions)
    pick = (F.one_hot(labels, classes) + F.one_hot(logits.detach().argmax(1), classes)).clamp(max=1)
    outside = (outside * pick).sum(1) / pick.sum(1)
    return (outside * weights).sum() / weights.sum()


@torch.no_grad()
def heatmap_mass_in_lungs(model: torch.nn.Module, images: torch.Tensor, boxes: torch.Tensor) -> float:
    """Mean fraction of the predicted class's heat map (= the shown Grad-CAM for the compact net) inside the lung
    boxes; an empty map counts as 0."""
    if not isinstance(model, CompactCXRNet) or not len(images):
        return float("nan")
    model.eval()
    logits, features = model(images, return_features=True)
    inside = heat_mass_inside_maps(contrast_maps(model.head.weight, features), boxes)
    return float(inside.gather(1, logits.argmax(1, keepdim=True)).nan_to_num(0.0).mean())


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional: metrics.csv always holds the same numbers
        return None
    return SummaryWriter(str(out / "tensorboard"))


def calibrated_nll(logits, truth, temperature: float, bias) -> float:
    """Class-balanced validation NLL of ``softmax(logits / T + bias)``: the criterion calibration is fitted on."""
    truth = torch.as_tensor(np.asarray(truth), dtype=torch.long)
    z = torch.as_tensor(logits, dtype=torch.float64) / temperature + torch.tensor(bias, dtype=torch.float64)
    return float(F.cross_entropy(z, truth, weight=class_weights(truth, z.shape[1])))


def evaluate_classifier(task, classifier: Classifier, eval_dir: Path, heatmaps: bool = True,
                        progress: bool = False) -> dict:
    """Calibration and test-time augmentation fitted on validation (set on ``classifier``), metrics on the random
    test and external splits, heat maps, plots under ``eval_dir``."""
    # test-time augmentation only where it pays on validation (lower NLL after calibration)
    choice = {}
    for tta in (False, True):
        classifier.tta = tta
        _, logits_v, val_truth = split_logits(classifier, "val", progress)
        t, bias = fit_calibration(logits_v, val_truth)
        choice[tta] = (calibrated_nll(logits_v, val_truth, t, bias), (t, bias), logits_v)
    classifier.tta = choice[True][0] < choice[False][0]
    _, (temperature, bias), val_logits = choice[classifier.tta]
    recs, logits, truth = split_logits(classifier, "test", progress)
    report = report_from_logits(recs, logits, truth, task.classes, temperature, bias)
    report["validation"] = classification_report(softmax(val_logits, temperature, bias), val_truth, task.classes)
    ext_recs, ext_logits, ext_truth = split_logits(classifier, "external", progress)
    report["external"] = report_from_logits(ext_recs, ext_logits, ext_truth, task.classes, temperature, bias)
    report["tta"] = classifier.tta
    report["tta_validation_nll"] = {"without": choice[False][0], "with": choice[True][0]}
    report["parameters"] = sum(p.numel() for p in classifier.model.parameters())
    classifier.temperature, classifier.logit_bias = temperature, np.asarray(bias)
    if heatmaps:
        report["heatmap"] = heatmap_lung_fraction(classifier, "test")
        report["validation_heatmap"] = heatmap_lung_fraction(classifier, "val")
        report["external"]["heatmap"] = heatmap_lung_fraction(classifier, "external")
    save_evaluation_plots(softmax(logits, temperature, bias), truth, task.classes, eval_dir, f"{task.name} (held-out test)",
                          uncalibrated=softmax(logits))
    save_evaluation_plots(softmax(ext_logits, temperature, bias), ext_truth, task.classes, eval_dir / "external",
                          f"{task.name} (external: unseen sub-sources)", uncalibrated=softmax(ext_logits))
    return report


def evaluate_run(task_name: str, out: str, heatmaps: bool = True, progress: bool = False) -> dict:
    """Best checkpoint: calibration fitted on validation, metrics on the held-out splits, plots."""
    task = get_task(task_name)
    out = Path(out)
    ckpt = torch.load(out / "best.pt", map_location="cpu", weights_only=False)
    spec = ckpt["network"]
    card = {"network": spec, "image_size": ckpt.get("image_size", task.image_size), "classes": list(task.classes),
            "intensity": ckpt.get("intensity", "percentile")}
    classifier = Classifier(task, state_dict=ckpt["ema"], card=card)
    report = evaluate_classifier(task, classifier, out / "eval", heatmaps, progress)
    report["best_epoch"] = ckpt["best"]["epoch"]
    report["network"] = spec
    (out / "eval" / "eval.json").write_text(json.dumps(report, indent=2))
    return report


CALIBRATION_NOTE = ("bias-corrected temperature scaling: softmax(logits / temperature + logit_bias), both fitted on the "
                    "validation patients with every class weighing the same (probabilities for equal class priors: "
                    "medai.diagnosis.metrics.fit_calibration)")


def held_out_sections(report: dict) -> dict:
    """The card's held-out sections of an evaluation report."""
    keys = ("n", "accuracy", "balanced_accuracy", "auc_macro", "ece", "ece_uncalibrated", "per_class",
            "confusion_matrix", "subgroups", "heatmap")
    return {"temperature": report["temperature"], "logit_bias": report["logit_bias"], "calibration": CALIBRATION_NOTE,
            "tta": report["tta"], "tta_validation_nll": report["tta_validation_nll"],
            "held_out_test": {k: report[k] for k in keys},
            "external_test": {k: report["external"][k] for k in keys}}


def validation_section(report: dict, raw_loss: float) -> dict:
    """The card's validation section: calibrated metrics and heat maps of the report, the training's raw loss."""
    return {**{k: report["validation"][k] for k in ("accuracy", "auc_macro", "ece")}, "loss": raw_loss,
            "heatmap": report["validation_heatmap"]}


def copy_figures(task, eval_dir: Path) -> None:
    figures = REPO / "docs" / "models" / task.name  # the shipped model's held-out plots, where people look
    figures.mkdir(parents=True, exist_ok=True)
    for png in Path(eval_dir).rglob("*.png"):  # random split, and external/ for the unseen sub-sources
        target = figures / png.relative_to(eval_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(png, target)


def recalibrate(task_name: str, out: str | None = None) -> dict:
    """Fit the shipped model's calibration (and test-time augmentation choice) on validation again and rewrite its
    card's held-out numbers, docs and plots; the weights and their checksum stay as they are (and the card's command,
    whose ``--export`` now calibrates the same way)."""
    from medai.models import load_state, save_model

    task = get_task(task_name)
    state, card = load_state(task.name)
    classifier = Classifier(task, state_dict=state, card=card)
    eval_dir = Path(out or f"runs/recalibrate-{task.name}") / "eval"
    report = evaluate_classifier(task, classifier, eval_dir)
    card = {**card, **held_out_sections(report)}
    card["validation"] = validation_section(report, card["validation"]["loss"])  # the training's raw loss stays
    save_model(task.name, state, card)
    write_model_doc(card, REPO / "docs" / "models" / task.name / "README.md")
    copy_figures(task, eval_dir)
    return card


def comparison_entry(task, run: str) -> tuple[str, dict] | None:
    """A model card's 'comparison' row for an evaluated run (None when the run has no eval/eval.json)."""
    path = Path(run) / "eval" / "eval.json"
    if not path.exists():
        return None
    other = json.loads(path.read_text())
    trained = json.loads((Path(run) / "train_summary.json").read_text())
    return Path(run).name, comparison_row(
        other, {**other["validation"], "heatmap": other.get("validation_heatmap", {})}, other, other.get("external", {}),
        init=trained["best"].get("init"), val_loss=trained["best"]["val_loss"],
        image_size=trained["config"].get("image_size") or task.image_size,
        intensity=trained["config"].get("intensity", "percentile"),
        epochs_run=len(trained["best"].get("train_losses", [])), train_seconds=trained.get("seconds"))


def comparison_row(model: dict, validation: dict, test: dict, external: dict, **training) -> dict:
    """A card's 'comparison' row: ``model`` holds network, tta_validation_nll and parameters (an evaluation report
    or a card), ``validation`` / ``test`` / ``external`` the metrics of each split (each with its ``heatmap``);
    ``training``: init, val_loss, image_size, intensity, epochs_run, train_seconds."""
    return {
        "network": model["network"]["name"], "init": training["init"], "val_loss": training["val_loss"],
        "val_accuracy": validation.get("accuracy"),
        "val_nll_calibrated": min((v for v in (model.get("tta_validation_nll") or {}).values() if v is not None),
                                  default=None),
        "val_heatmap_mass_in_lungs": validation.get("heatmap", {}).get("mean_fraction_in_lungs"),
        "test_accuracy": test["accuracy"], "test_auc_macro": test["auc_macro"],
        "test_heatmap_mass_in_lungs": test.get("heatmap", {}).get("mean_fraction_in_lungs"),
        "external_accuracy": external.get("accuracy"), "external_auc_macro": external.get("auc_macro"),
        "external_min_sensitivity": min((m["sensitivity"] for m in external.get("per_class", {}).values()),
                                        default=None),
        "image_size": training["image_size"], "intensity": training["intensity"],
        "epochs_run": training["epochs_run"], "train_seconds": training["train_seconds"],
        "parameters": model.get("parameters")}


def shipped_row(card: dict) -> tuple[str, dict]:
    """A 'comparison' row for the model a card describes (named after its run, ``(shipped before)``): exporting a new
    model keeps the one it replaces in the table, with the numbers its card holds, even when its run folder is gone."""
    match = re.findall(r"--out (\S+)", card.get("command", ""))
    name = f"{Path(match[-1]).name if match else card['task']} (shipped before)"
    validation = card.get("validation", {})
    return name, comparison_row(
        card, validation, card["held_out_test"], card.get("external_test", {}), init=card.get("init"),
        val_loss=validation.get("loss"), image_size=card.get("image_size"),
        intensity=card.get("intensity", "percentile"), epochs_run=card.get("training", {}).get("epochs"),
        train_seconds=card.get("train_seconds"))


def carried_comparison(previous: dict | None, out: str) -> dict:
    """The rows a new export keeps from the card it replaces: its comparison (runs whose folders may be gone) and
    the replaced model itself, except rows of the run being exported."""
    if not previous or "held_out_test" not in previous:
        return {}
    rows = dict([*previous.get("comparison", {}).items(), shipped_row(previous)])
    return {name: row for name, row in rows.items() if name.split(" (")[0] != Path(out).name}


def add_to_card(task_name: str, runs: list[str], folder=None, doc=None) -> dict:
    """List more evaluated runs in the shipped model's card and docs/models/<task>/README.md, leaving its weights,
    checksum and held-out numbers as they are (a comparison run made after the shipped model was exported)."""
    from medai.models import models_dir

    task = get_task(task_name)
    path = Path(folder or models_dir()) / f"{task.name}.json"
    card = json.loads(path.read_text())
    for run in runs:
        entry = comparison_entry(task, run)
        if entry is None:
            raise MedAIInputError(f"{run}: no eval/eval.json (run train_diagnosis.py --evaluate on it first)")
        card.setdefault("comparison", {})[entry[0]] = entry[1]
    path.write_text(json.dumps(card, indent=2) + "\n")
    write_model_doc(card, Path(doc or REPO / "docs" / "models" / task.name / "README.md"))
    return card


def export(task_name: str, out: str, command: str, compare: list[str] | None = None) -> dict:
    """Evaluate the run and write the model + card to Resources/Models. The card's comparison keeps the replaced
    card's rows and the replaced model (:func:`carried_comparison`); ``compare`` runs add or refresh rows."""
    from medai.models import models_dir, save_model

    task = get_task(task_name)
    report = evaluate_run(task_name, out)
    ckpt = torch.load(Path(out) / "best.pt", map_location="cpu", weights_only=False)
    summary = json.loads((Path(out) / "train_summary.json").read_text())
    trained_best = summary["best"]
    previous = read_card(task.name) if (models_dir() / f"{task.name}.json").exists() else None
    comparison = {**carried_comparison(previous, out),
                  **dict(filter(None, (comparison_entry(task, run) for run in compare or [])))}
    card = {
        "task": task.name,
        "classes": list(task.classes),
        "description": task.description,
        "image_size": ckpt.get("image_size", task.image_size),
        "intensity": ckpt.get("intensity", "percentile"),
        "network": ckpt["network"],
        **held_out_sections(report),
        "data": "../shared/data/chest_xray (labels.csv): " + ", ".join(sorted({r.source for r in records(task)})),
        "split": {"rule": "external = whole unseen sub-sources (COVID-19 Radiography COVID file numbers >= 2201 and "
                          "Normal >= 5901; Kermany person numbers >= 1465, IM- >= 643, NORMAL2-IM- >= 1190; 30% of "
                          "ieee8023 patients by hash); the rest by patient group (source + patient_id; COVID-19 "
                          "Radiography has no ids: by image), sha256 hash of the group, 70% train / 15% val / 15% "
                          "test (the random split); same groups in every task (medai.diagnosis.data)",
                  "counts": describe_split(task)},
        "validation": validation_section(report, trained_best["val_loss"]),
        "heatmap_method": HEATMAP_METHOD,
        "selection": SELECTION_RULE,
        "best_epoch": report["best_epoch"],
        "parameters": report["parameters"],
        "train_seconds": summary.get("seconds"),
        "training": summary["config"],
        "init": summary["best"].get("init"),
        "comparison": comparison,
        "figures": f"docs/models/{task.name}/ (roc.png, confusion_matrix.png, reliability.png; external/ the same "
                   "for the external split)",
        "command": command,
        "limitations": _limitations(task, report["external"].get("subgroups")),
        "cautions": _cautions(report["external"].get("subgroups")),
    }
    save_model(task.name, ckpt["ema"], card)
    write_model_doc(card, REPO / "docs" / "models" / task.name / "README.md")
    copy_figures(task, Path(out) / "eval")
    return card


def write_model_doc(card: dict, path: Path) -> None:
    """docs/models/<task>/README.md: the card in tables (comparison, random vs external split, calibration,
    subgroups, heat maps), next to the plots."""
    def num(v, digits=3):
        return "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))

    test, ext = card["held_out_test"], card["external_test"]
    lines = [f"# Model card: `{card['task']}` ({', '.join(card['classes'])})", "", card["description"] + ".", "",
             f"- Network: `{card['network']['name']}`, {card['image_size']} px, intensity `{card['intensity']}`, "
             f"test-time augmentation {'on' if card.get('tta') else 'off'}, temperature {card['temperature']:.3f} "
             "(fitted on validation)",
             *([f"- Calibration: {card['calibration']}"] if card.get("calibration") else []),
             f"- Data: {card['data']}", f"- Split: {card['split']['rule']}", f"- Selection: {card['selection']}",
             f"- Reproduce: `{card['command']}`", "", "## Random split vs external split (unseen sub-sources)", "",
             "| | images | accuracy | balanced accuracy | macro AUC | ECE (calibrated) | ECE (raw) | "
             + " | ".join(f"sensitivity {c}" for c in card["classes"]) + " |",
             "|---" * (7 + len(card["classes"])) + "|"]
    for title, r in (("random test split", test), ("external split", ext)):
        lines.append(f"| {title} | {r['n']} | {num(r['accuracy'])} | {num(r['balanced_accuracy'])} | "
                     f"{num(r['auc_macro'])} | {num(r['ece'])} | {num(r['ece_uncalibrated'])} | "
                     + " | ".join(num(r["per_class"][c]["sensitivity"]) for c in card["classes"]) + " |")
    lines += ["", "Sensitivity by age group / source:", "", "| subgroup | random: n | random | external: n | external |",
              "|---|---|---|---|---|"]
    for key in sorted(set(test["subgroups"]) | set(ext["subgroups"])):
        a, b = test["subgroups"].get(key, {}), ext["subgroups"].get(key, {})
        lines.append(f"| {key.replace(' | ', ' / ')} | {a.get('n', 0)} | {num(a.get('sensitivity'))} | {b.get('n', 0)} | "
                     f"{num(b.get('sensitivity'))} |")
    heat = [(k, r.get("heatmap")) for k, r in (("random test", test), ("external", ext))]
    lines += ["", "## Heat maps", "", card["heatmap_method"] + ".", ""]
    lines += [f"- {k}: mean mass in the lung boxes {num(h['mean_fraction_in_lungs'])} on {h['images']} ieee8023 X-rays "
              f"(the boxes cover {h['mean_lung_box_area_fraction']:.0%} of the image)" for k, h in heat if h]
    if card.get("comparison"):
        lines += ["", "## Architecture / pre-training comparison (chosen on validation only)", "",
                  "| run | network | px | init | epochs | val loss (raw) | val NLL (calibrated) | val acc | test acc | "
                  "test AUC | external acc | external AUC | external min sensitivity | train minutes | parameters |",
                  "|---" * 15 + "|"]
        own = {"network": card["network"]["name"], "image_size": card["image_size"], "init": card.get("init"),
               "epochs_run": card["best_epoch"], "val_loss": card["validation"]["loss"],
               "val_nll_calibrated": min(card["tta_validation_nll"].values()),
               "val_accuracy": card["validation"]["accuracy"], "test_accuracy": test["accuracy"],
               "test_auc_macro": test["auc_macro"], "external_accuracy": ext["accuracy"],
               "external_auc_macro": ext["auc_macro"],
               "external_min_sensitivity": min(m["sensitivity"] for m in ext["per_class"].values()),
               "train_seconds": card.get("train_seconds"), "parameters": card.get("parameters", 0)}
        for run, c in [("**shipped** (best epoch)", own)] + list(card["comparison"].items()):
            minutes = c.get("train_seconds")
            lines.append(f"| {run} | {c['network']} | {c.get('image_size', '-')} | {c['init'] or 'scratch'} | "
                         f"{c.get('epochs_run', '-')} | {num(c['val_loss'])} | {num(c.get('val_nll_calibrated'))} | "
                         f"{num(c['val_accuracy'])} | "
                         f"{num(c['test_accuracy'])} | {num(c['test_auc_macro'])} | {num(c.get('external_accuracy'))} | "
                         f"{num(c.get('external_auc_macro'))} | {num(c.get('external_min_sensitivity'))} | "
                         f"{num(minutes / 60 if minutes else None, 1)} | {c['parameters']:,} |")
        lines += ["", "Budget runs (`configs/<task>-budget-<network>.yaml`): 4 epochs of 25 steps of 32 images each, "
                  "CLAHE + strong augmentation, on this 2-core CPU; `init` = the project's own pre-training (the "
                  "other task's model, trained on all X-rays of both tasks' training patients)."]
    lines += ["", "## Figures", "", "Random split: `roc.png`, `confusion_matrix.png`, `reliability.png`; external split: "
              "the same under `external/`.", "", "## Limitations", "", card["limitations"], ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def reproduce_command(task_name: str, out: str, export: bool = True) -> str:
    """The command that trains this run again from scratch (and exports it), from its saved settings; a run
    initialised from another run (or from a shipped model) is preceded by the command that makes that one."""
    summary = json.loads((Path(out) / "train_summary.json").read_text())
    cfg, parts = summary["config"], ["python training/train_diagnosis.py", f"--task {task_name}"]
    if cfg.get("config_file"):
        parts.append(f"--config {cfg['config_file']}")
    init = summary["best"].get("init")
    before = ""
    if init and (Path(init).parent / "train_summary.json").exists():
        init_task = torch.load(init, map_location="cpu", weights_only=False)["task"]  # every checkpoint names its task
        before = reproduce_command(init_task, str(Path(init).parent), export=False) + " && "
    elif init and Path(init).with_suffix(".json").exists():  # a shipped model: the command on its card makes it
        shipped_command = read_card(Path(init).stem, Path(init).parent).get("command")
        before = f"{shipped_command} && " if shipped_command else ""
    if cfg.get("network"):
        parts.append(f"--network {cfg['network']}")
    parts += [f"--epochs {cfg['epochs']}", f"--seed {cfg['seed']}"]
    if cfg.get("balance", "class") != "class":
        parts.append(f"--balance {cfg['balance']}")
    parts.append(f"--lung-attention {float(cfg.get('lung_attention') or 0):g}")  # explicit: configs may differ
    if cfg.get("age_adversary"):
        parts.append(f"--age-adversary {float(cfg['age_adversary']):g}")
    if init:
        parts.append(f"--init {init}")
    return before + " ".join(parts + [f"--out {out}"] + (["--export"] if export else []))


def _limitations(task, external_subgroups: dict | None = None) -> str:
    """The card's limitations; ``external_subgroups`` (the external split's per age group / source sensitivities)
    adds what they show where a subgroup is read badly."""
    common = ("Inputs are 224 px (Kermany, COVID-19 Radiography) or <=512 px (ieee8023) public copies, all squashed to "
              f"{task.image_size} px. All Kermany images come from that set's official train split; its official test "
              "split (a different acquisition period) is not available here: the external split holds the patients "
              "numbered last instead, a proxy for later acquisitions. The heat map shows which image regions raised "
              "the predicted class's score; it is not a lesion outline, and only lung boxes (not lesions) exist here "
              "to check it against. ")
    if task.name == "covid":
        return common + ("No lung-opacity (non-COVID) class: the COVID-19 Radiography Database's Lung_Opacity images "
                         "are not available here. Adult non-COVID pneumonia is rare in the data: OTHER_PNEUMONIA is "
                         "Kermany children plus 56 adult ieee8023 cases (28 train, 5 val, 4 test, 19 external), so its "
                         "adult sensitivity rests on very few images (see external_test.subgroups); training draws "
                         "a class's adults as often as its children (balance: class_and_age) against the 'child = other "
                         "pneumonia' shortcut. COVID-19 Radiography images have no patient ids (split by image; a "
                         "patient may appear in two splits, not across the external block). Normals include pediatric "
                         "Kermany and adult RSNA images so that age is not a class shortcut."
                         + _adult_other_warning(external_subgroups))
    return common + ("Pediatric patients (1-5 years) only: not validated on adults. Trained with the lung-attention "
                     "penalty (training.lung_attention): its heat maps stay inside the lungs (held_out_test.heatmap, "
                     "measured on adult ieee8023 X-rays, outside the training population).")


def _adult_other_missed(subgroups: dict | None) -> tuple[int, int] | None:
    """(read as such, images) of the external adult other pneumonia when fewer than half are read as such."""
    adults = (subgroups or {}).get("OTHER_PNEUMONIA | adult (ieee8023_covid_subset_512)")
    if not adults or adults["sensitivity"] >= 0.5:
        return None
    return round(adults["sensitivity"] * adults["n"]), adults["n"]


def _cautions(subgroups: dict | None) -> dict:
    """Per predicted class, what a reader must know (shown in the report under that prediction)."""
    missed = _adult_other_missed(subgroups)
    if missed is None:
        return {}
    return {"COVID": f"on adults this model does not tell COVID from other pneumonia (it read {missed[0]} of "
                     f"{missed[1]} unseen adult non-COVID pneumonia X-rays as such, most as COVID); consider other causes."}


def _adult_other_warning(subgroups: dict | None) -> str:
    missed = _adult_other_missed(subgroups)
    if missed is None:
        return ""
    return (f" On adults the model does not recognise non-COVID pneumonia: {missed[0]} of {missed[1]} external adult "
            "other-pneumonia X-rays were read as OTHER_PNEUMONIA, most as COVID (training/README.md: its 28 training "
            "adults are memorised). A COVID reading of an adult X-ray does not rule out another pneumonia.")


def optuna_search(task_name: str, out: str, config: dict, trials: int) -> dict:
    """Optional hyper-parameter search (lr, weight decay, dropout, label smoothing) on the validation loss."""
    try:
        import optuna
    except ImportError:
        raise SystemExit("--optuna needs the optional dependency: pip install -e .[tune]")

    def objective(trial):
        trial_cfg = {**config, "lr": trial.suggest_float("lr", 3e-4, 5e-3, log=True),
                     "weight_decay": trial.suggest_float("weight_decay", 1e-5, 1e-2, log=True),
                     "dropout": trial.suggest_float("dropout", 0.0, 0.5),
                     "label_smoothing": trial.suggest_float("label_smoothing", 0.0, 0.1)}
        return train(task_name, f"{out}/trial{trial.number}", trial_cfg, progress=False)["val_loss"]

    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=config.get("seed", 0)))
    study.optimize(objective, n_trials=trials)
    print("best trial:", study.best_trial.number, study.best_params, f"val loss {study.best_value:.4f}")
    return study.best_params


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True)
    parser.add_argument("--config")
    parser.add_argument("--network")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--balance", choices=["class", "class_and_age"],
                        help="sampling: classes equally often, or also age groups within each class")
    parser.add_argument("--lung-attention", type=float, dest="lung_attention",
                        help="weight of the penalty on class-activation mass outside the lungs (0: off)")
    parser.add_argument("--age-adversary", type=float, dest="age_adversary",
                        help="weight of a class-conditional child-vs-adult adversary on the features (0: off)")
    parser.add_argument("--init", help="checkpoint whose weights initialise the network (cross-task pre-training)")
    parser.add_argument("--out")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--no-train", action="store_true", help="only evaluate / export an existing run")
    parser.add_argument("--evaluate", action="store_true", help="evaluate the best checkpoint on the held-out split")
    parser.add_argument("--export", action="store_true", help="evaluate and write Resources/Models/<task>.pt + card")
    parser.add_argument("--compare", nargs="*", default=[], help="other runs to list in the model card")
    parser.add_argument("--add-to-card", nargs="+", metavar="RUN", dest="add_to_card",
                        help="only list these evaluated runs in the shipped model's card and docs (weights unchanged)")
    parser.add_argument("--recalibrate", action="store_true",
                        help="only fit the shipped model's calibration on validation again and rewrite its card")
    parser.add_argument("--optuna", type=int, default=0, help="number of Optuna trials (optional dependency)")
    parser.add_argument("--device", help="auto (default: CUDA when there is a GPU), cpu, cuda, cuda:N")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()

    config_path = args.config or REPO / "training" / "configs" / f"{args.task}.yaml"
    config = yaml.safe_load(Path(config_path).read_text()) if Path(config_path).exists() else {}
    if args.config:  # recorded, so that the model card's command names it
        given = Path(args.config).resolve()
        config["config_file"] = str(given.relative_to(REPO)) if given.is_relative_to(REPO) else args.config
    for key in ("network", "epochs", "seed", "balance", "lung_attention", "age_adversary", "device"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    if args.recalibrate:
        card = recalibrate(args.task, args.out)
        print(json.dumps({k: card[k] for k in ("temperature", "logit_bias", "tta")}),
              json.dumps({split: {"accuracy": card[split]["accuracy"], "ece": card[split]["ece"],
                                  "sensitivity": {c: m["sensitivity"] for c, m in card[split]["per_class"].items()}}
                          for split in ("held_out_test", "external_test")}, indent=1))
        return 0
    if args.add_to_card:
        card = add_to_card(args.task, args.add_to_card)
        print(json.dumps(card["comparison"], indent=1))
        return 0
    out = args.out or f"runs/{args.task}"
    if args.optuna:
        config.update(optuna_search(args.task, out + "-optuna", config, args.optuna))
    if not args.no_train:
        try:
            best = train(args.task, out, config, resume=args.resume, progress=not args.quiet, init=args.init)
        except MedAIInputError as exc:  # e.g. --device cuda without a GPU, a batch that does not split
            print(f"train_diagnosis: {exc}", file=sys.stderr)
            return 2
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(best))
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if args.export:
        command = reproduce_command(args.task, out)
        card = export(args.task, out, command, args.compare)
        print(json.dumps(card["held_out_test"], indent=1)[:3000])
    elif args.evaluate:
        report = evaluate_run(args.task, out)
        print(json.dumps({k: report[k] for k in ("accuracy", "auc_macro", "ece", "ece_uncalibrated", "per_class",
                                                 "subgroups", "heatmap", "temperature")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
