"""DRRs as MRML nodes: a one-slice volume lying on the detector plane, and the C-arm transform."""
from __future__ import annotations

import numpy as np

from medai.drr import CArmGeometry, Pose, prepare_ct, render
from medai.geometry import Geometry
from medai.io import Volume

from .nodes import matrix_to_transform_node, volume_to_node


def add_drr_nodes(scene, ct: Volume, carm: CArmGeometry, pose: Pose, name: str):
    """Render a DRR of ``ct`` and add NEW nodes: (DRR volume node, C-arm -> RAS linear transform node).

    The DRR node's IJKToRAS is ``inverse(RAS->C-arm) @ detector_ijk_to_carm``: its voxels sit on the detector
    plane, so it appears where the detector is in the 3D view. It references the transform node as
    "MedAI.CArmTransform" and records the pose in the "MedAI.pose" attribute.
    """
    prepared = prepare_ct(ct)
    image = render(prepared, carm, pose)[0].numpy()
    carm_to_ras = np.linalg.inv(pose.matrix(prepared.centre_ras))
    geometry = Geometry.from_ijk_to_ras(carm_to_ras @ carm.detector_ijk_to_carm())
    drr_node = volume_to_node(scene, Volume(image[np.newaxis], geometry, {"modality": "DRR"}), name)
    transform_node = matrix_to_transform_node(scene, carm_to_ras, f"{name} C-arm")
    drr_node.SetAttribute("MedAI.pose", " ".join(f"{v:g}" for v in pose.as_array()))
    drr_node.SetNodeReferenceID("MedAI.CArmTransform", transform_node.GetID())
    return drr_node, transform_node
