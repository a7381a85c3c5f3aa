"""The adversarial watermarking attack as a straightforward per-message loop: the peer of the
batched `AdversarialWatermarkAttack` in `benchmarks/test_bench_watermark_attack.py`.

Each step runs the clean probes and then every message through the encoder and the face model
on its own, with a backward per pass, and sums the gradients: the objective, random start,
messages and update are those of the batched attack, so both return the same images up to
float rounding.

Registry interface: an end-to-end bench. `timings` (key "watermark_attack") times the batched
attack against the loop (`measure`; small, and on the CPU: 8 faces, 1 step, 2 messages);
`checks` is empty (tests/test_watermark_attack.py checks that both return the same images).
"""

from __future__ import annotations

import torch

from trustfast._bench.registry import Section
from trustfast.attacks.watermark_attack import AdversarialWatermarkAttack


def loop_attack(attack: AdversarialWatermarkAttack, images: torch.Tensor,
                references: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """One eps, message='random' or a single fixed message; L-inf PGD with a random start,
    returning the last iterate (as the attack does with track_best=False)."""
    if isinstance(attack.eps, (list, tuple)):
        raise ValueError("loop_attack takes a single eps")
    verifier = attack.face_model
    encode = getattr(attack.watermark, "embed", attack.watermark)
    eps, alpha, n = float(attack.eps), float(attack.alpha), images.shape[0]
    with torch.no_grad():
        ref = verifier.embed(references)
    y = same.to(ref).unsqueeze(1) * 2 - 1
    gen = torch.Generator(device=images.device).manual_seed(attack.seed)
    noise = torch.rand(images.shape, generator=gen, device=images.device,
                       dtype=images.dtype) * 2 - 1
    x_adv = torch.clamp(images + noise * eps, 0, 1)
    message_gen = torch.Generator().manual_seed(attack.seed)
    fixed = None
    if attack.message == "fixed":
        fixed = torch.randint(0, 2, (attack.message_bits,),
                              generator=torch.Generator().manual_seed(attack.seed)).float()
    for _ in range(attack.steps):
        if fixed is not None:
            messages = fixed.expand(1, n, attack.message_bits)
        else:
            messages = torch.randint(0, 2, (attack.num_messages, n, attack.message_bits),
                                     generator=message_gen).float()
        x_adv = x_adv.detach().requires_grad_(True)
        clean = verifier.embed(x_adv)
        d = (clean - ref).pow(2).sum(-1)
        margin = y[:, 0] * (verifier.threshold - d)
        loss = attack.stealth_weight * torch.relu(attack.kappa - margin)
        grad = torch.autograd.grad(loss.sum(), x_adv)[0]
        for m in messages:
            marked = verifier.embed(encode(x_adv, m.to(images.device)).clamp(0, 1))
            d = (marked - ref).pow(2).sum(-1)
            margin = y[:, 0] * (verifier.threshold - d)
            term = torch.relu(attack.kappa + margin) / messages.shape[0]
            grad = grad + torch.autograd.grad(term.sum(), x_adv)[0]
        with torch.no_grad():
            stepped = x_adv - alpha * grad.sign()  # minimize
            x_adv = torch.clamp(images + torch.clamp(stepped - images, -eps, eps), 0, 1)
    return x_adv.detach()


def setup(faces: int, steps: int, messages: int, device: str = "cpu", seed: int = 0):
    """(attack, probes, references, same): the tiny IResNet and the experiment's HiDDeN encoder
    at 32x32 with their seeded initial weights (timing does not depend on the weights)."""
    from trustfast.data import face_pairs, synthetic_faces
    from trustfast.experiments.watermark import WatermarkAttackConfig, hidden_config
    from trustfast.faces import FaceVerifier, iresnet
    from trustfast.watermark import WatermarkModel

    torch.manual_seed(seed)
    verifier = FaceVerifier(iresnet("tiny").to(device), threshold=1.0)
    watermark = WatermarkModel(hidden_config(WatermarkAttackConfig())).to(device).eval()
    x, y = synthetic_faces(64, 8, size=32, seed=seed)
    a, b, same = face_pairs(y, faces, seed=seed)
    attack = AdversarialWatermarkAttack(verifier, watermark, eps=4 / 255, steps=steps,
                                        message="random", num_messages=messages,
                                        track_best=False, seed=seed)
    return attack, x[a].to(device), x[b].to(device), same.to(device)


OURS = "trustfast (messages batched)"
PEER = "per-message loop"


def measure(device: str, faces: int = 256, steps: int = 10, messages: int = 4,
            repeats: int = 3) -> list[dict]:
    """Median ms of the batched attack and of the per-message loop (one warm-up each), and
    "trustfast speed-up" = the row's ms / the batched attack's (the loop's row is the ratio)."""
    from trustfast._bench.timing import median_time

    attack, probes, references, same = setup(faces, steps, messages, device)
    runs = {OURS: lambda: attack(probes, references, same),
            PEER: lambda: loop_attack(attack, probes, references, same)}
    ms = {name: 1e3 * median_time(run, torch.device(device), repeats, warmup=1,
                                  calls_per_sample=1) for name, run in runs.items()}
    return [{"variant": name, "faces": faces, "steps": steps, "messages": messages,
             "ms": t, "trustfast speed-up": t / ms[OURS]} for name, t in ms.items()]


def checks(device: torch.device, *, small: bool, backend: str = "triton") -> list[Section]:
    return []


def timings(device: torch.device, repeats: int, *, small: bool, backend: str | None = None,
            ceilings: dict | None = None) -> list[Section]:
    """One section: `measure` at the bench's size (CUDA) or a dry-run size (small, CPU)."""
    device = torch.device(device)
    size = ({"faces": 8, "steps": 1, "messages": 2, "repeats": 1}
            if small or device.type == "cpu" else {})
    return [Section("watermark_attack", "watermark attack timing",
                    lambda: measure(device.type, **size), {"bench": "watermark attack"})]
