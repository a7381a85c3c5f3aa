"""Unlearning under DeepSpeed ZeRO (stages 0-3), one process per device or per CPU slot.

The launch is the `llm-unlearn` experiment with `zero` in its config (trustfast.experiments.llm):

    torchrun --nproc_per_node 2 -m trustfast llm-unlearn --config run.yaml --out runs/zero2
    deepspeed --num_accelerators 2 --module trustfast llm-unlearn --config run.yaml
    python -m trustfast.llm.train --config run.yaml       # the same command, one process

`unlearn_deepspeed` runs the same loop as the single-process `trustfast.llm.train.unlearn`
(`train_epochs`): every process takes its own micro-batches of each optimizer step, DeepSpeed
averages the gradients, so a run on N processes with G accumulation steps follows the loss
curve of one process with N*G accumulation steps. Reference NLLs (NPO, IdkDPO) and reference
models (GA+KL, RMU) are made from the plain model before DeepSpeed takes it. Under ZeRO-3 the
LM head's weight, which `sequence_nll` reads outside the head's own forward, is registered as
an external parameter of the loss module, so it is gathered for the loss and released after.

Evaluation runs on rank 0 during training: every process joins in gathering the full weights
(ZeRO-3 partitions them), rank 0 loads them into an evaluation copy and scores it, the others
wait. Every log line and evaluation carries the world size, ZeRO stage and effective batch.
Checkpoints are DeepSpeed's own (every rank writes its partition; `latest` is written last, so
an interrupted save leaves the previous epoch's) and `--resume` continues from them. They are
read with `torch.load(weights_only=True)` (`trustfast.llm.checkpointing.use_safe_loads`), so a
checkpoint folder from someone else cannot run code; `latest` must name an `epoch<N>` folder.
"""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from trustfast.checkpoint import CheckpointError, state_item
from trustfast.config import Config, ConfigError
from trustfast.llm.checkpointing import (
    check_resumable,
    latest_tag,
    set_checkpointing,
    use_safe_loads,
)
from trustfast.llm.losses import unlearning_loss
from trustfast.llm.optim import make_optimizer
from trustfast.llm.train import UnlearnConfig, prepare_unlearning, train_epochs


@dataclass
class ZeroConfig(Config):
    """How DeepSpeed shards and places the training state."""

    stage: int = 2  # 0: data parallel; 1: + optimizer state sharded; 2: + gradients; 3: + weights
    offload_optimizer: bool = False  # optimizer state and step on the CPU (stages 1-3)
    offload_param: bool = False  # weights on the CPU between uses (stage 3)
    bf16: bool = False  # bf16 weights and activations, fp32 master weights
    overrides: dict = field(default_factory=dict)  # extra keys of DeepSpeed's zero_optimization

    def check(self) -> None:
        self.choice("stage", (0, 1, 2, 3))
        if self.offload_optimizer and self.stage == 0:
            raise ConfigError("offload_optimizer", "needs ZeRO stage 1, 2 or 3, got stage 0")
        if self.offload_param and self.stage != 3:
            raise ConfigError("offload_param", f"needs ZeRO stage 3, got stage {self.stage}")
        clash = sorted(set(self.overrides) & {"stage", "offload_optimizer", "offload_param"})
        if clash:
            raise ConfigError(f"overrides.{clash[0]}", "is set by its own zero key (zero."
                                                      f"{clash[0]}); drop it from overrides")


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
    # NCCL reduces CUDA tensors only; gloo CPU ones
    device = (torch.device("cuda", torch.cuda.current_device())
              if torch.distributed.get_backend() == "nccl" else "cpu")
    values = torch.tensor([logs[k] for k in logs], dtype=torch.float64, device=device)
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
    use_safe_loads(engine)  # DeepSpeed itself would unpickle with weights_only=False
    tag = latest_tag(checkpoint_dir) if resume and checkpoint_dir else None
    if tag is not None:
        path, client = engine.load_checkpoint(checkpoint_dir, tag=tag)
        if path is None:
            raise CheckpointError(f"resume: no readable checkpoint in {checkpoint_dir}; delete "
                                  "it to start over")
        where = os.path.join(checkpoint_dir, tag)
        check_resumable(state_item(client, "config", where, dict),
                        state_item(client, "epoch", where, int), config, checkpoint_dir)
        if state_item(client, "zero", where, dict) != asdict(zero):
            raise ValueError(f"resume: {checkpoint_dir} holds a run with another ZeRO config")
        start_epoch = client["epoch"]
        history = state_item(client, "history", where, list)
        evals = state_item(client, "evals", where, list)
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
                 world_size=world, reduce_logs=_reduce_mean, on_epoch=on_epoch,
                 device=engine.device)
    if evaluate is not None and evaluated[0] != config.epochs:
        evaluate_now(config.epochs)  # a resumed run that had nothing left to train
    state = full_state_dict(engine.module.model, zero.stage)
    return {"history": history, "evals": evals, "state_dict": state} | setting
