"""The llm-unlearn experiment runs the same with the built-in WordTokenizer and with its Hugging
Face twin (the same rows), resumes from its folder, and takes OpenUnlearning's method names."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("transformers")

from trustfast.config import ConfigError  # noqa: E402
from trustfast.experiments import run_experiment  # noqa: E402
from trustfast.experiments.llm import LLMUnlearnConfig  # noqa: E402

SMALL = {"n_people": 10, "finetune_epochs": 3, "unlearn": {"epochs": 1}, "retain_eval": 2,
         "hidden_size": 32, "device": "cpu", "save_models": False}


def _without_seconds(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_word_and_hf_tokenizers_give_the_same_rows_and_resume(tmp_path, one_intra_op_thread):
    from trustfast.data.facts import WordTokenizer, make_facts, split
    from trustfast.llm.models import tiny_llama

    cfg = LLMUnlearnConfig(methods=["GradAscent", "DPO"], **SMALL)
    out = str(tmp_path / "run")
    rows = run_experiment("llm-unlearn", cfg, out).rows
    assert [r["method"] for r in rows] == ["original", "retain_only", "ga", "idkdpo"]
    assert json.load(open(os.path.join(out, "results.json")))["config"]["methods"] == \
        ["ga", "idkdpo"]
    # the same run from Python objects: the facts, the tokenizer's Hugging Face twin and a tiny
    # Llama built like the experiment's
    facts = make_facts(10, seed=0)
    forget, retain, holdout = split(facts, 0.1, 0.1, seed=0)
    hf = WordTokenizer(facts.texts()).to_hf()
    model = tiny_llama(len(hf), 32, hf.pad_token_id, hf.bos_token_id, hf.eos_token_id, seed=0)
    gold = tiny_llama(len(hf), 32, hf.pad_token_id, hf.bos_token_id, hf.eos_token_id, seed=0)
    from trustfast.llm.train import encode_examples, finetune

    finetune(gold, encode_examples(hf, retain), hf.pad_token_id, 3, lr=3e-3, batch_size=16)
    hf_rows = run_experiment(
        "llm-unlearn", LLMUnlearnConfig(methods=["ga", "idkdpo"], **SMALL),
        str(tmp_path / "hf"), model=model, tokenizer=hf, forget=forget, retain=retain,
        holdout=holdout, retain_model=gold).rows
    assert _without_seconds(hf_rows) == _without_seconds(rows)
    # resume: nothing recomputed; another config refused, naming the keys that differ
    again = run_experiment("llm-unlearn", LLMUnlearnConfig(methods=["ga", "idkdpo"], **SMALL),
                           out, resume=True)
    assert again.rows == rows
    with pytest.raises(ConfigError, match="keys that differ: methods"):
        run_experiment("llm-unlearn", LLMUnlearnConfig(methods=["ga"], **SMALL), out,
                       resume=True)
