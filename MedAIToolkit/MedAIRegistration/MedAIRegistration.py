"""MedAIRegistration: 2D/3D fusion of a fluoroscopy frame with a pre-operative CT.

Widget -> Logic (MRML nodes <-> engine) -> ``medai`` engine. Console use::

    logic = slicer.util.getModuleLogic("MedAIRegistration")  # or MedAIRegistrationLogic()
    ct = logic.loadCT("/path/to/dicom/folder")
"""
import logging
import os
from typing import Annotated, Optional

import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.util import VTKObservationMixin
from slicer import vtkMRMLScalarVolumeNode

#
# MedAIRegistration
#


class MedAIRegistration(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedAI Registration")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "MedAI")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedAIToolkit developers"]
        self.parent.helpText = _(
            "2D/3D registration of an intra-operative X-ray frame with a CT: DICOM series to CT volume, "
            "digitally reconstructed radiographs for a C-arm pose, and an agent that moves the pose until "
            "the DRR matches the frame. Poses are CT-to-C-arm rigid transforms in RAS millimetres."
        )
        self.parent.acknowledgementText = _("Sample CT: 3D-IRCADb-01 (IRCAD), CC BY-NC-SA 4.0.")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Register the bundled, downsampled CT with the Sample Data module."""
    from medai_slicer.sample_data import register_sample

    iconsPath = os.path.join(os.path.dirname(__file__), "Resources/Icons")
    register_sample("ct_abdomen", "MedAIAbdomenCT", os.path.join(iconsPath, "MedAIRegistration.png"), ".nrrd")


#
# MedAIRegistrationParameterNode
#


@parameterNodeWrapper
class MedAIRegistrationParameterNode:
    """GUI state: the CT volume and the folder it was read from."""

    ctVolume: vtkMRMLScalarVolumeNode
    dicomFolder: str = ""
    tx: float = 0.0
    ty: float = 0.0
    tz: float = 0.0
    rx: Annotated[float, WithinRange(-180, 180)] = 0.0
    ry: Annotated[float, WithinRange(-180, 180)] = 0.0
    rz: Annotated[float, WithinRange(-180, 180)] = 0.0
    sddMm: Annotated[float, WithinRange(100, 3000)] = 1020.0
    sidMm: Annotated[float, WithinRange(50, 2900)] = 765.0
    detectorSize: Annotated[int, WithinRange(8, 2048)] = 256
    pixelSpacingMm: Annotated[float, WithinRange(0.05, 10)] = 1.6
    drrVolume: vtkMRMLScalarVolumeNode


#
# MedAIRegistrationWidget
#


class MedAIRegistrationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedAIRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedAIRegistrationLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.loadCTButton.connect("clicked(bool)", self.onLoadCT)
        self.ui.generateDRRButton.connect("clicked(bool)", self.onGenerateDRR)
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
        if not self._parameterNode.ctVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.ctVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[MedAIRegistrationParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    def onLoadCT(self) -> None:
        folder = self.ui.dicomFolderPathLineEdit.currentPath
        with slicer.util.tryWithErrorDisplay(_("Failed to load the CT."), waitCursor=True):
            self._parameterNode.ctVolume = self.logic.loadCT(folder)
            slicer.util.setSliceViewerLayers(background=self._parameterNode.ctVolume, fit=True)


    def onGenerateDRR(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to generate the DRR."), waitCursor=True):
            p.drrVolume = self.logic.generateDRR(
                p.ctVolume, (p.tx, p.ty, p.tz, p.rx, p.ry, p.rz),
                self.logic.cArmGeometry(p.sddMm, p.sidMm, p.detectorSize, p.pixelSpacingMm))
            slicer.util.setSliceViewerLayers(background=p.drrVolume, fit=True)


#
# MedAIRegistrationLogic
#


class MedAIRegistrationLogic(ScriptedLoadableModuleLogic):
    """MRML nodes in, NEW MRML nodes out; all computation in the ``medai`` engine."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return MedAIRegistrationParameterNode(super().getParameterNode())

    def loadCT(self, path: str, name: Optional[str] = None, seriesUID: Optional[str] = None):
        """DICOM series folder (or NIfTI/NRRD/MHA file) -> NEW scalar volume node at its physical place."""
        from medai_slicer import load_volume_node

        node = load_volume_node(slicer.mrmlScene, path, name=name, series_uid=seriesUID)
        logging.info(f"Loaded CT '{node.GetName()}' {node.GetImageData().GetDimensions()} from {path}")
        return node

    @staticmethod
    def cArmGeometry(sddMm: float = 1020.0, sidMm: float = 765.0, detectorSize: int = 256, pixelSpacingMm: float = 1.6):
        """Square-detector C-arm intrinsics (engine ``CArmGeometry``; use it directly for anything else)."""
        from medai.drr import CArmGeometry

        return CArmGeometry(sddMm, sidMm, detectorSize, detectorSize, pixelSpacingMm, pixelSpacingMm)

    def poseMatrix(self, ctVolumeNode, pose) -> "np.ndarray":
        """4x4 RAS -> C-arm matrix of ``pose`` (tx, ty, tz mm; rx, ry, rz deg about the CT centre)."""
        from medai.drr import Pose
        from medai.geometry import Geometry
        from medai_slicer import ijk_to_ras_of

        shape_kji = tuple(reversed(ctVolumeNode.GetImageData().GetDimensions()))
        centre = Geometry.from_ijk_to_ras(ijk_to_ras_of(ctVolumeNode)).centre_ras(shape_kji)
        return Pose.from_array(pose).matrix(centre)

    def generateDRR(self, ctVolumeNode, pose, carm=None, name: Optional[str] = None):
        """Render a DRR (line integrals) into a NEW one-slice volume node lying on the detector plane in RAS.

        Also creates a NEW linear transform node "<name> C-arm" holding the C-arm -> RAS matrix, referenced
        by the DRR node as "MedAI.CArmTransform". The CT node is not modified (its parent transform, if any,
        is not applied).
        """
        from medai.drr import Pose
        from medai_slicer import node_to_volume
        from medai_slicer.drr_nodes import add_drr_nodes

        if ctVolumeNode is None:
            raise ValueError("Generate DRR needs a CT volume node")
        drrNode, _ = add_drr_nodes(slicer.mrmlScene, node_to_volume(ctVolumeNode), carm or self.cArmGeometry(),
                                   Pose.from_array(pose), name or f"{ctVolumeNode.GetName()} DRR")
        return drrNode


