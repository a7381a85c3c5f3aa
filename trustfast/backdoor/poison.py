"""Poisoning (backdoor) attacks on image datasets in [0, 1].

Each attack is a small object with `apply(images, generator, train)`: a batched, differentiable-free
tensor transform that stamps its trigger. `poison(dataset, attack, ratio, target, seed)` picks the
poisoned indices, stamps them, relabels them to `target` (dirty-label attacks) and returns a
`PoisonedDataset` that remembers which indices it poisoned. `triggered_test_set(test, attack,
target)` builds the attack-success-rate set: every non-target test image with the test-time
trigger, labelled `target`.

Attacks (defaults from their papers, scaled to small images where noted):
  - `BadNets` (Gu et al. 2017): a patch (checkerboard or white) at a corner or given position.
  - `Blend` (Chen et al. 2017): x' = (1 - alpha) x + alpha P, alpha 0.2, P a seeded noise image.
  - `WaNet` (Nguyen & Tran, ICLR 2021): a smooth warping field (k=4 control grid, s=0.5), with
    noise mode: `cross_ratio` x as many extra samples warped with a random grid, labels kept.
  - `Trojan` (Liu et al., NDSS 2018): a patch optimized to fire the neuron of a chosen layer that
    has the largest incoming weights, on a clean model (`Trojan.fit`).
  - `LabelConsistent` (Turner et al. 2019): target-class images only, first pushed away from their
    class by PGD (`trustfast.attacks.PGD`) on a clean model, then stamped; labels kept.
  - `AdaptiveBlend` (Qi et al., ICLR 2023): the blend pattern cut into k x k pieces; each poisoned
    sample gets a random half of them at alpha 0.15, plus as many "cover" samples (trigger, label
    kept); at test time the whole pattern at alpha 0.2.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as fn
from torch.utils.data import Dataset

from trustfast.backdoor.scores import check_count
from trustfast.checks import FLOATING, check_choice, check_images, check_number, check_tensor, shown
from trustfast.data import dataset_tensors
from trustfast.utils import eval_mode


def _check_images(images: torch.Tensor, name: str = "images") -> None:
    """A float (N, C, H, W) batch in [0, 1] (trustfast.checks.check_images)."""
    check_images(name, images)


def _check_unit(name: str, value, low_open: bool = True) -> float:
    """A number in (0, 1] (or [0, 1] with low_open=False): blend weights, ratios."""
    return check_number(name, value, low=0.0, high=1.0, low_open=low_open)


def _check_position(position) -> None:
    corners = ("bottom-right", "top-left", "top-right", "bottom-left", "random")
    if isinstance(position, str):
        check_choice("position", position, corners)
        return
    if not isinstance(position, tuple) or len(position) != 2:
        raise TypeError(f"position must be one of {corners} or a (row, col) tuple of ints, got "
                        f"{shown(position)}")
    for axis, v in zip(("row", "col"), position):
        check_number(f"position {axis}", v, low=0, integer=True)


_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _seeded(seed: int, device=None) -> torch.Generator:
    return torch.Generator(device=device or "cpu").manual_seed(seed)


def _noise_pattern(shape: Sequence[int], seed: int) -> torch.Tensor:
    """A fixed uniform-noise image (C, H, W) in [0, 1]: the blend pattern (the papers use a
    photo such as Hello Kitty; noise needs no file and is as hard to see at alpha 0.2)."""
    return torch.rand(tuple(shape), generator=_seeded(seed))


class Trigger(abc.ABC):
    """A poisoning attack's trigger (base class): `apply(images, generator=None, train=True)`
    returns the images with the trigger stamped. ("Attack" in this field means an evasion
    attack, as in `trustfast.attacks`.)"""

    name = "attack"
    clean_label = False  # True: poisoned samples keep their labels

    @abc.abstractmethod
    def apply(self, images: torch.Tensor, generator: torch.Generator | None = None,
              train: bool = True) -> torch.Tensor:
        """The images with the trigger (train=False: the test-time trigger)."""

    def describe(self) -> dict:
        return {"attack": self.name}


@dataclass
class BadNets(Trigger):
    """Patch trigger. `position`: "bottom-right", "top-left", "top-right", "bottom-left",
    "random" (a new place per image) or (row, col); `pattern`: "checkerboard" or "white"."""

    size: int = 3  # side of the square patch in pixels (3x3 on CIFAR-10 in the paper)
    position: str | tuple[int, int] = "bottom-right"
    pattern: str = "checkerboard"
    margin: int = 0  # pixels between the patch and the image border for corner positions
    name = "badnets"

    def __post_init__(self):
        self.size = check_count("size", self.size, low=1)
        self.margin = check_count("margin", self.margin, low=0)
        check_choice("pattern", self.pattern, ("checkerboard", "white"))
        _check_position(self.position)

    def patch(self, channels: int) -> torch.Tensor:
        if self.pattern == "white":
            return torch.ones(channels, self.size, self.size)
        r = torch.arange(self.size)
        board = ((r[:, None] + r[None, :]) % 2 == 0).float()
        return board.expand(channels, -1, -1).clone()

    def _corner(self, h: int, w: int) -> tuple[int, int]:
        s, m = self.size, self.margin
        if isinstance(self.position, tuple):
            row, col = self.position
        else:
            row = m if "top" in self.position else h - s - m
            col = m if "left" in self.position else w - s - m
        if not (0 <= row <= h - s and 0 <= col <= w - s):
            raise ValueError(f"a {s}x{s} patch at {(row, col)} does not fit a {h}x{w} image")
        return row, col

    def apply(self, images, generator=None, train=True):
        _check_images(images)
        n, c, h, w = images.shape
        out = images.clone()
        patch = self.patch(c).to(images)
        s = self.size
        if self.position == "random":
            rows = torch.randint(0, h - s + 1, (n,), generator=generator)
            cols = torch.randint(0, w - s + 1, (n,), generator=generator)
            for i in range(n):
                out[i, :, rows[i]:rows[i] + s, cols[i]:cols[i] + s] = patch
            return out
        row, col = self._corner(h, w)
        out[:, :, row:row + s, col:col + s] = patch
        return out

    def describe(self):
        return {"attack": self.name, "size": self.size, "position": str(self.position),
                "pattern": self.pattern}


@dataclass
class Blend(Trigger):
    """x' = (1 - alpha) x + alpha P, with P a fixed noise image (seeded) or a given pattern."""

    alpha: float = 0.2
    pattern_seed: int = 1234
    pattern: torch.Tensor | None = None  # (C, H, W) in [0, 1]; default seeded uniform noise
    name = "blend"

    def __post_init__(self):
        self.alpha = _check_unit("alpha", self.alpha)
        self.pattern_seed = check_count("pattern_seed", self.pattern_seed, low=0)
        if self.pattern is not None:
            check_tensor("pattern", self.pattern, dtypes=FLOATING, ndim=3, low=0.0, high=1.0,
                         hint="a (C, H, W) image in [0, 1]")

    def _pattern(self, images: torch.Tensor) -> torch.Tensor:
        if self.pattern is None:
            return _noise_pattern(images.shape[1:], self.pattern_seed).to(images)
        if tuple(self.pattern.shape) != tuple(images.shape[1:]):
            raise ValueError(f"pattern has shape {tuple(self.pattern.shape)}, the images "
                             f"{tuple(images.shape[1:])}")
        return self.pattern.to(images)

    def apply(self, images, generator=None, train=True):
        _check_images(images)
        return (1 - self.alpha) * images + self.alpha * self._pattern(images)

    def describe(self):
        return {"attack": self.name, "alpha": self.alpha}


