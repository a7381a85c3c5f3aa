"""Unlearning losses on Hugging Face causal LMs, from per-sequence NLLs.

Every forget/retain NLL goes through `trustfast.ops.sequence_nll` (final hidden states and the
LM head, chunk by chunk: no batch x tokens x vocab logits). NLL_sum is the summed NLL of a
sequence's answer tokens, NLL_mean = NLL_sum / tokens; log pi(y|x) = -NLL_sum.

  ga        -NLL_f                                           (gradient ascent on the forget set)
  graddiff  -NLL_f + gamma * NLL_r                           (gradient difference)
  ga_kl     -NLL_f + gamma * KL(p_ref || p_theta) on retain  (needs the reference model's logits)
  npo       -(2/beta) E_f log sigmoid(beta (NLL_sum,theta - NLL_sum,ref)) + gamma * NLL_r
            (Zhang et al. 2024; beta 0.1)
  simnpo    -(2/beta) E_f log sigmoid(beta NLL_mean,theta - delta) + gamma * NLL_r
            (Fan et al. 2024: length-normalized, no reference model; beta 2.5, delta 0)
  idkdpo    -(2/beta) E_f log sigmoid(beta [(NLL_ref(y) - NLL(y)) - (NLL_ref(idk) - NLL(idk))])
            + gamma * NLL_r   (DPO with the refusal "I don't know" preferred; beta 0.1)
  rmu       mean_f ||h_l(x) - c u||^2 + gamma * mean_r ||h_l(x) - h_l^frozen(x)||^2
            (Li et al. 2024, WMDP: steer layer-l activations of forget tokens toward a scaled
            random unit vector u, keep retain activations; c 6.5, gamma 1200, layer 7; only the
            MLPs of layers l-2..l are trained, see `rmu_parameters`)

OpenUnlearning's trainer names are accepted for these (any case; `canonical_method`):
GradAscent = ga, GradDiff = graddiff, NPO = npo, SimNPO = simnpo, RMU = rmu, DPO = idkdpo.

NLL_f and NLL_r are token means over the batch (Hugging Face's loss). The reference model's
summed NLLs can be precomputed once (`reference_nlls`) and passed in the batch as `ref_nll`
(and `ref_idk_nll`), so the reference model need not stay in memory (not for ga_kl).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as fn

from trustfast.ops.sequence_nll import SequenceNLL, sequence_nll

METHODS = ("ga", "graddiff", "ga_kl", "npo", "simnpo", "idkdpo", "rmu")
NEEDS_REFERENCE = ("npo", "idkdpo")  # summed NLLs of the reference model (cacheable)
NEEDS_REFERENCE_MODEL = ("ga_kl", "rmu")  # reference logits / activations on the retain batch
NEEDS_RETAIN = ("graddiff", "ga_kl", "npo", "simnpo", "idkdpo", "rmu")
# OpenUnlearning's trainer names. Its DPO trainer prefers the "alternate" answers of its IdK
# datasets (TOFU_QA_forget_idk: "I don't know" answers) over the forget answers against a frozen
# reference model, with -(2/beta) log sigmoid(beta (win log-ratio - lose log-ratio)): idkdpo.
OPENUNLEARNING_NAMES = {"GradAscent": "ga", "GradDiff": "graddiff", "NPO": "npo",
                        "SimNPO": "simnpo", "RMU": "rmu", "DPO": "idkdpo"}
_ALIASES = {k.lower(): v for k, v in OPENUNLEARNING_NAMES.items()}


def canonical_method(name: str, key: str = "method") -> str:
    """The trustfast name of an unlearning method, from ours (METHODS) or OpenUnlearning's
    (GradAscent, GradDiff, NPO, SimNPO, RMU, DPO), in any case. Unknown names raise ValueError
    naming `key` and listing both spellings."""
    if not isinstance(name, str):
        raise TypeError(f"{key} must be a str, got {type(name).__name__}")
    lowered = name.strip().lower()
    if lowered in METHODS:
        return lowered
    if lowered in _ALIASES:
        return _ALIASES[lowered]
    raise ValueError(f"{key} must be one of {METHODS} or OpenUnlearning's "
                     f"{tuple(OPENUNLEARNING_NAMES)} (any case), got {name!r}")


@dataclass
class LossConfig:
    """Constants of the unlearning losses (defaults: the papers' / OpenUnlearning's)."""

    method: str = "npo"  # one of METHODS or OpenUnlearning's name; stored as ours
    beta: float | None = None  # inverse temperature: NPO / IdkDPO 0.1, SimNPO 2.5 when None
    gamma: float | None = None  # weight of the retain term: 1.0 (RMU: 1200) when None
    alpha: float = 1.0  # weight of the forget term
    delta: float = 0.0  # SimNPO's reward margin
    rmu_layer: int = 7  # RMU: the steered layer (clamped to the model's second-to-last)
    steering_coeff: float = 6.5  # RMU: c, the norm of the target activation c u
    seed: int = 0  # RMU: seeds the random direction u

    def __post_init__(self):
        self.method = canonical_method(self.method)
        if self.beta is None:
            self.beta = 2.5 if self.method == "simnpo" else 0.1
        if self.gamma is None:
            self.gamma = 1200.0 if self.method == "rmu" else 1.0
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.gamma < 0 or self.alpha < 0:
            raise ValueError("gamma and alpha must be >= 0")
        if self.rmu_layer < 0 or not self.steering_coeff > 0:
            raise ValueError("rmu_layer must be >= 0 and steering_coeff > 0")


def _decoder_and_head(model: nn.Module):
    head = model.get_output_embeddings()
    if head is None or not hasattr(model, "base_model") or model.base_model is model:
        raise TypeError("model must be a Hugging Face causal LM (AutoModelForCausalLM-like, with "
                        "base_model and get_output_embeddings())")
    return model.base_model, head


def sequence_nlls(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor,
                  attention_mask: torch.Tensor | None = None) -> SequenceNLL:
    """Per-sequence NLL of the labelled tokens (HF convention: labels aligned with input_ids,
    -100 where no loss), from the final hidden states, without the full logits."""
    decoder, head = _decoder_and_head(model)
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return sequence_nll(hidden, head.weight, labels, bias=getattr(head, "bias", None))


def _token_mean(out: SequenceNLL) -> torch.Tensor:
    return out.sum.sum() / out.tokens.sum().clamp_min(1)


@torch.no_grad()
def reference_nlls(model: nn.Module, batches) -> torch.Tensor:
    """Summed answer NLL per sequence of a frozen model, over an iterable of batches (dicts with
    input_ids, labels, attention_mask): cache it once, pass it as `ref_nll` in later batches."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for b in batches:
        mask = b.get("attention_mask")
        out.append(sequence_nlls(model, b["input_ids"].to(device), b["labels"].to(device),
                                 None if mask is None else mask.to(device)).sum.float().cpu())
    return torch.cat(out)


