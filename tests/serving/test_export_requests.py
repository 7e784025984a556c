"""An export model's request models, built from its mapping: README's example, strict values, helpful refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from fastapi.exceptions import RequestValidationError

from features.export import CrmMapping, ExportBuilder, typed_frame
from serving.export_schemas import export_openapi, export_requests, parse_body
from training.crm import load_mapping

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_MAPPING = ROOT / "examples" / "x_education.yaml"


@pytest.fixture(scope="module")
def mapping() -> CrmMapping:
    return load_mapping(EXAMPLE_MAPPING)


@pytest.fixture(scope="module")
def builder(mapping: CrmMapping) -> ExportBuilder:
    """A builder on the shipped mapping's usable columns (vocabularies from a few made-up rows)."""
    raw = pd.DataFrame(
        {name: ["Google", "Olark Chat", ""] if col.type == "category" else ["1", "0", ""] for name, col in
         mapping.usable.items()}
    )  # fmt: skip
    frame, problems = typed_frame(raw, mapping.usable, mapping.missing_tokens)
    assert not problems
    return ExportBuilder(mapping=mapping, columns=list(mapping.usable)).fit(frame)


def _readme_export_body() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## From your CRM's export to a live score API") :]
    match = re.search(r"curl [^\n]*/v1/score.*?-d '(?P<body>\{.*?\})'", section, re.DOTALL)
    assert match is not None, "README's export section has no curl example for /v1/score"
    return match["body"]


def test_readmes_export_example_is_a_valid_lead_of_the_shipped_mapping(builder: ExportBuilder) -> None:
    body = parse_body(export_requests(builder).single, _readme_export_body().encode(), builder)
    record = body.lead.record()
    assert record["lead_id"] == "7927b2df" and record["Total Time Spent on Website"] == 1532
    # Columns the mapping declares known only at sales contact are not fields of the request.
    for late in ("Lead Quality", "Tags", "Asymmetrique Activity Index", "Last Activity"):
        assert late not in record


def _problems(builder: ExportBuilder, lead: dict[str, object]) -> list[dict[str, object]]:
    with pytest.raises(RequestValidationError) as caught:
        parse_body(export_requests(builder).single, json.dumps({"lead": lead}).encode(), builder)
    return list(caught.value.errors())


def test_values_are_checked_against_their_columns_types(builder: ExportBuilder) -> None:
    (problem,) = _problems(builder, {"lead_id": "x", "TotalVisits": "many"})
    assert problem["loc"] == ("body", "lead", "TotalVisits") and "number" in str(problem["msg"])
    (problem,) = _problems(builder, {"lead_id": "x", "Do Not Email": "perhaps"})
    assert problem["loc"] == ("body", "lead", "Do Not Email")
    (problem,) = _problems(builder, {"TotalVisits": 3})
    assert problem["loc"] == ("body", "lead", "lead_id") and problem["type"] == "missing"


def test_a_column_the_model_leaves_out_is_refused_with_why(builder: ExportBuilder) -> None:
    (problem,) = _problems(builder, {"lead_id": "x", "Lead Quality": "High in Relevance"})
    assert "known only at sales_contact, after engagement" in str(problem["msg"])
    (problem,) = _problems(builder, {"lead_id": "x", "Lead Sorce": "Google"})
    assert "did you mean 'Lead Source'?" in str(problem["msg"])
    (problem,) = _problems(builder, {"lead_id": "x", "Lead Number": "660737"})
    assert "the mapping ignores it" in str(problem["msg"])


def test_the_openapi_document_describes_the_columns_from_the_mapping(builder: ExportBuilder) -> None:
    class Model:
        name, version, export = "crm-lead-scorer", "7", export_requests(builder)

    contract = {"paths": {"/v1/score": {"post": {}}, "/v1/score/batch": {"post": {}}}, "components": {"schemas": {}}}
    document = export_openapi(contract, Model())
    schemas = document["components"]["schemas"]
    ref = document["paths"]["/v1/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    lead_ref = schemas[ref.rsplit("/", 1)[1]]["properties"]["lead"]["$ref"]
    fields = schemas[lead_ref.rsplit("/", 1)[1]]["properties"]
    assert set(fields) == {"lead_id", *builder.columns_}
    assert fields["TotalVisits"]["description"].startswith("The total number of visits")
    assert "engagement column, number, known as the lead engages" in fields["TotalVisits"]["description"]
    assert contract["paths"]["/v1/score"]["post"] == {}  # the contract model's document is left as it was
