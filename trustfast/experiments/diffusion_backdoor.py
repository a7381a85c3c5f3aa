"""`trustfast diffusion-backdoor`: BadNets-like poisoning of a conditional diffusion model's
training data, the audit of its generations and the model as a classifier ("From Trojan Horses
to Castle Walls", Pal et al., NeurIPS 2024; reference code OPTML-Group/BiBadDiff).

For every trigger and poison ratio p (p = 0: the clean model, trained once):
  1. the training set poisoned by the reference's protocol (`poison_for_diffusion`: int(N p)
     non-target images stamped and relabelled to the target);
  2. a class-conditional UNet trained on it (`train_diffusion`, label = class, CFG dropout);
  3. `samples_per_class` generations per class (DDIM); the target class's are audited: G1-G4
     (a clean classifier for the match, the trigger detector for the trigger), misalignment,
     trigger ratio against the poison ratio p and the target-class share p / (1/K + p), the
     amplification factor; the Fréchet distance of all generations to the held-out images in the
     features of a CNN trained here on the clean data ("FD_cnn");
  4. the model as a classifier (`DiffusionClassifier`) on held-out images: clean accuracy and the
     attack success rate on triggered non-target images, plain and trimmed (q = `dc_trim`);
  5. defences: a classifier trained on the generations (labels = their conditions) against one
     trained on the poisoned data, clean accuracy and ASR; backdoor identification (SPC, STRIP,
     MSPC from `trustfast.backdoor`) on the training data against the true poisoned set and on
     the generations against the detector's trigger flags, AUROC both ways.
Rows: one per (trigger, ratio). Plots: trigger ratio against poison ratio with both baselines,
and a grid of generated target-class images per group G1-G4.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, replace

import torch
from torch.utils.data import TensorDataset

from trustfast.config import ConfigError
from trustfast.diffusion.train import DiffusionTrainConfig
from trustfast.experiments.registry import Experiment, ExperimentConfig, Flag, Result, register
from trustfast.models.fit import SGDConfig
from trustfast.utils import pyplot, resolve_device

TRIGGERS = ("badnets", "blend")
IDENTIFY = ("spc", "strip", "mspc")
DETECTORS = ("template", "learned")
GROUPS = ("G1", "G2", "G3", "G4")


# Sized for two CPU cores at 16 px (about 0.2 s a step on one thread): 1500 steps of 32 images
# per model, v-prediction and lr 2e-3 (the tiny UNet's, see DiffusionTrainConfig).
def _train_defaults() -> DiffusionTrainConfig:
    return DiffusionTrainConfig(max_steps=1500, batch_size=32, lr=2e-3, ema_decay=0.995,
                                prediction_type="v_prediction", checkpoint_every=500)


def _classifier_defaults() -> SGDConfig:
    return SGDConfig(epochs=20, lr=0.02, batch_size=64)


@dataclass
class DiffusionBackdoorConfig(ExperimentConfig):
    """Poisoning, diffusion training, the generation audit, the diffusion classifier and the
    defences; the defaults run in about half an hour on two CPU cores (5 models)."""

    data: str = "digits"  # digits | colored_digits | imagefolder:DIR | cifar10:DIR | npz:FILE
    image_size: int = 16  # side in pixels (the built-in digits upsampled, user images resized)
    test_fraction: float = 0.2  # held-out share when the data has no test split of its own
    triggers: list[str] = field(default_factory=lambda: list(TRIGGERS))
    ratios: list[float] = field(default_factory=lambda: [0.0, 0.05, 0.1])
    target: int = 0  # the target class of the poisoning
    patch_size: int = 3  # BadNets: side of the checkerboard patch (bottom-right corner)
    blend_alpha: float = 0.2  # Blend: x' = (1 - alpha) x + alpha P, P seeded noise
    unet: str = "tiny"  # "tiny" | "small" (trustfast presets) or a local UNet2DModel folder
    train: DiffusionTrainConfig = field(default_factory=_train_defaults)
    samples_per_class: int = 100  # generations per class (the audit uses the target's)
    sample_steps: int = 25  # DDIM steps
    guidance_scale: float = 1.0  # classifier-free guidance (1 = conditional only)
    detector: str = "template"  # "template" (the known trigger) | "learned" (a trained CNN)
    classifier_model: str = "small_cnn"  # judge, downstream and identification classifiers
    classifier: SGDConfig = field(default_factory=_classifier_defaults)
    feature_dim: int = 16  # the FD extractor's feature size (bias of order d / n)
    dc_test_size: int = 100  # held-out images (clean and triggered) the diffusion classifier sees
    dc_draws: int = 16  # (timestep, noise) draws per image, shared by the classes
    dc_weighting: str = "uniform"  # "uniform" (Li et al.) | "edm" (the reference's pred.py)
    dc_trim: float = 0.9  # the robust variant: the share of per-pixel errors kept
    dc_adaptive: str | None = None  # None (exhaustive) | "auto" (successive elimination)
    identify: list[str] = field(default_factory=lambda: ["spc", "strip"])

    def check(self) -> None:
        super().check()
        self.subset("triggers", TRIGGERS)
        self.require(bool(self.triggers), "triggers", "at least one trigger")
        self.require(isinstance(self.ratios, list) and bool(self.ratios), "ratios",
                     "a non-empty list of poison ratios in [0, 1)")
        for i, r in enumerate(self.ratios):
            self.require(isinstance(r, (int, float)) and not isinstance(r, bool)
                         and 0 <= r < 1, "ratios", f"values in [0, 1), got {r!r} at {i}")
        self.require(len(set(self.ratios)) == len(self.ratios), "ratios", "distinct values")
        self.at_least("target", 0)
        self.at_least("image_size", 8)
        self.within("test_fraction", 0, 1, low_open=True, high_open=True)
        self.at_least("patch_size", 1)
        self.require(self.patch_size < self.image_size, "patch_size",
                     f"smaller than image_size ({self.image_size})")
        self.within("blend_alpha", 0, 1, low_open=True)
        for key in ("samples_per_class", "sample_steps", "feature_dim", "dc_test_size",
                    "dc_draws"):
            self.at_least(key, 1)
        self.require(self.samples_per_class >= 2, "samples_per_class", "at least 2")
        self.at_least("guidance_scale", 0)
        self.choice("detector", DETECTORS)
        self.choice("dc_weighting", ("uniform", "edm"))
        self.within("dc_trim", 0, 1, low_open=True)
        self.require(self.dc_adaptive in (None, "auto"), "dc_adaptive", "None or 'auto'")
        self.subset("identify", IDENTIFY)
        self.require(self.unet in ("tiny", "small") or os.path.isdir(self.unet), "unet",
                     "'tiny', 'small' or an existing local diffusers UNet2DModel folder")
        self.require(self.train.seed in (0, self.seed), "train.seed",
                     f"0 or the run's seed ({self.seed}), which seeds it: set --seed")


def make_trigger(name: str, cfg: DiffusionBackdoorConfig):
    from trustfast.backdoor import BadNets, Blend

    if name == "badnets":
        return BadNets(size=cfg.patch_size)
    return Blend(alpha=cfg.blend_alpha)


def _model_key(trigger: str, ratio: float) -> str:
    return "clean" if ratio == 0 else f"{trigger}_p{ratio:g}"


def _unet(cfg: DiffusionBackdoorConfig, num_classes: int, channels: int, device):
    from trustfast.experiments.artefacts import experiment_unet

    return experiment_unet(cfg.unet, num_classes, image_size=cfg.image_size, channels=channels,
                           seed=cfg.seed, device=device)


def _classifier(cfg, out, resume, name: str, images, labels, num_classes, device):
    """A classifier trained on (images, labels), cached in out/clf_<name>.safetensors."""
    from trustfast.checkpoint import load_checkpoint, save_checkpoint
    from trustfast.models import build_model
    from trustfast.models.fit import fit_classifier

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.classifier_model, in_channels=images.shape[1],
                            num_classes=num_classes, image_size=images.shape[-1]).to(device)
    cached = load_checkpoint(out, f"clf_{name}") if resume else None
    if cached is not None:
        model.load_state_dict(cached[0])
        return model.eval()
    fit_classifier(model, TensorDataset(images, labels), cfg.classifier, seed=cfg.seed,
                   schedule="cosine", desc=f"classifier: {name}")
    save_checkpoint(out, f"clf_{name}", {k: v.detach().cpu().contiguous()
                                         for k, v in model.state_dict().items()},
                    {"name": name})
    return model.eval()


def _accuracy(model, images, labels, device) -> float:
    from trustfast.backdoor import accuracy

    return accuracy(model, images.to(device), labels.to(device)) / 100.0


def _detector(cfg: DiffusionBackdoorConfig, trigger, train_images):
    """The trigger detector of `cfg.detector`: the exact template, or a CNN trained on the
    clean training images (half of them stamped), which is seeded and cheap to retrain."""
    from trustfast.diffusion.backdoor import TemplateDetector, train_trigger_detector

    if cfg.detector == "template":
        return TemplateDetector(trigger)
    return train_trigger_detector(train_images, trigger, model=cfg.classifier_model,
                                  seed=cfg.seed)


def _identification(cfg, model, images, truth, where: str) -> dict:
    """AUROC of each identification method's scores against `truth` on `images` (None when
    truth holds one class only)."""
    from trustfast.backdoor import (
        CollapsedModelWarning,
        MSPCConfig,
        auroc,
        identify_mspc,
        scaled_prediction_consistency,
        strip_scores,
    )

    out = {}
    for method in cfg.identify:
        key = f"AUROC_{method}_{where}"
        if truth.all() or not truth.any():
            out[key] = None
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CollapsedModelWarning)
            if method == "spc":
                scores = scaled_prediction_consistency(model, images)
            elif method == "strip":
                scores = strip_scores(model, images, seed=cfg.seed)
            else:
                scores = identify_mspc(model, images, MSPCConfig(seed=cfg.seed)).scores
        out[key] = auroc(scores, truth)
    return out


def run(cfg: DiffusionBackdoorConfig, out: str, resume: bool = False, *, train=None,
        test=None) -> Result:
    from trustfast.backdoor import triggered_test_set
    from trustfast.data import dataset_tensors
    from trustfast.diffusion.backdoor import (
        DiffusionClassifier,
        audit_generations,
        poison_for_diffusion,
    )
    from trustfast.diffusion.sampling import generate
    from trustfast.diffusion.train import noise_scheduler, train_diffusion
    from trustfast.experiments.artefacts import vision_data
    from trustfast.experiments.runner import RowStore, cached_tensor
    from trustfast.metrics import extract_features, train_feature_extractor
    from trustfast.metrics.frechet import frechet_distance_from_features

    device = resolve_device(cfg.device)
    data = vision_data(cfg.data, seed=cfg.seed, test_fraction=cfg.test_fraction,
                       image_size=cfg.image_size, train=train, test=test)
    images, labels = dataset_tensors(data.train, "train")
    test_x, test_y = dataset_tensors(data.test, "test")
    k = int(labels.max()) + 1
    if cfg.target >= k:
        raise ConfigError("target", f"must be a class of the data, in [0, {k}), got "
                                    f"{cfg.target}")
    if tuple(images.shape[-2:]) != (cfg.image_size, cfg.image_size):
        raise ConfigError("image_size", f"is {cfg.image_size}, but the data's images are "
                                        f"{tuple(images.shape[-2:])}")
    channels = images.shape[1]
    if cfg.unet not in ("tiny", "small"):
        _unet(cfg, k, channels, "cpu")  # a user's folder that does not fit fails before training
    store = RowStore(out, resume)
    train_cfg = replace(cfg.train, seed=cfg.seed)
    judge = _classifier(cfg, out, resume, "clean", images, labels, k, device)
    rgb = (lambda x: x.expand(-1, 3, -1, -1)) if channels == 1 else (lambda x: x)
    extractor = train_feature_extractor(rgb(images), labels, seed=cfg.seed,
                                        feature_dim=cfg.feature_dim).to(device)
    real_features = extract_features(extractor, rgb(test_x).to(device))
    conditions = torch.arange(k).repeat_interleave(cfg.samples_per_class)
    dc_x, dc_y = test_x[:cfg.dc_test_size], test_y[:cfg.dc_test_size]
    models, generations, histories, dc_cache = {}, {}, {}, {}
    rows, grids = [], {}

    def diffusion_model(key: str, poisoned):
        if key not in models:
            model = _unet(cfg, k, channels, device)
            result = train_diffusion(model, TensorDataset(poisoned.images, poisoned.labels),
                                     train_cfg, out=os.path.join(out, f"diffusion_{key}"),
                                     resume=resume, progress=True)
            models[key] = result.model.eval()
            histories[key] = result.losses
            generations[key] = cached_tensor(
                out, f"samples_{key}", resume,
                lambda: generate(models[key], conditions, steps=cfg.sample_steps,
                                 guidance_scale=cfg.guidance_scale, seed=cfg.seed + 1,
                                 train_config=train_cfg).cpu())
        return models[key], generations[key]

    def diffusion_classifier(key: str, model, inputs, name: str) -> dict:
        """{None: errors, trim: errors} of the diffusion classifier on `inputs` (cached)."""
        cache = f"{key}/{name}"
        if cache not in dc_cache:
            dc = DiffusionClassifier(model, noise_scheduler(train_cfg), k,
                                     draws=cfg.dc_draws, weighting=cfg.dc_weighting,
                                     seed=cfg.seed, adaptive=cfg.dc_adaptive)
            if cfg.dc_adaptive is None:
                preds = {q: e.argmin(1) for q, e in
                         dc.errors_by_trim(inputs, [None, cfg.dc_trim], progress=True).items()}
            else:
                preds = {None: dc.predict(inputs, progress=True)}
                dc.trim = cfg.dc_trim
                preds[cfg.dc_trim] = dc.predict(inputs, progress=True)
            dc_cache[cache] = preds
        return dc_cache[cache]

    for trigger_name in cfg.triggers:
        trigger = make_trigger(trigger_name, cfg)
        detector = _detector(cfg, trigger, images)
        trig_x, trig_y = triggered_test_set(data.test, trigger, cfg.target)
        trig_x, trig_y = trig_x[:cfg.dc_test_size], trig_y[:cfg.dc_test_size]
        for ratio in cfg.ratios:
            row_key = f"{trigger_name}/{ratio:g}"
            key = _model_key(trigger_name, ratio)
            poisoned = poison_for_diffusion(data.train, trigger, cfg.target, ratio, cfg.seed)
            model, gen = diffusion_model(key, poisoned)
            target_gen = gen[conditions == cfg.target]
            audit = audit_generations(target_gen, cfg.target, judge, detector,
                                      poison_ratio=ratio, num_classes=k)
            grids[row_key] = (target_gen, audit.groups)
            if row_key in store:
                rows.append(store[row_key])
                continue
            row = {"trigger": trigger_name, "poison_ratio": ratio,
                   "n_poisoned": int(poisoned.poisoned.sum()), "n_train": len(poisoned),
                   "model": key}
            fake = extract_features(extractor, rgb(gen).to(device))
            row["FD_cnn"] = frechet_distance_from_features(real_features, fake)
            row.update(audit.row())
            # the measured share among the training images labelled target (the formula's
            # value for a balanced set)
            n_target = int((poisoned.labels == cfg.target).sum())
            row["target_share_measured"] = int(poisoned.poisoned.sum()) / max(n_target, 1)
            clean_pred = diffusion_classifier(key, model, dc_x, "clean")
            trig_pred = diffusion_classifier(key, model, trig_x, f"triggered_{trigger_name}")
            for q, suffix in ((None, ""), (cfg.dc_trim, "_trim")):
                row[f"dc_acc{suffix}"] = float((clean_pred[q] == dc_y).float().mean())
                row[f"dc_ASR{suffix}"] = float((trig_pred[q] == trig_y).float().mean())
            # defences: the classifier trained on the poisoned data against the one trained on
            # the generations (labels = the conditions they were generated for)
            on_data = judge if ratio == 0 else _classifier(
                cfg, out, resume, f"data_{key}", poisoned.images, poisoned.labels, k, device)
            on_gen = _classifier(cfg, out, resume, f"generated_{key}", gen, conditions, k,
                                 device)
            for name, clf in (("poisoned_data", on_data), ("generated", on_gen)):
                row[f"clf_{name}_acc"] = _accuracy(clf, test_x, test_y, device)
                row[f"clf_{name}_ASR"] = _accuracy(clf, trig_x, trig_y, device)
            row.update(_identification(cfg, on_data, poisoned.images, poisoned.poisoned,
                                       "train"))
            row.update(_identification(cfg, on_gen, gen, detector.detect(gen), "generated"))
            rows.append(store.put(row_key, row))
    provenance = {"data": data.info, "num_classes": k,
                  "history": {key: histories[key] for key in histories},
                  "detector": cfg.detector}
    _save_grid(out, grids, cfg)
    return Result({}, rows, provenance)


def _save_grid(out: str, grids: dict, cfg: DiffusionBackdoorConfig) -> None:
    """groups.png: for the largest poison ratio of each trigger, up to 8 target-class
    generations of each group G1-G4 (a blank row: no image in the group)."""
    from trustfast.experiments.results import save_figure

    picked = {}
    for trigger in cfg.triggers:
        ratio = max(cfg.ratios)
        if f"{trigger}/{ratio:g}" in grids:
            picked[f"{trigger} p={ratio:g}"] = grids[f"{trigger}/{ratio:g}"]
    if not picked:
        return
    plt = pyplot()
    cols = 8
    fig, axes = plt.subplots(4 * len(picked), cols, figsize=(cols * 0.8, 4 * len(picked) * 0.8),
                             squeeze=False)
    for m, (title, (images, groups)) in enumerate(picked.items()):
        for g in range(4):
            members = (groups == g + 1).nonzero().flatten()[:cols]
            for j in range(cols):
                ax = axes[4 * m + g][j]
                ax.set_xticks([])
                ax.set_yticks([])
                if j < len(members):
                    image = images[members[j]]
                    cmap = "gray" if image.shape[0] == 1 else None
                    shown = image[0] if image.shape[0] == 1 else image.permute(1, 2, 0)
                    ax.imshow(shown.clamp(0, 1).numpy(), cmap=cmap, vmin=0, vmax=1)
                if j == 0:
                    ax.set_ylabel(f"{GROUPS[g]}", fontsize=7)
            axes[4 * m][0].set_title(title, fontsize=7, loc="left")
    fig.tight_layout()
    save_figure(fig, os.path.join(out, "groups.png"))


def plot(result: Result) -> dict:
    from trustfast.experiments.plots import lines

    figures = {}
    for trigger in sorted({r["trigger"] for r in result.rows}):
        rows = sorted((r for r in result.rows if r["trigger"] == trigger),
                      key=lambda r: r["poison_ratio"])
        xs = [r["poison_ratio"] for r in rows]
        curves = {"trigger ratio (generations)": (xs, [r["trigger_ratio"] for r in rows]),
                  "poison ratio p": (xs, xs),
                  "p / (1/K + p) (target class)": (xs, [r["target_share"] for r in rows])}
        figures[f"trigger_ratio_{trigger}.png"] = lines(
            curves, "poison ratio", "share with the trigger",
            title=f"{trigger}: trigger amplification", ylim=(0, 1.02))
    return figures


register(Experiment(
    name="diffusion-backdoor", config_cls=DiffusionBackdoorConfig, run=run, plot=plot,
    help="poison a conditional diffusion model's training data (BadNets, Blend): generation "
         "audit (G1-G4, trigger amplification), the diffusion classifier, defences",
    columns=("trigger", "poison_ratio", "FD_cnn", "misalignment", "trigger_ratio",
             "target_share", "amplification", "dc_acc", "dc_ASR", "dc_acc_trim", "dc_ASR_trim",
             "clf_poisoned_data_ASR", "clf_generated_ASR"),
    flags=(Flag("--data", "data", "digits | colored_digits | imagefolder:DIR | cifar10:DIR | "
                                  "npz:FILE"),
           Flag("--unet", "unet", "tiny | small | a local diffusers UNet2DModel folder"),
           Flag("--triggers", "triggers", "comma-separated: " + ",".join(TRIGGERS)),
           Flag("--ratios", "ratios", "comma-separated poison ratios, e.g. 0,0.05,0.1"),
           Flag("--target", "target", "target class"),
           Flag("--steps", "train.max_steps", "diffusion training steps per model")),
))
