"""Unlearning losses on Hugging Face causal LMs, from per-sequence NLLs, as the field's reference
code defines them: OpenUnlearning (github.com/locuslab/open-unlearning, src/trainer/unlearn/*.py
and src/trainer/utils.py) for GA, GradDiff, NPO, SimNPO and DPO; WMDP (github.com/
centerforaisafety/wmdp, rmu/unlearn.py) for RMU.

Every forget/retain NLL goes through `trustfast.ops.sequence_nll` (final hidden states and the
LM head, chunk by chunk: no batch x tokens x vocab logits). NLL_sum is the summed NLL of a
sequence's answer tokens, NLL_mean = NLL_sum / tokens; log pi(y|x) = -NLL_sum. With OpenUnlearning's
names, `gamma` weighs the forget term and `alpha` the retain term R:

  ga        gamma (-NLL_f)                                  (GradAscent: no retain term)
  graddiff  gamma (-NLL_f) + alpha R                        (GradDiff; R = NLL_r by default)
  ga_kl     graddiff with R = KL(p_ref || p_theta) on the retain batch (GradDiff,
            retain_loss_type KL)
  npo       gamma (-(2/beta) E_f log sigmoid(beta (NLL_sum,theta - NLL_sum,ref))) + alpha R
            (Zhang et al. 2024; beta 0.1). With the default R = NLL_r this is the NPO paper's
            NPO+RT and OpenUnlearning's NPO; retain_loss="none" is the paper's plain NPO.
  simnpo    gamma (-(2/beta) E_f log sigmoid(beta (NLL_mean,theta - delta))) + alpha R
            (Fan et al. 2024: length-normalized, no reference model, the margin delta inside;
            OpenUnlearning's defaults beta 4.5, gamma 0.125, delta 0). retain_loss="none" drops
            the retain term (SimNPO without regularization).
  idkdpo    gamma (-(2/beta) E_f log sigmoid(beta [(NLL_ref(y) - NLL(y)) - (NLL_ref(idk) -
            NLL(idk))])) + alpha R   (OpenUnlearning's DPO: the refusal "I don't know" is
            preferred; beta 0.1)
  rmu       gamma mse(h_l(x_f), c u) + alpha mse(h_l(x_r), h_l^frozen(x_r))
            (Li et al. 2024, WMDP: steer layer-l activations of forget text toward a scaled
            random unit vector u, keep retain activations; c 6.5, alpha 1200, layer 7; only
            mlp.down_proj of layers l-2..l is trained, see `rmu_parameters`)

Retain terms R (`retain_loss`): "nll" (token mean over the retain batch, Hugging Face's loss),
"kl" (KL(p_ref || p_theta) from the full logits; `kl_tokens="all"` averages over every
position of the batch, padding and prompt included, as OpenUnlearning's compute_kl_divergence;
"answer" over answer tokens only, trustfast's variant, which padding does not dilute) or "none".
RMU's MSEs average over every position and hidden unit (`rmu_tokens="all"`, WMDP's
torch.nn.functional.mse_loss) or, per sequence, over its answer tokens and then over the batch
(`rmu_tokens="answer"`, OpenUnlearning's RMU).

OpenUnlearning's trainer names are accepted for these (any case; `canonical_method`):
GradAscent = ga, GradDiff = graddiff, NPO = npo, SimNPO = simnpo, RMU = rmu, DPO = idkdpo.

NLL_f and NLL_r are token means over the batch (Hugging Face's loss). The reference model's
summed NLLs can be precomputed once (`reference_nlls`) and passed in the batch as `ref_nll`
(and `ref_idk_nll`), so the reference model need not stay in memory (not for a KL retain term
or RMU, which need the reference model's logits or activations on each retain batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as fn

from trustfast.checks import check_choice, check_number
from trustfast.ops.sequence_nll import SequenceNLL, sequence_nll

METHODS = ("ga", "graddiff", "ga_kl", "npo", "simnpo", "idkdpo", "rmu")
RETAIN_LOSSES = ("nll", "kl", "none", "embed_diff")
# per method: the retain terms it accepts, the first being its default
_RETAIN_CHOICES = {"ga": ("none",), "graddiff": ("nll", "kl"), "ga_kl": ("kl",),
                   "npo": ("nll", "kl", "none"), "simnpo": ("nll", "kl", "none"),
                   "idkdpo": ("nll", "kl", "none"), "rmu": ("embed_diff",)}
TOKEN_AVERAGES = ("all", "answer")
RMU_PARAMS = ("down_proj", "mlp", "all")
# OpenUnlearning's trainer names. Its DPO trainer prefers the "alternate" answers of its IdK
# datasets (TOFU_QA_forget_idk: "I don't know" answers) over the forget answers against a frozen
# reference model, with -(2/beta) log sigmoid(beta (win log-ratio - lose log-ratio)): idkdpo.
OPENUNLEARNING_NAMES = {"GradAscent": "ga", "GradDiff": "graddiff", "NPO": "npo",
                        "SimNPO": "simnpo", "RMU": "rmu", "DPO": "idkdpo"}
_ALIASES = {k.lower(): v for k, v in OPENUNLEARNING_NAMES.items()}
# the references' constants where they differ from beta 0.1 / gamma 1 / alpha 1
_BETA = {"simnpo": 4.5}  # OpenUnlearning configs/trainer/SimNPO.yaml
_GAMMA = {"simnpo": 0.125}  # OpenUnlearning's SimNPO.yaml (npo_coeff of the SimNPO authors)
_ALPHA = {"rmu": 1200.0}  # WMDP rmu/unlearn.py --alpha


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
    """Constants of the unlearning losses; None takes the method's reference default.

    Checked when made (trustfast.checks): beta > 0, gamma and alpha >= 0, delta finite,
    rmu_layer an int >= 0, steering_coeff > 0, the choices; a TypeError (a string for a
    number) or ValueError naming the field. UnlearnConfig, which YAML configs build, coerces
    and checks the same fields first."""

    method: str = "npo"  # one of METHODS or OpenUnlearning's name; stored as ours
    beta: float | None = None  # inverse temperature: NPO / DPO 0.1, SimNPO 4.5
    gamma: float | None = None  # weight of the forget term: 1 (SimNPO 0.125)
    alpha: float | None = None  # weight of the retain term: 1 (RMU 1200, WMDP's alpha)
    delta: float = 0.0  # SimNPO's reward margin, inside: beta (NLL_mean - delta)
    retain_loss: str | None = None  # nll | kl | none (RMU: embed_diff); None: the method's
    kl_tokens: str = "all"  # KL retain term: all positions (OpenUnlearning) | answer tokens
    rmu_layer: int = 7  # RMU: the steered layer (clamped to the model's second-to-last)
    steering_coeff: float = 6.5  # RMU: c, the norm of the target activation c u
    rmu_params: str = "down_proj"  # RMU trains: down_proj (WMDP) | mlp | all (OpenUnlearning)
    rmu_tokens: str = "all"  # RMU's MSE over: all positions (WMDP) | answer (OpenUnlearning)
    seed: int = 0  # RMU: seeds the random direction u

    def __post_init__(self):
        self.method = canonical_method(self.method)
        choices = _RETAIN_CHOICES[self.method]
        if self.retain_loss is None:
            self.retain_loss = choices[0]
        if self.retain_loss not in choices:
            raise ValueError(f"retain_loss must be one of {choices} for {self.method}, got "
                             f"{self.retain_loss!r}")
        if self.beta is None:
            self.beta = _BETA.get(self.method, 0.1)
        if self.gamma is None:
            self.gamma = _GAMMA.get(self.method, 1.0)
        if self.alpha is None:
            self.alpha = _ALPHA.get(self.method, 1.0)
        self.beta = check_number("beta", self.beta, low=0.0, low_open=True)
        self.gamma = check_number("gamma", self.gamma, low=0.0)
        self.alpha = check_number("alpha", self.alpha, low=0.0)
        self.delta = check_number("delta", self.delta)
        self.rmu_layer = check_number("rmu_layer", self.rmu_layer, low=0, integer=True)
        self.steering_coeff = check_number("steering_coeff", self.steering_coeff, low=0.0,
                                           low_open=True)
        self.seed = check_number("seed", self.seed, low=0, integer=True)
        for name, allowed in (("kl_tokens", TOKEN_AVERAGES), ("rmu_tokens", TOKEN_AVERAGES),
                              ("rmu_params", RMU_PARAMS)):
            check_choice(name, getattr(self, name), allowed)

    @property
    def needs_retain(self) -> bool:
        """A retain batch is paired with every forget batch."""
        return self.retain_loss != "none"

    @property
    def needs_reference_nll(self) -> bool:
        """The forget batch carries the frozen model's summed NLLs (`ref_nll`)."""
        return self.method in ("npo", "idkdpo")

    @property
    def needs_reference_model(self) -> bool:
        """A frozen copy of the model runs on every retain batch (KL logits, RMU activations)."""
        return self.retain_loss in ("kl", "embed_diff")


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
    # The model's own hidden states, every step of training: no finiteness pass over them and
    # the head (a non-finite loss is the training loop's to handle).
    return sequence_nll(hidden, head.weight, labels, bias=getattr(head, "bias", None),
                        validate=False)


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


