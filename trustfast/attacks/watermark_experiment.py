"""The adversarial watermarking attack end to end on built-in faces: the four-cell table.

`run_watermark_attack(WatermarkAttackConfig(...), out)`:
  1. renders procedural identities (`trustfast.data.synthetic_faces`), trains an IResNet with an
     ArcFace head on training identities, and fixes its threshold on calibration pairs of
     unseen identities;
  2. trains a HiDDeN watermark on face images;
  3. attacks the probes of evaluation pairs (other unseen identities) with
     `AdversarialWatermarkAttack` at every eps, and measures verification accuracy (fixed
     threshold) with and without the perturbation and with and without a watermark of a fresh
     random message, and the decoder's bit accuracy on watermarked images.
Rows: {"eps", "watermark", "perturbation", "verification_accuracy", "matching_accuracy",
"bit_accuracy", "psnr"} (eps 0 for the unperturbed cells; bit_accuracy and psnr, of the
watermarked probe against the probe, None without a watermark).
verification_accuracy is over all evaluation pairs (half genuine); matching_accuracy over the
genuine ones only: the share of probes still matched to their own identity, which is what the
attack aims to break (a watermarked probe no longer matches). Both trained models are
checkpointed in `out` and reused with `resume=True`; results.json, results.md and
watermark_attack.png are written at the end.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

import torch

from trustfast.attacks.watermark_attack import MESSAGES, AdversarialWatermarkAttack
from trustfast.checkpoint import load_config, load_json, save_json
from trustfast.utils import pyplot


@dataclass
class WatermarkAttackConfig:
    """Sizes and budgets; the defaults run in a few minutes on one CPU thread."""

    image_size: int = 32
    train_identities: int = 60
    train_images: int = 15  # per training identity
    test_identities: int = 40  # unseen identities for calibration and evaluation pairs
    test_images: int = 10
    pairs: int = 200  # evaluation pairs (half genuine); as many calibration pairs
    eps: list[float] = field(default_factory=lambda: [2 / 255, 4 / 255])
    steps: int = 20
    message: str = "fixed"  # "fixed": the attacker knows each probe's message; "random": EOT
    num_messages: int = 4  # messages per step with message="random"
    kappa: float = 0.02  # the hinge margin on the squared embedding distance
    message_bits: int = 30
    face: dict = field(default_factory=dict)  # FaceTrainConfig fields over the defaults below
    watermark: dict = field(default_factory=dict)  # WatermarkTrainConfig fields, likewise
    hidden: dict = field(default_factory=dict)  # HiddenConfig fields (the watermark network)
    seed: int = 0

    def validate(self) -> None:
        for name in ("image_size", "train_identities", "train_images", "test_identities",
                     "test_images", "pairs", "steps", "num_messages", "message_bits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not self.eps or any(not 0 < e <= 0.5 for e in self.eps):
            raise ValueError(f"eps must be a non-empty list of budgets in (0, 0.5], "
                             f"got {self.eps}")
        if not self.kappa >= 0:
            raise ValueError(f"kappa must be >= 0, got {self.kappa}")
        if self.message not in MESSAGES:
            raise ValueError(f"message must be one of {MESSAGES}, got {self.message!r}")

    @classmethod
    def from_file(cls, path: str) -> WatermarkAttackConfig:
        """A config from a YAML or JSON file whose keys are this dataclass's fields."""
        return load_config(cls, path)


# sized for one CPU thread: the face model trains in ~25 s, the watermark in ~50 s. The
# watermark is trained through the JPEG-mask noise layer (a watermark meant to survive
# compression, as deployed ones are), on the tiled message layout (HiddenConfig.message_tile).
FACE_DEFAULTS = {"epochs": 10, "batch_size": 64, "s": 32.0, "warmup_epochs": 1}
WATERMARK_DEFAULTS = {"epochs": 16, "batch_size": 16, "lr": 3e-3, "image_weight": 1.0,
                      "image_weight_warmup_epochs": 6, "noise": "jpeg_mask"}
HIDDEN_DEFAULTS = {"channels": 16, "encoder_blocks": 3, "decoder_blocks": 1,
                   "decoder_channels": 64}


def hidden_config(cfg: WatermarkAttackConfig):
    """The watermark network's HiddenConfig for a run."""
    from trustfast.watermark import HiddenConfig

    return HiddenConfig(**{**HIDDEN_DEFAULTS, "message_bits": cfg.message_bits, **cfg.hidden})


def _faces(cfg: WatermarkAttackConfig):
    from trustfast.data import face_pairs, synthetic_faces

    x_train, y_train = synthetic_faces(cfg.train_identities, cfg.train_images, cfg.image_size,
                                       seed=cfg.seed)
    x_test, y_test = synthetic_faces(cfg.test_identities, cfg.test_images, cfg.image_size,
                                     seed=cfg.seed, identity_offset=100_000)
    a, b, same = face_pairs(y_test, 2 * cfg.pairs, seed=cfg.seed)
    calib = slice(0, cfg.pairs)
    evaluation = slice(cfg.pairs, 2 * cfg.pairs)
    return (x_train, y_train), (x_test[a[calib]], x_test[b[calib]], same[calib]), \
        (x_test[a[evaluation]], x_test[b[evaluation]], same[evaluation])


