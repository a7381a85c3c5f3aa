"""Running a registered experiment: config check on resume, provenance, the results files.

    result = run_experiment("unlearn", UnlearnExperimentConfig(methods=["ft"]), "runs/u")

`out/run.json` records the experiment and its config when a run starts; `resume=True` refuses a
config that differs from it (listing the keys that differ), reuses a finished run's results
and lets the experiment pick up its checkpoints. Every run (resumed or not) first deletes the
temp files that a killed run's atomic writes left in `out` (`.tmp-*`, see
`trustfast.checkpoint.atomic_write`, and safetensors' own `.tmpXXXXXX`).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from trustfast._meta import __version__
from trustfast.checkpoint import load_json, save_json
from trustfast.config import ConfigError, config_diff, merge_mappings, to_dict
from trustfast.experiments.registry import Experiment, ExperimentConfig, Result, get_experiment
from trustfast.experiments.results import load_result, write_results
from trustfast.utils import resolve_device

# Keys a resumed run may change: where it runs, not what it computes.
RESUME_FREE_KEYS = ("device",)
# temp files: trustfast.checkpoint.atomic_write's (".tmp-<random><name>") and those that
# safetensors (0.8, Rust's tempfile) writes beside its target before renaming (".tmp<6 chars>")
TEMP_FILE = re.compile(r"^\.tmp(-.+|[A-Za-z0-9_]{6})$")
# a temp file older than this process, or than an hour, is no write in flight: a launched
# job's other ranks import this module at about the same time and write nothing before, and
# no checkpoint write takes an hour
_PROCESS_STARTED = time.time()
_STALE_AFTER_S = 3600.0
MAX_TEMP_DEPTH = 3  # folder levels below out that are cleaned (out/checkpoints/ga/ is 2)
PACKAGES = ("torch", "transformers", "diffusers", "deepspeed", "triton", "safetensors",
            "scikit-learn", "numpy")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The commit of the trustfast checkout this code runs from ("+dirty" with local changes),
    or None for an installed copy."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def rank() -> int:
    """This process's rank in an initialized process group (0 without one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def _launched_rank() -> int:
    """This process's rank, also before the process group is made (a launcher's RANK)."""
    return rank() or int(os.environ.get("RANK", "0"))


def world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def provenance(config: ExperimentConfig, started: datetime.datetime,
               ended: datetime.datetime, details: Mapping[str, Any] | None = None) -> dict:
    """Where and how a run ran: versions, git commit, device, threads, world size, the fully
    resolved config (the config plus the experiment's `details`, e.g. every method's
    hyperparameters), start and end time."""
    device = resolve_device(config.device)
    details = dict(details or {})
    resolved = merge_mappings(to_dict(config), details.pop("resolved", {}))
    return {
        "trustfast": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "device": str(device),
        "device_name": _device_name(device),
        "threads": torch.get_num_threads(),
        "world_size": world_size(),
        "resolved_config": resolved,
        "started": started.isoformat(timespec="seconds"),
        "ended": ended.isoformat(timespec="seconds"),
        "seconds": round((ended - started).total_seconds(), 3),
        **details,
    }


def check_resume(out: str, name: str, config: ExperimentConfig) -> None:
    """Refuse to resume `out` with another experiment or config (naming the keys that
    differ)."""
    path = os.path.join(out, "run.json")
    if not os.path.exists(path):
        return
    try:
        saved = load_json(path)
    except ValueError as exc:
        raise ConfigError("--resume", f"cannot read {path} ({exc}); delete it or use another "
                                      "--out") from None
    if saved.get("experiment") != name:
        raise ConfigError("--resume", f"{out} holds a run of {saved.get('experiment')!r}, not "
                                      f"{name!r}; use another --out")
    now = to_dict(config)
    keys = [k for k in config_diff(saved.get("config", {}), now)
            if k.split(".")[0] not in RESUME_FREE_KEYS]
    if keys:
        changes = ", ".join(f"{k} ({_at(saved.get('config', {}), k)!r} -> {_at(now, k)!r})"
                            for k in keys[:8])
        more = f" and {len(keys) - 8} more" if len(keys) > 8 else ""
        raise ConfigError("--resume", f"{out} holds a run with another config; keys that "
                                      f"differ: {changes}{more}; use another --out or the same "
                                      "config")


