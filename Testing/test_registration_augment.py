"""CT augmentation for the agent's training (anatomy variants of one real CT), the simulated fluoroscopy dose, and the
agent's oscillation rule."""
import numpy as np
import pytest

from medai.drr import CArmGeometry, Pose, prepare_ct, render
from medai.io import Volume, read_volume, resample_volume
from medai.registration.agent import revisits
from medai.registration.augment import AEC_DOSE_LOG10, augment_ct, fill_internal_air, fluoroscopy_like, tube_output
from medai.registration.poses import RigidPose, action_delta


@pytest.fixture(scope="module")
def chest_6mm(chest_ct_path):
    return resample_volume(read_volume(str(chest_ct_path)), (6.0,) * 3)


def test_filling_the_air_inside_the_body_removes_the_lungs_and_keeps_the_air_outside(chest_6mm):
    hu = chest_6mm.array.astype(np.float32)
    before = hu.copy()
    filled = fill_internal_air(hu, np.random.default_rng(0))
    assert np.array_equal(hu, before)  # the input is not modified
    centre = tuple(n // 2 for n in hu.shape)
    lungs = (hu < -500) & (filled != hu)
    assert lungs.sum() > 0.05 * hu.size  # the lungs of a chest CT: a large share of the volume
    assert np.all(filled[lungs] > -300)  # now soft tissue
    assert filled[centre[0], 2, 2] == hu[centre[0], 2, 2] < -500  # air around the body (a corner) stays air
    assert np.array_equal(filled[hu > -500], hu[hu > -500])  # tissue untouched

    # physically: an AP DRR of the filled CT attenuates more, through the lungs, not outside the body
    carm = CArmGeometry(1020, 750, 64, 64, 6.0, 6.0)
    plain = render(prepare_ct(chest_6mm), carm, Pose())[0].numpy()
    solid = render(prepare_ct(Volume(filled, chest_6mm.geometry, dict(chest_6mm.meta))), carm, Pose())[0].numpy()
    assert np.all(solid >= plain - 1e-4)
    assert (solid - plain).max() > 0.5  # tens of centimetres of lung (~0 attenuation) became soft tissue


def test_a_short_scan_keeps_a_block_of_slices_at_its_physical_place(chest_6mm):
    rng = np.random.default_rng(1)
    for _ in range(3):
        short = augment_ct(chest_6mm, rng, crop=0.0, deform_mm=0.0, short_scan=1.0)
        kept = short.array.shape[0] / chest_6mm.array.shape[0]
        assert 0.4 <= kept <= 0.86
        assert short.array.shape[1:] == chest_6mm.array.shape[1:]
        # the first kept slice sits where that slice was: a whole number of slices along the CT's own axis
        offset_index = np.linalg.solve(chest_6mm.geometry.direction_lps * chest_6mm.geometry.spacing_mm,
                                       short.geometry.origin_lps - chest_6mm.geometry.origin_lps)
        assert np.allclose(offset_index[:2], 0, atol=1e-6)
        assert abs(offset_index[2] - round(offset_index[2])) < 1e-6
        k = int(round(offset_index[2]))
        assert 0 <= k <= chest_6mm.array.shape[0] - short.array.shape[0]
        body = chest_6mm.array[k:k + short.array.shape[0]] > -500
        assert np.mean((short.array > -500) == body) > 0.97  # the same anatomy (HU scale and noise aside)


def test_a_loop_of_non_commuting_steps_counts_as_a_revisit():
    start = RigidPose.from_pose(Pose(rx=-10, rz=30))
    pose, visited = start, []
    for action in (6, 8, 7, 9):  # +rx, +ry, -rx, -ry: back near, not exactly to, the start
        visited.append(pose)
        pose = pose.moved(action_delta(action, 6.0, 3.0))
    assert not np.allclose(pose.rotation, start.rotation, atol=1e-4)
    assert revisits(pose, visited, 6.0, 3.0)
    assert not revisits(start.moved(action_delta(0, 6.0, 3.0)), [start], 6.0, 3.0)  # one step away: new
    assert not revisits(start.moved(action_delta(10, 6.0, 3.0)), [start], 6.0, 3.0)
    assert not revisits(start, [], 6.0, 3.0)


def test_automatic_exposure_control_keeps_the_detected_quanta_whatever_the_body_attenuates(chest_6mm):
    """A fixed tube output leaves a thicker body's frame with e^-(extra attenuation) of the quanta; AEC raises the
    output so the central field's median pixel gets the same quanta (within its dose range) for both."""
    carm = CArmGeometry(1000, 700, 96, 96, 3.5, 3.5)
    chest = render(prepare_ct(chest_6mm), carm, Pose())[0].numpy().astype(np.float64)
    thicker = chest * 1.4  # e.g. an abdomen: 40% more attenuation along every ray
    centre = (slice(24, 72), slice(24, 72))

    def detected(line_integrals, level, dose):
        return tube_output(line_integrals, level, dose) * np.median(np.exp(-line_integrals[centre]))

    extra = np.median(np.exp(-chest[centre])) / np.median(np.exp(-thicker[centre]))
    assert extra > 3  # the real chest attenuates enough for the difference to matter
    for level in (2.5, 3.5, 4.5):
        assert detected(chest, level, "fixed") / detected(thicker, level, "fixed") == pytest.approx(extra, rel=1e-6)
        aec = detected(chest, level, "aec"), detected(thicker, level, "aec")
        assert aec[0] == pytest.approx(aec[1], rel=1e-6)
        assert 10 ** AEC_DOSE_LOG10[0] * 0.999 <= aec[0] <= 10 ** AEC_DOSE_LOG10[1] * 1.001
    # and in the frames: the contrast-to-noise ratio of a thick two-tissue object is far higher under AEC
    assert (np.mean([two_tissue_cnr(s, dose="aec") for s in range(6)])
            > 2 * np.mean([two_tissue_cnr(s) for s in range(6)]))
    with pytest.raises(ValueError, match="dose"):
        tube_output(chest, 3.0, "manual")


def test_a_binned_pixel_sums_the_quanta_of_the_pixels_it_bins():
    """``quanta_scale`` (a binned pixel's area over the unbinned one's): 9x the quanta, about 3x the contrast-to-noise
    ratio (averaged over frames: each frame also draws its own blur and display curve)."""
    ratio = (np.mean([two_tissue_cnr(s, quanta_scale=9.0) for s in range(20)])
             / np.mean([two_tissue_cnr(s) for s in range(20)]))
    assert 2.4 < ratio < 3.8


def two_tissue_cnr(seed: int, dose: str = "fixed", quanta_scale: float = 1.0) -> float:
    """Contrast-to-noise ratio between the two halves of a frame of a thick two-tissue object (5 and 6 attenuation
    lengths; no collimation)."""
    thick = np.full((96, 96), 5.0)
    thick[:, 48:] = 6.0
    image, _ = fluoroscopy_like(thick, np.random.default_rng(seed), collimate=False, dose=dose,
                                quanta_scale=quanta_scale)
    left, right = image[8:-8, 8:40], image[8:-8, 56:-8]
    return abs(right.mean() - left.mean()) / np.sqrt(0.5 * (left.var() + right.var()))


def test_another_build_scales_the_body_and_its_projection(chest_6mm):
    """``size``: the same voxels on a scaled grid, a wider or narrower patient; its AP DRR's body outline follows."""
    rng = np.random.default_rng(2)
    carm = CArmGeometry(1020, 750, 96, 96, 5.0, 5.0)

    def outline_width(volume):  # body width (detector columns) of an AP DRR through the CT's centre
        drr = render(prepare_ct(volume), carm, Pose())[0].numpy()
        columns = np.flatnonzero((drr > 0.5 * drr.max()).any(axis=0))
        return columns[-1] - columns[0]

    plain = augment_ct(chest_6mm, np.random.default_rng(3), crop=0.0, deform_mm=0.0)
    assert np.allclose(plain.geometry.spacing_mm, chest_6mm.geometry.spacing_mm)  # size 0: the build is kept
    widths = []
    for _ in range(4):
        scaled = augment_ct(chest_6mm, rng, crop=0.0, deform_mm=0.0, size=0.25)
        ratio = scaled.geometry.spacing_mm / chest_6mm.geometry.spacing_mm
        assert np.all(ratio[:2] >= 0.8 / 1.04 - 1e-9) and np.all(ratio[:2] <= 1.25 * 1.04 + 1e-9)
        assert 1 / 1.125 - 1e-9 <= ratio[2] <= 1.125 + 1e-9
        assert scaled.array.shape == chest_6mm.array.shape  # the same voxels, on another grid
        widths.append((ratio[0], outline_width(scaled) / outline_width(plain)))
    for ratio, width in widths:
        assert abs(width - ratio) < 0.06, (ratio, width)  # the projected body is as much wider as its voxels
    assert max(r for r, _ in widths) - min(r for r, _ in widths) > 0.05  # builds differ from copy to copy
