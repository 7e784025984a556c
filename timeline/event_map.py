"""The event map: which Segment track and page events become which touches, and which traits fill which lead fields."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from features.spec import ACTIVITY_TYPES
from features.yaml12 import load_yaml12
from timeline.schema import LIFECYCLE_STAMPS, PROFILE_TEXT

DEFAULT_EVENT_MAP = "default_event_map.yaml"  # shipped inside this package
# Lead fields a trait may fill: the profile, the lifecycle stamps, the account and the creation time (a CRM's
# createdAt); `custom.<name>` fills a custom attribute.
TRAIT_TARGETS: tuple[str, ...] = (
    "account_id", "created_at", *PROFILE_TEXT, "employee_count", "annual_revenue", *LIFECYCLE_STAMPS,
)  # fmt: skip
# Fields a group call's traits describe: the account's, so they go to the accounts row and to the grouped lead.
ACCOUNT_TARGETS: frozenset[str] = frozenset(
    {"industry", "country", "region", "employee_count", "annual_revenue", "email_domain"}
)
CUSTOM_PREFIX = "custom."
_ACTIVITY_TYPE_SET = frozenset(ACTIVITY_TYPES)


def _activity_type(value: str) -> str:
    if value not in _ACTIVITY_TYPE_SET:
        raise ValueError(f"{value!r} is not an activity type (one of {', '.join(ACTIVITY_TYPES)})")
    return value


class PageRule(BaseModel):
    """A page call whose name equals `name`, or whose path contains `path`, is a touch of `activity_type`."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    path: str | None = None
    activity_type: str

    _check_type = field_validator("activity_type")(_activity_type)

    @model_validator(mode="after")
    def _one_test(self) -> Self:
        if (self.name is None) == (self.path is None):
            raise ValueError("a page rule names either a page `name` or a `path` substring (exactly one)")
        return self

    def matches(self, name: str | None, path: str | None) -> bool:
        """Whether a page call with this name and path falls under the rule."""
        if self.name is not None:
            return name == self.name
        return path is not None and self.path is not None and self.path in path


class PageMap(BaseModel):
    """Page calls: the first matching rule decides; `default` takes the rest (None: they are unmapped)."""

    model_config = ConfigDict(extra="forbid")

    rules: list[PageRule] = Field(default_factory=list)
    default: str | None = "page_view"

    @field_validator("default")
    @classmethod
    def _check_default(cls, value: str | None) -> str | None:
        return None if value is None else _activity_type(value)

    def activity_type(self, name: str | None, path: str | None) -> str | None:
        """The touch a page call is, or None when no rule and no default takes it."""
        for rule in self.rules:
            if rule.matches(name, path):
                return rule.activity_type
        return self.default


class EventMap(BaseModel):
    """How Segment messages become leads and touches (LEADSCORE_EVENT_MAP; default: the shipped map)."""

    model_config = ConfigDict(extra="forbid")

    track: dict[str, str] = Field(default_factory=dict, description="Track event name -> activity type.")
    page: PageMap = Field(default_factory=PageMap)
    traits: dict[str, str] = Field(
        default_factory=dict,
        description="Segment trait (dotted for nested: company.industry) -> lead field, or custom.<attribute>.",
    )
    unknown: Literal["ignore", "refuse"] = Field(
        default="ignore", description="An event the map sends nowhere: counted and ignored, or the request refused."
    )

    @field_validator("track")
    @classmethod
    def _check_track(cls, value: dict[str, str]) -> dict[str, str]:
        for event, activity_type in value.items():
            if activity_type not in _ACTIVITY_TYPE_SET:
                raise ValueError(
                    f"event {event!r} maps to {activity_type!r}, which is not an activity type "
                    f"(one of {', '.join(ACTIVITY_TYPES)})"
                )
        return value

    @field_validator("traits")
    @classmethod
    def _check_traits(cls, value: dict[str, str]) -> dict[str, str]:
        for trait, target in value.items():
            custom = target.startswith(CUSTOM_PREFIX) and len(target) > len(CUSTOM_PREFIX)
            if target not in TRAIT_TARGETS and not custom:
                raise ValueError(
                    f"trait {trait!r} maps to {target!r}, which is not a lead field "
                    f"(one of {', '.join(TRAIT_TARGETS)}, or custom.<attribute>)"
                )
        return value

    def track_type(self, event: str) -> str | None:
        """The activity type of a track event, or None when the map sends it nowhere."""
        return self.track.get(event)


class EventMapError(ValueError):
    """The event map file cannot be read or is not a valid map; the message names the file and the entry."""


def load_event_map(path: str | Path | None = None) -> EventMap:
    """The event map in the YAML file at `path`, or the shipped default; EventMapError naming the bad entry."""
    if path is None or str(path) == "":
        source = "the default event map"
        text = resources.files("timeline").joinpath(DEFAULT_EVENT_MAP).read_text(encoding="utf-8")
    else:
        source = f"event map {path} (LEADSCORE_EVENT_MAP)"
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise EventMapError(f"cannot read {source}: {err}") from None
    try:
        data = load_yaml12(text)
    except yaml.YAMLError as err:
        raise EventMapError(f"{source} is not YAML: {err}") from None
    try:
        return EventMap.model_validate(data or {})
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(top level)'}: {error['msg']}" for error in err.errors()
        )
        raise EventMapError(f"{source} is not a valid event map: {problems}") from None
