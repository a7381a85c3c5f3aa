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

A check passes when the Triton kernel's max error against the float64 reference (run on float64
copies of the same low-precision inputs) is at most twice the error of the torch reference run in
the kernel's precision, plus a quarter of an ulp at the array's largest value (STYLE.md: "at most
twice the error of the PyTorch baseline"), and when masked-out weights and optimizer state are
exactly 0.

The HVP sections (`trustfast._bench.hvp`: an MLP, a CNN with BatchNorm in eval mode, a
transformer block) check in float32, TF32 off, that fwd_rev / rev_rev (single and batched) agree
with `torch.autograd.functional.hvp` to a relative L2 difference of 1e-4 (`hvp_checks`, also run
by --check), then time every mode against that peer and one gradient (`hvp_timings`). They are
not captured in CUDA graphs: a capture that fails can leave the CUDA context unusable for the
sections after it, and the CPU dry run cannot exercise capture, so it would first be tried on a
loan.

The PGD sections (`trustfast._bench.pgd`) check the Triton `pgd_step` against the torch reference
in the same precision (`pgd_checks`, also run by --check): L-inf and L2, per-sample eps, with and
without best-iterate tracking, fp32 / fp16 / bf16. fp32 L-inf must agree to 1 ulp (bit-exactness
is not promised on a GPU: FMA contraction), fp16 / bf16 to 2 ulps of their dtype (the kernel
rounds once, torch after each op); L2 also allows 1e-6 x the sample's eps in fp32 (4 ulps at 1 x
eps in half precision) for norms reduced in another order (`pgd.CHECK_TOLERANCE`). A tracked
best_adv / best_loss must be bit-identical. Then they time (`pgd_timings`) the
step against torchattacks' eager update sequence and a copy of its bytes at 256x3x32x32 and
64x3x224x224 fp32, and ResNet-18 PGD-10 end to end at batch 128, 4 restarts x 3 eps: one
trustfast.attacks.PGD call vs torchattacks called 12 times plus a best-restart selection (the
peer row is skipped, with the reason, where torchattacks does not import).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import inspect
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
BLOCKS = (1024, 2048, 4096, 8192)
# Real shapes: sizes that are not multiples of any BLOCK, a scalar-like 1, a 3M tail tensor
# (~6.4M elements in all); --small keeps the oddness at a few thousand elements.
CHECK_SHAPES = [(1,), (7,), (4097,), (3, 4097), (2, 3, 5, 7), (127, 129), (1000003,),
                (257, 1031), (2048, 1023), (3000017,)]
SMALL_CHECK_SHAPES = [(1,), (7,), (129,), (3, 67), (2, 3, 5, 7), (1031,), (4097,), (3001,)]
CHECK_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Slack on top of 2x the torch error, in ulps at the array's largest |value|: covers a kernel
# that rounds the other way where torch's error happens to be small (FMA contraction and
# Triton's approximate fp32 sqrt/div move the last fp32 bits, not the stored result's ulp).
SLACK_ULPS = 0.25
MATMUL_N = {"cuda": 8192, "cpu": 1024, "small": 256}
COPY_BYTES = {"cuda": 2 << 30, "cpu": 256 << 20, "small": 16 << 20}
BF16_INTERPRETER = "bfloat16 is broken under the Triton interpreter; checked on a GPU only"
# (norm, shape, best-iterate tracking): CIFAR batches (rows of 3072 = 3 BLOCKs of 1024), then
# rows of 3465 and 150525 elements (not whole BLOCKs; the L2 one spans 147 blocks per sweep).
# --small: interpreter-sized, same oddness.
PGD_CHECK_CASES = [("linf", (128, 3, 32, 32), False), ("l2", (128, 3, 32, 32), False),
                   ("linf", (7, 3, 33, 35), True), ("l2", (3, 3, 223, 225), True)]
SMALL_PGD_CHECK_CASES = [("linf", (5, 3, 7, 9), False), ("l2", (5, 3, 7, 9), False),
                         ("linf", (3, 2, 67, 33), True), ("l2", (2, 3, 50, 50), True)]
PGD_E2E = {"workload": "resnet18_32", "batch": 128, "steps": 10}  # --small: pgd.SETTINGS small


# ----------------------------------------------------------------------------- problems


@dataclasses.dataclass
class Case:
    """One optimizer configuration checked against the float64 reference."""

    name: str
    optimizer: str  # "sgd" or "adamw"
    hyper: dict = dataclasses.field(default_factory=dict)  # the op's keyword arguments


