"""The routing policy: grade and stage cut-offs, the grade x stage -> queue matrix and SLA hours per queue."""

from __future__ import annotations

import re
import unicodedata
from typing import Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from features.fit import SIZE_BAND_LABELS, size_band
from features.scoring import GRADES, READINESS_STAGES, CutOffs

Queue = Literal["sales", "sdr", "nurture", "disqualify", "owner", "customer"]
# owner: the lead's own rep keeps it (an open opportunity); customer: account management (expansion), no sales hand-off.
QUEUES: tuple[str, ...] = ("sales", "sdr", "nurture", "disqualify", "owner", "customer")
# The queues of open leads (the grade x stage matrix routes them, threshold tuning counts them); the other two take
# only leads past the readiness question, routed by lifecycle stage.
OPEN_QUEUES: tuple[str, ...] = ("sales", "sdr", "nurture", "disqualify")
LIFECYCLE_QUEUES: tuple[str, ...] = ("owner", "customer")
# Lifecycle stages (features.engine.STAGES) where readiness does not apply: they are routed by stage, not by scores.
ClosedStage = Literal["sql", "requalified", "lost", "won"]
CLOSED_STAGES: tuple[ClosedStage, ...] = ("sql", "requalified", "lost", "won")
Grade = Literal["A", "B", "C", "D"]
Stage = Literal["nurture", "MQL", "SQL"]
SizeBand = Literal["1-10", "11-50", "51-200", "201-1000", "1001-5000", "5000+"]
SEGMENT_DIMENSIONS: tuple[str, ...] = ("region", "size_band", "source")
MAX_SEGMENTS = 50  # a policy sales ops can still read; more is a mistake, not a policy


class Cell(BaseModel):
    """Where leads of one grade and stage go, and how urgently (1 = call first)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    queue: Queue
    priority: int = Field(ge=1, le=5)


class GradeCutoffs(BaseModel):
    """Minimum fit score (0-100) for grades A, B and C; below C is D."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    A: float = Field(ge=0, le=100)
    B: float = Field(ge=0, le=100)
    C: float = Field(ge=0, le=100)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.A > self.B > self.C:
            raise ValueError(
                f"grade cut-offs must decrease strictly: A > B > C, got A={self.A}, B={self.B}, C={self.C}"
            )
        return self


