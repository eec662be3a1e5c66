"""Never lose a user's data: overwrite guards, locks, honest evaluation, strict records, clean exits.

Every test that refuses something asserts the exit status, the one-line message and that every file that
existed before is byte-identical afterwards. Hostile input files (complex NIfTI, an MHD pointing outside its
folder, headers declaring huge sizes, a NaN affine) are covered in ``test_hostile_files.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from synthmed.cli import main

PYTHON = sys.executable


# ----------------------------------------------------------------------------- helpers


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file under ``roots`` (links not followed) -> a digest of its bytes."""
    found = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
        for path in paths:
            found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def run_cli(args, capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err.strip()


def assert_refused(code: int, err: str, *needles) -> None:
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("synthmed: error: "), err
    for needle in needles:
        assert str(needle) in err, (needle, err)


def copy_subjects(phantoms: Path, root: Path, count: int = 4, names=("T1.nii.gz", "T2.nii.gz")) -> Path:
    """A writable data folder: ``count`` phantom subjects with the given files."""
    for subject in sorted(p for p in phantoms.iterdir() if p.is_dir())[:count]:
        (root / subject.name).mkdir(parents=True)
        for name in names:
            shutil.copy(subject / name, root / subject.name / name)
    return root


def prepare_args(data: Path, out: Path, *extra) -> list:
    return ["prepare", data, "--source", "T1", "--target", "T2", "--out", out, "--size", "32", "--quiet", *extra]


def dead_pid() -> int:
    """The id of a process that has just ended (not reused this quickly)."""
    process = subprocess.Popen([PYTHON, "-c", "pass"])
    process.wait()
    return process.pid


def hold_lock(output: Path) -> subprocess.Popen:
    """Another process holding synthmed's lock on ``output`` until it is killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from synthmed.files import output_lock
        with output_lock({str(output)!r}, "synthmed prepare (the other user)"):
            print("locked", flush=True)
            time.sleep(120)
    """)
    process = subprocess.Popen([PYTHON, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def limited_file_size(limit: int):
    """preexec_fn of a child whose writes beyond ``limit`` bytes per file fail (EFBIG), like a full disk."""

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of the process being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def synthmed_process(args, **options) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "synthmed", *map(str, args)], capture_output=True, text=True, timeout=300, **options
    )


def strict_json(path: Path):
    """Parse as strict JSON parsers do: NaN, Infinity and -Infinity are errors."""

    def refuse(name):
        raise ValueError(f"{path} holds {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture
def data(phantoms, tmp_path) -> Path:
    return copy_subjects(phantoms, tmp_path / "data")


# ----------------------------------------------------------------------------- 1. prepare never deletes inputs


@pytest.mark.parametrize("where", ["data itself", "inside data", "around data"])
def test_prepare_refuses_an_output_on_the_data(data, tmp_path, capsys, where):
    out = {"data itself": data, "inside data": data / "sub-001", "around data": tmp_path}[where]
    before = snapshot(tmp_path)
    code, err = run_cli(prepare_args(data, out, "--overwrite"), capsys)
    assert_refused(code, err, "--out", "input")
    assert snapshot(tmp_path) == before


def test_prepare_overwrite_replaces_only_its_own_folder(data, tmp_path, capsys):
    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "thesis.tex").write_text("three years of work")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("my notes")
    before = snapshot(tmp_path)
    code, err = run_cli(prepare_args(data, mine, "--overwrite"), capsys)
    assert_refused(code, err, "results", "not made by synthmed prepare")
    code, err = run_cli(prepare_args(data, a_file, "--overwrite"), capsys)
    assert_refused(code, err, "notes.txt", "is a file")
    assert snapshot(tmp_path) == before

    prep = tmp_path / "prep"
    assert run_cli(prepare_args(data, prep), capsys)[0] == 0
    (prep / "my_analysis.csv").write_text("a,b\n1,2\n")  # the user's file inside a prepared folder
    before = snapshot(tmp_path)
    code, err = run_cli(prepare_args(data, prep, "--overwrite", "--seed", "3"), capsys)
    assert_refused(code, err, "my_analysis.csv", "did not write")
    assert snapshot(tmp_path) == before
    (prep / "my_analysis.csv").unlink()
    assert run_cli(prepare_args(data, prep, "--overwrite", "--seed", "3"), capsys)[0] == 0
    assert json.loads((prep / "plan.json").read_text())["seed"] == 3
    assert not list(tmp_path.glob(".prep.*"))  # no temporary or old copy left beside it


