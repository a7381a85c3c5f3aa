"""LLM unlearning losses: the chunked NLL against Hugging Face's loss, config errors, the
unlearning loop's checkpoint/resume, and the end-to-end claims on the built-in facts (slow).
Parity of every loss with OpenUnlearning / WMDP: test_llm_reference_parity.py."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as fn

pytest.importorskip("transformers")

from trustfast.experiments import run_experiment  # noqa: E402
from trustfast.experiments.llm import LLMUnlearnConfig  # noqa: E402
from trustfast.llm.losses import LossConfig, sequence_nlls, unlearning_loss  # noqa: E402
from trustfast.llm.models import tiny_llama  # noqa: E402
from trustfast.llm.train import UnlearnConfig, unlearn  # noqa: E402

VOCAB = 40


def _model(seed=0):
    return tiny_llama(VOCAB, hidden_size=32, seed=seed).double()


def _batch(seed, b=3, t=9):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (b, t), generator=gen)
    labels = ids.clone()
    labels[:, :3] = -100  # the prompt
    mask = torch.ones_like(ids)
    mask[-1, -2:] = 0  # right padding on the last sequence
    labels[-1, -2:] = -100
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _direct_nll(model, batch):
    """Summed and mean answer NLL per sequence from the full logits (the specification)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    nll = fn.cross_entropy(logits[:, :-1].transpose(1, 2), labels, reduction="none",
                           ignore_index=-100)
    tokens = (labels != -100).sum(1)
    return nll.sum(1), nll.sum(1) / tokens, tokens


def test_sequence_nlls_equal_hf_loss():
    model = _model()
    batch = _batch(3)
    out = sequence_nlls(model, **batch)
    hf = model(**batch).loss
    torch.testing.assert_close(out.sum.sum() / out.tokens.sum(), hf.double(), rtol=1e-6,
                               atol=1e-6)  # HF's loss upcasts logits to float32


def test_loss_config_defaults_and_errors():
    assert LossConfig("npo").beta == 0.1 and LossConfig("simnpo").beta == 4.5
    with pytest.raises(ValueError, match="method"):
        LossConfig("rmu2")
    with pytest.raises(ValueError, match="beta"):
        LossConfig("npo", beta=0.0)
    model = _model()
    with pytest.raises(ValueError, match="retain"):
        unlearning_loss(model, _batch(0), None, LossConfig("graddiff"))
    with pytest.raises(ValueError, match="ref_nll"):
        unlearning_loss(model, _batch(0), _batch(1), LossConfig("npo"))
    with pytest.raises(ValueError, match="ref_model"):
        unlearning_loss(model, _batch(0), _batch(1), LossConfig("ga_kl"))


def _examples(seed, n):
    out = []
    for i in range(n):
        b = _batch(seed + i, b=1)
        out.append({k: v[0] for k, v in b.items()})
    return out


def test_unlearn_checkpoint_resume_continues_exactly(tmp_path):
    forget, retain = _examples(10, 6), _examples(20, 6)
    cfg = UnlearnConfig(method="npo", epochs=4, lr=1e-3, batch_size=3)
    straight = tiny_llama(VOCAB, hidden_size=32, seed=0)
    resumed = copy.deepcopy(straight)
    hist = unlearn(straight, forget, retain, cfg, pad_id=0)
    # a run killed after 2 epochs, then resumed from its checkpoint
    first = copy.deepcopy(resumed)
    unlearn(first, forget, retain, UnlearnConfig(**{**cfg.__dict__, "epochs": 2}), pad_id=0,
            checkpoint_dir=str(tmp_path))
    # resuming with epochs=4 trains on from epoch 2
    hist2 = unlearn(resumed, forget, retain, cfg, pad_id=0, checkpoint_dir=str(tmp_path),
                    resume=True)
    assert [h["epoch"] for h in hist2] == [1, 2, 3, 4]
    for p, q in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert hist2[-1]["loss"] == pytest.approx(hist[-1]["loss"], rel=1e-4)


