"""MedAISegmentation: MONAI U-Nets -> a segmentation node with named, coloured segments.

Console use::

    logic = MedAISegmentationLogic()
    volume = logic.loadVolume("/path/to/dicom/folder")
    seg = logic.importLabelmap("/path/to/labels.nii.gz", {1: ("liver", (0.86, 0.55, 0.45))}, volume)
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
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode

#
# MedAISegmentation
#


class MedAISegmentation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedAI Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "MedAI")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedAIToolkit developers"]
        self.parent.helpText = _(
            "Automatic segmentation with MONAI U-Nets trained by MedAIToolkit's own scripts: the result is a "
            "NEW segmentation node with named, coloured segments on the input volume's geometry."
        )
        self.parent.acknowledgementText = _("Built on MONAI and 3D Slicer.")


#
# MedAISegmentationParameterNode
#


@parameterNodeWrapper
class MedAISegmentationParameterNode:
    """GUI state: input volume and the segmentation produced from it."""

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    task: str = "em-membranes"
    device: str = "cpu"
    secondContrastVolume: vtkMRMLScalarVolumeNode  # multi-channel tasks (brain-tumor: T1prereg)
    thirdContrastVolume: vtkMRMLScalarVolumeNode  # (brain-tumor: FLAIRreg)


#
# MedAISegmentationWidget
#


class MedAISegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedAISegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedAISegmentationLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.importLabelmapButton.connect("clicked(bool)", self.onImportLabelmap)
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
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[MedAISegmentationParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    def onImportLabelmap(self) -> None:
        path = self.ui.labelmapPathLineEdit.currentPath
        with slicer.util.tryWithErrorDisplay(_("Failed to import the label map."), waitCursor=True):
            self._parameterNode.outputSegmentation = self.logic.importLabelmap(
                path, labels=None, referenceVolume=self._parameterNode.inputVolume)


    def onApply(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Segmentation failed."), waitCursor=True):
            dialog = slicer.util.createProgressDialog(labelText=_("Segmenting..."), maximum=100)

            def onProgress(fraction):
                dialog.setValue(int(100 * fraction))
                slicer.app.processEvents()
                if dialog.wasCanceled:
                    raise RuntimeError(_("Segmentation cancelled; no node was created."))

            try:
                channels = [v for v in (p.secondContrastVolume, p.thirdContrastVolume) if v is not None]
                p.outputSegmentation = self.logic.segment(p.inputVolume, p.task, p.device, progress=onProgress,
                                                          channelVolumes=channels or None)
                self.logic.showResult(p.inputVolume, p.outputSegmentation)
            finally:
                dialog.close()


#
# MedAISegmentationLogic
#


class MedAISegmentationLogic(ScriptedLoadableModuleLogic):
    """MRML nodes in, NEW MRML nodes out; all computation in the ``medai`` engine."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return MedAISegmentationParameterNode(super().getParameterNode())

    def loadVolume(self, path: str, name: Optional[str] = None, seriesUID: Optional[str] = None):
        """DICOM series folder or volume file -> NEW scalar volume node."""
        from medai_slicer import load_volume_node

        return load_volume_node(slicer.mrmlScene, path, name=name, series_uid=seriesUID)

    def segment(self, inputVolume, task: str = "em-membranes", device: str = "cpu", name: Optional[str] = None,
                modelsFolder: Optional[str] = None, progress=None, channelVolumes=None):
        """Run a shipped task model on ``inputVolume`` -> NEW segmentation node on the input's geometry.

        The input node is never modified. Raises MedAIInputError / MedAIModelError naming the problem
        (wrong dimensionality, empty image, unknown task, missing or corrupted model file).
        ``progress(fraction)`` is called during slice-wise 3D inference. Multi-channel tasks (brain-tumor:
        T1post, T1prereg, FLAIRreg) take ``inputVolume`` as the first channel and ``channelVolumes`` as the others.
        """
        import numpy as np
        from medai.errors import MedAIInputError
        from medai.io import Volume
        from medai.segmentation.inference import Segmenter
        from medai.segmentation.registry import get_task
        from medai_slicer import labelmap_to_segmentation, node_to_volume

        spec = get_task(task)
        if inputVolume is None:
            raise MedAIInputError("no input volume selected")
        volume = node_to_volume(inputVolume)
        image = volume.array
        if spec.spatial_dims == 2 and not spec.slice_wise:
            if image.shape[0] != 1:
                raise MedAIInputError(f"task '{task}' segments 2D images; '{inputVolume.GetName()}' has "
                                      f"{image.shape[0]} slices")
            image = image[0]
        segmenter = Segmenter(spec, device=device, models_folder=modelsFolder)
        if spec.slice_wise:
            volumes = [volume] + [node_to_volume(node) for node in (channelVolumes or [])]
            classes = segmenter.segment_volume(volumes, progress=progress)
        else:
            classes = segmenter(image)
        labelmap = Volume(classes.reshape(volume.array.shape), volume.geometry)
        node = labelmap_to_segmentation(slicer.mrmlScene, labelmap, spec.labels,
                                        name or f"{inputVolume.GetName()} {task}", reference_node=inputVolume)
        node.SetAttribute("MedAI.task", task)
        logging.info(f"Segmented '{inputVolume.GetName()}' with {task}: {np.bincount(classes.ravel()).tolist()} px")
        return node

    def showResult(self, inputVolume, segmentationNode) -> None:
        """The input in the slice views with the segments outlined over it; for a 3D input, the segments' surfaces
        in the 3D view too (no-op without views, e.g. headless)."""
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return
        slicer.util.setSliceViewerLayers(background=inputVolume, fit=True)
        dims = inputVolume.GetImageData().GetDimensions() if inputVolume.GetImageData() else (0, 0, 0)
        if min(dims) > 1:
            segmentationNode.CreateClosedSurfaceRepresentation()
            segmentationNode.GetDisplayNode().SetVisibility3D(True)
            if layoutManager.threeDViewCount > 0:
                layoutManager.threeDWidget(0).threeDView().resetFocalPoint()

    def importLabelmap(self, path: str, labels: Optional[dict] = None, referenceVolume=None, name: Optional[str] = None):
        """Label map file/DICOM series -> NEW segmentation node with named, coloured segments.

        ``labels`` maps label value -> (name, (r, g, b)); by default every non-zero value becomes
        "Segment <value>" with a distinct colour.
        """
        import numpy as np
        from medai.io import read_volume
        from medai.segmentation.labels import default_labels
        from medai_slicer import labelmap_to_segmentation

        labelmap = read_volume(path)
        if labels is None:
            labels = default_labels(np.unique(labelmap.array))
        node = labelmap_to_segmentation(slicer.mrmlScene, labelmap, labels,
                                        name or f"{os.path.basename(os.path.normpath(path))} segmentation",
                                        reference_node=referenceVolume)
        logging.info(f"Imported {len(labels)} label(s) from {path} into '{node.GetName()}'")
        return node


