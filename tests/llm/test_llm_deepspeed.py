"""DeepSpeed ZeRO unlearning (trustfast.llm.launch, launched as the llm-unlearn experiment with
`zero` in its config): a 2-process CPU run (torchrun, gloo) of ZeRO 2 and 3 follows the
single-process loss curve; resume; the schedule's sharding; 8-bit AdamW. The first DeepSpeed
start JIT-builds a communication op (about a minute) into
TORCH_EXTENSIONS_DIR, which the Makefile keeps in .torch_extensions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")

from trustfast.llm.train import (  # noqa: E402
    UnlearnConfig,
    _schedule,
    make_optimizer,
    steps_per_epoch,
    unlearn,
)

deepspeed = pytest.importorskip("deepspeed")

FACTS = {"n_people": 20, "forget_share": 0.2, "hidden_size": 32, "finetune_epochs": 2,
         "retain_eval": 8, "methods": ["npo"], "device": "cpu"}
UNLEARN = {"epochs": 2, "lr": 1e-3, "batch_size": 2}


def _config(zero, **unlearn) -> dict:
    return {**FACTS, "unlearn": {**UNLEARN, **unlearn}, "zero": zero, "eval_every": 1}


def _write_config(path, zero, **unlearn) -> str:
    import yaml

    with open(path, "w") as f:
        yaml.safe_dump(_config(zero, **unlearn), f)
    return str(path)


def _launch(tmp, name, config, nproc=2, extra=(), module="trustfast.llm.train") -> dict:
    """torchrun of `python -m trustfast.llm.train` (= `trustfast llm-unlearn`) with --resume:
    the memorized model copied into the run's folder is reused."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1", PYTHONWARNINGS="ignore",
               DS_ACCELERATOR="cpu")
    env.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(os.getcwd(), ".torch_extensions"))
    out = tmp / name
    command = ["-m", module] if module == "trustfast.llm.train" else \
        ["-m", "trustfast", "llm-unlearn"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--standalone", *command, "--config", config, "--out", str(out), "--resume",
           *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return _summary(json.load(open(out / "results.json")))


def _summary(result: dict) -> dict:
    """The npo row's settings, its history and evaluations."""
    row = result["rows"][-1]
    prov = result["provenance"]
    return {"row": row, "world_size": row["world_size"], "zero_stage": row["zero_stage"],
            "effective_batch": row["effective_batch"], "history": prov["history"]["npo"],
            "evals": prov["evals"].get("npo", [])}


def _curve(result) -> list[float]:
    return [loss for epoch in result["history"] for loss in epoch["step_loss"]]


def _weights(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "models" / "npo" / "model.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The single-process reference (no DeepSpeed, 2 accumulation steps) and the memorized
    model it made, copied into every 2-process run's folder so all start from one model."""
    from trustfast.config import build_config
    from trustfast.experiments import run_experiment
    from trustfast.experiments.llm import LLMUnlearnConfig

    tmp = tmp_path_factory.mktemp("zero")
    cfg = build_config(LLMUnlearnConfig, _config(None, grad_accum_steps=2))
    ref = run_experiment("llm-unlearn", cfg, str(tmp / "reference"))
    ref = _summary(ref.to_json())

    def fresh(name: str):
        os.makedirs(tmp / name)
        for part in ("memorized", "retain_only"):
            for ext in ("json", "safetensors"):
                shutil.copy(tmp / "reference" / f"{part}.{ext}", tmp / name / f"{part}.{ext}")
        return name

    return tmp, ref, fresh


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_two_process_zero_matches_single_process_curve(runs, stage):
    tmp, ref, fresh = runs
    # ZeRO-3 with a persistence threshold of 0 really partitions every weight (the default
    # keeps weights under 1e5 elements whole), the LM head's included
    zero = {"stage": stage, "overrides": {"stage3_param_persistence_threshold": 0}}
    if stage == 2:
        zero["offload_optimizer"] = True
    # ZeRO-2 through `python -m trustfast.llm.train`, ZeRO-3 through `-m trustfast llm-unlearn`
    result = _launch(tmp, fresh(f"zero{stage}"), _write_config(tmp / f"z{stage}.yaml", zero),
                     module="trustfast.llm.train" if stage == 2 else "trustfast")
    assert (result["world_size"], result["zero_stage"], result["effective_batch"]) == (2, stage, 4)
    assert ref["effective_batch"] == 4 and ref["world_size"] == 1
    curve, want = _curve(result), _curve(ref)
    assert len(curve) == len(want) == 2 * steps_per_epoch(16, UnlearnConfig(**UNLEARN), 2)
    # the row's scores are rank 0's last evaluation
    assert result["row"]["forget_EM"] == result["evals"][-1]["forget_EM"]
    assert want[-1] < want[0] - 1.0  # the loss moves: the comparison is not of a flat line
    torch.testing.assert_close(torch.tensor(curve), torch.tensor(want), rtol=1e-5, atol=1e-5)
    # rank 0 evaluated after every epoch, with the settings attached
    assert [e["epoch"] for e in result["evals"]] == [1, 2]
    assert all(e["world_size"] == 2 and e["zero_stage"] == stage for e in result["evals"])
    # the saved model (save_pretrained) is the full model, equal to the reference's final one
    got, want_w = _weights(tmp / f"zero{stage}"), _weights(tmp / "reference")
    assert got.keys() == want_w.keys()
    for k in want_w:
        torch.testing.assert_close(got[k], want_w[k], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_zero3_resume_trains_on_to_the_same_curve(runs):
    """One epoch, then --resume with epochs=2: the same 2-epoch curve as the reference."""
    tmp, ref, fresh = runs
    zero = {"stage": 3}
    name = fresh("resumed")
    _launch(tmp, name, _write_config(tmp / "r1.yaml", zero, epochs=1))
    # a larger `epochs` trains on from the epoch-1 checkpoint; the finished row is dropped
    os.remove(tmp / name / "rows.json")
    os.remove(tmp / name / "run.json")
    result = _launch(tmp, name, _write_config(tmp / "r2.yaml", zero, epochs=2))
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    torch.testing.assert_close(torch.tensor(_curve(result)), torch.tensor(_curve(ref)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("world,gas", [(2, 1), (4, 1), (2, 3)])
def test_schedule_shards_one_process_accumulation_across_ranks(world, gas):
    """The micro-batches of `world` ranks with `gas` steps are those of one process with
    world * gas accumulation steps: same forget and retain examples per optimizer step."""
    one = UnlearnConfig(batch_size=3, grad_accum_steps=world * gas)
    many = UnlearnConfig(batch_size=3, grad_accum_steps=gas)
    for epoch in range(2):
        single = list(_schedule(13, 7, one, epoch, 0, 1))
        ranks = [list(_schedule(13, 7, many, epoch, r, world)) for r in range(world)]
        assert all(len(r) == len(single) for r in ranks)
        for s, step in enumerate(single):
            merged = sorted(m for r in ranks for m in r[s])
            assert merged == sorted(step)
            assert all(len(f) == 3 and len(r) == 3 for f, r in step)


def test_schedule_covers_every_forget_example_each_epoch():
    cfg = UnlearnConfig(batch_size=4, grad_accum_steps=2)
    seen = [i for step in _schedule(21, 5, cfg, 0, 0, 1) for f, _ in step for i in f]
    assert set(seen) == set(range(21)) and len(seen) == 24  # 3 steps of 8, 3 wrapped around


def test_zero_config_and_deepspeed_dict():
    from trustfast.experiments.llm import LLMUnlearnConfig
    from trustfast.llm.launch import ZeroConfig, deepspeed_config

    with pytest.raises(ValueError, match="stage"):
        ZeroConfig(stage=4)
    with pytest.raises(ValueError, match="offload_param"):
        ZeroConfig(stage=2, offload_param=True)
    with pytest.raises(ValueError, match="offload_optimizer"):
        ZeroConfig(stage=0, offload_optimizer=True)
    ds = deepspeed_config(ZeroConfig(stage=3, offload_param=True, bf16=True),
                          UnlearnConfig(batch_size=4, grad_accum_steps=2), world_size=8)
    assert ds["train_batch_size"] == 64 and ds["gradient_accumulation_steps"] == 2
    assert ds["zero_optimization"]["offload_param"] == {"device": "cpu"}
    assert ds["bf16"]["enabled"] is True
    with pytest.raises(ValueError, match=r"unknown config keys \['metod'\] in unlearn"):
        LLMUnlearnConfig(unlearn={"metod": "npo"})
    with pytest.raises(ValueError, match="grad_accum_steps"):
        LLMUnlearnConfig(unlearn={"grad_accum_steps": 0})
    with pytest.raises(ValueError, match="zero.stage must be"):
        LLMUnlearnConfig(zero={"stage": 5})


def test_unlearn_config_rejects_unknown_optimizer():
    with pytest.raises(ValueError, match="optimizer"):
        UnlearnConfig(optimizer="sgd")


def test_grad_accumulation_equals_one_big_batch_for_sequence_mean_losses():
    """SimNPO's forget term is a mean over sequences: 2 accumulated micro-batches of 2 give
    the gradient of one batch of 4 when the retain term is off (retain_loss "none")."""
    from trustfast.llm.models import tiny_llama

    torch.manual_seed(0)
    forget = [{"input_ids": torch.randint(3, 50, (6,)), "labels": torch.randint(3, 50, (6,))}
              for _ in range(4)]
    retain = [dict(e) for e in forget]
    a, b = tiny_llama(50, 32, seed=0), tiny_llama(50, 32, seed=0)
    kw = {"method": "simnpo", "retain_loss": "none", "epochs": 1, "lr": 1e-2}
    unlearn(a, forget, retain, UnlearnConfig(batch_size=4, **kw), pad_id=0)
    unlearn(b, forget, retain, UnlearnConfig(batch_size=2, grad_accum_steps=2, **kw), pad_id=0)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_adamw8bit_keeps_8_bit_state_and_follows_adamw():
    pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    w0 = torch.randn(128, 64)
    target = torch.randn(128, 64)
    losses = {}
    for name in ("adamw", "adamw8bit"):
        w = torch.nn.Parameter(w0.clone())
        opt = make_optimizer([w], name, lr=1e-2)
        for _ in range(30):
            loss = ((w - target) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses[name] = float(((w.detach() - target) ** 2).mean())
        if name == "adamw8bit":
            assert opt.state[w]["state1"].dtype == torch.uint8  # really 8-bit moments
    start = float(((w0 - target) ** 2).mean())
    assert losses["adamw8bit"] < 0.8 * start
    assert losses["adamw8bit"] == pytest.approx(losses["adamw"], rel=0.05)
