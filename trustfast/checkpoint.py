"""Atomic checkpoints: tensors in safetensors, run state in JSON, each written to a temp file and
renamed, so a killed run leaves either the previous checkpoint or the new one, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str, write) -> None:
    """Call `write(tmp)` on a temp file beside `path`, then rename it over `path`: readers see
    the old file or the new one, never half of one. The file gets the permissions a plain
    `open(path, "w")` would give (0644 under the usual umask; mkstemp's are 0600)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_json(path: str, obj: Any) -> None:
    """Write `obj` as JSON to `path` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)

    atomic_write(path, write)


def save_text(path: str, text: str) -> None:
    """Write `text` to `path` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, write)


def load_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def save_checkpoint(folder: str, name: str, tensors: dict[str, torch.Tensor],
                    state: dict[str, Any]) -> None:
    """Save `tensors` to `folder/name.safetensors`, then `state` to `folder/name.json`.

    The JSON is written last and marks the checkpoint complete: `load_checkpoint` ignores
    tensors without it.
    """
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(os.path.join(folder, f"{name}.safetensors"), lambda tmp: save_file(flat, tmp))
    save_json(os.path.join(folder, f"{name}.json"), state)


def load_checkpoint(folder: str, name: str) -> tuple[dict[str, torch.Tensor], dict] | None:
    """(tensors, state) of a complete checkpoint, or None when there is none."""
    meta = os.path.join(folder, f"{name}.json")
    weights = os.path.join(folder, f"{name}.safetensors")
    if not (os.path.exists(meta) and os.path.exists(weights)):
        return None
    return load_file(weights), load_json(meta)


def load_config(cls, path: str):
    """A config dataclass `cls` from a YAML or JSON file whose keys are its fields (unknown
    keys and non-mappings are errors naming the file); see `trustfast.config`."""
    from trustfast.config import ConfigError, build_config, load_config_file

    try:
        return build_config(cls, load_config_file(path))
    except ConfigError as exc:
        raise ConfigError(exc.key, f"{exc.message} (in {path})") from None


def optimizer_to_checkpoint(opt, tensors: dict[str, torch.Tensor], prefix: str = "opt") -> dict:
    """An optimizer's state dict for `save_checkpoint`: its tensors go into `tensors` as
    `{prefix}.{param index}.{key}`, and the JSON part (returned) marks them "tensor"."""
    state = opt.state_dict()
    state_json: dict[str, dict] = {}
    for i, s in state["state"].items():
        state_json[str(i)] = {}
        for k, v in s.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.{i}.{k}"] = v
                state_json[str(i)][k] = "tensor"
            else:
                state_json[str(i)][k] = v
    return {"state": state_json, "param_groups": state["param_groups"]}


def optimizer_from_checkpoint(opt, saved: dict, tensors: dict[str, torch.Tensor],
                              prefix: str = "opt") -> None:
    """Load what `optimizer_to_checkpoint` wrote back into `opt`."""
    state = {int(i): {k: tensors[f"{prefix}.{i}.{k}"] if v == "tensor" else v
                      for k, v in s.items()} for i, s in saved["state"].items()}
    opt.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