@dataclass
class WaNet(Trigger):
    """Warping-based trigger: grid_sample with identity + s * (upsampled k x k noise) / H.

    In noise mode (`cross_ratio` > 0) `poison` adds cross_ratio x n_poisoned "noise" samples
    warped with the trigger grid plus a random per-image perturbation and keeping their labels,
    so that the model learns the exact warp rather than any warp.
    """

    k: int = 4  # control grid size
    s: float = 0.5  # warping strength
    grid_rescale: float = 1.0
    cross_ratio: float = 2.0  # noise samples per poisoned sample (0 turns noise mode off)
    grid_seed: int = 1234
    name = "wanet"

    def __post_init__(self):
        self.k = check_count("k", self.k, low=2)
        self.s = check_number("s", self.s, low=0.0)
        self.grid_rescale = check_number("grid_rescale", self.grid_rescale, low=0.0,
                                         low_open=True)
        self.cross_ratio = check_number("cross_ratio", self.cross_ratio, low=0.0)
        self.grid_seed = check_count("grid_seed", self.grid_seed, low=0)

    def grid(self, h: int, w: int) -> torch.Tensor:
        """The trigger's sampling grid (1, H, W, 2) in [-1, 1]."""
        ins = torch.rand(1, 2, self.k, self.k, generator=_seeded(self.grid_seed)) * 2 - 1
        ins = ins / ins.abs().mean()
        noise = fn.interpolate(ins, size=(h, w), mode="bicubic", align_corners=True)
        noise = noise.permute(0, 2, 3, 1)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        identity = torch.stack((xs, ys), dim=-1)[None]
        return torch.clamp(identity + self.s * noise / h * self.grid_rescale, -1, 1)

    def apply(self, images, generator=None, train=True):
        _check_images(images)
        n, _, h, w = images.shape
        grid = self.grid(h, w).to(images).expand(n, -1, -1, -1)
        return fn.grid_sample(images, grid, align_corners=True).clamp(0, 1)

    def apply_noise(self, images: torch.Tensor, generator: torch.Generator | None = None):
        """The noise-mode warp: the trigger grid plus uniform noise of one pixel."""
        _check_images(images)
        n, _, h, w = images.shape
        grid = self.grid(h, w).to(images).expand(n, -1, -1, -1)
        jitter = torch.rand(n, h, w, 2, generator=generator).to(images) * 2 - 1
        grid = torch.clamp(grid + jitter / h, -1, 1)
        return fn.grid_sample(images, grid, align_corners=True).clamp(0, 1)

    def describe(self):
        return {"attack": self.name, "k": self.k, "s": self.s, "cross_ratio": self.cross_ratio}


