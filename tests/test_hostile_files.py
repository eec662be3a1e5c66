"""Hostile or broken image files: complex voxels, headers naming files outside their folder, headers declaring
huge images, and NaN or degenerate affines. Each is a one-line error (exit status 2 through the CLI) that leaves
every file as it was, or, for complex voxels, their magnitude with a warning."""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import scipy.io
import SimpleITK as sitk
from numpy.lib import format as npy_format

from synthmed.cli import main
from synthmed.data.formats import common
from synthmed.data.io import read_volume, write_volume
from synthmed.errors import SynthmedError

OUTSIDE = (
    "lies outside the header's folder; refused (a crafted header can read any file). Move the data beside "
    "the header, or set SYNTHMED_ALLOW_EXTERNAL_DATA=1 to allow it"
)
TRUNCATED = "truncated, or a damaged header"
SFORM_FIX = "fix the header's sform/qform (e.g. with fslorient or nibabel) and save it again"
AFFINE = "its affine (voxel-to-world matrix in the header)"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (symlinks not followed) with its bytes."""
    return {
        str(p.relative_to(folder)): (os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file() or p.is_symlink()
    }


def cli_error(args, capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err.strip()


def assert_cli_refuses(args, capsys, root: Path, message: str) -> None:
    """``main(args)`` exits with 2 and exactly ``synthmed: error: message``, and no file under ``root`` changed."""
    before = snapshot(root)
    code, err = cli_error(args, capsys)
    assert (code, err) == (2, f"synthmed: error: {message}")
    assert snapshot(root) == before


def refused(path, message: str):
    """read_volume(path) raises exactly ``message``."""
    with pytest.raises(SynthmedError) as info:
        read_volume(path)
    assert str(info.value) == message
    return info


@pytest.fixture
def reference(tmp_path) -> Path:
    """A plain 2x3x4 NIfTI to evaluate against."""
    path = tmp_path / "ref" / "ref.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.eye(4)), path)
    return path


# --------------------------------------------------------------------------- complex voxels


def test_complex_nifti_is_read_as_its_magnitude(tmp_path, caplog):
    path = tmp_path / "complex.nii.gz"
    data = np.full((3, 4, 5), 3 + 4j, np.complex64)
    data[0, 0, 0] = -6 + 8j
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with caplog.at_level(logging.WARNING, logger="synthmed.data.io"):
        volume = read_volume(path)
    assert volume.data.dtype == np.float32 and volume.data.shape == (3, 4, 5)
    assert volume.data[0, 0, 0] == 10 and np.all(volume.data.ravel()[1:] == 5)
    assert f"{path} holds complex values; using their magnitude" in caplog.messages


@pytest.mark.parametrize("suffix", [".npy", ".mat", ".nrrd"])
def test_complex_npy_mat_and_itk_are_read_as_their_magnitude(tmp_path, caplog, suffix):
    path = tmp_path / f"complex{suffix}"
    data = np.full((3, 4, 5), 3 - 4j, np.complex64)
    if suffix == ".npy":
        np.save(path, data)
    elif suffix == ".mat":
        scipy.io.savemat(path, {"image": data})
    else:
        sitk.WriteImage(sitk.GetImageFromArray(data), str(path))  # complex pixels, one component
    with caplog.at_level(logging.WARNING, logger="synthmed.data.io"):
        volume = read_volume(path)
    assert volume.data.size == 60 and np.all(volume.data == 5)
    assert f"{path} holds complex values; using their magnitude" in caplog.messages


# --------------------------------------------------------------------------- data files outside the header's folder


def metaimage_header(data_file: str, size=(4, 3, 2), extra: str = "") -> str:
    return (
        f"ObjectType = Image\nNDims = 3\nDimSize = {' '.join(map(str, size))}\n{extra}"
        f"ElementType = MET_UCHAR\nElementDataFile = {data_file}\n"
    )


@pytest.fixture
def secret(tmp_path) -> Path:
    """A private file outside the image folder, 24 bytes: exactly a 4x3x2 uint8 image."""
    path = tmp_path / "private" / "key.bin"
    path.parent.mkdir()
    path.write_bytes(bytes(range(100, 124)))
    return path


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "shared" / "images"
    folder.mkdir(parents=True)
    return folder


def hostile_header(kind: str, images: Path, secret: Path) -> tuple[Path, str]:
    """A header whose voxels come from ``secret``; returns it and the data-file name the error names."""
    if kind == "traversal":
        name = "../../private/key.bin"
        (images / "scan.mhd").write_text(metaimage_header(name))
        return images / "scan.mhd", name
    if kind == "absolute":
        name = str(secret)
        (images / "scan.mhd").write_text(metaimage_header(name))
        return images / "scan.mhd", name
    if kind == "symlink":
        os.symlink(secret, images / "scan.raw")
        (images / "scan.mhd").write_text(metaimage_header("scan.raw"))
        return images / "scan.mhd", "scan.raw"
    if kind == "list":
        (images / "slice0.raw").write_bytes(bytes(12))
        (images / "scan.mhd").write_text(metaimage_header("LIST\nslice0.raw\n../../private/key.bin"))
        return images / "scan.mhd", "../../private/key.bin"
    if kind == "pattern":
        os.symlink(secret, images / "slice001.raw")  # the pattern names a file beside it that leads outside
        (images / "scan.mhd").write_text(metaimage_header("slice%03d.raw 1 1 1", size=(4, 3, 2)))
        return images / "scan.mhd", str(images / "slice001.raw")
    if kind == "colon":  # MetaIO takes ':' for '=' as well
        name = "../../private/key.bin"
        (images / "scan.mhd").write_text(metaimage_header(name).replace("ElementDataFile =", "ElementDataFile:"))
        return images / "scan.mhd", name
    if kind == "mha":
        name = "../../private/key.bin"
        (images / "scan.mha").write_text(metaimage_header(name))
        return images / "scan.mha", name
    assert kind == "nrrd"
    name = "../../private/key.bin"
    (images / "scan.nrrd").write_text(
        f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 3 2\nencoding: raw\ndata file: {name}\n\n"
    )
    return images / "scan.nrrd", name


KINDS = ["traversal", "absolute", "symlink", "list", "pattern", "colon", "mha", "nrrd"]


@pytest.mark.parametrize("kind", KINDS)
def test_data_file_outside_the_header_folder_is_refused(tmp_path, images, secret, reference, capsys, kind):
    header, name = hostile_header(kind, images, secret)
    assert_cli_refuses(["evaluate", header, reference], capsys, tmp_path, f"{header}: its data file {name} {OUTSIDE}")


@pytest.mark.parametrize("kind", ["traversal", "absolute", "symlink", "colon", "nrrd"])
def test_external_data_is_read_when_allowed(images, secret, monkeypatch, kind):
    header, _ = hostile_header(kind, images, secret)
    monkeypatch.setenv("SYNTHMED_ALLOW_EXTERNAL_DATA", "1")
    volume = read_volume(header)
    np.testing.assert_array_equal(volume.data.transpose(2, 1, 0).ravel(), np.arange(100, 124))


def test_data_beside_or_below_the_header_still_reads(images):
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    written = write_volume(images / "pair.mhd", data)
    assert (images / "pair.raw").is_file()
    np.testing.assert_array_equal(read_volume(written).data, data)
    (images / "raw").mkdir()
    (images / "raw" / "below.raw").write_bytes(bytes(range(24)))
    (images / "below.mhd").write_text(metaimage_header("raw/below.raw"))
    np.testing.assert_array_equal(read_volume(images / "below.mhd").data.transpose(2, 1, 0).ravel(), np.arange(24))
    (images / "inline.mha").write_bytes(metaimage_header("LOCAL").encode() + bytes(range(24)))
    np.testing.assert_array_equal(read_volume(images / "inline.mha").data.transpose(2, 1, 0).ravel(), np.arange(24))


def test_header_too_long_to_check_is_refused(images, monkeypatch):
    (images / "long.raw").write_bytes(bytes(24))
    padding = "".join(f"Comment{i} = {'x' * 100}\n" for i in range(700))  # ~ 75 KB before ElementDataFile
    header = images / "long.mhd"
    header.write_text(metaimage_header("long.raw", extra=padding))
    refused(
        header,
        f"{header}: its header does not end within the first 64 KB, so the files it names cannot be "
        f"checked; refused (a crafted header can read any file). Set SYNTHMED_ALLOW_EXTERNAL_DATA=1 to "
        f"read it anyway",
    )
    monkeypatch.setenv("SYNTHMED_ALLOW_EXTERNAL_DATA", "1")
    assert read_volume(header).data.shape == (4, 3, 2)


# --------------------------------------------------------------------------- huge declared sizes


def huge_nifti(path: Path, shape=(800, 800, 800), data_bytes: int = 70, cls=nib.Nifti1Header) -> Path:
    """A NIfTI header declaring ``shape`` float32, followed by only ``data_bytes`` bytes."""
    header = cls()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header["vox_offset"] = header.single_vox_offset
    blob = header.binaryblock + b"\0" * 4 + b"\0" * data_bytes  # 4: the (empty) extension flag
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(blob))
    else:
        path.write_bytes(blob)
    return path


def huge_npy(path: Path, shape=(2000, 2000, 2000)) -> Path:
    with open(path, "wb") as handle:
        npy_format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return path


def test_truncated_nifti_declaring_a_huge_image(tmp_path, images, reference, capsys):
    path = huge_nifti(images / "huge.nii")
    assert path.stat().st_size == 352 + 70
    assert_cli_refuses(
        ["evaluate", path, reference],
        capsys,
        tmp_path,
        f"{path}: its header declares 800x800x800 float32 (1.9 GiB) but the file holds 70 bytes "
        f"after its 352-byte header: {TRUNCATED}",
    )


def test_nifti2_declaring_100000_cubed(images):
    path = huge_nifti(images / "huge2.nii", shape=(100000, 100000, 100000), data_bytes=0, cls=nib.Nifti2Header)
    refused(
        path,
        f"{path}: its header declares 100000x100000x100000 float32 (3725290.3 GiB) but the file holds "
        f"0 bytes after its 544-byte header: {TRUNCATED}",
    )


def test_gzip_nifti_declaring_more_than_deflate_can_expand_to(images):
    path = huge_nifti(images / "huge.nii.gz")
    size = path.stat().st_size
    assert 2048000000 > 1100 * size
    refused(
        path,
        f"{path}: its header declares 800x800x800 float32 (1.9 GiB) but the file holds {size} bytes of "
        f"compressed data: {TRUNCATED}",
    )


def test_all_zero_gzip_nifti_still_reads(images):
    # About the best ratio deflate reaches (~1000:1) must stay within the bound.
    path = images / "zeros.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((128, 128, 128), np.float32), np.eye(4)), path)
    assert read_volume(path).data.shape == (128, 128, 128)


def test_npy_header_declaring_a_huge_shape(images):
    path = huge_npy(images / "huge.npy")
    refused(
        path,
        f"{path}: its header declares 2000x2000x2000 float32 (29.8 GiB) but the file holds 0 bytes after "
        f"its 128-byte header: {TRUNCATED}",
    )


def test_mhd_declaring_more_than_its_raw_file(images):
    (images / "small.raw").write_bytes(bytes(24))
    header = images / "small.mhd"
    header.write_text(metaimage_header("small.raw", size=(400, 300, 200)))
    refused(
        header,
        f"{header}: its header declares 400x300x200 uint8 (22.9 MiB) but its data file small.raw holds "
        f"24 bytes: {TRUNCATED}",
    )


def budget_sources(folder: Path) -> dict[str, tuple[Path, str]]:
    """A valid 32x32x32 image per format with a header, and how its header's type reads."""
    data = np.ones((32, 32, 32))
    np.save(folder / "a.npy", data.astype(np.float32))
    scipy.io.savemat(folder / "a.mat", {"image": data}, do_compression=True)
    with h5py.File(folder / "a73.mat", "w") as handle:
        handle["image"] = data.astype(np.float32)
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), folder / "a.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(data.astype(np.float32)), str(folder / "a.mha"))
    return {
        "npy": (folder / "a.npy", "float32"),
        "mat": (folder / "a.mat", "double"),
        "mat73": (folder / "a73.mat", "float32"),
        "nifti": (folder / "a.nii.gz", "float32"),
        "itk": (folder / "a.mha", "float32"),
    }