CASES = [
    Case("sgd weight decay", "sgd", dict(lr=1e-2, weight_decay=1e-2)),
    Case("sgd momentum dampening", "sgd",
         dict(lr=1e-2, momentum=0.9, dampening=0.1, weight_decay=1e-2)),
    Case("sgd nesterov", "sgd", dict(lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-2)),
    Case("sgd nesterov l1 subgradient", "sgd",
         dict(lr=1e-2, momentum=0.9, nesterov=True, weight_decay=1e-2, l1=1e-2)),
    # lr * l1 = 0.01 zeroes ~1 % of N(0, 1) weights: the threshold branch is exercised.
    Case("sgd momentum l1 proximal", "sgd",
         dict(lr=1e-2, momentum=0.9, weight_decay=1e-2, l1=1.0, l1_mode="proximal")),
    Case("adamw", "adamw", dict(step=3, lr=1e-2, weight_decay=1e-2)),
    # beta1 = 0.3 takes the other torch.lerp formula (weight 0.7 >= 0.5).
    Case("adamw beta1=0.3 l1 subgradient", "adamw",
         dict(step=3, lr=1e-2, beta1=0.3, weight_decay=1e-2, l1=1e-2)),
    Case("adamw l1 proximal", "adamw",
         dict(step=3, lr=1e-2, weight_decay=1e-2, l1=1.0, l1_mode="proximal")),
]
BLOCK_CASES = ("sgd nesterov l1 subgradient", "adamw beta1=0.3 l1 subgradient")


@dataclasses.dataclass
class State:
    """Inputs and outputs of one step: updated in place by a stepper."""

    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    state1: list[torch.Tensor]  # momentum buffers / exp_avg
    state2: list[torch.Tensor]  # exp_avg_sq (unused by SGD)
    masks: list[torch.Tensor | None]

    def clone(self, dtype: torch.dtype | None = None) -> State:
        def copy(ts):
            return [t.to(dtype or t.dtype, copy=True) for t in ts]

        return State(copy(self.params), copy(self.grads), copy(self.state1), copy(self.state2),
                     list(self.masks))


@functools.lru_cache(maxsize=1)  # consecutive checks share inputs; callers clone before stepping
def make_inputs(shapes: tuple[tuple[int, ...], ...], dtype: torch.dtype,
                device: torch.device | str, seed: int = 0) -> State:
    """Random step inputs in `dtype`: every third mask None, NaN gradients where masked out.

    Drawn in float64 on the CPU (same numbers on every device), then rounded once to `dtype`.
    The NaNs check the spec's promise that masked-out entries end exactly 0 whatever the
    gradient holds. Optimizer state is random, not zero, so one step reads real state.
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64)

    params, grads, state1, state2, masks = [], [], [], [], []
    for i, shape in enumerate(shapes):
        params.append(randn(shape))
        grad = randn(shape)
        state1.append(0.03 * randn(shape))
        # exp_avg_sq bounded away from 0 keeps m / (sqrt(v) + eps) near 1, as in training.
        state2.append(1e-3 * (randn(shape) ** 2 + 0.1))
        mask = None
        if i % 3 != 2:
            mask = torch.rand(shape, generator=gen) < 0.5
            poison = ~mask & (torch.rand(shape, generator=gen) < 0.5)
            grad = torch.where(poison, torch.nan, grad)
        grads.append(grad)
        masks.append(mask)

    def put(ts):
        return [t.to(device=device, dtype=dtype) for t in ts]

    return State(put(params), put(grads), put(state1), put(state2),
                 [None if m is None else m.to(device) for m in masks])


def _op(case: Case) -> Callable:
    from trustfast.ops import masked_adamw_step, masked_sgd_step

    return masked_sgd_step if case.optimizer == "sgd" else masked_adamw_step


def full_hyper(case: Case) -> dict:
    """The case's hyperparameters with the op's defaults filled in (taken from its signature)."""
    params = inspect.signature(_op(case)).parameters.values()
    defaults = {p.name: p.default for p in params
                if p.kind is p.KEYWORD_ONLY and p.default is not p.empty and p.name != "backend"}
    return {**defaults, **case.hyper}


def outputs(case: Case, st: State) -> dict[str, list[torch.Tensor]]:
    """The arrays a step writes, by name."""
    if case.optimizer == "adamw":
        return {"params": st.params, "exp_avg": st.state1, "exp_avg_sq": st.state2}
    if full_hyper(case)["momentum"] != 0:
        return {"params": st.params, "momentum_buf": st.state1}
    return {"params": st.params}


Stepper = Callable[[Case, State], None]


def reference_step(case: Case, st: State) -> None:
    """The specification (plain torch), in the inputs' precision (float64 for the ground truth)."""
    from trustfast.ops.masked_update import (
        masked_adamw_step_reference,
        masked_sgd_step_reference,
    )

    hyper = full_hyper(case)
    if case.optimizer == "sgd":
        bufs = st.state1 if hyper["momentum"] != 0 else None
        masked_sgd_step_reference(st.params, st.grads, bufs, st.masks, **hyper)
    else:
        masked_adamw_step_reference(st.params, st.grads, st.state1, st.state2, st.masks, **hyper)


