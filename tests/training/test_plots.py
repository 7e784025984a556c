"""Each chart writes a readable PNG for a model and a baseline; inputs are checked; SHAP features are ordered."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from numpy.typing import ArrayLike, NDArray

from training.plots import (
    Curves,
    calibration_figure,
    mean_abs_contributions,
    plot_calibration,
    plot_cumulative_gains,
    plot_precision_recall,
    plot_roc,
    plot_shap_summary,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PlotFn = Callable[..., Path]
CURVE_PLOTS: list[PlotFn] = [plot_roc, plot_precision_recall, plot_calibration, plot_cumulative_gains]


@pytest.fixture
def curves() -> Curves:
    rng = np.random.default_rng(0)
    p_true = rng.beta(1, 12, size=400)  # rare positives, like readiness
    y = (rng.uniform(size=400) < p_true).astype(np.int64)
    model = np.clip(p_true + rng.normal(0, 0.02, size=400), 0, 1)
    baseline = np.full(400, y.mean())
    return {"readiness model": (y, model), "base rate": (y, baseline)}


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = imread(path)
    assert image.shape[0] > 0
    assert image.shape[1] > 0


@pytest.mark.parametrize("plot", CURVE_PLOTS, ids=lambda fn: fn.__name__)
def test_curve_plots_write_a_png(plot: PlotFn, curves: Curves, tmp_path: Path) -> None:
    path = tmp_path / f"{plot.__name__}.png"
    written = plot(curves, path, title="readiness, holdout")
    assert written == path
    _assert_png(path)


@pytest.mark.parametrize("plot", CURVE_PLOTS, ids=lambda fn: fn.__name__)
def test_curve_plots_reject_empty_and_mismatched_input(plot: PlotFn, curves: Curves, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="curves is empty"):
        plot({}, tmp_path / "empty.png", title="t")
    y, p = curves["base rate"]
    broken: dict[str, tuple[ArrayLike, ArrayLike]] = {**curves, "base rate": (y, np.asarray(p)[:-1])}
    with pytest.raises(ValueError, match=r"scorer 'base rate': y and p must have the same length"):
        plot(broken, tmp_path / "broken.png", title="t")
    assert not (tmp_path / "broken.png").exists()


@pytest.mark.parametrize("plot", [plot_roc, plot_precision_recall, plot_cumulative_gains], ids=lambda fn: fn.__name__)
def test_ranking_plots_need_both_classes(plot: PlotFn, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scorer 'm': this chart needs both classes"):
        plot({"m": ([0, 0, 0], [0.1, 0.2, 0.3])}, tmp_path / "x.png", title="t")


def _contributions(rows: int = 300) -> tuple[NDArray[np.float64], NDArray[np.float64], list[str]]:
    rng = np.random.default_rng(1)
    names = ["employees", "demo_requested", "email_opens_30d", "country_match"]
    scales = np.array([0.2, 1.5, 0.6, 0.05])  # demo_requested matters most, then opens, employees, country
    values = rng.normal(size=(rows, len(names)))
    values[::7, 0] = np.nan  # missing employee counts are drawn grey
    contributions = rng.normal(size=(rows, len(names))) * scales
    return contributions, values, names


def test_mean_abs_contributions_orders_features_by_importance() -> None:
    contributions = np.array([[0.1, -2.0, 0.5], [-0.3, 1.0, -0.5]])
    importance = mean_abs_contributions(contributions, ["a", "b", "c"])
    assert list(importance.index) == ["b", "c", "a"]
    assert importance.to_list() == pytest.approx([1.5, 0.5, 0.2])


def test_mean_abs_contributions_rejects_bias_column_and_duplicates() -> None:
    with pytest.raises(ValueError, match="drop the trailing bias column"):
        mean_abs_contributions(np.zeros((2, 3)), ["a", "b"])
    with pytest.raises(ValueError, match=r"feature_names must be unique; repeated: \['a'\]"):
        mean_abs_contributions(np.zeros((2, 2)), ["a", "a"])


def test_shap_summary_writes_a_png(tmp_path: Path) -> None:
    contributions, values, names = _contributions()
    assert list(mean_abs_contributions(contributions, names).index) == [
        "demo_requested",
        "email_opens_30d",
        "employees",
        "country_match",
    ]
    path = plot_shap_summary(
        contributions, values, names, tmp_path / "shap.png", title="readiness drivers", max_features=3, max_points=100
    )
    _assert_png(path)


def test_shap_summary_checks_values_shape(tmp_path: Path) -> None:
    contributions, values, names = _contributions()
    with pytest.raises(ValueError, match="values must match contributions' shape"):
        plot_shap_summary(contributions, values[:, :2], names, tmp_path / "shap.png", title="t")


def _small_scores(n: int = 4000) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Rare-positive scores, every one under 0.15, like the readiness model's on the holdout."""
    rng = np.random.default_rng(2)
    p = rng.beta(1, 60, size=n)
    y = (rng.uniform(size=n) < p).astype(np.int64)
    assert p.max() < 0.15
    return y, p


def test_calibration_axes_zoom_to_the_scores_when_all_are_small() -> None:
    y, p = _small_scores()
    fig = calibration_figure({"readiness model": (y, p), "base rate": (y, np.full(y.size, y.mean()))}, title="t")
    ax, hist_ax = fig.axes
    (x_low, x_high), (y_low, y_high) = ax.get_xlim(), ax.get_ylim()
    assert x_low == y_low == 0.0
    assert x_high == y_high  # square: the diagonal stays at 45 degrees
    assert np.quantile(p, 0.99) <= x_high <= 0.2, "the axes end near the scores, not at 1"
    for line in ax.lines:  # every curve point, and the diagonal, inside the view
        assert np.all(line.get_xdata() <= x_high) and np.all(line.get_ydata() <= y_high)
    diagonal = next(line for line in ax.lines if line.get_label() == "perfectly calibrated")
    assert list(diagonal.get_xdata()) == [0.0, x_high]
    assert hist_ax.get_xlim() == (x_low, x_high)
    assert f"scores 0-{x_high:g} shown (of 0-1)" in ax.get_title()
    assert "or more of each scorer's leads" in ax.get_title()


def test_calibration_axes_stay_0_to_1_when_scores_span_it() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(size=2000)
    y = (rng.uniform(size=2000) < p).astype(np.int64)
    ax = calibration_figure({"m": (y, p)}, title="t").axes[0]
    assert ax.get_xlim() == (0.0, 1.0)
    assert ax.get_title() == "t"


def test_calibration_log_scale_covers_the_bins_and_counts_those_it_cannot_draw() -> None:
    y, p = _small_scores()
    y[p < np.quantile(p, 0.1)] = 0  # the lowest decile holds no positive: no place for it on a log axis
    ax = calibration_figure({"readiness model": (y, p)}, title="t", scale="log").axes[0]
    assert ax.get_xscale() == ax.get_yscale() == "log"
    (x_low, x_high), (y_low, y_high) = ax.get_xlim(), ax.get_ylim()
    assert 0.0 < x_low < np.quantile(p, 0.1) and x_high <= 0.2
    curve = ax.lines[0]
    assert len(curve.get_xdata()) == 9
    assert np.all((curve.get_xdata() >= x_low) & (curve.get_xdata() <= x_high))
    assert np.all((curve.get_ydata() >= y_low) & (curve.get_ydata() <= y_high))
    assert "1 bin(s) with no positive not drawn" in str(curve.get_label())
    assert f"-{x_high:.2g} shown (of 0-1)" in ax.get_title()
