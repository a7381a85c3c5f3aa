"""Training a conditional diffusion model: the one loop the diffusion methods share.

DDPM training (Ho et al., NeurIPS 2020) on diffusers' models and `DDPMScheduler`: for a clean
image x0 in [-1, 1] (the dataset's [0, 1] images times 2 minus 1), a timestep t ~ U{0..T-1} and
noise e ~ N(0, I), the model sees x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) e and predicts e
("epsilon") or v = sqrt(abar_t) e - sqrt(1 - abar_t) x0 ("v_prediction", Salimans & Ho 2022,
`DDPMScheduler.get_velocity`). The loss is mean_i(w_i * mean((pred_i - target_i)^2)) with
per-sample weights w (`loss_weight`), plus an optional `regularizer` on the model's clean-image
estimate. Classifier-free guidance (Ho & Salimans 2022) is trained by label dropout: with
probability `label_dropout` a label becomes the null label (`null_label(model)`), or, for a
token-conditioned `UNet2DConditionModel`, its `encoder_hidden_states` become zeros.

Determinism (the basis of exact resume and of DDP parity): the order of an epoch comes from
`sampler.set_epoch(epoch)` or from a permutation seeded by (seed, epoch); the noise, timesteps
and dropout of a step are drawn for the whole global batch from a generator seeded by (seed,
step). So a run has no random state besides its position, a resumed run skips the batches it
has done and redraws exactly what the uninterrupted run drew, and a DDP rank slices its share of
the same draws. Incomplete last batches of an epoch are dropped (every step sees `batch_size`
samples, and every DDP rank the same number).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from trustfast.checks import check_tensor, describe, shown
from trustfast.config import Config, config_diff, to_dict
from trustfast.utils import progress_kwargs

CHECKPOINT = "diffusion"  # file stem of the run checkpoint in `out`
PREDICTION_TYPES = ("epsilon", "v_prediction")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
OPTIMIZERS = ("adamw", "masked_adamw")
MIXED_PRECISION = ("no", "fp16", "bf16")
# Keys that may change between a checkpoint and its resume: how long to train and how often
# to save, which do not change any step already taken.
RESUMABLE_CHANGES = ("epochs", "max_steps", "checkpoint_every", "num_workers")


@dataclass
class DiffusionTrainConfig(Config):
    """DDPM training of a conditional UNet (defaults: Ho et al. 2020's schedule; CFG dropout
    0.1 as in Ho & Salimans 2022; EMA and clipping as diffusers' training examples).

    The default lr 1e-4 is the papers' and diffusers' for full-size UNets; the "tiny" preset of
    `label_unet` learns 16-32 px data in a few hundred steps at lr 1e-3 to 2e-3 (batch 8-32)
    with prediction_type "v_prediction"; an epsilon model needs far more steps before its
    samples are right (its x0 estimate near t = T divides by sqrt(abar_T) = 0.006), although
    its loss falls as fast.
    """

    epochs: int = 1  # passes over the sampler's order (ignored when max_steps > 0)
    max_steps: int = 0  # > 0: stop after this many optimizer steps, whatever the epochs
    batch_size: int = 64  # the GLOBAL batch: under DDP each of W ranks takes batch_size / W
    lr: float = 1e-4
    weight_decay: float = 0.0  # AdamW's decoupled weight decay (DDPM used plain Adam)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    lr_warmup_steps: int = 0  # linear warm-up of lr from lr / warmup to lr over these steps
    prediction_type: str = "epsilon"  # what the model predicts: "epsilon" or "v_prediction"
    num_train_timesteps: int = 1000  # T of DDPM
    beta_schedule: str = "linear"  # diffusers' beta_schedule names
    beta_start: float = 1e-4
    beta_end: float = 0.02
    label_dropout: float = 0.1  # probability of the null label (classifier-free guidance)
    ema_decay: float = 0.999  # diffusers EMAModel's decay; 0 = no EMA
    grad_clip: float = 1.0  # max global L2 norm of the gradient; 0 = no clipping
    optimizer: str = "adamw"  # "adamw" (torch.optim.AdamW) or "masked_adamw" (trustfast's)
    mixed_precision: str = "no"  # "fp16" / "bf16": autocast (+ GradScaler for fp16), CUDA only
    checkpoint_every: int = 0  # steps between checkpoints in `out` (0: only at the end)
    num_workers: int = 0  # DataLoader worker processes
    seed: int = 0

    def check(self) -> None:
        self.at_least("epochs", 1)
        self.at_least("max_steps", 0)
        self.at_least("batch_size", 1)
        self.at_least("lr", 0, strict=True)
        self.at_least("weight_decay", 0)
        self.within("adam_beta1", 0, 1, high_open=True)
        self.within("adam_beta2", 0, 1, high_open=True)
        self.at_least("adam_eps", 0)
        self.at_least("lr_warmup_steps", 0)
        self.choice("prediction_type", PREDICTION_TYPES)
        self.at_least("num_train_timesteps", 2)
        self.choice("beta_schedule", BETA_SCHEDULES)
        self.within("beta_start", 0, 1, low_open=True, high_open=True)
        self.within("beta_end", 0, 1, low_open=True, high_open=True)
        self.require(self.beta_end >= self.beta_start, "beta_end", f">= beta_start "
                     f"({self.beta_start:g})")
        self.within("label_dropout", 0, 1)
        self.within("ema_decay", 0, 1, high_open=True)
        self.at_least("grad_clip", 0)
        self.choice("optimizer", OPTIMIZERS)
        self.choice("mixed_precision", MIXED_PRECISION)
        self.at_least("checkpoint_every", 0)
        self.at_least("num_workers", 0)
        self.at_least("seed", 0)


@dataclass
class TrainResult:
    """What `train_diffusion` returns.

    model: the trained model, holding the EMA weights when EMA is on (else the raw weights);
    losses: the training loss of every step from step 0 (restored from the checkpoint on
    resume; under DDP the mean over ranks = the global batch's loss);
    steps: optimizer steps taken in total;
    raw_state: the raw (non-EMA) weights at the end as a state dict (cloned, on the model's
    device) when EMA is on, else None (the model holds them);
    nonfinite_skips: steps whose gradient had NaN/Inf and were skipped (weights untouched).
    """

    model: nn.Module
    losses: list[float]
    steps: int
    raw_state: dict[str, torch.Tensor] | None = None
    nonfinite_skips: int = 0


def noise_scheduler(config: DiffusionTrainConfig | None = None):
    """diffusers `DDPMScheduler` with the config's betas, T and prediction type."""
    from diffusers import DDPMScheduler

    config = DiffusionTrainConfig() if config is None else config
    if not isinstance(config, DiffusionTrainConfig):
        raise TypeError(f"config must be a DiffusionTrainConfig, got {shown(config)}")
    return DDPMScheduler(num_train_timesteps=config.num_train_timesteps,
                         beta_start=config.beta_start, beta_end=config.beta_end,
                         beta_schedule=config.beta_schedule,
                         prediction_type=config.prediction_type)


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU torch.Generator seeded by a tuple of non-negative ints (numpy's SeedSequence
    mixes them, so (seed, step) and (seed + 1, step - 1) give unrelated streams)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _is_token_model(model: nn.Module) -> bool:
    from diffusers import UNet2DConditionModel

    return isinstance(model, UNet2DConditionModel)


def _check_model(model) -> None:
    from diffusers import UNet2DConditionModel, UNet2DModel

    if not isinstance(model, (UNet2DModel, UNet2DConditionModel)):
        raise TypeError("model must be a diffusers UNet2DModel or UNet2DConditionModel (e.g. from "
                        f"label_unet / token_unet / load_unet), got {type(model).__name__}")
    cfg = model.config
    if cfg.out_channels != cfg.in_channels:
        raise ValueError(f"model must predict a tensor of its input's shape (out_channels == "
                         f"in_channels), got in_channels={cfg.in_channels}, out_channels="
                         f"{cfg.out_channels} (learned-variance models are not supported)")


def _conditional(model) -> bool:
    """Whether a UNet2DModel takes class labels (token models always take a condition)."""
    return _is_token_model(model) or getattr(model.config, "num_class_embeds", None) is not None


def predict(model, x_t: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor | None):
    """The model's output on noisy x_t: `class_labels=cond` for a UNet2DModel (None for an
    unconditional one), `encoder_hidden_states=cond` for a UNet2DConditionModel."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if _is_token_model(inner):
        return model(x_t, timesteps, encoder_hidden_states=cond).sample
    if cond is None:
        return model(x_t, timesteps).sample
    return model(x_t, timesteps, class_labels=cond).sample


def clean_estimate(scheduler, x_t: torch.Tensor, pred: torch.Tensor, timesteps: torch.Tensor,
                   prediction_type: str) -> torch.Tensor:
    """The model's x0 estimate: (x_t - sqrt(1 - abar) eps) / sqrt(abar) for epsilon,
    sqrt(abar) x_t - sqrt(1 - abar) v for v_prediction (both exact inversions of the forward
    process for the true eps / v)."""
    abar = scheduler.alphas_cumprod.to(device=x_t.device, dtype=torch.float32)[timesteps]
    a = abar.sqrt().view(-1, 1, 1, 1).to(pred.dtype)
    s = (1 - abar).sqrt().view(-1, 1, 1, 1).to(pred.dtype)
    if prediction_type == "epsilon":
        return (x_t - s * pred) / a
    return a * x_t - s * pred


def diffusion_loss(model, scheduler, x0: torch.Tensor, cond: torch.Tensor | None,
                   noise: torch.Tensor, timesteps: torch.Tensor, *,
                   prediction_type: str = "epsilon", weights: torch.Tensor | None = None,
                   return_x0: bool = False):
    """(loss, per-sample MSE[, x0 estimate]) of one denoising step on x0 in [-1, 1].

    per_sample_i = mean((f(x_t, t, c)_i - target_i)^2), target = noise (epsilon) or
    `scheduler.get_velocity(x0, noise, t)` (v); loss = mean_i(weights_i * per_sample_i)
    (weights None = 1). The MSE is taken in float32 even under autocast.
    """
    x_t = scheduler.add_noise(x0, noise, timesteps)
    pred = predict(model, x_t, timesteps, cond)
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = scheduler.get_velocity(x0, noise, timesteps)
    else:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got "
                         f"{prediction_type!r}")
    per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    loss = per_sample.mean() if weights is None else (weights * per_sample).mean()
    if return_x0:
        return loss, per_sample, clean_estimate(scheduler, x_t, pred.float(), timesteps,
                                                prediction_type)
    return loss, per_sample


# -- data ---------------------------------------------------------------------------------------

class _Collate:
    """Stacks (image, condition, ...) items into (images, conditions), checking them."""

    def __init__(self, channels: int, token: bool, num_labels: int | None):
        self.channels, self.token, self.num_labels = channels, token, num_labels

    def __call__(self, items):
        images, conds = [], []
        for item in items:
            if not isinstance(item, (tuple, list)) or len(item) < 2:
                raise TypeError("dataset items must be (image, label, ...) tuples, got "
                                f"{shown(item)}")
            image, cond = item[0], item[1]
            if not isinstance(image, torch.Tensor) or image.dim() != 3 \
                    or not image.is_floating_point():
                raise TypeError(f"dataset items' images must be float (C, H, W) tensors in "
                                f"[0, 1], got {shown(image)}")
            images.append(image)
            conds.append(cond)
        x = torch.stack(images)
        if x.shape[1] != self.channels:
            raise ValueError(f"dataset images must have the model's {self.channels} channels, "
                             f"got {describe(x[0])}")
        check_tensor("dataset images", x, low=0.0, high=1.0,
                     hint="images are float tensors in [0, 1]")
        if self.token:
            for c in conds:
                if not isinstance(c, torch.Tensor) or c.dim() != 2 or not c.is_floating_point():
                    raise TypeError("dataset items of a UNet2DConditionModel must be (image, "
                                    "encoder_hidden_states (tokens, dim) float tensor, ...), "
                                    f"got {shown(c)} as the second entry")
            return x, torch.stack(conds)
        labels = []
        for c in conds:
            if isinstance(c, torch.Tensor) and c.numel() == 1 and not c.is_floating_point() \
                    and c.dtype != torch.bool:
                c = int(c.item())
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
                raise TypeError(f"dataset items' labels must be ints, got {shown(c)}")
            labels.append(int(c))
        y = torch.tensor(labels, dtype=torch.long)
        if self.num_labels is not None and (y.min() < 0 or y.max() >= self.num_labels):
            raise ValueError(f"dataset labels must lie in [0, {self.num_labels - 1}] (the model "
                             f"has {self.num_labels} classes plus the null label), got labels "
                             f"in [{int(y.min())}, {int(y.max())}]")
        return x, y


def _epoch_order(dataset_len: int, sampler, seed: int, epoch: int) -> list[int]:
    if sampler is None:
        return torch.randperm(dataset_len, generator=seeded_generator(seed, 1, epoch)).tolist()
    sampler.set_epoch(epoch)
    order = [int(i) for i in sampler]
    bad = [i for i in order if i < 0 or i >= dataset_len]
    if bad:
        raise ValueError(f"sampler yielded index {bad[0]} outside the dataset of {dataset_len} "
                         "items")
    return order


def _check_sampler(sampler) -> None:
    if sampler is None:
        return
    if not callable(getattr(sampler, "set_epoch", None)) or not isinstance(sampler, Iterable):
        raise TypeError("sampler must be None or an iterable of dataset indices with "
                        f"set_epoch(epoch) (a torch Sampler), got {shown(sampler)}")


def _check_loss_weight(loss_weight, n: int):
    if loss_weight is None or callable(loss_weight):
        return loss_weight
    w = check_tensor("loss_weight", loss_weight, dtypes="floating", shape=(n,), finite=True,
                     low=0.0, hint="one non-negative weight per dataset item, or a callable "
                     "(indices, labels) -> (B,) weights")
    return w.detach().float().cpu()


def _batch_weights(loss_weight, indices: torch.Tensor, labels: torch.Tensor,
                   device) -> torch.Tensor | None:
    if loss_weight is None:
        return None
    if isinstance(loss_weight, torch.Tensor):
        return loss_weight[indices].to(device)
    w = loss_weight(indices, labels)
    w = check_tensor("loss_weight(indices, labels)", w, dtypes="floating",
                     shape=(len(indices),), finite=True, low=0.0)
    return w.to(device=device, dtype=torch.float32)


# -- distributed -------------------------------------------------------------------------------

def _distributed(device: torch.device) -> tuple[int, int, bool]:
    """(rank, world size, whether we initialised the process group): under torchrun
    (WORLD_SIZE > 1) the default group is made with gloo on the CPU / nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    import torch.distributed as dist

    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return 0, 1, False
    created = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        created = True
    return dist.get_rank(), dist.get_world_size(), created


# -- checkpoints -------------------------------------------------------------------------------

def _save(out: str, model, ema, opt, scaler, config, step: int, epoch: int, position: int,
          losses: list[float], skips: int) -> None:
    from trustfast.checkpoint import optimizer_to_checkpoint, save_checkpoint

    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if ema is not None:
        for i, p in enumerate(ema.shadow_params):
            tensors[f"ema.{i}"] = p
    state = {
        "step": step, "epoch": epoch, "position": position, "losses": losses,
        "nonfinite_skips": skips, "config": to_dict(config),
        "optimizer": optimizer_to_checkpoint(opt, tensors),
        "ema_optimization_step": ema.optimization_step if ema is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        # Every draw of a step comes from a generator seeded by (seed, step) and every epoch's
        # order from (seed, epoch): the position above is the whole random state.
        "rng": {"noise": "seeded by (seed, step)", "order": "seeded by (seed, epoch)"},
    }
    save_checkpoint(out, CHECKPOINT, tensors, state)


def _load(out: str, model, ema, opt, scaler, config) -> dict | None:
    from trustfast.checkpoint import (
        CheckpointError,
        load_checkpoint,
        optimizer_from_checkpoint,
        state_item,
    )

    done = load_checkpoint(out, CHECKPOINT)
    if done is None:
        return None
    tensors, state = done
    where = os.path.join(out, f"{CHECKPOINT}.json")
    saved_config = state_item(state, "config", where, dict)
    changed = [k for k in config_diff(saved_config, to_dict(config))
               if k not in RESUMABLE_CHANGES]
    if changed:
        raise ValueError(f"resume: {out} holds a run with another config (differing keys: "
                         f"{changed}); use another out folder or the same config")
    for key in ("step", "epoch", "position", "nonfinite_skips"):
        state_item(state, key, where, int)
    state_item(state, "losses", where, list)
    weights = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    expected = model.state_dict()
    wrong = sorted(set(expected) ^ set(weights)) + sorted(
        k for k in set(expected) & set(weights) if expected[k].shape != weights[k].shape)
    if wrong:
        raise CheckpointError(f"{os.path.join(out, CHECKPOINT)}.safetensors does not hold this "
                              f"model's weights (missing, unexpected or of another shape: "
                              f"{wrong[:5]}): delete {out} to start over")
    if ema is not None:
        shadow = [tensors.get(f"ema.{i}") for i in range(len(ema.shadow_params))]
        if any(s is None or s.shape != p.shape for s, p in zip(shadow, ema.shadow_params)):
            raise CheckpointError(f"{where}: its EMA weights do not fit this model: delete {out} "
                                  "to start over")
    optimizer_from_checkpoint(opt, state_item(state, "optimizer", where, dict), tensors,
                              where=where)
    model.load_state_dict(weights)
    if ema is not None:
        for p, s in zip(ema.shadow_params, shadow):
            p.copy_(s)
        ema.optimization_step = state_item(state, "ema_optimization_step", where, int)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return state


# -- the loop ----------------------------------------------------------------------------------

def _make_optimizer(model, config: DiffusionTrainConfig):
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs = dict(lr=config.lr, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps,
                  weight_decay=config.weight_decay)
    if config.optimizer == "masked_adamw":
        from trustfast.optim import MaskedAdamW

        return MaskedAdamW(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def _autocast(device: torch.device, mixed_precision: str):
    if mixed_precision == "no":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.float16 if mixed_precision == "fp16" else torch.bfloat16
    return torch.autocast("cuda", dtype=dtype)


def train_diffusion(model, dataset, config: DiffusionTrainConfig | None = None, *,
                    out: str | None = None, resume: bool = False, sampler=None,
                    loss_weight=None,
                    regularizer: Callable[..., torch.Tensor] | None = None,
                    progress: bool = True) -> TrainResult:
    """Train `model` (a diffusers UNet2DModel / UNet2DConditionModel) by DDPM on `dataset`.

    Items are (image (C, H, W) in [0, 1], condition, ...extra ignored): the condition is an int
    label for a UNet2DModel (ignored by an unconditional one) or an `encoder_hidden_states`
    tensor (tokens, dim) for a UNet2DConditionModel. Each step takes `config.batch_size` items
    in the epoch's order (module docstring), draws noise, t and label dropout from a generator
    seeded by (seed, step), and minimizes `diffusion_loss` weighted by `loss_weight` plus
    `regularizer(x0_pred, labels, indices, timesteps)` (x0_pred: the model's clean estimate in
    [-1, 1] scale; labels: the items' labels before dropout (for token models: their
    embeddings before dropout); the same labels go to a callable `loss_weight`), with
    AdamW / MaskedAdamW, gradient clipping and EMA (diffusers `EMAModel`).

    sampler: None (a permutation seeded by (seed, epoch)) or an object with `set_epoch(epoch)`
      yielding the GLOBAL order of dataset indices (not a DistributedSampler: ranks are split
      here), deterministic for a given epoch.
    loss_weight: None, a (N,) tensor of non-negative weights by dataset index, or a callable
      (indices (B,), labels (B,)) -> (B,) weights.
    out / resume: checkpoints every `checkpoint_every` steps and at the end (rank 0 writes);
      `resume=True` continues a run of the same config from `out` exactly (bit-identical
      weights and losses on the CPU); a different config is refused naming the keys
      (`RESUMABLE_CHANGES` may differ).
    mixed precision: "fp16" / "bf16" autocast (fp16 with a GradScaler) on CUDA only; a CPU
      model with mixed precision is a ValueError, so that "fp16" never runs silently in
      float32 or in CPU autocast's untested bf16 path (CPU training is float32).
    Non-finite gradients (NaN/Inf) skip the step (weights, moments and EMA untouched) with a
      warning, counted in `nonfinite_skips`.
    DDP: under torchrun (WORLD_SIZE > 1) the process group is initialised if needed (gloo on
      the CPU, nccl on CUDA), the model wrapped in DistributedDataParallel, and each rank takes
      batch_size / world of each global batch (same draws as one process: the same loss
      curve); put each rank's model on its device (cuda:LOCAL_RANK) first.

    Returns a `TrainResult`; the returned model holds the EMA weights when EMA is on, and
    `raw_state` the raw ones. The model is left in the train/eval mode it came in.
    """
    config = DiffusionTrainConfig() if config is None else config
    if not isinstance(config, DiffusionTrainConfig):
        raise TypeError(f"config must be a DiffusionTrainConfig, got {shown(config)}")
    config.validate()
    _check_model(model)
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise TypeError(f"dataset must be a map-style Dataset of (image, label, ...) items, got "
                        f"{shown(dataset)}")
    n = len(dataset)
    if n == 0:
        raise ValueError("dataset must not be empty")
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be a bool, got {shown(resume)}")
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be a folder path or None, got {shown(out)}")
    if resume and out is None:
        raise ValueError("resume=True needs out= (the folder holding the checkpoint)")
    out = os.fspath(out) if out is not None else None
    _check_sampler(sampler)
    loss_weight = _check_loss_weight(loss_weight, n)
    if regularizer is not None and not callable(regularizer):
        raise TypeError(f"regularizer must be None or a callable, got {shown(regularizer)}")

    param = next(model.parameters())
    device = param.device
    if config.mixed_precision != "no" and device.type != "cuda":
        raise ValueError(f"mixed_precision={config.mixed_precision!r} needs a CUDA model (autocast"
                         f" + GradScaler); the model is on {device}: use mixed_precision='no'")
    rank, world, created_group = _distributed(device)
    try:  # a failed set-up leaves no process group of ours behind
        if config.batch_size % world:
            raise ValueError(f"batch_size ({config.batch_size}) must be divisible by the number of "
                             f"DDP processes ({world}): it is the global batch")
        local = config.batch_size // world
        token = _is_token_model(model)
        conditional = _conditional(model)
        null = None if token or not conditional else model.config.num_class_embeds - 1
        collate = _Collate(model.config.in_channels, token, null)
        scheduler = noise_scheduler(config)
        opt = _make_optimizer(model, config)
        ema = None
        if config.ema_decay > 0:
            from diffusers.training_utils import EMAModel

            ema = EMAModel(model.parameters(), decay=config.ema_decay)
        scaler = torch.amp.GradScaler("cuda") if config.mixed_precision == "fp16" else None
        losses: list[float] = []
        step = epoch = position = skips = 0
        if resume:
            state = _load(out, model, ema, opt, scaler, config)
            if state is not None:
                step, epoch, position = state["step"], state["epoch"], state["position"]
                losses, skips = [float(v) for v in state["losses"]], state["nonfinite_skips"]

        first = _epoch_order(n, sampler, config.seed, 0)
        per_epoch = len(first) // config.batch_size
        if per_epoch == 0:
            raise ValueError(f"batch_size ({config.batch_size}) must not exceed the items of an "
                             f"epoch ({len(first)}): incomplete batches are dropped")
        total = config.max_steps if config.max_steps > 0 else config.epochs * per_epoch
        ddp = model
        if world > 1:
            ddp = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
    except BaseException:
        if created_group:
            import torch.distributed as dist

            dist.destroy_process_group()
        raise
    was_training = model.training
    model.train()
    warned = False
    bar = tqdm(total=total, initial=min(step, total), desc="train diffusion", leave=False,
               **progress_kwargs(progress and rank == 0))
    try:
        while step < total and (config.max_steps > 0 or epoch < config.epochs):
            order = first if epoch == 0 else _epoch_order(n, sampler, config.seed, epoch)
            batches = len(order) // config.batch_size
            if batches == 0:
                raise ValueError(f"sampler yielded {len(order)} indices in epoch {epoch}, fewer "
                                 f"than batch_size ({config.batch_size})")
            if position >= batches:  # a sampler that now yields fewer batches than saved
                epoch, position = epoch + 1, 0
                continue
            starts = range(position, batches)
            mine = [order[b * config.batch_size + rank * local:
                          b * config.batch_size + (rank + 1) * local] for b in starts]
            loader = torch.utils.data.DataLoader(
                _Indexed(dataset), batch_sampler=mine, num_workers=config.num_workers,
                collate_fn=_IndexedCollate(collate))
            for b, (indices, x, cond) in zip(starts, loader):
                if step >= total:
                    break
                gen = seeded_generator(config.seed, 0, step)
                noise = torch.randn((config.batch_size, *x.shape[1:]), generator=gen)
                t = torch.randint(0, config.num_train_timesteps, (config.batch_size,),
                                  generator=gen)
                drop = torch.rand(config.batch_size, generator=gen) < config.label_dropout
                sl = slice(rank * local, (rank + 1) * local)
                noise, t, drop = noise[sl].to(device), t[sl].to(device), drop[sl]
                noise = noise.to(param.dtype)
                x0 = x.to(device=device, dtype=param.dtype) * 2 - 1
                # loss_weight and the regularizer see the items' own conditions (a dropped
                # label still counts for its class), the model the dropped ones.
                labels = cond
                if token:
                    cond = cond.to(device=device, dtype=param.dtype)
                    cond = cond * (~drop).to(cond).view(-1, 1, 1)
                elif conditional:
                    cond = torch.where(drop, torch.full_like(cond, null), cond).to(device)
                else:
                    cond = None
                weights = _batch_weights(loss_weight, indices, labels, device)
                for g in opt.param_groups:
                    g["lr"] = config.lr * min(1.0, (step + 1) / config.lr_warmup_steps) \
                        if config.lr_warmup_steps else config.lr
                opt.zero_grad(set_to_none=True)
                with _autocast(device, config.mixed_precision):
                    loss, _, *x0_pred = diffusion_loss(
                        ddp, scheduler, x0, cond, noise, t, prediction_type=config.prediction_type,
                        weights=weights, return_x0=regularizer is not None)
                    if regularizer is not None:
                        reg = regularizer(x0_pred[0], labels.to(device), indices.to(device), t)
                        if not isinstance(reg, torch.Tensor) or reg.numel() != 1:
                            raise TypeError("regularizer must return a scalar tensor, got "
                                            f"{shown(reg)}")
                        loss = loss + reg.reshape(())
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(opt)
                else:
                    loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(
                    model.parameters(), config.grad_clip if config.grad_clip > 0 else math.inf)
                if scaler is not None:  # the scaler skips non-finite steps itself
                    scale = scaler.get_scale()
                    scaler.step(opt)
                    scaler.update()
                    applied = scaler.get_scale() >= scale
                elif bool(torch.isfinite(norm)):
                    opt.step()
                    applied = True
                else:
                    applied = False
                    if not warned:
                        warnings.warn(f"train_diffusion: non-finite gradient at step {step}: the "
                                      "step is skipped (weights, moments and EMA untouched); "
                                      "further skips are counted in nonfinite_skips",
                                      RuntimeWarning, stacklevel=2)
                        warned = True
                if applied:
                    if ema is not None:
                        ema.step(model.parameters())
                else:
                    skips += 1
                value = loss.detach().float()
                if world > 1:
                    import torch.distributed as dist

                    dist.all_reduce(value)
                    value /= world
                losses.append(float(value))
                step += 1
                position = b + 1
                if position == batches:
                    epoch, position = epoch + 1, 0
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                if out is not None and rank == 0 and config.checkpoint_every \
                        and step % config.checkpoint_every == 0:
                    _save(out, model, ema, opt, scaler, config, step, epoch, position, losses,
                          skips)
        if out is not None and rank == 0:
            _save(out, model, ema, opt, scaler, config, step, epoch, position, losses, skips)
    finally:
        bar.close()
        model.train(was_training)
        # The DDP wrapper goes before the group: its destructor run after
        # destroy_process_group can hang a gloo rank (seen 1 run in 5 on the 2-core CI box).
        ddp = None
        if created_group:
            import torch.distributed as dist

            dist.destroy_process_group()
    raw = None
    if ema is not None:
        raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
        ema.copy_to(model.parameters())
    return TrainResult(model=model, losses=losses, steps=step, raw_state=raw,
                       nonfinite_skips=skips)


class _Indexed(torch.utils.data.Dataset):
    """The dataset's items with their index, so batches carry the indices they hold."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return i, self.dataset[i]


class _IndexedCollate:
    def __init__(self, collate: _Collate):
        self.collate = collate

    def __call__(self, pairs):
        indices = torch.tensor([i for i, _ in pairs], dtype=torch.long)
        x, cond = self.collate([item for _, item in pairs])
        return indices, x, cond
