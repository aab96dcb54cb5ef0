"""Minimal ``qt`` stand-in outside the Slicer application: only names module code touches at import time.

Widgets are not instantiated outside Slicer (there is no Qt wheel for PythonQt); the
``.ui``-versus-Widget-code test checks widget names statically instead.
"""


class _QtObject:
    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        raise NotImplementedError(f"qt stub: {type(self).__name__}.{name} needs the Slicer application")


class QObject(_QtObject):
    pass


class QWidget(_QtObject):
    pass


class QTimer(_QtObject):
    @staticmethod
    def singleShot(msec, callback):
        callback()


class Qt:
    WaitCursor = 3
    Horizontal = 1
    Vertical = 2
