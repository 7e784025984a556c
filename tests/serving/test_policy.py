"""The routing policy: refused with a message naming the problem when inconsistent; grades, stages and routes."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from features.scoring import GRADES, READINESS_STAGES, CutOffs
from serving.policy import QUEUES, GradeCutoffs, RoutingPolicy, StageCutoffs, segment_value


def policy_data(**changes: Any) -> dict[str, Any]:
    """A valid policy as sales ops would send it (JSON-like), with top-level `changes` applied."""
    data = RoutingPolicy(grades=GradeCutoffs(A=80, B=50, C=20), stages=StageCutoffs(MQL=0.2, SQL=0.5)).model_dump()
    data.update(changes)
    return data


def refusal(data: dict[str, Any]) -> str:
    """The validation message for `data`, which must be refused."""
    with pytest.raises(ValidationError) as caught:
        RoutingPolicy.model_validate(data)
    return str(caught.value)


def test_default_policy_is_valid_and_survives_a_json_round_trip() -> None:
    policy = RoutingPolicy.model_validate(policy_data())
    assert RoutingPolicy.model_validate_json(policy.model_dump_json()) == policy


@pytest.mark.parametrize(
    ("grades", "shown"),
    [
        ({"A": 50, "B": 70, "C": 20}, "A=50.0, B=70.0, C=20.0"),
        ({"A": 80, "B": 20, "C": 50}, "A=80.0, B=20.0, C=50.0"),
        ({"A": 60, "B": 60, "C": 20}, "A=60.0, B=60.0, C=20.0"),
    ],
)
def test_grade_cutoffs_must_decrease_strictly(grades: dict[str, float], shown: str) -> None:
    message = refusal(policy_data(grades=grades))
    assert "grade cut-offs must decrease strictly: A > B > C" in message
    assert shown in message


def test_grade_cutoffs_must_lie_on_the_score_scale() -> None:
    message = refusal(policy_data(grades={"A": 120, "B": 50, "C": 20}))
    assert "grades.A" in message and "less than or equal to 100" in message


@pytest.mark.parametrize("stages", [{"MQL": 0.5, "SQL": 0.5}, {"MQL": 0.6, "SQL": 0.4}])
def test_sql_cutoff_must_be_above_mql(stages: dict[str, float]) -> None:
    message = refusal(policy_data(stages=stages))
    assert "the SQL cut-off must be above the MQL cut-off" in message
    assert f"MQL={stages['MQL']}, SQL={stages['SQL']}" in message


def test_stage_cutoffs_must_be_probabilities_strictly_between_0_and_1() -> None:
    message = refusal(policy_data(stages={"MQL": 0.0, "SQL": 1.0}))
    assert "stages.MQL" in message and "stages.SQL" in message


def test_non_finite_cutoffs_are_refused() -> None:
    message = refusal(policy_data(grades={"A": float("nan"), "B": 50, "C": 20}))
    assert "grades.A" in message and "finite number" in message


def test_missing_matrix_cell_is_named() -> None:
    data = policy_data()
    del data["matrix"]["B"]["MQL"]
    assert "the grade x stage matrix has no queue for B x MQL" in refusal(data)


def test_missing_matrix_row_names_every_cell() -> None:
    data = policy_data()
    del data["matrix"]["D"]
    assert "no queue for D x nurture, D x MQL, D x SQL" in refusal(data)


def test_unknown_queue_is_refused_with_the_accepted_queues() -> None:
    data = policy_data()
    data["matrix"]["A"]["SQL"] = {"queue": "marketing", "priority": 1}
    message = refusal(data)
    assert "matrix.A.SQL.queue" in message
    assert "'sales', 'sdr', 'nurture' or 'disqualify'" in message


def test_unknown_grade_or_stage_in_the_matrix_is_refused() -> None:
    data = policy_data()
    data["matrix"]["E"] = data["matrix"]["D"]
    message = refusal(data)
    assert "matrix.E.[key]" in message


@pytest.mark.parametrize("hours", [-1.0, 0.0])
def test_sla_hours_must_be_positive(hours: float) -> None:
    data = policy_data()
    data["sla_hours"]["sales"] = hours
    message = refusal(data)
    assert "SLA hours must be positive (or null for no SLA)" in message
    assert f"sales={hours}" in message


def test_every_queue_in_use_needs_an_sla_entry() -> None:
    data = policy_data()
    del data["sla_hours"]["sdr"]
    assert "sla_hours names no value (hours or null) for queue(s) sdr" in refusal(data)


def test_priority_outside_1_to_5_is_refused() -> None:
    data = policy_data()
    data["matrix"]["A"]["SQL"]["priority"] = 0
    assert "matrix.A.SQL.priority" in refusal(data)


@pytest.mark.parametrize(
    ("where", "data"),
    [
        ("colour", policy_data(colour="red")),
        ("grades.E", policy_data(grades={"A": 80, "B": 50, "C": 20, "E": 5})),
        ("stages.SAL", policy_data(stages={"MQL": 0.2, "SQL": 0.5, "SAL": 0.3})),
    ],
)
def test_extra_keys_are_refused(where: str, data: dict[str, Any]) -> None:
    message = refusal(data)
    assert where in message and "Extra inputs are not permitted" in message


@pytest.fixture
def policy() -> RoutingPolicy:
    return RoutingPolicy.model_validate(policy_data())


@pytest.mark.parametrize(
    ("fit_score", "grade"),
    [(100.0, "A"), (80.0, "A"), (79.999, "B"), (50.0, "B"), (49.999, "C"), (20.0, "C"), (19.999, "D"), (0.0, "D")],
)
def test_grade_boundaries_belong_to_the_higher_grade(policy: RoutingPolicy, fit_score: float, grade: str) -> None:
    assert policy.grade(fit_score) == grade


@pytest.mark.parametrize(
    ("probability", "stage"),
    [(1.0, "SQL"), (0.5, "SQL"), (0.4999, "MQL"), (0.2, "MQL"), (0.1999, "nurture"), (0.0, "nurture")],
)
def test_stage_boundaries_belong_to_the_higher_stage(policy: RoutingPolicy, probability: float, stage: str) -> None:
    assert policy.stage(probability) == stage


def test_route_gives_every_cell_a_queue_and_its_sla(policy: RoutingPolicy) -> None:
    for grade in GRADES:
        for stage in READINESS_STAGES:
            cell, sla = policy.route(grade, stage)  # type: ignore[arg-type]
            assert cell.queue in QUEUES and 1 <= cell.priority <= 5
            assert sla == policy.sla_hours[cell.queue]
    assert policy.route("A", "SQL") == (policy.matrix["A"]["SQL"], 4.0)
    assert policy.route("A", "SQL")[0].queue == "sales" and policy.route("A", "SQL")[0].priority == 1
    cell, sla = policy.route("D", "nurture")
    assert cell.queue == "disqualify" and sla is None


def test_custom_matrix_and_sla_are_used(policy: RoutingPolicy) -> None:
    data = policy_data()
    data["matrix"]["B"]["MQL"] = {"queue": "sales", "priority": 2}
    data["sla_hours"]["sales"] = 1.5
    custom = RoutingPolicy.model_validate(data)
    cell, sla = custom.route(custom.grade(60.0), custom.stage(0.3))
    assert (cell.queue, cell.priority, sla) == ("sales", 2, 1.5)


def test_from_cutoffs_takes_the_models_cutoffs_and_the_standard_matrix() -> None:
    cutoffs = CutOffs(fit_grades=(85.0, 55.0, 25.0), readiness_mql=0.15, readiness_sql=0.45)
    policy = RoutingPolicy.from_cutoffs(cutoffs)
    assert policy.grades == GradeCutoffs(A=85.0, B=55.0, C=25.0)
    assert policy.stages == StageCutoffs(MQL=0.15, SQL=0.45)
    assert policy.matrix == RoutingPolicy.model_validate(policy_data()).matrix
    for score in (0.0, 24.9, 25.0, 55.0, 84.9, 85.0, 100.0):
        assert policy.grade(score) == cutoffs.grade(score)
    for probability in (0.0, 0.149, 0.15, 0.449, 0.45, 1.0):
        assert policy.stage(probability) == cutoffs.stage(probability)


def test_from_cutoffs_refuses_inconsistent_model_cutoffs() -> None:
    with pytest.raises(ValidationError, match="grade cut-offs must decrease strictly"):
        RoutingPolicy.from_cutoffs(CutOffs(fit_grades=(30.0, 60.0, 80.0)))


def test_a_segment_must_name_a_lead_attribute_and_change_a_cut_off() -> None:
    assert "at least one of region, size_band, source" in refusal(
        policy_data(segments=[{"match": {}, "stages": {"MQL": 0.1, "SQL": 0.2}}])
    )
    assert "sets neither grades nor stages" in refusal(policy_data(segments=[{"match": {"region": "emea"}}]))
    assert "size_band" in refusal(
        policy_data(segments=[{"match": {"size_band": "huge"}, "stages": {"MQL": 0.1, "SQL": 0.2}}])
    )


def test_a_segment_hidden_behind_a_broader_one_is_refused() -> None:
    broad = {"match": {"region": "EMEA"}, "stages": {"MQL": 0.1, "SQL": 0.2}}
    narrow = {"match": {"region": "emea", "source": "webinar"}, "stages": {"MQL": 0.3, "SQL": 0.6}}
    message = refusal(policy_data(segments=[broad, narrow]))
    assert "segment 1 (region=emea, source=webinar) can never apply" in message
    assert "list the narrower first" in message
    RoutingPolicy.model_validate(policy_data(segments=[narrow, broad]))  # narrower first is fine


def test_the_first_matching_segment_sets_the_cut_offs() -> None:
    rules = RoutingPolicy.model_validate(
        policy_data(
            segments=[
                {"match": {"region": "North_America", "size_band": "5000+"}, "grades": {"A": 95, "B": 90, "C": 85}},
                {"match": {"region": "north america"}, "stages": {"MQL": 0.4, "SQL": 0.45}},
            ]
        )
    )
    big = rules.segment_of(segment_value("North America"), "5000+", None)
    small = rules.segment_of(segment_value(" north-america "), "11-50", segment_value("Webinar"))
    assert (big, small, rules.segment_of("emea", "5000+", None)) == (0, 1, None)
    assert rules.grade(88.0, big) == "C" and rules.grade(88.0, small) == "A"  # segment 1 keeps the default grades
    assert rules.stage(0.3, big) == "MQL" and rules.stage(0.3, small) == "nurture"