def _retain_kl(model, ref_model, batch) -> torch.Tensor:
    """KL(p_ref || p_theta) per answer token of the retain batch, averaged (full logits)."""
    with torch.no_grad():
        ref_logits = ref_model(input_ids=batch["input_ids"],
                               attention_mask=batch.get("attention_mask")).logits
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
    mask = batch["labels"][:, 1:] != -100
    dt = torch.float64 if logits.dtype == torch.float64 else torch.float32
    ref_logp = fn.log_softmax(ref_logits[:, :-1].to(dt), -1)[mask]
    logp = fn.log_softmax(logits[:, :-1].to(dt), -1)[mask]
    return fn.kl_div(logp, ref_logp, log_target=True, reduction="batchmean")


def rmu_layer(model: nn.Module, config: LossConfig) -> int:
    """The steered layer: config.rmu_layer, at most the model's second-to-last layer (the last
    layer's output in `hidden_states` is after the final norm)."""
    layers = model.config.num_hidden_layers
    return max(0, min(config.rmu_layer, layers - 2))


def rmu_parameters(model: nn.Module, config: LossConfig) -> list[nn.Parameter]:
    """The parameters RMU trains: the MLPs of layers l-2..l (WMDP's choice)."""
    layer = rmu_layer(model, config)
    decoder = model.base_model
    params = []
    for i in range(max(0, layer - 2), layer + 1):
        params += list(decoder.layers[i].mlp.parameters())
    return params


def _activations(model: nn.Module, batch: dict, layer: int) -> torch.Tensor:
    out = model.base_model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                           output_hidden_states=True)
    return out.hidden_states[layer + 1]


