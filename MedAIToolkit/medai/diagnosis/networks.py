"""Classifier networks (MONAI), built from a task's ``network`` spec; all take one grey channel."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monai.networks.blocks import Convolution, ResidualUnit


class CompactCXRNet(nn.Module):
    """A compact residual CNN from MONAI blocks: stem, one strided residual unit per stage, global average pool.

    ~0.6 M parameters with channels (24, 48, 96, 192): small enough to train on a CPU and to run in a few ms.
    ``features`` (the last stage) is the Grad-CAM target layer.
    """

    def __init__(self, num_classes: int, channels=(24, 48, 96, 192), dropout: float = 0.2):
        super().__init__()
        layers = [Convolution(2, 1, channels[0], strides=2, kernel_size=5, norm="batch", act="relu")]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers.append(ResidualUnit(2, c_in, c_out, strides=2, subunits=2, norm="batch", act="relu", dropout=0.0))
        layers.append(ResidualUnit(2, channels[-1], channels[-1], strides=1, subunits=2, norm="batch", act="relu"))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        features = self.features(x)
        logits = self.head(self.dropout(torch.flatten(self.pool(features), 1)))
        return (logits, features) if return_features else logits


class ClassContrast(nn.Module):
    """Wraps a classifier: each output is ``logit_c - mean of the other logits``, the score that decides class ``c``.

    Grad-CAM of this score shows evidence for ``c`` *against* the other classes; Grad-CAM of a raw logit also
    shows what all classes share (and a network can push every raw map below zero, leaving nothing to see).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        n = logits.shape[1]
        return (n * logits - logits.sum(dim=1, keepdim=True)) / (n - 1)


def contrast_maps(head_weight: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """(N, classes, h, w) signed, differentiable class-contrast maps of a global-average-pool + linear head, on the
    feature grid: map ``c`` is ``sum_k (w_ck - mean_other w_k) A_k`` (its mean plus the bias is the
    :class:`ClassContrast` score). For such a head Grad-CAM's channel weights are those head weights over the number
    of cells, so :func:`heat_maps` of these maps is, up to a scale factor, the map MONAI's GradCAM draws for
    :class:`ClassContrast`: training can act on it without double backward.
    """
    n = head_weight.shape[0]
    contrast = (n * head_weight - head_weight.sum(dim=0, keepdim=True)) / (n - 1)
    return torch.einsum("ck,bkhw->bchw", contrast, features)


def resize_maps(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of (N, C, h, w) maps to the (size, size) input grid, as MONAI's CAM upsampler does."""
    return F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)


def heat_maps(maps: torch.Tensor, size: int) -> torch.Tensor:
    """What Grad-CAM shows of signed feature-grid maps: rectified, resized to the input, shifted to a zero minimum."""
    heat = resize_maps(torch.relu(maps), size)
    return heat - heat.amin(dim=(2, 3), keepdim=True)


def energy_outside(maps: torch.Tensor, region: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(N, classes) share of each signed map's energy (sum of squares) outside ``region`` ((N, 1, S, S), 0-1),
    the maps resized to the region's grid.

    Zero when the class decision owes nothing to pixels outside the region. Unlike the mass of a rectified map
    it cannot be lowered by pushing the map below zero or by a constant offset; only evidence inside lowers it.
    """
    energy = resize_maps(maps, region.shape[-1]).square()
    return (energy * (1.0 - region)).sum(dim=(2, 3)) / (energy.sum(dim=(2, 3)) + eps)


def heat_mass_inside_maps(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """(N, classes) share of the shown heat map's mass inside ``region`` ((N, 1, S, S)); NaN for an empty map."""
    heat = heat_maps(maps, region.shape[-1])
    total = heat.sum(dim=(2, 3))
    inside = (heat * region).sum(dim=(2, 3)) / total.clamp_min(1e-12)
    return torch.where(total > 0, inside, torch.full_like(inside, float("nan")))


def build_classifier(spec: dict, num_classes: int) -> nn.Module:
    """``spec['name']``: ``compact`` (CompactCXRNet), ``resnet10``/``resnet18`` or ``densenet121`` (MONAI, 2D, 1 channel)."""
    name = spec.get("name", "compact")
    if name == "compact":
        return CompactCXRNet(num_classes, tuple(spec.get("channels", (24, 48, 96, 192))), spec.get("dropout", 0.2))
    if name in ("resnet10", "resnet18"):
        from monai.networks.nets import resnet10, resnet18

        factory = resnet10 if name == "resnet10" else resnet18
        return factory(spatial_dims=2, n_input_channels=1, num_classes=num_classes)
    if name == "densenet121":
        from monai.networks.nets import DenseNet121

        return DenseNet121(spatial_dims=2, in_channels=1, out_channels=num_classes, dropout_prob=spec.get("dropout", 0.2))
    raise ValueError(f"unknown classifier network '{name}' (compact, resnet10, resnet18, densenet121)")


def gradcam_layer(spec: dict, prefix: str = "") -> str:
    """Name of the layer whose activations Grad-CAM weighs (the last convolutional stage); ``prefix`` for a
    wrapped model (``"model."`` inside :class:`ClassContrast`)."""
    return prefix + {"compact": "features", "resnet10": "layer4", "resnet18": "layer4",
            "densenet121": "class_layers.relu"}[spec.get("name", "compact")]
