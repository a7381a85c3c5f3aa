"""The one writer of an experiment's files: results.json, results.md and its PNG plots."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

from trustfast.checkpoint import atomic_write, save_json, save_text
from trustfast.experiments.registry import Experiment, Result


def cell(value) -> str:
    """A table cell: 4 significant digits (scientific below 1e-3), "-" for None, and "nan",
    "inf" or "-inf" for a non-finite float (results.json holds `null` there; see
    `write_results`)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.2e}"
        return f"{value:.4g}"
    return str(value)


def _table_columns(rows: Sequence[dict], columns: Sequence[str] | None) -> list[str]:
    if columns is not None:
        return [c for c in columns if any(c in r for r in rows)]
    keys = dict.fromkeys(k for r in rows for k in r)
    # nested values (histories, per-array errors) stay in results.json only
    return [k for k in keys if not any(isinstance(r.get(k), (dict, list)) for r in rows)]


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """One markdown table: a column per key (or `columns`, in that order), a line per row."""
    if not rows:
        return "(no rows)"
    cols = _table_columns(rows, columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(cell(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def save_figure(fig, path: str) -> None:
    """Write a matplotlib figure as PNG (atomically) and close it."""
    from trustfast.utils import pyplot

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    pyplot().close(fig)


def non_finite(obj, path: str = "") -> list[str]:
    """`"rows[2].loss = nan"` for every non-finite float (NaN, +-Inf) in nested JSON data."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return [f"{path} = {obj}"]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in non_finite(v, f"{path}.{k}" if path else str(k))]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in non_finite(v, f"{path}[{i}]")]
    return []


def write_results(out: str, result: Result, experiment: Experiment | None = None) -> list[str]:
    """results.json ({"config", "provenance", "rows"}), results.md and the experiment's PNGs
    in `out`; returns the paths written. Files get ordinary permissions (0644 under the usual
    umask).

    results.json is strict JSON: a non-finite float (a diverged loss, an undefined metric) is
    written as `null`, and its place and value are listed in `provenance["non_finite"]`
    (`["rows[2].loss = nan"]`); results.md shows it as "nan" / "inf" / "-inf", None as "-"."""
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, "results.json"), os.path.join(out, "results.md")]
    data = result.to_json()
    bad = non_finite(data)
    if bad:
        data["provenance"] = {**data["provenance"], "non_finite": bad}
    save_json(paths[0], data)
    title = f"# {experiment.name}\n\n" if experiment is not None else ""
    table = markdown_table(result.rows, experiment.columns if experiment else None)
    save_text(paths[1], title + table + "\n")
    if experiment is not None and experiment.plot is not None and result.rows:
        for name, fig in experiment.plot(result).items():
            path = os.path.join(out, name)
            save_figure(fig, path)
            paths.append(path)
    return paths


def load_result(out: str) -> Result | None:
    """The Result in `out/results.json`, or None when there is none."""
    path = os.path.join(out, "results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        try:
            return Result.from_json(json.load(f))
        except (json.JSONDecodeError, ValueError):
            return None
