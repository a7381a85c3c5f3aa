"""The `diffusion-backdoor` experiment on the user's own data and models: an RGB npz archive with
its own test split, a local diffusers UNet folder, Python datasets, the learned trigger detector
and MSPC identification; the config errors that name the key; rows that follow from the data."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from trustfast.config import ConfigError, build_config
from trustfast.experiments import run_experiment
from trustfast.experiments.diffusion_backdoor import DiffusionBackdoorConfig

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

TINY = {"image_size": 8, "patch_size": 2, "ratios": [0.0, 0.2], "triggers": ["badnets"],
        "train": {"max_steps": 3, "batch_size": 8}, "samples_per_class": 3, "sample_steps": 2,
        "dc_test_size": 4, "dc_draws": 2, "classifier": {"epochs": 1}, "identify": ["spc"]}


def _rgb_npz(path, n_train: int = 60, n_test: int = 20, classes: int = 3) -> str:
    """An npz archive (x_train, y_train, x_test, y_test) of NHWC uint8 8x8 RGB images whose
    colour says the class."""
    gen = np.random.default_rng(0)

    def split(n):
        y = np.arange(n) % classes
        x = gen.integers(0, 60, size=(n, 8, 8, 3)).astype(np.uint8)
        x[np.arange(n), :, :, y] += 150
        return x, y.astype(np.int64)

    x_train, y_train = split(n_train)
    x_test, y_test = split(n_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return str(path)


def _rows(result) -> dict:
    return {(r["trigger"], r["poison_ratio"]): r for r in result.rows}


def test_runs_on_a_user_npz_and_a_local_unet(tmp_path):
    from trustfast.diffusion import label_unet

    data = _rgb_npz(tmp_path / "data.npz")
    folder = tmp_path / "unet"
    label_unet(3, sample_size=8, in_channels=3, seed=2).save_pretrained(folder)
    cfg = build_config(DiffusionBackdoorConfig, {**TINY, "data": f"npz:{data}",
                                                 "unet": str(folder), "target": 1})
    result = run_experiment("diffusion-backdoor", cfg, str(tmp_path / "out"))
    rows = _rows(result)
    assert set(rows) == {("badnets", 0.0), ("badnets", 0.2)}
    poisoned = rows[("badnets", 0.2)]
    # the reference's protocol: int(N p) of the 60 training images, 20 per class
    assert poisoned["n_poisoned"] == 12 and poisoned["n_train"] == 60
    assert poisoned["target_share"] == pytest.approx(0.2 / (1 / 3 + 0.2))
    assert poisoned["target_share_measured"] == pytest.approx(12 / (20 + 12))
    assert rows[("badnets", 0.0)]["n_poisoned"] == 0
    for row in rows.values():
        shares = [row[f"G{g}_share"] for g in (1, 2, 3, 4)]
        assert sum(shares) == pytest.approx(1.0)
        # 3 target-class generations: every share is a multiple of 1/3
        assert all(abs(s * 3 - round(s * 3)) < 1e-9 for s in shares)
        for key in ("dc_acc", "dc_ASR", "dc_acc_trim", "dc_ASR_trim"):
            assert abs(row[key] * 4 - round(row[key] * 4)) < 1e-9  # 4 images scored
    saved = json.load(open(tmp_path / "out" / "results.json"))
    assert saved["provenance"]["num_classes"] == 3
    for name in ("groups.png", "trigger_ratio_badnets.png"):
        assert os.path.getsize(tmp_path / "out" / name) > 0


def test_python_datasets_the_learned_detector_and_mspc(tmp_path):
    from trustfast.data import digits

    train, test = digits(size=8, seed=0)
    x, y = train.tensors
    small = TensorDataset(x[:120], y[:120])
    cfg = build_config(DiffusionBackdoorConfig,
                       {**TINY, "detector": "learned", "identify": ["spc", "mspc"],
                        "ratios": [0.1], "triggers": ["blend"]})
    result = run_experiment("diffusion-backdoor", cfg, str(tmp_path / "out"), train=small,
                            test=TensorDataset(*[t[:40] for t in test.tensors]))
    (row,) = result.rows
    assert row["n_poisoned"] == 12 and row["trigger"] == "blend"
    assert 0.0 <= row["AUROC_mspc_train"] <= 1.0 and 0.0 <= row["AUROC_spc_train"] <= 1.0


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="ratios"):
        build_config(DiffusionBackdoorConfig, {"ratios": [0.1, 1.0]})
    with pytest.raises(ConfigError, match="ratios"):
        build_config(DiffusionBackdoorConfig, {"ratios": [0.1, 0.1]})
    with pytest.raises(ConfigError, match="triggers"):
        build_config(DiffusionBackdoorConfig, {"triggers": ["wanet"]})
    with pytest.raises(ConfigError, match="patch_size"):
        build_config(DiffusionBackdoorConfig, {"image_size": 8, "patch_size": 8})
    with pytest.raises(ConfigError, match="dc_trim"):
        build_config(DiffusionBackdoorConfig, {"dc_trim": 1.5})
    with pytest.raises(ConfigError, match="unet"):
        build_config(DiffusionBackdoorConfig, {"unet": str(tmp_path / "missing")})
    cfg = build_config(DiffusionBackdoorConfig, {**TINY, "target": 10})
    with pytest.raises(ConfigError, match="target"):
        run_experiment("diffusion-backdoor", cfg, str(tmp_path / "t"))
    cfg = build_config(DiffusionBackdoorConfig, {**TINY, "image_size": 16})
    with pytest.raises(ConfigError, match="image_size"):
        run_experiment("diffusion-backdoor", cfg, str(tmp_path / "s"),
                       train=TensorDataset(torch.rand(20, 1, 8, 8), torch.arange(20) % 2),
                       test=TensorDataset(torch.rand(6, 1, 8, 8), torch.arange(6) % 2))


def test_a_unet_of_the_wrong_shape_is_refused(tmp_path):
    from trustfast.diffusion import label_unet

    folder = tmp_path / "unet"
    label_unet(4, sample_size=8, in_channels=1, seed=0).save_pretrained(folder)  # 4 classes
    cfg = build_config(DiffusionBackdoorConfig, {**TINY, "unet": str(folder)})
    with pytest.raises(ConfigError, match="unet"):
        run_experiment("diffusion-backdoor", cfg, str(tmp_path / "out"))  # digits: 10
