"""The logged pyfunc: a frame of leads scores as each lead scores alone, and bad rows say what is wrong."""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd
import pytest

from tests.conftest import Trained
from tests.factories import activities_frame, leads_frame, ts
from tests.factories import lead as new_lead
from training.lead_scorer_model import ACTIVITIES, AS_OF, COLLEAGUES, OUTPUT_COLUMNS, LeadScorerModel, _row
from training.tracking import input_example, model_signature


def _model(trained: Trained) -> LeadScorerModel:
    model = LeadScorerModel()
    model.scorer = trained.result.scorer
    return model


def _person(lead: pd.Series) -> dict[str, Any]:
    return {k: (None if pd.isna(v) else v.isoformat() if isinstance(v, pd.Timestamp) else v) for k, v in lead.items()}


def _touches(trained: Trained, lead_id: str, as_of: pd.Timestamp, *, named: bool) -> list[dict[str, Any]]:
    acts = trained.activities
    own = acts[(acts["lead_id"] == lead_id) & (acts["occurred_at"] < as_of)].tail(15)
    return [
        {"occurred_at": t.isoformat(), "activity_type": str(k), **({"lead_id": lead_id} if named else {})}
        for t, k in zip(own["occurred_at"], own["activity_type"], strict=True)
    ]


def _frame(trained: Trained, n: int) -> tuple[pd.DataFrame, pd.Timestamp]:
    """Rows as MLflow hands them over: leads with and without touches, one with a colleague who has touches."""
    as_of = pd.Timestamp(trained.result.readiness.holdout["as_of"].max())
    leads = trained.leads[trained.leads["created_at"] < as_of]
    pair = leads[leads.duplicated("account_id", keep=False)].sort_values("account_id").head(2)
    others = leads[~leads["lead_id"].isin(pair["lead_id"])].sample(n - 1, random_state=3)
    rows = []
    for _, lead in others.iterrows():
        rows.append({**_person(lead), AS_OF: as_of.isoformat(), COLLEAGUES: "[]",
                     ACTIVITIES: json.dumps(_touches(trained, lead["lead_id"], as_of, named=False))})  # fmt: skip
    me, colleague = (_person(p) for _, p in pair.iterrows())
    touches = _touches(trained, me["lead_id"], as_of, named=True)
    touches += _touches(trained, colleague["lead_id"], as_of, named=True)
    rows.append({**me, AS_OF: as_of.isoformat(), COLLEAGUES: json.dumps([colleague]), ACTIVITIES: json.dumps(touches)})
    return pd.DataFrame(rows), as_of


def test_a_frame_of_leads_scores_each_lead_as_it_scores_alone(trained: Trained) -> None:
    frame, as_of = _frame(trained, 40)
    assert (frame[ACTIVITIES] == "[]").any() and (frame[ACTIVITIES] != "[]").any()
    scored = _model(trained).predict(None, frame)  # type: ignore[arg-type]  # the context is not read
    assert list(scored.columns) == OUTPUT_COLUMNS
    assert list(scored["lead_id"]) == list(frame["lead_id"])
    scorer = trained.result.scorer
    for i, record in enumerate(frame.to_dict(orient="records")):
        lead = {k: None if pd.isna(v) else v for k, v in record.items() if k not in (AS_OF, ACTIVITIES, COLLEAGUES)}
        touches = [{"lead_id": lead["lead_id"], **a} for a in json.loads(record[ACTIVITIES])]
        alone = scorer.score_record(lead, touches, as_of.to_pydatetime(), json.loads(record[COLLEAGUES]))
        assert _nulls(scored.iloc[i].to_dict()) == _nulls(_row(alone)), record["lead_id"]


