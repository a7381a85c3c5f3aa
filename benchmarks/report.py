"""Turn a pytest-benchmark JSON of `benchmarks/test_bench_*.py` into ratio tables.

Masked update (one group per op and size): median ms of every variant, GB/s counted on the bytes
the fused op must move, % of the copy floor measured in the same run, and the speed-up of
trustfast over it.
HVP (groups "hvp <workload>"): median ms of every variant, its ratio to one gradient, for
batched rows its ratio to one product of the same mode, and the speed-up per product over
`torch.autograd.functional.hvp`.
PGD (groups "pgd e2e <workload>" and "pgd_step <shape>"): median ms of every variant, throughput
(attacked examples x restarts x eps per second end to end; GB/s of the bytes the fused step must
move for the step), the speed-up of trustfast over each row (row ms / trustfast ms) and, for the
step, % of the copy floor measured in the same run.
Unlearning (groups "unlearn FT epoch <model>" and "unlearn IU inverse-HVP n=<n>"): median ms of
every variant, ms per batch (FT) or per 1,000 samples (IU: median x 1000 / n, measured at that n,
not extrapolated), the speed-up of trustfast over each row (row ms / trustfast ms), and for IU
the growth exponent k in t ~ n^k between the smallest and largest n timed.
Backdoor (groups "backdoor SPC <n> images"): median ms of every variant, images scored per second,
forward passes per call, and the speed-up of trustfast over each row (row ms / trustfast ms).
Attention (groups "attention cpu <mode> N=<n> D=<d>"): median ms, GFLOP/s, peak tensor MB and the
speed-up of trustfast over each row.
sequence_nll (groups "sequence_nll cpu fwd+bwd V=<vocab>"): median ms, peak tensor MB, and each
row's time and memory over trustfast's.
A table is printed only for the kinds of groups the JSON holds.
Usage: python benchmarks/report.py [benchmarks/results/cpu_bench.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict

FUSED = "trustfast fused"
FLOOR = "copy of the same bytes (floor)"
HVP_PREFIX = "hvp "
GRADIENT = "gradient"
HVP_PEER = "torch.autograd.functional.hvp"
PGD_PREFIXES = ("pgd e2e ", "pgd_step ")
PGD_OURS = ("trustfast batched", "trustfast pgd_step")
UNLEARN_PREFIX = "unlearn "
UNLEARN_OURS = ("trustfast MaskedSGD (cpp)", "trustfast woodfisher_inverse_product")
BACKDOOR_PREFIX = "backdoor "
BACKDOOR_OURS = "trustfast scaled_prediction_consistency (batched scales)"


def masked_update_table(groups: dict[str, dict[str, dict]]) -> list[str]:
    lines = [
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
    return lines


def hvp_table(groups: dict[str, dict[str, dict]]) -> list[str]:
    """Ratios need the gradient / peer / single-mode rows of the same group; '' where absent."""
    lines = [
        "| workload | params | variant | median ms | x gradient | x single HVP "
        "| speed-up vs torch.autograd.functional.hvp (per product) |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for group, variants in groups.items():
        med = {name: b["stats"]["median"] for name, b in variants.items()}
        for name, b in variants.items():
            info = b["extra_info"]
            products = info.get("products", 1)
            single = info.get("single_variant")
            x_grad = f"{med[name] / med[GRADIENT]:.2f}x" if GRADIENT in med else ""
            x_single = f"{med[name] / med[single]:.2f}x" if single in med else ""
            speedup = (f"{med[HVP_PEER] * products / med[name]:.2f}x"
                       if products and HVP_PEER in med else "")
            lines.append(
                f"| {info.get('workload', group.removeprefix(HVP_PREFIX))} | "
                f"{info.get('params', 0):.2e} | {name} | {med[name] * 1e3:.2f} | {x_grad} | "
                f"{x_single} | {speedup} |"
            )
    return lines


def pgd_table(groups: dict[str, dict[str, dict]]) -> list[str]:
    """Speed-ups need the group's trustfast row, % of copy its floor row; '' where absent."""
    lines = [
        "| group | setting | variant | median ms | throughput | trustfast speed-up | % of copy |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for group, variants in groups.items():
        med = {name: b["stats"]["median"] for name, b in variants.items()}
        ours = next((med[n] for n in PGD_OURS if n in med), None)
        floor = med.get(FLOOR)
        for name, b in variants.items():
            info = b["extra_info"]
            if info.get("bench") == "pgd_step":
                setting = f"{info.get('dtype', '')}, {info.get('backend', '')} backend"
                throughput = f"{info['bytes'] / med[name] / 1e9:.1f} GB/s"
                pct = f"{100 * floor / med[name]:.0f}%" if floor else ""
            else:
                setting = info.get("setting", "")
                throughput = f"{info['examples'] / med[name]:.1f} ex/s"
                pct = ""
            speedup = f"{med[name] / ours:.2f}x" if ours else ""
            lines.append(f"| {group} | {setting} | {name} | {med[name] * 1e3:.2f} | {throughput} "
                         f"| {speedup} | {pct} |")
    return lines


def unlearn_table(groups: dict[str, dict[str, dict]]) -> list[str]:
    """Speed-ups need the group's trustfast row; '' where absent."""
    lines = [
        "| group | setting | variant | median ms | per unit | trustfast speed-up |",
        "|---|---|---|---:|---:|---:|",
    ]
    sizes: dict[str, dict[int, float]] = defaultdict(dict)  # IU variant -> n -> median s
    for group, variants in groups.items():
        med = {name: b["stats"]["median"] for name, b in variants.items()}
        ours = next((med[n] for n in UNLEARN_OURS if n in med), None)
        for name, b in variants.items():
            info = b["extra_info"]
            if info.get("bench") == "unlearn iu":
                per = f"{med[name] * 1e6 / info['samples']:.1f} ms / 1000 samples"
                sizes[name][info["samples"]] = med[name]
            else:
                per = f"{med[name] * 1e3 / info['batches']:.2f} ms / batch"
            speedup = f"{med[name] / ours:.2f}x" if ours else ""
            setting = info.get("setting", "")
            if "threads" in info:
                setting += f", {info['threads']} thread{'s' if info['threads'] > 1 else ''}"
            lines.append(f"| {group} | {setting} | {name} | "
                         f"{med[name] * 1e3:.2f} | {per} | {speedup} |")
    for name, by_n in sizes.items():
        if len(by_n) > 1:
            (n0, t0), (n1, t1) = min(by_n.items()), max(by_n.items())
            growth = math.log(t1 / t0) / math.log(n1 / n0)
            lines.append(f"\n{name}: t ~ n^{growth:.2f} from n={n0} to n={n1}")
    return lines


def backdoor_table(groups: dict[str, dict[str, dict]]) -> list[str]:
    """Speed-ups need the group's trustfast row; '' where absent."""
    lines = [
        "| group | setting | variant | median ms | images/s | forwards | trustfast speed-up |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for group, variants in groups.items():
        med = {name: b["stats"]["median"] for name, b in variants.items()}
        ours = med.get(BACKDOOR_OURS)
        for name, b in variants.items():
            info = b["extra_info"]
            speedup = f"{med[name] / ours:.2f}x" if ours else ""
            setting = info.get("setting", "")
            if "threads" in info:
                setting += f", {info['threads']} thread{'s' if info['threads'] > 1 else ''}"
            lines.append(f"| {group} | {setting} | {name} | {med[name] * 1e3:.1f} | "
                         f"{info['images'] / med[name]:.0f} | {info.get('forwards', '')} | "
                         f"{speedup} |")
    return lines


ATTENTION_PREFIX = "attention cpu "
ATTENTION_OURS = "trustfast attention"


def attention_table(groups: dict[str, dict[str, dict]]) -> list[str]:
    """Median ms, GFLOP/s (counted FLOPs: 4 B H N^2 D per forward), peak tensor MB and the
    speed-up of trustfast over each row."""
    lines = ["| group | variant | median ms | GFLOP/s | peak tensor MB | trustfast speed-up |",
             "|---|---|---:|---:|---:|---:|"]
    for group, variants in groups.items():
        med = {name: b["stats"]["median"] for name, b in variants.items()}
        ours = med.get(ATTENTION_OURS)
        for name, b in variants.items():
            info = b["extra_info"]
            speedup = f"{med[name] / ours:.2f}x" if ours else ""
            lines.append(f"| {group} | {name} | {med[name] * 1e3:.1f} | "
                         f"{info['flops'] / med[name] / 1e9:.1f} | "
                         f"{info['peak_tensor_mb']:.1f} | {speedup} |")
    return lines


SEQUENCE_NLL_PREFIX = "sequence_nll cpu "
SEQUENCE_NLL_OURS = "trustfast sequence_nll (chunked)"


def sequence_nll_table(groups: dict[str, dict[str, dict]]) -> list[str]:
    """Median ms, peak tensor MB, and time and memory relative to the logits path."""
    lines = ["| group | variant | median ms | peak tensor MB | time / trustfast | "
             "memory / trustfast |", "|---|---|---:|---:|---:|---:|"]
    for group, variants in groups.items():
        ours = variants.get(SEQUENCE_NLL_OURS)
        for name, b in variants.items():
            info, med = b["extra_info"], b["stats"]["median"]
            rel_t = rel_m = ""
            if ours:
                rel_t = f"{med / ours['stats']['median']:.2f}x"
                rel_m = f"{info['peak_tensor_mb'] / ours['extra_info']['peak_tensor_mb']:.2f}x"
            lines.append(f"| {group} | {name} | {med * 1e3:.1f} | {info['peak_tensor_mb']:.1f} | "
                         f"{rel_t} | {rel_m} |")
    return lines


def report(path: str) -> str:
    with open(path) as f:
        data = json.load(f)
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for b in data["benchmarks"]:
        groups[b["group"]][b["extra_info"]["variant"]] = b
    hvp = {g: v for g, v in groups.items() if g.startswith(HVP_PREFIX)}
    pgd = {g: v for g, v in groups.items() if g.startswith(PGD_PREFIXES)}
    unlearn = {g: v for g, v in groups.items() if g.startswith(UNLEARN_PREFIX)}
    backdoor = {g: v for g, v in groups.items() if g.startswith(BACKDOOR_PREFIX)}
    attn = {g: v for g, v in groups.items() if g.startswith(ATTENTION_PREFIX)}
    nll = {g: v for g, v in groups.items() if g.startswith(SEQUENCE_NLL_PREFIX)}
    masked = {g: v for g, v in groups.items() if g not in hvp and g not in pgd
              and g not in unlearn and g not in backdoor and g not in attn and g not in nll}
    lines = [
        f"machine: {data['machine_info'].get('cpu', {}).get('brand_raw', '?')}, "
        f"date {data['datetime'][:10]}",
    ]
    if any(FUSED in v for v in masked.values()):
        lines += ["", *masked_update_table(masked)]
    if hvp:
        lines += ["", *hvp_table(hvp)]
    if pgd:
        lines += ["", *pgd_table(pgd)]
    if unlearn:
        lines += ["", *unlearn_table(unlearn)]
    if backdoor:
        lines += ["", *backdoor_table(backdoor)]
    if attn:
        lines += ["", *attention_table(attn)]
    if nll:
        lines += ["", *sequence_nll_table(nll)]
    if len(lines) == 1:
        lines += ["", "no masked-update, hvp, pgd, unlearn, backdoor or attention groups here"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Turn a pytest-benchmark JSON of benchmarks/test_bench_*.py (`make bench`) "
                    "into ratio tables (markdown, on stdout).")
    parser.add_argument("json", nargs="?", default="benchmarks/results/cpu_bench.json",
                        help="pytest-benchmark JSON (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        print(report(args.json))
    except FileNotFoundError:
        parser.error(f"no such file: {args.json} (run `make bench` first)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
