"""Seeded, batched, guided sampling (trustfast.diffusion.sampling)."""

import pytest
import torch

from trustfast.diffusion.models import label_unet, null_label, token_unet
from trustfast.diffusion.sampling import SCHEDULERS, generate, sampling_scheduler
from trustfast.diffusion.train import DiffusionTrainConfig

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
LABELS = torch.tensor([0, 1, 2, 1, 0])


@pytest.fixture(scope="module")
def model():
    return label_unet(3, sample_size=16, seed=0)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_seeded_and_independent_of_batch_size(model, scheduler):
    a = generate(model, LABELS, steps=4, scheduler=scheduler, seed=1, batch_size=2,
                 guidance_scale=1.5, progress=False)
    b = generate(model, LABELS, steps=4, scheduler=scheduler, seed=1, batch_size=5,
                 guidance_scale=1.5, progress=False)
    c = generate(model, LABELS, steps=4, scheduler=scheduler, seed=2, batch_size=5,
                 guidance_scale=1.5, progress=False)
    assert a.shape == (5, 3, 16, 16) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    # oneDNN convolutions block differently by batch size: 1e-6-level differences only
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert (a - c).abs().max() > 0.05
    again = generate(model, LABELS, steps=4, scheduler=scheduler, seed=1, batch_size=2,
                     guidance_scale=1.5, progress=False)
    assert torch.equal(a, again)
    # sample i depends on (seed, i) only: a prefix of the labels gives the prefix
    torch.testing.assert_close(generate(model, LABELS[:2], steps=4, scheduler=scheduler, seed=1,
                                        batch_size=2, guidance_scale=1.5, progress=False),
                               a[:2], atol=1e-4, rtol=0)


def test_guidance_zero_is_the_unconditional_path(model):
    g0 = generate(model, LABELS, steps=3, guidance_scale=0.0, progress=False)
    null = torch.full_like(LABELS, null_label(model))
    assert torch.equal(g0, generate(model, null, steps=3, progress=False))
    assert not torch.equal(g0, generate(model, LABELS, steps=3, progress=False))


def test_guided_ddim_matches_a_hand_written_loop(model):
    """eps = eps_u + g (eps_c - eps_u) through DDIM (eta 0), written out with diffusers'
    DDIMScheduler on the default training schedule."""
    from diffusers import DDIMScheduler

    from trustfast.diffusion.train import seeded_generator

    g, steps, seed = 3.0, 3, 4
    got = generate(model, LABELS, steps=steps, guidance_scale=g, seed=seed, progress=False)
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                          beta_schedule="linear", clip_sample=True)
    sched.set_timesteps(steps)
    x = torch.stack([torch.randn(3, 16, 16, generator=seeded_generator(seed, 2, i))
                     for i in range(len(LABELS))])
    null = torch.full_like(LABELS, null_label(model))
    model.eval()
    with torch.no_grad():
        for t in sched.timesteps:
            eps_c = model(x, t, class_labels=LABELS).sample
            eps_u = model(x, t, class_labels=null).sample
            x = sched.step(eps_u + g * (eps_c - eps_u), t, x).prev_sample
    model.train()
    torch.testing.assert_close(got, (x.clamp(-1, 1) + 1) / 2, atol=1e-4, rtol=0)


def test_eval_mode_during_sampling_and_modes_restored(model):
    modes = []
    handle = model.conv_in.register_forward_hook(lambda m, i, o: modes.append(m.training))
    model.train()
    generate(model, LABELS[:1], steps=2, progress=False)
    handle.remove()
    assert modes == [False, False] and model.training and model.conv_in.training


def test_scheduler_follows_the_train_config():
    cfg = DiffusionTrainConfig(prediction_type="v_prediction", num_train_timesteps=500,
                               beta_schedule="squaredcos_cap_v2")
    for name, cls in (("ddim", "DDIMScheduler"), ("dpm++", "DPMSolverMultistepScheduler"),
                      ("ddpm", "DDPMScheduler")):
        sched = sampling_scheduler(name, cfg)
        assert type(sched).__name__ == cls
        assert sched.config.prediction_type == "v_prediction"
        assert sched.config.num_train_timesteps == 500
        assert sched.config.beta_schedule == "squaredcos_cap_v2"
    assert sampling_scheduler("dpm++").config.algorithm_type == "dpmsolver++"


def test_token_model_samples_from_encoder_hidden_states():
    unet = token_unet(in_channels=3, sample_size=16)
    ehs = torch.randn(2, 4, 32, generator=torch.Generator().manual_seed(0))
    a = generate(unet, encoder_hidden_states=ehs, steps=2, guidance_scale=2.0, progress=False)
    b = generate(unet, encoder_hidden_states=ehs, steps=2, guidance_scale=2.0, batch_size=1,
                 progress=False)
    assert a.shape == (2, 3, 16, 16)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    u = generate(unet, encoder_hidden_states=ehs, steps=2, guidance_scale=0.0, progress=False)
    zeros = generate(unet, encoder_hidden_states=torch.zeros_like(ehs), steps=2, progress=False)
    assert torch.equal(u, zeros)
    with pytest.raises(ValueError, match="labels must be None"):
        generate(unet, LABELS, progress=False)
    with pytest.raises(ValueError, match="cross_attention_dim"):
        generate(unet, encoder_hidden_states=torch.randn(2, 4, 8), progress=False)


@pytest.mark.parametrize(("labels", "kwargs", "exc", "match"), [
    (torch.tensor([0, 4]), {}, ValueError, r"labels must lie in \[0, 3\]"),
    (torch.tensor([-1]), {}, ValueError, "labels must lie"),
    (torch.tensor([0.0, 1.0]), {}, TypeError, "labels"),
    (torch.tensor([[0, 1]]), {}, ValueError, "labels"),
    ([0, 1], {}, TypeError, "labels"),
    (torch.tensor([0]), dict(steps=0), ValueError, "steps"),
    (torch.tensor([0]), dict(scheduler="euler"), ValueError, "scheduler"),
    (torch.tensor([0]), dict(batch_size=0), ValueError, "batch_size"),
    (torch.tensor([0]), dict(guidance_scale=float("nan")), ValueError, "guidance_scale"),
    (torch.tensor([0]), dict(train_config={"lr": 1}), TypeError, "train_config"),
    (torch.tensor([0]), dict(encoder_hidden_states=torch.ones(1, 2, 3)), ValueError,
     "encoder_hidden_states"),
])
def test_bad_arguments_refused(model, labels, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        generate(model, labels, progress=False, **kwargs)


def test_model_type_refused():
    with pytest.raises(TypeError, match="model"):
        generate(torch.nn.Conv2d(3, 3, 1), LABELS)
