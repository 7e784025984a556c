"""The trained lead scorer: feature code, both boosters, calibrators and reasons in one object shared by all callers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy.special import expit

from features.builder import FeatureBuilder, RequestLead
from features.export import ExportBuilder, ExportReasonLabeler
from features.reasons import Reason, ReasonLabeler
from features.treeshap import booster_contributions

CalibrationKind = Literal["isotonic", "sigmoid"]
Model = Literal["fit", "readiness"]
GRADES: tuple[str, ...] = ("A", "B", "C", "D")
READINESS_STAGES: tuple[str, ...] = ("nurture", "MQL", "SQL")
# Reference quantiles kept per model: 0..100, so a score is the percentile of the probability among holdout leads.
SCORE_PERCENTILES = np.linspace(0.0, 100.0, 101)
# Calibrated probabilities stay this far from 0 and 1: an isotonic plateau at exactly 0 would claim certainty
# (and an infinite log loss) from a few validation rows.
PROBABILITY_FLOOR = 1e-4
# Interpolation points of the loaded models as arrays, by the identity of the tuples that hold them: converting them
# costs more than scoring a few leads. Each entry keeps its tuple alive, so no other object can take its id meanwhile.
_POINTS: dict[int, tuple[tuple[float, ...], np.ndarray]] = {}
_MAX_POINTS = 256
# From this many rows a call spreads TreeSHAP (or LightGBM, for a booster without tables) over all cores: below it, on
# a busy 2-core box, handing work to other threads costs more than it saves.
THREADED_ROWS = 64


def _points(values: tuple[float, ...]) -> np.ndarray:
    """`values` as a read-only float array, converted once per tuple rather than on every call."""
    cached = _POINTS.get(id(values))
    if cached is not None:
        return cached[1]
    array = np.array(values, dtype=np.float64)
    array.setflags(write=False)
    if len(_POINTS) >= _MAX_POINTS:
        _POINTS.clear()  # models replaced many times over: start afresh
    _POINTS[id(values)] = (values, array)
    return array


def _clip_probabilities(p: np.ndarray) -> np.ndarray:
    # np.minimum/np.maximum: what np.clip computes, without its argument handling (a few microseconds a call).
    return np.minimum(np.maximum(np.asarray(p, dtype=np.float64), PROBABILITY_FLOOR), 1.0 - PROBABILITY_FLOOR)


def _round_tenths(x: np.ndarray) -> np.ndarray:
    # What np.round(x, 1) computes for floats (scale, round half to even, unscale), as two plain ufunc calls.
    return np.rint(x * 10.0) / 10.0


@dataclass(frozen=True, slots=True)
class Calibrator:
    """Maps a booster's raw log-odds to a calibrated probability (fitted in training, applied with numpy only).

    isotonic: piecewise-linear interpolation through (x_, y_), clipped at the ends (what sklearn's
    IsotonicRegression does with out_of_bounds="clip"); sigmoid: 1 / (1 + exp(-(a * x + b))) (Platt scaling).
    """

    kind: CalibrationKind
    x_: tuple[float, ...] = ()
    y_: tuple[float, ...] = ()
    a: float = 1.0
    b: float = 0.0

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated probabilities for raw log-odds."""
        if self.kind == "isotonic":
            p = np.interp(raw, _points(self.x_), _points(self.y_))
        else:
            p = expit(self.a * raw + self.b)
        return _clip_probabilities(p)


@dataclass(frozen=True, slots=True)
class ScoreScale:
    """Turns a probability into a 0-100 score: its percentile among a reference set (the holdout leads).

    Probabilities of a rare outcome (a win is ~1 % of leads) read poorly as scores; percentiles read the same for
    every model. Tied reference values (isotonic calibration has plateaus) take the middle of their percentile span.
    """

    probabilities: tuple[float, ...]
    percentiles: tuple[float, ...]

    @classmethod
    def from_reference(cls, reference: np.ndarray) -> ScoreScale:
        """Scale from reference probabilities (for example, the calibrated holdout scores)."""
        quantiles = np.quantile(np.asarray(reference, dtype=np.float64), SCORE_PERCENTILES / 100.0)
        unique, inverse = np.unique(quantiles, return_inverse=True)
        middle = np.bincount(inverse, weights=SCORE_PERCENTILES) / np.bincount(inverse)
        return cls(tuple(float(v) for v in unique), tuple(float(v) for v in middle))

    def score(self, probabilities: np.ndarray) -> np.ndarray:
        """Scores 0-100 (one decimal) for probabilities."""
        xp, fp = _points(self.probabilities), _points(self.percentiles)
        if xp.size == 1:
            return np.full(np.shape(probabilities), 50.0)
        return _round_tenths(np.asarray(np.interp(probabilities, xp, fp, left=0.0, right=100.0), dtype=np.float64))


