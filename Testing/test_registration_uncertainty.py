"""The refinement's pose uncertainty (Gauss-Newton covariance mapped to millimetres over the body): exact on
analytic covariances, and on real DRRs of the sample CT larger for a noisy frame than for a clean one."""
import numpy as np
import torch

from medai.drr import CArmGeometry, Pose, prepare_ct, render
from medai.io import read_volume
from medai.registration import RigidPose
from medai.registration.environment import FixedImage
from medai.registration.refine import RefineLevel, refine, uncertainty_mm
from medai.samples import sample_path


def test_translation_covariance_is_its_rms_displacement():
    covariance = np.diag([4.0, 4.0, 4.0, 0.0, 0.0, 0.0])  # 2 mm SD per axis
    points = np.random.default_rng(0).normal(0, 80, (500, 3))
    assert abs(uncertainty_mm(covariance, points) - np.sqrt(12.0)) < 1e-9


def test_rotation_about_the_beam_moves_a_ring_by_radius_times_angle():
    covariance = np.diag([0.0, 0.0, 0.0, 0.0, 0.0, 1.0])  # 1 deg SD about the beam (z)
    angles = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    ring = np.c_[100 * np.cos(angles), 100 * np.sin(angles), np.zeros_like(angles)]
    assert abs(uncertainty_mm(covariance, ring) - 100 * np.pi / 180) < 1e-9
    on_axis = np.c_[np.zeros(10), np.zeros(10), np.linspace(-50, 50, 10)]
    assert uncertainty_mm(covariance, on_axis) < 1e-9  # points on the rotation axis do not move
    assert uncertainty_mm(np.diag(np.full(6, np.inf)), ring) == float("inf")  # no Jacobian: unknown


def _sample_ct_and_frame():
    """The sample abdominal CT (volume, prepared, centre), a C-arm, a pose and the clean DRR there."""
    ct = read_volume(str(sample_path("ct_abdomen")))
    prepared = prepare_ct(ct)
    carm = CArmGeometry(1020.0, 750.0, 128, 128, 3.0, 3.0)
    truth = Pose.from_array((4.0, -3.0, 2.0, 1.0, -1.0, -10.0))
    with torch.inference_mode():
        image = render(prepared, carm, truth)[0].numpy()
    return ct, prepared, ct.geometry.centre_ras(ct.array.shape), carm, truth, image


def test_noisy_frame_is_less_certain_than_a_clean_one():
    _, prepared, centre, carm, truth, clean = _sample_ct_and_frame()
    noisy = clean + np.random.default_rng(1).normal(0, 0.15 * clean.std(), clean.shape)
    start = RigidPose.from_pose(truth).moved(np.r_[2.0, -2.0, 3.0, 1.0, 0.5, -1.0])
    body = (prepared.geometry.index_to_ras(prepared.tissue_ijk) - centre)
    spreads = []
    for image in (clean, noisy):
        fixed = FixedImage.build(image.astype(np.float32), np.ones(image.shape, bool), carm)
        outcome = refine([RefineLevel(prepared, fixed, 1.0, True, 10)], start, centre)
        assert np.all(np.isfinite(np.diag(outcome.covariance)))
        spreads.append(uncertainty_mm(outcome.covariance, body @ outcome.pose.rotation.T))
    print(f"uncertainty clean {spreads[0]:.3f} mm, noisy {spreads[1]:.3f} mm")
    assert 0 < spreads[0] < spreads[1] / 2


def test_model_shift_reads_a_displaced_ct_as_the_opposite_pose_change():
    """The confidence's model check (refine.model_shift): rendering the last level's DRR from another CT moves the
    optimum by what that CT changes. The same CT: no move; the CT displaced by d (RAS): the optimum moves the body
    back, a translation of -R d in C-arm axes (R: RAS -> C-arm), and no rotation."""
    from dataclasses import replace

    from medai.registration.refine import model_shift

    ct, prepared, centre, carm, truth, frame = _sample_ct_and_frame()
    fixed = FixedImage.build(frame.astype(np.float32), np.ones(frame.shape, bool), carm)
    start = RigidPose.from_pose(truth).moved(np.r_[1.0, -1.0, 2.0, 0.5, 0.5, -0.5])
    outcome = refine([RefineLevel(prepared, fixed, 1.0, True, 10)], start, centre)
    assert np.abs(model_shift(outcome, prepared, centre)).max() < 0.05

    d_ras = np.array([1.5, -1.0, 1.0])
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    moved = prepare_ct(replace(ct, geometry=replace(ct.geometry, origin_lps=ct.geometry.origin_lps + lps_to_ras @ d_ras)))
    shift = model_shift(outcome, moved, centre)
    expected = -outcome.pose.rotation @ d_ras
    print("shift", shift.round(3), "expected translation", expected.round(3))
    assert np.all(np.abs(shift[:2] - expected[:2]) < 0.15)  # in the detector plane
    assert abs(shift[2] - expected[2]) < 0.4  # along the beam (read from magnification alone), one linearised step
    assert np.abs(shift[3:]).max() < 0.1
