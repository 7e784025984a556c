"""Request models of an export model, built from its mapping: a lead is its id and the export's own columns."""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from features.export import ColumnMapping, ExportBuilder
from serving.schemas import Identifier, Text, Timestamp

_KNOWN_WORDS = {
    "creation": "known when the lead is created",
    "engagement": "known as the lead engages",
    "sales_contact": "known once sales is in touch",
    "outcome": "known with the outcome",
}


class ExportLead(BaseModel):
    """A lead of an export model: its id and the export's columns by their names (absent: missing)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lead_id: Identifier

    # What routing reads of a lead (serving.schemas.Person): an export names no region, size or source of its own.
    @property
    def employee_count(self) -> None:
        """No company size of the contract's kind."""
        return None

    @property
    def region(self) -> None:
        """No region of the contract's kind."""
        return None

    @property
    def source(self) -> None:
        """No source of the contract's kind (an export's source column is a column like the others)."""
        return None

    @property
    def custom(self) -> Mapping[str, float | str | None]:
        """No custom attributes: every column is a field of its own."""
        return {}

    def record(self) -> dict[str, Any]:
        """The lead as the export builder reads it: its id and its columns by their export names."""
        return self.model_dump(by_alias=True)


class ExportScoreRequest(BaseModel):
    """One lead of an export model to score; it has no touches or colleagues, the export's columns say it all."""

    model_config = ConfigDict(extra="forbid")

    lead: ExportLead
    as_of: Timestamp | None = Field(default=None, description="Score as of this time; default: now.")

    @property
    def activities(self) -> Sequence[Any]:
        """No touches: an export's engagement is in its columns."""
        return ()

    @property
    def colleagues(self) -> Sequence[Any]:
        """No colleagues."""
        return ()


def _field(name: str, column: ColumnMapping) -> tuple[Any, Any]:
    when = _KNOWN_WORDS[column.known_at]
    description = f"{column.description} ({column.role} column, {column.type}, {when})".strip()
    kind: Any
    if column.type == "number":
        kind = float | None
        return kind, Field(default=None, alias=name, description=description, allow_inf_nan=False)
    kind = bool | None if column.type == "boolean" else Text | None
    return kind, Field(default=None, alias=name, description=description)


@dataclass(frozen=True, slots=True)
class ExportRequests:
    """The single and batch request models of one export model."""

    single: type[ExportScoreRequest]
    batch: type[BaseModel]


def export_requests(builder: ExportBuilder) -> ExportRequests:
    """Request models whose lead fields are the model's columns, named and described as its mapping declares."""
    # Python names stand for the columns (an export's names hold spaces); requests and answers use the aliases.
    fields = {f"column_{j}": _field(name, col) for j, (name, col) in enumerate(builder.column_mappings.items())}
    doc = f"A lead of the export model: its id and columns ({_outcome(builder)})."
    lead: type[ExportLead] = create_model(  # type: ignore[call-overload]
        "ExportLead", __base__=ExportLead, __doc__=doc, **fields
    )
    single = create_model("ExportScoreRequest", __base__=ExportScoreRequest, lead=(lead, ...))
    batch = create_model(
        "ExportBatchRequest", __config__=ConfigDict(extra="forbid"), leads=(list[single], Field(min_length=1))
    )
    return ExportRequests(single=single, batch=batch)


def _outcome(builder: ExportBuilder) -> str:
    return f"the outcome it predicts: {builder.mapping.outcome.column} in {builder.mapping.outcome.positive}"


Model = TypeVar("Model", bound=BaseModel)


def parse_body(model: type[Model], raw: bytes, builder: ExportBuilder | None = None) -> Model:
    """The body as `model`, or the RequestValidationError FastAPI raises for its own body models (loc from "body").

    A field the model does not read is explained from the export model's mapping (`builder`): a column left out of
    the model says why, a misspelt one gets the likely name, and both list the names accepted.
    """
    try:
        return model.model_validate_json(raw)
    except ValidationError as err:
        errors = [_worded({**e, "loc": ("body", *e["loc"])}, builder) for e in err.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def _worded(error: dict[str, Any], builder: ExportBuilder | None) -> dict[str, Any]:
    loc = error["loc"]
    if error["type"] != "extra_forbidden" or "lead" not in loc or builder is None:
        return error
    name, columns = str(loc[-1]), list(builder.columns_)
    accepted = ", ".join(["lead_id", *columns])
    declared = builder.mapping.columns.get(name)
    if declared is not None:
        if declared.role == "ignore":
            why = "the mapping ignores it"
        elif name in builder.mapping.declared_late:
            why = f"it is known only at {declared.known_at}, after {builder.mapping.known_by} (the mapping's known_by)"
        else:
            why = "the leakage audit left it out (it looks recorded after the outcome)"
        return {**error, "msg": f"a column this model leaves out: {why}; it reads: {accepted}"}
    close = difflib.get_close_matches(name, columns, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return {**error, "msg": f"not a column this model reads{hint}; it reads: {accepted}"}


_OPENAPI: dict[tuple[str, str], dict[str, Any]] = {}


def export_openapi(contract: dict[str, Any], model: LoadedModelLike) -> dict[str, Any]:
    """The OpenAPI document with the score routes' bodies those of `model`'s export (computed once per model)."""
    key = (model.name, model.version)
    cached = _OPENAPI.get(key)
    if cached is not None:
        return cached
    assert model.export is not None
    document = copy.deepcopy(contract)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for path, request_model in (("/v1/score", model.export.single), ("/v1/score/batch", model.export.batch)):
        schema = request_model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[request_model.__name__] = schema
        operation = document["paths"][path]["post"]
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{request_model.__name__}"}}},
        }
        operation["description"] = (
            f"{operation.get('description', '')}\n\nThe model in use ({model.name} version {model.version}) scores "
            "leads of a CRM export: a lead is its lead_id and the export's columns, by their names."
        ).strip()
    _OPENAPI.clear()  # one model at a time is in use: the previous one's document is done with
    _OPENAPI[key] = document
    return document


class LoadedModelLike(Protocol):
    """What the OpenAPI document reads of the model in use (serving.model.LoadedModel)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def export(self) -> ExportRequests | None: ...
