"""`trustfast watermark-attack`: the adversarial watermarking attack on face verification, the
four-cell table (clean, watermark only, perturbation only, perturbation + watermark) per eps.

  1. a face model (IResNet + ArcFace) is trained on the training identities — built-in
     procedural faces or the user's CASIA-WebFace-style folder (`--data imagefolder:DIR`) — or
     loaded from a trustfast face checkpoint folder (`face_model`); its threshold is fixed on
     calibration pairs;
  2. a HiDDeN watermark is trained on the training images (and saved in out/watermark_model),
     or loaded (`watermark_model`, a folder written by `WatermarkModel.save`);
  3. the probes of the evaluation pairs (built-in: unseen procedural identities; or an
     LFW-style `--pairs pairs.txt`, first half calibration, second half evaluation) are attacked
     with `AdversarialWatermarkAttack` at every eps.
Rows: {"eps", "watermark", "perturbation", "verification_accuracy", "matching_accuracy",
"bit_accuracy", "psnr"}: verification accuracy over all evaluation pairs, matching accuracy over
the genuine ones (what the attack aims to break).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from trustfast.config import ConfigError
from trustfast.experiments.plots import lines
from trustfast.experiments.registry import (
    Experiment,
    ExperimentConfig,
    Flag,
    Result,
    pixel_budgets,
    register,
)
from trustfast.faces.train import FaceTrainConfig
from trustfast.utils import resolve_device
from trustfast.watermark.models import HiddenConfig
from trustfast.watermark.train import WatermarkTrainConfig

MESSAGES = ("fixed", "random")


# sized for one CPU thread: the face model trains in ~25 s, the watermark in ~50 s. The
# watermark is trained through the JPEG-mask noise layer (a watermark meant to survive
# compression, as deployed ones are), on the tiled message layout (HiddenConfig.message_tile).
def _face_defaults() -> FaceTrainConfig:
    return FaceTrainConfig(epochs=10, batch_size=64, s=32.0, warmup_epochs=1)


def _watermark_defaults() -> WatermarkTrainConfig:
    return WatermarkTrainConfig(epochs=16, batch_size=16, lr=3e-3, image_weight=1.0,
                                image_weight_warmup_epochs=6, noise="jpeg_mask")


def _hidden_defaults() -> HiddenConfig:
    return HiddenConfig(channels=16, encoder_blocks=3, decoder_blocks=1, decoder_channels=64)


@dataclass
class WatermarkAttackConfig(ExperimentConfig):
    """Sizes and budgets; the defaults run in a few minutes on one CPU thread."""

    data: str = "synthetic_faces"  # synthetic_faces | imagefolder:DIR (identity folders)
    pairs: str | None = None  # LFW-style pairs file (else pairs of held-out identities)
    pairs_root: str | None = None  # the images of `pairs` (default: the pairs file's folder)
    pairs_ext: str = "jpg"  # image extension in pairs_root
    face_model: str | None = None  # a trustfast face checkpoint folder (else trained here)
    watermark_model: str | None = None  # a WatermarkModel.save folder (else trained here)
    image_size: int = 32  # faces' side in pixels (rendered or resized); x16 if trained here
    train_identities: int = 60  # built-in faces: training identities
    train_images: int = 15  # per training identity
    test_identities: int = 40  # unseen identities for calibration and evaluation pairs
    test_images: int = 10
    pairs_count: int = 200  # evaluation pairs drawn (half genuine); as many calibration pairs
    eps: list[float] = field(default_factory=lambda: [2 / 255, 4 / 255])
    steps: int = 20
    message: str = "fixed"  # "fixed": the attacker knows each probe's message; "random": EOT
    num_messages: int = 4  # messages per step with message="random"
    kappa: float = 0.02  # the hinge margin on the squared embedding distance
    message_bits: int = 30
    # training of the face model and of the watermark (their seeds are the run's seed), and
    # the watermark network (its message_bits is the run's message_bits)
    face: FaceTrainConfig = field(default_factory=_face_defaults)
    watermark: WatermarkTrainConfig = field(default_factory=_watermark_defaults)
    hidden: HiddenConfig = field(default_factory=_hidden_defaults)

    def check(self) -> None:
        super().check()
        for name in ("image_size", "train_identities", "train_images", "test_identities",
                     "test_images", "pairs_count", "steps", "num_messages", "message_bits"):
            self.at_least(name, 1)
        self.require(bool(self.eps) and all(0 < e <= 0.5 for e in self.eps), "eps",
                     "a non-empty list of budgets in (0, 0.5] (pixels/255 with --eps)")
        if self.face_model is None:  # the IResNet trained here has four stride-2 stages
            self.require(self.image_size % 16 == 0, "image_size",
                         "a multiple of 16 (the face model trained here halves it four times)")
        if self.data == "synthetic_faces":
            self.at_least("image_size", 16)  # the procedural faces' smallest size
        self.at_least("kappa", 0)
        self.choice("message", MESSAGES)
        scheme, _, root = self.data.partition(":")
        self.require(self.data == "synthetic_faces" or (scheme == "imagefolder" and root),
                     "data", "'synthetic_faces' or 'imagefolder:DIR'")
        if self.pairs is not None:
            self.require(os.path.isfile(self.pairs), "pairs", "an existing LFW-style pairs file")
        for key, what in (("pairs_root", "an existing folder of the pairs' images"),
                          ("face_model", "an existing trustfast face checkpoint folder"),
                          ("watermark_model", "an existing WatermarkModel.save folder")):
            if getattr(self, key) is not None:  # checked now, not after training the rest
                self.require(os.path.isdir(getattr(self, key)), key, what)
        for key in ("face.seed", "watermark.seed"):  # the run's seed seeds both trainings
            self.require(self._value(key) in (0, self.seed), key,
                         f"0 or the run's seed ({self.seed}), which seeds it: set --seed")
        self.require(self.hidden.message_bits in (30, self.message_bits), "hidden.message_bits",
                     f"30 or message_bits ({self.message_bits}), which the network gets")


def hidden_config(cfg: WatermarkAttackConfig) -> HiddenConfig:
    """The watermark network's HiddenConfig for a run (message_bits from the run)."""
    from dataclasses import replace

    return replace(cfg.hidden, message_bits=cfg.message_bits)


