"""MedAIRegistration: 2D/3D fusion of a fluoroscopy frame with a pre-operative CT.

Widget -> Logic (MRML nodes <-> engine) -> ``medai`` engine. Console use::

    logic = slicer.util.getModuleLogic("MedAIRegistration")  # or MedAIRegistrationLogic()
    ct = logic.loadCT("/path/to/dicom/folder")
    frame = logic.loadFrame("/path/to/frame.dcm")            # XA/RF DICOM: geometry and C-arm angles from tags
    result = logic.register(ct, frame, None)                  # None: initial view from the frame's C-arm angles
    print(result.confidence, result.lowConfidence)            # result.transformNode etc.: NEW nodes
"""
import logging
import os
from dataclasses import dataclass
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
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.util import VTKObservationMixin
from slicer import vtkMRMLLinearTransformNode, vtkMRMLScalarVolumeNode, vtkMRMLTableNode

LOW_CONFIDENCE = 0.5
"""Below this estimated probability of an error within 2 mm a result is flagged (``lowConfidence``)."""

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
    """GUI state: the CT and the folder it was read from, the DRR pose and C-arm, the registration inputs
    (frame, initial pose = the pose fields, or C-arm angles), and the last registration's nodes."""

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
    frameVolume: vtkMRMLScalarVolumeNode
    framePath: str = ""
    initFromAngles: bool = False
    primaryAngle: Annotated[float, WithinRange(-180, 180)] = 0.0
    secondaryAngle: Annotated[float, WithinRange(-90, 90)] = 0.0
    geometryFromFields: bool = False
    mode: Annotated[str, Choice(["2d3d", "2d2d"])] = "2d3d"
    refine: bool = True
    invertFrame: bool = False
    linearFrame: bool = False
    maxSteps: Annotated[int, WithinRange(0, 500)] = 0
    agentPath: str = ""
    registrationTransform: vtkMRMLLinearTransformNode
    registrationTable: vtkMRMLTableNode
    registeredDRR: vtkMRMLScalarVolumeNode


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
        self._cancelRequested = False

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
        self.ui.loadFrameButton.connect("clicked(bool)", self.onLoadFrame)
        self.ui.frameVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onFrameChanged)
        self.ui.registerButton.connect("clicked(bool)", self.onRegister)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.cancelButton.enabled = False
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.logic.setFusionLayout()

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
            # path edits are synced by hand: the wrapper binds ctkPathLineEdit to pathlib.Path only, not str
            for edit, name in self.PATH_EDITS:
                getattr(self.ui, edit).currentPath = getattr(self._parameterNode, name)

    PATH_EDITS = (("dicomFolderPathLineEdit", "dicomFolder"), ("framePathLineEdit", "framePath"),
                  ("agentPathLineEdit", "agentPath"))

    def storePaths(self) -> None:
        for edit, name in self.PATH_EDITS:
            setattr(self._parameterNode, name, getattr(self.ui, edit).currentPath)

    def onLoadCT(self) -> None:
        self.storePaths()
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

    def onLoadFrame(self) -> None:
        self.storePaths()
        path = self.ui.framePathLineEdit.currentPath
        with slicer.util.tryWithErrorDisplay(_("Failed to load the frame."), waitCursor=True):
            self._parameterNode.frameVolume = self.logic.loadFrame(path)
            slicer.util.setSliceViewerLayers(background=self._parameterNode.frameVolume, fit=True)

    def onFrameChanged(self, node) -> None:
        """A frame with C-arm angles (DICOM positioner tags) proposes them as the initial view."""
        from medai_slicer.registration_nodes import frame_attribute

        if node is None or self._parameterNode is None:
            return
        primary = frame_attribute(node, "positioner_primary_angle_deg")
        secondary = frame_attribute(node, "positioner_secondary_angle_deg")
        if primary is not None or secondary is not None:
            self._parameterNode.primaryAngle = float(primary or 0.0)
            self._parameterNode.secondaryAngle = float(secondary or 0.0)
            self._parameterNode.initFromAngles = True

    def initialPose(self) -> tuple:
        """The pose fields; with "from C-arm angles", rx and rz come from the secondary and primary angles."""
        p = self._parameterNode
        if p.initFromAngles:
            return (p.tx, p.ty, p.tz, -p.secondaryAngle, p.ry, -p.primaryAngle)
        return (p.tx, p.ty, p.tz, p.rx, p.ry, p.rz)

    def frameGeometry(self):
        """C-arm geometry from the fields when asked for (the frame's own size), else None: the frame's own."""
        p = self._parameterNode
        if not p.geometryFromFields or p.frameVolume is None or p.frameVolume.GetImageData() is None:
            return None
        from medai.drr import CArmGeometry

        width, height, _ = p.frameVolume.GetImageData().GetDimensions()
        return CArmGeometry(p.sddMm, p.sidMm, height, width, p.pixelSpacingMm, p.pixelSpacingMm)

    def onCancel(self) -> None:
        self._cancelRequested = True

    def onRegister(self) -> None:
        p = self._parameterNode
        self.storePaths()
        self._cancelRequested = False
        self.ui.registerButton.enabled = False
        self.ui.cancelButton.enabled = True
        self.ui.registrationProgressBar.value = 0
        self.ui.resultLabel.text = ""

        def onProgress(fraction, text):
            self.ui.registrationProgressBar.value = int(100 * fraction)
            self.ui.resultLabel.text = text
            slicer.app.processEvents()

        def cancel():
            slicer.app.processEvents()
            return self._cancelRequested

        try:
            with slicer.util.tryWithErrorDisplay(_("Registration failed."), waitCursor=True):
                result = self.logic.register(
                    p.ctVolume, p.frameVolume, self.initialPose(), carm=self.frameGeometry(), mode=p.mode,
                    refine=p.refine, agentPath=p.agentPath or None, progressCallback=onProgress, cancel=cancel,
                    maxSteps=p.maxSteps or None, invert=p.invertFrame, linear=p.linearFrame)
                if result.cancelled:
                    self.ui.resultLabel.text = _("Registration cancelled; no node was created.")
                    return
                p.registrationTransform, p.registrationTable = result.transformNode, result.tableNode
                p.registeredDRR = result.drrNode
                self.logic.addOverlay(result.frameNode, result.drrNode, "checkerboard")
                self.ui.resultLabel.text = result.summary
                if result.lowConfidence:
                    slicer.util.warningDisplay(
                        _("Low confidence ({confidence:.0%} estimated probability of an error within 2 mm): the "
                          "fusion may be wrong. Check the DRR overlay against the frame before relying on it, or "
                          "register again from a closer initial pose.").format(confidence=result.confidence),
                        windowTitle=_("MedAI Registration"))
        finally:
            self.ui.registerButton.enabled = True
            self.ui.cancelButton.enabled = False


