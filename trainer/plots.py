"""PNG plots for reports: confusion matrix, ROC curves, reliability diagrams, t-SNE of segment vectors (matplotlib, Agg)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt

def save_figure(figure, path: Path, title: str | None = None) -> None:
    """Lay out, write and close a report figure (with `title` over all its panels)."""
    if title is not None:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    _pyplot().close(figure)


def confusion_matrix_png(metrics: dict, path: Path, title: str) -> None:
    plt = _pyplot()
    matrix = np.array([[metrics["tn"], metrics["fp"]], [metrics["fn"], metrics["tp"]]])
    figure, axis = plt.subplots(figsize=(3.6, 3.2), dpi=110)
    axis.imshow(matrix, cmap="Blues")
    for (row, col), value in np.ndenumerate(matrix):
        axis.text(col, row, str(value), ha="center", va="center",
                  color="white" if value > matrix.max() / 2 else "black", fontsize=12)
    axis.set_xticks([0, 1], ["not depressed", "depressed"])
    axis.set_yticks([0, 1], ["not depressed", "depressed"])
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title, fontsize=9)
    save_figure(figure, path)


def roc_png(curves: list[tuple[str, np.ndarray, np.ndarray]], path: Path, title: str) -> None:
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(4, 4), dpi=110)
    for name, labels, probabilities in curves:
        if len(set(np.asarray(labels).tolist())) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels, probabilities)
        axis.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(labels, probabilities):.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.set_title(title, fontsize=9)
    if axis.get_legend_handles_labels()[0]:  # no curve when a set holds one class only
        axis.legend(loc="lower right", fontsize=8)
    else:
        axis.text(0.5, 0.1, "one class only: no ROC curve", ha="center", fontsize=8, transform=axis.transAxes)
    save_figure(figure, path)


def tsne_png(vectors: np.ndarray, labels: np.ndarray, path: Path, title: str, seed: int = 0,
             max_points: int = 2000) -> None:
    from sklearn.manifold import TSNE

    plt = _pyplot()
    vectors = np.asarray(vectors, dtype=np.float32)
    labels = np.asarray(labels)
    if len(vectors) > max_points:
        keep = np.random.default_rng(seed).choice(len(vectors), max_points, replace=False)
        vectors, labels = vectors[keep], labels[keep]
    perplexity = float(min(30, max(2, (len(vectors) - 1) // 3)))
    points = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(vectors)
    figure, axis = plt.subplots(figsize=(4.5, 4), dpi=110)
    for value, name, color in ((0, "not depressed", "tab:blue"), (1, "depressed", "tab:red")):
        chosen = labels == value
        axis.scatter(points[chosen, 0], points[chosen, 1], s=8, alpha=0.7, label=name, color=color)
    axis.set_title(title, fontsize=9)
    axis.set_xticks([])
    axis.set_yticks([])
    axis.legend(fontsize=8)
    save_figure(figure, path)


def reliability_png(panels: list[tuple[str, np.ndarray, np.ndarray]], path: Path, title: str, bins: int = 5) -> None:
    """One reliability diagram per (name, labels, probabilities): equal-count bins, mean score against outcome rate."""
    plt = _pyplot()
    columns = min(4, max(1, len(panels)))
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(2.8 * columns, 2.8 * rows), dpi=110, squeeze=False)
    for axis in axes.ravel()[len(panels):]:
        axis.set_visible(False)
    for axis, (name, labels, probabilities) in zip(axes.ravel(), panels):
        labels, probabilities = np.asarray(labels, dtype=float), np.asarray(probabilities, dtype=float)
        axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        chunks = [c for c in np.array_split(np.argsort(probabilities, kind="stable"), min(bins, labels.size)) if len(c)]
        scored = [probabilities[c].mean() for c in chunks]
        observed = [labels[c].mean() for c in chunks]
        axis.plot(scored, observed, marker="o")
        for x, y, chunk in zip(scored, observed, chunks):
            axis.annotate(str(len(chunk)), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=6)
        axis.set_xlim(-0.02, 1.02)
        axis.set_ylim(-0.02, 1.02)
        axis.set_title(f"{name} ({labels.size})", fontsize=8)
        axis.set_xlabel("mean calibrated probability", fontsize=7)
        axis.set_ylabel("observed rate", fontsize=7)
        axis.tick_params(labelsize=6)
        axis.grid(alpha=0.3)
    save_figure(figure, path, title)
