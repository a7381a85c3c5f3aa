"""Fused masked optimizer update vs its torch peers, and its kernels' correctness checks.

Timings (`timings`, `measure`): `n` parameters split over 16 tensors, a 50 % random mask, SGD with
momentum 0.9, weight decay 5e-4 and l1 5e-4 (subgradient), or AdamW with the same mask and l1,
next to a copy of the bytes the fused step must move (the floor). Peers:
  - "torch foreach": the best torch equivalent of the same math, with foreach ops (mask multiply,
    add weight decay, add l1 sign, momentum, update, re-mask), masks stored in the param dtype as
    research code does;
  - "torch.optim + remask": torch.optim.SGD / AdamW (foreach=True; AdamW also fused=True) with the
    mask applied to the gradient before and to the weights after, l1 added to the gradient.
A BLOCK sweep of the Triton launcher (`block_sweep`) is a tuning section.

Checks (`checks`, `check_case`): every optimizer configuration of CASES on odd shapes, in fp32 /
fp16 / bf16, through the op on the kernel backend. A check passes when the kernel's max error
against the float64 reference (run on float64 copies of the same low-precision inputs) is within
`judge.bound` of the torch reference's error in the kernel's precision, with a slack of a quarter
of an ulp at the array's largest value (SLACK_ULPS), for every element, and when masked-out
weights and optimizer state are exactly 0. The inputs put NaN gradients where the mask is off.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from trustfast._bench import judge
from trustfast._bench.registry import Section, bf16_skip
from trustfast._bench.timing import copy_bandwidth, median_time
from trustfast.ops import masked_adamw_step, masked_sgd_step
from trustfast.ops.masked_update import masked_adamw_step_reference, masked_sgd_step_reference

OPS = ("masked_sgd_step", "masked_adamw_step")
DEFAULT_SIZES, SMALL_SIZES = (10_000_000, 50_000_000), (10_000,)
BLOCKS = (1024, 2048, 4096, 8192)
# Real shapes: sizes that are not multiples of any BLOCK, a scalar-like 1, a 3M tail tensor
# (~6.4M elements in all); small keeps the oddness at a few thousand elements.
CHECK_SHAPES = [(1,), (7,), (4097,), (3, 4097), (2, 3, 5, 7), (127, 129), (1000003,),
                (257, 1031), (2048, 1023), (3000017,)]
SMALL_CHECK_SHAPES = [(1,), (7,), (129,), (3, 67), (2, 3, 5, 7), (1031,), (4097,), (3001,)]
CHECK_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Slack on top of 2x the torch error, in ulps at the array's largest |value|: covers a kernel
# that rounds the other way where torch's error happens to be small (FMA contraction and
# Triton's approximate fp32 sqrt/div move the last fp32 bits, not the stored result's ulp).
SLACK_ULPS = 0.25

N_TENSORS = 16
LR, MOMENTUM, WEIGHT_DECAY, L1 = 1e-3, 0.9, 5e-4, 5e-4


@dataclass
class Problem:
    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    state1: list[torch.Tensor]
    state2: list[torch.Tensor]
    masks: list[torch.Tensor]
    float_masks: list[torch.Tensor]

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)


def make_problem(n: int, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 seed: int = 0) -> Problem:
    """`n` parameters over N_TENSORS tensors with random data and a 50 % mask."""
    gen = torch.Generator(device=device).manual_seed(seed)
    sizes = [n // N_TENSORS] * N_TENSORS
    sizes[-1] += n - sum(sizes)

    def randn(size):
        return torch.randn(size, generator=gen, device=device, dtype=dtype)

    params = [randn(s) for s in sizes]
    masks = [torch.rand(s, generator=gen, device=device) < 0.5 for s in sizes]
    for p, m in zip(params, masks):
        p.mul_(m)
    return Problem(
        params=params,
        grads=[randn(s) * 1e-2 for s in sizes],
        state1=[torch.zeros(s, device=device, dtype=dtype) for s in sizes],
        state2=[torch.zeros(s, device=device, dtype=dtype) for s in sizes],
        masks=masks,
        float_masks=[m.to(dtype) for m in masks],
    )


def sgd_bytes(pb: Problem) -> int:
    """Bytes the fused SGD step must move: read p, g, buf, mask (bool); write p, buf."""
    elem = pb.params[0].element_size()
    return pb.numel * (5 * elem + 1)


def adamw_bytes(pb: Problem) -> int:
    """Bytes the fused AdamW step must move: read p, g, m, v, mask; write p, m, v."""
    elem = pb.params[0].element_size()
    return pb.numel * (7 * elem + 1)


def sgd_variants(pb: Problem, backend: str | None) -> dict[str, Callable[[], object]]:
    """name -> zero-argument callable doing one masked SGD step (trustfast first)."""

    def fused():
        masked_sgd_step(pb.params, pb.grads, pb.state1, pb.masks, lr=LR, momentum=MOMENTUM,
                        weight_decay=WEIGHT_DECAY, l1=L1, backend=backend)

    def torch_foreach():
        d = torch._foreach_mul(pb.grads, pb.float_masks)
        torch._foreach_add_(d, pb.params, alpha=WEIGHT_DECAY)
        torch._foreach_add_(d, torch._foreach_sign(pb.params), alpha=L1)
        torch._foreach_mul_(pb.state1, MOMENTUM)
        torch._foreach_add_(pb.state1, d)
        torch._foreach_add_(pb.params, pb.state1, alpha=-LR)
        torch._foreach_mul_(pb.params, pb.float_masks)
        torch._foreach_mul_(pb.state1, pb.float_masks)

    opt_params = [p.clone().requires_grad_() for p in pb.params]
    for p, g in zip(opt_params, pb.grads):
        p.grad = g.clone()
    opt = torch.optim.SGD(opt_params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                          foreach=True)
    grads = [p.grad for p in opt_params]

    def optim_remask():
        with torch.no_grad():
            torch._foreach_mul_(grads, pb.float_masks)
            torch._foreach_add_(grads, torch._foreach_sign(opt_params), alpha=L1)
            opt.step()
            torch._foreach_mul_(opt_params, pb.float_masks)

    return {"trustfast fused": fused, "torch foreach": torch_foreach,
            "torch.optim.SGD(foreach) + remask": optim_remask}


def adamw_variants(pb: Problem, backend: str | None) -> dict[str, Callable[[], object]]:
    """name -> zero-argument callable doing one masked AdamW step (trustfast first)."""
    step = [0]

    def fused():
        step[0] += 1
        masked_adamw_step(pb.params, pb.grads, pb.state1, pb.state2, pb.masks, step=step[0],
                          lr=LR, weight_decay=WEIGHT_DECAY, l1=L1, backend=backend)

    variants = {"trustfast fused": fused}
    for label, kwargs in (("foreach", {"foreach": True}), ("fused", {"fused": True})):
        opt_params = [p.clone().requires_grad_() for p in pb.params]
        for p, g in zip(opt_params, pb.grads):
            p.grad = g.clone()
        try:
            opt = torch.optim.AdamW(opt_params, lr=LR, weight_decay=WEIGHT_DECAY, **kwargs)
        except (RuntimeError, ValueError):  # fused AdamW missing for this device / dtype
            continue
        grads = [p.grad for p in opt_params]

        def optim_remask(opt=opt, grads=grads, opt_params=opt_params):
            with torch.no_grad():
                torch._foreach_mul_(grads, pb.float_masks)
                torch._foreach_add_(grads, torch._foreach_sign(opt_params), alpha=L1)
                opt.step()
                torch._foreach_mul_(opt_params, pb.float_masks)

        variants[f"torch.optim.AdamW({label}) + remask"] = optim_remask
    return variants


# ----------------------------------------------------------------------------- timings


def measure(sizes: Sequence[int], device: torch.device, repeats: int,
            backend: str | None = None, dtype: torch.dtype = torch.float32) -> list[dict]:
    """One row per (op, size, variant): ms, GB/s, % of copy bandwidth, speed-up of trustfast."""
    rows = []
    for n in sizes:
        for op, make, nbytes in (("masked_sgd_step", sgd_variants, sgd_bytes),
                                 ("masked_adamw_step", adamw_variants, adamw_bytes)):
            pb = make_problem(n, device, dtype)
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


def block_sweep(op: str, n: int, device: torch.device, repeats: int) -> list[dict]:
    """Time the Triton launcher at each BLOCK on the bench problem (fp32), vs copy bandwidth."""
    from trustfast.kernels import masked_update as km

    pb = make_problem(n, device, torch.float32)
    if op == "masked_sgd_step":
        moved = sgd_bytes(pb)

        def run(block):
            km.masked_sgd_step(pb.params, pb.grads, pb.state1, pb.masks, LR, MOMENTUM, 0.0,
                               False, WEIGHT_DECAY, L1, False, block=block)
    else:
        moved = adamw_bytes(pb)

        def run(block):
            # step 1's bias corrections; the step count does not change the work done.
            km.masked_adamw_step(pb.params, pb.grads, pb.state1, pb.state2, pb.masks, LR, 0.9,
                                 0.999, 1e-8, WEIGHT_DECAY, L1, False, 1 - 0.9,
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
            row["error"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
    for row in rows:
        if default in times and row["block"] in times:
            row["speed-up vs default"] = times[default] / times[row["block"]]
    return rows


def timings(device: torch.device, repeats: int, *, small: bool, backend: str | None = None,
            ceilings: dict | None = None, sizes: Sequence[int] | None = None) -> list[Section]:
    """fp32 at every size and bf16 at the largest (key "timings"), then the Triton BLOCK sweep at
    the largest size (key "block_sweep", a tuning section; only for backend "triton")."""
    device = torch.device(device)
    sizes = list(sizes or (SMALL_SIZES if small else DEFAULT_SIZES))
    runs = [(n, torch.float32) for n in sizes] + [(max(sizes), torch.bfloat16)]
    sections = []
    for n, dtype in runs:
        name = str(dtype).removeprefix("torch.")
        sections.append(Section(
            "timings", f"timing {n:.0e} {name}",
            lambda n=n, d=dtype: measure([n], device, repeats, backend=backend, dtype=d),
            {"params": n, "dtype": name}, skip=bf16_skip(device, dtype, backend)))
    if backend == "triton":
        for op in OPS:
            sections.append(Section(
                "block_sweep", f"BLOCK sweep {op} {max(sizes):.0e}",
                lambda op=op: block_sweep(op, max(sizes), device, repeats),
                {"op": op, "params": max(sizes), "dtype": "float32"}, tuning=True))
    return sections


# ----------------------------------------------------------------------------- checks


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


def compare(reference: dict[str, list[torch.Tensor]], baseline: dict[str, list[torch.Tensor]],
            kernel: dict[str, list[torch.Tensor]], masks: list[torch.Tensor | None],
            dtype: torch.dtype) -> dict:
    """Judge a kernel's output: error vs float64 within `judge.bound` of torch's (slack
    SLACK_ULPS at the array's largest value), for every element; masked-out exactly 0.

    `reference` is the float64 result, `baseline` the torch reference run in `dtype`, `kernel`
    the kernel's result, all from the same inputs. Returns {"passed", "arrays": {name: details}},
    with per array the errors, the bound, how many elements exceed it and where the worst is.
    """
    arrays = {}
    for name, ref in reference.items():
        k_err, where = judge.worst_error(kernel[name], ref)
        b_err = judge.max_abs_error(baseline[name], ref)
        scale = max((float(r.abs().max()) for r in ref if r.numel()), default=0.0)
        bound = judge.bound(b_err, slack=SLACK_ULPS * torch.finfo(dtype).eps * scale)
        over = judge.count_over(kernel[name], ref, bound)
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


def checks(device: torch.device, *, small: bool, backend: str = "triton") -> list[Section]:
    """Every case in every dtype through the op on `backend`, then (Triton) the launcher at each
    BLOCK on the fp32 cases of BLOCK_CASES, every tensor masked. Key "checks"."""
    device = torch.device(device)
    shapes = SMALL_CHECK_SHAPES if small else CHECK_SHAPES
    numel = sum(math.prod(s) for s in shapes)
    sections = []
    for dtype in CHECK_DTYPES:
        for case in CASES:
            name = str(dtype).removeprefix("torch.")
            meta = {"case": case.name, "optimizer": case.optimizer, "dtype": name,
                    "numel": numel, "backend": backend}
            sections.append(Section(
                "checks", f"check {case.name} {name}",
                lambda c=case, d=dtype: check_case(c, d, shapes, device, op_step(backend)),
                meta, skip=bf16_skip(device, dtype, backend)))
    if backend != "triton":
        return sections
    for case in (c for c in CASES if c.name in BLOCK_CASES):
        for block in BLOCKS:
            meta = {"case": f"{case.name} BLOCK={block}", "optimizer": case.optimizer,
                    "dtype": "float32", "numel": numel, "backend": "triton", "block": block}
            sections.append(Section(
                "checks", f"check {case.name} BLOCK={block}",
                lambda c=case, b=block: check_case(c, torch.float32, shapes, device,
                                                   kernel_step(b), all_masked=True), meta))
    return sections
