"""Image geometry carried end to end: spacing, origin, direction, LPS <-> RAS.

Conventions (the same as ITK/SimpleITK and DICOM):
- Arrays are indexed ``array[k, j, i]`` (slowest axis first), as returned by
  ``SimpleITK.GetArrayFromImage`` and ``slicer.util.arrayFromVolume``.
- ``spacing_mm``, ``origin_lps`` and the columns of ``direction_lps`` are in (i, j, k) order.
- Physical space of the engine is LPS (DICOM patient space). Slicer's world is RAS; conversion is
  ``diag(-1, -1, 1)`` and is done only through :data:`LPS_TO_RAS`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import MedAIInputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""4x4 homogeneous matrix mapping LPS to RAS (it is its own inverse)."""


def _as_vector(value, name: str, length: int = 3) -> np.ndarray:
    vec = np.asarray(value, dtype=np.float64).reshape(-1)
    if vec.shape != (length,):
        raise MedAIInputError(f"{name} must have {length} values, got {vec.size}")
    if not np.all(np.isfinite(vec)):
        raise MedAIInputError(f"{name} contains NaN or infinite values: {vec.tolist()}")
    return vec


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of a 3D image in LPS physical space (millimetres)."""

    spacing_mm: np.ndarray = field(default_factory=lambda: np.ones(3))
    origin_lps: np.ndarray = field(default_factory=lambda: np.zeros(3))
    direction_lps: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self):
        spacing = _as_vector(self.spacing_mm, "spacing")
        if np.any(spacing <= 0):
            raise MedAIInputError(f"spacing must be positive, got {spacing.tolist()} mm")
        direction = np.asarray(self.direction_lps, dtype=np.float64).reshape(3, 3)
        if not np.all(np.isfinite(direction)):
            raise MedAIInputError("direction matrix contains NaN or infinite values")
        if abs(abs(np.linalg.det(direction)) - 1.0) > 1e-3:
            raise MedAIInputError(f"direction matrix is not orthonormal (det={np.linalg.det(direction):.4f})")
        object.__setattr__(self, "spacing_mm", spacing)
        object.__setattr__(self, "origin_lps", _as_vector(self.origin_lps, "origin"))
        object.__setattr__(self, "direction_lps", direction)

    # --- matrices -------------------------------------------------------------------------------
    def ijk_to_lps(self) -> np.ndarray:
        """4x4 matrix mapping (i, j, k, 1) voxel indices to LPS millimetres."""
        m = np.eye(4)
        m[:3, :3] = self.direction_lps @ np.diag(self.spacing_mm)
        m[:3, 3] = self.origin_lps
        return m

    def ijk_to_ras(self) -> np.ndarray:
        """4x4 matrix mapping (i, j, k, 1) voxel indices to RAS millimetres (Slicer's IJKToRAS)."""
        return LPS_TO_RAS @ self.ijk_to_lps()

    @classmethod
    def from_ijk_to_ras(cls, ijk_to_ras) -> "Geometry":
        """Build from a Slicer IJKToRAS 4x4 matrix."""
        return cls.from_ijk_to_lps(LPS_TO_RAS @ np.asarray(ijk_to_ras, dtype=np.float64))

    @classmethod
    def from_ijk_to_lps(cls, ijk_to_lps) -> "Geometry":
        m = np.asarray(ijk_to_lps, dtype=np.float64)
        if m.shape != (4, 4):
            raise MedAIInputError(f"expected a 4x4 matrix, got shape {m.shape}")
        linear = m[:3, :3]
        spacing = np.linalg.norm(linear, axis=0)
        if np.any(spacing <= 0):
            raise MedAIInputError("IJK-to-physical matrix has a zero column (no spacing)")
        return cls(spacing, m[:3, 3], linear / spacing)

    # --- points ---------------------------------------------------------------------------------
    def index_to_lps(self, ijk) -> np.ndarray:
        """(..., 3) continuous (i, j, k) indices -> (..., 3) LPS points in mm."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ (self.direction_lps @ np.diag(self.spacing_mm)).T + self.origin_lps

    def index_to_ras(self, ijk) -> np.ndarray:
        return self.index_to_lps(ijk) * np.array([-1.0, -1.0, 1.0])

    def centre_ras(self, shape_kji) -> np.ndarray:
        """RAS position of the centre of a ``shape_kji`` voxel grid (midway between the first and last voxel)."""
        k, j, i = shape_kji
        return self.index_to_ras([(i - 1) / 2, (j - 1) / 2, (k - 1) / 2])

    def lps_to_index(self, points_lps) -> np.ndarray:
        """(..., 3) LPS points -> continuous (i, j, k) indices."""
        inv = np.linalg.inv(self.direction_lps @ np.diag(self.spacing_mm))
        return (np.asarray(points_lps, dtype=np.float64) - self.origin_lps) @ inv.T

    # --- SimpleITK ------------------------------------------------------------------------------
    @classmethod
    def from_sitk(cls, image) -> "Geometry":
        if image.GetDimension() != 3:
            raise MedAIInputError(f"expected a 3D image, got {image.GetDimension()}D")
        return cls(image.GetSpacing(), image.GetOrigin(), np.reshape(image.GetDirection(), (3, 3)))

    def apply_to_sitk(self, image) -> None:
        image.SetSpacing(tuple(float(s) for s in self.spacing_mm))
        image.SetOrigin(tuple(float(o) for o in self.origin_lps))
        image.SetDirection(tuple(float(d) for d in self.direction_lps.ravel()))

    def to_dict(self) -> dict:
        return {
            "spacing_mm": [round(float(v), 6) for v in self.spacing_mm],
            "origin_lps": [round(float(v), 6) for v in self.origin_lps],
            "direction_lps": [[round(float(v), 6) for v in row] for row in self.direction_lps],
        }

    def allclose(self, other: "Geometry", atol_mm: float = 1e-4) -> bool:
        return bool(
            np.allclose(self.spacing_mm, other.spacing_mm, atol=atol_mm)
            and np.allclose(self.origin_lps, other.origin_lps, atol=atol_mm)
            and np.allclose(self.direction_lps, other.direction_lps, atol=1e-6)
        )
