"""The registration environment: fixed frame vs. DRR of the CT at the current pose, on a small working detector.

The frame's detector is re-binned onto a ``work_size`` x ``work_size`` grid covering the same field of view (the
geometry, not the pixel count, is what matters), so one agent serves any C-arm. The state is the pair of
normalised (0-1) patches at two resolutions: the whole field of view pooled to ``patch`` x ``patch`` (coarse) and
its central half at full working resolution (fine): channels (fixed coarse, moving coarse, fixed fine, moving fine),
plus the motion features of the coarse pair (:mod:`medai.registration.motion`: which way shift, magnification and
rotation about the beam should go).
The moving patches are rendered directly, one ray per patch pixel (2 P^2 rays instead of the working grid's 4 P^2;
a coarse pixel's ray through its centre instead of the mean of four: the CT's voxels are coarser than the rays).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..drr.geometry import CArmGeometry
from ..drr.renderer import PreparedCT, render_matrix
from ..errors import MedAIInputError
from .motion import MotionReference, body_points
from .poses import RigidPose
from .smoothing import gaussian_smooth as _smooth

WORK_SIZE = 128
PATCH = 64
MATCH_SMOOTHING_PX = 0.5
"""Gaussian sigma (view pixels) of both images before the match similarity; 0.5 px: unseen-CT development frames,
a search that takes the best of all 12 moves reached < 10 mm in 0.90 of 30 frames with both views at 0.5 px, 0.73
with the coarse view alone (0 / 1 / 2 px: 0.80 / 0.63 / 0.40)."""


def work_geometry(carm: CArmGeometry, size: int = WORK_SIZE) -> CArmGeometry:
    """The same detector (field of view, principal point, distances) sampled on ``size`` x ``size`` pixels."""
    scale_r, scale_c = carm.height / size, carm.width / size
    return CArmGeometry(carm.sdd_mm, carm.sid_mm, size, size, carm.row_spacing_mm * scale_r,
                        carm.col_spacing_mm * scale_c, (carm.principal_row + 0.5) / scale_r - 0.5,
                        (carm.principal_col + 0.5) / scale_c - 0.5)


def resize_image(image, size: int) -> torch.Tensor:
    """(H, W) -> (size, size) float32, anti-aliased when shrinking."""
    tensor = torch.as_tensor(np.asarray(image, dtype=np.float32) if not isinstance(image, torch.Tensor) else image,
                             dtype=torch.float32)[None, None]
    shrink = tensor.shape[-1] > size or tensor.shape[-2] > size
    return F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=shrink, align_corners=False)[0, 0]


def normalise(image: torch.Tensor, mask: torch.Tensor, low_q: float = 0.01, high_q: float = 0.99) -> torch.Tensor:
    """Map the masked values' [low_q, high_q] quantiles to [0, 1] (clipped); outside the mask 0. (..., H, W)."""
    flat = image.reshape(-1, image.shape[-2] * image.shape[-1])
    keep = mask.reshape(-1)
    out = torch.empty_like(flat)
    for n in range(flat.shape[0]):
        values = flat[n, keep] if keep.any() else flat[n]
        low, high = torch.quantile(values, torch.tensor([low_q, high_q]))
        out[n] = ((flat[n] - low) / torch.clamp(high - low, min=1e-6)).clamp(0, 1)
    return out.reshape(image.shape) * mask


def patches(image: torch.Tensor, patch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(work, work) -> coarse (patch, patch) whole field of view, fine (patch, patch) central crop
    (``patch`` defaults to work / 2: the fine patch is then the central half at full working resolution)."""
    work = image.shape[-1]
    patch = patch or work // 2
    coarse = F.adaptive_avg_pool2d(image[None, None], patch)[0, 0]
    start = (work - patch) // 2
    fine = image[start:start + patch, start:start + patch] if work >= 2 * patch else resize_image(
        image[work // 4: work - work // 4, work // 4: work - work // 4], patch)
    return coarse, fine


def ncc(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Normalised cross-correlation of two images inside ``mask``."""
    x, y = a[mask].double(), b[mask].double()
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / torch.sqrt((x * x).sum() * (y * y).sum()).clamp(min=1e-12))


