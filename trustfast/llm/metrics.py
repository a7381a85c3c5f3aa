"""TOFU / MUSE unlearning metrics for causal LMs, as OpenUnlearning computes them.

Text metrics (ROUGE-L recall, exact match) score greedy answers; probability metrics (answer
log-probabilities, truth ratio, Min-K% Prob) use teacher forcing on the prompt/answer format
of `trustfast.data.qa.QAFormat` (as `encode_qa`): the chat template of a Hugging Face tokenizer
that has one, else "Question: q Answer:" after BOS; the answer's tokens include EOS.
Aggregates: forget quality (KS-test p-value), MIA AUC, PrivLeak, model utility (harmonic mean).
Models are Hugging Face causal LMs (`model(input_ids, attention_mask).logits`); `tokenizer` is a
`trustfast.data.facts.WordTokenizer`, a Hugging Face tokenizer, or a `QAFormat` (to choose the
prompt). Metrics that need TOFU's paraphrased / perturbed answers raise
`MissingQAFieldError` (a ValueError) on data without them, so a caller can drop that column.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from trustfast.data.qa import QA, MissingQAFieldError, QAFormat, check_fields, collate, qa_format

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def _words(text: str) -> list[str]:
    # rouge_score's default tokenizer without its stemmer: lowercase, every non-alphanumeric
    # run is a separator.
    return _NON_ALNUM.sub(" ", text.lower()).split()


def _check_text(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")


@functools.lru_cache(maxsize=2)
def _rouge_scorer(use_stemmer: bool):
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise ImportError("ROUGE-L needs the rouge-score package (pip install rouge-score, or "
                          "trustfast[llm])") from None
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def rouge_l_recall(prediction: str, reference: str, use_stemmer: bool = True) -> float:
    """ROUGE-L recall, LCS(prediction, reference) / len(reference) in words, from the
    `rouge-score` package: `RougeScorer(["rougeL"], use_stemmer=True).score(reference,
    prediction)["rougeL"].recall`, as TOFU (Maini et al., 2024) and OpenUnlearning
    (src/evals/metrics/utils.py, eval_text_similarity) report it ("rougeL_recall"). Its
    tokenizer lowercases, splits at every non-alphanumeric character and Porter-stems words
    longer than 3 letters ("running" matches "runs"); `use_stemmer=False` compares the words
    as they are. An empty reference or prediction scores 0.
    """
    _check_text("prediction", prediction)
    _check_text("reference", reference)
    return float(_rouge_scorer(bool(use_stemmer)).score(reference, prediction)["rougeL"].recall)


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalized texts are equal, else 0.0: lowercase, punctuation dropped,
    whitespace collapsed (rouge-score's tokenization without stemming), as in SQuAD-style
    exact match."""
    _check_text("prediction", prediction)
    _check_text("reference", reference)
    return float(_words(prediction) == _words(reference))


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_pairs(questions: Sequence[str], answers: Sequence[str]) -> None:
    if len(questions) != len(answers):
        raise ValueError(f"questions and answers must have the same length, got "
                         f"{len(questions)} and {len(answers)}")
    for i, (q, a) in enumerate(zip(questions, answers)):
        _check_text(f"questions[{i}]", q)
        _check_text(f"answers[{i}]", a)


def _answer_token_log_probs(model: nn.Module, tokenizer,
                            questions: Sequence[str], answers: Sequence[str],
                            batch_size: int) -> list[torch.Tensor]:
    """Per sample, log p(token | prefix) of each answer token and <eos> (teacher forcing)."""
    _check_pairs(questions, answers)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    fmt = qa_format(tokenizer)
    device = _device(model)
    out: list[torch.Tensor] = []
    with _eval_mode(model):
        for start in range(0, len(questions), batch_size):
            items = [fmt.encode(q, a) for q, a in
                     zip(questions[start:start + batch_size], answers[start:start + batch_size])]
            batch = {k: v.to(device) for k, v in collate(items, fmt.pad_id).items()}
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits
            if logits.shape[-1] < fmt.vocab_size:
                raise ValueError(f"the model's vocabulary ({logits.shape[-1]}) is smaller than "
                                 f"the tokenizer's ({fmt.vocab_size})")
            if logits.dtype in (torch.float16, torch.bfloat16):
                logits = logits.float()
            labels = batch["labels"][:, 1:]
            log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
            picked = log_probs.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
            out += [row[mask] for row, mask in zip(picked, labels != -100)]
    return out


