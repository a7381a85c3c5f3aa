"""`trustfast bench`: time trustfast's ops against their peers on this machine, through the
benchmark registry (`trustfast._bench.registry`).

By default the masked-update ops (masked_sgd_step, masked_adamw_step) at `--sizes`; `--ops`
picks other benches by name (`pgd`, `attention`, `sequence_nll`, `hvp`, `llm_memory`,
`watermark_attack`, or `all`), each at its own sizes (`--small` shrinks them for a quick look).
The backend is the automatic one (C++ on the CPU, Triton on CUDA).
"""

from __future__ import annotations

import json
import os
import sys

import torch

from trustfast._bench import registry
from trustfast._bench.timing import machine, matmul_ceiling
from trustfast.checkpoint import save_json, save_text
from trustfast.config import ConfigError

MATMUL_N = {"cuda": 8192, "cpu": 1024}


def parse_sizes(text: str) -> list[int]:
    """'1e6,1e7' -> [1000000, 10000000]; a ConfigError (a ValueError) naming --sizes for
    anything but positive finite counts."""
    try:
        sizes = [int(float(s)) for s in text.split(",") if s.strip()]
    except (ValueError, OverflowError):  # "ten"; "inf" / "1e400" overflow int()
        raise ConfigError("--sizes", f"must be comma-separated numbers like 1e6,1e7, got "
                                     f"{text!r}") from None
    if not sizes or min(sizes) < 1:
        raise ConfigError("--sizes", f"must list positive parameter counts, got {text!r}")
    return sizes


def bench_device(text: str | None) -> torch.device:
    """The device of --device (default: CUDA when present); CUDA asked for where there is none
    is a ConfigError naming --device."""
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError("--device", f"must be cpu, cuda or cuda:N, got {text!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device", f"is {text!r} but CUDA is not available here; use "
                                      "--device cpu")
    return device


def check_bench_args(args) -> None:
    """Refuse bad flags before any timing: each error is a ConfigError naming its flag."""
    parse_sizes(args.sizes)
    bench_device(args.device)
    if args.repeats < 1:
        raise ConfigError("--repeats", f"must be >= 1, got {args.repeats}")
    try:
        registry.parse_names(getattr(args, "ops", None))
    except ValueError as exc:
        raise ConfigError("--ops", str(exc).removeprefix("--ops ")) from None
    out = getattr(args, "out", None)
    if out is not None and os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError("--out", f"must be a folder (new or existing), got {out!r}, an "
                                   "existing file")


def _cell(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _size(r: dict) -> str:
    named = r.get("shape") or r.get("workload") or r.get("case")
    if named:
        return str(named)
    if "faces" in r:
        return f"{r['faces']} faces x {r.get('messages', '?')} messages"
    return f"{r['params']:.0e}" if "params" in r else ""


def _rate(r: dict) -> str:
    for key, unit in (("GB/s", "GB/s"), ("TFLOP/s", "TFLOP/s"), ("tokens_per_s", "tok/s"),
                      ("examples/s", "ex/s"), ("images/s", "img/s")):
        if key in r:
            return f"{r[key]:.4g} {unit}"
    return ""


def markdown_table(rows: list[dict]) -> str:
    """One line per row: op, size, variant, ms, rate, % of its floor, trustfast speed-up (this
    row's time over trustfast's), or the reason a row has no time."""
    head = "| op | size | variant | ms | rate | % of floor | trustfast speed-up |"
    lines = [head, "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        op = r.get("op") or r.get("bench") or ""
        variant = r.get("variant", "")
        if "mode" in r:
            variant = f"{r['mode']}: {variant}"
        floor = r.get("% of copy", r.get("% of matmul"))
        speedup = r.get("trustfast speed-up", r.get("speed-up vs torch hvp"))
        note = r.get("error") or r.get("skipped") or r.get("unsupported")
        ms = _cell(r.get("ms", r.get("jvp_ms")), ".3f")
        if "jvp / forward" in r:
            variant = f"JVP: {r['jvp / forward']:.2f}x the forward"
        if note is not None:
            ms = note.replace("|", "/")
        lines.append(f"| {op} | {_size(r)} | {variant} | {ms} | {_rate(r)} | "
                     f"{_cell(floor, '.0f')}{'%' if floor is not None else ''} | "
                     f"{_cell(speedup, '.2f')}{'x' if speedup is not None else ''} |")
    return "\n".join(lines)


def run_bench(args) -> int:
    """args: sizes, device, repeats, out; optional ops ('masked_update,pgd' or 'all') and
    small (shrink every bench's sizes). Bad flags are a ConfigError naming the flag (see
    `check_bench_args`), raised before anything is timed; results are written atomically."""
    check_bench_args(args)
    sizes = parse_sizes(args.sizes)
    device = bench_device(args.device)
    names = registry.parse_names(getattr(args, "ops", None))
    small = bool(getattr(args, "small", False))
    ceilings, rows = {}, []
    if "attention" in names:  # its floor: the matmul rate, in the dtype its timings use
        dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
        ceiling = matmul_ceiling(MATMUL_N.get(device.type, 1024), device, min(args.repeats, 10),
                                 dtype)
        ceilings["matmul TFLOP/s"] = ceiling["TFLOP/s"]
        print(f"matmul ceiling: {ceiling['TFLOP/s']:.3g} TFLOP/s ({ceiling['item']}, "
              f"{ceiling['dtype']})")
    for name in names:
        options = {"sizes": sizes} if name == "masked_update" else {}
        sections = registry.load(name).timings(device, args.repeats, small=small,
                                               ceilings=ceilings, **options)
        for r in registry.run(sections):
            if "traceback" in r:
                print(r.pop("traceback"), file=sys.stderr)
            if "op" not in r:
                r.setdefault("bench", name)
            rows.append(r)
    table = markdown_table(rows)
    print(f"device: {device}  ({json.dumps(machine())})")
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        config = {"ops": list(names), "sizes": sizes, "device": str(device),
                  "repeats": args.repeats, "small": small, "ceilings": ceilings, **machine()}
        save_json(os.path.join(args.out, "results.json"), {"config": config, "rows": rows})
        save_text(os.path.join(args.out, "results.md"), table + "\n")
    return 1 if any("error" in r for r in rows) else 0
