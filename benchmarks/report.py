"""Turn a pytest-benchmark JSON of `benchmarks/test_bench_*.py` into a ratio table.

For each group (op and size): median ms of every variant, GB/s counted on the bytes the fused op
must move, % of the copy floor measured in the same run, and the speed-up of trustfast over it.
Usage: python benchmarks/report.py benchmarks/results/cpu_bench.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

FUSED = "trustfast fused"
FLOOR = "copy of the same bytes (floor)"


def report(path: str) -> str:
    with open(path) as f:
        data = json.load(f)
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for b in data["benchmarks"]:
        groups[b["group"]][b["extra_info"]["variant"]] = b
    lines = [
        f"machine: {data['machine_info'].get('cpu', {}).get('brand_raw', '?')}, "
        f"date {data['datetime'][:10]}",
        "",
        "| op | params | variant | median ms | GB/s | % of copy | trustfast speed-up |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for variants in groups.values():
        if FUSED not in variants:
            continue
        fused = variants[FUSED]["stats"]["median"]
        floor = variants[FLOOR]["stats"]["median"] if FLOOR in variants else None
        for name, b in variants.items():
            med = b["stats"]["median"]
            info = b["extra_info"]
            gbs = info["bytes"] / med / 1e9
            pct = f"{100 * floor / med:.0f}%" if floor else "n/a"
            lines.append(
                f"| {info['op']} | {info['params']:.0e} | {name} | {med * 1e3:.2f} | {gbs:.1f} | "
                f"{pct} | {med / fused:.2f}x |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/cpu_bench.json"))
