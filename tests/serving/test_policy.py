"""The routing policy: refused with a message naming the problem when inconsistent; grades, stages and routes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from features.scoring import GRADES, READINESS_STAGES, CutOffs
from serving.policy import Cell, GradeCutoffs, RoutingPolicy, StageCutoffs, segment_value


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
    assert "'sales', 'sdr', 'nurture', 'disqualify', 'owner' or 'customer'" in message


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


# The standard matrix, cell by cell, as sales ops read it (serving/policy.py `_default_matrix`): high fit and ready
# goes to sales at once; high fit, not ready, to nurture; poor fit but ready to SDRs; poor fit, not ready, out.
DEFAULT_ROUTES = [
    ("A", "SQL", "sales", 1, 4.0),
    ("A", "MQL", "sales", 2, 4.0),
    ("A", "nurture", "nurture", 4, None),
    ("B", "SQL", "sales", 2, 4.0),
    ("B", "MQL", "sdr", 3, 24.0),
    ("B", "nurture", "nurture", 4, None),
    ("C", "SQL", "sdr", 2, 24.0),
    ("C", "MQL", "sdr", 3, 24.0),
    ("C", "nurture", "nurture", 5, None),
    ("D", "SQL", "sdr", 3, 24.0),
    ("D", "MQL", "nurture", 4, None),
    ("D", "nurture", "disqualify", 5, None),
]


def test_the_default_routes_cover_every_grade_and_stage_once() -> None:
    assert sorted((g, s) for g, s, *_ in DEFAULT_ROUTES) == sorted((g, s) for g in GRADES for s in READINESS_STAGES)


@pytest.mark.parametrize(("grade", "stage", "queue", "priority", "sla"), DEFAULT_ROUTES)
def test_default_matrix_routes_each_grade_and_stage(
    policy: RoutingPolicy, grade: Any, stage: Any, queue: str, priority: int, sla: float | None
) -> None:
    cell, sla_hours = policy.route(grade, stage)
    assert (cell.queue, cell.priority, sla_hours) == (queue, priority, sla)


@pytest.mark.parametrize(
    ("fit_score", "probability", "queue", "priority"),
    [(90.0, 0.6, "sales", 1), (60.0, 0.6, "sales", 2), (60.0, 0.3, "sdr", 3), (10.0, 0.1, "disqualify", 5)],
)
def test_scores_route_through_grade_and_stage(
    policy: RoutingPolicy, fit_score: float, probability: float, queue: str, priority: int
) -> None:
    cell, _ = policy.route(policy.grade(fit_score), policy.stage(probability))
    assert (cell.queue, cell.priority) == (queue, priority)


def test_custom_matrix_and_sla_are_used() -> None:
    data = policy_data()
    data["matrix"]["B"]["MQL"] = {"queue": "sales", "priority": 2}
    data["sla_hours"]["sales"] = 1.5
    custom = RoutingPolicy.model_validate(data)
    assert (custom.grade(60.0), custom.stage(0.3)) == ("B", "MQL")
    cell, sla = custom.route("B", "MQL")
    assert (cell.queue, cell.priority, sla) == ("sales", 2, 1.5)
    cell, sla = custom.route("A", "SQL")  # other cells keep the standard route, with the new SLA for sales
    assert (cell.queue, cell.priority, sla) == ("sales", 1, 1.5)
    cell, sla = custom.route("B", "nurture")
    assert (cell.queue, cell.priority, sla) == ("nurture", 4, None)


def test_from_cutoffs_takes_the_models_cutoffs_and_the_standard_matrix() -> None:
    cutoffs = CutOffs(fit_grades=(85.0, 55.0, 25.0), readiness_mql=0.15, readiness_sql=0.45)
    policy = RoutingPolicy.from_cutoffs(cutoffs)
    assert policy.grades == GradeCutoffs(A=85.0, B=55.0, C=25.0)
    assert policy.stages == StageCutoffs(MQL=0.15, SQL=0.45)
    assert [(g, s, c.queue, c.priority) for g, s, c in _cells(policy)] == [r[:4] for r in DEFAULT_ROUTES]
    # The service's routing and the model's own grading agree on every boundary.
    scores = (0.0, 24.9, 25.0, 55.0, 84.9, 85.0, 100.0)
    assert [policy.grade(s) for s in scores] == ["D", "D", "C", "B", "B", "A", "A"]
    assert [cutoffs.grade(s) for s in scores] == ["D", "D", "C", "B", "B", "A", "A"]
    probabilities = (0.0, 0.149, 0.15, 0.449, 0.45, 1.0)
    assert [policy.stage(p) for p in probabilities] == ["nurture", "nurture", "MQL", "MQL", "SQL", "SQL"]
    assert [cutoffs.stage(p) for p in probabilities] == ["nurture", "nurture", "MQL", "MQL", "SQL", "SQL"]


def _cells(policy: RoutingPolicy) -> list[tuple[str, str, Cell]]:
    """The matrix's cells in DEFAULT_ROUTES' order."""
    order = {(g, s): i for i, (g, s, *_) in enumerate(DEFAULT_ROUTES)}
    cells = [(g, s, cell) for g, row in policy.matrix.items() for s, cell in row.items()]
    return sorted(cells, key=lambda c: order[(c[0], c[1])])


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


SEGMENTED = policy_data(
    segments=[
        {"match": {"region": "EMEA"}, "grades": {"A": 95, "B": 90, "C": 85}},
        {"match": {"source": "webinar"}, "stages": {"MQL": 0.05, "SQL": 0.1}},
    ]
)


@pytest.mark.parametrize(
    ("region", "source", "fit_score", "probability", "segment", "grade", "stage", "queue", "priority"),
    [
        # EMEA's own grade cut-offs make 88 a C (a default A) and 96 an A; its stages are the policy's own.
        ("emea", "organic search", 88.0, 0.15, 0, "C", "nurture", "nurture", 5),
        ("emea", "webinar", 96.0, 0.6, 0, "A", "SQL", "sales", 1),
        ("emea", "webinar", 88.0, 0.15, 0, "C", "nurture", "nurture", 5),  # the first matching segment only
        # Webinar leads elsewhere: their own stage cut-offs make 0.15 an SQL (a default nurture); default grades.
        ("north america", "webinar", 88.0, 0.15, 1, "A", "SQL", "sales", 1),
        ("north america", "webinar", 60.0, 0.07, 1, "B", "MQL", "sdr", 3),
        # Neither segment: the policy's own cut-offs.
        ("north america", "organic search", 88.0, 0.15, None, "A", "nurture", "nurture", 4),
        ("north america", "organic search", 60.0, 0.3, None, "B", "MQL", "sdr", 3),
    ],
)
def test_a_segments_own_cut_offs_decide_its_leads_grade_stage_and_route(
    region: str,
    source: str,
    fit_score: float,
    probability: float,
    segment: int | None,
    grade: str,
    stage: str,
    queue: str,
    priority: int,
) -> None:
    rules = RoutingPolicy.model_validate(SEGMENTED)
    assert rules.segment_of(region, "201-1000", source) == segment
    assert (rules.grade(fit_score, segment), rules.stage(probability, segment)) == (grade, stage)
    cell, _ = rules.route(rules.grade(fit_score, segment), rules.stage(probability, segment))
    assert (cell.queue, cell.priority) == (queue, priority)


def test_a_segments_cut_offs_are_its_own_and_the_policys_where_it_sets_none() -> None:
    rules = RoutingPolicy.model_validate(SEGMENTED)
    assert rules.cutoffs(None) == (GradeCutoffs(A=80, B=50, C=20), StageCutoffs(MQL=0.2, SQL=0.5))
    assert rules.cutoffs(0) == (GradeCutoffs(A=95, B=90, C=85), StageCutoffs(MQL=0.2, SQL=0.5))
    assert rules.cutoffs(1) == (GradeCutoffs(A=80, B=50, C=20), StageCutoffs(MQL=0.05, SQL=0.1))


# ---- lifecycle routes: leads readiness does not apply to ------------------------------------------------------------


def test_default_lifecycle_routes_hand_no_closed_lead_to_sales(policy: RoutingPolicy) -> None:
    routes = {stage: policy.lifecycle_route(stage) for stage in ("sql", "requalified", "lost", "won")}
    assert {s: None if r is None else (r[0].queue, r[0].priority, r[1]) for s, r in routes.items()} == {
        "sql": ("owner", 3, None),
        "requalified": ("owner", 3, None),
        "lost": ("nurture", 5, None),
        "won": ("customer", 5, None),
    }
    # Open stages have no lifecycle route: their scores route them.
    assert [policy.lifecycle_route(s) for s in ("lead", "mql", "sal", "recycled")] == [None] * 4


def test_a_policy_stored_before_lifecycle_routes_loads_with_the_defaults() -> None:
    # A version as stored before lifecycle routes and the owner and customer queues existed.
    old = policy_data()
    del old["lifecycle_routes"]
    old["sla_hours"] = {"sales": 4.0, "sdr": 24.0, "nurture": None, "disqualify": None}
    loaded = RoutingPolicy.model_validate_json(json.dumps(old))
    assert loaded == RoutingPolicy.model_validate(policy_data())
    assert loaded.sla_hours["owner"] is None and loaded.sla_hours["customer"] is None


def test_lifecycle_routes_are_editable_and_need_an_sla_entry() -> None:
    data = policy_data()
    data["lifecycle_routes"]["lost"] = {"queue": "sdr", "priority": 4}
    data["sla_hours"]["owner"] = 48.0
    edited = RoutingPolicy.model_validate(data)
    assert edited.lifecycle_route("lost") == (Cell(queue="sdr", priority=4), 24.0)
    assert edited.lifecycle_route("sql") == (Cell(queue="owner", priority=3), 48.0)
    assert RoutingPolicy.model_validate_json(edited.model_dump_json()) == edited
    del data["sla_hours"]["sdr"]  # used by lost leads' route now (and by the matrix)
    assert "sla_hours names no value (hours or null) for queue(s) sdr" in refusal(data)


def test_lifecycle_routes_must_cover_every_closed_stage_and_nothing_else() -> None:
    data = policy_data()
    del data["lifecycle_routes"]["won"]
    assert "lifecycle_routes has no queue for lifecycle stage(s) won" in refusal(data)
    data = policy_data()
    data["lifecycle_routes"]["mql"] = {"queue": "owner", "priority": 3}
    assert "lifecycle_routes.mql" in refusal(data)  # an open stage is routed by its scores
    data = policy_data()
    data["lifecycle_routes"]["won"] = {"queue": "customer", "priority": 9}
    assert "lifecycle_routes.won.priority" in refusal(data)


def test_the_matrix_routes_open_leads_to_open_queues_only() -> None:
    data = policy_data()
    data["matrix"]["A"]["SQL"] = {"queue": "customer", "priority": 1}
    message = refusal(data)
    assert "owner and customer take leads by lifecycle stage only" in message and "A x SQL -> customer" in message