# ----------------------------------------------------------------------------- 2. phantom replaces only phantoms


def test_phantom_overwrite_keeps_the_users_files(tmp_path, capsys):
    out = tmp_path / "heads"
    assert run_cli(["phantom", out, "--subjects", "3", "--size", "16"], capsys)[0] == 0
    own = out / "sub-009"
    own.mkdir()
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), own / "T1.nii.gz")  # the user's scan
    before = snapshot(own)
    code, _ = run_cli(["phantom", out, "--subjects", "2", "--size", "16", "--overwrite"], capsys)
    assert code == 0
    assert snapshot(own) == before  # a sub-NNN folder of phantom names, but not phantom files: kept
    assert not (out / "sub-003").exists()  # the phantom subject beyond --subjects 2 is removed

    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), out / "sub-002" / "T2.nii.gz")
    before = snapshot(out)
    code, err = run_cli(["phantom", out, "--subjects", "2", "--size", "16", "--seed", "5", "--overwrite"], capsys)
    assert_refused(code, err, "sub-002/T2.nii.gz", "not written by synthmed phantom")
    assert snapshot(out) == before  # refused before anything was written


# ----------------------------------------------------------------------------- 3. translate never writes on inputs


def test_translate_refuses_outputs_that_resolve_to_inputs(trained_run, data, tmp_path, capsys):
    t1 = data / "sub-001" / "T1.nii.gz"
    os.link(t1, tmp_path / "hardlink.nii.gz")
    (tmp_path / "symlink.nii.gz").symlink_to(t1)
    before = snapshot(tmp_path)
    aliases = [
        t1,
        data / "sub-001" / "." / "." / "T1.nii.gz",
        data / "sub-002" / ".." / "sub-001" / "T1.nii.gz",
        tmp_path / "hardlink.nii.gz",
        tmp_path / "symlink.nii.gz",
    ]
    for output in aliases:
        code, err = run_cli(["translate", trained_run, t1, output, "--overwrite", "--quiet"], capsys)
        assert_refused(code, err, "is the input")
    assert snapshot(tmp_path) == before
    code, err = run_cli(
        ["translate", trained_run, t1, tmp_path / "x.nii.gz", "--reference", data / "sub-001" / "T2.nii.gz", "--quiet"],
        capsys,
    )
    assert code == 0, err
    before = snapshot(tmp_path)
    code, err = run_cli(
        [
            "translate",
            trained_run,
            t1,
            data / "sub-001" / "T2.nii.gz",
            "--reference",
            data / "sub-001" / "T2.nii.gz",
            "--overwrite",
            "--quiet",
        ],
        capsys,
    )
    assert_refused(code, err, "is the input")  # the reference is an input too
    assert snapshot(tmp_path) == before


def test_translate_a_folder_never_replaces_scans_it_did_not_write(trained_run, data, tmp_path, capsys):
    elsewhere = copy_subjects(data, tmp_path / "other_data", names=("T1.nii.gz",))  # another data set: T1 only
    before = snapshot(tmp_path)
    for output in (data, data / "sub-001", tmp_path):
        code, err = run_cli(["translate", trained_run, data, output, "--overwrite", "--quiet"], capsys)
        assert_refused(code, err, "input")
    code, err = run_cli(["translate", trained_run, data, elsewhere, "--overwrite", "--quiet"], capsys)
    assert_refused(code, err, "T1.nii.gz", "data folder")  # would write T2 beside somebody's T1
    assert snapshot(tmp_path) == before

    out = tmp_path / "translations"
    assert run_cli(["translate", trained_run, data, out, "--quiet"], capsys)[0] == 0
    assert run_cli(["translate", trained_run, data, out, "--overwrite", "--quiet"], capsys)[0] == 0  # its own
    stranger = out / "sub-001" / "FLAIR.nii.gz"
    shutil.copy(data / "sub-001" / "T1.nii.gz", stranger)
    before = snapshot(tmp_path)
    code, err = run_cli(["translate", trained_run, data, out, "--overwrite", "--quiet"], capsys)
    assert_refused(code, err, "FLAIR.nii.gz", "did not write")
    assert snapshot(tmp_path) == before


