"""Turn lead history into labelled (lead, as_of) training examples without looking past as_of.

Label rules (the choices, and why):

Readiness -- "should someone call them now?"
- Snapshots sit on a fixed weekly grid (Mondays 00:00 UTC by default). A fixed grid, not event-driven as_of dates,
  because event-driven dates (say, the day of a demo request) tell the model when something happened.
- A (lead, as_of) pair is an example only while the lead is being nurtured or worked towards qualification: created
  strictly before as_of and at stage lead, MQL, SAL or recycled at as_of (stage = its latest lifecycle stamp strictly
  before as_of). Leads already SQL, requalified, lost (and not recycled) or won are not readiness examples: the
  question no longer applies to them.
- Label 1 iff the lead reaches the readiness stamp in [as_of, as_of + H). By default that is SQL (sql_at, or
  requalified_at for a recycled lead); a contract may declare won_at instead (features.spec.ReadinessLabel), for a
  funnel whose CRM stamps no SQL. The examples are the same open leads either way: only the label changes.
- Censoring: a snapshot whose label window runs past the end of the data (as_of + H > data_end) is dropped; keeping
  it would label as 0 leads whose SQL simply has not been observed yet.
- A recycled lead is an example again from its recycled_at on, and its label is its requalification (or its win).
- Long nurture histories would otherwise dominate (a lead nurtured for a year yields 50 near-identical rows), so at
  most `max_per_lead` of a lead's eligible grid dates are kept, drawn at random with a fixed seed.
- At most `max_rows` snapshots in all: beyond a few million rows a model learns little more, while features and
  training time grow linearly. The cut is a seeded uniform sample of rows, so every period and stage keeps its share.

ICP fit -- "should we ever sell to them?"
- One example per lead, as of its creation (fit features do not change over time).
- Only leads created at least `fit_horizon_days` before the end of the data (enough time for a typical sales cycle)
  are examples; label 1 iff the lead was won by the end of the data. Younger leads are censored whatever their
  outcome: keeping the young winners but not the young others would select on the outcome and make recent leads
  look like sure wins (an out-of-time holdout would then measure that artefact, not the model).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.builder import as_of_to_seconds, series_ns, stamps_to_seconds
from features.engine import NOT_YET_CREATED, READINESS_STAGES, SECONDS_PER_DAY, STAGE_CODE, STAGES, stage_at
from features.spec import LIFECYCLE_CHAIN, READINESS_MEANINGS, READINESS_STAMPS, ReadinessLabel
from training.config import SnapshotConfig


def data_end_of(leads: pd.DataFrame, activities: pd.DataFrame) -> pd.Timestamp:
    """The latest timestamp present in either table: the end of what was observed."""
    stamps = [leads[c].max() for c in LIFECYCLE_CHAIN] + [activities["occurred_at"].max()]
    return pd.Timestamp(max(s for s in stamps if not pd.isna(s)))


def _seconds(value: pd.Timestamp | str) -> int:
    ts = pd.Timestamp(value)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(as_of_to_seconds(np.array([ts.value], dtype=np.int64))[0])


# Leads whose weekly grid is laid out at once. The grid holds a row per week a lead was alive, each with the lead's
# lifecycle stamps: for five million leads that is hundreds of millions of rows, more memory than the whole training
# set, while a block of leads at a time needs a few hundred MB and gives the same snapshots.
GRID_BLOCK_LEADS = 100_000


def build_readiness_snapshots(
    leads: pd.DataFrame, data_end: pd.Timestamp, config: SnapshotConfig | None = None, *, block: int = GRID_BLOCK_LEADS
) -> pd.DataFrame:
    """Readiness examples: lead_id, as_of, stage, label (see module docstring for the rules)."""
    config = config or SnapshotConfig()
    lifecycle = np.column_stack([stamps_to_seconds(series_ns(leads[c])) for c in LIFECYCLE_CHAIN])
    created = lifecycle[:, 0]
    step = config.every_days * SECONDS_PER_DAY
    horizon = config.horizon_days * SECONDS_PER_DAY
    anchor = _seconds(config.anchor)
    last_k = (_seconds(data_end) - horizon - anchor) // step
    first_k = (created - anchor) // step + 1  # first grid date strictly after creation
    # One stream for every block, drawn in lead order: the same draws, so the same snapshots, whatever the block size.
    rng = np.random.default_rng(config.seed)
    rows, as_ofs, stages = [], [], []
    for lo in range(0, len(leads), block):
        hi = min(lo + block, len(leads))
        counts = np.maximum(last_k - first_k[lo:hi] + 1, 0)
        row = np.repeat(np.arange(lo, hi), counts)
        k = np.arange(row.shape[0]) - np.repeat(np.cumsum(counts) - counts, counts) + first_k[row]
        as_of = anchor + k * step
        stage = stage_at(lifecycle[row], as_of)
        eligible = np.isin(stage, [STAGE_CODE[s] for s in READINESS_STAGES]) & (stage != NOT_YET_CREATED)
        row, as_of, stage = row[eligible], as_of[eligible], stage[eligible]
        if config.max_per_lead is not None:
            order = np.lexsort((rng.random(row.shape[0]), row))
            row_sorted = row[order]
            group_start = np.r_[0, np.flatnonzero(row_sorted[1:] != row_sorted[:-1]) + 1]
            sizes = np.diff(np.r_[group_start, row_sorted.size])
            rank = np.arange(row_sorted.shape[0]) - np.repeat(group_start, sizes)
            keep = np.sort(order[rank < config.max_per_lead])
            row, as_of, stage = row[keep], as_of[keep], stage[keep]
        rows.append(row)
        as_ofs.append(as_of)
        stages.append(stage)
    row = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    as_of = np.concatenate(as_ofs) if as_ofs else np.zeros(0, dtype=np.int64)
    stage = np.concatenate(stages) if stages else np.zeros(0, dtype=np.int64)

    if config.max_rows is not None and row.shape[0] > config.max_rows:
        rng = np.random.default_rng([config.seed, 1])
        keep = np.sort(rng.choice(row.shape[0], config.max_rows, replace=False))
        row, as_of, stage = row[keep], as_of[keep], stage[keep]

    reached = lifecycle[row][:, [LIFECYCLE_CHAIN.index(c) for c in config.readiness.stamps]]
    label = ((reached >= as_of[:, None]) & (reached < (as_of + horizon)[:, None])).any(axis=1)
    return pd.DataFrame(
        {
            "lead_id": leads["lead_id"].to_numpy()[row],
            "as_of": pd.to_datetime(as_of, unit="s", utc=True).astype("datetime64[ns, UTC]"),
            "stage": pd.Categorical.from_codes(stage, categories=pd.Index(STAGES)),
            "label": label.astype(np.int8),
        }
    )


def build_fit_examples(
    leads: pd.DataFrame, data_end: pd.Timestamp, config: SnapshotConfig | None = None
) -> pd.DataFrame:
    """ICP-fit examples: lead_id, as_of (creation), label won / not won; leads too young to judge left out."""
    config = config or SnapshotConfig()
    won = leads["won_at"].notna().to_numpy()
    keep = (leads["created_at"] + pd.Timedelta(days=config.fit_horizon_days) <= data_end).to_numpy()
    return pd.DataFrame(
        {
            "lead_id": leads["lead_id"].to_numpy()[keep],
            # Fit features ignore time; one second after creation makes the lead itself "known" at as_of.
            "as_of": (leads["created_at"] + pd.Timedelta(seconds=1)).to_numpy()[keep],
            "label": won[keep].astype(np.int8),
        }
    ).reset_index(drop=True)


class LabelError(ValueError):
    """Labels no classifier can learn from; the message names the stamp, how many leads have it, what to declare."""


def _leads_with(leads: pd.DataFrame, stamps: tuple[str, ...]) -> int:
    return int(leads[list(stamps)].notna().any(axis=1).sum())


def _stamps_text(stamps: tuple[str, ...]) -> str:
    return " or ".join(stamps)


def _alternatives(leads: pd.DataFrame, label: ReadinessLabel) -> str:
    """What else the data could label readiness with, as a declaration to copy; or what to export when nothing."""
    options = []
    for stamp, stamps in READINESS_STAMPS.items():
        held = _leads_with(leads, stamps)
        if stamp != label.stamp and held:
            declaration = f"readiness: {{stamp: {stamp}, horizon_days: {label.horizon_days}}}"
            hint = " (a win comes later than a qualification: a longer horizon gives more positives)"
            options.append(
                f"{held:,} of the {len(leads):,} leads have {_stamps_text(stamps)}: declare `{declaration}` in a"
                " contract file and train with `leadscore train --contract FILE`" + (hint if stamp == "won_at" else "")
            )
    if options:
        return "; ".join(options)
    present = ", ".join(f"{c} ({int(leads[c].notna().sum()):,})" for c in LIFECYCLE_CHAIN[1:] if leads[c].notna().any())
    declarable = " or ".join(f"{stamp} ({READINESS_MEANINGS[stamp]})" for stamp in READINESS_STAMPS)
    return (
        f"no lead has another stamp readiness can be declared on (stamps present: {present or 'none'}): export"
        f" {declarable} dates with the leads"
    )


def readiness_label_problem(leads: pd.DataFrame, labels: np.ndarray, label: ReadinessLabel) -> str | None:
    """Why readiness labels of one class cannot train a model, and what to declare instead; None if both classes."""
    positives = int(np.count_nonzero(labels))
    if labels.size == 0 or 0 < positives < labels.size:
        return None
    held = _leads_with(leads, label.stamps)
    what = f"readiness is labelled as: {label.meaning}"
    stamps = _stamps_text(label.stamps)
    if positives:
        return (
            f"{what}; its labels are all 1 over {labels.size:,} snapshots: every open lead reaches {stamps} within"
            f" {label.horizon_days} days. Declare a shorter horizon_days"
        )
    alternatives = _alternatives(leads, label)
    if held == 0:
        return f"{what}; but none of the {len(leads):,} leads has {stamps}. {alternatives[0].upper()}{alternatives[1:]}"
    return (
        f"{what}; its labels are all 0 over {labels.size:,} snapshots: {held:,} of {len(leads):,} leads have {stamps},"
        f" but none reaches it within {label.horizon_days} days of a snapshot at which it was open. Declare a longer"
        f" horizon_days, or train on more history; {alternatives}"
    )


def fit_label_problem(leads: pd.DataFrame, labels: np.ndarray, config: SnapshotConfig) -> str | None:
    """Why fit labels (won or not) of one class cannot train a model; None if both classes are present."""
    positives = int(np.count_nonzero(labels))
    if labels.size == 0 or 0 < positives < labels.size:
        return None
    won = int(leads["won_at"].notna().sum())
    return (
        f"the fit model learns won vs not won (won_at by the end of the data, for leads created at least"
        f" {config.fit_horizon_days} days before it), and its labels are all {1 if positives else 0} over"
        f" {labels.size:,} leads old enough to judge: {won:,} of {len(leads):,} leads have won_at. The fit label is"
        " always won_at: export the CRM's closed-won dates as won_at"
    )
