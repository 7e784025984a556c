"""Configs of simulation, snapshots and training, and the names runs and models go by: data, importing nothing heavy.

The command line shows these defaults in its help without importing pandas, LightGBM or MLflow (see leadscore.cli).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from features.spec import DEFAULT_READINESS_HORIZON_DAYS, DEFAULT_READINESS_STAMP, READINESS_STAMPS, ReadinessLabel

if TYPE_CHECKING:
    import pandas as pd

# The registered model, its aliases (never stages) and the experiments runs go to.
MODEL_NAME = "lead-scorer"
CHAMPION = "champion"
CHALLENGER = "challenger"
DEFAULT_EXPERIMENT = "leadscore"
CRM_EXPERIMENT = "leadscore-crm-export"
# Export models are registered apart from the lead contract model: they read other columns and answer another question.
CRM_MODEL_NAME = "crm-lead-scorer"
# The latest (or a random stratified) fifth of the leads is the holdout; a fifth of the rest is validation (early
# stopping and calibration), the same shares as the lead-contract models.
CRM_HOLDOUT_FRACTION = 0.2


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """What to simulate; the generative defaults are tuned so the realism targets hold (see GENERATIVE STORY)."""

    n_leads: int = 3000
    seed: int = 7
    start: str = "2024-01-01"  # a Monday; data start (UTC midnight)
    days: int = 540  # data end = start + days
    horizon_days: int = 30  # readiness label horizon H the oracle is computed for
    snapshot_every_days: int = 7  # oracle grid: as_of = start + k * snapshot_every_days (UTC midnight)
    oracle_max_rows: int = 200_000  # cap on oracle rows (uniform sample of eligible grid snapshots)
    # ~19k leads per chunk: day-step arrays stay cache-sized and peak memory does not grow with n_leads.
    chunk_accounts: int = 5000
    # Snapshots propagated at once by the exact oracle: small batches keep the distributions in cache (fastest here).
    oracle_batch_rows: int = 256
    # truth.p_won is computed for a uniform sample of leads (NaN elsewhere): each costs won_horizon_days of propagation.
    p_won_sample: int = 300
    won_horizon_days: int = 365  # "eventually won" = won within a year of creation; later wins are rare here

    # --- population ---
    mean_buying_group: float = 3.8  # ~5.4 people buy; not all of them ever fill in a form
    max_buying_group: int = 8
    icp_account_share: float = 0.35  # marketing aims at the ICP but attracts the whole market
    colleague_delay_days: float = 60.0  # colleagues of the first lead appear over weeks to months
    account_fit_noise: float = 0.8  # unobserved account fit (tech stack, budget): caps what attributes can explain
    person_fit_noise: float = 0.5  # unobserved person fit (authority, pain)
    fit_offset: float = -1.3  # puts mean icp_fit near 0.3: most leads are mediocre fits

    # --- intent (levels are shot-noise amplitudes; see GENERATIVE STORY) ---
    # Roughly halving per level, so stepping down one level per mean sojourn mimics exponential decay.
    account_intent_levels: tuple[float, ...] = (0.0, 0.4, 1.0, 2.0)
    account_burst_to: tuple[float, ...] = (0.0, 0.0, 0.6, 0.4)  # a buying process starts hot
    account_burst_rate: float = 0.001  # per account-day: ~3 % of accounts in market on a given day
    account_intent_half_life_days: float = 21.0  # a buying process stays hot for weeks (mean days per level)
    anchor_burst_probability: float = 0.6  # accounts often show up because a buying process started
    in_market_level: int = 2  # account levels from here on count as "in market" (diagnostics only)
    person_intent_levels: tuple[float, ...] = (0.0, 0.25, 0.6, 1.2, 2.4)  # halving per level, as for accounts
    personal_burst_to: tuple[float, ...] = (0.0, 0.25, 0.4, 0.23, 0.12)  # most spikes are mild, one in eight urgent
    personal_burst_rate: float = 0.004  # a person's own spikes of interest, ~1.5 a year
    personal_burst_account_rate: float = 0.03  # extra spikes per unit of account intent: correlates buying groups
    personal_intent_half_life_days: float = 10.0  # personal interest fades faster than the account's project
    account_intent_weight: float = 0.7  # how much the account's project drives each person

    # --- touches ---
    base_activity_rate: float = 0.045  # per day at zero intent: nurture e-mails and the odd visit
    intent_activity_rate: float = 0.4  # extra touches per day per unit of intent
    propensity_sd: float = 0.6  # lognormal spread of personal activity propensity (noise between intent and touches)
    unsubscribe_damping: float = 0.4  # activity multiplier after an unsubscribe

    # --- lifecycle hazards (per day; all but MQL and the recycling rest follow the sales calendar) ---
    mql_rate: float = 0.3  # max daily MQL hazard: automation fires within days once its score says so
    # MQL score = offset + fit + intent terms: a cold lead almost never qualifies, a hot well-fitting one within days;
    # tuned so that 25-40 % of leads become MQL.
    mql_offset: float = -8.0
    mql_fit: float = 2.5
    mql_intent: float = 3.0
    # Only urgent buyers skip MQL/SAL (about 30 % of SQLs skip MQL, 15 % more skip SAL); triggered by intent spikes
    # nobody can see coming, these fast tracks keep the oracle AUC below ~0.9.
    fast_track_rate: float = 0.2
    fast_track_offset: float = -9.5
    fast_track_fit: float = 1.5
    fast_track_intent: float = 2.5
    junk_rate: float = 0.002  # marketing ops disqualifies poor-fit leads (times (1 - fit)^2)
    sal_rate: float = 0.25  # sales reviews an MQL within a week or so
    accept_offset: float = -1.0  # acceptance = sigmoid(offset + fit_slope * fit): sales accepts ~2/3 of MQLs
    accept_fit: float = 3.5
    reject_share: float = 0.6  # rejection hazard relative to acceptance scale
    stale_rate: float = 0.01  # MQLs and SALs nobody follows up are closed as unresponsive (mean ~100 days)
    sql_rate: float = 0.1  # a working rep reaches and qualifies within 1-3 weeks
    # Qualification = sigmoid(offset + fit + intent terms): a rep needs both a fit and a live project; tuned so that
    # 10-20 % of MQLs become SQL.
    qualify_offset: float = -5.8
    qualify_fit: float = 3.0
    qualify_intent: float = 2.2
    disqualify_rate: float = 0.06  # reps drop leads with no project within a few weeks
    close_rate: float = 1 / 45  # opportunities close in ~2 months
    # Win = sigmoid(offset + fit + intent terms): fit decides deals (20-30 % of SQLs are won), urgency helps a little.
    win_offset: float = -3.4
    win_fit: float = 3.5
    win_intent: float = 0.5
    recycle_rest_days: float = 21.0  # lost leads rest ~3 weeks before they are queued for nurture again
    recycle_rate: float = 0.15  # queued leads are recycled by marketing ops within a couple of weeks
    recycle_offset: float = -1.5  # share of losses marked for recycling: sigmoid(offset + fit_slope * fit)
    recycle_fit: float = 3.0
    # Requalification = rate * sigmoid(offset + fit + intent terms): occasional (~1-2 % of leads), needs a new project.
    requalify_rate: float = 0.1
    requalify_offset: float = -6.5
    requalify_fit: float = 2.0
    requalify_intent: float = 2.0

    # --- dirty data ---
    missing_employee_count: float = 0.12  # plus more for small companies enrichment misses
    missing_employee_small_extra: float = 0.10  # 10-20 % missing overall, as in enriched CRM exports
    missing_revenue: float = 0.10  # revenue is private more often than headcount
    missing_revenue_if_no_size: float = 0.5  # enrichment that finds no size rarely finds revenue
    # Form fields people skip (seniority, department) are missing more often than enriched company ones.
    missing_seniority: float = 0.12
    missing_department: float = 0.08
    missing_industry: float = 0.05
    missing_country: float = 0.03
    missing_region: float = 0.02
    missing_job_title: float = 0.05
    country_alias_rate: float = 0.1  # "USA", "UK" instead of ISO codes
    country_lowercase_rate: float = 0.02

    def __post_init__(self) -> None:
        problems = []
        if self.n_leads < 1:
            problems.append(f"n_leads must be >= 1 (got {self.n_leads})")
        if self.horizon_days < 1 or self.days <= self.horizon_days:
            problems.append(f"need 1 <= horizon_days < days (got horizon_days={self.horizon_days}, days={self.days})")
        for name in (
            "snapshot_every_days",
            "chunk_accounts",
            "oracle_batch_rows",
            "won_horizon_days",
            "max_buying_group",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.oracle_max_rows < 0 or self.p_won_sample < 0:
            problems.append("oracle_max_rows and p_won_sample must be >= 0")
        if not 1.0 <= self.mean_buying_group <= self.max_buying_group:
            problems.append(f"mean_buying_group must lie in [1, max_buying_group] (got {self.mean_buying_group})")
        for levels, jumps in (
            ("account_intent_levels", "account_burst_to"),
            ("person_intent_levels", "personal_burst_to"),
        ):
            jump_to = getattr(self, jumps)
            if len(getattr(self, levels)) != len(jump_to) or not math.isclose(sum(jump_to), 1.0):
                problems.append(f"{jumps} must be one probability per entry of {levels}, summing to 1")
        import pandas as pd  # here, not at import: the command line reads these defaults without pandas

        try:
            pd.Timestamp(self.start)
        except ValueError:
            problems.append(f"start must be a date (got {self.start!r})")
        if problems:
            raise ValueError("invalid SimulationConfig: " + "; ".join(problems))

    @property
    def start_ts(self) -> pd.Timestamp:
        """Data start, UTC midnight."""
        import pandas as pd

        ts = pd.Timestamp(self.start)
        return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).normalize()

    @property
    def end_ts(self) -> pd.Timestamp:
        """Data end (exclusive): start + days."""
        import pandas as pd

        return self.start_ts + pd.Timedelta(days=self.days)


# 1970-01-05 was a Monday: grids anchored there fall on Mondays, when sales teams plan their week.
DEFAULT_GRID_ANCHOR = "1970-01-05"


@dataclass(frozen=True, slots=True)
class SnapshotConfig:
    """How history is cut into labelled examples.

    `readiness_stamp` and `horizon_days` are the readiness label (see features.spec.ReadinessLabel): logged with the
    model, they let promotion and evaluation label a holdout the way the model was trained.
    """

    horizon_days: int = DEFAULT_READINESS_HORIZON_DAYS
    every_days: int = 7
    anchor: str = DEFAULT_GRID_ANCHOR
    max_per_lead: int | None = 12
    max_rows: int | None = 2_500_000
    fit_horizon_days: int = 180
    seed: int = 0
    readiness_stamp: str = DEFAULT_READINESS_STAMP

    def __post_init__(self) -> None:
        if self.horizon_days < 1 or self.every_days < 1 or self.fit_horizon_days < 1:
            raise ValueError("horizon_days, every_days and fit_horizon_days must be positive")
        if self.readiness_stamp not in READINESS_STAMPS:
            raise ValueError(
                f"readiness_stamp {self.readiness_stamp!r} is not accepted; accepted: {', '.join(READINESS_STAMPS)}"
            )
        if self.max_per_lead is not None and self.max_per_lead < 1:
            raise ValueError("max_per_lead must be positive (or None for every grid date)")
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError("max_rows must be positive (or None for no limit)")

    @property
    def readiness(self) -> ReadinessLabel:
        """The readiness label these snapshots carry."""
        return ReadinessLabel(self.readiness_stamp, self.horizon_days)


@dataclass(frozen=True, slots=True)
class BoosterConfig:
    """LightGBM hyperparameters of one model; logged as MLflow params."""

    learning_rate: float = 0.05
    # Shallow trees: as accurate here as 31 free leaves, and TreeSHAP (the reasons of every score) costs
    # ~leaves x depth^2 per tree, so depth 4 makes explaining a lead about 5x cheaper (0.17 ms vs 0.8 ms).
    num_leaves: int = 15
    max_depth: int = 4
    max_rounds: int = 1000
    min_child_samples: int = 100
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    # Category codes seen in fewer rows than this are not split on alone; keeps rare industries from overfitting.
    min_data_per_group: int = 100
    cat_smooth: float = 10.0
    num_threads: int = 0  # 0: LightGBM's default, all cores
    seed: int = 0

    def params(self) -> dict[str, object]:
        """LightGBM parameter dict for binary log-loss training."""
        return {
            "objective": "binary",
            "metric": "binary_logloss",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "max_depth": self.max_depth,
            "min_child_samples": self.min_child_samples,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": 1,
            "lambda_l2": self.lambda_l2,
            "min_data_per_group": self.min_data_per_group,
            "cat_smooth": self.cat_smooth,
            "num_threads": self.num_threads,
            "seed": self.seed,
            "deterministic": True,
            "verbosity": -1,
        }

    def as_params(self, prefix: str) -> dict[str, object]:
        """Flat `prefix.name` dict for logging."""
        return {f"{prefix}.{k}": v for k, v in asdict(self).items()}


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Everything that decides a training run besides the data; logged as params."""

    readiness: BoosterConfig = field(default_factory=BoosterConfig)
    # Wins are ~1 % of leads: the fit model gets small, strongly regularised trees.
    fit: BoosterConfig = field(
        default_factory=lambda: BoosterConfig(
            num_leaves=7, max_depth=3, min_child_samples=50, learning_rate=0.03, lambda_l2=10.0, min_data_per_group=50,
            cat_smooth=50.0, feature_fraction=0.7,
        )
    )  # fmt: skip
    holdout_fraction: float = 0.2
    valid_fraction: float = 0.2
    rules_path: Path | None = None  # None: the packaged default rule table
    top_reasons: int = 3
    # Baselines learn from a seeded sample of at most this many pre-holdout rows: a linear model or a naive Bayes
    # table gains little from more, and the logistic model's one-hot matrix costs ~1.7 KB per row (minutes and
    # gigabytes at a million rows).
    baseline_max_rows: int = 300_000
    # Also train readiness without the domain's direction constraints, on the same split, to report what they cost
    # in holdout AUC (the evaluation says it; the constrained model is the one kept).
    measure_constraint_cost: bool = True
    seed: int = 0

    def as_params(self) -> dict[str, object]:
        """Flat params for MLflow."""
        params: dict[str, object] = {
            "holdout_fraction": self.holdout_fraction,
            "valid_fraction": self.valid_fraction,
            "rules_path": str(self.rules_path or _default_rules_path()),
            "top_reasons": self.top_reasons,
            "baseline_max_rows": self.baseline_max_rows,
            "measure_constraint_cost": self.measure_constraint_cost,
            "seed": self.seed,
        }
        params.update(self.readiness.as_params("readiness"))
        params.update(self.fit.as_params("fit"))
        return params


def _default_rules_path() -> Path:
    from training.baselines import default_rules_path  # the rule table's home; imported when params are logged

    return default_rules_path()
