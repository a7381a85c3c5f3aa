"""Sampling a trained conditional diffusion model with diffusers' schedulers.

`generate` runs DDIM (Song et al., ICLR 2021; eta 0), DPM-Solver++ (Lu et al. 2022; 2nd-order
multistep) or ancestral DDPM (Ho et al. 2020) on the training run's noise schedule, with
classifier-free guidance (Ho & Salimans 2022): eps = eps_uncond + g (eps_cond - eps_uncond),
where eps_uncond is the prediction for the null label (`null_label(model)`) or, for a
token-conditioned UNet2DConditionModel, for all-zero `encoder_hidden_states` (the condition
label dropout trains). The same combination is applied to v predictions (it is linear).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from trustfast.checks import check_choice, check_number, check_tensor, shown
from trustfast.utils import eval_mode, progress_kwargs

SCHEDULERS = ("ddim", "dpm++", "ddpm")


def sampling_scheduler(name: str = "ddim", train_config=None, *, clip_sample: bool = True):
    """The diffusers scheduler `name` on `train_config`'s betas, T and prediction type
    (DiffusionTrainConfig() when None). clip_sample clips DDIM / DDPM's x0 estimate to [-1, 1]
    (pixel-space models; DPM-Solver++ has no such option)."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    from trustfast.diffusion.train import DiffusionTrainConfig

    check_choice("scheduler", name, SCHEDULERS)
    cfg = DiffusionTrainConfig() if train_config is None else train_config
    if not isinstance(cfg, DiffusionTrainConfig):
        raise TypeError(f"train_config must be a DiffusionTrainConfig or None, got {shown(cfg)}")
    common = dict(num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start,
                  beta_end=cfg.beta_end, beta_schedule=cfg.beta_schedule,
                  prediction_type=cfg.prediction_type)
    if name == "ddim":
        return DDIMScheduler(**common, clip_sample=clip_sample)
    if name == "ddpm":
        return DDPMScheduler(**common, clip_sample=clip_sample)
    return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)


def _sample_generator(seed: int, index: int) -> torch.Generator:
    from trustfast.diffusion.train import seeded_generator

    return seeded_generator(seed, 2, index)


