"""The contract file: what it declares, and errors that name the key, what is wrong and what is accepted."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from features.contract_file import ContractFileError, contract_from_yaml, parse_contract
from features.spec import ACTIVITIES, LEADS, LeadContract, ReadinessLabel, custom_attribute

EXAMPLE = Path(__file__).parents[2] / "examples" / "contract.yaml"


def _error(text: str) -> str:
    with pytest.raises(ContractFileError) as caught:
        contract_from_yaml(text, source="contract.yaml")
    return " ".join(str(caught.value).split())


def test_the_example_file_declares_custom_attributes_and_a_won_readiness() -> None:
    contract = contract_from_yaml(EXAMPLE.read_text())
    assert contract.custom_attributes == (
        custom_attribute(
            "crm_tier", "category", "Account tier set by sales ops.", allowed=("gold", "silver", "bronze")
        ),
        custom_attribute("seats", "int", "Seats the lead asked for in the pricing form.", min_value=1),
        custom_attribute("intent_score", "float", "Third-party intent score of the account, 0 to 100.", min_value=0),
    )
    assert contract.readiness == ReadinessLabel("won_at", 90)
    assert contract.readiness.stamps == ("won_at",)
    assert contract.readiness.meaning == "an open lead is won (won_at) within 90 days"
    assert [c.name for c in contract.leads_table.columns][-3:] == ["crm_tier", "seats", "intent_score"]


@pytest.mark.parametrize("text", ["", "# nothing declared\n", "custom_attributes: []\n"])
def test_a_file_that_declares_nothing_is_the_built_in_contract(text: str) -> None:
    contract = contract_from_yaml(text)
    assert contract == LeadContract()
    assert contract.readiness is None  # not declared: training labels SQL within its --horizon-days


def test_sql_readiness_counts_a_recycled_leads_requalification() -> None:
    label = contract_from_yaml("readiness: {stamp: sql_at, horizon_days: 14}").readiness
    assert label == ReadinessLabel("sql_at", 14)
    assert label.stamps == ("sql_at", "requalified_at")
    assert "sql_at, or requalified_at for a recycled lead" in label.meaning and "14 days" in label.meaning


def test_a_parsed_document_gives_the_same_contract_as_its_text() -> None:
    document = {"custom_attributes": [{"name": "seats", "dtype": "int", "description": "Seats."}]}
    assert parse_contract(document) == contract_from_yaml(
        "custom_attributes: [{name: seats, dtype: int, description: Seats.}]"
    )


def test_yes_and_no_stay_text_in_allowed_values() -> None:
    contract = contract_from_yaml(
        "custom_attributes: [{name: opted_in, dtype: category, description: Opt-in., allowed: [yes, no, on]}]"
    )
    assert contract.custom_attributes[0].allowed == ("yes", "no", "on")


@pytest.mark.parametrize(
    ("text", "where", "accepted"),
    [
        ("readyness: {stamp: won_at, horizon_days: 90}", "readyness: unknown key", "custom_attributes, readiness"),
        (
            "readiness: {stamp: won_at, horizon: 90}",
            "readiness.horizon: unknown key",
            "stamp, horizon_days",
        ),
        (
            "custom_attributes: [{name: seats, dtype: int, description: Seats., minimum: 1}]",
            "custom_attributes[0] (seats).minimum: unknown key",
            "name, dtype, description, allowed, min_value",
        ),
    ],
)
def test_unknown_keys_are_refused_with_the_accepted_keys_named(text: str, where: str, accepted: str) -> None:
    message = _error(text)
    assert where in message and f"accepted keys: {accepted}" in message


def test_a_bad_dtype_is_named_with_the_accepted_ones() -> None:
    message = _error(
        "custom_attributes:\n"
        "  - {name: crm_tier, dtype: category, description: Tier.}\n"
        "  - {name: notes, dtype: string, description: Free text.}\n"
    )
    assert "custom_attributes[1] (notes).dtype: Input should be 'category', 'int' or 'float' (got 'string')" in message


def test_a_stamp_that_is_no_lifecycle_column_is_named_with_the_accepted_ones() -> None:
    message = _error("readiness: {stamp: closed_won_at, horizon_days: 90}")
    assert "readiness.stamp: 'closed_won_at' is not a lifecycle column" in message
    assert "created_at, mql_at, sal_at, sql_at, lost_at, recycled_at, requalified_at, won_at" in message
    assert message.endswith("accepted: sql_at, won_at")


@pytest.mark.parametrize(
    ("stamp", "why"),
    [
        ("mql_at", "an open lead passes it on its way to SQL"),
        ("requalified_at", "it already counts as SQL for a recycled lead; declare sql_at"),
        ("lost_at", "a loss is not readiness"),
    ],
)
def test_a_lifecycle_stamp_that_cannot_mark_readiness_says_why(stamp: str, why: str) -> None:
    message = _error(f"readiness: {{stamp: {stamp}, horizon_days: 30}}")
    assert (
        f"readiness.stamp: '{stamp}' cannot mark readiness: {why}" in message and "accepted: sql_at, won_at" in message
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("readiness: {stamp: won_at}", "readiness.horizon_days: required"),
        (
            "readiness: {stamp: won_at, horizon_days: 0}",
            "readiness.horizon_days: Input should be greater than or equal",
        ),
        ("readiness: {stamp: won_at, horizon_days: '90'}", "readiness.horizon_days: Input should be a valid integer"),
        ("readiness: {stamp: won_at, horizon_days: 4.5}", "readiness.horizon_days: Input should be a valid integer"),
        (
            "custom_attributes: [{name: seats, dtype: int, description: S., allowed: ['1']}]",
            "custom_attributes[0] (seats).allowed: lists the values of a category; 'seats' has dtype int",
        ),
        (
            "custom_attributes: [{name: tier, dtype: category, description: T., min_value: 0}]",
            "custom_attributes[0] (tier).min_value: bounds an int or float; 'tier' has dtype category",
        ),
        (
            "custom_attributes: [{name: tier, dtype: category, description: T., allowed: [a, a]}]",
            "custom_attributes[0] (tier).allowed: 'tier' lists a value twice",
        ),
        ("custom_attributes: [{name: tier, dtype: category}]", "custom_attributes[0] (tier).description: required"),
        (
            "custom_attributes: [{name: industry, dtype: category, description: Dup.}]",
            "custom_attributes[0] (industry).name: 'industry' is a built-in leads column",
        ),
        (
            "custom_attributes: [{name: as_of, dtype: float, description: A.}]",
            "custom_attributes[0] (as_of).name: 'as_of' is reserved",
        ),
        (
            "custom_attributes: [{name: t, dtype: int, description: T.}, {name: t, dtype: float, description: U.}]",
            "custom_attributes: 't' is declared twice",
        ),
        (
            "custom_attributes: {crm_tier: {dtype: category}}",
            "custom_attributes: expected a list of attributes, each an entry `- name: ...` with dtype and description",
        ),
    ],
)
def test_invalid_values_are_named_by_key(text: str, expected: str) -> None:
    assert expected in _error(text)


def test_every_problem_is_listed_at_once() -> None:
    message = _error(
        "custom_attributes: [{name: notes, dtype: text, description: N.}]\nreadiness: {stamp: sql, horizon_days: 0}"
    )
    assert message.startswith("contract.yaml: 3 problem(s) in the contract:")
    assert "(notes).dtype" in message and "readiness.stamp" in message and "readiness.horizon_days" in message


@pytest.mark.parametrize(("text", "expected"), [("readiness: [won_at", "not valid YAML"), ("- won_at", "got list")])
def test_text_that_is_no_yaml_mapping_is_refused(text: str, expected: str) -> None:
    assert expected in _error(text)


def test_a_readiness_label_refuses_what_the_file_would() -> None:
    with pytest.raises(ValueError, match="accepted: sql_at, won_at"):
        ReadinessLabel("mql_at", 30)
    with pytest.raises(ValueError, match="horizon_days must be a whole number of days >= 1"):
        ReadinessLabel("won_at", 0)


def test_a_contract_pickled_before_it_declared_readiness_still_loads() -> None:
    contract = LeadContract(custom_attributes=(custom_attribute("seats", "int", "Seats."),))
    assert pickle.loads(pickle.dumps(contract)) == contract
    # What a model logged before `readiness` existed holds: the three earlier fields only.
    old = LeadContract.__new__(LeadContract)
    old.__setstate__([LEADS, ACTIVITIES, contract.custom_attributes])
    assert old == contract and old.readiness is None


def test_the_contract_reference_shows_the_example_file() -> None:
    page = (Path(__file__).parents[2] / "docs" / "reference" / "contract.md").read_text()
    shown = page.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert contract_from_yaml(shown) == contract_from_yaml(EXAMPLE.read_text())
