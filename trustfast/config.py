"""One way to make and validate a config: a dataclass that checks itself when it is made.

A config class derives from `Config`. Its `__post_init__` coerces every field to its declared
type (YAML and `--set` give strings and ints where floats are declared: PyYAML reads `1e-3` as
the string "1e-3"), builds nested config dataclasses from mappings, then runs the class's own
`check()` (ranges, allowed values). Every failure is a `ConfigError` (a ValueError) whose
message names the key, what was expected and what came, e.g.
`train.lr must be a number, got 'fast' (str)`.

    cfg = build_config(MyConfig, load_config_file("run.yaml"), sets=["train.lr=1e-3"])
    config_diff(saved_dict, to_dict(cfg))   # ["train.lr"]: the keys that differ
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


class ConfigError(ValueError):
    """A config value is wrong. `key` is its dotted path ("train.lr"); the message says what
    was expected and what came."""

    def __init__(self, key: str, message: str):
        self.key, self.message = key, message
        sep = "" if message.startswith(":") else " "
        super().__init__(f"{key}{sep}{message}" if key else message)

    def under(self, prefix: str) -> ConfigError:
        """The same error for the config nested at `prefix`."""
        if not prefix:
            return self
        return ConfigError(f"{prefix}.{self.key}" if self.key else prefix, self.message)


def _shown(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("None" if a is type(None) else _type_name(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple, Sequence):
        inner = _type_name(args[0]) if args else "value"
        return f"a list of {inner}s"
    if origin in (dict, Mapping) or tp is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {tp.__name__} fields"
    return {bool: "a bool", int: "an int", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """`value` as the declared type `tp`, or a ConfigError naming `key`.

    str -> int / float / bool when the text is one ("1e-3", "8", "true"); int -> float; a list
    field also takes one value or a comma-separated string ("ga,npo"); a nested config
    dataclass takes a mapping of its fields. Nothing else is converted: 2.5 for an int, 1 for
    a bool or 3 for a str are errors.
    """
    if tp is Any or tp is object:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if isinstance(value, str) and value.strip().lower() in ("none", "null") \
                and type(None) in args and str not in options:
            return None
        errors = []
        for option in options:
            try:
                return coerce(value, option, key)
            except ConfigError as exc:
                errors.append((option, exc))
        for option, exc in errors:  # a mapping for a nested config: its own error, by key
            if isinstance(value, Mapping) and dataclasses.is_dataclass(option):
                raise exc
        raise ConfigError(key, f"must be {_type_name(tp)}, got {_shown(value)}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(key, f"must be {_type_name(tp)}, got {_shown(value)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return build_config(tp, value, prefix=key)
        raise ConfigError(key, f"must be {_type_name(tp)}, got {_shown(value)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = value.strip().lower() if isinstance(value, str) else None
        if text in ("true", "yes", "on"):
            return True
        if text in ("false", "no", "off"):
            return False
        raise ConfigError(key, f"must be a bool (true or false), got {_shown(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise ConfigError(key, f"must be an int, got {_shown(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ConfigError(key, f"must be a number, got {_shown(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, f"must be a string, got {_shown(value)}")
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        inner = args[0] if args else Any
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        elif not isinstance(value, (list, tuple)):
            value = [value]
        items = [coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"must be a mapping, got {_shown(value)}")
        value_type = args[1] if len(args) == 2 else Any
        return {k: coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(key, f"must be {_type_name(tp)}, got {_shown(value)}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


class Config:
    """Base of every config dataclass: coerce the fields, then `check()` them, at creation.

    Subclasses are `@dataclass`es and override `check()` with their ranges and allowed values,
    using `self.require(...)`, `self.choice(...)` and friends so that errors name the key.
    """

    def __post_init__(self) -> None:
        self.validate()

    def validate(self):
        """Coerce and check again (after fields were changed in place); returns self.

        A nested config or a mapping field given as a mapping starts from the field's default
        (so `face: {epochs: 3}` keeps the other fields of a non-standard default, and
        `overrides: {ga: {lr: 1e-4}}` keeps the default overrides of the other methods)."""
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Mapping):
                default = _field_default(type(self), f.name)
                if dataclasses.is_dataclass(default) and not isinstance(default, type):
                    value = {**dataclasses.asdict(default), **value}
                elif isinstance(default, Mapping):
                    value = merge_mappings(default, value)
            setattr(self, f.name, coerce(value, hints[f.name], f.name))
        self.check()
        return self

    def check(self) -> None:
        """Ranges and allowed values of the fields; raise through `require` & co."""

    # -- helpers for check() -------------------------------------------------------------
    def require(self, ok: bool, key: str, expected: str) -> None:
        """Raise `key must be <expected>, got <value>` unless `ok`."""
        if not ok:
            raise ConfigError(key, f"must be {expected}, got {self._value(key)!r}")

    def _value(self, key: str) -> Any:
        value: Any = self
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else getattr(value, part, None)
        return value

    def at_least(self, key: str, low: float, *, strict: bool = False) -> None:
        """`key` is a finite number >= low (> low with strict); a string or None fails too."""
        value = self._value(key)
        ok = _is_number(value) and math.isfinite(value) and (value > low if strict
                                                             else value >= low)
        self.require(ok, key, f"{'a number ' if not _is_number(value) else ''}"
                              f"{'>' if strict else '>='} {low:g}")

    def within(self, key: str, low: float, high: float, *, low_open: bool = False,
               high_open: bool = False) -> None:
        """`key` is a finite number in the interval; a string or None fails too."""
        value = self._value(key)
        ok = _is_number(value) and math.isfinite(value) \
            and (value > low if low_open else value >= low) \
            and (value < high if high_open else value <= high)
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        self.require(ok, key, f"in {interval}")

    def choice(self, key: str, allowed: Iterable[Any]) -> None:
        allowed = tuple(allowed)
        self.require(self._value(key) in allowed, key, f"one of {allowed}")

    def subset(self, key: str, allowed: Iterable[Any], *, nonempty: bool = True) -> None:
        allowed = tuple(allowed)
        values = self._value(key) or []
        bad = [v for v in values if v not in allowed]
        if bad or (nonempty and not values):
            what = f"a non-empty subset of {allowed}" if nonempty else f"a subset of {allowed}"
            raise ConfigError(key, f"must be {what}, got {list(values)!r}"
                              + (f" (unknown: {bad})" if bad else ""))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def merge_mappings(base: Mapping, extra: Mapping) -> dict:
    """`extra` over `base`, recursively for values that are mappings in both."""
    out = copy.deepcopy(dict(base))
    for k, v in extra.items():
        out[k] = merge_mappings(out[k], v) if isinstance(v, Mapping) \
            and isinstance(out.get(k), Mapping) else v
    return out


def build_config(cls: type, data: Mapping[str, Any] | None = None, *, prefix: str = "",
                 sets: Sequence[str] = ()) -> Any:
    """`cls(**data)` after `--set key.sub=value` assignments, refusing unknown keys.

    Every error is a ConfigError naming the full dotted key (`prefix` for nested configs)."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"cls must be a dataclass type, got {cls!r}")
    data = dict(data or {})
    for assignment in sets:
        apply_set(cls, data, assignment)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    odd = [k for k in data if not isinstance(k, str)]
    if odd:
        where = f" in {prefix}" if prefix else ""
        raise ConfigError("", f"config keys must be strings, got {odd[0]!r} "
                              f"({type(odd[0]).__name__}){where}").under(prefix)
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in {prefix}" if prefix else ""
        raise ConfigError("", f"unknown config keys {unknown}{where}; known keys of "
                              f"{cls.__name__}: {sorted(names)}").under(prefix)
    try:
        return cls(**data)
    except ConfigError as exc:
        raise exc.under(prefix) from None
    except ValueError as exc:  # a check that does not name its key the ConfigError way
        if not prefix:
            raise
        raise ConfigError(prefix, f": {exc}") from None


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def parse_value(text: str) -> Any:
    """A `--set` value in YAML syntax ("[2, 4]", "true", "null"); numbers also in the forms
    YAML 1.1 leaves as strings ("1e-3")."""
    import yaml

    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        return float(value)
    return value


