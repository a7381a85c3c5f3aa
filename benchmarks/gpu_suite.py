"""One command for a CUDA machine: ceilings, correctness at real shapes, then timings.

    python benchmarks/gpu_suite.py                 # ceilings, checks, timings, HVP, PGD, sweep
    python benchmarks/gpu_suite.py --check         # checks only (bf16/fp16 at real shapes)
    python benchmarks/gpu_suite.py --device cpu --check --small   # dry run, Triton interpreter

GPU time comes in short loans (about 10 minutes on an H200), so the suite is built to spend one
run well: every section is timed against its physical floor (copy bandwidth, matmul rate)
measured in the same process; a failing section is recorded (JSON and table) and the rest still
runs; the JSON is rewritten after every section so a killed run keeps what it measured; and
sections not started within `--budget-s` are skipped. The exit code is 1 when any check failed or
any section raised.

The suite itself is the ceilings plus a loop over the benchmark registry
(`trustfast._bench.registry.BENCHES`): every bench's `checks` first (a wrong kernel makes its
timing moot), then every bench's `timings`, then the tuning sections (BLOCK sweeps), all on the
Triton backend. What each checks and times is documented in its module:

  - masked_update: every optimizer case in fp32 / fp16 / bf16 through the op, and the launcher at
    each BLOCK; passes when the kernel's max error against the float64 reference is within
    `trustfast._bench.judge.bound` of the torch reference's error in the kernel's precision (twice
    it, plus a quarter of an ulp at the array's largest value) and masked-out weights and
    optimizer state are exactly 0. Timings at `--sizes` (fp32, and bf16 at the largest) against
    torch.optim / foreach peers and the copy floor.
  - hvp: float32, TF32 off, fwd_rev / rev_rev (single and batched) agree with
    `torch.autograd.functional.hvp` to a relative L2 difference of 1e-4; then every mode timed
    against that peer and one gradient. Not captured in CUDA graphs: a capture that fails can
    leave the CUDA context unusable for the sections after it.
  - pgd: the Triton `pgd_step` against the torch reference in the same precision, elementwise
    within `pgd.CHECK_TOLERANCE` (1-2 ulps, plus a fraction of eps for L2 norms reduced in another
    order), tracked best_adv / best_loss bit-identical; the step timed against torchattacks'
    eager update and a copy of its bytes, and ResNet-18 PGD-10 end to end at batch 128, 4
    restarts x 3 eps against torchattacks called 12 times (skipped, with the reason, where
    torchattacks does not import).
  - attention, sequence_nll: forward, gradients (and attention's JVP) against float64, error
    <= 2x that of the torch baseline in the same precision (with a floor); timings against SDPA's
    backends / the logits path, with "% of matmul" (attention) and peak memory.
  - llm_memory, watermark_attack: end-to-end rows (peak memory of an NPO step vs the memory
    model; the watermark attack batched vs a per-message loop).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

# Only torch here: `--device cpu` must set TRITON_INTERPRET before trustfast's kernels (and so
# triton) are imported, so trustfast modules are imported inside the functions that use them.
import torch

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
DEFAULT_SIZES, SMALL_SIZES = "1e7,5e7", "1e4"
MATMUL_N = {"cuda": 8192, "cpu": 1024, "small": 256}
COPY_BYTES = {"cuda": 2 << 30, "cpu": 256 << 20, "small": 16 << 20}
# Every section runs the Triton kernels (on the CPU through the interpreter: a dry run).
BACKEND = "triton"


# ----------------------------------------------------------------------------- the suite


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Suite:
    """Runs sections, records each outcome, and rewrites the JSON after every section."""

    def __init__(self, out_dir: Path, config: dict, device: torch.device, budget_s: float):
        self.out_dir, self.device = out_dir, device
        self.start = time.monotonic()
        self.deadline = self.start + budget_s
        self.report: dict = {"config": config, "machine": {}, "ceilings": [], "checks": [],
                             "timings": [], "block_sweep": [], "hvp_checks": [],
                             "hvp_timings": [], "pgd_checks": [], "pgd_timings": [],
                             "attention_checks": [], "attention_timings": [],
                             "sequence_nll_checks": [], "sequence_nll_timings": [],
                             "llm_memory": [], "watermark_attack": [], "errors": []}

    def run(self, key: str, label: str, fn: Callable[[], object], meta: dict | None = None):
        """Append fn()'s row(s) to report[key]; an exception becomes an error row there."""
        meta = meta or {}
        if time.monotonic() > self.deadline:
            self.report.setdefault(key, []).append({**meta, "skipped": "time budget spent"})
            self._log(label, "skipped (time budget spent)")
            return None
        try:
            result = fn()
        except Exception as exc:
            result = None
            message = _describe(exc)
            self.report.setdefault(key, []).append({**meta, "error": message})
            self.report["errors"].append({"section": label, "error": message,
                                          "traceback": traceback.format_exc()})
            self._log(label, f"ERROR {message}")
        else:
            rows = result if isinstance(result, list) else [result]
            self.report.setdefault(key, []).extend({**meta, **row} for row in rows)
            self._log(label, _summary(rows))
        finally:
            if self.device.type == "cuda":
                try:
                    torch.cuda.empty_cache()
                except Exception:  # a poisoned CUDA context: later sections record their errors
                    pass
            self.save()
        return result

    def run_section(self, section) -> object:
        """Run (or record the skip of) one `trustfast._bench.registry.Section`."""
        if section.skip is not None:
            return self.skip(section.key, section.label, section.meta, section.skip)
        return self.run(section.key, section.label, section.run, section.meta)

    def skip(self, key: str, label: str, meta: dict, reason: str) -> None:
        self.report.setdefault(key, []).append({**meta, "skipped": reason})
        self._log(label, f"skipped ({reason})")

    def _log(self, label: str, status: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f}s] {label}: {status}", file=sys.stderr,
              flush=True)

    def failed(self) -> bool:
        # every section's rows (a bench added to the registry adds its own keys)
        rows = [r for key, value in self.report.items() if key != "errors"
                and isinstance(value, list) for r in value if isinstance(r, dict)]
        return any("error" in r or r.get("passed") is False for r in rows)

    def save(self) -> None:
        """Write gpu_suite.json (temp file, then rename: a kill never leaves half a file)."""
        self.report["passed"] = not self.failed()
        self.report["elapsed_s"] = time.monotonic() - self.start
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "gpu_suite.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.report, indent=1) + "\n")
        tmp.replace(path)