class StageCutoffs(BaseModel):
    """Minimum readiness probability for MQL and SQL; below MQL is nurture."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    MQL: float = Field(gt=0, lt=1)
    SQL: float = Field(gt=0, lt=1)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.SQL > self.MQL:
            raise ValueError(f"the SQL cut-off must be above the MQL cut-off, got MQL={self.MQL}, SQL={self.SQL}")
        return self


def _default_matrix() -> dict[Grade, dict[Stage, Cell]]:
    # High fit + ready -> sales now; high fit, not ready -> nurture (account-based marketing); poor fit but ready ->
    # SDR qualification; poor fit, not ready -> disqualify or low-touch nurture (FUNNEL.md).
    return {
        "A": {"SQL": Cell(queue="sales", priority=1), "MQL": Cell(queue="sales", priority=2),
              "nurture": Cell(queue="nurture", priority=4)},
        "B": {"SQL": Cell(queue="sales", priority=2), "MQL": Cell(queue="sdr", priority=3),
              "nurture": Cell(queue="nurture", priority=4)},
        "C": {"SQL": Cell(queue="sdr", priority=2), "MQL": Cell(queue="sdr", priority=3),
              "nurture": Cell(queue="nurture", priority=5)},
        "D": {"SQL": Cell(queue="sdr", priority=3), "MQL": Cell(queue="nurture", priority=4),
              "nurture": Cell(queue="disqualify", priority=5)},
    }  # fmt: skip


def _default_sla() -> dict[Queue, float | None]:
    # Speed-to-lead: a hot lead must hear from sales within hours; nurture and disqualify have no call to make, and
    # neither have owner (the rep already works the opportunity) nor customer (no sales hand-off).
    return {"sales": 4.0, "sdr": 24.0, "nurture": None, "disqualify": None, "owner": None, "customer": None}


# Queues added after policies were first stored: a stored sla_hours that does not name them means no SLA for them.
_LATER_QUEUES = LIFECYCLE_QUEUES


def _default_lifecycle_routes() -> dict[ClosedStage, Cell]:
    # Readiness is the chance that an open lead becomes an SQL: for a lead past that question, its stage decides.
    # An opportunity (SQL, or requalified after a recycle) stays with the rep who owns it, a won lead goes to the
    # customer team (its fit still speaks for expansion), a lost lead that nobody recycled goes back to nurture. None
    # of them is a new priority-1 hand-off to sales.
    return {
        "sql": Cell(queue="owner", priority=3),
        "requalified": Cell(queue="owner", priority=3),
        "lost": Cell(queue="nurture", priority=5),
        "won": Cell(queue="customer", priority=5),
    }


# Dots and apostrophes sit inside abbreviations and names ("E.M.E.A.", "Int'l"): dropped, they join the word.
_JOINING = re.compile(r"[.'\u2019`]")
# Anything else that is not a letter or digit (spaces, "_", "-", "/", "&", brackets, ...) separates words.
_SEPARATING = re.compile(r"[\W_]+")


def segment_value(value: object) -> str | None:
    """The form segment values are compared in, so that case, spacing and punctuation do not split a segment.

    Unicode compatibility forms are unified (NFKC) and case folded; dots and apostrophes are dropped; every other run
    of characters that are not letters or digits becomes one space. So 'North_America ', 'north-america' and
    'North America' are one region, and so are 'E.M.E.A.' and 'emea'. Empty values are None.
    """
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = unicodedata.normalize("NFKC", str(value)).casefold()
    text = _SEPARATING.sub(" ", _JOINING.sub("", text)).strip()
    return text or None


def lead_size_band(employee_count: object) -> str | None:
    """The company-size band label of an employee count (the bands training reports segments in)."""
    band = size_band(employee_count)
    return None if np.isnan(band) else SIZE_BAND_LABELS[int(band)]


class SegmentMatch(BaseModel):
    """Which leads a segment's cut-offs apply to: every field given must match (region and source ignore case)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    region: str | None = Field(default=None, min_length=1, max_length=256)
    size_band: SizeBand | None = None
    source: str | None = Field(default=None, min_length=1, max_length=256)

    @field_validator("region", "source")
    @classmethod
    def _canonical(cls, value: str | None) -> str | None:
        return segment_value(value)

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if self.region is None and self.size_band is None and self.source is None:
            raise ValueError("a segment must name at least one of region, size_band, source")
        return self

    def given(self) -> dict[str, str]:
        """The fields this segment constrains."""
        return {d: v for d in SEGMENT_DIMENSIONS if (v := getattr(self, d)) is not None}

    def matches(self, region: str | None, size_band: str | None, source: str | None) -> bool:
        """Whether a lead with these (canonical) segment values belongs to the segment."""
        lead = {"region": region, "size_band": size_band, "source": source}
        return all(lead[d] == v for d, v in self.given().items())

    def covers(self, other: SegmentMatch) -> bool:
        """Every lead of `other` is also in this segment (so, listed after it, `other` could never apply)."""
        mine, theirs = self.given(), other.given()
        return all(theirs.get(d) == v for d, v in mine.items())

    def label(self) -> str:
        """'region=emea, source=webinar'."""
        return ", ".join(f"{d}={v}" for d, v in self.given().items())


