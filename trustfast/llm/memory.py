"""How much memory one unlearning step of a Llama-architecture model needs, predicted and measured.

`predict_step_memory(shape, setup)` adds up, in bytes:

  weights      P * b                    (P parameters of b bytes; + the reference model's, if kept)
  gradients    P * b                    (only the largest parameter's with optimizer_in_backward)
  optimizer    AdamW: 2 P b; 8-bit AdamW: 2 P bytes (+ 1 % block scales; tensors under 4,096
               elements keep 32-bit state); 0 on the device with an offloaded optimizer
  activations  per layer and token, the tensors autograd saves in a Hugging Face Llama layer:
               9 h + 2 kv + 4 i values (2 norms x 2 h, q, k, v, attention out, its contiguous
               copy, residual, 4 MLP tensors); with gradient checkpointing only the layer input
               h, plus one layer recomputed during the backward
  loss         chunked NLL (`trustfast.ops.sequence_nll`): a few chunk x V float32 blocks; the
               logits path: the t x V float32 log-probabilities (kept for the backward) and
               one batch's logits gradient

and takes the peak as weights + optimizer state (kept from the previous step) + the larger of
(end of forward: activations + loss workspace + the LM head's gradient) and (gradients).
Checked against measurements on the CPU (float32 and bf16, with and without checkpointing, both
loss paths): within 8 %. `measure_step_memory` runs the real step (our NPO loss on cached
reference NLLs, or the logits path with a reference model as OpenUnlearning does it) and reads
the peak: `torch.cuda.max_memory_allocated` on a GPU, `trustfast.utils.peak_tensor_bytes` on
the CPU. `benchmarks/llm_memory.py` prints both side by side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from trustfast.llm.checkpointing import set_checkpointing
from trustfast.llm.optim import StepInBackward, make_optimizer
from trustfast.utils import peak_tensor_bytes

_GIB = 2**30
ACT_H, ACT_KV, ACT_I = 9, 2, 4  # saved values per layer and token, in units of h, kv, i
NLL_BLOCKS = 3  # float32 chunk x V blocks alive at once in the chunked NLL's backward
BNB_MIN_8BIT = 4096  # bitsandbytes keeps 32-bit state for smaller tensors


@dataclass(frozen=True)
class LlamaShape:
    """The sizes that set a Llama model's memory."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int

    @classmethod
    def from_config(cls, config) -> LlamaShape:
        return cls(config.hidden_size, config.intermediate_size, config.num_hidden_layers,
                   config.num_attention_heads, config.num_key_value_heads, config.vocab_size)

    @property
    def kv(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def parameter_sizes(self) -> list[int]:
        """Element counts of every parameter (untied embeddings and LM head)."""
        h, kv, i = self.hidden, self.kv, self.intermediate
        layer = [h * h, h * kv, h * kv, h * h, h * i, h * i, i * h, h, h]
        return [self.vocab * h] + layer * self.layers + [h, self.vocab * h]

    def parameters(self) -> int:
        return sum(self.parameter_sizes())


# the configs the benchmark and the GPU suite use (Llama-2-7B's shape; a 1B of TinyLlama's)
LLAMA_7B = LlamaShape(4096, 11008, 32, 32, 32, 32000)
LLAMA_1B = LlamaShape(2048, 5632, 22, 32, 4, 32000)


@dataclass(frozen=True)
class StepSetup:
    """One training step: what is in memory and how the loss is computed."""

    batch: int = 1  # sequences in each of the forget and retain batches
    seq_len: int = 1024  # tokens per sequence: 2 x batch x seq_len tokens per step
    dtype_bytes: int = 2  # weights, gradients and activations: 2 (bf16) or 4 (float32)
    optimizer: str = "adamw8bit"  # adamw | adamw8bit | offload
    optimizer_in_backward: bool = False  # step each weight as its gradient is ready
    gradient_checkpointing: bool = True
    nll: str = "chunked"  # chunked (sequence_nll) | logits (full logits + log_softmax)
    reference: str = "cached"  # cached (reference NLLs computed once) | model (kept in memory)
    chunk: int = 256

    def __post_init__(self):
        if self.optimizer not in ("adamw", "adamw8bit", "offload"):
            raise ValueError(f"optimizer must be adamw, adamw8bit or offload, got "
                             f"{self.optimizer!r}")
        if self.nll not in ("chunked", "logits"):
            raise ValueError(f"nll must be 'chunked' or 'logits', got {self.nll!r}")
        if self.reference not in ("cached", "model"):
            raise ValueError(f"reference must be 'cached' or 'model', got {self.reference!r}")
        if self.dtype_bytes not in (2, 4):
            raise ValueError(f"dtype_bytes must be 2 or 4, got {self.dtype_bytes}")

    @property
    def tokens(self) -> int:
        return 2 * self.batch * self.seq_len


def _optimizer_bytes(sizes: list[int], setup: StepSetup) -> int:
    if setup.optimizer == "offload":
        return 0
    if setup.optimizer == "adamw":
        return 2 * sum(sizes) * setup.dtype_bytes
    return sum(2 * n + 2 * 4 * math.ceil(n / 256) if n >= BNB_MIN_8BIT else 2 * 4 * n
               for n in sizes)


def predict_step_memory(shape: LlamaShape, setup: StepSetup) -> dict[str, int]:
    """Bytes per component and the predicted peak of one step (see the module docstring)."""
    b, t, sizes = setup.dtype_bytes, setup.tokens, shape.parameter_sizes()
    h, v = shape.hidden, shape.vocab
    weights = sum(sizes) * b * (2 if setup.reference == "model" else 1)
    grads = (max(sizes) if setup.optimizer_in_backward else sum(sizes)) * b
    optimizer = _optimizer_bytes(sizes, setup)
    per_layer = t * (ACT_H * h + ACT_KV * shape.kv + ACT_I * shape.intermediate) * b
    if setup.gradient_checkpointing:
        activations = t * h * b * shape.layers + per_layer
    else:
        activations = per_layer * shape.layers
    activations += 3 * t * h * b  # embedding output, final norm
    if setup.nll == "chunked":
        loss = NLL_BLOCKS * min(setup.chunk, t) * v * 4 + t * 8
    else:
        # float32 log-probabilities of both batches (kept for the backward), and one batch's
        # logits gradient in float32 (and in b bytes when the model is not float32)
        loss = t * v * 4 + t // 2 * v * (4 + (b if b != 4 else 0))
    head_grad = v * h * b
    forward_end = activations + loss + head_grad
    # from the second step on, the optimizer state lives through the whole step
    peak = weights + optimizer + max(forward_end, grads)
    return {"weights": weights, "gradients": grads, "optimizer": optimizer,
            "activations": activations, "loss": loss, "peak": peak}


def npo_step(model: nn.Module, setup: StepSetup, optimizer, batch: dict,
             ref_model: nn.Module | None = None) -> float:
    """One NPO step (forget NLL against reference NLLs, plus the retain NLL), the way `setup`
    says: our chunked NLL on cached reference NLLs, or the logits path with a reference model."""
    from torch.nn import functional as fn

    from trustfast.llm.losses import LossConfig, unlearning_loss

    forget, retain = batch["forget"], batch["retain"]
    if setup.nll == "chunked":
        if setup.reference == "model":
            from trustfast.llm.losses import reference_nlls

            forget = dict(forget, ref_nll=reference_nlls(ref_model, [forget]).to(
                next(model.parameters()).device))
        loss, _ = unlearning_loss(model, forget, retain, LossConfig("npo"))
    else:
        def nll(m, b):
            logits = m(input_ids=b["input_ids"]).logits[:, :-1]
            logp = fn.log_softmax(logits.float(), -1)
            labels = b["labels"][:, 1:]
            keep = labels != -100
            tok = -logp.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1) * keep
            return tok.sum(-1), keep.sum()

        if setup.reference == "model":
            with torch.no_grad():
                ref = nll(ref_model, forget)[0]
        else:
            ref = forget["ref_nll"]
        f_sum, _ = nll(model, forget)
        r_sum, r_tokens = nll(model, retain)
        loss = -(2 / 0.1) * fn.logsigmoid(0.1 * (f_sum - ref)).mean() + r_sum.sum() / r_tokens
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def random_batch(shape: LlamaShape, setup: StepSetup, device="cpu", seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)

    def one():
        ids = torch.randint(3, shape.vocab, (setup.batch, setup.seq_len), generator=gen)
        return {"input_ids": ids.to(device), "labels": ids.clone().to(device)}

    forget = one()
    forget["ref_nll"] = torch.full((setup.batch,), float(setup.seq_len * math.log(shape.vocab)),
                                   device=device)
    return {"forget": forget, "retain": one()}


