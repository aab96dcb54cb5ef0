"""Rigid poses in the C-arm frame for registration: the agent's actions, errors and mTRE.

A :class:`RigidPose` is ``p_carm = R @ (p_ras - centre_ras) + t``: ``t`` (mm) is where the CT centre sits in the
C-arm frame, ``R`` turns RAS into C-arm axes. Actions and errors are expressed in the C-arm frame (x along detector
columns, y along rows, z along the beam), so an action looks the same in the image from every view: +/- x, y, z
translations and +/- rotations about C-arm axes through the CT centre. Conversion to the six numbers of
``medai.drr.Pose`` (docs/pose_convention.md) is exact both ways.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from ..drr.geometry import R_AP, Pose, rotation_matrix
from ..errors import MedAIInputError

ACTION_NAMES = ("+tx", "-tx", "+ty", "-ty", "+tz", "-tz", "+rx", "-rx", "+ry", "-ry", "+rz", "-rz")
"""The 12 actions of the 2D/3D mode: +/- translation along and +/- rotation about each C-arm axis."""
MODE_ACTIONS = {"2d3d": tuple(range(12)), "2d2d": (0, 1, 2, 3, 10, 11)}
"""Action indices per mode; 2d2d moves in the detector plane only (tx, ty, rotation about the beam)."""
MM_PER_DEGREE = 1.5
"""Weight of one degree of rotation against one millimetre in the pose distance (a point ~86 mm from the centre)."""


def _euler_from_rotation(rot: np.ndarray) -> np.ndarray:
    """(rx, ry, rz) degrees with ``rotation_matrix(rx, ry, rz) == rot`` (Rz @ Ry @ Rx, extrinsic xyz)."""
    return Rotation.from_matrix(rot).as_euler("xyz", degrees=True)


@dataclass(frozen=True)
class RigidPose:
    """``R`` (3, 3) RAS -> C-arm rotation and ``t`` (3,) mm: the CT centre's position in the C-arm frame."""

    rotation: np.ndarray
    translation: np.ndarray

    def __post_init__(self):
        if not (np.all(np.isfinite(self.rotation)) and np.all(np.isfinite(self.translation))):
            raise MedAIInputError("pose contains NaN or infinite values")

    @classmethod
    def from_pose(cls, pose: Pose) -> "RigidPose":
        return cls(R_AP @ rotation_matrix(pose.rx, pose.ry, pose.rz), np.array([pose.tx, pose.ty, pose.tz], float))

    @classmethod
    def from_array(cls, values) -> "RigidPose":
        return cls.from_pose(Pose.from_array(values))

    @classmethod
    def from_matrix(cls, ras_to_carm: np.ndarray, centre_ras) -> "RigidPose":
        m = np.asarray(ras_to_carm, dtype=np.float64)
        if m.shape != (4, 4) or not np.all(np.isfinite(m)):
            raise MedAIInputError(f"a pose matrix is a finite 4x4 array, got shape {m.shape}")
        rot = m[:3, :3]
        if abs(np.linalg.det(rot) - 1.0) > 1e-3 or not np.allclose(rot @ rot.T, np.eye(3), atol=1e-3):
            raise MedAIInputError("the pose matrix is not a rigid transform (rotation part not orthonormal)")
        return cls(rot, m[:3, 3] + rot @ np.asarray(centre_ras, float))

    def to_pose(self) -> Pose:
        rx, ry, rz = _euler_from_rotation(R_AP.T @ self.rotation)
        return Pose(*self.translation.tolist(), rx, ry, rz)

    def as_array(self) -> np.ndarray:
        """The six numbers of ``medai.drr.Pose``: tx ty tz (mm) rx ry rz (deg)."""
        return self.to_pose().as_array()

    def matrix(self, centre_ras) -> np.ndarray:
        """4x4 RAS -> C-arm matrix."""
        m = np.eye(4)
        m[:3, :3] = self.rotation
        m[:3, 3] = self.translation - self.rotation @ np.asarray(centre_ras, float)
        return m

    def moved(self, delta: np.ndarray) -> "RigidPose":
        """Apply a C-arm-frame increment (dx, dy, dz mm, rx, ry, rz deg about C-arm axes through the CT centre)."""
        delta = np.asarray(delta, dtype=np.float64)
        turn = Rotation.from_rotvec(np.deg2rad(delta[3:])).as_matrix()
        return RigidPose(turn @ self.rotation, self.translation + delta[:3])

    def error_to(self, truth: "RigidPose") -> np.ndarray:
        """(6,) C-arm-frame error: translation (mm) and rotation vector (deg) of ``self`` relative to ``truth``."""
        rotvec = Rotation.from_matrix(self.rotation @ truth.rotation.T).as_rotvec(degrees=True)
        return np.concatenate([self.translation - truth.translation, rotvec])


def action_delta(action: int, step_mm: float, step_deg: float) -> np.ndarray:
    """(6,) C-arm-frame increment of an action index (see :data:`ACTION_NAMES`)."""
    delta = np.zeros(6)
    axis, sign = divmod(action, 2)
    delta[axis] = (step_mm if axis < 3 else step_deg) * (1.0 if sign == 0 else -1.0)
    return delta


def pose_distance(error: np.ndarray) -> float:
    """Distance (mm) of a C-arm-frame error: translation and weighted rotation together."""
    error = np.asarray(error, dtype=np.float64)
    return float(np.sqrt(np.sum(error[..., :3] ** 2, -1) + (MM_PER_DEGREE ** 2) * np.sum(error[..., 3:] ** 2, -1)))


def q_values(error: np.ndarray, step_mm: float, step_deg: float, actions=MODE_ACTIONS["2d3d"]) -> np.ndarray:
    """Supervised Q-values: the reduction of :func:`pose_distance` each action brings, divided by its step length
    (so one network serves every step size). ``error`` is the current C-arm-frame error (6,)."""
    error = np.asarray(error, dtype=np.float64)
    now = pose_distance(error)
    out = np.empty(len(actions))
    for n, action in enumerate(actions):
        delta = action_delta(action, step_mm, step_deg)
        if action < 6:
            after = error + delta
        else:  # rotations compose: R' = dR @ R, so the error's rotation vector is composed, not added
            turn = Rotation.from_rotvec(np.deg2rad(delta[3:])) * Rotation.from_rotvec(np.deg2rad(error[3:]))
            after = np.concatenate([error[:3], turn.as_rotvec(degrees=True)])
        length = step_mm if action < 6 else step_deg * MM_PER_DEGREE
        out[n] = (now - pose_distance(after)) / length
    return out


def mtre(estimate: RigidPose, truth: RigidPose, points_ras: np.ndarray, centre_ras) -> float:
    """Mean target registration error (mm): mean 3D distance between points placed by each pose."""
    points = np.asarray(points_ras, dtype=np.float64) - np.asarray(centre_ras, float)
    a = points @ estimate.rotation.T + estimate.translation
    b = points @ truth.rotation.T + truth.translation
    return float(np.mean(np.linalg.norm(a - b, axis=1)))
