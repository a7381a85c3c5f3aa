"""`trustfast backdoor-identify` (also `trustfast backdoor identify`): poison, train, and find
the poisoned training samples, as in "Towards Reliable Backdoor Data Identification ... Scaled
Prediction Consistency" (Pal et al., ICLR 2024).

Each attack poisons the training set (built-in colored digits, or the user's `--data`), a model
(`--model`) is trained on it (cached per attack), and every training sample is scored with the
bi-level MSPC, SPC and STRIP: AUROC, and TPR / FPR of the threshold-free split, the model's
clean accuracy and attack success rate. `mspc` runs `identify_mspc` with the `mspc` config (by
default as the paper's code, BackdoorMSPC's `bilevel_full.py`, runs it); `mspc_contrastive`
with the `mspc_contrastive` config: trustfast's own variant, the contrastive inner objective
and tau = 0, with the same optimizer and schedule.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from trustfast.backdoor.identify import MSPCConfig
from trustfast.checkpoint import load_checkpoint, save_checkpoint
from trustfast.config import ConfigError
from trustfast.experiments.artefacts import describe_model, vision_data, vision_model
from trustfast.experiments.plots import grouped_bars
from trustfast.experiments.registry import Experiment, ExperimentConfig, Flag, Result, register
from trustfast.experiments.runner import RowStore
from trustfast.utils import resolve_device

METHODS = ("mspc", "mspc_contrastive", "spc", "strip")
DEFAULT_METHODS = ("mspc", "spc", "strip")
ATTACK_NAMES = ("badnets", "blend", "wanet", "trojan", "label_consistent", "adaptive_blend")


@dataclass
class IdentifyConfig(ExperimentConfig):
    """One identification run (defaults: the built-in colored digits at 16x16)."""

    data: str = "colored_digits"  # colored_digits | imagefolder:DIR | cifar10:DIR | npz:FILE
    size: int = 16  # image side of the built-in colored digits (the 8x8 digits upsampled)
    image_size: int | None = None  # resize image-folder images to this side
    test_fraction: float = 0.2
    model: str = "small_cnn"  # trained from scratch on each poisoned set
    attacks: list[str] = field(default_factory=lambda: ["badnets", "blend"])
    ratio: float = 0.1  # poison ratio (share of the training set)
    target: int = 0  # the attack's target label
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    epochs: int = 30  # training of the (poisoned) model: SGD, momentum 0.9, cosine
    lr: float = 0.05
    batch_size: int = 64
    strip_overlays: int = 100  # STRIP's N (the paper's default)
    trojan_layer: str | None = None  # Trojan's layer (module name); None: the penultimate Linear
    mspc: MSPCConfig = field(default_factory=MSPCConfig)  # method "mspc": the reference's
    # method "mspc_contrastive": ours (the objective, tau 0), the reference's optimizer, schedule
    mspc_contrastive: MSPCConfig = field(
        default_factory=lambda: MSPCConfig(objective="contrastive", tau=0.0))

    def check(self) -> None:
        super().check()
        self.subset("attacks", ATTACK_NAMES)
        self.subset("methods", METHODS)
        self.within("ratio", 0, 1, low_open=True, high_open=True)
        self.at_least("target", 0)
        for key in ("epochs", "batch_size", "strip_overlays"):
            self.at_least(key, 1)
        self.at_least("lr", 0, strict=True)
        self.require(self.size >= 8 and self.size % 2 == 0, "size", "an even int >= 8")
        if self.image_size is not None:
            self.at_least("image_size", 8)
        self.within("test_fraction", 0, 1, low_open=True, high_open=True)


def _train(cfg: IdentifyConfig, model: nn.Module, data, desc: str) -> None:
    from trustfast.backdoor import train_classifier

    train_classifier(model, data, cfg.epochs, cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
                     desc=desc)


def _fresh_model(cfg: IdentifyConfig, info: dict, device) -> nn.Module:
    torch.manual_seed(cfg.seed)
    model, _ = vision_model(cfg.model, info)
    return model.to(device)


def trojan_layer(model: nn.Module, name: str | None) -> nn.Module:
    """The layer whose strongest neuron Trojan's patch excites: `name`, else the penultimate
    nn.Linear (the last one when there is only one)."""
    modules = dict(model.named_modules())
    if name is not None:
        if name not in modules:
            raise ConfigError("trojan_layer", f"must name a module of the model, got {name!r}; "
                                              f"modules: {[n for n in modules if n][:12]} ...")
        return modules[name]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError("trojan_layer", "must be given: the model has no nn.Linear layer")
    return linears[-2] if len(linears) >= 2 else linears[-1]


def _clean_model(cfg, out, resume, train, info, device) -> nn.Module:
    """A model trained on clean data: Trojan's trigger and label-consistent PGD need one."""
    model = _fresh_model(cfg, info, device)
    cached = load_checkpoint(out, "clean-model") if resume else None
    if cached is not None:
        model.load_state_dict(cached[0])
        return model.eval()
    _train(cfg, model, train, "clean model")
    save_checkpoint(out, "clean-model", model.state_dict(), {"epochs": cfg.epochs})
    return model


