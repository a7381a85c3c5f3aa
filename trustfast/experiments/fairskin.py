"""`trustfast fairskin`: per-group quality of a conditional diffusion model on imbalanced
skin-tone data, vanilla training against FairSkin's three levels, and the downstream classifier.

  1. data: the built-in procedural skin lesions (`trustfast.data.synthetic_skin`: six
     Fitzpatrick-like tones with imbalanced frequencies, class frequencies that differ by tone)
     or the user's Fitzpatrick17k-style CSV (`--data path/to/labels.csv`, images beside it or in
     `image_dir`). The test set is held out; for the built-in data it is balanced over tones so
     that every group's accuracy and distance is measured on the same number of images;
  2. a feature extractor for the Fréchet distances: pytorch-fid's InceptionV3 from a weights file
     (`extractor=path/to/pt_inception-2015-12-05-6726825d.pth`, reported as "FID") or, offline, a
     small CNN trained here on the real (tone x disease) cells (reported as "FD_cnn");
  3. two conditional UNets (one label per (tone, disease) cell) trained on the same budget:
     "vanilla" (natural frequencies) and "fairskin" (level 1 balanced sampler, level 2 class
     diversity weights and within-cell term, as `fairskin` configures);
  4. each generates one image per held-out real image, for that image's cell (so each tone's
     generated images have its real disease mix); per-tone Fréchet distance between the
     generated and the held-out real images of the tone, and the gap (max - min over tones);
  5. the downstream classifier (disease) trained on real images only, on real + vanilla
     synthetic and on real + FairSkin synthetic (level 3: every cell filled to `target_count`,
     synthetic weight lambda, cells reweighted), evaluated per tone.
Rows: stage "generation" (one per model: FD per tone, mean, gap) and stage "classifier" (one per
training set: accuracy, worst-group accuracy, accuracy gap, equal-opportunity difference).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, replace

import torch

from trustfast.config import ConfigError
from trustfast.diffusion.fairskin import FairSkinConfig
from trustfast.diffusion.train import DiffusionTrainConfig
from trustfast.experiments.plots import grouped_bars
from trustfast.experiments.registry import Experiment, ExperimentConfig, Flag, Result, register
from trustfast.models.fit import SGDConfig
from trustfast.utils import pyplot, resolve_device

MODELS = ("vanilla", "fairskin")
INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"


# Sized for two CPU cores (about 0.2 s a step at 16 px): 1000 steps of 32 images per model;
# lr 2e-3 (the tiny UNet's, see DiffusionTrainConfig) and a short EMA for that budget.
def _train_defaults() -> DiffusionTrainConfig:
    return DiffusionTrainConfig(max_steps=1000, batch_size=32, lr=2e-3, ema_decay=0.995,
                                checkpoint_every=250)


# SGD at lr >= 0.05 collapses the small CNN on these images (dead ReLUs: the loss returns to
# log 5 and stays); lr 0.02 for 30 epochs reaches 0.84 accuracy at 16 px, 0.74 at 8 px.
def _classifier_defaults() -> SGDConfig:
    return SGDConfig(epochs=30, lr=0.02, batch_size=64)


# Level 3 fills every (tone, disease) cell to 60 images: the rare cells of the built-in data
# (tone VI: about 20 per disease) get ~40 synthetic images each, ~500 in all; filling to the
# largest cell (target_count=0, ~300 here) would generate ~7000.
def _fairskin_defaults() -> FairSkinConfig:
    return FairSkinConfig(target_count=60)


@dataclass
class FairSkinExperimentConfig(ExperimentConfig):
    """Data, the two diffusion trainings, generation and the downstream classifier; the
    defaults run in a few minutes on two CPU cores."""

    data: str = "skin"  # "skin" (built in) or a Fitzpatrick17k-style CSV (md5hash, label, ...)
    image_dir: str | None = None  # the CSV's images (default: beside the CSV or in images/)
    image_size: int = 16  # side in pixels (rendered, or the user's images resized)
    train_size: int = 2400  # built-in data: training images (imbalanced tones)
    test_per_group: int = 100  # built-in data: held-out images per tone (balanced)
    test_fraction: float = 0.25  # user data: the held-out share (stratified by tone)
    unet: str = "tiny"  # "tiny" | "small" (trustfast presets) or a local UNet2DModel folder
    extractor: str = "cnn"  # "cnn" (trained here) or pytorch-fid's Inception weights file
    # the CNN's feature size: a Fréchet distance over d dimensions from n images per tone has
    # an estimation bias of order d / n, so d stays well below the held-out images per tone
    feature_dim: int = 16
    sample_steps: int = 25  # DDIM steps
    guidance_scale: float = 1.0  # classifier-free guidance (1 = conditional only)
    classifier_model: str = "small_cnn"  # the downstream disease classifier
    train: DiffusionTrainConfig = field(default_factory=_train_defaults)
    fairskin: FairSkinConfig = field(default_factory=_fairskin_defaults)
    classifier: SGDConfig = field(default_factory=_classifier_defaults)

    def check(self) -> None:
        super().check()
        for key in ("image_size", "train_size", "sample_steps", "feature_dim"):
            self.at_least(key, 1)
        self.at_least("image_size", 8)
        self.require(self.test_per_group >= 2, "test_per_group",
                     "at least 2 (a covariance needs two samples)")
        self.within("test_fraction", 0, 1, low_open=True, high_open=True)
        self.at_least("guidance_scale", 0)
        self.require(self.data == "skin" or os.path.isfile(self.data), "data",
                     "'skin' or an existing Fitzpatrick17k-style CSV file")
        if self.image_dir is not None:
            self.require(os.path.isdir(self.image_dir), "image_dir", "an existing folder")
        self.require(self.unet in ("tiny", "small") or os.path.isdir(self.unet), "unet",
                     "'tiny', 'small' or an existing local diffusers UNet2DModel folder")
        self.require(self.extractor == "cnn" or os.path.isfile(self.extractor), "extractor",
                     f"'cnn' or an existing Inception weights file ({INCEPTION_FILE} from "
                     f"pytorch-fid's releases)")
        self.require(self.train.seed in (0, self.seed), "train.seed",
                     f"0 or the run's seed ({self.seed}), which seeds it: set --seed")


@dataclass
class SkinSplit:
    train: object  # SkinDataset
    test: object

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def num_groups(self) -> int:
        return self.train.num_groups


def load_data(cfg: FairSkinExperimentConfig) -> SkinSplit:
    """Training and held-out SkinDatasets: built in (test balanced over tones) or the user's CSV
    (a split stratified by tone, seeded)."""
    from trustfast.data.skin import synthetic_skin

    if cfg.data == "skin":
        train = synthetic_skin(cfg.train_size, size=cfg.image_size, seed=cfg.seed)
        groups = train.num_groups
        test = synthetic_skin(cfg.test_per_group * groups, size=cfg.image_size,
                              seed=cfg.seed + 7919, group_freqs=(1.0 / groups,) * groups)
        # exactly test_per_group per tone: the draw above is random, so cut each tone to size
        # (a tone drawn less often keeps what it has)
        keep = torch.cat([torch.nonzero(test.groups == g).flatten()[:cfg.test_per_group]
                          for g in range(groups)])
        return SkinSplit(train, test.subset(keep.sort().values))
    from trustfast.data.skin import skin_folder

    try:
        full = skin_folder(cfg.data, cfg.image_dir, size=cfg.image_size)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError("data", f"could not be loaded: {exc}") from None
    gen = torch.Generator().manual_seed(cfg.seed)
    test_idx = []
    for g in range(full.num_groups):
        members = torch.nonzero(full.groups == g).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        test_idx.append(members[:int(round(cfg.test_fraction * len(members)))])
    test_idx = torch.cat(test_idx).sort().values
    is_test = torch.zeros(len(full), dtype=torch.bool)
    is_test[test_idx] = True
    if not is_test.any() or is_test.all():
        raise ConfigError("test_fraction", f"leaves an empty split of {len(full)} images")
    return SkinSplit(full.subset(torch.nonzero(~is_test).flatten()),
                     full.subset(torch.nonzero(is_test).flatten()))


def _extractor(cfg: FairSkinExperimentConfig, split: SkinSplit, device: torch.device):
    from trustfast.diffusion.fairskin import cell_index
    from trustfast.metrics import inception_extractor, train_feature_extractor

    if cfg.extractor != "cnn":
        try:
            return inception_extractor(cfg.extractor).to(device)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ConfigError("extractor", f"must be pytorch-fid's {INCEPTION_FILE}: "
                                           f"{exc}") from None
    cells = cell_index(split.train.labels, split.train.groups, split.num_classes)
    return train_feature_extractor(split.train.images, cells, seed=cfg.seed,
                                   feature_dim=cfg.feature_dim).to(device)


def _unet(cfg: FairSkinExperimentConfig, num_labels: int, device: torch.device):
    from trustfast.experiments.artefacts import experiment_unet

    return experiment_unet(cfg.unet, num_labels, image_size=cfg.image_size, channels=3,
                           seed=cfg.seed, device=device, labels="(tone, disease) cell")


def train_models(cfg: FairSkinExperimentConfig, split: SkinSplit, out: str | None,
                 resume: bool, device: torch.device) -> dict:
    """{"vanilla": UNet, "fairskin": UNet}, trained with the same config and step budget; the
    FairSkin one with the sampler, loss weights and regularizer of `cfg.fairskin`."""
    from trustfast.diffusion.fairskin import CellLabels
    from trustfast.diffusion.train import train_diffusion

    data = CellLabels(split.train)
    num_labels = split.num_groups * split.num_classes
    train_cfg = replace(cfg.train, seed=cfg.seed)
    models, histories = {}, {}
    for name in MODELS:
        model = _unet(cfg, num_labels, device)
        hooks = {}
        if name == "fairskin":
            hooks = {"sampler": cfg.fairskin.sampler(split.train, seed=cfg.seed),
                     "loss_weight": cfg.fairskin.loss_weights(split.train),
                     "regularizer": cfg.fairskin.regularizer(split.train)}
        folder = os.path.join(out, f"diffusion_{name}") if out else None
        result = train_diffusion(model, data, train_cfg, out=folder, resume=resume,
                                 progress=True, **hooks)
        models[name] = result.model.eval()
        histories[name] = result.losses
    return {"models": models, "losses": histories}


def generate_cells(model, cells: torch.Tensor, cfg: FairSkinExperimentConfig,
                   seed: int) -> torch.Tensor:
    """Images for the cell labels `cells` (DDIM, seeded)."""
    from trustfast.diffusion.sampling import generate

    return generate(model, cells, steps=cfg.sample_steps, guidance_scale=cfg.guidance_scale,
                    scheduler="ddim", seed=seed, train_config=cfg.train).cpu()


def _generation_row(name: str, fd: dict[int, float], metric: str, group_names) -> dict:
    values = [fd[g] for g in sorted(fd)]
    row = {"stage": "generation", "model": name, "metric": metric}
    row.update({f"{metric}_{group_names[g]}": fd[g] for g in sorted(fd)})
    row[f"{metric}_mean"] = sum(values) / len(values)
    row[f"{metric}_gap"] = max(values) - min(values)
    row["worst_group"] = group_names[max(fd, key=fd.get)]
    return row


def _classifier_row(training: str, model, test, device, num_train: int) -> dict:
    from trustfast.metrics.fairness import fairness_report, group_accuracies

    model.eval()
    with torch.no_grad():
        preds = torch.cat([model(x.to(device)).argmax(1).cpu()
                           for x in test.images.split(256)])
    report = fairness_report(test.labels, preds, test.groups)
    by_group = {test.group_names[g]: acc
                for g, acc in group_accuracies(test.labels, preds, test.groups).items()}
    row = {"stage": "classifier", "training": training, "train_images": num_train}
    row.update({k: report[k] for k in ("accuracy", "worst_group_accuracy", "accuracy_gap",
                                       "equal_opportunity_difference",
                                       "equalized_odds_difference")})
    row["group_accuracy"] = by_group
    return row


def run(cfg: FairSkinExperimentConfig, out: str, resume: bool = False) -> Result:
    from trustfast.data.skin import SkinDataset
    from trustfast.diffusion.fairskin import cells_to_generate, mix_real_synthetic
    from trustfast.experiments.runner import RowStore, cached_tensor
    from trustfast.metrics import extract_features, frechet_by_group
    from trustfast.models import build_model
    from trustfast.models.fit import fit_classifier

    device = resolve_device(cfg.device)
    split = load_data(cfg)
    store = RowStore(out, resume)
    trained = train_models(cfg, split, out, resume, device)
    extractor = _extractor(cfg, split, device)
    metric = "FID" if extractor.name == "inception" else f"FD_{extractor.name}"
    c = split.num_classes
    real_feats = extract_features(extractor, split.test.images.to(device))
    cells = split.test.groups * c + split.test.labels
    # a covariance needs two images: a tone with fewer held-out images gets no distance (a
    # user's data may hold one or two images of a rare tone)
    held_out = split.test.groups.bincount(minlength=split.num_groups)
    measurable = [g for g in range(split.num_groups) if held_out[g] >= 2]
    if not measurable:
        raise ConfigError("test_fraction", f"leaves no tone with 2 held-out images (held-out "
                                           f"images per tone: {held_out.tolist()})")
    skipped = [split.train.group_names[g] for g in range(split.num_groups)
               if g not in measurable]
    if skipped:
        warnings.warn(f"fairskin: tones {skipped} have fewer than 2 held-out images: no "
                      f"Fréchet distance for them", stacklevel=2)
    rows, samples = [], {}
    for i, name in enumerate(MODELS):
        model = trained["models"][name]
        images = cached_tensor(out, f"samples_{name}", resume,
                                lambda m=model, s=cfg.seed + 101 * (i + 1):
                                generate_cells(m, cells, cfg, seed=s))
        samples[name] = images
        key = f"generation/{name}"
        if key not in store:
            fake = extract_features(extractor, images.to(device))
            fd = frechet_by_group(real_feats, split.test.groups, fake, cells // c,
                                  groups=measurable)
            store.put(key, _generation_row(name, fd, metric, split.train.group_names))
        rows.append(store[key])

    # level 3: fill every (tone, disease) cell of the real training set to the target count;
    # "real + vanilla synthetic" is plain augmentation (every image weight 1), the FairSkin rows
    # use level 3's weights (lambda, cells balanced), and so does an ablation row with the
    # vanilla model's images, which separates the weights' effect from the images'
    needed = cfg.fairskin.counts_needed(split.train)
    need_groups, need_labels = cells_to_generate(needed)
    need_cells = need_groups * c + need_labels
    sets = {"real": (split.train, None)}
    for i, name in enumerate(MODELS):
        pool = cached_tensor(out, f"augment_{name}", resume,
                              lambda m=trained["models"][name], s=cfg.seed + 997 * (i + 1):
                              generate_cells(m, need_cells, cfg, seed=s))
        synthetic = SkinDataset(pool, need_labels, need_groups, split.train.class_names,
                                split.train.group_names)
        if name == "vanilla":
            sets["real + vanilla synthetic"] = mix_real_synthetic(
                split.train, synthetic, target_count=cfg.fairskin.target_count or None,
                synthetic_weight=1.0, balance_cells=False)
        sets[f"real + {name} synthetic, level-3 weights"] = cfg.fairskin.mix(split.train,
                                                                             synthetic)
    for training, (data, weights) in sets.items():
        key = f"classifier/{training}"
        if key not in store:
            torch.manual_seed(cfg.seed)
            clf = build_model(cfg.classifier_model, in_channels=3, num_classes=c,
                              image_size=cfg.image_size).to(device)
            fit_classifier(clf, _LabelPairs(data), cfg.classifier, seed=cfg.seed,
                           sample_weights=weights, desc=f"classifier: {training}")
            store.put(key, _classifier_row(training, clf, split.test, device, len(data)))
        rows.append(store[key])
    provenance = {"data": {"train": repr(split.train), "test": repr(split.test)},
                  "metric": metric, "tones_without_distance": skipped,
                  "synthetic_per_cell": needed.tolist(),
                  "history": {name: trained["losses"][name] for name in MODELS}}
    _save_grid(out, samples, split)
    return Result({}, rows, provenance)


class _LabelPairs(torch.utils.data.Dataset):
    """(image, disease label) items of a SkinDataset for the classifier."""

    def __init__(self, skin):
        self.skin = skin

    def __len__(self) -> int:
        return len(self.skin)

    def __getitem__(self, i: int):
        return self.skin.images[i], int(self.skin.labels[i])


def _save_grid(out: str, samples: dict, split: SkinSplit) -> None:
    """samples.png: a row per tone, a column per disease, for each model (its first sample of
    the cell)."""
    from trustfast.experiments.results import save_figure

    plt = pyplot()
    g, c = split.num_groups, split.num_classes
    cells = (split.test.groups * c + split.test.labels).tolist()
    first = {cell: cells.index(cell) for cell in set(cells)}
    fig, axes = plt.subplots(g, 2 * c, figsize=(2 * c * 0.9, g * 0.9), squeeze=False)
    for m, name in enumerate(MODELS):
        for i in range(g):
            for j in range(c):
                ax = axes[i][m * c + j]
                if i * c + j in first:  # a cell without held-out images stays blank
                    image = samples[name][first[i * c + j]]
                    ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(f"{name[:4]} {split.train.class_names[j][:6]}", fontsize=6)
                if m == 0 and j == 0:
                    ax.set_ylabel(split.train.group_names[i], fontsize=7)
    fig.tight_layout()
    save_figure(fig, os.path.join(out, "samples.png"))


def plot(result: Result) -> dict:
    gen = [r for r in result.rows if r["stage"] == "generation"]
    figures = {}
    if gen:
        metric = gen[0]["metric"]
        tone_keys = [k for k in gen[0] if k.startswith(metric + "_")
                     and k not in (f"{metric}_mean", f"{metric}_gap")]
        bars = [{"tone": k[len(metric) + 1:], "model": r["model"], "fd": r[k]}
                for r in gen for k in tone_keys]
        figures["fd_by_group.png"] = grouped_bars(bars, "tone", "model",
                                                  [("fd", f"{metric} per tone")],
                                                  title="per-tone Fréchet distance")
    clf = [r for r in result.rows if r["stage"] == "classifier"]
    if clf:
        bars = [{"tone": tone, "training": r["training"], "accuracy": acc}
                for r in clf for tone, acc in r["group_accuracy"].items()]
        figures["accuracy_by_group.png"] = grouped_bars(bars, "tone", "training",
                                                        [("accuracy", "accuracy")],
                                                        title="downstream accuracy per tone",
                                                        ylim=(0, 1.02))
    return figures


register(Experiment(
    name="fairskin", config_cls=FairSkinExperimentConfig, run=run, plot=plot,
    help="FairSkin: per-tone Fréchet distance of a vanilla vs a FairSkin-trained conditional "
         "diffusion model, and a skin-disease classifier trained with their images",
    flags=(Flag("--data", "data", "skin (built in) or a Fitzpatrick17k-style CSV"),
           Flag("--image-dir", "image_dir", "folder of the CSV's images"),
           Flag("--unet", "unet", "tiny | small | a local diffusers UNet2DModel folder"),
           Flag("--extractor", "extractor", f"cnn or pytorch-fid's {INCEPTION_FILE}"),
           Flag("--steps", "train.max_steps", "diffusion training steps per model")),
))
