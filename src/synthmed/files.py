"""What synthmed does to files on disk, in one place, so that every command follows the same rules:

- **Atomic writes.** A file is written under a temporary name beside its destination, flushed, then renamed
  into place (:func:`write_atomic`): a reader, a crash or a kill sees the old file or the new one, never half.
- **Only its own files.** A folder synthmed creates carries a marker file (:data:`MARKER_NAME`) naming the
  command that made it and, where a folder collects outputs, the files it wrote. ``--overwrite`` replaces or
  removes only such folders and files (:func:`ownership_problem`); anything else in the way is refused by name.
- **Outputs never land on inputs.** An output path that resolves to an input (symbolic links, ``./`` aliases,
  hard links), or an output folder that contains an input or lies inside an input folder, is refused
  (:func:`refuse_overlap`).
- **One command per output.** A command holds an exclusive lock on its output for its whole run
  (:func:`output_lock`); a second one is refused with the first one's process id and command line. The
  operating system releases the lock when the process ends, however it ends.
- **No stale leftovers.** Temporary names carry the writer's process id (:func:`temporary_path`); those of
  processes that no longer run are removed at the next start (:func:`remove_stale_temporaries`).
- **Strict JSON.** Records are written with :func:`json_text`: one convention for non-finite numbers
  (``null``), so strict parsers read every file synthmed writes.

This module sits below every other layer and imports only the standard library and :mod:`synthmed.errors`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from synthmed.errors import SynthmedError

log = logging.getLogger(__name__)

MARKER_NAME = ".synthmed"
MARKER_FORMAT = "synthmed-folder"
LOCK_SUFFIX = ".synthmed-lock"
MAX_RECORD_BYTES = 256 * 2**20  # plan.json of 10,000 subjects is a few MB; anything this large is not ours

# ----------------------------------------------------------------------------- JSON


def finite_json(value: Any) -> Any:
    """``value`` with every non-finite float (Python or NumPy) replaced by ``None``: the one convention for
    infinities and NaN in synthmed's records (strict JSON has neither). NumPy scalars become Python numbers."""
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    if hasattr(value, "item") and hasattr(value, "dtype") and getattr(value, "ndim", None) == 0:
        value = value.item()  # a NumPy or torch scalar
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_text(value: Any, *, indent: int | None = 2, default: Callable[[Any], Any] | None = str) -> str:
    """Strict JSON text of ``value`` (non-finite numbers as ``null``; other objects through ``default``)."""
    return json.dumps(finite_json(value), indent=indent, allow_nan=False, default=default)


