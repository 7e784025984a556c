"""Benchmark: a CRM export whose leads drift over two years, scored with and without refitting on recent history."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
import pandas as pd
import typer
from numpy.typing import NDArray
from rich.console import Console
from rich.table import Table
from scipy.special import expit, logit

from features.export import CrmMapping, ExportEncoder, parse_mapping
from training.config import BoosterConfig
from training.crm_checks import column_drift, export_warnings, split_summary
from training.crm_load import CrmExport, prepare_export
from training.crm_models import (
    CalibrationScheme,
    FittedBooster,
    baseline_probabilities,
    compare_models,
    fit_export_booster,
)
from training.crm_split import split_export
from training.metrics import binary_metrics

log = logging.getLogger("benchmarks.crm_refit")
app = typer.Typer(add_completion=False)

START = pd.Timestamp("2023-01-01", tz="UTC")
DAYS = 730
# The positive rate over the export's life, t in [0, 1]: 5 % at the start, 30 % at the end, rising fastest late (as in
# the export: 4.8 % in training, 12.7 % in validation, 30.8 % in the holdout).
FIRST_RATE, LAST_RATE = 0.05, 0.30
RATE_CURVE_POWER = 3.0
# Intercepts are solved per slice of time so that each slice has its intended positive rate.
RATE_SLICES = 100
SOURCES = ("Google", "Direct Traffic", "Referral", "Events", "Partner")
INDUSTRIES = ("Software", "Retail", "Banking", "Health", "Education", "Logistics", "Media", "Public Sector")
COUNTRIES = ("US", "UK", "DE", "FR", "IN", "BR", "CA", "AU", "ES", "IT", "NL", "SE")


def drift_mapping() -> dict[str, Any]:
    """The mapping of `drifting_export`'s columns, as a user would write it."""
    return {
        "outcome": {"column": "Converted", "positive": ["yes"], "negative": ["no"]},
        "id_column": "Lead ID",
        "date_column": "Created",
        "columns": {
            "Lead Source": {"role": "fit", "type": "category"},
            "Industry": {"role": "fit", "type": "category"},
            "Country": {"role": "fit", "type": "category", "description": "no effect on the outcome"},
            "Employees": {"role": "fit", "type": "number"},
            "Email Opt Out": {"role": "fit", "type": "boolean"},
            "Page Views": {"role": "engagement", "type": "number", "description": "mattered early, less and less"},
            "Demo Requested": {"role": "engagement", "type": "boolean", "description": "matters more and more"},
            "Webinar Minutes": {"role": "engagement", "type": "number", "description": "matters more and more"},
        },
    }


def _intercepts(t: np.ndarray, signal: np.ndarray, first_rate: float, last_rate: float) -> np.ndarray:
    """Per-lead intercepts giving each slice of time its intended positive rate, by Newton steps on each slice."""
    slices = np.minimum((t * RATE_SLICES).astype(np.int64), RATE_SLICES - 1)
    middle = (np.arange(RATE_SLICES) + 0.5) / RATE_SLICES
    target = first_rate + (last_rate - first_rate) * middle**RATE_CURVE_POWER
    b = logit(target)
    counts = np.maximum(np.bincount(slices, minlength=RATE_SLICES), 1)
    for _ in range(30):
        p = expit(b[slices] + signal)
        rate = np.bincount(slices, weights=p, minlength=RATE_SLICES) / counts
        slope = np.bincount(slices, weights=p * (1 - p), minlength=RATE_SLICES) / counts
        b -= (rate - target) / np.maximum(slope, 1e-9)
    return np.asarray(b[slices], dtype=np.float64)


