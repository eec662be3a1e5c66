"""Schemas for the JSON records synthmed writes and reads back (``plan.json``, ``run.json``, ``benchmark.json``).

A record can be damaged, edited by hand or crafted. Before anything uses one, its schema checks every field
the code relies on: present, of the right type, within a sane range (a crafted ``size`` of a million would
otherwise ask for hundreds of GiB). A problem is one line naming the file and the field
(``prep/plan.json: field volumes.sub-001.geometry.side is -4, expected a whole number >= 1; ...``).

Specs are small objects: :class:`Str`, :class:`Int`, :class:`Num`, :class:`Bool`, :class:`Choice`,
:class:`Maybe` (or None), :class:`ListOf`, :class:`MapOf` (a dict of any keys) and :class:`Record` (named
fields; unknown extra fields are kept, since newer versions may add some).
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from synthmed.errors import SynthmedError
from synthmed.files import read_json_record


class Invalid(Exception):
    """A field that does not fit its spec: where (dotted path) and what is wrong."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}")
        self.where, self.problem = where, problem


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Spec(ABC):
    @abstractmethod
    def check(self, value: Any, where: str) -> None:
        """Raise :class:`Invalid` when ``value`` (found at ``where``) does not fit."""


class Str(Spec):
    def __init__(self, max_length: int = 4096, nonempty: bool = True):
        self.max_length, self.nonempty = max_length, nonempty

    def check(self, value, where):
        if not isinstance(value, str):
            raise Invalid(where, f"is {_shown(value)}, expected text")
        if self.nonempty and not value:
            raise Invalid(where, "is empty, expected text")
        if len(value) > self.max_length:
            raise Invalid(where, f"is {len(value)} characters long, expected at most {self.max_length}")


class Int(Spec):
    def __init__(self, low: int | None = None, high: int | None = None, multiple: int | None = None):
        self.low, self.high, self.multiple = low, high, multiple

    def expected(self) -> str:
        if self.low is not None and self.high is not None:
            text = f"a whole number {self.low}-{self.high}"
        elif self.low is not None:
            text = f"a whole number >= {self.low}"
        else:
            text = "a whole number"
        return text + (f" (a multiple of {self.multiple})" if self.multiple else "")

    def check(self, value, where):
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(where, f"is {_shown(value)}, expected {self.expected()}")
        if (
            (self.low is not None and value < self.low)
            or (self.high is not None and value > self.high)
            or (self.multiple and value % self.multiple)
        ):
            raise Invalid(where, f"is {value}, expected {self.expected()}")


class Num(Spec):
    """A finite number (whole or not)."""

    def __init__(self, low: float | None = None, high: float | None = None):
        self.low, self.high = low, high

    def check(self, value, where):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise Invalid(where, f"is {_shown(value)}, expected a finite number")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            bounds = f"{self.low if self.low is not None else '-inf'}..{self.high if self.high is not None else 'inf'}"
            raise Invalid(where, f"is {value}, expected a number in {bounds}")


class Bool(Spec):
    def check(self, value, where):
        if not isinstance(value, bool):
            raise Invalid(where, f"is {_shown(value)}, expected true or false")


class Choice(Spec):
    def __init__(self, *values):
        self.values = values

    def check(self, value, where):
        if value not in self.values or isinstance(value, bool) != any(isinstance(v, bool) for v in self.values):
            raise Invalid(where, f"is {_shown(value)}, expected one of {', '.join(map(repr, self.values))}")


class Maybe(Spec):
    """``spec`` or null."""

    def __init__(self, spec: Spec):
        self.spec = spec

    def check(self, value, where):
        if value is not None:
            self.spec.check(value, where)


class ListOf(Spec):
    def __init__(self, item: Spec, min_length: int = 0, max_length: int = 1_000_000, length: int | None = None):
        self.item, self.min_length, self.max_length, self.length = item, min_length, max_length, length

    def check(self, value, where):
        if not isinstance(value, list):
            raise Invalid(where, f"is {_shown(value)}, expected a list")
        if self.length is not None and len(value) != self.length:
            raise Invalid(where, f"has {len(value)} entries, expected {self.length}")
        if not self.min_length <= len(value) <= self.max_length:
            raise Invalid(where, f"has {len(value)} entries, expected {self.min_length}-{self.max_length}")
        for index, item in enumerate(value):
            self.item.check(item, f"{where}[{index}]")


class MapOf(Spec):
    """A JSON object with any keys, each value fitting ``value``."""

    def __init__(self, value: Spec, max_length: int = 1_000_000):
        self.value, self.max_length = value, max_length

    def check(self, value, where):
        if not isinstance(value, dict):
            raise Invalid(where, f"is {_shown(value)}, expected an object")
        if len(value) > self.max_length:
            raise Invalid(where, f"has {len(value)} entries, expected at most {self.max_length}")
        for key, item in value.items():
            self.value.check(item, f"{where}.{key}" if where else str(key))


class Record(Spec):
    """A JSON object with named fields (``optional`` ones may be missing); other fields are allowed."""

    def __init__(self, fields: dict[str, Spec], optional: dict[str, Spec] | None = None):
        self.fields, self.optional = fields, optional or {}

    def check(self, value, where):
        if not isinstance(value, dict):
            raise Invalid(where or "(top level)", f"is {_shown(value)}, expected an object")
        for name, spec in self.fields.items():
            inner = f"{where}.{name}" if where else name
            if name not in value:
                raise Invalid(inner, "is missing")
            spec.check(value[name], inner)
        for name, spec in self.optional.items():
            if name in value:
                spec.check(value[name], f"{where}.{name}" if where else name)


def validate(value: Any, spec: Spec, path: str | os.PathLike, fix: str) -> Any:
    """``value`` if it fits ``spec``; otherwise a one-line :class:`SynthmedError` naming ``path`` and the field."""
    try:
        spec.check(value, "")
    except Invalid as invalid:
        raise SynthmedError(f"{path}: field {invalid.where} {invalid.problem}; {fix}") from None
    return value


def invalid(path: str | os.PathLike, where: str, problem: str, fix: str) -> SynthmedError:
    """The same one-line error for a check a spec cannot express (one field against another)."""
    return SynthmedError(f"{path}: field {where} {problem}; {fix}")


def load_record(path: str | os.PathLike, spec: Spec, what: str, fix: str) -> Any:
    """Read a JSON record and check it against ``spec``."""
    return validate(read_json_record(path, what, fix), spec, Path(path), fix)
