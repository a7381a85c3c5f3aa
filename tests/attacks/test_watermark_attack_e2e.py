"""The adversarial watermarking attack end to end on built-in faces (fixed seeds): the four-cell
table of the issue. A trained face model verifies unseen identities; watermarking alone and the
perturbation alone cost little; perturbation + watermark breaks verification, more at 4/255
than at 2/255, and at 4/255 more than halves the genuine pairs that still match.

Measured (one thread, the defaults: fixed messages known to the attacker, 20 steps):
| eps | watermark | perturbation | verification accuracy | matching accuracy | bit accuracy |
|---|---|---|---:|---:|---:|
| - | no | no | 0.965 | 0.935 | - |
| - | yes | no | 0.955 | 0.903 | 0.919 |
| 2/255 | no | yes | 0.985 | 0.978 | - |
| 2/255 | yes | yes | 0.795 | 0.602 | 0.918 |
| 4/255 | no | yes | 0.965 | 0.957 | - |
| 4/255 | yes | yes | 0.675 | 0.409 | 0.917 |
"""

from __future__ import annotations

import json
import os

import pytest

from trustfast.experiments import run_experiment
from trustfast.experiments.watermark import WatermarkAttackConfig


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic figures
    try:
        out = str(tmp_path_factory.mktemp("watermark_attack"))
        return run_experiment("watermark-attack", WatermarkAttackConfig(device="cpu"),
                              out).rows, out
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_four_cells(table):
    rows, out = table
    cell = {(r["eps"], r["watermark"], r["perturbation"]): r for r in rows}
    clean = cell[(0.0, False, False)]["verification_accuracy"]
    marked = cell[(0.0, True, False)]
    assert clean >= 0.9, rows
    assert marked["verification_accuracy"] >= clean - 0.05, rows  # watermark alone: <= 5 points
    assert marked["bit_accuracy"] >= 0.9, rows  # measured 0.919 on 6,000 bits
    eps = sorted({e for e, _, p in cell if p})
    assert [round(e * 255) for e in eps] == [2, 4]
    attacked = []
    for e in eps:
        alone, both = cell[(e, False, True)], cell[(e, True, True)]
        assert alone["verification_accuracy"] >= clean - 0.05, rows  # stealthy on its own
        assert alone["linf"] <= e + 1e-6
        attacked.append(both["verification_accuracy"])
    # activated by the watermark: a drop that grows with eps
    assert attacked[1] < attacked[0] < marked["verification_accuracy"], rows
    assert attacked[1] <= clean - 0.2, rows
    for name in ("results.json", "results.md", "watermark_attack.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    saved = json.load(open(os.path.join(out, "results.json")))
    assert saved["rows"] == rows
    assert set(rows[0]) >= {"eps", "watermark", "perturbation", "verification_accuracy",
                            "bit_accuracy"}


@pytest.mark.slow
def test_resume_reuses_the_finished_run(table):
    rows, out = table
    again = run_experiment("watermark-attack", WatermarkAttackConfig(device="cpu"), out,
                           resume=True)
    assert again.rows == rows


@pytest.mark.slow
def test_attack_halves_matching_at_4_255(table):
    """The issue's target, a >= 50 % relative drop at 4/255, on the genuine pairs: the share of
    watermarked probes that still match their own identity."""
    rows, _ = table
    cell = {(r["eps"], r["watermark"], r["perturbation"]): r for r in rows}
    clean = cell[(0.0, False, False)]["matching_accuracy"]
    assert cell[(4 / 255, False, True)]["matching_accuracy"] >= clean - 0.05, rows  # stealthy
    assert cell[(4 / 255, True, True)]["matching_accuracy"] <= 0.5 * clean, rows


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="a >= 50 % relative drop of verification accuracy over "
                   "all pairs (half impostors) at 4/255 is not reached: the watermark almost "
                   "never pulls an impostor probe within the threshold, so impostor pairs stay "
                   "rejected; measured 0.965 -> 0.675 (30 %), while genuine pairs fall "
                   "0.935 -> 0.409")
def test_attack_halves_accuracy_over_all_pairs_at_4_255(table):
    rows, _ = table
    cell = {(r["eps"], r["watermark"], r["perturbation"]): r for r in rows}
    clean = cell[(0.0, False, False)]["verification_accuracy"]
    assert cell[(4 / 255, True, True)]["verification_accuracy"] <= 0.5 * clean, rows