def op_step(backend: str) -> Stepper:
    """A stepper through the public op, failing if dispatch ran another backend."""

    def step(case: Case, st: State) -> None:
        if case.optimizer == "sgd":
            bufs = st.state1 if full_hyper(case)["momentum"] != 0 else None
            ran = _op(case)(st.params, st.grads, bufs, st.masks, backend=backend, **case.hyper)
        else:
            ran = _op(case)(st.params, st.grads, st.state1, st.state2, st.masks, backend=backend,
                            **case.hyper)
        if ran != backend:
            raise RuntimeError(f"asked for backend {backend!r}, {ran!r} ran")

    return step


def kernel_step(block: int) -> Stepper:
    """A stepper calling the Triton launcher directly with `block`; needs a mask per tensor."""

    def step(case: Case, st: State) -> None:
        from trustfast.kernels import masked_update as km

        h = full_hyper(case)
        if any(m is None for m in st.masks):
            raise ValueError("kernel_step needs a mask for every tensor")
        proximal = h["l1_mode"] == "proximal"
        if case.optimizer == "sgd":
            bufs = st.state1 if h["momentum"] != 0 else []
            km.masked_sgd_step(st.params, st.grads, bufs, st.masks, h["lr"], h["momentum"],
                               h["dampening"], h["nesterov"], h["weight_decay"], h["l1"],
                               proximal, block=block)
        else:
            km.masked_adamw_step(st.params, st.grads, st.state1, st.state2, st.masks, h["lr"],
                                 h["beta1"], h["beta2"], h["eps"], h["weight_decay"], h["l1"],
                                 proximal, 1 - h["beta1"] ** h["step"],
                                 (1 - h["beta2"] ** h["step"]) ** 0.5, block=block)

    return step


# ----------------------------------------------------------------------------- judging


def _max_error(got: list[torch.Tensor], ref: list[torch.Tensor]) -> tuple[float, str]:
    """Max |got - ref| over a list of tensors (NaN counts as inf) and where it occurs."""
    worst, where = 0.0, ""
    for i, (g, r) in enumerate(zip(got, ref, strict=True)):
        if g.numel() == 0:
            continue
        diff = (g.double() - r).abs().nan_to_num(nan=math.inf).flatten()
        j = int(diff.argmax())
        if float(diff[j]) > worst or not where:
            worst, where = float(diff[j]), f"tensor {i} {tuple(g.shape)} flat index {j}"
    return worst, where


def compare(reference: dict[str, list[torch.Tensor]], baseline: dict[str, list[torch.Tensor]],
            kernel: dict[str, list[torch.Tensor]], masks: list[torch.Tensor | None],
            dtype: torch.dtype) -> dict:
    """Judge a kernel's output: error vs float64 within 2x torch's + slack; masked-out exactly 0.

    `reference` is the float64 result, `baseline` the torch reference run in `dtype`, `kernel`
    the kernel's result, all from the same inputs. Returns {"passed", "arrays": {name: details}},
    with per array the errors, the bound, how many elements exceed it and where the worst is.
    """
    arrays = {}
    for name, ref in reference.items():
        k_err, where = _max_error(kernel[name], ref)
        b_err, _ = _max_error(baseline[name], ref)
        scale = max((float(r.abs().max()) for r in ref if r.numel()), default=0.0)
        bound = 2 * b_err + SLACK_ULPS * torch.finfo(dtype).eps * scale
        # `~(diff <= bound)` so that NaN counts as over the bound.
        over = sum(int((~((k.double() - r).abs() <= bound)).sum())
                   for k, r in zip(kernel[name], ref, strict=True))
        masked_nonzero = sum(int((k[~m] != 0).sum())
                             for k, m in zip(kernel[name], masks, strict=True) if m is not None)
        arrays[name] = {
            "kernel_err": k_err, "torch_err": b_err, "bound": bound, "worst_at": where,
            "n_over_bound": over, "masked_nonzero": masked_nonzero,
            "passed": bool(k_err <= bound and over == 0 and masked_nonzero == 0),
        }
    return {"passed": all(a["passed"] for a in arrays.values()), "arrays": arrays}