def make_trigger(name: str, cfg: IdentifyConfig, out: str, resume: bool, train, info, device):
    """The attack `name` with its defaults; Trojan and label-consistent get a clean model."""
    from trustfast.backdoor import ATTACKS, LabelConsistent, Trojan

    if name == "trojan":
        clean = _clean_model(cfg, out, resume, train, info, device)
        return Trojan(seed=cfg.seed).fit(clean, trojan_layer(clean, cfg.trojan_layer),
                                         tuple(info["image_shape"]))
    if name == "label_consistent":
        return LabelConsistent(model=_clean_model(cfg, out, resume, train, info, device),
                               seed=cfg.seed)
    return ATTACKS[name]()


def _rows_for(cfg: IdentifyConfig, attack: str, model: nn.Module, data, report: dict):
    from trustfast.backdoor import (
        CollapsedModelWarning,
        auroc,
        identify_mspc,
        scaled_prediction_consistency,
        split_rates,
        strip_scores,
    )

    images, _ = data.tensors
    truth = data.poisoned
    rows = []
    for method in cfg.methods:
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CollapsedModelWarning)
            if method in ("mspc", "mspc_contrastive"):
                result = identify_mspc(model, images, getattr(cfg, method))
                scores, flagged = result.scores, result.flagged
            elif method == "spc":
                scores = scaled_prediction_consistency(model, images, cfg.mspc.scales)
                flagged = scores > 0.5  # MSPC(m=1, tau=0) > 0: most scales keep the prediction
            else:
                scores = strip_scores(model, images, cfg.strip_overlays, seed=cfg.seed)
                flagged = None  # STRIP sets its threshold on clean data, which we do not have
        seconds = time.perf_counter() - start
        for w in caught:  # shown as raised; a collapsed model is also marked in its rows
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        collapsed = any(issubclass(w.category, CollapsedModelWarning) for w in caught)
        tpr, fpr = split_rates(flagged, truth) if flagged is not None else (None, None)
        rows.append({"attack": attack, "method": method, "AUROC": auroc(scores, truth),
                     "TPR": tpr, "FPR": fpr, "collapsed": collapsed, "seconds": seconds,
                     **report,
                     "ratio": data.ratio, "n_poisoned": int(truth.sum()), "n": len(truth)})
    return rows


def run(cfg: IdentifyConfig, out: str, resume: bool = False, *, train=None,
        test=None) -> Result:
    from trustfast.backdoor import backdoor_report, poison
    from trustfast.unlearn import labels_of

    device = resolve_device(cfg.device)
    data = vision_data(cfg.data, seed=cfg.seed, test_fraction=cfg.test_fraction,
                       image_size=cfg.size if cfg.data == "colored_digits" else cfg.image_size,
                       train=train, test=test)
    if cfg.target >= data.info["num_classes"]:
        raise ConfigError("target", f"must be a class of the data, in [0, "
                                    f"{data.info['num_classes']}), got {cfg.target}")
    labels = labels_of(data.train)
    rows = RowStore(out, resume)
    for name in cfg.attacks:
        if name in rows:
            continue
        trigger = make_trigger(name, cfg, out, resume, data.train, data.info, device)
        ratio = cfg.ratio
        if trigger.clean_label:  # only target-class images can be poisoned: at most 80% of them
            n_target = int((labels == cfg.target).sum())
            ratio = min(ratio, 0.8 * n_target / len(labels))
        poisoned = poison(data.train, trigger, ratio, cfg.target, seed=cfg.seed)
        model = _fresh_model(cfg, data.info, device)
        cached = load_checkpoint(out, f"model-{name}") if resume else None
        if cached is not None:
            model.load_state_dict(cached[0])
            model.eval()
        else:
            _train(cfg, model, poisoned, name)
            save_checkpoint(out, f"model-{name}", model.state_dict(), {"attack": name})
        report = backdoor_report(model, data.test, trigger, cfg.target)
        rows.put(name, _rows_for(cfg, name, model, poisoned, report))
    model_info = describe_model(_fresh_model(cfg, data.info, "cpu"))
    return Result({}, [r for name in cfg.attacks for r in rows[name]],
                  {"data": data.info, "model": model_info})


def plot(result: Result) -> dict:
    return {"identify.png": grouped_bars(result.rows, "attack", "method", [("AUROC", "AUROC")],
                                         "poisoned-sample identification", ylim=(0, 1.05))}


register(Experiment(
    name="backdoor-identify", config_cls=IdentifyConfig, run=run, plot=plot,
    aliases=("backdoor identify",),
    help="poison, train, and find the poisoned samples (MSPC, SPC, STRIP): AUROC, TPR, FPR, "
         "clean accuracy, ASR",
    columns=("attack", "clean_acc", "ASR", "method", "AUROC", "TPR", "FPR", "seconds"),
    flags=(Flag("--data", "data", "colored_digits | imagefolder:DIR | cifar10:DIR | npz:FILE"),
           Flag("--model", "model", "small_cnn | resnet18 | ... | package.module:factory"),
           Flag("--attack", "attacks", "comma-separated: " + ",".join(ATTACK_NAMES)),
           Flag("--ratio", "ratio", "poison ratio"),
           Flag("--target", "target", "target label"),
           Flag("--methods", "methods", "comma-separated: " + ",".join(METHODS)),
           Flag("--epochs", "epochs", "training epochs of the model")),
))