def answer_log_probs(model: nn.Module, tokenizer, questions: Sequence[str],
                     answers: Sequence[str],
                     batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_logprob (N,), n_tokens (N,)): log P(answer | question) = sum_t log p(a_t | q, a_<t)
    over the answer's tokens and <eos>, by teacher forcing, and that token count.

    exp(-sum / n) is the per-token perplexity-style probability TOFU's "Prob." metric uses
    (TOFU, Maini et al., 2024; OpenUnlearning's `probability`: exp(-avg_loss)).
    """
    per_token = _answer_token_log_probs(model, tokenizer, questions, answers, batch_size)
    if not per_token:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    sums = torch.stack([t.sum() for t in per_token])
    counts = torch.tensor([len(t) for t in per_token], dtype=torch.long)
    return sums, counts


def greedy_answers(model: nn.Module, tokenizer, questions: Sequence[str],
                   max_new_tokens: int = 16) -> list[str]:
    """Greedy (argmax) continuation of each question's prompt ("<bos> Question: {q} Answer:",
    or the chat template's) up to EOS or `max_new_tokens`, decoded without special tokens:
    the generations TOFU scores with ROUGE-L recall (Maini et al., 2024; OpenUnlearning
    generates with do_sample=False). Generation stops at the tokenizer's EOS and at any EOS of
    the model's generation config (a chat model's end-of-turn token).

    One question at a time (no padding), with Hugging Face `model.generate`.
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    fmt = qa_format(tokenizer)
    stops = _stop_ids(model, fmt)
    device = _device(model)
    out = []
    with _eval_mode(model):
        for i, question in enumerate(questions):
            _check_text(f"questions[{i}]", question)
            prompt = torch.tensor([fmt.prompt_ids(question)], device=device)
            generated = model.generate(
                input_ids=prompt, attention_mask=torch.ones_like(prompt),
                max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                pad_token_id=fmt.pad_id, bos_token_id=fmt.bos_id, eos_token_id=stops,
            )[0, prompt.shape[1]:].tolist()
            ends = [j for j, t in enumerate(generated) if t in stops]
            if ends:
                generated = generated[:ends[0]]
            out.append(fmt.decode(generated))
    return out


def _stop_ids(model: nn.Module, fmt: QAFormat) -> list[int]:
    stops = [fmt.eos_id]
    config = getattr(model, "generation_config", None)
    extra = getattr(config, "eos_token_id", None)
    for t in [extra] if isinstance(extra, int) else (extra or []):
        if t not in stops:
            stops.append(int(t))
    return stops


def score_answers(model: nn.Module, tokenizer, qas: Sequence[QA],
                  max_new_tokens: int = 12) -> tuple[float, float]:
    """(exact match, ROUGE-L recall) of greedy answers to the questions of `qas`, averaged
    (TOFU's forget / retain "ROUGE" columns and their exact-match counterpart)."""
    if len(qas) == 0:
        raise ValueError("qas must hold at least one QA, got none")
    check_fields(qas, [], "score_answers", "qas")
    answers = greedy_answers(model, tokenizer, [q.question for q in qas], max_new_tokens)
    em = sum(exact_match(a, q.answer) for a, q in zip(answers, qas)) / len(qas)
    rouge = sum(rouge_l_recall(a, q.answer) for a, q in zip(answers, qas)) / len(qas)
    return em, rouge


def truth_ratio(model: nn.Module, tokenizer, qa_list: Sequence[QA],
                batch_size: int = 16, perturbed_mean: str = "geometric") -> torch.Tensor:
    """TOFU's truth ratio per QA (float64, (N,)):

        R = mean_j P(perturbed_j | q)^(1/|perturbed_j|) / P(paraphrased | q)^(1/|paraphrased|)

    with length-normalized probabilities computed in log space. `perturbed_mean="geometric"`
    (default) averages the perturbed answers' normalized log-probabilities, as the TOFU and
    OpenUnlearning code do (the numbers in their tables); "arithmetic" averages the normalized
    probabilities, as the TOFU paper's formula is written. Lower R = the model prefers the true
    answer. Forget quality compares the distribution of R on the forget set to a retain model's
    (`forget_quality`); on retain sets TOFU reports `truth_ratio_score`. A record without a
    paraphrased_answer or perturbed answers raises MissingQAFieldError (a ValueError).
    """
    if perturbed_mean not in ("geometric", "arithmetic"):
        raise ValueError(f"perturbed_mean must be 'geometric' or 'arithmetic', "
                         f"got {perturbed_mean!r}")
    check_fields(qa_list, ["paraphrased_answer", "perturbed_answers"], "truth_ratio")
    questions = [r.question for r in qa_list]
    true_lp = _answer_token_log_probs(model, tokenizer, questions,
                                      [r.paraphrased_answer for r in qa_list], batch_size)
    false_lp = _answer_token_log_probs(
        model, tokenizer, [r.question for r in qa_list for _ in r.perturbed_answers],
        [a for r in qa_list for a in r.perturbed_answers], batch_size)
    log_ratios, start = [], 0
    for i, record in enumerate(qa_list):
        stop = start + len(record.perturbed_answers)
        normalized = torch.stack([lp.double().mean() for lp in false_lp[start:stop]])
        start = stop
        if perturbed_mean == "geometric":
            log_false = normalized.mean()
        else:
            log_false = torch.logsumexp(normalized, 0) - math.log(len(normalized))
        log_ratios.append(log_false - true_lp[i].double().mean())
    if not log_ratios:
        return torch.empty(0, dtype=torch.float64)
    return torch.stack(log_ratios).exp().cpu()


