"""Map a folder of files to subjects and modalities (no image is read, so this is fast).

Three layouts, see :func:`discover`:

1. **one folder per subject** (default): ``DATA/<subject>/<modality>.nii.gz``; a file name
   prefixed with ``<subject>-`` or ``<subject>_`` is fine
   (``BraTS-GLI-00001-000/BraTS-GLI-00001-000-t1n.nii.gz`` -> ``t1``), and a sub-folder that
   is a DICOM series is one modality named after the sub-folder;
2. **a pattern** with ``{subject}``, ``{modality}`` and glob wildcards, matched against the
   paths below DATA: ``'{subject}_{modality}_bet.nii.gz'``, ``'{subject}/{modality}_N4_*.nii.gz'``;
3. **a manifest** (CSV/TSV with a header row, or JSON) with columns ``subject, modality, path``
   and optional ``split, mask, label, key, channel``; ``path`` may be a glob of 2D slices.

Modality names are canonical lower-case strings (``t1n``, ``T1w`` -> ``t1``, see
:data:`DEFAULT_ALIASES`); users add their own aliases (``t2f=flair``).
"""

from __future__ import annotations

import csv
import glob as globlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from synthmed.data.formats import VOLUME_SUFFIXES
from synthmed.data.formats.dicom import has_dicom_magic
from synthmed.data.recipes.lgg import is_lgg_layout, lgg_manifest
from synthmed.errors import SynthmedError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ALIASES",
    "IMAGE_SUFFIXES",
    "FileRef",
    "Subject",
    "canonical_modality",
    "discover",
    "image_suffix",
    "parse_aliases",
    "patient_key",
    "require_modalities",
    "write_manifest",
]


@dataclass(frozen=True)
class FileRef:
    """One image: a file, a DICOM series folder, or a glob pattern for a stack of 2D slices."""

    path: str
    key: str | None = None  # variable name inside a .mat file
    channel: int | None = None  # channel of an RGB image / index along the 4th axis


@dataclass
class Subject:
    id: str
    files: dict[str, FileRef] = field(default_factory=dict)  # canonical modality -> file
    split: str | None = None  # train / val / test, from a manifest 'split' column
    mask: FileRef | None = None  # manifest 'mask' column
    label: FileRef | None = None  # manifest 'label' column


# Longest first, so that '.nii.gz' wins over '.gz'-like endings.
IMAGE_SUFFIXES: tuple[str, ...] = VOLUME_SUFFIXES  # longest first, as suffix matching needs

DEFAULT_ALIASES: dict[str, str] = {
    # T1 (native, pre-contrast)
    "t1n": "t1",
    "t1w": "t1",
    "t1native": "t1",
    "t1_native": "t1",
    "t1-native": "t1",
    "t1pre": "t1",
    "t1_pre": "t1",
    "t1-pre": "t1",
    # T1 post-contrast
    "t1ce": "t1c",
    "t1_ce": "t1c",
    "t1-ce": "t1c",
    "t1wce": "t1c",
    "t1w_ce": "t1c",
    "cet1": "t1c",
    "ce-t1": "t1c",
    "t1gd": "t1c",
    "t1_gd": "t1c",
    "t1-gd": "t1c",
    "t1post": "t1c",
    "t1_post": "t1c",
    "t1-post": "t1c",
    "t1contrast": "t1c",
    "t1_contrast": "t1c",
    "t1+c": "t1c",
    "t1+gd": "t1c",
    # T2
    "t2w": "t2",
    # FLAIR
    "t2f": "flair",
    "fla": "flair",
    "t2flair": "flair",
    "t2_flair": "flair",
    "t2-flair": "flair",
    "flairw": "flair",
    # proton density
    "pdw": "pd",
    "pd_w": "pd",
    "pd-w": "pd",
    # labels
    "segmentation": "seg",
}

