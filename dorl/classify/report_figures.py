"""The classify stage's figures: ``few_shot.png`` (the learning curve over labelled target cells)
and one confusion PNG per cross-domain evaluation group (``confusion/``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dorl.classify.registry import display_name
from dorl.figures import pyplot, save_figure


def plot_few_shot(out_dir: Path, curve: pd.DataFrame, model_columns: list[str]) -> Path | None:
    """``few_shot.png``: the learning curve (:func:`dorl.classify.aggregates.few_shot_curve`), one
    panel per source -> target pair, one line per model (its ``model_columns``)."""
    if curve.empty:
        return None
    plt = pyplot()

    pairs = curve[["source", "target"]].drop_duplicates().to_numpy()
    fig, axes = plt.subplots(1, len(pairs), figsize=(4 * len(pairs), 3.4), squeeze=False,
                             layout="constrained")
    for ax, (source, target) in zip(axes[0], pairs):
        panel = curve[(curve["source"] == source) & (curve["target"] == target)]
        for key, line in panel.groupby(model_columns, sort=False):
            line = line.sort_values("shots")
            ax.errorbar(line["shots"], line["mean"], yerr=line["std"], marker="o", capsize=2,
                        label=f"{key[0]} / {key[1]} / {display_name(key[2])}")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("labelled target cells per class (k)")
        ax.set_ylabel("macro-F1 (shared classes)")
        ax.set_ylim(0, 1)
        ax.set_title(f"{source} → {target}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    return save_figure(fig, out_dir / "few_shot.png")


#: The protocols drawn as confusion PNGs: those that score a lab the model never trained on.
#: Every protocol's counts are in summary.json.
CONFUSION_FIGURE_PROTOCOLS = ("source_target", "lodo")


def plot_confusions(out_dir: Path, confusions: dict) -> list[Path]:
    """One PNG per feature set x adaptation x classifier x cross-domain protocol
    (:data:`CONFUSION_FIGURE_PROTOCOLS`), one panel per source -> target pair.

    Colours are row-normalised (recall per true class); numbers are counts over folds and seeds.
    """
    plt = pyplot()

    groups: dict[tuple, list] = {}
    for (fs, adaptation, clf, protocol, source, target), value in confusions.items():
        if protocol in CONFUSION_FIGURE_PROTOCOLS:
            groups.setdefault((fs, adaptation, clf, protocol), []).append((source, target, value))
    paths = []
    for (fs, adaptation, clf, protocol), panels in groups.items():
        panels.sort(key=lambda p: (p[0], p[1]))
        n_labels = len(panels[0][2][0])
        # Fixed margins (inches) for the rotated class names: a constrained layout measured
        # every label and took most of the figure's time.
        side, margin, top = 0.3 * n_labels + 0.2, 1.1, 0.6
        width, height = margin + len(panels) * (side + 0.3), side + margin + top
        fig, axes = plt.subplots(1, len(panels), figsize=(width, height), squeeze=False)
        fig.subplots_adjust(left=margin / width, right=1 - 0.2 / width, bottom=margin / height,
                            top=1 - top / height, wspace=0.3 / side)
        for ax, (source, target, (labels, counts)) in zip(axes[0], panels):
            counts = np.asarray(counts)
            rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
            ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
            for (i, j), n in np.ndenumerate(counts):
                if n:
                    ax.text(j, i, str(n), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
            ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
            ax.set_yticks(range(len(labels)), labels if ax is axes[0][0] else [], fontsize=7)
            ax.set_title(f"{source} → {target}", fontsize=8)
            ax.set_xlabel("predicted", fontsize=7)
        axes[0][0].set_ylabel("true", fontsize=7)
        fig.suptitle(f"{fs} / {adaptation} / {display_name(clf)} / {protocol}", fontsize=9)
        path = out_dir / "confusion" / f"{fs}__{adaptation}__{clf}__{protocol}.png"
        save_figure(fig, path)
        paths.append(path)
    return paths
