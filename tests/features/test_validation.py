"""Bad input is refused with errors naming the column, the problem, a count and offending rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.spec import LeadContract, custom_attribute
from features.validation import ContractError, validate_activities, validate_leads
from tests.factories import activities_frame, lead, leads_frame


def _problem(err: pytest.ExceptionInfo[ContractError], column: str) -> str:
    matches = [str(p) for p in err.value.problems if p.column == column]
    assert matches, f"no problem reported for {column}: {err.value}"
    return matches[0]


def test_valid_tables_come_back_canonical() -> None:
    leads = leads_frame(lead("L1"), lead("L2", industry="  Financial  Services "))
    acts = activities_frame(("L2", "2024-01-03", "Page View"), ("L1", "2024-01-02", "demo-request"))
    out_leads = validate_leads(leads)
    out_acts = validate_activities(acts, out_leads)
    assert str(out_leads["created_at"].dtype) == "datetime64[ns, UTC]"
    assert list(out_acts["lead_id"]) == ["L1", "L2"]  # sorted by lead and time
    assert list(out_acts["activity_type"]) == ["demo_request", "page_view"]


def test_missing_required_column_is_named() -> None:
    leads = leads_frame(lead("L1")).drop(columns=["account_id"])
    with pytest.raises(ContractError) as err:
        validate_leads(leads)
    assert "leads.account_id: missing column" in _problem(err, "account_id")


def test_optional_columns_may_be_absent() -> None:
    leads = leads_frame(lead("L1")).drop(columns=["won_at", "job_title"])
    out = validate_leads(leads)
    assert out["won_at"].isna().all() and out["job_title"].isna().all()


def test_wrong_type_is_named_with_count_and_rows() -> None:
    leads = leads_frame(lead("L1"), lead("L2"))
    leads["employee_count"] = ["many", "few"]
    with pytest.raises(ContractError) as err:
        validate_leads(leads)
    message = _problem(err, "employee_count")
    assert "expected a number" in message and "2 rows" in message and "lead_id='L1'" in message


def test_unparseable_and_impossible_dates_are_refused() -> None:
    leads = leads_frame(lead("L1"), lead("L2"))
    leads["created_at"] = ["2024-02-30", "2024-01-01"]
    with pytest.raises(ContractError) as err:
        validate_leads(leads)
    assert "not ISO 8601" in _problem(err, "created_at") and "lead_id='L1'" in _problem(err, "created_at")


def test_infinite_and_negative_amounts_are_refused() -> None:
    leads = leads_frame(lead("L1", annual_revenue=np.inf), lead("L2"))
    with pytest.raises(ContractError) as err:
        validate_leads(leads)
    assert "infinite" in _problem(err, "annual_revenue")
    leads = leads_frame(lead("L1", employee_count=-3), lead("L2"))
    with pytest.raises(ContractError) as err:
        validate_leads(leads)
    assert "below the minimum 0" in _problem(err, "employee_count")


def test_duplicated_lead_ids_are_refused() -> None:
    leads = leads_frame(lead("L1"), lead("L1"), lead("L2"))
    with pytest.raises(ContractError) as err:
        validate_leads(leads)
    message = _problem(err, "lead_id")
    assert "duplicated" in message and "2 rows" in message


def test_unknown_activity_type_lists_accepted_values() -> None:
    acts = activities_frame(("L1", "2024-01-02", "page_view"), ("L1", "2024-01-03", "carrier pigeon"))
    with pytest.raises(ContractError) as err:
        validate_activities(acts)
    message = _problem(err, "activity_type")
    assert "'carrier_pigeon'" in message and "accepted: page_view" in message and "row 1" in message


def test_lifecycle_out_of_order_is_refused() -> None:
    leads = leads_frame(
        lead("L1", mql_at="2024-02-01", sql_at="2024-01-15"),
        lead("L2", created_at="2024-03-01", mql_at="2024-02-01"),
        lead("L3", mql_at="2024-01-10", sql_at="2024-01-20"),
    )
    with pytest.raises(ContractError) as err:
        validate_leads(leads)
    assert "out of order" in _problem(err, "sql_at") and "lead_id='L1'" in _problem(err, "sql_at")
    assert "lead_id='L2'" in _problem(err, "mql_at")


def test_recycled_without_loss_is_refused() -> None:
    leads = leads_frame(lead("L1", recycled_at="2024-03-01"))
    with pytest.raises(ContractError) as err:
        validate_leads(leads)
    assert "lost_at is empty" in _problem(err, "recycled_at")


def test_activities_of_unknown_leads_are_refused() -> None:
    leads = validate_leads(leads_frame(lead("L1")))
    acts = activities_frame(("L1", "2024-01-02", "page_view"), ("ghost", "2024-01-03", "page_view"))
    with pytest.raises(ContractError) as err:
        validate_activities(acts, leads)
    assert "lead_id='ghost'" in _problem(err, "lead_id")


def test_input_is_not_modified_and_no_partial_output() -> None:
    leads = leads_frame(lead("L1"), lead("L1"))
    before = leads.copy()
    with pytest.raises(ContractError):
        validate_leads(leads)
    pd.testing.assert_frame_equal(leads, before)


def test_custom_attribute_is_validated_without_code_change() -> None:
    contract = LeadContract(
        custom_attributes=(
            custom_attribute("crm_tier", "category", "Tier set by sales ops."),
            custom_attribute("seats", "int", "Seats asked for.", min_value=1),
        )
    )
    leads = leads_frame(lead("L1"), lead("L2"))
    leads["crm_tier"] = ["gold", None]
    leads["seats"] = [0, 5]
    with pytest.raises(ContractError) as err:
        validate_leads(leads, contract)
    assert "below the minimum 1" in _problem(err, "seats")
    leads["seats"] = [3, 5]
    assert list(validate_leads(leads, contract)["crm_tier"].fillna("-")) == ["gold", "-"]


def test_custom_attribute_may_not_shadow_a_builtin_column() -> None:
    with pytest.raises(ValueError, match="clashes"):
        LeadContract(custom_attributes=(custom_attribute("industry", "category", "dup"),))


def test_repeated_input_index_still_names_the_right_rows() -> None:
    leads = pd.concat([leads_frame(lead("L1")), leads_frame(lead("L2", employee_count=-1))])  # index 0, 0
    with pytest.raises(ContractError) as err:
        validate_leads(leads)
    assert "lead_id='L2'" in _problem(err, "employee_count")
