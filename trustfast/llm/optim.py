"""Optimizers of the LLM trainers: torch's AdamW, bitsandbytes' 8-bit AdamW, and any of them
stepped inside the backward pass (`StepInBackward`), so only one weight's gradient is held."""

from __future__ import annotations

import torch

OPTIMIZERS = ("adamw", "adamw8bit", "paged_adamw8bit")


def make_optimizer(params, name: str, lr: float, weight_decay: float = 0.01):
    """AdamW from torch, or bitsandbytes' 8-bit AdamW (optimizer state in 8 bits: 2 bytes per
    parameter instead of 8; Dettmers et al., 2022). paged_adamw8bit pages its state to CPU
    memory under GPU memory pressure; on a CPU-only machine bitsandbytes falls back to the
    unpaged optimizer."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise ImportError(f"optimizer={name!r} needs bitsandbytes: pip install "
                          "'trustfast[llm]'") from e
    cls = bnb.optim.AdamW8bit if name == "adamw8bit" else bnb.optim.PagedAdamW8bit
    return cls(params, lr=lr, weight_decay=weight_decay)


class StepInBackward:
    """One optimizer per parameter, stepped the moment that parameter's gradient is ready (a
    post-accumulate-grad hook), and the gradient freed: only one weight's gradient is ever held
    (the "optimizer step in backward" of PyTorch's tutorial of that name and of LOMO, Lv et al.,
    2023). `state_dict` / `load_state_dict` match a single optimizer over all the parameters."""

    def __init__(self, params, make):
        self.params = [p for p in params if p.requires_grad]
        self.optimizers = [make([p]) for p in self.params]
        self.hooks = [p.register_post_accumulate_grad_hook(self._hook(opt))
                      for p, opt in zip(self.params, self.optimizers)]

    @staticmethod
    def _hook(opt):
        def step(p: torch.Tensor) -> None:
            opt.step()
            p.grad = None
        return step

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()

    def step(self) -> None:  # already done in the backward
        pass

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass

    def state_dict(self) -> dict:
        states = [opt.state_dict() for opt in self.optimizers]
        return {"state": {i: s["state"][0] for i, s in enumerate(states) if 0 in s["state"]},
                "param_groups": [s["param_groups"][0] | {"params": [i]}
                                 for i, s in enumerate(states)]}

    def load_state_dict(self, state: dict) -> None:
        for i, opt in enumerate(self.optimizers):
            group = dict(state["param_groups"][i], params=[0])
            inner = {0: state["state"][i]} if i in state["state"] else {}
            opt.load_state_dict({"state": inner, "param_groups": [group]})