def truth_ratio_score(r: torch.Tensor | Sequence[float],
                      aggregator: str = "true_better") -> float:
    """Aggregate truth ratios R as OpenUnlearning does for TOFU.

    "true_better" (retain / real-authors / world-facts sets, "Truth Ratio" in TOFU's model
    utility): mean(max(0, 1 - R)). "closer_to_1_better" (forget set, OpenUnlearning's
    forget_Truth_Ratio): mean(min(R, 1 / (R + 1e-10))), 1 when the model cannot tell the true
    answer from the false ones. As src/evals/metrics/memorization.py (truth_ratio) computes them.
    """
    r = torch.as_tensor(r, dtype=torch.float64)
    if r.ndim != 1 or r.numel() == 0:
        raise ValueError(f"r must be a non-empty 1-D sequence, got shape {tuple(r.shape)}")
    if aggregator == "true_better":
        return float((1 - r).clamp_min(0).mean())
    if aggregator == "closer_to_1_better":
        return float(torch.minimum(r, 1 / (r + 1e-10)).mean())
    raise ValueError(f"aggregator must be 'true_better' or 'closer_to_1_better', "
                     f"got {aggregator!r}")


def _as_1d_array(name: str, values: torch.Tensor | Sequence[float]):
    import numpy as np

    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {array.shape}")
    return array


def forget_quality(unlearned_truth_ratios: torch.Tensor | Sequence[float],
                   retain_model_truth_ratios: torch.Tensor | Sequence[float]) -> float:
    """TOFU's forget quality: the p-value of the two-sample Kolmogorov-Smirnov test
    (scipy.stats.ks_2samp, two-sided) between the forget-set truth ratios of the unlearned
    model and of a model trained on the retain set only. High (near 1) = indistinguishable."""
    from scipy.stats import ks_2samp

    a = _as_1d_array("unlearned_truth_ratios", unlearned_truth_ratios)
    b = _as_1d_array("retain_model_truth_ratios", retain_model_truth_ratios)
    return float(ks_2samp(a, b).pvalue)


def min_k_prob_scores(model: nn.Module, tokenizer, questions: Sequence[str],
                      answers: Sequence[str], k: float = 0.4,
                      batch_size: int = 16) -> torch.Tensor:
    """Min-K% Prob membership score per sample (Shi et al., ICLR 2024; MUSE / OpenUnlearning's
    MinK attack, k=0.4 in its TOFU and MUSE configs): the mean of the lowest
    max(1, floor(k * n)) of the n answer-token log-probabilities, the last labelled token (EOS)
    left out as OpenUnlearning's tokenwise_logprobs does (src/evals/metrics/utils.py,
    mia/min_k.py). An answer with no token left scores 0. Higher = more likely a training
    member (OpenUnlearning reports its negation, a loss)."""
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must be in (0, 1], got {k}")
    per_token = _answer_token_log_probs(model, tokenizer, questions, answers, batch_size)
    scores = []
    for lp in per_token:
        lp = lp[:-1].double()  # no EOS prediction
        if len(lp) == 0:
            scores.append(torch.zeros((), dtype=torch.float64))
            continue
        n_low = max(1, int(len(lp) * k))
        scores.append(lp.sort().values[:n_low].mean())
    return torch.stack(scores) if scores else torch.empty(0, dtype=torch.float64)


