"""The benchmark suites, declared: which data, which translation tasks, which methods, what budget.

A suite is data, not code: the driver (:mod:`synthmed.benchmarking.protocol`) runs any of them the same way, so a
new comparison is a new entry here, not a new script. ``synthmed benchmark --suite NAME`` runs one; ``--models``,
``--budget-steps``, ``--batch-size``, ``--source``/``--target`` override its choices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from synthmed.errors import SynthmedError


@dataclass(frozen=True)
class Method:
    """A registered model at one preset. Its label names its runs and rows (``medgan-single-ublock``); at the
    suite's default preset the label is the model's name alone."""

    model: str
    preset: str = "small"
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.model if self.preset == "small" else f"{self.model}-{self.preset}")

    @classmethod
    def parse(cls, text: str, default_preset: str = "small") -> "Method":
        """``MODEL`` or ``MODEL:PRESET`` (the ``--models`` syntax)."""
        model, _, preset = text.strip().partition(":")
        if not model:
            raise SynthmedError(f"--models: empty entry in {text!r}; write MODEL or MODEL:PRESET, comma-separated")
        return cls(model, preset or default_preset)


@dataclass(frozen=True)
class Task:
    """One translation, ``source -> target``.

    ``degrade`` makes a restoration task instead: the ``source`` scans are degraded (``synthmed degrade --kind
    KIND``) and the methods learn degraded -> clean; the identity baseline is then also scored without intensity
    matching (the degraded scan is already in the clean scan's units). ``reverse`` also scores the methods that
    were trained both ways (``directions`` of the model has B2A) on target -> source, with the same runs.
    """

    source: str
    target: str
    degrade: str | None = None
    reverse: bool = False

    @property
    def name(self) -> str:
        if self.degrade:
            return f"{self.source.lower()}-{self.degrade}-to-{self.target.lower()}"
        return f"{self.source.lower()}-to-{self.target.lower()}"

    @property
    def reverse_name(self) -> str:
        return f"{self.target.lower()}-to-{self.source.lower()}-reversed"


@dataclass(frozen=True)
class Suite:
    """A benchmark: data (``phantoms`` of ``subjects`` heads of ``size``^3 drawn with ``phantom_seed``, or the
    ``real`` scans named in :mod:`synthmed.data.recipes.shared_real`), the tasks, the methods (None: every
    translator), the training budget, the split (ratios, or ``manifest``: the real suite's fixed split), and an
    ordering a paper claims (best first; the results say whether it held)."""

    name: str
    description: str
    tasks: tuple[Task, ...]
    subjects: int
    size: int
    steps: int
    batch_size: int
    methods: tuple[Method, ...] | None = None
    data: str = "phantoms"
    phantom_seed: int | None = None  # None: the benchmark's --seed
    split: str = "0.5,0.17,0.33"
    claim: tuple[str, ...] | None = None
    claim_source: str = ""
    notes: tuple[str, ...] = field(default=())


SUITES: dict[str, Suite] = {
    suite.name: suite
    for suite in (
        Suite(
            "quick",
            "every translator on 6 phantoms of 32^3 for 200 steps: a smoke test of the whole protocol, "
            "minutes on a CPU, not a ranking",
            tasks=(Task("T1", "T2"),),
            subjects=6,
            size=32,
            steps=200,
            batch_size=8,
        ),
        Suite(
            "full",
            "every translator on 10 phantoms of 64^3 for 3000 steps: hours on a CPU, for a GPU",
            tasks=(Task("T1", "T2"),),
            subjects=10,
            size=64,
            steps=3000,
            batch_size=8,
            split="0.6,0.2,0.2",
        ),
        Suite(
            "real",
            "every translator on the real BraTS-layout and MS brains (--data = ../shared/data/real), 64 px, "
            "1000 steps, four tasks",
            tasks=(Task("t1", "t2"), Task("t2", "t1"), Task("t1", "t1c"), Task("t2", "flair")),
            subjects=4,
            size=64,
            steps=1000,
            batch_size=8,
            data="real",
            split="manifest",
        ),
        Suite(
            "paired",
            "MedGAN (CasNet of 3 U-blocks) vs its single U-block ablation vs pix2pix at an equal budget, "
            "T1 -> T2 and motion-artefact correction, 8 phantoms of 64^3",
            tasks=(Task("T1", "T2"), Task("T1", "T1", degrade="motion")),
            methods=(Method("medgan"), Method("medgan", "single-ublock"), Method("pix2pix")),
            subjects=8,
            size=64,
            steps=500,
            batch_size=8,
            phantom_seed=7,
            split="0.7,0.1,0.2",
            claim=("medgan", "medgan-single-ublock", "pix2pix"),
            claim_source="MedGAN (Armanious et al. 2020): CasNet + perceptual/style losses > one U-block > pix2pix",
            notes=(
                "The benchmark gives medgan no VGG-19 weights: its style and content losses are off (adversarial + "
                "perceptual only), as the run's config records.",
            ),
        ),
        Suite(
            "unpaired",
            "SynDiff vs CycleGAN trained unpaired at an equal budget, scored against the true paired "
            "scan in both directions (T1 -> T2 and T2 -> T1 with the same runs), 8 phantoms of 64^3",
            tasks=(Task("T1", "T2", reverse=True),),
            methods=(Method("syndiff"), Method("cyclegan")),
            subjects=8,
            size=64,
            steps=1500,
            batch_size=4,
            phantom_seed=7,
            split="0.7,0.1,0.2",
            claim=("syndiff", "cyclegan"),
            claim_source="SynDiff (Özbey et al. 2023): SynDiff > CycleGAN",
        ),
        Suite(
            "unpaired-lesion",
            "GMM-UNIT vs UNIT vs CycleGAN, T1 -> T1c, scored in the head and inside the "
            "enhancing lesions, 8 phantoms of 64^3",
            tasks=(Task("T1", "T1c"),),
            methods=(Method("gmm-unit"), Method("unit"), Method("cyclegan")),
            subjects=8,
            size=64,
            steps=1500,
            batch_size=2,
            phantom_seed=7,
            split="0.7,0.1,0.2",
            claim=("gmm-unit", "unit", "cyclegan"),
            claim_source="patch-based shared-latent GMM translation: the GMM prior > UNIT's single Gaussian > CycleGAN",
        ),
    )
}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise SynthmedError(f"--suite {name}: use one of {', '.join(SUITES)}")
    return SUITES[name]