def drifting_export(
    n_leads: int = 20_000, *, seed: int = 0, first_rate: float = FIRST_RATE, last_rate: float = LAST_RATE
) -> pd.DataFrame:
    """A flat export as a CRM writes it (all text), over two years, whose positive rate and signal drift.

    The positive rate moves from `first_rate` to `last_rate` (5 % to 30 % by default); page views predict
    conversion at the start and hardly at the end, a demo request and webinar minutes the other way round (the
    business moved to demo-led sales); lead source, industry, company size and opting out of email matter throughout;
    the country never does.
    """
    rng = np.random.default_rng(seed)
    days = np.sort(rng.uniform(0, DAYS, n_leads))
    t = days / DAYS
    source_weights = (
        np.array([0.4, 0.3, 0.1, 0.1, 0.1])[None, :] * (1 - t[:, None])
        + np.array([0.2, 0.2, 0.15, 0.1, 0.35])[None, :] * t[:, None]
    )
    # One uniform draw per lead against its own cumulative source mix: the mix moves from Google toward partners.
    source = (rng.uniform(size=n_leads)[:, None] > np.cumsum(source_weights, axis=1)[:, :-1]).sum(axis=1)
    industry = rng.integers(0, len(INDUSTRIES), n_leads)
    country = rng.integers(0, len(COUNTRIES), n_leads)
    employees = np.round(rng.lognormal(4.0, 1.5, n_leads))
    employees_missing = rng.uniform(size=n_leads) < 0.15
    opt_out = rng.uniform(size=n_leads) < 0.12
    page_views = rng.poisson(rng.gamma(1.5, 4.0, n_leads))
    demo = rng.uniform(size=n_leads) < 0.10 + 0.30 * t
    attended = rng.uniform(size=n_leads) < 0.3 + 0.4 * t
    minutes = np.where(attended, np.round(rng.gamma(2.0, 20.0, n_leads)), np.nan)

    def standard(v: np.ndarray) -> np.ndarray:
        return np.asarray((v - np.nanmean(v)) / np.nanstd(v), dtype=np.float64)

    # Mid-sized companies buy most (a bump, not a slope), and a demo request from a company of fewer than 50 people
    # rarely turns into a deal: shapes a booster finds and an additive model does not.
    mid_market = np.where(employees_missing, 0.0, np.exp(-((np.log10(np.maximum(employees, 1)) - 2.3) ** 2) / 0.4))
    demo_weight = np.where(~employees_missing & (employees >= 50), 1.0, 0.2)
    signal = (
        np.array([0.0, -0.2, 0.8, 0.3, 0.5])[source]
        + rng.normal(0.0, 0.4, len(INDUSTRIES))[industry]
        + 1.0 * mid_market
        - 0.6 * opt_out
        + 1.2 * (1 - t) * standard(np.log1p(page_views))
        + 3.0 * t**2 * demo * demo_weight
        + 1.5 * t * np.nan_to_num(standard(np.log1p(minutes)), nan=-1.0)
    )
    y = rng.uniform(size=n_leads) < expit(_intercepts(t, signal, first_rate, last_rate) + signal)
    created = START + pd.to_timedelta(days, unit="D")
    return pd.DataFrame(
        {
            "Lead ID": [f"L{i:06d}" for i in range(n_leads)],
            "Created": created.strftime("%Y-%m-%d %H:%M:%S"),
            "Lead Source": np.array(SOURCES)[source],
            "Industry": np.array(INDUSTRIES)[industry],
            "Country": np.array(COUNTRIES)[country],
            "Employees": np.where(employees_missing, "", employees.astype(np.int64).astype(str)),
            "Email Opt Out": np.where(opt_out, "Yes", "No"),
            "Page Views": page_views.astype(str),
            "Demo Requested": np.where(demo, "Yes", "No"),
            "Webinar Minutes": np.where(attended, np.nan_to_num(minutes).astype(np.int64).astype(str), ""),
            "Converted": np.where(y, "yes", "no"),
        }
    )


def load_drifting_export(n_leads: int = 20_000, *, seed: int = 0) -> tuple[CrmExport, CrmMapping]:
    """`drifting_export` loaded through the mapping, as `leadscore crm train` loads a user's file."""
    mapping = parse_mapping(drift_mapping())
    return prepare_export(drifting_export(n_leads, seed=seed), mapping, source="drifting export"), mapping


