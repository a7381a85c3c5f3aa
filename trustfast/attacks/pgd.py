"""Projected gradient descent (Madry et al., ICLR 2018) with torchattacks' interface.

`PGD(model, eps=8/255, alpha=2/255, steps=10)(images, labels)` returns adversarial images, as
torchattacks.PGD does (L-inf) or torchattacks.PGDL2 (norm="l2"), with the same arithmetic. With
`random_start=False` the L-inf results are identical to torchattacks 3.5.1's. The L2 ones agree
to about 1e-9, not bit for bit: torchattacks differentiates the batch-MEAN cross-entropy and
trustfast the per-sample sum (so that a sample's step does not depend on its batch), and
torchattacks' +1e-10 guard on ||g||_2 then weighs N times more against its smaller gradient
(measured: 7e-10 after 10 steps in float64, N = 8; tests/attacks/test_attacks_pgd.py). Beyond
torchattacks:
  - restarts and several eps values run as ONE batched forward/backward per step (the batch is
    tiled restarts x eps times), and each example gets the restart with the highest loss;
  - `loss` is any per-sample objective `(outputs, labels) -> (N,)` (feature-space, watermark...);
  - the update is `trustfast.ops.pgd_step` (C++ / Triton / torch), and only the input's
    gradient is computed (autograd skips the weights' gradients).
Inputs are images in [0, 1]; `normalization=(mean, std)` is applied inside the model call. The
model is put in eval mode during the attack and every module's mode is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as fn

from trustfast.checks import IMAGE_HINT, check_choice, check_number, check_tensor, shown
from trustfast.ops.pgd_step import NORMS, pgd_step
from trustfast.utils import eval_mode

SCALE_HINT = {
    "eps": "eps is in the [0, 1] image scale: 8/255, not 8",
    "alpha": "alpha is in the [0, 1] image scale: 2/255, not 2",
}


def budget_list(name: str, value, norm: str = "linf") -> list[float]:
    """`value` (a number or a non-empty list of numbers) as floats >= 0, and <= 1 for the L-inf
    norm: budgets and step sizes are in the [0, 1] image scale, so 8 (meant as 8/255) is
    refused with that hint. L2 budgets may exceed 1 (3.0 is usual on 224x224 images); the call
    bounds them by the diameter of the image cube instead."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise ValueError(f"{name} must not be empty")
    hint = SCALE_HINT.get(name, "")
    out = []
    for i, v in enumerate(values):
        where = name if len(values) == 1 and not isinstance(value, (list, tuple)) \
            else f"{name}[{i}]"
        out.append(float(check_number(where, v, low=0.0, high=1.0 if norm == "linf" else None,
                                      hint=hint if norm == "linf" else "")))
    return out


