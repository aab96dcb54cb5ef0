"""Segment names and colours."""
from __future__ import annotations

import colorsys

import numpy as np


def distinct_color(index: int) -> tuple[float, float, float]:
    """A reproducible, well separated RGB colour (0-1) for the ``index``-th label (golden-angle hues)."""
    hue = (index * 0.618033988749895) % 1.0
    return tuple(round(c, 4) for c in colorsys.hsv_to_rgb(hue, 0.65, 0.95))


def default_labels(values) -> dict[int, tuple[str, tuple[float, float, float]]]:
    """Every non-zero label value -> ("Segment <value>", distinct colour)."""
    values = [int(v) for v in np.unique(np.asarray(values)) if v != 0]
    return {v: (f"Segment {v}", distinct_color(n)) for n, v in enumerate(values)}
