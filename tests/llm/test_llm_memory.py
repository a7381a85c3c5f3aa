"""The memory model of an unlearning step (trustfast.llm.memory) against measured peaks, the
optimizer stepped in the backward, and the trainer's memory options."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers")

from trustfast._bench import llm_memory  # noqa: E402
from trustfast.llm.memory import (  # noqa: E402
    LLAMA_7B,
    LlamaShape,
    StepInBackward,
    StepSetup,
    build_model,
    predict_step_memory,
)
from trustfast.llm.train import UnlearnConfig, unlearn  # noqa: E402


def test_parameter_count_matches_the_model():
    shape = LlamaShape(64, 172, 3, 4, 2, 500)
    model = build_model(shape, StepSetup(dtype_bytes=4, gradient_checkpointing=False, seq_len=32))
    assert shape.parameters() == sum(p.numel() for p in model.parameters())
    assert sorted(shape.parameter_sizes()) == sorted(p.numel() for p in model.parameters())


@pytest.mark.parametrize("case", llm_memory.SMALL, ids=[c[0] for c in llm_memory.SMALL])
@pytest.mark.parametrize("variant", list(llm_memory.VARIANTS))
def test_memory_model_predicts_the_measured_peak(case, variant, one_intra_op_thread):
    r = llm_memory.row(*case, variant, "cpu")
    assert abs(r["predicted/measured"] - 1) <= llm_memory.TOLERANCE, r


def test_trustfast_step_is_leaner_than_the_logits_path_with_a_reference_model():
    name, shape, batch, seq, b = llm_memory.SMALL[0]
    ours, peer = (llm_memory.row(name, shape, batch, seq, b, v, "cpu")
                  for v in (llm_memory.OURS, llm_memory.PEER))
    assert ours["measured_GB"] < 0.75 * peer["measured_GB"]


def test_7b_step_fits_40gb_by_the_memory_model():
    ours = StepSetup(**llm_memory.VARIANTS[llm_memory.OURS])
    peer = StepSetup(**llm_memory.VARIANTS[llm_memory.PEER])
    assert predict_step_memory(LLAMA_7B, ours)["peak"] <= 40e9
    assert predict_step_memory(LLAMA_7B, peer)["peak"] > 60e9


def _train(model, opt, steps=5):
    torch.manual_seed(1)
    for _ in range(steps):
        x = torch.randn(8, 16)
        loss = (model(x) ** 2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def test_step_in_backward_matches_a_regular_optimizer_and_frees_gradients():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    b = copy.deepcopy(a)
    _train(a, torch.optim.AdamW(a.parameters(), lr=1e-2))
    fused = StepInBackward(b.parameters(), lambda p: torch.optim.AdamW(p, lr=1e-2))
    _train(b, fused)
    assert all(p.grad is None for p in b.parameters())
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    # its state dict has the shape of one optimizer's, and loads back
    state = fused.state_dict()
    assert sorted(state["state"]) == list(range(4))
    again = StepInBackward(copy.deepcopy(b).parameters(),
                           lambda p: torch.optim.AdamW(p, lr=1e-2))
    again.load_state_dict(state)
    torch.testing.assert_close(again.optimizers[2].state_dict()["state"][0]["exp_avg"],
                               state["state"][2]["exp_avg"])
    fused.remove()


def _facts_examples():
    gen = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(3, 60, (7,), generator=gen),
             "labels": torch.randint(3, 60, (7,), generator=gen)} for _ in range(6)]


@pytest.mark.parametrize("option", ["gradient_checkpointing", "optimizer_in_backward"])
def test_unlearn_memory_options_keep_the_loss_curve(option, tmp_path):
    from trustfast.llm.models import tiny_llama

    forget, retain = _facts_examples(), _facts_examples()[::-1]
    base = {"method": "npo", "epochs": 2, "lr": 1e-3, "batch_size": 3}
    plain, lean = tiny_llama(60, 32, seed=0), tiny_llama(60, 32, seed=0)
    want = unlearn(plain, forget, retain, UnlearnConfig(**base), pad_id=0)
    got = unlearn(lean, forget, retain, UnlearnConfig(**base, **{option: True}), pad_id=0,
                  checkpoint_dir=str(tmp_path))
    curve = [loss for h in got for loss in h["step_loss"]]
    torch.testing.assert_close(torch.tensor(curve),
                               torch.tensor([x for h in want for x in h["step_loss"]]),
                               rtol=1e-5, atol=1e-5)
    for p, q in zip(plain.parameters(), lean.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in lean.parameters()) or option != "optimizer_in_backward"


def test_optimizer_in_backward_rejects_accumulation():
    with pytest.raises(ValueError, match="grad_accum_steps"):
        UnlearnConfig(optimizer_in_backward=True, grad_accum_steps=2)
