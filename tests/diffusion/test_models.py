"""Conditional UNets from config and from a local folder (trustfast.diffusion.models)."""

import json

import pytest
import torch

from trustfast.diffusion.models import label_unet, load_unet, null_label, token_unet

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def test_label_unet_shapes_and_null_label():
    model = label_unet(3, sample_size=16, seed=0)
    assert model.training
    assert model.config.num_class_embeds == 4 and null_label(model) == 3
    assert model.config.block_out_channels == (32, 64)
    x = torch.randn(2, 3, 16, 16)
    out = model(x, torch.tensor([5, 900]), class_labels=torch.tensor([0, 3])).sample
    assert out.shape == x.shape
    one = label_unet(1, sample_size=8, in_channels=1)
    assert one(torch.randn(1, 1, 8, 8), 3, class_labels=torch.tensor([1])).sample.shape == \
        (1, 1, 8, 8)


def test_label_unet_seeded_and_leaves_global_rng():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b, c = (label_unet(2, sample_size=16, seed=s) for s in (0, 0, 1))
    assert torch.equal(torch.random.get_rng_state(), before)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_small_preset_is_larger():
    small = label_unet(2, preset="small", sample_size=16)
    assert small.config.block_out_channels == (64, 128, 128)
    n_small = sum(p.numel() for p in small.parameters())
    n_tiny = sum(p.numel() for p in label_unet(2, sample_size=16).parameters())
    assert n_small > 5 * n_tiny


def test_token_unet_reuses_tiny_unet():
    from trustfast.diffusion.tiny import tiny_unet

    model = token_unet(sample_size=16, seed=0)
    ref = tiny_unet(seed=0, sample_size=16)
    assert model.training and type(model).__name__ == "UNet2DConditionModel"
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)
    rgb = token_unet(in_channels=3, sample_size=16)
    x = torch.randn(2, 3, 16, 16)
    assert rgb(x, 10, encoder_hidden_states=torch.randn(2, 5, 32)).sample.shape == x.shape
    with pytest.raises(TypeError, match="num_class_embeds"):
        null_label(rgb)


@pytest.mark.parametrize("make", [lambda: label_unet(2, sample_size=16),
                                  lambda: token_unet(in_channels=3, sample_size=16)],
                         ids=["label", "token"])
def test_save_pretrained_load_unet_round_trip(tmp_path, make):
    model = make().eval()
    model.save_pretrained(tmp_path / "unet")
    loaded = load_unet(tmp_path / "unet", device="cpu")
    assert type(loaded) is type(model)
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    kwargs = ({"class_labels": torch.tensor([1])} if type(model).__name__ == "UNet2DModel"
              else {"encoder_hidden_states": torch.ones(1, 3, 32)})
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    with torch.no_grad():  # same weights; the loaded copy's memory layout may differ (1e-7)
        torch.testing.assert_close(model(x, 7, **kwargs).sample,
                                   loaded.eval()(x, 7, **kwargs).sample, atol=1e-5, rtol=1e-5)


def test_load_unet_refuses_what_is_not_a_local_unet(tmp_path):
    with pytest.raises(ValueError, match="no such folder"):
        load_unet(tmp_path / "missing")
    with pytest.raises(ValueError, match="no config.json"):
        load_unet(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(ValueError, match="AutoencoderKL"):
        load_unet(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_unet(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="cannot load"):
        load_unet(tmp_path)  # a config without weights
    with pytest.raises(TypeError, match="path"):
        load_unet(3)


@pytest.mark.parametrize(("kwargs", "exc", "match"), [
    (dict(num_labels=0), ValueError, "num_labels"),
    (dict(num_labels=2.0), TypeError, "num_labels"),
    (dict(num_labels=True), TypeError, "num_labels"),
    (dict(num_labels=2, preset="huge"), ValueError, "preset"),
    (dict(num_labels=2, sample_size=15), ValueError, "sample_size"),
    (dict(num_labels=2, in_channels=0), ValueError, "in_channels"),
    (dict(num_labels=2, seed=-1), ValueError, "seed"),
])
def test_label_unet_refuses_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        label_unet(**kwargs)


def test_token_unet_refuses_bad_arguments():
    with pytest.raises(ValueError, match="preset"):
        token_unet(preset="small")
    with pytest.raises(ValueError, match="sample_size"):
        token_unet(sample_size=9)
    with pytest.raises(TypeError, match="null_label|model"):
        null_label(torch.nn.Linear(2, 2))