#
# MedAIRegistrationLogic
#


@dataclass
class RegistrationOutcome:
    """What ``register`` made: NEW nodes (None when cancelled) and the engine's result behind them."""

    transformNode: object  # vtkMRMLLinearTransformNode: inverse(M_init) @ M_result, observed by the CT
    frameNode: object  # vtkMRMLScalarVolumeNode: the frame on the detector plane of the initial C-arm placement
    drrNode: object  # vtkMRMLScalarVolumeNode: DRR at the registered pose, same grid as frameNode
    tableNode: object  # vtkMRMLTableNode: the agent's trajectory (step, action, similarity, stage)
    result: object  # medai.registration.RegistrationResult
    confidence: float
    lowConfidence: bool
    cancelled: bool = False

    @property
    def summary(self) -> str:
        r = self.result
        started = {"initial pose": " from the initial pose (refining the agent's result matched worse)",
                   "depth restart": " from a start moved along the beam (it matched better)"}
        refined = (", refined" + started.get(r.refined_from, "")) if r.refined else ""
        text = (f"{r.steps} agent steps ({r.stop_reason}){refined} in {r.seconds:.1f} s; "
                f"similarity {r.similarity:.3f}; confidence {self.confidence:.0%} (estimated probability of an "
                f"error within 2 mm)"
                + (f"; uncertainty {r.uncertainty_mm:.1f} mm (RMS over the body, from the image match's curvature)"
                   if r.uncertainty_mm is not None else ""))
        return ("LOW CONFIDENCE: " + text) if self.lowConfidence else text