#
# MedAISegmentationTest
#


class MedAISegmentationTest(ScriptedLoadableModuleTest):
    """Builds its own data: a label map with two labels, round-tripped through a segmentation node."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_labelmap_round_trip()

    def test_labelmap_round_trip(self):
        import tempfile

        import numpy as np
        import SimpleITK as sitk
        from medai.geometry import Geometry
        from medai_slicer import segmentation_to_labelmap

        self.delayDisplay("Writing a synthetic label map")
        labels = np.zeros((10, 12, 14), np.uint8)
        labels[2:6, 3:9, 4:10] = 1
        labels[6:9, 1:4, 2:5] = 7
        image = sitk.GetImageFromArray(labels)
        image.SetSpacing((0.5, 0.6, 3.0))
        image.SetOrigin((5.0, -7.0, 11.0))
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "labels.nii.gz")
            sitk.WriteImage(image, path)
            segNode = MedAISegmentationLogic().importLabelmap(
                path, {1: ("liver", (0.9, 0.5, 0.4)), 7: ("tumour", (0.2, 0.8, 0.2))})

        segmentation = segNode.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 2)
        self.assertEqual(segmentation.GetSegment("tumour").GetName(), "tumour")
        np.testing.assert_allclose(segmentation.GetSegment("liver").GetColor(), (0.9, 0.5, 0.4), atol=1e-6)
        back = segmentation_to_labelmap(slicer.mrmlScene, segNode, Geometry.from_sitk(image), labels.shape)
        np.testing.assert_array_equal(back, labels)
        self.delayDisplay("Test passed")
