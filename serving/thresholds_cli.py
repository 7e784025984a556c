"""`leadscore thresholds`: show, simulate, solve, apply and roll back routing thresholds from the command line."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table

# The stores, the model and the replay are imported by the commands that use them: the command line starts at once.
if TYPE_CHECKING:
    from serving.policy import Capacities, RoutingPolicy
    from serving.store import PolicyVersion, ScoreRecord
    from serving.tuning import ScoreSample

log = logging.getLogger(__name__)
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Routing thresholds: what is in force, what a change would do, apply it, roll it back. Reads the service's "
    "store (LEADSCORE_STORE_URL) and the champion in the MLflow registry; the running service applies a saved "
    "version within a second.",
)
console = Console()
EXIT_INVALID = 2  # bad input: a policy file that does not validate, an unknown version
EXIT_UNAVAILABLE = 3  # nothing to work on: no model, no holdout scores, no recent scores

Data = Literal["auto", "holdout", "recent"]
StoreOption = Annotated[
    str | None, typer.Option(help="Service store URL; default: LEADSCORE_STORE_URL or its default.")
]
TrackingOption = Annotated[str | None, typer.Option(help="MLflow tracking/registry URI; default as for serve.")]
SalesReps = Annotated[int, typer.Option(min=0, help="Account executives working the sales queue.")]
SalesRate = Annotated[float, typer.Option(min=0.1, help="New leads one account executive can work per week.")]
SdrReps = Annotated[int, typer.Option(min=0, help="SDRs working the qualification queue.")]
SdrRate = Annotated[float, typer.Option(min=0.1, help="New leads one SDR can work per week.")]
Hours = Annotated[float, typer.Option(min=1, max=168, help="Working hours per week (SLAs count in them).")]
DataOption = Annotated[str, typer.Option(help="Scored leads to replay: auto, holdout or recent.")]
PolicyFile = Annotated[
    Path | None, typer.Option(exists=True, dir_okay=False, help="A policy (JSON or YAML); default: the one in force.")
]
CutoffOption = Annotated[
    str | None,
    typer.Option(help="Readiness cut-off in percent (1.7, 1.7% or 1.7 %), replacing the policy's own."),
]


def _fail(message: str, code: int) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def format_cutoff(probability: float) -> str:
    """A readiness cut-off as sales ops read it: '1.7 %' (two decimals below 1 %, three below 0.1 %)."""
    percent = 100 * probability
    decimals = 1 if percent >= 1 else 2 if percent >= 0.1 else 3
    return f"{percent:.{decimals}f} %"


def parse_cutoff(text: str, option: str) -> float:
    """A readiness cut-off typed in percent ('1.7', '1.7%' or '1.7 %') as the probability the policy holds."""
    number = text.strip().removesuffix("%").strip()
    try:
        percent = float(number)
    except ValueError:
        percent = float("nan")
    if not 0 < percent < 100:  # also refuses nan
        raise _fail(f"{option} must be a percentage between 0 and 100 (such as 1.7 or 1.7%), got {text!r}",
                    EXIT_INVALID)  # fmt: skip
    return percent / 100


class _Context:
    """The stores a command works on, opened from the options or the service's settings."""

    def __init__(self, store_url: str | None, tracking: str | None) -> None:
        from serving.preflight import StartupError, open_store
        from serving.settings import Settings, tracking_uri
        from serving.store import PolicyStore

        settings = Settings()
        self.settings = settings
        self.tracking_uri = tracking or tracking_uri(settings)
        try:  # a store this leadscore cannot use (newer, unreachable) is said in one line, not a traceback
            self.engine = open_store(store_url or settings.store_url)
        except StartupError as err:
            raise _fail(str(err), 1) from None
        self.policies = PolicyStore(self.engine)

    def in_force(self) -> PolicyVersion:
        from serving.model import ModelNotAvailableError, load_model
        from serving.policy import RoutingPolicy

        current = self.policies.latest()
        if current is not None:
            return current
        # Nothing saved yet: the champion's default, stored as version 1 as the service would on its first start.
        try:
            loaded = load_model(self.tracking_uri, self.settings.model_name, self.settings.model_alias)
        except ModelNotAvailableError as err:
            raise _fail(str(err), EXIT_UNAVAILABLE) from err
        return self.policies.ensure_default(RoutingPolicy.from_cutoffs(loaded.scorer.cutoffs))

    def sample(self, data: str) -> ScoreSample:
        from serving.model import ModelNotAvailableError, holdout_scores, registered_run
        from serving.score_log import read_since
        from serving.tuning import SampleError, choose_sample, holdout_sample

        if data not in ("auto", "holdout", "recent"):
            raise _fail(f"--data must be auto, holdout or recent, got {data!r}", EXIT_INVALID)

        def read_holdout() -> ScoreSample:
            version, run = registered_run(self.tracking_uri, self.settings.model_name, self.settings.model_alias)
            what = f"{self.settings.model_name} version {version}"
            return holdout_sample(holdout_scores(self.tracking_uri, run, what))

        def read_recent(since: dt.datetime, limit: int) -> list[ScoreRecord]:
            return read_since(self.engine, since, limit=limit)

        try:
            return choose_sample(data, read_recent, read_holdout)  # type: ignore[arg-type]
        except (SampleError, ModelNotAvailableError) as err:
            raise _fail(str(err), EXIT_UNAVAILABLE) from err

    def close(self) -> None:
        self.engine.dispose()