def train_models(cfg: WatermarkAttackConfig, out: str | None = None, resume: bool = False):
    """(face verifier with a calibrated threshold, watermark model, evaluation pairs)."""
    from trustfast.faces import FaceTrainConfig, FaceVerifier, train_face_model
    from trustfast.watermark import WatermarkTrainConfig, train_watermark

    (x_train, y_train), calib, evaluation = _faces(cfg)
    face_dir = os.path.join(out, "face_model") if out else None
    model, _ = train_face_model(x_train, y_train,
                                FaceTrainConfig(**{**FACE_DEFAULTS, "seed": cfg.seed,
                                                   **cfg.face}),
                                checkpoint_dir=face_dir, resume=resume)
    verifier = FaceVerifier.fit(model, *calib)
    wm_dir = os.path.join(out, "watermark") if out else None
    watermark, _ = train_watermark(x_train, WatermarkTrainConfig(**{
        **WATERMARK_DEFAULTS, "seed": cfg.seed, **cfg.watermark}),
        hidden_config(cfg), checkpoint_dir=wm_dir, resume=resume)
    watermark.eval()
    return verifier, watermark, evaluation


def _random_bits(n: int, bits: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n, bits), generator=gen).float()


@torch.no_grad()
def _cell(verifier, watermark, probes, references, same, bits) -> dict:
    from trustfast.watermark import bit_accuracy, psnr

    bit_acc = quality = None
    if bits is not None:
        marked = watermark.embed(probes, bits)
        bit_acc = bit_accuracy(watermark.decode(marked), bits)
        quality = float(psnr(marked, probes))
        probes = marked
    correct = (verifier.verify(probes, references) == same).float()
    return {"verification_accuracy": float(correct.mean()),
            "matching_accuracy": float(correct[same].mean()) if bool(same.any()) else None,
            "bit_accuracy": bit_acc, "psnr": quality}


def evaluate_watermark_attack(verifier, watermark, probes: torch.Tensor,
                              references: torch.Tensor, same: torch.Tensor, eps: list[float],
                              steps: int = 20, message: str = "fixed", num_messages: int = 4,
                              kappa: float = 0.02, seed: int = 0) -> list[dict]:
    """The four cells (clean, watermark only, perturbation only, perturbation + watermark) at
    every eps. The evaluation watermarks carry fresh random messages (the attack never saw
    them when message='random')."""
    bits_n = watermark.config.message_bits
    eval_bits = _random_bits(len(probes), bits_n, seed + 1)
    rows = []
    for marked in (False, True):
        rows.append({"eps": 0.0, "watermark": marked, "perturbation": False,
                     **_cell(verifier, watermark, probes, references, same,
                             eval_bits if marked else None)})
    attack = AdversarialWatermarkAttack(verifier, watermark, eps=list(eps), steps=steps,
                                        message=message, num_messages=num_messages,
                                        kappa=kappa, seed=seed)
    start = time.perf_counter()
    fixed = eval_bits if message == "fixed" else None
    adversarial = attack(probes, references, same, bits=fixed)
    seconds = time.perf_counter() - start
    for e, adv in zip(eps, adversarial):
        linf = float((adv - probes).abs().max())
        for marked in (False, True):
            rows.append({"eps": float(e), "watermark": marked, "perturbation": True,
                         **_cell(verifier, watermark, adv, references, same,
                                 eval_bits if marked else None),
                         "linf": linf, "attack_seconds": seconds})
    return rows


def run_watermark_attack(cfg: WatermarkAttackConfig, out: str | None = None,
                         resume: bool = False) -> list[dict]:
    cfg.validate()
    if out is not None:
        os.makedirs(out, exist_ok=True)
        done = os.path.join(out, "results.json")
        if resume and os.path.exists(done):
            saved = load_json(done)
            if saved.get("config") == asdict(cfg):
                return saved["rows"]
    verifier, watermark, (probes, references, same) = train_models(cfg, out, resume)
    rows = evaluate_watermark_attack(verifier, watermark, probes, references, same, cfg.eps,
                                     cfg.steps, cfg.message, cfg.num_messages, cfg.kappa,
                                     cfg.seed)
    if out is not None:
        save_json(os.path.join(out, "results.json"), {
            "config": asdict(cfg), "threshold": verifier.threshold, "rows": rows})
        with open(os.path.join(out, "results.md"), "w") as f:
            f.write(markdown_table(rows) + "\n")
        _plot(rows, os.path.join(out, "watermark_attack.png"))
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The four cells per eps: verification accuracy, and the decoder's bit accuracy."""
    lines = ["| eps | watermark | perturbation | verification accuracy | matching accuracy "
             "| bit accuracy |", "|---|---|---|---:|---:|---:|"]
    for r in rows:
        eps = f"{r['eps'] * 255:.0f}/255" if r["perturbation"] else "-"
        bit, match = (("-" if r.get(k) is None else f"{r[k]:.3f}")
                      for k in ("bit_accuracy", "matching_accuracy"))
        lines.append(f"| {eps} | {'yes' if r['watermark'] else 'no'} | "
                     f"{'yes' if r['perturbation'] else 'no'} | "
                     f"{r['verification_accuracy']:.3f} | {match} | {bit} |")
    return "\n".join(lines)


def _plot(rows: list[dict], path: str) -> None:
    plt = pyplot()
    eps = sorted({r["eps"] for r in rows if r["perturbation"]})
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for marked, style in ((False, "o-"), (True, "s--")):
        ys = [next(r["verification_accuracy"] for r in rows
                   if r["eps"] == 0 and not r["perturbation"] and r["watermark"] == marked)]
        ys += [next(r["verification_accuracy"] for r in rows
                    if r["eps"] == e and r["perturbation"] and r["watermark"] == marked)
               for e in eps]
        ax.plot([0] + [e * 255 for e in eps], ys, style,
                label="watermarked" if marked else "no watermark")
    ax.set_xlabel("eps (x/255)")
    ax.set_ylabel("verification accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("adversarial watermarking attack")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
