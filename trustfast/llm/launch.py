"""Unlearning under DeepSpeed ZeRO (stages 0-3), one process per device or per CPU slot.

    torchrun --nproc_per_node 2 -m trustfast.llm.train --config run.yaml --out runs/zero2
    deepspeed --num_accelerators 2 --module trustfast.llm.train --config run.yaml --out runs/zero2
    python -m trustfast.llm.train --config run.yaml          # one process (DeepSpeed or not)

`unlearn_deepspeed` runs the same loop as the single-process `trustfast.llm.train.unlearn`
(`train_epochs`): every process takes its own micro-batches of each optimizer step, DeepSpeed
averages the gradients, so a run on N processes with G accumulation steps follows the loss
curve of one process with N*G accumulation steps. Reference NLLs (NPO, IdkDPO) and reference
models (GA+KL, RMU) are made from the plain model before DeepSpeed takes it. Under ZeRO-3 the
LM head's weight, which `sequence_nll` reads outside the head's own forward, is registered as
an external parameter of the loss module, so it is gathered for the loss and released after.

Evaluation runs on rank 0 during training: every process joins in gathering the full weights
(ZeRO-3 partitions them), rank 0 loads them into an evaluation copy and scores it, the others
wait. Every log line and results.json carry the world size, ZeRO stage and effective batch.
Checkpoints are DeepSpeed's own (every rank writes its partition; `latest` is written last, so
an interrupted save leaves the previous epoch's) and `--resume` continues from them.

The run config (YAML or JSON) has four parts, each optional:

    facts:  {n_people: 40, hidden_size: 64, finetune_epochs: 40, seed: 0}   # FactsExperimentConfig
    unlearn: {method: npo, epochs: 5, lr: 1.0e-3, batch_size: 4, grad_accum_steps: 2,
              optimizer: adamw}                                            # UnlearnConfig
    zero: {stage: 3, offload_optimizer: false, offload_param: false, bf16: false}
                                                # ZeroConfig; `zero: null` trains without DeepSpeed
    eval_every: 1                               # epochs between rank-0 evaluations (0: at the end)
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn

from trustfast.checkpoint import load_checkpoint, load_config, save_checkpoint, save_json
from trustfast.llm.losses import unlearning_loss
from trustfast.llm.memory import set_checkpointing
from trustfast.llm.train import (
    UnlearnConfig,
    check_resumable,
    make_optimizer,
    prepare_unlearning,
    train_epochs,
)


@dataclass
class ZeroConfig:
    """How DeepSpeed shards and places the training state."""

    stage: int = 2  # 0: data parallel; 1: + optimizer state sharded; 2: + gradients; 3: + weights
    offload_optimizer: bool = False  # optimizer state and step on the CPU (stages 1-3)
    offload_param: bool = False  # weights on the CPU between uses (stage 3)
    bf16: bool = False  # bf16 weights and activations, fp32 master weights
    overrides: dict = field(default_factory=dict)  # extra keys of DeepSpeed's zero_optimization

    def __post_init__(self):
        if self.stage not in (0, 1, 2, 3):
            raise ValueError(f"stage must be 0, 1, 2 or 3, got {self.stage!r}")
        if self.offload_optimizer and self.stage == 0:
            raise ValueError("offload_optimizer needs ZeRO stage 1, 2 or 3")
        if self.offload_param and self.stage != 3:
            raise ValueError("offload_param needs ZeRO stage 3")


def deepspeed_config(zero: ZeroConfig, config: UnlearnConfig, world_size: int) -> dict:
    """The DeepSpeed config dict of a run (our optimizer is passed in, not configured here)."""
    zero_opt: dict = {"stage": zero.stage}
    if zero.offload_optimizer:
        zero_opt["offload_optimizer"] = {"device": "cpu"}
    if zero.offload_param:
        zero_opt["offload_param"] = {"device": "cpu"}
    zero_opt.update(zero.overrides)
    return {
        "train_micro_batch_size_per_gpu": config.batch_size,
        "gradient_accumulation_steps": config.grad_accum_steps,
        "train_batch_size": config.batch_size * config.grad_accum_steps * world_size,
        "zero_optimization": zero_opt,
        "bf16": {"enabled": zero.bf16},
        "gradient_clipping": 0.0,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,  # keep our AdamW / 8-bit AdamW when offloading
        "steps_per_print": 2**31 - 1,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int]:
    """(rank, world size). Reads the launcher's RANK / WORLD_SIZE, or sets up a one-process
    group; on a machine without CUDA DeepSpeed uses its CPU accelerator and gloo."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:  # plain `python -m`: a group of one (else DeepSpeed asks MPI)
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())))
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


