"""The lead data contract: the `leads` and `activities` tables declared once, as data."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from types import MappingProxyType
from typing import Literal

Dtype = Literal["string", "category", "int", "float", "datetime"]
Role = Literal["id", "time", "fit", "lifecycle", "engagement", "property"]

# Stages a lead passes through, in the order their timestamps must respect. A lead may skip stages (a demo request
# can go straight to SQL, a lead can be disqualified without reaching SQL) but never run backwards: every non-null
# timestamp in this chain must be >= all non-null timestamps before it. `lost_at` -> `recycled_at` ->
# `requalified_at` describes one recycle cycle (a lost lead back in nurture that later re-qualifies); a win after a
# loss is only possible through that cycle.
LIFECYCLE_CHAIN: tuple[str, ...] = (
    "created_at",
    "mql_at",
    "sal_at",
    "sql_at",
    "lost_at",
    "recycled_at",
    "requalified_at",
    "won_at",
)

# Columns that only make sense when another one is set: (column, prerequisite).
LIFECYCLE_PREREQUISITES: tuple[tuple[str, str], ...] = (
    ("recycled_at", "lost_at"),
    ("requalified_at", "recycled_at"),
)

ACTIVITY_TYPES: tuple[str, ...] = (
    "page_view",
    "pricing_page_view",
    "email_open",
    "email_click",
    "form_submit",
    "content_download",
    "webinar_registered",
    "webinar_attended",
    "demo_request",
    "free_trial_signup",
    "meeting_booked",
    "unsubscribe",
)

INDUSTRIES: tuple[str, ...] = (
    "software",
    "financial services",
    "healthcare",
    "manufacturing",
    "retail",
    "education",
    "government",
    "media",
    "logistics",
    "energy",
    "professional services",
    "telecommunications",
)
REGIONS: tuple[str, ...] = ("north america", "emea", "apac", "latam")
SENIORITIES: tuple[str, ...] = ("c-level", "vp", "director", "manager", "individual contributor", "student")
DEPARTMENTS: tuple[str, ...] = (
    "engineering",
    "it",
    "marketing",
    "sales",
    "finance",
    "operations",
    "hr",
    "executive",
    "other",
)
SOURCES: tuple[str, ...] = (
    "organic search",
    "paid search",
    "paid social",
    "referral",
    "event",
    "partner",
    "outbound",
    "content syndication",
    "direct",
)
CHANNELS: tuple[str, ...] = ("inbound", "outbound", "partner")


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """One declared column: what it holds, how it is typed, and which values it accepts."""

    name: str
    dtype: Dtype
    role: Role
    description: str
    nullable: bool = True
    # Known values of a category. An open vocabulary accepts other values (typos, rare or new categories are scored
    # as "unseen"); a closed one refuses them.
    allowed: tuple[str, ...] | None = None
    open_vocabulary: bool = True
    min_value: float | None = None
    unique: bool = False


@dataclass(frozen=True, slots=True)
class TableSpec:
    """A declared table: its columns, in order, and the column that identifies a row (if any)."""

    name: str
    columns: tuple[ColumnSpec, ...]
    key: str | None = None

    def column(self, name: str) -> ColumnSpec:
        """Return the declared column `name`."""
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"table {self.name!r} declares no column {name!r}")

    @property
    def names(self) -> tuple[str, ...]:
        """Column names in declaration order."""
        return tuple(col.name for col in self.columns)

    def by_role(self, role: Role) -> tuple[ColumnSpec, ...]:
        """Columns with the given role, in declaration order."""
        return tuple(col for col in self.columns if col.role == role)


def _ts(name: str, description: str, *, nullable: bool = True) -> ColumnSpec:
    return ColumnSpec(name, "datetime", "lifecycle" if name != "created_at" else "time", description, nullable=nullable)


LEADS = TableSpec(
    name="leads",
    key="lead_id",
    columns=(
        ColumnSpec("lead_id", "string", "id", "CRM lead identifier.", nullable=False, unique=True),
        ColumnSpec(
            "account_id",
            "string",
            "id",
            "Company (account) the lead belongs to; groups the buying group.",
            nullable=False,
        ),
        _ts("created_at", "When the lead was created (left contact details).", nullable=False),
        ColumnSpec("industry", "category", "fit", "Industry of the account.", allowed=INDUSTRIES),
        ColumnSpec("employee_count", "int", "fit", "Employees at the account.", min_value=0),
        ColumnSpec("annual_revenue", "float", "fit", "Annual revenue of the account, USD.", min_value=0),
        ColumnSpec("country", "category", "fit", "Country of the account (ISO 3166 alpha-2)."),
        ColumnSpec("region", "category", "fit", "Sales region of the account.", allowed=REGIONS),
        ColumnSpec("job_title", "string", "fit", "Free-text job title of the person."),
        ColumnSpec("seniority", "category", "fit", "Seniority of the person.", allowed=SENIORITIES),
        ColumnSpec("department", "category", "fit", "Department of the person.", allowed=DEPARTMENTS),
        ColumnSpec("email_domain", "string", "fit", "Domain of the person's e-mail address (business or free mail)."),
        ColumnSpec("source", "category", "fit", "Acquisition source of the lead.", allowed=SOURCES),
        ColumnSpec("channel", "category", "fit", "Acquisition channel of the lead.", allowed=CHANNELS),
        _ts("mql_at", "First time the lead became marketing-qualified."),
        _ts("sal_at", "First time sales accepted the lead."),
        _ts("sql_at", "First time a rep qualified the lead (SQL)."),
        _ts("lost_at", "When the lead or its opportunity was closed lost or disqualified."),
        _ts("recycled_at", "When a lost lead was returned to marketing nurture."),
        _ts("requalified_at", "When a recycled lead became sales-qualified again."),
        _ts("won_at", "When the lead's opportunity was closed won."),
    ),
)

ACTIVITIES = TableSpec(
    name="activities",
    key=None,
    columns=(
        ColumnSpec("lead_id", "string", "id", "Lead that performed the touch.", nullable=False),
        ColumnSpec("occurred_at", "datetime", "time", "When the touch happened.", nullable=False),
        ColumnSpec(
            "activity_type",
            "category",
            "engagement",
            "Kind of touch.",
            nullable=False,
            allowed=ACTIVITY_TYPES,
            open_vocabulary=False,
        ),
        ColumnSpec("properties", "string", "property", "Optional JSON object with details (page, campaign, ...)."),
    ),
)


# What readiness may predict: a lifecycle stamp reached within a horizon, by a lead that is still open at as_of (stage
# lead, MQL, SAL or recycled; the stages the service gives a readiness score). Each declarable stamp maps to the
# columns that count as reaching it: SQL is sql_at, or requalified_at for a recycled lead (its second qualification).
# Stamps an open lead passes on its way (mql_at, sal_at) would make its own stage a foregone answer, and lost_at or
# recycled_at are not readiness: neither is declarable.
READINESS_STAMPS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"sql_at": ("sql_at", "requalified_at"), "won_at": ("won_at",)}
)
READINESS_MEANINGS: Mapping[str, str] = MappingProxyType(
    {"sql_at": "becomes sales-qualified (sql_at, or requalified_at for a recycled lead)", "won_at": "is won (won_at)"}
)
DEFAULT_READINESS_STAMP = "sql_at"
# A month: the time a rep's follow-up has to turn into qualification, and what `leadscore train` has always used.
DEFAULT_READINESS_HORIZON_DAYS = 30


@dataclass(frozen=True, slots=True)
class ReadinessLabel:
    """What the readiness model predicts: an open lead reaching `stamp` within `horizon_days` of being scored."""

    stamp: str = DEFAULT_READINESS_STAMP
    horizon_days: int = DEFAULT_READINESS_HORIZON_DAYS

    def __post_init__(self) -> None:
        if self.stamp not in READINESS_STAMPS:
            raise ValueError(f"readiness stamp {self.stamp!r} is not accepted; accepted: {', '.join(READINESS_STAMPS)}")
        days = self.horizon_days
        if isinstance(days, bool) or not isinstance(days, numbers.Integral) or days < 1:
            raise ValueError(f"readiness horizon_days must be a whole number of days >= 1 (got {self.horizon_days!r})")

    @property
    def stamps(self) -> tuple[str, ...]:
        """The lifecycle columns whose stamp counts as reaching the declared one."""
        return READINESS_STAMPS[self.stamp]

    @property
    def meaning(self) -> str:
        """The label in words, as model metadata and error messages state it."""
        return f"an open lead {READINESS_MEANINGS[self.stamp]} within {self.horizon_days} days"


@dataclass(frozen=True, slots=True)
class LeadContract:
    """The two tables, any custom CRM attributes declared for this deployment, and what readiness means.

    `readiness` None means not declared: training uses its own settings (SQL within `--horizon-days`), and the
    builder of a trained model carries the label it was trained on.
    """

    leads: TableSpec = LEADS
    activities: TableSpec = ACTIVITIES
    custom_attributes: tuple[ColumnSpec, ...] = field(default_factory=tuple)
    readiness: ReadinessLabel | None = None

    # A model pickled before a field existed holds fewer values than there are fields: the missing (trailing) ones
    # take their defaults, so that such a model still loads and serves.
    def __setstate__(self, state: list[object]) -> None:
        """Restore a pickled contract."""
        for i, spec in enumerate(fields(self)):
            if i < len(state):
                value = state[i]
            elif spec.default_factory is not MISSING:
                value = spec.default_factory()
            else:
                value = spec.default
            object.__setattr__(self, spec.name, value)

    def __post_init__(self) -> None:
        for attr in self.custom_attributes:
            if attr.name in LEADS.names:
                raise ValueError(f"custom attribute {attr.name!r} clashes with a built-in leads column")
            if attr.role != "fit" or attr.dtype not in ("category", "int", "float"):
                raise ValueError(
                    f"custom attribute {attr.name!r}: only fit attributes of dtype category, int or float are "
                    f"supported (got role={attr.role!r}, dtype={attr.dtype!r})"
                )

    @property
    def leads_table(self) -> TableSpec:
        """The leads table including custom attributes."""
        return replace(self.leads, columns=self.leads.columns + self.custom_attributes)


def custom_attribute(
    name: str,
    dtype: Literal["category", "int", "float"],
    description: str,
    *,
    allowed: tuple[str, ...] | None = None,
    min_value: float | None = None,
) -> ColumnSpec:
    """Declare a custom CRM field that flows into validation and fit features like a built-in one."""
    return ColumnSpec(name, dtype, "fit", description, allowed=allowed, min_value=min_value)


DEFAULT_CONTRACT = LeadContract()
