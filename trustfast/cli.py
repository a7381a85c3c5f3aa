"""The `trustfast` command. `info`, `list`, `demo` and `bench`, plus one command per registered
experiment (`trustfast list` prints them), each with the same common flags:

    trustfast <experiment> [--config FILE.yaml] [--set key.sub=value ...] [--out DIR] [--resume]
                           [--device cpu|cuda|cuda:N] [--seed N] [the experiment's own flags]

Values are applied in that order of precedence: the config's defaults, the --config file, the
experiment's own flags, --seed / --device, then every --set.

Bad input is refused before any work starts, with exit code 2 and one line on stderr naming the
flag or config key, what was expected and what came (`trustfast <command>: error: ...`): a
value of the wrong type or out of range, an unknown key, a --config file that is missing, a
folder, not YAML/JSON or not a mapping, `--device cuda` without CUDA, an `--out` that is an
existing file. A ValueError or OSError raised by the run itself (e.g. a dataset too small for
the settings, a missing weights file) is also reported in one line with exit code 2; set
TRUSTFAST_TRACEBACK=1 to get its traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys

from trustfast.config import ConfigError


def _common_flags(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--config", default=None, metavar="FILE",
                   help="YAML/JSON file of config keys (see `--set` for nested keys)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set train.lr=1e-3 (repeatable)")
    p.add_argument("--out", default=os.path.join("runs", name.replace("-", "_")),
                   help="folder for results.json, results.md, plots and checkpoints")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out (refused if its config differs)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N | auto (default)")
    p.add_argument("--seed", default=None, help="seed of everything the run samples")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None,
                   help=argparse.SUPPRESS)  # from the deepspeed launcher; ranks come from env


def _config_keys(cls) -> str:
    """The config's keys and defaults, for --help (a nested config's as key.sub)."""
    import dataclasses

    from trustfast.config import to_dict

    defaults, lines = cls(), []
    for f in dataclasses.fields(cls):
        value = getattr(defaults, f.name)
        if dataclasses.is_dataclass(value):
            lines += [f"  {f.name}.{k} = {v!r}" for k, v in to_dict(value).items()]
        else:
            lines.append(f"  {f.name} = {value!r}")
    return "config keys and defaults (set with --set KEY=VALUE or in --config):\n" + \
        "\n".join(lines)


def _experiment_parser(sub, command: str, exp) -> argparse.ArgumentParser:
    p = sub.add_parser(command, help=exp.help, description=exp.help,
                       epilog=_config_keys(exp.config_cls),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common_flags(p, exp.name)
    for flag in exp.flags:
        p.add_argument(flag.name, dest=f"flag:{flag.key}", default=None, help=flag.help,
                       metavar=flag.metavar or flag.key.split(".")[-1].upper())
    p.set_defaults(experiment=exp.name, _parser=p)
    return p


def config_from_args(exp, args: argparse.Namespace):
    """The experiment's config from --config, its flags, --seed / --device and --set."""
    from trustfast.config import build_config, load_config_file, parse_text, set_path

    data = load_config_file(args.config) if args.config else {}
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError("config", f"keys must be strings (config key names), got {bad[:5]!r} "
                                    f"in {args.config}")
    for flag in exp.flags:
        text = getattr(args, f"flag:{flag.key}")
        if text is not None:
            path = flag.key.split(".")
            value = flag.parse(text) if flag.parse else parse_text(exp.config_cls, path, text)
            set_path(exp.config_cls, data, flag.key, value)
    if args.seed is not None:
        data["seed"] = args.seed
    if args.device is not None:
        data["device"] = args.device
    try:
        return build_config(exp.config_cls, data, sets=args.set)
    except ConfigError as exc:
        if args.config and not exc.key.startswith("--"):
            raise ConfigError(exc.key, f"{exc.message} (config file {args.config})") from None
        raise


