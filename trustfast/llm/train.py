"""Fine-tuning (memorize) and unlearning loops for Hugging Face causal LMs, single process.

`finetune(model, examples)` trains on the answer tokens with AdamW; `unlearn(model, forget,
retain, UnlearnConfig(...))` runs one of `trustfast.llm.losses.METHODS`, pairing each forget
batch with a retain batch. Reference NLLs (NPO, IdkDPO) are computed once before training and
ride in the batches, so no reference model stays in memory (except for ga_kl). Both loops can
checkpoint to a folder (safetensors + JSON, atomic) every epoch and resume from it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from trustfast.checkpoint import (
    load_checkpoint,
    optimizer_from_checkpoint,
    optimizer_to_checkpoint,
    save_checkpoint,
)
from trustfast.llm.losses import (
    NEEDS_REFERENCE,
    NEEDS_REFERENCE_MODEL,
    NEEDS_RETAIN,
    LossConfig,
    reference_nlls,
    rmu_parameters,
    sequence_nlls,
    unlearning_loss,
)
from trustfast.llm.memory import StepInBackward, set_checkpointing


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
    model.train()
    for epoch in tqdm(range(epochs), desc=desc, leave=False):
        total, count = 0.0, 0
        for chunk in _batches(examples, batch_size, seed, epoch):
            b = collate(chunk, pad_id)
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


OPTIMIZERS = ("adamw", "adamw8bit", "paged_adamw8bit")


@dataclass
class UnlearnConfig:
    """One unlearning run (defaults sized for the built-in facts and a tiny model).

    An optimizer step sees batch_size * grad_accum_steps * world_size forget examples (the
    effective batch), each paired with a retain example; micro-batches wrap around the epoch's
    shuffled order, so every micro-batch is full and every process gets the same amount.
    """

    method: str = "npo"
    epochs: int = 10
    lr: float = 1e-4
    batch_size: int = 8  # forget examples per micro-batch and process (as many retain examples)
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    optimizer: str = "adamw"  # adamw (torch) | adamw8bit | paged_adamw8bit (bitsandbytes)
    weight_decay: float = 0.01
    optimizer_in_backward: bool = False  # step each weight when its gradient is ready, free it
    gradient_checkpointing: bool = False  # keep layer inputs only, recompute in the backward
    beta: float | None = None  # None: the method's default (LossConfig)
    gamma: float | None = None  # None: the method's default (LossConfig)
    alpha: float = 1.0
    delta: float = 0.0
    rmu_layer: int = 7
    steering_coeff: float = 6.5
    seed: int = 0

    def __post_init__(self):
        for name in ("epochs", "batch_size", "grad_accum_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.optimizer_in_backward and self.grad_accum_steps > 1:
            raise ValueError("optimizer_in_backward steps at every backward: it needs "
                             "grad_accum_steps=1")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        self.loss_config()  # validates method, beta, gamma, ...

    def loss_config(self) -> LossConfig:
        return LossConfig(self.method, self.beta, self.gamma, self.alpha, self.delta,
                          self.rmu_layer, self.steering_coeff, self.seed)


def make_optimizer(params, name: str, lr: float, weight_decay: float = 0.01):
    """AdamW from torch, or bitsandbytes' 8-bit AdamW (optimizer state in 8 bits: 2 bytes per
    parameter instead of 8). paged_adamw8bit pages its state to CPU memory under GPU memory
    pressure; on a CPU-only machine bitsandbytes falls back to the unpaged optimizer."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise ImportError(f"optimizer={name!r} needs bitsandbytes: pip install "
                          "'trustfast[llm]'") from e
    cls = bnb.optim.AdamW8bit if name == "adamw8bit" else bnb.optim.PagedAdamW8bit
    return cls(params, lr=lr, weight_decay=weight_decay)


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
                 reduce_logs=None, on_epoch=None) -> list[dict]:
    """The unlearning loop shared by the single-process and the DeepSpeed trainer.

    loss_fn(forget_batch, retain_batch) -> (loss, logs); backward(loss) per micro-batch;
    step() after each optimizer step's micro-batches; reduce_logs(logs) averages logs over
    processes; on_epoch(epoch, history) checkpoints. A history entry holds the epoch means and
    `step_loss`, the loss of every optimizer step (averaged over its micro-batches)."""
    history = [] if history is None else history
    for epoch in tqdm(range(start_epoch, config.epochs), desc=f"unlearn {config.method}",
                      leave=False, disable=rank != 0 or None):
        logs = []
        for micro in _schedule(len(forget), len(retain), config, epoch, rank, world_size):
            micro_logs = []
            for f_idx, r_idx in micro:
                f, r = _micro_batch(forget, retain, f_idx, r_idx, pad_id, config.method)
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
    if config.method in NEEDS_RETAIN and not retain:
        raise ValueError(f"method {config.method!r} needs a non-empty retain set")
    ref_model = copy.deepcopy(model).eval() if config.method in NEEDS_REFERENCE_MODEL else None
    if ref_model is not None:
        ref_model.requires_grad_(False)
    if config.method in NEEDS_REFERENCE:
        forget = _with_reference(model, forget, pad_id, config.batch_size,
                                 idk=config.method == "idkdpo")
    params = (rmu_parameters(model, config.loss_config()) if config.method == "rmu"
              else list(model.parameters()))
    return forget, ref_model, params


