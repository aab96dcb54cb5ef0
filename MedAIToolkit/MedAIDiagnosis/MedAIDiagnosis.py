"""MedAIDiagnosis: chest X-ray classification with calibrated probabilities and an evidence heat map.

Console use::

    logic = MedAIDiagnosisLogic()
    xray = logic.loadXRay("/path/to/image.dcm")   # DICOM CR/DX or PNG/JPEG/TIFF
"""
import logging
import os
from typing import Optional

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.util import VTKObservationMixin
from slicer import vtkMRMLScalarVolumeNode

#
# MedAIDiagnosis
#


class MedAIDiagnosis(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedAI Diagnosis")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "MedAI")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedAIToolkit developers"]
        self.parent.helpText = _(
            "Chest X-ray classification (normal / pneumonia; COVID / normal / other pneumonia) with calibrated "
            "probabilities and a heat map of where the evidence lies. Radiographs load as a coronal plane."
        )
        self.parent.acknowledgementText = _("Sample X-rays: Kermany et al. 2018 (CC BY 4.0).")


#
# MedAIDiagnosisParameterNode
#


@parameterNodeWrapper
class MedAIDiagnosisParameterNode:
    """GUI state: the X-ray being read."""

    inputXRay: vtkMRMLScalarVolumeNode


#
# MedAIDiagnosisWidget
#


class MedAIDiagnosisWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedAIDiagnosis.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedAIDiagnosisLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.loadXRayButton.connect("clicked(bool)", self.onLoadXRay)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode: Optional[MedAIDiagnosisParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    def onLoadXRay(self) -> None:
        path = self.ui.xrayPathLineEdit.currentPath
        with slicer.util.tryWithErrorDisplay(_("Failed to load the X-ray."), waitCursor=True):
            self._parameterNode.inputXRay = self.logic.loadXRay(path)
            slicer.util.setSliceViewerLayers(background=self._parameterNode.inputXRay, fit=True)


#
# MedAIDiagnosisLogic
#


class MedAIDiagnosisLogic(ScriptedLoadableModuleLogic):
    """MRML nodes in, NEW MRML nodes out; all computation in the ``medai`` engine."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return MedAIDiagnosisParameterNode(super().getParameterNode())

    def loadXRay(self, path: str, name: Optional[str] = None, frame: int = 0):
        """X-ray file -> NEW one-slice volume node (coronal plane, pixel spacing from DICOM when present)."""
        from medai_slicer import load_xray_node

        node = load_xray_node(slicer.mrmlScene, path, name=name, frame=frame)
        logging.info(f"Loaded X-ray '{node.GetName()}' from {path}")
        return node


#
# MedAIDiagnosisTest
#


class MedAIDiagnosisTest(ScriptedLoadableModuleTest):
    """Builds its own data: a 16-bit PNG radiograph loaded through the Logic."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_loadXRay_16bit()

    def test_loadXRay_16bit(self):
        import tempfile

        import numpy as np
        from PIL import Image

        self.delayDisplay("Writing a synthetic 16-bit radiograph")
        pixels = (np.arange(40 * 30, dtype=np.uint16).reshape(40, 30) * 50)
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "xray.png")
            Image.fromarray(pixels).save(path)
            node = MedAIDiagnosisLogic().loadXRay(path)
        array = slicer.util.arrayFromVolume(node)
        self.assertEqual(array.shape, (1, 40, 30))
        np.testing.assert_array_equal(array[0], pixels.astype(np.float32))
        self.assertEqual(node.GetAttribute("MedAI.kind"), "xray")
        self.delayDisplay("Test passed")
