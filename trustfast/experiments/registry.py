"""The experiment registry: one entry per experiment, from which the CLI, the demo and the
results files are made.

An experiment is `Experiment(name, config_cls, run, plot)`. `run(config, out, resume,
**artefacts)` does the work (checkpointing its expensive steps in `out`) and returns a
`Result`; `plot(result)` returns `{file name: matplotlib figure}`. `register` adds it; the CLI
gets a command `trustfast <name>` with the common flags plus the experiment's own `flags`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trustfast.config import Config, ConfigError


@dataclass
class ExperimentConfig(Config):
    """Fields every experiment has: the seed of everything it samples, and the device."""

    seed: int = 0  # data order, initialization, attacks: same seed, same result on the CPU
    device: str = "auto"  # "cpu", "cuda", "cuda:N" or "auto" (CUDA when present)

    def check(self) -> None:
        from trustfast.utils import check_device

        self.at_least("seed", 0)
        check_device(self.device)


@dataclass
class Result:
    """What an experiment returns and `results.json` holds: the config it ran with, one row
    per method / setting (metric keys named as in the papers' tables), and where and how it
    ran. `provenance` from `run` may hold experiment details: "resolved" (config entries
    resolved at run time, e.g. every method's hyperparameters, merged into
    "resolved_config"), "data" and "model" descriptions, training "history"; the runner adds
    versions, git commit, device, threads, world size and times."""

    config: dict
    rows: list[dict]
    provenance: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"config": self.config, "provenance": self.provenance, "rows": self.rows}

    @classmethod
    def from_json(cls, data: dict) -> Result:
        missing = [k for k in ("config", "rows") if k not in data]
        if missing:
            raise ValueError(f"results.json lacks {missing}")
        return cls(data["config"], data["rows"], data.get("provenance", {}))


@dataclass(frozen=True)
class Flag:
    """An experiment's own command-line flag, a shorthand for one config key.

    The flag's text goes through the same coercion as `--set key=value` (so "ga,npo" fills a
    list), after `parse` when given (e.g. budgets in pixels/255)."""

    name: str  # "--methods"
    key: str  # "methods"
    help: str
    parse: Callable[[str], Any] | None = None
    metavar: str | None = None


def pixel_budgets(text: str) -> list[float]:
    """A flag's comma-separated budgets in pixels/255 ("2,4,8") as [0, 1]-scale floats."""
    try:
        return [float(e) / 255 for e in text.split(",") if e.strip()]
    except ValueError:
        raise ConfigError("--eps", f"must be comma-separated budgets in pixels/255, got "
                                   f"{text!r}") from None


@dataclass(frozen=True)
class Experiment:
    name: str  # the CLI command: lowercase words joined by "-"
    config_cls: type  # an ExperimentConfig dataclass
    run: Callable[..., Result]
    plot: Callable[[Result], dict] | None = None
    help: str = ""
    flags: tuple[Flag, ...] = ()
    columns: tuple[str, ...] | None = None  # results.md columns (default: every row key)
    aliases: tuple[str, ...] = ()  # other command spellings, words separated by spaces

    def __post_init__(self):
        if not (dataclasses.is_dataclass(self.config_cls)
                and issubclass(self.config_cls, ExperimentConfig)):
            raise TypeError(f"experiment {self.name!r}: config_cls must be an ExperimentConfig "
                            f"dataclass, got {self.config_cls!r}")
        keys = [f.key.split(".")[0] for f in self.flags]
        known = {f.name for f in dataclasses.fields(self.config_cls)}
        unknown = sorted(set(keys) - known)
        if unknown:
            raise ConfigError("", f"experiment {self.name!r}: flags map to unknown config keys "
                                  f"{unknown}")


REGISTRY: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    """Add `experiment` to the registry (its name must be new)."""
    if experiment.name in REGISTRY:
        raise ValueError(f"experiment {experiment.name!r} is registered twice")
    REGISTRY[experiment.name] = experiment
    return experiment


def get_experiment(name: str) -> Experiment:
    """The registered experiment `name` (CLI spelling; "_" is read as "-")."""
    key = name.replace("_", "-") if isinstance(name, str) else name
    if key not in REGISTRY:
        raise ValueError(f"experiment must be one of {sorted(REGISTRY)}, got {name!r}")
    return REGISTRY[key]