def _retain_kl(model, ref_model, batch, tokens: str) -> torch.Tensor:
    """KL(p_ref || p_theta) of the retain batch from the full logits: summed over the vocabulary,
    averaged over every position (tokens="all", OpenUnlearning's compute_kl_divergence:
    kl_div(..., reduction="batchmean") over batch x length rows) or over the answer tokens
    (tokens="answer": the positions that predict a label)."""
    with torch.no_grad():
        ref_logits = ref_model(input_ids=batch["input_ids"],
                               attention_mask=batch.get("attention_mask")).logits
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
    dt = torch.float64 if logits.dtype == torch.float64 else torch.float32
    if tokens == "all":
        logp = fn.log_softmax(logits.to(dt), -1).flatten(0, 1)
        ref_logp = fn.log_softmax(ref_logits.to(dt), -1).flatten(0, 1)
    else:
        mask = batch["labels"][:, 1:] != -100
        logp = fn.log_softmax(logits[:, :-1].to(dt), -1)[mask]
        ref_logp = fn.log_softmax(ref_logits[:, :-1].to(dt), -1)[mask]
    return fn.kl_div(logp, ref_logp, log_target=True, reduction="batchmean")


def rmu_layer(model: nn.Module, config: LossConfig) -> int:
    """The steered layer: config.rmu_layer, at most the model's second-to-last layer (the last
    layer's output in `hidden_states` is after the final norm)."""
    layers = model.config.num_hidden_layers
    return max(0, min(config.rmu_layer, layers - 2))