@dataclass
class FixedImage:
    """The frame on the working grid: ``image`` (S, S), ``mask`` (S, S) bool, and its state patches."""

    image: torch.Tensor
    mask: torch.Tensor
    carm: CArmGeometry
    coarse: torch.Tensor
    fine: torch.Tensor
    coarse_mask: torch.Tensor
    fine_mask: torch.Tensor
    points: np.ndarray | None  # (2P, P, 3) C-arm mm: detector points of the two views (view_points)
    motion: MotionReference  # the frame's side of the motion features (coarse view)
    matched: tuple  # the coarse and fine views smoothed by MATCH_SMOOTHING_PX (for the match similarity)

    @classmethod
    def build(cls, image, mask, carm_work: CArmGeometry) -> "FixedImage":
        image = torch.as_tensor(image, dtype=torch.float32)
        mask = torch.as_tensor(mask, dtype=torch.bool)
        coarse_mask, fine_mask = (m > 0.99 for m in patches(mask.float()))
        coarse, fine = patches(image)
        patch = coarse.shape[-1]
        return cls(image, mask, carm_work, normalise(coarse, coarse_mask), normalise(fine, fine_mask),
                   coarse_mask, fine_mask, view_points(carm_work, patch),
                   MotionReference(coarse, coarse_mask, work_geometry(carm_work, patch)),
                   (_smooth(coarse, MATCH_SMOOTHING_PX), _smooth(fine, MATCH_SMOOTHING_PX)))

    @classmethod
    def from_frame(cls, frame, size: int = WORK_SIZE) -> "FixedImage":
        mask = resize_image(frame.mask.astype(np.float32), size) > 0.99
        return cls.build(resize_image(frame.image, size), mask, work_geometry(frame.carm, size))


@dataclass
class State:
    """What the Q-network sees: ``views`` (4, P, P) and ``features`` (motion features, :data:`motion.N_FEATURES`)."""

    views: torch.Tensor
    features: torch.Tensor


class Environment:
    """Renders the moving DRR for a pose and builds the agent's state against a fixed frame."""

    def __init__(self, ct: PreparedCT, centre_ras, fixed: FixedImage, points_ras: np.ndarray | None = None):
        self.ct = ct
        self.centre_ras = np.asarray(centre_ras, dtype=np.float64)
        self.fixed = fixed
        self.points_ras = body_points(ct) if points_ras is None else points_ras
        self._last_look = None  # (RAS -> C-arm matrix bytes, views, similarity)

    def state(self, pose: RigidPose) -> tuple[State, float]:
        """The state at ``pose`` and the image similarity (:meth:`match`)."""
        views, similarity = self.look(pose)
        return self.state_of(views, pose), similarity

    def look(self, pose: RigidPose) -> tuple[tuple, float]:
        """The moving views at ``pose`` (raw) and their similarity to the frame's, without building a state. The
        last look is kept: the same pose looked at again (the pipeline's polarity check at the initial pose, then the
        agent's first state) is not rendered twice."""
        matrix = pose.matrix(self.centre_ras)
        key = matrix.tobytes()
        if self._last_look is None or self._last_look[0] != key:
            views = render_views(self.ct, self.fixed, matrix)
            self._last_look = (key, views, self.match(*views))
        return self._last_look[1], self._last_look[2]

    def state_of(self, views: tuple, pose: RigidPose) -> State:
        return make_state(self.fixed, *views, pose, self.centre_ras, self.points_ras)

    def match(self, coarse: torch.Tensor, fine: torch.Tensor) -> float:
        """Image similarity of the moving views to the frame's: the mean NCC of the coarse (whole field) and the
        fine (central half) views, each smoothed by :data:`MATCH_SMOOTHING_PX`, inside the field."""
        fixed_coarse, fixed_fine = self.fixed.matched
        return 0.5 * (ncc(fixed_coarse, _smooth(coarse, MATCH_SMOOTHING_PX), self.fixed.coarse_mask)
                      + ncc(fixed_fine, _smooth(fine, MATCH_SMOOTHING_PX), self.fixed.fine_mask))