@pytest.mark.parametrize("fmt", ["npy", "mat", "mat73", "nifti", "itk"])
def test_memory_budget_from_the_environment(images, monkeypatch, fmt):
    path, dtype = budget_sources(images)[fmt]
    needed = {"float32": "256.0 KiB", "double": "384.0 KiB"}[dtype]  # 32^3 voxels x (source bytes + 4)
    monkeypatch.setenv("SYNTHMED_MAX_VOLUME_GB", "0.0001")  # 104.9 KiB
    refused(
        path,
        f"{path}: its header declares 32x32x32 {dtype} ({needed} to read as float32), more than the "
        f"104.9 KiB SYNTHMED_MAX_VOLUME_GB allows; refusing to allocate it (set SYNTHMED_MAX_VOLUME_GB to "
        f"raise the limit)",
    )
    monkeypatch.setenv("SYNTHMED_MAX_VOLUME_GB", "0.001")
    assert read_volume(path).data.shape == (32, 32, 32)


def test_memory_budget_of_the_machine(images, monkeypatch, capsys, tmp_path):
    path = budget_sources(images)["nifti"][0]
    monkeypatch.delenv("SYNTHMED_MAX_VOLUME_GB", raising=False)
    budget = common.memory_budget()
    assert budget is None or budget > 0
    monkeypatch.setattr(common, "memory_budget", lambda: 2**17)
    assert_cli_refuses(
        ["evaluate", path, path],
        capsys,
        tmp_path,
        f"{path}: its header declares 32x32x32 float32 (256.0 KiB to read as float32), more than the "
        f"128.0 KiB this machine can give; refusing to allocate it (set SYNTHMED_MAX_VOLUME_GB to "
        f"raise the limit)",
    )


