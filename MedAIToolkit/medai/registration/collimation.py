"""Collimator shutters and the image-intensifier circle where they are NOT blanked: found by the shape of their edge.

A C-arm's collimator blades (straight, possibly turned) and an image intensifier's round field leave a region that
the beam reached only through lead. Where the system blanks it, the region is flat and
:func:`medai.registration.frame.field_mask` finds it by its value. Where it does not, the region still shows the
anatomy, through far fewer quanta: in a "bright = attenuating" frame it is brighter, and noisier, than the field
beside it. Its values do not give it away; its edge does: a large step, brighter beyond, that stays on the same
straight line (or circle) along the whole image, which anatomy does not keep up (the diaphragm's dome comes closest:
its steps are smaller and its edge wanders off any one line). Left out of every similarity, like the blanked kind.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

WORK_PX = 128
"""Edges are searched on a copy of the frame at most this many pixels across."""
BAND_PX = 3
"""Width of the bands compared on either side of a candidate edge (working pixels)."""
MIN_CONSISTENCY = 0.9
"""Share of a candidate edge's positions (in the image, and not in another edge's shadow) where the band beyond must
be the brighter (by more than twice the noise of the difference)."""
MIN_STEP = 0.12
"""Median step across an accepted edge, as a share of the frame's 1-99th percentile range. Development frames
(`runs/dev_coll_features.py`, `runs/dev_collimation.py`: 30 chest and 30 abdominal DRRs drawn like the benchmark's,
half of them C-arm processed, seed 19191, each once open and once under 3-6 log units of lead beyond 1-2 blades and,
in 40%, an intensifier's circle): the best candidate edge of an open frame stepped 0.02-0.20 (5th-95th percentile),
a true edge 0.10-0.78 (median 0.43). With every rule of this module, open frames lose a strip of at most 10% of the
image in 20% of the chest's and 3% of the abdomen's (mean 1.8% / 0.2%); collimated ones have their field found with
IoU >= 0.9 in 80% / 90% (median 0.95): a missed blade costs far more than a border strip. (Those frames were drawn
for this module; on frames drawn like the benchmark's, most intensifier circles were missed until the centre search of
:func:`_circle_edge`: training/README.md.)"""
MIN_BEYOND_BRIGHTER = 0.7
"""Share of the region beyond a candidate edge (out to the border) that must be brighter than the band just inside
the edge at the same position."""
MAX_SPREAD_PX = 2.5
"""Standard deviation of where the edge actually lies, along an accepted line (working pixels): straightness."""
MIN_LENGTH = 0.5
"""A candidate edge must step up for at least this share of the image's smaller side."""
MIN_ARC = 0.25
"""An intensifier's edge must step up along an arc of at least this share of the image's smaller side."""
MIN_CIRCLE_STEP = 0.24
"""MIN_STEP for an intensifier's edge shorter than :data:`LONG_ARC`, twice as high: its arcs are short where blades
cut the field, and a chest's rib cage is round too (bright chest wall beyond, dark lung inside)."""
LONG_ARC = 0.5
"""An intensifier's edge that steps up along at least this share of its circle needs only MIN_STEP: the
intensifier's step can be small where the field inside is bright (0.15-0.25 on development frames whose circle, 70-75%
of it in the image, went unfound), and anatomy does not step up along half a circle (80 open chest and abdominal
development frames, `runs/fp_coll.py`, seeds 54545 / 54546: no circle found on any, with or without this rule). Where
shadowed arcs are set aside (:func:`collimated_mask`), they count toward that length."""
MAX_DEPTH = 0.4
"""Shutters are searched up to this share of the image's extent from each side."""
ANGLES_DEG = np.arange(-15.0, 15.1, 2.5)
"""Blade angles searched, relative to each side."""
CIRCLE_CENTRES = np.linspace(-0.08, 0.08, 5)
"""Image-intensifier centres searched first, as offsets from the image centre (share of the image's size), then
refined. A 3 x 3 grid (spacing 0.08) missed plain circles 3 px (working) from its nearest centre: the edge left the
compared bands along part of the circle, which then failed MIN_CONSISTENCY before the centre could be refined."""
MARGIN_PX = 2.0
"""Working pixels inside a found edge also left out, at least; more where the edge's blur reaches further in
(:func:`_settled`): a few mm of lead step many times the anatomy's contrast, so even its blurred tail misleads."""
MAX_MARGIN_PX = 6.0
"""At most this many working pixels inside a found edge are left out: about three times the widest blur of a frame
(1.5 working pixels) and of a blade's penumbra, beyond which the profile's slope is the anatomy's."""
SETTLED = 0.03
"""The edge's tail ends where the profile across it (its median along the edge) comes within this share of the step
of where it levels off."""


def _noise(x: np.ndarray) -> float:
    """Robust pixel noise of the working image: MAD of the residual from a 1-px smoothing."""
    residual = x - ndimage.gaussian_filter(x, 1.0)
    return float(1.4826 * np.median(np.abs(residual - np.median(residual)))) + 1e-12


def _end_runs(flags: np.ndarray, valid: np.ndarray) -> int:
    """How many of the ``valid`` positions at either end of a line are ``flags`` without a break."""
    values = flags[valid]
    if not len(values):
        return 0
    if values.all():
        return len(values)
    return int(np.argmin(values) + np.argmin(values[::-1]))


def _bands(samples: np.ndarray):
    """On a (D, S) grid sampled along candidate edges at depths 0..D-1 from the outside in (NaN outside the image):
    the depths d compared, the mean of the band beyond each (d-BAND..d-1) and inside it (d..d+BAND-1), and where both
    bands are wholly in the image; None when the grid is too shallow."""
    finite = np.isfinite(samples)
    values = np.where(finite, samples, 0.0)
    total = np.vstack([np.zeros((1, samples.shape[1])), np.cumsum(values, 0)])
    count = np.vstack([np.zeros((1, samples.shape[1])), np.cumsum(finite, 0)])
    d = np.arange(BAND_PX, samples.shape[0] - BAND_PX)
    if not len(d):
        return None
    beyond = (total[d] - total[d - BAND_PX]) / BAND_PX
    inside = (total[d + BAND_PX] - total[d]) / BAND_PX
    valid = ((count[d] - count[d - BAND_PX]) == BAND_PX) & ((count[d + BAND_PX] - count[d]) == BAND_PX)
    return d, beyond, inside, valid


def _best_edge(samples: np.ndarray, threshold: float, min_valid: int, lines: bool = True, shadows: bool = False):
    """On a (D, S) grid sampled along candidate edges (see :func:`_bands`), the depth whose band beyond is brighter
    than the band inside by more than ``threshold`` at >= ``min_valid`` positions and at >= MIN_CONSISTENCY of its
    valid positions (those in another edge's shadow aside), with the largest median step there: (step, depth, the
    positions where it is brighter, how many shadowed positions were set aside) or None. ``lines``: a straight edge,
    whose shadow counts only at either end; else a circle, whose shadows count only with ``shadows`` (see
    :func:`collimated_mask`)."""
    bands = _bands(samples)
    if bands is None:
        return None
    d, beyond, inside, valid = bands
    diff = np.where(valid, beyond - inside, 0.0)
    brighter = valid & (diff > threshold)
    n_brighter = brighter.sum(1)
    candidates = np.flatnonzero(n_brighter >= max(min_valid, 8))
    best = None
    for k in candidates:
        # A position without a step counts against the edge, unless (a blade's line) it lies in a run at either end
        # of the line where both bands are as bright as the band beyond is where it steps: there the line crosses
        # another blade's shadow or the intensifier's, which keep each other from being found otherwise. (In the
        # middle of a line, such a run is anatomy: the spine where the diaphragm's dome crosses it.)
        step = float(np.median(diff[k][brighter[k]]))
        level = np.median(beyond[k][brighter[k]])
        shadowed = valid[k] & ~brighter[k] & (np.minimum(inside[k], beyond[k]) > level - 0.5 * step)
        exempt = _end_runs(shadowed, valid[k]) if lines else int(shadowed.sum()) if shadows else 0
        consistency = n_brighter[k] / max(int(valid[k].sum() - exempt), 1)
        if consistency < MIN_CONSISTENCY or (best is not None and step <= best[0]):
            continue
        # all the way out to the border, what lies beyond a blade is brighter than the field just inside its edge
        # (the anatomy under a few mm of lead); beyond the spine's or the chest wall's edge, a lung lies darker again
        region = samples[:max(d[k] - 1, 0), brighter[k]]
        finite = np.isfinite(region)
        if finite.any() and np.mean((region > inside[k][brighter[k]][None, :])[finite]) < MIN_BEYOND_BRIGHTER:
            continue
        best = (step, int(d[k]), brighter[k], exempt)
    return best


def _spread(samples: np.ndarray, depth: int, valid: np.ndarray) -> float:
    """How far the steepest step wanders from ``depth`` along the edge (SD in working pixels, +/-5 px searched,
    positions smoothed over 5)."""
    low, high = max(1, depth - 5), min(samples.shape[0] - 1, depth + 6)
    slope = samples[low - 1:high - 1] - samples[low + 1:high + 1]  # beyond minus inside, at depths low..high-1
    slope = ndimage.uniform_filter1d(np.nan_to_num(slope[:, valid]), 5, axis=1)
    return float(np.std(low + np.argmax(slope, 0)))


def _settled(samples: np.ndarray, depth: int, positions: np.ndarray, step: float) -> float:
    """Working pixels from the edge at ``depth`` to where the profile inside it levels off (MARGIN_PX to
    MAX_MARGIN_PX); MARGIN_PX where the region beyond is blanked (flat: its texture a quarter of the field's or less),
    whose edge has no penumbra."""
    def texture(rows):
        values = samples[rows][:, positions]
        return np.nanmedian(np.abs(np.diff(values, axis=1))) if values.size else np.nan

    beyond = texture(slice(max(depth - BAND_PX - 1, 0), depth - 1))
    inside = texture(slice(depth + 1, depth + BAND_PX + 1))
    if np.isfinite(beyond) and np.isfinite(inside) and beyond <= 0.25 * inside:
        return MARGIN_PX
    profile = np.nanmedian(samples[depth:depth + 16][:, positions], 1)
    profile = profile[np.isfinite(profile)]
    if len(profile) < 8:
        return MARGIN_PX
    level = np.median(profile[-4:])
    inside = np.flatnonzero(profile - level < SETTLED * step)
    return float(np.clip(inside[0] if len(inside) else len(profile), MARGIN_PX, MAX_MARGIN_PX))


def _accept(samples: np.ndarray, threshold: float, min_valid: int, lines: bool = True, shadows: bool = False):
    """(step, depth, margin) of the edge found on ``samples`` (see :func:`_best_edge`), or None."""
    found = _best_edge(samples, threshold, min_valid, lines, shadows)
    if found is None:
        return None
    step, depth, positions, shadowed = found
    long_arc = positions.sum() + shadowed >= LONG_ARC * samples.shape[1]  # a shadowed arc counts: the edge runs on
    min_step = MIN_STEP if lines or long_arc else MIN_CIRCLE_STEP
    if step < min_step or _spread(samples, depth, positions) > MAX_SPREAD_PX:
        return None
    return step, depth, _settled(samples, depth, positions, step)


def _straight_edges(x: np.ndarray, threshold: float, sides) -> dict:
    """{side: True beyond the collimator blade found on that side} for each of ``sides`` (0-3) where one is."""
    height, width = x.shape
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    centre = np.array([(height - 1) / 2.0, (width - 1) / 2.0])
    corners = np.array([[0, 0], [0, width - 1], [height - 1, 0], [height - 1, width - 1]], float) - centre
    found_sides = {}
    for side in sides:
        best = None
        for angle in np.pi / 2 * side + np.deg2rad(ANGLES_DEG):
            normal = np.array([np.cos(angle), np.sin(angle)])  # inward, (row, col)
            tangent = np.array([-normal[1], normal[0]])
            start = (corners @ normal).min()
            extent = (corners @ normal).max() - start
            half = np.abs(corners @ tangent).max()
            depths = np.arange(0, int(MAX_DEPTH * extent) + BAND_PX + 1, dtype=np.float64)
            along = np.arange(-half, half + 1.0)
            points = (centre[:, None, None] + normal[:, None, None] * (start + depths)[None, :, None]
                      + tangent[:, None, None] * along[None, None, :])
            found = _accept(_sample(x, points), threshold, int(MIN_LENGTH * min(height, width)))
            if found is not None and (best is None or found[0] > best[0]):
                best = (found[0], normal, start + depths[found[1]] + found[2])
        if best is not None:
            _, normal, offset = best
            found_sides[side] = (rows - centre[0]) * normal[0] + (cols - centre[1]) * normal[1] < offset
    return found_sides


def _sample(x: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``x`` at ``points`` (2, ...: row, col), linearly interpolated; NaN outside the image."""
    samples = ndimage.map_coordinates(x, points, order=1, cval=np.nan)
    samples[(points[0] < 0) | (points[0] > x.shape[0] - 1) | (points[1] < 0) | (points[1] > x.shape[1] - 1)] = np.nan
    return samples


def _circle_samples(x: np.ndarray, centre, radii: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """(len(radii), len(phi)) samples of ``x`` on circles about ``centre`` (NaN outside the image)."""
    return _sample(x, np.stack([centre[0] + radii[:, None] * np.sin(phi)[None],
                                centre[1] + radii[:, None] * np.cos(phi)[None]]))


def _circle_score(samples: np.ndarray, threshold: float) -> int:
    """At the radius where it is largest, how many more angles step up (brighter beyond) than do not: a circle about
    the right centre steps at one radius all round, one about a centre a few px off only along part of it, so this
    finds the centre before :func:`_accept` judges the edge. (The count of angles that step up alone favoured long
    circles through anatomy, half of whose angles step up by chance, over the short corner arcs of a field that the
    image cuts on every side.)"""
    bands = _bands(samples)
    if bands is None:
        return 0
    _, beyond, inside, valid = bands
    brighter = valid & (beyond - inside > threshold)
    return int((2 * brighter.sum(1) - valid.sum(1)).max())


def _circle_edge(x: np.ndarray, threshold: float, shadows: bool = False) -> np.ndarray | None:
    """True outside an image intensifier's round field, when one is found (else None). Its centre is searched coarse
    to fine on :func:`_circle_score` (every second angle): :data:`CIRCLE_CENTRES`, then a 3 x 3 grid at a third of
    the spacing about the best; the edge is then judged (:func:`_accept`, every angle) about each centre of a last
    3 x 3 grid, at a ninth, about the best of those; if none passes and ``shadows``, judged there once more with
    shadowed arcs set aside (:func:`_best_edge`, :func:`collimated_mask`)."""
    height, width = x.shape
    phi = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    radii = np.arange(0.8 * max(height, width), 0.3 * min(height, width), -1.0)  # from the outside in
    # an arc of at least MIN_ARC of the smaller side (at the largest radius, where it holds the fewest positions: an
    # intensifier's field cut by blades shows only short arcs in the corners)
    min_valid = int(np.ceil(MIN_ARC * min(height, width) / (2 * np.pi * radii.max()) * len(phi)))
    spacing = np.diff(CIRCLE_CENTRES[:2])[0] * np.array([height, width])
    centres = [((height - 1) / 2.0 + dy, (width - 1) / 2.0 + dx)
               for dy in CIRCLE_CENTRES * height for dx in CIRCLE_CENTRES * width]
    for _ in range(2):  # the grid, then about its best centre at a third of the spacing
        best_centre = max(centres, key=lambda centre: _circle_score(_circle_samples(x, centre, radii, phi[::2]),
                                                                    threshold))
        spacing = spacing / 3
        centres = [(best_centre[0] + i * spacing[0], best_centre[1] + j * spacing[1])
                   for i in (-1, 0, 1) for j in (-1, 0, 1)]
    best = None
    samples = [_circle_samples(x, centre, radii, phi) for centre in centres]
    for set_aside in (False, True) if shadows else (False,):
        for centre, on_circles in zip(centres, samples):
            found = _accept(on_circles, threshold, min_valid, lines=False, shadows=set_aside)
            if found is not None and (best is None or found[0] > best[0]):
                best = (found[0], centre, radii[found[1]] - found[2])
        if best is not None:
            break
    if best is None:
        return None
    _, (cy, cx), radius = best
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.hypot(rows - cy, cols - cx) > radius


def collimated_mask(image: np.ndarray, blanked: np.ndarray | None = None) -> np.ndarray:
    """True where ``image`` ("bright = attenuating") lies beyond a collimator blade or outside an image-intensifier
    circle that was not blanked (see the module docstring); the shape of ``image``. ``blanked``: True where blanked
    collimation was found (by its flat value, which outlines it exactly): an edge found here whose region lies mostly
    in it is that one, and adds nothing.

    Edges are found one after another, each left out of the search for the next. A blade that cuts the intensifier's
    circle and the circle can keep each other from being found: the blade's edge runs only between the circle's arcs
    (shorter than MIN_LENGTH where the blade cuts a small circle), and along the arc beyond the blade the circle does
    not step up. So when a round finds no blade and no circle, the circle is judged once more with the arcs that lie
    in another edge's shadow (both bands as bright as the region beyond where it steps up) left out of its
    consistency, which breaks that deadlock. Only then: with shadows set aside in every round, alongside the blades,
    circles settled in a blade's shadow, and registration through lead lost more frames than it gained
    (training/README.md)."""
    image = np.asarray(image, dtype=np.float64)
    height, width = image.shape
    scale = max(height, width) / WORK_PX
    x = ndimage.zoom(ndimage.gaussian_filter(image, 0.5 * scale), 1 / scale, order=1) if scale > 1 else image.copy()
    known = _nearest(blanked, x.shape) if blanked is not None and blanked.any() else np.zeros(x.shape, bool)

    def new(region):
        """Whether an edge's region is not the blanked one: judged beyond the inward margin it carries, which along
        a short arc (a circle the image cuts to its corners) is a large share of it."""
        if not known.any():
            return True
        core = ndimage.binary_erosion(region, iterations=int(np.ceil(MAX_MARGIN_PX)), border_value=1)
        return bool(core.any()) and np.mean(known[core]) < 0.8

    low, high = np.percentile(x, [1, 99])
    x = (x - low) / max(high - low, 1e-12)
    threshold = 2.0 * _noise(x) * np.sqrt(2.0 / BAND_PX)  # twice the noise of a difference of two band means
    # Blades overlap (a corner lies beyond two) and cut the intensifier's circle, so each edge found is left out of
    # the search for the others, which then run again: the part of a line beyond another blade has no step.
    beyond = np.zeros(x.shape, bool)
    sides, circle = [0, 1, 2, 3], True
    while sides or circle:
        searched = np.where(beyond, np.nan, x)
        found = _straight_edges(searched, threshold, sides)
        ring = _circle_edge(searched, threshold, shadows=not found) if circle else None
        if not found and ring is None:
            break
        for side, region in found.items():
            beyond |= region if new(region) else known & region
            sides.remove(side)
        if ring is not None:
            beyond |= ring if new(ring) else known & ring
            circle = False
    return _nearest(beyond, image.shape) if beyond.any() else np.zeros(image.shape, bool)


def _nearest(mask: np.ndarray, shape) -> np.ndarray:
    """``mask`` resampled to ``shape`` by nearest pixel centres (between the frame's grid and the working one)."""
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * mask.shape[0] / shape[0]).astype(int), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * mask.shape[1] / shape[1]).astype(int), mask.shape[1] - 1)
    return mask[np.ix_(rows, cols)]
