"""Every CLI experiment survives `kill -9` and `--resume`: the resumed run's rows equal an
uninterrupted run's (except the fields that are timings, named per experiment), and no temp
file of the killed run is left in --out.

Each experiment runs at a tiny size: an uninterrupted reference run in-process, then a run in a
subprocess that is SIGKILLed at a seeded point (a short seeded delay after its first checkpoint
file appears in --out, or after it started, for experiments that do not checkpoint), then
`--resume` in a subprocess to completion.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass

import pytest

from trustfast.cli import main
from trustfast.experiments import REGISTRY

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]  # the tiny run's flags (besides --out and --device cpu)
    timings: tuple[str, ...]  # row fields that are measured times or speeds
    checkpoints: bool  # writes checkpoint / progress files while it runs (kill on the first)


CASES = {
    "backdoor-identify": Case(
        ("--attack", "badnets", "--methods", "spc", "--epochs", "1",
         "--set", "strip_overlays=4"), ("seconds",), True),
    "bilevel": Case(
        ("--set", "cleaning.outer_steps=2", "--set", "cleaning.inner_steps=5",
         "--set", "cleaning.cg_iters=5", "--set", "cleaning.n_val=50"), ("seconds",), False),
    "diffusion-attention": Case(
        ("--steps", "1", "--set", "batch=1", "--set", "prompt_tokens=7"), ("seconds",), False),
    "diffusion-backdoor": Case(
        ("--steps", "4", "--ratios", "0,0.1", "--triggers", "badnets", "--set", "image_size=8",
         "--set", "patch_size=2", "--set", "samples_per_class=2", "--set", "dc_test_size=3",
         "--set", "dc_draws=2", "--set", "classifier.epochs=1", "--set", "identify=spc",
         "--set", "train.batch_size=8", "--set", "train.checkpoint_every=2"), (), True),
    "fairskin": Case(
        ("--steps", "6", "--set", "train_size=120", "--set", "test_per_group=3",
         "--set", "sample_steps=2", "--set", "classifier.epochs=1", "--set", "image_size=8",
         "--set", "train.batch_size=8", "--set", "train.checkpoint_every=2"), (), True),
    "llm-unlearn": Case(  # the built-in tiny model, without DeepSpeed
        ("--methods", "ga", "--set", "n_people=10", "--set", "finetune_epochs=1",
         "--set", "unlearn.epochs=1", "--set", "retain_eval=2", "--set", "hidden_size=32",
         "--set", "save_models=false"), ("seconds",), True),
    "robustness": Case(
        ("--eps", "0,8", "--steps", "1", "--set", "train.epochs=1",
         "--set", "max_examples=32"), ("seconds",), True),
    "masked-training": Case(
        ("--set", "train.epochs=1", "--set", "pruned_epochs=1"), ("seconds",), True),
    "masked-update-speed": Case(
        ("--params", "1000", "--set", "repeats=1"),
        ("fused_ms", "torch_foreach_ms", "speedup_x"), False),
    "unlearn": Case(
        ("--methods", "ft", "--sparsity", "0,0.5", "--train-epochs", "2",
         "--set", "prune_retrain_epochs=1", "--set", "overrides.retrain.epochs=1",
         "--set", "overrides.ft.epochs=1"), ("RTE",), True),
    "watermark-attack": Case(
        ("--steps", "1", "--eps", "4", "--set", "face.epochs=1", "--set", "watermark.epochs=1",
         "--set", "train_identities=8", "--set", "train_images=4",
         "--set", "test_identities=6", "--set", "test_images=2", "--set", "pairs_count=3",
         "--set", "face.batch_size=16", "--set", "watermark.batch_size=8",
         "--set", "image_size=16", "--set", "hidden.channels=4"), ("attack_seconds",), True),
}


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}



def test_every_registered_experiment_has_a_case():
    assert set(CASES) == set(REGISTRY)


def _files(folder: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(root, f), folder)
                  for root, _, names in os.walk(folder) for f in names)


def _temp_files(folder: str) -> list[str]:
    """Files named as `trustfast.checkpoint.atomic_write`'s temp files (or *.tmp)."""
    return [f for f in _files(folder)
            if os.path.basename(f).startswith(".tmp") or f.endswith(".tmp")]


