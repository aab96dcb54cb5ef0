"""Module Logic outside desktop Slicer: the real slicer-core MRML scene and logics, plus thin stand-ins
for the parts of Slicer that have no wheel: ``slicer.app``, ``slicer.modules``, ``slicer.ScriptedLoadableModule``,
``slicer.parameterNodeWrapper``, ``slicer.i18n`` (``qt``/``ctk`` in ``shims/``). Everything else — the MRML
scene, nodes, ``slicer.util``, module logics, displayable managers — is the real slicer-core code.

Used by the test suite, ``medai demo`` (offscreen 3D views) and the web viewer::

    from medai_slicer import standalone
    standalone.install()                                   # no-op inside the Slicer application
    logic = standalone.module_logic("MedAIRegistration")   # the same Logic desktop Slicer runs

``new_scene()`` gives a fresh real scene with the application logic and the Colors / Volumes /
Segmentations / Transforms / VolumeRendering logics registered, the way the application sets them up;
``adopt_scene(scene, app_logic, logics)`` makes a scene set up elsewhere (trame-slicer's, in the web viewer) current.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
import types
import typing
import unittest

import slicer

# --- slicer.i18n -------------------------------------------------------------------------------------
i18n = types.ModuleType("slicer.i18n")
i18n.tr = lambda text: text
i18n.translate = lambda context, text: text


# --- slicer.app / slicer.modules ----------------------------------------------------------------------
class _ModuleProxy:
    def __init__(self, logic):
        self._logic = logic

    def logic(self):
        return self._logic


class _Application:
    """What module code calls on ``slicer.app`` outside the GUI."""

    def __init__(self):
        self._application_logic = None
        self.commandOptions = lambda: types.SimpleNamespace(noMainWindow=True)
        self.testingEnabled = lambda: True

    def applicationLogic(self):
        return self._application_logic

    def connect(self, *args):  # "startupCompleted()" etc.: no GUI, nothing to connect
        return True

    def processEvents(self, *args):
        pass

    def layoutManager(self):  # like Slicer started with --no-main-window: no views to lay out
        return None


# --- slicer.ScriptedLoadableModule --------------------------------------------------------------------
slm = types.ModuleType("slicer.ScriptedLoadableModule")


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent if parent is not None else types.SimpleNamespace()
        self.moduleName = self.__class__.__name__
        self.parent.title = self.moduleName

    def resourcePath(self, filename):
        import os
        return os.path.join(os.path.dirname(sys.modules[self.__module__].__file__), "Resources", filename)


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent
        self.moduleName = self.__class__.__name__[: -len("Widget")]

    def setup(self):
        pass

    def resourcePath(self, filename):
        import os
        return os.path.join(os.path.dirname(sys.modules[self.__module__].__file__), "Resources", filename)


class ScriptedLoadableModuleLogic:
    """Same parameter-node behaviour as Slicer's: one singleton vtkMRMLScriptedModuleNode per module."""

    def __init__(self, parent=None):
        self.moduleName = self.__class__.__name__[: -len("Logic")] if self.__class__.__name__.endswith("Logic") else self.__class__.__name__
        self.isSingletonParameterNode = True

    def getParameterNode(self):
        scene = slicer.mrmlScene
        node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(self.moduleName)
            node.SetName(scene.GenerateUniqueName(self.moduleName))
            node.SetAttribute("ModuleName", self.moduleName)
            node = scene.AddNode(node)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def __init__(self, methodName="runTest"):
        super().__init__(methodName)

    def delayDisplay(self, message, msec=0):
        logging.info(message)

    def runTest(self):  # overridden by each module's Test
        pass


slm.ScriptedLoadableModule = ScriptedLoadableModule
slm.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
slm.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
slm.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest
slm.__all__ = ["ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
               "ScriptedLoadableModuleTest"]


# --- slicer.parameterNodeWrapper ----------------------------------------------------------------------
pnw = types.ModuleType("slicer.parameterNodeWrapper")


class WithinRange:
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum


class Choice:
    def __init__(self, choices):
        self.choices = list(choices)


def _unpack(annotation):
    """(base type, validators) of ``Annotated[T, ...]`` or plain ``T``."""
    if typing.get_origin(annotation) is typing.Annotated:
        base, *extras = typing.get_args(annotation)
        return base, extras
    return annotation, []


def _is_node_type(base) -> bool:
    return isinstance(base, type) and base.__name__.startswith("vtkMRML")


