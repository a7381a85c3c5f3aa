"""`trustfast llm-unlearn`: config file, results, resume, and errors."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("transformers")

from trustfast.cli import main  # noqa: E402


def test_llm_unlearn_cli_writes_results_and_resumes(tmp_path, capsys, one_intra_op_thread):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("methods: [ga]\nn_people: 10\nfinetune_epochs: 3\nunlearn_epochs: 1\n"
                   "retain_eval: 2\n")
    out = str(tmp_path / "run")
    assert main(["llm-unlearn", "--config", str(cfg), "--out", out]) == 0
    assert "| ga |" in capsys.readouterr().out
    result = json.load(open(os.path.join(out, "results.json")))
    assert result["config"]["methods"] == ["ga"] and result["config"]["n_people"] == 10
    assert [r["method"] for r in result["rows"]] == ["original", "retain_only", "ga"]
    for r in result["rows"]:
        assert 0.0 <= r["forget_EM"] <= 1.0 and 0.0 <= r["retain_ROUGE"] <= 1.0
    for name in ("results.md", "llm_unlearning.png", "memorized.safetensors"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    # resume: nothing is recomputed, the rows are the same; another config is refused
    assert main(["llm-unlearn", "--config", str(cfg), "--out", out, "--resume"]) == 0
    assert json.load(open(os.path.join(out, "results.json")))["rows"] == result["rows"]
    with pytest.raises(ValueError, match="another config"):
        main(["llm-unlearn", "--config", str(cfg), "--out", out, "--resume", "--seed", "3"])


@pytest.mark.parametrize("text, pattern", [
    ("methods: [nope]\n", "methods must be"), ("n_peple: 10\n", "unknown config keys"),
    ("unlearn_epochs: 0\n", "unlearn_epochs"),
])
def test_llm_unlearn_cli_config_errors(tmp_path, capsys, text, pattern):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    with pytest.raises(SystemExit):
        main(["llm-unlearn", "--config", str(cfg), "--out", str(tmp_path / "o")])
    assert pattern in capsys.readouterr().err
