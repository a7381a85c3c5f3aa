"""FairSkin: three levels of resampling for fair generative augmentation of skin-disease images.

FairSkin ("FairSkin: Fair Diffusion for Skin Disease Image Generation", 2024) trains a
conditional diffusion model on data dominated by light skin tones with (1) balanced sampling
across skin-tone groups, (2) a class-diversity term so that rare (group, disease) cells are not
collapsed, and (3) imbalance-aware mixing and reweighting of real and synthetic images for the
downstream classifier. The paper's exact formulas are not available here: every
formula below is **trustfast's definition**, stated with its math; each level is a separate
option and the levels compose.

Notation: sample i has skin-tone group g_i and disease class c_i; its cell is (g_i, c_i),
indexed `cell_index = g * num_classes + c`; n_k is the number of samples in cell k (for the
"group" mode, in group k).

- Level 1, balanced sampling (`balanced_probabilities`, `FairSampler`): p_i ∝ n_{k(i)}^(-T).
  A cell's total probability mass is n_k^(1-T) / sum_j n_j^(1-T): T = 0 draws the natural
  frequencies, T = 1 draws every non-empty cell equally often, 0 < T < 1 interpolates.
- Level 2, class diversity: inverse-frequency loss weights w_i ∝ n_{(g,c)(i)}^(-p), mean 1
  (`class_diversity_weights`, for `train_diffusion(loss_weight=)`), and a within-cell diversity
  penalty on the predicted clean images of same-cell pairs in a batch
  (`within_cell_diversity`, `WithinCellDiversity`, for `train_diffusion(regularizer=)`).
  With group-class sampling at temperature T and weights of power p, a cell's share of the
  loss is ∝ n^(1-T-p): T + p = 1 makes it uniform over cells, T + p > 1 favours rare cells.
- Level 3, downstream mixing (`mix_real_synthetic`, `synthetic_counts_needed`): every cell is
  filled with synthetic images up to a target count; real images weigh 1 and synthetic ones
  lambda, then the weights are rescaled so every non-empty cell has the same total weight.

`FairSkinConfig` holds the options of the three levels and builds the pieces
`train_diffusion` takes (`sampler`, `loss_weight`, `regularizer`) and the level-3 mix.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as fn
from torch.utils.data import Dataset, Sampler

from trustfast.checks import (
    FLOATING,
    check_choice,
    check_images,
    check_number,
    check_tensor,
    describe,
)
from trustfast.config import Config

MODES = ("group", "group_class")
BALANCES = ("none",) + MODES
INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


# -- cells -----------------------------------------------------------------------------------
def _index_tensor(name: str, x: Any, n: int | None = None) -> torch.Tensor:
    """A 1-D non-negative integer tensor (of length n where given), as int64 on its device."""
    x = check_tensor(name, x, dtypes=INDEX_DTYPES, ndim=1, shape=None if n is None else (n,),
                     low=0)
    return x.long()


def _groups_labels(groups: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    groups = _index_tensor("groups", groups)
    labels = _index_tensor("labels", labels, len(groups))
    if len(groups) == 0:
        raise ValueError(f"groups must not be empty, got {describe(groups)}")
    return groups, labels


def cell_index(labels: torch.Tensor, groups: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The (group, class) cell of each sample: `group * num_classes + label` (LongTensor, the
    row-major index into a (num_groups, num_classes) table such as `cell_counts()`)."""
    num_classes = check_number("num_classes", num_classes, low=1, integer=True)
    groups = _index_tensor("groups", groups)
    labels = _index_tensor("labels", labels, len(groups))
    if len(labels) and int(labels.max()) >= num_classes:
        raise ValueError(f"labels must be < num_classes={num_classes}, got a label "
                         f"{int(labels.max())}")
    return groups * num_classes + labels


