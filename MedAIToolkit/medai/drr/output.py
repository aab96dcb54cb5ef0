"""Write a rendered DRR as .npy (line integrals), .png (display image) or .dcm (DICOM XA with geometry)."""
from __future__ import annotations

import json
import os

import numpy as np

from ..errors import MedAIInputError
from .attenuation import to_display
from .geometry import CArmGeometry, Pose

OUTPUT_SUFFIXES = (".npy", ".png", ".dcm")


def save_drr(path: str, line_integrals, carm: CArmGeometry, pose: Pose, ras_to_carm: np.ndarray) -> None:
    """``.npy``: float32 line integrals (H, W); ``.png``: 16-bit display image (bright = attenuation);
    ``.dcm``: DICOM XA whose rescale gives the line integrals back, with ImagerPixelSpacing,
    DistanceSourceToDetector/Patient, positioner angles and the pose + 4x4 RAS->C-arm matrix (ImageComments)."""
    values = line_integrals.detach().cpu().numpy() if hasattr(line_integrals, "detach") else np.asarray(line_integrals)
    values = values.astype(np.float32)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise MedAIInputError(f"{path}: unsupported DRR output (use {', '.join(OUTPUT_SUFFIXES)})")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if suffix == ".npy":
        np.save(path, values)
    elif suffix == ".png":
        from PIL import Image

        Image.fromarray(np.round(to_display(values) * 65535).astype(np.uint16)).save(path)
    else:
        from ..io import write_xray_dicom

        comments = json.dumps({"medai_pose": pose.as_array().round(6).tolist(),
                               "ras_to_carm": np.round(ras_to_carm, 6).tolist(), "carm": carm.to_dict()})
        write_xray_dicom(path, values, (carm.row_spacing_mm, carm.col_spacing_mm), "XA",
                         carm.sdd_mm, carm.sid_mm, primary_angle_deg=-pose.rz, secondary_angle_deg=-pose.rx,
                         description="MedAI DRR (line integrals)", extra={"ImageComments": comments})