@dataclass(frozen=True, slots=True)
class CutOffs:
    """Default routing cut-offs shipped with a model (sales ops replace them with a tuned policy).

    fit_grades: minimum fit score (0-100) for grades A, B, C (D below); readiness: minimum readiness probability
    for MQL and SQL.
    """

    fit_grades: tuple[float, float, float] = (80.0, 60.0, 30.0)
    readiness_mql: float = 0.2
    readiness_sql: float = 0.5

    def grade(self, fit_score: float) -> str:
        """Grade A-D of a fit score."""
        for grade, bound in zip(GRADES, self.fit_grades, strict=False):
            if fit_score >= bound:
                return grade
        return GRADES[-1]

    def stage(self, readiness_probability: float) -> str:
        """nurture, MQL or SQL for a readiness probability."""
        if readiness_probability >= self.readiness_sql:
            return "SQL"
        return "MQL" if readiness_probability >= self.readiness_mql else "nurture"


@dataclass(frozen=True, slots=True)
class LeadScore:
    """One lead's scores and reasons."""

    lead_id: str
    fit_probability: float
    fit_score: float
    fit_grade: str
    readiness_probability: float
    readiness_score: float
    readiness_stage: str
    fit_reasons: list[Reason]
    behaviour_reasons: list[Reason]
    lifecycle_stage: str  # lifecycle stage at as_of (features.engine.STAGES): readiness applies to open stages only
    # Where the lead stands in the funnel and for how long, with its impact: background to the reasons, not one.
    context_reasons: list[Reason] = field(default_factory=list)
    # The lead's own touches before as_of that look automated (features/bots.py), left out of its features.
    ignored_touches: int = 0