def _read_policy(path: Path) -> RoutingPolicy:
    import yaml
    from pydantic import ValidationError

    from serving.policy import RoutingPolicy

    text = path.read_text()
    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
        if isinstance(data, dict) and "policy" in data and "grades" not in data:
            data = data["policy"]  # a saved version or an API answer: take its policy
        return RoutingPolicy.model_validate(data)
    except (ValueError, yaml.YAMLError) as err:
        details = err.errors() if isinstance(err, ValidationError) else None
        if details:
            lines = [f"  {'.'.join(str(p) for p in d['loc']) or 'policy'}: {d['msg']}" for d in details]
            raise _fail(f"{path} is not a valid policy:\n" + "\n".join(lines), EXIT_INVALID) from err
        raise _fail(f"{path} is not a valid policy: {err}", EXIT_INVALID) from err


def _capacities(sales_reps: int, sales_rate: float, sdr_reps: int, sdr_rate: float, hours: float) -> Capacities:
    from serving.policy import Capacities, QueueCapacity

    return Capacities(
        queues={
            "sales": QueueCapacity(reps=sales_reps, leads_per_rep_per_week=sales_rate),
            "sdr": QueueCapacity(reps=sdr_reps, leads_per_rep_per_week=sdr_rate),
        },
        working_hours_per_week=hours,
    )


def _fmt(value: Any, digits: int = 1, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.{digits}f}%" if percent else f"{value:,.{digits}f}"


def _policy_table(policy: RoutingPolicy, title: str) -> Table:
    table = Table(title=title)
    for column in ("", "nurture", "MQL", "SQL"):
        table.add_column(column)
    for grade, row in policy.matrix.items():
        cells = [f"{row[s].queue} (p{row[s].priority})" for s in ("nurture", "MQL", "SQL")]
        table.add_row(grade, *cells)
    g, s = policy.grades, policy.stages
    table.caption = (
        f"grades: A >= {g.A:g}, B >= {g.B:g}, C >= {g.C:g} (fit score); stages: MQL >= {format_cutoff(s.MQL)}, "
        f"SQL >= {format_cutoff(s.SQL)} (readiness); SLA hours: "
        + ", ".join(f"{q} {h:g}" if h is not None else f"{q} none" for q, h in policy.sla_hours.items())
        + "\nby lifecycle stage (readiness does not apply): "
        + ", ".join(f"{stage} -> {c.queue} (p{c.priority})" for stage, c in policy.lifecycle_routes.items())
        + "".join(f"\nsegment {i}: {seg.match.label()}" for i, seg in enumerate(policy.segments))
    )
    return table