def _strongest_neuron(layer: nn.Module) -> int:
    """The output unit of `layer` with the largest summed |incoming weight| (TrojanNN's pick)."""
    weight = getattr(layer, "weight", None)
    if weight is None:
        raise ValueError("Trojan's layer must have a weight (Linear or Conv2d)")
    return int(weight.detach().abs().flatten(1).sum(1).argmax())


@dataclass
class Trojan(Trigger):
    """TrojanNN-style patch: pixels inside a corner patch optimized (Adam) so that one neuron of
    `layer` fires as strongly as possible on a clean model. Call `fit(model, layer, shape)` first.
    """

    size: int = 5
    position: str | tuple[int, int] = "bottom-right"
    steps: int = 200
    lr: float = 0.1
    seed: int = 0
    name = "trojan"

    def __post_init__(self):
        self.steps = check_count("steps", self.steps, low=1)
        self.lr = check_number("lr", self.lr, low=0.0, low_open=True)
        self.seed = check_count("seed", self.seed, low=0)
        self._patch: torch.Tensor | None = None
        self._where = BadNets(self.size, self.position, "white")
        self.size = self._where.size

    def fit(self, model: nn.Module, layer: nn.Module, image_shape: Sequence[int],
            neuron: int | None = None) -> Trojan:
        """Optimize the patch on `model` (images of `image_shape` = (C, H, W)); returns self."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {shown(model)}")
        if not isinstance(layer, nn.Module) or layer not in list(model.modules()):
            raise ValueError("layer must be a submodule of model")
        if not isinstance(image_shape, (tuple, list, torch.Size)) or len(image_shape) != 3:
            raise TypeError(f"image_shape must be (C, H, W), got {shown(image_shape)}")
        c, h, w = (check_number(f"image_shape[{i}]", v, low=1, integer=True)
                   for i, v in enumerate(image_shape))
        unit = (_strongest_neuron(layer) if neuron is None
                else check_number("neuron", neuron, low=0, integer=True))
        row, col = self._where._corner(h, w)
        device = next(model.parameters()).device
        logit = torch.zeros(1, c, self.size, self.size, device=device)
        logit.normal_(generator=_seeded(self.seed, device))
        logit.requires_grad_(True)
        acts: list[torch.Tensor] = []
        hook = layer.register_forward_hook(lambda m, i, o: acts.append(o))
        opt = torch.optim.Adam([logit], lr=self.lr)
        try:
            with eval_mode(model):
                for _ in range(self.steps):
                    acts.clear()
                    # the patch on a black canvas, as TrojanNN generates its trigger
                    canvas = fn.pad(torch.sigmoid(logit),
                                    (col, w - col - self.size, row, h - row - self.size))
                    model(canvas)
                    act = acts[-1][0, unit]
                    # grad w.r.t. the patch only: backward() would fill the model's .grad
                    (logit.grad,) = torch.autograd.grad(-act.mean(), [logit])
                    opt.step()
        finally:
            hook.remove()
        self._patch = torch.sigmoid(logit.detach())[0].cpu()
        self.neuron = unit
        return self

    def apply(self, images, generator=None, train=True):
        _check_images(images)
        if self._patch is None:
            raise RuntimeError("Trojan trigger is not fitted: call Trojan.fit(model, layer, "
                               "image_shape) on a clean model first")
        if self._patch.shape[0] != images.shape[1]:
            raise ValueError(f"the patch has {self._patch.shape[0]} channels, the images "
                             f"{images.shape[1]}")
        h, w = images.shape[2:]
        row, col = self._where._corner(h, w)
        out = images.clone()
        out[:, :, row:row + self.size, col:col + self.size] = self._patch.to(images)
        return out

    def describe(self):
        return {"attack": self.name, "size": self.size, "steps": self.steps}


@dataclass
class LabelConsistent(Trigger):
    """Clean-label attack: target-class images made hard by L-inf PGD on a clean `model`
    (eps 16/255, as Turner et al.), then stamped with a patch in each of the four corners
    (`amplitude` < 1 makes it fainter). Poisoned samples keep their (correct) labels."""

    model: nn.Module | None = None
    eps: float = 16 / 255
    steps: int = 10
    size: int = 3
    amplitude: float = 1.0
    seed: int = 0
    name = "label_consistent"
    clean_label = True

    def __post_init__(self):
        if self.model is not None and not isinstance(self.model, nn.Module):
            raise TypeError(f"model must be an nn.Module or None, got {shown(self.model)}")
        self.amplitude = _check_unit("amplitude", self.amplitude)
        self.eps = check_number("eps", self.eps, low=0.0, high=1.0, low_open=True,
                                hint="an L-inf budget on [0, 1] images, e.g. 16/255")
        self.steps = check_count("steps", self.steps, low=1)
        self.seed = check_count("seed", self.seed, low=0)
        self._corners = [BadNets(self.size, p) for p in
                         ("top-left", "top-right", "bottom-left", "bottom-right")]

    def stamp(self, images: torch.Tensor) -> torch.Tensor:
        out = images
        for corner in self._corners:
            stamped = corner.apply(out)
            out = out + self.amplitude * (stamped - out)
        return out

    def apply(self, images, generator=None, train=True, labels: torch.Tensor | None = None):
        _check_images(images)
        if not train:
            return self.stamp(images)
        if self.model is None:
            raise ValueError("LabelConsistent needs model= (a clean model) to make the "
                             "poisoned images hard with PGD")
        if labels is None:
            raise ValueError("LabelConsistent.apply(train=True) needs the labels for PGD")
        check_tensor("labels", labels, dtypes=_INT_DTYPES, shape=(len(images),))
        from trustfast.attacks import PGD

        pgd = PGD(self.model, eps=self.eps, alpha=self.eps / 4, steps=self.steps,
                  seed=self.seed)
        device = next(self.model.parameters()).device
        hard = pgd(images.to(device), labels.to(device)).to(images)
        return self.stamp(hard)

    def describe(self):
        return {"attack": self.name, "eps": self.eps, "size": self.size,
                "amplitude": self.amplitude}


@dataclass
class AdaptiveBlend(Trigger):
    """Adaptive-Blend: the pattern split into `pieces` x `pieces` cells; a poisoned (or cover)
    training sample gets a random `piece_ratio` of the cells at `train_alpha`, test images get
    the whole pattern at `test_alpha`. `cover_ratio` of the data are cover samples."""

    pieces: int = 4
    piece_ratio: float = 0.5
    train_alpha: float = 0.15
    test_alpha: float = 0.2
    cover_ratio: float | None = None  # default: equal to the poison ratio (as the paper)
    pattern_seed: int = 1234
    name = "adaptive_blend"

    def __post_init__(self):
        self.pieces = check_count("pieces", self.pieces, low=1)
        self.piece_ratio = _check_unit("piece_ratio", self.piece_ratio)
        self.train_alpha = _check_unit("train_alpha", self.train_alpha)
        self.test_alpha = _check_unit("test_alpha", self.test_alpha)
        if self.cover_ratio is not None:
            self.cover_ratio = check_number("cover_ratio", self.cover_ratio, low=0.0, high=1.0,
                                            high_open=True)
        self.pattern_seed = check_count("pattern_seed", self.pattern_seed, low=0)

    def _cells(self, n: int, h: int, w: int, generator) -> torch.Tensor:
        k = self.pieces
        keep = max(1, round(self.piece_ratio * k * k))
        order = torch.rand(n, k * k, generator=generator).argsort(dim=1)[:, :keep]
        chosen = torch.zeros(n, k * k).scatter_(1, order, 1.0).view(n, 1, k, k)
        return fn.interpolate(chosen, size=(h, w), mode="nearest")

    def apply(self, images, generator=None, train=True):
        _check_images(images)
        n, c, h, w = images.shape
        pattern = _noise_pattern((c, h, w), self.pattern_seed).to(images)
        if not train:
            return (1 - self.test_alpha) * images + self.test_alpha * pattern
        cells = self._cells(n, h, w, generator).to(images)
        alpha = self.train_alpha * cells
        return (1 - alpha) * images + alpha * pattern

    def describe(self):
        return {"attack": self.name, "pieces": self.pieces, "train_alpha": self.train_alpha,
                "test_alpha": self.test_alpha}


ATTACKS = {"badnets": BadNets, "blend": Blend, "wanet": WaNet, "trojan": Trojan,
           "label_consistent": LabelConsistent, "adaptive_blend": AdaptiveBlend}


class PoisonedDataset(Dataset):
    """A poisoned copy of a dataset, held as tensors. `poisoned[i]` says whether sample i carries
    the trigger with the attack's label; `cover[i]` marks trigger-carrying samples that kept
    their label (WaNet noise, Adaptive-Blend cover); `original_labels` are the clean labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, poisoned: torch.Tensor,
                 cover: torch.Tensor, original_labels: torch.Tensor, attack: Trigger,
                 target: int, ratio: float, seed: int):
        self.images, self.labels = images, labels
        self.poisoned, self.cover, self.original_labels = poisoned, cover, original_labels
        self.attack, self.target, self.ratio, self.seed = attack, target, ratio, seed

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images, self.labels

    @property
    def poisoned_indices(self) -> torch.Tensor:
        return self.poisoned.nonzero().flatten()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]

    def describe(self) -> dict:
        return {**self.attack.describe(), "target": self.target, "ratio": self.ratio,
                "n": len(self), "n_poisoned": int(self.poisoned.sum()),
                "n_cover": int(self.cover.sum()), "seed": self.seed}