class SegmentPolicy(BaseModel):
    """Cut-offs for one segment of leads, replacing the policy's own for the leads it matches."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    match: SegmentMatch
    grades: GradeCutoffs | None = None
    stages: StageCutoffs | None = None

    @model_validator(mode="after")
    def _changes_something(self) -> Self:
        if self.grades is None and self.stages is None:
            raise ValueError(f"segment {self.match.label()} sets neither grades nor stages")
        return self


class QueueCapacity(BaseModel):
    """A team's weekly capacity: how many reps, and how many new leads each can work in a week."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    reps: int = Field(ge=0, le=100_000)
    leads_per_rep_per_week: float = Field(gt=0, le=10_000)

    @property
    def weekly(self) -> float:
        """New leads the team can work per week."""
        return self.reps * self.leads_per_rep_per_week


WorkedQueue = Literal["sales", "sdr"]
WORKED_QUEUES: tuple[WorkedQueue, ...] = ("sales", "sdr")  # the queues where people call leads (capacity applies)


def _default_capacities() -> dict[WorkedQueue, QueueCapacity]:
    return {
        "sales": QueueCapacity(reps=4, leads_per_rep_per_week=25),
        "sdr": QueueCapacity(reps=6, leads_per_rep_per_week=60),
    }


class Capacities(BaseModel):
    """What the sales and SDR teams can work per week, and the working hours SLAs are counted in."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    queues: dict[WorkedQueue, QueueCapacity] = Field(default_factory=_default_capacities)
    working_hours_per_week: float = Field(default=40.0, gt=0, le=168)
    max_past_sla_share: float = Field(
        default=0.05, ge=0, le=1, description="Share of a team's leads the solver lets wait past the SLA."
    )

    def weekly(self, queue: str) -> float | None:
        """Leads per week the queue can work; None when it has no capacity limit (nurture, disqualify, unset)."""
        capacity = self.queues.get(queue)  # type: ignore[call-overload]
        return None if capacity is None else capacity.weekly


class RoutingPolicy(BaseModel):
    """Thresholds sales ops own: how scores become a grade, a stage and a queue with a priority and an SLA."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    grades: GradeCutoffs
    stages: StageCutoffs
    matrix: dict[Grade, dict[Stage, Cell]] = Field(default_factory=_default_matrix)
    sla_hours: dict[Queue, float | None] = Field(default_factory=_default_sla)
    segments: list[SegmentPolicy] = Field(
        default_factory=list,
        max_length=MAX_SEGMENTS,
        description="Cut-offs for segments of leads; the first segment a lead matches applies, else the defaults.",
    )
    capacities: Capacities | None = Field(
        default=None, description="The team capacities these thresholds were tuned for (kept for the record)."
    )
    lifecycle_routes: dict[ClosedStage, Cell] = Field(
        default_factory=_default_lifecycle_routes,
        description="Queue and priority of leads that readiness does not apply to, by lifecycle stage: sql and "
        "requalified (an open opportunity), lost (and not recycled), won. Their grade is still given; their readiness "
        "is null and the grade x stage matrix does not route them.",
    )

    @model_validator(mode="before")
    @classmethod
    def _later_queues_without_sla(cls, data: object) -> object:
        # Policies stored before the owner and customer queues existed name no SLA for them: they have none.
        if isinstance(data, dict) and isinstance(data.get("sla_hours"), dict):
            sla = data["sla_hours"]
            missing = {q: None for q in _LATER_QUEUES if q not in sla}
            if missing:
                data = {**data, "sla_hours": {**sla, **missing}}
        return data

    @model_validator(mode="after")
    def _complete(self) -> Self:
        missing = [f"{g} x {s}" for g in GRADES for s in READINESS_STAGES if s not in self.matrix.get(g, {})]  # type: ignore[call-overload]
        if missing:
            raise ValueError(f"the grade x stage matrix has no queue for {', '.join(missing)}")
        closed_only = sorted(
            {f"{g} x {s} -> {c.queue}" for g, row in self.matrix.items() for s, c in row.items()
             if c.queue in LIFECYCLE_QUEUES}
        )  # fmt: skip
        if closed_only:
            raise ValueError(
                f"the grade x stage matrix routes open leads, to {', '.join(OPEN_QUEUES)}; "
                f"{' and '.join(LIFECYCLE_QUEUES)} take leads by lifecycle stage only (lifecycle_routes), "
                f"got {', '.join(closed_only)}"
            )
        unrouted = [s for s in CLOSED_STAGES if s not in self.lifecycle_routes]
        if unrouted:
            raise ValueError(
                f"lifecycle_routes has no queue for lifecycle stage(s) {', '.join(unrouted)} "
                f"(it routes each of {', '.join(CLOSED_STAGES)})"
            )
        used = {cell.queue for row in self.matrix.values() for cell in row.values()}
        used |= {cell.queue for cell in self.lifecycle_routes.values()}
        no_sla = sorted(q for q in used if q not in self.sla_hours)
        if no_sla:
            raise ValueError(f"sla_hours names no value (hours or null) for queue(s) {', '.join(no_sla)}")
        bad = [f"{q}={h}" for q, h in self.sla_hours.items() if h is not None and not h > 0]
        if bad:
            raise ValueError(f"SLA hours must be positive (or null for no SLA), got {', '.join(bad)}")
        for i, later in enumerate(self.segments):
            for j, earlier in enumerate(self.segments[:i]):
                if earlier.match.covers(later.match):
                    raise ValueError(
                        f"segment {i} ({later.match.label()}) can never apply: segment {j} "
                        f"({earlier.match.label()}) comes first and matches all of its leads; list the narrower first"
                    )
        return self

    @classmethod
    def from_cutoffs(cls, cutoffs: CutOffs) -> RoutingPolicy:
        """The default policy a model ships with: its own grade and stage cut-offs and the standard matrix."""
        a, b, c = cutoffs.fit_grades
        return cls(
            grades=GradeCutoffs(A=a, B=b, C=c),
            stages=StageCutoffs(MQL=cutoffs.readiness_mql, SQL=cutoffs.readiness_sql),
        )

    def segment_of(self, region: str | None, size_band: str | None, source: str | None) -> int | None:
        """Index of the first segment the lead matches (values canonical, see `segment_value`); None: defaults."""
        for i, segment in enumerate(self.segments):
            if segment.match.matches(region, size_band, source):
                return i
        return None

    def cutoffs(self, segment: int | None = None) -> tuple[GradeCutoffs, StageCutoffs]:
        """Grade and stage cut-offs in force for a segment (None: the policy's own)."""
        if segment is None:
            return self.grades, self.stages
        rule = self.segments[segment]
        return rule.grades or self.grades, rule.stages or self.stages

    def grade(self, fit_score: float, segment: int | None = None) -> Grade:
        """Grade A-D of a fit score."""
        grades = self.cutoffs(segment)[0]
        if fit_score >= grades.A:
            return "A"
        if fit_score >= grades.B:
            return "B"
        return "C" if fit_score >= grades.C else "D"

    def stage(self, readiness_probability: float, segment: int | None = None) -> Stage:
        """nurture, MQL or SQL for a readiness probability."""
        stages = self.cutoffs(segment)[1]
        if readiness_probability >= stages.SQL:
            return "SQL"
        return "MQL" if readiness_probability >= stages.MQL else "nurture"

    def route(self, grade: Grade, stage: Stage) -> tuple[Cell, float | None]:
        """Queue and priority of a grade and stage, and the queue's SLA in hours."""
        cell = self.matrix[grade][stage]
        return cell, self.sla_hours.get(cell.queue)

    def lifecycle_route(self, lifecycle_stage: str) -> tuple[Cell, float | None] | None:
        """Queue, priority and SLA of a lead at a lifecycle stage readiness does not apply to; None for open leads."""
        cell = self.lifecycle_routes.get(lifecycle_stage)  # type: ignore[call-overload]
        return None if cell is None else (cell, self.sla_hours.get(cell.queue))
