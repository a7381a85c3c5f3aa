"""`trustfast._bench.diffusion_classifier`: its checks pass and catch a wrong peer, its timing
rows carry the counts the issue's goal is stated in, and `adaptive_accuracy` scores schedules
against exhaustive (small sizes: 8 images, 8 draws, a random-weight tiny label_unet).

The GPU suite runs this bench's sections on a borrowed machine, so a bug here costs a loan.
"""

from __future__ import annotations

import math

import pytest
import torch

from trustfast._bench import diffusion_classifier as dcb
from trustfast._bench import registry

pytest.importorskip("diffusers")
CPU = torch.device("cpu")


def test_registered():
    assert "diffusion_classifier" in registry.BENCHES
    assert registry.load("diffusion_classifier") is dcb
    assert [s.key for s in dcb.checks(CPU, small=True)] == ["diffusion_classifier_checks"] * 2
    assert [s.key for s in dcb.timings(CPU, 1, small=True)] == ["diffusion_classifier_timings"]


def test_expected_evaluations_known_answer():
    # 32 draws, 10 classes, "auto": 8 draws of all 10 classes, then 24 draws of the best 2
    assert dcb.expected_evaluations(1, [(8, 2), (24, 2)], 10) == 8 * 10 + 24 * 2
    assert dcb.expected_evaluations(3, [(4, 5), (4, 2), (24, 2)], 10) == 3 * (40 + 20 + 48)
    assert dcb.expected_evaluations(2, [(16, 10)], 10) == 320


def test_checks_pass():
    rows = registry.run(dcb.checks(CPU, small=True))
    assert len(rows) == 2
    for r in rows:
        assert "error" not in r, r.get("traceback")
        assert r["passed"] is True, r
        assert math.isfinite(r["rel_diff"]) and r["rel_diff"] <= dcb.CHECK_RTOL
    n, _, _, draws, _ = dcb.sizes(CPU, small=True)
    batched, adaptive = rows
    assert batched["evaluations"] == batched["peer evaluations"] == n * draws * dcb.NUM_CLASSES
    assert adaptive["evaluations"] == adaptive["expected evaluations"]
    assert adaptive["exhaustive evaluations"] / adaptive["evaluations"] >= 2


def test_check_catches_a_wrong_peer(monkeypatch):
    from trustfast.diffusion import backdoor

    real = backdoor.classify_per_class

    def off(clf, images):
        out = real(clf, images)
        out[0, 3] *= 1.001  # one entry 10x past the tolerance
        return out

    monkeypatch.setattr(backdoor, "classify_per_class", off)
    row = dcb.check("batched vs per-class loop", CPU, small=True)
    assert row["passed"] is False and row["rel_diff"] > dcb.CHECK_RTOL


def test_check_refuses_unknown_case():
    with pytest.raises(ValueError, match="case"):
        dcb.check("nope", CPU, small=True)


def test_measure_rows():
    rows = dcb.measure(CPU, 1, small=True)
    assert [r["variant"] for r in rows] == list(dcb.VARIANTS)
    n, _, _, draws, _ = dcb.sizes(CPU, small=True)
    full = n * draws * dcb.NUM_CLASSES
    by = {r["variant"]: r for r in rows}
    assert by["per-class loop"]["model evaluations"] == by["batched"]["model evaluations"] == full
    assert by["per-class loop"]["forwards"] == draws * dcb.NUM_CLASSES  # n <= batch_size
    assert by["batched"]["trustfast speed-up"] == 1.0
    adaptive = by["batched adaptive auto"]
    assert adaptive["evaluations saved"] == full / adaptive["model evaluations"] >= 2
    for r in rows:
        assert r["ms"] > 0 and r["images/s"] == pytest.approx(n / r["ms"] * 1e3)
        assert r["trustfast speed-up"] == pytest.approx(r["ms"] / by["batched"]["ms"])
    with pytest.raises(ValueError, match="variants"):
        dcb.measure(CPU, 1, small=True, variants=("nope",))


def test_adaptive_accuracy_on_a_saved_model(tmp_path):
    from trustfast.diffusion import label_unet

    label_unet(10, preset="tiny", sample_size=16, in_channels=1, seed=0).save_pretrained(
        tmp_path / "unet")
    rows = dcb.adaptive_accuracy(model_path=str(tmp_path / "unet"), images=4, draws=8,
                                 schedules=(((2, 3),),), batch_size=256, progress=False)
    assert [r["schedule"] for r in rows] == ["exhaustive", "((2, 3),)"]
    base, pruned = rows
    assert base["model evaluations"] == 4 * 8 * 10 and base["evaluations saved"] == 1.0
    assert base["accuracy lost (points)"] == 0.0 and base["agreement"] == 1.0
    assert pruned["model evaluations"] == 4 * (2 * 10 + 6 * 3)
    assert pruned["evaluations saved"] == pytest.approx(320 / 152)
    assert pruned["accuracy lost (points)"] == pytest.approx(
        100 * (base["accuracy"] - pruned["accuracy"]))
    with pytest.raises(ValueError, match="images"):
        dcb.adaptive_accuracy(model_path=str(tmp_path / "unet"), images=10_000, progress=False)
