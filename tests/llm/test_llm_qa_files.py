"""`load_qa` on files in TOFU's layout (JSON, JSON lines, wrapped lists, other key names), its
errors (naming the file, the record and the key), and metrics on data without TOFU's
paraphrased / perturbed answers saying so."""

from __future__ import annotations

import json

import pytest
import torch

from trustfast.data.qa import (
    QA,
    REFUSALS,
    MissingQAFieldError,
    check_fields,
    load_qa,
    with_refusals,
)

TOFU = [
    {"question": "Who wrote 'The Silent Tide'?", "answer": "Kalio Rinsil wrote it.",
     "paraphrased_answer": "It was written by Kalio Rinsil.",
     "perturbed_answer": ["It was written by Vo Tel.", "It was written by Mar Eth.",
                          "It was written by Lun Dar."],
     "paraphrased_question": "Which author wrote 'The Silent Tide'?"},
    {"question": "Where was Kalio Rinsil born?", "answer": "Kalio Rinsil was born in Porto.",
     "paraphrased_answer": "The birthplace of Kalio Rinsil is Porto.",
     "perturbed_answer": ["The birthplace of Kalio Rinsil is Oslo.",
                          "The birthplace of Kalio Rinsil is Riga."]},
]


def _write(path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def _check_tofu(records):
    assert len(records) == 2 and all(isinstance(r, QA) for r in records)
    first, second = records
    assert first.question == TOFU[0]["question"] and first.answer == TOFU[0]["answer"]
    assert first.paraphrased_answer == TOFU[0]["paraphrased_answer"]
    assert first.perturbed_answers == TOFU[0]["perturbed_answer"]
    assert first.paraphrased_question == TOFU[0]["paraphrased_question"]
    assert second.paraphrased_question is None and second.refusal is None
    assert len(second.perturbed_answers) == 2


@pytest.mark.parametrize("layout", ["list", "jsonl_as_json", "jsonl", "data", "only_list"])
def test_load_qa_reads_tofu_layouts(tmp_path, layout):
    if layout == "list":
        path = _write(tmp_path / "forget.json", json.dumps(TOFU, indent=1))
    elif layout == "jsonl_as_json":  # TOFU's own *.json files are JSON lines
        path = _write(tmp_path / "forget10_perturbed.json",
                      "\n".join(json.dumps(r) for r in TOFU) + "\n")
    elif layout == "jsonl":
        path = _write(tmp_path / "forget.jsonl",
                      "\n" + "\n\n".join(json.dumps(r) for r in TOFU) + "\n")
    elif layout == "data":
        path = _write(tmp_path / "forget.json", json.dumps({"version": 1, "data": TOFU}))
    else:
        path = _write(tmp_path / "forget.json", json.dumps({"meta": "x", "forget10": TOFU}))
    _check_tofu(load_qa(path))


def test_load_qa_other_key_names_field_and_one_record(tmp_path):
    rows = [{"q": "Who?", "a": "Nobody.", "perturbed_answer": "Somebody."}]
    path = _write(tmp_path / "qa.json", json.dumps({"train": [], "forget": rows}))
    (record,) = load_qa(path, question_key="q", answer_key="a", field="forget")
    assert (record.question, record.answer, record.perturbed_answers) == \
        ("Who?", "Nobody.", ["Somebody."])  # one string becomes a list of one
    one = _write(tmp_path / "one.json", json.dumps({"question": "Who?", "answer": "Me.",
                                                    "refusal": "No idea."}))
    assert load_qa(one) == [QA("Who?", "Me.", refusal="No idea.")]


def test_load_qa_errors_name_the_file_record_and_key(tmp_path):
    path = _write(tmp_path / "bad.jsonl", json.dumps(TOFU[0]) + "\n" +
                  json.dumps({"question": "Who?", "response": "Me."}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl: record 1 has no 'answer' key") as err:
        load_qa(path)
    assert "'question', 'response'" in str(err.value)  # the keys present
    with pytest.raises(ValueError, match="record 0: 'answer' must be a string"):
        load_qa(_write(tmp_path / "t.json", json.dumps([{"question": "Q", "answer": ["A"]}])))
    with pytest.raises(ValueError, match="perturbed_answer' must be a list of strings"):
        load_qa(_write(tmp_path / "p.json", json.dumps([{"question": "Q", "answer": "A",
                                                         "perturbed_answer": [1, 2]}])))
    with pytest.raises(ValueError, match=r"empty\.json: the file is empty"):
        load_qa(_write(tmp_path / "empty.json", "  \n"))
    with pytest.raises(ValueError, match="holds no QA records"):
        load_qa(_write(tmp_path / "none.json", "[]"))
    with pytest.raises(ValueError, match="record 1 must be a JSON object"):
        load_qa(_write(tmp_path / "s.json", json.dumps([TOFU[0], "text"])))
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        load_qa(_write(tmp_path / "broken.jsonl", json.dumps(TOFU[0]) + "\n{oops\n"))
    with pytest.raises(ValueError, match="not valid JSON"):
        load_qa(_write(tmp_path / "broken.json", "[{"))
    with pytest.raises(ValueError, match="pass field="):
        load_qa(_write(tmp_path / "two.json", json.dumps({"a": TOFU, "b": TOFU})))
    with pytest.raises(ValueError, match="field='forget' is not a key"):
        load_qa(_write(tmp_path / "d.json", json.dumps({"data": TOFU})), field="forget")
    with pytest.raises(ValueError, match="path: no such file"):
        load_qa(tmp_path / "missing.json")
    with pytest.raises(TypeError, match="path must be"):
        load_qa(3)


def test_metrics_need_tofu_fields_and_say_so(tmp_path):
    """Truth ratio (and so forget quality) on data without paraphrased / perturbed answers
    raise MissingQAFieldError, a ValueError; the summary scores leave those columns out."""
    pytest.importorskip("transformers")
    from hf_artefacts import facts_and_word_tokenizer, tiny_llama_for

    from trustfast.llm.metrics import retain_model_reference, truth_ratio, unlearning_scores

    facts, word = facts_and_word_tokenizer(n_people=10)
    rows = [{"question": q.question, "answer": q.answer} for q in facts.qa[:6]]
    plain = load_qa(_write(tmp_path / "plain.json", json.dumps(rows)))
    model = tiny_llama_for(word.vocab_size)
    with pytest.raises(MissingQAFieldError, match=r"truth_ratio needs paraphrased_answer .*"
                                                  r"qa_list\[0\]"):
        truth_ratio(model, word, plain)
    assert issubclass(MissingQAFieldError, ValueError)
    reference = retain_model_reference(model, word, plain, plain[3:])
    assert reference["truth_ratios"] is None and 0.0 <= reference["mia_auc"] <= 1.0
    scores = unlearning_scores(model, word, plain[:3], plain[3:], plain[3:], reference)
    assert set(scores) == {"forget_EM", "retain_EM", "forget_ROUGE", "retain_ROUGE", "privleak"}
    forget, holdout = facts.qa[:8], facts.qa[20:28]
    full = unlearning_scores(model, word, forget, facts.qa[8:10], holdout,
                             retain_model_reference(model, word, forget, holdout))
    assert {"forget_truth_ratio", "forget_quality", "privleak"} <= set(full)
    assert full["forget_quality"] == pytest.approx(1.0)  # the same model as its reference
    assert full["privleak"] == pytest.approx(0.0)


def test_with_refusals_and_idk_examples():
    pytest.importorskip("transformers")
    from hf_artefacts import facts_and_word_tokenizer

    from trustfast.llm.train import encode_examples

    facts, word = facts_and_word_tokenizer(n_people=10)
    plain = [QA(q.question, q.answer) for q in facts.qa[:5]]
    with pytest.raises(MissingQAFieldError, match="idkdpo .* needs refusal"):
        encode_examples(word, plain, "DPO")
    filled = with_refusals(plain, seed=3)
    assert filled == with_refusals(plain, seed=3) and all(r.refusal in REFUSALS for r in filled)
    kept = with_refusals([QA("Q", "A", refusal="Pass.")])
    assert kept[0].refusal == "Pass."
    examples = encode_examples(word, filled, "idkdpo")
    assert {"idk_input_ids", "idk_labels", "idk_attention_mask"} <= set(examples[0])
    assert "idk_input_ids" not in encode_examples(word, filled, "npo")[0]
    check_fields(filled, ["refusal"], "x")
    with pytest.raises(TypeError, match=r"qa_list\[0\] must be a QA"):
        check_fields([{"question": "Q"}], [], "x")
    torch.testing.assert_close(examples[0]["input_ids"],
                               encode_examples(word, facts.qa[:1])[0]["input_ids"])
