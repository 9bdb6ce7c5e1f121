"""``sr_curve.png``: the per-layer Score Retention curve a person reads to trust the window."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_sr_curve(record: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean = np.asarray(record["sr"]["mean"])
    std = np.asarray(record["sr"]["std"])
    layers = np.arange(mean.size)
    win = record["window"]
    floor = record["random_floor"]["mean"]
    ratio = record["settings"]["keep_ratio"]
    model = record["model"]

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    ax.axvspan(win["start"] - 0.5, win["end"] - 0.5, color="tab:green", alpha=0.18,
               label=f"SAP window [{win['start']}, {win['end']})")
    ax.fill_between(layers, mean - std, mean + std, color="tab:blue", alpha=0.15, linewidth=0)
    ax.plot(layers, mean, marker="o", color="tab:blue", label=f"SR per layer (keep {ratio:g}), mean ± std")
    ax.axhline(floor, color="tab:red", linestyle="--", label=f"random selection ({floor:.3f})")
    ax.axhline(win["median"], color="grey", linestyle=":", label=f"median SR ({win['median']:.3f})")
    align = win["alignment_region"][0]
    if align < mean.size:
        ax.axvspan(align - 0.5, mean.size - 0.5, color="tab:orange", alpha=0.10, label="alignment region (< median)")
    ax.set_xlabel("decoder layer (0-indexed)")
    ax.set_ylabel("score retention")
    ax.set_xlim(-0.5, mean.size - 0.5)
    ax.set_xticks(layers if mean.size <= 40 else layers[::2])
    ax.set_title(f"{model['family']} · {model['n_layers']} layers · {record['pairs']['used']} pairs")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