def _field_default(cls: type, name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return copy.deepcopy(f.default)
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return None


def declared_type(cls: type, path: Sequence[str]) -> Any:
    """The declared type of the field at dotted `path` of config class `cls` (Any when the
    path goes through a mapping field)."""
    owner: Any = cls
    tp: Any = Any
    for part in path:
        if not dataclasses.is_dataclass(owner):
            return Any
        tp = _hints(owner).get(part, Any)
        options = [a for a in typing.get_args(tp) if a is not type(None)] \
            if typing.get_origin(tp) in (typing.Union, types.UnionType) else [tp]
        owner = next((o for o in options if dataclasses.is_dataclass(o)), None)
    return tp


def parse_text(cls: type, path: Sequence[str], text: str) -> Any:
    """A command-line value for the field at `path`: kept as text for a string field (a folder
    named "2024" stays "2024"; "null" empties an optional one), else parsed as YAML."""
    tp = declared_type(cls, path)
    options = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) \
        else (tp,)
    if str in options and all(o in (str, type(None)) for o in options):
        if type(None) in options and text.strip().lower() in ("null", "none", "~"):
            return None
        return text
    return parse_value(text)


def _is_mapping_type(tp: Any) -> bool:
    options = [a for a in typing.get_args(tp) if a is not type(None)] \
        if typing.get_origin(tp) in (typing.Union, types.UnionType) else [tp]
    return any(o is Any or o is dict or typing.get_origin(o) in (dict, Mapping)
               or dataclasses.is_dataclass(o) for o in options)


