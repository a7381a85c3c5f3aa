"""`trustfast masked-training` and `trustfast masked-update-speed`: the fused masked optimizer.

masked-training trains a classifier dense, prunes a share of its weights by global magnitude,
fine-tunes under `MaskedSGD` (momentum, l1) and checks that every pruned weight stayed exactly
0. masked-update-speed times one fused masked SGD step against torch's foreach equivalent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from trustfast.checkpoint import load_checkpoint, save_checkpoint
from trustfast.experiments.artefacts import VisionConfig, describe_model, vision_setup
from trustfast.experiments.plots import lines
from trustfast.experiments.registry import Experiment, ExperimentConfig, Flag, Result, register
from trustfast.models.fit import SGDConfig, fit_classifier
from trustfast.utils import resolve_device


@dataclass
class MaskedTrainingConfig(VisionConfig):
    """Dense training (skipped when `weights` are given), then pruning and masked training."""

    train: SGDConfig = field(default_factory=SGDConfig)  # both stages; epochs: the dense one
    sparsity: float = 0.8  # share of weights pruned by global magnitude
    pruned_epochs: int = 5
    l1: float = 5e-5  # l1 penalty while training under the mask

    def check(self) -> None:
        super().check()
        self.at_least("pruned_epochs", 1)
        self.within("sparsity", 0, 1, low_open=True, high_open=True)
        self.at_least("l1", 0)


def run_masked_training(cfg: MaskedTrainingConfig, out: str, resume: bool = False, *,
                        model=None, train=None, test=None) -> Result:
    from trustfast.ops import select_backend
    from trustfast.sparsity import global_magnitude_masks, mask_sparsity
    from trustfast.unlearn import accuracy

    device, data, net, trained = vision_setup(cfg, model=model, train=train, test=test)
    backend = select_backend("masked_sgd_step", device)
    stages = [("pruned", cfg.sparsity, cfg.pruned_epochs)]
    if not trained:
        stages.insert(0, ("dense", 0.0, cfg.train.epochs))
    rows, curves = [], {}
    for name, sparsity, epochs in stages:
        stage = "dense" if sparsity == 0 else f"pruned {sparsity:.0%}"
        done = load_checkpoint(out, f"masked_training-{name}") if resume else None
        if done is not None:
            net.load_state_dict(done[0])
            rows.append(done[1]["row"])
            curves[stage] = done[1]["losses"]
            continue
        masks = global_magnitude_masks(net, sparsity) if sparsity > 0 else None
        start = time.perf_counter()
        losses = fit_classifier(net, data.train, cfg.train, epochs=epochs, seed=cfg.seed,
                                l1=cfg.l1 if masks else 0.0, masks=masks, desc=stage)
        seconds = time.perf_counter() - start
        row = {"stage": stage, "backend": backend,
               "sparsity_%": 100.0 * (mask_sparsity(masks) if masks else 0.0),
               "test_acc_%": accuracy(net, data.test), "epochs": epochs,
               "final_train_loss": losses[-1], "seconds": seconds}
        if masks:
            weights = dict(net.named_parameters())
            pruned = sum(int((~m).sum()) for m in masks.values())
            still_zero = sum(int((weights[k][~m] == 0).sum()) for k, m in masks.items())
            row["pruned_weights_exactly_zero_%"] = 100.0 * still_zero / max(pruned, 1)
        rows.append(row)
        curves[stage] = losses
        save_checkpoint(out, f"masked_training-{name}", net.state_dict(),
                        {"row": row, "losses": losses})
    return Result({}, rows, {"data": data.info, "model": describe_model(net),
                             "history": curves})


def plot_masked_training(result: Result) -> dict:
    curves, offset = {}, 0
    for stage, losses in result.provenance.get("history", {}).items():
        curves[stage] = (range(offset + 1, offset + len(losses) + 1), losses)
        offset += len(losses)
    return {"masked_training_loss.png": lines(curves, "epoch", "train cross-entropy",
                                              "dense training, then pruned under MaskedSGD")}


register(Experiment(
    name="masked-training", config_cls=MaskedTrainingConfig, run=run_masked_training,
    plot=plot_masked_training,
    help="train dense, prune by global magnitude, fine-tune under MaskedSGD; pruned weights "
         "stay exactly 0",
    flags=(Flag("--data", "data", "digits | imagefolder:DIR | cifar10:DIR | npz:FILE"),
           Flag("--model", "model", "small_cnn | resnet18 | ... | package.module:factory"),
           Flag("--weights", "weights", "trained weights (.safetensors): skip the dense stage"),
           Flag("--sparsity", "sparsity", "share of weights pruned")),
))


@dataclass
class MaskedUpdateSpeedConfig(ExperimentConfig):
    params: int = 1_000_000  # parameters updated per step (16 tensors)
    repeats: int = 10  # timed steps per variant (the median is reported)

    def check(self) -> None:
        super().check()
        self.at_least("params", 16)
        self.at_least("repeats", 1)


def run_masked_update_speed(cfg: MaskedUpdateSpeedConfig, out: str,
                            resume: bool = False) -> Result:
    from trustfast._bench import masked_update as mu
    from trustfast._bench.timing import median_time
    from trustfast.ops import select_backend

    device = resolve_device(cfg.device)
    pb = mu.make_problem(cfg.params, device, seed=cfg.seed)
    variants = mu.sgd_variants(pb, backend=None)
    fused = median_time(variants["trustfast fused"], device, repeats=cfg.repeats)
    peer = median_time(variants["torch foreach"], device, repeats=cfg.repeats)
    stage = f"SGD step, {cfg.params / 1e6:g}M params, 50% mask"
    return Result({}, [{"stage": stage, "backend": select_backend("masked_sgd_step", device),
                        "fused_ms": fused * 1e3, "torch_foreach_ms": peer * 1e3,
                        "speedup_x": peer / fused}])


register(Experiment(
    name="masked-update-speed", config_cls=MaskedUpdateSpeedConfig,
    run=run_masked_update_speed,
    help="time one fused masked SGD step against torch's foreach equivalent",
    flags=(Flag("--params", "params", "parameters per step"),),
))