def _simulation_table(simulation: dict[str, Any]) -> Table:
    data = simulation["data"]
    table = Table(
        title=f"Replayed: {data['kind']} data, {data['leads']:,} leads, {data['weeks']:g} weeks "
        f"({data['start'][:10]} to {data['end'][:10]}); per week\n{data['reason']} (--data chooses)"
    )
    for column in ("queue", "leads/week", "capacity", "load", "expected SQLs", "observed SQLs", "expected wins",
                   "precision", "recall", "past SLA/week"):  # fmt: skip
        table.add_column(column, justify="left" if column == "queue" else "right")
    for q in simulation["queues"]:
        table.add_row(
            q["queue"], _fmt(q["weekly_leads"]), _fmt(q["capacity"], 0), _fmt(q["load"], 0, percent=True),
            _fmt(q["expected_sqls"], 2), _fmt(q["observed_sqls"], 2), _fmt(q["expected_wins"], 2),
            _fmt(q["precision"], 1, percent=True), _fmt(q["recall"], 1, percent=True), _fmt(q["past_sla_weekly"]),
        )  # fmt: skip
    t = simulation["totals"]
    table.caption = (
        f"worked (sales + SDR): {_fmt(t['weekly_leads_worked'])} leads/week, {_fmt(t['expected_sqls'], 2)} expected "
        f"SQLs, precision {_fmt(t['precision'], 1, True)}, recall {_fmt(t['recall'], 1, True)}. Each lead counts once; "
        "a queue's recall counts the SQLs it was first to work (definitions: serving/tuning.py)"
    )
    return table


@app.command()
def show(
    history: Annotated[bool, typer.Option(help="List every version instead.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (for files to edit and apply).")] = False,
    store_url: StoreOption = None,
    tracking: TrackingOption = None,
) -> None:
    """The thresholds in force (or their history)."""
    context = _Context(store_url, tracking)
    try:
        current = context.in_force()
        if history:
            versions = context.policies.history()
            if as_json:
                typer.echo(json.dumps([_version_dict(v) for v in versions], indent=2))
                return
            table = Table(title="Thresholds history (newest first)")
            for column in ("version", "saved", "by", "why", "MQL", "SQL", "grades A/B/C", "segments"):
                table.add_column(column)
            for v in versions:
                p = v.policy
                table.add_row(
                    str(v.version), v.created_at.strftime("%Y-%m-%d %H:%M"), v.author, v.reason,
                    format_cutoff(p.stages.MQL), format_cutoff(p.stages.SQL),
                    f"{p.grades.A:g}/{p.grades.B:g}/{p.grades.C:g}",
                    str(len(p.segments)),
                )  # fmt: skip
            console.print(table)
            return
        if as_json:
            typer.echo(json.dumps(_version_dict(current), indent=2))
            return
        console.print(_policy_table(current.policy, f"Thresholds version {current.version} (in force)"))
        console.print(f"saved {current.created_at:%Y-%m-%d %H:%M} by {current.author}: {current.reason}")
    finally:
        context.close()


def _version_dict(version: PolicyVersion) -> dict[str, Any]:
    return {
        "version": version.version,
        "created_at": version.created_at.isoformat(),
        "author": version.author,
        "reason": version.reason,
        "policy": version.policy.model_dump(mode="json"),
    }


@app.command(name="simulate")
def simulate_command(
    policy_file: PolicyFile = None,
    mql: CutoffOption = None,
    sql: CutoffOption = None,
    sales_reps: SalesReps = 4,
    sales_leads_per_rep: SalesRate = 25.0,
    sdr_reps: SdrReps = 6,
    sdr_leads_per_rep: SdrRate = 60.0,
    hours: Hours = 40.0,
    data: DataOption = "auto",
    store_url: StoreOption = None,
    tracking: TrackingOption = None,
) -> None:
    """What a policy would do per queue: weekly volume, load, SQLs and wins, precision, recall, SLA misses."""
    from pydantic import ValidationError

    from serving.policy import RoutingPolicy
    from serving.tuning import simulate

    stages = {"MQL": parse_cutoff(mql, "--mql") if mql else None, "SQL": parse_cutoff(sql, "--sql") if sql else None}
    context = _Context(store_url, tracking)
    try:
        policy = _read_policy(policy_file) if policy_file else context.in_force().policy
        if any(v is not None for v in stages.values()):
            changed = policy.stages.model_dump() | {k: v for k, v in stages.items() if v is not None}
            try:
                policy = RoutingPolicy.model_validate(policy.model_dump() | {"stages": changed})
            except ValidationError as err:
                lines = [d["msg"].removeprefix("Value error, ") for d in err.errors()]
                raise _fail(f"--mql/--sql: {'; '.join(lines)}", EXIT_INVALID) from err
            console.print(f"cut-offs replayed: MQL >= {format_cutoff(policy.stages.MQL)}, "
                          f"SQL >= {format_cutoff(policy.stages.SQL)}")  # fmt: skip
        caps = _capacities(sales_reps, sales_leads_per_rep, sdr_reps, sdr_leads_per_rep, hours)
        console.print(_simulation_table(simulate(context.sample(data), policy, caps, curves=False)))
    finally:
        context.close()


