"""The web viewer: a trame app on trame-slicer's ``SlicerApp`` (real MRML scene, Slicer's displayable managers
rendered on the server and streamed to the browser), whose scene is the one module Logic works on
(``standalone.adopt_scene``). Left: inputs, the three jobs with progress, results. Right: the 3D view (CT volume
rendering, segment surfaces, after registration the frame on its detector plane, the X-ray source and beam) and
the axial slice view (CT with the segmentation); below them the 2D views: the frame, the registered DRR over the
frame, the X-ray with the diagnosis' heat map.

A job runs as a background task: the module Logic in a worker thread (the page keeps receiving progress and
can cancel a registration) while the views' rendering is blocked; the display is updated on the event loop
afterwards.
"""
from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import threading
import time

if not os.environ.get("DISPLAY") and "VTK_DEFAULT_OPENGL_WINDOW" not in os.environ:
    os.environ["VTK_DEFAULT_OPENGL_WINDOW"] = "vtkEGLRenderWindow"  # headless: EGL (OSMesa also works)

import numpy as np  # noqa: E402
import slicer  # noqa: E402
from trame.app import get_server  # noqa: E402
from trame.ui.vuetify3 import VAppLayout  # noqa: E402
from trame.widgets import html  # noqa: E402
from trame.widgets import vuetify3 as v3  # noqa: E402
from trame_server.utils.asynchronous import create_task  # noqa: E402
from trame_slicer import module as trame_slicer_module  # noqa: E402
from trame_slicer.core import LayoutManager, SlicerApp  # noqa: E402
from trame_slicer.rca_view import register_rca_factories  # noqa: E402
from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition  # noqa: E402

from medai_slicer import standalone  # noqa: E402

from .session import DIAGNOSIS_TASKS, XRAY_SAMPLES, Inputs, ViewerSession  # noqa: E402

log = logging.getLogger(__name__)
LAYOUT_ID = "medai"
VR_PRESET = "bone"
CT_WINDOW_LEVEL = (400.0, 40.0)  # soft-tissue window (HU) of the slice view
OBLIQUE_DISTANCE = 1.25  # the fusion camera a little farther than oblique_camera's: the whole frame in view


def adopt_trame_scene(slicer_app: SlicerApp):
    """The bridge: trame-slicer's scene and module logics become ``slicer.mrmlScene`` / ``slicer.modules.*``
    (plus a Transforms logic, which trame-slicer does not register)."""
    slicer_app.register_module_logic(slicer.vtkSlicerTransformLogic(), logic_name="Transforms")
    names = ("Colors", "Volumes", "Segmentations", "Transforms", "VolumeRendering")
    return standalone.adopt_scene(slicer_app.scene, slicer_app.app_logic,
                                  {name: slicer_app.app_logic.GetModuleLogic(name) for name in names})


