"""The benchmark registry: one module per op (and per end-to-end method), one interface.

Every module `trustfast._bench.<name>` listed in BENCHES defines

    checks(device, *, small, backend="triton") -> list[Section]
        correctness rows judged by `trustfast._bench.judge` (error <= 2x the torch baseline's
        against float64) or by the bench's own stated tolerance; each row has `passed`;
    timings(device, repeats, *, small, backend=None, ceilings=None) -> list[Section]
        one row per variant: ms, "trustfast speed-up" (the row's time over trustfast's: the
        peers' rows read as the ratio) and, where a floor applies, its fraction ("% of copy",
        "% of matmul"); `ceilings` passes the suite's measured rates ("matmul TFLOP/s").

A Section is one unit of work, built eagerly and run later, so `benchmarks/gpu_suite.py` records
each one's rows or error on its own, rewrites its JSON after each, and skips what its time budget
leaves out; `trustfast bench` runs them through `run`. Modules are imported on first use
(`load`): some import triton or trustfast's domains, and the GPU suite must set
TRITON_INTERPRET before that.
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType

# name -> what it measures. Order: the GPU suite's order of sections (checks, then timings).
BENCHES = {
    "masked_update": "masked_sgd_step / masked_adamw_step vs torch.optim + mask ops",
    "hvp": "Hessian-vector products vs torch.autograd.functional.hvp",
    "pgd": "pgd_step vs torchattacks' eager update; PGD end to end vs torchattacks looped",
    "attention": "attention vs SDPA's backends and xformers",
    "sequence_nll": "sequence_nll vs logits + cross_entropy",
    "llm_memory": "one NPO unlearning step: peak memory measured vs the memory model",
    "watermark_attack": "the watermark attack, messages batched vs a per-message loop",
    "frechet": "exact Frechet distance (eigh / low-rank) vs scipy sqrtm and torchmetrics",
    "diffusion": "diffusion training and sampling throughput with each attention processor",
    "diffusion_classifier": "DiffusionClassifier batched vs per-class loop, adaptive vs exhaustive",
}
# What `trustfast bench` runs when no --ops is given: the masked-update ops.
DEFAULT_BENCHES = ("masked_update",)


@dataclass(frozen=True)
class Section:
    """One unit of benchmark work: `run()` returns a row or a list of rows, which go to the
    report's `key` list with `meta` merged in; `skip` (a reason) records a row without running."""

    key: str
    label: str
    run: Callable[[], dict | list[dict]]
    meta: dict = field(default_factory=dict)
    skip: str | None = None
    tuning: bool = False  # a tuning aid (BLOCK sweeps): run after every other timing


BF16_INTERPRETER = "bfloat16 is broken under the Triton interpreter; checked on a GPU only"


def interpreted(device, backend: str | None) -> bool:
    """Whether trustfast's Triton kernels would run through the interpreter (CPU tensors)."""
    return backend == "triton" and device.type == "cpu"


def bf16_skip(device, dtype, backend: str | None) -> str | None:
    """The reason to skip a bfloat16 section under the Triton interpreter, else None."""
    import torch

    return BF16_INTERPRETER if dtype == torch.bfloat16 and interpreted(device, backend) else None


def shape_dtype_checks(op: str, check, shapes, dtypes, device, backend: str,
                       shape_name) -> list[Section]:
    """One check Section per dtype x shape: `check(shape, dtype, device, backend=backend)`,
    bfloat16 skipped where the Triton interpreter runs it."""
    sections = []
    for dtype in dtypes:
        name = str(dtype).removeprefix("torch.")
        for shape in shapes:
            sections.append(Section(
                f"{op}_checks", f"check {op} {shape_name(shape)} {name}",
                lambda s=shape, d=dtype: check(s, d, device, backend=backend),
                {"case": f"{op} {shape_name(shape)}", "dtype": name, "backend": backend},
                skip=bf16_skip(device, dtype, backend)))
    return sections


def load(name: str) -> ModuleType:
    """The bench module `trustfast._bench.<name>`."""
    if name not in BENCHES:
        raise ValueError(f"unknown bench {name!r}; one of {sorted(BENCHES)}")
    return importlib.import_module(f"trustfast._bench.{name}")


def parse_names(text: str | None) -> tuple[str, ...]:
    """'masked_update,pgd' or 'all' -> bench names (None -> DEFAULT_BENCHES)."""
    if text is None:
        return DEFAULT_BENCHES
    names = [s.strip() for s in text.split(",") if s.strip()]
    if names == ["all"]:
        return tuple(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if not names or unknown:
        raise ValueError(f"--ops must be 'all' or comma-separated bench names from "
                         f"{sorted(BENCHES)}, got {text!r}")
    return tuple(dict.fromkeys(names))


def run_section(section: Section) -> list[dict]:
    """The section's rows with its meta merged in; a skip or an exception becomes one row."""
    if section.skip is not None:
        return [{**section.meta, "skipped": section.skip}]
    try:
        result = section.run()
    except Exception as exc:
        return [{**section.meta, "error": f"{type(exc).__name__}: {exc}",
                 "traceback": traceback.format_exc()}]
    rows = result if isinstance(result, list) else [result]
    return [{**section.meta, **row} for row in rows]


def run(sections: Iterable[Section]) -> list[dict]:
    """Every section's rows, tuning sections last."""
    sections = list(sections)
    ordered = [s for s in sections if not s.tuning] + [s for s in sections if s.tuning]
    return [row for s in ordered for row in run_section(s)]
