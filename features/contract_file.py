"""The lead contract as a YAML file: a deployment's custom CRM attributes and what its readiness label means."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from features.spec import (
    LEADS,
    LIFECYCLE_CHAIN,
    READINESS_STAMPS,
    LeadContract,
    ReadinessLabel,
    custom_attribute,
)
from features.yaml12 import load_yaml12

# Keys a scoring row holds besides the lead's columns (the logged model's input): an attribute may not take one.
RESERVED_NAMES: tuple[str, ...] = ("as_of", "activities", "colleagues", "custom")
# Why a lifecycle column that is not declarable cannot mark readiness, in words for the error message.
_NOT_READINESS: Mapping[str, str] = {
    "created_at": "every lead has one",
    "mql_at": "an open lead passes it on its way to SQL, so its own stage would give the answer away",
    "sal_at": "an open lead passes it on its way to SQL, so its own stage would give the answer away",
    "requalified_at": "it already counts as SQL for a recycled lead; declare sql_at",
    "lost_at": "a loss is not readiness",
    "recycled_at": "a return to nurture is not readiness",
}


class ContractFileError(ValueError):
    """The contract file is not valid; the message names every bad key, what is wrong and what is accepted."""


class CustomAttributeEntry(BaseModel):
    """One custom CRM field of the leads table: a fit attribute like the built-in profile columns."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    dtype: Literal["category", "int", "float"]
    description: str = Field(min_length=1)
    # Known values of a category (documentation and API schema); other values are accepted and scored as "other".
    allowed: list[str] | None = Field(default=None, min_length=1)
    min_value: float | None = None

    @field_validator("name")
    @classmethod
    def _column_name(cls, name: str) -> str:
        if name != name.strip() or not name.strip():
            raise ValueError(f"must be a column name without leading or trailing spaces (got {name!r})")
        if name in LEADS.names:
            raise ValueError(f"{name!r} is a built-in leads column; give the custom attribute a name of its own")
        if name in RESERVED_NAMES:
            raise ValueError(f"{name!r} is reserved for a scoring row's {name}; accepted: any other column name")
        return name

    @model_validator(mode="after")
    def _options_fit_the_dtype(self) -> Self:
        if self.allowed is not None and self.dtype != "category":
            raise ValueError(f"allowed: lists the values of a category; {self.name!r} has dtype {self.dtype}")
        if self.min_value is not None and self.dtype == "category":
            raise ValueError(f"min_value: bounds an int or float; {self.name!r} has dtype category")
        if self.allowed is not None and len(set(self.allowed)) != len(self.allowed):
            raise ValueError(f"allowed: {self.name!r} lists a value twice")
        return self


class ReadinessEntry(BaseModel):
    """What the readiness model predicts: an open lead reaching `stamp` within `horizon_days`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stamp: str
    horizon_days: int = Field(strict=True, ge=1)

    @field_validator("stamp")
    @classmethod
    def _declarable(cls, stamp: str) -> str:
        accepted = ", ".join(READINESS_STAMPS)
        if stamp in READINESS_STAMPS:
            return stamp
        if stamp in _NOT_READINESS:
            raise ValueError(f"{stamp!r} cannot mark readiness: {_NOT_READINESS[stamp]}; accepted: {accepted}")
        raise ValueError(
            f"{stamp!r} is not a lifecycle column (those are {', '.join(LIFECYCLE_CHAIN)}); accepted: {accepted}"
        )


class ContractFile(BaseModel):
    """A contract file: custom attributes and, optionally, the readiness label (default: SQL within 30 days)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    custom_attributes: list[CustomAttributeEntry] = Field(default_factory=list)
    readiness: ReadinessEntry | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        seen: set[str] = set()
        for attr in self.custom_attributes:
            if attr.name in seen:
                raise ValueError(f"custom_attributes: {attr.name!r} is declared twice")
            seen.add(attr.name)
        return self

    def contract(self) -> LeadContract:
        """The LeadContract this file declares."""
        attributes = tuple(
            custom_attribute(
                a.name,
                a.dtype,
                a.description,
                allowed=tuple(a.allowed) if a.allowed is not None else None,
                min_value=a.min_value,
            )
            for a in self.custom_attributes
        )
        readiness = (
            None if self.readiness is None else ReadinessLabel(self.readiness.stamp, self.readiness.horizon_days)
        )
        return LeadContract(custom_attributes=attributes, readiness=readiness)


# Keys of each section, quoted when a user misspells one.
_SECTIONS: Mapping[str, type[BaseModel]] = {"custom_attributes": CustomAttributeEntry, "readiness": ReadinessEntry}


def _where(loc: Sequence[int | str], document: Mapping[str, Any]) -> str:
    """A key's place as a reader finds it: `custom_attributes[1] (seats).dtype`, naming the attribute."""
    parts: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int):
            parts[-1] += f"[{part}]"
            entries = document.get("custom_attributes") if i == 1 else None
            entry = entries[part] if isinstance(entries, list) and part < len(entries) else None
            if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
                parts[-1] += f" ({entry['name']})"
        else:
            parts.append(part)
    return ".".join(parts) or "contract"


def _describe(error: Mapping[str, Any], document: Mapping[str, Any]) -> str:
    loc = tuple(error["loc"])
    where = _where(loc, document)
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        model = _SECTIONS.get(str(loc[0]), ContractFile) if len(loc) > 1 else ContractFile
        return f"{where}: unknown key; accepted keys: {', '.join(model.model_fields)}"
    if error["type"] == "missing":
        return f"{where}: required"
    if error["type"] == "list_type" and loc == ("custom_attributes",):
        return f"{where}: expected a list of attributes, each an entry `- name: ...` with dtype and description"
    if error["type"] == "value_error":
        # Checks across keys name their key first ("allowed: ..."): report them at that key.
        head, _, rest = message.partition(": ")
        if rest and head.isidentifier():
            return f"{head if where == 'contract' else f'{where}.{head}'}: {rest}"
        return f"{where}: {message}"
    if isinstance(error.get("input"), str | int | float | bool):
        message += f" (got {error['input']!r})"
    return f"{where}: {message}"


def parse_contract(document: object, *, source: str = "contract") -> LeadContract:
    """The LeadContract a parsed contract file declares; a ContractFileError names every problem and what's accepted."""
    if document is None:
        document = {}  # an empty file declares nothing: the built-in contract
    if not isinstance(document, dict):
        raise ContractFileError(
            f"{source}: expected a YAML mapping with custom_attributes and readiness, got {type(document).__name__}"
        )
    try:
        parsed = ContractFile.model_validate(document)
    except ValidationError as err:
        problems = "\n  ".join(_describe(e, document) for e in err.errors())
        raise ContractFileError(f"{source}: {err.error_count()} problem(s) in the contract:\n  {problems}") from err
    return parsed.contract()


def contract_from_yaml(text: str, *, source: str = "contract") -> LeadContract:
    """The LeadContract of a contract file's text (see `parse_contract`); a ContractFileError when it is not YAML."""
    try:
        document = load_yaml12(text)
    except yaml.YAMLError as err:
        raise ContractFileError(f"{source}: not valid YAML: {err}") from err
    return parse_contract(document, source=source)
