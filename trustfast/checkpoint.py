"""Atomic checkpoints: tensors in safetensors, run state in JSON, each written to a temp file and
renamed, so a killed run leaves either the previous checkpoint or the new one, never half of one.

Nothing here unpickles: tensors are read with safetensors, state with `json`. A damaged file
(truncated, not safetensors / JSON, a missing key) is a `CheckpointError` (a ValueError) that
names the file, says what is wrong and what to do. Tensors that share memory (tied embeddings)
are saved once, with their other names recorded in the safetensors metadata, and loaded back
under every name as one tensor.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

ALIASES_KEY = "trustfast.aliases"  # safetensors metadata: JSON {alias name: saved name}


class CheckpointError(ValueError):
    """A checkpoint or state file cannot be read: the message names the file, what is wrong
    and what to do about it."""


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


def json_safe(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, +-Inf) replaced by None, so that it serializes
    to strict JSON (`null`); tuples become lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def save_json(path: str, obj: Any) -> None:
    """Write `obj` as strict JSON to `path` atomically. Non-finite floats (NaN, +-Inf), which
    JSON has no literal for, are written as `null`; anything else JSON cannot hold is a
    TypeError (nothing is written then)."""
    text = json.dumps(json_safe(obj), indent=1, allow_nan=False)
    save_text(path, text)


def save_text(path: str, text: str) -> None:
    """Write `text` to `path` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    atomic_write(path, write)


def load_json(path: str, what: str = "") -> Any:
    """The JSON in `path`. A file that is not valid JSON (truncated, edited by hand, empty) is
    a CheckpointError naming the file and the position of the fault; `what` says what to do
    (default: delete the file to start over)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is damaged (not valid JSON: {exc}; truncated?): "
                              f"{what or 'delete it to start over'}") from None


def _storage_key(t: torch.Tensor) -> tuple:
    return (t.device.type, t.untyped_storage().data_ptr())


def _dedupe(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors to write, {alias: saved name}). A tensor that is the same view of the same
    memory as an earlier one (a tied weight) is written once and recorded as an alias; one that
    overlaps another's memory in a different view is written as its own copy."""
    flat: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, list[tuple[str, torch.Tensor]]] = {}
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensors keys must be strings, got {name!r} ({type(name).__name__})")
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"tensors[{name!r}] must be a torch.Tensor, got "
                            f"{type(value).__name__}")
        t = value.detach()
        if t.numel() == 0:
            flat[name] = t.cpu().contiguous()
            continue
        key = _storage_key(t)
        same = next((n for n, o in seen.get(key, ()) if o.shape == t.shape
                     and o.stride() == t.stride() and o.storage_offset() == t.storage_offset()
                     and o.dtype == t.dtype), None)
        if same is not None:
            aliases[name] = same
            continue
        shares = key in seen
        seen.setdefault(key, []).append((name, t))
        t = t.cpu().contiguous()
        flat[name] = t.clone() if shares or t.untyped_storage().nbytes() != \
            t.numel() * t.element_size() else t
    return flat, aliases


def save_checkpoint(folder: str, name: str, tensors: dict[str, torch.Tensor],
                    state: dict[str, Any]) -> None:
    """Save `tensors` to `folder/name.safetensors`, then `state` to `folder/name.json`.

    The JSON is written last and marks the checkpoint complete: `load_checkpoint` ignores
    tensors without it. Tensors that are the same memory under several names (tied input and
    output embeddings) are stored once; the other names are recorded in the file's metadata
    (`trustfast.aliases`) and `load_checkpoint` restores them.
    """
    flat, aliases = _dedupe(tensors)
    metadata = {ALIASES_KEY: json.dumps(aliases)} if aliases else None
    atomic_write(os.path.join(folder, f"{name}.safetensors"),
                 lambda tmp: save_file(flat, tmp, metadata=metadata))
    save_json(os.path.join(folder, f"{name}.json"), state)


def _start_over(folder: str, name: str) -> str:
    return (f"delete {os.path.join(folder, name)}.safetensors and {name}.json to start this "
            "step over, or resume from a copy of the folder you trust")


def load_tensors(path: str, what: str = "delete it to start over") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file written by `save_checkpoint` (aliases restored as the
    same tensor under each name). A truncated or foreign file is a CheckpointError naming it."""
    try:
        with safe_open(path, framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is damaged (truncated, or not a safetensors file: "
                              f"{exc}): {what}") from None
    try:
        aliases = json.loads(metadata.get(ALIASES_KEY, "{}"))
        for alias, saved in aliases.items():
            tensors[alias] = tensors[saved]
    except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as exc:
        raise CheckpointError(f"{path} is damaged (its {ALIASES_KEY} metadata names a missing "
                              f"tensor: {exc!r}): {what}") from None
    return tensors


def load_checkpoint(folder: str, name: str) -> tuple[dict[str, torch.Tensor], dict] | None:
    """(tensors, state) of a complete checkpoint, or None when there is none (no JSON: a save
    that did not finish, whose tensors are ignored). A damaged file, a JSON state that is not a
    mapping, or a JSON state whose tensors are missing is a CheckpointError naming the file."""
    meta = os.path.join(folder, f"{name}.json")
    weights = os.path.join(folder, f"{name}.safetensors")
    if not os.path.exists(meta):
        return None
    what = _start_over(folder, name)
    if not os.path.exists(weights):
        raise CheckpointError(f"{weights} is missing although {meta} marks the checkpoint "
                              f"complete: {what}")
    state = load_json(meta, what)
    if not isinstance(state, dict):
        raise CheckpointError(f"{meta} is damaged (it holds {type(state).__name__}, not a "
                              f"mapping): {what}")
    return load_tensors(weights, what), state


def state_item(state: Mapping, key: str, where: str, kind: type | tuple[type, ...] = object):
    """`state[key]` of a checkpoint's JSON state read from `where`, or a CheckpointError
    naming the file and the key when it is missing or of the wrong kind."""
    if not isinstance(state, Mapping) or key not in state:
        raise CheckpointError(f"{where} is damaged (no {key!r} entry): delete it to start over")
    value = state[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise CheckpointError(f"{where} is damaged ({key!r} must be {names}, got "
                              f"{type(value).__name__}): delete it to start over")
    return value


def load_config(cls, path: str):
    """A config dataclass `cls` from a YAML or JSON file whose keys are its fields (unknown
    keys and non-mappings are errors naming the file); see `trustfast.config`."""
    from trustfast.config import ConfigError, build_config, load_config_file

    try:
        return build_config(cls, load_config_file(path))
    except ConfigError as exc:
        if path in exc.message:
            raise
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
                              prefix: str = "opt", where: str = "the checkpoint") -> None:
    """Load what `optimizer_to_checkpoint` wrote back into `opt`. A missing tensor or entry,
    or a state that does not fit `opt` (another number of parameters or shapes), is a
    CheckpointError naming `where` (the checkpoint's file)."""
    try:
        state = {int(i): {k: tensors[f"{prefix}.{i}.{k}"] if v == "tensor" else v
                          for k, v in s.items()} for i, s in saved["state"].items()}
        opt.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{where} is damaged (its optimizer state lacks {exc}): delete "
                              "it to start over") from None
    except ValueError as exc:
        raise CheckpointError(f"{where} holds an optimizer state that does not fit this "
                              f"optimizer ({exc}): delete it to start over") from None
