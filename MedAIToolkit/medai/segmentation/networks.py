"""MONAI networks for the segmentation tasks."""
from __future__ import annotations

from monai.networks.nets import UNet

from .registry import SegmentationTask


def build_network(task: SegmentationTask, dropout: float | None = None) -> UNet:
    """Residual U-Net with the task's channels/strides (MONAI's ``UNet``); ``dropout`` overrides the task's
    (training only: dropout has no weights, so the shipped model loads either way)."""
    net = task.network
    return UNet(spatial_dims=task.spatial_dims, in_channels=task.in_channels, out_channels=task.out_channels,
                channels=tuple(net["channels"]), strides=tuple(net["strides"]),
                num_res_units=net.get("num_res_units", 2),
                dropout=net.get("dropout", 0.0) if dropout is None else float(dropout))