def split_cells(cells: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of `cell_index`: (groups, labels) = divmod(cells, num_classes)."""
    num_classes = check_number("num_classes", num_classes, low=1, integer=True)
    cells = _index_tensor("cells", cells)
    return cells // num_classes, cells % num_classes


def _cells(groups: torch.Tensor, labels: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "group":
        return groups
    return groups * (int(labels.max()) + 1) + labels


def _cell_sizes(cells: torch.Tensor) -> torch.Tensor:
    """n_{k(i)}: the size of each sample's cell, float64."""
    _, inverse, counts = torch.unique(cells, return_inverse=True, return_counts=True)
    return counts[inverse].double()


class CellLabels(Dataset):
    """`dataset`'s items with the cell index as the label: (image, group * C + class, group,
    class), so a label-conditioned diffusion model (`label_unet(G * C)`) learns one label per
    (group, class) cell and can generate any cell."""

    def __init__(self, dataset: Any):
        groups, labels = _dataset_groups_labels(dataset)
        self.dataset = dataset
        self.num_classes = _num_classes(dataset, labels)
        self.cells = cell_index(labels, groups, self.num_classes)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int, int]:
        item = self.dataset[i]
        cell = int(self.cells[i])
        return item[0], cell, cell // self.num_classes, cell % self.num_classes


# -- level 1: balanced sampling -------------------------------------------------------------
def balanced_probabilities(groups: torch.Tensor, labels: torch.Tensor, *,
                           mode: str = "group_class", temperature: float = 1.0) -> torch.Tensor:
    """Sampling probabilities (N,) float64 that balance groups or (group, class) cells.

    trustfast's definition of FairSkin's level 1: p_i = n_{k(i)}^(-T) / sum_j n_{k(j)}^(-T),
    k(i) the group of sample i (`mode="group"`) or its (group, class) cell
    (`mode="group_class"`), n_k the number of samples in k, T = `temperature` in [0, 1]. Cell k
    receives the mass n_k^(1-T) / sum_j n_j^(1-T): T = 0 gives the natural frequencies, T = 1
    draws every non-empty group (cell) equally often. Empty cells get no mass.
    """
    check_choice("mode", mode, MODES)
    temperature = check_number("temperature", temperature, low=0.0, high=1.0)
    groups, labels = _groups_labels(groups, labels)
    sizes = _cell_sizes(_cells(groups.cpu(), labels.cpu(), mode))
    p = sizes.pow(-float(temperature))
    return p / p.sum()