def set_path(cls: type, data: dict, path: str, value: Any) -> None:
    """Put `value` at dotted `path` of the raw mapping `data` of a `cls` config.

    A path into a mapping field (e.g. `overrides.ga.lr`) starts from that field's default, so
    the other entries of the default are kept; a path into a nested config dataclass goes into
    its mapping of fields, which is checked when the config is built."""
    parts = [p.strip() for p in path.strip().split(".")]
    if not all(parts):
        raise ConfigError("--set", f"must be key.sub=value with a non-empty key, got {path!r}")
    node: Any = data
    owner: Any = cls
    for depth, part in enumerate(parts[:-1]):
        key = ".".join(parts[:depth + 1])
        if part not in node:
            default = _field_default(owner, part) if dataclasses.is_dataclass(owner) else None
            if dataclasses.is_dataclass(owner) and not _is_mapping_type(
                    declared_type(owner, [part])):
                raise ConfigError(key, f"is not a mapping (it holds {_shown(default)}); cannot "
                                       f"set {path.strip()}")
            node[part] = dataclasses.asdict(default) if dataclasses.is_dataclass(default) \
                else (default if isinstance(default, dict) else {})
        elif dataclasses.is_dataclass(node[part]):
            node[part] = dataclasses.asdict(node[part])
        if not isinstance(node[part], dict):
            raise ConfigError(key, f"is not a mapping (it holds {_shown(node[part])}); cannot "
                                   f"set {path.strip()}")
        hint = _hints(owner).get(part) if dataclasses.is_dataclass(owner) else None
        owner = hint if dataclasses.is_dataclass(hint) else None
        node = node[part]
    node[parts[-1]] = value


def apply_set(cls: type, data: dict, assignment: str) -> None:
    """Apply one `key.sub=value` (the value in YAML syntax) to the raw mapping `data` of a
    `cls` config; see `set_path`."""
    if not isinstance(assignment, str) or "=" not in assignment:
        raise ConfigError("--set", f"must be key=value, got {assignment!r}")
    path, text = assignment.split("=", 1)
    parts = [p.strip() for p in path.strip().split(".")]
    set_path(cls, data, path, parse_text(cls, parts, text))


def to_dict(cfg: Any) -> dict:
    """A config as plain JSON data (nested dataclasses as mappings, tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two config mappings."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        keys = list(dict.fromkeys([*old, *new]))
        out: list[str] = []
        for k in keys:
            sub = f"{prefix}.{k}" if prefix else str(k)
            if k not in old or k not in new:
                out.append(sub)
            else:
                out += config_diff(old[k], new[k], sub)
        return out
    return [] if old == new else [prefix or "<config>"]


def load_config_file(path: str) -> dict:
    """The mapping in a YAML or JSON config file (an empty file is an empty mapping), read with
    `yaml.safe_load` (plain data: no `!!python/...` tags). Malformed YAML is a ConfigError
    naming the file, the line and column, and the problem."""
    import yaml

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"config must be a path to a YAML/JSON file, got {type(path).__name__}")
    if not os.path.isfile(path):
        raise ConfigError("config", f"must be a YAML or JSON file, got {str(path)!r} "
                                    "(no such file)")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)  # plain data only: no YAML tags that build Python objects
    except UnicodeDecodeError as exc:
        raise ConfigError("config", f"must be a UTF-8 text file: {path} is not ({exc})") \
            from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(p) for p in (getattr(exc, "context", None),
                                            getattr(exc, "problem", None)) if p) or str(exc)
        raise ConfigError("config", f"must be valid YAML/JSON: {path}{where}: {problem}") \
            from None
    except (ValueError, TypeError, AttributeError, RecursionError) as exc:
        # PyYAML's own constructors: "2001-13-45" (a date with month 13), "!!timestamp x"
        raise ConfigError("config", f"must be valid YAML/JSON: {path}: a value cannot be "
                                    f"read ({type(exc).__name__}: {exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("config", f"must hold a mapping of config keys: {path} holds "
                                    f"{type(data).__name__}")
    return data
