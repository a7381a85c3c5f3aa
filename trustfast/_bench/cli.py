"""`trustfast bench`: time the fused masked update against its torch peers on this machine."""

from __future__ import annotations

import datetime
import json
import os
import platform

import torch

from trustfast._bench import masked_update as mu
from trustfast._bench.timing import copy_bandwidth, median_time


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(float(s)) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(
            f"--sizes must be comma-separated numbers like 1e6,1e7, got {text!r}"
        ) from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--sizes must list positive parameter counts, got {text!r}")
    return sizes


def measure(sizes: list[int], device: torch.device, repeats: int, backend: str | None = None,
            dtype: torch.dtype = torch.float32) -> list[dict]:
    """One row per (op, size, variant): ms, GB/s, % of copy bandwidth, speed-up of trustfast."""
    rows = []
    for n in sizes:
        for op, make, nbytes in (("masked_sgd_step", mu.sgd_variants, mu.sgd_bytes),
                                 ("masked_adamw_step", mu.adamw_variants, mu.adamw_bytes)):
            pb = mu.make_problem(n, device, dtype)
            moved = nbytes(pb)
            floor = copy_bandwidth(moved, device, repeats)
            variants = make(pb, backend)
            times = {name: median_time(fn, device, repeats) for name, fn in variants.items()}
            ours = times["trustfast fused"]
            for name, seconds in times.items():
                rows.append({
                    "op": op, "params": n, "dtype": str(dtype).removeprefix("torch."),
                    "variant": name, "ms": seconds * 1e3,
                    # Peers move more bytes than the fused kernel; GB/s counts the bytes the op
                    # must move (the fused kernel's), so it reads as useful bandwidth.
                    "GB/s": moved / seconds / 1e9, "copy GB/s": floor / 1e9,
                    "% of copy": 100 * moved / seconds / floor,
                    "trustfast speed-up": seconds / ours,
                })
    return rows


def markdown_table(rows: list[dict]) -> str:
    head = "| op | params | variant | ms | GB/s | % of copy | trustfast speed-up |"
    lines = [head, "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['op']} | {r['params']:.0e} | {r['variant']} | {r['ms']:.3f} | "
            f"{r['GB/s']:.1f} | {r['% of copy']:.0f}% | {r['trustfast speed-up']:.2f}x |"
        )
    return "\n".join(lines)


def machine() -> dict:
    info = {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def run_bench(args) -> int:
    sizes = parse_sizes(args.sizes)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    rows = measure(sizes, device, args.repeats)
    table = markdown_table(rows)
    print(f"device: {device}  ({json.dumps(machine())})")
    print(table)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump({"config": {"sizes": sizes, "device": str(device),
                                  "repeats": args.repeats, **machine()}, "rows": rows}, f, indent=1)
        with open(os.path.join(args.out, "results.md"), "w") as f:
            f.write(table + "\n")
    return 0
