"""The `fairskin` experiment on the user's own files: a Fitzpatrick17k-style CSV with its image
folder, a local diffusers UNet folder, and the config errors that name the key."""

from __future__ import annotations

import csv
import os

import pytest
import torch
from PIL import Image

from trustfast.config import ConfigError, build_config
from trustfast.data import synthetic_skin
from trustfast.experiments import run_experiment
from trustfast.experiments.fairskin import FairSkinExperimentConfig, load_data

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

TINY = {"image_size": 8, "sample_steps": 2, "train": {"max_steps": 4, "batch_size": 8},
        "classifier": {"epochs": 1}, "fairskin": {"target_count": 6}}


def _write_csv(folder, n: int = 96, scale_unknown: int = 3) -> str:
    """A Fitzpatrick17k-style CSV (md5hash, fitzpatrick_scale, label) and images/ beside it;
    the first `scale_unknown` rows have fitzpatrick_scale -1."""
    skin = synthetic_skin(n, size=8, seed=3)
    os.makedirs(folder / "images")
    path = folder / "labels.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["md5hash", "fitzpatrick_scale", "label"])
        for i in range(n):
            pixels = (skin.images[i] * 255).round().byte().permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(folder / "images" / f"{i:05d}.png")
            scale = -1 if i < scale_unknown else int(skin.groups[i]) + 1
            writer.writerow([f"{i:05d}", scale, skin.class_names[skin.labels[i]]])
    return str(path)


def test_user_csv_split_is_stratified_by_tone(tmp_path):
    path = _write_csv(tmp_path)
    with pytest.warns(UserWarning, match="3"):
        split = load_data(build_config(FairSkinExperimentConfig,
                                       {"data": path, "image_size": 8, "test_fraction": 0.25}))
    assert len(split.train) + len(split.test) == 96 - 3
    full = torch.cat([split.train.groups, split.test.groups]).bincount(minlength=6)
    expected = (full.double() * 0.25).round().long()
    assert split.test.groups.bincount(minlength=6).tolist() == expected.tolist()


def test_runs_on_a_user_csv_and_a_local_unet(tmp_path):
    from trustfast.diffusion import label_unet

    path = _write_csv(tmp_path)
    folder = tmp_path / "unet"
    label_unet(6 * 5, sample_size=8, seed=1).save_pretrained(folder)
    cfg = build_config(FairSkinExperimentConfig, {**TINY, "data": path, "unet": str(folder)})
    with pytest.warns(UserWarning):
        result = run_experiment("fairskin", cfg, str(tmp_path / "out"))
    generation = [r for r in result.rows if r["stage"] == "generation"]
    assert [r["model"] for r in generation] == ["vanilla", "fairskin"]
    held_out = load_data(cfg).test.groups.bincount(minlength=6)
    present = [g for g in range(6) if held_out[g] >= 2]  # a distance needs two images
    for r in generation:  # one distance per tone that has held-out images
        tones = [k for k in r if k.startswith("FD_cnn_") and k not in ("FD_cnn_mean",
                                                                     "FD_cnn_gap")]
        assert len(tones) == len(present)
    assert len([r for r in result.rows if r["stage"] == "classifier"]) == 4
    assert os.path.getsize(tmp_path / "out" / "samples.png") > 0


def test_a_unet_with_the_wrong_labels_is_refused(tmp_path):
    from trustfast.diffusion import label_unet

    folder = tmp_path / "unet"
    label_unet(7, sample_size=8).save_pretrained(folder)
    cfg = build_config(FairSkinExperimentConfig, {**TINY, "unet": str(folder),
                                                  "train_size": 60, "test_per_group": 2})
    with pytest.raises(ConfigError, match="^unet must be a UNet2DModel with num_class_embeds = 31"):
        run_experiment("fairskin", cfg, str(tmp_path / "out"))


@pytest.mark.parametrize("key, value, message", [
    ("data", "/no/such.csv", "'skin' or an existing"),
    ("unet", "/no/such/folder", "'tiny', 'small' or an existing"),
    ("extractor", "/no/inception.pth", "pt_inception-2015-12-05-6726825d.pth"),
    ("test_per_group", 1, "at least 2"),
    ("image_size", 4, ">= 8"),
    ("test_fraction", 1.0, "in (0, 1)"),
])
def test_config_errors_name_the_key(key, value, message):
    with pytest.raises(ConfigError, match=f"^{key} must be") as err:
        build_config(FairSkinExperimentConfig, {key: value})
    assert message in str(err.value)
