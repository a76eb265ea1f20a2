"""Matplotlib figures: an accuracy matrix as heatmap and per-task curves, router confusion, report bars."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def heatmap(R: np.ndarray, names: list[str], path: Path) -> Path:
    """R as a heatmap: rows = after training task i, columns = evaluated task j."""
    fig, ax = _percent_grid(R, names, [f"after {n}" for n in names], "viridis", dark_below=0.6)
    ax.set_xlabel("evaluated task")
    ax.set_title("accuracy matrix R[i, j] (%)")
    return _save(fig, path)


def fusion_attention(A: np.ndarray, rows: list[str], columns: list[str], path: Path) -> Path:
    """Mean attention of each fused task (rows) on each source task's adapter (columns, its own included)."""
    fig, ax = _percent_grid(A, columns, rows, "magma", dark_below=0.5)
    ax.set_xlabel("source adapter")
    ax.set_title("fusion: mean attention per source (%)")
    return _save(fig, path)


def _percent_grid(
    values: np.ndarray, columns: list[str], rows: list[str], cmap: str, dark_below: float = 2.0, dark_above: float = 2.0
):
    """A labelled grid of shares in percent (``nan`` cells blank); text turns white on dark cells."""
    plt = _pyplot()
    size = max(4.0, 0.6 * len(columns) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(np.ma.masked_invalid(values * 100), vmin=0, vmax=100, cmap=cmap)
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if np.isfinite(values[i, j]):
                dark = values[i, j] < dark_below or values[i, j] > dark_above
                ax.text(
                    j,
                    i,
                    f"{100 * values[i, j]:.1f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if dark else "black",
                )
    fig.colorbar(image, ax=ax, fraction=0.046)
    return fig, ax


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def curves(R: np.ndarray, names: list[str], path: Path) -> Path:
    """One line per task: its accuracy at every step from the step it was learned on."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    steps = np.arange(R.shape[0])
    for j, name in enumerate(names):
        ax.plot(steps[j:], 100 * R[j:, j], marker="o", label=name)
    ax.set_xticks(steps, [f"{i}:{n}" for i, n in enumerate(names)], rotation=45, ha="right")
    ax.set_xlabel("after training task")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("per-task accuracy over the stream")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def confusion(counts: np.ndarray, names: list[str], path: Path) -> Path:
    """Router confusion: row = true task, column = routed task (last column: rejected), as row shares."""
    shares = counts / np.clip(counts.sum(1, keepdims=True), 1, None)
    shares = np.where(counts > 0, shares, np.nan)  # empty cells stay blank
    fig, ax = _percent_grid(shares, [*names, "rejected"], names, "Blues", dark_above=0.6)
    ax.set_xlabel("routed to")
    ax.set_ylabel("true task")
    ax.set_title("router confusion (% of each task's test inputs)")
    return _save(fig, path)


def bars(
    labels: list[str],
    means: list[float],
    errors: list[float],
    path: Path,
    xlabel: str,
    title: str,
    limit: float = 100.0,
) -> Path:
    """Horizontal bars with error bars on a 0..``limit`` axis, one per label, top to bottom (``nan`` = no bar)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.45 * len(labels) + 1.2)))
    rows = np.arange(len(labels))
    ax.barh(rows, np.nan_to_num(means), xerr=errors, color="tab:blue", alpha=0.8, capsize=4)
    ax.set_yticks(rows, labels, fontsize=8)
    ax.invert_yaxis()  # first group on top, as in the table
    for row, mean in zip(rows, means):
        if np.isfinite(mean):
            ax.text(0.01 * limit, row, f"{mean:.2f}", va="center", fontsize=7, color="white")
    ax.set_xlim(0, limit)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)
