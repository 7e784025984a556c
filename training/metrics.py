"""Holdout metrics for binary lead scorers: ranking, calibration, top-of-list lift, per-segment slices, MLflow names."""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from collections.abc import Mapping

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

log = logging.getLogger(__name__)

# Shares of leads a sales team can actually work (top 5%, 10%, 20% of the list); whole percentages, because they
# become metric names (lift_top5).
TOP_FRACTIONS: tuple[float, ...] = (0.05, 0.10, 0.20)

# Ten equal-width bins is the convention of Guo et al. (2017) and of most published ECEs, so our figures compare
# with the literature. With rare positives most rows land in the lowest bin; the reliability plot uses quantile bins.
ECE_BINS = 10

# sklearn's long-standing clipping bound: one confidently wrong row costs about 34.5 nats instead of infinity, so a
# single row cannot turn the mean log loss into inf.
LOG_LOSS_EPS = 1e-15

# Below this many rows a slice of a few-percent-positive holdout holds only a handful of positives: its AUC and lift
# swing by tenths from one resample to the next, and a reader would still compare them with the overall figures.
MIN_SEGMENT_ROWS = 200
# What makes a ranking metric stable is the number of each class, not of rows: at a 2 % positive rate, 500 rows hold
# 10 positives and an AUC that swings from 0.3 to 0.9 between resamples. A slice needs this many of both classes.
MIN_SEGMENT_CLASS_ROWS = 30

# Label used for rows whose segment value is missing, so they form a slice of their own rather than vanishing.
MISSING_SEGMENT = "(missing)"

# fraction * n is rounded to this many decimals before ceil, so 0.07 * 100 = 7.000000000000001 selects 7 rows, not 8.
_FRACTION_DECIMALS = 9

# MLflow accepts alphanumerics, underscores, dashes, periods, spaces and slashes in metric names, at most 250 chars.
_MLFLOW_NAME = re.compile(r"[A-Za-z0-9_\-. /]+")
MLFLOW_MAX_NAME_LENGTH = 250


def _top_key(fraction: float) -> str:
    return f"top{round(fraction * 100)}"


METRIC_KEYS: tuple[str, ...] = (
    "roc_auc",
    "pr_auc",
    "log_loss",
    "brier",
    "ece",
    *(f"{kind}_{_top_key(fraction)}" for fraction in TOP_FRACTIONS for kind in ("lift", "capture")),
    "n",
    "positives",
    "positive_rate",
    "mean_score",
)

# What a slice too small to judge still reports: its size, so a reader sees why the rest is blank.
_COUNT_KEYS = ("n", "positives", "positive_rate")


def _first_bad(mask: NDArray[np.bool_], values: NDArray[np.float64]) -> str:
    rows = np.flatnonzero(mask)
    return f"found {float(values[rows[0]]):g} at row {rows[0]} ({rows.size} such row{'s' if rows.size > 1 else ''})"


def check_scores(y: ArrayLike, p: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Labels and probabilities as 1-d arrays, or a ValueError saying which input is wrong, where, and what is accepted.

    Rows are positional: row numbers in messages count from 0 whatever the index of a pandas input.
    """
    try:
        y_arr = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"y must hold only 0 and 1; could not read it as numbers: {exc}") from exc
    try:
        p_arr = np.asarray(p, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"p must hold probabilities in [0, 1]; could not read it as numbers: {exc}") from exc
    if y_arr.ndim != 1 or p_arr.ndim != 1:
        raise ValueError(f"y and p must be 1-d; got shapes {y_arr.shape} and {p_arr.shape}")
    if y_arr.size != p_arr.size:
        raise ValueError(f"y and p must have the same length; got {y_arr.size} labels and {p_arr.size} scores")
    if y_arr.size == 0:
        raise ValueError("y and p are empty; need at least one row")
    bad_y = (y_arr != 0) & (y_arr != 1)
    if bad_y.any():
        raise ValueError(f"y must hold only 0 and 1; {_first_bad(bad_y, y_arr)}")
    not_finite = ~np.isfinite(p_arr)
    if not_finite.any():
        raise ValueError(f"p must be finite probabilities in [0, 1]; {_first_bad(not_finite, p_arr)}")
    out_of_range = (p_arr < 0) | (p_arr > 1)
    if out_of_range.any():
        raise ValueError(f"p must lie in [0, 1]; {_first_bad(out_of_range, p_arr)}")
    return y_arr.astype(np.int64), p_arr


def _rank_order(p: NDArray[np.float64]) -> NDArray[np.intp]:
    # Stable sort on -p: among equal scores the earlier row comes first, so results never depend on the sort
    # algorithm or platform. The price: a scorer with many ties is judged partly by row order.
    return np.argsort(-p, kind="stable")


def expected_calibration_error(y: ArrayLike, p: ArrayLike, *, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error (Guo et al. 2017): bin-weighted mean |observed rate - mean score|.

    Bins are equal-width on [0, 1], each closed on the left and open on the right except the last, which includes 1.
    A perfectly calibrated scorer scores 0; the worst possible is 1.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer; got {n_bins}")
    y_arr, p_arr = check_scores(y, p)
    # floor(p * n_bins) puts 0.3 in [0.3, 0.4) with ten bins, where digitize on linspace edges (0.30000000000000004)
    # would not.
    bins = np.minimum(np.floor(p_arr * n_bins).astype(np.int64), n_bins - 1)
    sum_y = np.bincount(bins, weights=y_arr, minlength=n_bins)
    sum_p = np.bincount(bins, weights=p_arr, minlength=n_bins)
    # sum_b (n_b / n) * |sum_y_b / n_b - sum_p_b / n_b| == sum_b |sum_y_b - sum_p_b| / n; empty bins add 0.
    return float(np.abs(sum_y - sum_p).sum() / y_arr.size)


def lift_and_capture(y: ArrayLike, p: ArrayLike, fraction: float) -> tuple[float, float]:
    """Lift and capture rate in the top `fraction` of leads ranked by score.

    The top is the first ceil(fraction * n) rows by descending score. Ties are broken by row order (stable sort), so
    the answer is deterministic; a scorer with many tied scores at the cut is judged partly by that order.
    Lift is the positive rate in the top divided by the overall positive rate; capture is the share of all positives
    found in the top. Both are NaN when y holds no positives.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1]; got {fraction}")
    y_arr, p_arr = check_scores(y, p)
    n = y_arr.size
    total = int(y_arr.sum())
    if total == 0:
        return math.nan, math.nan
    k = math.ceil(round(fraction * n, _FRACTION_DECIMALS))
    found = int(y_arr[_rank_order(p_arr)[:k]].sum())
    return (found / k) / (total / n), found / total


