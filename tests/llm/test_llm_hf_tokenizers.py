"""Hugging Face tokenizers in `encode_qa` and the TOFU metrics: prompt / answer ids and labels,
chat templates as `apply_chat_template` renders them, in-context answer ids for byte-level BPE,
and parity of every metric with the built-in WordTokenizer on the same model weights."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from hf_artefacts import (  # noqa: E402
    byte_level_bpe_tokenizer,
    facts_and_word_tokenizer,
    perturb_,
    tiny_llama_for,
    word_level_tokenizer,
)

from trustfast.data.facts import encode_qa  # noqa: E402
from trustfast.data.qa import QAFormat, collate, qa_format  # noqa: E402
from trustfast.llm.metrics import (  # noqa: E402
    answer_log_probs,
    exact_match,
    greedy_answers,
    min_k_prob_scores,
    truth_ratio,
    unlearning_scores,
)


@pytest.fixture(scope="module")
def facts_tok():
    return facts_and_word_tokenizer(n_people=20)


@pytest.fixture(scope="module")
def hf(facts_tok):
    return word_level_tokenizer(facts_tok[1])


def test_word_level_hf_tokenizer_has_the_word_tokenizer_ids(facts_tok, hf):
    facts, word = facts_tok
    twin = word.to_hf()
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (1, 2, 0) and len(hf) == \
        word.vocab_size
    for text in facts.texts():
        ids = word.encode(text)
        assert hf(text, add_special_tokens=False)["input_ids"] == ids
        assert twin(text, add_special_tokens=False)["input_ids"] == ids
        assert twin.decode(ids, skip_special_tokens=True) == word.decode(ids)


def test_encode_qa_on_a_hf_tokenizer_labels_exactly_the_answer_and_eos(facts_tok, hf):
    facts, word = facts_tok
    for record in facts.qa[:12]:
        got = encode_qa(hf, record.question, record.answer)
        prompt = [hf.bos_token_id, *hf(f"Question: {record.question} Answer:",
                                       add_special_tokens=False)["input_ids"]]
        answer = hf(record.answer, add_special_tokens=False)["input_ids"]
        assert got["input_ids"].tolist() == prompt + answer + [hf.eos_token_id]
        assert got["labels"].tolist() == [-100] * len(prompt) + answer + [hf.eos_token_id]
        assert got["attention_mask"].tolist() == [1] * (len(prompt) + len(answer) + 1)
        # the built-in tokenizer gives the same ids (its path is unchanged)
        want = encode_qa(word, record.question, record.answer)
        for key in ("input_ids", "labels", "attention_mask"):
            assert torch.equal(got[key], want[key])


def test_chat_template_prompt_is_what_apply_chat_template_gives(facts_tok):
    facts, word = facts_tok
    chat = word_level_tokenizer(word, chat=True)
    fmt = QAFormat(chat)
    assert fmt.chat and qa_format(chat).chat
    for record in facts.qa[:8]:
        rendered = chat.apply_chat_template([{"role": "user", "content": record.question}],
                                            tokenize=True, add_generation_prompt=True)
        if not isinstance(rendered, list):  # transformers 5 returns a BatchEncoding
            rendered = rendered["input_ids"]
        got = encode_qa(chat, record.question, record.answer)
        n = len(rendered)
        assert got["input_ids"][:n].tolist() == rendered
        assert (got["labels"][:n] == -100).all() and (got["labels"][n:] != -100).all()
        answer = chat(record.answer, add_special_tokens=False)["input_ids"]
        assert got["labels"][n:].tolist() == answer + [chat.eos_token_id]
    # the plain prompt on demand, and a system prompt in the chat
    plain = QAFormat(chat, chat=False)
    assert plain.prompt_ids("Who?") == [1, *chat("Question: Who? Answer:",
                                                 add_special_tokens=False)["input_ids"]]
    assert QAFormat(chat, chat=False, add_bos=False).prompt_ids("Who?") == \
        plain.prompt_ids("Who?")[1:]
    system = QAFormat(chat, system_prompt="Be brief.")
    assert "<start> system <sep> Be brief." in system.prompt_text("Who?")


def test_byte_level_bpe_answer_ids_are_its_ids_in_context(facts_tok):
    """GPT-2-style BPE: the answer's first token carries the space after "Answer:"; the ids
    are those of the whole text, the labels start after the prompt's."""
    facts, _ = facts_tok
    bpe = byte_level_bpe_tokenizer(facts.texts())
    fmt = QAFormat(bpe)
    assert fmt.bos_id is None and fmt.pad_id == fmt.eos_id == bpe.eos_token_id  # no pad token
    for record in facts.qa[:12]:
        got = encode_qa(bpe, record.question, record.answer)
        whole = bpe(f"Question: {record.question} Answer: {record.answer}")["input_ids"]
        assert got["input_ids"].tolist() == whole + [bpe.eos_token_id]
        n_prompt = len(bpe(f"Question: {record.question} Answer:")["input_ids"])
        assert (got["labels"][:n_prompt] == -100).all()
        assert fmt.decode(got["input_ids"][n_prompt:]) == record.answer


