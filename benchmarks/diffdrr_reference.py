"""DiffDRR (0.6.1) as a reference renderer on exactly the rays MedAI renders (benchmark/test dependency only).

Install beside torch==2.13.0 without its heavy dependencies:
``pip install --no-deps diffdrr==0.6.1 && pip install torchio kornia roma einops fastcore pandas``
(only ``diffdrr.drr`` and ``diffdrr.data`` import without torchvision).
Both renderers get the SAME attenuation volume (MedAI's HU -> mu) and the same source/detector rays, so the
comparison isolates the rendering algorithm.
"""
from __future__ import annotations

import numpy as np
import torch


def available() -> bool:
    try:
        import diffdrr.data  # noqa: F401
        import diffdrr.drr  # noqa: F401
        return True
    except Exception:
        return False


class DiffDRRReference:
    """A DiffDRR ``DRR`` over the chest CT with MedAI's attenuation, plus the same rays for MedAI."""

    def __init__(self, ct_path: str, height: int, delx_mm: float, sdd_mm: float = 1020.0, renderer: str = "siddon"):
        from diffdrr.data import read
        from diffdrr.drr import DRR

        from medai.drr import prepare_ct
        from medai.io import read_volume

        self.volume = read_volume(ct_path)
        self.prepared = prepare_ct(self.volume)
        # MedAI attenuation on the full (uncropped) grid, in DiffDRR's (i, j, k) voxel order
        mu = np.zeros(self.volume.array.shape, np.float32)
        k0 = self.prepared.offset_ijk.astype(int)[::-1]
        kk, jj, ii = self.prepared.mu.shape
        mu[k0[0]:k0[0] + kk, k0[1]:k0[1] + jj, k0[2]:k0[2] + ii] = self.prepared.mu.numpy()
        subject = read(ct_path, orientation="AP")
        subject.density.set_data(torch.from_numpy(mu.transpose(2, 1, 0).copy())[None])
        self.drr = DRR(subject, sdd=sdd_mm, height=height, delx=delx_mm, renderer=renderer)
        self.renderer = renderer

    def rays(self, rotations_rad, translations_mm):
        """Source (3,) and targets (H, W, 3) in (i, j, k) voxel index space for a DiffDRR pose."""
        from diffdrr.pose import convert

        pose = convert(torch.tensor([rotations_rad], dtype=torch.float32),
                       torch.tensor([translations_mm], dtype=torch.float32),
                       parameterization="euler_angles", convention="ZXY")
        source, target = self.drr.detector(pose, None)
        source = self.drr.affine_inverse(source)[0, 0].double().numpy()
        target = self.drr.affine_inverse(target)[0].double().numpy()
        h, w = self.drr.detector.height, self.drr.detector.width
        return pose, source, target.reshape(h, w, 3)

    def render_reference(self, pose, **kwargs) -> torch.Tensor:
        with torch.no_grad():
            return self.drr(pose, **kwargs)[0, 0]

    def render_medai(self, source, targets) -> torch.Tensor:
        from medai.drr import render_rays

        offset = self.prepared.offset_ijk
        return render_rays(self.prepared, source - offset, targets - offset)


def ncc(a, b) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))
