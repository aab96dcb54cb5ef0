"""C-arm projective geometry and the 6-DOF pose of the CT relative to the C-arm.

C-arm frame (millimetres): origin at the isocentre; +z along the central ray (source -> detector);
+x along detector columns (increasing column index); +y along detector rows (increasing row index).
The source sits at (0, 0, -SID); the detector plane is z = SDD - SID. Pixel (row r, column c) centre lies at
x = (c - c0) * col_spacing, y = (r - r0) * row_spacing on that plane, (r0, c0) being the principal point.

Pose (see docs/pose_convention.md and its figure): ``p_carm = R_ap @ R(rx, ry, rz) @ (p_ras - centre_ras) + t``.
- ``centre_ras``: the CT volume's centre; at the zero pose it sits on the isocentre.
- ``R_ap``: the zero pose is an AP radiograph: central ray anterior -> posterior, detector columns run to the
  patient's left, rows run inferior (as a radiologist views an AP film, and as MedAI loads radiographs).
- ``R(rx, ry, rz) = Rz(rz) @ Ry(ry) @ Rx(rx)``, degrees, rotations of the patient about the RAS axes through
  the CT centre: rx about R-L (cranial/caudal tilt), ry about A-P (in-plane roll), rz about S-I (LAO/RAO).
- ``t = (tx, ty, tz)`` in C-arm millimetres: along detector columns, rows, and the central ray (depth).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import MedAIInputError

R_AP = np.array([[-1.0, 0.0, 0.0],   # C-arm x (columns) = patient left  = -R
                 [0.0, 0.0, -1.0],   # C-arm y (rows)    = inferior      = -S
                 [0.0, -1.0, 0.0]])  # C-arm z (ray)     = posterior     = -A
"""Rows are the C-arm axes expressed in RAS at the zero (AP) pose."""


@dataclass(frozen=True)
class CArmGeometry:
    """Intrinsics of a C-arm: distances (mm), detector size (pixels), pixel spacing (mm), principal point."""

    sdd_mm: float = 1020.0
    sid_mm: float = 765.0
    height: int = 256
    width: int = 256
    row_spacing_mm: float = 1.6
    col_spacing_mm: float = 1.6
    principal_row: float | None = None  # default: detector centre, (height - 1) / 2
    principal_col: float | None = None

    def __post_init__(self):
        values = [self.sdd_mm, self.sid_mm, self.row_spacing_mm, self.col_spacing_mm]
        if not np.all(np.isfinite(values)):
            raise MedAIInputError(f"C-arm geometry has NaN/infinite values: sdd={self.sdd_mm}, sid={self.sid_mm}, "
                                  f"spacing=({self.row_spacing_mm}, {self.col_spacing_mm})")
        if int(self.height) <= 0 or int(self.width) <= 0:
            raise MedAIInputError(f"detector of zero size: {self.height} x {self.width} pixels")
        if self.row_spacing_mm <= 0 or self.col_spacing_mm <= 0:
            raise MedAIInputError(f"detector pixel spacing must be positive, got ({self.row_spacing_mm}, {self.col_spacing_mm}) mm")
        if not 0 < self.sid_mm < self.sdd_mm:
            raise MedAIInputError(f"need 0 < source-isocentre ({self.sid_mm} mm) < source-detector ({self.sdd_mm} mm) distance")
        object.__setattr__(self, "height", int(self.height))
        object.__setattr__(self, "width", int(self.width))
        if self.principal_row is None:
            object.__setattr__(self, "principal_row", (self.height - 1) / 2.0)
        if self.principal_col is None:
            object.__setattr__(self, "principal_col", (self.width - 1) / 2.0)

    @classmethod
    def from_xray_meta(cls, meta: dict, height: int, width: int, default: "CArmGeometry | None" = None) -> "CArmGeometry":
        """Geometry from DICOM XA/RF tags kept by :func:`medai.io.read_xray` (missing tags -> ``default``)."""
        default = default or cls()
        spacing = meta.get("imager_pixel_spacing_mm") or (default.row_spacing_mm, default.col_spacing_mm)
        return cls(meta.get("distance_source_to_detector_mm") or default.sdd_mm,
                   meta.get("distance_source_to_patient_mm") or default.sid_mm,
                   height, width, float(spacing[0]), float(spacing[1]))

    def source_carm(self) -> np.ndarray:
        return np.array([0.0, 0.0, -self.sid_mm])

    def pixel_centres_carm(self) -> np.ndarray:
        """(H, W, 3) C-arm coordinates of every detector pixel centre."""
        rows = (np.arange(self.height) - self.principal_row) * self.row_spacing_mm
        cols = (np.arange(self.width) - self.principal_col) * self.col_spacing_mm
        points = np.empty((self.height, self.width, 3))
        points[..., 0] = cols[None, :]
        points[..., 1] = rows[:, None]
        points[..., 2] = self.sdd_mm - self.sid_mm
        return points

    def detector_ijk_to_carm(self) -> np.ndarray:
        """4x4 mapping detector (column i, row j, 0) to C-arm mm: a one-slice volume on the detector plane."""
        m = np.eye(4)
        m[0, 0], m[1, 1] = self.col_spacing_mm, self.row_spacing_mm
        m[:3, 3] = (-self.principal_col * self.col_spacing_mm, -self.principal_row * self.row_spacing_mm,
                    self.sdd_mm - self.sid_mm)
        return m

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("sdd_mm", "sid_mm", "height", "width", "row_spacing_mm",
                                               "col_spacing_mm", "principal_row", "principal_col")}


def rotation_matrix(rx_deg: float, ry_deg: float, rz_deg: float) -> np.ndarray:
    """Rz @ Ry @ Rx (degrees), right-handed rotations about the RAS x, y, z axes."""
    rx, ry, rz = np.deg2rad([rx_deg, ry_deg, rz_deg])
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


@dataclass(frozen=True)
class Pose:
    """6-DOF rigid pose: translations (mm, C-arm frame) and rotations (degrees, about the CT centre)."""

    tx: float = 0.0
    ty: float = 0.0
    tz: float = 0.0
    rx: float = 0.0
    ry: float = 0.0
    rz: float = 0.0

    def __post_init__(self):
        if not np.all(np.isfinite(self.as_array())):
            raise MedAIInputError(f"pose contains NaN or infinite values: {self.as_array().tolist()}")

    @classmethod
    def from_array(cls, values) -> "Pose":
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if values.shape != (6,):
            raise MedAIInputError(f"a pose has 6 values (tx ty tz rx ry rz), got {values.size}")
        return cls(*values.tolist())

    def as_array(self) -> np.ndarray:
        return np.array([self.tx, self.ty, self.tz, self.rx, self.ry, self.rz], dtype=np.float64)

    def matrix(self, centre_ras) -> np.ndarray:
        """4x4 rigid transform RAS (mm) -> C-arm (mm)."""
        rot = R_AP @ rotation_matrix(self.rx, self.ry, self.rz)
        m = np.eye(4)
        m[:3, :3] = rot
        m[:3, 3] = np.array([self.tx, self.ty, self.tz]) - rot @ np.asarray(centre_ras, dtype=np.float64)
        return m


def pose_from_positioner(primary_deg: float | None, secondary_deg: float | None) -> Pose:
    """Pose from DICOM PositionerPrimaryAngle (LAO+ / RAO-) and SecondaryAngle (CRA+ / CAU-).

    LAO rotates the source towards the patient's right-posterior (the detector to the left-anterior side),
    i.e. the patient rotates by -primary about S-I in the C-arm's view; cranial tilt rotates about R-L.
    """
    return Pose(rx=-(secondary_deg or 0.0), rz=-(primary_deg or 0.0))
