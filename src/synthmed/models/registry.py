"""Model registry: method names -> classes, with their papers and presets."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any

from synthmed.errors import SynthmedError
from synthmed.models.base import SynthesisModel

MODELS: dict[str, type[SynthesisModel]] = {}


def register(cls: type[SynthesisModel]) -> type[SynthesisModel]:
    """Class decorator: make a method available by its ``name``."""
    if not cls.name or cls.name in MODELS:
        raise ValueError(f"model name {cls.name!r} missing or registered twice")
    for required in ("paper", "small", "tiny"):  # tiny: what tests/test_protocol.py runs
        if required not in cls.PRESETS:
            raise ValueError(f"{cls.name} has no {required!r} preset")
    MODELS[cls.name] = cls
    return cls


# Modules of this package that hold no method.
_NOT_METHODS = {"base", "registry"}
_loaded = False


def _load_builtin_models() -> None:
    """Import every module of this package once: a method registers itself with ``@register`` when its file is
    imported, so adding a method is adding its file."""
    global _loaded
    if _loaded:
        return
    import synthmed.models as package

    for module in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if module.name not in _NOT_METHODS and not module.name.startswith("_"):
            importlib.import_module(f"synthmed.models.{module.name}")
    _loaded = True


def model_class(name: str) -> type[SynthesisModel]:
    _load_builtin_models()
    if name not in MODELS:
        raise SynthmedError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))} (see `synthmed models`)")
    return MODELS[name]


def available_models() -> dict[str, type[SynthesisModel]]:
    _load_builtin_models()
    return dict(sorted(MODELS.items()))


def make_config(name: str, preset: str = "small", overrides: dict[str, Any] | None = None):
    cls = model_class(name)
    if preset not in cls.PRESETS:
        raise SynthmedError(f"model {name} has no preset {preset!r}; available: {', '.join(cls.PRESETS)}")
    values = dict(cls.PRESETS[preset])
    known = {f.name: f for f in dataclasses.fields(cls.Config)}
    for key, value in (overrides or {}).items():
        if key not in known:
            raise SynthmedError(f"{name} has no setting {key!r}; settings: {', '.join(known)}")
        values[key] = value
    return config_from_dict(name, values)


def build_model(name: str, preset: str = "small", overrides: dict[str, Any] | None = None) -> SynthesisModel:
    return instantiate(name, make_config(name, preset, overrides))


def config_from_dict(name: str, values: dict[str, Any]):
    """Rebuild a config saved in a checkpoint or run.json, or given with --set; values are
    checked against the types of the paper defaults (lists back to tuples)."""
    cls = model_class(name)
    known = {f.name: f for f in dataclasses.fields(cls.Config)}
    defaults = cls.Config()
    clean = {}
    for key, value in values.items():
        if key not in known:
            continue
        default = getattr(defaults, key)
        if isinstance(default, tuple):
            # tuple[int, ...] fields (e.g. channels per level) take any length; fixed tuples their own.
            any_length = "..." in str(known[key].type)
            if (
                not isinstance(value, (list, tuple))
                or (not value and default)
                or (not any_length and len(value) != len(default))
            ):
                count = "one or more" if any_length else str(len(default))
                raise SynthmedError(f"{name} setting {key}={value!r}: give {count} values like {list(default)}")
            value = tuple(value)
        elif (
            isinstance(default, bool) != isinstance(value, bool)
            or (isinstance(default, (int, float)) and not isinstance(value, (int, float)))
            or (isinstance(default, str) and not isinstance(value, str))
        ):
            raise SynthmedError(f"{name} setting {key}={value!r}: expected a {type(default).__name__} like {default!r}")
        elif isinstance(default, float):
            value = float(value)
        elif isinstance(default, int) and isinstance(value, float):
            if not value.is_integer():
                raise SynthmedError(f"{name} setting {key}={value!r}: expected a whole number")
            value = int(value)
        clean[key] = value
    return cls.Config(**clean)


def instantiate(name: str, config) -> SynthesisModel:
    """Build the model, turning invalid settings into a one-line error."""
    try:
        return model_class(name)(config)
    except (ValueError, TypeError) as error:
        raise SynthmedError(f"{name}: invalid settings ({error})") from None
