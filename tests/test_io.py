"""Reading and writing volumes: round trips per format, geometry kept, bad input as SynthmedError."""

from __future__ import annotations

from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import scipy.io
import SimpleITK as sitk
from PIL import Image

from synthmed.data.formats import numpy_array
from synthmed.data.io import Volume, is_volume_path, natural_sort_key, read_volume, volume_suffix, write_volume
from synthmed.errors import SynthmedError

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, cy, cz, sx, sy, sz = np.cos(ax), np.cos(ay), np.cos(az), np.sin(ax), np.sin(ay), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_affine(spacing=(0.9, 1.1, 2.5), origin=(-90.0, 112.5, -40.0), angles=(0.1, -0.2, 0.3)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = rotation(*angles) @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def ramp(shape, dtype=np.float32) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape).astype(dtype)


def raises(path_text, *needles):
    """Context manager: a SynthmedError whose one-line message names the file (and the needles)."""

    class _Check:
        def __enter__(self):
            self.ctx = pytest.raises(SynthmedError)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.ctx.__exit__(*exc)
            message = str(self.info.value)
            assert "\n" not in message, message
            assert str(path_text) in message, (path_text, message)
            for needle in needles:
                assert needle in message, (needle, message)
            return handled

    return _Check()


# --------------------------------------------------------------------------- names


def test_volume_suffix_and_is_volume_path(tmp_path):
    assert volume_suffix("a/scan.NII.GZ") == ".nii.gz"
    assert volume_suffix("scan.nii") == ".nii"
    for suffix in (".nrrd", ".mha", ".mhd", ".npy", ".mat", ".png", ".tif", ".tiff"):
        assert volume_suffix(f"x{suffix}") == suffix
        assert is_volume_path(f"x{suffix}")
    assert volume_suffix("notes.txt") == "" and not is_volume_path("notes.txt")
    assert volume_suffix(".nii.gz") == ""
    assert volume_suffix(tmp_path) == ""
    assert not is_volume_path(tmp_path)  # empty folder
    slices = tmp_path / "slices"
    slices.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(slices / "s_1.png")
    assert is_volume_path(slices)
    assert is_volume_path(str(slices / "*.png"))
    assert not is_volume_path(str(slices / "*.tif"))
    assert sorted(["s_10", "s_2", "s_1"], key=natural_sort_key) == ["s_1", "s_2", "s_10"]


# --------------------------------------------------------------------------- NIfTI


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_round_trip_keeps_oblique_geometry(tmp_path, suffix):
    sform = oblique_affine()
    qform = oblique_affine(spacing=(0.9, 1.1, 2.5), origin=(-88.0, 110.0, -41.0), angles=(0.05, 0.1, -0.2))
    raw = (ramp((7, 6, 5)) % 300).astype(np.int16)
    image = nib.Nifti1Image(raw, None)
    image.header.set_sform(sform, code=2)
    image.header.set_qform(qform, code=1)
    image.header.set_slope_inter(2.0, -10.0)
    source = tmp_path / f"src{suffix}"
    nib.save(image, source)

    volume = read_volume(source)
    assert volume.format == "nifti" and volume.data.dtype == np.float32 and volume.data.shape == (7, 6, 5)
    np.testing.assert_array_equal(volume.data, raw * 2.0 - 10.0)  # scaling applied
    np.testing.assert_allclose(volume.affine, sform, atol=1e-5)
    np.testing.assert_allclose(volume.spacing, (0.9, 1.1, 2.5), atol=1e-5)
    assert not volume.is_2d

    result = volume.data * 0.5 + 0.25  # not representable in int16 with the source's scaling
    out = write_volume(tmp_path / "out" / f"pred{suffix}", result, like=volume)
    written, original = nib.load(out), nib.load(source)
    assert written.shape == original.shape
    np.testing.assert_array_equal(written.affine, original.affine)
    for coded in ("get_sform", "get_qform"):
        got, got_code = getattr(written.header, coded)(coded=True)
        want, want_code = getattr(original.header, coded)(coded=True)
        assert int(got_code) == int(want_code)
        np.testing.assert_array_equal(got, want)
    assert written.get_data_dtype() == np.float32
    np.testing.assert_array_equal(written.get_fdata(dtype=np.float32), result)
    np.testing.assert_array_equal(read_volume(out).data, result)


