"""Evaluation charts (ROC, precision-recall, reliability, cumulative gains, SHAP summary) written as PNG files."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from numpy.typing import ArrayLike, NDArray
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from training.metrics import check_scores, cumulative_gains, expected_calibration_error, lift_and_capture

log = logging.getLogger(__name__)

Curves = Mapping[str, tuple[ArrayLike, ArrayLike]]
"""Scorer name -> (labels, probabilities) on the same holdout: a model and its baselines on one chart."""
Scale = Literal["linear", "log"]

# Sharp in the MLflow artifact viewer and in a model card, at roughly 100 KB a chart.
DPI = 150
FIGSIZE = (6.0, 5.0)
# Share of leads contacted whose capture rate the gains chart quotes in its legend: a typical weekly call list.
GAINS_LABEL_FRACTION = 0.10
# Histogram bins under the reliability diagram: fine enough to show where scores pile up, coarse enough to read.
SCORE_HISTOGRAM_BINS = 50
REFERENCE_COLOUR = "0.5"
# The reliability diagram's axes reach this quantile of every scorer's scores (and every point of every curve), times
# the margin: the few highest scores of a long tail do not squeeze the rest of the chart into a corner.
CALIBRATION_VIEW_QUANTILE = 0.99
CALIBRATION_VIEW_MARGIN = 1.1
# On log axes the view starts this factor below the lowest point drawn; with no point to go by, it spans two decades.
CALIBRATION_LOG_MARGIN = 1.5
CALIBRATION_LOG_DECADES = 100.0

# SHAP summary layout: inches of figure height per feature row, and how far a row's swarm may spread either side
# of its centre line, in row gaps (under half, so neighbouring rows never touch).
SHAP_ROW_HEIGHT = 0.35
SHAP_MAX_JITTER = 0.4
# x bins used to estimate how crowded a point's neighbourhood is, which sets how far it is spread vertically.
SHAP_DENSITY_BINS = 50
SHAP_MISSING_COLOUR = "0.6"
SHAP_COLOURMAP = "coolwarm"


def _checked(curves: Curves, *, need_both_classes: bool) -> dict[str, tuple[NDArray[np.int64], NDArray[np.float64]]]:
    if not curves:
        raise ValueError("curves is empty; give at least one scorer name -> (y, p)")
    checked: dict[str, tuple[NDArray[np.int64], NDArray[np.float64]]] = {}
    for name, (y, p) in curves.items():
        try:
            y_arr, p_arr = check_scores(y, p)
        except ValueError as exc:
            raise ValueError(f"scorer {name!r}: {exc}") from exc
        positives = int(y_arr.sum())
        if need_both_classes and not 0 < positives < y_arr.size:
            raise ValueError(f"scorer {name!r}: this chart needs both classes in y; got {positives} of {y_arr.size}")
        checked[name] = (y_arr, p_arr)
    return checked


def _new_figure(figsize: tuple[float, float] = FIGSIZE) -> Figure:
    # A bare Figure renders through Agg on savefig: no pyplot state, no backend choice, no display needed.
    return Figure(figsize=figsize, layout="constrained")


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    fig.savefig(out, dpi=DPI)
    log.debug("wrote %s", out)
    return out


def _reference_line(ax: Axes, x: Sequence[float], y: Sequence[float], label: str) -> None:
    # Dashed grey for what a scorer is judged against (random, perfect, base rate), so scorers keep the colours.
    ax.plot(x, y, label=label, color=REFERENCE_COLOUR, linestyle="--", linewidth=1.0)


def _unit_square(ax: Axes, *, title: str, xlabel: str, ylabel: str) -> None:
    ax.set(xlim=(0.0, 1.0), ylim=(0.0, 1.02), title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")


def plot_roc(curves: Curves, path: str | os.PathLike[str], *, title: str) -> Path:
    """ROC curve of each scorer, AUC in its legend label, with the diagonal of a random ranking."""
    checked = _checked(curves, need_both_classes=True)
    fig = _new_figure()
    ax = fig.add_subplot()
    for name, (y, p) in checked.items():
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, p):.3f})")
    _reference_line(ax, [0, 1], [0, 1], "random (AUC 0.500)")
    _unit_square(ax, title=title, xlabel="false positive rate", ylabel="true positive rate")
    return _save(fig, path)


def plot_precision_recall(curves: Curves, path: str | os.PathLike[str], *, title: str) -> Path:
    """Precision-recall curve of each scorer, average precision in its label, with the base rate of the first scorer.

    The base rate is the precision of contacting leads at random; the scorers are expected to share one holdout.
    """
    checked = _checked(curves, need_both_classes=True)
    fig = _new_figure()
    ax = fig.add_subplot()
    for name, (y, p) in checked.items():
        precision, recall, _ = precision_recall_curve(y, p)
        # Steps, not straight segments: interpolating linearly between PR points overstates precision.
        ax.plot(recall, precision, drawstyle="steps-post", label=f"{name} (AP {average_precision_score(y, p):.3f})")
    base_rate = float(next(iter(checked.values()))[0].mean())
    _reference_line(ax, [0, 1], [base_rate, base_rate], f"base rate ({base_rate:.1%})")
    _unit_square(ax, title=title, xlabel="recall", ylabel="precision")
    return _save(fig, path)


def _calibration_reach(scores: Sequence[NDArray[np.float64]], points: Sequence[NDArray[np.float64]]) -> float:
    """Where a reliability diagram's axes end: past the quantile of every scorer's scores and every curve point.

    Observed rates count as much as mean scores, so no point falls off the chart; the margin keeps the last points off
    the frame, and the end is rounded up to a readable tick, at most 1.
    """
    reach = max(
        [float(np.quantile(p, CALIBRATION_VIEW_QUANTILE)) for p in scores]
        + [float(xy.max()) for xy in points if xy.size]
    )
    if reach <= 0.0:
        return 1.0
    wanted = reach * CALIBRATION_VIEW_MARGIN
    step = 10.0 ** np.floor(np.log10(wanted)) / 2  # 0.23 -> steps of 0.05 -> 0.25; 0.046 -> 0.005 -> 0.05
    return float(min(1.0, np.ceil(wanted / step) * step))


def calibration_figure(curves: Curves, *, title: str, n_bins: int = 10, scale: Scale = "linear") -> Figure:
    """The reliability diagram of `plot_calibration`, as a figure (tests read its axes)."""
    checked = _checked(curves, need_both_classes=False)
    binned = {name: calibration_curve(y, p, n_bins=n_bins, strategy="quantile") for name, (y, p) in checked.items()}
    reach = _calibration_reach([p for _, p in checked.values()], [np.concatenate(xy) for xy in binned.values()])
    if scale == "log":
        drawn = np.concatenate([np.concatenate(xy) for xy in binned.values()])
        drawn = drawn[drawn > 0]
        floor = float(drawn.min()) / CALIBRATION_LOG_MARGIN if drawn.size else reach / CALIBRATION_LOG_DECADES
        edges = np.geomspace(floor, reach, SCORE_HISTOGRAM_BINS + 1).tolist()
    else:
        floor = 0.0
        edges = np.linspace(0.0, reach, SCORE_HISTOGRAM_BINS + 1).tolist()
    fig = _new_figure((FIGSIZE[0], FIGSIZE[1] * 1.3))
    grid = fig.add_gridspec(2, 1, height_ratios=[3, 1])
    ax = fig.add_subplot(grid[0])
    hist_ax = fig.add_subplot(grid[1], sharex=ax)
    for name, (y, p) in checked.items():
        observed, predicted = binned[name]
        label = f"{name} (ECE {expected_calibration_error(y, p):.3f})"
        if scale == "log":
            empty = observed <= 0
            # A bin without a positive has no place on a log axis; the legend says how many were left out.
            observed, predicted = observed[~empty], predicted[~empty]
            label += f", {int(empty.sum())} bin(s) with no positive not drawn" if empty.any() else ""
        (line,) = ax.plot(predicted, observed, marker="o", markersize=4, label=label)
        hist_ax.hist(p, bins=edges, histtype="step", color=line.get_color())
    _reference_line(ax, [floor, reach], [floor, reach], "perfectly calibrated")
    ax.grid(alpha=0.3, which="both" if scale == "log" else "major")
    ax.legend(loc="upper left", fontsize="small")
    ax.tick_params(labelbottom=False)
    ax.set_ylabel("observed positive rate")
    if scale == "log":
        ax.set(xscale="log", yscale="log")
        hist_ax.set_xscale("log")
    # Square view: the diagonal stays at 45 degrees, so a gap above or below it reads the same everywhere.
    ax.set_xlim(floor, reach)
    ax.set_ylim(floor, reach * (1.02 if reach >= 1.0 else 1.0))
    inside = min(float(np.mean((p >= floor) & (p <= reach))) for _, p in checked.values())
    shown = f"scores {floor:.2g}-{reach:.2g}" if scale == "log" else f"scores 0-{reach:g}"
    if reach < 1.0 or floor > 0.0:
        share = "all leads" if inside == 1.0 else f"{inside:.1%} or more of each scorer's leads"
        ax.set_title(f"{title}\n{shown} shown (of 0-1): {share}", fontsize="medium")
    else:
        ax.set_title(title)
    axis = "score, log scale" if scale == "log" else "score"
    hist_ax.set(xlabel=f"{axis} (above: mean score in bin)", ylabel="leads")
    hist_ax.grid(alpha=0.3)
    return fig


def plot_calibration(
    curves: Curves, path: str | os.PathLike[str], *, title: str, n_bins: int = 10, scale: Scale = "linear"
) -> Path:
    """Reliability diagram (observed rate against mean score per bin, ECE in the label) over a histogram of scores.

    Bins are score quantiles, so rare-positive data where nearly every score is near 0 still gets n_bins points
    spread across the range; the histogram shows how many leads each part of the curve speaks for. Both axes end
    just past where the scores and the curves are (see `CALIBRATION_VIEW_QUANTILE`), not at 1: with readiness
    probabilities all under 0.15, a 0-1 square draws the whole curve as a dot in a corner. The title says the range
    shown and the share of leads inside it. `scale="log"` draws both axes on a log scale, which spreads the quantile
    bins of rare-positive data evenly (bins with no positive cannot be drawn there, and the legend counts them).
    """
    return _save(calibration_figure(curves, title=title, n_bins=n_bins, scale=scale), path)


def plot_cumulative_gains(curves: Curves, path: str | os.PathLike[str], *, title: str) -> Path:
    """Share of positives captured against share of leads contacted, best first, with random and perfect references.

    The perfect line uses the first scorer's positive rate; the scorers are expected to share one holdout.
    """
    checked = _checked(curves, need_both_classes=True)
    fig = _new_figure()
    ax = fig.add_subplot()
    for name, (y, p) in checked.items():
        contacted, captured = cumulative_gains(y, p)
        _, capture = lift_and_capture(y, p, GAINS_LABEL_FRACTION)
        ax.plot(contacted, captured, label=f"{name} (top {GAINS_LABEL_FRACTION:.0%} captures {capture:.0%})")
    _reference_line(ax, [0, 1], [0, 1], "random")
    prevalence = float(next(iter(checked.values()))[0].mean())
    ax.plot([0, prevalence, 1], [0, 1, 1], label=f"perfect (positive rate {prevalence:.1%})", color="0.2", lw=1.0)
    _unit_square(ax, title=title, xlabel="share of leads contacted", ylabel="share of positives captured")
    return _save(fig, path)


def _check_contributions(
    contributions: NDArray[np.float64], feature_names: Sequence[str]
) -> tuple[NDArray[np.float64], list[str]]:
    matrix = np.asarray(contributions, dtype=np.float64)
    names = [str(name) for name in feature_names]
    if matrix.ndim != 2:
        raise ValueError(f"contributions must be a rows x features matrix; got shape {matrix.shape}")
    if matrix.shape[1] == len(names) + 1:
        raise ValueError(
            f"contributions has {matrix.shape[1]} columns for {len(names)} features; drop the trailing bias column "
            "that LightGBM's predict(..., pred_contrib=True) appends"
        )
    if matrix.shape[1] != len(names):
        raise ValueError(f"contributions has {matrix.shape[1]} columns but feature_names has {len(names)} names")
    if len(set(names)) != len(names):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"feature_names must be unique; repeated: {duplicates}")
    if not np.isfinite(matrix).all():
        raise ValueError("contributions must be finite; found NaN or infinite values")
    return matrix, names


def mean_abs_contributions(contributions: NDArray[np.float64], feature_names: Sequence[str]) -> pd.Series[float]:
    """Mean |SHAP contribution| per feature, largest first (ties keep feature order): global importance for cards."""
    matrix, names = _check_contributions(contributions, feature_names)
    if matrix.shape[0] == 0:
        raise ValueError("contributions has no rows")
    means = np.abs(matrix).mean(axis=0)
    order = np.argsort(-means, kind="stable")
    return pd.Series(means[order], index=[names[i] for i in order], name="mean_abs_contribution", dtype=np.float64)


def _value_colour(values: NDArray[np.float64]) -> NDArray[np.float64]:
    # Within-feature rank scaled to [0, 1]: colour says low or high for this feature whatever its units or outliers.
    ranks = pd.Series(values).rank(method="average").to_numpy(dtype=np.float64)
    present = int(np.isfinite(ranks).sum())
    if present <= 1:
        return np.where(np.isfinite(ranks), 0.5, np.nan).astype(np.float64)
    return (ranks - 1) / (present - 1)


def _swarm_offsets(x: NDArray[np.float64], rng: np.random.Generator) -> NDArray[np.float64]:
    # Spread each point in proportion to how crowded its x neighbourhood is: dense regions widen like a beeswarm,
    # isolated outliers stay on the row's centre line.
    counts, edges = np.histogram(x, bins=SHAP_DENSITY_BINS)
    where = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, SHAP_DENSITY_BINS - 1)
    density = counts[where].astype(np.float64) / counts.max()
    offsets: NDArray[np.float64] = rng.uniform(-1.0, 1.0, size=x.size) * SHAP_MAX_JITTER * density
    return offsets


def plot_shap_summary(
    contributions: NDArray[np.float64],
    values: NDArray[np.float64],
    feature_names: Sequence[str],
    path: str | os.PathLike[str],
    *,
    title: str,
    max_features: int = 20,
    max_points: int = 5000,
    seed: int = 0,
) -> Path:
    """SHAP summary plot from a TreeSHAP contribution matrix (rows x features, LightGBM's bias column removed).

    One row per feature, the `max_features` largest by mean |contribution| over all rows, largest at the top; each
    lead is a point at its contribution, jittered vertically, coloured by its feature value's rank within the feature
    (missing values grey). At most `max_points` rows are drawn, sampled with a seeded RNG so charts are reproducible.
    """
    matrix, names = _check_contributions(contributions, feature_names)
    feature_values = np.asarray(values, dtype=np.float64)
    if feature_values.shape != matrix.shape:
        raise ValueError(f"values must match contributions' shape {matrix.shape}; got {feature_values.shape}")
    if matrix.shape[0] == 0:
        raise ValueError("contributions has no rows")
    if max_features < 1 or max_points < 1:
        raise ValueError(f"max_features and max_points must be positive; got {max_features} and {max_points}")

    importance = mean_abs_contributions(matrix, names)
    shown = list(importance.index[:max_features])
    rng = np.random.default_rng(seed)
    rows = np.arange(matrix.shape[0])
    if rows.size > max_points:
        rows = np.sort(rng.choice(rows, size=max_points, replace=False))

    fig = _new_figure((FIGSIZE[0] + 1.0, 1.2 + SHAP_ROW_HEIGHT * len(shown)))
    ax = fig.add_subplot()
    colourmap = mpl.colormaps[SHAP_COLOURMAP]
    any_missing = False
    for position, feature in enumerate(reversed(shown)):
        column = names.index(feature)
        x = matrix[rows, column]
        y = position + _swarm_offsets(x, rng)
        colour = _value_colour(feature_values[rows, column])
        missing = np.isnan(colour)
        any_missing = any_missing or bool(missing.any())
        ax.scatter(x[missing], y[missing], s=6, color=SHAP_MISSING_COLOUR, linewidths=0)
        ax.scatter(x[~missing], y[~missing], s=6, c=colour[~missing], cmap=colourmap, vmin=0, vmax=1, linewidths=0)
    if any_missing:
        ax.scatter([], [], s=12, color=SHAP_MISSING_COLOUR, label="missing value")
        ax.legend(loc="lower right", fontsize="small")
    ax.axvline(0.0, color=REFERENCE_COLOUR, linewidth=1.0)
    ax.set_yticks(range(len(shown)), list(reversed(shown)))
    ax.set_ylim(-0.6, len(shown) - 0.4)
    ax.set(title=title, xlabel="contribution to log-odds (SHAP value)")
    ax.grid(axis="x", alpha=0.3)
    colourbar = fig.colorbar(ScalarMappable(norm=Normalize(0, 1), cmap=colourmap), ax=ax, pad=0.01)
    colourbar.set_label("feature value (low → high)")
    colourbar.set_ticks([0, 1], labels=["low", "high"])
    return _save(fig, path)