def _status(row: dict) -> str:
    if "error" in row:
        return "ERROR " + row["error"]
    if "skipped" in row:
        return "skipped: " + row["skipped"]
    if row.get("passed") is False:
        return "FAIL"
    return "pass" if row.get("passed") else "ok"


def _summary(rows: list[dict]) -> str:
    statuses = [_status(r) for r in rows]
    bad = [s for s in statuses if s.startswith(("ERROR", "FAIL"))]
    if bad:
        return f"{len(bad)} of {len(rows)} rows: {bad[0]}"
    return statuses[-1] if statuses else "ok"


def _worst_array(arrays: dict) -> tuple[str, dict]:
    """The array closest to (or furthest over) its bound."""
    def ratio(item) -> float:
        a = item[1]
        if a["bound"] > 0:
            return a["kernel_err"] / a["bound"]
        return math.inf if a["kernel_err"] > 0 else 0.0

    return max(arrays.items(), key=ratio)


KNOWN_KEYS = ("config", "machine", "ceilings", "checks", "timings", "block_sweep", "hvp_checks",
              "hvp_timings", "pgd_checks", "pgd_timings", "attention_checks",
              "attention_timings", "sequence_nll_checks", "sequence_nll_timings", "llm_memory",
              "watermark_attack", "errors")


