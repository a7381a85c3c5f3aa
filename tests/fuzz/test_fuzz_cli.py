"""Every flag of every `trustfast` command refuses bad values cleanly (issue 17).

The commands and their flags are read from the argparse parsers that `trustfast.cli` builds
(experiments, their aliases such as `backdoor identify`, `demo`, `bench`), not listed here. For
each flag, values of the wrong kind or out of range (words for numbers, negative counts, NaN,
unknown `--set` keys, a `--config` that is missing / a folder / damaged YAML / a YAML list /
non-string keys, `--device cuda` without CUDA, an `--out` that is an existing file) must give
exit code 2, exactly one `error:` line on stderr that names the flag or its config key, and no
Python traceback. The CLI is called in-process (`trustfast.cli.main`); one subprocess checks
the same at the process level.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import types
import typing

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trustfast.experiments
from trustfast.cli import build_parser, main
from trustfast.config import declared_type
from trustfast.experiments.registry import REGISTRY, Result

FUZZ = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
NO_CUDA = not torch.cuda.is_available()
# flags whose text is a free name (a field of the user's QA files): no value is wrong alone
FREE_TEXT_KEYS = {"question_key", "answer_key"}


def _commands() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(the words of the command, its parser) for every leaf command of `trustfast`."""
    out = []

    def walk(words: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out.append((words, parser))
            return
        for name, child in subs[0].choices.items():
            walk((*words, name), child)

    walk((), build_parser())
    return out


COMMANDS = _commands()
EXPERIMENT_COMMANDS = [(w, p) for w, p in COMMANDS if p.get_default("experiment")]


def _flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The flags a user sets (not --help, not the launcher's hidden --local_rank)."""
    return [a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS
            and not isinstance(a, argparse._HelpAction)]


def _options(tp) -> tuple:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return tuple(a for a in typing.get_args(tp) if a is not type(None))
    return (tp,)


def _kind(tp) -> str:
    """int | float | numbers (a list of them) | str | other, of a declared config type."""
    options = _options(tp)
    if options in ((int,), (float,)):
        return options[0].__name__
    if len(options) == 1 and typing.get_origin(options[0]) is list \
            and typing.get_args(options[0]) in ((int,), (float,)):
        return "numbers"
    if options == (str,) or typing.get_origin(options[0]) is list:
        return "str"
    return "other"


def _experiment_flag_values(parser: argparse.ArgumentParser, action: argparse.Action
                            ) -> list[tuple[str, str]]:
    """(bad value, what the error must name) for an experiment's own flag."""
    exp = REGISTRY[parser.get_default("experiment")]
    key = action.dest.removeprefix("flag:")
    names = f"({action.option_strings[0]}|{key})"
    kind = _kind(declared_type(exp.config_cls, key.split(".")))
    if kind in ("int", "float"):
        return [("abc", names), ("-5", names), ("1e400", names)] + \
            ([("nan", names)] if kind == "float" else [])
    if kind == "numbers":
        return [("abc", names), ("-5", names), ("nan", names)]
    if key in FREE_TEXT_KEYS:
        return []
    return [("/no/such/thing", names)]  # a choice or a file / folder / spec that is not there


def _cases() -> list:
    cases = []
    for words, parser in COMMANDS:
        for action in _flags(parser):
            flag = action.option_strings[0]
            if isinstance(action, argparse._StoreTrueAction):
                continue
            if action.dest.startswith("flag:"):
                values = _experiment_flag_values(parser, action)
            elif flag == "--config":
                values = [(v, "config") for v in ("@missing", "@folder", "@damaged", "@list",
                                                  "@intkeys")]
            elif flag == "--set":
                values = [("no_such_key=1", "no_such_key"), ("seed", "--set"),
                          ("seed=abc", "seed"), (".=1", "--set")]
            elif flag == "--out":
                values = [("@file", "--out")]
            elif flag == "--device":
                values = [("tpu", "device")] + ([("cuda", "device")] if NO_CUDA else [])
            elif flag in ("--seed", "--repeats"):
                values = [("abc", flag.lstrip("-")), ("-1", flag.lstrip("-"))]
            elif flag == "--sizes":
                values = [("ten", "--sizes"), ("-1", "--sizes"), ("inf", "--sizes")]
            elif flag == "--ops":
                values = [("nope", "--ops")]
            else:
                raise AssertionError(f"{' '.join(words)} {flag}: no bad values known; add them")
            cases += [pytest.param(words, flag, v, n, id=f"{'-'.join(words)}{flag}={v}")
                      for v, n in values]
    return cases


def _value(text: str, tmp_path) -> str:
    """The value for a '@' placeholder: paths made in `tmp_path`."""
    files = {"@damaged": "seed: [1, 2\n", "@list": "- seed\n- 1\n", "@intkeys": "1: 2\n",
             "@file": "not a folder\n"}
    if text == "@missing":
        return str(tmp_path / "missing.yaml")
    if text == "@folder":
        return str(tmp_path)
    if text in files:
        path = tmp_path / f"{text[1:]}.yaml"
        path.write_text(files[text])
        return str(path)
    return text


def refused(argv: list[str], capsys) -> str:
    """The one error line of a refused command line (exit code 2, no traceback)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, (argv, exc.value.code, err)
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err
    return lines[0]


def test_every_command_is_enumerated():
    names = {" ".join(w) for w, _ in COMMANDS}
    assert {"info", "list", "demo", "bench", "backdoor identify"} <= names
    assert set(REGISTRY) <= names
    assert len(_cases()) > 150


@pytest.mark.parametrize("words, flag, value, names", _cases())
def test_a_bad_flag_value_is_refused_naming_it(words, flag, value, names, tmp_path, capsys,
                                               monkeypatch):
    import re

    monkeypatch.chdir(tmp_path)
    argv = [*words, flag, _value(value, tmp_path)]
    if flag != "--out" and words[0] not in ("info", "list"):
        argv += ["--out", str(tmp_path / "out")]
    line = refused(argv, capsys)
    assert re.search(names, line), line


def _numeric_keys() -> list[tuple[str, str, str]]:
    """(experiment, dotted key, int | float) of every top-level or nested numeric key."""
    import dataclasses

    out = []

    def walk(name: str, cls, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            tp = typing.get_type_hints(cls)[f.name]
            sub = next((o for o in _options(tp) if dataclasses.is_dataclass(o)), None)
            if sub is not None:
                walk(name, sub, f"{prefix}{f.name}.")
            elif _kind(tp) in ("int", "float"):
                out.append((name, prefix + f.name, _kind(tp)))

    for name, exp in sorted(REGISTRY.items()):
        walk(name, exp.config_cls, "")
    return out


NUMERIC_KEYS = _numeric_keys()


@FUZZ
@given(case=st.sampled_from(NUMERIC_KEYS),
       text=st.one_of(st.text(alphabet="0123456789-+.eE naifNI_x,[]", max_size=8),
                      st.sampled_from(["1e400", "-1e400", "nan", "inf", "1_000", "0x10", "1.5",
                                       "[1]", "{a: 1}", "true", "~", ""])))
def test_drawn_text_for_a_numeric_key_is_taken_or_refused_naming_it(case, text, tmp_path,
                                                                     capsys, monkeypatch):
    """`--set key=<drawn text>`: either a config whose value has the declared type (and is
    finite), or exit 2 naming the key; never a traceback. Accepted configs are not run."""
    name, key, kind = case
    seen = []

    def record(exp, cfg, out, resume=False):
        seen.append(cfg)
        os.makedirs(out, exist_ok=True)
        return Result({}, [])

    monkeypatch.setattr(trustfast.experiments, "run_experiment", record)
    argv = [name, "--set", f"{key}={text}", "--device", "cpu", "--out", str(tmp_path / "o")]
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code == 0:
        (cfg,) = seen
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        expected = int if kind == "int" else float
        assert type(value) is expected and math.isfinite(value), (text, value)
    else:
        assert code == 2, (text, code, err)
        (line,) = [ln for ln in err.splitlines() if "error:" in ln]
        assert key in line or key.split(".")[0] in line, (text, line)


def test_bad_flags_are_refused_by_the_process_without_a_traceback(tmp_path):
    """At the process level too: exit code 2, one error line, no traceback."""
    file = tmp_path / "a-file"
    file.write_text("x")
    res = subprocess.run([sys.executable, "-m", "trustfast", "robustness", "--out", str(file)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    (line,) = [ln for ln in res.stderr.splitlines() if "error:" in ln]
    assert "--out must be a folder" in line


def test_a_run_time_value_error_is_one_line_unless_asked(tmp_path, capsys, monkeypatch,
                                                         one_intra_op_thread):
    """A ValueError from inside the run (here: built-in test faces too few for the pairs
    asked for) is one error line with exit code 2; TRUSTFAST_TRACEBACK=1 re-raises it."""
    argv = ["watermark-attack", "--device", "cpu", "--out", str(tmp_path / "o"),
            "--set", "train_identities=4", "--set", "train_images=2", "--set", "image_size=16",
            "--set", "test_identities=3", "--set", "test_images=2", "--set", "pairs_count=8"]
    line = refused(argv, capsys)
    assert "ValueError: num_pairs=16" in line, line
    monkeypatch.setenv("TRUSTFAST_TRACEBACK", "1")
    with pytest.raises(ValueError, match="num_pairs=16"):
        main(argv)


def test_diffusion_model_that_is_no_folder_is_refused_at_config_time(tmp_path):
    """Not handed to diffusers' from_pretrained, which would look a name up on the Hub."""
    from trustfast.experiments.diffusion_attention import DiffusionAttentionConfig

    with pytest.raises(ValueError, match="model must be 'tiny' or an existing local"):
        DiffusionAttentionConfig(model=str(tmp_path / "no-such-unet"))
    assert DiffusionAttentionConfig(model=str(tmp_path)).model == str(tmp_path)
