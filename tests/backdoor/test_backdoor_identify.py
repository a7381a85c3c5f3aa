"""The bi-level MSPC identification (invariants on a tiny model), the runner and the CLI, and the
paper's claim at small scale (slow)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from trustfast.backdoor import (
    MSPCConfig,
    identify_mspc,
    masked_scaled_prediction_consistency,
    scaled_prediction_consistency,
)
from trustfast.cli import main
from trustfast.experiments import markdown_table, run_experiment
from trustfast.experiments.backdoor import IdentifyConfig


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 5))


def test_identify_invariants(one_intra_op_thread):
    model = _tiny_model()
    images = torch.rand(40, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    cfg = MSPCConfig(inner_steps=4, outer_rounds=2, batch_size=16)
    result = identify_mspc(model, images, cfg, progress=False)
    assert result.mask.shape == (1, 1, 8, 8)
    assert float(result.mask.min()) >= 0.0 and float(result.mask.max()) <= 1.0
    assert float(result.mask.min()) < 1.0  # the inner problem moved the mask
    # the threshold-free rule, and the scores are MSPC under the learned mask
    assert torch.equal(result.flagged, result.scores > 0)
    again = masked_scaled_prediction_consistency(model, images, result.mask, cfg.tau, cfg.scales)
    assert torch.equal(result.scores, again)
    # the warm start is MSPC with m = 1, tau = 0, i.e. 2 SPC - 1
    spc = scaled_prediction_consistency(model, images)
    assert torch.allclose(result.warm_start_scores, 2 * spc - 1)
    assert 1 <= len(result.history) <= 2
    assert all(p.requires_grad for p in model.parameters())  # restored
    assert all(p.grad is None for p in model.parameters())  # the model is not trained
    same = identify_mspc(model, images, cfg, progress=False)
    assert torch.equal(same.scores, result.scores) and torch.equal(same.mask, result.mask)
    assert json.dumps(result.to_json())


@pytest.mark.parametrize("kw, pattern", [
    ({"scales": []}, "scales"), ({"lam": -1.0}, "lam"), ({"inner_lr": 0.0}, "inner_lr"),
    ({"inner_steps": 0}, "inner_steps"), ({"outer_rounds": 1.5}, "outer_rounds"),
    ({"batch_size": 0}, "batch_size"), ({"kl_cap": -0.1}, "kl_cap"),
])
def test_mspc_config_errors_name_the_argument(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        identify_mspc(_tiny_model(), torch.rand(4, 3, 8, 8), MSPCConfig(**kw), progress=False)


@pytest.mark.parametrize("kw, pattern", [
    ({"attacks": ["nope"]}, "attacks"), ({"methods": ["abc"]}, "methods"),
    ({"ratio": 1.0}, "ratio"), ({"target": -1}, "target"), ({"epochs": 0}, "epochs"),
    ({"size": 7}, "size"),
])
def test_identify_config_errors_name_the_argument(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        IdentifyConfig(**kw).validate()


def test_cli_identify_writes_results_and_resumes(tmp_path, capsys, one_intra_op_thread):
    out = str(tmp_path / "bd")
    assert main(["backdoor", "identify", "--attack", "badnets", "--methods", "spc",
                 "--epochs", "2", "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "| badnets |" in printed and "AUROC" in printed
    result = json.load(open(os.path.join(out, "results.json")))
    assert result["config"]["attacks"] == ["badnets"] and result["config"]["ratio"] == 0.1
    (row,) = result["rows"]
    assert row["attack"] == "badnets" and row["method"] == "spc"
    assert 0.0 <= row["AUROC"] <= 1.0 and 0.0 <= row["TPR"] <= 1.0 and 0.0 <= row["FPR"] <= 1.0
    assert row["n_poisoned"] == round(0.1 * row["n"])
    for name in ("results.md", "identify.png", "model-badnets.safetensors"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    # resume: the finished attack is reused as is; another config is refused
    assert main(["backdoor", "identify", "--attack", "badnets", "--methods", "spc",
                 "--epochs", "2", "--out", out, "--resume"]) == 0
    assert json.load(open(os.path.join(out, "results.json")))["rows"] == result["rows"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["backdoor", "identify", "--attack", "badnets", "--methods", "spc",
              "--epochs", "3", "--out", out, "--resume"])
    assert "another config; keys that differ: epochs (2 -> 3)" in capsys.readouterr().err
    # the target must be a class of the data: checked before anything trains
    with pytest.raises(ValueError, match="target must be a class of the data"):
        run_experiment("backdoor-identify", IdentifyConfig(target=10), str(tmp_path / "t"))
    with pytest.raises(SystemExit):
        main(["backdoor", "identify", "--attack", "nope", "--out", out])
    assert "attacks must be" in capsys.readouterr().err


@pytest.mark.slow
def test_mspc_finds_badnets_and_blend_poisons(tmp_path, one_intra_op_thread):
    """The paper's claim at small scale (10 % poison ratio, colored digits 16x16, seed 0): MSPC
    has AUROC >= 0.9 and its threshold-free split TPR >= 0.8, FPR <= 0.2. Measured (one thread):
    BadNets MSPC 0.949 vs SPC 0.938; Blend MSPC 0.946 vs SPC 0.950, so MSPC >= SPC is asserted
    to within 0.01 (a miss of 0.004 on Blend, reported in BENCHMARKS.md)."""
    cfg = IdentifyConfig(attacks=["badnets", "blend"], methods=["mspc", "spc"])
    result = run_experiment("backdoor-identify", cfg, str(tmp_path))
    by = {(r["attack"], r["method"]): r for r in result.rows}
    table = markdown_table(result.rows)
    for attack in ("badnets", "blend"):
        mspc, spc = by[(attack, "mspc")], by[(attack, "spc")]
        assert mspc["clean_acc"] >= 90 and mspc["ASR"] >= 85, table
        assert mspc["AUROC"] >= 0.9, table
        assert mspc["AUROC"] >= spc["AUROC"] - 0.01, table
        assert mspc["TPR"] >= 0.8 and mspc["FPR"] <= 0.2, table
