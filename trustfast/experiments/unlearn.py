"""`trustfast unlearn`: Table 1 of "Model Sparsity Can Simplify Machine Unlearning" (Jia et al.,
NeurIPS 2023) on built-in or the user's own data and model.

Train the original model (or load it: `--weights`, or `model=` a trained module from Python),
prune it with OMP at each sparsity, unlearn with each method and measure UA, MIA-Efficacy, RA,
TA, RTE and Disparity Ave against Retrain at the same sparsity. The original, its rewind weights,
every pruned model and every finished row are checkpointed in `--out`, so `--resume` continues
after a kill.

    trustfast unlearn --data imagefolder:DIR --model resnet18 --methods retrain,ft,l1_sparse \
        --sparsity 0,0.9 --device cuda --out runs/u
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from torch import nn
from torch.nn import functional as fn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from trustfast.checkpoint import load_checkpoint, save_checkpoint
from trustfast.config import ConfigError
from trustfast.experiments.artefacts import (
    VisionConfig,
    describe_model,
    model_device,
    vision_setup,
)
from trustfast.experiments.plots import grouped_bars
from trustfast.experiments.registry import Experiment, Flag, Result, register
from trustfast.experiments.runner import RowStore
from trustfast.models.fit import SGDConfig, fit_classifier

SCENARIOS = ("classwise", "random")


@dataclass
class UnlearnExperimentConfig(VisionConfig):
    """One Table-1 run. Defaults: the built-in digits and a SmallCNN (a minute on a CPU);
    `weights` are the trained original's (then it is not trained here)."""

    scenario: str = "classwise"  # "classwise" (forget one class) or "random" (a fraction)
    forget_class: int = 3  # the class forgotten in the class-wise scenario
    fraction: float = 0.1  # the share of training data forgotten in the random scenario
    methods: list[str] = field(default_factory=lambda: ["retrain", "ft", "ga", "l1_sparse"])
    sparsities: list[float] = field(default_factory=lambda: [0.0, 0.9])
    train: SGDConfig = field(default_factory=SGDConfig)  # training of the original model
    prune_retrain_epochs: int = 3  # OMP: retraining under the mask after rewinding
    rewind_epoch: int = 1  # OMP rewinds to this epoch of the original's training (trained here)
    # per-method hyperparameters over the defaults of trustfast.unlearn.CONFIGS, e.g.
    # {"ga": {"lr": 1e-4}}; the seed of every method is the run's seed
    overrides: dict[str, dict] = field(default_factory=dict)

    def check(self) -> None:
        from trustfast.unlearn import METHODS

        super().check()
        self.choice("scenario", SCENARIOS)
        self.at_least("forget_class", 0)
        self.within("fraction", 0, 1, low_open=True, high_open=True)
        self.subset("methods", METHODS)
        self.require(bool(self.sparsities) and all(0 <= s < 1 for s in self.sparsities),
                     "sparsities", "a non-empty list of values in [0, 1)")
        self.require(len(set(self.sparsities)) == len(self.sparsities), "sparsities",
                     "a list without repeats")
        self.at_least("prune_retrain_epochs", 1)
        self.require(0 <= self.rewind_epoch < self.train.epochs, "rewind_epoch",
                     f"in [0, train.epochs={self.train.epochs})")
        for method in self.overrides:
            self.require(method in METHODS, "overrides", f"keyed by methods of {METHODS}")
        for method in self.methods + ["retrain"]:
            self.method_config(method)

    def method_config(self, method: str):
        """The method's config: its defaults, this run's seed, then `overrides[method]`."""
        from trustfast.config import build_config
        from trustfast.unlearn import CONFIGS

        values = {"seed": self.seed, **self.overrides.get(method, {})}
        return build_config(CONFIGS[method], values, prefix=f"overrides.{method}")


def _original(cfg: UnlearnExperimentConfig, out: str, resume: bool, model: nn.Module,
              trained: bool, train: Dataset) -> tuple[nn.Module, dict | None]:
    """The trained original and its rewind weights (None when it came trained), cached."""
    if trained:
        return model, None
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

    fit_classifier(model, train, cfg.train, seed=cfg.seed, on_epoch=keep_rewind,
                   desc="original")
    save_checkpoint(out, "rewind", rewind, {"epoch": cfg.rewind_epoch})
    save_checkpoint(out, "original", model.state_dict(), {"epochs": cfg.train.epochs})
    return model, rewind


def _pruned(cfg: UnlearnExperimentConfig, out: str, resume: bool, original: nn.Module,
            rewind: dict | None, sparsity: float, train: Dataset):
    """OMP at `sparsity` (cached): masks from the original, rewind (when the original was
    trained here), retrain under the mask."""
    from trustfast.unlearn import omp

    if sparsity == 0:
        return copy.deepcopy(original), None
    tag = f"pruned-{sparsity:g}"
    cached = load_checkpoint(out, tag) if resume else None
    model = copy.deepcopy(original)
    device = model_device(model)
    if cached is not None:
        tensors = cached[0]
        masks = {k[len("mask."):]: v.bool().to(device) for k, v in tensors.items()
                 if k.startswith("mask.")}
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items()
                               if k.startswith("model.")})
        return model, masks
    masks = omp(model, sparsity, lambda m, k: fit_classifier(
        m, train, cfg.train, seed=cfg.seed, epochs=cfg.prune_retrain_epochs, masks=k,
        desc=f"OMP {sparsity:g}"), rewind_state=rewind)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"mask.{k}": v for k, v in masks.items()})
    save_checkpoint(out, tag, tensors, {"sparsity": sparsity})
    return model, masks