def _builtin_faces(cfg: WatermarkAttackConfig):
    from trustfast.data import face_pairs, synthetic_faces

    x_train, y_train = synthetic_faces(cfg.train_identities, cfg.train_images, cfg.image_size,
                                       seed=cfg.seed)
    x_test, y_test = synthetic_faces(cfg.test_identities, cfg.test_images, cfg.image_size,
                                     seed=cfg.seed, identity_offset=100_000)
    a, b, same = face_pairs(y_test, 2 * cfg.pairs_count, seed=cfg.seed)
    calib, evaluation = slice(0, cfg.pairs_count), slice(cfg.pairs_count, 2 * cfg.pairs_count)
    return (x_train, y_train), (x_test[a[calib]], x_test[b[calib]], same[calib]), \
        (x_test[a[evaluation]], x_test[b[evaluation]], same[evaluation])


def _folder_faces(cfg: WatermarkAttackConfig):
    """Training identities from an image folder; pairs from `pairs` or from held-out
    identities of the folder (the last `test_identities` in sorted order)."""
    from trustfast.data import dataset_tensors, face_pairs
    from trustfast.faces.datasets import ImageFolderFaces, load_pairs, read_pairs

    scheme, _, root = cfg.data.partition(":")
    if scheme != "imagefolder" or not root:
        raise ConfigError("data", f"must be 'synthetic_faces' or 'imagefolder:DIR', got "
                                  f"{cfg.data!r}")
    try:
        folder = ImageFolderFaces(root, size=cfg.image_size)
    except ValueError as exc:
        raise ConfigError("data", f"could not be loaded: {exc}") from None
    x, y = dataset_tensors(folder)
    if cfg.pairs is not None:
        listed = read_pairs(cfg.pairs, cfg.pairs_root or os.path.dirname(cfg.pairs),
                            cfg.pairs_ext)
        if len(listed) < 4:
            raise ConfigError("pairs", f"must list at least 4 pairs, got {len(listed)}")
        a, b, same = load_pairs(listed, size=cfg.image_size)
        half = len(listed) // 2
        return (x, y), (a[:half], b[:half], same[:half]), (a[half:], b[half:], same[half:])
    identities = torch.unique(y)
    if len(identities) <= cfg.test_identities + 1:
        raise ConfigError("test_identities", f"must leave training identities: the folder has "
                                             f"{len(identities)}, got {cfg.test_identities}")
    held = torch.isin(y, identities[-cfg.test_identities:])
    x_test, y_test = x[held], y[held]
    pa, pb, same = face_pairs(y_test, 2 * cfg.pairs_count, seed=cfg.seed)
    calib, evaluation = slice(0, cfg.pairs_count), slice(cfg.pairs_count, 2 * cfg.pairs_count)
    return (x[~held], y[~held]), (x_test[pa[calib]], x_test[pb[calib]], same[calib]), \
        (x_test[pa[evaluation]], x_test[pb[evaluation]], same[evaluation])