def markdown_table(report: dict) -> str:
    """Every section in one table: ceilings, checks, timings, HVP, BLOCK sweep."""
    head = ("| section | item | dtype | size | ms | rate | % of floor | trustfast speed-up "
            "| detail | status |")
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|---|---|"]

    def add(section, item="", dtype="", size="", ms=None, rate="", floor=None, speedup=None,
            detail="", status=""):
        cells = [section, item, dtype, size, "" if ms is None else f"{ms:.3f}", rate,
                 "" if floor is None else f"{floor:.0f}%",
                 "" if speedup is None else f"{speedup:.2f}x", detail, status]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")

    for r in report["ceilings"]:
        rate = (f"{r['GB/s']:.4g} GB/s" if "GB/s" in r
                else f"{r['TFLOP/s']:.4g} TFLOP/s" if "TFLOP/s" in r else "")
        size = f"{r['bytes']:.2e} B" if "bytes" in r else r.get("n", "")
        add("ceiling", r.get("item", ""), r.get("dtype", ""), size, r.get("ms"), rate,
            status=_status(r))
    for r in report["checks"]:
        detail = ""
        if r.get("arrays"):
            name, a = _worst_array(r["arrays"])
            detail = (f"{name}: err {a['kernel_err']:.2e} (torch {a['torch_err']:.2e}, "
                      f"bound {a['bound']:.2e})")
            if not a["passed"]:
                detail += f", {a['n_over_bound']} over bound, {a['masked_nonzero']} masked != 0"
        add("check", r.get("case", ""), r.get("dtype", ""), f"{r.get('numel', 0):.2e}",
            detail=detail, status=_status(r))
    for r in report["timings"]:
        item = f"{r.get('op', '')}: {r.get('variant', '')}" if "variant" in r else r.get("op", "")
        add("timing", item, r.get("dtype", ""), f"{r.get('params', 0):.0e}", r.get("ms"),
            f"{r['GB/s']:.4g} GB/s" if "GB/s" in r else "", r.get("% of copy"),
            r.get("trustfast speed-up"), status=_status(r))
    for r in report.get("hvp_checks", []):
        detail = ""
        if "rel_diff_vs_peer" in r:
            detail = (f"rel diff vs torch hvp {r['rel_diff_vs_peer']:.1e} (tol {r['rtol']:.0e}); "
                      f"err vs float64 {r['rel_err_vs_float64']:.1e} "
                      f"(torch {r['peer_rel_err_vs_float64']:.1e})")
            if "note" in r:
                detail += f"; {r['note']}"
        add("check", r.get("case", ""), r.get("dtype", ""), f"{r.get('numel', 0):.2e}",
            detail=detail, status=_status(r))
    for r in report.get("hvp_timings", []):
        item = f"hvp {r.get('workload', '')}" + (f": {r['variant']}" if "variant" in r else "")
        detail = ""
        if "x gradient" in r:
            detail = f"{r['x gradient']:.2f}x one gradient"
            if "x single hvp" in r:
                detail += f", {r['x single hvp']:.2f}x one product of its mode"
            if "note" in r:
                detail += f"; {r['note']}"
        add("hvp timing", item, r.get("dtype", ""), f"{r.get('params', 0):.2e}", r.get("ms"),
            speedup=r.get("speed-up vs torch hvp"), detail=detail, status=_status(r))
    for r in report.get("pgd_checks", []):
        detail = ""
        if "max_diff_vs_torch" in r:
            detail = (f"max diff vs torch {r['max_diff_vs_torch']:.1e} (tol {r['tolerance']}), "
                      f"{r['n_over_bound']} over; err vs float64 {r['err_vs_float64']:.1e} "
                      f"(torch {r['torch_err_vs_float64']:.1e})")
            if r.get("tracking"):
                detail += (f"; best_adv equal {r.get('best_adv_equal')}, best_loss equal "
                           f"{r.get('best_loss_equal')}")
        add("check", r.get("case", ""), r.get("dtype", ""), f"{r.get('numel', 0):.2e}",
            detail=detail, status=_status(r))
    for r in report.get("pgd_timings", []):
        if r.get("bench") == "pgd e2e" or "workload" in r:
            item = f"pgd e2e {r.get('workload', '')}"
            size = f"{r['examples']} ex" if "examples" in r else ""
            rate = f"{r['examples/s']:.4g} ex/s" if "examples/s" in r else ""
            detail = r.get("setting", "")
        else:
            item = f"pgd_step {r.get('shape', '')}"
            size = f"{r.get('numel', 0):.2e}"
            rate = f"{r['GB/s']:.4g} GB/s" if "GB/s" in r else ""
            detail = f"{r['backend']} backend" if "backend" in r else ""
        if "variant" in r:
            item += f": {r['variant']}"
        add("pgd timing", item, r.get("dtype", ""), size, r.get("ms"), rate, r.get("% of copy"),
            r.get("trustfast speed-up"), detail=detail, status=_status(r))
    for r in report.get("attention_checks", []):
        detail = ", ".join(f"{n} {a['err']:.1e} (math {a['math_err']:.1e})"
                           for n, a in r.get("arrays", {}).items())
        add("check", r.get("case", ""), r.get("dtype", ""), detail=detail, status=_status(r))
    for r in report.get("attention_timings", []):
        if "jvp / forward" in r:
            add("attention", f"JVP / forward {r['shape']}", r.get("dtype", ""),
                ms=r.get("jvp_ms"), detail=f"{r['jvp / forward']:.2f}x the forward (goal <= 2.5x)",
                status=_status(r))
            continue
        item = f"{r.get('shape', '')} {r.get('mode', '')}: {r.get('variant', '')}"
        rate = f"{r['TFLOP/s']:.4g} TFLOP/s" if "TFLOP/s" in r else ""
        detail = r.get("unsupported", "")
        if "peak_MB" in r:
            detail = f"peak {r['peak_MB']:.0f} MB"
        add("attention", item, r.get("dtype", ""), ms=r.get("ms"), rate=rate,
            floor=r.get("% of matmul"), speedup=r.get("trustfast speed-up"), detail=detail,
            status=_status(r))
    for r in report.get("sequence_nll_checks", []):
        detail = ", ".join(f"{n} {a['err']:.1e} (logits path {a['math_err']:.1e})"
                           for n, a in r.get("arrays", {}).items())
        add("check", r.get("case", ""), r.get("dtype", ""), detail=detail, status=_status(r))
    for r in report.get("sequence_nll_timings", []):
        rate = f"{r['tokens_per_s']:.4g} tok/s" if "tokens_per_s" in r else ""
        detail = r.get("unsupported", "")
        if "peak_MB" in r:
            detail = f"peak {r['peak_MB']:.0f} MB"
        add("sequence_nll", f"{r.get('shape', '')}: {r.get('variant', '')}", r.get("dtype", ""),
            ms=r.get("ms"), rate=rate, speedup=r.get("trustfast speed-up"), detail=detail,
            status=_status(r))
    for r in report.get("llm_memory", []):
        detail = ""
        if "measured_GB" in r:
            detail = (f"peak {r['measured_GB']:.2f} GB, memory model {r['predicted_GB']:.2f} GB"
                      + (f" (goal {r['goal']})" if "goal" in r else ""))
        rate = f"{r['tokens_per_s']:.4g} tok/s" if "tokens_per_s" in r else ""
        add("llm NPO step", f"{r.get('case', '')}: {r.get('variant', '')}", "", rate=rate,
            detail=detail, status=_status(r))
    for r in report.get("watermark_attack", []):
        add("watermark attack", f"{r.get('faces', '')} faces x {r.get('messages', '')} messages: "
            f"{r.get('variant', '')}", "float32", ms=r.get("ms"),
            speedup=r.get("trustfast speed-up"), status=_status(r))
    for key in report:  # benches with no table of their own above: one generic line a row
        if key in KNOWN_KEYS or not isinstance(report[key], list):
            continue
        for r in report[key]:
            item = ", ".join(str(r[k]) for k in ("case", "variant", "mode", "shape") if k in r)
            rate = next((f"{r[k]:.4g} {k}" for k in ("images/s", "GB/s", "TFLOP/s") if k in r),
                        "")
            detail = ", ".join(f"{k} {v:.1e}" for k, v in r.items()
                               if k.startswith("rel") and isinstance(v, float))
            add(key, item, r.get("dtype", ""), ms=r.get("ms"), rate=rate,
                speedup=r.get("trustfast speed-up"), detail=detail or r.get("skipped", ""),
                status=_status(r))
    for r in report["block_sweep"]:
        item = f"{r.get('op', '')} BLOCK={r.get('block', '?')}" + (" (default)"
                                                                   if r.get("default") else "")
        add("block sweep", item, r.get("dtype", ""), f"{r.get('params', 0):.0e}", r.get("ms"),
            f"{r['GB/s']:.4g} GB/s" if "GB/s" in r else "", r.get("% of copy"),
            r.get("speed-up vs default"), detail="speed-up: this BLOCK over the default",
            status=_status(r))
    return "\n".join(lines)


