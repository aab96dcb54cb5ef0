"""Hounsfield units -> linear attenuation, and line integrals -> display images."""
from __future__ import annotations

import numpy as np
import torch

MU_WATER_PER_MM = 0.0206
"""Linear attenuation of water at ~60 keV effective energy (0.206 /cm), a typical fluoroscopy beam."""


def hu_to_mu(hu, mu_water_per_mm: float = MU_WATER_PER_MM) -> np.ndarray:
    """mu = mu_water * (1 + HU / 1000), clipped at 0 (air and padding values below -1000 HU give 0)."""
    hu = np.asarray(hu, dtype=np.float32)
    return np.clip(mu_water_per_mm * (1.0 + hu / 1000.0), 0.0, None)


def to_display(line_integrals, invert: bool = False, percentiles=(0.5, 99.5)) -> np.ndarray:
    """Line integrals (H, W) -> [0, 1] image, bright = more attenuation (radiograph convention).

    ``invert=True`` gives the fluoroscopy look (bone dark). The window spans the given percentiles.
    """
    values = line_integrals.detach().cpu().numpy() if isinstance(line_integrals, torch.Tensor) else np.asarray(line_integrals)
    low, high = np.percentile(values, percentiles)
    image = np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0)
    return (1.0 - image) if invert else image
