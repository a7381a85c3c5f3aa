"""Conditional diffusers UNets built from a config (nothing is downloaded), and any diffusers UNet
from a local folder.

- `label_unet`: `UNet2DModel` conditioned on a class label through `num_class_embeds` (an
  embedding added to the timestep embedding, as in Dhariwal & Nichol 2021). The embedding has
  `num_labels + 1` rows: the last index is the *null label* of classifier-free guidance (Ho &
  Salimans 2022), the label that training's label dropout puts in and that guided sampling uses
  for the unconditional prediction (`null_label(model)`).
- `token_unet`: `UNet2DConditionModel` conditioned on a sequence of embeddings through
  cross-attention (`encoder_hidden_states`), the Stable Diffusion way; its null condition is a
  zero sequence.
- `load_unet`: a `UNet2DModel` / `UNet2DConditionModel` saved with `save_pretrained`, read with
  `local_files_only=True`: a path that is no such folder is an error, never a Hub lookup.

diffusers is imported inside the functions (it takes seconds to import).
"""

from __future__ import annotations

import json
import os

import torch

from trustfast.checks import check_choice, check_number, shown

# UNet2DModel presets. "tiny" trains 16-32 px images in a few hundred steps on 2 CPU cores
# (0.7 M parameters; one attention level of 2 heads of 32 at the coarse resolution; a
# forward + backward at batch 8, 16 px takes 0.1 s on one thread);
# "small" is a 3-level model of 6.8 M parameters for 32-64 px data on a GPU.
LABEL_PRESETS: dict[str, dict] = {
    "tiny": dict(block_out_channels=(32, 64), layers_per_block=1,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                 up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                 norm_num_groups=8, attention_head_dim=32),
    "small": dict(block_out_channels=(64, 128, 128), layers_per_block=2,
                  down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                  up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                  norm_num_groups=32, attention_head_dim=32),
}
TOKEN_PRESETS = ("tiny",)
UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {shown(value)}")
    return int(check_number(name, value, low=low, integer=True))


def _check_sample_size(sample_size, levels: int) -> int:
    sample_size = _check_int("sample_size", sample_size, 1)
    factor = 2 ** (levels - 1)
    if sample_size % factor:
        raise ValueError(f"sample_size must be a multiple of {factor} (the UNet downsamples "
                         f"{levels - 1} times), got {sample_size}")
    return sample_size


def label_unet(num_labels: int, *, preset: str = "tiny", sample_size: int = 32,
               in_channels: int = 3, seed: int = 0):
    """A class-conditional diffusers `UNet2DModel` (random weights, seeded) for `num_labels`
    classes, predicting noise of the input's shape.

    `num_class_embeds = num_labels + 1`: labels 0..num_labels-1 are the classes and label
    `num_labels` is the null label of classifier-free guidance (`null_label`). Presets: see
    `LABEL_PRESETS` ("tiny" for tests and CPU demos, "small" for GPU runs). Returned in train
    mode.
    """
    from diffusers import UNet2DModel

    num_labels = _check_int("num_labels", num_labels, 1)
    check_choice("preset", preset, tuple(LABEL_PRESETS))
    arch = LABEL_PRESETS[preset]
    sample_size = _check_sample_size(sample_size, len(arch["block_out_channels"]))
    in_channels = _check_int("in_channels", in_channels, 1)
    seed = _check_int("seed", seed, 0)
    with torch.random.fork_rng(devices=[]):  # seeded init without moving the caller's RNG
        torch.manual_seed(seed)
        model = UNet2DModel(sample_size=sample_size, in_channels=in_channels,
                            out_channels=in_channels, num_class_embeds=num_labels + 1, **arch)
    return model.train()


def null_label(model) -> int:
    """The null label of a `label_unet`-style model: its last class embedding,
    `num_class_embeds - 1`. A model without class embeddings is a TypeError."""
    config = getattr(model, "config", None)
    n = getattr(config, "num_class_embeds", None) if config is not None else None
    if not isinstance(n, int) or n < 2:
        raise TypeError("model must be a class-conditional diffusers UNet2DModel (num_class_embeds"
                        f" >= 2, e.g. from label_unet), got {type(model).__name__} with "
                        f"num_class_embeds={n!r}")
    return n - 1


def token_unet(*, preset: str = "tiny", sample_size: int = 16, in_channels: int = 4,
               cross_attention_dim: int = 32, seed: int = 0):
    """A diffusers `UNet2DConditionModel` conditioned on `encoder_hidden_states` of shape
    (B, tokens, cross_attention_dim) by cross-attention (random weights, seeded).

    "tiny" is `trustfast.diffusion.tiny.tiny_unet`'s architecture (blocks of 80 and 160
    channels, head dims 40 and 80) with `in_channels` input and output channels. Returned in
    train mode; the null condition of guidance is a zero sequence.
    """
    from diffusers import UNet2DConditionModel

    from trustfast.diffusion.tiny import tiny_unet

    check_choice("preset", preset, TOKEN_PRESETS)
    sample_size = _check_sample_size(sample_size, 2)
    in_channels = _check_int("in_channels", in_channels, 1)
    cross_attention_dim = _check_int("cross_attention_dim", cross_attention_dim, 1)
    seed = _check_int("seed", seed, 0)
    with torch.random.fork_rng(devices=[]):
        model = tiny_unet(seed=seed, sample_size=sample_size,
                          cross_attention_dim=cross_attention_dim)
        if in_channels != model.config.in_channels:
            config = {**model.config, "in_channels": in_channels, "out_channels": in_channels}
            torch.manual_seed(seed)
            model = UNet2DConditionModel.from_config(config)
    return model.train()


def load_unet(path: str | os.PathLike, device: torch.device | str | None = None):
    """A diffusers `UNet2DModel` or `UNet2DConditionModel` saved with `save_pretrained` in the
    local folder `path` (its config.json names the class), read with `local_files_only=True`,
    moved to `device` if given. A path that is not such a folder is a ValueError saying what is
    missing; nothing is looked up on the Hub."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a folder path (str or os.PathLike), got {shown(path)}")
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"path must be a local folder holding a diffusers UNet (config.json "
                         f"and weights from save_pretrained), got {path!r} (no such folder; "
                         "nothing is downloaded)")
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise ValueError(f"path {path!r} holds no config.json: it is not a diffusers model "
                         "folder (save one with model.save_pretrained(folder))")
    try:
        with open(config_file, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{config_file} is not valid JSON ({exc})") from None
    name = config.get("_class_name") if isinstance(config, dict) else None
    if name not in UNET_CLASSES:
        raise ValueError(f"{config_file} describes {name!r}, not one of {UNET_CLASSES}")
    import diffusers

    cls = getattr(diffusers, name)
    try:
        # low_cpu_mem_usage needs accelerate, which is no dependency: without it diffusers
        # falls back to False anyway, after printing advice to install it
        model = cls.from_pretrained(path, local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load a {name} from {path!r}: {exc}") from None
    if device is not None:
        model = model.to(torch.device(device))
    return model
