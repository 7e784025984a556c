"""Hand-computed cases for ECE, lift and capture, the metric set, per-segment slices and MLflow metric names."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from numpy.typing import NDArray
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

from training.metrics import (
    METRIC_KEYS,
    MISSING_SEGMENT,
    TOP_FRACTIONS,
    binary_metrics,
    cumulative_gains,
    expected_calibration_error,
    lift_and_capture,
    metric_name,
    segment_metrics,
    to_mlflow_metrics,
)

EXPECTED_KEYS = [
    "roc_auc",
    "pr_auc",
    "log_loss",
    "brier",
    "ece",
    "lift_top5",
    "capture_top5",
    "lift_top10",
    "capture_top10",
    "lift_top20",
    "capture_top20",
    "n",
    "positives",
    "positive_rate",
    "mean_score",
]


def _scored(n: int, seed: int = 0) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.0, 0.6, size=n)
    y = (rng.uniform(size=n) < p).astype(np.int64)
    return y, p


# --- expected calibration error -----------------------------------------------------------------------------------


def test_ece_is_zero_when_every_bin_is_calibrated() -> None:
    # Bin [0.2, 0.3): mean score 0.25, one positive in four. Bin [0.7, 0.8): mean score 0.75, three in four.
    p = [0.25] * 4 + [0.75] * 4
    y = [1, 0, 0, 0, 1, 1, 1, 0]
    assert expected_calibration_error(y, p) == pytest.approx(0.0)


def test_ece_two_bin_example_by_hand() -> None:
    # Bin [0, 0.5): p 0.1..0.4 (mean 0.25), y mean 0.5 -> gap 0.25, weight 4/6.
    # Bin [0.5, 1]: p 0.8 and 1.0 (mean 0.9, 1.0 belongs to the last bin), y mean 1 -> gap 0.1, weight 2/6.
    p = [0.1, 0.2, 0.3, 0.4, 0.8, 1.0]
    y = [1, 1, 0, 0, 1, 1]
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.25 * 4 / 6 + 0.1 * 2 / 6)


def test_ece_bin_edges_are_closed_on_the_left() -> None:
    # 0.3 and 0.35 share the bin [0.3, 0.4): |0.5 - 0.325| = 0.175. Were 0.3 put in [0.2, 0.3) it would be 0.475.
    assert expected_calibration_error([0, 1], [0.3, 0.35]) == pytest.approx(0.175)


def test_ece_rejects_non_positive_bins() -> None:
    with pytest.raises(ValueError, match="n_bins must be a positive integer"):
        expected_calibration_error([0, 1], [0.2, 0.8], n_bins=0)


# --- lift and capture ---------------------------------------------------------------------------------------------

# Ten leads, three positives, at ranks 1, 3 and 9 by score.
RANKED_Y = np.array([1, 0, 1, 0, 0, 0, 0, 0, 1, 0])
RANKED_P = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])


@pytest.mark.parametrize(
    ("fraction", "lift", "capture"),
    [
        (0.1, (1 / 1) / 0.3, 1 / 3),  # top 1: one positive
        (0.2, (1 / 2) / 0.3, 1 / 3),  # top 2: one positive
        (0.25, (2 / 3) / 0.3, 2 / 3),  # ceil(2.5) = 3 rows: two positives
        (0.3, (2 / 3) / 0.3, 2 / 3),
        (1.0, 1.0, 1.0),
    ],
)
def test_lift_and_capture_on_a_ranked_list(fraction: float, lift: float, capture: float) -> None:
    order = np.random.default_rng(1).permutation(RANKED_Y.size)  # input order must not matter
    got = lift_and_capture(RANKED_Y[order], RANKED_P[order], fraction)
    assert got == pytest.approx((lift, capture))


def test_lift_ties_are_broken_by_row_order() -> None:
    p = [0.5, 0.5, 0.5, 0.5]
    assert lift_and_capture([1, 0, 0, 0], p, 0.25) == pytest.approx((4.0, 1.0))
    assert lift_and_capture([0, 1, 0, 0], p, 0.25) == pytest.approx((0.0, 0.0))


def test_lift_cut_is_not_inflated_by_float_error() -> None:
    # 0.07 * 100 == 7.000000000000001: the top must still be 7 rows, so 7 of the 8 leading positives are captured.
    y = np.array([1] * 8 + [0] * 92)
    p = np.linspace(1.0, 0.0, 100)
    _, capture = lift_and_capture(y, p, 0.07)
    assert capture == pytest.approx(7 / 8)


def test_lift_and_capture_are_nan_without_positives() -> None:
    lift, capture = lift_and_capture([0, 0, 0], [0.1, 0.2, 0.3], 0.5)
    assert math.isnan(lift)
    assert math.isnan(capture)


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_lift_rejects_fractions_outside_unit_interval(fraction: float) -> None:
    with pytest.raises(ValueError, match=r"fraction must lie in \(0, 1\]"):
        lift_and_capture([0, 1], [0.1, 0.9], fraction)


def test_cumulative_gains_by_hand() -> None:
    contacted, captured = cumulative_gains([0, 1, 1, 0], [0.1, 0.9, 0.4, 0.6])
    np.testing.assert_allclose(contacted, [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(captured, [0, 0.5, 0.5, 1.0, 1.0])


# --- binary_metrics -----------------------------------------------------------------------------------------------


def test_binary_metrics_keys_are_exactly_the_documented_ones() -> None:
    y, p = _scored(300)
    assert list(binary_metrics(y, p)) == EXPECTED_KEYS
    assert list(METRIC_KEYS) == EXPECTED_KEYS
    assert TOP_FRACTIONS == (0.05, 0.10, 0.20)


def test_binary_metrics_match_sklearn() -> None:
    y, p = _scored(500)
    metrics = binary_metrics(pd.Series(y), pd.Series(p))
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert metrics["pr_auc"] == pytest.approx(average_precision_score(y, p))
    assert metrics["brier"] == pytest.approx(brier_score_loss(y, p))
    assert metrics["log_loss"] == pytest.approx(log_loss(y, p))
    assert metrics["n"] == 500
    assert metrics["positives"] == y.sum()
    assert metrics["positive_rate"] == pytest.approx(y.mean())
    assert metrics["mean_score"] == pytest.approx(p.mean())
    assert (metrics["lift_top10"], metrics["capture_top10"]) == lift_and_capture(y, p, 0.10)


def test_one_class_gives_nan_auc_not_an_error() -> None:
    metrics = binary_metrics([0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4])
    assert math.isnan(metrics["roc_auc"])
    assert math.isnan(metrics["pr_auc"])
    assert math.isnan(metrics["lift_top20"])
    assert math.isfinite(metrics["log_loss"])
    assert metrics["positives"] == 0


def test_log_loss_clips_confident_mistakes() -> None:
    metrics = binary_metrics([1, 0], [0.0, 1.0])
    # Each row costs about -log(1e-15) = 34.5 nats rather than infinity (1 - (1 - 1e-15) is 1e-15 to float precision).
    expected = (-math.log(1e-15) - math.log(1 - (1 - 1e-15))) / 2
    assert metrics["log_loss"] == pytest.approx(expected)
    assert metrics["log_loss"] == pytest.approx(34.54, abs=0.01)


@pytest.mark.parametrize(
    ("y", "p", "message"),
    [
        ([0, 1, 0], [0.1, float("nan"), 0.3], r"p must be finite .* nan at row 1"),
        ([0, 1, 0], [0.1, 0.2, 1.5], r"p must lie in \[0, 1\]; found 1.5 at row 2"),
        ([0, 2, 0], [0.1, 0.2, 0.3], r"y must hold only 0 and 1; found 2 at row 1"),
        ([0, 1, 0], [0.1, 0.2], r"same length; got 3 labels and 2 scores"),
        ([], [], r"empty"),
        ([0, 1], ["a", "b"], r"p must hold probabilities"),
    ],
    ids=["nan-p", "p-above-1", "y-is-2", "length-mismatch", "empty", "non-numeric-p"],
)
def test_bad_inputs_raise_with_clear_messages(y: list[object], p: list[object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        binary_metrics(y, p)  # type: ignore[arg-type]


# --- segment_metrics ----------------------------------------------------------------------------------------------


def _segmented() -> tuple[NDArray[np.int64], NDArray[np.float64], pd.DataFrame]:
    y, p = _scored(500, seed=3)
    region = ["north"] * 300 + ["south"] * 150 + [None] * 50
    source = ["web"] * 250 + ["event"] * 250
    return y, p, pd.DataFrame({"source": source, "region": region})


def test_segment_metrics_shape_order_and_missing_group() -> None:
    y, p, segments = _segmented()
    frame = segment_metrics(y, p, segments, min_rows=200)
    assert list(frame.columns) == ["segment", "value", *EXPECTED_KEYS]
    assert list(zip(frame["segment"], frame["value"], frame["n"], strict=True)) == [
        ("region", "north", 300),
        ("region", "south", 150),
        ("region", MISSING_SEGMENT, 50),
        ("source", "event", 250),
        ("source", "web", 250),
    ]


def _slice(frame: pd.DataFrame, segment: str, value: str) -> dict[str, float]:
    match = frame[(frame["segment"] == segment) & (frame["value"] == value)]
    assert len(match) == 1
    return {key: float(match[key].iloc[0]) for key in EXPECTED_KEYS}


def test_segment_metrics_small_slices_report_only_counts() -> None:
    y, p, segments = _segmented()
    frame = segment_metrics(y, p, segments, min_rows=200)
    judged = [key for key in EXPECTED_KEYS if key not in ("n", "positives", "positive_rate")]
    for value, rows in [("south", slice(300, 450)), (MISSING_SEGMENT, slice(450, 500))]:
        small = _slice(frame, "region", value)
        assert small["n"] == rows.stop - rows.start
        assert small["positives"] == y[rows].sum()
        assert small["positive_rate"] == pytest.approx(y[rows].mean())
        assert all(math.isnan(small[key]) for key in judged)
    assert _slice(frame, "region", "north") == pytest.approx(binary_metrics(y[:300], p[:300]))


def test_segment_metrics_refuses_misaligned_rows() -> None:
    y, p, segments = _segmented()
    with pytest.raises(ValueError, match="one row per score"):
        segment_metrics(y, p, segments.iloc[:10])
    with pytest.raises(ValueError, match="different indexes"):
        segment_metrics(pd.Series(y, index=np.arange(500) + 7), p, segments)


# --- MLflow names -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("roc_auc",), "roc_auc_holdout"),
        (("roc_auc", "valid"), "roc_auc_valid"),
        (("roc_auc", "holdout", "region", "North America / EMEA"), "roc_auc_holdout.region.north_america_emea"),
        (("lift_top10", "holdout", "Size Band", " 51-200 staff "), "lift_top10_holdout.size_band.51_200_staff"),
        (("n", "holdout", "city", "Zürich"), "n_holdout.city.zurich"),
    ],
)
def test_metric_name_slugs_segments_and_values(args: tuple[str, ...], expected: str) -> None:
    assert metric_name(*args) == expected


def test_metric_name_rejects_half_a_segment_and_unsluggable_values() -> None:
    with pytest.raises(ValueError, match="both segment and value"):
        metric_name("roc_auc", segment="region")
    with pytest.raises(ValueError, match="no letters or digits"):
        metric_name("roc_auc", "holdout", "region", "???")


def test_to_mlflow_metrics_drops_nan_and_names_with_prefix() -> None:
    y, p, segments = _segmented()
    overall = {"roc_auc": 0.8, "pr_auc": math.nan, "n": 500.0}
    by_segment = segment_metrics(y, p, segments[["region"]], min_rows=200)
    logged = to_mlflow_metrics(overall, by_segment, prefix="readiness_")
    north_auc = binary_metrics(y[:300], p[:300])["roc_auc"]
    assert logged["readiness_roc_auc_holdout"] == 0.8
    assert logged["readiness_n_holdout"] == 500.0
    assert "readiness_pr_auc_holdout" not in logged
    assert logged["readiness_roc_auc_holdout.region.north"] == pytest.approx(north_auc)
    assert logged["readiness_n_holdout.region.south"] == 150
    assert logged["readiness_positives_holdout.region.missing"] == y[450:].sum()
    assert "readiness_roc_auc_holdout.region.south" not in logged
    assert not any(math.isnan(value) for value in logged.values())


def test_to_mlflow_metrics_without_segments_and_other_split() -> None:
    assert to_mlflow_metrics({"brier": 0.1}, None, split="test") == {"brier_test": 0.1}


def test_to_mlflow_metrics_refuses_colliding_names() -> None:
    by_segment = pd.DataFrame({"segment": ["region", "region"], "value": ["EMEA", "emea"], "n": [300.0, 250.0]})
    with pytest.raises(ValueError, match=r"n_holdout.region.emea' would be written by both"):
        to_mlflow_metrics({}, by_segment)
