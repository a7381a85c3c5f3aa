"""trustfast.config: coercion of YAML / --set values, nested configs, errors that name the key,
config diffs; and the experiment layer's files (results.json layout, permissions, provenance,
resume refusals)."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field

import pytest

from trustfast.config import (
    Config,
    ConfigError,
    build_config,
    config_diff,
    load_config_file,
    to_dict,
)
from trustfast.experiments import (
    Experiment,
    ExperimentConfig,
    Result,
    markdown_table,
    run_experiment,
)


@dataclass
class Inner(Config):
    lr: float = 0.1
    steps: int = 3
    name: str = "x"

    def check(self) -> None:
        self.at_least("lr", 0, strict=True)
        self.at_least("steps", 1)


@dataclass
class Outer(Config):
    methods: list[str] = field(default_factory=lambda: ["a"])
    eps: list[float] = field(default_factory=lambda: [0.5])
    flag: bool = False
    maybe: int | None = None
    folder: str | None = None
    inner: Inner = field(default_factory=lambda: Inner(steps=7))
    overrides: dict[str, dict] = field(default_factory=lambda: {"keep": {"v": 1}})

    def check(self) -> None:
        self.subset("methods", ("a", "b", "c"))


def test_yaml_strings_are_coerced_to_the_declared_types(tmp_path):
    path = tmp_path / "c.yaml"
    # PyYAML reads 1e-3 as the string "1e-3": the declared float type makes it a number
    path.write_text("inner: {lr: 1e-3, steps: '4'}\nflag: 'true'\neps: 2\nmethods: a,b\n")
    cfg = build_config(Outer, load_config_file(str(path)))
    assert cfg.inner.lr == 1e-3 and isinstance(cfg.inner.lr, float)
    assert cfg.inner.steps == 4 and cfg.flag is True
    assert cfg.eps == [2.0] and cfg.methods == ["a", "b"]
    # a partial nested mapping starts from the field's own default (steps=7), not the class's
    assert build_config(Outer, {"inner": {"lr": 0.5}}).inner.steps == 7


@pytest.mark.parametrize("data, key, pattern", [
    ({"inner": {"lr": "fast"}}, "inner.lr", "must be a number, got 'fast'"),
    ({"inner": {"steps": 2.5}}, "inner.steps", "must be an int, got 2.5"),
    ({"inner": {"steps": 0}}, "inner.steps", "must be >= 1, got 0"),
    ({"inner": {"name": 3}}, "inner.name", "must be a string, got 3"),
    ({"flag": 1}, "flag", "must be a bool"),
    ({"methods": ["a", "z"]}, "methods", "unknown: ['z']"),
    ({"eps": ["x"]}, "eps[0]", "must be a number"),
    ({"inner": {"lrr": 1}}, "inner", "unknown config keys ['lrr']"),
    ({"nope": 1}, "", "unknown config keys ['nope']"),
    ({"maybe": "two"}, "maybe", "must be an int or None"),
])
def test_errors_name_the_key_the_expectation_and_the_value(data, key, pattern):
    with pytest.raises(ConfigError) as err:
        build_config(Outer, data)
    assert err.value.key == key
    assert pattern in str(err.value) and str(err.value).startswith(key)


def test_set_paths_merge_into_defaults_and_keep_text_for_string_fields():
    cfg = build_config(Outer, {}, sets=["inner.lr=2e-2", "overrides.new.lr=1e-4",
                                        "folder=2024", "maybe=null", "eps=[1, 2]"])
    assert cfg.inner.lr == 0.02 and cfg.inner.steps == 7
    assert cfg.overrides == {"keep": {"v": 1}, "new": {"lr": 1e-4}}
    assert cfg.folder == "2024" and cfg.maybe is None and cfg.eps == [1.0, 2.0]
    with pytest.raises(ConfigError, match="must be key=value"):
        build_config(Outer, {}, sets=["inner.lr"])
    with pytest.raises(ConfigError, match="methods is not a mapping"):
        build_config(Outer, {}, sets=["methods.x=1"])
    with pytest.raises(ConfigError, match=r"unknown config keys \['zz'\]"):
        build_config(Outer, {}, sets=["inner.zz=1"])


def test_config_diff_lists_the_dotted_keys_that_differ():
    a, b = to_dict(Outer()), to_dict(build_config(Outer, {}, sets=["inner.lr=0.2", "flag=true"]))
    assert sorted(config_diff(a, b)) == ["flag", "inner.lr"]
    assert config_diff(a, a) == []


def test_config_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config_file(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="list.yaml holds list"):
        load_config_file(str(bad))


@dataclass
class ToyConfig(ExperimentConfig):
    n: int = 3
    scale: float = 1.0

    def check(self) -> None:
        super().check()
        self.at_least("n", 1)


def _toy_run(cfg: ToyConfig, out: str, resume: bool) -> Result:
    calls = os.path.join(out, "calls")
    with open(calls, "a") as f:
        f.write("x")
    return Result({}, [{"i": i, "value": i * cfg.scale} for i in range(cfg.n)],
                  {"resolved": {"derived": cfg.n * 2}})


def _toy_plot(result: Result) -> dict:
    from trustfast.experiments.plots import lines

    return {"toy.png": lines({"v": ([r["i"] for r in result.rows],
                                    [r["value"] for r in result.rows])}, "i", "value")}


TOY = Experiment("toy", ToyConfig, _toy_run, _toy_plot, help="a toy")


def test_run_writes_the_three_files_with_provenance_and_ordinary_permissions(tmp_path):
    out = str(tmp_path / "run")
    result = run_experiment(TOY, ToyConfig(n=2, device="cpu"), out)
    saved = json.load(open(os.path.join(out, "results.json")))
    assert set(saved) == {"config", "provenance", "rows"}
    assert saved["rows"] == [{"i": 0, "value": 0.0}, {"i": 1, "value": 1.0}] == result.rows
    prov = saved["provenance"]
    for key in ("trustfast", "python", "packages", "device", "threads", "world_size",
                "started", "ended", "resolved_config"):
        assert key in prov, key
    assert prov["packages"]["torch"] and prov["device"] == "cpu" and prov["world_size"] == 1
    assert prov["resolved_config"]["n"] == 2 and prov["resolved_config"]["derived"] == 4
    assert prov["git_commit"] is None or len(prov["git_commit"].split("+")[0]) == 40
    for name in ("results.json", "results.md", "toy.png"):
        mode = stat.S_IMODE(os.stat(os.path.join(out, name)).st_mode)
        assert mode == 0o666 & ~_umask(), (name, oct(mode))
    assert "| i | value |" in open(os.path.join(out, "results.md")).read()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_resume_reuses_a_finished_run_and_refuses_a_changed_config(tmp_path):
    out = str(tmp_path / "run")
    run_experiment(TOY, ToyConfig(n=2, device="cpu"), out)
    again = run_experiment(TOY, ToyConfig(n=2, device="cpu"), out, resume=True)
    assert again.rows[1]["value"] == 1.0
    assert open(os.path.join(out, "calls")).read() == "x"  # not run a second time
    # where it runs may change on resume; what it computes may not
    run_experiment(TOY, ToyConfig(n=2, device="auto"), out, resume=True)
    with pytest.raises(ConfigError) as err:
        run_experiment(TOY, ToyConfig(n=3, scale=2.0, device="cpu"), out, resume=True)
    message = str(err.value)
    assert "another config" in message and "n (2 -> 3)" in message
    assert "scale (1.0 -> 2.0)" in message


def test_device_errors_name_the_key():
    with pytest.raises(ConfigError, match="device must be 'auto', 'cpu'"):
        ToyConfig(device="gpu0")
    import torch

    if not torch.cuda.is_available():
        from trustfast.experiments import resolve_device

        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


def test_markdown_table_formats_cells_and_skips_nested_values():
    table = markdown_table([{"a": 0.123456, "b": None, "c": 1e-5, "d": [1, 2], "e": True}])
    assert table.splitlines()[0] == "| a | b | c | e |"
    assert table.splitlines()[2] == "| 0.1235 | - | 1.00e-05 | yes |"


def test_results_json_is_strict_json_with_non_finite_values_as_null(tmp_path):
    """A diverged loss (NaN) or an undefined metric (inf) must not make results.json invalid
    JSON: it is null there, listed in provenance.non_finite, and "nan" / "inf" in results.md."""
    from trustfast.experiments import write_results

    out = str(tmp_path / "run")
    rows = [{"method": "a", "loss": float("nan"), "ratio": float("inf"), "none": None},
            {"method": "b", "loss": 0.5, "ratio": -float("inf"), "none": None}]
    write_results(out, Result({"lr": float("nan")}, rows, {"history": [1.0, float("nan")]}))

    def refuse(literal):
        raise ValueError(f"non-standard JSON literal {literal}")

    saved = json.loads(open(os.path.join(out, "results.json")).read(), parse_constant=refuse)
    assert saved["rows"][0] == {"method": "a", "loss": None, "ratio": None, "none": None}
    assert saved["config"] == {"lr": None} and saved["provenance"]["history"] == [1.0, None]
    assert saved["provenance"]["non_finite"] == [
        "config.lr = nan", "provenance.history[1] = nan", "rows[0].loss = nan",
        "rows[0].ratio = inf", "rows[1].ratio = -inf"]
    lines = open(os.path.join(out, "results.md")).read().splitlines()
    assert lines[2] == "| a | nan | inf | - |" and lines[3] == "| b | 0.5 | -inf | - |"


def test_damaged_yaml_names_the_file_line_and_column(tmp_path):
    bad = tmp_path / "run.yaml"
    bad.write_text("seed: 0\nmethods: [a, b\nflag: true\n")
    with pytest.raises(ConfigError, match=r"run.yaml line 3, column 5: .*expected ','"):
        load_config_file(str(bad))
    bad.write_text("when: 2024-13-01\n")  # PyYAML's date constructor raises ValueError
    with pytest.raises(ConfigError, match="run.yaml: a value cannot be read"):
        load_config_file(str(bad))


def test_range_helpers_refuse_strings_instead_of_comparing_them():
    """A field typed Any (or a mapping value) holding "1e-3" fails the check naming the key,
    not with "'>' not supported between 'str' and 'int'"."""

    @dataclass
    class Loose(Config):
        lr: object = 0.1

        def check(self) -> None:
            self.at_least("lr", 0, strict=True)
            self.within("lr", 0, 1)

    assert Loose(lr=0.5).lr == 0.5
    with pytest.raises(ConfigError, match="lr must be a number > 0, got '1e-3'"):
        Loose(lr="1e-3")
