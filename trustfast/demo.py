"""`trustfast demo` (what `make demo` runs): a list of (experiment, small config) pairs, each run
on built-in data through the experiment layer into `--out/<experiment>`.

`--resume` reuses every finished experiment (and the checkpoints of an unfinished one); a
changed seed is refused. `--out` gets results.json ({"config", "provenance", "rows"}, every row
tagged with its "section", the experiment's name) and results.md (a table per experiment); each
experiment's own results and plots are in its folder.
"""

from __future__ import annotations

import datetime
import os

from trustfast.checkpoint import save_json, save_text

# (experiment, config keys over its defaults): sized so the whole demo takes a few minutes on
# two CPU cores. Each issue adds its experiment here.
DEMO: list[tuple[str, dict]] = [
    ("masked-training", {}),
    ("masked-update-speed", {}),
    ("bilevel", {}),
    ("robustness", {}),
    ("unlearn", {"methods": ["retrain", "ft", "ga", "l1_sparse"], "sparsities": [0.0, 0.9]}),
    # STRIP with N=32 overlays keeps the section short
    ("backdoor-identify", {"attacks": ["badnets"], "strip_overlays": 32}),
    ("diffusion-attention", {}),
    # two tiny UNets of 300 steps each: the per-tone distances and the classifier rows, at a
    # scale where the training has not converged (the full config is in BENCHMARKS.md). On
    # 1200 images the classifier's default SGD (lr 0.02) stayed at chance for seed 0; lr 0.01
    # for 40 epochs reached 0.82 / 0.86 accuracy (seeds 0 / 1)
    ("fairskin", {"train_size": 1200, "test_per_group": 40, "sample_steps": 10,
                  "train": {"max_steps": 300}, "classifier": {"lr": 0.01, "epochs": 40}}),
    # the clean and a BadNets-poisoned (p = 0.1) tiny UNet at the digits' native 8 px, 300
    # steps each (the claims need 1000: tests/diffusion/test_diffusion_backdoor_claims.py):
    # the audit, the diffusion classifier on 30 + 30 images, the defences
    ("diffusion-backdoor", {"triggers": ["badnets"], "ratios": [0.0, 0.1], "image_size": 8,
                            "patch_size": 2, "train": {"max_steps": 300},
                            "samples_per_class": 20, "dc_test_size": 30, "dc_draws": 4,
                            "identify": ["spc"]}),
    ("llm-unlearn", {"methods": ["npo", "simnpo"]}),
    # 100 pairs and 10 PGD steps keep the section near two minutes on one CPU thread
    ("watermark-attack", {"pairs_count": 100, "steps": 10}),
]


def markdown(rows: list[dict]) -> str:
    """One markdown table per section (experiment), with the columns its rows have."""
    from trustfast.experiments import get_experiment, markdown_table

    blocks = []
    for section in dict.fromkeys(r["section"] for r in rows):
        part = [{k: v for k, v in r.items() if k != "section"} for r in rows
                if r["section"] == section]
        blocks.append(f"**{section}**\n\n" + markdown_table(part, get_experiment(section).columns))
    return "\n\n".join(blocks)


def run_demo(out: str = "runs/demo", seed: int = 0, resume: bool = False) -> dict:
    """Run every demo experiment into `out/<name>`; write and print the combined tables."""
    from trustfast.config import build_config
    from trustfast.experiments import get_experiment, run_experiment

    os.makedirs(out, exist_ok=True)
    started = datetime.datetime.now().astimezone()
    rows: list[dict] = []
    provenance: dict = {}
    for name, small in DEMO:
        exp = get_experiment(name)
        print(f"[trustfast demo] {name} ...", flush=True)
        cfg = build_config(exp.config_cls, {**small, "seed": seed})
        result = run_experiment(exp, cfg, os.path.join(out, name), resume=resume)
        rows.extend({"section": name, **r} for r in result.rows)
        provenance[name] = result.provenance
    ended = datetime.datetime.now().astimezone()
    summary = {"config": {"seed": seed, "experiments": [name for name, _ in DEMO]},
               "provenance": {"started": started.isoformat(timespec="seconds"),
                              "ended": ended.isoformat(timespec="seconds"),
                              "experiments": provenance},
               "rows": rows}
    save_json(os.path.join(out, "results.json"), summary)
    table = markdown(rows)
    save_text(os.path.join(out, "results.md"), table + "\n")
    print(table)
    print(f"[trustfast demo] wrote {out}/results.json, results.md; each experiment's results "
          f"and plots in {out}/<experiment>/")
    return summary
