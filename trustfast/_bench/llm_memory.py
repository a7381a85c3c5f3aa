"""Peak memory of one NPO unlearning step, measured next to `trustfast.llm.memory`'s prediction.

Two setups per model shape: trustfast's (chunked `sequence_nll` on cached reference NLLs, 8-bit
AdamW stepped in the backward, gradient checkpointing) and the peer, the way OpenUnlearning's
NPO runs (full logits and log-softmax, the reference model kept in memory, torch AdamW, no
checkpointing). Small float32 / bf16 shapes run on the CPU; on a GPU also TinyLlama-1B's shape
(tokens per second) and Llama-2-7B's (the goal: peak <= 40 GB with 2,048 tokens in bf16).

Registry interface: an end-to-end bench. `timings` (key "llm_memory") measures every (case,
variant); each row is also judged (`passed`: the memory model within TOLERANCE, the 7B goal
met), so the GPU suite counts it. `checks` is empty: the numerics of `sequence_nll` are checked
by the sequence_nll bench.
"""

from __future__ import annotations

import torch

from trustfast._bench.registry import Section
from trustfast.llm.memory import (
    LLAMA_1B,
    LLAMA_7B,
    LlamaShape,
    StepSetup,
    measure_step_memory,
    predict_step_memory,
)

OURS = "trustfast (chunked NLL, cached ref, 8-bit AdamW in backward, checkpointing)"
PEER = "logits + reference model + AdamW (OpenUnlearning-style)"
VARIANTS = {
    OURS: {"nll": "chunked", "reference": "cached", "optimizer": "adamw8bit",
           "optimizer_in_backward": True, "gradient_checkpointing": True},
    PEER: {"nll": "logits", "reference": "model", "optimizer": "adamw",
           "optimizer_in_backward": False, "gradient_checkpointing": False},
}
# (name, shape, batch, seq_len, dtype bytes)
SMALL = [("h128 L4 V8000 fp32", LlamaShape(128, 344, 4, 4, 4, 8000), 2, 128, 4),
         ("h256 L6 V2000 bf16", LlamaShape(256, 688, 6, 8, 2, 2000), 2, 256, 2)]
BIG = [("TinyLlama-1.1B shape bf16", LLAMA_1B, 1, 1024, 2),
       ("Llama-2-7B shape bf16", LLAMA_7B, 1, 1024, 2)]
GOAL_BYTES = 40e9  # the 7B step must fit a 40 GB GPU
TOLERANCE = 0.15  # |predicted / measured - 1| the memory model must meet


def row(name: str, shape: LlamaShape, batch: int, seq_len: int, dtype_bytes: int,
        variant: str, device: str) -> dict:
    setup = StepSetup(batch=batch, seq_len=seq_len, dtype_bytes=dtype_bytes,
                      **VARIANTS[variant])
    predicted = predict_step_memory(shape, setup)
    measured = measure_step_memory(shape, setup, device=device)
    ratio = predicted["peak"] / measured["peak"]
    out = {"case": name, "variant": variant, "tokens": setup.tokens,
           "params_M": round(shape.parameters() / 1e6, 1),
           "measured_GB": measured["peak"] / 1e9, "predicted_GB": predicted["peak"] / 1e9,
           "predicted/measured": ratio, "tokens_per_s": measured["tokens_per_s"],
           "components_GB": {k: v / 1e9 for k, v in predicted.items() if k != "peak"},
           "passed": abs(ratio - 1) <= TOLERANCE}
    if shape is LLAMA_7B and variant == OURS:
        out["goal"] = "peak <= 40 GB"
        out["passed"] = out["passed"] and measured["peak"] <= GOAL_BYTES
    return out


def cases(big: bool) -> list[tuple]:
    return SMALL + (BIG if big else [])


def rows(device: str, big: bool) -> list[dict]:
    return [row(*case, variant, device) for case in cases(big) for variant in VARIANTS]


def markdown(table: list[dict]) -> str:
    lines = ["| case | setup | tokens | measured GB | predicted GB | pred/meas | tokens/s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in table:
        if "error" in r or "skipped" in r:
            lines.append(f"| {r.get('case', '')} | {r.get('variant', '')} | | "
                         f"{r.get('error', r.get('skipped'))} | | | |")
            continue
        lines.append(f"| {r['case']} | {r['variant']} | {r['tokens']} | {r['measured_GB']:.3f} "
                     f"| {r['predicted_GB']:.3f} | {r['predicted/measured']:.2f} | "
                     f"{r['tokens_per_s']:.0f} |")
    return "\n".join(lines)


def checks(device: torch.device, *, small: bool, backend: str = "triton") -> list[Section]:
    return []


def timings(device: torch.device, repeats: int, *, small: bool, backend: str | None = None,
            ceilings: dict | None = None) -> list[Section]:
    """One section per (case, variant); the 1B and 7B shapes on CUDA unless small. One
    measured step each (`repeats` unused: the peak is the number)."""
    device = torch.device(device)
    return [Section("llm_memory", f"llm NPO step {case[0]} {variant.split(' ')[0]}",
                    lambda c=case, v=variant: row(*c, v, device.type), {"bench": "llm_memory"})
            for case in cases(big=device.type == "cuda" and not small) for variant in VARIANTS]
