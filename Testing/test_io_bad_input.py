"""Bad input -> MedAIInputError naming the problem (never a deep library traceback); inputs unmodified."""
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from conftest import tree_digest
from medai.errors import MedAIInputError
from medai.geometry import Geometry
from medai.io import read_dicom_series, read_volume, read_xray

CT = "ct_dicom/3Dircadb1.17/PATIENT_DICOM"


def copy_slices(data_dir, tmp_path, count=6, name="ct"):
    source = data_dir / CT
    target = tmp_path / name
    target.mkdir()
    for n in range(count):
        shutil.copy(source / f"image_{n}", target / f"image_{n}")
    return target


def test_small_copied_series_reads(data_dir, tmp_path):
    volume = read_volume(str(copy_slices(data_dir, tmp_path)))
    assert volume.array.shape == (6, 512, 512)
    np.testing.assert_allclose(volume.geometry.spacing_mm, (0.743, 0.743, 1.6), atol=1e-6)


def test_truncated_dicom_file(data_dir, tmp_path):
    folder = copy_slices(data_dir, tmp_path)
    victim = folder / "image_3"
    victim.write_bytes(victim.read_bytes()[:5000])
    before = tree_digest(folder)
    with pytest.raises(MedAIInputError, match=r"image_3.*(truncated|corrupt)"):
        read_volume(str(folder))
    assert tree_digest(folder) == before


def test_folder_mixing_two_series(data_dir, tmp_path):
    folder = copy_slices(data_dir, tmp_path)
    mask = data_dir / "ct_dicom/3Dircadb1.17/MASKS_DICOM/liver"
    for n in range(3):
        shutil.copy(mask / f"image_{n}", folder / f"mask_{n}")
    with pytest.raises(MedAIInputError, match="mixes 2 DICOM series"):
        read_volume(str(folder))
    uid = str(pydicom.dcmread(folder / "image_0", stop_before_pixels=True).SeriesInstanceUID)
    assert read_volume(str(folder), series_uid=uid).array.shape == (6, 512, 512)


def test_non_image_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    with pytest.raises(MedAIInputError, match="not a volume file"):
        read_volume(str(path))
    with pytest.raises(MedAIInputError, match="not an X-ray image"):
        read_xray(str(path))


def test_non_image_with_image_suffix(tmp_path):
    for name in ("fake.nii.gz", "fake.png"):
        path = tmp_path / name
        path.write_bytes(b"\x00garbage" * 10)
        with pytest.raises(MedAIInputError, match=name):
            (read_volume if name.endswith("gz") else read_xray)(str(path))


def test_empty_folder(tmp_path):
    with pytest.raises(MedAIInputError, match="no DICOM files"):
        read_volume(str(tmp_path))


def test_missing_path(tmp_path):
    with pytest.raises(MedAIInputError, match="no such file"):
        read_volume(str(tmp_path / "nope"))


def test_4d_nifti_where_3d_needed(tmp_path):
    import nibabel as nib

    path = tmp_path / "dwi.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 4, 2), np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    with pytest.raises(MedAIInputError, match="4D image.*3D scalar volume is needed"):
        read_volume(str(path))


def test_2d_image_where_3d_needed(tmp_path):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5), np.float32)), str(path))
    with pytest.raises(MedAIInputError, match="2D image.*3D volume is needed"):
        read_volume(str(path))


def test_nan_volume(tmp_path):
    array = np.ones((4, 5, 6), np.float32)
    array[1, 2, 3] = np.nan
    array[0, 0, 0] = np.inf
    path = tmp_path / "nan.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    before = tree_digest(path)
    with pytest.raises(MedAIInputError, match="2 voxels are NaN or infinite"):
        read_volume(str(path))
    assert tree_digest(path) == before


def test_gantry_tilt_is_refused(data_dir, tmp_path):
    folder = copy_slices(data_dir, tmp_path)
    for n in range(6):
        ds = pydicom.dcmread(folder / f"image_{n}")
        ds.ImagePositionPatient = [0.0, n * 1.6 * np.tan(np.deg2rad(12)), n * 1.6]
        ds.save_as(folder / f"image_{n}")
    with pytest.raises(MedAIInputError, match="gantry tilt"):
        read_volume(str(folder))


def test_missing_slice_is_refused(data_dir, tmp_path):
    folder = copy_slices(data_dir, tmp_path)
    (folder / "image_3").unlink()
    with pytest.raises(MedAIInputError, match="missing slice.*gap of 3.200 mm"):
        read_dicom_series(str(folder))


def test_geometry_rejects_nan_and_zero_spacing():
    with pytest.raises(MedAIInputError, match="NaN"):
        Geometry((1.0, np.nan, 1.0))
    with pytest.raises(MedAIInputError, match="positive"):
        Geometry((1.0, 0.0, 1.0))


def test_unsupported_dtype(tmp_path):
    path = tmp_path / "complex.mha"
    image = sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int64))
    sitk.WriteImage(image, str(path))
    with pytest.raises(MedAIInputError, match="unsupported voxel type int64"):
        read_volume(str(path))