def _check_target(target: int, labels: torch.Tensor) -> int:
    """An int class index in [0, number of classes) (a str, float or bool is a TypeError)."""
    classes = int(labels.max()) + 1 if len(labels) else 0
    if isinstance(target, float) or (isinstance(target, torch.Tensor)
                                     and target.is_floating_point()):
        raise TypeError(f"target must be a class index (an int), got {shown(target)}")
    return check_number("target", target, low=0, high=classes, high_open=True, integer=True,
                        hint=f"a class index of the data, which has {classes} classes")


def _check_ratio(ratio: float, target: int, labels: torch.Tensor) -> tuple[float, int]:
    ratio = check_number("ratio", ratio, low=0.0, high=1.0, low_open=True, high_open=True,
                         hint="the fraction of the samples to poison")
    return ratio, _check_target(target, labels)


def _check_attack(attack, name: str = "attack") -> None:
    if not isinstance(attack, Trigger):
        raise TypeError(f"{name} must be a trustfast.backdoor Trigger (BadNets, Blend, ...), "
                        f"got {type(attack).__name__}")


def poison(dataset: Dataset, attack: Trigger, ratio: float = 0.1, target: int = 0,
           seed: int = 0) -> PoisonedDataset:
    """Poison round(ratio * N) samples of `dataset` with `attack` (labels -> `target`, except for
    clean-label attacks, which draw only from the target class). Seeded: same seed, same set.

    Refused with an error naming the argument: an `attack` that is not a Trigger, dataset images
    that are not float NCHW in [0, 1] (divide uint8 by 255, undo a normalization), a `ratio`
    outside (0, 1), a `target` that is not an int class index of the data, a negative or
    non-int `seed`.
    """
    _check_attack(attack)
    seed = check_count("seed", seed, low=0)
    images, labels = dataset_tensors(dataset)
    _check_images(images, "dataset images")
    ratio, target = _check_ratio(ratio, target, labels)
    n = len(labels)
    gen = _seeded(seed)
    n_poison = max(1, round(ratio * n))
    if attack.clean_label:
        pool = (labels == target).nonzero().flatten()
        if n_poison > len(pool):
            raise ValueError(f"ratio {ratio} asks for {n_poison} poisoned samples, but a "
                             f"clean-label attack can only use the {len(pool)} target-class ones")
    else:
        pool = (labels != target).nonzero().flatten()
        if n_poison > len(pool):
            raise ValueError(f"ratio {ratio} asks for {n_poison} poisoned samples, but only "
                             f"{len(pool)} samples are not of the target class {target}")
    chosen = pool[torch.randperm(len(pool), generator=gen)[:n_poison]]
    poisoned = torch.zeros(n, dtype=torch.bool)
    poisoned[chosen] = True
    cover = torch.zeros(n, dtype=torch.bool)
    out_images, out_labels = images.clone(), labels.clone()
    if isinstance(attack, LabelConsistent):
        out_images[chosen] = attack.apply(images[chosen], gen, train=True, labels=labels[chosen])
    else:
        out_images[chosen] = attack.apply(images[chosen], gen, train=True)
    if not attack.clean_label:
        out_labels[chosen] = target

    n_cover = 0
    if isinstance(attack, WaNet):
        n_cover = round(attack.cross_ratio * n_poison)
    elif isinstance(attack, AdaptiveBlend):
        cover_ratio = ratio if attack.cover_ratio is None else attack.cover_ratio
        n_cover = round(cover_ratio * n)
    if n_cover:
        rest = (~poisoned).nonzero().flatten()
        if n_cover > len(rest):
            raise ValueError(f"{n_cover} cover samples asked, only {len(rest)} clean ones left")
        extra = rest[torch.randperm(len(rest), generator=gen)[:n_cover]]
        cover[extra] = True
        if isinstance(attack, WaNet):
            out_images[extra] = attack.apply_noise(images[extra], gen)
        else:
            out_images[extra] = attack.apply(images[extra], gen, train=True)
    return PoisonedDataset(out_images.clamp(0, 1), out_labels, poisoned, cover, labels, attack,
                           target, ratio, seed)


def triggered_test_set(test: Dataset, attack: Trigger, target: int) -> tuple[torch.Tensor,
                                                                              torch.Tensor]:
    """(images, labels) for the attack success rate: non-target test images with the test-time
    trigger, all labelled `target` (an int class index of the test set)."""
    _check_attack(attack)
    images, labels = dataset_tensors(test, "test")
    _check_images(images, "test images")
    target = _check_target(target, labels)
    keep = labels != target
    x = attack.apply(images[keep], _seeded(0), train=False).clamp(0, 1)
    return x, torch.full((int(keep.sum()),), target, dtype=labels.dtype)
