"""Fine-tuning (memorize) and unlearning loops for Hugging Face causal LMs, single process.

`finetune(model, examples)` trains on the answer tokens with AdamW; `unlearn(model, forget,
retain, UnlearnConfig(...))` runs one of `trustfast.llm.losses.METHODS`, pairing each forget
batch with a retain batch. Reference NLLs (NPO, IdkDPO) are computed once before training and
ride in the batches, so no reference model stays in memory (except for ga_kl). Both loops can
checkpoint to a folder (safetensors + JSON, atomic) every epoch and resume from it.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from trustfast.checkpoint import load_checkpoint, save_checkpoint
from trustfast.llm.losses import (
    NEEDS_REFERENCE,
    NEEDS_REFERENCE_MODEL,
    LossConfig,
    reference_nlls,
    rmu_parameters,
    sequence_nlls,
    unlearning_loss,
)


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


@dataclass
class UnlearnConfig:
    """One unlearning run (defaults sized for the built-in facts and a tiny model)."""

    method: str = "npo"
    epochs: int = 10
    lr: float = 1e-4  # AdamW
    batch_size: int = 8  # forget examples per step (with as many retain examples)
    beta: float | None = None  # None: the method's default (LossConfig)
    gamma: float | None = None  # None: the method's default (LossConfig)
    alpha: float = 1.0
    delta: float = 0.0
    rmu_layer: int = 7
    steering_coeff: float = 6.5
    seed: int = 0

    def loss_config(self) -> LossConfig:
        return LossConfig(self.method, self.beta, self.gamma, self.alpha, self.delta,
                          self.rmu_layer, self.steering_coeff, self.seed)


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


def unlearn(model: nn.Module, forget: list[dict], retain: list[dict], config: UnlearnConfig,
            pad_id: int, checkpoint_dir: str | None = None, resume: bool = False) -> list[dict]:
    """Unlearn `forget` (examples from `trustfast.data.facts.encode_qa`; idkdpo also needs
    idk_* fields) while keeping `retain`. Returns per-epoch logs. With `checkpoint_dir`, the
    model, optimizer and epoch are saved after every epoch; `resume=True` continues from there."""
    loss_cfg = config.loss_config()
    if not forget:
        raise ValueError("forget must not be empty")
    ref_model = copy.deepcopy(model).eval() if config.method in NEEDS_REFERENCE_MODEL else None
    if config.method in NEEDS_REFERENCE:
        forget = _with_reference(model, forget, pad_id, config.batch_size,
                                 idk=config.method == "idkdpo")
    params = (rmu_parameters(model, loss_cfg) if config.method == "rmu"
              else list(model.parameters()))
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.01)
    start_epoch, history = 0, []
    if resume and checkpoint_dir:
        done = load_checkpoint(checkpoint_dir, "unlearn")
        if done is not None:
            tensors, state = done
            if state["config"] != asdict(config):
                raise ValueError(f"resume: {checkpoint_dir} holds another config")
            model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            opt.load_state_dict(state["optimizer"] | {"state": {
                int(i): {k: tensors[f"opt.{i}.{k}"] if isinstance(v, str) else v
                         for k, v in s.items()} for i, s in state["optimizer"]["state"].items()}})
            start_epoch, history = state["epoch"], state["history"]
    retain_stream = itertools.cycle(range(max(len(retain), 1)))
    model.train()
    for epoch in tqdm(range(start_epoch, config.epochs), desc=f"unlearn {config.method}",
                      leave=False):
        logs = []
        for chunk in _batches(forget, config.batch_size, config.seed, epoch):
            f = collate(chunk, pad_id)
            for key in ("ref_nll", "ref_idk_nll"):
                if key in chunk[0]:
                    f[key] = torch.stack([e[key] for e in chunk])
            if config.method == "idkdpo":
                f.update(collate(chunk, pad_id, prefix="idk_"))
            r = None
            if retain:
                r = collate([retain[next(retain_stream)] for _ in chunk], pad_id)
            loss, log = unlearning_loss(model, f, r, loss_cfg, ref_model=ref_model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            logs.append(log)
        history.append({k: sum(lg[k] for lg in logs) / len(logs) for k in logs[0]}
                       | {"epoch": epoch + 1})
        if checkpoint_dir:
            _save(checkpoint_dir, model, opt, config, epoch + 1, history)
    model.eval()
    return history


def _save(folder, model, opt, config, epoch, history) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()
    state_json = {}
    for i, s in opt_state["state"].items():
        state_json[str(i)] = {}
        for k, v in s.items():
            if torch.is_tensor(v):
                tensors[f"opt.{i}.{k}"] = v
                state_json[str(i)][k] = "tensor"
            else:
                state_json[str(i)][k] = v
    save_checkpoint(folder, "unlearn", tensors, {
        "config": asdict(config), "epoch": epoch, "history": history,
        "optimizer": {"state": state_json, "param_groups": opt_state["param_groups"]}})
