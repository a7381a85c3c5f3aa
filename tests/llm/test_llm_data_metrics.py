"""Synthetic TOFU-style facts, the word tokenizer and batching, and the LLM unlearning metrics:
hand cases with known answers, and model-based metrics against a direct float64 computation
from a tiny random Llama's logits."""

import math

import pytest
import torch

from trustfast.data.facts import WordTokenizer, collate, encode_qa, make_facts, split
from trustfast.llm.metrics import (
    answer_log_probs,
    exact_match,
    forget_quality,
    greedy_answers,
    mia_auc,
    min_k_prob_scores,
    model_utility,
    privleak,
    rouge_l_recall,
    truth_ratio,
    truth_ratio_score,
)


@pytest.fixture(scope="module")
def facts():
    return make_facts(n_people=100, seed=0)


@pytest.fixture(scope="module")
def tok(facts):
    return WordTokenizer(facts.texts())


@pytest.fixture(scope="module")
def model(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=128)
    return LlamaForCausalLM(config).double().eval()


def direct_log_probs(model, tok, question, answer):
    """log p of each answer token and <eos>, from one unpadded forward pass."""
    prompt = [tok.bos_id, *tok.encode(f"Question: {question} Answer:")]
    target = [*tok.encode(answer), tok.eos_id]
    with torch.no_grad():
        log_probs = model(torch.tensor([prompt + target])).logits[0].log_softmax(-1)
    positions = torch.arange(len(prompt) - 1, len(prompt) + len(target) - 1)
    return log_probs[positions, torch.tensor(target)]


# --- facts -------------------------------------------------------------------------------------

def test_facts_are_seeded_with_unique_names_and_short_answers(facts):
    assert facts == make_facts(n_people=100, seed=0)
    assert facts.people != make_facts(n_people=100, seed=1).people
    names = [p.name for p in facts.people]
    assert len(set(names)) == 100 and len(facts) == 400
    for person in facts.people:
        records = [r for r in facts.qa if r.person == person.name]
        assert [r.attribute for r in records] == ["birthplace", "job", "birth_year", "colour"]
        for r in records:
            value = str(getattr(person, r.attribute))
            assert person.name in r.question and person.name in r.paraphrased_question
            assert r.question != r.paraphrased_question and r.answer != r.paraphrased_answer
            assert value in r.answer and value in r.paraphrased_answer
            assert len(set(r.perturbed_answers)) == 3
            assert all(value not in a.split() and value + "." not in a.split()
                       for a in r.perturbed_answers)
            texts = [r.answer, r.paraphrased_answer, *r.perturbed_answers, r.refusal]
            assert max(len(t.split()) for t in texts) <= 8


def test_split_is_by_person_with_the_requested_sizes(facts):
    forget, retain, holdout = split(facts, forget=0.1, holdout=0.1, seed=0)
    people = [{r.person for r in part} for part in (forget, retain, holdout)]
    assert [len(p) for p in people] == [10, 80, 10]
    assert [len(part) for part in (forget, retain, holdout)] == [40, 320, 40]
    assert not (people[0] & people[1] or people[0] & people[2] or people[1] & people[2])
    assert people[0] | people[1] | people[2] == {p.name for p in facts.people}
    assert split(facts, seed=0)[0] == forget and split(facts, seed=1)[0] != forget
    assert len(split(facts, forget=0.05, holdout=0.0)[2]) == 0


@pytest.mark.parametrize("kw, pattern", [(dict(forget=0.0), "forget must be"),
                                         (dict(holdout=-0.1), "holdout must be"),
                                         (dict(forget=0.5, holdout=0.5), "retain")])
