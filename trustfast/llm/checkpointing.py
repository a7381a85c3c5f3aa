"""Both kinds of checkpointing the LLM trainers use.

Activation checkpointing (`set_checkpointing`): keep each layer's input only and recompute
the layer in the backward pass (Chen et al., 2016), on any Hugging Face model.

Run checkpoints of the single-process unlearning loop (`save_unlearn_state` /
`load_unlearn_state`): the model, the optimizer and the epoch, as safetensors plus a JSON state
written atomically by `trustfast.checkpoint`, so a killed run resumes from its last epoch.
`check_resumable` is shared with the DeepSpeed trainer, whose checkpoints are DeepSpeed's own.
"""

from __future__ import annotations

from dataclasses import asdict

from torch import nn

from trustfast.checkpoint import (
    load_checkpoint,
    optimizer_from_checkpoint,
    optimizer_to_checkpoint,
    save_checkpoint,
)

UNLEARN_CHECKPOINT = "unlearn"  # file stem in the checkpoint folder


def set_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Activation (gradient) checkpointing of a Hugging Face model on or off, by whichever name
    its transformers version uses (activation_* from v5, gradient_* before)."""
    if enabled:
        on = getattr(model, "activation_checkpointing_enable", None)
        if on is not None:
            on({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={
                "use_reentrant": False})
    else:
        off = getattr(model, "activation_checkpointing_disable", None)
        (off or model.gradient_checkpointing_disable)()


def check_resumable(saved: dict, epoch: int, config, folder: str) -> None:
    """A checkpoint resumes a run of the same config (a dataclass); `epochs` may grow (train
    on). `saved` is the checkpoint's `asdict(config)`."""
    if {**saved, "epochs": 0} != {**asdict(config), "epochs": 0}:
        raise ValueError(f"resume: {folder} holds a run with another config: {saved}")
    if epoch > config.epochs:
        raise ValueError(f"resume: {folder} is already at epoch {epoch} > epochs={config.epochs}")


def save_unlearn_state(folder: str, model: nn.Module, optimizer, config, epoch: int,
                       history: list[dict]) -> None:
    """Checkpoint a single-process unlearning run after `epoch`: the model's state dict, the
    optimizer's state and the run's config and per-epoch logs."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    save_checkpoint(folder, UNLEARN_CHECKPOINT, tensors, {
        "config": asdict(config), "epoch": epoch, "history": history,
        "optimizer": optimizer_to_checkpoint(optimizer, tensors)})


def load_unlearn_state(folder: str, model: nn.Module, optimizer,
                       config) -> tuple[int, list[dict]]:
    """(epochs done, their logs) of the checkpoint in `folder`, loaded into `model` and
    `optimizer`; (0, []) when there is none. A checkpoint of another config raises."""
    done = load_checkpoint(folder, UNLEARN_CHECKPOINT)
    if done is None:
        return 0, []
    tensors, state = done
    check_resumable(state["config"], state["epoch"], config, folder)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    optimizer_from_checkpoint(optimizer, state["optimizer"], tensors)
    return state["epoch"], state["history"]
