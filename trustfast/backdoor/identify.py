"""Bi-level backdoor data identification with MSPC (Pal et al., "Backdoor Secrets Unveiled:
Identifying Backdoor Data with Optimized Scaled Prediction Consistency", ICLR 2024), no clean
data and no hand-set threshold.

The default follows the paper's code, OPTML-Group/BackdoorMSPC: `bilevel_full.py` (the loop,
the defaults of its argparse and of `bilevel.sh`) and `bilevel_losses.py` (`l_MSPC_tau`,
`l_MSPC`, `SF_loss`). Outer variable: the split w in {0, 1}^N (1 = poisoned). Inner variable:
a spatial mask m in [0, 1]^(H x W) shared by all images and channels.

  - Warm start: w_i = 1[MSPC_i(m=1, tau) > 0], MSPC_i(m, tau) = mean_s (2 1[f(clip(s (x_i -
    tau) m)) = f(x_i)] - 1)  (`l_MSPC_tau`: the shift tau is already applied, no mask).
  - Inner problem, `objective="reference"` (the loop of `bilevel_full.py`): per batch B,

        L(m) = (1/|B|) sum_{i in B} w_i KL_i(m) + lam ||m||_1,
        KL_i(m) = (1/|S|) sum_s KL( p(x_i) || p(clip(s (x_i - tau) m)) ),

    one SGD step per batch (momentum 0.9, weight decay 5e-4, lr 0.1, one optimizer for the
    whole run), then m <- clip(m, 0, 1). Unflagged samples (w_i = 0) do not enter it; the l1
    term shrinks the mask where the flagged predictions do not need it. KL is computed from
    log_softmax (the reference takes the log of a softmax, which is -inf, then NaN, on
    saturated logits); otherwise the same number.
  - Outer step, in closed form after each `inner_epochs` epochs: w_i = 1[MSPC_i(m, tau) > 0]
    (the threshold-free rule), for `outer_rounds` rounds; the scores of the last round are
    returned.

`objective="contrastive"` is trustfast's own variant: the mean KL over the flagged samples of the
batch minus the mean of min(KL, kl_cap) over the unflagged ones (the mask also learns to break
the clean predictions), plus the same l1 term.

Deviations, all at the reference's scale invisible: an epoch here is one pass over the N images in
seeded shuffled batches (`shuffle=False`: the reference's sequential order), with the last
partial batch kept (the reference drops it; 50,000 CIFAR-10 images in batches of 1,000 leave
none); everything runs in the input's precision (the reference: fp16 autocast).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional as fn
from tqdm.auto import tqdm

from trustfast.backdoor.scores import (
    DEFAULT_SCALES,
    _check,
    _mspc,
    model_device,
    scale_inputs,
    warn_if_collapsed,
)
from trustfast.config import Config
from trustfast.utils import eval_mode

OBJECTIVES = ("reference", "contrastive")


@dataclass
class MSPCConfig(Config):
    """Hyperparameters of the bi-level identification. Defaults: BackdoorMSPC's
    (`bilevel_full.py` argparse, `bilevel.sh`), except `batch_size`, which is ours at small
    scale (the reference's 1,000 is for 50,000 images); each says where it comes from."""

    scales: list[float] = field(default_factory=lambda: list(DEFAULT_SCALES))  # --scales 2..12
    tau: float = 0.1  # shift before scaling, clip(s (x - tau) m): bilevel.sh (argparse: 0.2)
    lam: float = 0.01  # --masklam: weight of ||m||_1, the sum over the H x W mask pixels
    objective: str = "reference"  # "reference" (BackdoorMSPC) | "contrastive" (ours)
    inner_epochs: int = 10  # --epoch_inner: passes over the N images per outer round
    outer_rounds: int = 4  # --outer_epoch: alternations of (m | w) and (w | m)
    inner_lr: float = 0.1  # --lr_inner: SGD step size on m (m lives in [0, 1])
    momentum: float = 0.9  # --momentum (SGD on m)
    weight_decay: float = 5e-4  # --weight_decay (SGD on m)
    batch_size: int = 64  # ours: 23 steps per epoch on 1,438 images (reference: 1,000)
    shuffle: bool = True  # seeded shuffled batches each epoch; False: the reference's order
    kl_cap: float = 20.0  # contrastive only: caps the clean term (-KL is unbounded below)
    seed: int = 0

    def check(self) -> None:
        self.require(bool(self.scales) and all(s > 0 for s in self.scales), "scales",
                     "a non-empty list of positive numbers")
        self.choice("objective", OBJECTIVES)
        self.within("tau", 0, 1, high_open=True)
        self.at_least("lam", 0)
        self.at_least("kl_cap", 0)
        self.at_least("inner_lr", 0, strict=True)
        self.within("momentum", 0, 1, high_open=True)
        self.at_least("weight_decay", 0)
        for name in ("inner_epochs", "outer_rounds", "batch_size"):
            self.at_least(name, 1)
        self.at_least("seed", 0)


@dataclass
class MSPCResult:
    scores: torch.Tensor  # (N,) MSPC under the learned mask and tau, in [-1, 1]
    flagged: torch.Tensor  # (N,) bool, MSPC > 0
    mask: torch.Tensor  # (1, 1, H, W) in [0, 1]
    warm_start_scores: torch.Tensor  # (N,) MSPC with m = 1 and the config's tau
    history: list[dict]  # round 0 (warm start), then per outer round: flagged, loss, mask
    seconds: float
    config: dict
    # True when the model predicts one class for every image: the scores then carry no
    # information (every sample keeps its prediction, all are flagged); a warning says so too
    collapsed: bool = False

    def to_json(self) -> dict:
        return {"config": self.config, "history": self.history, "seconds": self.seconds,
                "n_flagged": int(self.flagged.sum()), "collapsed": self.collapsed,
                "scores": self.scores.tolist()}


def mspc_inner_loss(model: nn.Module, x: torch.Tensor, logp: torch.Tensor, w: torch.Tensor,
                    mask: torch.Tensor, scales: torch.Tensor, tau: float, lam: float,
                    objective: str = "reference", kl_cap: float = 20.0) -> torch.Tensor:
    """The inner objective on one batch, differentiable in `mask`.

    reference (BackdoorMSPC `bilevel_full.py`): (1/B) sum_i w_i KL_i + lam ||m||_1;
    contrastive (ours): mean_{w_i=1} KL_i - mean_{w_i=0} min(KL_i, kl_cap) + lam ||m||_1;
    KL_i = mean_s KL(p(x_i) || p(clip(s (x_i - tau) m))), `logp` = log_softmax(f(x)) (B, K),
    `w` the 0/1 split of the batch (B,).
    """
    logq = fn.log_softmax(model(scale_inputs(x, scales, mask, tau)), dim=1)
    logq = logq.view(len(scales), len(x), -1)
    kl = (logp.exp() * (logp - logq)).sum(-1).mean(0)  # (B,)
    loss = lam * mask.abs().sum()
    if objective == "reference":
        return loss + (w.to(kl) * kl).sum() / len(x)
    flagged = w.bool()
    if flagged.any():
        loss = loss + kl[flagged].mean()
    if (~flagged).any():
        loss = loss - kl[~flagged].clamp(max=kl_cap).mean()
    return loss


def _batches(n: int, size: int, gen: torch.Generator | None) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    return list(order.split(size))


def identify_mspc(model: nn.Module, images: torch.Tensor, config: MSPCConfig | None = None,
                  progress: bool = True) -> MSPCResult:
    """Find the poisoned samples among `images` (N, C, H, W in [0, 1]) of a model trained on them.

    The bi-level MSPC of Pal et al. (ICLR 2024) as BackdoorMSPC's `bilevel_full.py` runs it (see
    the module docstring). Returns the MSPC scores under the learned mask (use them for AUROC)
    and the threshold-free split `flagged = scores > 0`. The model is frozen and not changed.

    Refused: a model that is not an nn.Module, images that are not a non-empty float
    (N, C, H, W) batch in [0, 1] (divide uint8 by 255, undo a normalization), a config that is
    not an MSPCConfig. A collapsed model (one class predicted for every image) gets a
    CollapsedModelWarning and `result.collapsed = True`: every sample then keeps its prediction
    at every scale, so all are flagged and the scores say nothing about poisoning.
    """
    cfg = MSPCConfig() if config is None else config
    if not isinstance(cfg, MSPCConfig):
        raise TypeError(f"config must be an MSPCConfig or None, got {type(cfg).__name__}")
    cfg.validate()
    _check(model, images, cfg.scales)
    start = time.perf_counter()
    device = model_device(model, images.device)
    scales = torch.tensor([float(s) for s in cfg.scales], device=device, dtype=images.dtype)
    n, _, h, w_px = images.shape
    with torch.no_grad(), eval_mode(model):
        logp = torch.cat([fn.log_softmax(model(images[i:i + 512].to(device)), dim=1)
                          for i in range(0, n, 512)])
    collapsed = warn_if_collapsed(logp.argmax(1), "identify_mspc")
    warm = _mspc(model, images, None, cfg.tau, cfg.scales, 256)[0]
    split = warm > 0
    history = [{"round": 0, "n_flagged": int(split.sum()), "collapsed": collapsed}]
    mask = torch.ones(1, 1, h, w_px, device=device, dtype=images.dtype, requires_grad=True)
    # one optimizer for the whole run: its momentum carries over the outer rounds, as in
    # bilevel_full.py
    opt = torch.optim.SGD([mask], lr=cfg.inner_lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed) if cfg.shuffle else None
    scores = warm
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    bar = {} if progress else {"disable": True}  # else TQDM_DISABLE decides
    try:
        with eval_mode(model), tqdm(total=cfg.outer_rounds * cfg.inner_epochs,
                                    desc="MSPC bi-level (epochs)", leave=False, **bar) as pbar:
            for rnd in range(cfg.outer_rounds):
                w = split.to(device=device, dtype=images.dtype)
                losses, skipped = [], 0
                for _ in range(cfg.inner_epochs):
                    losses = []
                    for idx in _batches(n, cfg.batch_size, gen):
                        opt.zero_grad(set_to_none=True)
                        loss = mspc_inner_loss(model, images[idx].to(device), logp[idx],
                                               w[idx], mask, scales, cfg.tau, cfg.lam,
                                               cfg.objective, cfg.kl_cap)
                        loss.backward()
                        if not torch.isfinite(mask.grad).all():
                            skipped += 1  # never write NaN/Inf into the mask
                            continue
                        opt.step()
                        with torch.no_grad():
                            mask.clamp_(0, 1)  # projection onto the box
                        losses.append(float(loss.detach()))
                    pbar.update(1)
                if skipped:
                    warnings.warn(f"MSPC round {rnd + 1}: skipped {skipped} inner steps with a "
                                  "non-finite gradient on the mask", RuntimeWarning,
                                  stacklevel=2)
                scores = _mspc(model, images, mask.detach(), cfg.tau, cfg.scales, 256)[0]
                new_split = scores > 0
                changed = int((new_split != split).sum())
                split = new_split
                history.append({"round": rnd + 1, "n_flagged": int(split.sum()),
                                "changed": changed,
                                "inner_loss": sum(losses) / max(len(losses), 1),
                                "mask_mean": float(mask.detach().mean()),
                                "skipped_steps": skipped})
    finally:
        for p in params:
            p.requires_grad_(True)
    return MSPCResult(scores=scores, flagged=split, mask=mask.detach().cpu(),
                      warm_start_scores=warm, history=history,
                      seconds=time.perf_counter() - start, config=asdict(cfg),
                      collapsed=collapsed)