def test_nifti_without_like_gets_identity(tmp_path):
    out = write_volume(tmp_path / "plain.nii.gz", ramp((3, 4, 5)))
    image = nib.load(out)
    np.testing.assert_array_equal(image.affine, np.eye(4))
    np.testing.assert_array_equal(image.get_fdata(), ramp((3, 4, 5)))


def test_nifti_2d_and_4d_channel(tmp_path):
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(ramp((5, 6)), np.eye(4)), flat)
    volume = read_volume(flat)
    assert volume.data.shape == (5, 6, 1) and volume.is_2d
    out = write_volume(tmp_path / "flat_out.nii.gz", volume.data, like=volume)
    assert nib.load(out).shape == (5, 6)  # same shape as the source

    four = tmp_path / "scan.nii.gz"
    data = ramp((4, 5, 6, 3))
    nib.save(nib.Nifti1Image(data, oblique_affine()), four)
    with raises("scan.nii.gz", "4D (4x5x6x3)", "channel 0-2", "--channel N"):
        read_volume(four)
    picked = read_volume(four, channel=2)
    np.testing.assert_array_equal(picked.data, data[..., 2])
    with raises("scan.nii.gz", "channel=3"):
        read_volume(four, channel=3)


# --------------------------------------------------------------------------- NRRD / MHA / MHD


def itk_source(path: Path, array_zyx: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing((0.7, 1.3, 2.5))
    image.SetOrigin((12.5, -30.0, 44.0))
    image.SetDirection(tuple(rotation(0.2, -0.1, 0.4).ravel()))
    sitk.WriteImage(image, str(path))
    return image


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd"])
def test_itk_round_trip(tmp_path, suffix):
    array = ramp((5, 6, 7))  # ITK order (z, y, x)
    source = tmp_path / f"src{suffix}"
    image = itk_source(source, array)
    volume = read_volume(source)
    assert volume.format == "itk" and volume.data.shape == (7, 6, 5)
    np.testing.assert_array_equal(volume.data, array.transpose(2, 1, 0))
    np.testing.assert_allclose(volume.spacing, (0.7, 1.3, 2.5), atol=1e-9)
    # affine (RAS) agrees with ITK's own index -> physical point (LPS)
    for index in [(0, 0, 0), (6, 0, 0), (1, 5, 4), (6, 5, 4)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(index))
        ras = volume.affine @ np.array([*index, 1.0])
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-9)

    out = write_volume(tmp_path / f"out{suffix}", volume.data * 2, like=volume)
    back, stored = sitk.ReadImage(str(out)), sitk.ReadImage(str(source))  # as the files hold them
    # MetaImage stores spacing and direction apart (exact); NRRD stores their product, which
    # ITK splits again on reading, so the last bit can move.
    tolerance = 1e-12 if suffix == ".nrrd" else 0.0
    for getter in ("GetOrigin", "GetSpacing", "GetDirection"):
        np.testing.assert_allclose(getattr(back, getter)(), getattr(stored, getter)(), rtol=0, atol=tolerance)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), array * 2)
    if suffix == ".mhd":
        assert (tmp_path / "out.raw").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    # cross-format: an ITK source written as NIfTI keeps its world geometry, and back again
    nifti = write_volume(tmp_path / "cross.nii.gz", volume.data, like=volume)
    np.testing.assert_allclose(nib.load(nifti).affine, volume.affine, atol=1e-5)
    again = write_volume(tmp_path / f"again{suffix}", volume.data, like=read_volume(nifti))
    np.testing.assert_allclose(read_volume(again).affine, volume.affine, atol=1e-4)


# --------------------------------------------------------------------------- DICOM


def write_dicom_series(folder: Path, array_zyx: np.ndarray, spacing, origin, series_uid: str, name="slice"):
    folder.mkdir(parents=True, exist_ok=True)
    volume = sitk.GetImageFromArray(array_zyx.astype(np.int16))
    volume.SetSpacing(spacing)
    volume.SetOrigin(origin)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = volume.GetDirection()
    orientation = "\\".join(
        map(str, (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7]))
    )
    for k in range(volume.GetDepth()):
        piece = volume[:, :, k]
        position = volume.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "MR",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
            "0020|000d": series_uid.rsplit(".", 1)[0] + ".9",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(map(str, position)),
            "0020|0037": orientation,
            "0018|0050": str(spacing[2]),
            "0008|0018": f"{series_uid}.{k + 1}",
        }
        for tag, value in tags.items():
            piece.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{name}{k:03d}.dcm"))
        writer.Execute(piece)


