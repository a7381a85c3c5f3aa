"""DDPM training of conditional UNets (trustfast.diffusion.train): losses, hooks, EMA parity
with diffusers' EMAModel, exact resume, and refusals."""

import math
import os

import pytest
import torch

from trustfast.config import ConfigError
from trustfast.diffusion.models import label_unet, null_label, token_unet
from trustfast.diffusion.train import (
    DiffusionTrainConfig,
    clean_estimate,
    diffusion_loss,
    noise_scheduler,
    train_diffusion,
)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
COLORS = torch.tensor([[0.9, 0.15, 0.1], [0.1, 0.3, 0.9]])


def flat_colours(n: int = 16, size: int = 16):
    """n flat images: label i % 2 has colour COLORS[i % 2] (a trivially learnable set)."""
    return [(COLORS[i % 2].view(3, 1, 1).expand(3, size, size).clone(), i % 2, "extra")
            for i in range(n)]


def noisy_images(n: int = 24, size: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=gen)
    return [(images[i], i % 2) for i in range(n)]


def config(**kw):
    base = dict(max_steps=3, batch_size=8, lr=1e-3, ema_decay=0.0)
    return DiffusionTrainConfig(**{**base, **kw})


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_defaults_are_the_papers():
    cfg = DiffusionTrainConfig()
    assert (cfg.num_train_timesteps, cfg.beta_schedule, cfg.beta_start, cfg.beta_end) == \
        (1000, "linear", 1e-4, 0.02)
    assert (cfg.lr, cfg.label_dropout, cfg.ema_decay, cfg.grad_clip) == (1e-4, 0.1, 0.999, 1.0)
    assert (cfg.prediction_type, cfg.optimizer, cfg.mixed_precision, cfg.num_workers) == \
        ("epsilon", "adamw", "no", 0)
    sched = noise_scheduler(cfg)
    assert sched.config.num_train_timesteps == 1000
    torch.testing.assert_close(sched.betas, torch.linspace(1e-4, 0.02, 1000))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loss_target_and_clean_estimate(prediction_type):
    """The target is the noise / DDPMScheduler.get_velocity, and v = sqrt(abar) e -
    sqrt(1 - abar) x0 (Salimans & Ho 2022); the x0 estimate inverts the forward process."""
    cfg = config(prediction_type=prediction_type)
    sched = noise_scheduler(cfg)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 16, 16, generator=gen) * 2 - 1
    noise = torch.randn(4, 3, 16, 16, generator=gen)
    t = torch.tensor([0, 10, 500, 999])
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)[t]
    a, s = abar.sqrt().view(-1, 1, 1, 1), (1 - abar).sqrt().view(-1, 1, 1, 1)
    target = noise if prediction_type == "epsilon" else (a * noise - s * x0).float()
    if prediction_type == "v_prediction":
        torch.testing.assert_close(sched.get_velocity(x0, noise, t), target, atol=1e-5,
                                   rtol=1e-5)
    model = label_unet(2, sample_size=16)
    labels = torch.tensor([0, 1, 2, 0])
    loss, per_sample, x0_pred = diffusion_loss(model, sched, x0, labels, noise, t,
                                               prediction_type=prediction_type, return_x0=True)
    x_t = (a * x0 + s * noise).float()
    pred = model(x_t, t, class_labels=labels).sample
    torch.testing.assert_close(per_sample, ((pred - target) ** 2).mean((1, 2, 3)), atol=1e-5,
                               rtol=1e-4)
    torch.testing.assert_close(loss, per_sample.mean())
    # fed the true prediction, the clean estimate is x0 itself
    torch.testing.assert_close(clean_estimate(sched, x_t, target, t, prediction_type), x0,
                               atol=2e-3 if prediction_type == "epsilon" else 1e-5, rtol=1e-3)
    w = torch.tensor([0.0, 1.0, 2.0, 0.5])
    weighted, _ = diffusion_loss(model, sched, x0, labels, noise, t,
                                 prediction_type=prediction_type, weights=w)
    torch.testing.assert_close(weighted, (w * per_sample).mean(), atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_learns_label_colours_known_answer():
    """Two flat colours, one per label: the loss falls, and the samples of each label have the
    label's mean colour (known answer). v-prediction: at this budget an epsilon model's
    samples are still grey (its x0 estimate at t near T divides by sqrt(abar_T) = 0.006)."""
    from trustfast.diffusion.sampling import generate

    cfg = DiffusionTrainConfig(max_steps=250, batch_size=8, lr=2e-3, ema_decay=0.99,
                               prediction_type="v_prediction")
    result = train_diffusion(label_unet(2, sample_size=16), flat_colours(), cfg, progress=False)
    assert result.steps == 250 and len(result.losses) == 250
    first, last = sum(result.losses[:20]) / 20, sum(result.losses[-20:]) / 20
    assert last < 0.3 * first, (first, last)
    labels = torch.tensor([0, 1] * 4)
    images = generate(result.model, labels, steps=20, seed=0, train_config=cfg, progress=False)
    for label in (0, 1):
        mean = images[labels == label].mean((0, 2, 3))
        assert (mean - COLORS[label]).abs().max() < 0.1, (label, mean)


def test_zero_weight_samples_have_no_effect():
    """Zero-weighted items change nothing: replacing their images gives the same weights, and
    all-zero weights (no weight decay) leave the model as it was."""
    data = noisy_images()
    other = [(torch.rand(3, 16, 16) if i % 3 == 0 else img, y) for i, (img, y) in
             enumerate(data)]
    w = torch.tensor([0.0 if i % 3 == 0 else 1.0 for i in range(len(data))])
    a = train_diffusion(label_unet(2, sample_size=16), data, config(), loss_weight=w,
                        progress=False)
    b = train_diffusion(label_unet(2, sample_size=16), other, config(), loss_weight=w,
                        progress=False)
    torch.testing.assert_close(params(a.model), params(b.model), atol=1e-7, rtol=0)
    assert a.losses == pytest.approx(b.losses, rel=1e-6)
    start = params(label_unet(2, sample_size=16))
    zero = train_diffusion(label_unet(2, sample_size=16), data, config(),
                           loss_weight=lambda idx, y: torch.zeros(len(idx)), progress=False)
    assert torch.equal(params(zero.model), start) and zero.losses == [0.0] * 3


def test_regularizer_sees_clean_estimate_labels_indices_and_its_gradient_flows():
    seen = []
    data = noisy_images()

    def reg(x0_pred, labels, indices, t):
        seen.append((x0_pred.detach(), labels, indices, t))
        assert x0_pred.requires_grad and x0_pred.shape == (8, 3, 16, 16)
        return 10.0 * x0_pred.mean() ** 2

    start = params(label_unet(2, sample_size=16))
    res = train_diffusion(label_unet(2, sample_size=16), data, config(label_dropout=1.0),
                          loss_weight=torch.zeros(len(data)), regularizer=reg, progress=False)
    assert len(seen) == 3
    for _, labels, indices, t in seen:
        assert torch.equal(labels, indices % 2)  # the items' labels, not the null label
        assert t.min() >= 0 and t.max() < 1000
    assert not torch.equal(params(res.model), start)  # only the regularizer had a gradient
    assert res.losses[0] == pytest.approx(float(10 * seen[0][0].mean() ** 2), rel=1e-5)


def test_label_dropout_puts_the_null_label_in():
    model = label_unet(3, sample_size=16)
    got = []
    model.class_embedding.register_forward_hook(lambda m, i, o: got.append(i[0].clone()))
    train_diffusion(model, noisy_images(), config(max_steps=1, label_dropout=1.0),
                    progress=False)
    assert torch.equal(got[0], torch.full((8,), null_label(model)))
    got.clear()
    train_diffusion(model, noisy_images(), config(max_steps=1, label_dropout=0.0),
                    progress=False)
    assert set(got[0].tolist()) <= {0, 1}


def test_v_prediction_trains():
    res = train_diffusion(label_unet(2, sample_size=16), noisy_images(),
                          config(prediction_type="v_prediction", max_steps=2), progress=False)
    assert res.steps == 2 and all(math.isfinite(v) for v in res.losses)


def test_token_unet_trains_and_dropout_zeros_the_embeddings():
    model = token_unet(in_channels=3, sample_size=16)
    got = []
    attn = next(m for n, m in model.named_modules() if n.endswith("attn2"))
    attn.register_forward_hook(lambda m, a, k, o: got.append(k["encoder_hidden_states"]),
                               with_kwargs=True)
    gen = torch.Generator().manual_seed(0)
    data = [(img, torch.randn(4, 32, generator=gen) + 1) for img, _ in noisy_images(8)]
    res = train_diffusion(model, data, config(max_steps=1, label_dropout=1.0), progress=False)
    assert torch.equal(got[0], torch.zeros(8, 4, 32)) and math.isfinite(res.losses[0])
    got.clear()
    train_diffusion(model, data, config(max_steps=1, label_dropout=0.0), progress=False)
    assert got[0].abs().min() > 0
    with pytest.raises(TypeError, match="encoder_hidden_states"):
        train_diffusion(model, noisy_images(8), config(max_steps=1), progress=False)


def test_ema_matches_diffusers_ema_model_on_the_same_updates():
    from diffusers.training_utils import EMAModel

    data = noisy_images()
    res = train_diffusion(label_unet(2, sample_size=16), data, config(ema_decay=0.9),
                          progress=False)
    raw = res.raw_state
    assert raw is not None
    assert not torch.equal(torch.cat([v.flatten() for v in raw.values()]), params(res.model))
    ema = EMAModel(label_unet(2, sample_size=16).parameters(), decay=0.9)
    for k in (1, 2, 3):  # the raw trajectory: EMA does not change the training steps
        step_k = train_diffusion(label_unet(2, sample_size=16), data, config(max_steps=k),
                                 progress=False)
        ema.step(step_k.model.parameters())
    assert torch.equal(torch.cat([v.flatten() for v in raw.values()]), params(step_k.model))
    torch.testing.assert_close(params(res.model), torch.cat([p.flatten()
                                                             for p in ema.shadow_params]),
                               atol=0, rtol=0)


class EvenFirst(torch.utils.data.Sampler):
    """A deterministic sampler: even indices then odd ones, rotated by the epoch."""

    def __init__(self, n):
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        order = list(range(0, self.n, 2)) + list(range(1, self.n, 2))
        k = self.epoch % self.n
        return iter(order[k:] + order[:k])

    def __len__(self):
        return self.n


class Killed(Exception):
    pass


@pytest.mark.parametrize(("optimizer", "use_sampler"), [("adamw", False),
                                                        ("masked_adamw", True)])
def test_exact_resume_after_a_kill(tmp_path, optimizer, use_sampler):
    """2N steps in one go == N steps, a kill after the checkpoint, and a resume to 2N:
    bit-identical weights, EMA and losses (24 items, batch 8: the kill is mid-epoch)."""
    data = noisy_images()
    cfg = config(max_steps=8, checkpoint_every=4, ema_decay=0.9, optimizer=optimizer,
                 label_dropout=0.3)
    sampler = EvenFirst(len(data)) if use_sampler else None
    full = train_diffusion(label_unet(2, sample_size=16), data, cfg, out=str(tmp_path / "a"),
                           sampler=sampler, progress=False)
    calls = []

    def weight(indices, labels):
        calls.append(1)
        if len(calls) == 6:  # during step 6, after the checkpoint of step 4
            raise Killed
        return torch.ones(len(indices))

    with pytest.raises(Killed):
        train_diffusion(label_unet(2, sample_size=16), data, cfg, out=str(tmp_path / "b"),
                        sampler=sampler, loss_weight=weight, progress=False)
    resumed = train_diffusion(label_unet(2, sample_size=16, seed=5), data, cfg,
                              out=str(tmp_path / "b"), resume=True, sampler=sampler,
                              loss_weight=lambda i, y: torch.ones(len(i)), progress=False)
    assert resumed.losses == full.losses and resumed.steps == 8
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    for k, v in full.raw_state.items():
        assert torch.equal(v, resumed.raw_state[k]), k
    # resuming a finished run trains nothing more
    again = train_diffusion(label_unet(2, sample_size=16), data, cfg, out=str(tmp_path / "a"),
                            resume=True, sampler=sampler, progress=False)
    assert again.losses == full.losses and torch.equal(params(again.model), params(full.model))


def test_resume_with_another_config_is_refused_naming_keys(tmp_path):
    data = noisy_images()
    train_diffusion(label_unet(2, sample_size=16), data, config(max_steps=1), out=str(tmp_path),
                    progress=False)
    assert os.path.exists(tmp_path / "diffusion.safetensors")
    with pytest.raises(ValueError, match=r"\['lr', 'seed'\]"):
        train_diffusion(label_unet(2, sample_size=16), data, config(lr=1e-2, seed=3),
                        out=str(tmp_path), resume=True, progress=False)
    longer = train_diffusion(label_unet(2, sample_size=16), data, config(max_steps=2),
                             out=str(tmp_path), resume=True, progress=False)
    assert longer.steps == 2
    with pytest.raises(ValueError, match="weights"):
        train_diffusion(label_unet(3, sample_size=16), data, config(max_steps=2),
                        out=str(tmp_path), resume=True, progress=False)


def test_nonfinite_gradient_skips_the_step():
    start = params(label_unet(2, sample_size=16))
    with pytest.warns(RuntimeWarning, match="non-finite"):
        res = train_diffusion(label_unet(2, sample_size=16), noisy_images(), config(),
                              regularizer=lambda x, y, i, t: x.sum() * float("nan"),
                              progress=False)
    assert res.nonfinite_skips == 3 and torch.equal(params(res.model), start)


def test_warmup_scales_the_first_step():
    data = noisy_images()
    a = train_diffusion(label_unet(2, sample_size=16), data,
                        config(max_steps=1, lr=1e-2, lr_warmup_steps=10), progress=False)
    b = train_diffusion(label_unet(2, sample_size=16), data, config(max_steps=1, lr=1e-3),
                        progress=False)
    assert torch.equal(params(a.model), params(b.model))


def test_epochs_count_full_batches():
    res = train_diffusion(label_unet(2, sample_size=16), noisy_images(20),
                          config(max_steps=0, epochs=2), progress=False)
    assert res.steps == 4  # 20 items, batch 8: 2 full batches per epoch


@pytest.mark.parametrize(("kwargs", "key"), [
    (dict(prediction_type="x0"), "prediction_type"), (dict(label_dropout=1.5), "label_dropout"),
    (dict(ema_decay=1.0), "ema_decay"), (dict(optimizer="sgd"), "optimizer"),
    (dict(mixed_precision="fp8"), "mixed_precision"), (dict(batch_size=0), "batch_size"),
    (dict(lr="fast"), "lr"), (dict(beta_start=0.1, beta_end=0.01), "beta_end"),
    (dict(grad_clip=-1), "grad_clip"), (dict(checkpoint_every=-1), "checkpoint_every"),
])
def test_config_refuses_bad_fields(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        DiffusionTrainConfig(**kwargs)


def test_train_refuses_bad_arguments(tmp_path):
    model, data = label_unet(2, sample_size=16), noisy_images()
    run = lambda **kw: train_diffusion(kw.pop("model", model), kw.pop("data", data),  # noqa: E731
                                       kw.pop("cfg", config(max_steps=1)), progress=False, **kw)
    with pytest.raises(ValueError, match="mixed_precision"):
        run(cfg=config(mixed_precision="bf16"))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        run(data=[(img, 2) for img, _ in data])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        run(data=[(img * 2, y) for img, y in data])
    with pytest.raises(ValueError, match="3 channels"):
        run(data=[(img[:1], y) for img, y in data])
    with pytest.raises(TypeError, match="items"):
        run(data=[img for img, _ in data])
    with pytest.raises(TypeError, match="labels must be ints"):
        run(data=[(img, 0.5) for img, _ in data])
    with pytest.raises(ValueError, match="batch_size"):
        run(data=data[:4])
    with pytest.raises(ValueError, match="loss_weight"):
        run(loss_weight=torch.ones(3))
    with pytest.raises(ValueError, match="loss_weight"):
        run(loss_weight=-torch.ones(len(data)))
    with pytest.raises(ValueError, match="loss_weight"):
        run(loss_weight=lambda i, y: torch.ones(3))
    with pytest.raises(TypeError, match="sampler"):
        run(sampler=[0, 1, 2])
    with pytest.raises(TypeError, match="regularizer"):
        run(regularizer=lambda x, y, i, t: torch.ones(2))
    with pytest.raises(ValueError, match="resume"):
        run(resume=True)
    with pytest.raises(TypeError, match="model"):
        run(model=torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(TypeError, match="config"):
        run(cfg={"lr": 1e-3})
    with pytest.raises(ValueError, match="empty"):
        run(data=[])