def mia_auc(member_scores: torch.Tensor | Sequence[float],
            nonmember_scores: torch.Tensor | Sequence[float]) -> float:
    """ROC AUC of telling members (positives, e.g. the forget set) from non-members (e.g. the
    holdout set) by score, higher score = member (sklearn.metrics.roc_auc_score). MUSE
    (Shi et al., 2024) and OpenUnlearning's MIA metrics; 0.5 = no membership signal."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    members = _as_1d_array("member_scores", member_scores)
    nonmembers = _as_1d_array("nonmember_scores", nonmember_scores)
    labels = np.concatenate([np.ones(len(members)), np.zeros(len(nonmembers))])
    return float(roc_auc_score(labels, np.concatenate([members, nonmembers])))


def privleak(auc_unlearned: float, auc_retain_model: float) -> float:
    """MUSE's PrivLeak (Shi et al., 2024), in percent, as OpenUnlearning computes it
    (src/evals/metrics/privacy.py, privleak).

    `auc_unlearned` and `auc_retain_model` are the conventional forget-vs-holdout MIA AUCs of
    the unlearned and of the retain (gold) model, forget = the positive class (`mia_auc`,
    `min_k_mia_auc`). MUSE takes its AUC with the forget set as the negative class, 1 - AUC,
    so PrivLeak = ((1 - a_u) - (1 - a_r)) / ((1 - a_r) + 1e-10) * 100
    = (a_r - a_u) / (1 - a_r) * 100. Near 0: no more leakage than the retain model; negative:
    the forget set is still told from the holdout better than by the retain model
    (under-unlearning, e.g. the model before unlearning); positive: over-unlearning.
    """
    for name, value in (("auc_unlearned", auc_unlearned), ("auc_retain_model", auc_retain_model)):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must be an AUC in [0, 1], got {value}")
    score, ref = 1.0 - float(auc_unlearned), 1.0 - float(auc_retain_model)
    return (score - ref) / (ref + 1e-10) * 100.0


def model_utility(values: Sequence[float]) -> float:
    """TOFU's model utility (Maini et al., 2024): the harmonic mean n / sum_i(1 / v_i) of the
    retain-set metrics (probability, ROUGE-L recall, truth-ratio score on retain, real authors
    and world facts); 0 when any value is 0."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("values must hold at least one metric, got none")
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"values must be finite and >= 0, got {values}")
    if any(v == 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def min_k_mia_auc(model: nn.Module, tokenizer, members: Sequence[QA],
                  nonmembers: Sequence[QA], k: float = 0.4, batch_size: int = 16) -> float:
    """MUSE / OpenUnlearning's MIA with Min-K% Prob (k=0.4): the ROC AUC of telling `members`
    (the forget set) from `nonmembers` (a holdout set never trained on) by `min_k_prob_scores`
    of their answers."""
    scores = [min_k_prob_scores(model, tokenizer, [q.question for q in qas],
                                [q.answer for q in qas], k, batch_size)
              for qas in (members, nonmembers)]
    return mia_auc(*scores)


def retain_model_reference(model: nn.Module, tokenizer, forget: Sequence[QA],
                           holdout: Sequence[QA] | None = None) -> dict:
    """What forget quality and PrivLeak compare an unlearned model with, computed once from
    the retain model (trained without the forget set: TOFU's and MUSE's gold standard):
    {"truth_ratios": forget-set truth ratios, or None when the data lacks TOFU's paraphrased /
    perturbed answers; "mia_auc": min-k MIA AUC forget vs holdout, or None without holdout}."""
    try:
        ratios = truth_ratio(model, tokenizer, forget)
    except MissingQAFieldError:
        ratios = None
    auc = min_k_mia_auc(model, tokenizer, forget, holdout) if holdout else None
    return {"truth_ratios": ratios, "mia_auc": auc}


def unlearning_scores(model: nn.Module, tokenizer, forget: Sequence[QA], retain: Sequence[QA],
                      holdout: Sequence[QA] | None = None, reference: dict | None = None,
                      max_new_tokens: int = 12) -> dict[str, float]:
    """TOFU-style scores of a model after unlearning, as OpenUnlearning's TOFU evaluator names
    them here: forget_EM / retain_EM and forget_ROUGE / retain_ROUGE (greedy answers, exact
    match and ROUGE-L recall); forget_truth_ratio (`truth_ratio_score` of the forget set's
    truth ratios with OpenUnlearning's forget aggregate "closer_to_1_better",
    mean(min(R, 1/R)): higher = closer to a model that never saw the answers); forget_quality
    (KS-test p-value against `reference["truth_ratios"]`); privleak (min-k MIA AUC, forget vs
    holdout, relative to `reference["mia_auc"]`). `reference` comes from `retain_model_reference`. A
    score whose inputs are missing (no paraphrased / perturbed answers, no holdout, no
    reference) is left out of the dict rather than guessed."""
    f_em, f_rouge = score_answers(model, tokenizer, forget, max_new_tokens)
    r_em, r_rouge = score_answers(model, tokenizer, retain, max_new_tokens)
    row = {"forget_EM": f_em, "retain_EM": r_em, "forget_ROUGE": f_rouge,
           "retain_ROUGE": r_rouge}
    reference = reference or {}
    try:
        ratios = truth_ratio(model, tokenizer, forget)
    except MissingQAFieldError:
        ratios = None
    if ratios is not None:
        row["forget_truth_ratio"] = truth_ratio_score(ratios, "closer_to_1_better")
        if reference.get("truth_ratios") is not None:
            row["forget_quality"] = forget_quality(ratios, reference["truth_ratios"])
    if holdout and reference.get("mia_auc") is not None:
        row["privleak"] = privleak(min_k_mia_auc(model, tokenizer, forget, holdout),
                                   reference["mia_auc"])
    return row