def test_dicom_series(tmp_path):
    folder = tmp_path / "series"
    array = (ramp((4, 6, 5)) % 1000).astype(np.int16)  # (z, y, x)
    write_dicom_series(folder, array, (0.8, 0.9, 3.0), (-20.0, 10.0, 5.0), "1.2.826.0.1.3680043.2.1125.1.1")
    assert is_volume_path(folder)
    volume = read_volume(folder)
    assert volume.format == "dicom" and volume.data.shape == (5, 6, 4)
    np.testing.assert_allclose(volume.spacing, (0.8, 0.9, 3.0), atol=1e-4)
    np.testing.assert_array_equal(volume.data, array.transpose(2, 1, 0))
    np.testing.assert_allclose(volume.affine[:3, 3], (20.0, -10.0, 5.0), atol=1e-4)  # LPS -> RAS
    assert volume.meta["series_ids"] == [volume.meta["series_id"]]

    # a second, smaller series in the same folder: the larger one is read, and meta says so
    write_dicom_series(
        folder, array[:2], (0.8, 0.9, 3.0), (-20.0, 10.0, 5.0), "1.2.826.0.1.3680043.2.1125.1.2", name="other"
    )
    volume = read_volume(folder)
    assert volume.data.shape == (5, 6, 4)
    assert volume.meta["series_id"] == "1.2.826.0.1.3680043.2.1125.1.1"
    assert len(volume.meta["series_ids"]) == 2


# --------------------------------------------------------------------------- NumPy / MATLAB


def test_npy_2d_and_3d(tmp_path):
    np.save(tmp_path / "flat.npy", ramp((5, 6), np.int32))
    flat = read_volume(tmp_path / "flat.npy")
    assert flat.data.shape == (5, 6, 1) and flat.data.dtype == np.float32 and flat.is_2d and flat.format == "npy"
    np.testing.assert_array_equal(flat.affine, np.eye(4))
    np.save(tmp_path / "cube.npy", ramp((3, 4, 5), np.float64))
    cube = read_volume(tmp_path / "cube.npy")
    np.testing.assert_array_equal(cube.data, ramp((3, 4, 5)))
    out = write_volume(tmp_path / "out.npy", cube.data + 1, like=cube)
    np.testing.assert_array_equal(np.load(out), ramp((3, 4, 5)) + 1)


def write_mat73(path: Path, variables: dict[str, np.ndarray]):
    """A v7.3 file as MATLAB writes it: HDF5 with a 512-byte user block, arrays stored column-major."""
    with h5py.File(path, "w", userblock_size=512) as handle:
        for name, array in variables.items():
            dataset = handle.create_dataset(name, data=np.ascontiguousarray(array.T))  # h5py sees reversed axes
            dataset.attrs["MATLAB_class"] = np.bytes_(
                {"float32": "single", "float64": "double"}.get(str(array.dtype), "uint8")
            )
    with open(path, "r+b") as handle:
        handle.write(
            b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .".ljust(
                116
            )
        )


def test_mat_v5_and_v73_give_the_same_volume(tmp_path):
    stack = ramp((6, 4, 3))  # MATLAB size(A) = [6 4 3]: 3 slices of 6x4
    scipy.io.savemat(tmp_path / "v5.mat", {"data_fs": stack, "label": np.ones((2, 2))})
    write_mat73(tmp_path / "v73.mat", {"data_fs": stack, "label": np.ones((2, 2))})
    with h5py.File(tmp_path / "v73.mat", "r") as handle:
        assert handle["data_fs"].shape == (3, 4, 6)  # how h5py sees it (like SynDiff's IXI files)
    v5, v73 = read_volume(tmp_path / "v5.mat"), read_volume(tmp_path / "v73.mat")
    assert v5.meta["mat_version"] == "5" and v73.meta["mat_version"] == "7.3"
    assert v5.data.shape == v73.data.shape == (6, 4, 3)
    np.testing.assert_array_equal(v5.data, stack)
    np.testing.assert_array_equal(v73.data, stack)
    assert v5.is_2d and v73.is_2d and v5.meta["key"] == v73.meta["key"] == "data_fs"
    label = read_volume(tmp_path / "v73.mat", key="label")
    assert label.data.shape == (2, 2, 1)

    # write-back under the same key, read again identical
    out = write_volume(tmp_path / "out.mat", v73.data * 3, like=v73)
    assert set(k for k in scipy.io.loadmat(out) if not k.startswith("__")) == {"data_fs"}
    np.testing.assert_array_equal(read_volume(out).data, stack * 3)
    out = write_volume(tmp_path / "plain.mat", stack)
    assert read_volume(out).meta["key"] == "data"