def check_case(case: Case, dtype: torch.dtype, shapes: list[tuple[int, ...]],
               device: torch.device, kernel: Stepper, all_masked: bool = False) -> dict:
    """Run the float64 reference, the torch reference in `dtype` and `kernel` on one input."""
    inputs = make_inputs(tuple(shapes), dtype, device)
    if all_masked:  # an all-true mask means the same as None
        inputs = dataclasses.replace(inputs, masks=[
            torch.ones_like(p, dtype=torch.bool) if m is None else m
            for p, m in zip(inputs.params, inputs.masks, strict=True)])
    runs = {}
    for label, stepper, run_dtype in (("reference", reference_step, torch.float64),
                                      ("baseline", op_step("torch"), None),
                                      ("kernel", kernel, None)):
        st = inputs.clone(run_dtype)
        stepper(case, st)
        runs[label] = outputs(case, st)
    return compare(runs["reference"], runs["baseline"], runs["kernel"], inputs.masks, dtype)


# ----------------------------------------------------------------------------- ceilings, timings


def copy_ceiling(nbytes: int, device: torch.device, repeats: int) -> dict:
    """Device copy bandwidth: the floor every memory-bound kernel is reported against."""
    from trustfast._bench.timing import copy_bandwidth

    bw = copy_bandwidth(nbytes, device, repeats)
    return {"item": "copy bandwidth (dst.copy_(src))", "dtype": "uint8", "bytes": nbytes,
            "ms": nbytes / bw * 1e3, "GB/s": bw / 1e9}


def matmul_ceiling(n: int, device: torch.device, repeats: int,
                   dtype: torch.dtype = torch.bfloat16) -> dict:
    """Dense matmul rate (n^3, preallocated output): the roofline for FLOP-bound kernels."""
    from trustfast._bench.timing import median_time

    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=gen, device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    seconds = median_time(lambda: torch.matmul(a, b, out=c), device, repeats)
    return {"item": f"matmul {n}^3", "dtype": str(dtype).removeprefix("torch."), "n": n,
            "ms": seconds * 1e3, "TFLOP/s": 2 * n**3 / seconds / 1e12}


