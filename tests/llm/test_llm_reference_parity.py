"""Parity with the field's reference code on random inputs in float64.

Each oracle below restates, in this file's own words, what the reference computes:
OpenUnlearning (locuslab/open-unlearning: src/trainer/utils.py, src/trainer/unlearn/*.py,
src/evals/metrics/{utils,memorization,privacy}.py, mia/min_k.py) and WMDP
(centerforaisafety/wmdp: rmu/unlearn.py). Batches are right-padded, start with a prompt whose
labels are -100, and end each answer with EOS.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch.nn import functional as fn

pytest.importorskip("transformers")

from trustfast.data.facts import WordTokenizer, make_facts  # noqa: E402
from trustfast.data.qa import collate, qa_format  # noqa: E402
from trustfast.llm.losses import LossConfig, rmu_parameters, unlearning_loss  # noqa: E402
from trustfast.llm.metrics import (  # noqa: E402
    mia_auc,
    min_k_prob_scores,
    privleak,
    rouge_l_recall,
    truth_ratio_score,
)

VOCAB, EOS, PAD = 40, 2, 0


def _llama(seed: int, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=64, pad_token_id=PAD, eos_token_id=EOS)
    return LlamaForCausalLM(config).double()


def _batch(seed: int, b: int = 4, t: int = 11) -> dict:
    """Prompt (labels -100) + answer + EOS, right-padded to different lengths."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.full((b, t), PAD)
    labels = torch.full((b, t), -100)
    mask = torch.zeros(b, t, dtype=torch.long)
    for i in range(b):
        prompt = int(torch.randint(2, 4, (), generator=gen))
        length = t - i  # the first row is full, the others padded
        row = torch.randint(4, VOCAB, (length,), generator=gen)
        row[-1] = EOS
        ids[i, :length], mask[i, :length] = row, 1
        labels[i, prompt:length] = row[prompt:]
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


# --- oracles: OpenUnlearning's trainer utilities -----------------------------------------------

def _batch_nll(model, batch):
    """compute_batch_nll: cross entropy of the shifted labels, summed per sequence."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    per_token = fn.cross_entropy(logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:],
                                 ignore_index=-100, reduction="none")
    return per_token.sum(-1)


def _token_mean_nll(model, batch):
    """model(**inputs).loss: the token mean over the whole batch (in float64 here)."""
    return _batch_nll(model, batch).sum() / (batch["labels"][:, 1:] != -100).sum()


def _kl_all_positions(model, ref, batch):
    """compute_kl_divergence: KL(ref || model) of the full logits, rows = batch x length."""
    with torch.no_grad():
        ref_lp = ref(input_ids=batch["input_ids"],
                     attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
    lp = model(input_ids=batch["input_ids"],
               attention_mask=batch["attention_mask"]).logits.log_softmax(-1)
    ref_lp, lp = ref_lp.reshape(-1, VOCAB), lp.reshape(-1, VOCAB)
    return (ref_lp.exp() * (ref_lp - lp)).sum() / lp.shape[0]


def _dpo(model, ref, win, lose, beta):
    """compute_dpo_loss: -2/beta log sigmoid(beta (win log-ratio - lose log-ratio))."""
    def log_ratio(batch):
        with torch.no_grad():
            ref_nll = _batch_nll(ref, batch)
        return -(_batch_nll(model, batch) - ref_nll)

    win_ratio = 0.0 if win is None else log_ratio(win)
    return -2 / beta * fn.logsigmoid(beta * (win_ratio - log_ratio(lose))).mean()


def _reference_loss(method, model, ref, forget, retain, idk, cfg):
    """OpenUnlearning's compute_loss: gamma * forget loss + alpha * retain loss."""
    if cfg.retain_loss == "nll":
        retain_term = _token_mean_nll(model, retain)
    elif cfg.retain_loss == "kl":
        retain_term = _kl_all_positions(model, ref, retain)
    else:
        retain_term = 0.0
    if method in ("ga", "graddiff", "ga_kl"):
        forget_term = -_token_mean_nll(model, forget)
    elif method == "npo":
        forget_term = _dpo(model, ref, None, forget, cfg.beta)
    elif method == "idkdpo":
        forget_term = _dpo(model, ref, idk, forget, cfg.beta)
    else:  # SimNPO: length-normalized NLL minus delta, inside the sigmoid
        lengths = (forget["labels"] != -100).sum(-1)
        margin = _batch_nll(model, forget) / lengths - cfg.delta
        forget_term = -fn.logsigmoid(cfg.beta * margin).mean() * 2 / cfg.beta
    return cfg.gamma * forget_term + cfg.alpha * retain_term