def test_mat_key_errors(tmp_path):
    scipy.io.savemat(tmp_path / "two.mat", {"a": np.ones((3, 3)), "b": np.zeros((3, 3, 2))})
    with raises("two.mat", "a (3x3)", "b (3x3x2)", "key="):
        read_volume(tmp_path / "two.mat")
    with raises("two.mat", "'nope'", "a (3x3)"):
        read_volume(tmp_path / "two.mat", key="nope")
    write_mat73(tmp_path / "two73.mat", {"a": np.ones((3, 3), np.float32), "b": np.zeros((3, 3, 2), np.float32)})
    with raises("two73.mat", "'nope'", "b (3x3x2)"):
        read_volume(tmp_path / "two73.mat", key="nope")
    (tmp_path / "fake.mat").write_text("hello\n")
    with raises("fake.mat"):
        read_volume(tmp_path / "fake.mat")


# --------------------------------------------------------------------------- PNG / TIFF


def test_png_8_and_16_bit(tmp_path):
    gray8 = (ramp((5, 7)) * 3).astype(np.uint8)
    Image.fromarray(gray8).save(tmp_path / "g8.png")
    volume = read_volume(tmp_path / "g8.png")
    assert volume.data.shape == (5, 7, 1) and volume.format == "image" and volume.is_2d
    assert volume.meta["bit_depth"] == 8
    np.testing.assert_array_equal(volume.data[..., 0], gray8)
    out = write_volume(tmp_path / "g8_out.png", volume.data, like=volume)
    assert Image.open(out).mode == "L"
    np.testing.assert_array_equal(np.asarray(Image.open(out)), gray8)

    gray16 = (ramp((5, 7)) * 1000).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    volume = read_volume(tmp_path / "g16.png")
    np.testing.assert_array_equal(volume.data[..., 0], gray16)
    out = write_volume(tmp_path / "g16_out.png", volume.data, like=volume)
    np.testing.assert_array_equal(read_volume(out).data, volume.data)
    assert np.asarray(Image.open(out)).max() == gray16.max()


