"""Behaviour of a trained scorer: invariance, direction and minimum quality, as users of the scores expect."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd

from features.scoring import LeadScorer
from tests.conftest import Trained
from training.metrics import binary_metrics
from training.pipeline import BASELINES, DEFAULT_SQL_SHARE


def _record(leads: pd.DataFrame, lead_id: str) -> dict[str, Any]:
    row = leads.loc[leads["lead_id"] == lead_id].iloc[0]
    return {k: (None if pd.isna(v) else v) for k, v in row.items()}


def _touches(activities: pd.DataFrame, lead_ids: list[str], before: pd.Timestamp) -> list[dict[str, Any]]:
    own = activities[activities["lead_id"].isin(lead_ids) & (activities["occurred_at"] < before)]
    return [
        {"lead_id": r.lead_id, "occurred_at": r.occurred_at, "activity_type": str(r.activity_type)}
        for r in own.itertuples(index=False)
    ]


def _sample_leads(trained: Trained, n: int, seed: int = 0) -> tuple[list[str], pd.Timestamp]:
    """Leads at readiness stages on the last holdout date, with that date."""
    holdout = trained.result.readiness.holdout
    as_of = pd.Timestamp(holdout["as_of"].max())
    ids = holdout.loc[holdout["as_of"] == as_of, "lead_id"].drop_duplicates()
    return list(ids.sample(min(n, len(ids)), random_state=seed)), as_of


def test_a_demo_request_raises_readiness(trained: Trained) -> None:
    scorer = trained.result.scorer
    ids, as_of = _sample_leads(trained, 60)
    at = as_of.to_pydatetime()
    deltas = []
    for lead_id in ids:
        lead = _record(trained.leads, lead_id)
        touches = _touches(trained.activities, [lead_id], as_of)
        demo = {"lead_id": lead_id, "occurred_at": at - dt.timedelta(days=2), "activity_type": "demo_request"}
        before = scorer.score_record(lead, touches, at)
        after = scorer.score_record(lead, [*touches, demo], at, top_k=len(scorer.labeler.groups))
        deltas.append(after.readiness_probability - before.readiness_probability)
        # The demo's own reason says what happened and pushes readiness up (part of its effect also shows in
        # the lead's overall activity level, which counts the same touch).
        demo_reason = next(r for r in after.behaviour_reasons if r.group == "demo_request")
        assert demo_reason.label.startswith("requested a demo 2 days ago"), demo_reason
        assert demo_reason.impact > 0, demo_reason
    deltas_arr = np.array(deltas)
    assert (deltas_arr > 0).mean() >= 0.9, f"a demo request raised readiness for only {(deltas_arr > 0).mean():.0%}"
    # Trees are not monotone: the same touch also moves velocity and recency features, which may nudge a score
    # down a hair, but never by a visible amount.
    assert deltas_arr.min() > -0.002, f"a demo request lowered a lead's readiness by {-deltas_arr.min():.4f}"


def test_a_leads_name_and_ids_do_not_change_its_scores(trained: Trained) -> None:
    scorer = trained.result.scorer
    ids, as_of = _sample_leads(trained, 20, seed=1)
    at = as_of.to_pydatetime()
    for lead_id in ids:
        lead = _record(trained.leads, lead_id)
        colleagues_ids = trained.leads.loc[
            (trained.leads["account_id"] == lead["account_id"]) & (trained.leads["lead_id"] != lead_id), "lead_id"
        ].tolist()
        colleagues = [_record(trained.leads, c) for c in colleagues_ids]
        touches = _touches(trained.activities, [lead_id, *colleagues_ids], as_of)
        original = scorer.score_record(lead, touches, at, colleagues)

        renamed = {**lead, "lead_id": "someone-else", "account_id": "another-account", "first_name": "Ada"}
        moved_touches = [{**t, "lead_id": "someone-else"} if t["lead_id"] == lead_id else t for t in touches]
        moved_colleagues = [{**c, "account_id": "another-account"} for c in colleagues]
        again = scorer.score_record(renamed, moved_touches, at, moved_colleagues)
        assert again.fit_probability == original.fit_probability
        assert again.readiness_probability == original.readiness_probability
        assert [r.label for r in again.behaviour_reasons] == [r.label for r in original.behaviour_reasons]


def _profile(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "lead_id": "probe",
        "account_id": "probe-account",
        "created_at": pd.Timestamp("2025-01-06", tz="UTC"),
        "country": "US",
        "job_title": None,
        "source": "organic search",
        "channel": "inbound",
    }
    return {**base, **fields}


def test_an_account_that_fits_the_profile_gets_a_higher_fit_score(trained: Trained) -> None:
    scorer: LeadScorer = trained.result.scorer
    at = dt.datetime(2025, 2, 3, tzinfo=dt.UTC)
    ideal = _profile(
        industry="software", employee_count=800, annual_revenue=1.5e8, region="north america",
        seniority="director", department="it", email_domain="acme-software.com", job_title="Director of IT",
    )  # fmt: skip
    poor = _profile(
        industry="retail", employee_count=4, annual_revenue=2.0e5, region="latam",
        seniority="student", department="other", email_domain="gmail.com", job_title="Student",
    )  # fmt: skip
    good = scorer.score_record(ideal, [], at)
    bad = scorer.score_record(poor, [], at)
    assert good.fit_probability > bad.fit_probability
    assert good.fit_grade < bad.fit_grade  # "A" sorts before "D"
    assert {r.group for r in good.fit_reasons} & {"industry", "company_size", "seniority", "email_domain"}


# What sales can rely on in the readiness probabilities, judged out of time. ECE alone cannot judge a scorer of rare
# events: on a holdout with 0.9 % positives, a constant 0 scores an ECE of 0.009 and the constant base rate 0.
MAX_ECE = 0.02
# Log-loss skill over the best constant, the holdout's own positive rate (a proper scoring rule: it rewards ranking
# and calibration together, and no constant can reach a positive skill). The model reaches about 0.14 here.
MIN_LOG_LOSS_SKILL = 0.05
# Calibration where it matters: the leads the default cut-offs call SQL-ready (the top 5 %), whom sales calls first
# and plans capacity for. Their mean probability must match their observed rate within a factor of 2: a looser bar
# than the noise of ~40 positives (about 15 %) and the out-of-time drift allow, tight enough to catch a calibrator
# that squeezes probabilities toward 0 while keeping their order (and so every ranking metric).
MAX_TOP_RATIO = 2.0
MIN_ROC_AUC = 0.75  # the model reaches about 0.82 on this funnel; a constant scores 0.5


def quality_problems(y: np.ndarray, p: np.ndarray) -> list[str]:
    """What is wrong with probabilities `p` of labels `y` by the bars above (empty: nothing)."""
    problems = []
    metrics = binary_metrics(y, p)
    rate = float(y.mean())
    constant_loss = -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate))
    skill = 1 - metrics["log_loss"] / constant_loss
    if not skill >= MIN_LOG_LOSS_SKILL:
        problems.append(f"log-loss skill over the base rate {skill:.3f} < {MIN_LOG_LOSS_SKILL}")
    top = np.argsort(-p, kind="stable")[: int(np.ceil(DEFAULT_SQL_SHARE * len(p)))]
    predicted, observed = float(p[top].mean()), float(y[top].mean())
    if not observed / MAX_TOP_RATIO <= predicted <= observed * MAX_TOP_RATIO:
        problems.append(f"top {DEFAULT_SQL_SHARE:.0%}: mean probability {predicted:.4f}, observed rate {observed:.4f}")
    if not metrics["roc_auc"] >= MIN_ROC_AUC:
        problems.append(f"ROC AUC {metrics['roc_auc']:.3f} < {MIN_ROC_AUC}")
    if not metrics["ece"] < MAX_ECE:
        problems.append(f"ECE {metrics['ece']:.4f} >= {MAX_ECE}")
    return problems


def test_model_beats_every_baseline_and_is_calibrated_out_of_time(trained: Trained) -> None:
    metrics = trained.result.readiness.metrics
    for baseline in BASELINES:
        assert metrics["model"]["roc_auc"] > metrics[baseline]["roc_auc"], baseline
    holdout = trained.result.readiness.holdout
    assert quality_problems(holdout["label"].to_numpy(), holdout["model"].to_numpy()) == []


def test_the_quality_bars_refuse_constant_and_squeezed_probabilities(trained: Trained) -> None:
    # The bars above would not notice these scorers were they too loose; each fails them on the same holdout.
    holdout = trained.result.readiness.holdout
    y, p = holdout["label"].to_numpy(), holdout["model"].to_numpy()
    for name, bad in [
        ("constant 0", np.zeros_like(p)),
        ("constant base rate", np.full_like(p, y.mean())),
        ("model squeezed toward 0", p * 0.01),
        ("model stretched toward 1", np.sqrt(p)),
    ]:
        assert quality_problems(y, bad), name


def test_readiness_quality_holds_in_every_large_segment(trained: Trained) -> None:
    segments = trained.result.readiness.segments["model"]
    judged = segments[np.isfinite(segments["roc_auc"])]
    assert len(judged) >= 2  # the small test funnel has enough positives in the large regions only
    assert (judged["roc_auc"] > 0.65).all(), judged[["segment", "value", "n", "roc_auc"]]


def test_scores_from_treeshap_sums_equal_the_boosters_predictions(trained: Trained) -> None:
    # score_features derives probabilities from the contributions (bias + sum = raw score) to save a call per model.
    scorer = trained.result.scorer
    rows = trained.training_set.readiness[scorer.builder.feature_names_].to_numpy(np.float64)[:200]
    fit_p, ready_p = scorer.probabilities(rows)
    scored = scorer.score_features([str(i) for i in range(len(rows))], rows)
    np.testing.assert_allclose([s.fit_probability for s in scored], fit_p, rtol=0, atol=1e-9)
    np.testing.assert_allclose([s.readiness_probability for s in scored], ready_p, rtol=0, atol=1e-9)