def _facts_rows(tmp_path, **kw) -> dict:
    """The llm-unlearn experiment's rows on the built-in facts, by method."""
    cfg = LLMUnlearnConfig(device="cpu", save_models=False, **kw)
    return {r["method"]: r for r in run_experiment("llm-unlearn", cfg, str(tmp_path)).rows}


@pytest.mark.slow
def test_facts_unlearning_end_to_end(tmp_path, one_intra_op_thread):
    """Tiny Llama memorizes the facts (forget and retain EM 1.0), then each method brings
    forget EM to <= 20 %. Retain EM stays >= 80 % of its value for SimNPO (OpenUnlearning's
    beta 4.5, forget weight 0.125; measured forget 0.0625, retain 0.95); GA and NPO destroy the
    retain answers by the time forget EM reaches 0 (retain EM 0.125, measured): see
    test_ga_npo_keep_retain below."""
    rows = _facts_rows(tmp_path)
    assert rows["original"]["forget_EM"] == 1.0 and rows["original"]["retain_EM"] >= 0.95
    for method in ("ga", "npo", "simnpo"):
        assert rows[method]["forget_EM"] <= 0.2, rows
    assert rows["simnpo"]["retain_EM"] >= 0.8 * rows["original"]["retain_EM"], rows
    # the forget truth ratio, mean(min(R, 1/R)), moves toward the retain model's (measured:
    # original 0.620, SimNPO 0.680, retain-only 0.729)
    assert rows["original"]["forget_truth_ratio"] < rows["simnpo"]["forget_truth_ratio"]
    assert rows["simnpo"]["forget_truth_ratio"] < rows["retain_only"]["forget_truth_ratio"]
    # forget quality: the retain-only model against itself is 1; unlearning moves the forget
    # truth ratios toward it (measured: original 0.011, SimNPO 0.035, GA and NPO 0.716)
    assert rows["retain_only"]["forget_quality"] == 1.0
    assert rows["retain_only"]["privleak"] == 0.0
    # PrivLeak with MUSE's sign: the memorized model is under-unlearned, negative (-100)
    assert rows["original"]["privleak"] < -50
    assert rows["original"]["forget_quality"] < 0.05
    for method in ("ga", "npo", "simnpo"):
        assert rows[method]["forget_quality"] > rows["original"]["forget_quality"], rows
    for method in ("ga", "npo"):
        assert rows[method]["forget_quality"] > 4 * rows["original"]["forget_quality"], rows


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="GA and NPO (5 epochs, lr 1e-3) keep 12.5 % retain EM "
                   "at forget EM 0 on the tiny model; the issue asks >= 80 %. Of the recipes "
                   "tried (BENCHMARKS.md), NPO+RT keeps 95 % only at lr 3e-4, 10 epochs, retain "
                   "weight 5; GA (no retain term) at best 75 % (lr 3e-4, 10 epochs)")
def test_ga_npo_keep_retain(tmp_path, one_intra_op_thread):
    rows = _facts_rows(tmp_path, methods=["ga", "npo"])
    for method in ("ga", "npo"):
        assert rows[method]["retain_EM"] >= 0.8 * rows["original"]["retain_EM"], rows


def test_rmu_trains_only_down_proj():
    forget, retain = _examples(30, 4), _examples(40, 4)
    model = tiny_llama(VOCAB, hidden_size=32, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unlearn(model, forget, retain, UnlearnConfig(method="rmu", epochs=2, lr=1e-2, batch_size=2,
                                                 steering_coeff=5.0, alpha=1.0), pad_id=0)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"model.layers.0.mlp.down_proj.weight"}, changed  # WMDP's choice


@pytest.mark.slow
def test_rmu_forgets_and_keeps_retain_on_facts(tmp_path, one_intra_op_thread):
    """RMU with the tiny model's constants (experiments.llm.TINY_OVERRIDES: c = 20, retain weight
    100, 20 epochs, the whole MLP of layer 0, as WMDP's three down_proj layers collapse to one
    matrix on 2 layers): measured forget EM 0.0625, retain 1.0."""
    rows = _facts_rows(tmp_path, methods=["rmu"])
    assert rows["rmu"]["forget_EM"] <= 0.2, rows
    assert rows["rmu"]["retain_EM"] >= 0.8 * rows["original"]["retain_EM"], rows