CASES = [("ga", {}), ("graddiff", {}), ("graddiff", {"retain_loss": "kl"}), ("ga_kl", {}),
         ("npo", {}), ("npo", {"retain_loss": "none"}), ("npo", {"retain_loss": "kl"}),
         ("simnpo", {}), ("simnpo", {"retain_loss": "none"}), ("idkdpo", {})]


@pytest.mark.parametrize(("method", "extra"), CASES)
def test_losses_match_openunlearning(method, extra):
    model, ref = _llama(0), _llama(1)
    forget, retain, idk = _batch(0), _batch(1), _batch(2)
    # distinct weights, so a weight on the wrong term shows
    cfg = LossConfig(method, gamma=0.3, alpha=2.5, delta=0.4, beta=1.7, **extra)
    batch = dict(forget)
    with torch.no_grad():
        batch["ref_nll"] = _batch_nll(ref, forget)
        batch["ref_idk_nll"] = _batch_nll(ref, idk)
    batch.update({f"idk_{k}": v for k, v in idk.items()})
    loss, _ = unlearning_loss(model, batch, retain, cfg, ref_model=ref)
    want = _reference_loss(method, model, ref, forget, retain, idk, cfg)
    torch.testing.assert_close(loss, want, rtol=1e-11, atol=1e-12)
    params = list(model.parameters())  # and the gradient it trains with
    for got, expected in zip(torch.autograd.grad(loss, params), torch.autograd.grad(
            want, params, allow_unused=True)):
        torch.testing.assert_close(got, torch.zeros_like(got) if expected is None else expected,
                                   rtol=1e-8, atol=1e-11)


def test_reference_defaults():
    """The constants of OpenUnlearning's configs/trainer/*.yaml and WMDP's RMU."""
    simnpo = LossConfig("SimNPO")
    assert (simnpo.beta, simnpo.gamma, simnpo.alpha, simnpo.delta) == (4.5, 0.125, 1.0, 0.0)
    npo = LossConfig("NPO")
    assert (npo.beta, npo.gamma, npo.alpha, npo.retain_loss) == (0.1, 1.0, 1.0, "nll")
    graddiff = LossConfig("GradDiff")
    assert (graddiff.gamma, graddiff.alpha, graddiff.retain_loss) == (1.0, 1.0, "nll")
    rmu = LossConfig("RMU")
    assert (rmu.gamma, rmu.alpha, rmu.steering_coeff, rmu.rmu_layer) == (1.0, 1200.0, 6.5, 7)
    assert (rmu.rmu_params, rmu.rmu_tokens) == ("down_proj", "all")
    assert LossConfig("ga").retain_loss == "none" and not LossConfig("ga").needs_retain
    with pytest.raises(ValueError, match="retain_loss"):
        LossConfig("ga", retain_loss="nll")
    with pytest.raises(ValueError, match="rmu_params"):
        LossConfig("rmu", rmu_params="attention")


