"""Strict conversion of TOML tables into frozen dataclasses.

Frigate's lesson: forbid unknown keys and carry bounds on the fields, so a misspelt key or a value
out of range fails when the agent starts, with one line naming the file, the key and the reason.
Bounds and help text live in ``field(metadata=...)`` via :func:`setting`, where a calibration tool
can read them too.

A dataclass may also name keys it refuses with a reason, in a ``REFUSED_KEYS`` class variable
(``{key: reason}``): a key that used to exist, or one that must not be there (a password in a TOML
file that ends up in a repository), fails with that reason instead of "unknown key".
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """A config problem, rendered as ``file: key: reason`` on one line."""

    def __init__(self, source: str | Path, key: str, reason: str):
        self.source, self.key, self.reason = str(source), key, reason
        where = f"{self.source}: {key}" if key else self.source
        super().__init__(f"{where}: {reason}")


def read_toml(path: Path) -> dict:
    """Parse a TOML file; a missing file or bad syntax is a ConfigError naming the file."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"not valid TOML: {exc}") from None


def setting(default: Any = dataclasses.MISSING, *,
            help: str = "",  # noqa: A002 - the keyword argparse and the reference generator use too
            ge: float | None = None, gt: float | None = None, le: float | None = None,
            factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with help text and numeric bounds checked at load time."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def load_dataclass(cls: type, table: Any, source: str | Path, key: str = "", base_dir: Path | None = None):
    """Build ``cls`` from ``table``; relative ``Path`` fields are resolved against ``base_dir``."""
    return _Converter(source, base_dir)(cls, table, key)


class _Converter:
    def __init__(self, source: str | Path, base_dir: Path | None):
        self.source, self.base_dir = source, base_dir

    def fail(self, key: str, reason: str) -> typing.NoReturn:
        raise ConfigError(self.source, key, reason)

    def __call__(self, tp: Any, value: Any, key: str) -> Any:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return self.dataclass(tp, value, key)
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            inner = [a for a in args if a is not type(None)]
            return self(inner[0], value, key)
        if origin is list:
            if not isinstance(value, list):
                self.fail(key, f"expected a list, got {type(value).__name__}")
            return [self(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
        if origin is tuple:
            if not isinstance(value, list):
                self.fail(key, f"expected a list, got {type(value).__name__}")
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(self(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
            if len(value) != len(args):
                self.fail(key, f"expected {len(args)} values, got {len(value)}")
            return tuple(self(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        if origin is dict:
            if not isinstance(value, dict):
                self.fail(key, f"expected a table, got {type(value).__name__}")
            return {k: self(args[1], v, f"{key}.{k}" if key else k) for k, v in value.items()}
        if origin is frozenset:
            if not isinstance(value, list):
                self.fail(key, f"expected a list, got {type(value).__name__}")
            return frozenset(self(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        return self.scalar(tp, value, key)

    def scalar(self, tp: Any, value: Any, key: str) -> Any:
        if isinstance(tp, type) and issubclass(tp, Enum):
            allowed = [m.value for m in tp]
            if value not in allowed:
                self.fail(key, f"must be one of {allowed}, got {value!r}")
            return tp(value)
        if tp is Path:
            if not isinstance(value, str) or not value:
                self.fail(key, f"expected a path string, got {value!r}")
            path = Path(value)
            return path if path.is_absolute() or self.base_dir is None else self.base_dir / path
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self.fail(key, f"expected a number, got {value!r}")
            return float(value)
        if tp is Any:
            return value
        if tp is bool or tp is int or tp is str:
            # bool is an int in Python; TOML keeps them apart, and so do we.
            if type(value) is not tp:
                self.fail(key, f"expected {tp.__name__}, got {value!r}")
            return value
        raise TypeError(f"typedtoml cannot convert to {tp!r}")

    def dataclass(self, cls: type, value: Any, key: str) -> Any:
        if not isinstance(value, dict):
            self.fail(key, f"expected a table, got {type(value).__name__}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        for name, reason in getattr(cls, "REFUSED_KEYS", {}).items():
            if name in value:
                self.fail(f"{key}.{name}" if key else name, reason)
        unknown = sorted(set(value) - set(fields))
        if unknown:
            where = f"{key}.{unknown[0]}" if key else unknown[0]
            self.fail(where, f"unknown key (allowed: {', '.join(sorted(fields))})")
        kwargs = {}
        for name, f in fields.items():
            sub = f"{key}.{name}" if key else name
            if name not in value:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    self.fail(sub, "missing required key")
                continue
            converted = self(hints[name], value[name], sub)
            self.check_bounds(f, converted, sub)
            kwargs[name] = converted
        try:
            return cls(**kwargs)
        except ValueError as exc:  # cross-field checks in __post_init__
            self.fail(key, str(exc))

    def check_bounds(self, f: dataclasses.Field, value: Any, key: str) -> None:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return
        meta = f.metadata
        if meta.get("ge") is not None and value < meta["ge"]:
            self.fail(key, f"must be >= {meta['ge']}, got {value}")
        if meta.get("gt") is not None and value <= meta["gt"]:
            self.fail(key, f"must be > {meta['gt']}, got {value}")
        if meta.get("le") is not None and value > meta["le"]:
            self.fail(key, f"must be <= {meta['le']}, got {value}")


# Units a key's name ends in, for people filling in a form (the calibration page): the suffixes
# the config already uses so that a number never needs a comment to say what it counts.
UNIT_WORDS = {"s": "s", "px": "px", "m2": "m²", "m": "m", "fps": "fps", "pct": "%"}


def unit_of(name: str) -> str:
    """The unit a key's name gives: ``min_dwell_s`` s, ``px_per_m2`` px/m², ``min_length`` none."""
    if "_per_" in name:
        head, tail = name.rsplit("_per_", 1)
        top, bottom = UNIT_WORDS.get(head.rsplit("_", 1)[-1], ""), UNIT_WORDS.get(tail, "")
        return f"{top}/{bottom}" if top and bottom else ""
    return UNIT_WORDS.get(name.rsplit("_", 1)[-1], "") if "_" in name else ""


def describe(cls: type) -> list[dict]:
    """The fields of a config dataclass as JSON-able dicts (name, type, default, bounds, help,
    unit), for tools that build forms from the same metadata the loader checks."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default, required = _plain(f.default), False
        elif f.default_factory is not dataclasses.MISSING:
            default, required = _plain(f.default_factory()), False
        else:
            default, required = None, True
        unit = unit_of(f.name)
        out.append({"name": f.name, "type": _kind(hints[f.name]), "optional": _optional(hints[f.name]),
                    "required": required, "default": default, "help": f.metadata.get("help", ""),
                    "unit": unit, **{k: f.metadata.get(k) for k in ("ge", "gt", "le")}})
    return out


def _optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _kind(tp: Any) -> str:
    """One of number, integer, boolean, string, list:<kind of its items>, choice:<a>|<b>, or other."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    origin = typing.get_origin(tp)
    if origin in (list, tuple, frozenset):
        items = {a for a in typing.get_args(tp) if a is not Ellipsis}
        return f"list:{_kind(items.pop())}" if len(items) == 1 else "other"
    if isinstance(tp, type) and issubclass(tp, Enum):
        return "choice:" + "|".join(str(m.value) for m in tp)
    return {float: "number", int: "integer", bool: "boolean", str: "string", Path: "string"}.get(tp, "other")


def _plain(value: Any) -> Any:
    """A default as JSON: enums by value, sets sorted, paths as text."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) or isinstance(value, dict):
        return None  # nested tables are not form fields
    return value
