"""A C-arm's image processing must not become a pose error: on a real DRR of the sample CT put through dynamic-range
compression and edge enhancement before its display curve (as a C-arm's image chain does), the refinement that
filters the DRR like the frame (flatten / sharpen candidates) finds the pose; the blur-only model is pulled away. On an
unprocessed frame it takes no such filter."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from medai.drr import CArmGeometry, Pose, render
from medai.registration import RigidPose
from medai.registration.augment import carm_processing
from medai.registration.environment import FixedImage
from medai.registration.pipeline import REFINE_LEVELS
from medai.registration.refine import RefineLevel, _Residual, refine

CARM = CArmGeometry(1020.0, 750.0, 128, 128, 2.4, 2.4)
TRUTH = Pose.from_array((4.0, -3.0, 2.0, 1.0, -1.0, -10.0))
PROCESSING = {"drc_amount": 0.6, "drc_width": 0.1, "edge_amount": 1.5, "edge_width": 0.015}
FINE = {k: v for k, v in REFINE_LEVELS[-1].items() if k not in ("ct_spacing_mm", "work_size", "iterations")}
BLUR_ONLY = {k: v for k, v in FINE.items() if k not in ("flatten_candidates", "sharpen_candidates")}


def _frame(line_integrals, processing):
    image = ndimage.gaussian_filter(line_integrals, 1.0)
    if processing:
        image = carm_processing(image, **processing)
    low, high = np.percentile(image, [0.5, 99.5])
    return FixedImage.build((np.clip((image - low) / (high - low), 0, 1) ** 1.3).astype(np.float32),
                            np.ones((128, 128), bool), CARM)


@pytest.fixture(scope="module")
def frames(sample_ct):
    """(prepared CT, centre, {"processed" | "plain": fixed image}) of the DRR at TRUTH."""
    _, ct, centre = sample_ct
    with torch.inference_mode():
        line_integrals = render(ct, CARM, TRUTH)[0].numpy().astype(np.float64)
    return ct, centre, {"processed": _frame(line_integrals, PROCESSING), "plain": _frame(line_integrals, None)}


def _error(frames, kind, options):
    """Pose error (tx, ty, tz mm, rx, ry, rz deg) after the fine level from the truth 6 mm deeper."""
    ct, centre, fixed = frames
    level = RefineLevel(ct, fixed[kind], iterations=10, **options)
    return refine([level], RigidPose.from_pose(TRUTH).moved(np.r_[0.0, 0.0, 6.0, 0.0, 0.0, 0.0]), centre).pose.error_to(
        RigidPose.from_pose(TRUTH))


def test_a_processed_frame_is_registered_when_the_drr_is_filtered_like_it(frames):
    blur_only = _error(frames, "processed", BLUR_ONLY)
    filtered = _error(frames, "processed", FINE)
    assert abs(blur_only[2]) > 1.5, blur_only  # measured: -2.4 mm
    assert abs(filtered[2]) < 0.5 and np.abs(filtered[:2]).max() < 0.3 and np.abs(filtered[3:]).max() < 0.2, filtered


def test_a_changed_filter_reruns_the_iterations_but_takes_the_exact_last_step_once(frames):
    """Where the filter chosen at the level's end differs from the start's, the iterations go on with it from there;
    the rendered-Jacobian last step (and the covariance) comes once, after the check, not before and after."""
    ct, centre, fixed = frames
    level = RefineLevel(ct, fixed["processed"], iterations=10, **FINE)
    outcome = refine([level], RigidPose.from_pose(TRUTH).moved(np.r_[0.0, 0.0, 6.0, 0.0, 0.0, 0.0]), centre)
    iterations = [row["iteration"] for row in outcome.log]
    assert iterations.count(0) == 2, iterations  # the filter changed: a second run of iterations
    assert iterations.count(level.iterations) == 1 and iterations[-1] == level.iterations, iterations
    assert np.isfinite(outcome.covariance).all()
    error = outcome.pose.error_to(RigidPose.from_pose(TRUTH))
    assert abs(error[2]) < 0.5 and np.abs(error[3:]).max() < 0.2, error


def test_the_processing_is_recognised_and_an_unprocessed_frame_gets_none(frames):
    ct, centre, fixed = frames
    near = RigidPose.from_pose(TRUTH).moved(np.r_[0.5, -0.5, 2.0, 0.2, -0.2, 0.2])
    chosen = {kind: _Residual(RefineLevel(ct, fixed[kind], **FINE), centre).choose_filter(near) for kind in fixed}
    blur, flatten, sharpen = chosen["plain"]
    assert flatten == (0.0, 0.0) and sharpen == (0.0, 0.0) and blur == 1.0, chosen
    blur, flatten, sharpen = chosen["processed"]
    assert flatten[0] > 0 and sharpen[0] > 0, chosen


def test_carm_processing_compresses_the_range_and_sharpens_edges():
    step = np.zeros((64, 64))
    step[:, 32:] = 4.0
    step += np.linspace(0, 8, 64)[:, None]  # a slow gradient: what compression flattens
    flat = carm_processing(step, drc_amount=0.6, drc_width=0.1)
    assert np.ptp(flat[:, 10]) < 0.6 * np.ptp(step[:, 10])
    sharp = carm_processing(step, edge_amount=1.0, edge_width=0.03)
    assert sharp[32, 32] > step[32, 32] and sharp[32, 31] < step[32, 31]  # overshoot on both sides of the edge


def test_training_frames_can_go_through_the_processing_without_changing_the_rest(sample_ct):
    """The same seed gives the same frame but for the processing (which draws nothing from the frame's generator):
    fine detail relative to the whole range is stronger, and the training config switches it on by probability."""
    from medai.registration.augment import fluoroscopy_like, random_processing
    from medai.registration.training import TrainingConfig

    _, ct, _ = sample_ct
    with torch.inference_mode():
        line_integrals = render(ct, CARM, TRUTH)[0].numpy()
    settings = random_processing(np.random.default_rng(1))
    plain, mask = fluoroscopy_like(line_integrals, np.random.default_rng(5), collimate=False)
    processed, mask2 = fluoroscopy_like(line_integrals, np.random.default_rng(5), collimate=False, processing=settings)
    assert mask.all() and mask2.all() and not np.allclose(plain, processed)

    def detail(image):
        return np.abs(image - ndimage.gaussian_filter(image, 2.0)).mean() / image.std()

    assert detail(processed) > 1.3 * detail(plain)
    assert TrainingConfig.from_dict({"processing": 0.5}).processing == 0.5