def block_sweep(op: str, n: int, device: torch.device, repeats: int) -> list[dict]:
    """Time the Triton launcher at each BLOCK on the bench problem (fp32), vs copy bandwidth."""
    from trustfast.kernels import masked_update as km

    from trustfast._bench import masked_update as mu
    from trustfast._bench.timing import copy_bandwidth, median_time

    pb = mu.make_problem(n, device, torch.float32)
    if op == "masked_sgd_step":
        moved = mu.sgd_bytes(pb)

        def run(block):
            km.masked_sgd_step(pb.params, pb.grads, pb.state1, pb.masks, mu.LR, mu.MOMENTUM, 0.0,
                               False, mu.WEIGHT_DECAY, mu.L1, False, block=block)
    else:
        moved = mu.adamw_bytes(pb)

        def run(block):
            # step 1's bias corrections; the step count does not change the work done.
            km.masked_adamw_step(pb.params, pb.grads, pb.state1, pb.state2, pb.masks, mu.LR, 0.9,
                                 0.999, 1e-8, mu.WEIGHT_DECAY, mu.L1, False, 1 - 0.9,
                                 (1 - 0.999) ** 0.5, block=block)

    floor = copy_bandwidth(moved, device, repeats)
    default = km.INTERPRETER_BLOCK if device.type == "cpu" else km.BLOCK
    rows, times = [], {}
    for block in BLOCKS:
        row = {"op": op, "block": block, "default": block == default, "params": n,
               "dtype": "float32"}
        try:
            # median_time launches back to back on CUDA: the kernel's own throughput counts.
            seconds = median_time(lambda b=block: run(b), device, repeats)
            times[block] = seconds
            row.update({"ms": seconds * 1e3, "GB/s": moved / seconds / 1e9,
                        "% of copy": 100 * moved / seconds / floor})
        except Exception as exc:  # one BLOCK failing to compile must not hide the others
            row["error"] = _describe(exc)
        rows.append(row)
    for row in rows:
        if default in times and row["block"] in times:
            row["speed-up vs default"] = times[default] / times[row["block"]]
    return rows


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
            self.report[key].append({**meta, "skipped": "time budget spent"})
            self._log(label, "skipped (time budget spent)")
            return None
        try:
            result = fn()
        except Exception as exc:
            result = None
            message = _describe(exc)
            self.report[key].append({**meta, "error": message})
            self.report["errors"].append({"section": label, "error": message,
                                          "traceback": traceback.format_exc()})
            self._log(label, f"ERROR {message}")
        else:
            rows = result if isinstance(result, list) else [result]
            self.report[key].extend({**meta, **row} for row in rows)
            self._log(label, _summary(rows))
        finally:
            if self.device.type == "cuda":
                try:
                    torch.cuda.empty_cache()
                except Exception:  # a poisoned CUDA context: later sections record their errors
                    pass
            self.save()
        return result

    def skip(self, key: str, label: str, meta: dict, reason: str) -> None:
        self.report[key].append({**meta, "skipped": reason})
        self._log(label, f"skipped ({reason})")

    def _log(self, label: str, status: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f}s] {label}: {status}", file=sys.stderr,
              flush=True)

    def failed(self) -> bool:
        rows = [r for key in ("ceilings", "checks", "timings", "block_sweep", "hvp_checks",
                              "hvp_timings", "pgd_checks", "pgd_timings", "attention_checks",
                              "attention_timings", "sequence_nll_checks",
                              "sequence_nll_timings", "llm_memory", "watermark_attack")
                for r in self.report.get(key, [])]
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
    for r in report["block_sweep"]:
        item = f"{r.get('op', '')} BLOCK={r.get('block', '?')}" + (" (default)"
                                                                   if r.get("default") else "")
        add("block sweep", item, r.get("dtype", ""), f"{r.get('params', 0):.0e}", r.get("ms"),
            f"{r['GB/s']:.4g} GB/s" if "GB/s" in r else "", r.get("% of copy"),
            r.get("speed-up vs default"), detail="speed-up: this BLOCK over the default",
            status=_status(r))
    return "\n".join(lines)


