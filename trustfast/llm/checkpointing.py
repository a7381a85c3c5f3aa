"""Both kinds of checkpointing the LLM trainers use.

Activation checkpointing (`set_checkpointing`): keep each layer's input only and recompute
the layer in the backward pass (Chen et al., 2016), on any Hugging Face model.

Run checkpoints of the single-process unlearning loop (`save_unlearn_state` /
`load_unlearn_state`): the model, the optimizer and the epoch, as safetensors plus a JSON state
written atomically by `trustfast.checkpoint`, so a killed run resumes from its last epoch.
`check_resumable` is shared with the DeepSpeed trainer, whose checkpoints are DeepSpeed's own.

DeepSpeed's checkpoints are torch pickles, and DeepSpeed 0.19 reads them with
`torch.load(weights_only=False)`, which runs whatever code a pickle names. `use_safe_loads`
swaps a DeepSpeed engine's checkpoint engine for `SafeTorchCheckpointEngine`, which reads every
file with `torch.load(weights_only=True)` and admits only the few DeepSpeed classes its own
checkpoints pickle (`DEEPSPEED_SAFE_GLOBALS`); a file that names anything else is refused with
an `UnsafeCheckpointError` naming it, before any of its code runs.
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import asdict

import torch
from torch import nn

from trustfast.checkpoint import (
    CheckpointError,
    load_checkpoint,
    optimizer_from_checkpoint,
    optimizer_to_checkpoint,
    save_checkpoint,
    state_item,
)

UNLEARN_CHECKPOINT = "unlearn"  # file stem in the checkpoint folder

# What DeepSpeed 0.19's own ZeRO 0-3 checkpoints pickle besides tensors and containers
# (measured with torch.serialization.get_unsafe_globals_in_checkpoint on checkpoints of
# stages 0-3, bf16, optimizer and parameter offload): plain data classes and an enum, whose
# unpickling sets fields and runs no code of the file's choosing.
DEEPSPEED_SAFE_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)
_TAG = re.compile(r"^epoch\d+$")  # the tags unlearn_deepspeed writes


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file pickles something that `torch.load(weights_only=True)` does not admit
    (a class or function outside the allow-list): it was not loaded, and none of its code ran."""


def deepspeed_safe_globals() -> list:
    """The classes of `DEEPSPEED_SAFE_GLOBALS` (imported from deepspeed)."""
    import importlib

    out = []
    for dotted in DEEPSPEED_SAFE_GLOBALS:
        module, name = dotted.rsplit(".", 1)
        out.append(getattr(importlib.import_module(module), name))
    return out


def safe_torch_load(path: str, map_location=None, safe_globals: list | tuple = ()):
    """`torch.load(path, weights_only=True)` with `safe_globals` admitted as well.

    A file that pickles anything else raises UnsafeCheckpointError naming it (nothing of it
    ran); a truncated or foreign file raises CheckpointError naming it."""
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text:
            found = next((line.strip() for line in text.splitlines()
                          if "Unsupported" in line or "GLOBAL" in line), text.splitlines()[0])
            raise UnsafeCheckpointError(
                f"{path}: refusing to load it: it pickles something other than tensors and "
                f"DeepSpeed's checkpoint state ({found}), which could run code when unpickled. "
                "Resume only from checkpoints you wrote; delete the folder to start over") \
                from None
        raise CheckpointError(f"{path} is damaged (not a torch checkpoint: {exc}; truncated?): "
                              "delete the checkpoint folder to start over") from None
    except Exception as exc:  # zip / pickle readers' errors on a truncated or foreign file
        raise CheckpointError(f"{path} is damaged (truncated, or not a torch checkpoint: "
                              f"{exc}): delete the checkpoint folder to start over") from None


def _safe_engine_class():
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    class SafeTorchCheckpointEngine(TorchCheckpointEngine):
        """DeepSpeed's torch checkpoint engine, loading with `safe_torch_load`."""

        def load(self, path: str, map_location=None):
            return safe_torch_load(path, map_location, deepspeed_safe_globals())

    return SafeTorchCheckpointEngine


def use_safe_loads(engine) -> None:
    """Make DeepSpeed `engine` read its checkpoints with `torch.load(weights_only=True)` (see
    `safe_torch_load`): its default `TorchCheckpointEngine` is replaced by a subclass whose
    only change is `load`; saving is unchanged. Another checkpoint engine (Nebula, DataStates,
    the fast / decoupled writers) is refused: its loads are not ours to vouch for."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    current = engine.checkpoint_engine
    if type(current) is not TorchCheckpointEngine:
        raise ValueError(f"resume: DeepSpeed's checkpoint engine is {type(current).__name__}; "
                         "only the default TorchCheckpointEngine can be loaded safely "
                         "(weights_only=True)")
    safe = _safe_engine_class()(None)
    safe.zipfile_serialization = current.zipfile_serialization
    engine.checkpoint_engine = safe


def latest_tag(folder: str) -> str | None:
    """The tag in `folder/latest` (None when there is none), checked to be one that
    `unlearn_deepspeed` writes (`epoch<N>`) with its folder present, so a hand-edited
    `latest` cannot point the load elsewhere."""
    path = os.path.join(folder, "latest")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            tag = f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is damaged ({exc}): delete {folder} to start over") \
            from None
    if not _TAG.match(tag):
        raise CheckpointError(f"{path} is damaged: it must hold a tag like 'epoch3', got "
                              f"{tag[:40]!r}; delete {folder} to start over")
    if not os.path.isdir(os.path.join(folder, tag)):
        raise CheckpointError(f"{path} names {tag}, but {os.path.join(folder, tag)} is missing; "
                              f"delete {folder} to start over")
    return tag


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
    if not isinstance(saved, dict) or isinstance(epoch, bool) or not isinstance(epoch, int) \
            or epoch < 0:
        raise CheckpointError(f"resume: {folder} is damaged (its state has config "
                              f"{type(saved).__name__} and epoch {epoch!r}); delete it to start "
                              "over")
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
    where = os.path.join(folder, f"{UNLEARN_CHECKPOINT}.json")
    check_resumable(state_item(state, "config", where, dict),
                    state_item(state, "epoch", where, int), config, folder)
    history = state_item(state, "history", where, list)
    saved_opt = state_item(state, "optimizer", where, dict)
    weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    expected = model.state_dict()
    wrong = sorted(set(expected) ^ set(weights)) + sorted(
        k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape)
    if wrong:  # checked before anything is loaded: the model stays as it was
        raise CheckpointError(f"{os.path.join(folder, UNLEARN_CHECKPOINT)}.safetensors does not "
                              f"hold this model's weights (missing, unexpected or of another "
                              f"shape: {wrong[:5]}): delete {folder} to start over")
    optimizer_from_checkpoint(optimizer, saved_opt, tensors, where=where)
    model.load_state_dict(weights)
    return state["epoch"], history