def check_resumable(saved: dict, epoch: int, config: UnlearnConfig, folder: str) -> None:
    """A checkpoint resumes a run of the same config; `epochs` may grow (train on)."""
    if {**saved, "epochs": 0} != {**asdict(config), "epochs": 0}:
        raise ValueError(f"resume: {folder} holds a run with another config: {saved}")
    if epoch > config.epochs:
        raise ValueError(f"resume: {folder} is already at epoch {epoch} > epochs={config.epochs}")


def unlearn(model: nn.Module, forget: list[dict], retain: list[dict], config: UnlearnConfig,
            pad_id: int, checkpoint_dir: str | None = None, resume: bool = False) -> list[dict]:
    """Unlearn `forget` (examples from `trustfast.data.facts.encode_qa`; idkdpo also needs
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
        done = load_checkpoint(checkpoint_dir, "unlearn")
        if done is not None:
            tensors, state = done
            check_resumable(state["config"], state["epoch"], config, checkpoint_dir)
            model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            optimizer_from_checkpoint(opt, state["optimizer"], tensors)
            start_epoch, history = state["epoch"], state["history"]
    gas = config.grad_accum_steps

    def step():
        opt.step()
        opt.zero_grad(set_to_none=True)

    opt.zero_grad(set_to_none=True)
    model.train()
    train_epochs(lambda f, r: unlearning_loss(model, f, r, loss_cfg, ref_model=ref_model),
                 forget, retain, config, pad_id, backward=lambda loss: (loss / gas).backward(),
                 step=step, start_epoch=start_epoch, history=history,
                 on_epoch=(lambda epoch, h: _save(checkpoint_dir, model, opt, config, epoch, h))
                 if checkpoint_dir else None)
    if config.optimizer_in_backward:
        opt.remove()
    if config.gradient_checkpointing:
        set_checkpointing(model, False)
    model.eval()
    return history


def _save(folder, model, opt, config, epoch, history) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    save_checkpoint(folder, "unlearn", tensors, {
        "config": asdict(config), "epoch": epoch, "history": history,
        "optimizer": optimizer_to_checkpoint(opt, tensors)})


def main(argv: list[str] | None = None) -> None:
    """`python -m trustfast.llm.train` (or torchrun -m, deepspeed --module): see launch.py."""
    from trustfast.llm.launch import main as launch_main

    launch_main(argv)


if __name__ == "__main__":
    main()
