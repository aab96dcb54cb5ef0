"""Diagnosis results as MRML nodes: a probability table, a heat-map volume overlay, a text report."""
from __future__ import annotations

import numpy as np
import vtk

from medai.io import Volume

from .nodes import volume_to_node

HEATMAP_COLOR_NODES = ("vtkMRMLColorTableNodeFileColdToHotRainbow.txt", "vtkMRMLColorTableNodeFileInferno.txt",
                       "vtkMRMLColorTableNodeRainbow")


def add_probability_table(scene, classes, probabilities, name: str, prediction: str):
    """NEW table node: one row per class (class, probability), rows in the task's class order."""
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    names, values = vtk.vtkStringArray(), vtk.vtkDoubleArray()
    names.SetName("class")
    values.SetName("probability")
    for cls, p in zip(classes, probabilities):
        names.InsertNextValue(str(cls))
        values.InsertNextValue(float(p))
    table.AddColumn(names)
    table.AddColumn(values)
    table.SetAttribute("MedAI.prediction", prediction)
    return table


def add_heatmap_node(scene, heat: np.ndarray, reference: Volume, name: str):
    """NEW scalar volume with the heat map (0-1) on the reference X-ray's exact grid, coloured, for an overlay."""
    node = volume_to_node(scene, Volume(heat.reshape(reference.array.shape).astype(np.float32), reference.geometry), name)
    display = node.GetDisplayNode()
    for color_id in HEATMAP_COLOR_NODES:
        if scene.GetNodeByID(color_id) is not None:
            display.SetAndObserveColorNodeID(color_id)
            break
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.SetLowerThreshold(0.2)  # cold areas transparent in the slice-view overlay
    display.SetUpperThreshold(1.0)
    display.SetApplyThreshold(1)
    node.SetAttribute("MedAI.kind", "heatmap")
    return node


def add_report_node(scene, text: str, name: str):
    node = scene.AddNewNodeByClass("vtkMRMLTextNode", scene.GenerateUniqueName(name))
    node.SetText(text)
    return node