def test_kl_over_answer_tokens_is_the_named_variant():
    model, ref = _llama(0), _llama(1)
    forget, retain = _batch(0), _batch(1)
    cfg = LossConfig("graddiff", retain_loss="kl", kl_tokens="answer", gamma=0.0)
    loss, _ = unlearning_loss(model, forget, retain, cfg, ref_model=ref)
    keep = retain["labels"][:, 1:] != -100
    lp = model(**{k: retain[k] for k in ("input_ids", "attention_mask")}).logits.log_softmax(-1)
    with torch.no_grad():
        ref_lp = ref(**{k: retain[k] for k in ("input_ids", "attention_mask")}
                     ).logits.log_softmax(-1)
    kl = (ref_lp.exp() * (ref_lp - lp)).sum(-1)[:, :-1][keep].mean()
    torch.testing.assert_close(loss, kl, rtol=1e-11, atol=1e-12)
    assert not torch.allclose(kl, _kl_all_positions(model, ref, retain))


# --- RMU: WMDP's MSE over all positions, OpenUnlearning's over answer tokens -------------------

def _layer_output(model, batch, layer):
    """WMDP's forward_with_cache: the output of model.model.layers[layer], by a forward hook."""
    cache = []
    handle = model.model.layers[layer].register_forward_hook(
        lambda module, args, out: cache.append(out[0] if isinstance(out, tuple) else out))
    model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    handle.remove()
    return cache[0]


@pytest.mark.parametrize("tokens", ["all", "answer"])
def test_rmu_matches_wmdp_and_openunlearning(tokens):
    model, ref = _llama(0, layers=4), _llama(1, layers=4)
    forget, retain = _batch(0), _batch(1)
    cfg = LossConfig("rmu", steering_coeff=3.0, gamma=0.7, alpha=40.0, rmu_layer=2, seed=4,
                     rmu_tokens=tokens)
    loss, _ = unlearning_loss(model, forget, retain, cfg, ref_model=ref)
    u = torch.rand(32, generator=torch.Generator().manual_seed(4)).double()
    control = (u / u.norm() * 3.0).view(1, 1, -1)

    def mse(a, b, batch):
        sq = (a - b.expand_as(a)) ** 2
        if tokens == "all":  # torch.nn.functional.mse_loss, mean over everything
            return fn.mse_loss(a, b.expand_as(a))
        m = (batch["labels"] != -100).double()  # compute_activation_loss
        return (((sq * m.unsqueeze(-1)).mean(-1).sum(-1)) / m.sum(-1)).mean()

    with torch.no_grad():
        frozen = _layer_output(ref, retain, 2)
    want = (0.7 * mse(_layer_output(model, forget, 2), control, forget)
            + 40.0 * mse(_layer_output(model, retain, 2), frozen, retain))
    torch.testing.assert_close(loss, want, rtol=1e-11, atol=1e-12)


def test_rmu_trains_wmdp_down_proj_of_three_layers():
    model = _llama(0, layers=4)
    names = {id(p): n for n, p in model.named_parameters()}
    picked = [names[id(p)] for p in rmu_parameters(model, LossConfig("rmu", rmu_layer=2))]
    assert picked == [f"model.layers.{i}.mlp.down_proj.weight" for i in (0, 1, 2)]
    mlp = [names[id(p)] for p in rmu_parameters(model, LossConfig("rmu", rmu_layer=2,
                                                                  rmu_params="mlp"))]
    assert len(mlp) == 9 and all(".mlp." in n for n in mlp)
    assert len(rmu_parameters(model, LossConfig("rmu", rmu_params="all"))) == len(
        list(model.parameters()))


# --- metrics ----------------------------------------------------------------------------------

