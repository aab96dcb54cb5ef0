"""The Q-network: a state (4, P, P views + motion features) -> one Q-value per action (12), built from MONAI blocks."""
from __future__ import annotations

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn


class QNetwork(nn.Module):
    """Strided residual encoder (MONAI ``Convolution`` + ``ResidualUnit``), flattened (position matters for
    translations) and joined by ``n_features`` motion features (:mod:`medai.registration.motion`), then a two-layer
    head. ``(B, in_channels, P, P), (B, n_features) -> (B, n_actions)``."""

    def __init__(self, in_channels: int = 4, n_actions: int = 12, patch: int = 64,
                 channels: tuple = (32, 48, 64, 96), hidden: int = 256, dropout: float = 0.1, n_features: int = 0):
        super().__init__()
        layers = [Convolution(2, in_channels, channels[0], strides=2, kernel_size=5, act="PRELU", norm="BATCH")]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers.append(ResidualUnit(2, c_in, c_out, strides=2, subunits=2, act="PRELU", norm="BATCH"))
        self.encoder = nn.Sequential(*layers)
        side = patch // 2 ** len(channels)
        self.n_features = n_features
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(channels[-1] * side * side + n_features, hidden),
                                  nn.PReLU(), nn.Linear(hidden, n_actions))
        self.config = {"in_channels": in_channels, "n_actions": n_actions, "patch": patch,
                       "channels": list(channels), "hidden": hidden, "dropout": dropout, "n_features": n_features}

    def forward(self, views: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        encoded = self.encoder(views).flatten(1)
        if self.n_features:
            if features is None or features.shape[-1] != self.n_features:
                raise ValueError(f"this Q-network takes {self.n_features} motion features per state")
            encoded = torch.cat([encoded, features.to(encoded.dtype)], dim=1)
        return self.head(encoded)

    def with_features(self, n_features: int) -> "QNetwork":
        """A copy that also takes ``n_features`` motion features, whose weights start at zero: it computes exactly
        what this network computes until fine-tuning teaches it to use them."""
        config = {**self.config, "n_features": n_features}
        wider = QNetwork(**config)
        state = self.state_dict()
        weight = state["head.2.weight"]
        kept = weight.shape[1] - self.n_features + min(self.n_features, n_features)  # the views' and shared columns
        grown = torch.zeros(weight.shape[0], weight.shape[1] - self.n_features + n_features)
        grown[:, :kept] = weight[:, :kept]
        state["head.2.weight"] = grown
        wider.load_state_dict(state)
        return wider