def _warm_up(model: nn.Module, data: Dataset) -> None:
    """One untimed forward/backward, so the first method's RTE excludes one-time costs (the
    first step on a fresh process took 1.9 s against 0.07 s per later epoch, measured)."""
    x, y = next(iter(DataLoader(data, batch_size=64)))
    probe = copy.deepcopy(model)
    device = model_device(probe)
    fn.cross_entropy(probe(x.to(device)), y.to(device)).backward()


def run(cfg: UnlearnExperimentConfig, out: str, resume: bool = False, *,
        model: nn.Module | Callable[[], nn.Module] | None = None,
        train: Dataset | None = None, test: Dataset | None = None) -> Result:
    """The experiment. From Python, `train=` / `test=` replace `data`, and `model=` replaces
    `model` / `weights`: an nn.Module is the trained original, a callable builds an untrained
    one (trained here)."""
    from trustfast.unlearn import classwise, disparity_average, evaluate, random_fraction, unlearn

    _, data, net, trained = vision_setup(cfg, model=model, train=train, test=test)
    if cfg.scenario == "classwise" and cfg.forget_class >= data.info["num_classes"]:
        raise ConfigError("forget_class", f"must be a class of the data, in [0, "
                                          f"{data.info['num_classes']}), got {cfg.forget_class}")
    splits = (classwise(data.train, data.test, cfg.forget_class) if cfg.scenario == "classwise"
              else random_fraction(data.train, data.test, cfg.fraction, cfg.seed))
    original, rewind = _original(cfg, out, resume, net, trained, data.train)
    methods = ["retrain"] + [m for m in cfg.methods if m != "retrain"]
    configs = {m: cfg.method_config(m) for m in methods}
    rows = RowStore(out, resume)
    _warm_up(original, data.train)
    for sparsity in cfg.sparsities:
        base, masks = _pruned(cfg, out, resume, original, rewind, sparsity, data.train)
        for method in tqdm(methods, desc=f"unlearn (sparsity {sparsity:g})", leave=False):
            key = f"{method}@{sparsity:g}"
            if key in rows:
                continue
            unlearned = copy.deepcopy(base)
            start = time.perf_counter()
            unlearn(unlearned, splits, method, mask=masks, config=configs[method])
            seconds = time.perf_counter() - start
            rows.put(key, {"method": method, "sparsity": sparsity,
                           **evaluate(unlearned, splits, seconds, seed=cfg.seed)})
    ordered = []
    for sparsity in cfg.sparsities:
        ref = rows[f"retrain@{sparsity:g}"]
        for method in methods:
            row = dict(rows[f"{method}@{sparsity:g}"])
            row["disparity"] = disparity_average(row, ref)
            ordered.append(row)
    return Result({}, ordered, {
        "resolved": {"method_configs": {m: asdict(c) for m, c in configs.items()}},
        "data": {**data.info, **splits.describe()},
        "model": {**describe_model(original), "trained_here": not trained}})


def plot(result: Result) -> dict:
    def label(s: float) -> str:
        return "dense" if s == 0 else f"{s:.0%} sparse"

    return {"unlearn.png": grouped_bars(result.rows, "method", "sparsity",
                                        [("UA", "UA (%)"), ("disparity", "Disparity Ave")],
                                        series_label=label)}


def _sparsities(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError("--sparsity", f"must be comma-separated numbers, got {text!r}") from None


EXPERIMENT = register(Experiment(
    name="unlearn", config_cls=UnlearnExperimentConfig, run=run, plot=plot,
    help="train, prune (OMP), unlearn and measure: Table 1 of 'Model Sparsity Can Simplify "
         "Machine Unlearning' (UA, MIA, RA, TA, RTE, disparity)",
    columns=("method", "sparsity", "UA", "MIA", "RA", "TA", "RTE", "disparity"),
    flags=(
        Flag("--data", "data", "digits | imagefolder:DIR | cifar10:DIR | npz:FILE"),
        Flag("--model", "model", "small_cnn | resnet18 | ... | package.module:factory"),
        Flag("--weights", "weights", "trained original model weights (.safetensors)"),
        Flag("--scenario", "scenario", "classwise or random"),
        Flag("--forget-class", "forget_class", "class forgotten (classwise)"),
        Flag("--fraction", "fraction", "share of training data forgotten (random)"),
        Flag("--methods", "methods", "comma-separated: retrain,ft,ga,rl,ff,iu,l1_sparse,salun"),
        Flag("--sparsity", "sparsities", "comma-separated OMP sparsities", parse=_sparsities),
        Flag("--train-epochs", "train.epochs", "epochs of the original model's training"),
    ),
))
