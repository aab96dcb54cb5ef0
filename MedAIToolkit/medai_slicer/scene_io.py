"""Save a MRML scene and its data without the Slicer application (storage nodes write the files)."""
from __future__ import annotations

import os

STORAGE_SUFFIX = {
    "vtkMRMLSegmentationNode": ".seg.nrrd",
    "vtkMRMLLabelMapVolumeNode": ".nrrd",
    "vtkMRMLScalarVolumeNode": ".nrrd",
    "vtkMRMLLinearTransformNode": ".h5",
    "vtkMRMLModelNode": ".vtk",
    "vtkMRMLTableNode": ".tsv",
}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def save_scene(scene, folder: str, name: str = "scene") -> str:
    """Write every storable node to ``folder`` and the scene to ``folder/name.mrml``; returns its path."""
    os.makedirs(folder, exist_ok=True)
    for node_class, suffix in STORAGE_SUFFIX.items():
        nodes = scene.GetNodesByClass(node_class)
        for index in range(nodes.GetNumberOfItems()):
            node = nodes.GetItemAsObject(index)
            if node.GetClassName() != node_class or node.GetHideFromEditors():
                continue
            if node.GetStorageNode() is None:
                node.AddDefaultStorageNode()
            storage = node.GetStorageNode()
            if storage is None:
                continue
            path = os.path.join(folder, _safe(node.GetName()) + suffix)
            storage.SetFileName(path)
            if hasattr(storage, "SetUseCompression"):
                storage.SetUseCompression(1)
            if not storage.WriteData(node):
                raise OSError(f"could not write node '{node.GetName()}' to {path}")
    scene_path = os.path.join(folder, f"{_safe(name)}.mrml")
    scene.SetRootDirectory(folder)
    scene.SetURL(scene_path)
    if not scene.Commit(scene_path):
        raise OSError(f"could not write scene {scene_path}")
    return scene_path
