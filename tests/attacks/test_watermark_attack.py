"""AdversarialWatermarkAttack: invariants, the objective against a hand computation, batched
messages against the per-message loop, and errors. (The end-to-end four-cell table on trained
models is in test_watermark_attack_e2e.py.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trustfast._bench.watermark_attack import loop_attack
from trustfast.attacks.watermark_attack import AdversarialWatermarkAttack
from trustfast.faces import FaceVerifier, iresnet

BITS = 8


class _Encoder(nn.Module):
    """A differentiable stand-in watermark: adds a message-dependent pattern."""

    def __init__(self, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.patterns = nn.Parameter(torch.randn(BITS, 3, 16, 16, generator=gen) * 0.02,
                                     requires_grad=False)

    def forward(self, images, bits):
        signs = bits * 2 - 1
        return images + torch.einsum("nb,bchw->nchw", signs, self.patterns) * (1 + images)


def _setup(n=6, seed=0):
    torch.manual_seed(seed)
    model = iresnet([1, 1, 1, 1], embedding_dim=16, width=8, input_size=16)
    verifier = FaceVerifier(model, threshold=1.0)
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand(n, 3, 16, 16, generator=gen)
    b = torch.rand(n, 3, 16, 16, generator=gen)
    same = torch.arange(n) % 2 == 0
    return verifier, _Encoder(seed), a, b, same


@pytest.mark.parametrize("message", ["random", "fixed"])
def test_perturbation_stays_in_the_ball_and_the_pixel_range(message):
    verifier, enc, a, b, same = _setup()
    eps = [2 / 255, 8 / 255]
    atk = AdversarialWatermarkAttack(verifier, enc, eps=eps, steps=5, message=message,
                                     message_bits=BITS, num_messages=3)
    adv = atk(a, b, same)
    assert adv.shape == (2, *a.shape)
    for e, x in zip(eps, adv):
        assert float((x - a).abs().max()) <= e + 1e-6
        assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert float((adv[1] - a).abs().max()) > 2 / 255  # the larger budget is used


def test_objective_matches_the_hinge_formula():
    verifier, enc, a, b, same = _setup(n=4)
    atk = AdversarialWatermarkAttack(verifier, enc, eps=4 / 255, message_bits=BITS, kappa=0.2,
                                     stealth_weight=0.5)
    gen = torch.Generator().manual_seed(3)
    out = nn.functional.normalize(torch.randn(4, 3, 16, generator=gen), dim=-1)
    ref = nn.functional.normalize(torch.randn(4, 16, generator=gen), dim=-1)
    y = torch.tensor([1.0, -1.0, 1.0, -1.0])
    got = atk.objective(out, torch.cat([ref, y[:, None]], 1))
    tau = verifier.threshold
    for i in range(4):
        d = [float(((out[i, j] - ref[i]) ** 2).sum()) for j in range(3)]
        stealth = max(0.0, 0.2 - y[i].item() * (tau - d[0]))
        act = sum(max(0.0, 0.2 + y[i].item() * (tau - dj)) for dj in d[1:]) / 2
        assert float(got[i]) == pytest.approx(0.5 * stealth + act, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("message", ["random", "fixed"])
def test_batched_messages_equal_the_per_message_loop(message, one_intra_op_thread):
    verifier, enc, a, b, same = _setup(n=5)
    atk = AdversarialWatermarkAttack(verifier, enc, eps=4 / 255, steps=4, message=message,
                                     message_bits=BITS, num_messages=3, track_best=False, seed=7)
    batched = atk(a, b, same)
    looped = loop_attack(atk, a, b, same)
    # same objective, messages and start: equal up to sign flips of gradients that round to ~0
    differ = (batched - looped).abs() > 1e-5
    assert differ.float().mean() < 0.01


def test_the_attack_lowers_its_objective():
    verifier, enc, a, b, same = _setup(n=8)
    atk = AdversarialWatermarkAttack(verifier, enc, eps=16 / 255, steps=10, message="fixed",
                                     message_bits=BITS, seed=0)
    bits = torch.randint(0, 2, (BITS,), generator=torch.Generator().manual_seed(0)).float()

    def loss(x):
        with torch.no_grad():
            ref = verifier.embed(b)
            emb = torch.stack([verifier.embed(x), verifier.embed(enc(x, bits.expand(8, BITS))
                                                               .clamp(0, 1))], 1)
            return atk.objective(emb, torch.cat([ref, (same.float() * 2 - 1)[:, None]], 1))

    adv = atk(a, b, same, bits=bits)
    assert float(loss(adv).mean()) < 0.8 * float(loss(a).mean())


def test_bad_arguments_are_named():
    verifier, enc, a, b, same = _setup()
    with pytest.raises(ValueError, match="message"):
        AdversarialWatermarkAttack(verifier, enc, message="both", message_bits=BITS)
    with pytest.raises(ValueError, match="message_bits"):
        AdversarialWatermarkAttack(verifier, enc)
    with pytest.raises(TypeError, match="face_model"):
        AdversarialWatermarkAttack(nn.Linear(2, 2), enc, message_bits=BITS)
    atk = AdversarialWatermarkAttack(verifier, enc, message_bits=BITS, message="fixed")
    with pytest.raises(ValueError, match="references"):
        atk(a, b[:2], same)
    with pytest.raises(ValueError, match="same"):
        atk(a, b, same[:2])
    with pytest.raises(ValueError, match="bits"):
        atk(a, b, same, bits=torch.ones(BITS + 1))
    with pytest.raises(ValueError, match="bits"):
        AdversarialWatermarkAttack(verifier, enc, message_bits=BITS, message="random")(
            a, b, same, bits=torch.ones(BITS))


@pytest.mark.parametrize("argv, message", [
    (["--eps", "300"], "eps must be"), (["--steps", "0"], "steps must be"),
    (["--set", "image_size=40"], "image_size must be a multiple of 16"),
    (["--set", "image_size=8", "--face-model", "x"], "image_size must be >= 16"),
])
def test_cli_rejects_bad_settings(argv, message, capsys):
    from trustfast.cli import main

    with pytest.raises(SystemExit):
        main(["watermark-attack", *argv])
    assert message in capsys.readouterr().err


def test_config_file_rejects_unknown_keys(tmp_path, capsys):
    from trustfast.cli import main

    path = tmp_path / "cfg.yaml"
    path.write_text("epz: [0.01]\n")
    with pytest.raises(SystemExit):
        main(["watermark-attack", "--config", str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert "unknown config keys ['epz']" in err and "cfg.yaml" in err


def test_track_best_returns_each_probes_lowest_loss_iterate():
    """With a fixed message the objective is deterministic: the tracked iterate's loss is at most
    the last iterate's, probe by probe, and below it for some probe (the fixed step overshoots)."""
    verifier, enc, a, b, same = _setup(n=8)
    bits = torch.randint(0, 2, (BITS,), generator=torch.Generator().manual_seed(0)).float()
    with torch.no_grad():
        ref = verifier.embed(b)
    labels = torch.cat([ref, (same.float() * 2 - 1)[:, None]], 1)

    def loss(atk, x):
        with torch.no_grad():
            emb = torch.stack([verifier.embed(x), verifier.embed(enc(x, bits.expand(8, BITS))
                                                               .clamp(0, 1))], 1)
            return atk.objective(emb, labels)

    kwargs = dict(eps=16 / 255, steps=8, alpha=8 / 255, message="fixed", message_bits=BITS,
                  kappa=0.05, seed=0)
    best_atk = AdversarialWatermarkAttack(verifier, enc, track_best=True, **kwargs)
    last_atk = AdversarialWatermarkAttack(verifier, enc, track_best=False, **kwargs)
    best, last = loss(best_atk, best_atk(a, b, same, bits=bits)), \
        loss(last_atk, last_atk(a, b, same, bits=bits))
    assert bool((best <= last + 1e-6).all()), (best, last)
    assert bool((best < last - 1e-4).any()), (best, last)


def test_a_loaded_face_model_must_match_image_size(tmp_path, capsys):
    from trustfast.cli import main
    from trustfast.data import synthetic_faces
    from trustfast.faces.train import FaceTrainConfig, train_face_model

    x, y = synthetic_faces(3, 4, 16, seed=0)
    folder = str(tmp_path / "face16")
    train_face_model(x, y, FaceTrainConfig(epochs=1, batch_size=12), checkpoint_dir=folder,
                     progress=False)
    with pytest.raises(SystemExit):
        main(["watermark-attack", "--face-model", folder, "--device", "cpu", "--set",
              "image_size=32", "--set", "test_identities=3", "--set", "test_images=3",
              "--set", "pairs_count=4", "--set", "train_identities=2", "--set",
              "train_images=2", "--out", str(tmp_path / "o")])
    assert "image_size must be the face model's input size (16), got 32" in \
        capsys.readouterr().err
