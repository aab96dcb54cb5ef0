"""MedAIDiagnosis: chest X-ray classification with calibrated probabilities and an evidence heat map.

Console use::

    logic = MedAIDiagnosisLogic()
    xray = logic.loadXRay("/path/to/image.dcm")   # DICOM CR/DX or PNG/JPEG/TIFF
    result = logic.classify(xray, "pneumonia")    # or "covid"
    print(result.report)                          # result.table, result.heatmap: NEW nodes
"""
import logging
import os
from dataclasses import dataclass
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
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLTableNode

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
        self.parent.acknowledgementText = _("Sample X-rays: Kermany et al. 2018 (CC BY 4.0); ieee8023 COVID-19 image "
                                            "data collection, Cohen et al. 2020 (image licence CC BY 3.0).")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Register a bundled chest X-ray (grey JPEG, COVID-19, a held-out patient) with the Sample Data module."""
    from medai_slicer.sample_data import register_sample

    iconsPath = os.path.join(os.path.dirname(__file__), "Resources/Icons")
    register_sample("xray_covid", "MedAIChestXRayCOVID", os.path.join(iconsPath, "MedAIDiagnosis.png"), ".jpg")


#
# MedAIDiagnosisParameterNode
#


@parameterNodeWrapper
class MedAIDiagnosisParameterNode:
    """GUI state: the X-ray being read, the task, and the last result's nodes."""

    inputXRay: vtkMRMLScalarVolumeNode
    task: str = "pneumonia"
    device: str = "cpu"
    outputTable: vtkMRMLTableNode
    outputHeatmap: vtkMRMLScalarVolumeNode


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
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
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

    def onApply(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Classification failed."), waitCursor=True):
            result = self.logic.classify(p.inputXRay, p.task, p.device)
            p.outputTable, p.outputHeatmap = result.table, result.heatmap
            self.ui.reportTextEdit.setPlainText(result.report)
            self.logic.showHeatmap(p.inputXRay, result.heatmap)


#
# MedAIDiagnosisLogic
#


@dataclass
class DiagnosisResult:
    """What ``classify`` made: NEW nodes plus the numbers behind them."""

    prediction: str
    probabilities: dict
    table: object  # vtkMRMLTableNode
    heatmap: object  # vtkMRMLScalarVolumeNode (None when not asked for)
    reportNode: object  # vtkMRMLTextNode
    report: str
    caution: str = ""  # the model card's caution for this prediction (also in the report); '' when none


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

    def classify(self, inputXRay, task: str = "pneumonia", device: str = "cpu", heatmap: bool = True,
                 modelsFolder: Optional[str] = None) -> DiagnosisResult:
        """Classify a one-slice X-ray volume node with a shipped model (calibrated probabilities).

        Creates NEW nodes: a table (class, probability), the Grad-CAM heat map on the X-ray's grid, and a
        text report. The input node is never modified. Raises MedAIInputError / MedAIModelError naming the
        problem (a CT volume instead of an X-ray, an empty image, unknown task, missing/corrupted model).
        """
        import numpy as np
        from medai.diagnosis.batch import report_text
        from medai.diagnosis.inference import Classifier
        from medai.diagnosis.preprocess import check_xray_array
        from medai.errors import MedAIInputError
        from medai_slicer import node_to_volume
        from medai_slicer.diagnosis_nodes import add_heatmap_node, add_probability_table, add_report_node

        if inputXRay is None:
            raise MedAIInputError("no input X-ray selected")
        volume = node_to_volume(inputXRay)
        name = inputXRay.GetName()
        image = check_xray_array(volume.array, f"volume '{name}'")
        classifier = Classifier(task, device=device, models_folder=modelsFolder)
        probabilities = classifier.probabilities([image], [name])[0]
        k = int(np.argmax(probabilities))
        prediction = classifier.classes[k]
        scene = slicer.mrmlScene
        table = add_probability_table(scene, classifier.classes, probabilities, f"{name} {task} probabilities", prediction)
        heat_node = None
        if heatmap:
            heat = classifier.heatmap(image, k, name)
            heat_node = add_heatmap_node(scene, heat, volume, f"{name} {task} heat map ({prediction})")
        caution = classifier.caution(prediction)
        report = report_text(classifier.classes, probabilities, name, classifier.task.description, classifier.temperature,
                             caution)
        if inputXRay.GetAttribute("MedAI.warning"):
            report += f"\nInput: {inputXRay.GetAttribute('MedAI.warning')}"
        report_node = add_report_node(scene, report, f"{name} {task} report")
        logging.info(report)
        return DiagnosisResult(prediction, dict(zip(classifier.classes, map(float, probabilities))), table, heat_node,
                               report_node, report, caution)

    def showHeatmap(self, xrayNode, heatmapNode, opacity: float = 0.4) -> None:
        """X-ray in the background, heat map as a coloured foreground overlay in the slice views."""
        slicer.util.setSliceViewerLayers(background=xrayNode, foreground=heatmapNode, foregroundOpacity=opacity,
                                         fit=True)


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
        self.test_classify_makes_new_nodes()

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

    def test_classify_makes_new_nodes(self):
        import numpy as np

        from medai.samples import sample_path

        self.delayDisplay("Classifying a bundled chest X-ray")
        logic = MedAIDiagnosisLogic()
        xray = logic.loadXRay(str(sample_path("xray_pneumonia_1")))
        before = slicer.util.arrayFromVolume(xray).copy()
        result = logic.classify(xray, "pneumonia")
        self.assertEqual(result.table.GetNumberOfRows(), 2)
        self.assertAlmostEqual(sum(result.probabilities.values()), 1.0, places=5)
        heat = slicer.util.arrayFromVolume(result.heatmap)
        self.assertEqual(heat.shape, before.shape)
        self.assertTrue(0.0 <= heat.min() and heat.max() <= 1.0 and heat.max() > 0.5)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(xray), before)
        self.assertIn(result.prediction, result.report)
        self.delayDisplay("Test passed")