_SPLITS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
_MANIFEST_REQUIRED = ("subject", "modality", "path")
_MANIFEST_COLUMNS = ("subject", "modality", "path", "split", "mask", "label", "key", "channel")
_SLICE_STACK_MIN = 8  # this many numbered files in one subject folder look like 2D slices


# ----------------------------------------------------------------------------- names


def parse_aliases(spec: str | list[str] | tuple[str, ...] | dict | None) -> dict[str, str]:
    """``"t2f=flair,t1n=t1"``, ``["t2f=flair", "t1n=t1"]`` or a dict -> ``{'t2f': 'flair', 't1n': 't1'}``.

    Keys and values are lower-cased and stripped.
    """
    if spec is None:
        return {}
    if isinstance(spec, dict):
        items = list(spec.items())
    else:
        parts = [spec] if isinstance(spec, str) else list(spec)
        items = []
        for part in parts:
            for item in str(part).split(","):
                if not item.strip():
                    continue
                name, sep, value = item.partition("=")
                if not sep:
                    raise SynthmedError(
                        f"alias {item.strip()!r} has no '='; write NAME=MODALITY, e.g. --alias t2f=flair"
                    )
                items.append((name, value))
    aliases: dict[str, str] = {}
    for name, value in items:
        name, value = str(name).strip().lower(), str(value).strip().lower()
        if not name or not value:
            raise SynthmedError(f"alias {name!r}={value!r} is incomplete; write NAME=MODALITY, e.g. --alias t2f=flair")
        aliases[name] = value
    return aliases


def canonical_modality(name: str, aliases: dict[str, str] | None = None) -> str:
    """Canonical lower-case modality name: lower-case, then the user's aliases, then :data:`DEFAULT_ALIASES`.

    A user alias overrides the default one for the same name. Its value is itself passed
    through the defaults (``seq1=T1w`` gives ``t1``) unless it maps a name to itself
    (``t1n=t1n`` keeps ``t1n`` apart from ``t1``).
    """
    lowered = str(name).strip().lower()
    if aliases:
        user = parse_aliases(aliases)
        if lowered in user:
            value = user[lowered].strip().lower()
            return value if value == lowered else DEFAULT_ALIASES.get(value, value)
    return DEFAULT_ALIASES.get(lowered, lowered)


def image_suffix(name: str) -> str | None:
    """The image suffix of a file name (lower-case, e.g. ``'.nii.gz'``), or None when not an image."""
    lowered = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lowered.endswith(suffix) and len(lowered) > len(suffix):
            return suffix
    return None


def _strip_suffix(name: str) -> str:
    suffix = image_suffix(name)
    return name[: -len(suffix)] if suffix else name


def patient_key(subject_id: str) -> str:
    """Group key for splitting: TCGA ids become ``'TCGA-<site>-<patient>'`` (e.g. 'TCGA-DU-7294'); other ids are returned unchanged.

    ``'TCGA_DU_7294_19890104'`` (LGG slices) and ``'TCGA-DU-7294'`` (BraTS layout) are the
    same patient, so both give ``'TCGA-DU-7294'``.
    """
    match = re.search(r"(?:^|[-_.])TCGA[-_]([A-Za-z0-9]+)[-_]([A-Za-z0-9]+)(?=$|[-_.])", str(subject_id), re.IGNORECASE)
    if not match:
        return subject_id
    return f"TCGA-{match.group(1).upper()}-{match.group(2).upper()}"


def require_modalities(subjects, modalities: list[str]) -> None:
    """Raise a :class:`SynthmedError` naming the first subject that lacks one of ``modalities``."""
    subjects = list(subjects)
    for wanted in modalities:
        if not wanted:
            continue
        canon = canonical_modality(wanted)
        lacking = [s for s in subjects if canon not in s.files]
        if lacking:
            first = lacking[0]
            found = ", ".join(sorted(first.files)) or "nothing"
            shown = wanted if canon == str(wanted).strip().lower() else f"{wanted} ({canon})"
            raise SynthmedError(
                f"subject {first.id} has no {shown} (found: {found}); {len(lacking)} of {len(subjects)} subject(s) "
                f"lack it: check the file names, or map yours with --alias NAME={canon}"
            )


