"""The routing policy: grade and stage cut-offs, the grade x stage -> queue matrix and SLA hours per queue."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from features.scoring import GRADES, READINESS_STAGES, CutOffs

Queue = Literal["sales", "sdr", "nurture", "disqualify"]
QUEUES: tuple[str, ...] = ("sales", "sdr", "nurture", "disqualify")
Grade = Literal["A", "B", "C", "D"]
Stage = Literal["nurture", "MQL", "SQL"]


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
    # Speed-to-lead: a hot lead must hear from sales within hours; nurture and disqualify have no call to make.
    return {"sales": 4.0, "sdr": 24.0, "nurture": None, "disqualify": None}


class RoutingPolicy(BaseModel):
    """Thresholds sales ops own: how scores become a grade, a stage and a queue with a priority and an SLA."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    grades: GradeCutoffs
    stages: StageCutoffs
    matrix: dict[Grade, dict[Stage, Cell]] = Field(default_factory=_default_matrix)
    sla_hours: dict[Queue, float | None] = Field(default_factory=_default_sla)

    @model_validator(mode="after")
    def _complete(self) -> Self:
        missing = [f"{g} x {s}" for g in GRADES for s in READINESS_STAGES if s not in self.matrix.get(g, {})]  # type: ignore[call-overload]
        if missing:
            raise ValueError(f"the grade x stage matrix has no queue for {', '.join(missing)}")
        used = {cell.queue for row in self.matrix.values() for cell in row.values()}
        no_sla = sorted(q for q in used if q not in self.sla_hours)
        if no_sla:
            raise ValueError(f"sla_hours names no value (hours or null) for queue(s) {', '.join(no_sla)}")
        bad = [f"{q}={h}" for q, h in self.sla_hours.items() if h is not None and not h > 0]
        if bad:
            raise ValueError(f"SLA hours must be positive (or null for no SLA), got {', '.join(bad)}")
        return self

    @classmethod
    def from_cutoffs(cls, cutoffs: CutOffs) -> RoutingPolicy:
        """The default policy a model ships with: its own grade and stage cut-offs and the standard matrix."""
        a, b, c = cutoffs.fit_grades
        return cls(
            grades=GradeCutoffs(A=a, B=b, C=c),
            stages=StageCutoffs(MQL=cutoffs.readiness_mql, SQL=cutoffs.readiness_sql),
        )

    def grade(self, fit_score: float) -> Grade:
        """Grade A-D of a fit score."""
        if fit_score >= self.grades.A:
            return "A"
        if fit_score >= self.grades.B:
            return "B"
        return "C" if fit_score >= self.grades.C else "D"

    def stage(self, readiness_probability: float) -> Stage:
        """nurture, MQL or SQL for a readiness probability."""
        if readiness_probability >= self.stages.SQL:
            return "SQL"
        return "MQL" if readiness_probability >= self.stages.MQL else "nurture"

    def route(self, grade: Grade, stage: Stage) -> tuple[Cell, float | None]:
        """Queue and priority of a grade and stage, and the queue's SLA in hours."""
        cell = self.matrix[grade][stage]
        return cell, self.sla_hours.get(cell.queue)