def test_split_rejects_bad_fractions(facts, kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        split(facts, **kw)


# --- tokenizer and batching --------------------------------------------------------------------

def test_tokenizer_round_trips_every_fact_text(facts, tok):
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.vocab_size == len(tok.itos) == len(set(tok.itos))
    for text in [*facts.texts(), "Question:", "Answer:"]:
        ids = tok.encode(text)
        assert tok.unk_id not in ids and tok.decode(ids) == text, text
    assert tok.encode("Zzyzx born?")[0] == tok.unk_id
    ids = [tok.bos_id, *tok.encode("I don't know."), tok.eos_id, tok.pad_id]
    assert tok.decode(ids) == "<bos> I don't know. <eos> <pad>"
    assert tok.decode(torch.tensor(ids), skip_special_tokens=True) == "I don't know."
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_encode_qa_labels_exactly_the_answer_and_eos(facts, tok):
    r = facts.qa[5]
    item = encode_qa(tok, r.question, r.answer)
    n_prompt = 1 + len(tok.encode(f"Question: {r.question} Answer:"))
    n_answer = len(tok.encode(r.answer)) + 1
    ids, labels = item["input_ids"], item["labels"]
    assert ids.dtype == labels.dtype == torch.long and ids.shape == (n_prompt + n_answer,)
    assert tok.decode(ids) == f"<bos> Question: {r.question} Answer: {r.answer} <eos>"
    assert (labels[:n_prompt] == -100).all()
    assert torch.equal(labels[n_prompt:], ids[n_prompt:]) and labels[-1] == tok.eos_id
    assert torch.equal(item["attention_mask"], torch.ones_like(ids))
    with pytest.raises(ValueError, match="max_length"):
        encode_qa(tok, r.question, r.answer, max_length=len(ids) - 1)


def test_collate_right_pads(facts, tok):
    items = [encode_qa(tok, r.question, a) for r in facts.qa[:2]
             for a in (r.answer, r.refusal)]
    batch = collate(items, tok.pad_id)
    length = max(len(i["input_ids"]) for i in items)
    assert all(v.shape == (4, length) and v.dtype == torch.long for v in batch.values())
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        for key, fill in (("input_ids", tok.pad_id), ("labels", -100), ("attention_mask", 0)):
            assert torch.equal(batch[key][row, :n], item[key])
            assert (batch[key][row, n:] == fill).all()
    with pytest.raises(ValueError, match="empty"):
        collate([], tok.pad_id)


# --- text metrics ------------------------------------------------------------------------------

def test_rouge_l_recall_hand_cases():
    assert rouge_l_recall("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert rouge_l_recall("dogs bark loudly", "the cat sat") == 0.0
    # LCS "the cat on mat" = 4 of the reference's 6 words; recall, so the reverse is 4 / 4
    assert rouge_l_recall("the cat on mat", "the cat sat on the mat") == pytest.approx(4 / 6)
    assert rouge_l_recall("the cat sat on the mat", "the cat on mat") == 1.0
    assert rouge_l_recall("a b c d", "a c b d") == 0.75  # subsequence, not substring
    assert rouge_l_recall("The CAT, sat.", "the cat sat") == 1.0
    assert rouge_l_recall("anything", "") == 0.0 and rouge_l_recall("", "the cat") == 0.0
    # Porter stemming (TOFU's use_stemmer=True): "cats"/"cat" and "running"/"runs" match
    assert rouge_l_recall("the cats were running", "cat runs") == 1.0
    assert rouge_l_recall("the cats were running", "cat runs", use_stemmer=False) == 0.0


def test_exact_match_normalizes_case_punctuation_and_spaces():
    assert exact_match("Vorin  Kastel was born in LISBON", "Vorin Kastel was born in Lisbon.") == 1
    assert exact_match("Vorin Kastel was born in Oslo.", "Vorin Kastel was born in Lisbon.") == 0
    assert exact_match("born in Lisbon", "Vorin Kastel was born in Lisbon.") == 0
    with pytest.raises(TypeError, match="prediction"):
        exact_match(None, "x")


# --- model-based metrics against direct float64 computations -----------------------------------

def test_answer_log_probs_match_direct_logits(facts, tok, model):
    records = facts.qa[:5]
    questions = [r.question for r in records]
    answers = [r.answer if i % 2 else r.refusal for i, r in enumerate(records)]  # mixed lengths
    sums, counts = answer_log_probs(model, tok, questions, answers, batch_size=2)
    direct = [direct_log_probs(model, tok, q, a) for q, a in zip(questions, answers)]
    assert sums.dtype == torch.float64 and counts.dtype == torch.long
    assert counts.tolist() == [len(d) for d in direct]
    torch.testing.assert_close(sums, torch.stack([d.sum() for d in direct]),
                               atol=1e-10, rtol=1e-10)


def test_truth_ratio_matches_direct_computation(facts, tok, model):
    records = facts.qa[:6]
    for mean in ("geometric", "arithmetic"):
        expected = []
        for r in records:
            true = direct_log_probs(model, tok, r.question, r.paraphrased_answer).mean()
            false = torch.stack([direct_log_probs(model, tok, r.question, a).mean()
                                 for a in r.perturbed_answers])
            if mean == "geometric":
                expected.append(math.exp(false.mean() - true))
            else:
                expected.append(float(false.exp().mean() / true.exp()))
        r_values = truth_ratio(model, tok, records, batch_size=4, perturbed_mean=mean)
        assert r_values.shape == (6,) and r_values.dtype == torch.float64
        torch.testing.assert_close(r_values, torch.tensor(expected, dtype=torch.float64),
                                   atol=1e-10, rtol=1e-10)


def test_min_k_prob_scores_match_direct_computation(facts, tok, model):
    records = facts.qa[:4]
    questions, answers = [r.question for r in records], [r.answer for r in records]
    for k in (0.4, 0.01, 1.0):
        expected = []
        for q, a in zip(questions, answers):
            lp = direct_log_probs(model, tok, q, a)[:-1]  # without the EOS prediction
            n_low = max(1, int(len(lp) * k))
            expected.append(lp.sort().values[:n_low].mean())
        torch.testing.assert_close(min_k_prob_scores(model, tok, questions, answers, k=k),
                                   torch.stack(expected), atol=1e-10, rtol=1e-10)


def test_greedy_answers_match_an_argmax_loop_and_keep_train_mode(facts, tok, model):
    questions = [r.question for r in facts.qa[:2]]
    expected = []
    for q in questions:
        ids = [tok.bos_id, *tok.encode(f"Question: {q} Answer:")]
        new = []
        with torch.no_grad():
            for _ in range(6):
                nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
                if nxt == tok.eos_id:
                    break
                new.append(nxt)
        expected.append(tok.decode(new, skip_special_tokens=True))
    model.train()
    try:
        assert greedy_answers(model, tok, questions, max_new_tokens=6) == expected
        assert model.training
    finally:
        model.eval()


def test_truth_ratio_score_hand_cases():
    assert truth_ratio_score([0.5, 2.0]) == pytest.approx(0.25)
    assert truth_ratio_score(torch.tensor([0.5, 2.0]), "closer_to_1_better") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="aggregator"):
        truth_ratio_score([1.0], "mean")


# --- aggregates --------------------------------------------------------------------------------

def test_forget_quality_is_the_ks_test_p_value():
    from scipy.stats import ks_2samp

    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(40, generator=gen), torch.rand(40, generator=gen) * 0.5
    assert forget_quality(a, b) == pytest.approx(ks_2samp(a.numpy(), b.numpy()).pvalue)
    assert forget_quality(a, a) == pytest.approx(1.0)
    assert forget_quality(a, a + 10) < 1e-10
    with pytest.raises(ValueError, match="retain_model_truth_ratios"):
        forget_quality(a, [])


def test_mia_auc_hand_case():
    # member > non-member in 5 of the 6 pairs (0.3 < 0.4 is the one miss)
    assert mia_auc([0.9, 0.8, 0.3], [0.1, 0.4]) == pytest.approx(5 / 6)
    assert mia_auc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert mia_auc([0.0, 1.0], [2.0, 3.0]) == 0.0


def test_privleak_hand_case():
    # MUSE's sign: an unlearned model that still tells forget from holdout better than the
    # retain model (a_u > a_r) is under-unlearned, negative
    assert privleak(0.6, 0.5) == pytest.approx(-20.0)
    assert privleak(0.4, 0.5) == pytest.approx(20.0)
    assert privleak(0.9, 0.6) == pytest.approx(-75.0)  # (0.6 - 0.9) / (1 - 0.6)
    assert privleak(0.5, 0.5) == 0.0
    with pytest.raises(ValueError, match="auc_unlearned"):
        privleak(1.5, 0.5)


def test_model_utility_is_the_harmonic_mean():
    from scipy.stats import hmean

    assert model_utility([0.5, 1.0]) == pytest.approx(2 / 3)
    assert model_utility([0.2, 0.4, 0.8]) == pytest.approx(hmean([0.2, 0.4, 0.8]))
    assert model_utility([0.9, 0.0, 0.7]) == 0.0
    with pytest.raises(ValueError, match="at least one"):
        model_utility([])