# ----------------------------------------------------------------------------- discover


def discover(
    data: str | Path | None = None,
    *,
    pattern: str | None = None,
    manifest: str | Path | list[dict] | None = None,
    aliases=None,
) -> list[Subject]:
    """Subjects (sorted by id) found in ``data``, by folder layout, ``pattern`` or ``manifest``.

    - no pattern/manifest: one folder per subject under ``data``;
    - ``pattern``: ``{subject}``, ``{modality}``, ``*``, ``?``, ``[...]`` and ``**/``, matched against each
      image's path relative to ``data`` (against the file name alone, at any depth, when the
      pattern has no ``/``); a repeated ``{subject}`` must take the same value; when several
      readings are possible, a ``{subject}`` equal to the name of one of the file's folders
      (or of ``data`` itself) wins, then the shortest modality; a placeholder next to a
      wildcard ends at a non-alphanumeric character (``{modality}*`` reads ``T1POST_N4_x`` as
      ``T1POST``);
    - ``manifest``: a CSV/TSV/JSON file (or a list of row dicts); relative paths are relative to
      ``data`` if given, else to the manifest's folder.
    """
    user_aliases = parse_aliases(aliases)
    if pattern and manifest is not None:
        raise SynthmedError("give either --pattern or --manifest, not both")
    if manifest is not None:
        root = _existing_dir(data) if data is not None else None
        return _discover_manifest(manifest, root, user_aliases)
    if pattern:
        if data is None and os.path.isabs(os.path.expanduser(pattern)):
            data, pattern = _split_absolute_pattern(os.path.expanduser(pattern))
        if data is None:
            raise SynthmedError(
                f"--pattern {pattern!r} needs a data folder: give DATA (the folder the pattern is relative to)"
            )
        return _discover_pattern(_existing_dir(data), pattern, user_aliases)
    if data is None:
        raise SynthmedError("no data given: pass a data folder (one sub-folder per subject), or --manifest FILE")
    root = _existing_dir(data)
    if is_lgg_layout(root):
        log.info(
            "%s: the Kaggle LGG layout (RGB slices: t1 = channel 0, flair = 1, t1c = 2; *_mask.tif -> lesion)", root
        )
        return _discover_manifest(lgg_manifest(root), root, user_aliases)
    return _discover_folders(root, user_aliases)


def _existing_dir(data: str | Path) -> Path:
    path = Path(os.path.expanduser(str(data)))
    if not path.exists():
        raise SynthmedError(f"{data}: data folder not found; check the path")
    if not path.is_dir():
        raise SynthmedError(
            f"{data}: not a folder; pass the folder that holds the subjects (or a file with --manifest)"
        )
    return Path(os.path.abspath(path))


def _visible(entries):
    return [e for e in entries if not e.name.startswith(".")]


def _scandir(path: Path):
    try:
        with os.scandir(path) as it:
            return sorted(_visible(it), key=lambda e: e.name)
    except OSError as error:
        raise SynthmedError(f"{path}: cannot list this folder ({error.strerror}); check its permissions") from None


def _is_dicom_series(path: Path | str) -> bool:
    """True when the folder holds ``.dcm`` files, or extension-less files with 'DICM' at byte 128."""
    candidates = []
    try:
        with os.scandir(path) as it:
            for entry in it:
                if entry.name.startswith(".") or not entry.is_file():
                    continue
                lowered = entry.name.lower()
                if lowered.endswith(".dcm") or lowered.endswith(".dicom"):
                    return True
                if image_suffix(entry.name) is None and len(candidates) < 3:
                    candidates.append(entry.path)
    except OSError:
        return False
    return any(has_dicom_magic(p) for p in candidates)


