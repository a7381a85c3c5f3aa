"""The two plot shapes the experiments draw: grouped bars and lines (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from trustfast.utils import pyplot


def grouped_bars(rows: Sequence[dict], group: str, series: str, panels: Sequence[tuple[str, str]],
                 title: str = "", series_label: Callable[[object], str] = str,
                 ylim: tuple[float, float] | None = None):
    """One panel per (value key, y label): a bar group per distinct `group` value, a bar per
    distinct `series` value. Missing cells (or None values) are left out."""
    plt = pyplot()
    groups = list(dict.fromkeys(r[group] for r in rows))
    names = list(dict.fromkeys(r[series] for r in rows))
    by = {(r[group], r[series]): r for r in rows}
    fig, axes = plt.subplots(1, len(panels), figsize=(1.6 + (1.0 + 0.35 * len(names))
                                                        * len(groups) * len(panels) * 0.8, 3.2),
                             squeeze=False)
    width = 0.8 / max(len(names), 1)
    for ax, (key, label) in zip(axes[0], panels):
        for i, name in enumerate(names):
            xs, ys = [], []
            for j, g in enumerate(groups):
                value = by.get((g, name), {}).get(key)
                if value is not None:
                    xs.append(j + i * width)
                    ys.append(value)
            ax.bar(xs, ys, width, label=series_label(name))
        ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(groups))])
        ax.set_xticklabels([str(g) for g in groups], rotation=30 if len(groups) > 5 else 0)
        ax.set_ylabel(label)
        if ylim is not None:
            ax.set_ylim(*ylim)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def lines(curves: dict[str, tuple[Sequence[float], Sequence[float]]], xlabel: str, ylabel: str,
          title: str = "", ylim: tuple[float, float] | None = None, marker: str = "o"):
    """One line per label: {label: (xs, ys)}."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 3.2))
    for label, (xs, ys) in curves.items():
        ax.plot(list(xs), list(ys), marker=marker, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if title:
        ax.set_title(title, fontsize=10)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
