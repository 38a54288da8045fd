"""Classification reports shared by every classifier family (HAR, text).

API (stable; other families build on it):

- :func:`classification_report(y_true, y_pred, classes)` -> ``dict`` with exactly the keys
  ``accuracy`` (float), ``macro_f1`` (float), ``per_class`` (``{name: {precision, recall,
  f1, support}}`` in ``classes`` order) and ``confusion`` (list of rows: true class, columns:
  predicted class, both in ``classes`` order). Families add their own keys afterwards
  (HAR adds ``windows``, text adds ``mcc``).
- :func:`format_report(report, classes)` -> printable table.
- :func:`save_confusion_png(report, classes, path, title)` -> PNG of the confusion matrix.
- :func:`write_json(report, path)` -> the report as JSON.

Labels may be class indices (ints into ``classes``) or class names.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _as_indices(y: Any, classes: Sequence[str]) -> np.ndarray:
    arr = np.asarray(y)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    lookup = {name: i for i, name in enumerate(classes)}
    try:
        return np.asarray([lookup[str(v)] for v in arr], np.int64)
    except KeyError as exc:
        raise ValueError(
            f"label {exc.args[0]!r} is not one of the classes {list(classes)}"
        ) from None


def classification_report(y_true: Any, y_pred: Any, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    The numbers are scikit-learn's (``precision_recall_fscore_support`` with
    ``zero_division=0``), computed here with numpy so that ``replay --compare`` and ``demo``
    run without scikit-learn. Every class in ``classes`` appears, also when absent from
    ``y_true`` (its support is 0 and its scores 0); macro-F1 averages over the classes
    present in ``y_true`` or ``y_pred``, as scikit-learn does by default.
    """
    true = _as_indices(y_true, classes)
    pred = _as_indices(y_pred, classes)
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.shape[0]} items but y_pred has {pred.shape[0]}")
    if true.size == 0:
        raise ValueError("cannot report on zero items")
    n = len(classes)
    if min(true.min(), pred.min()) < 0 or max(true.max(), pred.max()) >= n:
        raise ValueError(f"class indices must lie in 0..{n - 1} for the classes {list(classes)}")
    confusion = np.bincount(true * n + pred, minlength=n * n).reshape(n, n)
    hits = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    precision = _share(hits, predicted)
    recall = _share(hits, support)
    f1 = _share(2 * hits, support + predicted)
    present = (support + predicted) > 0
    return {
        "accuracy": float(hits.sum() / true.size),
        "macro_f1": float(f1[present].mean()),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
        "confusion": confusion.tolist(),
    }


def _share(part: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """``part / whole`` per class, 0 where ``whole`` is 0."""
    return np.divide(part, whole, out=np.zeros(len(part)), where=whole > 0)


def format_report(report: dict[str, Any], classes: Sequence[str] | None = None) -> str:
    """Per-class table, the totals and the confusion matrix, as plain text.

    ``classes`` is the row order of ``confusion``; it defaults to the order of
    ``per_class`` as :func:`classification_report` builds it. Pass it for a report read
    back from JSON written with sorted keys (checkpoint metadata is).
    """
    classes = list(classes or report["per_class"])
    width = max(9, *(len(c) for c in classes))
    lines = [f"{'class':<{width}}  precision  recall     f1  support"]
    for name in classes:
        row = report["per_class"][name]
        lines.append(
            f"{name:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  "
            f"{row['f1']:5.3f}  {row['support']:7d}"
        )
    total = sum(report["per_class"][c]["support"] for c in classes)
    lines.append("")
    lines.append(f"{'accuracy':<{width}}  {report['accuracy']:9.4f}  ({total} items)")
    lines.append(f"{'macro F1':<{width}}  {report['macro_f1']:9.4f}")
    extra = [k for k in report if k not in ("accuracy", "macro_f1", "per_class", "confusion")]
    for key in extra:
        value = report[key]
        if isinstance(value, int):
            lines.append(f"{key:<{width}}  {value:9d}")
        elif isinstance(value, float):
            lines.append(f"{key:<{width}}  {value:9.4f}")
    lines.append("")
    lines.append("confusion (rows: true, columns: predicted)")
    short = [c[:7] for c in classes]
    lines.append(" " * width + "  " + " ".join(f"{c:>7}" for c in short))
    for name, row in zip(classes, report["confusion"], strict=True):
        lines.append(f"{name:<{width}}  " + " ".join(f"{v:7d}" for v in row))
    return "\n".join(lines)


def save_confusion_png(
    report: dict[str, Any], classes: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """Draw the confusion matrix (counts, row-normalised colours) to a PNG file."""
    from harstream.models.figures import pyplot, save_figure

    plt = pyplot()

    matrix = np.asarray(report["confusion"], float)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    size = 1.2 + 0.8 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            color = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", color=color)
    ax.set_title(title or f"accuracy {report['accuracy']:.3f}, macro-F1 {report['macro_f1']:.3f}")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of true class")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    """Write ``report`` as indented JSON (parent directories are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
