"""The `trustfast` command: info, demo (results, resume), bench."""

import json
import os
import subprocess
import sys

import pytest

from trustfast.cli import main


def test_info_lists_ops_with_their_backend(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    from trustfast.ops import cpp_available

    expected = "cpp" if cpp_available() else "torch"
    lines = [ln.split() for ln in out.splitlines()]
    assert ["masked_sgd_step", expected] in lines
    assert ["masked_adamw_step", expected] in lines
    assert "torch" in out and "trustfast._C" in out


def test_console_script_runs_info():
    exe = os.path.join(os.path.dirname(sys.executable), "trustfast")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "trustfast"]
    res = subprocess.run([*cmd, "info"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "masked_sgd_step" in res.stdout


@pytest.mark.slow
def test_demo_writes_results_and_resumes(tmp_path, capsys):
    out = str(tmp_path / "demo")
    main(["demo", "--out", out])
    result = json.load(open(os.path.join(out, "results.json")))
    rows = {(r["section"], r["stage"]): r for r in result["rows"]}
    dense = rows[("masked_training", "dense")]
    pruned = rows[("masked_training", "pruned 80%")]
    assert dense["test_acc_%"] > 90 and pruned["test_acc_%"] > 90
    assert pruned["sparsity_%"] == pytest.approx(80.0, abs=0.1)
    assert pruned["pruned_weights_exactly_zero_%"] == 100.0
    speed = rows[("masked_update_speed", "SGD step, 1M params, 50% mask")]
    assert speed["fused_ms"] > 0 and speed["torch_foreach_ms"] > 0
    ridge = rows[("bilevel", "ridge penalty (implicit, CG)")]
    assert ridge["hypergrad_rel_error"] < 1e-5
    assert ridge["val_loss_end"] < ridge["val_loss_start"]
    cleaning = rows[("bilevel", "hyper-cleaning digits, 30% flipped")]
    assert cleaning["f1_flipped"] >= 0.8
    assert cleaning["test_acc_cleaned_%"] > cleaning["test_acc_noisy_%"]
    robust = [r["robust_acc_%"] for r in result["rows"] if r["section"] == "robustness"]
    assert len(robust) == 6 and robust[0] > 90 and robust[-1] < robust[0] - 20
    assert all(a >= b for a, b in zip(robust, robust[1:])), robust  # falls with eps
    backdoor = {r["stage"]: r for r in result["rows"] if r["section"] == "backdoor"}
    assert set(backdoor) == {"badnets / mspc", "badnets / spc", "badnets / strip"}
    assert backdoor["badnets / mspc"]["clean_acc"] > 90 and backdoor["badnets / mspc"]["ASR"] > 90
    assert all(0.0 <= r["AUROC"] <= 1.0 for r in backdoor.values())
    assert backdoor["badnets / strip"]["TPR"] is None  # STRIP has no threshold-free split
    attn = {r["stage"]: r for r in result["rows"] if r["section"] == "diffusion_attention"}
    fast = attn["FastAttnProcessor, 10 DDIM steps"]
    assert fast["layers_replaced"] == 8 and fast["max_abs_diff_vs_default"] < 1e-4
    assert fast["jvp_through_unet"] == "ok"
    llm = {r["stage"]: r for r in result["rows"] if r["section"] == "llm_unlearning"}
    assert llm["original"]["forget_EM"] == 1.0
    assert llm["simnpo"]["forget_EM"] <= 0.2 and llm["simnpo"]["retain_EM"] >= 0.8
    wm = {r["stage"]: r for r in result["rows"] if r["section"] == "watermark_attack"}
    assert wm["clean"]["verification_accuracy"] >= 0.9
    assert wm["eps 4/255"]["verification_accuracy"] >= wm["clean"]["verification_accuracy"] - 0.05
    assert (wm["eps 4/255 + watermark"]["verification_accuracy"]
            < wm["clean + watermark"]["verification_accuracy"] - 0.05)
    for name in ("results.md", "masked_training_loss.png", "bilevel.png", "robustness.png",
                 "robustness.json", "backdoor/identify.png",
                 "watermark_attack/watermark_attack.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0

    # --resume reuses the finished checkpoints: same training rows, no retraining
    capsys.readouterr()
    main(["demo", "--out", out, "--resume"])
    again = json.load(open(os.path.join(out, "results.json")))
    for section in ("masked_training", "bilevel", "robustness"):
        assert [r for r in again["rows"] if r["section"] == section] == [
            r for r in result["rows"] if r["section"] == section]
    with pytest.raises(ValueError, match="seed 0, not 1"):
        main(["demo", "--out", out, "--resume", "--seed", "1"])


def test_bench_writes_ratios(tmp_path, capsys):
    out = str(tmp_path / "bench")
    assert main(["bench", "--sizes", "2e4", "--repeats", "2", "--device", "cpu",
                 "--out", out]) == 0
    rows = json.load(open(os.path.join(out, "results.json")))["rows"]
    ops = {r["op"] for r in rows}
    assert ops == {"masked_sgd_step", "masked_adamw_step"}
    for r in rows:
        assert r["ms"] > 0 and r["trustfast speed-up"] > 0 and r["copy GB/s"] > 0
    fused = [r for r in rows if r["variant"] == "trustfast fused"]
    assert all(r["trustfast speed-up"] == 1.0 for r in fused)
    assert "| masked_sgd_step |" in capsys.readouterr().out


def test_bench_rejects_bad_sizes():
    with pytest.raises(ValueError, match="--sizes"):
        main(["bench", "--sizes", "ten"])
