"""One Gaussian for every image comparison of the registration: the refinement's residuals, the agent's motion
features and its match similarity."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_smooth(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """(H, W) smoothed by a separable Gaussian of ``sigma`` pixels (edges replicated); ``sigma <= 0``: unchanged."""
    if sigma <= 0:
        return image
    radius = max(1, int(round(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = F.conv2d(F.pad(image[None, None], (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return out[0, 0]
