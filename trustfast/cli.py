"""The `trustfast` command: info, demo, bench, unlearn, backdoor, llm-unlearn,
watermark-attack."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trustfast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("info", help="versions, devices, and the backend each op uses here")

    demo = sub.add_parser("demo", help="run the built-in demonstration (what `make demo` runs)")
    demo.add_argument("--out", default="runs/demo", help="folder for results.json, table, plots")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--resume", action="store_true", help="reuse finished sections in --out")

    bench = sub.add_parser("bench", help="time the fused ops against their torch peers here")
    bench.add_argument("--sizes", default="1e6,1e7", help="comma-separated parameter counts")
    bench.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    bench.add_argument("--repeats", type=int, default=20, help="timed repetitions per variant")
    bench.add_argument("--out", default=None, help="folder for results.json and a markdown table")

    ul = sub.add_parser("unlearn", help="train, prune, unlearn and measure (the paper's Table 1)")
    ul.add_argument("--dataset", default="digits", help="built-in dataset (digits)")
    ul.add_argument("--scenario", default="classwise", choices=("classwise", "random"))
    ul.add_argument("--forget-class", type=int, default=3)
    ul.add_argument("--fraction", type=float, default=0.1, help="random scenario: share forgotten")
    ul.add_argument("--methods", default="retrain,ft,ga,rl,ff,iu,l1_sparse",
                    help="comma-separated: retrain,ft,ga,rl,ff,iu,l1_sparse,salun")
    ul.add_argument("--sparsity", default="0,0.9", help="comma-separated OMP sparsities")
    ul.add_argument("--train-epochs", type=int, default=8)
    ul.add_argument("--seed", type=int, default=0)
    ul.add_argument("--out", default="runs/unlearn")
    ul.add_argument("--resume", action="store_true", help="reuse finished steps in --out")

    bd = sub.add_parser("backdoor", help="backdoor attacks and poisoned-data identification")
    bd_sub = bd.add_subparsers(dest="backdoor_command", required=True)
    ident = bd_sub.add_parser("identify", help="poison, train, and find the poisoned samples "
                              "(MSPC, SPC, STRIP): AUROC, TPR, FPR, time")
    ident.add_argument("--attack", default="badnets",
                       help="comma-separated: badnets,blend,wanet,trojan,label_consistent,"
                            "adaptive_blend")
    ident.add_argument("--ratio", type=float, default=0.1, help="poison ratio")
    ident.add_argument("--target", type=int, default=0, help="target label")
    ident.add_argument("--methods", default="mspc,spc,strip")
    ident.add_argument("--epochs", type=int, default=30, help="training epochs of the model")
    ident.add_argument("--seed", type=int, default=0)
    ident.add_argument("--out", default="runs/backdoor")
    ident.add_argument("--resume", action="store_true", help="reuse finished attacks in --out")

    llm = sub.add_parser("llm-unlearn", help="memorize the built-in facts with a tiny Llama, then "
                         "unlearn 10 %% of the people (GA, GradDiff, NPO, SimNPO, IdkDPO, RMU)")
    llm.add_argument("--config", default=None, help="YAML/JSON file of FactsExperimentConfig "
                     "fields (methods, n_people, unlearn_epochs, unlearn_lr, overrides, ...)")
    llm.add_argument("--methods", default=None, help="comma-separated; overrides the config")
    llm.add_argument("--seed", type=int, default=None, help="overrides the config")
    llm.add_argument("--out", default="runs/llm_unlearn")
    llm.add_argument("--resume", action="store_true", help="reuse finished steps in --out")

    wm = sub.add_parser("watermark-attack", help="face verification, HiDDeN watermark and the "
                        "adversarial watermarking attack on built-in faces: the four-cell table")
    wm.add_argument("--config", default=None, help="YAML/JSON file of WatermarkAttackConfig "
                    "fields (eps, steps, message, pairs, face, watermark, ...)")
    wm.add_argument("--eps", default=None, help="comma-separated budgets in pixels/255, e.g. 2,4")
    wm.add_argument("--steps", type=int, default=None, help="PGD steps; overrides the config")
    wm.add_argument("--message", choices=["random", "fixed"], default=None,
                    help="the attack's messages; overrides the config")
    wm.add_argument("--seed", type=int, default=None, help="overrides the config")
    wm.add_argument("--out", default="runs/watermark_attack")
    wm.add_argument("--resume", action="store_true", help="reuse trained models in --out")

    args = parser.parse_args(argv)
    if args.command == "info":
        from trustfast.info import info_text

        print(info_text())
        return 0
    if args.command == "demo":
        from trustfast.demo import run_demo

        run_demo(out=args.out, seed=args.seed, resume=args.resume)
        return 0
    if args.command == "unlearn":
        from trustfast.unlearn.runner import ExperimentConfig, markdown_table, run_experiment

        try:
            sparsities = [float(x) for x in args.sparsity.split(",") if x.strip()]
        except ValueError:
            parser.error(f"--sparsity must be comma-separated numbers, got {args.sparsity!r}")
        cfg = ExperimentConfig(
            dataset=args.dataset, scenario=args.scenario, forget_class=args.forget_class,
            fraction=args.fraction, methods=[m for m in args.methods.split(",") if m.strip()],
            sparsities=sparsities, train_epochs=args.train_epochs, seed=args.seed)
        try:
            cfg.validate()
        except ValueError as exc:
            parser.error(str(exc))
        result = run_experiment(cfg, args.out, resume=args.resume)
        print(markdown_table(result["rows"], cfg.sparsities))
        print(f"[trustfast unlearn] wrote {args.out}/results.json, results.md, unlearn.png")
        return 0
    if args.command == "backdoor":
        from trustfast.backdoor.runner import IdentifyConfig, markdown_table, run_identification

        cfg = IdentifyConfig(attacks=[a for a in args.attack.split(",") if a.strip()],
                             ratio=args.ratio, target=args.target,
                             methods=[m for m in args.methods.split(",") if m.strip()],
                             epochs=args.epochs, seed=args.seed)
        try:
            cfg.validate()
        except ValueError as exc:
            parser.error(str(exc))
        result = run_identification(cfg, args.out, resume=args.resume)
        print(markdown_table(result["rows"]))
        print(f"[trustfast backdoor identify] wrote {args.out}/results.json, results.md, "
              "identify.png")
        return 0
    if args.command == "llm-unlearn":
        from trustfast.llm.facts_experiment import (
            FactsExperimentConfig,
            markdown_table,
            run_facts_unlearning,
        )

        try:
            cfg = (FactsExperimentConfig.from_file(args.config) if args.config
                   else FactsExperimentConfig())
            if args.methods:
                cfg.methods = [m for m in args.methods.split(",") if m.strip()]
            if args.seed is not None:
                cfg.seed = args.seed
            cfg.validate()
        except (OSError, ValueError, TypeError) as exc:
            parser.error(str(exc))
        rows = run_facts_unlearning(cfg, args.out, resume=args.resume)
        print(markdown_table(rows))
        print(f"[trustfast llm-unlearn] wrote {args.out}/results.json, results.md, "
              "llm_unlearning.png")
        return 0
    if args.command == "watermark-attack":
        from trustfast.attacks.watermark_experiment import (
            WatermarkAttackConfig,
            markdown_table,
            run_watermark_attack,
        )

        try:
            cfg = (WatermarkAttackConfig.from_file(args.config) if args.config
                   else WatermarkAttackConfig())
            if args.eps:
                cfg.eps = [float(e) / 255 for e in args.eps.split(",") if e.strip()]
            for name in ("steps", "message", "seed"):
                if getattr(args, name) is not None:
                    setattr(cfg, name, getattr(args, name))
            cfg.validate()
        except (OSError, ValueError, TypeError) as exc:
            parser.error(str(exc))
        rows = run_watermark_attack(cfg, args.out, resume=args.resume)
        print(markdown_table(rows))
        print(f"[trustfast watermark-attack] wrote {args.out}/results.json, results.md, "
              "watermark_attack.png")
        return 0
    if args.command == "bench":
        from trustfast._bench.cli import run_bench

        return run_bench(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
