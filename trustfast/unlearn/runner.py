"""The unlearning experiment of the paper's Table 1: train, prune, unlearn, measure.

`run_experiment(ExperimentConfig(...), out)` trains the original model (cached), prunes it with
OMP at each sparsity (cached), unlearns with each method, and writes `results.json`
({"config", "rows"}), `results.md` (method x dense/sparse: UA, MIA, RA, TA, RTE, Disparity Ave)
and `unlearn.png`. Every finished step is checkpointed atomically, so `resume=True` picks up
after a kill. Users bring their own model and data through `model_fn` / `train` / `test`.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn import functional as fn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from trustfast.checkpoint import load_checkpoint, load_json, save_checkpoint, save_json
from trustfast.optim import MaskedSGD
from trustfast.unlearn.methods import METHODS, unlearn
from trustfast.unlearn.metrics import disparity_average, evaluate
from trustfast.unlearn.pruning import omp
from trustfast.unlearn.splits import Splits, classwise, random_fraction
from trustfast.utils import pyplot

SCENARIOS = ("classwise", "random")


@dataclass
class ExperimentConfig:
    """One Table-1-style run (defaults: the built-in digits scale)."""

    dataset: str = "digits"  # built-in data; other data through run_experiment(train=, test=)
    scenario: str = "classwise"  # "classwise" (forget one class) or "random" (a fraction)
    forget_class: int = 3  # the class forgotten in the class-wise scenario
    fraction: float = 0.1  # the share of training data forgotten in the random scenario
    methods: list[str] = field(default_factory=lambda: ["retrain", "ft", "ga", "l1_sparse"])
    sparsities: list[float] = field(default_factory=lambda: [0.0, 0.9])
    train_epochs: int = 8  # original model training (SGD, lr 0.05, momentum 0.9)
    prune_retrain_epochs: int = 3  # OMP: retraining under the mask after rewinding
    rewind_epoch: int = 1  # OMP rewinds the weights to this early epoch
    seed: int = 0

    def validate(self, builtin_data: bool = True) -> None:
        if builtin_data and self.dataset != "digits":
            raise ValueError(f"dataset {self.dataset!r} is not built in (only 'digits'); pass "
                             "train= and test= datasets to run_experiment instead")
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {SCENARIOS}, got {self.scenario!r}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {METHODS}, got {bad}")
        if any(not 0.0 <= s < 1.0 for s in self.sparsities) or not self.sparsities:
            raise ValueError(f"sparsities must be in [0, 1), got {self.sparsities}")
        if min(self.train_epochs, self.prune_retrain_epochs) < 1:
            raise ValueError("train_epochs and prune_retrain_epochs must be >= 1")
        if not 0 <= self.rewind_epoch < self.train_epochs:
            raise ValueError(f"rewind_epoch must be in [0, train_epochs), got {self.rewind_epoch}")


def _train_epochs(model: nn.Module, data: Dataset, epochs: int, seed: int, masks=None,
                  on_epoch: Callable[[int], None] | None = None, desc: str = "train") -> None:
    opt = MaskedSGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, masks=masks,
                    module=model if masks else None)
    loader = DataLoader(data, batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    for epoch in tqdm(range(epochs), desc=desc, leave=False):
        model.train()
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            fn.cross_entropy(model(x), y).backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(epoch + 1)


def _default_data(cfg: ExperimentConfig):
    from trustfast.data import digits

    return digits(seed=cfg.seed)


def _default_model() -> nn.Module:
    from trustfast.models import SmallCNN

    return SmallCNN()


def _splits(cfg: ExperimentConfig, train: Dataset, test: Dataset) -> Splits:
    if cfg.scenario == "classwise":
        return classwise(train, test, cfg.forget_class)
    return random_fraction(train, test, cfg.fraction, cfg.seed)


def _original(cfg, out, resume, model_fn, train) -> tuple[nn.Module, dict]:
    """The trained original model and its early (rewind) weights, cached in `out`."""
    torch.manual_seed(cfg.seed)
    model = model_fn()
    cached = load_checkpoint(out, "original") if resume else None
    rewind_cached = load_checkpoint(out, "rewind") if resume else None
    if cached is not None and rewind_cached is not None:
        model.load_state_dict(cached[0])
        return model, rewind_cached[0]
    rewind: dict = {}
    if cfg.rewind_epoch == 0:
        rewind.update(copy.deepcopy(model.state_dict()))

    def keep_rewind(epoch: int) -> None:
        if epoch == cfg.rewind_epoch:
            rewind.update(copy.deepcopy(model.state_dict()))

    _train_epochs(model, train, cfg.train_epochs, cfg.seed, on_epoch=keep_rewind,
                  desc="original")
    save_checkpoint(out, "rewind", rewind, {"epoch": cfg.rewind_epoch})
    save_checkpoint(out, "original", model.state_dict(), {"epochs": cfg.train_epochs})
    return model, rewind


def _pruned(cfg, out, resume, original, rewind, sparsity, train):
    """OMP at `sparsity` (cached): masks from the original, rewind, retrain under the mask."""
    if sparsity == 0:
        return copy.deepcopy(original), None
    tag = f"pruned-{sparsity:g}"
    cached = load_checkpoint(out, tag) if resume else None
    model = copy.deepcopy(original)
    if cached is not None:
        tensors = cached[0]
        masks = {k[len("mask."):]: v.bool() for k, v in tensors.items() if k.startswith("mask.")}
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items()
                               if k.startswith("model.")})
        return model, masks
    masks = omp(model, sparsity, lambda m, k: _train_epochs(
        m, train, cfg.prune_retrain_epochs, cfg.seed, masks=k, desc=f"OMP {sparsity:g}"),
        rewind_state=rewind)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"mask.{k}": v for k, v in masks.items()})
    save_checkpoint(out, tag, tensors, {"sparsity": sparsity})
    return model, masks


def _warm_up(model: nn.Module, data: Dataset) -> None:
    """One untimed forward/backward, so the first method's RTE excludes one-time costs (the
    first step on a fresh process took 1.9 s against 0.07 s per later epoch, measured)."""
    x, y = next(iter(DataLoader(data, batch_size=64)))
    probe = copy.deepcopy(model)
    fn.cross_entropy(probe(x), y).backward()


def run_experiment(cfg: ExperimentConfig, out: str, resume: bool = False,
                   model_fn: Callable[[], nn.Module] | None = None,
                   train: Dataset | None = None, test: Dataset | None = None) -> dict:
    """Run (or resume) the experiment; returns {"config": ..., "rows": [...]}."""
    if (train is None) != (test is None):
        raise ValueError("pass both train= and test=, or neither (built-in digits)")
    cfg.validate(builtin_data=train is None)
    if train is None:
        train, test = _default_data(cfg)
    else:
        cfg = copy.deepcopy(cfg)
        cfg.dataset = "custom"
    model_fn = model_fn or _default_model
    os.makedirs(out, exist_ok=True)
    progress_path = os.path.join(out, "rows.json")
    done = load_json(progress_path) if resume and os.path.exists(progress_path) else {}
    if done and done.get("config") != asdict(cfg):
        raise ValueError(f"--resume: {out} holds a run with another config; use another --out")
    rows: dict[str, dict] = done.get("rows", {}) if done else {}
    splits = _splits(cfg, train, test)
    original, rewind = _original(cfg, out, resume, model_fn, train)
    methods = ["retrain"] + [m for m in cfg.methods if m != "retrain"]
    _warm_up(original, train)
    for sparsity in cfg.sparsities:
        base, masks = _pruned(cfg, out, resume, original, rewind, sparsity, train)
        for method in tqdm(methods, desc=f"unlearn (sparsity {sparsity:g})", leave=False):
            key = f"{method}@{sparsity:g}"
            if key in rows:
                continue
            model = copy.deepcopy(base)
            start = time.perf_counter()
            unlearn(model, splits, method, mask=masks)
            seconds = time.perf_counter() - start
            rows[key] = {"method": method, "sparsity": sparsity,
                         **evaluate(model, splits, seconds, seed=cfg.seed)}
            save_json(progress_path, {"config": asdict(cfg), "rows": rows})
    ordered = []
    for sparsity in cfg.sparsities:
        ref = rows[f"retrain@{sparsity:g}"]
        for method in methods:
            row = dict(rows[f"{method}@{sparsity:g}"])
            row["disparity"] = disparity_average(row, ref)
            ordered.append(row)
    result = {"config": {**asdict(cfg), **splits.describe()}, "rows": ordered}
    save_json(os.path.join(out, "results.json"), result)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown_table(ordered, cfg.sparsities) + "\n")
    _plot(ordered, cfg.sparsities, os.path.join(out, "unlearn.png"))
    return result


def markdown_table(rows: list[dict], sparsities: list[float]) -> str:
    """Method x sparsity, as the paper's Table 1: UA, MIA-Efficacy, RA, TA, RTE, Disparity."""
    head = ["method"] + [f"{k} ({'dense' if s == 0 else f'{s:.0%} sparse'})"
                         for k in ("UA", "MIA", "RA", "TA", "RTE s", "Disp.") for s in sparsities]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    by = {(r["method"], r["sparsity"]): r for r in rows}
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = [method]
        for key in ("UA", "MIA", "RA", "TA", "RTE", "disparity"):
            for s in sparsities:
                cells.append(f"{by[(method, s)][key]:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(rows: list[dict], sparsities: list[float], path: str) -> None:
    plt = pyplot()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["method"], r["sparsity"]): r for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    width = 0.8 / len(sparsities)
    for ax, key, label in ((axes[0], "UA", "UA (%)"), (axes[1], "disparity", "Disparity Ave")):
        for i, s in enumerate(sparsities):
            xs = [j + i * width for j in range(len(methods))]
            ax.bar(xs, [by[(m, s)][key] for m in methods], width,
                   label="dense" if s == 0 else f"{s:.0%} sparse")
        ax.set_xticks([j + width * (len(sparsities) - 1) / 2 for j in range(len(methods))])
        ax.set_xticklabels(methods)
        ax.set_ylabel(label)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
