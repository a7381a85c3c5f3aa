"""The model registry: names, import strings to users' own builders, safetensors weights."""

import os
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from trustfast.models import ResNet, SmallCNN, build_model, load_weights, save_weights

USER_MODULE = "trustfast_test_user_models"


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user's own module of model builders on sys.path (removed again after the test)."""
    (tmp_path / f"{USER_MODULE}.py").write_text(textwrap.dedent("""
        from torch import nn

        calls = []

        def linear(num_classes, in_channels):          # no image_size: not passed
            calls.append(("linear", num_classes, in_channels))
            return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

        def anything(**kwargs):                         # **kwargs: everything passed
            calls.append(("anything", kwargs))
            return nn.Sequential(nn.Flatten(), nn.Linear(
                kwargs["in_channels"] * kwargs["image_size"] ** 2, kwargs["num_classes"]))

        class Net(nn.Module):
            def __init__(self, in_channels, num_classes, *, image_size, width=4):
                super().__init__()
                self.conv = nn.Conv2d(in_channels, width, 3, padding=1)
                self.head = nn.Linear(width * image_size ** 2, num_classes)

            def forward(self, x):
                return self.head(self.conv(x).flatten(1))

        class Builders:
            @staticmethod
            def tiny(num_classes):
                return nn.Linear(1, num_classes)

        def not_a_module(**kwargs):
            return "a string"

        NOT_CALLABLE = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, USER_MODULE, raising=False)
    yield
    sys.modules.pop(USER_MODULE, None)


def test_build_model_by_name():
    cnn = build_model("small_cnn", in_channels=3, num_classes=5, image_size=8)
    assert isinstance(cnn, SmallCNN) and cnn(torch.rand(2, 3, 8, 8)).shape == (2, 5)
    assert cnn.features[0].in_channels == 3
    assert isinstance(build_model(" small_cnn ", in_channels=1, num_classes=2,
                                  image_size=(6, 6)), SmallCNN)
    net = build_model("resnet18", in_channels=1, num_classes=7, image_size=16)
    assert isinstance(net, ResNet) and net.conv1.in_channels == 1 and net.linear.out_features == 7
    with pytest.raises(ValueError, match="model: unknown model 'vgg11'; known: resnet18, "
                                         "small_cnn"):
        build_model("vgg11", in_channels=3, num_classes=10, image_size=32)
    with pytest.raises(ValueError, match="even"):
        build_model("small_cnn", in_channels=3, num_classes=10, image_size=7)
    with pytest.raises(ValueError, match="square"):
        build_model("small_cnn", in_channels=3, num_classes=10, image_size=(8, 6))


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(in_channels=0, num_classes=2, image_size=8), "in_channels"),
    (dict(in_channels=3, num_classes=True, image_size=8), "num_classes"),
    (dict(in_channels=3, num_classes=2, image_size="8"), "image_size"),
    (dict(in_channels=3, num_classes=2, image_size=(8, 0)), "image_size"),
])
def test_build_model_refuses_bad_shapes(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        build_model("small_cnn", **kwargs)


def test_build_model_from_an_import_string(user_module):
    import importlib

    shape = dict(in_channels=2, num_classes=3, image_size=4)
    linear = build_model(f"{USER_MODULE}:linear", **shape)
    anything = build_model(f"{USER_MODULE}:anything", **shape)
    net = build_model(f"{USER_MODULE}:Net", **shape)
    tiny = build_model(f"{USER_MODULE}:Builders.tiny", **shape)
    calls = importlib.import_module(USER_MODULE).calls
    assert calls == [("linear", 3, 2), ("anything", shape)]
    x = torch.rand(5, 2, 4, 4)
    assert linear(x).shape == anything(x).shape == net(x).shape == (5, 3)
    assert net.conv.in_channels == 2 and tiny.out_features == 3
    with pytest.raises(TypeError, match=f"model '{USER_MODULE}:not_a_module'.*nn.Module.*str"):
        build_model(f"{USER_MODULE}:not_a_module", **shape)
    with pytest.raises(TypeError, match="model .*NOT_CALLABLE must be callable"):
        build_model(f"{USER_MODULE}:NOT_CALLABLE", **shape)
    with pytest.raises(ValueError, match="model .*has no attribute 'missing'"):
        build_model(f"{USER_MODULE}:missing", **shape)
    with pytest.raises(ValueError, match="model 'no_such_pkg.models:make': cannot import"):
        build_model("no_such_pkg.models:make", **shape)
    with pytest.raises(ValueError, match="package.module:factory"):
        build_model(f"{USER_MODULE}:", **shape)


def _trained_like(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and BatchNorm statistics unlike a fresh model's."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    model.train()
    model(torch.rand(4, *_input_shape(model)))  # updates the running statistics
    return model.eval()


def _input_shape(model):
    return (3, 8, 8) if isinstance(model, SmallCNN) else (1, 16, 16)


def test_weights_round_trip_gives_identical_outputs(tmp_path):
    for name, shape in (("small_cnn", dict(in_channels=3, num_classes=4, image_size=8)),
                        ("resnet18", dict(in_channels=1, num_classes=3, image_size=16))):
        model = _trained_like(build_model(name, **shape), seed=1)
        path = tmp_path / f"{name}.safetensors"
        save_weights(model, path)
        assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]  # renamed
        loaded = build_model(name, **shape, weights=path).eval()
        fresh = build_model(name, **shape).eval()
        x = torch.rand(3, *_input_shape(model), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))
            assert not torch.equal(fresh(x), model(x))
        state, again = model.state_dict(), loaded.state_dict()
        assert all(torch.equal(state[k], again[k]) for k in state)  # buffers too
    tied = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    tied[1].weight = tied[0].weight  # shared storage: saved as two copies, loads back tied
    save_weights(tied, tmp_path / "tied.safetensors")
    copy = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    load_weights(copy, tmp_path / "tied.safetensors")
    assert torch.equal(copy[1].weight, tied[0].weight)


def test_mismatched_weights_list_keys_and_name_the_file(tmp_path):
    path = str(tmp_path / "cnn5.safetensors")
    save_weights(build_model("small_cnn", in_channels=3, num_classes=5, image_size=8), path)
    fit = r"cnn5.safetensors.*2 shape mismatches: classifier.3.bias \(file \(5,\), model \(3,\)\)"
    with pytest.raises(ValueError, match=fit + r", classifier.3.weight \(file \(5, 64\)"):
        build_model("small_cnn", in_channels=3, num_classes=3, image_size=8, weights=path)
    state = SmallCNN(3, 5).state_dict()
    state["extra.weight"] = torch.zeros(2)
    del state["features.0.bias"]
    save_file(state, tmp_path / "edited.safetensors")
    with pytest.raises(ValueError, match=r"edited.safetensors.*1 missing keys: features.0.bias; "
                                         r"1 unexpected keys: extra.weight"):
        load_weights(SmallCNN(3, 5), tmp_path / "edited.safetensors")
    resnet = tmp_path / "resnet.safetensors"
    save_weights(build_model("resnet18", in_channels=3, num_classes=5, image_size=8), resnet)
    with pytest.raises(ValueError, match=r"8 missing keys: .* and 3 more; 122 unexpected keys"):
        load_weights(SmallCNN(3, 5), resnet)
    half = {k: v.half() if v.is_floating_point() else v for k, v in SmallCNN(3, 5).state_dict()
            .items()}
    save_file(half, tmp_path / "half.safetensors")
    with pytest.warns(UserWarning, match=r"half.safetensors.*8 tensors cast.*float16 -> "
                                         r"torch.float32"):
        load_weights(SmallCNN(3, 5), tmp_path / "half.safetensors")


class _RunsCode:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_truncated_or_pickled_weights_are_refused_naming_the_file(tmp_path):
    good = tmp_path / "good.safetensors"
    save_weights(SmallCNN(3, 5), good)
    raw = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(ValueError, match=r"cut.safetensors.*not a readable safetensors file.*"
                                         r"truncated, corrupt"):
        build_model("small_cnn", in_channels=3, num_classes=5, image_size=8,
                    weights=tmp_path / "cut.safetensors")
    marker = tmp_path / "ran"
    torch.save({"w": _RunsCode(f"touch {marker}")}, tmp_path / "pickle.safetensors")
    with pytest.raises(ValueError, match=r"pickle.safetensors.*\.pt/\.pth checkpoint is not "
                                         r"loaded"):
        load_weights(SmallCNN(3, 5), tmp_path / "pickle.safetensors")
    assert not marker.exists()
    with pytest.raises(ValueError, match="weights: no such file"):
        load_weights(SmallCNN(3, 5), tmp_path / "missing.safetensors")
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        save_weights({"w": torch.zeros(1)}, good)
