"""The identification experiment: poison, train, score, measure (the paper's AUROC table).

`run_identification(IdentifyConfig(...), out)` poisons the built-in colored digits with each
attack, trains a model on the poisoned set (cached per attack), scores every training sample
with MSPC (bi-level), SPC and STRIP, and writes `results.json` ({"config", "rows"}, one row per
attack x method: AUROC, TPR, FPR, seconds, plus the model's clean accuracy and attack success
rate), `results.md` and `identify.png`. Finished attacks are checkpointed, so `resume=True`
picks up after a kill.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from trustfast.backdoor.identify import MSPCConfig, identify_mspc
from trustfast.backdoor.metrics import auroc, split_rates
from trustfast.backdoor.poison import ATTACKS, Attack, LabelConsistent, Trojan, poison
from trustfast.backdoor.scores import scaled_prediction_consistency, strip_scores
from trustfast.backdoor.training import backdoor_report, train_classifier
from trustfast.checkpoint import load_checkpoint, load_json, save_checkpoint, save_json
from trustfast.utils import pyplot

METHODS = ("mspc", "spc", "strip")


@dataclass
class IdentifyConfig:
    """One identification run on the built-in colored digits."""

    attacks: list[str] = field(default_factory=lambda: ["badnets", "blend"])
    ratio: float = 0.1  # poison ratio (share of the training set)
    target: int = 0  # the attack's target label
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    size: int = 16  # image side (the 8x8 digits upsampled)
    epochs: int = 30  # training of the (poisoned) model: SGD, lr 0.05, cosine
    lr: float = 0.05
    strip_overlays: int = 100  # STRIP's N (the paper's default)
    seed: int = 0
    mspc: MSPCConfig = field(default_factory=MSPCConfig)

    def validate(self) -> None:
        bad = [a for a in self.attacks if a not in ATTACKS]
        if bad or not self.attacks:
            raise ValueError(f"attacks must be a non-empty subset of {sorted(ATTACKS)}, "
                             f"got {bad or self.attacks}")
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {METHODS}, got "
                             f"{bad or self.methods}")
        if not 0 < self.ratio < 1:
            raise ValueError(f"ratio must be in (0, 1), got {self.ratio}")
        if not 0 <= self.target < 10:
            raise ValueError(f"target must be a digit class in [0, 10), got {self.target}")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be an int >= 1, got {self.epochs!r}")
        if self.size < 8 or self.size % 2:
            raise ValueError(f"size must be an even int >= 8, got {self.size}")
        self.mspc.validate()


def _model(cfg: IdentifyConfig) -> nn.Module:
    from trustfast.models import SmallCNN

    torch.manual_seed(cfg.seed)
    return SmallCNN(in_channels=3, image_size=cfg.size)


def _clean_model(cfg: IdentifyConfig, out: str, resume: bool, train) -> nn.Module:
    """A model trained on clean data: Trojan's trigger and label-consistent PGD need one."""
    model = _model(cfg)
    cached = load_checkpoint(out, "clean-model") if resume else None
    if cached is not None:
        model.load_state_dict(cached[0])
        return model.eval()
    train_classifier(model, train, cfg.epochs, cfg.lr, seed=cfg.seed, desc="clean model")
    save_checkpoint(out, "clean-model", model.state_dict(), {"epochs": cfg.epochs})
    return model


def make_attack(name: str, cfg: IdentifyConfig, out: str, resume: bool, train) -> Attack:
    """The attack `name` with its defaults; Trojan and label-consistent get a clean model."""
    if name == "trojan":
        clean = _clean_model(cfg, out, resume, train)
        return Trojan(seed=cfg.seed).fit(clean, clean.classifier[1], (3, cfg.size, cfg.size))
    if name == "label_consistent":
        return LabelConsistent(model=_clean_model(cfg, out, resume, train), seed=cfg.seed)
    return ATTACKS[name]()