def test_translate_a_file_replaces_only_what_synthmed_wrote(trained_run, data, tmp_path, capsys):
    """The real T2 beside the T1 being translated (or any file synthmed did not write, or a link) survives
    --overwrite; synthmed's own earlier output is replaced."""
    t1, t2 = data / "sub-001" / "T1.nii.gz", data / "sub-001" / "T2.nii.gz"
    (tmp_path / "link.nii.gz").symlink_to(data / "sub-002" / "T2.nii.gz")
    shutil.copy(t2, tmp_path / "mine.nii.gz")
    before = snapshot(data, tmp_path)
    for output in (
        t2,
        data / "sub-001" / "." / "T2.nii.gz",
        data / "sub-002" / "T2.nii.gz",
        tmp_path / "mine.nii.gz",
        tmp_path / "link.nii.gz",
    ):
        code, err = run_cli(["translate", trained_run, t1, output, "--overwrite", "--quiet"], capsys)
        assert_refused(code, err, output.name, "--overwrite replaces only synthmed's own outputs")
    assert snapshot(data, tmp_path) == before
    assert (tmp_path / "link.nii.gz").is_symlink()

    synthetic = data / "sub-001" / "T2_synthetic.nii.gz"
    assert run_cli(["translate", trained_run, t1, synthetic, "--quiet"], capsys)[0] == 0
    assert run_cli(["translate", trained_run, t1, synthetic, "--overwrite", "--quiet"], capsys)[0] == 0  # its own
    synthetic.write_bytes(b"edited by the user")  # then theirs: kept
    assert_refused(
        *run_cli(["translate", trained_run, t1, synthetic, "--overwrite", "--quiet"], capsys),
        "T2_synthetic.nii.gz",
        "did not write",
    )
    assert synthetic.read_bytes() == b"edited by the user"
    assert snapshot(data / "sub-001" / "T2.nii.gz") == {str(t2): before[str(t2)]}


def test_degrade_and_report_replace_only_what_synthmed_wrote(data, tiny_benchmark, tmp_path, capsys):
    out = tmp_path / "motion"
    (out / "sub-001").mkdir(parents=True)
    shutil.copy(data / "sub-002" / "T1.nii.gz", out / "sub-001" / "T1_motion.nii.gz")  # the user's own file
    before = snapshot(tmp_path)
    args = ["degrade", data, out, "--kind", "motion", "--name", "T1", "--quiet", "--overwrite"]
    assert_refused(*run_cli(args, capsys), "T1_motion.nii.gz", "synthmed did not write")
    (out / "sub-001" / "T1_motion.nii.gz").rename(out / "sub-001" / "T1.nii.gz")  # where the clean scan's link goes
    before = snapshot(tmp_path)
    assert_refused(*run_cli(args, capsys), "T1.nii.gz", "synthmed did not write")
    assert snapshot(tmp_path) == before
    (out / "sub-001" / "T1.nii.gz").unlink()
    assert run_cli(args, capsys)[0] == 0
    assert run_cli(args, capsys)[0] == 0  # its own outputs, links and record: replaced

    page = tmp_path / "report.html"
    page.write_text("my notes")
    assert_refused(*run_cli(["report", tiny_benchmark, "--out", page], capsys), "report.html", "--overwrite")
    assert_refused(*run_cli(["report", tiny_benchmark, "--out", page, "--overwrite"], capsys), "did not write")
    assert page.read_text() == "my notes"
    page.unlink()
    assert run_cli(["report", tiny_benchmark, "--out", page, "--quiet"], capsys)[0] == 0
    assert run_cli(["report", tiny_benchmark, "--out", page, "--overwrite", "--quiet"], capsys)[0] == 0


# ----------------------------------------------------------------------------- 4. evaluate --out