def _nulls(row: dict[str, Any]) -> dict[str, Any]:
    """The row with NaN as None, so that two empty readiness cells compare equal."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


def test_a_won_lead_has_no_readiness_and_only_fit_reasons_as_in_the_service(trained: Trained) -> None:
    frame, _ = _frame(trained, 3)
    won = frame.iloc[:1].assign(sql_at="2025-01-10T00:00:00+00:00", won_at="2025-02-01T00:00:00+00:00",
                                created_at="2024-12-01T00:00:00+00:00", mql_at=None, sal_at=None, lost_at=None,
                                recycled_at=None, requalified_at=None, as_of="2025-03-01T00:00:00+00:00")  # fmt: skip
    [row] = _model(trained).predict(None, won).to_dict(orient="records")  # type: ignore[arg-type]
    assert row["lifecycle_stage"] == "won"
    assert math.isnan(row["readiness_probability"]) and math.isnan(row["readiness_score"])
    assert row["readiness_stage"] is None
    assert {r["side"] for r in json.loads(row["reasons"])} == {"fit"}


def test_no_rows_give_no_scores_with_the_signatures_output_columns(trained: Trained) -> None:
    assert model_signature().outputs.input_names() == OUTPUT_COLUMNS
    frame, _ = _frame(trained, 3)
    scored = _model(trained).predict(None, frame.iloc[:0])  # type: ignore[arg-type]
    assert scored.empty and list(scored.columns) == OUTPUT_COLUMNS


@pytest.mark.parametrize(
    ("touch", "message"),
    [
        ({"activity_type": "page_view"}, r"lead '.+': activities\[1\] has no occurred_at"),
        ({"occurred_at": "2024-05-01T00:00:00+00:00"}, r"lead '.+': activities\[1\] has no activity_type"),
        (
            {"occurred_at": "2024-05-01T00:00:00+00:00", "activity_type": "page_view", "lead_id": "stranger"},
            r"activities\[1\]\.lead_id 'stranger' is neither the lead nor a colleague",
        ),
        ({"occurred_at": "2024-05-01T00:00:00+00:00", "activity_type": "carrier_pigeon"}, "unknown activity type"),
    ],
)
def test_a_bad_touch_is_refused_naming_the_lead_and_the_touch(
    trained: Trained, touch: dict[str, str], message: str
) -> None:
    frame, _ = _frame(trained, 3)
    good = {"occurred_at": "2024-04-01T00:00:00+00:00", "activity_type": "email_open"}
    frame.loc[0, ACTIVITIES] = json.dumps([good, touch])
    with pytest.raises(ValueError, match=message):
        _model(trained).predict(None, frame)  # type: ignore[arg-type]


def test_a_colleague_without_a_lead_id_is_refused_naming_the_lead(trained: Trained) -> None:
    frame, _ = _frame(trained, 3)
    frame.loc[0, COLLEAGUES] = json.dumps([{"lead_id": "C1"}, {"account_id": "acme"}])
    with pytest.raises(ValueError, match=r"lead '.+': colleagues\[1\] has no lead_id"):
        _model(trained).predict(None, frame)  # type: ignore[arg-type]


def test_the_logged_input_example_is_open_leads_scored_as_open_leads(trained: Trained) -> None:
    # The busiest lead before as_of was won in 2024: readiness says nothing of it, so it is no example of the model.
    leads = leads_frame(
        new_lead("won", created_at="2024-01-02", sql_at="2024-03-01", won_at="2024-06-01"),
        new_lead("lost", created_at="2024-01-02", sql_at="2024-03-01", lost_at="2024-04-01"),
        new_lead("mql", created_at="2024-02-01", mql_at="2024-05-01", sql_at="2025-02-01"),  # SQL after as_of: open
        new_lead("quiet", created_at="2024-02-01"),
        new_lead("later", created_at="2025-02-01"),  # not created yet at as_of
    )
    touches = [("won", f"2024-0{m}-10", "page_view") for m in range(1, 10)]
    touches += [
        ("lost", "2024-02-10", "page_view"),
        ("lost", "2024-02-11", "page_view"),
        ("mql", "2024-05-02", "demo_request"),
    ]
    example = input_example(leads, activities_frame(*touches), ts("2025-01-06"))
    assert example["lead_id"].tolist() == ["mql", "quiet"]
    assert example["sql_at"].isna().all()  # stamps after as_of are not known yet
    scores = _model(trained).predict(None, example)  # type: ignore[arg-type]
    assert scores["lead_id"].tolist() == ["mql", "quiet"]
