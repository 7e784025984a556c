"""Options and answers shared by `leadscore` and `leadscore crm` (cheap to import: no pandas, no MLflow)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from training.config import CHAMPION
from training.exits import EXIT_GATE_REFUSED, EXIT_MISSING_INPUT, EXIT_QUALITY_WARNINGS

if TYPE_CHECKING:
    from training.promotion import Decision

TrackingOption = Annotated[
    str | None,
    typer.Option(help="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here."),
]
AucToleranceOption = Annotated[float, typer.Option(min=0.0, help="How much lower a challenger's AUC may be.")]
EceToleranceOption = Annotated[float, typer.Option(min=0.0, help="How much higher its calibration error may be.")]
AcceptWarningsOption = Annotated[
    bool, typer.Option(help="Promote a challenger despite the quality warnings training logged with it.")
]


def report_decision(console: Console, decision: Decision, *, promoted: str = "") -> None:
    """Print the gate's reasons and its verdict; exit 4 (refused), 5 (quality warnings) or 3 (nothing to promote).

    `promoted` follows the verdict of a promotion (what to do next).
    """
    for line in decision.lines:
        console.print(f"  {line}", highlight=False)
    if not decision.promoted:
        console.print(f"[yellow]not promoted[/yellow]: champion stays version {decision.champion_before}")
        if decision.refused_for_warnings:
            raise typer.Exit(EXIT_QUALITY_WARNINGS)
        raise typer.Exit(EXIT_GATE_REFUSED if decision.champion_before else EXIT_MISSING_INPUT)
    console.print(f"[green]promoted[/green] version {decision.challenger} to @{CHAMPION}{promoted}", highlight=False)
