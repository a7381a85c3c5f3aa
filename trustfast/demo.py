"""`trustfast demo` (what `make demo` runs): each library section on built-in data.

Sections run in order and checkpoint when done; `--resume` skips finished ones. Results go to
`--out`: results.json ({"config", "rows"}), results.md and PNG plots.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from trustfast.checkpoint import load_checkpoint, load_json, save_checkpoint, save_json
from trustfast.data import digits
from trustfast.models import SmallCNN
from trustfast.ops import select_backend
from trustfast.optim import MaskedSGD
from trustfast.sparsity import global_magnitude_masks, mask_sparsity
from trustfast.utils import pyplot


def _evaluate(model: nn.Module, data) -> float:
    model.eval()
    with torch.no_grad():
        x, y = data.tensors
        return 100.0 * (model(x).argmax(1) == y).float().mean().item()


def _train(model, opt, loader, epochs: int, desc: str) -> list[float]:
    losses = []
    model.train()
    for _ in tqdm(range(epochs), desc=desc, leave=False):
        total, count = 0.0, 0
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            total += loss.item() * len(y)
            count += len(y)
        losses.append(total / count)
    return losses


def masked_training_section(out: str, seed: int, resume: bool) -> list[dict]:
    """Train a small CNN on digits, prune 80 % of its weights by global magnitude, fine-tune
    under `MaskedSGD` (momentum 0.9, l1 5e-5), and check that pruned weights stayed exactly 0."""
    train, test = digits(seed=seed)
    rows: list[dict] = []
    stages = (("dense", 0.0, 8), ("pruned 80%", 0.8, 5))
    torch.manual_seed(seed)
    model = SmallCNN()
    backend = select_backend("masked_sgd_step", torch.device("cpu"))
    curves = {}
    for name, sparsity, epochs in stages:
        tag = f"masked_training-{name.split()[0]}"
        done = load_checkpoint(out, tag) if resume else None
        if done is not None:
            tensors, state = done
            model.load_state_dict(tensors)
            rows.append(state["row"])
            curves[name] = state["losses"]
            continue
        masks = global_magnitude_masks(model, sparsity) if sparsity > 0 else None
        opt = MaskedSGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4,
                        l1=5e-5 if masks else 0.0, masks=masks, module=model)
        loader = DataLoader(train, batch_size=64, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
        start = time.perf_counter()
        losses = _train(model, opt, loader, epochs, desc=name)
        seconds = time.perf_counter() - start
        row = {"section": "masked_training", "stage": name, "backend": backend,
               "sparsity_%": 100.0 * (mask_sparsity(masks) if masks else 0.0),
               "test_acc_%": _evaluate(model, test), "epochs": epochs,
               "final_train_loss": losses[-1], "seconds": seconds}
        if masks:
            weights = dict(model.named_parameters())
            pruned = sum(int((~m).sum()) for m in masks.values())
            still_zero = sum(int((weights[k][~m] == 0).sum()) for k, m in masks.items())
            row["pruned_weights_exactly_zero_%"] = 100.0 * still_zero / max(pruned, 1)
        rows.append(row)
        curves[name] = losses
        save_checkpoint(out, tag, model.state_dict(), {"row": row, "losses": losses})
    _plot_losses(curves, os.path.join(out, "masked_training_loss.png"))
    return rows


def _plot_losses(curves: dict[str, list[float]], path: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    offset = 0
    for name, losses in curves.items():
        ax.plot(range(offset + 1, offset + len(losses) + 1), losses, marker="o", label=name)
        offset += len(losses)
    ax.set_xlabel("epoch")
    ax.set_ylabel("train cross-entropy")
    ax.set_title("digits: dense training, then 80% pruned under MaskedSGD")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def masked_update_speed_section(out: str, seed: int, resume: bool) -> list[dict]:
    """Time one fused masked SGD step against torch's foreach equivalent at 1M parameters."""
    from trustfast._bench import masked_update as mu
    from trustfast._bench.timing import median_time

    device = torch.device("cpu")
    pb = mu.make_problem(1_000_000, device, seed=seed)
    variants = mu.sgd_variants(pb, backend=None)
    fused = median_time(variants["trustfast fused"], device, repeats=10)
    peer = median_time(variants["torch foreach"], device, repeats=10)
    return [{"section": "masked_update_speed", "stage": "SGD step, 1M params, 50% mask",
             "backend": select_backend("masked_sgd_step", device),
             "fused_ms": fused * 1e3, "torch_foreach_ms": peer * 1e3, "speedup_x": peer / fused}]


