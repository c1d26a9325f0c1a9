"""``metrics.evaluation`` and ``onnxsight evaluate``: every method's maps scored by every metric, ranked."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

import onnxsight
from onnxsight.cli.app import app
from onnxsight.errors import InvalidArgument
from onnxsight.metrics import deletion, max_sensitivity, sparseness
from onnxsight.metrics.evaluation import evaluate


@pytest.fixture(scope="module")
def x(digits_data):
    return digits_data.x_test[:6]


def test_scores_are_the_metrics_of_each_methods_maps_and_ranks_follow_better(model, x):
    result = evaluate(model, x, methods=["saliency", "gradcam"], metrics=["deletion", "max-sensitivity", "sparseness"],
                      batch_size=32)
    target = model.predict(x).argmax(axis=1)
    maps = {"saliency": onnxsight.saliency(model, x, target), "gradcam": onnxsight.gradcam(model, x, target)}
    for method, m in maps.items():
        np.testing.assert_allclose(result.scores[method]["deletion"], deletion(model, x, m, target), rtol=1e-9)
        np.testing.assert_allclose(result.scores[method]["sparseness"], sparseness(m), rtol=1e-12)
    np.testing.assert_allclose(result.scores["saliency"]["max-sensitivity"],
                               max_sensitivity(model, x, lambda mm, xx, t: onnxsight.saliency(mm, xx, t), target),
                               rtol=1e-6)
    assert set(result.curves) == {"deletion"} and result.curves["deletion"]["gradcam"].shape == (6, 101)
    for metric in ("deletion", "max-sensitivity", "sparseness"):
        rows = {r["method"]: r for r in result.table if r["metric"] == metric}
        means = {method: result.scores[method][metric].mean() for method in maps}
        best = (min if rows["saliency"]["better"] == "lower" else max)(means, key=means.get)
        assert rows[best]["rank"] == 1 and sorted(r["rank"] for r in rows.values()) == [1, 2]
        values = result.scores["saliency"][metric]
        assert rows["saliency"]["ci95"] == pytest.approx(1.96 * values.std(ddof=1) / np.sqrt(6))


def test_unknown_methods_and_metrics_are_one_line_errors(model, x):
    with pytest.raises(InvalidArgument, match="unknown method 'salency'; choose from saliency"):
        evaluate(model, x, methods=["salency"])
    with pytest.raises(InvalidArgument, match="unknown metric 'deleton'"):
        evaluate(model, x, metrics=["deleton"])


def test_the_evaluate_command_writes_the_table_and_curves(mnist_onnx, tmp_path):
    result = CliRunner().invoke(app, ["evaluate", str(mnist_onnx), "--data", "digits", "--count", "4", "--method",
                                      "saliency", "--method", "lrp", "--metric", "deletion", "--metric", "insertion",
                                      "-o", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "ev" / "evaluation.csv").open()))
    assert [(r["method"], r["metric"]) for r in rows] == [("saliency", "deletion"), ("lrp", "deletion"),
                                                          ("saliency", "insertion"), ("lrp", "insertion")]
    summary = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert len(summary["scores"]["lrp"]["insertion"]) == 4 and (tmp_path / "ev" / "curves.png").stat().st_size > 0
    again = CliRunner().invoke(app, ["evaluate", str(mnist_onnx), "--data", "digits", "--count", "4", "-o",
                                     str(tmp_path / "ev"), "--metric", "sparseness"])
    assert again.exit_code == 1 and "exists" in again.output  # nothing is overwritten without --force
