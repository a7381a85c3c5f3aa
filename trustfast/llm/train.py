"""Fine-tuning (memorize) and unlearning loops for Hugging Face causal LMs, single process.

`finetune(model, examples)` trains on the answer tokens with AdamW; `unlearn(model, forget,
retain, UnlearnConfig(...))` runs one of `trustfast.llm.losses.METHODS`, pairing each forget
batch with a retain batch. Reference NLLs (NPO, IdkDPO) are computed once before training and
ride in the batches, so no reference model stays in memory (except for a KL retain term and
RMU, which run it on every retain batch). `unlearn` can
checkpoint to a folder every epoch and resume from it (`trustfast.llm.checkpointing`);
`trustfast.llm.launch` runs the same loop (`train_epochs`) under DeepSpeed.
`encode_examples(tokenizer, records, method)` turns QA records into the examples both take.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from trustfast.config import Config, ConfigError
from trustfast.data.qa import QA, check_fields, qa_format
from trustfast.llm.checkpointing import (
    load_unlearn_state,
    save_unlearn_state,
    set_checkpointing,
)
from trustfast.llm.losses import (
    RMU_PARAMS,
    TOKEN_AVERAGES,
    LossConfig,
    canonical_method,
    reference_nlls,
    rmu_parameters,
    sequence_nlls,
    unlearning_loss,
)
from trustfast.llm.optim import OPTIMIZERS, StepInBackward, make_optimizer
from trustfast.utils import progress_kwargs

__all__ = ["OPTIMIZERS", "UnlearnConfig", "collate", "encode_examples", "finetune",
           "make_optimizer", "prepare_unlearning", "steps_per_epoch", "train_epochs", "unlearn"]


def collate(examples: list[dict], pad_id: int, prefix: str = "") -> dict:
    """Right-pad `input_ids` / `labels` / `attention_mask` of dicts of 1-D tensors."""
    n = max(len(e[f"{prefix}input_ids"]) for e in examples)
    out = {}
    for key, fill in (("input_ids", pad_id), ("labels", -100), ("attention_mask", 0)):
        rows = []
        for e in examples:
            t = e[f"{prefix}{key}"] if f"{prefix}{key}" in e else torch.ones_like(
                e[f"{prefix}input_ids"])
            rows.append(torch.cat([t, t.new_full((n - len(t),), fill)]))
        out[f"{prefix}{key}"] = torch.stack(rows)
    return out


def encode_examples(tokenizer, records: Sequence[QA], method: str | None = None,
                    max_length: int | None = None) -> list[dict]:
    """Training examples of QA records for `finetune` / `unlearn`: `encode_qa` of each question
    and answer (a WordTokenizer, a Hugging Face tokenizer or a `QAFormat`); for idkdpo
    (OpenUnlearning's DPO) also the record's refusal under idk_input_ids / idk_labels /
    idk_attention_mask. A record without a refusal then raises MissingQAFieldError (see
    `trustfast.data.qa.with_refusals`)."""
    fmt = qa_format(tokenizer)
    idk = method is not None and canonical_method(method) == "idkdpo"
    if idk:
        check_fields(records, ["refusal"], "idkdpo (OpenUnlearning's DPO)", "records")
    out = []
    for i, record in enumerate(records):
        if not isinstance(record, QA):
            raise TypeError(f"records[{i}] must be a QA, got {type(record).__name__}")
        example = fmt.encode(record.question, record.answer, max_length)
        if idk:
            refusal = fmt.encode(record.question, record.refusal, max_length)
            example.update({f"idk_{k}": v for k, v in refusal.items()})
        out.append(example)
    return out


def _to_device(batch: dict | None, device: torch.device | None) -> dict | None:
    if batch is None or device is None:
        return batch
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batches(examples: list[dict], batch_size: int, seed: int, epoch: int):
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed + epoch))
    for i in range(0, len(examples), batch_size):
        yield [examples[j] for j in order[i:i + batch_size].tolist()]


def finetune(model: nn.Module, examples: list[dict], pad_id: int, epochs: int = 30,
             lr: float = 1e-3, batch_size: int = 16, seed: int = 0,
             desc: str = "finetune") -> list[float]:
    """AdamW on the token-mean answer NLL; returns the mean loss per epoch."""
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    history = []
    device = _model_device(model)
    model.train()
    for epoch in tqdm(range(epochs), desc=desc, leave=False):
        total, count = 0.0, 0
        for chunk in _batches(examples, batch_size, seed, epoch):
            b = _to_device(collate(chunk, pad_id), device)
            out = sequence_nlls(model, b["input_ids"], b["labels"], b["attention_mask"])
            loss = out.sum.sum() / out.tokens.sum().clamp_min(1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(chunk)
            count += len(chunk)
        history.append(total / count)
    model.eval()
    return history


@dataclass
class UnlearnConfig(Config):
    """One unlearning run (defaults sized for the built-in facts and a tiny model).

    An optimizer step sees batch_size * grad_accum_steps * world_size forget examples (the
    effective batch), each paired with a retain example; micro-batches wrap around the epoch's
    shuffled order, so every micro-batch is full and every process gets the same amount.
    """

    method: str = "npo"  # one of losses.METHODS or OpenUnlearning's name; stored as ours
    epochs: int = 10
    lr: float = 1e-4
    batch_size: int = 8  # forget examples per micro-batch and process (as many retain examples)
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    optimizer: str = "adamw"  # adamw (torch) | adamw8bit | paged_adamw8bit (bitsandbytes)
    weight_decay: float = 0.01
    optimizer_in_backward: bool = False  # step each weight when its gradient is ready, free it
    gradient_checkpointing: bool = False  # keep layer inputs only, recompute in the backward
    # the loss (trustfast.llm.losses.LossConfig; None: the method's reference default)
    beta: float | None = None  # NPO / DPO 0.1, SimNPO 4.5
    gamma: float | None = None  # forget-term weight (OpenUnlearning's gamma): 1, SimNPO 0.125
    alpha: float | None = None  # retain-term weight (OpenUnlearning's alpha): 1, RMU 1200
    delta: float = 0.0  # SimNPO's margin
    retain_loss: str | None = None  # nll | kl | none (npo, simnpo, idkdpo); graddiff nll | kl
    kl_tokens: str = "all"  # KL retain term averaged over all positions | answer tokens
    rmu_layer: int = 7
    steering_coeff: float = 6.5
    rmu_params: str = "down_proj"  # down_proj (WMDP) | mlp | all (OpenUnlearning)
    rmu_tokens: str = "all"  # RMU's MSE over all positions (WMDP) | answer tokens (OpenUnlearning)
    seed: int = 0

    def check(self) -> None:
        """Ranges and choices of every field (a ConfigError naming the key): epochs,
        batch_size, grad_accum_steps >= 1; lr > 0 and finite; weight_decay >= 0; beta > 0,
        gamma and alpha >= 0 where given; delta finite; rmu_layer >= 0; steering_coeff > 0;
        the method, optimizer and token / parameter choices; then the LossConfig it makes."""
        try:
            self.method = canonical_method(self.method)
        except ValueError as exc:
            raise ConfigError("method", str(exc).removeprefix("method ")) from None
        for name in ("epochs", "batch_size", "grad_accum_steps"):
            self.at_least(name, 1)
        self.choice("optimizer", OPTIMIZERS)
        if self.optimizer_in_backward and self.grad_accum_steps > 1:
            raise ConfigError("optimizer_in_backward", "steps at every backward: it needs "
                              f"grad_accum_steps=1, got grad_accum_steps={self.grad_accum_steps}")
        self.at_least("lr", 0, strict=True)
        self.at_least("weight_decay", 0)
        if self.beta is not None:
            self.at_least("beta", 0, strict=True)
        for name in ("gamma", "alpha"):
            if getattr(self, name) is not None:
                self.at_least(name, 0)
        self.require(math.isfinite(self.delta), "delta", "a finite number")
        self.at_least("rmu_layer", 0)
        self.at_least("steering_coeff", 0, strict=True)
        self.at_least("seed", 0)
        for name, allowed in (("kl_tokens", TOKEN_AVERAGES), ("rmu_tokens", TOKEN_AVERAGES),
                              ("rmu_params", RMU_PARAMS)):
            self.choice(name, allowed)
        try:
            self.loss_config()  # the method's retain_loss choices
        except (TypeError, ValueError) as exc:
            key, _, rest = str(exc).partition(" ")
            raise (ConfigError(key, rest) if hasattr(self, key) else ConfigError("", str(exc))) \
                from None

    def loss_config(self) -> LossConfig:
        return LossConfig(method=self.method, beta=self.beta, gamma=self.gamma,
                          alpha=self.alpha, delta=self.delta, retain_loss=self.retain_loss,
                          kl_tokens=self.kl_tokens, rmu_layer=self.rmu_layer,
                          steering_coeff=self.steering_coeff, rmu_params=self.rmu_params,
                          rmu_tokens=self.rmu_tokens, seed=self.seed)


def steps_per_epoch(n_forget: int, config: UnlearnConfig, world_size: int = 1) -> int:
    return math.ceil(n_forget / (config.batch_size * config.grad_accum_steps * world_size))


def _schedule(n_forget: int, n_retain: int, config: UnlearnConfig, epoch: int, rank: int,
              world_size: int):
    """Per optimizer step of `epoch`: this process's micro-batches as (forget indices, retain
    indices or None). Micro-batch k of a step (k = accumulation index * world_size + rank)
    takes the next batch_size forget examples of the epoch's seeded permutation (wrapping
    around) and the next retain examples of a stream that continues across epochs."""
    bs, per_step = config.batch_size, config.batch_size * config.grad_accum_steps * world_size
    order = torch.randperm(n_forget, generator=torch.Generator().manual_seed(config.seed + epoch))
    order = order.tolist()
    steps = steps_per_epoch(n_forget, config, world_size)
    for s in range(steps):
        micro = []
        for a in range(config.grad_accum_steps):
            first = s * per_step + (a * world_size + rank) * bs
            f_idx = [order[(first + i) % n_forget] for i in range(bs)]
            retain_first = (epoch * steps + s) * per_step + (a * world_size + rank) * bs
            r_idx = [(retain_first + i) % n_retain for i in range(bs)] if n_retain else None
            micro.append((f_idx, r_idx))
        yield micro


def _micro_batch(forget, retain, f_idx, r_idx, pad_id: int, method: str):
    chunk = [forget[i] for i in f_idx]
    f = collate(chunk, pad_id)
    for key in ("ref_nll", "ref_idk_nll"):
        if key in chunk[0]:
            f[key] = torch.stack([e[key] for e in chunk])
    if method == "idkdpo":
        f.update(collate(chunk, pad_id, prefix="idk_"))
    r = collate([retain[i] for i in r_idx], pad_id) if r_idx is not None else None
    return f, r


def _mean_logs(logs: list[dict]) -> dict:
    return {k: sum(lg[k] for lg in logs) / len(logs) for k in logs[0]}


def train_epochs(loss_fn, forget: list[dict], retain: list[dict], config: UnlearnConfig,
                 pad_id: int, *, backward, step, start_epoch: int = 0,
                 history: list[dict] | None = None, rank: int = 0, world_size: int = 1,
                 reduce_logs=None, on_epoch=None,
                 device: torch.device | None = None) -> list[dict]:
    """The unlearning loop shared by the single-process and the DeepSpeed trainer.

    loss_fn(forget_batch, retain_batch) -> (loss, logs); backward(loss) per micro-batch;
    step() after each optimizer step's micro-batches; reduce_logs(logs) averages logs over
    processes; on_epoch(epoch, history) checkpoints; batches are moved to `device` (the
    model's) before loss_fn. A history entry holds the epoch means and
    `step_loss`, the loss of every optimizer step (averaged over its micro-batches)."""
    history = [] if history is None else history
    n_retain = len(retain) if config.loss_config().needs_retain else 0  # GA: no retain batches
    for epoch in tqdm(range(start_epoch, config.epochs), desc=f"unlearn {config.method}",
                      leave=False, **progress_kwargs(rank == 0)):
        logs = []
        for micro in _schedule(len(forget), n_retain, config, epoch, rank, world_size):
            micro_logs = []
            for f_idx, r_idx in micro:
                f, r = _micro_batch(forget, retain, f_idx, r_idx, pad_id, config.method)
                f, r = _to_device(f, device), _to_device(r, device)
                loss, log = loss_fn(f, r)
                backward(loss)
                micro_logs.append(log)
            step()
            log = _mean_logs(micro_logs)
            logs.append(reduce_logs(log) if reduce_logs is not None else log)
        history.append(_mean_logs(logs) | {"epoch": epoch + 1,
                                           "step_loss": [lg["loss"] for lg in logs]})
        if on_epoch is not None:
            on_epoch(epoch + 1, history)
    return history


def _with_reference(model, forget: list[dict], pad_id: int, batch_size: int,
                    idk: bool) -> list[dict]:
    """Each forget example with its reference NLL(s), computed once from the current model."""
    out = [dict(e) for e in forget]
    batches = [collate(out[i:i + batch_size], pad_id) for i in range(0, len(out), batch_size)]
    for e, r in zip(out, reference_nlls(model, batches)):
        e["ref_nll"] = r
    if idk:
        idk_batches = [collate(out[i:i + batch_size], pad_id, prefix="idk_")
                       for i in range(0, len(out), batch_size)]
        idk_batches = [{k.removeprefix("idk_"): v for k, v in b.items()} for b in idk_batches]
        for e, r in zip(out, reference_nlls(model, idk_batches)):
            e["ref_idk_nll"] = r
    return out


def prepare_unlearning(model: nn.Module, forget: list[dict], retain: list[dict],
                       config: UnlearnConfig, pad_id: int):
    """(forget with cached reference NLLs, frozen reference model or None, trained params):
    everything a run needs from the model before training starts."""
    if not forget:
        raise ValueError("forget must not be empty")
    loss_cfg = config.loss_config()
    if loss_cfg.needs_retain and not retain:
        raise ValueError(f"method {config.method!r} with retain_loss {loss_cfg.retain_loss!r} "
                         "needs a non-empty retain set")
    ref_model = copy.deepcopy(model).eval() if loss_cfg.needs_reference_model else None
    if ref_model is not None:
        ref_model.requires_grad_(False)
    if loss_cfg.needs_reference_nll:
        forget = _with_reference(model, forget, pad_id, config.batch_size,
                                 idk=config.method == "idkdpo")
    params = (rmu_parameters(model, loss_cfg) if config.method == "rmu"
              else list(model.parameters()))
    return forget, ref_model, params


def unlearn(model: nn.Module, forget: list[dict], retain: list[dict], config: UnlearnConfig,
            pad_id: int, checkpoint_dir: str | None = None, resume: bool = False) -> list[dict]:
    """Unlearn `forget` (examples from `encode_examples` or `encode_qa`; idkdpo also needs
    idk_* fields) while keeping `retain`, in this process. Returns per-epoch logs. With
    `checkpoint_dir`, the model, optimizer and epoch are saved after every epoch;
    `resume=True` continues from there (also with a larger `epochs`). `trustfast.llm.launch`
    runs the same loop under DeepSpeed."""
    loss_cfg = config.loss_config()
    forget, ref_model, params = prepare_unlearning(model, forget, retain, config, pad_id)
    if config.optimizer_in_backward:
        opt = StepInBackward(params, lambda p: make_optimizer(p, config.optimizer, config.lr,
                                                              config.weight_decay))
    else:
        opt = make_optimizer(params, config.optimizer, config.lr, config.weight_decay)
    if config.gradient_checkpointing:
        set_checkpointing(model, True)
    start_epoch, history = 0, []
    if resume and checkpoint_dir:
        start_epoch, history = load_unlearn_state(checkpoint_dir, model, opt, config)
    gas = config.grad_accum_steps

    def step():
        opt.step()
        opt.zero_grad(set_to_none=True)

    opt.zero_grad(set_to_none=True)
    model.train()
    train_epochs(lambda f, r: unlearning_loss(model, f, r, loss_cfg, ref_model=ref_model),
                 forget, retain, config, pad_id, backward=lambda loss: (loss / gas).backward(),
                 step=step, start_epoch=start_epoch, history=history,
                 device=_model_device(model),
                 on_epoch=(lambda epoch, h: save_unlearn_state(checkpoint_dir, model, opt, config,
                                                               epoch, h))
                 if checkpoint_dir else None)
    if config.optimizer_in_backward:
        opt.remove()
    if config.gradient_checkpointing:
        set_checkpointing(model, False)
    model.eval()
    return history


if __name__ == "__main__":  # `python -m trustfast.llm.train ...` = `trustfast llm-unlearn ...`
    import sys

    from trustfast.cli import main

    sys.exit(main(["llm-unlearn", *sys.argv[1:]]))