def bilevel_section(out: str, seed: int, resume: bool) -> list[dict]:
    """Bi-level optimization: learn a ridge penalty by implicit hypergradients (checked against
    the closed form), then hyper-clean digits with 30 % flipped labels."""
    from trustfast.blo import implicit_grad
    from trustfast.blo.examples import (
        HyperCleaningConfig,
        closed_form_hypergradient,
        hyper_clean,
        learn_ridge_penalty,
        make_ridge_problem,
    )

    done = load_checkpoint(out, "bilevel") if resume else None
    if done is not None:
        return done[1]["rows"]
    problem = make_ridge_problem(seed=seed)
    a = {"log_alpha": torch.tensor(0.5, dtype=torch.float64)}
    ours = implicit_grad(problem.outer_loss, problem.inner_loss, problem.solve(a["log_alpha"]),
                         a)["log_alpha"]
    exact = closed_form_hypergradient(problem, a["log_alpha"])
    history = learn_ridge_penalty(problem, method="implicit")
    rows = [{"section": "bilevel", "stage": "ridge penalty (implicit, CG)",
             "hypergrad_rel_error": float(abs(ours - exact) / abs(exact)),
             "log_alpha_start": history["log_alpha"][0],
             "log_alpha_learned": history["log_alpha"][-1],
             "val_loss_start": history["val_loss"][0], "val_loss_end": history["val_loss"][-1]}]
    result = hyper_clean(HyperCleaningConfig(seed=seed))
    rows.append({"section": "bilevel", "stage": "hyper-cleaning digits, 30% flipped",
                 "test_acc_noisy_%": result.test_acc_noisy,
                 "test_acc_cleaned_%": result.test_acc_cleaned,
                 "test_acc_oracle_%": result.test_acc_oracle,
                 "f1_flipped": result.f1_flipped, "seconds": result.seconds})
    _plot_bilevel(history, result.val_loss, os.path.join(out, "bilevel.png"))
    save_checkpoint(out, "bilevel", {}, {"rows": rows})
    return rows


