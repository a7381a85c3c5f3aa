"""The claims of "From Trojan Horses to Castle Walls" (issue 19) at small scale, on the built-in
digits at their native 8 px with a 2x2 BadNets patch, target class 0.

Two `trustfast diffusion-backdoor` processes run side by side on one thread each: the clean
model (p = 0) and the poisoned one (p = 0.1: 143 of the 1438 training images, so the target
class's training images carry the trigger at p / (1/K + p) = 0.5). Each trains a tiny label UNet
for STEPS steps of 32 images, generates 100 images per class (the trigger ratio of 100
target-class images has a standard error of 0.05 near 0.5), scores the diffusion classifier on
100 held-out clean and 100 triggered images (DRAWS draws, exhaustive) and trains the defence
classifiers. See MEASURED for the figures of the run these bounds come from.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

STEPS, DRAWS = 1000, 16
ARGS = ("--steps", str(STEPS), "--triggers", "badnets", "--set", "image_size=8",
        "--set", "patch_size=2", "--set", "samples_per_class=100", "--set", "dc_test_size=100",
        "--set", f"dc_draws={DRAWS}")
RATIOS = (0.0, 0.1)
# MEASURED on the 2-core machine (AMD EPYC, 2026-12-04, seed 0):
#   p = 0:   trigger ratio 0.00, misalignment 0.00, DC accuracy 0.98 (ASR 0.00), trimmed 0.98;
#            classifier on the generations: accuracy 0.925, ASR 0.00;
#   p = 0.1: trigger ratio 0.59 against p / (1/K + p) = 0.50 (amplification 1.18x), misalignment
#            0.58 (G1 0.56, G2 0.03, G3 0.02, G4 0.39); DC accuracy 0.97, ASR 0.95; trimmed
#            (q = 0.9) accuracy 0.96, ASR 0.36; classifier ASR: poisoned data 0.97, generations
#            0.15 (clean accuracy 0.975 / 0.916); AUROC on the training data SPC 0.57, STRIP
#            1.00; on the generations SPC 0.70, STRIP 0.67.


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> dict[float, dict]:
    """{poison ratio: the BadNets row} of the two runs, launched together."""
    root = tmp_path_factory.mktemp("diffusion_backdoor_claims")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    procs = {ratio: subprocess.Popen(
        [sys.executable, "-m", "trustfast", "diffusion-backdoor", *ARGS, "--ratios", str(ratio),
         "--device", "cpu", "--out", str(root / str(ratio))],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for ratio in RATIOS}
    out = {}
    for ratio, proc in procs.items():
        _, err = proc.communicate(timeout=1800)
        assert proc.returncode == 0, f"ratio {ratio} failed:\n{err[-3000:]}"
        with open(root / str(ratio) / "results.json") as f:
            (row,) = json.load(f)["rows"]
        out[ratio] = row
    return out


def test_clean_model_generates_almost_no_trigger(rows):
    assert rows[0.0]["trigger_ratio"] <= 0.02, rows[0.0]


def test_poisoned_model_amplifies_the_trigger(rows):
    row = rows[0.1]
    # against the trigger share of the target class in the training data, not against p
    assert row["target_share"] == pytest.approx(0.1 / (0.1 + 0.1))
    assert row["trigger_ratio"] > row["target_share"], row


def test_poisoned_model_generates_misaligned_images(rows):
    row = rows[0.1]
    assert row["misalignment"] >= 0.20, row
    shares = [row[f"G{g}_share"] for g in (1, 2, 3, 4)]
    assert sum(shares) == pytest.approx(1.0)
    assert row["misalignment"] == pytest.approx(shares[0] + shares[2])


def test_diffusion_classifier_is_accurate_on_clean_data(rows):
    assert rows[0.0]["dc_acc"] >= 0.85, rows[0.0]


def test_poisoned_diffusion_classifier_is_backdoored_and_trimming_helps(rows):
    clean, poisoned = rows[0.0], rows[0.1]
    # triggered inputs are pulled to the target by the poisoned model only
    assert poisoned["dc_ASR"] >= clean["dc_ASR"] + 0.5, (clean, poisoned)
    # trimming the largest 10 % of per-pixel errors lowers the ASR at a bounded accuracy cost
    assert poisoned["dc_ASR_trim"] <= poisoned["dc_ASR"] - 0.2, poisoned
    assert poisoned["dc_acc_trim"] >= poisoned["dc_acc"] - 0.05, poisoned
    assert clean["dc_acc_trim"] >= clean["dc_acc"] - 0.05, clean


def test_classifier_trained_on_generations_inherits_less_backdoor(rows):
    row = rows[0.1]
    assert row["clf_generated_ASR"] < row["clf_poisoned_data_ASR"], row


def test_identification_is_reported_both_ways(rows):
    row = rows[0.1]
    for method in ("spc", "strip"):
        for where in ("train", "generated"):
            value = row[f"AUROC_{method}_{where}"]
            assert value is not None and 0.0 <= value <= 1.0, (method, where, row)
    # STRIP finds the poisoned training images (the BadNets patch keeps the prediction
    # confident under blending)
    assert row["AUROC_strip_train"] >= 0.9, row