def rmu_direction(hidden_size: int, config: LossConfig, like: torch.Tensor) -> torch.Tensor:
    """c u, u a uniform random vector normalized to norm 1 (seeded), as WMDP's RMU."""
    u = torch.rand(hidden_size, generator=torch.Generator().manual_seed(config.seed)).to(like)
    return config.steering_coeff * u / u.norm()


def _rmu_loss(model, ref_model, forget, retain, config) -> tuple[torch.Tensor, dict]:
    layer = rmu_layer(model, config)
    f_act = _activations(model, forget, layer)
    target = rmu_direction(f_act.shape[-1], config, f_act)
    f_mask = forget.get("attention_mask", torch.ones_like(forget["input_ids"])).bool()
    forget_term = ((f_act - target) ** 2).mean(-1)[f_mask].mean()
    r_act = _activations(model, retain, layer)
    with torch.no_grad():
        r_ref = _activations(ref_model, retain, layer)
    r_mask = retain.get("attention_mask", torch.ones_like(retain["input_ids"])).bool()
    retain_term = ((r_act - r_ref) ** 2).mean(-1)[r_mask].mean()
    loss = config.alpha * forget_term + config.gamma * retain_term
    return loss, {"forget_mse": float(forget_term.detach()),
                  "retain_mse": float(retain_term.detach()), "loss": float(loss.detach())}


def unlearning_loss(model: nn.Module, forget: dict, retain: dict | None, config: LossConfig,
                    ref_model: nn.Module | None = None) -> tuple[torch.Tensor, dict]:
    """(loss, logs) of `config.method` on a forget batch and a retain batch.

    Batches are dicts with input_ids, labels, attention_mask; the forget batch also carries
    `ref_nll` (npo, idkdpo) and, for idkdpo, `idk_input_ids`, `idk_labels`,
    `idk_attention_mask` and `ref_idk_nll`.
    """
    c = config
    if c.method in NEEDS_RETAIN and retain is None:
        raise ValueError(f"method {c.method!r} needs a retain batch")
    if c.method in NEEDS_REFERENCE and "ref_nll" not in forget:
        raise ValueError(f"method {c.method!r} needs the forget batch's reference NLLs "
                         "(forget['ref_nll'], see reference_nlls)")
    if c.method in NEEDS_REFERENCE_MODEL and ref_model is None:
        raise ValueError(f"method {c.method!r} needs ref_model= (a frozen copy of the model)")
    if c.method == "rmu":
        return _rmu_loss(model, ref_model, forget, retain, c)
    f = sequence_nlls(model, forget["input_ids"], forget["labels"], forget.get("attention_mask"))
    logs = {"forget_nll": float(_token_mean(f).detach())}
    if c.method in ("ga", "graddiff", "ga_kl"):
        forget_term = -_token_mean(f)
    elif c.method == "npo":
        ref = forget["ref_nll"].to(f.sum)
        forget_term = -(2 / c.beta) * fn.logsigmoid(c.beta * (f.sum - ref)).mean()
    elif c.method == "simnpo":
        forget_term = -(2 / c.beta) * fn.logsigmoid(c.beta * f.mean - c.delta).mean()
    else:  # idkdpo: the refusal is preferred, the forget answer dispreferred
        if "idk_input_ids" not in forget or "ref_idk_nll" not in forget:
            raise ValueError("idkdpo needs idk_input_ids / idk_labels / ref_idk_nll in the "
                             "forget batch")
        idk = sequence_nlls(model, forget["idk_input_ids"], forget["idk_labels"],
                            forget.get("idk_attention_mask"))
        chosen = forget["ref_idk_nll"].to(idk.sum) - idk.sum  # log pi(idk) - log pi_ref(idk)
        rejected = forget["ref_nll"].to(f.sum) - f.sum
        forget_term = -(2 / c.beta) * fn.logsigmoid(c.beta * (chosen - rejected)).mean()
    loss = c.alpha * forget_term
    if c.method == "ga_kl":
        kl = _retain_kl(model, ref_model, retain)
        loss = loss + c.gamma * kl
        logs["retain_kl"] = float(kl.detach())
    elif c.method in NEEDS_RETAIN:
        r = sequence_nlls(model, retain["input_ids"], retain["labels"],
                          retain.get("attention_mask"))
        retain_nll = _token_mean(r)
        loss = loss + c.gamma * retain_nll
        logs["retain_nll"] = float(retain_nll.detach())
    logs["loss"] = float(loss.detach())
    return loss, logs