def build_parser() -> argparse.ArgumentParser:
    from trustfast.experiments import REGISTRY

    parser = argparse.ArgumentParser(prog="trustfast", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    # the deepspeed launcher passes --local_rank before the command; the rank is read from
    # the environment
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("info", help="versions, devices, and the backend each op uses here")
    sub.add_parser("list", help="the experiments, one line each")

    demo = sub.add_parser("demo", help="every demo experiment on built-in data (what `make demo` "
                          "runs)")
    demo.add_argument("--out", default="runs/demo", help="folder for results and plots")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--resume", action="store_true", help="reuse finished experiments in --out")

    bench = sub.add_parser("bench", help="time the fused ops against their torch peers here")
    bench.add_argument("--sizes", default="1e6,1e7", help="comma-separated parameter counts")
    bench.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    bench.add_argument("--repeats", type=int, default=20, help="timed repetitions per variant")
    bench.add_argument("--out", default=None, help="folder for results.json and a markdown table")
    bench.add_argument("--ops", default=None,
                       help="benches to run, comma-separated: masked_update (default), pgd, "
                            "attention, sequence_nll, hvp, llm_memory, watermark_attack, or all")
    bench.add_argument("--small", action="store_true",
                       help="shrink every bench's problem sizes for a quick look")

    nested: dict[str, argparse._SubParsersAction] = {}
    for exp in REGISTRY.values():
        _experiment_parser(sub, exp.name, exp)
        for alias in exp.aliases:
            words = alias.split()
            if len(words) == 1:
                _experiment_parser(sub, words[0], exp)
                continue
            group, command = words[0], " ".join(words[1:])
            if group not in nested:
                gp = sub.add_parser(group, help=f"{group} experiments ({exp.name}, ...)")
                nested[group] = gp.add_subparsers(dest=f"{group}_command", required=True)
            _experiment_parser(nested[group], command, exp)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "experiment", None):
        return _run(args)
    if args.command == "info":
        from trustfast.info import info_text

        print(info_text())
        return 0
    if args.command == "list":
        from trustfast.experiments import REGISTRY

        width = max(len(n) for n in REGISTRY)
        for name, exp in REGISTRY.items():
            print(f"{name:<{width}}  {exp.help}")
        return 0
    if args.command == "demo":
        from trustfast.demo import run_demo

        sub = _subparser(parser, "demo")
        _check_out(sub, args.out)
        if args.seed < 0:
            sub.error(f"--seed must be an int >= 0, got {args.seed}")
        try:
            run_demo(out=args.out, seed=args.seed, resume=args.resume)
        except (ValueError, OSError) as exc:
            _refuse(sub, exc)
        return 0
    if args.command == "bench":
        from trustfast._bench.cli import check_bench_args, run_bench

        sub = _subparser(parser, "bench")
        try:
            check_bench_args(args)
        except ConfigError as exc:
            sub.error(str(exc))
        return run_bench(args)
    raise AssertionError(args.command)


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of `command` (for its `prog` in error messages)."""
    for action in parser._subparsers._group_actions:
        if command in action.choices:
            return action.choices[command]
    return parser


def _check_out(p: argparse.ArgumentParser, out: str) -> None:
    """Refuse an --out that exists and is not a folder (before any work is done)."""
    if os.path.exists(out) and not os.path.isdir(out):
        p.error(f"--out must be a folder (new or existing), got {out!r}, an existing file")


def _refuse(p: argparse.ArgumentParser, exc: BaseException):
    """Exit 2 with `exc` in one line (a ConfigError names its key); with
    TRUSTFAST_TRACEBACK=1 a non-ConfigError is re-raised with its traceback."""
    if not isinstance(exc, ConfigError) and os.environ.get("TRUSTFAST_TRACEBACK") == "1":
        raise exc
    text = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
    p.error(" ".join(text.split()))


def _run(args: argparse.Namespace) -> int:
    from trustfast.experiments import get_experiment, markdown_table, run_experiment
    from trustfast.utils import resolve_device

    exp = get_experiment(args.experiment)
    p = args._parser
    _check_out(p, args.out)
    try:
        cfg = config_from_args(exp, args)
        resolve_device(cfg.device)  # CUDA asked for where there is none: refused now
    except (ValueError, OSError) as exc:  # a ConfigError (a ValueError) names its key
        _refuse(p, exc)
    try:
        result = run_experiment(exp, cfg, args.out, resume=args.resume)
    except (ValueError, OSError) as exc:
        _refuse(p, exc)
    print(markdown_table(result.rows, exp.columns))
    files = ["results.json", "results.md"]
    if exp.plot is not None:
        files += sorted(n for n in os.listdir(args.out) if n.endswith(".png"))
    print(f"[trustfast {exp.name}] wrote {', '.join(os.path.join(args.out, f) for f in files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
