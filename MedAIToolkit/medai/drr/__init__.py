"""Digitally reconstructed radiographs: C-arm geometry, poses, HU -> attenuation, the renderer."""
from .attenuation import MU_WATER_PER_MM, hu_to_mu, to_display
from .geometry import R_AP, CArmGeometry, Pose, pose_from_positioner, rotation_matrix
from .renderer import PreparedCT, pose_matrices, prepare_ct, rays_in_index_space, render, render_matrix, render_rays

__all__ = [
    "MU_WATER_PER_MM", "R_AP", "CArmGeometry", "Pose", "PreparedCT", "hu_to_mu", "pose_from_positioner",
    "pose_matrices", "prepare_ct", "rays_in_index_space", "render", "render_matrix", "render_rays", "rotation_matrix", "to_display",
]
