"""Motion features of a state: how the frame-vs-DRR residual lines up with the image motion of each in-plane parameter.

For tx, ty, tz and rz (shift, magnification, rotation about the beam) a small pose change moves the DRR in the
detector plane by an affine motion, fitted to the projections of the CT's body points. The image change it causes is
``-grad(DRR) . motion``; its correlation with the residual (frame - DRR, both smoothed, zero-mean, unit-norm in the
field), and the Gauss-Newton solution of the four together, say which way each parameter should go. The Q-network's
views are 64 x 64: a 10 mm depth error (a ~1.3% magnification) moves their content by half a pixel, which the
convolutional encoder barely sees, while this sum over the whole field reads its sign (depth sign agreement 0.92 on
chest development frames with the other parameters up to 3 mm / 2 deg off; 0.72 on the noisier abdominal CT).
Tilts (rx, ry) change what the rays cross and are left to the views.
"""
from __future__ import annotations

import numpy as np
import torch

from ..drr.geometry import CArmGeometry
from .poses import RigidPose
from .smoothing import gaussian_smooth as _smooth

MOTION_DOFS = (0, 1, 2, 5)
"""tx, ty, tz, rz: the parameters whose image motion is (nearly) an affine map of the detector plane."""
N_FEATURES = 2 * len(MOTION_DOFS)
"""Per parameter: the Gauss-Newton correction (scaled) and the residual's correlation with its image change."""
ESTIMATE_SCALE = 10.0
"""Gauss-Newton corrections (mm, deg) are divided by this and clipped to +/-3 (30 mm / 30 deg)."""
BODY_POINTS = 256
SMOOTHING_PX = 0.5


def body_points(ct) -> np.ndarray:
    """Up to :data:`BODY_POINTS` RAS points inside the CT's body (tissue sample points), for the affine fits."""
    tissue = ct.tissue_ijk
    if tissue is None or not len(tissue):
        return np.empty((0, 3))
    return ct.geometry.index_to_ras(tissue[:: max(1, len(tissue) // BODY_POINTS)])


def _unit(values: torch.Tensor) -> tuple[torch.Tensor, float]:
    values = values.double() - values.double().mean()
    norm = float(values.norm())
    return values / max(norm, 1e-12), norm


class MotionReference:
    """The fixed (frame) side of the features, computed once per frame: its coarse view smoothed and normalised."""

    def __init__(self, coarse_raw: torch.Tensor, coarse_mask: torch.Tensor, carm_coarse: CArmGeometry):
        self.mask = coarse_mask
        self.carm = carm_coarse
        self.fixed, _ = _unit(_smooth(coarse_raw, SMOOTHING_PX)[coarse_mask])
        rows, cols = np.mgrid[0:carm_coarse.height, 0:carm_coarse.width].astype(np.float64)
        mask = coarse_mask.numpy()
        self.pixels = np.stack([rows[mask], cols[mask], np.ones(int(mask.sum()))], axis=1)  # (M, 3) in the field

    def features(self, moving_coarse: torch.Tensor, pose: RigidPose, centre_ras, points_ras: np.ndarray) -> torch.Tensor:
        """(N_FEATURES,) float32: Gauss-Newton corrections of tx, ty, tz, rz (scaled, clipped), then the correlations
        of the residual with each one's image change. Zeros when there is nothing to measure."""
        out = torch.zeros(N_FEATURES)
        if len(points_ras) < 3 or len(self.fixed) < 16:
            return out
        smooth = _smooth(moving_coarse, SMOOTHING_PX)
        moving, norm = _unit(smooth[self.mask])
        if norm < 1e-9:
            return out
        residual = self.fixed - moving
        grad_rows = torch.zeros_like(smooth)
        grad_cols = torch.zeros_like(smooth)
        grad_cols[:, 1:-1] = (smooth[:, 2:] - smooth[:, :-2]) / 2
        grad_rows[1:-1] = (smooth[2:] - smooth[:-2]) / 2
        grad = torch.stack([grad_rows[self.mask], grad_cols[self.mask]], 1).double().numpy() / norm  # (M, 2)
        motions = self._motions(pose, centre_ras, points_ras)  # (K, 3, 2) affine per parameter
        columns = []
        for affine in motions:
            change = -np.einsum("md,md->m", grad, self.pixels @ affine)
            columns.append(change - change.mean())
        jac = torch.as_tensor(np.stack(columns, 1))  # (M, K)
        r = residual[:, None]
        try:
            jtj = jac.T @ jac
            estimate = torch.linalg.solve(jtj + 1e-6 * torch.diag(torch.diagonal(jtj)) + 1e-12 * torch.eye(len(columns)),
                                          jac.T @ r)[:, 0]
        except RuntimeError:  # singular: no estimate
            estimate = torch.zeros(len(columns), dtype=torch.float64)
        correlation = (jac.T @ r)[:, 0] / (jac.norm(dim=0) * residual.norm()).clamp(min=1e-12)
        out[:len(columns)] = (estimate / ESTIMATE_SCALE).clamp(-3, 3).float()
        out[len(columns):] = correlation.float()
        return torch.nan_to_num(out)

    def _motions(self, pose: RigidPose, centre_ras, points_ras: np.ndarray) -> np.ndarray:
        """(K, 3, 2): per parameter of :data:`MOTION_DOFS`, the affine map (row, col, 1) -> displacement (rows, cols)
        of the coarse detector that a unit step (1 mm, 1 deg) of that parameter causes, fitted to the body points."""
        from .environment import detector_pixels

        matrix = pose.matrix(centre_ras)
        before_carm = points_ras @ matrix[:3, :3].T + matrix[:3, 3]
        before = np.stack(detector_pixels(before_carm, self.carm), axis=1)
        design = np.c_[before, np.ones(len(before))]
        displacements = []
        for dof in MOTION_DOFS:
            delta = np.zeros(6)
            delta[dof] = 1.0
            moved = pose.moved(delta).matrix(centre_ras)
            after = np.stack(detector_pixels(points_ras @ moved[:3, :3].T + moved[:3, 3], self.carm), axis=1)
            displacements.append(after - before)
        affine = np.linalg.lstsq(design, np.concatenate(displacements, axis=1), rcond=None)[0]  # (3, 2K): one solve
        return affine.reshape(3, len(MOTION_DOFS), 2).transpose(1, 0, 2)
