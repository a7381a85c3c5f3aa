"""Configs refuse bad values at creation, naming the key (issue 17; T3 of DESIGN.md).

Every registered experiment's config class (trustfast.experiments.registry), its nested
config dataclasses and the LLM run's `unlearn` mapping (UnlearnConfig's fields) get: wrong
types (words, lists, mappings for numbers and bools), numbers written as YAML 1.1 leaves them
("1e-3", a string), out-of-range numbers (NaN for a float, -1e9 for a count), unknown keys,
non-string keys and damaged YAML files. Each is a ConfigError naming the key (or the file), or
a correct coercion; never a TypeError from deep inside a run."""

from __future__ import annotations

import dataclasses
import math
import types
import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import trustfast.experiments  # noqa: F401  (registers the experiments)
from trustfast.config import ConfigError, _hints, build_config, load_config_file
from trustfast.experiments.registry import REGISTRY

NAMES = sorted(REGISTRY)
FUZZ = settings(max_examples=25, deadline=None)


def _options(tp) -> list:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(tp) if a is not type(None)]
    return [tp]


def leaf_fields(cls, prefix: str = "") -> list[tuple[str, list, typing.Any]]:
    """(dotted key, declared type options, default) of every scalar field, nested included."""
    out = []
    hints = _hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        opts = _options(hints[f.name])
        sub = next((o for o in opts if dataclasses.is_dataclass(o)), None)
        value = getattr(defaults, f.name)
        if sub is not None:  # an optional nested config off by default (zero) is fuzzed too
            out += leaf_fields(sub, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", opts, value))
    if cls.__name__ == "LLMUnlearnConfig":  # the `unlearn` mapping holds UnlearnConfig fields
        from trustfast.llm.train import UnlearnConfig

        out += [(k, o, d) for k, o, d in leaf_fields(UnlearnConfig, "unlearn.")
                if k != "unlearn.method"]
    return out


def nested(key: str, value) -> dict:
    data = value
    for part in reversed(key.split(".")):
        data = {part: data}
    return data


def numeric(opts) -> bool:
    return any(o in (int, float) for o in opts) and not any(o in (str, bool) for o in opts)


FIELDS = {name: leaf_fields(REGISTRY[name].config_cls) for name in NAMES}
NUMERIC = [(n, k, o, d) for n in NAMES for k, o, d in FIELDS[n] if numeric(o)]
FLOATS = [(n, k, d) for n, k, o, d in NUMERIC if float in o]
INTS = [(n, k, d) for n, k, o, d in NUMERIC if int in o and float not in o]
BOOLS = [(n, k) for n in NAMES for k, o, _ in FIELDS[n] if o == [bool]]

# Reported to the owners of these config classes (files outside this section); strict, so
# the entry must go once the check is added.
KNOWN_GAPS: set[tuple[str, str]] = set()


def _gap(name: str, key: str):
    marks = [pytest.mark.xfail(strict=True, reason="reported: no range check")] \
        if (name, key) in KNOWN_GAPS else []
    return pytest.param(name, key, marks=marks, id=f"{name}:{key}")


def _build(name: str, data: dict):
    return build_config(REGISTRY[name].config_cls, data)


def _value(cfg, key: str):
    for part in key.split("."):
        cfg = cfg[part] if isinstance(cfg, dict) else getattr(cfg, part)
    return cfg


def test_every_experiment_has_fields_to_fuzz():
    assert len(NAMES) >= 8 and len(FLOATS) > 20 and len(INTS) > 20 and BOOLS


@pytest.mark.parametrize("name", NAMES)
def test_defaults_build(name):
    _build(name, {})


WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8).filter(
    lambda w: w not in ("inf", "nan", "infinity", "true", "false", "yes", "no", "on", "off",
                        "null", "none", "e"))
NOT_A_NUMBER = st.one_of(WORDS, st.lists(st.integers(0, 9), min_size=2, max_size=3),
                         st.dictionaries(WORDS, st.integers(0, 9), min_size=1, max_size=2),
                         st.just(True))


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(data=st.data())
def test_a_wrong_type_for_a_number_is_a_config_error_naming_the_key(name, data):
    fields = [(k, o) for n, k, o, _ in NUMERIC if n == name]
    key, _ = data.draw(st.sampled_from(fields), label="key")
    value = data.draw(NOT_A_NUMBER, label="value")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _build(name, nested(key, value))


@pytest.mark.parametrize("name", sorted({n for n, _ in BOOLS}))
@FUZZ
@given(data=st.data())
def test_a_wrong_value_for_a_bool_is_a_config_error_naming_the_key(name, data):
    key = data.draw(st.sampled_from([k for n, k in BOOLS if n == name]), label="key")
    value = data.draw(st.one_of(WORDS, st.integers(), st.floats(allow_nan=False)), label="value")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _build(name, nested(key, value))


