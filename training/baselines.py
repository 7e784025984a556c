"""Baseline scorers the leadscore models must beat on the same holdout: Odoo's naive Bayes, point rules, a logit."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Literal, Self

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sklearn.compose import ColumnTransformer
from sklearn.exceptions import NotFittedError
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from features.validation import normalize_category

log = logging.getLogger(__name__)

# Odoo adds 0.1 to every won and lost count instead of 1 ("should be +1 but it weights too much on small recordset").
ODOO_SMOOTHING = 0.1
# Platt scaling regularises its single slope only lightly: enough to keep it finite on tiny or separable training
# sets, negligible against the log loss of thousands of examples.
PLATT_C = 1.0
# Category codes seen on fewer training rows than this share one "infrequent" indicator: a coefficient fitted on a
# handful of rows is noise, and unseen codes at scoring fall into the same bucket.
MIN_CATEGORY_ROWS = 20
# Imputed code for a missing category; real codes are 0..K, so missing becomes a level of its own.
MISSING_CODE = -1.0
# Enough L-BFGS iterations for a few hundred standardised columns; the default 100 stops short on millions of rows.
LOGIT_MAX_ITER = 1000
# Counts and durations are heavy-tailed (a handful of leads have hundreds of page views); their logarithm keeps a
# few extreme rows from dominating a linear model. Selected by name when the caller does not say.
HEAVY_TAILED_PREFIXES: tuple[str, ...] = ("n_", "days_", "account_", "engagement_decayed")

Op = Literal[">", ">=", "<", "<=", "==", "!=", "in", "not_in", "is_null", "not_null"]
_ORDERING: frozenset[str] = frozenset({">", ">=", "<", "<="})
_LIST_OPS: frozenset[str] = frozenset({"in", "not_in"})
_NULL_OPS: frozenset[str] = frozenset({"is_null", "not_null"})
Scalar = float | str
_COMPARE: dict[str, np.ufunc] = {
    ">": np.greater,
    ">=": np.greater_equal,
    "<": np.less,
    "<=": np.less_equal,
    "==": np.equal,
    "!=": np.not_equal,
}


# ---- shared helpers --------------------------------------------------------------------------------------------
def _require_columns(frame: pd.DataFrame, columns: Sequence[str], who: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{who}: the frame has no column(s) {missing}; it has {len(frame.columns)} columns")


def _binary_labels(y: np.ndarray | pd.Series, n_rows: int, who: str) -> np.ndarray:
    """Labels as a float array of 0.0 and 1.0, refusing anything that is not a binary outcome per row."""
    labels = np.asarray(y, dtype=np.float64).ravel()
    if labels.shape[0] != n_rows:
        raise ValueError(f"{who}: y has {labels.shape[0]} labels for {n_rows} rows")
    if not np.isin(labels, (0.0, 1.0)).all():
        bad = np.unique(labels[~np.isin(labels, (0.0, 1.0))])[:5]
        raise ValueError(f"{who}: y must hold 0/1 (or bool) labels, got e.g. {bad.tolist()}")
    return labels


def _label(value: object) -> str:
    """Normalised text of one category value; 3.0 and 3 give the same label so int and float codes agree."""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        value = int(value)
    return normalize_category(str(value))


def _categories(column: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """Row codes into the column's distinct normalised labels, -1 for empty (missing or blank) values.

    Normalisation runs once per distinct raw value, so a million rows cost one factorize, not a million calls.
    """
    raw_codes, uniques = pd.factorize(column, use_na_sentinel=True)
    labels = np.array([_label(u) for u in uniques], dtype=object)
    labels[labels == ""] = None
    label_codes, distinct = pd.factorize(labels, use_na_sentinel=True)
    # The appended -1 is picked by the missing-value sentinel (-1) of raw_codes.
    return np.append(label_codes, -1)[raw_codes], pd.Index(distinct, dtype=object)


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    """log(1 / (1 + exp(-z))) without overflow for large |z|."""
    out: np.ndarray = -np.logaddexp(0.0, -z)
    return out


def _two_columns(log_odds: np.ndarray) -> np.ndarray:
    """(P(negative), P(positive)) columns from log-odds, each side computed directly so neither loses precision."""
    return np.column_stack([np.exp(_log_sigmoid(-log_odds)), np.exp(_log_sigmoid(log_odds))])


# ---- 1. Odoo CRM predictive lead scoring ----------------------------------------------------------------------
class OdooNaiveBayes:
    """Odoo CRM's predictive lead scoring: a categorical naive Bayes over closed (won or lost) examples.

    Mirrors `crm.lead._pls_get_naive_bayes_probabilities`: every (field, value) pair seen at training holds won and
    lost counts plus `alpha`; a field's totals sum its smoothed counts; the prior is smoothed won against lost; a
    value that is empty or was never seen at training contributes nothing. Computed as a sum of log ratios, so
    many fields cannot underflow. Field values may be raw text (compared case- and whitespace-insensitively) or
    category codes (NaN is empty).
    """

    def __init__(self, *, fields: Sequence[str], alpha: float = ODOO_SMOOTHING) -> None:
        self.fields = fields
        self.alpha = alpha

    def fit(self, X: pd.DataFrame, y: np.ndarray | pd.Series) -> Self:  # noqa: N803 (sklearn's name for the design matrix)
        """Count won and lost examples per field value (Odoo's frequency table)."""
        who = type(self).__name__
        fields = list(self.fields)
        if not fields or len(set(fields)) != len(fields):
            raise ValueError(f"{who}: fields must be a non-empty list of distinct column names, got {fields}")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"{who}: alpha must be a positive number, got {self.alpha}")
        _require_columns(X, fields, who)
        labels = _binary_labels(y, len(X), who)
        self.n_won_ = int(labels.sum())
        self.n_lost_ = len(labels) - self.n_won_
        # Odoo reads the prior from the first stage's frequency row, which every closed lead increments: it carries
        # the same +alpha as any other row.
        self.prior_log_odds_ = math.log(self.n_won_ + self.alpha) - math.log(self.n_lost_ + self.alpha)
        self.frequencies_: dict[str, pd.DataFrame] = {}
        self.log_ratios_: dict[str, pd.Series] = {}
        for field in fields:
            codes, values = _categories(X[field])
            present = codes >= 0
            n_values = len(values)
            n_won = np.bincount(codes[present], weights=labels[present], minlength=n_values)
            n_all = np.bincount(codes[present], minlength=n_values)
            won, lost = n_won + self.alpha, n_all - n_won + self.alpha
            self.frequencies_[field] = pd.DataFrame({"won": won, "lost": lost}, index=values)
            ratio = (np.log(won) - np.log(won.sum())) - (np.log(lost) - np.log(lost.sum()))
            self.log_ratios_[field] = pd.Series(ratio, index=values, name=field)
        self.classes_ = np.array([0, 1])
        log.info("%s fitted on %d closed examples (%d won) over %d fields", who, len(labels), self.n_won_, len(fields))
        return self

    def decision_function(self, X: pd.DataFrame) -> np.ndarray:  # noqa: N803
        """Log-odds of winning: the prior plus one log likelihood ratio per known, non-empty field value."""
        if not hasattr(self, "log_ratios_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; call fit first")
        _require_columns(X, list(self.log_ratios_), type(self).__name__)
        log_odds = np.full(len(X), self.prior_log_odds_, dtype=np.float64)
        for field, ratios in self.log_ratios_.items():
            codes, values = _categories(X[field])
            # Unseen values get 0 (skipped, as in Odoo); the appended 0 serves empty values (code -1).
            per_value = ratios.reindex(values).fillna(0.0).to_numpy(dtype=np.float64)
            log_odds += np.append(per_value, 0.0)[codes]
        return log_odds

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:  # noqa: N803
        """(P(lost), P(won)) per row."""
        return _two_columns(self.decision_function(X))


