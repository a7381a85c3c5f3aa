"""Bi-level backdoor data identification with MSPC (Pal et al., ICLR 2024), no clean data and no
hand-set threshold.

Outer variable: the split w in {0, 1}^N (1 = poisoned). Inner variable: a spatial mask m in
[0, 1]^(H x W) shared by all images. For a given w the mask solves

    min_m  mean_{i: w_i=1} KL_i(m) - mean_{i: w_i=0} min(KL_i(m), kl_cap) + lam * mean(m),
    KL_i(m) = mean_s KL( p(x_i) || p(clip(s (x_i - tau) m)) ),

by projected SGD (m clamped to [0, 1] after each step): the mask keeps what makes poisoned
predictions survive scaling (the trigger) and drops what makes clean ones survive. Given m the
outer problem min_w sum_i -w_i MSPC_i(m) is solved in closed form, w_i = 1[MSPC_i(m) > 0]: the
threshold-free rule. Warm start: w_i = 1[MSPC_i(m=1) > 0]. Rounds alternate until w stops
changing or `outer_rounds` is reached.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional as fn
from tqdm.auto import tqdm

from trustfast.backdoor.scores import (
    DEFAULT_SCALES,
    masked_scaled_prediction_consistency,
    scale_inputs,
)
from trustfast.config import Config
from trustfast.utils import eval_mode


@dataclass
class MSPCConfig(Config):
    """Hyperparameters of the bi-level identification (defaults: the paper's, or ours at small
    scale where the paper's depend on CIFAR-10; each says which)."""

    scales: list[float] = field(default_factory=lambda: list(DEFAULT_SCALES))  # S = {2..12}
    tau: float = 0.0  # shift before scaling: clip(s (x - tau) m)
    lam: float = 0.1  # l1 weight on the mean of the mask (sparsity of m)
    inner_steps: int = 100  # Adam steps on m per outer round
    inner_lr: float = 0.1  # Adam step size on m (m lives in [0, 1])
    outer_rounds: int = 2  # alternations of (m | w) and (w | m)
    batch_size: int = 64  # images per inner step (x 11 scales per forward)
    kl_cap: float = 20.0  # caps the clean term (-KL is unbounded below)
    seed: int = 0

    def check(self) -> None:
        self.require(bool(self.scales) and all(s > 0 for s in self.scales), "scales",
                     "a non-empty list of positive numbers")
        self.at_least("lam", 0)
        self.at_least("kl_cap", 0)
        self.at_least("inner_lr", 0, strict=True)
        for name in ("inner_steps", "outer_rounds", "batch_size"):
            self.at_least(name, 1)


@dataclass
class MSPCResult:
    scores: torch.Tensor  # (N,) MSPC under the learned mask, in [-1, 1]
    flagged: torch.Tensor  # (N,) bool, MSPC > 0
    mask: torch.Tensor  # (1, 1, H, W) in [0, 1]
    warm_start_scores: torch.Tensor  # (N,) MSPC with m = 1
    history: list[dict]  # per outer round: flagged count, inner loss, mask mean
    seconds: float
    config: dict

    def to_json(self) -> dict:
        return {"config": self.config, "history": self.history, "seconds": self.seconds,
                "n_flagged": int(self.flagged.sum()), "scores": self.scores.tolist()}


def _inner_loss(model, x, p0, w, mask, scales, cfg) -> torch.Tensor:
    logq = fn.log_softmax(model(scale_inputs(x, scales, mask, cfg.tau)), dim=1)
    logq = logq.view(len(scales), len(x), -1)
    kl = (p0 * (p0.clamp_min(1e-12).log() - logq)).sum(-1).mean(0)  # (B,)
    loss = cfg.lam * mask.mean()
    if w.any():
        loss = loss + kl[w].mean()
    if (~w).any():
        loss = loss - kl[~w].clamp(max=cfg.kl_cap).mean()
    return loss


def identify_mspc(model: nn.Module, images: torch.Tensor, config: MSPCConfig | None = None,
                  progress: bool = True) -> MSPCResult:
    """Find the poisoned samples among `images` (N, C, H, W in [0, 1]) of a model trained on them.

    Returns the MSPC scores under the learned mask (use them for AUROC) and the threshold-free
    split `flagged = scores > 0`.
    """
    cfg = config or MSPCConfig()
    cfg.validate()
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise TypeError("images must be a float tensor (N, C, H, W) in [0, 1]")
    start = time.perf_counter()
    device = next(model.parameters()).device
    scales = torch.tensor([float(s) for s in cfg.scales], device=device)
    n, _, h, w_px = images.shape
    with torch.no_grad(), eval_mode(model):
        probs = torch.cat([fn.softmax(model(images[i:i + 512].to(device)), dim=1)
                           for i in range(0, n, 512)])
    warm = masked_scaled_prediction_consistency(model, images, None, 0.0, cfg.scales,
                                                cfg.batch_size)
    split = warm > 0
    mask = torch.ones(1, 1, h, w_px, device=device)
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with eval_mode(model):
            bar = {} if progress else {"disable": True}  # else TQDM_DISABLE decides
            for rnd in tqdm(range(cfg.outer_rounds), desc="MSPC bi-level", leave=False, **bar):
                mask.requires_grad_(True)
                opt = torch.optim.Adam([mask], lr=cfg.inner_lr)
                losses = []
                for _ in range(cfg.inner_steps):
                    idx = torch.randperm(n, generator=gen)[:cfg.batch_size]
                    x = images[idx].to(device)
                    loss = _inner_loss(model, x, probs[idx], split[idx].to(device), mask,
                                       scales, cfg)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    with torch.no_grad():
                        mask.clamp_(0, 1)  # projection onto the box
                    losses.append(float(loss.detach()))
                mask = mask.detach()
                scores = masked_scaled_prediction_consistency(model, images, mask, cfg.tau,
                                                              cfg.scales, cfg.batch_size)
                new_split = scores > 0
                changed = int((new_split != split).sum())
                split = new_split
                history.append({"round": rnd + 1, "n_flagged": int(split.sum()),
                                "changed": changed, "inner_loss": losses[-1],
                                "mask_mean": float(mask.mean())})
                if changed == 0:
                    break
    finally:
        for p in params:
            p.requires_grad_(True)
    return MSPCResult(scores=scores, flagged=split, mask=mask.cpu(), warm_start_scores=warm,
                      history=history, seconds=time.perf_counter() - start, config=asdict(cfg))
