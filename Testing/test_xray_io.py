"""2D X-ray reading: real JPEG/PNG chest X-rays, DICOM CR/DX/XA written here with geometry tags."""
import numpy as np
import pytest
from PIL import Image

from medai.errors import MedAIInputError
from medai.io import describe, read_xray, write_xray_dicom


def test_kermany_rgb_jpeg_that_is_grey(data_dir):
    path = data_dir / "chest_xray/kermany_224/NORMAL/IM-0448-0001.jpeg"
    assert np.asarray(Image.open(path)).ndim == 3  # stored as RGB
    image = read_xray(str(path))
    assert image.shape == (224, 224) and image.array.dtype == np.float32
    assert image.pixel_spacing_mm is None


def test_covid_radiography_grey_png(data_dir):
    path = next((data_dir / "chest_xray/covid19_radiography_224/COVID").glob("*.png"))
    image = read_xray(str(path))
    np.testing.assert_array_equal(image.array, np.asarray(Image.open(path), dtype=np.float32))


def test_colour_photo_is_refused(tmp_path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[..., 2] = np.arange(32)[None, :] * 4
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    with pytest.raises(MedAIInputError, match="colour image"):
        read_xray(str(path))


def test_16bit_png_and_tiff(tmp_path):
    pixels = (np.arange(20 * 30, dtype=np.uint32).reshape(20, 30) * 97 % 65535).astype(np.uint16)
    for name in ("x.png", "x.tif"):
        Image.fromarray(pixels).save(tmp_path / name)
        np.testing.assert_array_equal(read_xray(str(tmp_path / name)).array, pixels.astype(np.float32))


def test_dicom_xa_geometry_tags_round_trip(tmp_path):
    pixels = np.linspace(0, 5.0, 64 * 48, dtype=np.float32).reshape(64, 48)
    path = tmp_path / "drr.dcm"
    write_xray_dicom(path, pixels, (0.5, 0.4), "XA", 1020.0, 760.0, 30.0, -15.0)
    image = read_xray(str(path))
    np.testing.assert_allclose(image.array, pixels, atol=5.0 / 65535 + 1e-6)
    assert image.pixel_spacing_mm == (0.5, 0.4)
    assert image.meta["distance_source_to_detector_mm"] == 1020.0
    assert image.meta["distance_source_to_patient_mm"] == 760.0
    assert image.meta["positioner_primary_angle_deg"] == 30.0
    assert image.meta["positioner_secondary_angle_deg"] == -15.0
    info = describe(str(path))
    assert info["kind"] == "xray" and info["modality"] == "XA" and info["spacing_mm"] == [0.5, 0.4]


def test_monochrome1_16bit_is_inverted(tmp_path):
    stored = np.zeros((16, 16), np.uint16)
    stored[:, 8:] = 4000  # MONOCHROME1: high stored value = displayed dark (little attenuation)
    path = tmp_path / "cr.dcm"
    write_xray_dicom(path, stored, (0.15, 0.15), "CR", photometric="MONOCHROME1", bits=12)
    image = read_xray(str(path))
    assert image.meta["photometric"] == "MONOCHROME1"
    assert image.array[0, 0] == 4095 and image.array[0, 15] == 95  # inverted in the 12-bit range
    assert image.array[:, :8].mean() > image.array[:, 8:].mean()


def test_multiframe_xa_picks_frame(tmp_path):
    frames = np.stack([np.full((8, 10), v, np.uint16) for v in (10, 20, 30)])
    path = tmp_path / "run.dcm"
    write_xray_dicom(path, frames, (0.3, 0.3), "XA")
    assert read_xray(str(path), frame=2).array.mean() == 30
    assert read_xray(str(path)).meta["n_frames"] == 3
    with pytest.raises(MedAIInputError, match="frame 5 requested but the file has 3 frames"):
        read_xray(str(path), frame=5)


def test_ct_slice_given_as_xray_is_refused(data_dir):
    with pytest.raises(MedAIInputError, match="CT image was given where an X-ray"):
        read_xray(str(data_dir / "ct_dicom/3Dircadb1.17/PATIENT_DICOM/image_0"))


def test_truncated_jpeg(data_dir, tmp_path):
    path = tmp_path / "cut.jpeg"
    path.write_bytes((data_dir / "chest_xray/kermany_224/NORMAL/IM-0448-0001.jpeg").read_bytes()[:300])
    with pytest.raises(MedAIInputError, match="cut.jpeg"):
        read_xray(str(path))
