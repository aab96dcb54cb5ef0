"""One Gaussian for every image comparison of the registration: the refinement's residuals, the agent's motion
features and its match similarity."""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F


@lru_cache(maxsize=64)
def _kernel(sigma: float) -> tuple[torch.Tensor, int]:
    """The normalised 1D Gaussian of ``sigma`` pixels (radius 3 sigma, at least 1) and its radius."""
    radius = max(1, int(round(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum(), radius


def gaussian_smooth(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """(H, W) smoothed by a separable Gaussian of ``sigma`` pixels (edges replicated); ``sigma <= 0``: unchanged."""
    if sigma <= 0:
        return image
    kernel, radius = _kernel(float(sigma))
    out = F.conv2d(F.pad(image[None, None], (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return out[0, 0]