def machine_info(device: torch.device) -> dict:
    """Where the numbers come from: GPU, versions, date (plus the shared runner's CPU facts)."""
    from trustfast._bench.timing import machine

    info = machine()
    info.update({"datetime_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"), "device": str(device), "python": platform.python_version(),
        "cuda": torch.version.cuda})
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update({"gpu": torch.cuda.get_device_name(device),
                     "gpu_capability": f"{props.major}.{props.minor}",
                     "gpu_memory_GiB": round(props.total_memory / 2**30, 1),
                     "gpu_sms": props.multi_processor_count})
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as exc:  # recorded, not fatal: the checks then fail with the real reason
        info["triton"] = f"unavailable ({_describe(exc)})"
    info["triton_interpret"] = os.environ.get("TRITON_INTERPRET", "")
    return info


def run_suite(args: argparse.Namespace) -> int:
    """Ceilings (seconds), then every bench's checks, then every bench's timings."""
    from trustfast._bench import masked_update as mu
    from trustfast._bench import pgd as pgd_bench
    from trustfast._bench import registry
    from trustfast._bench.cli import parse_sizes
    from trustfast._bench.timing import copy_ceiling, matmul_ceiling

    device = torch.device(args.device)
    try:
        sizes = parse_sizes(args.sizes or (SMALL_SIZES if args.small else DEFAULT_SIZES))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    repeats = args.repeats or (20 if device.type == "cuda" else 3)
    scale = "small" if args.small else device.type
    benches = {name: registry.load(name) for name in registry.BENCHES}
    config = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "device": str(device), "check_only": args.check, "small": args.small,
              "sizes": sizes, "repeats": repeats,
              "check_shapes": mu.SMALL_CHECK_SHAPES if args.small else mu.CHECK_SHAPES,
              "budget_s": args.budget_s, "hvp_workloads": {
                  w: benches["hvp"].SIZES[w][args.small] for w in benches["hvp"].WORKLOADS},
              "pgd_check_cases": (pgd_bench.SMALL_CHECK_CASES if args.small
                                  else pgd_bench.CHECK_CASES),
              "pgd_step_shapes": (pgd_bench.SMALL_STEP_SHAPES if args.small
                                  else pgd_bench.STEP_SHAPES),
              "pgd_e2e": {"workload": pgd_bench.SUITE_E2E["workload"], "eps": pgd_bench.EPS,
                          "restarts": pgd_bench.RESTARTS, "batch_steps": (
                              pgd_bench.SETTINGS[pgd_bench.SUITE_E2E["workload"]]["small"]
                              if args.small else (pgd_bench.SUITE_E2E["batch"],
                                                  pgd_bench.SUITE_E2E["steps"]))}}
    suite = Suite(Path(args.out), config, device, args.budget_s)
    try:
        suite.report["machine"] = machine_info(device)
    except Exception as exc:  # the numbers are still worth having without it
        suite.report["machine"] = {"error": _describe(exc)}
    suite.save()

    if not args.check:
        suite.run("ceilings", "copy bandwidth",
                  lambda: copy_ceiling(COPY_BYTES[scale], device, repeats))
        suite.run("ceilings", "matmul bf16",
                  lambda: matmul_ceiling(MATMUL_N[scale], device, min(repeats, 10)))
    for bench in benches.values():
        for section in bench.checks(device, small=args.small, backend=BACKEND):
            suite.run_section(section)
    if not args.check:
        ceilings = {"matmul TFLOP/s": next((r.get("TFLOP/s") for r in suite.report["ceilings"]
                                            if "TFLOP/s" in r), None)}
        sections = []
        for name, bench in benches.items():
            options = {"sizes": sizes} if name == "masked_update" else {}
            sections += bench.timings(device, repeats, small=args.small, backend=BACKEND,
                                      ceilings=ceilings, **options)
        # Tuning aids (the BLOCK sweep) last: with a tight budget the figures come first.
        for section in sorted(sections, key=lambda s: s.tuning):
            suite.run_section(section)

    suite.save()
    print(markdown_table(suite.report))
    print(f"\nwrote {Path(args.out) / 'gpu_suite.json'}  ({suite.report['elapsed_s']:.0f} s, "
          f"{'all passed' if suite.report['passed'] else 'FAILURES: see status column'})")
    return 1 if suite.failed() else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="run only the correctness checks")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="folder for gpu_suite.json")
    parser.add_argument("--sizes", default=None,
                        help=f"parameter counts to time (default {DEFAULT_SIZES}; "
                             f"{SMALL_SIZES} with --small); bf16 is timed at the largest")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="cpu runs the Triton kernels under TRITON_INTERPRET=1 (a dry run)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repetitions per variant (default 20 on cuda, 3 on cpu)")
    parser.add_argument("--small", action="store_true",
                        help="shrink check shapes to a few thousand elements, sizes to 1e4")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="skip sections not started after this many seconds (default 420)")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        # Read when triton decorates the kernels, i.e. at their import, which comes later.
        os.environ["TRITON_INTERPRET"] = "1"
    elif os.environ.pop("TRITON_INTERPRET", "0") not in ("", "0"):
        print("note: unset TRITON_INTERPRET: --device cuda times the compiled kernels",
              file=sys.stderr)
    if "triton" in sys.modules and args.device == "cpu":
        print("warning: triton was imported before TRITON_INTERPRET was set", file=sys.stderr)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: CUDA is not available here; use --device cpu --small for a dry run",
              file=sys.stderr)
        return 2
    return run_suite(args)


if __name__ == "__main__":
    sys.exit(main())