def test_evaluate_refuses_existing_outputs(data, tmp_path, capsys):
    pred, ref = data / "sub-001" / "T1.nii.gz", data / "sub-001" / "T2.nii.gz"
    out = tmp_path / "m.json"
    out.write_text('{"mine": true}')
    before = snapshot(tmp_path)
    code, err = run_cli(["evaluate", pred, ref, "--out", out], capsys)
    assert_refused(code, err, "m.json", "--overwrite")
    assert snapshot(tmp_path) == before
    out.unlink()
    (tmp_path / "m.csv").write_text("my table\n")
    before = snapshot(tmp_path)
    code, err = run_cli(["evaluate", pred, ref, "--out", out], capsys)
    assert_refused(code, err, "m.csv", "--overwrite")  # the CSV twin is protected too
    assert snapshot(tmp_path) == before
    (tmp_path / "m.csv").unlink()
    assert run_cli(["evaluate", pred, ref, "--out", out], capsys)[0] == 0
    first = out.read_text()
    assert run_cli(["evaluate", pred, ref, "--out", out, "--overwrite", "--match-intensity"], capsys)[0] == 0
    assert out.read_text() != first
    (tmp_path / "m.csv").write_text("my table\n")  # the user's edit: the file is theirs now
    code, err = run_cli(["evaluate", pred, ref, "--out", out, "--overwrite"], capsys)
    assert_refused(code, err, "m.csv", "did not write")
    assert (tmp_path / "m.csv").read_text() == "my table\n"


def test_evaluate_on_a_full_disk_leaves_the_old_file(data, tmp_path):
    pred, ref = data / "sub-001" / "T1.nii.gz", data / "sub-001" / "T2.nii.gz"
    out = tmp_path / "m.json"
    assert synthmed_process(["evaluate", pred, ref, "--out", out, "--quiet"]).returncode == 0
    before = snapshot(tmp_path)
    result = synthmed_process(
        ["evaluate", pred, ref, "--out", out, "--overwrite", "--match-intensity", "--quiet"],
        preexec_fn=limited_file_size(200),
    )
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("synthmed: error: ") and "m." in last and "writing failed" in last, result.stderr
    assert snapshot(tmp_path) == before  # neither a 0-byte m.json nor a temporary file
    assert sorted(p.name for p in tmp_path.iterdir()) == [".synthmed-outputs", "data", "m.csv", "m.json"]


# ----------------------------------------------------------------------------- 5. one command per output


def test_a_second_prepare_into_a_locked_output_is_refused(data, tmp_path, capsys):
    prep = tmp_path / "prep"
    holder = hold_lock(prep)
    try:
        before = snapshot(tmp_path)
        code, err = run_cli(prepare_args(data, prep), capsys)
        assert_refused(code, err, "in use by another synthmed command", f"process {holder.pid}", "the other user")
        assert snapshot(tmp_path) == before and not prep.exists()
    finally:
        holder.kill()  # kill -9: the operating system releases the lock with the process
        holder.wait()
    assert run_cli(prepare_args(data, prep), capsys)[0] == 0
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no lock file left behind