def rmu_parameters(model: nn.Module, config: LossConfig) -> list[nn.Parameter]:
    """The parameters RMU trains (`config.rmu_params`): "down_proj", the MLP output projection
    of layers l-2..l (WMDP's layer_ids l-2,l-1,l and param_ids [6], mlp.down_proj.weight of a
    Llama / Mistral layer); "mlp", the whole MLP of those layers; "all", every parameter
    (OpenUnlearning's configs/trainer/RMU.yaml)."""
    if config.rmu_params == "all":
        return list(model.parameters())
    layer = rmu_layer(model, config)
    decoder = model.base_model
    params = []
    for i in range(max(0, layer - 2), layer + 1):
        mlp = decoder.layers[i].mlp
        if config.rmu_params == "down_proj":
            if not hasattr(mlp, "down_proj"):
                raise TypeError(f"rmu_params='down_proj' needs a Llama-style MLP with "
                                f"down_proj; layer {i}'s MLP is {type(mlp).__name__}: use "
                                "rmu_params='mlp' or 'all'")
            mlp = mlp.down_proj
        params += list(mlp.parameters())
    return params


def _activations(model: nn.Module, batch: dict, layer: int) -> torch.Tensor:
    out = model.base_model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                           output_hidden_states=True)
    return out.hidden_states[layer + 1]


