"""What the web viewer does, without the web: load a CT, a fluoroscopy frame and a chest X-ray, then segment,
diagnose and register through the SAME module Logic desktop Slicer runs (MedAISegmentation /
MedAIDiagnosis / MedAIRegistration), on whatever scene ``slicer.mrmlScene`` is (trame-slicer's, see
``medai_web.app``). Returns MRML nodes and (H, W, 3) uint8 pictures; knows nothing of trame.

With no files given it uses the bundled samples: the 3 mm abdominal CT, a fluoroscopy-like frame rendered from
it at ``medai.demo.DEMO_TRUTH`` (registration starts from ``DEMO_INITIAL``, as ``medai demo`` does) and a chest
X-ray.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import numpy as np

from medai_slicer import standalone

SEGMENTATION_TASK = "ct-liver"
DIAGNOSIS_TASKS = ("covid", "pneumonia")
XRAY_SAMPLES = ("xray_covid", "xray_normal_1", "xray_pneumonia_1", "xray_normal_2", "xray_pneumonia_2")


@dataclass
class Inputs:
    """Files to open; None: the bundled sample (the frame: a fluoroscopy-like frame rendered from the CT)."""

    ct: str | None = None
    frame: str | None = None
    xray: str | None = None

    def describe(self) -> dict:
        """What the page shows as the inputs (file names, not paths)."""
        name = lambda path: os.path.basename(os.path.normpath(path))  # noqa: E731
        return {"ct": name(self.ct) if self.ct else "sample: ct_abdomen (3D-IRCADb 1.17, 3 mm)",
                "frame": name(self.frame) if self.frame else
                "synthetic fluoroscopy frame of the CT (LAO 30, off-centre)",
                "xray": name(self.xray) if self.xray else "sample X-ray"}


@dataclass
class ViewerSession:
    """The loaded nodes and the results; every method runs module Logic on ``slicer.mrmlScene``."""

    inputs: Inputs = field(default_factory=Inputs)
    ct: object = None  # vtkMRMLScalarVolumeNode
    frame: object = None  # one-slice vtkMRMLScalarVolumeNode with its C-arm geometry
    xray: object = None
    initial_pose: tuple | None = None  # None: the frame's own C-arm angles (DICOM) or AP
    segmentation: object = None
    outcome: object = None  # MedAIRegistration RegistrationOutcome
    diagnosis: object = None  # MedAIDiagnosis DiagnosisResult
    overlays: dict = field(default_factory=dict)  # kind -> overlay vector volume node

    def __post_init__(self):
        self.registration = standalone.module_logic("MedAIRegistration")
        self.segmentation_logic = standalone.module_logic("MedAISegmentation")
        self.diagnosis_logic = standalone.module_logic("MedAIDiagnosis")
        self._work_dir = tempfile.TemporaryDirectory(prefix="medai-web-")

    # --- loading ---------------------------------------------------------------------------------------
    def load_ct(self) -> object:
        from medai.samples import sample_path

        self.ct = self.registration.loadCT(self.inputs.ct or sample_path("ct_abdomen"),
                                           None if self.inputs.ct else "sample CT")
        return self.ct

    def load_frame(self) -> object:
        """The given frame (its C-arm geometry from DICOM), else one rendered from the CT like ``medai demo``'s."""
        if self.inputs.frame:
            self.frame = self.registration.loadFrame(self.inputs.frame)
            self.initial_pose = None
            return self.frame
        from medai import demo
        from medai.drr import CArmGeometry
        from medai_slicer import node_to_volume

        carm = CArmGeometry(**demo.DEMO_FRAME_CARM)
        path = os.path.join(self._work_dir.name, "frame.npy")
        np.save(path, demo.demo_frame(node_to_volume(self.ct)))
        self.frame = self.registration.loadFrame(path, "fluoroscopy frame", pixelSpacingMm=carm.row_spacing_mm,
                                                 sddMm=carm.sdd_mm, sidMm=carm.sid_mm)
        self.initial_pose = demo.DEMO_INITIAL
        return self.frame

    def load_xray(self, sample: str = XRAY_SAMPLES[0]) -> object:
        from medai.samples import sample_path

        path = self.inputs.xray or sample_path(sample)
        self.xray = self.diagnosis_logic.loadXRay(path, None if self.inputs.xray else sample)
        self.diagnosis = None
        return self.xray

    # --- the three jobs --------------------------------------------------------------------------------
    def segment(self, progress=None) -> object:
        """MedAISegmentation ``segment`` (ct-liver) on the CT; the segmentation follows the CT's transform."""
        node = self.segmentation_logic.segment(self.ct, SEGMENTATION_TASK, progress=progress)
        node.SetAndObserveTransformNodeID(self.ct.GetTransformNodeID())
        self.segmentation = node
        return node

    def register(self, progress=None, cancel=None):
        """MedAIRegistration ``register`` of the frame to the CT (``progress(fraction, text)``)."""
        outcome = self.registration.register(self.ct, self.frame, self.initial_pose, progressCallback=progress,
                                             cancel=cancel, show=False)
        if not outcome.cancelled:
            self.outcome = outcome
            self.overlays = {}
            if self.segmentation is not None:
                self.segmentation.SetAndObserveTransformNodeID(self.ct.GetTransformNodeID())
        return outcome

    def diagnose(self, task: str = DIAGNOSIS_TASKS[0]):
        """MedAIDiagnosis ``classify`` of the X-ray (calibrated probabilities, Grad-CAM heat map)."""
        self.diagnosis = self.diagnosis_logic.classify(self.xray, task)
        return self.diagnosis

    # --- pictures ---------------------------------------------------------------------------------------
    def frame_rgb(self) -> np.ndarray:
        """The frame alone, windowed inside its body outline, as the overlays window it."""
        from medai.registration.overlay import to_grey
        from medai_slicer.registration_scene import body_mask

        node = self.outcome.frameNode if self.outcome is not None else self.frame
        image = np.asarray(_pixels(node)[0], dtype=np.float32)
        grey = (to_grey(image, body_mask(image)) * 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)

    def overlay_rgb(self, kind: str = "blend") -> np.ndarray | None:
        """The registered DRR over the frame (MedAIRegistration ``addOverlay``: blend, checkerboard, edges)."""
        if self.outcome is None:
            return None
        if kind not in self.overlays:
            self.overlays[kind] = self.registration.addOverlay(self.outcome.frameNode, self.outcome.drrNode, kind,
                                                               show=False)
        return np.ascontiguousarray(_pixels(self.overlays[kind])[0])

    def xray_rgb(self) -> np.ndarray | None:
        """The X-ray, with the diagnosis' Grad-CAM heat map over it once diagnosed."""
        from medai.diagnosis.batch import overlay_rgb
        from medai.registration.overlay import to_grey

        if self.xray is None:
            return None
        image = np.asarray(_pixels(self.xray)[0], dtype=np.float32)
        if self.diagnosis is None or self.diagnosis.heatmap is None:
            grey = (to_grey(image) * 255).astype(np.uint8)
            return np.repeat(grey[..., None], 3, axis=2)
        return overlay_rgb(image, np.asarray(_pixels(self.diagnosis.heatmap)[0], dtype=np.float32))

    def close(self) -> None:
        self._work_dir.cleanup()


def _pixels(node) -> np.ndarray:
    import slicer

    return slicer.util.arrayFromVolume(node)