def _timed(func: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = func()
    return result, time.perf_counter() - start


@app.command()
def main(
    leads: Annotated[int, typer.Option(help="Leads in the generated export (over two years).")] = 20_000,
    seed: Annotated[int, typer.Option(help="Seed of the generated export and of LightGBM.")] = 0,
    first_rate: Annotated[float, typer.Option(help="Positive rate at the start of the export.")] = FIRST_RATE,
    last_rate: Annotated[float, typer.Option(help="Positive rate at the end of the export.")] = LAST_RATE,
    threads: Annotated[int, typer.Option(help="LightGBM threads (0: all cores).")] = 1,
) -> None:
    """Print holdout AUC and ECE of the booster with and without refit, and of the baselines, on a drifting export."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    mapping = parse_mapping(drift_mapping())
    raw = drifting_export(leads, seed=seed, first_rate=first_rate, last_rate=last_rate)
    export = prepare_export(raw, mapping, source="drifting export")
    split = split_export(export, seed=seed)
    columns = mapping.usable
    # The vocabulary of the rows the refit booster learns from; the same for every booster, so only refitting differs.
    seen = np.sort(np.concatenate([split.train, split.valid]))
    encoder = ExportEncoder(columns=columns).fit(export.frame.iloc[seen])
    x, y = encoder.transform(export.frame), export.y
    config = BoosterConfig(seed=seed, num_threads=threads)

    def fit(*, refit: bool, calibration: CalibrationScheme = "validation") -> FittedBooster:
        return fit_export_booster(
            x, y, split, feature_names=encoder.feature_names_, categorical=encoder.categorical_features_,
            config=config, refit=refit, calibration=calibration,
        )  # fmt: skip

    scorers: list[tuple[str, NDArray[np.float64], float, str]] = []
    today, t_ref = _timed(lambda: fit(refit=False))
    scorers.append(("reference: booster on train only, refit=False (before)", today.holdout_probability, t_ref,
                    str(today.rounds)))  # fmt: skip
    refit, seconds = _timed(lambda: fit(refit=True))
    scorers.append(("booster refit on train + valid (default)", refit.holdout_probability, seconds, str(refit.rounds)))
    crossed, seconds = _timed(lambda: fit(refit=True, calibration="cross_fit"))
    scorers.append(("  same, calibrator cross-fitted over the validation period", crossed.holdout_probability, seconds,
                    str(crossed.rounds)))  # fmt: skip
    baselines, seconds = _timed(lambda: baseline_probabilities(export.frame, y, split, columns))
    for name, p in baselines.items():
        scorers.append((f"baseline: {name} (train + valid)", p, seconds, ""))

    console = Console(width=160, highlight=False)
    summary = split_summary(y, split, export.dates)
    periods = Table(title=f"drifting export: {leads:,} leads over {DAYS} days, seed {seed}, {split.kind} split")
    for column in ("period", "leads", "positives", "positive rate", "first", "last"):
        periods.add_column(column, justify="left" if column == "period" else "right")
    for record in summary.to_dict(orient="records"):
        first, last = str(record["first"])[:10], str(record["last"])[:10]
        periods.add_row(str(record["split"]), f"{record['rows']:,}", f"{record['positives']:,}",
                        f"{record['positive_rate']:.1%}", first, last)  # fmt: skip
    console.print(periods)

    y_holdout = y[split.holdout]
    reference = binary_metrics(y_holdout, today.holdout_probability)
    quality = Table(title="holdout (latest 20 % of leads); ratios against the reference row of this run")
    for column in ("scorer", "rounds", "ROC AUC", "x ref", "PR AUC", "log loss", "ECE", "lift top 10 %", "fit",
                   "x ref"):  # fmt: skip
        quality.add_column(column, justify="left" if column == "scorer" else "right")
    for name, p, seconds, rounds in scorers:
        m = binary_metrics(y_holdout, p)
        quality.add_row(
            name, rounds, f"{m['roc_auc']:.4f}", f"{m['roc_auc'] / reference['roc_auc']:.3f}x", f"{m['pr_auc']:.4f}",
            f"{m['log_loss']:.4f}", f"{m['ece']:.4f}", f"{m['lift_top10']:.2f}", f"{seconds:.1f} s",
            f"{seconds / t_ref:.1f}x",
        )  # fmt: skip
    console.print(quality)
    console.print("(the two baselines are timed together)")

    drift = column_drift(export.frame, split, columns)
    drift_table = Table(title="column drift, training vs holdout leads (population stability index)")
    for column in ("column", "type", "PSI", "most shifted bin", "training share", "holdout share"):
        drift_table.add_column(column, justify="left" if column in ("column", "type", "most shifted bin") else "right")
    for record in drift.to_dict(orient="records"):
        drift_table.add_row(str(record["column"]), str(record["type"]), f"{record['psi']:.3f}", str(record["top_bin"]),
                            f"{record['train_share']:.1%}", f"{record['holdout_share']:.1%}")  # fmt: skip
    console.print(drift_table)
    for label, fitted in (("before (refit=False)", today), ("after (refit)", refit)):
        comparison = compare_models(y_holdout, fitted.holdout_probability, baselines)
        ece = binary_metrics(y_holdout, fitted.holdout_probability)["ece"]
        console.print(f"\n{label}: {comparison.reason}", markup=False)
        for warning in export_warnings(summary, drift, ece, comparison):
            console.print(f"  warning {warning.rule}: {warning.message}", markup=False)


if __name__ == "__main__":
    app()