def _add(
    files: dict[str, FileRef], origin: dict[str, str], subject: str, modality: str, ref: FileRef, where: str
) -> None:
    if modality in files:
        raise SynthmedError(
            f"subject {subject} has two {modality} files: {origin[modality]} and {where}; "
            f"remove or rename one (or map it elsewhere with --alias NAME=OTHER)"
        )
    files[modality] = ref
    origin[modality] = where


def strip_subject_prefix(stem: str, subject: str) -> str:
    """'sub-01_T1' -> 'T1' inside the folder of subject 'sub-01' (separators -, _ or .)."""
    for sep in ("-", "_", "."):
        prefix = subject + sep
        if stem.lower().startswith(prefix.lower()) and len(stem) > len(prefix):
            return stem[len(prefix) :]
    return stem


def file_modality(path: str | Path, subject: str, aliases: dict[str, str] | None = None) -> str | None:
    """Canonical modality of an image file inside a subject folder (None if not an image):
    the file name without its suffix and without a leading ``<subject>-``/``_`` prefix."""
    name = Path(path).name
    if image_suffix(name) is None:
        return None
    return canonical_modality(strip_subject_prefix(_strip_suffix(name), subject), aliases)


def _discover_folders(root: Path, aliases: dict[str, str]) -> list[Subject]:
    subjects: list[Subject] = []
    loose_images: list[str] = []
    dicom_subjects: list[str] = []
    for entry in _scandir(root):
        if entry.is_file():
            if image_suffix(entry.name):
                loose_images.append(entry.name)
            continue
        if not entry.is_dir():
            continue
        sid = entry.name
        files: dict[str, FileRef] = {}
        origin: dict[str, str] = {}
        numbered: list[str] = []
        for item in _scandir(Path(entry.path)):
            if item.is_file() and image_suffix(item.name):
                stem = strip_subject_prefix(_strip_suffix(item.name), sid)
                if re.fullmatch(r"\d+([-_.].*)?", stem):
                    numbered.append(item.name)
                modality = canonical_modality(stem, aliases)
                _add(files, origin, sid, modality, FileRef(os.path.abspath(item.path)), item.path)
            elif item.is_dir() and _is_dicom_series(item.path):
                modality = canonical_modality(strip_subject_prefix(item.name, sid), aliases)
                _add(files, origin, sid, modality, FileRef(os.path.abspath(item.path)), item.path)
        if len(numbered) >= _SLICE_STACK_MIN:
            example = f"{sid}/{numbered[0]}"
            glob_example = f"{sid}/{sid}_*[0-9]{Path(numbered[0]).suffix}"
            raise SynthmedError(
                f"{root / sid}: {len(numbered)} numbered files (e.g. {example}) look like a stack of 2D slices; "
                f"describe them in a --manifest whose path is a glob such as '{glob_example}'"
            )
        if files:
            subjects.append(Subject(id=sid, files=dict(sorted(files.items()))))
        elif _is_dicom_series(entry.path):
            dicom_subjects.append(sid)
    if not subjects:
        if dicom_subjects:
            raise SynthmedError(
                f"{root}: {dicom_subjects[0]} is itself a DICOM series; DATA must hold one folder per subject "
                f"with one sub-folder per series (DATA/<subject>/<modality>/*.dcm)"
            )
        if loose_images:
            shown = ", ".join(loose_images[:3])
            suffix = image_suffix(loose_images[0])
            raise SynthmedError(
                f"{root} holds image files ({shown}) but no subject folders; put each subject in its own folder, "
                f"use --pattern (e.g. '{{subject}}_{{modality}}{suffix}') or a --manifest"
            )
        raise SynthmedError(
            f"{root}: no subject folders with image files ({', '.join(IMAGE_SUFFIXES)}) found; "
            f"expected DATA/<subject>/<modality>.nii.gz, or use --pattern / --manifest"
        )
    return sorted(subjects, key=lambda s: s.id)