def view_points(carm_work: CArmGeometry, patch: int) -> np.ndarray | None:
    """(2P, P, 3) C-arm detector points of the state's views: the coarse grid (the working detector pooled to P x P:
    pixel centres of its P x P resampling) above the fine one (the central P x P pixels of the working detector).
    None when the fine view is not such a crop (working grid not square or smaller than 2P)."""
    work = carm_work.width
    if carm_work.height != work or work % patch or work < 2 * patch:
        return None
    start = (work - patch) // 2
    fine = carm_work.pixel_centres_carm()[start:start + patch, start:start + patch]
    return np.concatenate([work_geometry(carm_work, patch).pixel_centres_carm(), fine], axis=0)


def render_views(ct: PreparedCT, fixed: FixedImage, ras_to_carm: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The moving image's coarse and fine views (P, P) each, raw line integrals, for the state at ``ras_to_carm``."""
    if fixed.points is None:
        return patches(render_matrix(ct, fixed.carm, ras_to_carm))
    views = render_matrix(ct, fixed.carm, ras_to_carm, points_carm=fixed.points)
    patch = views.shape[-1]
    return views[:patch], views[patch:]


def state_from_views(fixed: FixedImage, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
    return torch.stack([fixed.coarse, normalise(coarse, fixed.coarse_mask), fixed.fine,
                        normalise(fine, fixed.fine_mask)])


def make_state(fixed: FixedImage, coarse: torch.Tensor, fine: torch.Tensor, pose: RigidPose, centre_ras,
               points_ras: np.ndarray) -> State:
    """The state from the moving image's raw views at ``pose`` (``points_ras``: the CT's body points)."""
    return State(state_from_views(fixed, coarse, fine), fixed.motion.features(coarse, pose, centre_ras, points_ras))


def detector_pixels(points_carm: np.ndarray, carm: CArmGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) detector pixel coordinates where C-arm points (N, 3) project (pinhole at the source)."""
    scale = carm.sdd_mm / (points_carm[:, 2] + carm.sid_mm)
    return (points_carm[:, 1] * scale / carm.row_spacing_mm + carm.principal_row,
            points_carm[:, 0] * scale / carm.col_spacing_mm + carm.principal_col)


def check_overlap(ct: PreparedCT, carm: CArmGeometry, ras_to_carm: np.ndarray, mask: np.ndarray | None = None,
                  min_fraction: float = 0.01) -> float:
    """Share of the body's sample points that project inside the frame's field; raises below ``min_fraction``
    (a small field of view on a large CT sees a small share of it: only no overlap at all is refused)."""
    if ct.tissue_ijk is None or not len(ct.tissue_ijk):
        return 1.0
    ijk_to_carm = ras_to_carm @ ct.geometry.ijk_to_ras()
    rows, cols = detector_pixels(ct.tissue_ijk @ ijk_to_carm[:3, :3].T + ijk_to_carm[:3, 3], carm)
    inside = (cols >= 0) & (cols <= carm.width - 1) & (rows >= 0) & (rows <= carm.height - 1)
    if mask is not None and inside.any():
        r, c = np.round(rows[inside]).astype(int), np.round(cols[inside]).astype(int)
        inside[np.flatnonzero(inside)] = np.asarray(mask)[r, c]
    fraction = float(inside.mean())
    if fraction < min_fraction:
        raise MedAIInputError(
            f"the CT and the frame do not overlap at the initial pose: only {100 * fraction:.0f}% of the body "
            f"projects into the frame's field (check the initial pose, the C-arm angles and the geometry)")
    return fraction
