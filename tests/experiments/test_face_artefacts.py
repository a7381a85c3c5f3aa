"""watermark-attack on the users' own faces: a CASIA-WebFace-style identity folder of PNGs for
training and an LFW-style pairs file for calibration and evaluation; and diffusion-attention
on a local diffusers UNet folder."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from trustfast.cli import main

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _save(folder, name: str, index: int, image) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(folder / f"{name}_{index:04d}.png")


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    from trustfast.data import synthetic_faces

    root = tmp_path_factory.mktemp("faces")
    x, y = synthetic_faces(12, 6, 32, seed=0)
    for i, (img, label) in enumerate(zip(x, y.tolist())):
        _save(root / "casia" / f"id{label:03d}", f"id{label:03d}", i % 6 + 1, img)
    xt, yt = synthetic_faces(6, 4, 32, seed=1, identity_offset=500)
    for i, (img, label) in enumerate(zip(xt, yt.tolist())):
        _save(root / "lfw" / f"person{label}", f"person{label}", i % 4 + 1, img)
    people = sorted({f"person{label}" for label in yt.tolist()})
    lines = ["2 6"]
    for k in range(12):  # alternate genuine and impostor pairs
        a = people[k % len(people)]
        if k % 2 == 0:
            lines.append(f"{a}\t1\t{2 + k % 3}")
        else:
            lines.append(f"{a}\t1\t{people[(k + 1) % len(people)]}\t2")
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root


def test_watermark_attack_on_an_identity_folder_and_a_pairs_file(faces, tmp_path):
    out = str(tmp_path / "out")
    assert main(["watermark-attack", "--data", f"imagefolder:{faces / 'casia'}", "--pairs",
                 str(faces / "pairs.txt"), "--pairs-root", str(faces / "lfw"), "--eps", "4",
                 "--steps", "2", "--device", "cpu", "--set", "pairs_ext=png",
                 "--set", "face.epochs=1", "--set", "watermark.epochs=1",
                 "--set", "face.batch_size=16", "--out", out]) == 0
    saved = json.load(open(os.path.join(out, "results.json")))
    rows = saved["rows"]
    cells = {(r["eps"], r["watermark"], r["perturbation"]) for r in rows}
    assert cells == {(0.0, False, False), (0.0, True, False), (4 / 255, False, True),
                     (4 / 255, True, True)}
    for r in rows:
        assert 0.0 <= r["verification_accuracy"] <= 1.0
        if r["perturbation"]:
            assert r["linf"] <= 4 / 255 + 1e-6
    assert os.path.exists(os.path.join(out, "face_model", "face_model.safetensors"))
    # the trained models are reused: --face-model and --watermark-model load them as they are
    again = str(tmp_path / "again")
    assert main(["watermark-attack", "--data", f"imagefolder:{faces / 'casia'}", "--pairs",
                 str(faces / "pairs.txt"), "--pairs-root", str(faces / "lfw"), "--eps", "4",
                 "--steps", "2", "--device", "cpu", "--set", "pairs_ext=png",
                 "--face-model", os.path.join(out, "face_model"),
                 "--watermark-model", os.path.join(out, "watermark_model"), "--out", again]) == 0
    second = json.load(open(os.path.join(again, "results.json")))["rows"]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "attack_seconds"}  # noqa: E731
                        for r in rs]
    assert strip(second) == strip(rows)
    assert not os.path.exists(os.path.join(again, "face_model"))
    assert not os.path.exists(os.path.join(again, "watermark"))


def test_pairs_file_errors_name_the_key(faces, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["watermark-attack", "--data", f"imagefolder:{faces / 'casia'}", "--pairs",
              str(tmp_path / "none.txt"), "--out", str(tmp_path / "o")])
    assert "pairs must be an existing LFW-style pairs file" in capsys.readouterr().err


def test_diffusion_attention_on_a_local_unet_folder(tmp_path):
    pytest.importorskip("diffusers")
    from trustfast.diffusion.tiny import tiny_unet

    folder = tmp_path / "unet"
    tiny_unet(seed=3).save_pretrained(folder)
    out = str(tmp_path / "out")
    assert main(["diffusion-attention", "--model", str(folder), "--steps", "2", "--device",
                 "cpu", "--set", "batch=1", "--set", "prompt_tokens=7", "--out", out]) == 0
    rows = {r["stage"]: r for r in json.load(open(os.path.join(out, "results.json")))["rows"]}
    fast = rows["FastAttnProcessor, 2 DDIM steps"]
    assert fast["layers_replaced"] == 8 and fast["max_abs_diff_vs_default"] < 1e-4
    assert fast["jvp_through_unet"] == "ok"