def test_privleak_matches_muse_on_random_scores():
    """OpenUnlearning's mia_auc labels forget 0 and holdout 1 on a loss score; privleak takes
    1 - AUC of both models and their relative difference."""
    from sklearn.metrics import roc_auc_score

    gen = np.random.default_rng(0)
    for _ in range(20):
        aucs = []
        for shift in gen.uniform(-1, 1, 2):
            forget_lp, holdout_lp = gen.normal(shift, 1, 30), gen.normal(0, 1, 25)
            labels = np.r_[np.zeros(30), np.ones(25)]
            reference_auc = roc_auc_score(labels, -np.r_[forget_lp, holdout_lp])  # loss
            ours = mia_auc(forget_lp, holdout_lp)
            assert ours == pytest.approx(reference_auc, abs=1e-12)
            aucs.append(ours)
        score, ref = 1 - aucs[0], 1 - aucs[1]
        assert privleak(*aucs) == pytest.approx((score - ref) / (ref + 1e-10) * 100, abs=1e-9)


def test_forget_truth_ratio_is_closer_to_1_better():
    r = np.random.default_rng(1).lognormal(0, 1.5, 50)
    want = np.mean(np.minimum(r, 1 / (r + 1e-10)))
    assert truth_ratio_score(torch.tensor(r), "closer_to_1_better") == pytest.approx(want,
                                                                                     abs=1e-14)


_SPLIT = re.compile(r"[^a-z0-9]+")


def _rouge_l_recall_oracle(prediction: str, reference: str) -> float:
    """rouge_score's tokenizer (lowercase, non-alphanumerics split, Porter stem of words longer
    than 3 letters) and the LCS length over the reference's token count."""
    from nltk.stem import porter

    stemmer = porter.PorterStemmer()

    def tokens(text):
        return [stemmer.stem(w) if len(w) > 3 else w for w in _SPLIT.sub(" ", text.lower()).split()]

    p, r = tokens(prediction), tokens(reference)
    if not p or not r:
        return 0.0
    table = [[0] * (len(r) + 1) for _ in range(len(p) + 1)]
    for i, a in enumerate(p, 1):
        for j, b in enumerate(r, 1):
            table[i][j] = table[i - 1][j - 1] + 1 if a == b else max(table[i - 1][j],
                                                                       table[i][j - 1])
    return table[-1][-1] / len(r)


def test_rouge_l_recall_matches_tofu_scorer_on_inflected_words():
    words = ["run", "runs", "running", "ran", "cat", "cats", "the", "author", "authors",
             "wrote", "writing", "novels", "novel", "born", "Lisbon,", "in"]
    gen = np.random.default_rng(2)
    for _ in range(200):
        pred = " ".join(gen.choice(words, gen.integers(0, 9)))
        ref = " ".join(gen.choice(words, gen.integers(1, 9)))
        assert rouge_l_recall(pred, ref) == pytest.approx(_rouge_l_recall_oracle(pred, ref),
                                                          abs=1e-12)


def test_min_k_matches_openunlearning_on_padded_batches():
    """tokenwise_logprobs on a right-padded batch (the labelled tokens but the last: no EOS
    prediction), then MinKProbAttack: minus the mean of the lowest max(1, int(k n))."""
    facts = make_facts(n_people=12, seed=0)
    tok = WordTokenizer(facts.texts())
    fmt = qa_format(tok)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128)).double()
    records = facts.qa[:6]
    questions = [r.question for r in records]
    answers = [r.answer if i % 2 else r.refusal for i, r in enumerate(records)]
    batch = collate([fmt.encode(q, a) for q, a in zip(questions, answers)], fmt.pad_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    target = logits.log_softmax(-1)[:, :-1].gather(
        2, batch["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
    for k in (0.4, 0.2, 1.0):
        want = []
        for i in range(len(records)):
            kept = (batch["labels"][i] != -100).nonzero()[:, 0][:-1]
            lp = target[i, kept[0] - 1:kept[-1]].numpy()
            want.append(np.mean(np.sort(lp)[:max(1, int(len(lp) * k))]))  # minus the loss
        got = min_k_prob_scores(model, tok, questions, answers, k=k, batch_size=4)
        np.testing.assert_allclose(got.numpy(), np.array(want), rtol=1e-10, atol=1e-12)
