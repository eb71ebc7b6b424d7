"""PNG plots of a Table: success curves per target, IQM sample-efficiency curves, performance profiles."""
from __future__ import annotations

import pathlib

import numpy as np

import tools
from analysis.aggregate import Table


def _figure(ncols: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 3.4), squeeze=False)
    return plt, fig, axes[0]


def _save(plt, fig, path: pathlib.Path) -> pathlib.Path:
    import io

    fig.tight_layout()
    png = io.BytesIO()
    # A fixed creation date keeps the same inputs byte-identical.
    fig.savefig(png, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    return tools.atomic_write(path, lambda f: f.write(png.getvalue()))


def curves(table: Table, path: pathlib.Path) -> pathlib.Path:
    """One panel per target: mean success (thick) and every seed (thin) per method."""
    plt, fig, axes = _figure(len(table.targets))
    for j, (ax, target) in enumerate(zip(axes, table.targets)):
        for k, method in enumerate(table.methods):
            color = f"C{k}"
            runs = table.curves[method][:, j]
            for run in runs:
                ax.plot(table.steps, run, color=color, alpha=0.25, lw=0.8)
            ax.plot(table.steps, runs.mean(0), color=color, lw=2, label=f"{method} (n={len(runs)})")
        ax.set(title=target, xlabel="env steps", ylabel="eval success", ylim=(-0.03, 1.03))
    axes[0].legend(fontsize=8)
    return _save(plt, fig, path)


def iqm_curves(table: Table, estimates: dict, path: pathlib.Path) -> pathlib.Path:
    plt, fig, axes = _figure(1)
    for k, method in enumerate(table.methods):
        point, low, high = estimates[method]
        axes[0].plot(table.steps, point, color=f"C{k}", lw=2, label=method)
        axes[0].fill_between(table.steps, low, high, color=f"C{k}", alpha=0.2)
    axes[0].set(title="IQM success across targets (95% CI)", xlabel="env steps", ylabel="IQM eval success",
                ylim=(-0.03, 1.03))
    axes[0].legend(fontsize=8)
    return _save(plt, fig, path)


def profiles(table: Table, taus: np.ndarray, estimates: dict, path: pathlib.Path) -> pathlib.Path:
    plt, fig, axes = _figure(1)
    for k, method in enumerate(table.methods):
        point, low, high = estimates[method]
        axes[0].plot(taus, point, color=f"C{k}", lw=2, label=method)
        axes[0].fill_between(taus, low, high, color=f"C{k}", alpha=0.2)
    axes[0].set(title="performance profile (95% CI)", xlabel="final success τ",
                ylabel="fraction of runs with score > τ", ylim=(-0.03, 1.03))
    axes[0].legend(fontsize=8)
    return _save(plt, fig, path)
