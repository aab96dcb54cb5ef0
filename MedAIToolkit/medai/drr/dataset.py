"""Training data for the registration agent: N random poses rendered into one resumable file set.

Folder layout (``out``):
- ``meta.json``: CT, C-arm geometry, sampling ranges, seed, ``completed`` count (updated as work proceeds);
- ``poses.npy`` (N, 6) float32: tx ty tz (mm) rx ry rz (deg), drawn up front from the seed;
- ``drrs.npy`` (N, H, W) float32: line integrals;
- ``patches.npy`` (N, P, P) float32: each DRR downsampled to P x P and normalised to 0-1 (min-max per image).
Re-running with the same arguments continues after the last completed DRR and gives identical files.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MedAIInputError
from ..io import Volume
from .geometry import CArmGeometry, Pose
from .renderer import prepare_ct, render


def sample_poses(n: int, seed: int, max_translation_mm: float, max_rotation_deg: float) -> np.ndarray:
    """(n, 6) poses uniform in +/- the given ranges (reproducible for a seed)."""
    rng = np.random.default_rng(seed)
    poses = np.empty((n, 6), np.float32)
    poses[:, :3] = rng.uniform(-max_translation_mm, max_translation_mm, (n, 3))
    poses[:, 3:] = rng.uniform(-max_rotation_deg, max_rotation_deg, (n, 3))
    return poses


def normalise_patch(drr: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(H, W) line integrals -> (P, P) in [0, 1] (area-averaged, min-max normalised)."""
    patch = F.adaptive_avg_pool2d(drr[None, None], patch_size)[0, 0]
    low, high = patch.min(), patch.max()
    return (patch - low) / torch.clamp(high - low, min=1e-6)


def generate_dataset(volume: Volume, out: str, n: int, carm: CArmGeometry, seed: int = 0,
                     max_translation_mm: float = 20.0, max_rotation_deg: float = 10.0, patch_size: int = 64,
                     source: str = "", device: str = "cpu", flush_every: int = 16, progress: bool = True) -> dict:
    """Render ``n`` random poses into ``out`` (resumable); returns the meta dictionary."""
    if n <= 0:
        raise MedAIInputError(f"number of samples must be positive, got {n}")
    os.makedirs(out, exist_ok=True)
    meta_path = os.path.join(out, "meta.json")
    settings = {"n": n, "seed": seed, "max_translation_mm": max_translation_mm, "max_rotation_deg": max_rotation_deg,
                "patch_size": patch_size, "carm": carm.to_dict(), "ct": source,
                "ct_shape_kji": list(volume.array.shape), "ct_geometry": volume.geometry.to_dict(),
                "pose_convention": "tx ty tz (mm, C-arm frame) rx ry rz (deg about the CT centre), see docs/pose_convention.md"}
    completed = 0
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            previous = json.load(f)
        if {k: previous.get(k) for k in settings} != json.loads(json.dumps(settings)):
            raise MedAIInputError(f"{out} holds a data set made with other settings; choose another folder")
        completed = int(previous.get("completed", 0))
    mode = "r+" if completed else "w+"
    poses = sample_poses(n, seed, max_translation_mm, max_rotation_deg)
    np.save(os.path.join(out, "poses.npy"), poses)
    drrs = np.lib.format.open_memmap(os.path.join(out, "drrs.npy"), mode, np.float32, (n, carm.height, carm.width))
    patches = np.lib.format.open_memmap(os.path.join(out, "patches.npy"), mode, np.float32, (n, patch_size, patch_size))

    def save_meta(count):
        with open(meta_path + ".part", "w") as f:
            json.dump({**settings, "completed": count}, f, indent=2)
        os.replace(meta_path + ".part", meta_path)

    ct = prepare_ct(volume, device=device)
    from tqdm import tqdm

    bar = tqdm(total=n, initial=completed, desc="DRRs", unit="drr", disable=not progress)
    for index in range(completed, n):
        image = render(ct, carm, Pose.from_array(poses[index]))[0]
        drrs[index] = image.cpu().numpy()
        patches[index] = normalise_patch(image, patch_size).cpu().numpy()
        bar.update(1)
        if (index + 1) % flush_every == 0 or index + 1 == n:
            drrs.flush()
            patches.flush()
            save_meta(index + 1)
    bar.close()
    save_meta(n)
    return {**settings, "completed": n}