def test_bad_memory_budget_setting(images, monkeypatch):
    path = budget_sources(images)["npy"][0]
    monkeypatch.setenv("SYNTHMED_MAX_VOLUME_GB", "lots")
    refused(path, "SYNTHMED_MAX_VOLUME_GB='lots' is not a size; set it to a number of GiB, e.g. 16")


def test_huge_headers_allocate_nothing(images):
    """Read in a fresh process whose peak memory is its own: refusing must cost no more than the header."""
    files = [
        huge_nifti(images / "huge.nii"),
        huge_nifti(images / "huge.nii.gz"),
        huge_nifti(images / "huge2.nii", shape=(100000, 100000, 100000), data_bytes=0, cls=nib.Nifti2Header),
        huge_npy(images / "huge.npy"),
    ]
    (images / "huge.mha").write_text(metaimage_header("LOCAL", size=(2000, 2000, 2000)))
    files.append(images / "huge.mha")
    script = (
        "import resource, sys\n"
        "from synthmed.data.io import read_volume\n"
        "import nibabel, numpy, SimpleITK\n"
        "def peak():\n"
        "    # VmHWM is this program's own high-water mark; ru_maxrss can start at the forking parent's size\n"
        "    try:\n"
        "        with open('/proc/self/status') as status:\n"
        "            return next(int(line.split()[1]) * 1024 for line in status if line.startswith('VmHWM:'))\n"
        "    except (OSError, StopIteration):\n"
        "        kib = 1 if sys.platform == 'darwin' else 1024  # ru_maxrss is in bytes on macOS, KiB elsewhere\n"
        "        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib\n"
        "before = peak()\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        read_volume(name)\n"
        "    except Exception:  # the messages are checked above; here only the memory it took to fail\n"
        "        pass\n"
        "    else:\n"
        "        sys.exit(f'{name} was read')\n"
        "print(peak() - before)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, *map(str, files)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    grown = int(done.stdout.split()[-1])
    assert grown < 200 * 2**20, f"peak memory grew by {grown / 2**20:.0f} MiB"


# --------------------------------------------------------------------------- NaN or degenerate affines


def save_with_header(path: Path, data: np.ndarray, change) -> Path:
    """A NIfTI whose header fields are set by ``change(header)`` after nibabel filled them from a valid affine."""
    image = nib.Nifti1Image(data.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
    header = image.header
    header.set_sform(image.affine, code=1)
    header.set_qform(image.affine, code=1)
    change(header)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), None, header=header), path)
    return path


