"""The adversarial watermarking attack on face verification: a perturbation that does nothing
on its own and breaks face matching once a watermark is embedded.

For a probe x, its reference r and y = +1 (same person) or -1 (different people), with d the
squared distance of normalized embeddings and tau the verifier's threshold (match iff d < tau),
the margin of a correct decision is y (tau - d). The attack minimizes, within ||delta||_inf <= eps
and x + delta in [0, 1]:

    w_s * relu(kappa - y (tau - d(x + delta, r)))              stealth: still decided correctly
    + E_m relu(kappa + y (tau - d(W(x + delta, m), r)))       activation: wrong once watermarked

where W(., m) is the watermark encoder with message m. With message="random" the expectation
runs over `num_messages` fresh random messages at every step (expectation over
transformations), so the perturbation works for messages it never saw; with "fixed" it targets
one message. All messages of a step go through the encoder and the face model as one batch. The
update is `trustfast.attacks.PGD` and its fused step.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from trustfast.attacks.pgd import PGD, budget_list
from trustfast.checks import check_choice, check_images, check_number, check_tensor, shown

MESSAGES = ("fixed", "random")


class _Watermarked(nn.Module):
    """x -> embeddings (N, 1 + M, D) of x and of W(x, m_1..M), in one batch."""

    def __init__(self, verifier, watermark, bits: int, message: str, num_messages: int,
                 fixed: torch.Tensor | None, seed: int):
        super().__init__()
        self.verifier = verifier
        self.watermark = watermark  # a submodule when it is one: PGD puts it in eval mode
        self.encode = getattr(watermark, "embed", watermark)
        self.bits, self.message, self.num_messages, self.fixed = bits, message, num_messages, fixed
        self.seed = seed
        self.generator: torch.Generator | None = None

    def messages(self, n: int, device) -> torch.Tensor:
        if self.message == "fixed":
            return self.fixed.to(device).expand(1, n, self.bits)
        if self.generator is None:
            self.generator = torch.Generator().manual_seed(self.seed)
        return torch.randint(0, 2, (self.num_messages, n, self.bits),
                             generator=self.generator).float().to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        m = self.messages(n, x.device)
        count = m.shape[0]
        marked = self.encode(x.repeat(count, 1, 1, 1), m.reshape(count * n, self.bits))
        emb = self.verifier.embed(torch.cat([x, marked.clamp(0, 1)]))
        return emb.view(1 + count, n, -1).transpose(0, 1)


def _check_references(images: torch.Tensor, references: torch.Tensor,
                      same: torch.Tensor, names: tuple[str, str] = ("images",
                                                                    "references")) -> None:
    """images and references: float NCHW in [0, 1] of one shape; same: bool (N,)."""
    check_images(names[0], images)
    if isinstance(references, torch.Tensor) and references.shape != images.shape:
        raise ValueError(f"{names[1]} must be images shaped like {names[0]} "
                         f"{tuple(images.shape)}, got {tuple(references.shape)}")
    check_images(names[1], references)
    check_tensor("same", same, dtypes=(torch.bool,), shape=(images.shape[0],),
                 hint="True where the pair shows one person")


class AdversarialWatermarkAttack:
    """Craft perturbations that keep a face pair's verification decision until the probe is
    watermarked, then flip it. Call as `atk(images, references, same)`.

    Args:
        face_model: a `trustfast.faces.FaceVerifier` (embed(x) differentiable in x, threshold).
        watermark_encoder: a `trustfast.watermark.WatermarkModel` (its `embed(images, bits)`) or
            any callable (images, bits) -> watermarked images, differentiable in images.
        eps: L-inf budget in the [0, 1] image scale (4/255, not 4; a float, or a list attacked
            in one batch as PGD does); values above 1 are refused.
        steps, alpha: PGD steps (an int >= 1) and step size (in [0, 1]; default alpha:
            2.5 eps / steps, Madry et al.'s rule; eps / 8 at 20 steps, which on the built-in
            faces left 0.40 of genuine pairs matched at 4/255 where eps / 4 left 0.45).
        message: "fixed" (one message: `bits` at call time or a seeded random one) or "random"
            (`num_messages` fresh random messages per step).
        message_bits: length of the watermark message (taken from the encoder's config when it
            has one).
        kappa: hinge margin on the squared distance; stealth_weight: w_s.
        track_best: return each probe's lowest-loss iterate over the steps (PGD's track_best),
            not the last one: the hinge terms pull a probe into a narrow band below the
            threshold, which a fixed step size can overshoot at the last step.
        restarts: random starts, run as one batch; each probe keeps its lowest-loss one.
        seed: seeds the random start and the random messages.
        backend: backend of the fused PGD step.
    """

    def __init__(self, face_model, watermark_encoder, eps: float | list[float] = 4 / 255,
                 steps: int = 20, alpha: float | None = None, message: str = "fixed",
                 num_messages: int = 4, message_bits: int | None = None, kappa: float = 0.02,
                 stealth_weight: float = 1.0, track_best: bool = True, restarts: int = 1,
                 seed: int = 0, backend: str | None = None):
        if not hasattr(face_model, "embed") or not hasattr(face_model, "threshold"):
            raise TypeError("face_model must be a FaceVerifier-like object with embed(x) and "
                            f"threshold, got {type(face_model).__name__}")
        encode = getattr(watermark_encoder, "embed", watermark_encoder)
        if not callable(encode):
            raise TypeError("watermark_encoder must be a WatermarkModel or a callable "
                            "(images, bits) -> images")
        check_choice("message", message, MESSAGES)
        num_messages = check_number("num_messages", num_messages, low=1, integer=True)
        steps = check_number("steps", steps, low=1, integer=True)
        restarts = check_number("restarts", restarts, low=1, integer=True)
        seed = check_number("seed", seed, low=0, integer=True)
        if not isinstance(track_best, bool):
            raise TypeError(f"track_best must be a bool, got {shown(track_best)}")
        eps_values = budget_list("eps", eps)
        if message_bits is None:
            config = getattr(watermark_encoder, "config", None)
            message_bits = getattr(config, "message_bits", None)
        if message_bits is None:
            raise ValueError("message_bits must be an int >= 1 (pass it when the encoder has no "
                             "config.message_bits), got None")
        message_bits = check_number("message_bits", message_bits, low=1, integer=True)
        kappa = float(check_number("kappa", kappa, low=0.0))
        stealth_weight = float(check_number("stealth_weight", stealth_weight, low=0.0))
        if alpha is None:
            alpha = [2.5 * e / steps for e in eps_values]
            alpha = alpha if isinstance(eps, (list, tuple)) else alpha[0]
        else:
            budget_list("alpha", alpha)
        self.face_model, self.watermark = face_model, watermark_encoder
        self.eps, self.steps, self.alpha = eps, steps, alpha
        self.message, self.num_messages, self.message_bits = message, num_messages, message_bits
        self.kappa, self.stealth_weight, self.seed, self.backend = (kappa, stealth_weight, seed,
                                                                    backend)
        self.track_best, self.restarts = track_best, restarts

    def objective(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-sample loss from embeddings (N, 1 + M, D) and labels (N, D + 1) = [reference
        embedding, y]."""
        ref, y = labels[:, :-1], labels[:, -1]
        d = (outputs - ref.unsqueeze(1)).pow(2).sum(-1)  # (N, 1 + M)
        margin = y.unsqueeze(1) * (self.face_model.threshold - d)
        stealth = torch.relu(self.kappa - margin[:, 0])
        activation = torch.relu(self.kappa + margin[:, 1:]).mean(1)
        return self.stealth_weight * stealth + activation

    def _pgd(self, fixed: torch.Tensor | None) -> PGD:
        model = _Watermarked(self.face_model, self.watermark, self.message_bits, self.message,
                             self.num_messages, fixed, self.seed)
        return PGD(model, eps=self.eps, alpha=self.alpha, steps=self.steps, loss=self.objective,
                   targeted=True, track_best=self.track_best, restarts=self.restarts,
                   seed=self.seed,
                   backend=self.backend)

    def __call__(self, images: torch.Tensor, references: torch.Tensor, same: torch.Tensor,
                 bits: torch.Tensor | None = None) -> torch.Tensor:
        """Adversarial probes shaped like `images` ((len(eps), ...) for a list of eps).

        images, references: float NCHW in [0, 1] of one shape (NaN/Inf refused); same: bool
        (N,); bits: 0/1 values, one message or one per image (message='fixed' only)."""
        _check_references(images, references, same)
        fixed = None
        if self.message == "fixed":
            if bits is None:
                gen = torch.Generator().manual_seed(self.seed)
                bits = torch.randint(0, 2, (self.message_bits,), generator=gen).float()
            if isinstance(bits, torch.Tensor) and not (bits.is_floating_point()
                                                       or bits.dtype == torch.bool):
                bits = bits.float()
            if not isinstance(bits, torch.Tensor):
                raise TypeError(f"bits must be a tensor of 0/1 values, got {shown(bits)}")
            bits = bits.to(torch.float32)
            if bits.shape[-1] != self.message_bits or bits.dim() > 2 or \
                    not bool(((bits == 0) | (bits == 1)).all()):
                raise ValueError(f"bits must hold {self.message_bits} values in {{0, 1}} (one "
                                 f"message, or one per image), got shape {tuple(bits.shape)}")
            fixed = bits.reshape(1, -1, self.message_bits)
            if fixed.shape[1] not in (1, images.shape[0]):
                raise ValueError(f"bits must be one message or {images.shape[0]} messages")
        elif bits is not None:
            raise ValueError("bits is only used with message='fixed'")
        with torch.no_grad():
            ref = self.face_model.embed(references)
        labels = torch.cat([ref, same.to(ref).unsqueeze(1) * 2 - 1], dim=1)
        pgd = self._pgd(fixed)
        if fixed is not None and fixed.shape[1] > 1:
            # per-image messages follow their image through PGD's tiling of eps values
            pgd.model.fixed = fixed.repeat(1, len(pgd.eps_list) * pgd.restarts, 1)
        return pgd(images, labels)


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
    them when message='random').

    probes, references: float NCHW in [0, 1] of one shape; same: bool (N,); eps: a non-empty
    list of L-inf budgets in [0, 1] (8/255, not 8); the other arguments as in
    `AdversarialWatermarkAttack`."""
    _check_references(probes, references, same, names=("probes", "references"))
    if not isinstance(eps, (list, tuple)) or not eps:
        raise TypeError(f"eps must be a non-empty list of budgets (e.g. [4/255, 8/255]), got "
                        f"{shown(eps)}")
    budget_list("eps", eps)
    if not callable(getattr(watermark, "embed", None)) or \
            not callable(getattr(watermark, "decode", None)) or \
            getattr(getattr(watermark, "config", None), "message_bits", None) is None:
        raise TypeError(f"watermark must be a trustfast.watermark.WatermarkModel (embed, decode, "
                        f"config.message_bits), got {shown(watermark)}")
    seed = check_number("seed", seed, low=0, integer=True)
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