@app.command(name="solve")
def solve_command(
    policy_file: PolicyFile = None,
    sales_reps: SalesReps = 4,
    sales_leads_per_rep: SalesRate = 25.0,
    sdr_reps: SdrReps = 6,
    sdr_leads_per_rep: SdrRate = 60.0,
    hours: Hours = 40.0,
    data: DataOption = "auto",
    out: Annotated[Path | None, typer.Option(dir_okay=False, help="Write the proposed policy here (JSON).")] = None,
    store_url: StoreOption = None,
    tracking: TrackingOption = None,
) -> None:
    """Propose MQL/SQL cut-offs that capture the most expected SQLs within the teams' capacities (not applied)."""
    from serving.tuning import simulate, solve

    context = _Context(store_url, tracking)
    try:
        policy = _read_policy(policy_file) if policy_file else context.in_force().policy
        caps = _capacities(sales_reps, sales_leads_per_rep, sdr_reps, sdr_leads_per_rep, hours)
        sample = context.sample(data)
        proposal = solve(sample, policy, caps)
        colour = "green" if proposal.feasible else "yellow"
        console.print(f"[{colour}]{proposal.note}[/{colour}]")
        s = proposal.policy.stages
        console.print(f"proposed: MQL >= {format_cutoff(s.MQL)}, SQL >= {format_cutoff(s.SQL)} (readiness)")
        console.print(_simulation_table(simulate(sample, proposal.policy, caps, curves=False)))
        if out is not None:
            out.write_text(proposal.policy.model_dump_json(indent=2))
            console.print(f"wrote {out}; apply it with: leadscore thresholds apply {out} --reason '...'")
    finally:
        context.close()


@app.command()
def apply(
    policy_file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The policy (JSON or YAML).")],
    reason: Annotated[str, typer.Option(help="Why the thresholds change (kept in the history).")],
    author: Annotated[str, typer.Option(help="Who changes them.")] = "cli",
    store_url: StoreOption = None,
    tracking: TrackingOption = None,
) -> None:
    """Save a policy as the new version in force (the service routes with it within a second)."""
    if not reason.strip():
        raise _fail("--reason must say why the thresholds change", EXIT_INVALID)
    policy = _read_policy(policy_file)
    context = _Context(store_url, tracking)
    try:
        context.in_force()  # the default is version 1, so history starts with what was in force before
        stored = context.policies.save(policy, author=author, reason=reason.strip())
        console.print(f"thresholds version {stored.version} in force: {stored.reason}")
    finally:
        context.close()


@app.command()
def rollback(
    version: Annotated[int, typer.Argument(min=1, help="The version whose policy comes back.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the history).")],
    author: Annotated[str, typer.Option(help="Who rolls back.")] = "cli",
    store_url: StoreOption = None,
    tracking: TrackingOption = None,
) -> None:
    """Bring back an earlier version's policy as a new version (history is never rewritten)."""
    if not reason.strip():
        raise _fail("--reason must say why", EXIT_INVALID)
    context = _Context(store_url, tracking)
    try:
        stored = context.policies.rollback(version, author=author, reason=reason.strip())
        if stored is None:
            raise _fail(f"there is no thresholds version {version}", EXIT_INVALID)
        console.print(f"thresholds version {stored.version} in force (the policy of version {version})")
    finally:
        context.close()