def png_data_url(rgb: np.ndarray | None) -> str:
    """(H, W, 3) uint8 -> "data:image/png;base64,..." ("" for None)."""
    if rgb is None:
        return ""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class MedAIWebViewer:
    """One viewer (one trame server, one scene). ``server.start(...)`` serves it."""

    def __init__(self, inputs: Inputs | None = None, server=None):
        self.server = server or get_server(client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.state, self.ctrl = self.server.state, self.server.controller
        self.slicer_app = SlicerApp()
        adopt_trame_scene(self.slicer_app)
        register_rca_factories(self.slicer_app.view_manager, self.server, slice_view_ui_f=_no_ui,
                               three_d_view_ui_f=_no_ui)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout(LAYOUT_ID, Layout(LayoutDirection.Horizontal, [
            ViewLayoutDefinition.threed_view(background_color=("#101418", "#2a3038")),
            ViewLayoutDefinition.axial_view()]))
        self.session = ViewerSession(inputs or Inputs())
        self.fusion = None
        self._busy = False
        self._cancel = threading.Event()
        self._init_state()
        self._build_ui()
        self.layout_manager.set_layout(LAYOUT_ID)
        for view in self.slicer_app.view_manager.get_views():  # software OpenGL: no depth peeling, no MSAA
            view.render_window().SetMultiSamples(0)
            view.renderer().SetUseDepthPeeling(False)
            view.renderer().SetUseDepthPeelingForVolumes(False)
        adaptive_volume_rendering_while_dragging(self.threed_view)
        self.ctrl.on_server_ready.add(lambda **_: create_task(self._on_ready()))

    # --- views ------------------------------------------------------------------------------------------
    @property
    def threed_view(self):
        return self.slicer_app.view_manager.get_threed_views()[0]

    @property
    def slice_view(self):
        return self.slicer_app.view_manager.get_slice_views()[0]

    def _views(self):
        return self.slicer_app.view_manager.get_views()

    # --- state and UI -------------------------------------------------------------------------------------
    def _init_state(self):
        s = self.state
        s.trame__title = "MedAIToolkit web viewer"
        s.trame__favicon = ""  # trame's default points to the internet
        s.update({"busy": True, "progress": 0, "status": "Loading the inputs...", "error": "",
                  "inputs": self.session.inputs.describe(), "xray_sample": XRAY_SAMPLES[0],
                  "xray_samples": list(XRAY_SAMPLES), "xray_given": bool(self.session.inputs.xray),
                  "diagnosis_task": DIAGNOSIS_TASKS[0], "diagnosis_tasks": list(DIAGNOSIS_TASKS),
                  "overlay_kind": "blend", "volume_rendering": True, "loaded": False,
                  "segmented": False, "registered": False, "diagnosed": False,
                  "segmentation_text": "", "registration_text": "", "diagnosis_text": "",
                  "frame_src": "", "overlay_src": "", "xray_src": "", "jobs_done": 0, "cancellable": False})
        s.change("overlay_kind")(self._on_overlay_kind)
        s.change("volume_rendering")(self._on_volume_rendering)
        s.change("xray_sample")(self._on_xray_sample)

    def _build_ui(self):
        with VAppLayout(self.server, theme="dark", full_height=True) as layout:
            with v3.VAppBar(density="compact", color="#1b2430"):
                v3.VToolbarTitle("MedAIToolkit web viewer", classes="text-subtitle-1")
                v3.VSpacer()
                html.Span("{{ status }}", id="status", classes="text-caption mr-4")
                v3.VProgressLinear(model_value=("progress",), height=4, color="#3fb27f", id="progress", absolute=True,
                                   location="bottom", active=("busy",), indeterminate=("busy && progress == 0",))
            with v3.VNavigationDrawer(permanent=True, width=330, location="left"):
                self._controls()
            with v3.VMain():
                with html.Div(style="display:flex; flex-direction:column; height:calc(100vh - 48px);"):
                    with html.Div(style="flex: 1 1 60%; min-height: 0; display:flex;", id="views"):
                        self.layout_manager.initialize_layout_grid(layout)
                    with html.Div(style="flex: 0 0 40%; display:flex; gap:6px; padding:6px; min-height:0;"):
                        self._picture("Fluoroscopy frame", "frame_src", "frame-img")
                        self._picture("{{ registered ? 'Registered DRR over the frame (' + overlay_kind + ')' "
                                      ": 'DRR over the frame (after registration)' }}", "overlay_src", "overlay-img")
                        self._picture("{{ diagnosed ? 'X-ray, Grad-CAM of the prediction' : 'Chest X-ray' }}",
                                      "xray_src", "xray-img")
        self.ui = layout

    def _picture(self, title: str, source: str, element_id: str):
        with html.Div(style="flex:1 1 0; min-width:0; display:flex; flex-direction:column; background:#0c0f13; "
                            "border:1px solid #2c3440; border-radius:4px;"):
            html.Div(title, classes="text-caption px-2", style="color:#b8c4d2;")
            with html.Div(style="flex:1 1 0; min-height:0; display:flex; align-items:center; justify-content:center;"):
                html.Img(v_if=(source,), src=(source,), id=element_id,
                         style="width:100%; height:100%; object-fit:contain;")
                html.Div("not yet computed", v_else=True, classes="text-caption", style="color:#5c6878;")

    def _controls(self):
        with html.Div(classes="pa-3", style="display:flex; flex-direction:column; gap:10px;"):
            html.Div("Inputs", classes="text-overline")
            html.Div("CT: {{ inputs.ct }}", classes="text-caption")
            html.Div("Frame: {{ inputs.frame }}", classes="text-caption")
            v3.VSelect(v_if=("!xray_given",), label="Chest X-ray sample", v_model=("xray_sample",),
                       items=("xray_samples",), density="compact", hide_details=True, disabled=("busy",))
            html.Div("X-ray: {{ inputs.xray }}", v_else=True, classes="text-caption")
            v3.VDivider()
            html.Div("Segmentation", classes="text-overline")
            v3.VBtn("Segment the liver (ct-liver)", id="btn-segment", click=self.ctrl.segment, block=True,
                    color="primary", disabled=("busy || !loaded",))
            html.Div("{{ segmentation_text }}", id="segmentation-text", classes="text-caption")
            v3.VDivider()
            html.Div("2D/3D registration", classes="text-overline")
            v3.VBtn("Register the frame to the CT", id="btn-register", click=self.ctrl.register, block=True,
                    color="primary", disabled=("busy || !loaded",))
            v3.VBtn("Cancel", id="btn-cancel", click=self.ctrl.cancel, block=True, variant="outlined",
                    v_if=("busy && cancellable",))
            v3.VSelect(label="Overlay", v_model=("overlay_kind",), items=("['blend', 'checkerboard', 'edges']",),
                       density="compact", hide_details=True, disabled=("busy || !registered",))
            html.Div("{{ registration_text }}", id="registration-text", classes="text-caption")
            v3.VDivider()
            html.Div("Chest X-ray diagnosis", classes="text-overline")
            v3.VSelect(label="Task", v_model=("diagnosis_task",), items=("diagnosis_tasks",), density="compact",
                       hide_details=True, disabled=("busy",))
            v3.VBtn("Diagnose the X-ray", id="btn-diagnose", click=self.ctrl.diagnose, block=True, color="primary",
                    disabled=("busy || !loaded",))
            html.Pre("{{ diagnosis_text }}", id="diagnosis-text", classes="text-caption",
                     style="white-space:pre-wrap; font-family:inherit;")
            v3.VDivider()
            v3.VSwitch(label="CT volume rendering in 3D", v_model=("volume_rendering",), density="compact",
                       hide_details=True, color="primary", id="switch-vr")
            html.Div("{{ error }}", v_if=("error",), id="error", classes="text-caption", style="color:#ff6b6b;")
            html.Span("{{ jobs_done }}", id="jobs-done", style="display:none;")  # finished jobs (for scripts)
        self.ctrl.segment = self.segment
        self.ctrl.register = self.register
        self.ctrl.diagnose = self.diagnose
        self.ctrl.cancel = self.cancel

    # --- jobs -------------------------------------------------------------------------------------------------
    async def _run(self, label: str, work, show):
        """``work(progress)`` in a worker thread with the views' rendering blocked, then ``show(result)`` here."""
        if self._busy:
            return
        self._busy = True
        loop = asyncio.get_running_loop()

        def set_progress(fraction, text=None):
            with self.state:
                self.state.progress = int(round(100 * min(max(float(fraction), 0.0), 1.0)))
                if text:
                    self.state.status = str(text)

        def progress(fraction, text=None):
            loop.call_soon_threadsafe(set_progress, fraction, text)

        with self.state:
            self.state.update({"busy": True, "progress": 0, "status": f"{label}...", "error": ""})
        blocked = [view.set_render_blocked(True) for view in self._views()]
        start = time.perf_counter()
        try:
            result = await loop.run_in_executor(None, work, progress)
            error = None
        except Exception as exc:  # shown in the page; the viewer keeps running
            log.exception("%s failed", label)
            result, error = None, f"{label} failed: {exc}"
        finally:
            for view, was in zip(self._views(), blocked):
                view.set_render_blocked(was)
        seconds = time.perf_counter() - start
        with self.state:
            if error is None:
                try:
                    show(result, seconds)
                except Exception as exc:
                    log.exception("showing the result of %s failed", label)
                    error = f"{label}: showing the result failed: {exc}"
            self.state.busy = False
            self.state.progress = 100 if error is None else 0
            self.state.error = error or ""
            if error is None:
                self.state.jobs_done += 1
            else:
                self.state.status = error
        self._busy = False
        self._render_all()

    async def _on_ready(self):
        await self._run("Loading", self._load, self._show_loaded)

    # The page's buttons start a job in the background and return: the server keeps reading the page's
    # messages (Cancel, view interaction) while the job runs.
    def segment(self):
        create_task(self._run("Segmentation", self._segment, self._show_segmentation))

    def register(self):
        create_task(self._register_job())

    def diagnose(self):
        create_task(self._run("Diagnosis", self._diagnose, self._show_diagnosis))

    async def _register_job(self):
        if self._busy:
            return
        self._cancel.clear()
        self.state.cancellable = True  # sent with _run's first update
        try:
            await self._run("Registration", self._register, self._show_registration)
        finally:
            with self.state:
                self.state.cancellable = False

    def cancel(self, *_):
        """Stop the registration at its next agent step (nothing is created)."""
        self._cancel.set()

    def run_now(self, job: str) -> float:
        """Scripts and benchmarks: run "load", "segment", "register" or "diagnose" here and now, without a page;
        returns the seconds taken."""
        work, show = {"load": (self._load, self._show_loaded), "segment": (self._segment, self._show_segmentation),
                      "register": (self._register, self._show_registration),
                      "diagnose": (self._diagnose, self._show_diagnosis)}[job]
        start = time.perf_counter()
        result = work(lambda *args: None)
        show(result, time.perf_counter() - start)
        return time.perf_counter() - start

    # work (worker thread: module Logic) and show (event loop: views and page) of each job -------------------
    def _load(self, progress):
        session = self.session
        progress(0.1, "Loading the CT...")
        session.load_ct()
        progress(0.4, "Rendering the fluoroscopy frame..." if not session.inputs.frame else "Loading the frame...")
        session.load_frame()
        progress(0.8, "Loading the X-ray...")
        session.load_xray(self.state.xray_sample)
        return session

    def _show_loaded(self, session, seconds):
        from medai_slicer.registration_scene import show_volume_rendering

        show_volume_rendering(session.ct, VR_PRESET)
        display = session.ct.GetDisplayNode()
        display.AutoWindowLevelOff()
        display.SetWindowLevel(*CT_WINDOW_LEVEL)
        self.slice_view.set_background_volume_id(session.ct.GetID())
        self.slice_view.fit_view_to_content()
        self.threed_view.reset_view()
        self.threed_view.zoom(0.35)  # the CT fills the view
        self.state.frame_src = png_data_url(session.frame_rgb())
        self.state.xray_src = png_data_url(session.xray_rgb())
        self.state.loaded = True
        self.state.status = f"Ready: CT, frame and X-ray loaded in {seconds:.1f} s"

    def _segment(self, progress):
        progress(0.02, "Segmenting the liver (ct-liver)...")
        return self.session.segment(lambda fraction: progress(0.02 + 0.95 * fraction))

    def _show_segmentation(self, node, seconds):
        display = node.GetDisplayNode()
        display.SetVisibility(True)
        display.SetVisibility3D(True)
        display.SetOpacity2DFill(0.35)
        node.CreateClosedSurfaceRepresentation()
        if self.fusion is not None:
            self.fusion.segmentation = node
        volume_ml = _segment_volume_ml(node, self.session.ct)
        self.state.segmented = True
        self.state.segmentation_text = (f"{node.GetName()}: {node.GetSegmentation().GetNumberOfSegments()} "
                                        f"segment(s), liver {volume_ml:.0f} ml, {seconds:.1f} s")
        self.state.status = "Segmentation done: liver surface in the 3D view, outline in the axial view"

    def _register(self, progress):
        return self.session.register(progress, cancel=self._cancel.is_set)

    def _show_registration(self, outcome, seconds):
        from medai_slicer.registration_scene import oblique_camera

        if outcome.cancelled:
            self.state.status = "Registration cancelled: nothing was changed"
            return
        session = self.session
        self.fusion = session.registration.showFusion3D(session.ct, outcome.frameNode, outcome.transformNode,
                                                       session.segmentation, VR_PRESET)
        self._on_volume_rendering(self.state.volume_rendering)
        camera = self.threed_view.get_camera_node()
        view = oblique_camera(outcome.frameNode)
        focal = np.asarray(view["focal_point"], dtype=float)
        camera.SetPosition(*(focal + OBLIQUE_DISTANCE * (np.asarray(view["position"], dtype=float) - focal)))
        camera.SetFocalPoint(*view["focal_point"])
        camera.SetViewUp(*view["view_up"])
        camera.SetViewAngle(view["view_angle_deg"])
        camera.ResetClippingRange()
        pose = outcome.result.pose.as_array()
        self.state.registered = True
        self.state.frame_src = png_data_url(session.frame_rgb())
        self.state.overlay_src = png_data_url(session.overlay_rgb(self.state.overlay_kind))
        self.state.registration_text = (
            f"{outcome.summary}. Pose tx ty tz {pose[0]:.1f} {pose[1]:.1f} {pose[2]:.1f} mm, "
            f"rx ry rz {pose[3]:.1f} {pose[4]:.1f} {pose[5]:.1f} deg.")
        self.state.status = "Registration done: the CT follows the result; frame on its detector plane in 3D"

    def _diagnose(self, progress):
        progress(0.1, f"Classifying the X-ray ({self.state.diagnosis_task})...")
        return self.session.diagnose(self.state.diagnosis_task)

    def _show_diagnosis(self, result, seconds):
        lines = [f"{self.state.diagnosis_task}: {result.prediction}"] + [
            f"  {name}: {p:.1%}" for name, p in sorted(result.probabilities.items(), key=lambda kv: -kv[1])]
        self.state.diagnosed = True
        self.state.diagnosis_text = "\n".join(lines)
        self.state.xray_src = png_data_url(self.session.xray_rgb())
        self.state.status = f"Diagnosis done in {seconds:.1f} s: {result.prediction}"

    # --- reactions to the page ------------------------------------------------------------------------------
    def _on_overlay_kind(self, overlay_kind, **_):
        if self.session.outcome is not None and not self._busy:
            self.state.overlay_src = png_data_url(self.session.overlay_rgb(overlay_kind))

    def _on_volume_rendering(self, volume_rendering, **_):
        ct = self.session.ct
        if ct is None or self._busy:
            return
        rendered = ct.GetNodeReference("MedAI.renderingProxy") or ct  # show_volume_rendering's downsampled copy
        display = slicer.modules.volumerendering.logic().GetFirstVolumeRenderingDisplayNode(rendered)
        if display is not None:
            display.SetVisibility(bool(volume_rendering))
        self._render_all()

    def _on_xray_sample(self, xray_sample, **_):
        if self.session.xray is None or self._busy or self.session.inputs.xray:
            return
        slicer.mrmlScene.RemoveNode(self.session.xray)
        self.session.load_xray(xray_sample)
        self.state.diagnosed = False
        self.state.diagnosis_text = ""
        self.state.xray_src = png_data_url(self.session.xray_rgb())

    def _render_all(self):
        for view in self._views():
            view.schedule_render()


def adaptive_volume_rendering_while_dragging(view) -> None:
    """Volume rendering at "Adaptive" quality (VTK coarsens the sampling to keep up) while a mouse button is down
    in ``view``, "Normal" when it is released: on software OpenGL a CT frame takes ~0.5 s instead of ~3 s at
    800x600 while the user turns the 3D view (benchmarks/bench_web.py)."""
    node = view.get_view_node()

    def set_quality(quality):
        def observer(*_):
            if node.GetVolumeRenderingQuality() != quality:
                node.SetVolumeRenderingQuality(quality)
                view.schedule_render()
        return observer

    interactor = view.interactor()
    for button in ("Left", "Middle", "Right"):  # priority above Slicer's interactor style, which aborts the events
        interactor.AddObserver(f"{button}ButtonPressEvent", set_quality(slicer.vtkMRMLViewNode.Adaptive), 100.0)
        interactor.AddObserver(f"{button}ButtonReleaseEvent", set_quality(slicer.vtkMRMLViewNode.Normal), 100.0)


def _no_ui(*_args):
    """No per-view gutter (its buttons serve trame-slicer's own medical viewer)."""


def _segment_volume_ml(segmentation_node, reference_node) -> float:
    """Volume of the first segment (ml), counted on the reference volume's grid."""
    segment_id = segmentation_node.GetSegmentation().GetNthSegmentID(0)
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, reference_node)
    return float(np.count_nonzero(mask)) * float(np.prod(reference_node.GetSpacing())) / 1000.0


def serve(inputs: Inputs | None = None, port: int = 8080, host: str = "127.0.0.1", open_browser: bool = False,
          timeout: int = 0) -> None:
    """Start the viewer on ``host``:``port`` (blocking). ``timeout``: seconds without a client before it stops
    (0: never)."""
    import sys

    viewer = MedAIWebViewer(inputs)
    argv, sys.argv = sys.argv, sys.argv[:1]  # trame reads its own options from the command line otherwise
    try:
        viewer.server.start(port=port, host=host, open_browser=open_browser, timeout=timeout,
                            show_connection_info=True)
    finally:
        sys.argv = argv