def _kill_at_seeded_point(argv: list[str], out: str, cwd: str, name: str,
                          checkpoints: bool) -> None:
    rng = random.Random(zlib.crc32(name.encode()))
    proc = subprocess.Popen([sys.executable, "-m", "trustfast", *argv], cwd=cwd, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120

    def started() -> bool:
        files = _files(out) if os.path.isdir(out) else []
        if checkpoints:  # the first checkpoint / progress file (or its temp file) appeared
            return any(f != "run.json" for f in files)
        return "run.json" in files

    while not started() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.15) if checkpoints else rng.uniform(0.2, 0.8))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, \
        f"{name} ended (rc {proc.returncode}) before it was killed; stderr:\n{stderr[-2000:]}"
    # a kill may land after results.json, while results.md and the plots are written: the
    # resumed run reuses the rows and writes the rest


def _rows(out: str, timings: tuple[str, ...]) -> list[dict]:
    with open(os.path.join(out, "results.json")) as f:
        rows = json.load(f)["rows"]
    return [{k: v for k, v in r.items() if k not in timings} for r in rows]


@pytest.mark.parametrize("name", sorted(CASES))
def test_kill_then_resume_gives_the_uninterrupted_rows(name, tmp_path, monkeypatch, capsys):
    case = CASES[name]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    ref = str(tmp_path / "reference")
    assert main([name, "--out", ref, "--device", "cpu", *case.argv]) == 0
    capsys.readouterr()
    expected = _rows(ref, case.timings)
    with open(os.path.join(ref, "results.json")) as f:
        keys = {k for row in json.load(f)["rows"] for k in row}
    assert set(case.timings) <= keys, (case.timings, keys)  # the named timing fields exist

    out = str(tmp_path / "killed")
    argv = [name, "--out", out, "--device", "cpu", *case.argv]
    _kill_at_seeded_point(argv, out, str(tmp_path), name, case.checkpoints)
    res = subprocess.run([sys.executable, "-m", "trustfast", *argv, "--resume"], cwd=tmp_path,
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _rows(out, case.timings) == expected
    assert os.path.getsize(os.path.join(out, "results.md")) > 0
    assert [f for f in _files(out) if f.endswith(".png")] == \
        [f for f in _files(ref) if f.endswith(".png")]  # every plot, even after a late kill
    assert _temp_files(out) == [], _files(out)
    assert _temp_files(ref) == []


def test_a_killed_runs_temp_files_are_removed_by_the_next_run(tmp_path, capsys):
    """What atomic_write (or safetensors inside it) was writing when a run was killed
    (`.tmp-*`, `.tmpXXXXXX`, in --out and its subfolders) is deleted when the next run there
    starts; other files are kept, and a folder that holds no run is not touched."""
    argv = ["masked-update-speed", "--params", "1000", "--set", "repeats=1", "--device", "cpu"]
    other = tmp_path / "not-a-run"
    other.mkdir()
    foreign = other / ".tmpABCDEF"  # someone else's file, in a folder without run.json
    foreign.write_text("theirs")
    os.utime(foreign, (1e9, 1e9))
    assert main([*argv, "--out", str(other)]) == 0
    assert foreign.read_text() == "theirs"

    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 0
    rows = _rows(str(out), ())
    (out / "sub").mkdir()
    stale = [out / ".tmp-abc123model.safetensors", out / "sub" / ".tmp-x9rows.json",
             out / ".tmpQ2CQ07"]  # the last: safetensors' own temp file
    for path in stale:
        path.write_bytes(b"half a file")
        os.utime(path, (1e9, 1e9))  # 2001: older than this process
    keep = out / "sub" / "notes.tmp.txt"
    keep.write_text("mine")
    os.remove(out / "results.md")  # killed after results.json, before results.md
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    assert not any(p.exists() for p in stale)
    assert keep.read_text() == "mine"
    assert _temp_files(str(out)) == []
    assert _rows(str(out), ()) == rows  # the finished run reused as it is, timings included
    assert "| SGD step" in (out / "results.md").read_text()  # and its files written again
