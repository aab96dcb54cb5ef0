"""MedAIToolkit in the browser, for users without desktop Slicer: a trame-slicer web viewer (``medai web``) that
runs segmentation, diagnosis and 2D/3D registration through the same module Logic as desktop Slicer and shows
the slice view, the 3D view (volume rendering, segment surfaces, the frame on its detector plane) and the 2D
overlays. Needs the ``web`` extra (``pip install -e ".[web]"``).

    from medai_web import Inputs, serve
    serve(Inputs(ct="ct.nrrd", frame="frame.dcm"), port=8080)     # binds 127.0.0.1
"""
from __future__ import annotations

from .session import Inputs, ViewerSession

__all__ = ["Inputs", "ViewerSession", "serve"]


def serve(inputs: Inputs | None = None, port: int = 8080, host: str = "127.0.0.1", **kwargs) -> None:
    """Start the web viewer (blocking); see ``medai_web.app.serve``."""
    from .app import serve as _serve

    _serve(inputs, port=port, host=host, **kwargs)