@torch.no_grad()
def generate(model, labels: torch.Tensor | None = None, *, steps: int = 50,
             guidance_scale: float = 1.0, scheduler: str = "ddim", seed: int = 0,
             batch_size: int = 64, train_config=None, progress: bool = True,
             encoder_hidden_states: torch.Tensor | None = None,
             clip_sample: bool = True) -> torch.Tensor:
    """N images (N, C, H, W) in [0, 1] from a UNet2DModel for `labels` (LongTensor (N,) of
    class indices in [0, null_label(model)]; the null label itself gives unconditional
    samples).

    For a UNet2DConditionModel pass `encoder_hidden_states` (N, tokens, dim) instead of labels.
    guidance_scale g: 1 = the conditional prediction only (one forward), 0 = the unconditional
    one only, else both and eps_u + g (eps_c - eps_u). Sample i starts from noise of a generator
    seeded by (seed, i), which also draws DDPM's step noise, so results do not depend on
    batch_size. The scheduler is `sampling_scheduler(scheduler, train_config)`; the model runs
    in eval mode (its modes are restored after).
    """
    from diffusers import UNet2DConditionModel, UNet2DModel

    if not isinstance(model, (UNet2DModel, UNet2DConditionModel)):
        raise TypeError("model must be a diffusers UNet2DModel or UNet2DConditionModel, got "
                        f"{type(model).__name__}")
    steps = int(check_number("steps", steps, low=1, integer=True))
    guidance_scale = float(check_number("guidance_scale", guidance_scale))
    seed = int(check_number("seed", seed, low=0, integer=True))
    batch_size = int(check_number("batch_size", batch_size, low=1, integer=True))
    if not isinstance(clip_sample, bool):
        raise TypeError(f"clip_sample must be a bool, got {shown(clip_sample)}")
    sched = sampling_scheduler(scheduler, train_config, clip_sample=clip_sample)
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    token = isinstance(model, UNet2DConditionModel)
    if token:
        if labels is not None:
            raise ValueError("labels must be None for a UNet2DConditionModel: pass "
                             "encoder_hidden_states (N, tokens, dim)")
        cond = check_tensor("encoder_hidden_states", encoder_hidden_states, dtypes="floating",
                            ndim=3, finite=True, nonempty=True)
        dim = model.config.cross_attention_dim
        if cond.shape[-1] != dim:
            raise ValueError(f"encoder_hidden_states must have last dimension {dim} (the "
                             f"model's cross_attention_dim), got shape {tuple(cond.shape)}")
        null_cond = torch.zeros_like(cond[:1])
    else:
        if encoder_hidden_states is not None:
            raise ValueError("encoder_hidden_states is for UNet2DConditionModel; a UNet2DModel "
                             "takes labels")
        n_embeds = getattr(model.config, "num_class_embeds", None)
        if n_embeds is None:
            raise TypeError("model must be class-conditional (num_class_embeds set, e.g. "
                            "label_unet); an unconditional UNet2DModel is not supported here")
        cond = check_tensor("labels", labels, dtypes=(torch.int64, torch.int32, torch.int16,
                                                      torch.uint8), ndim=1, nonempty=True)
        if int(cond.min()) < 0 or int(cond.max()) > n_embeds - 1:
            raise ValueError(f"labels must lie in [0, {n_embeds - 1}] ({n_embeds - 1} is the "
                             f"null label), got values in [{int(cond.min())}, "
                             f"{int(cond.max())}]")
        cond = cond.long()
        null_cond = torch.full((1,), n_embeds - 1, dtype=torch.long)
    n = cond.shape[0]
    shape = (model.config.in_channels, model.config.sample_size, model.config.sample_size)
    sample_size = model.config.sample_size
    if isinstance(sample_size, (tuple, list)):
        shape = (model.config.in_channels, *sample_size)
    images = []
    chunks = range(0, n, batch_size)
    bar = tqdm(total=len(chunks) * steps, desc="generate", leave=False,
               **progress_kwargs(progress))
    with eval_mode(model):
        for start in chunks:
            idx = range(start, min(start + batch_size, n))
            gens = [_sample_generator(seed, i) for i in idx]
            x = torch.stack([torch.randn(shape, generator=g) for g in gens])
            x = x.to(device=device, dtype=dtype) * sched.init_noise_sigma
            c = cond[start:start + len(idx)].to(device)
            u = null_cond.to(device).expand(len(idx), *null_cond.shape[1:])
            if token:
                c, u = c.to(dtype), u.to(dtype)
            sched.set_timesteps(steps, device=device)
            for t in sched.timesteps:
                inp = sched.scale_model_input(x, t)
                pred = _guided(model, inp, t, c, u, guidance_scale, token)
                x = sched.step(pred, t, x, generator=gens).prev_sample
                bar.update(1)
            images.append(((x.float().clamp(-1, 1) + 1) / 2).cpu())
    bar.close()
    return torch.cat(images)


def _forward(model, x, t, cond, token: bool) -> torch.Tensor:
    if token:
        return model(x, t, encoder_hidden_states=cond).sample
    return model(x, t, class_labels=cond).sample


def _guided(model, x, t, cond, uncond, g: float, token: bool) -> torch.Tensor:
    """eps_u + g (eps_c - eps_u), with one forward when g is 1 or 0."""
    if g == 1.0:
        return _forward(model, x, t, cond, token)
    if g == 0.0:
        return _forward(model, x, t, uncond, token)
    both = _forward(model, torch.cat([x, x]), t, torch.cat([cond, uncond]), token)
    eps_c, eps_u = both.chunk(2)
    return eps_u + g * (eps_c - eps_u)
