"""`trustfast llm-unlearn`: the built-in facts (config file, results, resume, errors), and the
users' own artefacts: a tiny LlamaForCausalLM saved with save_pretrained with a
PreTrainedTokenizerFast built offline, TOFU-layout JSON / JSONL QA files, a retain model. The
CLI's rows equal the Python API's on the same inputs."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("transformers")

from hf_artefacts import facts_and_word_tokenizer, perturb_, tiny_llama_for, word_level_tokenizer  # noqa: E402, I001

from trustfast.cli import main  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def test_builtin_facts_write_results_and_resume(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("methods: [GradAscent]\nn_people: 10\nfinetune_epochs: 3\n"
                   "unlearn: {epochs: 1}\nretain_eval: 2\ndevice: cpu\n")
    out = str(tmp_path / "run")
    assert main(["llm-unlearn", "--config", str(cfg), "--out", out]) == 0
    assert "| ga |" in capsys.readouterr().out
    result = json.load(open(os.path.join(out, "results.json")))
    assert result["config"]["methods"] == ["ga"] and result["config"]["n_people"] == 10
    assert [r["method"] for r in result["rows"]] == ["original", "retain_only", "ga"]
    for r in result["rows"]:
        assert 0.0 <= r["forget_EM"] <= 1.0 and 0.0 <= r["retain_ROUGE"] <= 1.0
    for name in ("results.md", "llm_unlearning.png", "memorized.safetensors",
                 "models/ga/config.json", "models/ga/tokenizer.json"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    resolved = result["provenance"]["resolved_config"]["unlearn_configs"]["ga"]
    assert resolved["epochs"] == 1 and resolved["lr"] == 1e-3 and resolved["method"] == "ga"
    # resume: nothing is recomputed, the rows are the same; another config is refused
    assert main(["llm-unlearn", "--config", str(cfg), "--out", out, "--resume"]) == 0
    assert json.load(open(os.path.join(out, "results.json")))["rows"] == result["rows"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["llm-unlearn", "--config", str(cfg), "--out", out, "--resume", "--seed", "3"])
    assert "keys that differ: seed (0 -> 3)" in capsys.readouterr().err


@pytest.mark.parametrize("text, pattern", [
    ("methods: [nope]\n", "methods must be one of"),
    ("n_peple: 10\n", "unknown config keys ['n_peple']"),
    ("unlearn: {epochs: 0}\n", "unlearn.epochs must be >= 1, got 0"),
    ("unlearn: {lr: fast}\n", "unlearn.lr must be a number, got 'fast'"),
    ("forget: nofile.json\nretain: r.json\n", "forget must be an existing JSON / JSONL file"),
    ("model: /no/such/folder\n", "model must be 'tiny' or a local Hugging Face folder"),
])
def test_config_errors_name_the_key(tmp_path, capsys, text, pattern):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    with pytest.raises(SystemExit):
        main(["llm-unlearn", "--config", str(cfg), "--out", str(tmp_path / "o")])
    assert pattern in capsys.readouterr().err


def _tofu_records(qas, with_variants: bool = True) -> list[dict]:
    out = []
    for q in qas:
        record = {"question": q.question, "answer": q.answer}
        if with_variants:
            record.update(paraphrased_answer=q.paraphrased_answer,
                          perturbed_answer=list(q.perturbed_answers))
        out.append(record)
    return out


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    """A model folder and a retain-model folder (tiny Llamas over a word-level HF tokenizer),
    and TOFU-layout forget (JSON), retain (JSONL) and holdout (JSON) files."""
    from trustfast.data.facts import split
    from trustfast.llm.models import save_pretrained

    root = tmp_path_factory.mktemp("hf")
    facts, word = facts_and_word_tokenizer(n_people=20)
    tok = word_level_tokenizer(word)
    forget, retain, holdout = split(facts, 0.1, 0.1, seed=0)
    for name, seed in (("model", 0), ("retain_model", 1)):
        model = tiny_llama_for(len(tok), seed=seed, double=False)
        perturb_(model, seed=seed + 10)
        save_pretrained(model, tok, root / name)
    (root / "forget.json").write_text(json.dumps(_tofu_records(forget)))
    (root / "retain.jsonl").write_text(
        "\n".join(json.dumps(r) for r in _tofu_records(retain)) + "\n")
    (root / "holdout.json").write_text(json.dumps({"data": _tofu_records(holdout)}))
    return root


def test_users_model_and_tofu_files_through_the_cli_and_the_python_api(artefacts, tmp_path,
                                                                       capsys):
    from trustfast.config import build_config
    from trustfast.experiments import run_experiment
    from trustfast.experiments.llm import LLMUnlearnConfig
    from trustfast.llm.models import load_causal_lm

    a = artefacts
    out = str(tmp_path / "cli")
    argv = ["llm-unlearn", "--model", str(a / "model"), "--forget", str(a / "forget.json"),
            "--retain", str(a / "retain.jsonl"), "--holdout", str(a / "holdout.json"),
            "--retain-model", str(a / "retain_model"), "--methods", "NPO,SimNPO",
            "--set", "unlearn.epochs=1", "--set", "unlearn.batch_size=4", "--set",
            "retain_eval=8", "--device", "cpu", "--out", out]
    assert main(argv) == 0
    saved = json.load(open(os.path.join(out, "results.json")))
    rows = saved["rows"]
    assert [r["method"] for r in rows] == ["original", "retain_only", "npo", "simnpo"]
    for r in rows:  # every TOFU / MUSE score the data supports is there
        assert {"forget_EM", "retain_EM", "forget_ROUGE", "retain_ROUGE", "forget_truth_ratio",
                "forget_quality", "privleak"} <= set(r), r
    assert rows[1]["forget_quality"] == 1.0 and rows[1]["privleak"] == 0.0  # the reference
    assert saved["provenance"]["data"] == {"source": "files", "forget": 8, "retain": 64,
                                           "holdout": 8,
                                           "format": saved["provenance"]["data"]["format"]}
    assert saved["provenance"]["model"]["memorize_epochs"] == 0  # a folder is used as it is
    # each unlearned model is a Hugging Face folder with its tokenizer
    model, tok = load_causal_lm(os.path.join(out, "models", "npo"))
    assert tok.pad_token == "<pad>" and type(model).__name__ == "LlamaForCausalLM"
    # the Python API on the same files gives the same rows
    cfg = build_config(LLMUnlearnConfig, {
        "model": str(a / "model"), "forget": str(a / "forget.json"),
        "retain": str(a / "retain.jsonl"), "holdout": str(a / "holdout.json"),
        "retain_model": str(a / "retain_model"), "methods": ["npo", "simnpo"],
        "unlearn": {"epochs": 1, "batch_size": 4}, "retain_eval": 8, "device": "cpu",
        "save_models": False})
    api = run_experiment("llm-unlearn", cfg, str(tmp_path / "api"))
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(api.rows) == strip(rows)


def test_model_name_or_path_is_accepted_as_model(artefacts, tmp_path):
    """Hugging Face's / OpenUnlearning's config key names the model folder too."""
    from trustfast.experiments.llm import LLMUnlearnConfig

    cfg = LLMUnlearnConfig(model_name_or_path=str(artefacts / "model"),
                           forget=str(artefacts / "forget.json"),
                           retain=str(artefacts / "retain.jsonl"))
    assert cfg.model == str(artefacts / "model") and cfg.model_name_or_path is None
    with pytest.raises(ValueError, match="model_name_or_path must be the same as model"):
        LLMUnlearnConfig(model=str(artefacts / "retain_model"),
                         model_name_or_path=str(artefacts / "model"),
                         forget=str(artefacts / "forget.json"),
                         retain=str(artefacts / "retain.jsonl"))


def test_other_field_names_and_data_without_tofu_variants(artefacts, tmp_path):
    """--question-key / --answer-key; without paraphrased / perturbed answers or a retain model
    the truth ratio, forget quality and PrivLeak are left out, not guessed."""
    a = artefacts
    for name in ("forget", "retain"):
        src = a / ("forget.json" if name == "forget" else "retain.jsonl")
        text = src.read_text()
        records = json.loads(text) if name == "forget" else [json.loads(line) for line in
                                                             text.splitlines()]
        (tmp_path / f"{name}.json").write_text(json.dumps(
            [{"prompt": r["question"], "response": r["answer"]} for r in records]))
    out = str(tmp_path / "out")
    assert main(["llm-unlearn", "--model", str(a / "model"), "--forget",
                 str(tmp_path / "forget.json"), "--retain", str(tmp_path / "retain.json"),
                 "--question-key", "prompt", "--answer-key", "response", "--methods", "ga",
                 "--set", "unlearn.epochs=1", "--set", "save_models=false", "--device", "cpu",
                 "--out", out]) == 0
    rows = json.load(open(os.path.join(out, "results.json")))["rows"]
    assert [r["method"] for r in rows] == ["original", "ga"]
    for r in rows:
        assert "forget_EM" in r and "forget_truth_ratio" not in r and "privleak" not in r