def nan_sform(header):
    header["srow_x"][0] = np.nan


def nan_qform_only(header):
    header["sform_code"] = 0
    header["qoffset_x"] = np.nan


def test_nan_affine_is_refused_by_evaluate(tmp_path, images, capsys):
    data = np.random.default_rng(0).random((8, 8, 8))
    good = images / "good.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), good)
    for change in (nan_sform, nan_qform_only):
        bad = save_with_header(images / f"{change.__name__}.nii.gz", data, change)
        assert not np.isfinite(nib.load(bad).affine).all()  # nibabel hands the NaN on
        assert_cli_refuses(["evaluate", bad, good], capsys, tmp_path, f"{bad}: {AFFINE} holds NaN/Inf; {SFORM_FIX}")
        assert_cli_refuses(["evaluate", good, bad], capsys, tmp_path, f"{bad}: {AFFINE} holds NaN/Inf; {SFORM_FIX}")


def test_nan_affine_is_refused_by_prepare(phantoms, tmp_path, capsys):
    data = tmp_path / "data"
    for subject in sorted(p for p in phantoms.iterdir() if p.is_dir())[:3]:
        (data / subject.name).mkdir(parents=True)
        for name in ("T1.nii.gz", "T2.nii.gz"):
            shutil.copy(subject / name, data / subject.name / name)
    victim = sorted(data.iterdir())[1] / "T2.nii.gz"
    save_with_header(victim, np.asarray(nib.load(victim).dataobj), nan_sform)
    args = ["prepare", data, "--source", "T1", "--target", "T2", "--out", tmp_path / "prep", "--size", "32", "--quiet"]
    assert_cli_refuses(args, capsys, tmp_path, f"{victim.resolve()}: {AFFINE} holds NaN/Inf; {SFORM_FIX}")
    assert not (tmp_path / "prep").exists()


def test_zero_voxel_size_and_collapsed_axes_are_refused(images):
    data = np.ones((4, 4, 4))

    def zero_axis(header):
        header["srow_z"][:3] = 0

    def collapsed(header):  # voxel axes 1 and 2 point the same way
        header["srow_x"][:3] = (2, 0, 0)
        header["srow_y"][:3] = (0, 2, 2)
        header["srow_z"][:3] = (0, 2, 2)

    path = save_with_header(images / "flat.nii.gz", data, zero_axis)
    refused(path, f"{path}: {AFFINE} gives voxel axis 2 a zero size; {SFORM_FIX}")
    path = save_with_header(images / "collapsed.nii.gz", data, collapsed)
    refused(path, f"{path}: {AFFINE} is singular: its voxel axes collapse onto a plane or a line; {SFORM_FIX}")


def test_formats_without_geometry_keep_the_identity(images):
    np.save(images / "plain.npy", np.ones((5, 6)))
    volume = read_volume(images / "plain.npy")
    assert volume.data.shape == (5, 6, 1) and np.array_equal(volume.affine, np.eye(4))