def _at(data: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(data, Mapping) or part not in data:
            return None
        data = data[part]
    return data


def remove_stale_temp_files(out: str) -> list[str]:
    """Delete the temp files of atomic writes (`.tmp-*`, and safetensors' `.tmpXXXXXX`) in
    `out` and its subfolders that are older than this process (or than an hour): what a killed
    run was writing when it died. Returns their paths.

    Only a run folder (one with a run.json) is cleaned, to the depth experiments write at
    (`out/checkpoints/<method>/`): an `--out` pointed at a folder of other things loses
    nothing."""
    before = max(_PROCESS_STARTED, time.time() - _STALE_AFTER_S)
    removed: list[str] = []
    if not os.path.isfile(os.path.join(out, "run.json")):
        return removed
    top = os.path.abspath(out).rstrip(os.sep).count(os.sep)
    for root, dirs, names in os.walk(out):
        if os.path.abspath(root).count(os.sep) - top >= MAX_TEMP_DEPTH:
            dirs.clear()
        for name in names:
            path = os.path.join(root, name)
            if not TEMP_FILE.match(name):
                continue
            try:
                if os.path.getmtime(path) < before:
                    os.remove(path)
                    removed.append(path)
            except FileNotFoundError:  # renamed or removed meanwhile
                pass
    return removed


def run_experiment(experiment: Experiment | str, config: ExperimentConfig | None, out: str,
                   resume: bool = False, **artefacts) -> Result:
    """Run (or resume) `experiment` with `config` into `out` and write its files.

    `artefacts` are passed to the experiment's run: Python objects in place of the config's
    file specs (e.g. `model=`, `train=`, `test=` for the vision experiments). A finished run
    in `out` with the same config is returned as it is when `resume=True` (and no artefacts
    are given); its results.md and plots are written again from its results.json (a run
    killed while writing them has the rows but not all of its files). Temp files a killed run
    left in `out` are deleted first (`remove_stale_temp_files`)."""
    exp = get_experiment(experiment) if isinstance(experiment, str) else experiment
    config = exp.config_cls() if config is None else config
    if not isinstance(config, exp.config_cls):
        raise TypeError(f"config for {exp.name!r} must be {exp.config_cls.__name__}, got "
                        f"{type(config).__name__}")
    config.validate()
    os.makedirs(out, exist_ok=True)
    if _launched_rank() == 0:
        remove_stale_temp_files(out)
    if resume:
        check_resume(out, exp.name, config)
        done = load_result(out) if not artefacts else None
        if done is not None and not [k for k in config_diff(done.config, to_dict(config))
                                     if k.split(".")[0] not in RESUME_FREE_KEYS]:
            if _launched_rank() == 0:  # killed after results.json: results.md / plots lack
                write_results(out, done, exp)
            return done
    save_json(os.path.join(out, "run.json"), {"experiment": exp.name, "config": to_dict(config)})
    started = datetime.datetime.now().astimezone()
    result = exp.run(config, out, resume, **artefacts)
    if not isinstance(result, Result):
        raise TypeError(f"experiment {exp.name!r}: run must return a Result, got "
                        f"{type(result).__name__}")
    ended = datetime.datetime.now().astimezone()
    result.config = to_dict(config)
    if rank() != 0:  # a launched run's other processes: rank 0 writes the results
        return result
    result.provenance = provenance(config, started, ended, result.provenance)
    write_results(out, result, exp)
    return result


class RowStore:
    """Finished rows of a run, by key, in `out/rows.json` (rewritten atomically after each), so
    a killed run keeps every finished row; `resume=False` starts empty."""

    def __init__(self, out: str, resume: bool, name: str = "rows.json"):
        self.path = os.path.join(out, name)
        self.rows: dict[str, Any] = {}
        if resume and os.path.exists(self.path):
            try:
                self.rows = load_json(self.path).get("rows", {})
            except ValueError:
                self.rows = {}  # a damaged progress file: recompute its rows

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def __getitem__(self, key: str) -> Any:
        return self.rows[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.rows.get(key, default)

    def put(self, key: str, row: Any) -> Any:
        self.rows[key] = row
        save_json(self.path, {"rows": self.rows})
        return row


def cached_tensor(out: str | None, name: str, resume: bool, make) -> torch.Tensor:
    """`make()`'s tensor, saved as out/<name>.safetensors and reused by a resumed run (no out:
    computed, not saved): generated images, which take minutes."""
    from trustfast.checkpoint import load_checkpoint, save_checkpoint

    if out and resume:
        saved = load_checkpoint(out, name)
        if saved is not None:
            return saved[0]["images"]
    images = make()
    if out:
        save_checkpoint(out, name, {"images": images.contiguous()},
                        {"images": list(images.shape)})
    return images