@pytest.mark.parametrize("name,key,default", [pytest.param(*f, id=f"{f[0]}:{f[1]}")
                                              for f in FLOATS if f[2] is not None])
def test_a_float_written_as_yaml_leaves_it_coerces(name, key, default):
    """PyYAML reads 1e-3 (no dot in the mantissa) as the string "1e-3": it is coerced."""
    for text in (f"{default:.17e}", repr(float(default)), f" {default!r} "):
        cfg = _build(name, nested(key, text))
        got = _value(cfg, key)
        assert isinstance(got, float) and got == float(default), (text, got)


@pytest.mark.parametrize("name,key,default", [pytest.param(*f, id=f"{f[0]}:{f[1]}")
                                              for f in INTS if f[2] is not None])
def test_an_int_written_as_text_coerces_and_a_fraction_is_refused(name, key, default):
    cfg = _build(name, nested(key, str(default)))
    assert _value(cfg, key) == default and isinstance(_value(cfg, key), int)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        _build(name, nested(key, default + 0.5))


@pytest.mark.parametrize("name,key", [_gap(n, k) for n, k, _ in FLOATS])
def test_nan_and_inf_are_refused_for_every_float(name, key):
    for bad in (math.nan, "nan", -math.inf):
        with pytest.raises(ConfigError, match=key.split(".")[-1]):
            _build(name, nested(key, bad))


@pytest.mark.parametrize("name,key", [_gap(n, k) for n, k, _ in INTS])
def test_a_huge_negative_count_is_refused_for_every_int(name, key):
    with pytest.raises(ConfigError, match=key.split(".")[-1]):
        _build(name, nested(key, -10**9))


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(key=WORDS)
def test_unknown_keys_are_refused_naming_them(name, key):
    known = {f.name for f in dataclasses.fields(REGISTRY[name].config_cls)}
    if key in known:
        return
    with pytest.raises(ConfigError, match=f"unknown config keys \\['{key}'\\]"):
        _build(name, {key: 1})
    nested_fields = [k.rsplit(".", 1)[0] for k, _, _ in FIELDS[name] if "." in k]
    if nested_fields:  # a nested config (or the `unlearn` mapping) names its own prefix
        prefix = nested_fields[0]
        with pytest.raises(ConfigError, match=f"in {prefix}"):
            _build(name, nested(f"{prefix}.{key}zz", 1))


@pytest.mark.parametrize("name", NAMES)
def test_non_string_keys_are_refused(name):
    with pytest.raises(ConfigError, match="keys must be strings"):
        _build(name, {1: 2, "seed": 0})


def test_the_issue_reproducers():
    from trustfast.experiments.llm import LLMUnlearnConfig
    from trustfast.experiments.watermark import WatermarkAttackConfig

    assert LLMUnlearnConfig(unlearn={"lr": "1e-3"}).unlearn["lr"] == 1e-3  # stored coerced
    assert WatermarkAttackConfig(kappa="2e-2").kappa == 0.02
    with pytest.raises(ConfigError, match="kappa must be >= 0"):
        WatermarkAttackConfig(kappa="-2e-2")
    with pytest.raises(ConfigError, match="unlearn.lr must be > 0"):
        LLMUnlearnConfig(unlearn={"lr": -1})
    with pytest.raises(ConfigError, match="overrides.npo.weight_decay must be >= 0"):
        LLMUnlearnConfig(methods=["npo"], overrides={"npo": {"weight_decay": "-1e-2"}})


@pytest.mark.parametrize("text,where", [
    ("a: [1\nb: 2\n", "line 2, column 2"),
    ("seed: 0\n  bad indent: 1\n", "line 2"),
    ("seed: 2001-13-45\n", "month must be in 1..12"),
    ("seed: !!python/object/apply:os.system [echo hi]\n", "line 1"),
    ("seed: !!timestamp nope\n", "cannot be read"),
])
def test_malformed_yaml_is_a_config_error_naming_the_file_and_line(tmp_path, text, where):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="run.yaml") as err:
        load_config_file(str(path))
    assert where in str(err.value)
    assert "\n" not in str(err.value)  # one line, not a parser traceback


@FUZZ
@given(text=st.text(max_size=60))
def test_any_text_is_a_mapping_or_a_config_error_naming_the_file(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("yaml") / "c.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        data = load_config_file(str(path))
    except ConfigError as exc:
        assert "c.yaml" in str(exc)
        return
    assert isinstance(data, dict)
    try:
        _build("llm-unlearn", data)
    except ConfigError:
        pass
