"""Minimal ``ctk`` stand-in outside the Slicer application (see qt.py)."""


class ctkCollapsibleButton:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("ctk stub: widgets need the Slicer application")
