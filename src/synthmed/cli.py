"""The one entry point: ``synthmed <verb>``. Parses arguments and calls the workflows.

User errors print one line (``synthmed: error: ...``) and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from synthmed.errors import SynthmedError, Terminated


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be at least {minimum}")
        return value

    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--verbose", action="store_true", help="debug logging")


def _parse_overrides(items: list[str] | None) -> dict:
    """``--set key=value`` (values parsed as JSON when they can be: 64, 0.5, true, [1,2]; a comma list without
    brackets, 16,32 or false,true, is a list too)."""
    overrides = {}
    for item in items or []:
        if "=" not in item:
            raise SynthmedError(f"--set {item}: use key=value, e.g. --set generator_channels=32")
        key, value = item.split("=", 1)
        overrides[key.strip()] = _parse_value(value)
    return overrides


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        if "," in text:
            return [_parse_value(part.strip()) for part in text.split(",")]
        return text


def build_parser() -> argparse.ArgumentParser:
    from synthmed.benchmarking.suites import SUITES  # declarations only: cheap to import

    parser = argparse.ArgumentParser(
        prog="synthmed", description="Medical image synthesis: translate modalities, generate images with masks."
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("demo", help="phantoms -> prepare -> train pix2pix -> translate -> evaluate vs identity")
    p.add_argument("--out", default="synthmed-demo", help="demo folder (default: ./synthmed-demo)")
    p.add_argument("--subjects", type=positive_int, default=10)
    p.add_argument("--size", type=positive_int, default=64)
    p.add_argument("--steps", type=positive_int, default=None, help="training steps (default: the small preset's)")
    p.add_argument("--model", default="pix2pix")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true")
    _add_common(p)

    p = sub.add_parser("phantom", help="write synthetic heads (T1, T2, PD, FLAIR, T1c, CT, labels, lesion)")
    p.add_argument("out")
    p.add_argument("--subjects", type=positive_int, default=10)
    p.add_argument("--size", type=positive_int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    _add_common(p)

    p = sub.add_parser("prepare", help="fingerprint, plan and slice a dataset")
    p.add_argument("data", nargs="?", default=None, help="data folder (optional with --manifest)")
    p.add_argument("--source", required=True)
    p.add_argument("--target", default=None)
    p.add_argument("--label", default=None, help="label/mask modality to keep with the slices")
    p.add_argument("--out", required=True)
    res = p.add_mutually_exclusive_group()
    res.add_argument(
        "--spacing",
        type=float,
        default=None,
        metavar="MM",
        help="in-plane pixel size of the slices (default: the data's median; native resolution)",
    )
    res.add_argument(
        "--size",
        type=positive_int,
        default=None,
        help="resize each foreground box to N x N pixels instead of keeping native resolution",
    )
    p.add_argument("--axis", default="axial", help="axial, coronal, sagittal or 0-2")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--pattern", help="e.g. '{subject}-{modality}.nii.gz' or '{subject}/{modality}_N4_*.nii.gz'")
    group.add_argument("--manifest", help="CSV/JSON with subject, modality, path [, split, mask, label, key, channel]")
    p.add_argument("--alias", action="append", help="modality alias, e.g. t2f=flair (repeatable, or comma-separated)")
    p.add_argument("--split", default="0.7,0.1,0.2", help="train,val,test fractions of subjects")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resample", action="store_true", help="resample other modalities onto the source grid")
    p.add_argument("--overwrite", action="store_true")
    _add_common(p)

    p = sub.add_parser("train", help="train a method on a prepared folder")
    p.add_argument("prep")
    p.add_argument("--model", required=True)
    p.add_argument("--preset", default="small")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=positive_int, default=None)
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="also stop (with a checkpoint, as after the last step) when training has run this long",
    )
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument(
        "--patch",
        type=positive_int,
        default=None,
        help="train on random PATCH x PATCH windows of the slices (multiple of 16; default: the preset's "
        "image size on native-resolution data, the whole slice on resized data)",
    )
    p.add_argument(
        "--context",
        type=positive_int,
        default=1,
        metavar="K",
        help="2.5D: give the networks K neighbouring slices (odd; the slice in the middle) as input "
        "(every translator; an unpaired model's reverse direction B2A stays single-slice)",
    )
    p.add_argument("--resume", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=non_negative_int, default=0, help="DataLoader worker processes")
    p.add_argument("--val-every", type=positive_int, default=250)
    p.add_argument("--log-every", type=positive_int, default=25, help="steps between log.csv rows")
    p.add_argument("--checkpoint-every", type=positive_int, default=250, help="steps between last.pt saves")
    p.add_argument(
        "--amp",
        default="auto",
        choices=["auto", "bf16", "fp16", "off"],
        help="mixed precision: bf16 autocast on GPUs that support it (auto, default); bf16 (also on the "
        "CPU); fp16 with a gradient scaler (GPUs without bf16: V100, T4); off",
    )
    p.add_argument("--channels-last", action="store_true", help="NHWC memory layout for the convolutions (GPUs)")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks (slow first steps)")
    p.add_argument(
        "--vgg19-weights",
        metavar="PATH",
        default=None,
        help="local VGG-19 state dict (torchvision names) for medgan's style and content losses",
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config setting")
    _add_common(p)

    p = sub.add_parser("translate", help="translate a volume or a folder with a trained run")
    p.add_argument("run")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--reference", help="scan(s) of the target modality whose intensity scale the output takes (MR)")
    p.add_argument("--checkpoint", default="best", help="best (default) or last")
    p.add_argument("--channel", type=int, default=None, help="channel of a 4D or RGB input to translate")
    p.add_argument(
        "--direction",
        default="A2B",
        choices=["A2B", "B2A"],
        help="A2B: the run's source -> target (default); B2A: target -> source (models trained both ways)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="slices per forward pass (default: 32 on a GPU; on a CPU as many as add up to 256x256 pixels, "
        "since larger batches run slower per slice there)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument(
        "--no-mask",
        dest="mask_background",
        action="store_false",
        help="keep the network's raw output outside the source's head (default: the target's background)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse an input unlike the training scans (default: a warning naming what differs)",
    )
    p.add_argument(
        "--amp",
        default="off",
        choices=["off", "auto", "bf16", "fp16"],
        help="network precision: off (full, default), auto (bf16 on GPUs that have it), bf16 (also on "
        "the CPU), fp16; faster, outputs differ by round-off",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the networks (for GPUs: the first batch waits for compilation; on CPUs it was "
        "measured to gain nothing)",
    )
    g = p.add_argument_group("sampling (diffusion models)")
    g.add_argument("--sampler", help="ddpm, ddim (default), em, pc or ode")
    g.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="network evaluations per sample (default: the run's: 10 small, 50 paper; ddpm sampler: all T)",
    )
    g.add_argument("--eta", type=float, default=None, help="DDIM stochasticity: 0 deterministic (default), 1 ancestral")
    g.add_argument(
        "--samples",
        type=positive_int,
        default=1,
        help="samples per slice: writes their mean and a *_std uncertainty map",
    )
    g.add_argument("--seed", type=int, default=0, help="noise seed (same seed, batch size and device: same output)")
    _add_common(p)

    p = sub.add_parser(
        "import",
        help="a run folder from a checkpoint of an official implementation (pix2pix, CycleGAN, SynDiff)",
        description="Turn an official implementation's checkpoint into a run folder that `synthmed translate` "
        "applies to whole volumes. pix2pix, cyclegan: junyanz/pytorch-CycleGAN-and-pix2pix generators "
        "(latest_net_G.pth; U-Net or ResNet, batch/instance norm, 1 or 3 channels, read from the file). "
        "syndiff: icon-lab/SynDiff diffusive generators (gen_diffusive_2_N.pth makes contrast2 from contrast1; "
        "gen_diffusive_1_N.pth, given as --reverse, the other way).",
    )
    p.add_argument("kind", help="pix2pix, cyclegan or syndiff")
    p.add_argument("checkpoint", help="the generator's state dict, e.g. checkpoints/NAME/latest_net_G.pth")
    p.add_argument("run_out", metavar="RUN_OUT", help="the run folder to create")
    p.add_argument("--source", default="A", help="the input modality's name, e.g. T1 (default A)")
    p.add_argument("--target", default="B", help="the output modality's name, e.g. T2 (default B)")
    p.add_argument(
        "--reverse",
        help="the B -> A generator of a two-way model (CycleGAN latest_net_G_B.pth, SynDiff gen_diffusive_1): "
        "enables B2A",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--size", type=positive_int, help="slice size each foreground box is resized to (default: the network's)"
    )
    size.add_argument("--spacing", type=float, help="keep native resolution at this pixel size (mm) instead")
    p.add_argument("--axis", default="axial", help="slice axis: axial, coronal, sagittal or 0-2")
    for role in ("source", "target"):
        p.add_argument(
            f"--{role}-norm",
            choices=["mr", "ct"],
            help=f"{role} intensities -> [-1, 1]: mr (per volume, 0.5th percentile -> -1, foreground 99.5th -> 1) "
            "or ct (window [-1000, 2000] HU); default from the modality name",
        )
    p.add_argument("--overwrite", action="store_true", help="replace a run folder that synthmed import made")
    _add_common(p)

    p = sub.add_parser(
        "export", help="a trained translation run as TorchScript, ONNX or a MONAI bundle, checked against the model"
    )
    p.add_argument("run")
    p.add_argument("out", help="output folder")
    p.add_argument("--format", default="torchscript", choices=["torchscript", "onnx", "bundle"])
    p.add_argument("--direction", default="A2B", choices=["A2B", "B2A"], help="B2A: models trained both ways")
    p.add_argument("--checkpoint", default="best", help="best (default) or last")
    p.add_argument("--steps", type=positive_int, default=None, help="ddpm: network evaluations of the exported loop")
    p.add_argument("--eta", type=float, default=None, help="ddpm with DDIM: eta of the exported loop")
    p.add_argument("--check-volume", help="also compare a whole volume translated by the export and by the model")
    p.add_argument("--device", default="cpu", help="where the model runs for the export and its checks")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT (only its own files)")
    _add_common(p)

    p = sub.add_parser("generate", help="new slices (and lesion masks, pig) from a trained generator")
    p.add_argument("run")
    p.add_argument("--n", type=positive_int, required=True, help="number of slices (pairs) to generate")
    p.add_argument("--out", required=True, help="folder for NNNNNN_image / NNNNNN_mask files and a contact sheet")
    p.add_argument("--format", default="png", choices=["png", "nii"])
    p.add_argument("--checkpoint", default="best", help="best (default) or last")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="slices sampled together (default 16; on a CPU at most 256x256 pixels in all)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument(
        "--amp",
        default="off",
        choices=["off", "auto", "bf16", "fp16"],
        help="network precision: off (full, default), auto (bf16 on GPUs that have it), bf16 (also on "
        "the CPU), fp16; faster, outputs differ by round-off",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the networks (for GPUs: the first batch waits for compilation; on CPUs it was "
        "measured to gain nothing)",
    )
    g = p.add_argument_group("sampling")
    g.add_argument("--sampler", help="ddim (default) or ddpm (ancestral); ddpm-gen also em, pc, ode")
    g.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="sampling steps (default: the run's: 50 small, 256 paper; ddpm: all T)",
    )
    g.add_argument(
        "--eta", type=float, default=None, help="DDIM stochasticity: 0 deterministic (default, the paper's sigma 0)"
    )
    g.add_argument("--seed", type=int, default=0, help="noise seed (same seed, batch size and device: same output)")
    _add_common(p)

    p = sub.add_parser("anomaly", help="anomaly maps of scans from a model of healthy anatomy (anoddpm)")
    p.add_argument("run", help="run folder of a model trained on healthy slices (train --model anoddpm)")
    p.add_argument("input", help="a volume, or a folder of volumes or subject folders")
    p.add_argument("output", help="the map's file (a folder for a folder input); the reconstruction goes beside it")
    p.add_argument("--t-star", type=int, default=None, help="the partial step the slices are noised to (paper: 250)")
    p.add_argument("--noise", choices=["simplex", "gaussian"], default=None, help="default: what the model trained on")
    p.add_argument(
        "--method",
        choices=["ddpm", "ddim"],
        default=None,
        help="ddpm: AnoDDPM's ancestral chain; ddim: deterministic inversion and decoding",
    )
    p.add_argument("--steps", type=int, default=None, help="reverse steps from t-star (0: every one)")
    p.add_argument("--samples", type=positive_int, default=1, help="reconstructions averaged into the map")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--checkpoint", default="best")
    p.add_argument("--channel", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true")
    _add_common(p)

    p = sub.add_parser("reconstruct", help="images from undersampled MRI k-space: diffusion prior, zero-filled or CS")
    p.add_argument("method", help="a score-mri run folder (train --model score-mri), or zero-filled, or cs")
    p.add_argument("input", help="a magnitude image (undersampled retrospectively) or k-space (.npy, .h5, BART .cfl)")
    p.add_argument("output", help="the magnitude image to write (.nii.gz, .png, ...); OUTPUT_std with --samples > 1")
    p.add_argument("--mask", default="random", help="random, equispaced, poisson, or measured (k-space as acquired)")
    p.add_argument("--accel", type=float, default=4.0, help="acceleration: all samples / acquired ones")
    p.add_argument("--center", type=float, default=0.08, help="fully sampled centre, fraction of the lines")
    p.add_argument("--phase", action="store_true", help="give a simulated acquisition a smooth synthetic phase")
    p.add_argument("--sampler", default=None, help="diffusion sampler: ddim, ddpm, em, pc, ode (default: the run's)")
    p.add_argument("--steps", type=positive_int, default=None, help="network evaluations (default: the run's)")
    p.add_argument("--samples", type=positive_int, default=1, help="reconstructions: mean + OUTPUT_std")
    p.add_argument("--dc-weight", type=float, default=None, help="1: hard data consistency (noiseless data)")
    p.add_argument("--iterations", type=positive_int, default=200, help="cs: Chambolle-Pock iterations")
    p.add_argument("--seed", type=int, default=0, help="mask and sampler seed")
    p.add_argument("--checkpoint", default="best")
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true")
    _add_common(p)

    p = sub.add_parser("benchmark", help="every translation method, one protocol: train, translate, evaluate")
    p.add_argument(
        "--suite",
        default="quick",
        choices=list(SUITES),
        help="; ".join(f"{name}: {suite.description}" for name, suite in SUITES.items()).replace("%", "%%"),
    )
    p.add_argument("--out", required=True, help="folder for benchmark.json/.csv, runs, outputs and logs")
    p.add_argument(
        "--models",
        help="comma list of MODEL or MODEL:PRESET (default: the suite's methods, else every "
        "translation method at preset small)",
    )
    p.add_argument(
        "--data",
        help="your data instead of phantoms (any layout prepare reads); --suite real: the "
        "folder that holds brats/ and ms/",
    )
    p.add_argument("--pattern")
    p.add_argument("--manifest")
    p.add_argument("--source", help="source modality (default T1; --suite real: with --target, one task only)")
    p.add_argument("--target", help="target modality (default T2)")
    p.add_argument("--label", help="lesion label modality, scored separately (phantoms: lesion)")
    p.add_argument("--budget-steps", type=positive_int, default=None, help="training steps for every method")
    p.add_argument(
        "--budget-minutes",
        type=float,
        default=None,
        help="training minutes for every method (stops at this time, or at --budget-steps if given)",
    )
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--repeats", type=positive_int, default=1, help="seeds per method (mean +/- sd over them)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--samples",
        type=positive_int,
        default=1,
        help="samples per slice for stochastic methods (mean scored, std = uncertainty map)",
    )
    p.add_argument(
        "--inception-weights",
        metavar="PATH",
        default=None,
        help="local Inception-v3 state dict for FID (pytorch-fid's file for published values)",
    )
    p.add_argument("--inception-variant", default="auto", choices=["auto", "fid", "torchvision"])
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads per process")
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true")
    _add_common(p)

    p = sub.add_parser("report", help="one self-contained HTML page from a benchmark folder")
    p.add_argument("source", help="a folder written by synthmed benchmark")
    p.add_argument("--out", required=True, help="the HTML file to write")
    p.add_argument("--slices", type=positive_int, default=1, help="slices shown per test subject")
    p.add_argument(
        "--convention",
        default="toolkit",
        choices=["toolkit", "max-normalised"],
        help="metrics shown: the toolkit's (target units, masked) or SynDiff's test code's "
        "(per-slice max normalisation, whole slice), to compare with published tables",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT if an earlier report wrote it")
    _add_common(p)

    p = sub.add_parser("evaluate", help="PSNR, SSIM, MAE, NMSE of predictions against references")
    p.add_argument("pred")
    p.add_argument("ref")
    p.add_argument("--mask", help="mask file or folder (default: the reference's foreground)")
    p.add_argument("--out", help="metrics.json (a CSV is written beside it)")
    p.add_argument("--pred-name", help="modality file to take from each prediction subject folder")
    p.add_argument("--ref-name", help="modality file to take from each reference subject folder")
    p.add_argument(
        "--match-intensity",
        action="store_true",
        help="map predictions onto the reference's scale first (identity baseline)",
    )
    p.add_argument(
        "--resample",
        action="store_true",
        help="resample each prediction onto its reference's grid (linear) when their geometry differs",
    )
    p.add_argument(
        "--protocol",
        default="toolkit",
        choices=["toolkit", "max-normalised", "synthrad2023", "synthrad2025"],
        help="scoring convention: the toolkit's (target units, masked), SynDiff's max-normalised slices, or the "
        "SynthRAD2023/2025 challenges' (CT in HU; --mask must be the body mask)",
    )
    p.add_argument(
        "--compare",
        metavar="OTHER_PRED",
        help="a second prediction file or folder scored against the same REF; per metric a paired Wilcoxon "
        "signed-rank test, median difference and rank-biserial effect size over the common subjects",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file and its CSV")
    _add_common(p)

    p = sub.add_parser("evaluate-anomaly", help="AUROC, AUPRC and Dice of anomaly maps against lesion labels")
    p.add_argument("maps", help="a map file, or the folder synthmed anomaly wrote for a folder of subjects")
    p.add_argument("data", help="the label file, or the folder of subject folders holding labels (and scans)")
    p.add_argument("--label-name", default="lesion", help="label modality in each subject folder (lesion = label > 0)")
    p.add_argument("--map-name", default="anomaly", help="map file name in each subject folder of MAPS")
    p.add_argument(
        "--input-name",
        help="the scan in each subject folder (e.g. flair): maps in its normalised units, and the intensity "
        "baselines bright/dark scored beside them",
    )
    p.add_argument("--input", dest="input_file", help="the scan, when MAPS and DATA are files")
    p.add_argument("--mask", help="brain mask file or folder (default: the scan's foreground, else map > 0)")
    p.add_argument(
        "--validation",
        help="comma list of subjects whose pooled voxels choose the threshold applied to every other subject",
    )
    p.add_argument("--out", help="anomaly.json (a CSV is written beside it)")
    p.add_argument("--overwrite", action="store_true")
    _add_common(p)

    p = sub.add_parser("degrade", help="degraded copies for restoration pairs: MR motion, Rician noise, PET low dose")
    p.add_argument("input", help="a volume, or a folder of subject folders (with --name)")
    p.add_argument("output", help="a volume file, or a folder mirroring the subject folders")
    p.add_argument("--kind", required=True, choices=["motion", "noise", "lowdose"])
    p.add_argument("--severity", type=float, default=1.0, help="in (0, 3]; 1 = moderate (default), 3 = severe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--name", help="modality to degrade in each subject folder, e.g. T1 (writes T1_<kind> beside a link to T1)"
    )
    p.add_argument(
        "--alias", action="append", help="modality alias for finding --name, e.g. t1c_bet=t1c (as for prepare)"
    )
    p.add_argument("--axis", default="axial", help="slice axis for motion: axial, coronal, sagittal or 0-2")
    p.add_argument("--overwrite", action="store_true")
    _add_common(p)

    p = sub.add_parser("models", help="list the registered methods")
    p.add_argument("--json", action="store_true")
    return parser


def run_command(args: argparse.Namespace) -> int:
    progress = not getattr(args, "quiet", False)
    if args.verb == "demo":
        from synthmed.workflows.demo import demo

        demo(
            args.out,
            subjects=args.subjects,
            size=args.size,
            steps=args.steps,
            model=args.model,
            seed=args.seed,
            overwrite=args.overwrite,
            progress=progress,
            device=args.device,
        )
    elif args.verb == "phantom":
        from synthmed.data.phantom import write_phantoms

        folders = write_phantoms(
            args.out, subjects=args.subjects, size=args.size, seed=args.seed, overwrite=args.overwrite
        )
        print(f"wrote {len(folders)} phantom subjects to {args.out}")
    elif args.verb == "prepare":
        from synthmed.data.plan import load_plan
        from synthmed.data.prepare import prepare

        out = prepare(
            args.data,
            source=args.source,
            target=args.target,
            label=args.label,
            out=args.out,
            size=args.size,
            spacing=args.spacing,
            axis=args.axis,
            pattern=args.pattern,
            manifest=args.manifest,
            split=args.split,
            seed=args.seed,
            aliases=",".join(args.alias) if args.alias else None,
            resample=args.resample,
            overwrite=args.overwrite,
            progress=progress,
        )
        plan = load_plan(out)
        counts = ", ".join(f"{k} {len(v)} subjects/{plan.n_slices[k]} slices" for k, v in plan.split.items())
        at = (
            f"{plan.size}px slices at {plan.resolution.spacing_mm:g} mm per pixel"
            if plan.resolution.native
            else f"{plan.size}px"
        )
        print(f"prepared {plan.source} -> {plan.target or '-'} at {at} in {out}: {counts}")
    elif args.verb == "train":
        from synthmed.workflows.train import train

        overrides = _parse_overrides(args.set) or {}
        if args.vgg19_weights:
            overrides["vgg19_weights"] = str(Path(args.vgg19_weights).resolve())
        summary = train(
            args.prep,
            model=args.model,
            preset=args.preset,
            out=args.out,
            steps=args.steps,
            batch_size=args.batch_size,
            patch=args.patch,
            context=args.context,
            resume=args.resume,
            seed=args.seed,
            device=args.device,
            overrides=overrides,
            progress=progress,
            num_workers=args.workers,
            val_every=args.val_every,
            log_every=args.log_every,
            checkpoint_every=args.checkpoint_every,
            amp=args.amp,
            channels_last=args.channels_last,
            compile=args.compile,
            max_minutes=args.max_minutes,
        )
        best = summary["best"]
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one line rather than one per process
            processes = f" x {summary['processes']} processes" if summary.get("processes", 1) > 1 else ""
            validated = (
                f"best validation PSNR {best['value']:.2f} dB at step {best['step']}"
                if best["step"]
                else "no validation (best.pt = last.pt)"
            )
            print(
                f"trained {summary['steps']} steps in {summary['seconds']} s on {summary['device']}{processes}; "
                f"{validated}; run in {args.out}"
            )
    elif args.verb == "translate":
        from synthmed.workflows.translate import translate

        written = translate(
            args.run,
            args.input,
            args.output,
            reference=args.reference,
            overwrite=args.overwrite,
            batch_size=args.batch_size,
            device=args.device,
            checkpoint=args.checkpoint,
            channel=args.channel,
            sampler=args.sampler,
            steps=args.steps,
            eta=args.eta,
            samples=args.samples,
            seed=args.seed,
            direction=args.direction,
            amp=args.amp,
            compile=args.compile,
            mask_background=args.mask_background,
            strict=args.strict,
            progress=progress,
        )
        print(f"wrote {len(written)} volume(s): {written[0]}{' ...' if len(written) > 1 else ''}")
    elif args.verb == "export":
        from synthmed.workflows.export import export

        record = export(
            args.run,
            args.out,
            format=args.format,
            direction=args.direction,
            checkpoint=args.checkpoint,
            steps=args.steps,
            eta=args.eta,
            check_volume=args.check_volume,
            overwrite=args.overwrite,
            device=args.device,
        )
        for name, value in record["differences"].items():
            print(f"check {name}: max difference {value:.3g}")
        print(
            f"exported {record['model']} ({args.format}) to {args.out}: {', '.join(record['files'])}; "
            f"max difference to the model {record['max_difference']:.3g} (tolerance {record['tolerance']:g})"
        )
    elif args.verb == "generate":
        from synthmed.workflows.generate import generate

        info = generate(
            args.run,
            args.n,
            args.out,
            steps=args.steps,
            sampler=args.sampler,
            eta=args.eta,
            fmt=args.format,
            seed=args.seed,
            batch_size=args.batch_size,
            checkpoint=args.checkpoint,
            device=args.device,
            overwrite=args.overwrite,
            amp=args.amp,
            compile=args.compile,
            progress=progress,
        )
        what = "image + mask pairs" if info["masks"] else "images (this generator makes no masks)"
        print(f"generated {info['n']} {what} in {info['seconds']} s into {args.out} (contact_sheet.png)")
    elif args.verb == "import":
        from synthmed.workflows.import_weights import import_weights

        out = import_weights(
            args.kind,
            args.checkpoint,
            args.run_out,
            source=args.source,
            target=args.target,
            reverse=args.reverse,
            size=args.size,
            spacing=args.spacing,
            axis=args.axis,
            source_norm=args.source_norm,
            target_norm=args.target_norm,
            overwrite=args.overwrite,
        )
        print(f"wrote {out}: translate with `synthmed translate {out} INPUT OUTPUT`")
    elif args.verb == "anomaly":
        from synthmed.workflows.anomaly import anomaly

        written = anomaly(
            args.run,
            args.input,
            args.output,
            t_star=args.t_star,
            noise=args.noise,
            method=args.method,
            steps=args.steps,
            samples=args.samples,
            seed=args.seed,
            batch_size=args.batch_size,
            device=args.device,
            checkpoint=args.checkpoint,
            channel=args.channel,
            overwrite=args.overwrite,
            progress=progress,
        )
        print(f"wrote {len(written) // 2} anomaly map(s) and reconstruction(s): {written[0]}")
    elif args.verb == "benchmark":
        from synthmed.benchmarking.protocol import benchmark

        report = benchmark(
            args.out,
            suite=args.suite,
            models=args.models.split(",") if args.models else None,
            data=args.data,
            pattern=args.pattern,
            manifest=args.manifest,
            source=args.source,
            target=args.target,
            label=args.label,
            budget_steps=args.budget_steps,
            budget_minutes=args.budget_minutes,
            batch_size=args.batch_size,
            repeats=args.repeats,
            seed=args.seed,
            threads=args.threads,
            device=args.device,
            samples=args.samples,
            inception_weights=args.inception_weights,
            inception_variant=args.inception_variant,
            overwrite=args.overwrite,
            progress=progress,
        )
        tasks = (
            report["tasks"]
            if "tasks" in report
            else {
                "": {
                    "identity": report["identity"]["overall"]["mean"],
                    "methods": {m: e["summary"] for m, e in report["methods"].items()},
                    "ranking": report.get("ranking"),
                }
            }
        )
        for name, task in tasks.items():
            if name:
                print(f"{task['source']} -> {task['target']}")
            print(
                f"{'method':<22} {'PSNR':>7} {'SSIM':>7} {'train s':>8}\n{'identity':<22} "
                f"{task['identity']['psnr']:7.2f} {task['identity']['ssim']:7.3f}"
            )
            for method, summary in task["methods"].items():
                print(
                    f"{method:<22} {summary['overall_psnr']['mean']:7.2f} {summary['overall_ssim']['mean']:7.3f} "
                    f"{summary['train_seconds']['mean']:8.1f}"
                )
            claim = (task.get("ranking") or {}).get("claim")
            if claim and claim["holds_psnr"] is not None:
                print(
                    f"claim {' > '.join(claim['order'])}: {'holds' if claim['holds_psnr'] else 'does not hold'} by PSNR"
                )
        print(f"results: {Path(args.out) / 'benchmark.json'} ({report['seconds']} s)")
    elif args.verb == "report":
        from synthmed.benchmarking.report import report

        written = report(
            args.source, args.out, slices_per_subject=args.slices, convention=args.convention, overwrite=args.overwrite
        )
        print(f"wrote {written}")
    elif args.verb == "evaluate":
        from synthmed.metrics.paired import format_paired
        from synthmed.workflows.evaluate import evaluate, format_table

        result = evaluate(
            args.pred,
            args.ref,
            mask=args.mask,
            out=args.out,
            pred_name=args.pred_name,
            ref_name=args.ref_name,
            match=args.match_intensity,
            resample=args.resample,
            overwrite=args.overwrite,
            protocol=args.protocol,
            compare=args.compare,
        )
        comparison = result.get("compare")
        if comparison:
            first, second = comparison["names"]
            print(format_table({first: result, second: comparison["other_result"]}))
            print()
            print(format_paired(comparison, (first, second)))
        else:
            print(format_table({Path(args.pred).name: result}))
        if args.out:
            print(f"metrics: {', '.join(map(str, result['written']))}")
    elif args.verb == "reconstruct":
        from synthmed.workflows.reconstruct import Sampling, reconstruct

        result = reconstruct(
            args.method,
            args.input,
            args.output,
            sampling=Sampling(args.mask, args.accel, args.center, args.seed, args.phase),
            sampler=args.sampler,
            steps=args.steps,
            samples=args.samples,
            dc_weight=args.dc_weight,
            iterations=args.iterations,
            seed=args.seed,
            device=args.device,
            checkpoint=args.checkpoint,
            overwrite=args.overwrite,
            progress=progress,
        )
        scores = result.get("metrics")
        shown = f" PSNR {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.4f} vs fully sampled;" if scores else ""
        print(
            f"{result['method']}: {result['slices']} slice(s), {'; '.join(result['notes'])};{shown} wrote {', '.join(result['written'])}"
        )
    elif args.verb == "evaluate-anomaly":
        from synthmed.workflows.anomaly_evaluation import evaluate_anomaly, format_anomaly_table

        if args.input_name and args.input_file:
            raise SynthmedError("--input-name (folders) and --input (files): give one")
        result = evaluate_anomaly(
            args.maps,
            args.data,
            label_name=args.label_name,
            map_name=args.map_name,
            input_name=args.input_name,
            input_file=args.input_file,
            mask=args.mask,
            validation=[s.strip() for s in args.validation.split(",") if s.strip()] if args.validation else (),
            out=args.out,
            overwrite=args.overwrite,
        )
        print(format_anomaly_table(result))
        if args.out:
            print(f"scores: {', '.join(map(str, result['written']))}")
    elif args.verb == "degrade":
        from synthmed.data.degrade import degrade

        written = degrade(
            args.input,
            args.output,
            kind=args.kind,
            severity=args.severity,
            seed=args.seed,
            name=args.name,
            aliases=",".join(args.alias) if args.alias else None,
            axis=args.axis,
            overwrite=args.overwrite,
            progress=progress,
        )
        print(
            f"wrote {len(written)} degraded volume(s) ({args.kind}, severity {args.severity:g}): "
            f"{written[0]}{' ...' if len(written) > 1 else ''}"
        )
    elif args.verb == "models":
        from synthmed.models.registry import available_models

        listing = {
            name: {
                "paper": cls.paper,
                "paired": cls.paired,
                "task": cls.task,
                "presets": cls.PRESETS,
                "defaults": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(cls.Config()).items()},
            }
            for name, cls in available_models().items()
        }
        if args.json:
            print(json.dumps(listing, indent=2))
        else:
            for name, entry in listing.items():
                kind = "paired" if entry["paired"] else "unpaired"
                print(
                    f"{name:<12} {entry['task']:<10} {kind:<9} presets: {', '.join(entry['presets'])}\n  {entry['paper']}"
                )
                print("  defaults: " + ", ".join(f"{k}={v}" for k, v in entry["defaults"].items()))
    return 0


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if getattr(args, "verbose", False) else logging.INFO
    if int(os.environ.get("RANK", "0")) > 0:  # torchrun: the other processes report warnings and errors only
        level = max(level, logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s")
    # SIGTERM unwinds like Ctrl-C (clean-up runs) and exits 143; training installs its own handler meanwhile.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        return run_command(args)
    except SynthmedError as error:
        print(f"synthmed: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("synthmed: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except Terminated as stop:
        print("synthmed: terminated (SIGTERM)", file=sys.stderr)
        return stop.exit_code
    except OSError as error:  # permission denied, a path under /proc, a disk that fills up, ...
        where = f" {error.filename}:" if error.filename else ""
        print(
            f"synthmed: error:{where} {error.strerror or error} (while running {args.verb}; check free space "
            "and permissions)",
            file=sys.stderr,
        )
        return 2
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    raise SystemExit(main())