def read_json_record(path: str | os.PathLike, what: str, fix: str) -> Any:
    """The parsed content of a JSON record synthmed wrote (``what``: e.g. 'plan', 'run record'); a one-line
    :class:`SynthmedError` naming the file, the problem and ``fix`` when it is missing, huge, not UTF-8 or
    not valid JSON. (What the fields hold is checked by the record's own schema.)"""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise SynthmedError(f"{path}: no such file; {fix}") from None
    except OSError as error:
        raise SynthmedError(f"{path}: cannot read the {what} ({error.strerror or error}); {fix}") from None
    if size > MAX_RECORD_BYTES:
        raise SynthmedError(f"{path}: {size / 2**20:.0f} MiB is far too large for a synthmed {what}; {fix}")
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text, parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise SynthmedError(f"{path}: the {what} is not UTF-8 text; {fix}") from None
    except json.JSONDecodeError as error:
        raise SynthmedError(
            f"{path}: the {what} is not valid JSON ({error.msg} at line {error.lineno} column {error.colno}); {fix}"
        ) from None
    except ValueError as error:  # a NaN/Infinity literal, refused by _refuse_constant
        raise SynthmedError(f"{path}: the {what} holds {error}, which strict JSON has not; {fix}") from None
    except OSError as error:
        raise SynthmedError(f"{path}: cannot read the {what} ({error.strerror or error}); {fix}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(name)


# ----------------------------------------------------------------------------- atomic writes


def default_file_mode() -> int:
    """The mode ``open()`` would give a new file: 0666 less the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def temporary_path(path: str | os.PathLike, tag: str = "tmp") -> Path:
    """A hidden name beside ``path`` that carries this process's id (``.T2.nii.gz.partial-1234.nii.gz``), so a
    leftover of a killed process is recognised and removed later (:func:`remove_stale_temporaries`). The
    file's own suffix is kept at the end: writers that choose the format from the name still see it."""
    path = Path(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.lower().endswith(".nii.gz") else path.suffix
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}{suffix}")


def move_folder_into_place(tmp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Rename the finished folder ``tmp`` to ``out``. An existing ``out`` is moved aside first, restored if the
    rename fails and deleted last, so that ``out`` is at every moment either the old folder or the new one."""
    tmp, out = Path(tmp), Path(out)
    if not out.exists():
        os.replace(tmp, out)
        return
    old = temporary_path(out, "old")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_atomic(path: str | os.PathLike, write: Callable[[Any], Any], binary: bool = False) -> Path:
    """Write a file via a temporary file in the same folder, flushed to disk, then a rename: a reader (another
    process, a crash, a kill) sees the old file or the new one, never a truncated one. ``write(stream)`` fills it.
    A failure (a full disk, say) removes the temporary file and raises :class:`SynthmedError` naming ``path``."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", suffix=".tmp", dir=parent)
    except OSError as error:
        raise SynthmedError(
            f"{path}: cannot write in {parent} ({error.strerror or error}); check the folder and its permissions"
        ) from None
    try:
        with os.fdopen(handle, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise SynthmedError(
            f"{path}: writing failed ({error.strerror or error}); check free space and "
            "permissions (nothing was changed)"
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """``text`` written with :func:`write_atomic`."""
    return write_atomic(path, lambda stream: stream.write(text))


def require_free_space(folder: str | os.PathLike, needed: int, what: str) -> None:
    """Refuse to start writing ``needed`` bytes into ``folder`` when the file system has not that much free
    (with a small margin): better a message now than a full disk half-way (for memory-mapped files, a crash)."""
    folder = Path(folder)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # unknown: the writes themselves will tell
    margin = 16 * 2**20 + needed // 50
    if free < needed + margin:
        raise SynthmedError(
            f"{folder}: {what} needs {_size_text(needed + margin)} of disk space, only "
            f"{_size_text(free)} is free; free some space or choose another output"
        )


def _size_text(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


# ----------------------------------------------------------------------------- stale temporaries

_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<tag>tmp|partial|old)-(?P<pid>\d+)(?:[-.].*)?$")


def pid_alive(pid: int) -> bool:
    """True when a process with this id runs on this machine (or might: one we may not signal)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, names: Callable[[str], bool] | None = None) -> list[Path]:
    """Remove the temporary files and folders (:func:`temporary_path`, :func:`write_atomic`) that processes no
    longer running left in ``folder`` (a kill -9, a power cut); ``names`` narrows which (by the destination's
    name). Says what it removed in the log. Call it while holding the folder's output lock."""
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if not match or (names is not None and not names(match["name"])):
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or pid_alive(pid):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as error:
            log.warning("could not remove %s, left by an interrupted synthmed run: %s", path, error.strerror or error)
            continue
        removed.append(path)
    if removed:
        pids = sorted({int(_TEMPORARY.match(p.name)["pid"]) for p in removed})
        log.info(
            "removed %d leftover temporary file(s) of interrupted synthmed run(s) (process %s) in %s: %s",
            len(removed),
            ", ".join(map(str, pids)),
            folder,
            ", ".join(p.name for p in removed[:3]) + (" ..." if len(removed) > 3 else ""),
        )
    return removed


# ----------------------------------------------------------------------------- ownership markers


def write_marker(folder: str | os.PathLike, command: str, written: Iterable[str] = ()) -> Path:
    """Mark ``folder`` as made by ``synthmed <command>``; ``written``: the paths (relative to ``folder``) of the
    outputs it wrote there, added to those already listed (a folder that collects outputs of several runs)."""
    folder = Path(folder)
    listed = set((read_marker(folder) or {}).get("written", []))
    listed.update(str(Path(p)) for p in written)
    record = {"format": MARKER_FORMAT, "command": command, "written": sorted(listed)}
    return write_text_atomic(folder / MARKER_NAME, json_text(record) + "\n")


def read_marker(folder: str | os.PathLike) -> dict | None:
    """The marker of a folder synthmed made, or None (no marker, or a file that is not one)."""
    path = Path(folder) / MARKER_NAME
    try:
        if not path.is_file() or path.stat().st_size > 64 * 2**20:
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if (
        not isinstance(record, dict)
        or record.get("format") != MARKER_FORMAT
        or not isinstance(record.get("command"), str)
    ):
        return None
    written = record.get("written", [])
    record["written"] = [p for p in written if isinstance(p, str)] if isinstance(written, list) else []
    return record


def marked_by(folder: str | os.PathLike, command: str) -> bool:
    marker = read_marker(folder)
    return marker is not None and marker["command"] == command


def ownership_problem(
    folder: str | os.PathLike,
    command: str,
    expected: Callable[[Path], bool],
    legacy: Callable[[Path], bool] | None = None,
) -> str | None:
    """Why ``folder`` may not be replaced as an output of ``synthmed <command>``, or None when it may.

    It may when it carries that command's marker (or, for folders made before markers existed, ``legacy``
    recognises it) and every entry in it is one the command writes (``expected(entry)``): a file the user put
    into an output folder is theirs, and stops the replacement."""
    folder = Path(folder)
    if not (marked_by(folder, command) or (legacy is not None and legacy(folder))):
        return f"was not made by synthmed {command} (it has no {MARKER_NAME} marker)"
    for entry in sorted(folder.iterdir()):
        if entry.name == MARKER_NAME or _TEMPORARY.match(entry.name):
            continue
        if not expected(entry):
            return f"holds {entry.name}, which synthmed {command} did not write"
    return None


def remove_owned_folder(
    folder: str | os.PathLike,
    command: str,
    expected: Callable[[Path], bool],
    legacy: Callable[[Path], bool] | None = None,
) -> None:
    """Delete an output folder of ``synthmed <command>``; refused (nothing deleted) unless
    :func:`ownership_problem` finds it is wholly synthmed's."""
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or not folder.is_dir():
        raise SynthmedError(f"{folder} is not a folder made by synthmed {command}; move it away first")
    problem = ownership_problem(folder, command, expected, legacy)
    if problem:
        raise SynthmedError(f"{folder} {problem}; refusing to delete it: move it away or choose another output")
    shutil.rmtree(folder)


# ----------------------------------------------------------------------------- single output files

# A file named on the command line (`translate RUN t1.nii.gz pred.nii.gz`) lands in a folder synthmed did not
# make, often beside the user's own scans. The folder's ledger lists the files synthmed wrote there, so that
# `--overwrite` can replace those and refuse anything else (a real T2 beside the T1, say). A ledger lost or
# damaged only makes synthmed refuse more, never replace more.
LEDGER_NAME = ".synthmed-outputs"
LEDGER_FORMAT = "synthmed-outputs"


def _read_ledger(folder: Path) -> dict[str, dict]:
    path = folder / LEDGER_NAME
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > 64 * 2**20:
            return {}
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    if (
        not isinstance(record, dict)
        or record.get("format") != LEDGER_FORMAT
        or not isinstance(record.get("files"), dict)
    ):
        return {}
    return {name: entry for name, entry in record["files"].items() if isinstance(name, str) and isinstance(entry, dict)}


def record_written(paths: Iterable[str | os.PathLike], command: str) -> None:
    """List ``paths`` (just written by ``synthmed <command>``) in their folders' ledgers; entries of files that
    are gone are dropped. Called after the outputs are in place: a crash in between leaves an output that is
    not listed, which the next ``--overwrite`` refuses (safe) rather than a listed name that is the user's."""
    by_folder: dict[Path, list[str]] = {}
    for path in paths:
        path = Path(path)
        by_folder.setdefault(path.parent if str(path.parent) else Path("."), []).append(path.name)
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for folder, names in by_folder.items():
        files = {name: entry for name, entry in _read_ledger(folder).items() if (folder / name).exists()}
        for name in names:
            files[name] = {"command": command, "written": when, **_fingerprint(folder / name)}
        write_text_atomic(
            folder / LEDGER_NAME, json_text({"format": LEDGER_FORMAT, "files": dict(sorted(files.items()))}) + "\n"
        )


def _fingerprint(path: Path) -> dict[str, int]:
    """What changes when anyone else writes the file: a file synthmed wrote and the user then edited, or
    replaced by their own under the same name, is theirs again."""
    status = path.stat()
    return {"size": status.st_size, "mtime_ns": status.st_mtime_ns}


def written_by_synthmed(path: str | os.PathLike) -> bool:
    """Whether synthmed wrote the file at ``path``: listed in its folder's ledger and unchanged since, or among
    the outputs listed in the marker of a folder synthmed made (the folder itself or the one above, for
    per-subject outputs)."""
    path = Path(os.path.abspath(path))
    if path.is_symlink():
        return False  # a link is the user's; replacing it would be wrong even if its name is listed
    folder = path.parent
    entry = _read_ledger(folder).get(path.name)
    if entry is not None:
        try:
            return {key: entry.get(key) for key in ("size", "mtime_ns")} == _fingerprint(path)
        except OSError:
            return False
    for owner in (folder, folder.parent):
        marker = read_marker(owner)
        if marker is not None and str(path.relative_to(owner)) in marker["written"]:
            return True
    return False


def refuse_replacing_foreign(paths: Iterable[str | os.PathLike], command: str) -> None:
    """Refuse, before anything is written, to replace an existing file synthmed did not write."""
    for path in paths:
        path = Path(path)
        if (path.exists() or path.is_symlink()) and not written_by_synthmed(path):
            kind = "a symbolic link" if path.is_symlink() else "a file synthmed did not write"
            raise SynthmedError(
                f"{path} exists and is {kind}; --overwrite replaces only synthmed's own outputs "
                f"(listed in {LEDGER_NAME} beside them): delete it yourself or choose another name "
                f"for the {command} output"
            )


# ----------------------------------------------------------------------------- inputs versus outputs


def resolved(path: str | os.PathLike) -> Path:
    """``path`` made absolute with symbolic links and ``..`` resolved (for paths that do not exist yet, as far
    as they do)."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name one file or folder: the same resolved path, or (hard links) the same
    device and inode."""
    if resolved(a) == resolved(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """True when ``path`` is ``folder`` or lies somewhere inside it (after resolving links)."""
    path, folder = resolved(path), resolved(folder)
    return path == folder or folder in path.parents


def refuse_overlap(output: str | os.PathLike, inputs: Iterable[str | os.PathLike], what: str = "output") -> None:
    """Refuse an ``output`` (file or folder) that is one of ``inputs`` (files or folders), lies inside one of
    them, or contains one: writing it could replace or delete the user's data."""
    output = Path(output)
    for item in inputs:
        if item is None:
            continue
        item = Path(item)
        if same_file(output, item):
            raise SynthmedError(
                f"{what} {output} is the input {item}; writing it would destroy the input: choose another output"
            )
        if within(item, output):
            raise SynthmedError(f"{what} {output} contains the input {item}; choose an output outside your data")
        if item.is_dir() and within(output, item):
            raise SynthmedError(
                f"{what} {output} lies inside the input folder {item}; choose an output outside your data"
            )


# ----------------------------------------------------------------------------- locks

_held: dict[Path, int] = {}  # lock files this process holds -> nesting depth


def lock_path(output: str | os.PathLike) -> Path:
    """The lock file of an output: a hidden file beside it (the output itself may not exist yet, or be
    replaced by a rename while the lock is held)."""
    output = resolved(output)
    return output.with_name(f".{output.name}{LOCK_SUFFIX}")


@contextlib.contextmanager
def output_lock(output: str | os.PathLike, command: str | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``output`` (a file or folder, existing or not) for the ``with`` block.

    A second synthmed command on the same output is refused at once with a one-line message naming the process
    that holds it. The lock is the operating system's (``flock``), so it goes with its process however that ends
    (kill -9 included); the lock file is removed on a normal exit and reused after a crash. Re-entrant within one
    process (a workflow that calls another on the same output)."""
    path = lock_path(output)
    if path in _held:
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SynthmedError(
            f"cannot create folder {path.parent} ({error.strerror or error}); choose another output"
        ) from None
    handle = _acquire(path, Path(output), command or _command_line())
    _held[path] = 1
    try:
        yield
    finally:
        del _held[path]
        with contextlib.suppress(OSError):
            path.unlink()  # while still locked, so no one can take a lock on a file about to vanish
        os.close(handle)


def _command_line() -> str:
    words = [Path(sys.argv[0]).name if sys.argv else "python", *sys.argv[1:]]
    if words[0] in ("__main__.py", "-m", "-c"):
        words[0] = "synthmed"
    text = " ".join(words)
    return text if len(text) <= 120 else text[:117] + "..."


def _acquire(path: Path, output: Path, command: str) -> int:
    while True:
        try:
            handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise SynthmedError(
                f"{output}: cannot create the lock file {path} ({error.strerror or error}); choose a writable output"
            ) from None
        if not _try_lock(handle):
            holder = _holder_text(handle)
            os.close(handle)
            raise SynthmedError(
                f"{output} is in use by another synthmed command ({holder}); wait for it to "
                "finish, or choose another output"
            )
        # The previous holder removes the file as it releases it: a lock on a file no longer at ``path``
        # protects nothing, so take it again on the file that is there now.
        try:
            same = os.fstat(handle).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(handle)
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        os.ftruncate(handle, 0)
        os.write(handle, json.dumps(record).encode())
    except OSError:
        pass  # the lock holds without the note; the refusal message is then less specific
    return handle


def _try_lock(handle: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(handle, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder_text(handle: int) -> str:
    try:
        record = json.loads(os.pread(handle, 4096, 0).decode() or "{}") if hasattr(os, "pread") else {}
    except (OSError, ValueError):
        record = {}
    if not isinstance(record, dict) or "pid" not in record:
        return "process unknown"
    text = f"process {record['pid']}"
    if record.get("host") and record["host"] != socket.gethostname():
        text += f" on {record['host']}"
    if record.get("command"):
        text += f": `{record['command']}`"
    if record.get("since"):
        text += f", since {record['since']}"
    return text