def train_models(cfg: WatermarkAttackConfig, out: str | None = None, resume: bool = False):
    """(face verifier with a calibrated threshold, watermark model, evaluation pairs)."""
    from dataclasses import replace

    from trustfast.faces import FaceVerifier, train_face_model
    from trustfast.faces.train import load_face_model
    from trustfast.watermark import WatermarkModel, train_watermark

    device = resolve_device(cfg.device)
    (x_train, y_train), calib, evaluation = (
        _builtin_faces(cfg) if cfg.data == "synthetic_faces" else _folder_faces(cfg))
    if cfg.face_model is not None:
        try:
            model = load_face_model(cfg.face_model)[0].to(device)
        except (ValueError, KeyError, OSError) as exc:
            raise ConfigError("face_model", f"must be a trustfast face checkpoint folder: "
                                            f"{exc}") from None
        if model.input_size != cfg.image_size:
            raise ConfigError("image_size", f"must be the face model's input size "
                                            f"({model.input_size}), got {cfg.image_size}")
    else:
        face_dir = os.path.join(out, "face_model") if out else None
        model, _ = train_face_model(x_train, y_train, replace(cfg.face, seed=cfg.seed),
                                    checkpoint_dir=face_dir, resume=resume, device=device)
    calib = tuple(t.to(device) for t in calib)
    verifier = FaceVerifier.fit(model, *calib)
    if cfg.watermark_model is not None:
        try:
            watermark = WatermarkModel.load(cfg.watermark_model, map_location=device)
        except (ValueError, KeyError, OSError) as exc:
            raise ConfigError("watermark_model", f"must be a WatermarkModel.save folder: "
                                                 f"{exc}") from None
    else:
        wm_dir = os.path.join(out, "watermark") if out else None
        watermark, _ = train_watermark(x_train.to(device), replace(cfg.watermark, seed=cfg.seed),
                                       hidden_config(cfg), checkpoint_dir=wm_dir, resume=resume)
        if out:  # the trained watermark, for --watermark-model in later runs
            watermark.save(os.path.join(out, "watermark_model"))
    watermark.eval()
    return verifier, watermark, tuple(t.to(device) for t in evaluation)


def run(cfg: WatermarkAttackConfig, out: str, resume: bool = False) -> Result:
    from trustfast.attacks import evaluate_watermark_attack

    verifier, watermark, (probes, references, same) = train_models(cfg, out, resume)
    rows = evaluate_watermark_attack(verifier, watermark, probes, references, same, cfg.eps,
                                     cfg.steps, cfg.message, cfg.num_messages, cfg.kappa,
                                     cfg.seed)
    return Result({}, rows, {"threshold": verifier.threshold})


def plot(result: Result) -> dict:
    rows = result.rows
    eps = sorted({r["eps"] for r in rows if r["perturbation"]})
    curves = {}
    for marked in (False, True):
        ys = [next(r["verification_accuracy"] for r in rows
                   if not r["perturbation"] and r["watermark"] == marked)]
        ys += [next(r["verification_accuracy"] for r in rows
                    if r["eps"] == e and r["perturbation"] and r["watermark"] == marked)
               for e in eps]
        curves["watermarked" if marked else "no watermark"] = ([0] + [e * 255 for e in eps], ys)
    return {"watermark_attack.png": lines(curves, "eps (x/255)", "verification accuracy",
                                          "adversarial watermarking attack", ylim=(0, 1.02))}


register(Experiment(
    name="watermark-attack", config_cls=WatermarkAttackConfig, run=run, plot=plot,
    help="face verification, a HiDDeN watermark and the adversarial watermarking attack: the "
         "four-cell table",
    columns=("eps", "watermark", "perturbation", "verification_accuracy", "matching_accuracy",
             "bit_accuracy", "psnr"),
    flags=(Flag("--data", "data", "synthetic_faces | imagefolder:DIR (CASIA-WebFace layout)"),
           Flag("--pairs", "pairs", "LFW-style pairs file"),
           Flag("--pairs-root", "pairs_root", "folder of the pairs' images"),
           Flag("--face-model", "face_model", "trustfast face checkpoint folder"),
           Flag("--watermark-model", "watermark_model", "WatermarkModel.save folder"),
           Flag("--eps", "eps", "comma-separated budgets in pixels/255, e.g. 2,4",
                parse=pixel_budgets),
           Flag("--steps", "steps", "PGD steps"),
           Flag("--message", "message", "fixed or random")),
))