# ----------------------------------------------------------------------------- pattern

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def _tokenize(pattern: str) -> list[tuple[str, str]]:
    """Pattern -> tokens ('lit', text) ('subject', '') ('modality', '') ('star', '') ('dstar', '') ('q', '') ('class', re)."""
    tokens: list[tuple[str, str]] = []
    i, n = 0, len(pattern)
    literal = []

    def flush():
        if literal:
            tokens.append(("lit", "".join(literal)))
            literal.clear()

    while i < n:
        ch = pattern[i]
        if ch == "{":
            if pattern.startswith("{{", i):
                literal.append("{")
                i += 2
                continue
            match = _PLACEHOLDER.match(pattern, i)
            if not match:
                raise SynthmedError(f"--pattern {pattern!r}: unmatched '{{'; use {{subject}} and {{modality}}")
            name = match.group(1).strip().lower()
            if name not in ("subject", "modality"):
                raise SynthmedError(
                    f"--pattern {pattern!r}: unknown placeholder {{{match.group(1)}}}; only {{subject}} and {{modality}} "
                    f"exist (use * for any other part)"
                )
            flush()
            tokens.append((name, ""))
            i = match.end()
        elif ch == "}" and pattern.startswith("}}", i):
            literal.append("}")
            i += 2
        elif ch == "*":
            flush()
            if pattern.startswith("**/", i):
                tokens.append(("dstar", "/"))
                i += 3
            elif pattern.startswith("**", i):
                tokens.append(("dstar", ""))
                i += 2
            else:
                tokens.append(("star", ""))
                i += 1
        elif ch == "?":
            flush()
            tokens.append(("q", ""))
            i += 1
        elif ch == "[":
            end = pattern.find("]", i + 2 if pattern.startswith("[!", i) or pattern.startswith("[^", i) else i + 1)
            body = pattern[i + 1 : end] if end > 0 else ""
            if end < 0 or not body or "/" in body:
                literal.append(ch)
                i += 1
                continue
            flush()
            if body[0] in "!^":
                body = "^" + body[1:].replace("\\", "\\\\")
            else:
                body = body.replace("\\", "\\\\")
            tokens.append(("class", f"[{body}]"))
            i = end + 1
        else:
            literal.append(ch)
            i += 1
    flush()
    return tokens


_WILD = ("star", "dstar", "q", "class")


def _pattern_regex(tokens: list[tuple[str, str]], subject: str | None = None) -> re.Pattern:
    """Compile tokens; ``subject`` fixes the {subject} value. {modality} is as short as possible,
    an unfixed {subject} as long as possible (modality names are short suffix tokens), and a
    placeholder next to a wildcard must end (start) at a non-alphanumeric character."""
    parts = []
    seen = set()
    for index, (kind, text) in enumerate(tokens):
        if kind == "lit":
            parts.append(re.escape(text))
        elif kind == "star":
            parts.append("[^/]*")
        elif kind == "dstar":
            parts.append("(?:[^/]+/)*" if text == "/" else ".*")
        elif kind == "q":
            parts.append("[^/]")
        elif kind == "class":
            parts.append(text)
        else:
            if kind in seen:
                parts.append(f"(?P={kind})")
                continue
            seen.add(kind)
            before = tokens[index - 1][0] if index else None
            after = tokens[index + 1][0] if index + 1 < len(tokens) else None
            lead = "(?<![A-Za-z0-9])" if before in _WILD else ""
            trail = "(?![A-Za-z0-9])" if after in _WILD else ""
            if kind == "subject" and subject is not None:
                body = re.escape(subject)
            elif kind == "subject":
                body = "[^/]+"
            else:
                body = "[^/]+?"
            parts.append(f"{lead}(?P<{kind}>{body}){trail}")
    return re.compile("".join(parts) + r"\Z", re.DOTALL)