def _plot_bilevel(ridge: dict, cleaning_val_loss: list[float], path: str) -> None:
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.2))
    ax1.plot(ridge["val_loss"], marker=".")
    ax1.set_xlabel("outer step")
    ax1.set_ylabel("validation MSE")
    ax1.set_title("ridge: learning log(alpha)")
    ax2.plot(cleaning_val_loss, marker=".")
    ax2.set_xlabel("outer step")
    ax2.set_ylabel("clean validation CE")
    ax2.set_title("hyper-cleaning (30% flipped)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def robustness_section(out: str, seed: int, resume: bool) -> list[dict]:
    """Train a small CNN on digits, then its robust accuracy under PGD-10 at six L-inf budgets,
    all budgets attacked in one batched call per batch."""
    from trustfast.attacks import robust_accuracy

    done = load_checkpoint(out, "robustness") if resume else None
    if done is not None:
        return done[1]["rows"]
    train, test = digits(seed=seed)
    torch.manual_seed(seed)
    model = SmallCNN()
    opt = MaskedSGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loader = DataLoader(train, batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    _train(model, opt, loader, 8, desc="train for robustness")
    eps = [0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255]
    start = time.perf_counter()
    result = robust_accuracy(model, DataLoader(test, batch_size=256), eps, steps=10, seed=seed)
    seconds = time.perf_counter() - start
    rows = [{"section": "robustness", "stage": f"PGD-10 L-inf eps={e * 255:.0f}/255",
             "robust_acc_%": acc, "seconds": seconds}
            for e, acc in zip(result.eps, result.accuracy)]
    result.save_json(os.path.join(out, "robustness.json"))
    _plot_robustness(result.eps, result.accuracy, os.path.join(out, "robustness.png"))
    save_checkpoint(out, "robustness", model.state_dict(), {"rows": rows})
    return rows


def _plot_robustness(eps: list[float], acc: list[float], path: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot([e * 255 for e in eps], acc, marker="o")
    ax.set_xlabel("eps (x 1/255, L-inf)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_title("digits CNN under PGD-10")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def unlearning_section(out: str, seed: int, resume: bool) -> list[dict]:
    """Class-wise unlearning of digit 3, dense vs 90 % sparse (OMP): Retrain, FT, GA,
    l1-sparse, as in Table 1 of "Model Sparsity Can Simplify Machine Unlearning"."""
    from trustfast.unlearn.runner import ExperimentConfig, run_experiment

    cfg = ExperimentConfig(methods=["retrain", "ft", "ga", "l1_sparse"], sparsities=[0.0, 0.9],
                           seed=seed)
    result = run_experiment(cfg, os.path.join(out, "unlearn"), resume=resume)
    return [{"section": "unlearning", "stage": f"{r['method']} @ {r['sparsity']:.0%} sparse",
             **{k: r[k] for k in ("UA", "MIA", "RA", "TA", "RTE", "disparity")}}
            for r in result["rows"]]


def backdoor_section(out: str, seed: int, resume: bool) -> list[dict]:
    """BadNets at 10 % poison ratio on colored digits: find the poisoned training samples with
    the bi-level MSPC, SPC and STRIP (AUROC, and TPR / FPR of the threshold-free split), as in
    "Towards Reliable Backdoor Data Identification ... Scaled Prediction Consistency"."""
    from trustfast.backdoor.runner import IdentifyConfig, run_identification

    cfg = IdentifyConfig(attacks=["badnets"], strip_overlays=32, seed=seed)  # N=32: demo time
    result = run_identification(cfg, os.path.join(out, "backdoor"), resume=resume)
    return [{"section": "backdoor", "stage": f"{r['attack']} / {r['method']}",
             **{k: r[k] for k in ("clean_acc", "ASR", "AUROC", "TPR", "FPR", "seconds")}}
            for r in result["rows"]]


def diffusion_attention_section(out: str, seed: int, resume: bool) -> list[dict]:
    """A tiny conditional UNet (random weights; head dims 40 and 80) sampled for 10 DDIM steps
    with diffusers' AttnProcessor2_0 and with trustfast's FastAttnProcessor: same latents, and
    a JVP through the UNet that SDPA's fused CPU kernel cannot take."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from trustfast.diffusion import enable_fast_attention
    from trustfast.diffusion.tiny import ddim_sample, tiny_unet

    done = load_checkpoint(out, "diffusion_attention") if resume else None
    if done is not None:
        return done[1]["rows"]
    unet = tiny_unet(seed=seed)
    prompt = torch.randn(2, 77, unet.config.cross_attention_dim,
                         generator=torch.Generator().manual_seed(seed))
    timings, latents, jvp_status = {}, {}, {}
    for name in ("AttnProcessor2_0", "FastAttnProcessor"):
        replaced = None
        if name == "AttnProcessor2_0":
            unet.set_attn_processor(AttnProcessor2_0())
        else:
            replaced = enable_fast_attention(unet).replaced
        ddim_sample(unet, prompt, steps=1, seed=seed)  # warm-up
        start = time.perf_counter()
        latents[name] = ddim_sample(unet, prompt, steps=10, seed=seed)
        timings[name] = time.perf_counter() - start
        x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(seed + 1))
        try:
            torch.func.jvp(lambda e, x=x: unet(x, 500, encoder_hidden_states=e).sample,
                           (prompt,), (torch.ones_like(prompt),))
            jvp_status[name] = "ok"
        except (NotImplementedError, RuntimeError) as exc:
            jvp_status[name] = f"fails: {type(exc).__name__}"
        jvp_status[name + "_replaced"] = replaced
    diff = float((latents["AttnProcessor2_0"] - latents["FastAttnProcessor"]).abs().max())
    rows = [{"section": "diffusion_attention", "stage": f"{name}, 10 DDIM steps",
             "layers_replaced": jvp_status[name + "_replaced"], "seconds": timings[name],
             "max_abs_diff_vs_default": 0.0 if name == "AttnProcessor2_0" else diff,
             "jvp_through_unet": jvp_status[name]}
            for name in ("AttnProcessor2_0", "FastAttnProcessor")]
    save_checkpoint(out, "diffusion_attention", {}, {"rows": rows})
    return rows


def llm_unlearning_section(out: str, seed: int, resume: bool) -> list[dict]:
    """A tiny Llama memorizes the built-in fictitious facts, then forgets 10 % of the people
    with NPO and SimNPO: answer exact match and ROUGE-L on forget and retain, truth ratio."""
    from trustfast.llm.facts_experiment import FactsExperimentConfig, run_facts_unlearning

    result = run_facts_unlearning(FactsExperimentConfig(methods=["npo", "simnpo"], seed=seed),
                                  os.path.join(out, "llm"), resume=resume)
    return [{"section": "llm_unlearning", "stage": r["method"],
             **{k: v for k, v in r.items() if k != "method"}} for r in result]


def watermark_attack_section(out: str, seed: int, resume: bool) -> list[dict]:
    """Procedural faces: an IResNet verifies unseen identities, a HiDDeN watermark embeds 30
    bits, and the adversarial watermarking attack (eps 2/255 and 4/255) lowers verification
    accuracy (and the matching accuracy of genuine pairs) once the watermark is embedded, not
    before: the four-cell table."""
    from trustfast.attacks.watermark_experiment import (
        WatermarkAttackConfig,
        run_watermark_attack,
    )

    # 100 pairs and 10 PGD steps keep the section near two minutes on one CPU thread
    rows = run_watermark_attack(WatermarkAttackConfig(pairs=100, steps=10, seed=seed),
                                os.path.join(out, "watermark_attack"), resume=resume)
    return [{"section": "watermark_attack",
             "stage": (f"eps {r['eps'] * 255:.0f}/255" if r["perturbation"] else "clean")
             + (" + watermark" if r["watermark"] else ""),
             "verification_accuracy": r["verification_accuracy"],
             "matching_accuracy": r["matching_accuracy"],
             "bit_accuracy": r["bit_accuracy"]} for r in rows]


# Each issue adds its section here; order is the order `trustfast demo` runs them.
SECTIONS: dict[str, Callable[[str, int, bool], list[dict]]] = {
    "masked_training": masked_training_section,
    "masked_update_speed": masked_update_speed_section,
    "bilevel": bilevel_section,
    "robustness": robustness_section,
    "unlearning": unlearning_section,
    "backdoor": backdoor_section,
    "diffusion_attention": diffusion_attention_section,
    "llm_unlearning": llm_unlearning_section,
    "watermark_attack": watermark_attack_section,
}

def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2e}" if 0 < abs(value) < 0.01 else f"{value:.2f}"
    return str(value)


def markdown(rows: list[dict]) -> str:
    """One markdown table per section, with the columns its rows have."""
    blocks = []
    for section in dict.fromkeys(r["section"] for r in rows):
        part = [r for r in rows if r["section"] == section]
        cols = [c for c in dict.fromkeys(k for r in part for k in r) if c != "section"]
        lines = [f"**{section}**", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in part:
            cells = [_cell(r.get(c, "")) for c in cols]
            lines.append("| " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def run_demo(out: str = "runs/demo", seed: int = 0, resume: bool = False) -> dict:
    """Run every demo section, write results.json / results.md to `out`, print the table."""
    os.makedirs(out, exist_ok=True)
    results_path = os.path.join(out, "results.json")
    previous = load_json(results_path) if resume and os.path.exists(results_path) else None
    if previous is not None and previous["config"].get("seed") != seed:
        raise ValueError(f"--resume: {out} holds a run with seed {previous['config']['seed']}, "
                         f"not {seed}; use another --out")
    torch.manual_seed(seed)
    rows: list[dict] = []
    for name, section in SECTIONS.items():
        print(f"[trustfast demo] {name} ...", flush=True)
        rows.extend(section(out, seed, resume))
    result = {"config": {"seed": seed, "sections": list(SECTIONS), "torch": torch.__version__},
              "rows": rows}
    save_json(results_path, result)
    table = markdown(rows)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    print(f"[trustfast demo] wrote {results_path}, results.md and plots in {out}")
    return result