def _rows_for(cfg, attack_name, model, data, report) -> list[dict]:
    images, _ = data.tensors
    truth = data.poisoned
    rows = []
    for method in cfg.methods:
        start = time.perf_counter()
        if method == "mspc":
            result = identify_mspc(model, images, cfg.mspc)
            scores, flagged = result.scores, result.flagged
        elif method == "spc":
            scores = scaled_prediction_consistency(model, images, cfg.mspc.scales)
            flagged = scores > 0.5  # MSPC(m=1, tau=0) > 0: most scales keep the prediction
        else:
            scores = strip_scores(model, images, cfg.strip_overlays, seed=cfg.seed)
            flagged = None  # STRIP sets its threshold on clean data, which we do not have
        seconds = time.perf_counter() - start
        tpr, fpr = split_rates(flagged, truth) if flagged is not None else (None, None)
        rows.append({"attack": attack_name, "method": method, "AUROC": auroc(scores, truth),
                     "TPR": tpr, "FPR": fpr, "seconds": seconds, **report,
                     "ratio": data.ratio, "n_poisoned": int(truth.sum()),
                     "n": len(truth)})
    return rows


def run_identification(cfg: IdentifyConfig, out: str, resume: bool = False) -> dict:
    """Run (or resume) the experiment; returns {"config": ..., "rows": [...]}."""
    from trustfast.data import colored_digits

    cfg.validate()
    os.makedirs(out, exist_ok=True)
    progress_path = os.path.join(out, "rows.json")
    done = load_json(progress_path) if resume and os.path.exists(progress_path) else {}
    if done and done.get("config") != asdict(cfg):
        raise ValueError(f"--resume: {out} holds a run with another config; use another --out")
    per_attack: dict[str, list[dict]] = done.get("rows", {}) if done else {}
    train, test = colored_digits(seed=cfg.seed, size=cfg.size)
    for name in tqdm(cfg.attacks, desc="attacks", leave=False):
        if name in per_attack:
            continue
        attack = make_attack(name, cfg, out, resume, train)
        ratio = cfg.ratio
        if attack.clean_label:  # only target-class images can be poisoned: at most 80% of them
            n_target = int((train.tensors[1] == cfg.target).sum())
            ratio = min(ratio, 0.8 * n_target / len(train))
        data = poison(train, attack, ratio, cfg.target, seed=cfg.seed)
        model = _model(cfg)
        cached = load_checkpoint(out, f"model-{name}") if resume else None
        if cached is not None:
            model.load_state_dict(cached[0])
        else:
            train_classifier(model, data, cfg.epochs, cfg.lr, seed=cfg.seed, desc=name)
            save_checkpoint(out, f"model-{name}", model.state_dict(), {"attack": name})
        report = backdoor_report(model, test, attack, cfg.target)
        per_attack[name] = _rows_for(cfg, name, model, data, report)
        save_json(progress_path, {"config": asdict(cfg), "rows": per_attack})
    rows = [row for name in cfg.attacks for row in per_attack[name]]
    result = {"config": asdict(cfg), "rows": rows}
    save_json(os.path.join(out, "results.json"), result)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(markdown_table(rows) + "\n")
    _plot(rows, os.path.join(out, "identify.png"))
    return result


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown_table(rows: list[dict]) -> str:
    """attack x method: AUROC, TPR, FPR (threshold-free split), seconds; clean acc. and ASR."""
    lines = ["| attack | clean acc % | ASR % | method | AUROC | TPR | FPR | seconds |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['attack']} | {r['clean_acc']:.1f} | {r['ASR']:.1f} | {r['method']} | "
                     f"{r['AUROC']:.3f} | {_fmt(r['TPR'], '.2f')} | {_fmt(r['FPR'], '.2f')} | "
                     f"{r['seconds']:.1f} |")
    return "\n".join(lines)


def _plot(rows: list[dict], path: str) -> None:
    plt = pyplot()
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by = {(r["attack"], r["method"]): r["AUROC"] for r in rows}
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(attacks), 3.2))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        ax.bar([j + i * width for j in range(len(attacks))],
               [by[(a, method)] for a in attacks], width, label=method)
    ax.set_xticks([j + width * (len(methods) - 1) / 2 for j in range(len(attacks))])
    ax.set_xticklabels(attacks)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("AUROC")
    ax.set_title("poisoned-sample identification")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
