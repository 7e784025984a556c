"""Every table `leadscore` prints shows every number whole in an 80-column terminal (`leadscore crm`: test_crm.py)."""

from __future__ import annotations

import io
import re

from rich.console import Console
from rich.table import Table

from tests.conftest import Trained
from training import cli
from training.metrics import binary_metrics
from training.pipeline import BASELINES
from training.tracking import LoggedModel

WIDTH = 80


def _render(table: Table) -> str:
    console = Console(width=WIDTH, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def _assert_fits(text: str) -> None:
    assert "…" not in text, text
    assert max(len(line) for line in text.splitlines()) <= WIDTH, text


def _row(text: str, label: str) -> str:
    """The rendered line of the row whose first cell starts with `label`."""
    return next(line for line in text.splitlines() if line.startswith(f"│ {label} "))


def test_training_report_shows_every_scorer_figure_whole(trained: Trained) -> None:
    logged = LoggedModel(run_id="0" * 32, version="12", model_uri="models:/lead-scorer/12", experiment_id="1")
    text = _render(cli._training_table(trained.result, logged))
    _assert_fits(text)
    scorers = ("model", *BASELINES)
    for metric in ("roc_auc", "pr_auc", "log_loss", "ece", "lift_top10"):
        line = _row(text, f"readiness {metric}")
        assert all(f"{trained.result.readiness.metrics[s][metric]:.3f}" in line for s in scorers), line
    fit_line = _row(text, "fit roc_auc")
    assert all(f"{trained.result.fit.metrics[s]['roc_auc']:.3f}" in fit_line for s in scorers), fit_line
    assert "naive Bayes" in text and "regression" in text


def test_evaluation_table_prints_counts_whole_and_the_rest_to_four_digits() -> None:
    y = [0, 1] * 716_058 + [0]  # 1,432,117 snapshots: the count that used to print as "1,43…" or "1.432e+06"
    p = [0.2, 0.6] * 716_058 + [0.2]
    metrics = binary_metrics(y, p)
    title = "models:/lead-scorer@champion on leadscore-demo/data (readiness from 2024-06-01, fit from 2024-03-01)"
    text = _render(cli._evaluation_table({"readiness": metrics, "fit": metrics}, title=title))
    _assert_fits(text)
    assert re.search(r"│ n +│ +1,432,117 │ +1,432,117 │", text), text
    assert re.search(r"│ positives +│ +716,058 │ +716,058 │", text), text
    assert f"{metrics['log_loss']:.4g}" in _row(text, "log_loss")


def test_build_dataset_report_shows_every_figure_whole(trained: Trained) -> None:
    text = _render(cli._data_table(trained.training_set, trained.leads, trained.funnel.oracle))
    _assert_fits(text)
    assert f"{len(trained.training_set.readiness):,}" in _row(text, "readiness snapshots")
    assert re.search(r"\d\.\d{3} on [\d,]+ snapshots", text), text
