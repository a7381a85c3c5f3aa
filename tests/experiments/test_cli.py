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
    assert set(result) == {"config", "provenance", "rows"}
    section = {}
    for r in result["rows"]:
        section.setdefault(r["section"], []).append(r)
    training = {r["stage"]: r for r in section["masked-training"]}
    dense, pruned = training["dense"], training["pruned 80%"]
    assert dense["test_acc_%"] > 90 and pruned["test_acc_%"] > 90
    assert pruned["sparsity_%"] == pytest.approx(80.0, abs=0.1)
    assert pruned["pruned_weights_exactly_zero_%"] == 100.0
    (speed,) = section["masked-update-speed"]
    assert speed["stage"] == "SGD step, 1M params, 50% mask"
    assert speed["fused_ms"] > 0 and speed["torch_foreach_ms"] > 0
    bilevel = {r["stage"]: r for r in section["bilevel"]}
    ridge = bilevel["ridge penalty (implicit, CG)"]
    assert ridge["hypergrad_rel_error"] < 1e-5
    assert ridge["val_loss_end"] < ridge["val_loss_start"]
    cleaning = bilevel["hyper-cleaning digits, 30% flipped"]
    assert cleaning["f1_flipped"] >= 0.8
    assert cleaning["test_acc_cleaned_%"] > cleaning["test_acc_noisy_%"]
    robust = [r["robust_acc_%"] for r in section["robustness"]]
    assert len(robust) == 6 and robust[0] > 90 and robust[-1] < robust[0] - 20
    assert all(a >= b for a, b in zip(robust, robust[1:])), robust  # falls with eps
    unlearning = {(r["method"], r["sparsity"]): r for r in section["unlearn"]}
    assert set(unlearning) == {(m, s) for m in ("retrain", "ft", "ga", "l1_sparse")
                               for s in (0.0, 0.9)}
    assert unlearning[("l1_sparse", 0.0)]["UA"] >= 90
    backdoor = {r["method"]: r for r in section["backdoor-identify"]}
    assert set(backdoor) == {"mspc", "spc", "strip"}
    assert {r["attack"] for r in backdoor.values()} == {"badnets"}
    assert backdoor["mspc"]["clean_acc"] > 90 and backdoor["mspc"]["ASR"] > 90
    assert all(0.0 <= r["AUROC"] <= 1.0 for r in backdoor.values())
    assert backdoor["strip"]["TPR"] is None  # STRIP has no threshold-free split
    attn = {r["stage"]: r for r in section["diffusion-attention"]}
    fast = attn["FastAttnProcessor, 10 DDIM steps"]
    assert fast["layers_replaced"] == 8 and fast["max_abs_diff_vs_default"] < 1e-4
    assert fast["jvp_through_unet"] == "ok"
    fair = section["fairskin"]
    generation = {r["model"]: r for r in fair if r["stage"] == "generation"}
    assert set(generation) == {"vanilla", "fairskin"}
    for r in generation.values():  # six tones, each a finite distance >= 0
        tones = [v for k, v in r.items() if k.startswith("FD_cnn_") and k[7:] in
                 ("I", "II", "III", "IV", "V", "VI")]
        assert len(tones) == 6 and all(v >= 0 for v in tones)
        assert r["FD_cnn_gap"] == pytest.approx(max(tones) - min(tones))
    classifier = {r["training"]: r for r in fair if r["stage"] == "classifier"}
    assert set(classifier) == {"real", "real + vanilla synthetic",
                               "real + vanilla synthetic, level-3 weights",
                               "real + fairskin synthetic, level-3 weights"}
    assert classifier["real"]["accuracy"] > 0.4  # 5 diseases: chance is about 0.2
    assert all(r["worst_group_accuracy"] <= r["accuracy"] for r in classifier.values())
    backdoored = {r["poison_ratio"]: r for r in section["diffusion-backdoor"]}
    assert set(backdoored) == {0.0, 0.1}
    assert backdoored[0.1]["target_share"] == pytest.approx(0.5)
    assert backdoored[0.1]["n_poisoned"] == int(0.1 * backdoored[0.1]["n_train"])
    for r in backdoored.values():
        shares = [r[f"G{g}_share"] for g in (1, 2, 3, 4)]
        assert sum(shares) == pytest.approx(1.0)
        assert r["misalignment"] == pytest.approx(shares[0] + shares[2])
        assert 0.0 <= r["dc_acc"] <= 1.0 and r["FD_cnn"] >= 0
    llm = {r["method"]: r for r in section["llm-unlearn"]}
    assert llm["original"]["forget_EM"] == 1.0
    assert llm["simnpo"]["forget_EM"] <= 0.2 and llm["simnpo"]["retain_EM"] >= 0.8
    wm = {(r["eps"], r["watermark"], r["perturbation"]): r for r in section["watermark-attack"]}
    assert wm[(0.0, False, False)]["verification_accuracy"] >= 0.9
    assert (wm[(4 / 255, False, True)]["verification_accuracy"]
            >= wm[(0.0, False, False)]["verification_accuracy"] - 0.05)
    assert (wm[(4 / 255, True, True)]["verification_accuracy"]
            < wm[(0.0, True, False)]["verification_accuracy"] - 0.05)
    for name in ("results.md", "masked-training/masked_training_loss.png",
                 "bilevel/bilevel_ridge.png", "robustness/robustness.png",
                 "unlearn/unlearn.png", "backdoor-identify/identify.png",
                 "llm-unlearn/llm_unlearning.png", "fairskin/samples.png",
                 "fairskin/fd_by_group.png", "fairskin/accuracy_by_group.png",
                 "diffusion-backdoor/groups.png",
                 "diffusion-backdoor/trigger_ratio_badnets.png",
                 "watermark-attack/watermark_attack.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    for name in section:  # every experiment wrote its own results
        saved = json.load(open(os.path.join(out, name, "results.json")))
        assert saved["rows"] == [{k: v for k, v in r.items() if k != "section"}
                                 for r in section[name]]

    # --resume reuses the finished experiments: identical rows, timings included
    capsys.readouterr()
    main(["demo", "--out", out, "--resume"])
    again = json.load(open(os.path.join(out, "results.json")))
    assert again["rows"] == result["rows"]
    with pytest.raises(SystemExit):
        main(["demo", "--out", out, "--resume", "--seed", "1"])
    assert "keys that differ: seed (0 -> 1)" in capsys.readouterr().err


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


def test_bench_rejects_bad_sizes(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--sizes", "ten"])
    assert exc.value.code == 2
    assert "--sizes must be comma-separated numbers" in capsys.readouterr().err
    from trustfast._bench.cli import parse_sizes

    with pytest.raises(ValueError, match="--sizes"):  # from Python: a ConfigError
        parse_sizes("inf")