def parameterNodeWrapper(cls):
    """Typed properties stored in a vtkMRMLScriptedModuleNode, as Slicer's decorator does:
    plain values as string parameters, MRML nodes as node references; ranges and choices validated."""
    hints = typing.get_type_hints(cls, include_extras=True)
    defaults = {name: getattr(cls, name) for name in hints if hasattr(cls, name)}

    def __init__(self, parameterNode):
        object.__setattr__(self, "parameterNode", parameterNode)
        for name, annotation in hints.items():
            base, _ = _unpack(annotation)
            if not _is_node_type(base) and not parameterNode.GetParameter(name) and name in defaults:
                setattr(self, name, defaults[name])

    def make_property(name, annotation):
        base, extras = _unpack(annotation)

        def getter(self):
            node = self.parameterNode
            if _is_node_type(base):
                return node.GetNodeReference(name)
            raw = node.GetParameter(name)
            if raw == "":
                return defaults.get(name)
            if base is bool:
                return raw == "True"
            return base(raw)

        def setter(self, value):
            node = self.parameterNode
            if _is_node_type(base):
                node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
                return
            value = base(value)
            for extra in extras:
                if isinstance(extra, WithinRange) and not extra.minimum <= value <= extra.maximum:
                    raise ValueError(f"{name}={value} outside [{extra.minimum}, {extra.maximum}]")
                if isinstance(extra, Choice) and value not in extra.choices:
                    raise ValueError(f"{name}={value!r} not one of {extra.choices}")
            node.SetParameter(name, str(value))

        return property(getter, setter)

    namespace = {"__init__": __init__, "__doc__": cls.__doc__, "__module__": cls.__module__,
                 "__annotations__": dict(cls.__annotations__),
                 "connectGui": lambda self, gui: object(), "disconnectGui": lambda self, tag: None,
                 "StartModify": lambda self: self.parameterNode.StartModify(),
                 "EndModify": lambda self, wasModified: self.parameterNode.EndModify(wasModified),
                 "AddObserver": lambda self, *a: self.parameterNode.AddObserver(*a)}
    for name, annotation in hints.items():
        namespace[name] = make_property(name, annotation)
    return type(cls.__name__, (), namespace)


pnw.parameterNodeWrapper = parameterNodeWrapper
pnw.WithinRange = WithinRange
pnw.Choice = Choice


# --- installation -------------------------------------------------------------------------------------
MODULES_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
"""MedAIToolkit/: holds one folder per scripted module (MedAIRegistration/, ...)."""
MODULE_NAMES = ("MedAIRegistration", "MedAISegmentation", "MedAIDiagnosis")


def inside_slicer() -> bool:
    """True in the desktop application (its ``slicer.app`` is the real Qt application)."""
    app = getattr(slicer, "app", None)
    return app is not None and not isinstance(app, _Application)


def install() -> None:
    """Register the stand-ins as submodules/attributes of the real ``slicer`` package (idempotent);
    does nothing inside the Slicer application."""
    if inside_slicer():
        return
    shims = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shims")
    if shims not in sys.path:
        sys.path.insert(0, shims)  # qt.py, ctk.py
    for name, module in (("slicer.i18n", i18n), ("slicer.ScriptedLoadableModule", slm),
                         ("slicer.parameterNodeWrapper", pnw)):
        sys.modules[name] = module
        setattr(slicer, name.split(".")[1], module)
    if not isinstance(getattr(slicer, "app", None), _Application):
        slicer.app = _Application()
    if not hasattr(slicer, "modules"):
        slicer.modules = types.SimpleNamespace()
    if not hasattr(slicer, "mrmlScene"):
        new_scene()


def new_scene():
    """A fresh real vtkMRMLScene set as ``slicer.mrmlScene``, with module logics registered."""
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    logics = {
        "Colors": slicer.vtkSlicerColorLogic(),
        "Volumes": slicer.vtkSlicerVolumesLogic(),
        "Segmentations": slicer.vtkSlicerSegmentationsModuleLogic(),
        "Transforms": slicer.vtkSlicerTransformLogic(),
        "VolumeRendering": slicer.vtkSlicerVolumeRenderingLogic(),
    }
    # Without an installed Slicer there are no colour-table files or volume rendering presets to load; the
    # logics say so as errors on stderr. Expected here, so hidden (MedAI sets its own colours and presets).
    import vtk

    verbosity = vtk.vtkLogger.GetCurrentVerbosityCutoff()
    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)
    try:
        for name, logic in logics.items():
            logic.SetMRMLApplicationLogic(app_logic)
            logic.SetMRMLScene(scene)
            app_logic.SetModuleLogic(name, logic)
        logics["VolumeRendering"].GetPresetsScene()  # tries to load the presets once, here
    finally:
        vtk.vtkLogger.SetStderrVerbosity(verbosity)
    return adopt_scene(scene, app_logic, logics)


def adopt_scene(scene, app_logic, logics: dict):
    """Make a scene set up elsewhere (e.g. by trame-slicer's ``SlicerApp``) the one module Logic works on:
    ``slicer.mrmlScene``, ``slicer.app.applicationLogic()`` and ``slicer.modules.<name>.logic()`` for
    ``logics`` ({"Colors": ..., "Volumes": ..., "Segmentations": ..., "Transforms": ..., "VolumeRendering": ...},
    already registered with ``app_logic``). Returns ``scene``."""
    slicer.mrmlScene = scene
    if not isinstance(getattr(slicer, "app", None), _Application):
        install()
    for name, logic in logics.items():
        setattr(slicer.modules, name.lower(), _ModuleProxy(logic))
    slicer.app._application_logic = app_logic
    return scene


def module_logic(module_name: str):
    """A new ``<module_name>Logic()`` of one of MedAIToolkit's scripted modules (imports its file)."""
    if module_name not in MODULE_NAMES:
        raise ValueError(f"unknown module {module_name!r}; one of {MODULE_NAMES}")
    install()
    folder = os.path.join(MODULES_DIR, module_name)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    module = importlib.import_module(module_name)
    return getattr(module, f"{module_name}Logic")()