def test_metrics_equal_on_word_and_hf_tokenizers_with_the_same_weights(facts_tok, hf):
    facts, word = facts_tok
    model = tiny_llama_for(word.vocab_size, seed=0)
    perturb_(model)
    qas = facts.qa[:6]
    questions, answers = [q.question for q in qas], [q.answer for q in qas]
    assert greedy_answers(model, hf, questions, 8) == greedy_answers(model, word, questions, 8)
    for got, want in zip(answer_log_probs(model, hf, questions, answers),
                         answer_log_probs(model, word, questions, answers)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(min_k_prob_scores(model, hf, questions, answers),
                               min_k_prob_scores(model, word, questions, answers), rtol=0, atol=0)
    torch.testing.assert_close(truth_ratio(model, hf, qas), truth_ratio(model, word, qas),
                               rtol=0, atol=0)
    holdout = facts.qa[40:44]
    assert unlearning_scores(model, hf, qas[:4], qas[4:], holdout, max_new_tokens=6) == \
        unlearning_scores(model, word, qas[:4], qas[4:], holdout, max_new_tokens=6)


def test_greedy_answers_stop_at_eos_and_skip_special_tokens(facts_tok, hf):
    """A model trained to answer one question stops at EOS: nothing after it is decoded."""
    facts, word = facts_tok
    from trustfast.llm.train import encode_examples, finetune

    model = tiny_llama_for(word.vocab_size, seed=0, double=False)
    record = facts.qa[0]
    finetune(model, encode_examples(hf, [record]), hf.pad_token_id, epochs=60, lr=1e-2,
             batch_size=1)
    got = greedy_answers(model, hf, [record.question], max_new_tokens=30)
    assert got == [record.answer] and exact_match(got[0], record.answer) == 1.0
    # the chat format trains and generates the same way
    chat = word_level_tokenizer(word, chat=True)
    model = tiny_llama_for(len(chat), seed=0, double=False)
    finetune(model, encode_examples(chat, [record]), chat.pad_token_id, epochs=60, lr=1e-2,
             batch_size=1)
    assert greedy_answers(model, chat, [record.question], max_new_tokens=30) == [record.answer]


def test_collate_pads_with_the_formats_pad_id(facts_tok):
    facts, word = facts_tok
    no_pad = word_level_tokenizer(word, pad=False)
    fmt = QAFormat(no_pad)
    assert fmt.pad_id == no_pad.eos_token_id
    batch = collate([fmt.encode(q.question, q.answer) for q in facts.qa[:3]], fmt.pad_id)
    pad = batch["attention_mask"] == 0
    assert (batch["input_ids"][pad] == fmt.pad_id).all() and (batch["labels"][pad] == -100).all()


def test_qa_format_errors_name_the_argument(facts_tok, hf):
    _, word = facts_tok
    with pytest.raises(TypeError, match="tokenizer must be"):
        QAFormat(object())
    with pytest.raises(ValueError, match="chat=True"):
        QAFormat(hf, chat=True)
    with pytest.raises(ValueError, match="chat=True"):
        QAFormat(word, chat=True)
    with pytest.raises(ValueError, match="add_bos"):
        QAFormat(word, add_bos=False)
    with pytest.raises(ValueError, match="add_bos=True"):
        QAFormat(byte_level_bpe_tokenizer(["a b c"], vocab_size=300), add_bos=True)
    with pytest.raises(ValueError, match="template"):
        QAFormat(word, template="Q: A:")
    with pytest.raises(ValueError, match="system_prompt"):
        QAFormat(hf, system_prompt="Be brief.")
    with pytest.raises(TypeError, match="answer must be a str"):
        encode_qa(hf, "Who?", 3)
    with pytest.raises(ValueError, match="max_length"):
        encode_qa(hf, "Who?", "Nobody.", max_length=3)
    no_eos = word_level_tokenizer(word)
    no_eos.eos_token = None
    with pytest.raises(ValueError, match="eos_token"):
        QAFormat(no_eos)