# ---- 2. Hand-written point rules ------------------------------------------------------------------------------
class Rule(BaseModel):
    """One marketer's scoring rule: add `points` when `column op value` holds for a lead."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    column: str = Field(min_length=1)
    op: Op
    value: Scalar | list[Scalar] | None = None
    # Strict: a quoted "10" in YAML is a mistake worth reporting, not a number to guess at.
    points: float = Field(strict=True, allow_inf_nan=False)

    @model_validator(mode="after")
    def _value_fits_op(self) -> Self:
        if self.op in _NULL_OPS:
            if self.value is not None:
                raise ValueError(f"op {self.op!r} takes no value, got {self.value!r}")
        elif self.op in _LIST_OPS:
            if not isinstance(self.value, list) or not self.value:
                raise ValueError(f"op {self.op!r} needs a non-empty list of values, got {self.value!r}")
        elif self.op in _ORDERING:
            if not isinstance(self.value, float):
                raise ValueError(f"op {self.op!r} needs a number, got {self.value!r}")
        elif not isinstance(self.value, float | str):
            raise ValueError(f"op {self.op!r} needs one number or text value, got {self.value!r}")
        return self

    def matches(self, X: pd.DataFrame) -> np.ndarray:  # noqa: N803
        """Boolean mask of the rows the rule applies to; a missing value never satisfies a comparison."""
        if self.column not in X.columns:
            raise ValueError(f"rule {self.name!r}: the frame has no column {self.column!r}")
        column = X[self.column]
        if pd.api.types.is_numeric_dtype(column.dtype):
            return self._match_numbers(column.to_numpy(dtype=np.float64, na_value=np.nan))
        return self._match_text(column)

    def _match_numbers(self, x: np.ndarray) -> np.ndarray:
        present: np.ndarray = ~np.isnan(x)
        if self.op in _NULL_OPS:
            return _null_match(self.op, present)
        values = self.value if isinstance(self.value, list) else [self.value]
        if not all(isinstance(v, float) for v in values):
            raise ValueError(
                f"rule {self.name!r}: column {self.column!r} is numeric but the rule compares it with text "
                f"{self.value!r}; compare category codes with numbers, or raw values through the 'lead.' column"
            )
        numbers = np.asarray(values, dtype=np.float64)
        inside = np.isin(x, numbers) if self.op in _LIST_OPS else _COMPARE[self.op](x, numbers[0])
        hit: np.ndarray = ~inside if self.op == "not_in" else inside
        # NaN compares False, except under "!=" and "not_in": `present` makes a missing value never match.
        matched: np.ndarray = present & hit
        return matched

    def _match_text(self, column: pd.Series) -> np.ndarray:
        codes, labels = _categories(column)
        present: np.ndarray = codes >= 0
        if self.op in _NULL_OPS:
            return _null_match(self.op, present)
        if self.op in _ORDERING:
            raise ValueError(f"rule {self.name!r}: op {self.op!r} needs a numeric column, {self.column!r} holds text")
        values = self.value if isinstance(self.value, list) else [self.value]
        wanted = {_label(v) for v in values}
        inside = np.append(labels.isin(wanted), False)[codes]
        hit: np.ndarray = ~inside if self.op in ("!=", "not_in") else inside
        matched: np.ndarray = present & hit
        return matched


def _null_match(op: str, present: np.ndarray) -> np.ndarray:
    matched: np.ndarray = present if op == "not_null" else ~present
    return matched


def _rule_problems(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"])
        parts.append(f"{where}: {e['msg']}" if where else str(e["msg"]))
    return "; ".join(parts)


def default_rules_path() -> Path:
    """The rule table shipped with leadscore (`training/rules/default_rules.yaml`)."""
    resource = files("training").joinpath("rules", "default_rules.yaml")
    # A regular package installed from a wheel or used from a checkout lives on disk, where resources are paths.
    if not isinstance(resource, Path):
        raise RuntimeError(f"the training package is not on the file system ({resource!r}); install it unzipped")
    return resource


class PointRules:
    """HubSpot/Marketo-style lead score: the sum of the points of every matching rule, mapped to a probability.

    Points are not probabilities, so `fit` learns a Platt mapping (logistic regression on the point total) from the
    training data; log loss and calibration of the baseline are then comparable with the models'.
    """

    def __init__(self, *, rules: Sequence[Rule]) -> None:
        self.rules = rules

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str] | Traversable, *, section: str = "readiness") -> Self:
        """Rules of one top-level section (`fit` or `readiness`) of a rule file; bad rules are named and explained."""
        source = Path(path) if isinstance(path, str | os.PathLike) else path
        try:
            document = yaml.safe_load(source.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ValueError(f"{source}: not valid YAML: {err}") from err
        if not isinstance(document, dict) or section not in document:
            found = sorted(document) if isinstance(document, dict) else []
            raise ValueError(f"{source}: no section {section!r}; the file has sections {found}")
        entries = document[section]
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"{source} [{section}]: expected a non-empty list of rules, got {type(entries).__name__}")
        rules: list[Rule] = []
        for number, entry in enumerate(entries, start=1):
            name = entry.get("name", "<unnamed>") if isinstance(entry, dict) else "<unnamed>"
            where = f"{source} [{section}] rule #{number} ({name!r})"
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: expected a mapping with name, column, op, value, points; got {entry!r}")
            try:
                rules.append(Rule.model_validate(entry))
            except ValidationError as err:
                raise ValueError(f"{where}: {_rule_problems(err)}") from err
        names = [r.name for r in rules]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"{source} [{section}]: rule names must be unique, repeated: {duplicated}")
        return cls(rules=rules)

    def score(self, X: pd.DataFrame) -> np.ndarray:  # noqa: N803
        """Point total per row: the sum of the points of the rules that match it."""
        total = np.zeros(len(X), dtype=np.float64)
        for rule in self.rules:
            total += np.where(rule.matches(X), rule.points, 0.0)
        return total

    def fit(self, X: pd.DataFrame, y: np.ndarray | pd.Series) -> Self:  # noqa: N803
        """Learn the Platt mapping from point totals to the probability of a positive label."""
        who = type(self).__name__
        if not self.rules:
            raise ValueError(f"{who}: at least one rule is needed")
        labels = _binary_labels(y, len(X), who)
        if np.unique(labels).size < 2:
            raise ValueError(f"{who}: fitting the point-to-probability mapping needs positive and negative examples")
        points = self.score(X)
        self.calibrator_ = LogisticRegression(C=PLATT_C).fit(points[:, None], labels)
        self.classes_ = np.array([0, 1])
        slope = float(self.calibrator_.coef_[0, 0])
        intercept = float(self.calibrator_.intercept_[0])
        log.info("%s: %d rules, Platt slope %.4f per point, intercept %.3f", who, len(self.rules), slope, intercept)
        if slope <= 0:
            # Kept as fitted (it is the honest calibration), but the rules then rank leads the wrong way round.
            log.warning("%s: more points mean a lower positive rate on the training data (slope %.4f)", who, slope)
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:  # noqa: N803
        """(P(negative), P(positive)) per row from the point totals."""
        if not hasattr(self, "calibrator_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet; call fit first")
        proba: np.ndarray = self.calibrator_.predict_proba(self.score(X)[:, None])
        return proba


# ---- 3. Logistic regression on the model features -------------------------------------------------------------
def signed_log1p(x: np.ndarray) -> np.ndarray:
    """sign(x) * log(1 + |x|): the log of counts and durations, defined for the odd negative value too."""
    out: np.ndarray = np.sign(x) * np.log1p(np.abs(x))
    return out


def _numeric_steps(*, log_scale: bool) -> Pipeline:
    # The indicator keeps "never happened" (NaN days-since) apart from the median it is imputed with; all-NaN
    # columns are kept (imputed 0) so the fitted column layout does not depend on one training window.
    steps: list[object] = [
        SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
        StandardScaler(),
    ]
    if log_scale:
        steps.insert(0, FunctionTransformer(signed_log1p, feature_names_out="one-to-one"))
    return make_pipeline(*steps)


def logistic_baseline(
    *,
    numeric: Sequence[str],
    categorical: Sequence[str],
    seed: int = 0,
    log_scale: Sequence[str] | None = None,
) -> Pipeline:
    """Unfitted logistic regression on the model features, selecting its columns by name (extra columns ignored).

    Numeric columns are imputed (median, plus missing indicators) and standardised; those in `log_scale` (by
    default: counts and durations, named n_*, days_*, account_*, engagement_decayed) go through signed_log1p
    first. Categorical code columns are one-hot encoded with missing as a level and rare codes pooled.
    """
    numeric, categorical = list(numeric), list(categorical)
    both = sorted(set(numeric) & set(categorical))
    if both:
        raise ValueError(f"logistic_baseline: columns cannot be both numeric and categorical: {both}")
    if not numeric and not categorical:
        raise ValueError("logistic_baseline: no feature columns given")
    logged = set(log_scale) if log_scale is not None else {c for c in numeric if c.startswith(HEAVY_TAILED_PREFIXES)}
    unknown = sorted(logged - set(numeric))
    if unknown:
        raise ValueError(f"logistic_baseline: log_scale names columns that are not numeric features: {unknown}")
    columns = ColumnTransformer(
        [
            ("log_numeric", _numeric_steps(log_scale=True), [c for c in numeric if c in logged]),
            ("numeric", _numeric_steps(log_scale=False), [c for c in numeric if c not in logged]),
            (
                "categorical",
                make_pipeline(
                    SimpleImputer(strategy="constant", fill_value=MISSING_CODE, keep_empty_features=True),
                    OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=MIN_CATEGORY_ROWS),
                ),
                categorical,
            ),
        ],
        remainder="drop",
    )
    model = LogisticRegression(C=1.0, solver="lbfgs", max_iter=LOGIT_MAX_ITER, random_state=seed)
    return Pipeline([("columns", columns), ("logit", model)])