def cumulative_gains(y: ArrayLike, p: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Share of leads contacted and share of positives captured, working down the list by descending score.

    Both arrays start at 0 and end at 1 (n + 1 points); ties are broken by row order as in `lift_and_capture`.
    """
    y_arr, p_arr = check_scores(y, p)
    total = int(y_arr.sum())
    if total == 0:
        raise ValueError("cumulative gains need at least one positive in y; got none")
    found = np.concatenate([[0], np.cumsum(y_arr[_rank_order(p_arr)])])
    contacted = np.arange(y_arr.size + 1, dtype=np.float64) / y_arr.size
    return contacted, found.astype(np.float64) / total


def binary_metrics(y: ArrayLike, p: ArrayLike) -> dict[str, float]:
    """Ranking, calibration and top-of-list metrics of probabilities `p` against labels `y`, keyed as METRIC_KEYS.

    ROC AUC and PR AUC (average precision) are NaN, not an error, when y holds one class: a slice without
    positives has no ranking to judge. Log loss clips scores to [LOG_LOSS_EPS, 1 - LOG_LOSS_EPS].
    """
    y_arr, p_arr = check_scores(y, p)
    n = y_arr.size
    positives = int(y_arr.sum())
    both_classes = 0 < positives < n
    clipped = np.clip(p_arr, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    metrics: dict[str, float] = {
        "roc_auc": float(roc_auc_score(y_arr, p_arr)) if both_classes else math.nan,
        "pr_auc": float(average_precision_score(y_arr, p_arr)) if both_classes else math.nan,
        "log_loss": float(log_loss(y_arr, clipped, labels=[0, 1])),
        "brier": float(np.mean((p_arr - y_arr) ** 2)),
        "ece": expected_calibration_error(y_arr, p_arr),
    }
    for fraction in TOP_FRACTIONS:
        lift, capture = lift_and_capture(y_arr, p_arr, fraction)
        metrics[f"lift_{_top_key(fraction)}"] = lift
        metrics[f"capture_{_top_key(fraction)}"] = capture
    metrics.update(
        n=float(n),
        positives=float(positives),
        positive_rate=positives / n,
        mean_score=float(p_arr.mean()),
    )
    return metrics


def segment_metrics(
    y: ArrayLike,
    p: ArrayLike,
    segments: pd.DataFrame,
    *,
    min_rows: int = MIN_SEGMENT_ROWS,
    min_class_rows: int = MIN_SEGMENT_CLASS_ROWS,
) -> pd.DataFrame:
    """binary_metrics for every value of every column of `segments` (source, region, size band, ...), one row each.

    Rows of `segments` line up with y and p by position. Missing values form their own slice, MISSING_SEGMENT.
    A slice with fewer than `min_rows` rows, or fewer than `min_class_rows` positives or negatives, reports only n,
    positives and positive_rate and NaN elsewhere: its other metrics would be mostly noise (see MIN_SEGMENT_ROWS).
    Sorted by segment, then n descending, then value.
    """
    y_arr, p_arr = check_scores(y, p)
    if len(segments) != y_arr.size:
        raise ValueError(f"segments must have one row per score; got {len(segments)} rows for {y_arr.size} scores")
    if isinstance(y, pd.Series) and not y.index.equals(segments.index):
        raise ValueError("y and segments have different indexes; align them (or pass arrays) so rows match")
    rows: list[dict[str, object]] = []
    for column in segments.columns:
        raw = segments[column]
        labels = raw.astype(str).to_numpy(dtype=object)
        labels[raw.isna().to_numpy()] = MISSING_SEGMENT
        for value in pd.unique(labels):
            mask = labels == value
            count = int(mask.sum())
            positives = int(y_arr[mask].sum())
            if count >= min_rows and min(positives, count - positives) >= min_class_rows:
                metrics = binary_metrics(y_arr[mask], p_arr[mask])
            else:
                log.debug("segment %s=%s: %d rows, %d positives: too few to judge", column, value, count, positives)
                metrics = dict.fromkeys(METRIC_KEYS, math.nan)
                metrics.update(n=float(count), positives=float(positives), positive_rate=positives / count)
            rows.append({"segment": str(column), "value": str(value), **metrics})
    frame = pd.DataFrame(rows, columns=["segment", "value", *METRIC_KEYS])
    frame[list(METRIC_KEYS)] = frame[list(METRIC_KEYS)].astype(np.float64)
    return frame.sort_values(["segment", "n", "value"], ascending=[True, False, True], kind="stable", ignore_index=True)


def _slug(text: str) -> str:
    # Accents are folded to ASCII first (Zürich -> zurich) so a value keeps its letters instead of losing them to "_".
    ascii_text = unicodedata.normalize("NFKD", text.casefold()).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "_", ascii_text).strip("_")


def metric_name(metric: str, split: str = "holdout", segment: str | None = None, value: str | None = None) -> str:
    """MLflow-safe metric name: `roc_auc_holdout`, or `roc_auc_holdout.region.north_america` for a segment value.

    Segment names and values are slugged: casefolded, accents folded to ASCII, every run of characters other than
    a-z and 0-9 replaced by one `_`, leading and trailing `_` stripped ("North America / EMEA" -> north_america_emea).
    """
    if (segment is None) != (value is None):
        raise ValueError(f"give both segment and value or neither; got segment={segment!r}, value={value!r}")
    name = f"{metric}_{split}"
    if segment is not None and value is not None:
        parts = {"segment": segment, "value": value}
        slugs = {key: _slug(text) for key, text in parts.items()}
        for key, slug in slugs.items():
            if not slug:
                raise ValueError(f"{key} {parts[key]!r} has no letters or digits to name a metric with")
        name = f"{name}.{slugs['segment']}.{slugs['value']}"
    if not _MLFLOW_NAME.fullmatch(name):
        raise ValueError(
            f"metric name {name!r} has characters MLflow rejects; use letters, digits, _ - . / and spaces only"
        )
    return name


def to_mlflow_metrics(
    overall: Mapping[str, float], by_segment: pd.DataFrame | None, *, prefix: str = "", split: str = "holdout"
) -> dict[str, float]:
    """Overall and per-segment metrics flattened to `{prefix}{metric_name(...)}: value`, ready for mlflow.log_metrics.

    NaN values are dropped: MLflow stores them, but its UI charts and compares them badly, and an absent metric reads
    correctly as "not measured". Counts (n, positives) are kept; they tell a reader how much each figure rests on.
    Two values slugging to the same name (e.g. "EMEA" and "emea") raise rather than silently overwrite each other.
    """
    out: dict[str, float] = {}
    origin: dict[str, str] = {}

    def put(name: str, value: float, where: str) -> None:
        full = f"{prefix}{name}"
        if not _MLFLOW_NAME.fullmatch(full):
            raise ValueError(f"metric name {full!r} has characters MLflow rejects; check prefix {prefix!r}")
        if len(full) > MLFLOW_MAX_NAME_LENGTH:
            raise ValueError(f"metric name {full!r} is longer than MLflow's {MLFLOW_MAX_NAME_LENGTH} characters")
        if full in origin:
            raise ValueError(f"metric name {full!r} would be written by both {origin[full]} and {where}")
        origin[full] = where
        if not math.isnan(value):
            out[full] = value

    for key, figure in overall.items():
        put(metric_name(key, split), float(figure), f"overall {key}")
    if by_segment is not None:
        missing = {"segment", "value"} - set(by_segment.columns)
        if missing:
            raise ValueError(f"by_segment must have columns segment and value; missing {sorted(missing)}")
        keys = [column for column in by_segment.columns if column not in ("segment", "value")]
        for record in by_segment.to_dict(orient="records"):
            segment, segment_value = str(record["segment"]), str(record["value"])
            for key in keys:
                where = f"{key} of {segment}={segment_value!r}"
                put(metric_name(str(key), split, segment, segment_value), float(record[key]), where)
    return out
