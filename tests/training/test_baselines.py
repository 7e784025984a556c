"""Baseline scorers: Odoo naive Bayes against hand-computed values, point rules and their YAML, the logistic model."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.metrics import roc_auc_score

from features.builder import FeatureBuilder
from features.spec import LEADS
from tests.factories import lead, leads_frame
from training.baselines import (
    OdooNaiveBayes,
    PointRules,
    Rule,
    default_rules_path,
    logistic_baseline,
)


# ---- Odoo naive Bayes ------------------------------------------------------------------------------------------
def _toy() -> tuple[pd.DataFrame, np.ndarray]:
    frame = pd.DataFrame(
        {
            "lead.industry": ["Software", "software ", "Retail", "RETAIL", "retail"],
            "size_band": [1.0, 2.0, 1.0, np.nan, 2.0],
        }
    )
    return frame, np.array([1, 0, 1, 0, 0])


def test_odoo_matches_hand_computed_probability() -> None:
    frame, y = _toy()
    model = OdooNaiveBayes(fields=["lead.industry", "size_band"]).fit(frame, y)
    # Odoo's frequency table with +0.1 on every count (2 won, 3 lost; the NaN size band is not counted):
    #   prior: won 2.1, lost 3.1
    #   industry: software won 1.1 lost 1.1, retail won 1.1 lost 2.1   -> totals won 2.2, lost 3.2
    #   size_band: 1 won 2.1 lost 0.1, 2 won 0.1 lost 2.1              -> totals won 2.2, lost 2.2
    # Odoo's product form for a software lead in size band 1:
    s_won = (2.1 / 5.2) * (1.1 / 2.2) * (2.1 / 2.2)
    s_lost = (3.1 / 5.2) * (1.1 / 3.2) * (0.1 / 2.2)
    expected = s_won / (s_won + s_lost)
    query = pd.DataFrame({"lead.industry": ["  SOFTWARE"], "size_band": [1.0]})
    proba = model.predict_proba(query)
    assert proba.shape == (1, 2)
    assert proba[0, 1] == pytest.approx(expected, rel=1e-12)
    assert proba.sum(axis=1) == pytest.approx([1.0])


def test_odoo_skips_unseen_and_empty_values() -> None:
    frame, y = _toy()
    model = OdooNaiveBayes(fields=["lead.industry", "size_band"]).fit(frame, y)
    query = pd.DataFrame({"lead.industry": ["Mining", None, "  "], "size_band": [7.0, np.nan, np.nan]})
    prior = 2.1 / (2.1 + 3.1)
    np.testing.assert_allclose(model.predict_proba(query)[:, 1], prior, rtol=1e-12)


def test_odoo_more_wins_for_a_value_raise_its_probability() -> None:
    frame, y = _toy()
    extra = pd.DataFrame({"lead.industry": ["software"] * 3, "size_band": [np.nan] * 3})
    base = OdooNaiveBayes(fields=["lead.industry"]).fit(frame, y)
    more = OdooNaiveBayes(fields=["lead.industry"]).fit(pd.concat([frame, extra]), np.r_[y, 1, 1, 1])
    query = pd.DataFrame({"lead.industry": ["software"]})
    assert more.predict_proba(query)[0, 1] > base.predict_proba(query)[0, 1]


def test_odoo_treats_int_and_float_codes_alike_and_stays_finite_with_many_fields() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({f"f{i}": rng.integers(0, 4, 400).astype(np.float64) for i in range(200)})
    y = rng.integers(0, 2, 400)
    model = OdooNaiveBayes(fields=list(frame.columns)).fit(frame, y)
    as_int = model.predict_proba(frame.astype(np.int64))
    np.testing.assert_array_equal(as_int, model.predict_proba(frame))
    assert np.isfinite(model.decision_function(frame)).all()


def test_odoo_names_a_missing_column_and_refuses_non_binary_labels() -> None:
    frame, y = _toy()
    with pytest.raises(ValueError, match=r"lead\.region"):
        OdooNaiveBayes(fields=["lead.industry", "lead.region"]).fit(frame, y)
    with pytest.raises(ValueError, match="0/1"):
        OdooNaiveBayes(fields=["lead.industry"]).fit(frame, np.array([0, 1, 2, 0, 1]))
    with pytest.raises(NotFittedError):
        OdooNaiveBayes(fields=["lead.industry"]).predict_proba(frame)


# ---- point rules -----------------------------------------------------------------------------------------------
def _rules(*specs: tuple[str, str, object, float]) -> PointRules:
    return PointRules(
        rules=[
            Rule.model_validate({"name": f"r{i}", "column": column, "op": op, "value": value, "points": points})
            for i, (column, op, value, points) in enumerate(specs)
        ]
    )


def test_points_sum_the_matching_rules_and_nan_never_matches() -> None:
    frame = pd.DataFrame(
        {
            "n_demo_request_90d": [2.0, 0.0, np.nan],
            "seniority_rank": [4.0, 1.0, np.nan],
            "lead.industry": ["  SOFTWARE ", "Retail", None],
        }
    )
    rules = _rules(
        ("n_demo_request_90d", ">", 0, 30),
        ("seniority_rank", "!=", 1, 10),
        ("lead.industry", "in", ["software", "financial services"], 10),
        ("lead.industry", "not_in", ["software"], -5),
        ("seniority_rank", "<", 5, 1),
        ("lead.industry", "is_null", None, -3),
        ("n_demo_request_90d", "not_null", None, 2),
    )
    np.testing.assert_array_equal(rules.score(frame), [30 + 10 + 10 + 1 + 2, -5 + 1 + 2, -3])


def test_text_equality_is_normalised_and_numeric_codes_compare_as_numbers() -> None:
    frame = pd.DataFrame({"lead.seniority": ["Student", "VP"], "stage": [1.0, 3.0]})
    rules = _rules(("lead.seniority", "==", "student", -10), ("stage", "in", [1, 2], 4))
    np.testing.assert_array_equal(rules.score(frame), [-6, 0])


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("{name: x, column: lead.industry, op: like, value: soft, points: 5}", r"rule #2 \('x'\).*op: Input should be"),
        ("{name: x, column: size_band, op: '>=', value: 3}", r"rule #2 \('x'\).*points: Field required"),
        ("{name: x, column: size_band, op: '>=', value: 3, points: ten}", r"rule #2 \('x'\).*points:.*number"),
        ("{name: x, column: size_band, op: '>=', value: 3, points: '10'}", r"rule #2 \('x'\).*points:.*number"),
        (
            "{name: x, column: lead.industry, op: in, value: software, points: 5}",
            r"rule #2 \('x'\).*needs a non-empty list",
        ),
        ("{name: x, column: size_band, op: '>', value: big, points: 5}", r"rule #2 \('x'\).*needs a number"),
        ("{name: x, column: size_band, op: is_null, value: 3, points: 5}", r"rule #2 \('x'\).*takes no value"),
        ("{name: x, colum: size_band, op: '>', value: 3, points: 5}", r"rule #2 \('x'\).*colum: Extra inputs"),
        ("[size_band, '>', 3]", r"rule #2 \('<unnamed>'\).*expected a mapping"),
    ],
)
def test_bad_rule_files_name_the_rule_and_the_problem(tmp_path: Path, rule: str, message: str) -> None:
    path = tmp_path / "rules.yaml"
    good = "{name: ok, column: size_band, op: '>=', value: 3, points: 10}"
    path.write_text(f"readiness:\n  - {good}\n  - {rule}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        PointRules.from_yaml(path, section="readiness")


def test_unknown_section_and_column_type_mismatch_are_explained(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("fit:\n  - {name: a, column: industry, op: '==', value: software, points: 5}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no section 'readiness'.*\['fit'\]"):
        PointRules.from_yaml(path)
    rules = PointRules.from_yaml(path, section="fit")
    with pytest.raises(ValueError, match=r"rule 'a'.*'industry' is numeric"):
        rules.score(pd.DataFrame({"industry": [0.0, 1.0]}))
    with pytest.raises(ValueError, match=r"rule 'a'.*no column 'industry'"):
        rules.score(pd.DataFrame({"size_band": [0.0]}))


def test_default_rules_load_and_name_only_real_columns() -> None:
    builder = FeatureBuilder().fit(leads_frame(lead("L1")))
    raw = {f"lead.{name}" for name in LEADS.names}
    allowed = {
        "fit": set(builder.fit_feature_names_) | raw,
        "readiness": set(builder.feature_names_) | raw,
    }
    for section, columns in allowed.items():
        rules = PointRules.from_yaml(default_rules_path(), section=section)
        assert rules.rules
        assert {r.column for r in rules.rules} <= columns, section
    fit_columns = {r.column for r in PointRules.from_yaml(default_rules_path(), section="fit").rules}
    assert not fit_columns & set(builder.engagement_feature_names_)


def test_platt_mapping_is_monotone_in_points() -> None:
    rng = np.random.default_rng(1)
    demo = rng.random(600) < 0.3
    y = rng.random(600) < np.where(demo, 0.6, 0.1)
    frame = pd.DataFrame({"n_demo_request_90d": demo.astype(float), "unsubscribed": (rng.random(600) < 0.1) * 1.0})
    rules = _rules(("n_demo_request_90d", ">", 0, 30), ("unsubscribed", "==", 1, -20))
    with pytest.raises(NotFittedError):
        rules.predict_proba(frame)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        rules.fit(frame, y)
    grid = pd.DataFrame({"n_demo_request_90d": [0.0, 0.0, 1.0, 1.0], "unsubscribed": [1.0, 0.0, 1.0, 0.0]})
    proba = rules.predict_proba(grid)
    assert proba.shape == (4, 2)
    assert (np.diff(proba[:, 1]) > 0).all()  # points -20, 0, 10, 30
    assert proba[:, 1].mean() == pytest.approx(y.mean(), abs=0.15)


# ---- logistic regression ---------------------------------------------------------------------------------------
def _synthetic(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=n)
    code = rng.integers(0, 5, n).astype(np.float64)
    visits = rng.pareto(1.5, n).round()
    logit = 1.5 * signal + np.where(code == 4, 1.0, 0.0) + 0.3 * np.log1p(visits) - 1.0
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    signal[rng.random(n) < 0.1] = np.nan
    code[rng.random(n) < 0.1] = np.nan
    frame = pd.DataFrame(
        {
            "seniority_rank": signal,
            "n_page_view_30d": visits,
            "industry": code,
            "lead.industry": rng.choice(np.array(["Software", "Retail", None], dtype=object), n),
        }
    )
    return frame, y


def test_logistic_baseline_learns_signal_and_ignores_raw_lead_columns() -> None:
    train, y_train = _synthetic(3000, seed=2)
    test, y_test = _synthetic(1000, seed=3)
    model = logistic_baseline(numeric=["seniority_rank", "n_page_view_30d"], categorical=["industry"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        model.fit(train, y_train)
    proba = model.predict_proba(test)
    assert proba.shape == (1000, 2)
    assert roc_auc_score(y_test, proba[:, 1]) > 0.7
    scrambled = test.assign(**{"lead.industry": "Mining"})
    np.testing.assert_array_equal(model.predict_proba(scrambled), proba)
    unseen_code = test.assign(industry=9.0)
    assert np.isfinite(model.predict_proba(unseen_code)).all()


def test_logistic_baseline_refuses_inconsistent_columns() -> None:
    with pytest.raises(ValueError, match="both numeric and categorical"):
        logistic_baseline(numeric=["stage"], categorical=["stage"])
    with pytest.raises(ValueError, match=r"not numeric features: \['n_x'\]"):
        logistic_baseline(numeric=["size_band"], categorical=[], log_scale=["n_x"])
    train, y = _synthetic(200, seed=4)
    with pytest.raises(ValueError, match="size_band"):
        logistic_baseline(numeric=["size_band"], categorical=[]).fit(train, y)


def test_probabilities_of_all_baselines_are_well_formed() -> None:
    frame, y = _synthetic(500, seed=5)
    scorers = [
        OdooNaiveBayes(fields=["industry", "lead.industry"]).fit(frame, y),
        _rules(("seniority_rank", ">", 0, 10)).fit(frame, y),
        logistic_baseline(numeric=["seniority_rank"], categorical=["industry"]).fit(frame, y),
    ]
    for scorer in scorers:
        proba = scorer.predict_proba(frame)
        assert proba.shape == (len(frame), 2)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0)
        assert ((proba >= 0) & (proba <= 1)).all()
    assert math.isclose(float(np.mean(scorers[0].predict_proba(frame)[:, 1])), float(y.mean()), abs_tol=0.1)
