"""Classifier networks (MONAI), built from a task's ``network`` spec; all take one grey channel."""
from __future__ import annotations

import torch
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))


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


def gradcam_layer(spec: dict) -> str:
    """Name of the layer whose activations Grad-CAM weighs (the last convolutional stage)."""
    return {"compact": "features", "resnet10": "layer4", "resnet18": "layer4",
            "densenet121": "class_layers.relu"}[spec.get("name", "compact")]
