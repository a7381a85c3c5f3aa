"""Memorize the built-in fictitious facts with a tiny Llama, then unlearn the forget split.

`run_facts_unlearning(FactsExperimentConfig(...))` builds the facts (`trustfast.data.facts`), a
word tokenizer and a `LlamaForCausalLM` from a config (random init, nothing downloaded),
fine-tunes it on forget + retain until it answers them, then runs each unlearning method on a
copy and measures forget / retain answer exact match and ROUGE-L recall, the forget truth-ratio
score, forget quality (KS p-value of forget truth ratios against a model fine-tuned on the retain
set only), PrivLeak (min-k% prob MIA AUC, forget vs holdout, relative to that retain-only
model's), and the seconds taken. Rows: {"method", "forget_EM", "retain_EM", "forget_ROUGE",
"retain_ROUGE", "forget_truth_ratio", "forget_quality", "privleak", "seconds"}; method
"original" is the memorized model, "retain_only" the gold standard.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict, dataclass, field

import torch

from trustfast.checkpoint import load_checkpoint, load_config, load_json, save_checkpoint, save_json
from trustfast.llm.losses import METHODS
from trustfast.llm.train import UnlearnConfig, finetune, unlearn
from trustfast.utils import pyplot


@dataclass
class FactsExperimentConfig:
    n_people: int = 40  # 160 question/answer pairs; forget 10 % of the people
    forget: float = 0.1
    methods: list[str] = field(default_factory=lambda: ["ga", "npo", "simnpo"])
    hidden_size: int = 64  # tiny Llama: 2 layers, 4 heads
    finetune_epochs: int = 40  # AdamW lr 3e-3: memorizes every answer (loss ~0.006)
    unlearn_epochs: int = 5  # AdamW lr 1e-3, 8 forget + 8 retain examples per step
    unlearn_lr: float = 1e-3
    retain_eval: int = 40  # retain questions scored (greedy decoding costs a second each)
    # per-method UnlearnConfig fields, e.g. RMU's constants scaled to the tiny model
    overrides: dict[str, dict] = field(default_factory=lambda: {
        "rmu": {"steering_coeff": 20.0, "gamma": 100.0, "epochs": 20}})
    seed: int = 0

    def validate(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {METHODS}, got "
                             f"{bad or self.methods}")
        if self.n_people < 10:
            raise ValueError(f"n_people must be >= 10, got {self.n_people}")
        if not 0 < self.forget < 0.9:
            raise ValueError(f"forget must be in (0, 0.9), got {self.forget}")
        for name in ("finetune_epochs", "unlearn_epochs", "retain_eval", "hidden_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {getattr(self, name)!r}")
        unknown = set(self.overrides) - set(METHODS)
        if unknown:
            raise ValueError(f"overrides has unknown methods {sorted(unknown)}")

    @classmethod
    def from_file(cls, path: str) -> FactsExperimentConfig:
        """A config from a YAML or JSON file whose keys are this dataclass's fields."""
        return load_config(cls, path)