@dataclass(slots=True)
class LeadScorer:
    """Everything scoring needs, fitted in training and loaded as one object by the logged model and the service.

    The fit booster reads the builder's fit features; the readiness booster reads all of them. Both output
    raw log-odds that the calibrators map to probabilities; scores are percentiles among the holdout leads.
    """

    builder: FeatureBuilder | ExportBuilder
    fit_booster: lgb.Booster
    readiness_booster: lgb.Booster
    fit_calibrator: Calibrator
    readiness_calibrator: Calibrator
    fit_scale: ScoreScale
    readiness_scale: ScoreScale
    labeler: ReasonLabeler | ExportReasonLabeler
    cutoffs: CutOffs = field(default_factory=CutOffs)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def n_fit(self) -> int:
        """Number of fit features (the first columns of a feature row)."""
        return len(self.builder.fit_feature_names_)

    def _raw(self, model: Model, features: np.ndarray, *, threads: int) -> np.ndarray:
        booster = self.fit_booster if model == "fit" else self.readiness_booster
        x = features[:, : self.n_fit] if model == "fit" else features
        return np.asarray(booster.predict(x, raw_score=True, num_threads=threads), dtype=np.float64)

    def probabilities(self, features: np.ndarray, *, threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated (fit, readiness) probabilities for a feature matrix in builder column order."""
        fit = self.fit_calibrator.apply(self._raw("fit", features, threads=threads))
        readiness = self.readiness_calibrator.apply(self._raw("readiness", features, threads=threads))
        return fit, readiness

    def _contributions_with_bias(self, model: Model, features: np.ndarray, *, threads: int) -> np.ndarray:
        booster = self.fit_booster if model == "fit" else self.readiness_booster
        x = features[:, : self.n_fit] if model == "fit" else features
        return booster_contributions(booster, x, threads=threads)

    def contributions(self, model: Model, features: np.ndarray, *, threads: int = 0) -> np.ndarray:
        """TreeSHAP contributions (rows x features, log-odds, bias column dropped)."""
        return self._contributions_with_bias(model, features, threads=threads)[:, :-1]

    def score_features(
        self,
        lead_ids: Sequence[str],
        features: np.ndarray,
        *,
        top_k: int = 3,
        threads: int = 0,
        ignored_touches: Sequence[int] | np.ndarray | None = None,
    ) -> list[LeadScore]:
        """Scores, grades and reasons for rows of features (and the touches each lead's features left out)."""
        # TreeSHAP contributions plus the bias add up to the raw score, so one call per booster gives both.
        fit_full = self._contributions_with_bias("fit", features, threads=threads)
        ready_full = self._contributions_with_bias("readiness", features, threads=threads)
        fit_p = self.fit_calibrator.apply(fit_full.sum(axis=1))
        ready_p = self.readiness_calibrator.apply(ready_full.sum(axis=1))
        fit_s = self.fit_scale.score(fit_p)
        ready_s = self.readiness_scale.score(ready_p)
        fit_contrib, ready_contrib = fit_full[:, :-1], ready_full[:, :-1]
        padded = np.zeros((features.shape[0], features.shape[1]))
        padded[:, : self.n_fit] = fit_contrib
        fit_impacts = self.labeler.group_impacts(padded)
        ready_impacts = self.labeler.behaviour_impacts(ready_contrib, features)
        rows = features.tolist()  # once for both sides: reasons are phrased from single values
        fit_reasons = self.labeler.top_reasons_of_rows(fit_impacts, rows, side="fit", k=top_k)
        behaviour_reasons = self.labeler.top_reasons_of_rows(ready_impacts, rows, side="behaviour", k=top_k)
        context_reasons = self.labeler.top_reasons_of_rows(ready_impacts, rows, side="context", k=2)
        figures = zip(lead_ids, fit_p.tolist(), fit_s.tolist(), ready_p.tolist(), ready_s.tolist(), strict=True)
        ignored = [0] * len(lead_ids) if ignored_touches is None else [int(n) for n in ignored_touches]
        stages = self.builder.lifecycle_stages(features)
        return [
            LeadScore(
                lead_id=str(lead_id),
                fit_probability=fp,
                fit_score=fs,
                fit_grade=self.cutoffs.grade(fs),
                readiness_probability=rp,
                readiness_score=rs,
                readiness_stage=self.cutoffs.stage(rp),
                fit_reasons=fit_reasons[i],
                behaviour_reasons=behaviour_reasons[i],
                lifecycle_stage=stages[i],
                context_reasons=context_reasons[i],
                ignored_touches=ignored[i],
            )
            for i, (lead_id, fp, fs, rp, rs) in enumerate(figures)
        ]

    def score_record(
        self,
        lead: Mapping[str, object],
        activities: Sequence[Mapping[str, object]],
        as_of: dt.datetime,
        colleagues: Sequence[Mapping[str, object]] = (),
        *,
        top_k: int = 3,
    ) -> LeadScore:
        """One lead at request time, through the same feature engine as training (one thread: fastest for a row)."""
        found = self.builder.record_features(lead, activities, as_of, colleagues)
        return self.score_features(
            [str(lead["lead_id"])], found.rows, top_k=top_k, threads=1, ignored_touches=found.ignored_touches
        )[0]

    def score_requests(self, requests: Sequence[RequestLead], *, top_k: int = 3) -> list[LeadScore]:
        """Many leads at request time, in order: one feature-engine pass for all rows, then one call per booster.

        Each lead's scores and reasons equal `score_record` of that lead: the engine reads every lead's own rows only.
        """
        found = self.builder.request_features(requests)
        threads = 1 if len(requests) < THREADED_ROWS else 0
        lead_ids = [str(r.lead["lead_id"]) for r in requests]
        return self.score_features(
            lead_ids, found.rows, top_k=top_k, threads=threads, ignored_touches=found.ignored_touches
        )

    def score_frame(self, leads: pd.DataFrame, activities: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
        """Batch probabilities and scores for (lead_id, as_of) pairs of canonical tables (no reasons: fast)."""
        if not isinstance(self.builder, FeatureBuilder):
            raise TypeError("score_frame reads the lead contract's tables; an export model scores export rows")
        features = self.builder.transform(leads, activities, pairs)
        matrix = features[self.builder.feature_names_].to_numpy(dtype=np.float64)
        fit_p, ready_p = self.probabilities(matrix)
        return pd.DataFrame(
            {
                "lead_id": features["lead_id"].to_numpy(),
                "as_of": features["as_of"].to_numpy(),
                "fit_probability": fit_p,
                "fit_score": self.fit_scale.score(fit_p),
                "readiness_probability": ready_p,
                "readiness_score": self.readiness_scale.score(ready_p),
            }
        )
