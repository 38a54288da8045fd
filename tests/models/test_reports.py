"""Classification reports (``models.reports``): keys, values, text and confusion PNG."""

from __future__ import annotations

import pytest

from harstream.models import reports


def test_classification_report_keys_and_values(tmp_path):
    classes = ["walking", "jogging", "sitting"]
    report = reports.classification_report(
        ["walking", "walking", "jogging", "sitting"], [0, 1, 1, 2], classes
    )
    assert list(report) == ["accuracy", "macro_f1", "per_class", "confusion"]
    assert report["accuracy"] == 0.75
    assert report["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert report["per_class"]["walking"] == {
        "precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2,
    }  # fmt: skip
    assert report["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    text = reports.format_report({**report, "windows": 4})
    assert "macro F1" in text and "windows" in text and "0.7500" in text
    assert reports.save_confusion_png(report, classes, tmp_path / "c.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="'running' is not one of the classes"):
        reports.classification_report(["running"], ["walking"], classes)
