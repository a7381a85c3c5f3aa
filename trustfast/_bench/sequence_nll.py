"""sequence_nll: the Triton kernel against float64 (check) and against the logits path (timing).

`check(shape, dtype, device)`: per-sequence summed NLL and the gradients of hidden and weight
(random per-sequence upstream weights) of `sequence_nll(backend=...)` against the float64
reference; passes when each error is at most twice that of the logits path computed in the same
dtype (STYLE.md's rule), with a floor. `measure(shape, device, repeats)`: forward + backward time
and peak memory (CUDA) of `sequence_nll` next to `hidden @ W^T` then `cross_entropy`.
Shapes: (batch, tokens, hidden, vocab).

Registry interface: `checks` (key "sequence_nll_checks") and `timings` (key
"sequence_nll_timings"); on the CPU both use the small shapes, and the timings run in float32
(bf16 on CUDA). Its floor is memory: the rows report peak MB (CUDA) next to the logits path's.
"""

from __future__ import annotations

import torch
from torch.nn import functional as fn

from trustfast._bench.judge import judge
from trustfast._bench.registry import Section, shape_dtype_checks
from trustfast._bench.timing import time_and_peak, unsupported
from trustfast.ops.sequence_nll import sequence_nll, sequence_nll_reference

CHECK_SHAPES = [(2, 257, 256, 32003), (1, 129, 512, 128256)]
SMALL_CHECK_SHAPES = [(2, 17, 32, 1000)]
TIMING_SHAPES = [(1, 2048, 4096, 32000), (1, 2048, 4096, 128256)]
SMALL_TIMING_SHAPES = [(1, 64, 32, 1000)]
CHECK_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
OURS = "trustfast sequence_nll"
PEER = "logits + cross_entropy"


def shape_name(shape) -> str:
    b, t, h, v = shape
    return f"B{b} T{t} H{h} V{v}"


def _problem(shape, dtype, device, seed=0):
    b, t, h, v = shape
    gen = torch.Generator(device=device).manual_seed(seed)
    hidden = torch.randn(b, t, h, generator=gen, device=device, dtype=dtype)
    weight = (torch.randn(v, h, generator=gen, device=device) / h ** 0.5).to(dtype)
    labels = torch.randint(0, v, (b, t), generator=gen, device=device)
    labels[:, : t // 4] = -100  # a prompt
    return hidden, weight, labels


def _logits_path(hidden, weight, labels) -> torch.Tensor:
    logits = (hidden[:, :-1] @ weight.T).float()
    return fn.cross_entropy(logits.transpose(1, 2), labels[:, 1:], reduction="none",
                            ignore_index=-100).sum(1)


def check(shape, dtype: torch.dtype, device: torch.device, backend: str = "triton") -> dict:
    hidden, weight, labels = _problem(shape, dtype, device)
    w = torch.randn(shape[0], generator=torch.Generator().manual_seed(1)).to(device)

    def run(fn_, h, wt):
        h, wt = h.detach().requires_grad_(), wt.detach().requires_grad_()
        total = fn_(h, wt)
        grads = torch.autograd.grad((total.double() * w.double()).sum(), (h, wt))
        return {"nll_sum": total.detach(), "grad_hidden": grads[0], "grad_weight": grads[1]}

    ref = run(lambda h, wt: sequence_nll_reference(h, wt, labels).sum, hidden.double(),
              weight.double())
    ours = run(lambda h, wt: sequence_nll(h, wt, labels, backend=backend).sum, hidden, weight)
    peer = run(lambda h, wt: _logits_path(h, wt, labels), hidden, weight)
    floor = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    return judge(ref, ours, peer, floor, shape=shape_name(shape),
                 dtype=str(dtype).removeprefix("torch."))


def measure(shape, device: torch.device, repeats: int, dtype: torch.dtype = torch.bfloat16,
            backend: str | None = None) -> list[dict]:
    """Forward + backward of both variants: ms, tokens/s, peak MB on CUDA."""
    hidden, weight, labels = _problem(shape, dtype, device)
    hidden.requires_grad_()
    weight.requires_grad_()
    variants = {OURS: lambda: sequence_nll(hidden, weight, labels,
                                           backend=backend).sum.sum().backward(),
                PEER: lambda: _logits_path(hidden, weight, labels).sum().backward()}
    rows, times = [], {}
    for name, work in variants.items():
        row = {"shape": shape_name(shape), "variant": name,
               "dtype": str(dtype).removeprefix("torch.")}
        try:  # the logits path runs out of memory first at large vocab
            seconds, peak = time_and_peak(work, device, repeats)
        except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
            row["unsupported"] = unsupported(exc)
            rows.append(row)
            continue
        if peak is not None:
            row["peak_MB"] = peak
        times[name] = seconds
        row.update(ms=seconds * 1e3, tokens_per_s=shape[0] * shape[1] / seconds)
        rows.append(row)
    for row in rows:
        if OURS in times and row["variant"] in times:
            row["trustfast speed-up"] = times[row["variant"]] / times[OURS]
    return rows


def checks(device: torch.device, *, small: bool, backend: str = "triton") -> list[Section]:
    """`check` per shape and dtype (the small shapes on the CPU: the Triton interpreter)."""
    device = torch.device(device)
    shapes = SMALL_CHECK_SHAPES if small or device.type == "cpu" else CHECK_SHAPES
    return shape_dtype_checks("sequence_nll", check, shapes, CHECK_DTYPES, device, backend,
                              shape_name)


def timings(device: torch.device, repeats: int, *, small: bool, backend: str | None = None,
            ceilings: dict | None = None) -> list[Section]:
    """`measure` per shape, at most 5 repeats."""
    device = torch.device(device)
    cpu = device.type == "cpu"
    shapes = SMALL_TIMING_SHAPES if small or cpu else TIMING_SHAPES
    dtype = torch.float32 if cpu else torch.bfloat16
    return [Section("sequence_nll_timings", f"sequence_nll timing {shape_name(shape)}",
                    lambda s=shape: measure(s, device, min(repeats, 5), dtype, backend=backend),
                    {"bench": "sequence_nll"}) for shape in shapes]