def test_a_second_train_resume_on_a_locked_run_is_refused(prepared, tmp_path, capsys):
    run = tmp_path / "run"
    args = [
        "train",
        prepared,
        "--model",
        "pix2pix",
        "--out",
        run,
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--set",
        "generator_channels=8",
        "--set",
        "discriminator_channels=8",
        "--log-every",
        "1",
        "--quiet",
    ]
    assert run_cli(args, capsys)[0] == 0
    holder = hold_lock(run)
    try:
        before = snapshot(run)
        code, err = run_cli([*args[:-1], "--steps", "4", "--resume", "--quiet"], capsys)
        assert_refused(code, err, "in use", f"process {holder.pid}")
        assert snapshot(run) == before  # log.csv not doubled, checkpoints untouched
    finally:
        holder.kill()
        holder.wait()
    assert run_cli([*args[:-1], "--steps", "4", "--resume", "--quiet"], capsys)[0] == 0
    steps = [int(line.split(",")[0]) for line in (run / "log.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4]


def test_two_real_prepare_processes_do_not_both_write(data, tmp_path):
    """Started together, one prepare runs and the other is refused (or, if it starts after the first ended,
    finds the folder up to date); never two writers."""
    prep = tmp_path / "prep"
    command = [PYTHON, "-m", "synthmed", *map(str, prepare_args(data, prep))]
    processes = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    assert sorted(code for code, _ in results)[0] == 0
    for code, err in results:
        assert code == 0 or ("in use by another synthmed command" in err and code == 2), err
    assert json.loads((prep / "plan.json").read_text())["source"] == "t1"


# ----------------------------------------------------------------------------- 6. evaluate checks the grid


def test_evaluate_refuses_a_shifted_copy_or_resamples_it(data, tmp_path, capsys):
    ref = data / "sub-001" / "T2.nii.gz"
    image = nib.load(ref)
    affine = image.affine.copy()
    affine[0, 3] += 80.0  # the same voxels, placed 80 mm away
    shifted = tmp_path / "shifted.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), affine, image.header), shifted)
    before = snapshot(tmp_path, data)
    code, err = run_cli(["evaluate", shifted, ref], capsys)
    assert_refused(code, err, "not on one voxel grid", "80 mm", "--resample")
    assert snapshot(tmp_path, data) == before
    from synthmed.workflows.evaluate import evaluate

    resampled = evaluate(shifted, ref, resample=True)["mean"]
    assert resampled["psnr"] < 40 and resampled["ssim"] < 0.9  # not the PSNR 100 / SSIM 1.0 of comparing arrays
    assert evaluate(ref, ref)["mean"]["ssim"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- 7. translate checks its checkpoint


def test_translate_refuses_a_checkpoint_of_another_run(trained_run, prepared, data, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    other = tmp_path / "other"
    assert (
        run_cli(
            [
                "train",
                prepared,
                "--model",
                "pix2pix",
                "--out",
                other,
                "--steps",
                "1",
                "--batch-size",
                "2",
                "--set",
                "generator_channels=4",
                "--set",
                "discriminator_channels=4",
                "--quiet",
            ],
            capsys,
        )[0]
        == 0
    )
    shutil.copy(other / "checkpoints" / "last.pt", run / "checkpoints" / "best.pt")
    t1 = data / "sub-001" / "T1.nii.gz"
    code, err = run_cli(["translate", run, t1, tmp_path / "t2.nii.gz", "--quiet"], capsys)
    assert_refused(code, err, "best.pt", "another configuration", "generator_channels")
    assert not (tmp_path / "t2.nii.gz").exists()

    shutil.copy(trained_run / "checkpoints" / "best.pt", run / "checkpoints" / "best.pt")
    plan = json.loads((run / "plan.json").read_text())
    plan["reference_normalization"]["t2"]["hi"] *= 2  # another data set's scale
    (run / "plan.json").write_text(json.dumps(plan))
    code, err = run_cli(["translate", run, t1, tmp_path / "t2.nii.gz", "--quiet"], capsys)
    assert_refused(code, err, "another prepared data set")

    info = json.loads((trained_run / "run.json").read_text())
    shutil.copy(trained_run / "plan.json", run / "plan.json")
    (run / "run.json").write_text(json.dumps({**info, "model": "cyclegan"}))
    code, err = run_cli(["translate", run, t1, tmp_path / "t2.nii.gz", "--quiet"], capsys)
    assert_refused(code, err, "pix2pix checkpoint", "cyclegan run")


# ----------------------------------------------------------------------------- 8. the reference's kind


def test_a_ct_reference_for_an_mr_output_is_refused(trained_run, data, phantoms, tmp_path, capsys):
    t1 = data / "sub-001" / "T1.nii.gz"
    ct = phantoms / "sub-001" / "CT.nii.gz"
    code, err = run_cli(["translate", trained_run, t1, tmp_path / "t2.nii.gz", "--reference", ct, "--quiet"], capsys)
    assert_refused(code, err, "CT.nii.gz", "Hounsfield", "t2")
    assert not (tmp_path / "t2.nii.gz").exists()


# ----------------------------------------------------------------------------- 9. one scan under two subjects


def test_prepare_refuses_the_same_scan_under_two_subject_ids(data, tmp_path, capsys):
    shutil.copytree(data / "sub-001", data / "sub-099")
    before = snapshot(tmp_path)
    code, err = run_cli(prepare_args(data, tmp_path / "prep"), capsys)
    assert_refused(code, err, "sub-001", "sub-099", "same scan")
    assert snapshot(tmp_path) == before
    # the same voxels in another format are found too
    shutil.rmtree(data / "sub-099")
    (data / "sub-099").mkdir()
    for name in ("T1", "T2"):
        image = nib.load(data / "sub-002" / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine), data / "sub-099" / f"{name}.nii")
    code, err = run_cli(prepare_args(data, tmp_path / "prep"), capsys)
    assert_refused(code, err, "sub-002", "sub-099")


# ----------------------------------------------------------------------------- 13. broken records and full disks


PLAN_DAMAGE = [
    (lambda plan: plan.update(size=1_000_000), "field size is 1000000"),
    (lambda plan: plan.pop("split"), "field split is missing"),
    (lambda plan: plan["split"].update(train="sub-001"), "field split.train"),
    (lambda plan: plan["volumes"][next(iter(plan["volumes"]))]["geometry"].update(side=-4), "geometry.side is -4"),
    (lambda plan: plan["reference_normalization"]["t2"].update(lo="low"), "reference_normalization.t2.lo"),
    (lambda plan: plan["split"]["test"].append("sub-404"), "sub-404"),
]


@pytest.mark.parametrize("damage, needle", PLAN_DAMAGE)
def test_a_crafted_plan_gives_one_line_naming_the_field(prepared, tmp_path, capsys, damage, needle):
    prep = tmp_path / "prep"
    shutil.copytree(prepared, prep)
    plan = json.loads((prep / "plan.json").read_text())
    damage(plan)
    (prep / "plan.json").write_text(json.dumps(plan))
    code, err = run_cli(
        ["train", prep, "--model", "pix2pix", "--out", tmp_path / "run", "--steps", "1", "--quiet"], capsys
    )
    assert_refused(code, err, "plan.json", needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "text, needle",
    [
        ("{", "not valid JSON"),
        ('{"size": NaN}', "NaN"),
        ("[1, 2]", "expected an object"),
        ("\xff\xfe", "not UTF-8"),
    ],
)
def test_unparsable_records_give_one_line(trained_run, prepared, tmp_path, capsys, text, needle):
    run, prep = tmp_path / "run", tmp_path / "prep"
    shutil.copytree(trained_run, run)
    shutil.copytree(prepared, prep)
    for path in (run / "run.json", prep / "plan.json"):
        path.write_bytes(text.encode("latin-1"))
    code, err = run_cli(["translate", run, prepared, tmp_path / "out", "--quiet"], capsys)
    assert_refused(code, err, "run.json", needle)
    code, err = run_cli(["train", prep, "--model", "pix2pix", "--out", tmp_path / "new", "--quiet"], capsys)
    assert_refused(code, err, "plan.json", needle)


def test_crafted_run_and_benchmark_records(trained_run, tiny_benchmark, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    info = json.loads((run / "run.json").read_text())
    for damage, needle in [
        ({"model": 7}, "field model is 7"),
        ({"model": "nope"}, "unknown model 'nope'"),
        ({"config": "big"}, "field config"),
    ]:
        (run / "run.json").write_text(json.dumps({**info, **damage}))
        code, err = run_cli(["translate", run, tmp_path / "in.nii.gz", tmp_path / "out.nii.gz", "--quiet"], capsys)
        assert_refused(code, err, needle)

    bench = tmp_path / "bench"
    shutil.copytree(tiny_benchmark, bench, symlinks=True)
    record = json.loads((bench / "benchmark.json").read_text())
    for damage, needle in [
        (lambda r: r.pop("protocol"), "field protocol is missing"),
        (lambda r: r["methods"]["pix2pix"].update(repeats=[]), "field methods.pix2pix.repeats has 0 entries"),
        (lambda r: r["data"].update(split=None), "field data.split is None"),
        (lambda r: r["identity"].update(overall=[]), "benchmark.json"),
    ]:
        changed = json.loads(json.dumps(record))
        damage(changed)
        (bench / "benchmark.json").write_text(json.dumps(changed))
        code, err = run_cli(["report", bench, "--out", tmp_path / "report.html"], capsys)
        assert_refused(code, err, needle)
        assert not (tmp_path / "report.html").exists()


def test_prepare_on_a_full_disk_says_so_and_leaves_nothing(data, tmp_path, monkeypatch, capsys):
    before = snapshot(tmp_path)
    # Too little free space: refused before a byte is written (a memory map on a full disk would crash).
    import synthmed.files

    monkeypatch.setattr(synthmed.files.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    code, err = run_cli(prepare_args(data, tmp_path / "prep"), capsys)
    assert_refused(code, err, "disk space", "free")
    monkeypatch.undo()
    # The disk fills up while writing: an error naming the folder, and the temporary folder removed.
    result = synthmed_process(prepare_args(data, tmp_path / "prep"), preexec_fn=limited_file_size(20_000))
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("synthmed: error: ") and "prep" in last and "failed" in last, result.stderr
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no .prep.tmp-PID folder


def test_phantom_on_a_full_disk_names_the_file_and_leaves_no_empty_files(tmp_path):
    result = synthmed_process(
        ["phantom", tmp_path / "heads", "--subjects", "2", "--size", "32"], preexec_fn=limited_file_size(30_000)
    )
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("synthmed: error: ") and ".nii.gz" in last and "writing failed" in last, result.stderr
    files = [p for p in (tmp_path / "heads").rglob("*") if p.is_file()]
    assert all(p.stat().st_size > 0 and not p.name.startswith(".") for p in files)


# ----------------------------------------------------------------------------- 14. leftovers of killed runs


def test_leftovers_of_dead_processes_are_removed_at_the_next_start(trained_run, data, tmp_path, caplog):
    from synthmed.data.prepare import prepare
    from synthmed.workflows.translate import translate

    pid = dead_pid()
    out = tmp_path / "translations"
    translate(trained_run, data, out, progress=False)
    partial = out / "sub-001" / f".T2.nii.gz.partial-{pid}.nii.gz"
    partial.write_bytes(b"half a volume")
    alive = out / "sub-001" / f".T2.nii.gz.partial-{os.getppid()}.nii.gz"  # a running process: not stale
    alive.write_bytes(b"in progress")
    stale_prep = tmp_path / f".prep.tmp-{pid}"
    (stale_prep / "slices").mkdir(parents=True)
    with caplog.at_level("INFO"):
        translate(trained_run, data, out, overwrite=True, progress=False)
        prepare(data, source="T1", target="T2", out=tmp_path / "prep", size=32, progress=False)
    assert not partial.exists() and alive.exists()
    assert not stale_prep.exists()
    said = " ".join(r.getMessage() for r in caplog.records)
    assert f"process {pid}" in said and "leftover" in said


# ----------------------------------------------------------------------------- 15. exit statuses of signals


def test_sigterm_during_training_exits_143_with_a_checkpoint(prepared, tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "synthmed",
            "train",
            str(prepared),
            "--model",
            "pix2pix",
            "--out",
            str(run),
            "--steps",
            "100000",
            "--batch-size",
            "2",
            "--set",
            "generator_channels=8",
            "--set",
            "discriminator_channels=8",
            "--log-every",
            "1",
            "--quiet",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (run / "log.csv").is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "SIGTERM" in err and "--resume" in err
    assert (run / "checkpoints" / "last.pt").is_file()


def test_sigterm_in_any_command_unwinds_and_exits_143(monkeypatch, capsys):
    import synthmed.cli

    def terminated(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        return 0

    monkeypatch.setattr(synthmed.cli, "run_command", terminated)
    assert main(["models"]) == 143
    assert capsys.readouterr().err.strip() == "synthmed: terminated (SIGTERM)"
    assert (
        signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        or signal.getsignal(signal.SIGTERM) != synthmed.cli._raise_terminated
    )


# ----------------------------------------------------------------------------- 16. strict JSON everywhere


def test_records_are_strict_json_with_null_for_infinities(prepared, data, tmp_path, capsys):
    prep = tmp_path / "prep"
    assert run_cli(prepare_args(data, prep, "--split", "0.75,0,0.25"), capsys)[0] == 0  # no validation subjects
    run = tmp_path / "run"
    assert (
        run_cli(
            [
                "train",
                prep,
                "--model",
                "pix2pix",
                "--out",
                run,
                "--steps",
                "2",
                "--batch-size",
                "2",
                "--set",
                "generator_channels=8",
                "--set",
                "discriminator_channels=8",
                "--quiet",
            ],
            capsys,
        )[0]
        == 0
    )
    summary = strict_json(run / "train_summary.json")
    assert summary["best"]["value"] is None  # was -Infinity
    for path in (run / "run.json", run / "plan.json", prep / "plan.json"):
        strict_json(path)
    t2 = data / "sub-001" / "T2.nii.gz"
    assert run_cli(["evaluate", t2, t2, "--out", tmp_path / "same.json"], capsys)[0] == 0
    assert strict_json(tmp_path / "same.json")["per_subject"]["T2"]["psnr"] is None  # identical: infinite PSNR
