"""Backdoors in conditional diffusion models: BadNets-like poisoning of the training data only,
the audit of the generations (trigger amplification), and the model used as a classifier.

"From Trojan Horses to Castle Walls: Unveiling Bilateral Data Poisoning Effects in Diffusion
Models" (Pal et al., NeurIPS 2024; reference code OPTML-Group/BiBadDiff). Poisoning only the
training set of a conditional diffusion model, without touching the diffusion process:
  - as an attack, the model generates images misaligned with the target condition (non-target
    content carrying the trigger), and the model used as a classifier is backdoored too;
  - as a defence, generated images carry the trigger more often than the training data did
    ("trigger amplification"), which helps detect poisoned data, and a classifier trained on
    the generations inherits less of the backdoor than one trained on the poisoned data.

The triggers are `trustfast.backdoor`'s (`BadNets`, `Blend`, ...), not a second copy.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import Dataset

from trustfast._meta import TrustfastWarning
from trustfast.backdoor.poison import (
    BadNets,
    Blend,
    PoisonedDataset,
    Trigger,
    _check_attack,
    _check_target,
)
from trustfast.backdoor.scores import check_count, model_device
from trustfast.checks import check_choice, check_images, check_number, check_tensor, shown
from trustfast.data import dataset_tensors
from trustfast.utils import eval_mode

_LABEL_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8)


def _seeded(*keys: int) -> torch.Generator:
    from trustfast.diffusion.train import seeded_generator

    return seeded_generator(*keys)


# -- poisoning ---------------------------------------------------------------------------------

def poison_for_diffusion(dataset: Dataset, trigger: Trigger, target: int = 0,
                         ratio: float = 0.1, seed: int = 0) -> PoisonedDataset:
    """The reference's poisoning protocol (BiBadDiff, `data/*/badnets_*.py`): `int(N * ratio)`
    images drawn without replacement from the non-target classes, the trigger stamped, the
    labels set to `target`. ratio 0 gives an unpoisoned copy (the clean model's data).

    Returns a `PoisonedDataset` (images, labels); its `poisoned_indices` are the poisoned
    images and `original_labels` their true classes. The draw is seeded (same seed, same set).
    A clean-label trigger is refused: the attack relabels.
    """
    _check_attack(trigger, "trigger")
    if trigger.clean_label:
        raise ValueError(f"trigger must be a dirty-label trigger (BadNets, Blend, ...): "
                         f"{type(trigger).__name__} keeps labels, and this protocol relabels")
    seed = check_count("seed", seed, low=0)
    images, labels = dataset_tensors(dataset)
    check_images("dataset images", images)
    target = _check_target(target, labels)
    ratio = check_number("ratio", ratio, low=0.0, high=1.0, high_open=True,
                         hint="the share of the training set to poison")
    pool = (labels != target).nonzero().flatten()
    count = int(len(labels) * ratio)
    if count > len(pool):
        raise ValueError(f"ratio {ratio} asks for {count} poisoned images, but only {len(pool)} "
                         f"are not of the target class {target}")
    chosen = pool[torch.randperm(len(pool), generator=_seeded(seed, 17))[:count]]
    poisoned = torch.zeros(len(labels), dtype=torch.bool)
    poisoned[chosen] = True
    out_images, out_labels = images.clone(), labels.clone()
    if count:
        out_images[chosen] = trigger.apply(images[chosen], _seeded(seed, 18),
                                           train=True).clamp(0, 1)
        out_labels[chosen] = target
    return PoisonedDataset(out_images, out_labels, poisoned, torch.zeros_like(poisoned),
                           labels.clone(), trigger, target, ratio, seed)


def target_trigger_share(ratio: float, num_classes: int) -> float:
    """p / (1/K + p): the share of trigger-carrying images among the images labelled with the
    target class after poisoning a share p of a K-class balanced training set (the baseline
    that trigger amplification is claimed against)."""
    ratio = check_number("ratio", ratio, low=0.0, high=1.0, high_open=True)
    num_classes = check_count("num_classes", num_classes, low=2)
    return ratio / (1.0 / num_classes + ratio) if ratio > 0 else 0.0


# -- trigger detection ---------------------------------------------------------------------------

class BlendTemplateWarning(TrustfastWarning):
    """TemplateDetector's Blend estimate on images too small for it to be reliable."""


class TemplateDetector:
    """Exact detection of a known trigger on images in [0, 1] (no training).

    - BadNets (a fixed position): the mean absolute difference between the patch region and the
      patch; triggered when it is below `threshold` (default 0.25 on a 0/1 checkerboard: a
      clean region is about 0.5 away, an imperfectly generated patch a few hundredths).
    - Blend with pattern P at weight alpha: the least-squares weight of the high-pass pattern
      in the high-pass image, a_hat = <hp(x), hp(P)> / <hp(P), hp(P)> (hp: minus a 3x3 box
      blur, which removes the smooth content); triggered when a_hat > `threshold` (default
      alpha / 2).
    `scores(images)` is higher = more trigger-like (minus the BadNets distance, a_hat).

    The Blend estimate needs images of 16 px or more: on the digits at 16 px, clean test images
    score <= 0.018 (99th percentile) and blended ones >= 0.185 (1st percentile); at 8 px sharp
    strokes correlate with the pattern by chance (10 % of clean images score > 0.19), and a
    BlendTemplateWarning says so. Use `train_trigger_detector` there.
    """

    def __init__(self, trigger: Trigger, threshold: float | None = None):
        _check_attack(trigger, "trigger")
        if isinstance(trigger, BadNets):
            if trigger.position == "random":
                raise ValueError("TemplateDetector needs a BadNets trigger at a fixed position; "
                                 "use train_trigger_detector for position='random'")
            default = 0.25
        elif isinstance(trigger, Blend):
            default = trigger.alpha / 2
        else:
            raise ValueError(f"TemplateDetector knows BadNets and Blend triggers, got "
                             f"{type(trigger).__name__}: use train_trigger_detector")
        self.trigger = trigger
        self.threshold = float(check_number("threshold", default if threshold is None
                                            else threshold))

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        check_images("images", images)
        x = images.float()
        t = self.trigger
        if isinstance(t, BadNets):
            s = t.size
            if min(x.shape[2:]) < s:
                raise ValueError(f"images of {tuple(x.shape[2:])} pixels cannot hold the "
                                 f"{s}x{s} BadNets patch")
            row, col = t._corner(x.shape[2], x.shape[3])
            patch = t.patch(x.shape[1]).to(x)
            region = x[:, :, row:row + s, col:col + s]
            return -(region - patch).abs().flatten(1).mean(1).cpu()
        if x.shape[2] * x.shape[3] < 256:
            warnings.warn(f"TemplateDetector: a Blend trigger on {x.shape[2]}x{x.shape[3]} images "
                          "is unreliable (below 16 x 16 pixels image content correlates with the "
                          "pattern by chance): use train_trigger_detector",
                          BlendTemplateWarning, stacklevel=2)
        pattern = t._pattern(x)
        hp_x, hp_p = _high_pass(x), _high_pass(pattern[None])
        return ((hp_x * hp_p).flatten(1).sum(1) / hp_p.pow(2).sum().clamp_min(1e-12)).cpu()

    def detect(self, images: torch.Tensor) -> torch.Tensor:
        """(N,) bool: whether each image carries the trigger."""
        s = self.scores(images)
        if isinstance(self.trigger, BadNets):
            return s > -self.threshold
        return s > self.threshold


def _high_pass(x: torch.Tensor) -> torch.Tensor:
    blur = nn.functional.avg_pool2d(nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)
    return x - blur


class LearnedDetector:
    """A binary CNN telling triggered from clean images (the reference's `clf_trigger`
    classifier: half of the training images stamped with the trigger, label 1 = triggered).
    Made by `train_trigger_detector`."""

    def __init__(self, model: nn.Module, threshold: float = 0.5):
        self.model = model.eval()
        self.threshold = float(check_number("threshold", threshold, low=0.0, high=1.0))

    @torch.no_grad()
    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """P(triggered) per image."""
        check_images("images", images)
        device = model_device(self.model)
        out = []
        with eval_mode(self.model):
            for chunk in images.split(512):
                out.append(self.model(chunk.to(device)).float().softmax(1)[:, 1].cpu())
        return torch.cat(out)

    def detect(self, images: torch.Tensor) -> torch.Tensor:
        return self.scores(images) > self.threshold


def train_trigger_detector(images: torch.Tensor, trigger: Trigger, *, model: str = "small_cnn",
                           epochs: int = 10, lr: float = 0.01, batch_size: int = 64,
                           seed: int = 0) -> LearnedDetector:
    """A LearnedDetector trained on `images` (clean training images, float NCHW in [0, 1]):
    a seeded half of them stamped with `trigger` (label 1), the rest clean (label 0), SGD with
    momentum and a cosine schedule (`trustfast.models.fit_classifier`)."""
    from trustfast.models import build_model
    from trustfast.models.fit import SGDConfig, fit_classifier

    _check_attack(trigger, "trigger")
    check_images("images", images)
    if len(images) < 2:
        raise ValueError(f"images must hold at least 2 images, got {len(images)}")
    seed = check_count("seed", seed, low=0)
    gen = _seeded(seed, 31)
    order = torch.randperm(len(images), generator=gen)
    half = order[: len(images) // 2]
    x = images.clone()
    x[half] = trigger.apply(images[half], gen, train=False).clamp(0, 1)
    y = torch.zeros(len(images), dtype=torch.long)
    y[half] = 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model(model, in_channels=images.shape[1], num_classes=2,
                          image_size=images.shape[-1])
    fit_classifier(net, torch.utils.data.TensorDataset(x, y),
                   SGDConfig(epochs=epochs, lr=lr, batch_size=batch_size), seed=seed,
                   schedule="cosine", desc="trigger detector")
    return LearnedDetector(net)


def _check_detector(detector) -> None:
    if not callable(getattr(detector, "detect", None)):
        raise TypeError(f"detector must have detect(images) -> (N,) bool (TemplateDetector, "
                        f"LearnedDetector), got {shown(detector)}")


def trigger_ratio(images: torch.Tensor, detector) -> float:
    """The share of `images` that carry the trigger according to `detector`."""
    _check_detector(detector)
    check_images("images", images)
    if len(images) == 0:
        raise ValueError("images must hold at least one image")
    return float(detector.detect(images).float().mean())


# -- the generation audit ----------------------------------------------------------------------

@dataclass
class GenerationAudit:
    """The audit of N images generated for the target condition (BiBadDiff's four groups):
    G1 mismatch + trigger, G2 match + trigger, G3 mismatch without trigger, G4 match without
    trigger ("match": a clean classifier assigns the target class).

    misalignment = (G1 + G3) / N; trigger_ratio = (G1 + G2) / N; the baselines are the poison
    ratio p and the trigger share inside the target class of the training data,
    target_share = p / (1/K + p); amplification = trigger_ratio / target_share (claimed only
    against that share). `groups` is the (N,) group index 1..4 of each image."""

    groups: torch.Tensor
    counts: dict[str, int]
    misalignment: float
    trigger_ratio: float
    poison_ratio: float
    target_share: float
    amplification: float | None = None
    extra: dict = field(default_factory=dict)

    def row(self) -> dict:
        n = max(sum(self.counts.values()), 1)
        out = {f"{g}_share": c / n for g, c in self.counts.items()}
        out.update(misalignment=self.misalignment, trigger_ratio=self.trigger_ratio,
                   poison_ratio=self.poison_ratio, target_share=self.target_share,
                   amplification=self.amplification)
        return out


@torch.no_grad()
def audit_generations(images: torch.Tensor, target: int, classifier: nn.Module, detector, *,
                      poison_ratio: float, num_classes: int) -> GenerationAudit:
    """Sort images generated for the `target` condition into G1-G4 (see GenerationAudit), with a
    clean `classifier` (logits over `num_classes`) for the match and `detector` for the
    trigger; the baselines from `poison_ratio` and `num_classes`."""
    check_images("images", images)
    if len(images) == 0:
        raise ValueError("images must hold at least one image")
    if not isinstance(classifier, nn.Module):
        raise TypeError(f"classifier must be an nn.Module, got {shown(classifier)}")
    _check_detector(detector)
    num_classes = check_count("num_classes", num_classes, low=2)
    target = check_count("target", target, low=0)
    if target >= num_classes:
        raise ValueError(f"target must be a class index < num_classes ({num_classes}), got "
                         f"{target}")
    poison_ratio = check_number("poison_ratio", poison_ratio, low=0.0, high=1.0, high_open=True)
    share = target_trigger_share(poison_ratio, num_classes)
    device = model_device(classifier)
    preds = []
    with eval_mode(classifier):
        for chunk in images.split(512):
            logits = classifier(chunk.to(device))
            if logits.ndim != 2 or logits.shape[1] != num_classes:
                raise ValueError(f"classifier must return (N, num_classes={num_classes}) "
                                 f"logits, got {tuple(logits.shape)}")
            preds.append(logits.argmax(1).cpu())
    pred = torch.cat(preds)
    match = pred == target
    trig = detector.detect(images).cpu()
    groups = torch.where(trig, torch.where(match, 2, 1), torch.where(match, 4, 3))
    counts = {f"G{g}": int((groups == g).sum()) for g in (1, 2, 3, 4)}
    n = len(images)
    ratio = (counts["G1"] + counts["G2"]) / n
    return GenerationAudit(groups=groups, counts=counts,
                           misalignment=(counts["G1"] + counts["G3"]) / n, trigger_ratio=ratio,
                           poison_ratio=float(poison_ratio), target_share=share,
                           amplification=ratio / share if share > 0 else None)


# -- the diffusion classifier --------------------------------------------------------------------

WEIGHTINGS = ("uniform", "edm")
CPU_BATCH, CUDA_BATCH = 64, 2048
_GOLDEN = (math.sqrt(5) - 1) / 2


@dataclass
class ClassifierStats:
    """What one `DiffusionClassifier.errors` call spent: model evaluations (one per image,
    draw and class scored) and forward passes."""

    evaluations: int = 0
    forwards: int = 0


class DiffusionClassifier:
    """A class-conditional diffusion model as a classifier (Li et al., "Your Diffusion Model is
    Secretly a Zero-Shot Classifier", ICCV 2023; BiBadDiff's `edm/pred.py`):

        y_hat(x) = argmin_k  mean_d  w(t_d) * err(eps_theta(x_{t_d}, t_d, k), eps_d)

    with draws d = (t_d, eps_d) shared by all classes of an image. err is the mean squared
    noise error over pixels, or with `trim=q` the mean of the int(q * pixels) smallest per-pixel
    errors (the reference's `--thresh`, its robust variant: a trigger's pixels are where a
    non-target class denoises worst, and dropping the largest errors removes their pull).
    v-prediction models are scored on the same noise error (eps_hat = sqrt(1 - abar) x_t +
    sqrt(abar) v_hat).

    weighting "uniform": t_d spread over [0, T) by a golden-ratio sequence from a random start
    per image (any prefix of the draws covers the range), w = 1 (Li et al.);
    "edm": the reference's EDM evaluation, sigma ~ lognormal(P_mean, P_std) mapped to the
    nearest DDPM timestep by sigma_t = sqrt((1 - abar_t) / abar_t) and EDM's loss weight on
    the x0 error, which on the noise error is w = (sigma_t^2 + sigma_data^2) / sigma_data^2.

    `scheduler` is the training run's noise schedule (a diffusers DDPM-style scheduler with
    `alphas_cumprod`; default `noise_scheduler()`, DDPM's linear betas), and it may be left out:
    `DiffusionClassifier(model, 10)` reads the 10 as num_classes.

    Every (image, draw, class) triple is one model evaluation; `batch_size` triples (default
    64 on the CPU, 2048 on a GPU) go through one forward (all classes x draws batched, chunked
    to that budget). `adaptive` = ((d_1, k_1), (d_2, k_2), ...) runs successive elimination:
    after d_1 draws only the k_1 classes with the smallest mean error stay, after d_1 + d_2 the
    best k_2 of them, ...; the draws left
    to `draws` go to the last survivors (pruned classes get error +inf). "auto" is
    ((draws // 4, max(2, K // 5)),): on 10 classes, 32 draws cost 128 evaluations instead of 320.
    """

    def __init__(self, model, scheduler=None, num_classes: int | None = None, draws: int = 32,
                 *, weighting: str = "uniform", trim: float | None = None,
                 adaptive=None, batch_size: int | None = None, seed: int = 0,
                 class_conditions: torch.Tensor | None = None,
                 prediction_type: str | None = None, p_mean: float = -1.2, p_std: float = 1.2,
                 sigma_data: float = 0.5):
        from diffusers import UNet2DConditionModel, UNet2DModel

        from trustfast.diffusion.train import PREDICTION_TYPES, noise_scheduler

        if not isinstance(model, (UNet2DModel, UNet2DConditionModel)):
            raise TypeError("model must be a diffusers UNet2DModel or UNet2DConditionModel, got "
                            f"{type(model).__name__}")
        self.model = model
        if num_classes is None and isinstance(scheduler, int) and not isinstance(scheduler, bool):
            # DiffusionClassifier(model, K, ...): the scheduler left out (DDPM's defaults)
            scheduler, num_classes = None, scheduler
        if num_classes is None:
            raise TypeError("num_classes must be given: DiffusionClassifier(model, scheduler, "
                            "num_classes) or DiffusionClassifier(model, num_classes=K)")
        self.num_classes = check_count("num_classes", num_classes, low=2)
        self.token = isinstance(model, UNet2DConditionModel)
        if self.token:
            if class_conditions is None:
                raise ValueError("class_conditions (num_classes, tokens, dim) are needed for a "
                                 "UNet2DConditionModel: one encoder_hidden_states per class")
            check_tensor("class_conditions", class_conditions, dtypes="floating", ndim=3,
                         finite=True)
            if class_conditions.shape[0] != self.num_classes:
                raise ValueError(f"class_conditions must hold one condition per class "
                                 f"({self.num_classes}), got shape "
                                 f"{tuple(class_conditions.shape)}")
        else:
            if class_conditions is not None:
                raise ValueError("class_conditions is for UNet2DConditionModel; a UNet2DModel "
                                 "is conditioned on class labels 0..num_classes-1")
            embeds = getattr(model.config, "num_class_embeds", None)
            if embeds is None or embeds < self.num_classes:
                raise ValueError(f"model must be class-conditional with at least num_classes="
                                 f"{self.num_classes} class embeddings, got num_class_embeds="
                                 f"{embeds}")
        self.class_conditions = class_conditions
        self.draws = check_count("draws", draws)
        self.weighting = check_choice("weighting", weighting, WEIGHTINGS)
        if trim is not None:
            trim = float(check_number("trim", trim, low=0.0, high=1.0, low_open=True,
                                      hint="the share of per-pixel errors kept, e.g. 0.9"))
        self.trim = trim
        if batch_size is None:
            # model inputs per forward: 64 on the CPU (tiny UNet, 16 px, one thread: 2.65 s of
            # CPU time against 3.28 s at 512, whose activations fall out of cache, and 2.99 s for
            # the per-class loop at 16 images per forward); on a GPU the larger the better
            on_gpu = next(model.parameters()).device.type != "cpu"
            batch_size = CUDA_BATCH if on_gpu else CPU_BATCH
        self.batch_size = check_count("batch_size", batch_size)
        self.seed = check_count("seed", seed, low=0)
        self.p_mean = float(check_number("p_mean", p_mean))
        self.p_std = float(check_number("p_std", p_std, low=0.0, low_open=True))
        self.sigma_data = float(check_number("sigma_data", sigma_data, low=0.0, low_open=True))
        self.scheduler = noise_scheduler() if scheduler is None else scheduler
        if not hasattr(self.scheduler, "alphas_cumprod"):
            raise TypeError(f"scheduler must be a diffusers DDPM-style scheduler (with "
                            f"alphas_cumprod), got {shown(self.scheduler)}")
        ptype = prediction_type or self.scheduler.config.prediction_type
        self.prediction_type = check_choice("prediction_type", ptype, PREDICTION_TYPES)
        self.schedule = self._check_adaptive(adaptive)
        self.stats = ClassifierStats()

    def _check_adaptive(self, adaptive) -> list[tuple[int, int]]:
        """[(draws of the round, classes kept after it), ...], the last round's kept classes
        = those still standing; [(draws, K)] without pruning."""
        k = self.num_classes
        if adaptive is None:
            return [(self.draws, k)]
        if adaptive == "auto":
            first = max(1, self.draws // 4)
            adaptive = ((first, max(2, k // 5)),) if first < self.draws else ()
        if isinstance(adaptive, (str, bytes)) or not isinstance(adaptive, (list, tuple)):
            raise TypeError(f"adaptive must be None, 'auto' or a sequence of (draws, keep) "
                            f"pairs, got {shown(adaptive)}")
        rounds, used, alive = [], 0, k
        for i, pair in enumerate(adaptive):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise TypeError(f"adaptive[{i}] must be a (draws, keep) pair, got {shown(pair)}")
            d = check_count(f"adaptive[{i}] draws", pair[0])
            keep = check_count(f"adaptive[{i}] keep", pair[1])
            if keep > alive:
                raise ValueError(f"adaptive[{i}] keeps {keep} classes, but only {alive} are "
                                 "left")
            used += d
            if used >= self.draws:
                raise ValueError(f"adaptive's rounds use {used} draws, leaving none of "
                                 f"draws={self.draws} for the survivors")
            rounds.append((d, keep))
            alive = keep
        rounds.append((self.draws - used, alive))
        return rounds

    # draws -----------------------------------------------------------------------------------
    def _draws(self, index: int, shape, device) -> tuple[torch.Tensor, torch.Tensor,
                                                          torch.Tensor]:
        """(timesteps (D,), noise (D, C, H, W), weights (D,)) of image `index` (seeded by
        (seed, index): the same whatever the batch)."""
        gen = _seeded(self.seed, 3, index)
        abar = self.scheduler.alphas_cumprod.double()
        t_max = len(abar)
        if self.weighting == "uniform":
            start = torch.rand((), generator=gen, dtype=torch.float64)
            frac = (start + _GOLDEN * torch.arange(self.draws, dtype=torch.float64)) % 1.0
            t = (frac * t_max).long().clamp(0, t_max - 1)
            w = torch.ones(self.draws, dtype=torch.float64)
        else:
            sigma = (torch.randn(self.draws, generator=gen, dtype=torch.float64) * self.p_std
                     + self.p_mean).exp()
            sigmas = ((1 - abar) / abar).sqrt()
            t = (sigmas[None] - sigma[:, None]).abs().argmin(1)
            w = (sigmas[t] ** 2 + self.sigma_data ** 2) / self.sigma_data ** 2
        noise = torch.randn((self.draws, *shape), generator=gen)
        return t.to(device), noise.to(device), w.float().to(device)

    def _banks(self, indices, shape, device) -> tuple[torch.Tensor, ...]:
        """The draws of images `indices` stacked: timesteps (n, D), noise (n, D, C, H, W),
        weights (n, D)."""
        banks = [self._draws(i, shape, device) for i in indices]
        return tuple(torch.stack([b[m] for b in banks]) for m in range(3))

    def _forward(self, x_t: torch.Tensor, t: torch.Tensor, classes: torch.Tensor):
        if self.token:
            cond = self.class_conditions.to(x_t)[classes]
            return self.model(x_t, t, encoder_hidden_states=cond).sample
        return self.model(x_t, t, class_labels=classes).sample

    def _score(self, x0, noise, t, w, classes, trims=None) -> torch.Tensor:
        """Weighted noise errors of (x0_j, noise_j, t_j, class_j) items: (M,), or (len(trims),
        M) for a list of trim values (one forward for all of them)."""
        abar = self.scheduler.alphas_cumprod.to(x0.device, torch.float32)[t].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        pred = self._forward(x_t.to(self._dtype), t, classes).float()
        if self.prediction_type == "v_prediction":
            pred = (1 - abar).sqrt() * x_t + abar.sqrt() * pred
        err = (pred - noise).pow(2).flatten(1)
        out = []
        for trim in ([self.trim] if trims is None else trims):
            if trim is None:
                out.append(err.mean(1) * w)
            else:
                keep = max(1, int(trim * err.shape[1]))
                out.append(err.topk(keep, dim=1, largest=False).values.mean(1) * w)
        return out[0] if trims is None else torch.stack(out)

    # public ----------------------------------------------------------------------------------
    @torch.no_grad()
    def errors(self, images: torch.Tensor, *, progress: bool = False) -> torch.Tensor:
        """(N, K) mean weighted noise error per class (+inf for classes pruned by `adaptive`).
        `stats` holds the model evaluations and forwards spent."""
        return self.errors_by_trim(images, [self.trim], progress=progress)[self.trim]

    @torch.no_grad()
    def errors_by_trim(self, images: torch.Tensor, trims, *,
                       progress: bool = False) -> dict:
        """{trim: (N, K) errors} for several trim values (None = no trim) from the same forwards
        (the model evaluations are shared; trimming only changes how per-pixel errors are
        reduced). Adaptive pruning follows the classifier's own `trim`."""
        from tqdm.auto import tqdm

        from trustfast.utils import progress_kwargs

        check_images("images", images, channels=self.model.config.in_channels)
        if isinstance(trims, (str, bytes)) or not isinstance(trims, (list, tuple)) \
                or not trims:
            raise TypeError(f"trims must be a non-empty list of trim values (None or a share "
                            f"in (0, 1]), got {shown(trims)}")
        trims = [None if q is None else float(check_number(f"trims[{i}]", q, low=0.0,
                                                            high=1.0, low_open=True))
                 for i, q in enumerate(trims)]
        order = [self.trim] + [q for q in trims if q != self.trim]
        param = next(self.model.parameters())
        device, self._dtype = param.device, param.dtype
        n, k = len(images), self.num_classes
        shape = tuple(images.shape[1:])
        self.stats = ClassifierStats()
        totals = torch.zeros(len(order), n, k, dtype=torch.float64)
        alive = torch.ones(n, k, dtype=torch.bool)
        # images per chunk so that a chunk's noise bank stays near 64 MB
        per_image = self.draws * math.prod(shape) * 4
        chunk = max(1, min(n, (64 << 20) // max(per_image, 1)))
        bar = tqdm(total=n, desc="diffusion classifier", leave=False,
                   **progress_kwargs(progress))
        with eval_mode(self.model):
            for start in range(0, n, chunk):
                idx = range(start, min(start + chunk, n))
                banks = self._banks(idx, shape, device)
                x0 = images[start:start + len(idx)].to(device, torch.float32) * 2 - 1
                self._run_chunk(x0, banks, totals[:, start:start + len(idx)],
                                alive[start:start + len(idx)], order)
                bar.update(len(idx))
        bar.close()
        result = {}
        for q, total in zip(order, totals):
            out = torch.full((n, k), math.inf, dtype=torch.float64)
            out[alive] = total[alive] / self.draws
            result[q] = out.float()
        return {q: result[q] for q in trims}

    def _run_chunk(self, x0, banks, totals, alive, trims) -> None:
        """Accumulate the weighted errors of one chunk of images into `totals` (T, n, K), one
        per trim, in place, round by round, pruning `alive` (on trims[0]) between rounds."""
        k = self.num_classes
        first = 0
        t_bank, noise_bank, w_bank = banks
        device = x0.device
        for r, (d, keep) in enumerate(self.schedule):
            draws = torch.arange(first, first + d)
            # every (image, draw, class) triple still to score, image-major
            img, cls = alive.nonzero(as_tuple=True)
            img = img.repeat_interleave(d)
            cls = cls.repeat_interleave(d)
            drw = draws.repeat(len(img) // d)
            errs = torch.empty(len(trims), len(img), dtype=torch.float64)
            for s in range(0, len(img), self.batch_size):
                i, c, j = (v[s:s + self.batch_size].to(device) for v in (img, cls, drw))
                errs[:, s:s + len(i)] = self._score(x0[i], noise_bank[i, j], t_bank[i, j],
                                                    w_bank[i, j], c, trims).double().cpu()
                self.stats.forwards += 1
            self.stats.evaluations += len(img)
            for total, e in zip(totals, errs):
                total.index_put_((img, cls), e, accumulate=True)
            first += d
            if r + 1 < len(self.schedule) and keep < k:
                mean = torch.where(alive, totals[0] / first, torch.full_like(totals[0], math.inf))
                best = mean.topk(keep, dim=1, largest=False).indices
                alive.zero_()
                alive.scatter_(1, best, True)
                totals.masked_fill_(~alive.expand_as(totals), 0.0)

    def predict(self, images: torch.Tensor, *, progress: bool = False) -> torch.Tensor:
        """(N,) predicted class per image: the argmin of `errors`."""
        return self.errors(images, progress=progress).argmin(1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict(images)


def classify_per_class(classifier: DiffusionClassifier, images: torch.Tensor) -> torch.Tensor:
    """The (N, K) errors of `classifier` computed the straightforward way, a loop over draws and
    classes with one forward of `batch_size` images each (the reference's loop in
    `edm/pred.py`): the benchmark's peer of the batched `errors` (same draws, same values;
    always exhaustive)."""
    if not isinstance(classifier, DiffusionClassifier):
        raise TypeError(f"classifier must be a DiffusionClassifier, got {shown(classifier)}")
    check_images("images", images, channels=classifier.model.config.in_channels)
    c = classifier
    param = next(c.model.parameters())
    device, c._dtype = param.device, param.dtype
    shape = tuple(images.shape[1:])
    out = torch.zeros(len(images), c.num_classes, dtype=torch.float64)
    c.stats = ClassifierStats()
    with torch.no_grad(), eval_mode(c.model):
        for start in range(0, len(images), c.batch_size):
            idx = range(start, min(start + c.batch_size, len(images)))
            t_all, noise_all, w_all = c._banks(idx, shape, device)
            x0 = images[start:start + len(idx)].to(device, torch.float32) * 2 - 1
            for j in range(c.draws):
                for k in range(c.num_classes):
                    classes = torch.full((len(idx),), k, dtype=torch.long, device=device)
                    out[start:start + len(idx), k] += c._score(
                        x0, noise_all[:, j], t_all[:, j], w_all[:, j], classes).double().cpu()
                    c.stats.forwards += 1
                    c.stats.evaluations += len(idx)
    return (out / c.draws).float()
