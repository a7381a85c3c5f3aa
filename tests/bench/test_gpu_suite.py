"""`benchmarks/gpu_suite.py`: its CPU dry run passes, and the masked-update judge it runs
(`trustfast._bench.masked_update.compare`) catches wrong results.

The GPU suite runs on a borrowed machine for a few minutes, so a bug in it costs a whole loan:
the dry run (Triton interpreter, small shapes) and the judge are tested here on the CPU.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trustfast._bench import judge
from trustfast._bench import masked_update as mu

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_suite.py"


@pytest.fixture(scope="module")
def suite():
    """The script as a module (it is not a package); importing it imports no triton."""
    spec = importlib.util.spec_from_file_location("gpu_suite", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.mark.triton
def test_cpu_dry_run_passes(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--check", "--small", "--out",
         str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "| check |" in proc.stdout
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert report["passed"] is True and report["errors"] == []

    checks = report["checks"]
    checked = [c for c in checks if c["dtype"] in ("float32", "float16")]
    assert {(c["optimizer"], c["dtype"]) for c in checked} == {
        ("sgd", "float32"), ("sgd", "float16"), ("adamw", "float32"), ("adamw", "float16")}
    for c in checked:
        assert c["passed"] is True, c
        assert c["arrays"], c
        for name, a in c["arrays"].items():
            for key in ("kernel_err", "torch_err", "bound"):
                assert isinstance(a[key], float) and math.isfinite(a[key]), (c["case"], name, a)
            assert a["masked_nonzero"] == 0 and a["n_over_bound"] == 0
    bf16 = [c for c in checks if c["dtype"] == "bfloat16"]
    assert bf16 and all("skipped" in c and "passed" not in c for c in bf16)
    # --check runs no timing sections.
    assert report["ceilings"] == report["timings"] == report["block_sweep"] == []


def _runs(case):
    """fp64 reference, torch-in-fp32 baseline, and a copy of the baseline standing in for a
    kernel (the judge sees only tensors, so a perturbed copy is a wrong kernel)."""
    shapes = tuple(mu.SMALL_CHECK_SHAPES)
    inputs = mu.make_inputs(shapes, torch.float32, "cpu")
    ref = inputs.clone(torch.float64)
    mu.reference_step(case, ref)
    base = inputs.clone()
    mu.op_step("torch")(case, base)
    kernel = base.clone()
    return (mu.outputs(case, ref), mu.outputs(case, base), mu.outputs(case, kernel),
            inputs.masks)


@pytest.mark.parametrize("case_name", ["sgd nesterov l1 subgradient", "adamw"])
def test_judge_flags_wrong_results(case_name):
    case = next(c for c in mu.CASES if c.name == case_name)
    ref, base, kernel, masks = _runs(case)
    assert mu.compare(ref, base, kernel, masks, torch.float32)["passed"]

    i = next(i for i, m in enumerate(masks) if m is not None and m.sum() > 1 and (~m).sum() > 0)
    kept = int(masks[i].flatten().nonzero()[0])
    dropped = int((~masks[i]).flatten().nonzero()[0])
    last = list(ref)[-1]  # state is judged as strictly as the weights

    def judged(array, index, value):
        broken = {name: [t.clone() for t in ts] for name, ts in kernel.items()}
        broken[array][i].view(-1)[index] = value
        return mu.compare(ref, base, broken, masks, torch.float32)

    for array in ("params", last):
        scale = float(ref[array][i].abs().max())
        off_by = judged(array, kept, float(kernel[array][i].view(-1)[kept]) + 1e-5 * scale)
        assert not off_by["passed"]
        assert off_by["arrays"][array]["n_over_bound"] == 1
        assert f"tensor {i} " in off_by["arrays"][array]["worst_at"]

        nan = judged(array, kept, math.nan)
        assert not nan["passed"] and nan["arrays"][array]["kernel_err"] == math.inf

        leak = judged(array, dropped, 1e-30)  # masked out must be exactly 0, not merely small
        assert not leak["passed"]
        assert leak["arrays"][array]["masked_nonzero"] == 1
        assert leak["arrays"][array]["n_over_bound"] == 0


def test_failing_section_is_recorded_and_the_suite_continues(suite, tmp_path):
    s = suite.Suite(tmp_path, {"test": True}, torch.device("cpu"), budget_s=60)

    def boom():
        raise RuntimeError("compile failed")

    s.run("timings", "broken section", boom, {"op": "x"})
    s.run("ceilings", "fine section", lambda: {"item": "y", "ms": 1.0, "GB/s": 2.0})
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert report["passed"] is False and s.failed()
    assert report["timings"] == [{"op": "x", "error": "RuntimeError: compile failed"}]
    assert report["errors"][0]["section"] == "broken section"
    assert report["ceilings"][0]["GB/s"] == 2.0
    table = suite.markdown_table(report)
    assert "ERROR RuntimeError: compile failed" in table and "| 2 GB/s |" in table


def test_sections_after_the_budget_are_skipped_not_failed(suite, tmp_path):
    s = suite.Suite(tmp_path, {}, torch.device("cpu"), budget_s=-1)
    assert s.run("checks", "late", lambda: pytest.fail("must not run"), {"case": "c"}) is None
    assert s.report["checks"] == [{"case": "c", "skipped": "time budget spent"}]
    assert not s.failed()


def test_judge_rule_keeps_each_callers_slack_and_floor():
    """bound = max(2 x baseline + slack, floor): the form every caller states its tolerance in."""
    assert judge.bound(1e-3) == 2e-3
    assert judge.bound(1e-3, slack=1e-4) == pytest.approx(2.1e-3)
    assert judge.bound(0.0, floor=1e-6) == 1e-6 and judge.bound(1e-3, floor=1e-6) == 2e-3
    assert judge.within(2e-3, 1e-3) and not judge.within(2.01e-3, 1e-3)
    assert not judge.within(math.nan, 1.0)
    ref = torch.tensor([1.0, -2.0, 4.0], dtype=torch.float64)
    got = torch.tensor([1.0, -2.5, math.nan])
    assert judge.max_abs_error(got[:2], ref[:2]) == 0.5
    assert judge.relative_error(got[:2], ref[:2]) == 0.25
    assert judge.max_abs_error(got, ref) == math.inf
    assert judge.count_over(got, ref, 0.4) == 2
    assert judge.worst_error([got[:1], got[:2]], [ref[:1], ref[:2]]) == (
        0.5, "tensor 1 (2,) flat index 1")


def test_registry_benches_share_the_interface():
    """Every registered bench builds its check and timing sections (nothing runs)."""
    from trustfast._bench import registry

    for name in registry.BENCHES:
        bench = registry.load(name)
        checks = bench.checks(torch.device("cpu"), small=True, backend="triton")
        timings = bench.timings(torch.device("cpu"), 1, small=True, backend="triton")
        for section in checks + timings:
            assert isinstance(section, registry.Section) and callable(section.run), name
            assert section.label and section.key, name
    with pytest.raises(ValueError, match="--ops"):
        registry.parse_names("masked_update,nope")
    assert registry.parse_names(None) == ("masked_update",)
    assert registry.parse_names("all") == tuple(registry.BENCHES)
