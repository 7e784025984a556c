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
