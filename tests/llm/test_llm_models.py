"""Local Hugging Face models: a tiny Llama and a `tokenizers`-built tokenizer saved with
`save_pretrained`, read back by `load_causal_lm` (identical logits, tied embeddings still tied),
the WordTokenizer saved as a reloadable tokenizer, and errors naming `model`."""

from __future__ import annotations

import json
import os

import pytest
import torch

pytest.importorskip("transformers")

from hf_artefacts import (  # noqa: E402
    facts_and_word_tokenizer,
    perturb_,
    tiny_llama_for,
    word_level_tokenizer,
)

from trustfast.data.qa import encode_qa  # noqa: E402
from trustfast.llm.metrics import greedy_answers  # noqa: E402
from trustfast.llm.models import load_causal_lm, save_pretrained  # noqa: E402


@pytest.fixture(scope="module")
def facts_tok():
    return facts_and_word_tokenizer(n_people=10)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("tie", [False, True])
def test_save_pretrained_round_trip_gives_identical_logits(tmp_path, facts_tok, tie):
    facts, word = facts_tok
    tok = word_level_tokenizer(word, chat=True)
    model = tiny_llama_for(len(tok), tie=tie, double=False)
    perturb_(model, scale=0.1)
    out = save_pretrained(model, tok, tmp_path / "model")
    assert os.path.isfile(os.path.join(out, "model.safetensors"))
    assert oct(os.stat(out).st_mode & 0o777) != "0o700"  # not mkdtemp's private folder
    loaded, loaded_tok = load_causal_lm(out)
    assert not loaded.training and loaded.config.tie_word_embeddings == tie
    if tie:  # stored once, tied again on load
        assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    ids = encode_qa(tok, facts.qa[0].question, facts.qa[0].answer)["input_ids"][None]
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), rtol=0, atol=0)
    assert loaded_tok.chat_template == tok.chat_template
    record = facts.qa[1]
    assert encode_qa(loaded_tok, record.question, record.answer)["input_ids"].tolist() == \
        encode_qa(tok, record.question, record.answer)["input_ids"].tolist()
    # saving again over the folder replaces it
    perturb_(model, seed=5, scale=0.1)
    save_pretrained(model, tok, out)
    again, _ = load_causal_lm(out, device="cpu", dtype="float64")
    assert again.dtype == torch.float64
    torch.testing.assert_close(_logits(again, ids).float(), _logits(model, ids), rtol=1e-5,
                               atol=1e-5)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".model") or ".old-" in n]


def test_word_tokenizer_saves_as_a_hf_tokenizer_with_the_same_ids(tmp_path, facts_tok):
    from transformers import AutoTokenizer

    facts, word = facts_tok
    model = tiny_llama_for(word.vocab_size, double=False)
    perturb_(model)
    save_pretrained(model, word, tmp_path / "m")
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "m"), local_files_only=True)
    loaded, loaded_tok = load_causal_lm(tmp_path / "m")
    for record in facts.qa[:8]:
        for key in ("input_ids", "labels"):
            assert encode_qa(hf, record.question, record.answer)[key].tolist() == \
                encode_qa(word, record.question, record.answer)[key].tolist()
    questions = [q.question for q in facts.qa[:3]]
    assert greedy_answers(loaded, loaded_tok, questions) == greedy_answers(model, word, questions)


def test_load_causal_lm_errors_name_model(tmp_path, facts_tok):
    _, word = facts_tok
    with pytest.raises(ValueError, match="model: .* is not a directory"):
        load_causal_lm(tmp_path / "nowhere")
    with pytest.raises(TypeError, match="model must be a path"):
        load_causal_lm(3)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="model: .* has no config.json"):
        load_causal_lm(empty)
    model = tiny_llama_for(word.vocab_size, double=False)
    model.config.save_pretrained(str(empty))
    with pytest.raises(ValueError, match="model: .* holds no weights"):
        load_causal_lm(empty)
    no_tok = tmp_path / "no_tok"
    model.save_pretrained(str(no_tok))
    with pytest.raises(ValueError, match="model: .* holds no tokenizer"):
        load_causal_lm(no_tok)
    with pytest.raises(ValueError, match="dtype must be"):
        load_causal_lm(no_tok, dtype="float8")
    with pytest.raises(TypeError, match="model must be a Hugging Face PreTrainedModel"):
        save_pretrained(torch.nn.Linear(2, 2), word, tmp_path / "x")
    with pytest.raises(TypeError, match="tokenizer must be"):
        save_pretrained(model, object(), tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with open(no_tok / "config.json") as f:
        assert json.load(f)["eos_token_id"] == word.eos_id  # the ids tiny_llama sets


def test_the_experiment_saves_each_unlearned_model_with_save_pretrained(tmp_path,
                                                                       one_intra_op_thread):
    """`trustfast llm-unlearn`: out/models/<method> is a Hugging Face folder holding the
    unlearned weights and the tokenizer; reloaded, it scores exactly as its row."""
    from trustfast.experiments import run_experiment
    from trustfast.experiments.llm import LLMUnlearnConfig
    from trustfast.llm.metrics import unlearning_scores

    cfg = LLMUnlearnConfig(n_people=10, hidden_size=32, finetune_epochs=2, retain_eval=2,
                           methods=["GradDiff"], unlearn={"epochs": 1, "batch_size": 2},
                           device="cpu")
    result = run_experiment("llm-unlearn", cfg, str(tmp_path))
    assert result.config["methods"] == ["graddiff"]
    folder = result.provenance["model_dirs"]["graddiff"]
    assert folder == str(tmp_path / "models" / "graddiff")
    model, tok = load_causal_lm(folder)
    assert tok("Question:", add_special_tokens=False)["input_ids"] == [4]  # the word ids
    from trustfast.data.facts import make_facts, split

    forget, retain, holdout = split(make_facts(10, seed=0), 0.1, 0.1, seed=0)
    row = result.rows[-1]
    scores = unlearning_scores(model, tok, forget, retain[:2], holdout)
    for key in ("forget_EM", "retain_EM", "forget_ROUGE", "retain_ROUGE", "forget_truth_ratio"):
        assert scores[key] == pytest.approx(row[key], abs=1e-9), key