class _UnlearnModule(nn.Module):
    """The model plus its unlearning loss as one forward, the unit DeepSpeed wraps."""

    def __init__(self, model: nn.Module, config: UnlearnConfig, ref_model: nn.Module | None):
        super().__init__()
        self.model = model
        self.loss_config = config.loss_config()
        self._ref = [ref_model]  # a list, not a submodule: DeepSpeed neither trains nor shards it

    def forward(self, forget: dict, retain: dict | None):
        return unlearning_loss(self.model, forget, retain, self.loss_config, ref_model=self._ref[0])


def full_state_dict(module: nn.Module, stage: int) -> dict[str, torch.Tensor]:
    """The complete weights on rank 0 (empty elsewhere). Every rank must call it: under ZeRO-3
    each weight is gathered from its shards in turn."""
    rank = torch.distributed.get_rank()
    if stage < 3:
        return {k: v.detach().clone() for k, v in module.state_dict().items()} if rank == 0 else {}
    import deepspeed

    params = dict(module.named_parameters())
    out = {}
    for key, value in module.state_dict().items():
        if key in params:
            with deepspeed.zero.GatheredParameters([params[key]], modifier_rank=None):
                if rank == 0:
                    out[key] = params[key].detach().clone()
        elif rank == 0:
            out[key] = value.detach().clone()
    return out


def _reduce_mean(logs: dict) -> dict:
    values = torch.tensor([logs[k] for k in logs], dtype=torch.float64)
    torch.distributed.all_reduce(values)
    values /= torch.distributed.get_world_size()
    return dict(zip(logs, values.tolist()))


def unlearn_deepspeed(model: nn.Module, forget: list[dict], retain: list[dict],
                      config: UnlearnConfig, zero: ZeroConfig, pad_id: int, *,
                      checkpoint_dir: str | None = None, resume: bool = False,
                      evaluate=None, eval_every: int = 1, log=print) -> dict:
    """Unlearn under DeepSpeed in every process of an initialized group (`init_distributed`).

    evaluate(state_dict) -> dict runs on rank 0 every `eval_every` epochs and after the last.
    Returns (on every rank) {"history", "evals", "world_size", "zero_stage", "effective_batch",
    "state_dict"} where state_dict, the final full weights, is filled on rank 0 only."""
    import deepspeed

    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if config.optimizer_in_backward:
        raise ValueError("optimizer_in_backward is for single-process runs; under DeepSpeed "
                         "use zero.offload_optimizer to take the optimizer off the device")
    forget, ref_model, params = prepare_unlearning(model, forget, retain, config, pad_id)
    if config.method == "rmu":  # DeepSpeed reduces gradients of every trainable weight
        trained = {id(p) for p in params}
        for p in model.parameters():
            p.requires_grad_(id(p) in trained)
    if config.gradient_checkpointing:
        set_checkpointing(model, True)
    module = _UnlearnModule(model, config, ref_model)
    optimizer = make_optimizer(params, config.optimizer, config.lr, config.weight_decay)
    engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer,
                                      config=deepspeed_config(zero, config, world))
    if zero.stage == 3:
        head = model.get_output_embeddings()
        deepspeed.zero.register_external_parameter(engine.module, head.weight)
    effective = config.batch_size * config.grad_accum_steps * world
    setting = {"world_size": world, "zero_stage": zero.stage, "effective_batch": effective,
               "optimizer": config.optimizer, "bf16": zero.bf16}
    log(f"[trustfast.llm] {config.method}: " + ", ".join(f"{k} {v}" for k, v in setting.items()))
    start_epoch, history, evals = 0, [], []
    if resume and checkpoint_dir and os.path.exists(os.path.join(checkpoint_dir, "latest")):
        path, client = engine.load_checkpoint(checkpoint_dir)
        if path is None:
            raise ValueError(f"resume: no readable checkpoint in {checkpoint_dir}")
        check_resumable(client["config"], client["epoch"], config, checkpoint_dir)
        if client["zero"] != asdict(zero):
            raise ValueError(f"resume: {checkpoint_dir} holds a run with another ZeRO config")
        start_epoch, history, evals = client["epoch"], client["history"], client["evals"]
    evaluated = [evals[-1]["epoch"] if evals else 0]  # the same on every rank

    def evaluate_now(epoch: int) -> None:
        evaluated[0] = epoch
        weights = full_state_dict(engine.module.model, zero.stage)
        if rank == 0:
            row = {"epoch": epoch} | evaluate(weights) | setting
            evals.append(row)
            log(f"[trustfast.llm] eval {row}")
        torch.distributed.barrier()

    def on_epoch(epoch: int, hist: list[dict]) -> None:
        last = epoch == config.epochs
        if evaluate is not None and (last or (eval_every > 0 and epoch % eval_every == 0)):
            evaluate_now(epoch)
        log(f"[trustfast.llm] epoch {epoch}: loss {hist[-1]['loss']:.4f} "
            f"(world_size {world}, zero_stage {zero.stage}, effective_batch {effective})")
        if checkpoint_dir:
            tag = f"epoch{epoch}"
            engine.save_checkpoint(checkpoint_dir, tag=tag, client_state={
                "epoch": epoch, "history": hist, "evals": evals, "config": asdict(config),
                "zero": asdict(zero)})
            torch.distributed.barrier()
            if rank == 0:  # keep only the newest epoch
                for name in os.listdir(checkpoint_dir):
                    if name.startswith("epoch") and name != tag:
                        shutil.rmtree(os.path.join(checkpoint_dir, name), ignore_errors=True)

    def step() -> None:  # DeepSpeed steps the optimizer itself at the accumulation boundary
        pass

    def backward(loss: torch.Tensor) -> None:
        engine.backward(loss)
        engine.step()

    engine.train()
    train_epochs(lambda f, r: engine(f, r), forget, retain, config, pad_id, backward=backward,
                 step=step, start_epoch=start_epoch, history=history, rank=rank,
                 world_size=world, reduce_logs=_reduce_mean, on_epoch=on_epoch)
    if evaluate is not None and evaluated[0] != config.epochs:
        evaluate_now(config.epochs)  # a resumed run that had nothing left to train
    state = full_state_dict(engine.module.model, zero.stage)
    return {"history": history, "evals": evals, "state_dict": state} | setting


