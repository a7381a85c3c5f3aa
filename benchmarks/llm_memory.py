"""Peak memory of one NPO unlearning step: measured, and predicted by trustfast.llm.memory.

    python benchmarks/llm_memory.py                    # small shapes on the CPU
    python benchmarks/llm_memory.py --device cuda      # + TinyLlama-1B and Llama-2-7B shapes

Prints a markdown table (measured and predicted peak, their ratio, tokens/s) and writes it as
JSON; exits 1 when a prediction is off by more than 15 % or the 7B step exceeds 40 GB.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    from trustfast._bench import llm_memory

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--small-only", action="store_true", help="skip the 1B and 7B shapes on GPU")
    p.add_argument("--out", default="benchmarks/results/llm_memory.json")
    args = p.parse_args(argv)
    big = args.device.startswith("cuda") and not args.small_only
    table = llm_memory.rows(args.device, big)
    print(llm_memory.markdown(table))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": args.device, "rows": table}, indent=1))
    return 0 if all(r["passed"] for r in table) else 1


if __name__ == "__main__":
    sys.exit(main())