def build_model(shape: LlamaShape, setup: StepSetup, device="cpu", seed: int = 0) -> nn.Module:
    """A random-init LlamaForCausalLM of `shape` in the setup's dtype (nothing downloaded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden,
                         intermediate_size=shape.intermediate, num_hidden_layers=shape.layers,
                         num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
                         max_position_embeddings=max(setup.seq_len, 64),
                         tie_word_embeddings=False)
    dtype = torch.bfloat16 if setup.dtype_bytes == 2 else torch.float32
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in its dtype: a 7B model never exists in float32
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    if setup.gradient_checkpointing:
        set_checkpointing(model, True)
    model.config.use_cache = False
    model.train()
    return model


def make_step_optimizer(model: nn.Module, setup: StepSetup):
    name = "adamw" if setup.optimizer in ("adamw", "offload") else "adamw8bit"
    if setup.optimizer == "offload":
        raise ValueError("optimizer='offload' is DeepSpeed's (ZeRO offload_optimizer); "
                         "measure it through trustfast.llm.launch")
    if setup.optimizer_in_backward:
        return StepInBackward(model.parameters(), lambda p: make_optimizer(p, name, 1e-5, 0.0))
    return make_optimizer(model.parameters(), name, 1e-5, 0.0)


def measure_step_memory(shape: LlamaShape, setup: StepSetup, device: str = "cpu",
                        steps: int = 2) -> dict:
    """Peak bytes of `steps` NPO steps (the first allocates the optimizer state; the second
    has it from the start), weights included; and tokens per second of the last step."""
    import time

    model = build_model(shape, setup, device)
    ref_model = build_model(shape, setup, device, seed=1).eval() if setup.reference == "model" \
        else None
    opt = make_step_optimizer(model, setup)
    batch = random_batch(shape, setup, device)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if ref_model is not None:
        weights += sum(p.numel() * p.element_size() for p in ref_model.parameters())
    seconds = 0.0
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        for _ in range(steps):
            start = time.perf_counter()
            npo_step(model, setup, opt, batch, ref_model)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() - base + weights
    else:
        def run():
            nonlocal seconds
            for _ in range(steps):
                start = time.perf_counter()
                npo_step(model, setup, opt, batch, ref_model)
                seconds = time.perf_counter() - start

        peak = peak_tensor_bytes(run) + weights
    if isinstance(opt, StepInBackward):
        opt.remove()
    return {"peak": peak, "tokens_per_s": setup.tokens / seconds, "seconds": seconds}


def gib(n: float) -> float:
    return n / _GIB