class MedAIRegistrationLogic(ScriptedLoadableModuleLogic):
    """MRML nodes in, NEW MRML nodes out; all computation in the ``medai`` engine."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._agents = {}  # agent key -> Agent
        self._registrars = {}  # (CT node ID, agent key) -> (CT stamp, Registrar); preparing a CT takes seconds

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
        by the DRR node as "MedAI.CArmTransform" (its "MedAI.ras_to_carm" attribute: the pose matrix). The DRR
        node keeps the C-arm geometry in "MedAI.carm", so it can serve as a frame for ``register``. The CT node
        is not modified (its parent transform, if any, is not applied).
        """
        from medai.drr import Pose
        from medai_slicer import node_to_volume
        from medai_slicer.drr_nodes import add_drr_nodes
        from medai_slicer.registration_nodes import format_numbers, set_frame_geometry

        if ctVolumeNode is None:
            raise ValueError("Generate DRR needs a CT volume node")
        carm = carm or self.cArmGeometry()
        pose = Pose.from_array(pose)
        volume = node_to_volume(ctVolumeNode)
        drrNode, carmNode = add_drr_nodes(slicer.mrmlScene, volume, carm, pose, name or f"{ctVolumeNode.GetName()} DRR")
        set_frame_geometry(drrNode, carm)  # lets the DRR serve as a frame to register
        rasToCArm = format_numbers(pose.matrix(volume.geometry.centre_ras(volume.array.shape)))
        carmNode.SetAttribute("MedAI.ras_to_carm", rasToCArm)
        drrNode.SetAttribute("MedAI.detector_ras_to_carm", rasToCArm)  # lies on this C-arm's detector plane
        return drrNode

    def loadFrame(self, path: str, name: Optional[str] = None, pixelSpacingMm=None, sddMm: Optional[float] = None,
                  sidMm: Optional[float] = None, invert: bool = False, linear: bool = False):
        """Fluoroscopy frame (.dcm XA/RF/DX, .png/.jpg, .npy) -> NEW one-slice volume node, bright = attenuating,
        carrying its C-arm geometry (DICOM tags, or the arguments) and C-arm angles for ``register``. ``invert``: a
        display image with bone dark; ``linear``: raw detector values (read through their log)."""
        from medai.registration import load_frame
        from medai_slicer.loading import _default_name
        from medai_slicer.registration_nodes import add_frame_node

        frame = load_frame(path, pixel_spacing=pixelSpacingMm, sdd_mm=sddMm, sid_mm=sidMm, invert=invert,
                           linear=linear)
        node = add_frame_node(slicer.mrmlScene, frame, name or _default_name(path), path)
        logging.info(f"Loaded frame '{node.GetName()}' {frame.image.shape} from {path}")
        return node

    def frameGeometry(self, frameVolumeNode, carm=None):
        """C-arm geometry of a frame node: ``carm`` if given, else its own (Generate DRR / loadFrame / DICOM
        attributes); raises MedAIInputError (a ValueError) naming what is missing."""
        from medai.errors import MedAIInputError
        from medai_slicer.registration_nodes import frame_geometry

        if carm is not None:
            return carm
        found, missing = frame_geometry(frameVolumeNode)
        if found is None:
            raise MedAIInputError(f"frame '{frameVolumeNode.GetName()}' has no C-arm geometry: missing "
                                  f"{', '.join(missing)}. Give carm=CArmGeometry(...), load the frame with "
                                  f"loadFrame, or use a DRR made by Generate DRR")
        return found

    def _agent(self, agentPath):
        """(cache key, Agent): ``agentPath`` or the shipped agent, loaded again when its file changes."""
        from medai.models import models_dir
        from medai.registration import Agent
        from medai.registration.agent import SHIPPED_AGENT

        key = os.path.abspath(agentPath) if agentPath else "shipped"
        path = key if agentPath else os.path.join(models_dir(), f"{SHIPPED_AGENT}.pt")
        stamp = os.path.getmtime(path) if os.path.exists(path) else None
        cached = self._agents.get(key)
        if cached is None or cached[0] != stamp:
            self._agents[key] = (stamp, Agent.load(key if agentPath else None))
        return key, self._agents[key][1]

    def _registrar(self, ctVolumeNode, agentKey, agent):
        from medai.registration import Registrar
        from medai_slicer import ijk_to_ras_of, node_to_volume

        image = ctVolumeNode.GetImageData()
        stamp = (image.GetMTime() if image is not None else None, tuple(ijk_to_ras_of(ctVolumeNode).ravel()), id(agent))
        key = (ctVolumeNode.GetID(), agentKey)
        cached = self._registrars.get(key)
        if cached is None or cached[0] != stamp:
            self._registrars.pop(key, None)
            registrar = Registrar(node_to_volume(ctVolumeNode), agent)
            while len(self._registrars) >= 2:  # prepared CTs are large: keep the last two
                self._registrars.pop(next(iter(self._registrars)))
            self._registrars[key] = (stamp, registrar)
        return self._registrars[key][1]

    def _initialPose(self, initialPose, frameVolumeNode, centre):
        from medai.drr import Pose
        from medai.registration import RigidPose
        from medai_slicer import transform_node_to_matrix
        from medai_slicer.registration_nodes import positioner_pose, stored_ras_to_carm

        if initialPose is None:
            return positioner_pose(frameVolumeNode) or Pose()
        if isinstance(initialPose, Pose):
            return initialPose
        if hasattr(initialPose, "GetMatrixTransformToParent"):
            matrix = stored_ras_to_carm(initialPose)
            if matrix is None:
                matrix = transform_node_to_matrix(initialPose)
            return RigidPose.from_matrix(matrix, centre).to_pose()
        return Pose.from_array(initialPose)

    def register(self, ctVolumeNode, frameVolumeNode, initialPose=None, carm=None, mode: str = "2d3d",
                 refine: bool = True, agentPath: Optional[str] = None, progressCallback=None, cancel=None,
                 maxSteps: Optional[int] = None, invert: bool = False, show: bool = True,
                 greedy: bool = False, linear: bool = False) -> RegistrationOutcome:
        """Register a one-slice fluoroscopy frame node to a CT node: the agent, then (``refine``) refinement.

        ``initialPose``: 6 numbers (tx ty tz rx ry rz, docs/pose_convention.md), a linear transform node holding
        a RAS -> C-arm matrix (its "MedAI.ras_to_carm" attribute when it has one, as Generate DRR's C-arm and
        earlier registration transforms do), or None: the frame's C-arm angles (DICOM positioner attributes),
        else the zero (AP) pose. ``carm``: the frame's ``CArmGeometry``, else read from the frame node.
        ``progressCallback(fraction, text)``; ``cancel()`` -> True stops (then no node is created).
        ``maxSteps``: agent step budget (None: the agent's own). ``invert``: the frame is a display image bright = air;
        ``linear``: the frame holds raw detector values, proportional to the detected intensity (read through their log).
        ``greedy``: the agent's best action at every step, without checking that the match improves.

        Creates NEW nodes: transform "<CT> registration" (= inverse(M_init) @ M_result, which the CT is set to
        observe: its only change), "<frame> on detector" (the frame on the detector plane of the C-arm at the
        initial pose), "<CT> registered DRR" (DRR at the result, same IJKToRAS, overlaid in the slice views) and
        table "<CT> registration trajectory". Errors (no agent file, no geometry, ...) leave the scene unchanged.
        """
        import numpy as np
        import torch
        from medai.drr import render_matrix
        from medai.errors import MedAIInputError
        from medai.registration import frame_from_array
        from medai_slicer.registration_nodes import (add_detector_node, add_registration_transform,
                                                     add_trajectory_table, format_numbers, frame_meta)

        if ctVolumeNode is None or frameVolumeNode is None:
            raise MedAIInputError("registration needs a CT volume node and a frame volume node")
        if frameVolumeNode is ctVolumeNode:
            raise MedAIInputError("the frame and the CT are the same node")
        image = frameVolumeNode.GetImageData()
        if image is None or image.GetNumberOfPoints() == 0:
            raise MedAIInputError(f"frame '{frameVolumeNode.GetName()}' has no image data")
        if image.GetDimensions()[2] != 1:
            raise MedAIInputError(f"frame '{frameVolumeNode.GetName()}' has {image.GetDimensions()[2]} slices; "
                                  f"a fluoroscopy frame is a one-slice volume")
        carm = self.frameGeometry(frameVolumeNode, carm)
        progress = progressCallback or (lambda fraction, text: None)
        stopped = []

        def cancelled():
            if cancel is not None and not stopped and cancel():
                stopped.append(True)
            return bool(stopped)

        pixels = slicer.util.arrayFromVolume(frameVolumeNode)[0]
        frame = frame_from_array(pixels, carm, frame_meta(frameVolumeNode), invert, source=frameVolumeNode.GetName(),
                                 linear=linear)
        progress(0.0, _("Preparing the CT..."))
        agentKey, agent = self._agent(agentPath)
        registrar = self._registrar(ctVolumeNode, agentKey, agent)
        pose = self._initialPose(initialPose, frameVolumeNode, registrar.centre_ras)

        def onStep(step, total):
            progress(0.05 + 0.6 * (step + 1) / max(total, 1), _("Agent step {step} of at most {total}").format(
                step=step + 1, total=total))

        progress(0.05, _("Agent..."))
        result = registrar.register(frame, pose, mode, refine, maxSteps, cancelled, onStep,
                                    checked=False if greedy else None)
        if stopped:
            progress(1.0, _("Cancelled"))
            logging.info("Registration cancelled; no node was created")
            return RegistrationOutcome(None, None, None, None, result, result.confidence,
                                       result.confidence < LOW_CONFIDENCE, cancelled=True)

        progress(0.9, _("Creating the result nodes..."))
        scene = slicer.mrmlScene
        ctName, frameName = ctVolumeNode.GetName(), frameVolumeNode.GetName()
        initMatrix = pose.matrix(registrar.centre_ras)
        with torch.inference_mode():
            drrImage = render_matrix(registrar.cts[min(registrar.cts)], carm, result.matrix).cpu().numpy()
        created = []
        try:
            transformNode = add_registration_transform(scene, initMatrix, result, f"{ctName} registration")
            created.append(transformNode)
            frameNode = add_detector_node(scene, pixels, carm, initMatrix, f"{frameName} on detector")
            created.append(frameNode)
            drrNode = add_detector_node(scene, drrImage.astype(np.float32), carm, initMatrix, f"{ctName} registered DRR")
            created.append(drrNode)
            drrNode.SetAttribute("MedAI.modality", "DRR")
            drrNode.SetAttribute("MedAI.pose", format_numbers(result.pose.as_array()))
            tableNode = add_trajectory_table(scene, result.trajectory, f"{ctName} registration trajectory")
            created.append(tableNode)
            for role, node in (("frame", frameNode), ("DRR", drrNode), ("trajectory", tableNode)):
                transformNode.SetNodeReferenceID(f"MedAI.{role}", node.GetID())
            ctVolumeNode.SetAndObserveTransformNodeID(transformNode.GetID())
        except Exception:
            for node in created:
                scene.RemoveNode(node)
            raise
        outcome = RegistrationOutcome(transformNode, frameNode, drrNode, tableNode, result, result.confidence,
                                      result.confidence < LOW_CONFIDENCE)
        if show:
            self.showFusion(frameNode, drrNode)
            if slicer.app.layoutManager() is not None:  # desktop: the 3D fusion view too, without extra clicks
                self.showFusion3D(ctVolumeNode, frameNode, transformNode)
        progress(1.0, outcome.summary)
        logging.info(f"Registered '{frameName}' to '{ctName}': {outcome.summary}")
        return outcome

    def showFusion(self, frameNode, drrNode, opacity: float = 0.5) -> None:
        """Frame in the background, registered DRR blended over it in the slice views (no-op without views)."""
        hasViews = slicer.app.layoutManager() is not None
        slicer.util.setSliceViewerLayers(background=frameNode, foreground=drrNode, foregroundOpacity=opacity,
                                         rotateToVolumePlane=hasViews, fit=hasViews)

    def showFusion3D(self, ctVolumeNode, frameNode, transformNode=None, segmentationNode=None,
                     preset: str = "bone"):
        """The 3D fusion view: the CT (volume rendering, ``segmentationNode``'s surfaces) under ``transformNode``
        (e.g. ``outcome.transformNode``), the frame on its detector plane, the X-ray source, central ray and beam.
        Returns a ``medai_slicer.registration_scene.FusionScene`` (``.only("ct", "frame")`` etc.). In desktop
        Slicer the first 3D view looks at it from beside the beam."""
        from medai_slicer.registration_scene import build_fusion_scene, oblique_camera

        scene = build_fusion_scene(ctVolumeNode, frameNode, transformNode, segmentationNode, preset)
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None and layoutManager.threeDViewCount > 0:
            view = oblique_camera(frameNode)
            camera = layoutManager.threeDWidget(0).threeDView().renderWindow().GetRenderers().GetFirstRenderer() \
                .GetActiveCamera()
            camera.SetPosition(*view["position"])
            camera.SetFocalPoint(*view["focal_point"])
            camera.SetViewUp(*view["view_up"])
            camera.SetViewAngle(view["view_angle_deg"])
        return scene

    def addOverlay(self, frameNode, drrNode, kind: str = "checkerboard", show: bool = True):
        """NEW RGB volume: the DRR over the frame as "blend", "checkerboard" or "edges" (DRR edges in green on the
        frame). ``show``: put it in the Yellow slice view (desktop layout of this module)."""
        from medai_slicer.registration_scene import add_overlay_node

        node = add_overlay_node(frameNode, drrNode, kind)
        layoutManager = slicer.app.layoutManager()
        if show and layoutManager is not None:
            composite = layoutManager.sliceWidget("Yellow").mrmlSliceCompositeNode()
            composite.SetBackgroundVolumeID(node.GetID())
            composite.SetForegroundVolumeID(None)
            layoutManager.sliceWidget("Yellow").mrmlSliceNode().RotateToVolumePlane(node)
            layoutManager.sliceWidget("Yellow").fitSliceToBackground()
        return node

    @staticmethod
    def setFusionLayout() -> None:
        """Desktop: switch to the module's layout (3D fusion view, frame + DRR, overlay); no-op without views."""
        from medai_slicer.registration_scene import FUSION_LAYOUT_ID, FUSION_LAYOUT_XML

        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return
        layoutNode = layoutManager.layoutLogic().GetLayoutNode()
        if not layoutNode.IsLayoutDescription(FUSION_LAYOUT_ID):
            layoutNode.AddLayoutDescription(FUSION_LAYOUT_ID, FUSION_LAYOUT_XML)
        layoutManager.setLayout(FUSION_LAYOUT_ID)


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
        self.setUp()
        self.test_register()

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

    def test_register(self):
        import tempfile

        import numpy as np
        from medai.geometry import Geometry
        from medai.io import Volume
        from medai.registration import Agent
        from medai_slicer import ijk_to_ras_of, transform_node_to_matrix, volume_to_node

        self.delayDisplay("Registering a DRR of a synthetic phantom from a shifted initial pose")
        k, j, i = np.mgrid[:40, :40, :40]
        hu = np.full((40, 40, 40), -1000, np.int16)
        hu[(i - 20) ** 2 + (j - 20) ** 2 < 17 ** 2] = 0  # a water cylinder along k
        hu[(i - 12) ** 2 + (j - 22) ** 2 + (k - 14) ** 2 < 25] = 1200  # asymmetric "bones"
        hu[(i - 26) ** 2 + (j - 15) ** 2 + (k - 26) ** 2 < 16] = 1500
        hu[5:35, 19:22, 24:27] = 800
        ct = volume_to_node(slicer.mrmlScene, Volume(hu, Geometry((4.0, 4.0, 4.0), (-78.0, -78.0, -78.0))), "phantom")
        before = slicer.util.arrayFromVolume(ct).copy()
        logic = MedAIRegistrationLogic()
        carm = logic.cArmGeometry(1000.0, 700.0, 96, 2.4)
        truth = (0.0, 0.0, 0.0, 0.0, 0.0, 10.0)
        frame = logic.generateDRR(ct, truth, carm)
        initial = (3.0, -2.0, 0.0, 0.0, 0.0, 8.0)
        with tempfile.TemporaryDirectory() as folder:
            agentPath = os.path.join(folder, "agent.pt")
            Agent.new().save(agentPath)
            steps = []
            outcome = logic.register(ct, frame, initial, mode="2d3d", refine=True, agentPath=agentPath, maxSteps=0,
                                     progressCallback=lambda fraction, text: steps.append(fraction))
        self.assertFalse(outcome.cancelled)
        self.assertEqual(outcome.tableNode.GetNumberOfRows(), len(outcome.result.trajectory))
        initMatrix = logic.poseMatrix(ct, initial)
        np.testing.assert_allclose(transform_node_to_matrix(outcome.transformNode),
                                   np.linalg.inv(initMatrix) @ outcome.result.matrix, atol=1e-6)
        self.assertEqual(ct.GetTransformNodeID(), outcome.transformNode.GetID())
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(ct), before)  # voxels untouched
        np.testing.assert_allclose(ijk_to_ras_of(outcome.drrNode), ijk_to_ras_of(outcome.frameNode), atol=1e-9)
        self.assertEqual(slicer.util.arrayFromVolume(outcome.drrNode).shape, (1, 96, 96))
        # refinement moves the pose towards the truth
        truthMatrix = logic.poseMatrix(ct, truth)
        corners = np.array([ijk_to_ras_of(ct) @ (a, b, c, 1.0) for a in (5, 34) for b in (5, 34) for c in (5, 34)])

        def error(matrix):
            return float(np.mean(np.linalg.norm((corners @ (matrix - truthMatrix).T)[:, :3], axis=1)))

        self.assertLess(error(outcome.result.matrix), 0.5 * error(initMatrix))
        self.assertAlmostEqual(steps[-1], 1.0)
        self.delayDisplay("Test passed")
