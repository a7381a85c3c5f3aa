"""The vision experiments on the users' own artefacts, through the CLI, on files made here in
the real formats: an ImageFolder of PNGs, CIFAR-10 binary and python batches, an npz file, a
safetensors weights file and a user's model factory. The CLI's rows equal the Python API's on
the same inputs."""

from __future__ import annotations

import json
import os
import pickle
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from trustfast.cli import main
from trustfast.experiments import run_experiment

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")
TIMING_KEYS = ("RTE", "seconds")


def _digits_images(n_per_class: int, classes: int, side: int, seed: int):
    """uint8 HWC RGB images of the built-in digits, upsampled (so classes are learnable)."""
    from trustfast.data import colored_digits

    train, _ = colored_digits(seed=seed, size=side)
    x, y = train.tensors
    out = []
    for c in range(classes):
        idx = (y == c).nonzero().flatten()[:n_per_class]
        for i in idx.tolist():
            out.append(((x[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), c))
    return out


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagefolder")
    items = _digits_images(14, 3, 16, seed=0)
    for k, (img, c) in enumerate(items):
        split = "test" if k % 7 == 0 else "train"
        folder = root / split / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{k:04d}.png")
    return str(root)


def _rows(path: str) -> list[dict]:
    return json.load(open(os.path.join(path, "results.json")))["rows"]


def _without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def test_unlearn_on_an_image_folder_with_resnet18_matches_the_python_api(image_folder, tmp_path,
                                                                         capsys):
    from trustfast.config import build_config
    from trustfast.experiments.unlearn import UnlearnExperimentConfig

    argv = ["unlearn", "--data", f"imagefolder:{image_folder}", "--model", "resnet18",
            "--methods", "retrain,ft,l1_sparse", "--sparsity", "0", "--forget-class", "1",
            "--device", "cpu", "--set", "train.epochs=2", "--set", "overrides.retrain.epochs=2",
            "--set", "overrides.ft.epochs=1", "--set", "overrides.l1_sparse.epochs=1"]
    out = str(tmp_path / "cli")
    assert main([*argv, "--out", out]) == 0
    assert "| l1_sparse |" in capsys.readouterr().out
    saved = json.load(open(os.path.join(out, "results.json")))
    rows = saved["rows"]
    assert [r["method"] for r in rows] == ["retrain", "ft", "l1_sparse"]
    assert rows[0]["UA"] == 100.0 and rows[0]["disparity"] == 0.0  # retrain never saw class 1
    prov = saved["provenance"]
    assert prov["data"]["num_classes"] == 3 and prov["data"]["image_shape"] == [3, 16, 16]
    assert prov["data"]["forget"] == 12 and prov["data"]["test"] == 4  # class 1 left out
    assert prov["model"]["class"] == "trustfast.models.resnet.ResNet"
    assert prov["resolved_config"]["method_configs"]["ft"]["epochs"] == 1
    # the same run from Python
    cfg = build_config(UnlearnExperimentConfig, {
        "data": f"imagefolder:{image_folder}", "model": "resnet18",
        "methods": ["retrain", "ft", "l1_sparse"], "sparsities": [0.0], "forget_class": 1,
        "device": "cpu", "train": {"epochs": 2},
        "overrides": {"retrain": {"epochs": 2}, "ft": {"epochs": 1},
                      "l1_sparse": {"epochs": 1}}})
    api = run_experiment("unlearn", cfg, str(tmp_path / "api"))
    assert _without_timings(api.rows) == _without_timings(rows)


def test_weights_file_is_the_trained_original(image_folder, tmp_path):
    """--weights: no training here, and the rows equal those of the same module passed from
    Python."""
    from trustfast.data import load_image_data
    from trustfast.experiments.robustness import RobustnessConfig
    from trustfast.models import build_model, save_weights

    torch.manual_seed(3)
    model = build_model("small_cnn", in_channels=3, num_classes=3, image_size=16)
    weights = str(tmp_path / "model.safetensors")
    save_weights(model, weights)
    out = str(tmp_path / "cli")
    assert main(["robustness", "--data", f"imagefolder:{image_folder}", "--weights", weights,
                 "--eps", "0,4", "--steps", "3", "--device", "cpu", "--out", out]) == 0
    assert not os.path.exists(os.path.join(out, "model.safetensors"))  # nothing trained
    rows = _rows(out)
    assert [round(r["eps"] * 255) for r in rows] == [0, 4]
    train, test = load_image_data(f"imagefolder:{image_folder}")
    api = run_experiment("robustness", RobustnessConfig(eps=[0, 4 / 255], steps=3, device="cpu"),
                         str(tmp_path / "api"), model=model, train=train, test=test)
    assert _without_timings(api.rows) == _without_timings(rows)
    # a weights file for another model is refused, naming the file
    torch.save({"x": 1}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(SystemExit):
        main(["robustness", "--data", f"imagefolder:{image_folder}", "--weights",
              str(tmp_path / "bad.safetensors"), "--out", str(tmp_path / "bad")])


def _cifar_batches(seed: int, n: int):
    rng = np.random.default_rng(seed)
    items = _digits_images(n, 10, 32, seed=seed)
    rng.shuffle(items)
    data = np.stack([img.transpose(2, 0, 1).reshape(-1) for img, _ in items])
    return data, np.array([c for _, c in items], dtype=np.int64)


def _write_cifar(root, fmt: str) -> None:
    os.makedirs(root, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        data, labels = _cifar_batches(seed=k, n=2 if name != "test_batch" else 1)
        if fmt == "binary":
            records = np.concatenate([labels.astype(np.uint8)[:, None], data], axis=1)
            (root / f"{name}.bin").write_bytes(records.tobytes())
        else:
            (root / name).write_bytes(pickle.dumps(
                {b"data": data, b"labels": labels.tolist(), b"batch_label": name.encode()},
                protocol=2))


def test_cifar10_binary_and_python_batches_give_the_same_rows(tmp_path):
    outs = {}
    for fmt in ("binary", "python"):
        root = tmp_path / fmt
        _write_cifar(root, fmt)
        outs[fmt] = str(tmp_path / f"out-{fmt}")
        assert main(["masked-training", "--data", f"cifar10:{root}", "--device", "cpu",
                     "--set", "train.epochs=1", "--set", "pruned_epochs=1",
                     "--out", outs[fmt]]) == 0
    binary, python = _rows(outs["binary"]), _rows(outs["python"])
    assert _without_timings(binary) == _without_timings(python)
    assert binary[-1]["pruned_weights_exactly_zero_%"] == 100.0
    prov = json.load(open(os.path.join(outs["binary"], "results.json")))["provenance"]
    assert prov["data"]["n"] == 100 and prov["data"]["image_shape"] == [3, 32, 32]


def test_a_malicious_cifar_pickle_is_refused_and_nothing_runs(tmp_path, capsys):
    root = tmp_path / "evil"
    _write_cifar(root, "python")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (root / "data_batch_3").write_bytes(pickle.dumps({b"data": Payload(), b"labels": [0]}))
    with pytest.raises(SystemExit):
        main(["unlearn", "--data", f"cifar10:{root}", "--out", str(tmp_path / "o")])
    assert "data_batch_3" in capsys.readouterr().err
    assert not marker.exists()


def test_npz_data_and_a_users_model_factory(tmp_path, monkeypatch):
    items = _digits_images(12, 4, 8, seed=1)
    x = np.stack([img for img, _ in items])  # NHWC uint8
    y = np.array([c for _, c in items])
    np.savez(tmp_path / "data.npz", x=x, y=y)
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(
        "from torch import nn\n\n"
        "def tiny(in_channels, num_classes, image_size):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, 32),\n"
        "                         nn.ReLU(), nn.Linear(32, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = str(tmp_path / "out")
    assert main(["backdoor-identify", "--data", f"npz:{tmp_path / 'data.npz'}", "--model",
                 "mypkg.nets:tiny", "--attack", "badnets", "--methods", "spc", "--epochs", "2",
                 "--target", "2", "--device", "cpu", "--out", out]) == 0
    saved = json.load(open(os.path.join(out, "results.json")))
    (row,) = saved["rows"]
    assert row["n"] == round(0.8 * 48) and row["n_poisoned"] == round(0.1 * row["n"])
    assert saved["provenance"]["model"]["class"] == "torch.nn.modules.container.Sequential"
    with pytest.raises(SystemExit):
        main(["backdoor-identify", "--data", f"npz:{tmp_path / 'data.npz'}", "--target", "7",
              "--out", str(tmp_path / "o2")])
    sys.modules.pop("mypkg.nets", None)
    sys.modules.pop("mypkg", None)


@pytest.mark.parametrize("argv, message", [
    (["unlearn", "--data", "imagefolder:/no/such/dir"], "data"),
    (["unlearn", "--model", "nope"], "model"),
    (["unlearn", "--model", "no_such_module:f"], "model"),
    (["unlearn", "--device", "tpu"], "device must be"),
    (["unlearn", "--set", "train.lr=fast"], "train.lr must be a number, got 'fast'"),
    (["unlearn", "--set", "overrides.ga.lr=-1"], "overrides.ga.lr must be > 0"),
    (["unlearn", "--set", "overides.ga.lr=1"], "unknown config keys ['overides']"),
    (["robustness", "--eps", "a,b"], "--eps must be comma-separated"),
    (["masked-training", "--sparsity", "1.5"], "sparsity must be in (0, 1)"),
])
def test_bad_arguments_are_refused_naming_the_key(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([*argv, "--out", str(tmp_path / "o")])
    assert message in capsys.readouterr().err


def test_cuda_without_cuda_names_the_device(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(SystemExit):
        main(["robustness", "--device", "cuda", "--out", str(tmp_path / "o")])
    assert "device is 'cuda' but CUDA is not available" in capsys.readouterr().err
