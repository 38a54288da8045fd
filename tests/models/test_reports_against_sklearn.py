"""harstream.models.reports.classification_report computes with numpy what scikit-learn computes.

Serving tools (``replay --compare``, ``demo``) score predictions without scikit-learn
installed; these tests hold the numpy figures to scikit-learn's on any labelling.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from harstream.models import reports

CLASSES = ["walking", "jogging", "sitting", "standing", "stairs"]

labels = st.lists(
    st.tuples(st.integers(0, len(CLASSES) - 1), st.integers(0, len(CLASSES) - 1)),
    min_size=1,
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(labels)
def test_report_matches_scikit_learn(pairs):
    true = np.array([t for t, _ in pairs])
    pred = np.array([p for _, p in pairs])
    every = list(range(len(CLASSES)))
    report = reports.classification_report(true, pred, CLASSES)

    precision, recall, f1, support = precision_recall_fscore_support(
        true, pred, labels=every, zero_division=0
    )
    present = sorted(set(true.tolist()) | set(pred.tolist()))
    macro = precision_recall_fscore_support(
        true, pred, labels=present, average="macro", zero_division=0
    )[2]
    assert report["accuracy"] == pytest.approx(accuracy_score(true, pred))
    assert report["macro_f1"] == pytest.approx(macro)
    assert report["confusion"] == confusion_matrix(true, pred, labels=every).tolist()
    for i, name in enumerate(CLASSES):
        row = report["per_class"][name]
        assert row["precision"] == pytest.approx(precision[i])
        assert row["recall"] == pytest.approx(recall[i])
        assert row["f1"] == pytest.approx(f1[i])
        assert row["support"] == support[i]


def test_class_indices_outside_the_classes_are_refused():
    with pytest.raises(ValueError, match="must lie in 0..4"):
        reports.classification_report([0, 5], [0, 1], CLASSES)