def rmu_direction(hidden_size: int, config: LossConfig, like: torch.Tensor) -> torch.Tensor:
    """c u, u a uniform random vector normalized to norm 1 (seeded), as WMDP's RMU."""
    u = torch.rand(hidden_size, generator=torch.Generator().manual_seed(config.seed)).to(like)
    return config.steering_coeff * u / u.norm()


def _activation_mse(act: torch.Tensor, target: torch.Tensor, batch: dict,
                    tokens: str) -> torch.Tensor:
    squared = (act - target) ** 2  # (B, T, D)
    if tokens == "all":  # WMDP: F.mse_loss over every position and unit
        return squared.mean()
    mask = (batch["labels"] != -100).to(squared)  # OpenUnlearning's compute_activation_loss
    per_sequence = (squared.mean(-1) * mask).sum(-1) / mask.sum(-1)
    return per_sequence.mean()


def _rmu_loss(model, ref_model, forget, retain, config) -> tuple[torch.Tensor, dict]:
    layer = rmu_layer(model, config)
    f_act = _activations(model, forget, layer)
    target = rmu_direction(f_act.shape[-1], config, f_act)
    forget_term = _activation_mse(f_act, target, forget, config.rmu_tokens)
    r_act = _activations(model, retain, layer)
    with torch.no_grad():
        r_ref = _activations(ref_model, retain, layer)
    retain_term = _activation_mse(r_act, r_ref, retain, config.rmu_tokens)
    loss = config.gamma * forget_term + config.alpha * retain_term
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
    if c.needs_retain and retain is None:
        raise ValueError(f"method {c.method!r} with retain_loss {c.retain_loss!r} needs a "
                         "retain batch")
    if c.needs_reference_nll and "ref_nll" not in forget:
        raise ValueError(f"method {c.method!r} needs the forget batch's reference NLLs "
                         "(forget['ref_nll'], see reference_nlls)")
    if c.needs_reference_model and ref_model is None:
        raise ValueError(f"method {c.method!r} with retain_loss {c.retain_loss!r} needs "
                         "ref_model= (a frozen copy of the model)")
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
        forget_term = -(2 / c.beta) * fn.logsigmoid(c.beta * (f.mean - c.delta)).mean()
    else:  # idkdpo: the refusal is preferred, the forget answer dispreferred
        if "idk_input_ids" not in forget or "ref_idk_nll" not in forget:
            raise ValueError("idkdpo needs idk_input_ids / idk_labels / ref_idk_nll in the "
                             "forget batch")
        idk = sequence_nlls(model, forget["idk_input_ids"], forget["idk_labels"],
                            forget.get("idk_attention_mask"))
        chosen = forget["ref_idk_nll"].to(idk.sum) - idk.sum  # log pi(idk) - log pi_ref(idk)
        rejected = forget["ref_nll"].to(f.sum) - f.sum
        forget_term = -(2 / c.beta) * fn.logsigmoid(c.beta * (chosen - rejected)).mean()
    loss = c.gamma * forget_term
    if c.retain_loss == "kl":
        kl = _retain_kl(model, ref_model, retain, c.kl_tokens)
        loss = loss + c.alpha * kl
        logs["retain_kl"] = float(kl.detach())
    elif c.retain_loss == "nll":
        r = sequence_nlls(model, retain["input_ids"], retain["labels"],
                          retain.get("attention_mask"))
        retain_nll = _token_mean(r)
        loss = loss + c.alpha * retain_nll
        logs["retain_nll"] = float(retain_nll.detach())
    logs["loss"] = float(loss.detach())
    return loss, logs