def _split_absolute_pattern(pattern: str) -> tuple[str, str]:
    parts = pattern.split("/")
    literal = []
    for part in parts[:-1]:
        if any(c in part for c in "{*?["):
            break
        literal.append(part)
    root = "/".join(literal) or "/"
    rest = "/".join(parts[len(literal) :])
    return root, rest


def _walk(root: Path, max_depth: int | None):
    """Yield (relative posix path, absolute path, is_dir) for visible entries below root."""
    seen = set()
    stack = [(str(root), "", 0)]
    while stack:
        folder, rel, depth = stack.pop()
        try:
            real = os.path.realpath(folder)
            if real in seen:
                continue
            seen.add(real)
            with os.scandir(folder) as it:
                entries = _visible(it)
        except OSError:
            continue
        for entry in entries:
            relpath = f"{rel}{entry.name}"
            try:
                is_dir = entry.is_dir()
            except OSError:
                continue
            yield relpath, entry.path, is_dir
            if is_dir and (max_depth is None or depth + 1 < max_depth):
                stack.append((entry.path, relpath + "/", depth + 1))


def _discover_pattern(root: Path, pattern: str, aliases: dict[str, str]) -> list[Subject]:
    pattern = pattern.strip()
    while pattern.startswith("./"):
        pattern = pattern[2:]
    tokens = _tokenize(pattern)
    kinds = {k for k, _ in tokens}
    for needed in ("subject", "modality"):
        if needed not in kinds:
            raise SynthmedError(
                f"--pattern {pattern!r} has no {{{needed}}}; write e.g. '{{subject}}_{{modality}}.nii.gz' "
                f"or '{{subject}}/{{modality}}.nii.gz'"
            )
    whole_path = "/" in pattern
    generic = _pattern_regex(tokens)
    max_depth = None if ("dstar" in kinds or not whole_path) else pattern.count("/") + 1
    fixed_cache: dict[str, re.Pattern] = {}

    def parse(target: str, relpath: str) -> tuple[str, str] | None:
        # Prefer a {subject} that equals one of the file's folders (nearest first, DATA itself last).
        for folder in [*reversed(relpath.split("/")[:-1]), root.name]:
            regex = fixed_cache.get(folder)
            if regex is None:
                regex = fixed_cache[folder] = _pattern_regex(tokens, subject=folder)
            match = regex.match(target)
            if match:
                return match.group("subject"), match.group("modality")
        match = generic.match(target)
        return (match.group("subject"), match.group("modality")) if match else None

    found: dict[str, tuple[dict[str, FileRef], dict[str, str]]] = {}
    near_misses: list[str] = []
    examples: list[str] = []
    for relpath, abspath, is_dir in _walk(root, max_depth):
        if not is_dir and image_suffix(relpath) and len(examples) < 3:
            examples.append(relpath)
        target = relpath if whole_path else relpath.rsplit("/", 1)[-1]
        result = parse(target, relpath)
        if result is None:
            continue
        subject, modality = result
        if is_dir:
            if not _is_dicom_series(abspath):
                continue
        elif not image_suffix(relpath):
            if len(near_misses) < 3:
                near_misses.append(relpath)
            continue
        files, origin = found.setdefault(subject, ({}, {}))
        _add(files, origin, subject, canonical_modality(modality, aliases), FileRef(os.path.abspath(abspath)), abspath)
    if not found:
        if near_misses:
            raise SynthmedError(
                f"--pattern {pattern!r} under {root} matched only non-image files ({', '.join(near_misses)}); "
                f"readable suffixes are {', '.join(IMAGE_SUFFIXES)} or a DICOM series folder"
            )
        hint = f" (images there: {', '.join(examples)})" if examples else " (no image files there)"
        where = "file names" if not whole_path else "paths relative to the data folder"
        raise SynthmedError(f"--pattern {pattern!r} matched no {where} under {root}{hint}; adjust the pattern")
    subjects = [Subject(id=sid, files=dict(sorted(files.items()))) for sid, (files, _) in found.items()]
    return sorted(subjects, key=lambda s: s.id)


