"""The Q-network: a state (4, P, P) -> one Q-value per action (12), built from MONAI blocks."""
from __future__ import annotations

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn


class QNetwork(nn.Module):
    """Strided residual encoder (MONAI ``Convolution`` + ``ResidualUnit``), flattened (position matters for
    translations), then a two-layer head. ``(B, in_channels, P, P) -> (B, n_actions)``."""

    def __init__(self, in_channels: int = 4, n_actions: int = 12, patch: int = 64,
                 channels: tuple = (32, 48, 64, 96), hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        layers = [Convolution(2, in_channels, channels[0], strides=2, kernel_size=5, act="PRELU", norm="BATCH")]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers.append(ResidualUnit(2, c_in, c_out, strides=2, subunits=2, act="PRELU", norm="BATCH"))
        self.encoder = nn.Sequential(*layers)
        side = patch // 2 ** len(channels)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels[-1] * side * side, hidden),
                                  nn.PReLU(), nn.Linear(hidden, n_actions))
        self.config = {"in_channels": in_channels, "n_actions": n_actions, "patch": patch,
                       "channels": list(channels), "hidden": hidden, "dropout": dropout}

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(state))