#
# MedAIRegistrationTest
#


class MedAIRegistrationTest(ScriptedLoadableModuleTest):
    """Builds its own data: a small oblique CT written to disk, loaded through the Logic."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_loadCT_places_voxels_physically()
        self.setUp()
        self.test_generateDRR_lies_on_detector_plane()

    def test_loadCT_places_voxels_physically(self):
        import tempfile

        import numpy as np
        import SimpleITK as sitk

        self.delayDisplay("Writing a synthetic oblique CT")
        array = (np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8) - 100)
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((0.7, 0.8, 2.5))
        image.SetOrigin((-10.0, 20.0, 30.0))
        angle = np.deg2rad(15)
        rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
        image.SetDirection(rotation.ravel().tolist())
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "ct.nrrd")
            sitk.WriteImage(image, path)
            node = MedAIRegistrationLogic().loadCT(path)

        ijkToRAS = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(ijkToRAS)
        for ijk in [(0, 0, 0), (7, 6, 5), (3, 2, 1)]:
            ras = ijkToRAS.MultiplyPoint((*ijk, 1.0))[:3]
            lps = image.TransformIndexToPhysicalPoint(ijk)
            np.testing.assert_allclose(ras, (-lps[0], -lps[1], lps[2]), atol=1e-3)
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), array)
        self.delayDisplay("Test passed")

    def test_generateDRR_lies_on_detector_plane(self):
        import numpy as np
        from medai.geometry import Geometry
        from medai_slicer import ijk_to_ras_of, volume_to_node
        from medai.io import Volume

        self.delayDisplay("Rendering a DRR of a synthetic cube")
        hu = np.full((40, 40, 40), -1000, np.int16)
        hu[10:30, 10:30, 10:30] = 1000  # a 20 mm cube of mu = 2 * mu_water
        ct = volume_to_node(slicer.mrmlScene, Volume(hu, Geometry((1.0, 1.0, 1.0), (-20.0, -20.0, -20.0))), "cube")
        logic = MedAIRegistrationLogic()
        carm = logic.cArmGeometry(1000.0, 500.0, 64, 1.0)
        drr = logic.generateDRR(ct, (0, 0, 0, 0, 0, 30), carm)
        self.assertIsNot(drr, ct)
        image = slicer.util.arrayFromVolume(drr)[0]
        self.assertEqual(image.shape, (64, 64))
        self.assertGreater(image.max(), 0.5)
        # the DRR's voxels lie on the detector plane: distance SDD from the source, perpendicular to the beam
        carmToRAS = np.linalg.inv(logic.poseMatrix(ct, (0, 0, 0, 0, 0, 30)))
        source = carmToRAS @ [0, 0, -500.0, 1]
        ijkToRAS = ijk_to_ras_of(drr)
        centre = ijkToRAS @ [carm.principal_col, carm.principal_row, 0, 1]
        self.assertAlmostEqual(np.linalg.norm(centre[:3] - source[:3]), 1000.0, places=3)
        corner = ijkToRAS @ [0, 0, 0, 1]
        self.assertAlmostEqual(float(np.dot(corner[:3] - centre[:3], centre[:3] - source[:3])), 0.0, places=3)
        self.assertEqual(slicer.util.arrayFromVolume(ct).max(), 1000)  # input untouched
        self.delayDisplay("Test passed")