class PGD:
    """PGD attack; call as `atk(images, labels)`.

    Args:
        model: classifier (or any module) taking images in [0, 1] (after `normalization`).
        eps: budget (float in [0, 1], the image scale: 8/255, not 8), or a list of budgets
            attacked in the same batch.
        alpha: step size (float in [0, 1]), or one per eps.
        steps: number of gradient steps (an int >= 0; 0 returns the best random start).
        random_start: start from a uniform point in the L-inf ball (L2: torchattacks' scheme).
        norm: "linf" or "l2".
        restarts: random restarts, batched; each example keeps its highest-loss restart.
        loss: per-sample objective `(outputs, labels) -> (N,)`; default cross-entropy.
        targeted: minimize the loss towards `labels` (the targets) instead of maximizing it.
        normalization: optional (mean, std) per channel, applied inside the model call.
        track_best: return the best iterate over all steps (by loss) instead of the last one.
        seed: seeds the random starts (same seed, same result); None uses torch's global RNG.
        backend: backend of the fused step ("torch", "triton", "cpp"; default automatic).

    Returns (from a call): adversarial images shaped like `images`, or (len(eps), *images.shape)
    when `eps` is a list.

    Refused (TypeError / ValueError naming the argument): eps or alpha above 1 for L-inf (a
    budget in pixel units: 8 instead of 8/255; for L2, eps above the diameter sqrt(C H W) of
    the image cube), negative or NaN; a non-integer steps or restarts; an
    unknown norm; images that are not floating point, NaN/Inf or outside [0, 1] (already
    normalized: pass `normalization` instead); labels that are not one per image.
    """

    def __init__(self, model: nn.Module, eps: float | Sequence[float] = 8 / 255,
                 alpha: float | Sequence[float] = 2 / 255, steps: int = 10,
                 random_start: bool = True, norm: str = "linf", restarts: int = 1,
                 loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 targeted: bool = False,
                 normalization: tuple[Sequence[float], Sequence[float]] | None = None,
                 track_best: bool = False, seed: int | None = None, backend: str | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        check_choice("norm", norm, NORMS)
        # steps=0 is meaningful: the (best) random start itself
        steps = check_number("steps", steps, low=0, integer=True)
        restarts = check_number("restarts", restarts, low=1, integer=True)
        for flag, value in (("random_start", random_start), ("targeted", targeted),
                            ("track_best", track_best)):
            if not isinstance(value, bool):
                raise TypeError(f"{flag} must be a bool, got {shown(value)}")
        if seed is not None:
            seed = check_number("seed", seed, low=0, integer=True)
        if loss is not None and not callable(loss):
            raise TypeError("loss must be callable (outputs, labels) -> per-sample loss")
        self.model = model
        self.eps_list = budget_list("eps", eps, norm)
        alphas = budget_list("alpha", alpha, norm)
        if len(alphas) == 1:
            alphas = alphas * len(self.eps_list)
        if len(alphas) != len(self.eps_list):
            raise ValueError(f"alpha has {len(alphas)} values, eps has {len(self.eps_list)}")
        self.alpha_list = alphas
        self.many_eps = isinstance(eps, (list, tuple))
        self.steps, self.random_start, self.norm = steps, random_start, norm
        self.restarts, self.loss, self.targeted = restarts, loss, targeted
        self.track_best, self.seed, self.backend = track_best, seed, backend
        self.normalization = None
        if normalization is not None:
            if not isinstance(normalization, (list, tuple)) or len(normalization) != 2:
                raise TypeError(f"normalization must be a (mean, std) pair, got "
                                f"{shown(normalization)}")
            try:
                mean, std = (torch.as_tensor(t, dtype=torch.float64).flatten()
                             for t in normalization)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(f"normalization must be (mean, std), each a number or one per "
                                f"channel, got {shown(normalization)}") from None
            check_tensor("normalization mean", mean, finite=True, nonempty=True)
            check_tensor("normalization std", std, finite=True, nonempty=True)
            if (std <= 0).any():
                raise ValueError(f"normalization std must be > 0, got {std.tolist()}")
            self.normalization = (mean, std)

    # ------------------------------------------------------------------ pieces

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output on images in [0, 1] (normalization applied)."""
        if self.normalization is not None:
            mean, std = (t.to(x).view(1, -1, *([1] * (x.dim() - 2))) for t in self.normalization)
            x = (x - mean) / std
        return self.model(x)

    def _objective(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out = self.logits(x)
        if self.loss is None:
            per_sample = fn.cross_entropy(out, labels, reduction="none")
        else:
            per_sample = self.loss(out, labels)
        if not isinstance(per_sample, torch.Tensor) or per_sample.shape != (x.shape[0],):
            raise ValueError(
                f"loss must return one value per sample, shape ({x.shape[0]},); got "
                f"{getattr(per_sample, 'shape', type(per_sample).__name__)} (use reduction='none')"
            )
        return -per_sample if self.targeted else per_sample

    def _random_start(self, x: torch.Tensor, eps: torch.Tensor, gen) -> torch.Tensor:
        eps_b = eps.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        if self.norm == "linf":
            noise = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1
            return torch.clamp(x + noise * eps_b, 0, 1)
        delta = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        norms = delta.flatten(1).norm(dim=1).view_as(eps_b)
        radius = torch.rand(eps_b.shape, generator=gen, device=x.device, dtype=x.dtype)
        return torch.clamp(x + delta * radius / norms * eps_b, 0, 1)

    def _check_inputs(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        # any batch of dimension >= 2 (NCHW images, or (N, features) inputs), values in [0, 1]
        if isinstance(images, torch.Tensor) and not images.is_floating_point():
            raise TypeError(f"images must be a floating-point tensor (N, C, H, W) in [0, 1], "
                            f"got a {images.dtype} tensor ({IMAGE_HINT})")
        images = check_tensor("images", images, dtypes="floating", hint=IMAGE_HINT)
        if images.dim() < 2 or images.shape[0] == 0:
            raise ValueError(f"images must be a non-empty batch, got shape {tuple(images.shape)}")
        check_tensor("images", images, low=0.0, high=1.0,
                     hint="pass normalization=(mean, std) instead of normalized inputs; "
                          + IMAGE_HINT)
        if self.norm == "l2":
            diameter = images[0].numel() ** 0.5  # the largest L2 distance inside [0, 1]^d
            if max(self.eps_list) > diameter:
                raise ValueError(f"eps must be <= {diameter:.4g} (the L2 diameter of the "
                                 f"[0, 1] image cube of {images[0].numel()} values), got "
                                 f"{max(self.eps_list)} (eps is in the [0, 1] image scale)")
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels must be a tensor, got {type(labels).__name__}")
        if labels.shape[:1] != images.shape[:1]:
            raise ValueError(f"labels must have {images.shape[0]} entries (one per image; images "
                             f"has shape {tuple(images.shape)}), got shape "
                             f"{tuple(labels.shape)}")
        if self.loss is None and (labels.dim() != 1 or labels.is_floating_point()):
            raise ValueError(f"labels must be class indices of shape ({images.shape[0]},) for "
                             f"the default cross-entropy, got {labels.dtype} "
                             f"{tuple(labels.shape)}")

    # ------------------------------------------------------------------ attack

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.forward(images, labels)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self._check_inputs(images, labels)
        with eval_mode(self.model):
            adv = self._attack(images.detach(), labels.detach())
        return adv if self.many_eps else adv[0]

    def _attack(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        n, n_eps, reps = images.shape[0], len(self.eps_list), self.restarts
        tiles = reps * n_eps
        # tile order (restart, eps, sample): a view (reps, n_eps, n, ...) selects the restart
        x = images.repeat(tiles, *([1] * (images.dim() - 1)))
        y = labels.repeat(tiles, *([1] * (labels.dim() - 1)))
        dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
        per_eps = torch.tensor(self.eps_list, dtype=dtype, device=images.device)
        per_alpha = torch.tensor(self.alpha_list, dtype=dtype, device=images.device)
        eps = per_eps.repeat_interleave(n).repeat(reps)
        alpha = per_alpha.repeat_interleave(n).repeat(reps)
        gen = None
        if self.seed is not None:
            gen = torch.Generator(device=images.device).manual_seed(self.seed)
        x_adv = self._random_start(x, eps, gen) if self.random_start else x.clone()

        best_loss = best_adv = None
        if self.track_best:
            best_loss = torch.full((x.shape[0],), -torch.inf, device=x.device, dtype=dtype)
            best_adv = x_adv.clone()
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                objective = self._objective(x_adv, y)
                grad = torch.autograd.grad(objective.sum(), x_adv)[0]
            track = dict(loss=objective.detach().to(dtype), best_loss=best_loss,
                         best_adv=best_adv) if self.track_best else {}
            # autograd may hand back a strided gradient (e.g. a model that transposes its
            # input); the kernels take contiguous memory.
            x_adv = pgd_step(x_adv.detach(), x, grad.contiguous(), eps=eps, alpha=alpha,
                             norm=self.norm, validate=False,
                             backend=self.backend, **track)

        if self.track_best or reps > 1:
            with torch.no_grad():
                final = self._objective(x_adv, y).to(dtype)
            if self.track_best:
                better = final > best_loss
                best_adv[better] = x_adv[better]
                best_loss = torch.where(better, final, best_loss)
                x_adv, final = best_adv, best_loss
            if reps > 1:
                pick = final.view(reps, n_eps * n).argmax(dim=0)
                flat = x_adv.view(reps, n_eps * n, *images.shape[1:])
                x_adv = flat[pick, torch.arange(n_eps * n, device=images.device)]
        return x_adv.detach().view(n_eps, *images.shape)