# ----------------------------------------------------------------------------- manifest


def _read_manifest(manifest: str | Path) -> tuple[list[tuple[str, dict]], Path]:
    path = Path(os.path.expanduser(str(manifest)))
    if not path.is_file():
        raise SynthmedError(f"{manifest}: manifest not found; check the path")
    suffix = path.suffix.lower()
    rows: list[tuple[str, dict]] = []
    if suffix in (".csv", ".tsv", ".txt"):
        try:
            with open(path, newline="", encoding="utf-8-sig") as handle:
                header = handle.readline()
                handle.seek(0)
                tabbed = "\t" in header and "," not in header
                delimiter = "\t" if suffix == ".tsv" or tabbed else ","
                reader = csv.DictReader(handle, delimiter=delimiter)
                if not reader.fieldnames:
                    raise SynthmedError(
                        f"{path}: empty manifest; add a header row 'subject,modality,path' and one row per file"
                    )
                for row in reader:
                    if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                        continue
                    clean = {
                        str(k).strip().lower(): (v.strip() if isinstance(v, str) else v)
                        for k, v in row.items()
                        if k is not None
                    }
                    rows.append((f"line {reader.line_num}", clean))
        except UnicodeDecodeError:
            raise SynthmedError(f"{path}: not a UTF-8 text file; save the manifest as CSV (UTF-8)") from None
        except csv.Error as error:
            raise SynthmedError(f"{path}: not a valid CSV file ({error}); fix the manifest") from None
    elif suffix == ".json":
        try:
            content = json.loads(path.read_text(encoding="utf-8-sig"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise SynthmedError(f"{path}: not valid JSON ({error}); fix the manifest") from None
        rows = _json_rows(content, path)
    else:
        raise SynthmedError(f"{path}: unknown manifest type {suffix or '(no suffix)'}; use a .csv, .tsv or .json file")
    return rows, Path(os.path.abspath(path.parent))


def _json_rows(content, where) -> list[tuple[str, dict]]:
    if isinstance(content, dict) and "subjects" in content:
        content = content["subjects"]
    if not isinstance(content, list):
        raise SynthmedError(
            f'{where}: a JSON manifest must be a list of rows (or {{"subjects": [...]}}); fix the manifest'
        )
    rows: list[tuple[str, dict]] = []
    for number, entry in enumerate(content, 1):
        label = f"entry {number}"
        if not isinstance(entry, dict):
            raise SynthmedError(f"{where}: {label} is not an object; each row needs subject, modality, path")
        entry = {str(k).strip().lower(): v for k, v in entry.items()}
        if isinstance(entry.get("files"), dict) and "modality" not in entry:
            # {"subject": "s1", "split": "train", "files": {"t1": "s1/t1.nii.gz", "t2": {"path": ..., "key": ...}}}
            common = {k: v for k, v in entry.items() if k != "files"}
            for modality, spec in entry["files"].items():
                row = dict(common, modality=modality)
                if isinstance(spec, dict):
                    row.update({str(k).strip().lower(): v for k, v in spec.items()})
                else:
                    row["path"] = spec
                rows.append((f"{label} ({modality})", row))
        else:
            rows.append((label, entry))
    return rows


def _text(value) -> str:
    if value is None:
        return ""
    return str(value).strip()


def _resolve(value: str, base: Path, where: str, column: str) -> str:
    raw = os.path.expanduser(value)
    path = raw if os.path.isabs(raw) else os.path.join(base, raw)
    path = os.path.abspath(path)
    if os.path.exists(path):
        return path
    if globlib.has_magic(raw):
        if not globlib.glob(path):
            raise SynthmedError(f"{where}: {column} glob {value!r} matches no file under {base}; check the pattern")
        return path
    raise SynthmedError(f"{where}: {column} file {value!r} not found (looked for {path}); fix the path in the manifest")


def _discover_manifest(manifest, root: Path | None, aliases: dict[str, str]) -> list[Subject]:
    if isinstance(manifest, (list, tuple)):
        rows = _json_rows(list(manifest), "manifest")
        name = "manifest"
        base = root or Path.cwd()
    else:
        rows, folder = _read_manifest(manifest)
        name = str(manifest)
        base = root or folder
    if not rows:
        raise SynthmedError(f"{name}: no rows; add one row per file with subject, modality, path")
    subjects: dict[str, Subject] = {}
    origin: dict[str, dict[str, str]] = {}
    first_row: dict[str, str] = {}
    for label, row in rows:
        where = f"{name} {label}"
        missing = [c for c in _MANIFEST_REQUIRED if not _text(row.get(c))]
        if missing:
            absent = [c for c in missing if c not in row]
            what = f"has no column {', '.join(absent)}" if absent else f"has an empty {', '.join(missing)}"
            raise SynthmedError(f"{where} {what}; every row needs subject, modality, path")
        sid = _text(row["subject"])
        modality = canonical_modality(_text(row["modality"]), aliases)
        key = _text(row.get("key")) or None
        channel_text = _text(row.get("channel"))
        channel = None
        if channel_text:
            try:
                channel = int(float(channel_text))
                if channel != float(channel_text) or channel < 0:
                    raise ValueError
            except ValueError:
                raise SynthmedError(
                    f"{where}: channel {channel_text!r} is not a whole number >= 0; fix the manifest"
                ) from None
        split_text = _text(row.get("split")).lower()
        split = None
        if split_text:
            split = _SPLITS.get(split_text)
            if split is None:
                raise SynthmedError(f"{where}: split {split_text!r} is not train, val or test; fix the manifest")
        ref = FileRef(_resolve(_text(row["path"]), base, where, "path"), key=key, channel=channel)
        mask = _text(row.get("mask"))
        label_path = _text(row.get("label"))
        mask_ref = FileRef(_resolve(mask, base, where, "mask")) if mask else None
        label_ref = FileRef(_resolve(label_path, base, where, "label")) if label_path else None

        subject = subjects.get(sid)
        if subject is None:
            subject = subjects[sid] = Subject(id=sid, files={})
            origin[sid] = {}
            first_row[sid] = where
        if modality in subject.files:
            raise SynthmedError(
                f"{where}: subject {sid} already has {modality} at {origin[sid][modality]}; "
                f"remove one of the two rows (or give them different modalities)"
            )
        subject.files[modality] = ref
        origin[sid][modality] = label
        for attr, value, column in (
            ("split", split, "split"),
            ("mask", mask_ref, "mask"),
            ("label", label_ref, "label"),
        ):
            if value is None:
                continue
            current = getattr(subject, attr)
            if current is not None and current != value:
                shown = current if isinstance(current, str) else current.path
                raise SynthmedError(
                    f"{where}: subject {sid} has {column} {value if isinstance(value, str) else value.path!r} here but "
                    f"{shown!r} in an earlier row; give each subject one {column}"
                )
            setattr(subject, attr, value)
    return sorted(subjects.values(), key=lambda s: s.id)


def write_manifest(rows: list[dict], path: str | Path) -> Path:
    """Write manifest rows as CSV (``.csv``/``.tsv``) or JSON (``.json``, a list of objects); returns the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv", ".json"):
        raise SynthmedError(f"{path}: unknown manifest type {suffix or '(no suffix)'}; use .csv, .tsv or .json")
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [dict(r) for r in rows]
    if suffix == ".json":
        path.write_text(json.dumps(rows, indent=2) + "\n")
        return path
    present = {k for row in rows for k in row}
    columns = [c for c in _MANIFEST_COLUMNS if c in present or c in _MANIFEST_REQUIRED]
    columns += sorted(present - set(columns))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, delimiter="\t" if suffix == ".tsv" else ",")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
    return path
