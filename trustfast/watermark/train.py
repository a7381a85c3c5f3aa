"""Training HiDDeN (Zhu et al., ECCV 2018): encoder, noise layer and decoder end to end.

loss = image_weight * MSE(encoded, cover)
     + message_weight * BCE-with-logits(decoder(noise(encoded, cover)), bits)
     + adversarial_weight * BCE(discriminator(encoded), 'cover')     (only with a discriminator)

The message term is binary cross-entropy on the decoder's logits against the 0/1 bits (HiDDeN
uses MSE on the decoded values; BCE keeps the decision rule, bit = logit > 0, on unbounded
logits). The image term can ramp up linearly from 0 over `image_weight_warmup_epochs`, so the
message term dominates early and the decoder finds the watermark before the encoder is pushed
back towards the cover.

With a discriminator (HiddenConfig.use_discriminator), each step first trains it (Adam, same lr)
to tell covers (label 0) from encoded images (label 1), then trains encoder and decoder to make
it call encoded images covers.

Everything random (initial weights, image order, messages, noise draws) comes from `seed`: epoch
e draws from a generator seeded by (seed, e), so a run resumed from a checkpoint continues
exactly as the uninterrupted run would (same weights, to the bit, on the CPU).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from trustfast.checkpoint import (
    load_checkpoint,
    optimizer_from_checkpoint,
    optimizer_to_checkpoint,
    save_checkpoint,
)
from trustfast.config import Config
from trustfast.utils import progress_kwargs
from trustfast.watermark.models import HiddenConfig, WatermarkModel, check_images
from trustfast.watermark.noise import make_noise

_CHECKPOINT_NAME = "watermark_train"


@dataclass
class WatermarkTrainConfig(Config):
    """One training run; defaults are HiDDeN's (Adam 1e-3, weights 0.7 / 1 / 1e-3)."""

    epochs: int = 10  # passes over the training images
    batch_size: int = 32  # images per step (HiDDeN: 12 at 128x128)
    lr: float = 1e-3  # Adam learning rate (encoder, decoder and discriminator)
    noise: str = "identity"  # noise layer spec, see trustfast.watermark.noise.make_noise
    image_weight: float = 0.7  # weight of MSE(encoded, cover)
    message_weight: float = 1.0  # weight of BCE(decoded logits, bits)
    adversarial_weight: float = 1e-3  # weight of the encoder's adversarial term
    image_weight_warmup_epochs: int = 0  # image weight ramps 0 -> image_weight over these epochs
    lr_decay_epochs: int = 0  # last epochs over which lr decays linearly to 10%; 0: constant lr
    seed: int = 0  # initial weights, image order, messages and noise draws

    def check(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("image_weight_warmup_epochs", "lr_decay_epochs", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        for name in ("lr", "image_weight", "message_weight", "adversarial_weight"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value < 0 or (name == "lr" and value == 0)):
                raise ValueError(f"{name} must be a finite number {'>' if name == 'lr' else '>='}"
                                 f" 0, got {value!r}")
        make_noise(self.noise)  # ValueError naming the spec

    def image_weight_at(self, epoch: int) -> float:
        """The image weight during `epoch` (0-based): linear warm-up, then image_weight."""
        if epoch >= self.image_weight_warmup_epochs:
            return self.image_weight
        return self.image_weight * epoch / self.image_weight_warmup_epochs

    def lr_at(self, epoch: int) -> float:
        """The learning rate during `epoch`: constant, then a linear decay to 10% over the last
        `lr_decay_epochs` epochs."""
        start = self.epochs - self.lr_decay_epochs
        if self.lr_decay_epochs == 0 or epoch < start:
            return self.lr
        return self.lr * (1.0 - 0.9 * (epoch - start + 1) / self.lr_decay_epochs)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def _save(folder: str, model: WatermarkModel, opt, d_opt, cfg, epoch: int, history) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    state = {
        "config": asdict(cfg), "hidden_config": model.config.to_dict(), "epoch": epoch,
        "history": history, "optimizer": optimizer_to_checkpoint(opt, tensors, "opt"),
    }
    if d_opt is not None:
        state["discriminator_optimizer"] = optimizer_to_checkpoint(d_opt, tensors, "dopt")
    save_checkpoint(folder, _CHECKPOINT_NAME, tensors, state)


def _load(folder: str, model: WatermarkModel, opt, d_opt, cfg) -> tuple[int, list[dict]] | None:
    done = load_checkpoint(folder, _CHECKPOINT_NAME)
    if done is None:
        return None
    tensors, state = done
    saved, current = dict(state["config"]), asdict(cfg)
    saved.pop("epochs")
    current.pop("epochs")
    if saved != current or state["hidden_config"] != model.config.to_dict():
        raise ValueError(f"checkpoint_dir {folder!r} holds a run with another config: "
                         f"{state['config']} / {state['hidden_config']}")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    optimizer_from_checkpoint(opt, state["optimizer"], tensors, "opt")
    if d_opt is not None:
        optimizer_from_checkpoint(d_opt, state["discriminator_optimizer"], tensors, "dopt")
    return state["epoch"], state["history"]


def _finite_gradients(params: list[nn.Parameter]) -> bool:
    grads = [p.grad for p in params if p.grad is not None]
    return not grads or bool(torch.isfinite(torch.stack([g.abs().max() for g in grads])).all())


def _step(opt, params: list[nn.Parameter], loss: torch.Tensor, what: str) -> bool:
    """Backward and step; a gradient with NaN/Inf skips the step with a warning (False)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if _finite_gradients(params):
        opt.step()
        return True
    warnings.warn(f"{what} gradient holds NaN/Inf; step skipped", RuntimeWarning, stacklevel=3)
    return False


def train_watermark(images: torch.Tensor, cfg: WatermarkTrainConfig | None = None,
                    hidden_cfg: HiddenConfig | None = None, checkpoint_dir: str | None = None,
                    resume: bool = False, progress: bool = True,
                    ) -> tuple[WatermarkModel, list[dict]]:
    """Train HiDDeN on `images` (N, C, H, W) float in [0, 1] with random messages.

    Returns the model (in eval mode, on the images' device) and one dict per epoch: epoch,
    loss, image_mse, message_loss, bit_accuracy (on the noised training images), psnr (mean
    per-image dB of encoded vs cover), image_weight, lr, skipped_steps (steps whose gradient
    held NaN/Inf: skipped with a warning, never applied), and with a discriminator adversarial
    and discriminator_loss. With `checkpoint_dir`, the model, optimizers, epoch and history are
    saved atomically after every epoch; `resume=True` continues from the last one, giving the
    weights the uninterrupted run would have. The configs must match except `epochs`, which a
    resumed run may raise (with lr_decay_epochs > 0 the decay follows the new `epochs`).
    """
    cfg = (cfg or WatermarkTrainConfig()).validate()
    hidden_cfg = (hidden_cfg or HiddenConfig()).validate()
    check_images(images, hidden_cfg.image_channels)
    if resume and not checkpoint_dir:
        raise ValueError("resume=True needs a checkpoint_dir")
    noise = make_noise(cfg.noise)
    try:  # fail before training, not at the first step (e.g. JPEG on gray images)
        with torch.no_grad():
            noise(images[:1], images[:1], torch.Generator().manual_seed(0))
    except ValueError as err:
        raise ValueError(f"noise {cfg.noise!r} cannot run on these images: {err}") from None
    device = images.device

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = WatermarkModel(hidden_cfg)
    model.to(device=device, dtype=images.dtype)
    params = list(model.encoder.parameters()) + list(model.decoder.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr)
    disc = model.discriminator
    d_params = list(disc.parameters()) if disc is not None else []
    d_opt = torch.optim.Adam(d_params, lr=cfg.lr) if disc is not None else None

    start, history = 0, []
    if resume:
        loaded = _load(checkpoint_dir, model, opt, d_opt, cfg)
        if loaded is not None:
            start, history = loaded

    n = images.shape[0]
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    model.train()
    bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=start * steps_per_epoch,
               desc=f"HiDDeN [{cfg.noise}]", **progress_kwargs(progress), leave=False)
    for epoch in range(start, cfg.epochs):
        gen = _epoch_generator(cfg.seed, epoch)
        image_weight, lr = cfg.image_weight_at(epoch), cfg.lr_at(epoch)
        for o in (opt, d_opt):
            for group in (o.param_groups if o is not None else []):
                group["lr"] = lr
        sums = dict.fromkeys(("loss", "image_mse", "message_loss", "bit_accuracy", "psnr",
                              "adversarial", "discriminator_loss"), 0.0)
        skipped = 0
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, cfg.batch_size):
            idx = order[i:i + cfg.batch_size].to(device)
            cover = images[idx]
            b = cover.shape[0]
            bits = torch.randint(0, 2, (b, hidden_cfg.message_bits), generator=gen).to(
                device=device, dtype=images.dtype)
            encoded = model.encoder(cover, bits)

            if disc is not None:
                d_logits = torch.cat([disc(cover), disc(encoded.detach())])
                d_labels = torch.cat([torch.zeros(b), torch.ones(b)]).to(d_logits)
                d_loss = F.binary_cross_entropy_with_logits(d_logits, d_labels)
                skipped += not _step(d_opt, d_params, d_loss,
                                     f"epoch {epoch + 1}: the discriminator's")
                sums["discriminator_loss"] += float(d_loss.detach()) * b

            noised = noise(encoded, cover, gen)
            logits = model.decoder(noised)
            image_mse = F.mse_loss(encoded, cover)
            message_loss = F.binary_cross_entropy_with_logits(logits, bits)
            loss = image_weight * image_mse + cfg.message_weight * message_loss
            if disc is not None:
                adversarial = F.binary_cross_entropy_with_logits(
                    disc(encoded), torch.zeros(b, dtype=encoded.dtype, device=device))
                loss = loss + cfg.adversarial_weight * adversarial
                sums["adversarial"] += float(adversarial.detach()) * b
            skipped += not _step(opt, params, loss, f"epoch {epoch + 1}: the encoder/decoder")
            with torch.no_grad():
                per_image_mse = (encoded - cover).double().pow(2).flatten(1).mean(1)
                sums["psnr"] += float((-10.0 * torch.log10(per_image_mse.clamp_min(1e-20)))
                                      .sum())
                sums["bit_accuracy"] += float(((logits > 0).to(bits) == bits).double()
                                              .mean(1).sum())
            sums["loss"] += float(loss.detach()) * b
            sums["image_mse"] += float(image_mse.detach()) * b
            sums["message_loss"] += float(message_loss.detach()) * b
            bar.update(1)
            bar.set_postfix(msg=f"{float(message_loss.detach()):.3f}",
                            mse=f"{float(image_mse.detach()):.2e}",
                            refresh=False)
        row = {"epoch": epoch + 1}
        row |= {k: v / n for k, v in sums.items()
                if disc is not None or k not in ("adversarial", "discriminator_loss")}
        row |= {"image_weight": image_weight, "lr": lr, "skipped_steps": skipped}
        history.append(row)
        if checkpoint_dir:
            _save(checkpoint_dir, model, opt, d_opt, cfg, epoch + 1, history)
    bar.close()
    model.eval()
    return model, history

