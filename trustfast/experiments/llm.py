"""`trustfast llm-unlearn`: unlearn a causal LM's forget set with each method and score it as
TOFU / OpenUnlearning do, on the built-in facts or on the user's own model and data.

Built in: a tiny Llama (from a config, nothing downloaded) memorizes fictitious facts
(`trustfast.data.facts`); a twin fine-tuned on the retain people only is the gold standard of
forget quality and PrivLeak. Bring your own:

    trustfast llm-unlearn --model DIR --forget forget.json --retain retain.json \
        [--holdout holdout.json] [--retain-model DIR] --methods NPO,SimNPO --device cuda

with DIR a local Hugging Face folder (`AutoModelForCausalLM` + `AutoTokenizer`,
`local_files_only=True`; its chat template is applied when it has one) and the QA files in
TOFU's JSON / JSONL layout (`question`, `answer`, `paraphrased_answer`, `perturbed_answer`;
other names through `question_key` / `answer_key`). Scores the data cannot support (no
paraphrased / perturbed answers, no holdout, no retain model) are left out of the rows. Every
unlearned model is saved with `save_pretrained` plus its tokenizer in `out/models/<method>`.

With `zero` set (ZeroConfig: stage 0-3, offloads, bf16), every method runs under DeepSpeed in
each process of the launch, with the same config:

    torchrun --nproc_per_node 2 -m trustfast llm-unlearn --config run.yaml --set zero.stage=3
    deepspeed --num_accelerators 2 --module trustfast llm-unlearn --config run.yaml

Rows: {"method", "forget_EM", "retain_EM", "forget_ROUGE", "retain_ROUGE",
"forget_truth_ratio", "forget_quality", "privleak", "seconds", "world_size", "zero_stage",
"effective_batch"}; "original" is the model before unlearning, "retain_only" the gold standard.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from trustfast.checkpoint import load_checkpoint, save_checkpoint
from trustfast.config import ConfigError, build_config, merge_mappings
from trustfast.experiments.plots import grouped_bars
from trustfast.experiments.registry import Experiment, ExperimentConfig, Flag, Result, register
from trustfast.experiments.runner import RowStore
from trustfast.llm.launch import ZeroConfig
from trustfast.utils import resolve_device

DTYPES = ("float32", "bfloat16", "float16")
SCORES = ("forget_EM", "retain_EM", "forget_ROUGE", "retain_ROUGE", "forget_truth_ratio",
          "forget_quality", "privleak")


# RMU on the 2-layer tiny Llama: WMDP's layers l-2..l collapse to layer 0, so its down_proj
# alone is one matrix (measured forget EM 1.0 at lr 1e-3 and 0.625 at lr 1e-2, 20 epochs);
# that layer's whole MLP forgets (0.0625, retain 1.0). Its activations are far smaller than
# Zephyr's, for which WMDP picked c 6.5 and alpha 1200.
TINY_OVERRIDES = {"rmu": {"steering_coeff": 20.0, "alpha": 100.0, "epochs": 20,
                          "rmu_params": "mlp"}}


@dataclass
class LLMUnlearnConfig(ExperimentConfig):
    """One run; the defaults memorize and unlearn the built-in facts in about a minute."""

    model: str = "tiny"  # "tiny" (a 2-layer Llama built here) or a local Hugging Face folder
    model_name_or_path: str | None = None  # Hugging Face's / OpenUnlearning's name for `model`
    forget: str | None = None  # JSON / JSONL QA file (TOFU's fields); None: the built-in facts
    retain: str | None = None
    holdout: str | None = None  # QA never trained on: the non-members of PrivLeak's MIA
    retain_model: str | None = None  # the model trained without the forget set (TOFU's retain
    #                                  model): the reference of forget quality and PrivLeak
    question_key: str = "question"
    answer_key: str = "answer"
    dtype: str | None = None  # weights of a model folder: float32 | bfloat16 | float16
    n_people: int = 40  # built-in facts: 4 QA per person
    forget_share: float = 0.1  # built-in facts: the share of people forgotten
    hidden_size: int = 64  # the tiny Llama's width (2 layers, 4 heads)
    # memorize forget + retain before unlearning: None = 40 epochs for the tiny model built
    # here (AdamW, lr finetune_lr, batch 16: every answer memorized, loss ~0.006), 0 for a
    # model folder or a model passed from Python
    finetune_epochs: int | None = None
    finetune_lr: float = 3e-3
    methods: list[str] = field(default_factory=lambda: ["ga", "npo", "simnpo"])
    # UnlearnConfig fields shared by every method (trustfast.llm.train.UnlearnConfig)
    unlearn: dict[str, Any] = field(default_factory=lambda: {"epochs": 5, "lr": 1e-3})
    # per-method UnlearnConfig fields over `unlearn`; for the tiny model built here they go
    # over TINY_OVERRIDES (RMU's constants for it); a model folder gets the methods' reference
    # defaults
    overrides: dict[str, dict] = field(default_factory=dict)
    retain_eval: int = 40  # retain questions scored (greedy decoding costs a second each)
    max_new_tokens: int = 12  # greedy answer length
    zero: ZeroConfig | None = None  # DeepSpeed ZeRO for every method (None: plain PyTorch)
    eval_every: int = 0  # under DeepSpeed: epochs between rank-0 evaluations (0: at the end)
    save_models: bool = True  # save_pretrained every unlearned model into out/models/<method>

    def check(self) -> None:
        from trustfast.llm.losses import METHODS, canonical_method

        super().check()
        if self.model_name_or_path is not None:  # the ecosystem's spelling: stored as `model`
            self.require(self.model in ("tiny", self.model_name_or_path), "model_name_or_path",
                         f"the same as model ({self.model!r}) when both are given")
            self.model, self.model_name_or_path = self.model_name_or_path, None
        for key in ("model", "retain_model"):
            path = getattr(self, key)
            if path is not None and path != "tiny":
                self.require(os.path.isdir(path), key, "'tiny' or a local Hugging Face folder"
                             if key == "model" else "a local Hugging Face folder or None")
        if self.forget is None:
            self.require(self.retain is None and self.holdout is None, "forget",
                         "a QA file when retain or holdout is given")
            self.require(self.model == "tiny", "forget",
                         "a QA file (with --retain) for a model folder")
        else:
            self.require(self.retain is not None, "retain", "a QA file when forget is given")
        for key in ("forget", "retain", "holdout"):
            path = getattr(self, key)
            if path is not None:
                self.require(os.path.isfile(path), key, "an existing JSON / JSONL file")
        if self.dtype is not None:
            self.choice("dtype", DTYPES)
        self.at_least("n_people", 10)
        self.within("forget_share", 0, 0.9, low_open=True, high_open=True)
        self.at_least("hidden_size", 4)
        if self.finetune_epochs is not None:
            self.at_least("finetune_epochs", 0)
        self.at_least("finetune_lr", 0, strict=True)
        for key in ("retain_eval", "max_new_tokens"):
            self.at_least(key, 1)
        self.at_least("eval_every", 0)
        self.require(bool(self.methods), "methods", f"a non-empty subset of {METHODS}")
        try:
            self.methods = [canonical_method(m, "methods") for m in self.methods]
            self.overrides = {canonical_method(m, "overrides"): v
                              for m, v in self.overrides.items()}
        except ValueError as exc:
            raise ConfigError("", str(exc)) from None
        if self.model == "tiny":
            self.overrides = merge_mappings(TINY_OVERRIDES, self.overrides)
        self.require("method" not in self.unlearn, "unlearn.method",
                     "left out (the methods come from `methods`)")
        shared = build_config(_unlearn_config_cls(), {"seed": self.seed, **self.unlearn},
                              prefix="unlearn")
        # keep the coerced values (YAML's "1e-3" as 0.001), so the config saved with the
        # results and compared on --resume holds what ran
        self.unlearn = {k: getattr(shared, k) for k in self.unlearn}
        for method in dict.fromkeys([*self.methods, *self.overrides]):
            self.require(isinstance(self.overrides.get(method, {}), dict),
                         f"overrides.{method}", "a mapping of UnlearnConfig fields")
            built = self.method_config(method)
            if method in self.overrides:
                self.overrides[method] = {k: getattr(built, k) for k in self.overrides[method]}

    def method_config(self, method: str):
        """The method's UnlearnConfig: the run's seed, then `unlearn`, then
        `overrides[method]`."""
        values = {"seed": self.seed, **self.unlearn, **self.overrides.get(method, {}),
                  "method": method}
        prefix = f"overrides.{method}" if method in self.overrides else "unlearn"
        return build_config(_unlearn_config_cls(), values, prefix=prefix)

    def epochs_to_memorize(self, built_here: bool) -> int:
        """finetune_epochs, or its default for a tiny model built here (40) or not (0)."""
        if self.finetune_epochs is not None:
            return self.finetune_epochs
        return 40 if built_here else 0


def _unlearn_config_cls():
    from trustfast.llm.train import UnlearnConfig

    return UnlearnConfig


@dataclass
class _Artefacts:
    model: torch.nn.Module  # before unlearning (memorized)
    tokenizer: Any
    fmt: Any  # QAFormat
    forget: list
    retain: list
    holdout: list | None
    gold: torch.nn.Module | None  # the retain model, rank 0 only
    build: Any  # () -> a fresh model of the same architecture, or None
    data: dict
    memorize_epochs: int


def _qa_sets(cfg: LLMUnlearnConfig, objects: dict):
    from trustfast.data.qa import load_qa

    if objects.get("forget") is not None:
        return objects["forget"], objects["retain"], objects.get("holdout"), "python objects"
    if cfg.forget is None:
        from trustfast.data.facts import make_facts, split

        facts = make_facts(cfg.n_people, seed=cfg.seed)
        forget, retain, holdout = split(facts, cfg.forget_share, 0.1, seed=cfg.seed)
        return forget, retain, holdout, "built-in facts"
    sets = []
    for key in ("forget", "retain", "holdout"):
        path = getattr(cfg, key)
        try:
            sets.append(load_qa(path, cfg.question_key, cfg.answer_key) if path else None)
        except ValueError as exc:
            raise ConfigError(key, f"could not be read: {exc}") from None
    return (*sets, "files")


def _texts(records) -> list[str]:
    out = []
    for r in records:
        out += [r.question, r.answer, r.paraphrased_question or "", r.paraphrased_answer or "",
                *r.perturbed_answers, r.refusal or ""]
    return [t for t in out if t]


def _artefacts(cfg: LLMUnlearnConfig, out: str, resume: bool, rank: int, world: int,
               device: torch.device, objects: dict) -> _Artefacts:
    from trustfast.data.facts import WordTokenizer
    from trustfast.data.qa import REFUSALS, qa_format, with_refusals
    from trustfast.llm.models import load_causal_lm, tiny_llama
    from trustfast.llm.train import encode_examples, finetune

    forget, retain, holdout, source = _qa_sets(cfg, objects)
    if "idkdpo" in cfg.methods and any(r.refusal is None for r in forget):
        forget = with_refusals(forget, REFUSALS, seed=cfg.seed)
    build = None
    if objects.get("model") is not None:  # a copy: the caller's model stays as it was
        model, tokenizer = copy.deepcopy(objects["model"]), objects["tokenizer"]
    elif cfg.model == "tiny":
        tokenizer = WordTokenizer(_texts(forget + retain + (holdout or [])))
        fmt = qa_format(tokenizer)

        def build():
            return tiny_llama(fmt.vocab_size, cfg.hidden_size, fmt.pad_id, fmt.bos_id,
                              fmt.eos_id, cfg.seed)

        model = build()
    else:
        try:
            model, tokenizer = load_causal_lm(cfg.model, dtype=cfg.dtype)
        except ValueError as exc:
            raise ConfigError("model", f"could not be loaded: {exc}") from None
    fmt = qa_format(tokenizer)
    model.to(device)

    def fine_tuned(m, name: str, qas, desc: str):
        """`m` fine-tuned on `qas` (rank 0; the others wait), or its checkpoint in `out`."""
        epochs = cfg.epochs_to_memorize(build is not None)
        if epochs == 0:
            return m
        if rank == 0 and (not resume or load_checkpoint(out, name) is None):
            finetune(m, encode_examples(fmt, qas), fmt.pad_id, epochs, lr=cfg.finetune_lr,
                     batch_size=16, seed=cfg.seed, desc=desc)
            save_checkpoint(out, name, m.state_dict(), {"epochs": epochs})
        if world > 1:
            torch.distributed.barrier()
        m.load_state_dict(load_checkpoint(out, name)[0])
        return m

    model = fine_tuned(model, "memorized", forget + retain, "memorize")
    gold = None
    if objects.get("retain_model") is not None:
        gold = objects["retain_model"]
    elif cfg.retain_model is not None:
        if rank == 0:
            try:
                gold = load_causal_lm(cfg.retain_model, dtype=cfg.dtype)[0].to(device)
            except ValueError as exc:
                raise ConfigError("retain_model", f"could not be loaded: {exc}") from None
    elif build is not None:
        # the gold standard of the tiny model: the same Llama fine-tuned on the retain set only
        gold = fine_tuned(build().to(device), "retain_only", retain, "retain-only model")
    data = {"source": source, "forget": len(forget), "retain": len(retain),
            "holdout": len(holdout) if holdout else 0, "format": repr(fmt)}
    return _Artefacts(model, tokenizer, fmt, forget, retain, holdout, gold if rank == 0 else None,
                      build, data, cfg.epochs_to_memorize(build is not None))


def run(cfg: LLMUnlearnConfig, out: str, resume: bool = False, *, model=None, tokenizer=None,
        forget=None, retain=None, holdout=None, retain_model=None) -> Result:
    """The experiment. From Python: `model=` and `tokenizer=` (any HF causal LM and tokenizer)
    replace `model`; `forget=` / `retain=` / `holdout=` (lists of `trustfast.data.QA`, e.g.
    from `load_qa`) replace the files; `retain_model=` the retain model."""
    from trustfast.llm.metrics import retain_model_reference, unlearning_scores
    from trustfast.llm.models import save_pretrained
    from trustfast.llm.train import encode_examples, unlearn

    if (model is None) != (tokenizer is None):
        raise ValueError("pass both model= and tokenizer=, or neither")
    if (forget is None) != (retain is None):
        raise ValueError("pass both forget= and retain=, or neither")
    distributed = cfg.zero is not None
    if distributed:
        from trustfast.llm.launch import init_distributed

        rank, world = init_distributed()
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) \
            if torch.cuda.is_available() else torch.device("cpu")
    else:
        rank, world, device = 0, 1, resolve_device(cfg.device)
    objects = {"model": model, "tokenizer": tokenizer, "forget": forget, "retain": retain,
               "holdout": holdout, "retain_model": retain_model}
    art = _artefacts(cfg, out, resume, rank, world, device, objects)
    retain_eval = art.retain[:cfg.retain_eval]
    reference = retain_model_reference(art.gold, art.fmt, art.forget, art.holdout) \
        if art.gold is not None else None

    def scores(m) -> dict:
        return unlearning_scores(m, art.fmt, art.forget, retain_eval, art.holdout, reference,
                                 cfg.max_new_tokens)

    rows = RowStore(out, resume) if rank == 0 else None
    setting = {"world_size": world, "zero_stage": cfg.zero.stage if distributed else None}
    if rank == 0:
        if "original" not in rows:
            rows.put("original", {"method": "original", **scores(art.model), "seconds": 0.0})
        if art.gold is not None and "retain_only" not in rows:
            rows.put("retain_only", {"method": "retain_only", **scores(art.gold),
                                     "seconds": 0.0})
    done = set(RowStore(out, True).rows) if resume else set()
    retain_examples = encode_examples(art.fmt, art.retain)
    history, evals, model_dirs, configs = {}, {}, {}, {}
    for method in cfg.methods:
        ucfg = cfg.method_config(method)
        configs[method] = asdict(ucfg)
        if method in done:
            continue
        m = copy.deepcopy(art.model)
        forget_examples = encode_examples(art.fmt, art.forget, method)
        ckpt = os.path.join(out, "checkpoints", method)
        effective = ucfg.batch_size * ucfg.grad_accum_steps * world
        start = time.perf_counter()
        if distributed:
            from trustfast.llm.launch import unlearn_deepspeed

            # DeepSpeed owns (and under ZeRO-3 partitions) `m`: rank 0 scores a plain copy
            probe = copy.deepcopy(art.model) if rank == 0 else None

            def evaluate(state_dict: dict, probe=probe) -> dict:
                probe.load_state_dict(state_dict)
                return scores(probe.eval())

            result = unlearn_deepspeed(m, forget_examples, retain_examples, ucfg, cfg.zero,
                                       art.fmt.pad_id, checkpoint_dir=ckpt, resume=resume,
                                       evaluate=evaluate, eval_every=cfg.eval_every,
                                       log=print if rank == 0 else (lambda *a: None))
            history[method], evals[method] = result["history"], result["evals"]
            seconds = time.perf_counter() - start
            row = {}
            if rank == 0:
                probe.load_state_dict(result["state_dict"])
                m = probe
                row = {k: v for k, v in result["evals"][-1].items() if k in SCORES}
        else:
            history[method] = unlearn(m, forget_examples, retain_examples, ucfg, art.fmt.pad_id,
                                      checkpoint_dir=ckpt, resume=resume)
            seconds = time.perf_counter() - start
            row = scores(m)
        if rank == 0:
            if cfg.save_models:
                model_dirs[method] = save_pretrained(m.eval(), art.tokenizer,
                                                     os.path.join(out, "models", method))
            rows.put(method, {"method": method, **row, "seconds": seconds, **setting,
                              "effective_batch": effective})
        if distributed:
            torch.distributed.barrier()
        del m
    if rank != 0:
        return Result({}, [])
    order = ["original"] + (["retain_only"] if "retain_only" in rows else []) + cfg.methods
    return Result({}, [rows[k] for k in order], {
        "resolved": {"unlearn_configs": configs},
        "data": art.data, "model": {"class": type(art.model).__name__,
                                    "parameters": sum(p.numel() for p in art.model.parameters()),
                                    "memorize_epochs": art.memorize_epochs},
        "history": history, "evals": evals, "model_dirs": model_dirs})


def plot(result: Result) -> dict:
    long = [{"method": r["method"], "split": split, "EM": r[f"{split}_EM"]}
            for r in result.rows for split in ("forget", "retain")]
    return {"llm_unlearning.png": grouped_bars(long, "method", "split",
                                               [("EM", "answer exact match")],
                                               "forget vs retain", ylim=(0, 1.05))}


register(Experiment(
    name="llm-unlearn", config_cls=LLMUnlearnConfig, run=run, plot=plot,
    help="unlearn a causal LM's forget set (GA, GradDiff, NPO, SimNPO, IdkDPO, RMU, ...): "
         "TOFU-style EM, ROUGE, truth ratio, forget quality, PrivLeak; DeepSpeed with `zero`",
    columns=("method", *SCORES, "seconds"),
    flags=(Flag("--model", "model", "tiny or a local Hugging Face model folder"),
           Flag("--forget", "forget", "forget QA file (JSON / JSONL, TOFU's fields)"),
           Flag("--retain", "retain", "retain QA file"),
           Flag("--holdout", "holdout", "holdout QA file (never trained on)"),
           Flag("--retain-model", "retain_model", "the retain model's folder (reference)"),
           Flag("--question-key", "question_key", "field of the question in the QA files"),
           Flag("--answer-key", "answer_key", "field of the answer in the QA files"),
           Flag("--methods", "methods", "comma-separated: ga,graddiff,ga_kl,npo,simnpo,idkdpo,"
                "rmu or OpenUnlearning's GradAscent,GradDiff,NPO,SimNPO,RMU,DPO")),
))