def tiny_llama(vocab_size: int, hidden_size: int = 64, pad_id: int = 0, bos_id: int = 1,
               eos_id: int = 2, seed: int = 0):
    """A 2-layer Llama-architecture causal LM from a config (random init)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                         intermediate_size=2 * hidden_size, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=64, pad_token_id=pad_id, bos_token_id=bos_id,
                         eos_token_id=eos_id)
    return LlamaForCausalLM(config)


def score_answers(model, tok, qas) -> tuple[float, float]:
    """(exact match, ROUGE-L recall) of greedy answers to the questions of `qas`."""
    from trustfast.llm.metrics import exact_match, greedy_answers, rouge_l_recall

    answers = greedy_answers(model, tok, [q.question for q in qas], max_new_tokens=12)
    em = sum(exact_match(a, q.answer) for a, q in zip(answers, qas)) / len(qas)
    rouge = sum(rouge_l_recall(a, q.answer) for a, q in zip(answers, qas)) / len(qas)
    return em, rouge


def run_facts_unlearning(cfg: FactsExperimentConfig, out: str | None = None,
                         resume: bool = False) -> list[dict]:
    """Memorize, then unlearn with each method; one row per model. With `out`, the memorized
    model and every finished method's row are checkpointed there, and `resume=True` skips
    them; `results.json`, `results.md` and `llm_unlearning.png` are written at the end."""
    cfg.validate()
    progress: dict = {}
    if out is not None:
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, "rows.json")
        if resume and os.path.exists(path):
            progress = load_json(path)
            if progress.get("config") != asdict(cfg):
                raise ValueError(f"--resume: {out} holds a run with another config")
    from trustfast.data.facts import WordTokenizer, encode_qa, make_facts, split
    from trustfast.llm.metrics import (
        forget_quality,
        mia_auc,
        min_k_prob_scores,
        privleak,
        truth_ratio,
        truth_ratio_score,
    )

    facts = make_facts(cfg.n_people, seed=cfg.seed)
    forget, retain, holdout = split(facts, cfg.forget, 0.1, seed=cfg.seed)
    tok = WordTokenizer(facts.texts())

    def encode(qa, idk: bool = False) -> dict:
        example = encode_qa(tok, qa.question, qa.answer)
        if idk:
            refusal = encode_qa(tok, qa.question, qa.refusal)
            example.update({f"idk_{k}": v for k, v in refusal.items()})
        return example

    def fine_tuned(name: str, qas, desc: str):
        """The tiny Llama fine-tuned on `qas`, or its checkpoint in `out` when resuming."""
        m = tiny_llama(tok.vocab_size, cfg.hidden_size, tok.pad_id, tok.bos_id, tok.eos_id,
                       cfg.seed)
        cached = load_checkpoint(out, name) if out is not None and resume else None
        if cached is not None:
            m.load_state_dict(cached[0])
            return m
        finetune(m, [encode(q) for q in qas], tok.pad_id, cfg.finetune_epochs, lr=3e-3,
                 batch_size=16, seed=cfg.seed, desc=desc)
        if out is not None:
            save_checkpoint(out, name, m.state_dict(), {"epochs": cfg.finetune_epochs})
        return m

    model = fine_tuned("memorized", forget + retain, "memorize facts")
    # the gold standard of forget quality and PrivLeak: the same model trained on retain only
    gold = fine_tuned("retain_only", retain, "retain-only model")
    retain_eval = retain[:cfg.retain_eval]

    def mia(m) -> float:  # min-k% prob: forget (members) against holdout (never trained on)
        scores = [min_k_prob_scores(m, tok, [q.question for q in qas], [q.answer for q in qas])
                  for qas in (forget, holdout)]
        return mia_auc(*scores)

    gold_ratios, gold_auc = truth_ratio(gold, tok, forget), mia(gold)

    def row(name: str, m, seconds: float) -> dict:
        f_em, f_rouge = score_answers(m, tok, forget)
        r_em, r_rouge = score_answers(m, tok, retain_eval)
        ratios = truth_ratio(m, tok, forget)
        return {"method": name, "forget_EM": f_em, "retain_EM": r_em, "forget_ROUGE": f_rouge,
                "retain_ROUGE": r_rouge, "forget_truth_ratio": truth_ratio_score(ratios),
                "forget_quality": forget_quality(ratios, gold_ratios),
                "privleak": privleak(mia(m), gold_auc), "seconds": seconds}

    done: dict = progress.get("rows", {})

    def record(r: dict) -> None:
        done[r["method"]] = r
        if out is not None:
            save_json(os.path.join(out, "rows.json"), {"config": asdict(cfg), "rows": done})

    if "original" not in done:
        record(row("original", model, 0.0))
    if "retain_only" not in done:
        record(row("retain_only", gold, 0.0))
    for method in cfg.methods:
        if method in done:
            continue
        m = copy.deepcopy(model)
        start = time.perf_counter()
        unlearn(m, [encode(q, idk=method == "idkdpo") for q in forget],
                [encode(q) for q in retain],
                UnlearnConfig(**{"method": method, "epochs": cfg.unlearn_epochs,
                                 "lr": cfg.unlearn_lr, "seed": cfg.seed,
                                 **cfg.overrides.get(method, {})}), tok.pad_id)
        record(row(method, m, time.perf_counter() - start))
    rows = [done["original"], done["retain_only"]] + [done[m] for m in cfg.methods]
    if out is not None:
        save_json(os.path.join(out, "results.json"), {"config": asdict(cfg), "rows": rows})
        with open(os.path.join(out, "results.md"), "w") as f:
            f.write(markdown_table(rows) + "\n")
        _plot(rows, os.path.join(out, "llm_unlearning.png"))
    return rows


def markdown_table(rows: list[dict]) -> str:
    """method: forget / retain exact match and ROUGE-L recall, forget truth ratio, forget
    quality, PrivLeak (%), seconds."""
    keys = ("forget_EM", "retain_EM", "forget_ROUGE", "retain_ROUGE", "forget_truth_ratio",
            "forget_quality", "privleak", "seconds")
    lines = ["| method | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for r in rows:
        lines.append(f"| {r['method']} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |")
    return "\n".join(lines)


def _plot(rows: list[dict], path: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(rows), 3.2))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["forget_EM"] for r in rows], 0.4, label="forget EM")
    ax.bar([x + 0.2 for x in xs], [r["retain_EM"] for r in rows], 0.4, label="retain EM")
    ax.set_xticks(list(xs))
    ax.set_xticklabels([r["method"] for r in rows])
    ax.set_ylim(0, 1.05)
    ax.set_title("fictitious facts: forget vs retain")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
