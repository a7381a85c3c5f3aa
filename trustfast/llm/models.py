"""Causal LMs for the LLM methods: a tiny Llama built from a config, the users' own local Hugging
Face models, and saving a model with its tokenizer in Hugging Face's layout.

Nothing is downloaded: `load_causal_lm` reads a local folder with `local_files_only=True`
(`AutoModelForCausalLM` / `AutoTokenizer`), and refuses a path that is not one.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile

import torch
from torch import nn

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
           "float64": torch.float64}


def tiny_llama(vocab_size: int, hidden_size: int = 64, pad_id: int = 0, bos_id: int | None = 1,
               eos_id: int = 2, seed: int = 0, tie_word_embeddings: bool = False,
               max_position_embeddings: int = 64):
    """A 2-layer, 4-head `LlamaForCausalLM` (Touvron et al., 2023) from a config, random init
    seeded by `seed` (nothing downloaded). The special-token ids go into its config, so
    `generate` and `save_pretrained` know them."""
    from transformers import LlamaConfig, LlamaForCausalLM

    for name, value in (("vocab_size", vocab_size), ("hidden_size", hidden_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if hidden_size % 4:
        raise ValueError(f"hidden_size must be a multiple of the 4 heads, got {hidden_size}")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                         intermediate_size=2 * hidden_size, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=max_position_embeddings, pad_token_id=pad_id,
                         bos_token_id=bos_id, eos_token_id=eos_id,
                         tie_word_embeddings=tie_word_embeddings)
    return LlamaForCausalLM(config)


def _resolve_dtype(dtype) -> torch.dtype | str | None:
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.removeprefix("torch.")]
    raise ValueError(f"dtype must be None, 'auto', a torch.dtype or one of {sorted(_DTYPES)}, "
                     f"got {dtype!r}")


def _dtype_kwarg(dtype) -> dict:
    if dtype is None:
        return {}
    import transformers
    from packaging.version import Version

    # `dtype=` from transformers 4.56; `torch_dtype=` before (deprecated since)
    name = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    return {name: dtype}


def _uses_safetensors(path: str) -> bool:
    """True: safetensors weights; False: PyTorch .bin weights (transformers loads those with
    torch.load(weights_only=True), which unpickles tensors only)."""
    if glob.glob(os.path.join(path, "*.safetensors")) or os.path.exists(
            os.path.join(path, "model.safetensors.index.json")):
        return True
    if glob.glob(os.path.join(path, "pytorch_model*.bin")):
        return False
    raise ValueError(f"model: {path} holds no weights (model.safetensors, sharded *.safetensors "
                     "or pytorch_model.bin); save a model there with save_pretrained")


def load_causal_lm(path: str | os.PathLike, device: str | torch.device | None = None,
                   dtype: torch.dtype | str | None = None):
    """(model, tokenizer) of a local Hugging Face model folder: `AutoModelForCausalLM` and
    `AutoTokenizer.from_pretrained(path, local_files_only=True)`, safetensors weights when the
    folder has them, no remote code. The model is moved to `device` (default: where it loads,
    the CPU) and put in eval mode; `dtype` None keeps transformers' default, "auto" the dtype
    in its config, or a torch.dtype / its name. A missing folder, or one without a config,
    weights or a tokenizer, raises ValueError naming `model`."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"model must be a path to a local Hugging Face model folder, got "
                        f"{type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"model: {path!r} is not a directory; expected a local Hugging Face "
                         "model folder (config.json, weights, tokenizer). Nothing is downloaded")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ValueError(f"model: {path} has no config.json; expected a folder written by "
                         "save_pretrained")
    use_safetensors = _uses_safetensors(path)
    dtype = _resolve_dtype(dtype)
    device = torch.device(device) if device is not None else None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True,
                                                  trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ValueError(f"model: {path} holds no tokenizer AutoTokenizer can read "
                         f"(tokenizer.json / tokenizer_config.json): {e}") from e
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, use_safetensors=use_safetensors,
            trust_remote_code=False, **_dtype_kwarg(dtype))
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"model: {path} holds no causal LM AutoModelForCausalLM can read: "
                         f"{e}") from e
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer


def _hf_tokenizer(tokenizer):
    """A Hugging Face tokenizer for `tokenizer`: itself, or a WordTokenizer's `to_hf()`."""
    if hasattr(tokenizer, "save_pretrained"):
        return tokenizer
    if hasattr(tokenizer, "to_hf"):
        return tokenizer.to_hf()
    raise TypeError("tokenizer must be a Hugging Face tokenizer or a trustfast WordTokenizer, "
                    f"got {type(tokenizer).__name__}")


def save_pretrained(model: nn.Module, tokenizer, out_dir: str | os.PathLike) -> str:
    """Write `model` with its `save_pretrained` (safetensors; tied embeddings stored once and
    tied again on load) and its tokenizer into `out_dir`, so that `load_causal_lm(out_dir)`
    (or `AutoModelForCausalLM` / `AutoTokenizer`) reads them back. A WordTokenizer is written
    as its Hugging Face twin (`WordTokenizer.to_hf()`: tokenizer.json, the same ids).

    The folder is written beside `out_dir` and renamed into place, so a killed save leaves the
    previous folder (possibly under `out_dir.old-*`) or the new one, never half of one.
    Returns `out_dir`."""
    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"model must be a Hugging Face PreTrainedModel (with save_pretrained), "
                        f"got {type(model).__name__}")
    hf_tokenizer = _hf_tokenizer(tokenizer)
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a path, got {type(out_dir).__name__}")
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"out_dir: {out_dir} exists and is not a directory")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out_dir)}.tmp-")
    try:
        model.save_pretrained(tmp)
        hf_tokenizer.save_pretrained(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # a plain mkdir's permissions (mkdtemp's are 0700)
        old = None
        if os.path.exists(out_dir):
            old = tempfile.mkdtemp(dir=parent, prefix=f"{os.path.basename(out_dir)}.old-")
            os.replace(out_dir, os.path.join(old, "previous"))
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
