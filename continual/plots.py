"""Matplotlib figures of an accuracy matrix: a heatmap and per-task accuracy curves."""

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
    plt = _pyplot()
    size = max(4.0, 0.6 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(np.ma.masked_invalid(R * 100), vmin=0, vmax=100, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), [f"after {n}" for n in names])
    for i in range(R.shape[0]):
        for j in range(R.shape[1]):
            if np.isfinite(R[i, j]):
                ax.text(j, i, f"{100 * R[i, j]:.1f}", ha="center", va="center", fontsize=8,
                        color="white" if R[i, j] < 0.6 else "black")
    ax.set_xlabel("evaluated task")
    ax.set_title("accuracy matrix R[i, j] (%)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
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
    plt = _pyplot()
    shares = counts / np.clip(counts.sum(1, keepdims=True), 1, None)
    columns = [*names, "rejected"]
    size = max(4.0, 0.6 * len(columns) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(shares * 100, vmin=0, vmax=100, cmap="Blues")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(shares.shape[0]):
        for j in range(shares.shape[1]):
            if counts[i, j]:
                ax.text(j, i, f"{100 * shares[i, j]:.1f}", ha="center", va="center", fontsize=7,
                        color="white" if shares[i, j] > 0.6 else "black")
    ax.set_xlabel("routed to")
    ax.set_ylabel("true task")
    ax.set_title("router confusion (% of each task's test inputs)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