def _epoch_seed(seed: int, epoch: int) -> int:
    # A hash rather than seed * K + epoch: distinct (seed, epoch) pairs never share a stream.
    digest = hashlib.sha256(f"fairskin:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


class FairSampler(Sampler[int]):
    """Dataset indices drawn with `balanced_probabilities` (FairSkin level 1).

    Each epoch draws `num_samples` (default N) indices with `torch.multinomial` from a
    `torch.Generator` seeded by (seed, epoch): the order is a deterministic function of the two,
    and `set_epoch(epoch)` (called by the training loop before each epoch) gives each epoch its
    own draw. With `replacement=False` an epoch is a probability-weighted order of distinct
    indices (num_samples <= N); its frequencies then follow p only approximately.
    """

    def __init__(self, groups: torch.Tensor, labels: torch.Tensor, *, mode: str = "group_class",
                 temperature: float = 1.0, num_samples: int | None = None, seed: int = 0,
                 replacement: bool = True):
        self.probabilities = balanced_probabilities(groups, labels, mode=mode,
                                                    temperature=temperature)
        n = len(self.probabilities)
        if not isinstance(replacement, bool):
            raise TypeError(f"replacement must be a bool, got {replacement!r}")
        self.num_samples = n if num_samples is None else check_number(
            "num_samples", num_samples, low=1, high=None if replacement else n, integer=True)
        self.seed = check_number("seed", seed, integer=True)
        self.mode, self.temperature, self.replacement = mode, float(temperature), replacement
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw epoch `epoch`'s indices next (as `DistributedSampler.set_epoch`)."""
        self.epoch = check_number("epoch", epoch, low=0, integer=True)

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        """The (num_samples,) LongTensor of indices of `epoch` (default: the current one)."""
        epoch = self.epoch if epoch is None else check_number("epoch", epoch, low=0,
                                                              integer=True)
        gen = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        return torch.multinomial(self.probabilities, self.num_samples,
                                 replacement=self.replacement, generator=gen)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.num_samples


# -- level 2: class diversity ---------------------------------------------------------------
def class_diversity_weights(groups: torch.Tensor, labels: torch.Tensor, *, power: float = 1.0,
                            clip: float | None = None) -> torch.Tensor:
    """Per-sample loss weights (N,) float32, mean 1, inverse to the (group, class) cell size.

    trustfast's definition of the loss-weight part of FairSkin's level 2:
    w_i = n_{(g_i, c_i)}^(-p) / mean_j n_{(g_j, c_j)}^(-p), p = `power` >= 0 (0: all 1), so a
    cell's total weight is ∝ n^(1-p) (p = 1: every cell weighs the same). `clip` (>= 1) bounds
    the ratio to the mean: the weights are clipped to [1/clip, clip] once and then rescaled to
    mean 1 again (so the bound holds up to that last rescaling factor). For
    `train_diffusion(loss_weight=)`, indexed by dataset position.
    """
    power = check_number("power", power, low=0.0)
    if clip is not None:
        clip = check_number("clip", clip, low=1.0)
    groups, labels = _groups_labels(groups, labels)
    w = _cell_sizes(_cells(groups.cpu(), labels.cpu(), "group_class")).pow(-float(power))
    w = w / w.mean()
    if clip is not None:
        w = w.clamp(1.0 / clip, clip)
        w = w / w.mean()
    return w.float()


def within_cell_diversity(x0_pred: torch.Tensor, cells: torch.Tensor, *, margin: float,
                          weight: float = 1.0, timesteps: torch.Tensor | None = None,
                          max_timestep: int | None = None) -> torch.Tensor:
    """Hinge penalty on same-cell predictions that are closer than `margin` (a scalar tensor).

    trustfast's definition of the diversity part of FairSkin's level 2: for the pairs i < j of
    the batch with cells[i] == cells[j],
        d_ij = mean over (C, H, W) of (x0_pred_i - x0_pred_j)^2   (model scale, [-1, 1])
        loss = weight * mean over those pairs of relu(margin - d_ij),
    and 0 when no two samples share a cell. Minimising it pushes apart predicted clean images of
    a cell that have collapsed onto each other (mode collapse of rare cells) and leaves pairs
    at least `margin` apart alone. Exactly equal predictions are a stationary point (the
    gradient of d_ij vanishes there by symmetry); the denoising loss breaks the tie.

    With `max_timestep` (needs `timesteps` (B,)), only pairs whose timesteps are both
    < max_timestep count: at high noise the x0 prediction is close to the cell's mean image
    for every sample, so a penalty there would fight the denoising loss rather than collapse.
    Distances are computed in float32 from the differences (no Gram-matrix cancellation).
    """
    x0_pred = check_tensor("x0_pred", x0_pred, dtypes=FLOATING, ndim=(2, 3, 4, 5))
    b = x0_pred.shape[0]
    cells = check_tensor("cells", cells, dtypes=INDEX_DTYPES, shape=(b,))
    margin = check_number("margin", margin, low=0.0, low_open=True)
    weight = check_number("weight", weight, low=0.0)
    same = cells.to(x0_pred.device).view(-1, 1) == cells.to(x0_pred.device).view(1, -1)
    same = torch.triu(same, diagonal=1)
    if max_timestep is not None:
        max_timestep = check_number("max_timestep", max_timestep, low=1, integer=True)
        if timesteps is None:
            raise ValueError("timesteps must be given with max_timestep")
        timesteps = check_tensor("timesteps", timesteps, shape=(b,))
        early = (timesteps.to(x0_pred.device) < max_timestep).view(-1)
        same = same & early.view(-1, 1) & early.view(1, -1)
    rows, cols = same.nonzero(as_tuple=True)
    if len(rows) == 0 or weight == 0:
        return x0_pred.new_zeros((), dtype=torch.float32)
    flat = x0_pred.flatten(1).float()
    used = torch.unique(torch.cat([rows, cols]))
    # cdist over the samples that are in some pair: B' x B' distances, B' <= B; the
    # non-mm mode subtracts before squaring, exact for near-equal predictions.
    dist = torch.cdist(flat[used].unsqueeze(0), flat[used].unsqueeze(0),
                       compute_mode="donot_use_mm_for_euclid_dist").squeeze(0)
    position = torch.full((b,), -1, dtype=torch.long, device=x0_pred.device)
    position[used] = torch.arange(len(used), device=x0_pred.device)
    d = dist[position[rows], position[cols]].pow(2) / flat.shape[1]
    return weight * fn.relu(margin - d).mean()


def calibrate_margin(images: torch.Tensor, cells: torch.Tensor, *, quantile: float = 0.05,
                     max_per_cell: int = 64) -> float:
    """A margin for `within_cell_diversity` from real data: the `quantile` of d_ij over the
    same-cell pairs of `images` ((N, C, H, W) in [0, 1], measured in the model's [-1, 1]
    scale as the penalty is), using the first `max_per_cell` images of each cell. With the
    default 5 % quantile, predictions of a cell are pushed apart only when they are closer
    than 95 % of the real pairs of a cell are. (Measured on `synthetic_skin(2000)` at 32 px:
    5 % quantile 0.0068, median 0.031.) Refuses data without any same-cell pair."""
    images = check_images("images", images)
    cells = _index_tensor("cells", cells, len(images)).cpu()
    quantile = check_number("quantile", quantile, low=0.0, high=1.0)
    max_per_cell = check_number("max_per_cell", max_per_cell, low=2, integer=True)
    found = []
    for cell in torch.unique(cells).tolist():
        x = images[(cells == cell).to(images.device)][:max_per_cell].flatten(1).float() * 2 - 1
        if len(x) < 2:
            continue
        d = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist").pow(2) / x.shape[1]
        rows, cols = torch.triu_indices(len(x), len(x), 1, device=x.device)
        found.append(d[rows, cols].double().cpu())
    if not found:
        raise ValueError("cells must hold at least one cell with two images to calibrate a "
                         "margin")
    return float(torch.quantile(torch.cat(found), quantile))


class WithinCellDiversity:
    """`within_cell_diversity` as `train_diffusion`'s regularizer: `(x0_pred, labels, indices,
    timesteps) -> scalar`, reading each sample's cell from `cells_of_dataset[indices]` (so a
    label replaced by the null label of classifier-free guidance keeps its cell). Under DDP
    each rank sees its own share of the batch: pairs across ranks are not counted."""

    def __init__(self, cells_of_dataset: torch.Tensor, weight: float, margin: float, *,
                 max_timestep: int | None = None):
        self.cells = _index_tensor("cells_of_dataset", cells_of_dataset).cpu()
        self.weight = check_number("weight", weight, low=0.0)
        self.margin = check_number("margin", margin, low=0.0, low_open=True)
        self.max_timestep = None if max_timestep is None else check_number(
            "max_timestep", max_timestep, low=1, integer=True)

    def __call__(self, x0_pred: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor,
                 timesteps: torch.Tensor) -> torch.Tensor:
        indices = check_tensor("indices", indices, dtypes=INDEX_DTYPES, ndim=1, low=0,
                               high=len(self.cells) - 1)
        cells = self.cells[indices.cpu().long()]
        return within_cell_diversity(x0_pred, cells, margin=self.margin, weight=self.weight,
                                     timesteps=timesteps, max_timestep=self.max_timestep)


# -- level 3: downstream mixing -------------------------------------------------------------
_DATASET_HINT = ("a SkinDataset (trustfast.data.skin): images, labels, groups, class_names, "
                 "group_names")


def _dataset_groups_labels(dataset: Any, name: str = "dataset"
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    if not all(hasattr(dataset, a) for a in ("groups", "labels")):
        raise TypeError(f"{name} must be {_DATASET_HINT}, got a {type(dataset).__name__}")
    groups = _index_tensor(f"{name}.groups", dataset.groups)
    labels = _index_tensor(f"{name}.labels", dataset.labels, len(groups))
    return groups, labels


def _num_classes(dataset: Any, labels: torch.Tensor) -> int:
    num = getattr(dataset, "num_classes", None)
    return int(num) if num is not None else int(labels.max()) + 1


def _skin(name: str, dataset: Any) -> Any:
    missing = [a for a in ("images", "labels", "groups", "class_names", "group_names")
               if not hasattr(dataset, a)]
    if missing:
        raise TypeError(f"{name} must be {_DATASET_HINT}, got a {type(dataset).__name__} "
                        f"without {', '.join(missing)}")
    _dataset_groups_labels(dataset, name)
    return dataset


def _table(dataset: Any) -> tuple[int, int]:
    return len(dataset.group_names), len(dataset.class_names)


def _cell_counts(dataset: Any) -> torch.Tensor:
    g, c = _table(dataset)
    cells = dataset.groups.long().cpu() * c + dataset.labels.long().cpu()
    return torch.bincount(cells, minlength=g * c).view(g, c)


def _target(real: Any, target_count: int | None) -> int:
    if target_count is None:
        return int(_cell_counts(real).max())
    return check_number("target_count", target_count, low=0, integer=True)


def synthetic_counts_needed(real: Any, target_count: int | None = None) -> torch.Tensor:
    """(num_groups, num_classes) LongTensor: how many synthetic images each cell needs to reach
    `target_count` (None: the largest real cell), max(0, target - n_real(g, c))."""
    real = _skin("real", real)
    return (_target(real, target_count) - _cell_counts(real)).clamp_min(0)


def cells_to_generate(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(groups, labels) LongTensors listing counts[g, c] samples of each cell, in row-major
    cell order: the conditioning of the images to generate for `synthetic_counts_needed`."""
    counts = check_tensor("counts", counts, dtypes=INDEX_DTYPES, ndim=2, low=0).long().cpu()
    g, c = counts.shape
    cells = torch.repeat_interleave(torch.arange(g * c), counts.flatten())
    return cells // c, cells % c


def mix_real_synthetic(real: Any, synthetic: Any, *, target_count: int | None,
                       synthetic_weight: float, balance_cells: bool = True
                       ) -> tuple[Any, torch.Tensor]:
    """Real images plus enough synthetic ones to fill every (group, class) cell, and weights.

    trustfast's definition of FairSkin's level 3. For each cell (g, c) with n_r real images:
    keep all of them and append the first max(0, T - n_r) synthetic images of that cell, in
    their order (T = `target_count`, None: the largest real cell); a cell with too few
    synthetic images takes what exists, and one warning lists the cells short. The mixed
    dataset holds the real images first (their indices unchanged), then the chosen synthetic
    ones in cell order.

    Weights (for `fit_classifier(sample_weights=)`): 1 for a real image, lambda =
    `synthetic_weight` for a synthetic one; with `balance_cells` each cell's weights are then
    divided by the cell's total, so every cell with positive total weight weighs the same
    (imbalance-aware reweighting: a cell of 3 real + 97 synthetic images counts as much as one
    of 100 real); finally all weights are scaled to mean 1. A cell whose total is 0 (only
    synthetic images and lambda = 0) keeps weight 0.

    Returns (mixed dataset of `real`'s type, weights (N_mixed,) float32).
    """
    real, synthetic = _skin("real", real), _skin("synthetic", synthetic)
    if tuple(real.class_names) != tuple(synthetic.class_names) or \
            tuple(real.group_names) != tuple(synthetic.group_names):
        raise ValueError("synthetic must have real's class_names and group_names, got "
                         f"{tuple(synthetic.class_names)} / {tuple(synthetic.group_names)} for "
                         f"{tuple(real.class_names)} / {tuple(real.group_names)}")
    if len(synthetic) and tuple(synthetic.images.shape[1:]) != tuple(real.images.shape[1:]):
        raise ValueError(f"synthetic.images must have real's image shape "
                         f"{tuple(real.images.shape[1:])}, got {describe(synthetic.images)}")
    synthetic_weight = check_number("synthetic_weight", synthetic_weight, low=0.0)
    if not isinstance(balance_cells, bool):
        raise TypeError(f"balance_cells must be a bool, got {balance_cells!r}")
    target = _target(real, target_count)
    g, c = _table(real)
    need = (target - _cell_counts(real)).clamp_min(0).flatten()
    syn_cells = synthetic.groups.long().cpu() * c + synthetic.labels.long().cpu()
    chosen, short = [], []
    for cell in torch.nonzero(need).flatten().tolist():
        have = torch.nonzero(syn_cells == cell).flatten()
        wanted = int(need[cell])
        chosen.append(have[:wanted])
        if len(have) < wanted:
            short.append(f"({real.group_names[cell // c]}, {real.class_names[cell % c]}): "
                         f"{len(have)} of {wanted}")
    if short:
        warnings.warn(f"mix_real_synthetic: {len(short)} cells have too few synthetic images "
                      f"to reach target_count={target}: " + "; ".join(short), stacklevel=2)
    pick = torch.cat(chosen) if chosen else torch.zeros(0, dtype=torch.long)
    images = torch.cat([real.images, synthetic.images[pick].to(real.images)])
    labels = torch.cat([real.labels.long().cpu(), synthetic.labels.long().cpu()[pick]])
    groups = torch.cat([real.groups.long().cpu(), synthetic.groups.long().cpu()[pick]])
    mixed = type(real)(images, labels, groups, tuple(real.class_names), tuple(real.group_names))
    w = torch.cat([torch.ones(len(real), dtype=torch.float64),
                   torch.full((len(pick),), float(synthetic_weight), dtype=torch.float64)])
    if balance_cells:
        cells = groups * c + labels
        totals = torch.zeros(g * c, dtype=torch.float64).index_add_(0, cells, w)
        w = torch.where(totals[cells] > 0, w / totals[cells].clamp_min(1e-300), 0.0)
    if not bool(w.sum() > 0):
        raise ValueError("the mixed data has no positive weight (no real images and "
                         "synthetic_weight=0)")
    return mixed, (w * (len(w) / w.sum())).float()


# -- the three levels in one config ---------------------------------------------------------
@dataclass
class FairSkinConfig(Config):
    """The options of FairSkin's three levels (each off by its own switch).

    Defaults, measured (BENCHMARKS.md, `trustfast fairskin` at 8 px, 600 steps, seeds 0-2):
    level 1 draws every (group, class) cell equally often (T = 1) and level 2's loss weights
    are off (p = 0). That narrowed the per-tone FD gap by 48 % against vanilla training and
    lowered the mean FD, and its images raised the downstream worst-group accuracy by 6 points.
    Splitting the rebalancing between the levels (T = p = 0.5, the same uniform share of the
    loss per cell, ∝ n^(1-T-p)) narrowed the gap by 37 % but raised the mean FD by 42 % and gave
    no downstream gain: weights of up to ~4x on the rarest cells make the gradient noisy where
    resampling repeats their images. Synthetic images count half a real one (lambda = 0.5):
    they fill cells, but are less faithful than real images. The within-cell diversity term is
    off by default (trustfast's own addition, not measured against the paper); when on, its
    margin defaults to the data's own scale (`calibrate_margin`: the 5 % quantile of real
    same-cell distances).
    """

    balance: str = "group_class"        # level 1: "none" | "group" | "group_class"
    temperature: float = 1.0            # level 1: 0 natural frequencies .. 1 uniform over cells
    replacement: bool = True            # level 1: draw with replacement
    diversity_power: float = 0.0        # level 2: loss weights ∝ n_cell^-power (0 = off)
    diversity_clip: float | None = None  # level 2: clip weights to [1/clip, clip] (None = off)
    diversity_weight: float = 0.0       # level 2: within-cell diversity penalty (0 = off)
    diversity_margin: float = 0.0       # level 2: per-pixel mean sq. distance (0 = calibrate)
    diversity_max_timestep: int | None = None  # level 2: penalise only t < this (None = all)
    target_count: int = 0               # level 3: images per cell (0 = the largest real cell)
    synthetic_weight: float = 0.5       # level 3: lambda, a synthetic image's weight
    balance_cells: bool = True          # level 3: equal total weight per cell

    def check(self) -> None:
        self.choice("balance", BALANCES)
        self.within("temperature", 0, 1)
        self.at_least("diversity_power", 0)
        if self.diversity_clip is not None:
            self.at_least("diversity_clip", 1)
        self.at_least("diversity_weight", 0)
        self.at_least("diversity_margin", 0)
        if self.diversity_max_timestep is not None:
            self.at_least("diversity_max_timestep", 1)
        self.at_least("target_count", 0)
        self.at_least("synthetic_weight", 0)

    def sampler(self, dataset: Any, seed: int = 0) -> FairSampler | None:
        """Level 1: a `FairSampler` over `dataset` (None when balance is "none")."""
        if self.balance == "none":
            return None
        groups, labels = _dataset_groups_labels(dataset)
        return FairSampler(groups, labels, mode=self.balance, temperature=self.temperature,
                           seed=seed, replacement=self.replacement)

    def loss_weights(self, dataset: Any) -> torch.Tensor | None:
        """Level 2: `class_diversity_weights` of `dataset` (None when diversity_power is 0)."""
        if self.diversity_power == 0:
            return None
        groups, labels = _dataset_groups_labels(dataset)
        return class_diversity_weights(groups, labels, power=self.diversity_power,
                                       clip=self.diversity_clip)

    def regularizer(self, dataset: Any) -> WithinCellDiversity | None:
        """Level 2: the within-cell diversity regularizer (None when diversity_weight is 0);
        a diversity_margin of 0 is `calibrate_margin(dataset.images, cells)`."""
        if self.diversity_weight == 0:
            return None
        groups, labels = _dataset_groups_labels(dataset)
        cells = cell_index(labels, groups, _num_classes(dataset, labels))
        margin = self.diversity_margin or calibrate_margin(_skin("dataset", dataset).images,
                                                           cells)
        return WithinCellDiversity(cells, self.diversity_weight, margin,
                                   max_timestep=self.diversity_max_timestep)

    def counts_needed(self, real: Any) -> torch.Tensor:
        """Level 3: `synthetic_counts_needed(real, target)`, (num_groups, num_classes)."""
        return synthetic_counts_needed(real, self.target_count or None)

    def mix(self, real: Any, synthetic: Any) -> tuple[Any, torch.Tensor]:
        """Level 3: `mix_real_synthetic` with this config's target, lambda and balancing."""
        return mix_real_synthetic(real, synthetic, target_count=self.target_count or None,
                                  synthetic_weight=self.synthetic_weight,
                                  balance_cells=self.balance_cells)


__all__ = [
    "BALANCES", "CellLabels", "FairSampler", "FairSkinConfig", "MODES", "WithinCellDiversity",
    "balanced_probabilities", "calibrate_margin", "cell_index", "cells_to_generate",
    "class_diversity_weights", "mix_real_synthetic", "split_cells", "synthetic_counts_needed",
    "within_cell_diversity",
]