@dataclass
class LaunchConfig:
    """A launched run: built-in facts and tiny Llama, unlearning, DeepSpeed (or none)."""

    facts: dict = field(default_factory=dict)  # FactsExperimentConfig fields
    unlearn: dict = field(default_factory=dict)  # UnlearnConfig fields
    zero: dict | None = field(default_factory=dict)  # ZeroConfig fields; None: no DeepSpeed
    eval_every: int = 1

    def __post_init__(self):
        from trustfast.llm.facts_experiment import FactsExperimentConfig

        for name, cls in (("facts", FactsExperimentConfig), ("unlearn", UnlearnConfig),
                          ("zero", ZeroConfig)):
            value = getattr(self, name)
            if value is None and name == "zero":
                continue
            if not isinstance(value, dict):
                raise ValueError(f"{name} must be a mapping of {cls.__name__} fields")
            unknown = sorted(set(value) - {f.name for f in fields(cls)})
            if unknown:
                raise ValueError(f"{name} has unknown keys {unknown}")
        if not isinstance(self.eval_every, int) or self.eval_every < 0:
            raise ValueError(f"eval_every must be an int >= 0, got {self.eval_every!r}")
        self.facts_config().validate()
        self.unlearn_config()
        self.zero_config()

    def facts_config(self):
        from trustfast.llm.facts_experiment import FactsExperimentConfig

        return FactsExperimentConfig(**self.facts)

    def unlearn_config(self) -> UnlearnConfig:
        return UnlearnConfig(**self.unlearn)

    def zero_config(self) -> ZeroConfig | None:
        return None if self.zero is None else ZeroConfig(**self.zero)

    @classmethod
    def from_file(cls, path: str) -> LaunchConfig:
        """A config from a YAML or JSON file whose keys are this dataclass's fields."""
        return load_config(cls, path)