def machine_info(device: torch.device) -> dict:
    """Where the numbers come from: GPU, versions, date (plus the bench CLI's CPU facts)."""
    from trustfast._bench.cli import machine

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
    """Ceilings (seconds), then checks (a wrong kernel makes its timing moot), then timings."""
    from trustfast._bench import attention as attn_bench
    from trustfast._bench import hvp as hvp_bench
    from trustfast._bench import llm_memory as llm_bench
    from trustfast._bench import pgd as pgd_bench
    from trustfast._bench import sequence_nll as nll_bench
    from trustfast._bench import watermark_attack as wm_bench
    from trustfast._bench.cli import measure, parse_sizes

    device = torch.device(args.device)
    try:
        sizes = parse_sizes(args.sizes or (SMALL_SIZES if args.small else DEFAULT_SIZES))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    repeats = args.repeats or (20 if device.type == "cuda" else 3)
    shapes = SMALL_CHECK_SHAPES if args.small else CHECK_SHAPES
    scale = "small" if args.small else device.type
    config = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "device": str(device), "check_only": args.check, "small": args.small,
              "sizes": sizes, "repeats": repeats, "check_shapes": shapes,
              "budget_s": args.budget_s, "hvp_workloads": {
                  w: hvp_bench.SIZES[w][args.small] for w in hvp_bench.WORKLOADS},
              "pgd_check_cases": SMALL_PGD_CHECK_CASES if args.small else PGD_CHECK_CASES,
              "pgd_step_shapes": (pgd_bench.SMALL_STEP_SHAPES if args.small
                                  else pgd_bench.STEP_SHAPES),
              "pgd_e2e": {"workload": PGD_E2E["workload"], "eps": pgd_bench.EPS,
                          "restarts": pgd_bench.RESTARTS, "batch_steps": (
                              pgd_bench.SETTINGS[PGD_E2E["workload"]]["small"] if args.small
                              else (PGD_E2E["batch"], PGD_E2E["steps"]))}}
    suite = Suite(Path(args.out), config, device, args.budget_s)
    try:
        suite.report["machine"] = machine_info(device)
    except Exception as exc:  # the numbers are still worth having without it
        suite.report["machine"] = {"error": _describe(exc)}
    suite.save()
    interpreted = device.type == "cpu"

    if not args.check:
        suite.run("ceilings", "copy bandwidth",
                  lambda: copy_ceiling(COPY_BYTES[scale], device, repeats))
        suite.run("ceilings", "matmul bf16",
                  lambda: matmul_ceiling(MATMUL_N[scale], device, min(repeats, 10)))

    numel = sum(math.prod(s) for s in shapes)
    for dtype in CHECK_DTYPES:
        for case in CASES:
            name = str(dtype).removeprefix("torch.")
            meta = {"case": case.name, "optimizer": case.optimizer, "dtype": name,
                    "numel": numel, "backend": "triton"}
            label = f"check {case.name} {name}"
            if interpreted and dtype == torch.bfloat16:
                suite.skip("checks", label, meta, BF16_INTERPRETER)
                continue
            suite.run("checks", label, lambda c=case, d=dtype: check_case(
                c, d, shapes, device, op_step("triton")), meta)
    for case in (c for c in CASES if c.name in BLOCK_CASES):
        for block in BLOCKS:
            meta = {"case": f"{case.name} BLOCK={block}", "optimizer": case.optimizer,
                    "dtype": "float32", "numel": numel, "backend": "triton", "block": block}
            suite.run("checks", f"check {case.name} BLOCK={block}", lambda c=case, b=block:
                      check_case(c, torch.float32, shapes, device, kernel_step(b),
                                 all_masked=True), meta)
    for w in hvp_bench.WORKLOADS:
        suite.run("hvp_checks", f"check hvp {w}", lambda w=w: hvp_bench.check(
            w, device, small=args.small), {"case": f"hvp {w}", "workload": w, "dtype": "float32"})
    for dtype in CHECK_DTYPES:
        name = str(dtype).removeprefix("torch.")
        for norm, shape, tracking in SMALL_PGD_CHECK_CASES if args.small else PGD_CHECK_CASES:
            case = (f"pgd_step {norm} {pgd_bench.shape_name(shape)}"
                    + (" tracking" if tracking else ""))
            meta = {"case": case, "norm": norm, "dtype": name, "numel": math.prod(shape),
                    "backend": "triton"}
            if interpreted and dtype == torch.bfloat16:
                suite.skip("pgd_checks", f"check {case} {name}", meta, BF16_INTERPRETER)
                continue
            suite.run("pgd_checks", f"check {case} {name}", lambda n=norm, d=dtype, s=shape,
                      t=tracking: pgd_bench.check_step(n, d, s, device, tracking=t), meta)

    # Triton kernels judged against float64 (<= 2x the torch baseline's error), every dtype
    for key, bench, op in (("attention_checks", attn_bench, "attention"),
                           ("sequence_nll_checks", nll_bench, "sequence_nll")):
        shapes_ = bench.SMALL_CHECK_SHAPES if args.small or interpreted else bench.CHECK_SHAPES
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            name = str(dtype).removeprefix("torch.")
            for shape in shapes_:
                label = f"check {op} {bench.shape_name(shape)} {name}"
                meta = {"case": f"{op} {bench.shape_name(shape)}", "dtype": name,
                        "backend": "triton"}
                if interpreted and dtype == torch.bfloat16:
                    suite.skip(key, label, meta, BF16_INTERPRETER)
                    continue
                suite.run(key, label, lambda b=bench, s=shape, d=dtype: b.check(s, d, device),
                          meta)

    if not args.check:
        runs = [(n, torch.float32) for n in sizes] + [(max(sizes), torch.bfloat16)]
        for n, dtype in runs:
            name = str(dtype).removeprefix("torch.")
            label, meta = f"timing {n:.0e} {name}", {"params": n, "dtype": name}
            if interpreted and dtype == torch.bfloat16:
                suite.skip("timings", label, meta, BF16_INTERPRETER)
                continue
            suite.run("timings", label, lambda n=n, d=dtype: measure(
                [n], device, repeats, backend="triton", dtype=d), meta)
        # Before the BLOCK sweep (a tuning aid): with a tight budget the HVP figures come first.
        tf32 = {}  # timed with torch's defaults (TF32 convolutions on): what users run
        if device.type == "cuda":
            tf32 = {"cudnn_tf32": torch.backends.cudnn.allow_tf32,
                    "matmul_tf32": torch.backends.cuda.matmul.allow_tf32}
        for w in hvp_bench.WORKLOADS:
            suite.run("hvp_timings", f"hvp timing {w}", lambda w=w: hvp_bench.measure(
                device, min(repeats, 10), small=args.small, workloads=(w,)),
                {"workload": w, "dtype": "float32", **tf32})
        step_shapes = pgd_bench.SMALL_STEP_SHAPES if args.small else pgd_bench.STEP_SHAPES
        for shape in step_shapes:
            suite.run("pgd_timings", f"pgd_step timing {pgd_bench.shape_name(shape)}",
                      lambda s=shape: pgd_bench.measure_step(device, repeats, shapes=(s,),
                                                             backend="triton"),
                      {"bench": "pgd_step", "shape": pgd_bench.shape_name(shape),
                       "dtype": "float32"})
        e2e = {} if args.small else {"batch": PGD_E2E["batch"], "steps": PGD_E2E["steps"]}
        # Each sample is one whole attack (~1 s): 3 of them, after one warm-up (Triton compiles).
        suite.run("pgd_timings", f"pgd e2e timing {PGD_E2E['workload']}",
                  lambda: pgd_bench.measure_e2e(device, 1 if args.small else min(repeats, 3),
                                                small=args.small,
                                                workloads=(PGD_E2E["workload"],),
                                                backend="triton", **e2e),
                  {"bench": "pgd e2e", "workload": PGD_E2E["workload"], "dtype": "float32",
                   **tf32})
        for op in ("masked_sgd_step", "masked_adamw_step"):
            suite.run("block_sweep", f"BLOCK sweep {op} {max(sizes):.0e}",
                      lambda op=op: block_sweep(op, max(sizes), device, repeats),
                      {"op": op, "params": max(sizes), "dtype": "float32"})
        matmul = next((r.get("TFLOP/s") for r in suite.report["ceilings"]
                       if "TFLOP/s" in r), None)
        attn_timing_shapes = ([(1, 2, 64, 64, 40)] if args.small or interpreted
                              else attn_bench.SD_SHAPES + attn_bench.DIT_SHAPES)
        attn_dtype = torch.float32 if interpreted else torch.bfloat16
        for shape in attn_timing_shapes:
            suite.run("attention_timings", f"attention timing {attn_bench.shape_name(shape)}",
                      lambda s=shape: attn_bench.measure(s, device, min(repeats, 5),
                                                         attn_dtype, matmul_tflops=matmul),
                      {"bench": "attention"})
        jvp_shape = (1, 2, 64, 64, 40) if args.small or interpreted else (2, 8, 4096, 4096, 64)
        nll_timing = (nll_bench.SMALL_TIMING_SHAPES if args.small or interpreted
                      else nll_bench.TIMING_SHAPES)
        for shape in nll_timing:
            suite.run("sequence_nll_timings", f"sequence_nll timing {nll_bench.shape_name(shape)}",
                      lambda s=shape: nll_bench.measure(s, device, min(repeats, 5),
                                                        attn_dtype), {"bench": "sequence_nll"})
        # one NPO step: peak memory (measured vs the memory model) and tokens/s; the 1B and
        # 7B Llama shapes on a GPU only (the 7B goal: <= 40 GB)
        for case in llm_bench.cases(big=device.type == "cuda" and not args.small):
            for variant in llm_bench.VARIANTS:
                suite.run("llm_memory", f"llm NPO step {case[0]} {variant.split(' ')[0]}",
                          lambda c=case, v=variant: llm_bench.row(*c, v, device.type),
                          {"bench": "llm_memory"})
        # the adversarial watermarking attack: messages batched vs a per-message loop
        wm_size = ({"faces": 8, "steps": 1, "messages": 2, "repeats": 1}
                   if args.small or interpreted else {})
        suite.run("watermark_attack", "watermark attack timing",
                  lambda: wm_bench.measure(device.type, **wm_size), {"bench": "watermark attack"})
        suite.run("attention_timings", "attention JVP / forward",
                  lambda: attn_bench.jvp_over_forward(jvp_shape, device, min(repeats, 5),
                                                      attn_dtype), {"bench": "attention jvp"})

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
