"""The `trustfast` command: info, demo, bench."""

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

    args = parser.parse_args(argv)
    if args.command == "info":
        from trustfast.info import info_text

        print(info_text())
        return 0
    if args.command == "demo":
        from trustfast.demo import run_demo

        run_demo(out=args.out, seed=args.seed, resume=args.resume)
        return 0
    if args.command == "bench":
        from trustfast._bench.cli import run_bench

        return run_bench(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