def run_launch(cfg: LaunchConfig, out: str, resume: bool = False) -> dict | None:
    """Memorize the facts (rank 0, cached in `out`), unlearn, evaluate on rank 0; rank 0 writes
    out/results.json (settings, per-epoch history with every step's loss, evaluations) and
    out/model.safetensors and returns the results; other ranks return None."""
    from trustfast.data.facts import WordTokenizer, encode_qa, make_facts, split
    from trustfast.llm.facts_experiment import score_answers, tiny_llama
    from trustfast.llm.train import finetune, unlearn

    facts_cfg, config, zero = cfg.facts_config(), cfg.unlearn_config(), cfg.zero_config()
    rank, world = init_distributed() if zero is not None else (0, 1)
    os.makedirs(out, exist_ok=True)
    facts = make_facts(facts_cfg.n_people, seed=facts_cfg.seed)
    forget_qa, retain_qa, _ = split(facts, facts_cfg.forget, 0.1, seed=facts_cfg.seed)
    tok = WordTokenizer(facts.texts())

    def encode(qa) -> dict:
        example = encode_qa(tok, qa.question, qa.answer)
        if config.method == "idkdpo":
            refusal = encode_qa(tok, qa.question, qa.refusal)
            example.update({f"idk_{k}": v for k, v in refusal.items()})
        return example

    def build():
        return tiny_llama(tok.vocab_size, facts_cfg.hidden_size, tok.pad_id, tok.bos_id,
                          tok.eos_id, facts_cfg.seed)

    model = build()
    memorized = os.path.join(out, "memorized")
    if rank == 0 and load_checkpoint(memorized, "model") is None:
        finetune(model, [encode_qa(tok, q.question, q.answer) for q in forget_qa + retain_qa],
                 tok.pad_id, facts_cfg.finetune_epochs, lr=3e-3, batch_size=16,
                 seed=facts_cfg.seed, desc="memorize facts")
        save_checkpoint(memorized, "model", model.state_dict(),
                        {"finetune_epochs": facts_cfg.finetune_epochs})
    if world > 1:
        torch.distributed.barrier()
    model.load_state_dict(load_checkpoint(memorized, "model")[0])
    forget, retain = [encode(q) for q in forget_qa], [encode(q) for q in retain_qa]
    retain_eval = retain_qa[:facts_cfg.retain_eval]

    def evaluate(state_dict: dict) -> dict:
        m = build()
        m.load_state_dict(state_dict)
        m.eval()
        f_em, f_rouge = score_answers(m, tok, forget_qa)
        r_em, r_rouge = score_answers(m, tok, retain_eval)
        return {"forget_EM": f_em, "retain_EM": r_em, "forget_ROUGE": f_rouge,
                "retain_ROUGE": r_rouge}

    ckpt = os.path.join(out, "checkpoints")
    if zero is None:
        history = unlearn(model, forget, retain, config, tok.pad_id, checkpoint_dir=ckpt,
                          resume=resume)
        result = {"history": history, "world_size": 1, "zero_stage": None,
                  "effective_batch": config.batch_size * config.grad_accum_steps,
                  "optimizer": config.optimizer, "bf16": False,
                  "state_dict": model.state_dict()}
        result["evals"] = [{"epoch": config.epochs} | evaluate(result["state_dict"])]
    else:
        result = unlearn_deepspeed(model, forget, retain, config, zero, tok.pad_id,
                                   checkpoint_dir=ckpt, resume=resume, evaluate=evaluate,
                                   eval_every=cfg.eval_every,
                                   log=print if rank == 0 else (lambda *a: None))
    if rank != 0:
        return None
    save_checkpoint(out, "model", {k: v.contiguous() for k, v in result.pop("state_dict").items()},
                    {"method": config.method})
    result = {"config": asdict(cfg)} | result
    save_json(os.path.join(out, "results.json"), result)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m trustfast.llm.train",
                                description="LLM unlearning on the built-in facts, under "
                                            "DeepSpeed ZeRO when the config has `zero`.")
    p.add_argument("--config", default=None, help="YAML/JSON run config (see trustfast.llm.launch)")
    p.add_argument("--out", default="runs/llm_launch")
    p.add_argument("--resume", action="store_true", help="continue from --out's checkpoints")
    p.add_argument("--zero-stage", type=int, default=None, help="overrides zero.stage")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None,
                   help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    args = p.parse_args(argv)
    cfg = LaunchConfig.from_file(args.config) if args.config else LaunchConfig()
    if args.zero_stage is not None:
        cfg = LaunchConfig(cfg.facts, cfg.unlearn, dict(cfg.zero or {}, stage=args.zero_stage),
                           cfg.eval_every)
    result = run_launch(cfg, args.out, resume=args.resume)
    if result is not None:
        last = result["evals"][-1]
        print(f"[trustfast.llm] wrote {args.out}/results.json: forget_EM {last['forget_EM']:.3f}, "
              f"retain_EM {last['retain_EM']:.3f} (world_size {result['world_size']}, "
              f"zero_stage {result['zero_stage']}, effective_batch {result['effective_batch']})")