def test_rgb_channels(tmp_path):
    rgb = np.stack([ramp((4, 5)), ramp((4, 5)) * 2, ramp((4, 5)) * 3], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    with raises("rgb.png", "--channel N"):
        read_volume(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_volume(tmp_path / "rgb.png", channel=1).data[..., 0], rgb[..., 1])
    with raises("rgb.png", "channel=5"):
        read_volume(tmp_path / "rgb.png", channel=5)
    same = np.repeat(rgb[..., :1], 3, axis=-1)
    Image.fromarray(same).save(tmp_path / "gray_rgb.tif")
    np.testing.assert_array_equal(read_volume(tmp_path / "gray_rgb.tif").data[..., 0], rgb[..., 0])
    rgba = np.concatenate([same, np.full((4, 5, 1), 255, np.uint8)], axis=-1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_volume(tmp_path / "rgba.png").data[..., 0], rgb[..., 0])


def test_image_writing_picks_a_type(tmp_path):
    floats = ramp((4, 5, 1)) / 7 - 1
    with raises("f.png", ".tif"):
        write_volume(tmp_path / "f.png", floats)
    out = write_volume(tmp_path / "f.tif", floats)
    assert Image.open(out).mode == "F"
    np.testing.assert_array_equal(read_volume(out).data, floats.astype(np.float32))
    wide = ramp((4, 5, 1)) * 1000
    assert Image.open(write_volume(tmp_path / "w.tif", wide)).mode.startswith("I;16")
    # a stack of slices becomes a multi-page TIFF, and is read back as one volume
    stack = ramp((4, 5, 3))
    out = write_volume(tmp_path / "stack.tif", stack)
    np.testing.assert_array_equal(read_volume(out).data, stack)
    with raises("stack.png", ".tif"):
        write_volume(tmp_path / "stack.png", stack)


def test_folder_and_glob_of_slices_in_natural_order(tmp_path):
    folder = tmp_path / "P1"
    folder.mkdir()
    for k in (1, 2, 10, 3):  # slice_10 must come last
        Image.fromarray(np.stack([np.full((4, 5), k * 10 + c, np.uint8) for c in range(3)], -1)).save(
            folder / f"P1_{k}.tif"
        )
        Image.fromarray(np.full((4, 5), 255 if k == 10 else 0, np.uint8)).save(folder / f"P1_{k}_mask.tif")

    images = read_volume(str(folder / "*[0-9].tif"), channel=1)
    assert images.data.shape == (4, 5, 4) and images.is_2d
    assert [float(images.data[0, 0, z]) for z in range(4)] == [11, 21, 31, 101]
    assert [Path(f).name for f in images.meta["files"]] == ["P1_1.tif", "P1_2.tif", "P1_3.tif", "P1_10.tif"]
    masks = read_volume(str(folder / "*_mask.tif"))
    assert masks.data.shape == (4, 5, 4)
    assert [float(masks.data[0, 0, z]) for z in range(4)] == [0, 0, 0, 255]

    with raises("P1", "*[0-9].tif"):  # images and masks mixed: asks for a glob
        read_volume(folder)
    only = tmp_path / "only"
    only.mkdir()
    for k in (10, 9):
        Image.fromarray(np.full((3, 3), k, np.uint8)).save(only / f"s{k}.png")
    np.testing.assert_array_equal(read_volume(only).data[0, 0], [9, 10])
    named = tmp_path / "named"
    named.mkdir()
    for k, name in enumerate(("top", "bottom")):  # unnumbered names are not "two kinds"
        Image.fromarray(np.full((3, 3), k, np.uint8)).save(named / f"slice_{name}.png")
    assert read_volume(named).data.shape == (3, 3, 2)
    with raises("*.png"):
        read_volume(str(tmp_path / "nothing" / "*.png"))


# --------------------------------------------------------------------------- bad input


def test_missing_and_unsupported(tmp_path):
    with raises("nowhere.nii.gz", "no such file"):
        read_volume(tmp_path / "nowhere.nii.gz")
    (tmp_path / "notes.txt").write_text("x")
    with raises("notes.txt", "unsupported"):
        read_volume(tmp_path / "notes.txt")
    (tmp_path / "one.dcm").write_bytes(b"\0" * 200)
    with raises("one.dcm", "folder"):
        read_volume(tmp_path / "one.dcm")


def test_corrupt_nifti(tmp_path):
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((20, 20, 20), np.float32), np.eye(4)), good)
    blob = good.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(blob[: len(blob) // 2])
    with raises("cut.nii.gz", "truncated"):
        read_volume(tmp_path / "cut.nii.gz")
    (tmp_path / "tiny.nii.gz").write_bytes(blob[:300])
    with raises("tiny.nii.gz"):
        read_volume(tmp_path / "tiny.nii.gz")
    (tmp_path / "scan.nii").write_text("this is not an image\n")
    with raises("scan.nii", "not a NIfTI"):
        read_volume(tmp_path / "scan.nii")
    (tmp_path / "junk.nii.gz").write_bytes(b"\x1f\x8b garbage")
    with raises("junk.nii.gz"):
        read_volume(tmp_path / "junk.nii.gz")
    (tmp_path / "junk.nrrd").write_text("NRRD0004\nnonsense\n")
    with raises("junk.nrrd"):
        read_volume(tmp_path / "junk.nrrd")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with raises("junk.png"):
        read_volume(tmp_path / "junk.png")
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY nope")
    with raises("junk.npy"):
        read_volume(tmp_path / "junk.npy")


def test_nan_inf_and_constant(tmp_path):
    data = np.ones((4, 4, 4), np.float32)
    data[0, 0, 0] = data[1, 1, 1] = np.nan
    data[2, 2, 2] = np.inf
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "holes.nii.gz")
    with raises("holes.nii.gz", "2 NaN", "1 Inf"):
        read_volume(tmp_path / "holes.nii.gz")
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), 5, np.float32), np.eye(4)), tmp_path / "flat.nii.gz")
    assert float(read_volume(tmp_path / "flat.nii.gz").data.max()) == 5.0  # constant: the caller decides


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with raises("empty", "empty folder"):
        read_volume(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("x")
    with raises("other"):
        read_volume(tmp_path / "other")


# --------------------------------------------------------------------------- writing rules


def test_write_refuses_existing_and_bad_shapes(tmp_path):
    like = Volume(data=np.zeros((3, 4, 5), np.float32), affine=np.eye(4), path=tmp_path / "src.npy", format="npy")
    out = write_volume(tmp_path / "out.nii.gz", np.zeros((3, 4, 5)), like=like)
    with raises("out.nii.gz", "--overwrite"):
        write_volume(out, np.ones((3, 4, 5)), like=like)
    write_volume(out, np.ones((3, 4, 5)), like=like, overwrite=True)
    assert nib.load(out).get_fdata().min() == 1
    with raises("wrong.nii.gz", "3x4x5", "4x4x4"):
        write_volume(tmp_path / "wrong.nii.gz", np.zeros((4, 4, 4)), like=like)
    with raises("out.xyz", ".nii.gz"):
        write_volume(tmp_path / "out.xyz", np.zeros((3, 4, 5)))
    deep = write_volume(tmp_path / "a" / "b" / "c.nrrd", np.zeros((3, 4, 5)))
    assert deep.is_file()
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    with raises("blocker", "choose another output"):
        write_volume(blocker / "sub" / "out.nii.gz", np.zeros((3, 4, 5)))


def test_write_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "keep.npy"
    np.save(out, np.arange(3))

    def half_written(tmp, data, like):
        with open(tmp, "wb") as handle:
            handle.write(b"\x93NUMPY half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(numpy_array, "write", half_written)
    with raises("keep.npy", "No space left"):
        write_volume(out, np.zeros((2, 2, 2)), overwrite=True)
    np.testing.assert_array_equal(np.load(out), np.arange(3))  # the old file is untouched
    with raises("new.npy"):
        write_volume(tmp_path / "new.npy", np.zeros((2, 2, 2)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.npy"]  # no temporary files left


# --------------------------------------------------------------------------- real data (optional)


def real(*parts) -> Path:
    if not REAL.is_dir():
        pytest.skip("../shared/data/real is absent")
    path = REAL.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return path


@pytest.mark.real
def test_real_brats_nifti(tmp_path):
    path = real("brats", "BraTS-GLI-00001-000", "BraTS-GLI-00001-000-t1n.nii.gz")
    volume = read_volume(path)
    assert volume.data.shape == (240, 240, 155) and volume.data.dtype == np.float32
    np.testing.assert_allclose(volume.spacing, (1, 1, 1), atol=1e-3)
    out = write_volume(tmp_path / "t1n.nii.gz", volume.data, like=volume)
    written, original = nib.load(out), nib.load(path)
    assert written.shape == original.shape
    np.testing.assert_array_equal(written.affine, original.affine)
    assert int(written.header["sform_code"]) == int(original.header["sform_code"])
    assert int(written.header["qform_code"]) == int(original.header["qform_code"])


@pytest.mark.real
def test_real_ixi_mat():
    path = real("ixi_slices", "T1.mat")
    volume = read_volume(path)  # default key: the only array, data_fs
    assert volume.meta["key"] == "data_fs" and volume.meta["mat_version"] == "7.3"
    assert volume.data.shape == (256, 152, 25) and volume.is_2d  # (H, W, N) as MATLAB sees it
    with h5py.File(path, "r") as handle:
        raw = handle["data_fs"][()]
    assert raw.shape == (25, 152, 256)
    np.testing.assert_array_equal(volume.data[:, :, 7], raw[7].T)


@pytest.mark.real
def test_real_lgg_slices():
    folder = real("lgg", "TCGA_CS_4941_19960909")
    prefix = str(folder / "TCGA_CS_4941_19960909_")
    flair = read_volume(prefix + "*[0-9].tif", channel=1)
    masks = read_volume(prefix + "*_mask.tif")
    n = len([p for p in folder.iterdir() if p.name.endswith("_mask.tif")])
    assert flair.data.shape == masks.data.shape == (256, 256, n)
    names = [Path(f).name for f in flair.meta["files"]]
    assert names[:3] == ["TCGA_CS_4941_19960909_1.tif", "TCGA_CS_4941_19960909_2.tif", "TCGA_CS_4941_19960909_3.tif"]
    assert [Path(f).name.replace("_mask", "") for f in masks.meta["files"]] == names
    assert set(np.unique(masks.data)) <= {0.0, 255.0}
    with raises("TCGA_CS_4941_19960909", "--channel N"):
        read_volume(prefix + "*[0-9].tif")  # RGB with different channels
    with raises("TCGA_CS_4941_19960909", "glob"):
        read_volume(folder)  # images and masks mixed
