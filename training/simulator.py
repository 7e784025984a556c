"""Seeded B2B funnel simulator: accounts, buying groups, touches, lifecycle stages and an exact readiness oracle."""

# GENERATIVE STORY
# ================
# One vectorised, day-stepping Markov process. Its latent state is small and explicit (per lead: stage, intent level,
# unsubscribe flag; per account: intent level), so the readiness oracle is computed exactly, not estimated.
#
# Accounts. Companies are drawn around an ideal customer profile: a share `icp_account_share` comes from the ICP
# (software, financial and professional services, telecoms; ~200-5,000 employees; North America and EMEA), the rest
# from the broad market, including a few industries outside the vocabulary. An account's fit score adds industry, size
# and region terms to Gaussian noise the CRM never sees (tech stack, budget, politics), so no model can read fit off
# the attributes perfectly. Each account holds a buying group of 1-8 people (mean ~3.8: of the ~5.4 people in a B2B
# purchase, not all leave their details).
#
# People. A lead's icp_fit (truth) = sigmoid(offset + account score + person score); the person score comes from
# seniority and department (directors and VPs in engineering/IT fit best, students worst) plus noise. Free-mail
# addresses are more likely for poor person fit. The acquisition source depends on fit (outbound and referrals reach
# better-fit people, content syndication worse ones) and sets the intent a lead arrives with.
#
# Time. The first lead of an account is created on its "anchor" day, drawn from a seasonal calendar (fewer leads on
# weekends, in August and in December); colleagues follow after exponential delays (mean `colleague_delay_days`), so a
# buying group shows up over weeks. On its anchor day an account starts a buying process with probability
# `anchor_burst_probability` (it is why its people appear): a jump in account intent.
#
# Intent (latent) is shot noise on a few levels: it jumps up at random times and decays one level at a time.
#   account: levels `account_intent_levels`; jumps at rate `account_burst_rate` (to a level drawn from
#            `account_burst_to`), decays with mean sojourn `account_intent_half_life_days` per level. With the defaults
#            2.9 % of the market is "in market" (level >= `in_market_level`) on a given day (the chain's stationary
#            share); accounts in the CRM are in market about twice as often, since buying is why they show up.
#   person:  levels `person_intent_levels`; jumps at rate personal_burst_rate + personal_burst_account_rate * account
#            intent (the account's project pulls its people in: this correlates a buying group), decays faster.
#   A lead's driving intent is I = account_intent_weight * account level value + person level value.
# Levels rather than a continuum keep the joint (stage, account level, person level) chain finite, which is what makes
# the oracle exact (below).
#
# Touches. Each day a lead makes Poisson(rate) touches, rate = propensity * calendar * stage factor *
# (base + slope * I): a personal propensity (some people open every e-mail) makes activity a noisy proxy of intent. The
# kind of touch is drawn from a softmax whose logits rise with intent much faster for BOFU types (pricing page, demo
# request, free trial, meeting booked) than for e-mail opens; reps book meetings with accepted leads and
# opportunities, lost leads get nurture e-mails. An unsubscribe stops e-mail touches and damps all later activity.
# Lead creation is itself a touch at created_at (form, download, registration, a demo request when the lead arrives
# hot). Touches are symptoms: they never feed back into the lifecycle, which only marketing automation and reps see.
#
# Lifecycle. At most one stage change per lead per day, never on the day its stage began; competing daily hazards
# that depend on fit and on latent intent (never on the future):
#   lead      -> MQL (marketing automation: fit and intent, every day), -> SQL (fast track: urgent, well-fitting
#                buyers get a rep at once), -> lost (junk clean-up of poor fit);
#   MQL       -> SAL (sales accepts; fit), -> SQL (fast track), -> lost (rejected; poor fit, or unresponsive);
#   SAL       -> SQL (the rep confirms need and timing: fit AND intent), -> lost (disqualified or unresponsive);
#   SQL       -> won / lost (the opportunity closes; win probability from fit and intent);
#   lost      -> recycled, for a fit-dependent share of losses, after a two-phase rest (weeks, memoryless phases);
#   recycled  -> requalified (re-engaged: fit and intent);
#   requalif. -> won / closed again (no column is left to stamp a second loss).
# Sales hazards follow a sales calendar (almost nothing on weekends, slower in August and late December).
#
# Recording (outside the kernel, own random stream): business-hour times of day, properties JSON, dirty CRM strings
# (case and spacing variants, typos, unseen categories, missing values) and the timestamps of stage changes.
#
# Oracle. On each grid date as_of = start + k * snapshot_every_days (k >= 1, as_of + H <= end) every readiness-eligible
# lead (stage lead, MQL, SAL or recycled; created before as_of) is a candidate; a uniform sample is kept (per chunk, a
# reservoir on uniform keys with a quota proportional to the chunk's leads). For each kept snapshot the distribution of
# (stage, account level, person level) is propagated forward H days with the kernel's own transition matrix and
# hazards (`_propagate`): the mass flowing into SQL or requalified is P(label = 1 | latent state at as_of), exact up
# to floating point, with no Monte-Carlo error. The same propagation gives truth.p_won (won within `won_horizon_days`
# of creation) for a uniform sample of leads.

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from features.spec import ACTIVITIES, ACTIVITY_TYPES, LEADS, LIFECYCLE_CHAIN
from training.config import SimulationConfig

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
SmallIntArray = npt.NDArray[np.int8]
ObjArray = npt.NDArray[np.object_]
Day = int | IntArray

MS_PER_DAY = 86_400_000
NS_PER_MS = 1_000_000
MISSING_MS = -1  # "no timestamp" in millisecond-offset arrays (real offsets are >= 0)

# Stage codes. A code doubles as the destination of a transition. A lost lead sits in one of three latent sub-stages
# that all mean "lost": LOST (never recycled), or LOST_WAIT then LOST_READY (resting, then queued for recycling: two
# memoryless phases make recycling take weeks while keeping the chain Markov). DEAD = closed again after
# requalification. NOT_READY marks rows that may not move today (their stage began today).
LEAD, MQL, SAL, SQL, LOST, LOST_WAIT, LOST_READY, RECYCLED, REQUALIFIED, WON, DEAD, NOT_READY = range(12)
N_STAGE_CODES = 12
# Timestamp column stamped when a lead enters a stage.
STAGE_COLUMN: dict[int, str] = {
    MQL: "mql_at",
    SAL: "sal_at",
    SQL: "sql_at",
    LOST: "lost_at",
    LOST_WAIT: "lost_at",
    RECYCLED: "recycled_at",
    REQUALIFIED: "requalified_at",
    WON: "won_at",
}
MOVING_STAGES = (LEAD, MQL, SAL, SQL, LOST_WAIT, LOST_READY, RECYCLED, REQUALIFIED)
READINESS_ELIGIBLE_STAGES = (LEAD, MQL, SAL, RECYCLED)
READINESS_HIT_STAGES = (SQL, REQUALIFIED)
# Stages a readiness-eligible lead can pass through before SQL or requalification (LOST is absorbing: not tracked).
PRE_READY_STAGES = (LEAD, MQL, SAL, LOST_WAIT, LOST_READY, RECYCLED)
WON_HIT_STAGES = (WON,)
PRE_WON_STAGES = (LEAD, MQL, SAL, SQL, LOST_WAIT, LOST_READY, RECYCLED, REQUALIFIED)
# Latest lifecycle column before as_of that keeps a lead readiness-eligible (None = no lifecycle stamp yet).
READINESS_ELIGIBLE_LATEST = (None, "mql_at", "sal_at", "recycled_at")

TYPE_INDEX = {name: i for i, name in enumerate(ACTIVITY_TYPES)}
N_TYPES = len(ACTIVITY_TYPES)
EMAIL_TYPES = ("email_open", "email_click", "unsubscribe")
UNSUBSCRIBE = TYPE_INDEX["unsubscribe"]
NO_TOUCH = -1

# Per touch type: (base logit, intent slope). BOFU slopes are 3-6x the others, so their share climbs steeply with
# intent; e-mail opens come from nurture sends whatever the intent.
TOUCH_PROFILE: dict[str, tuple[float, float]] = {
    "page_view": (0.0, 0.3),
    "pricing_page_view": (-3.2, 1.2),
    "email_open": (0.2, -0.2),
    "email_click": (-1.4, 0.2),
    "form_submit": (-3.4, 0.5),
    "content_download": (-2.4, 0.4),
    "webinar_registered": (-3.0, 0.3),
    "webinar_attended": (-3.6, 0.4),
    "demo_request": (-6.8, 1.6),
    "free_trial_signup": (-6.5, 1.4),
    "meeting_booked": (-7.0, 1.4),
    "unsubscribe": (-4.2, -1.0),
}
# Activity-rate factor by stage: accepted leads and opportunities are worked (calls, meetings, evaluations); lost
# leads only get nurture; customers drift off.
STAGE_ACTIVITY_FACTOR = {
    LEAD: 1.0,
    MQL: 1.1,
    SAL: 1.3,
    SQL: 1.6,
    LOST: 0.6,
    LOST_WAIT: 0.6,
    LOST_READY: 0.6,
    RECYCLED: 0.8,
    REQUALIFIED: 1.6,
    WON: 0.3,
    DEAD: 0.3,
}
MEETING_LOGIT_BOOST_IN_SALES = 2.5  # reps book meetings with the leads they work
EMAIL_LOGIT_BOOST_IN_NURTURE = 0.3  # lost and recycled leads are on e-mail nurture tracks

# Calendar factors (why: B2B buyers and reps work weekdays; August and the year-end holidays are quiet).
WEEKEND_ACTIVITY_FACTOR = 0.35
WEEKEND_SALES_FACTOR = 0.05
WEEKEND_CREATION_FACTOR = 0.3
QUIET_MONTH_FACTOR = {8: 0.75, 12: 0.7}
HOLIDAY_FACTOR = 0.5  # 24 Dec - 1 Jan on top of the December factor
WEEKDAYS_PER_WEEK = 5
TOD_MEAN_MS = int(14.5 * 3_600_000)  # business hours overlapping North America and EMEA, in UTC
TOD_SD_MS = int(3.5 * 3_600_000)
FAR_FUTURE_DAYS = 10  # calendar margin past the longest propagation horizon

# --- population vocabularies (canonical latent values; the recorded strings are dirtied later) -------------------
INDUSTRY_VALUES = (
    "software", "financial services", "healthcare", "manufacturing", "retail", "education", "government", "media",
    "logistics", "energy", "professional services", "telecommunications",
    # outside the contract vocabulary: rare and unseen industries
    "agriculture", "hospitality", "non-profit", "real estate",
)  # fmt: skip
# (market share, ICP share, fit contribution)
INDUSTRY_PROFILE = {
    "software": (0.12, 0.45, 1.2),
    "financial services": (0.09, 0.25, 0.9),
    "healthcare": (0.10, 0.0, 0.3),
    "manufacturing": (0.12, 0.0, 0.0),
    "retail": (0.10, 0.0, -0.2),
    "education": (0.08, 0.0, -0.8),
    "government": (0.04, 0.0, -0.9),
    "media": (0.05, 0.0, 0.1),
    "logistics": (0.06, 0.0, -0.1),
    "energy": (0.05, 0.0, -0.2),
    "professional services": (0.10, 0.15, 0.6),
    "telecommunications": (0.04, 0.15, 0.6),
    "agriculture": (0.02, 0.0, -0.7),
    "hospitality": (0.015, 0.0, -0.7),
    "non-profit": (0.01, 0.0, -0.9),
    "real estate": (0.005, 0.0, -0.5),
}
REGION_VALUES = ("north america", "emea", "apac", "latam")
REGION_PROFILE = {  # (market share, ICP share, fit contribution)
    "north america": (0.45, 0.6, 0.4),
    "emea": (0.30, 0.35, 0.3),
    "apac": (0.18, 0.05, -0.2),
    "latam": (0.07, 0.0, -0.5),
}
COUNTRIES = {  # per region: (country code, share)
    "north america": (("US", 0.85), ("CA", 0.15)),
    "emea": (("GB", 0.3), ("DE", 0.25), ("FR", 0.15), ("NL", 0.1), ("SE", 0.08), ("ES", 0.07), ("ZA", 0.05)),
    "apac": (("AU", 0.35), ("IN", 0.3), ("SG", 0.2), ("JP", 0.15)),
    "latam": (("BR", 0.5), ("MX", 0.3), ("AR", 0.1), ("CO", 0.1)),
}
# Common non-ISO spellings a CRM collects.
COUNTRY_ALIASES = {"US": "USA", "GB": "UK"}
# log10(employees): ICP accounts cluster around ~800 people, the market skews small.
ICP_LOG_EMPLOYEES = (2.9, 0.5)
MARKET_LOG_EMPLOYEES = (2.0, 0.8)
MAX_LOG_EMPLOYEES = 5.5
SIZE_FIT_CENTRE, SIZE_FIT_WIDTH, SIZE_FIT_WEIGHT = 2.9, 0.7, 0.6
SMALL_COMPANY_EMPLOYEES = 50.0  # below this, enrichment services often know nothing about a company
# Revenue per employee ~ USD 180k (lognormal): revenue follows size with noise.
LOG_REVENUE_PER_EMPLOYEE = (math.log(180_000.0), 0.5)

SENIORITY_VALUES = ("c-level", "vp", "director", "manager", "individual contributor", "student")
SENIORITY_PROFILE = {  # (share, fit contribution, free-mail logit shift)
    "c-level": (0.05, 0.4, 0.0),
    "vp": (0.08, 0.8, 0.0),
    "director": (0.17, 0.9, 0.0),
    "manager": (0.28, 0.4, 0.0),
    "individual contributor": (0.37, -0.3, 0.3),
    "student": (0.05, -2.0, 2.5),
}
DEPARTMENT_VALUES = (
    "engineering", "it", "marketing", "sales", "finance", "operations", "hr", "executive", "other",
    "legal", "procurement",  # unseen departments
)  # fmt: skip
DEPARTMENT_PROFILE = {  # (share, fit contribution, display name used in titles)
    "engineering": (0.22, 0.7, "Engineering"),
    "it": (0.18, 0.7, "IT"),
    "marketing": (0.14, -0.2, "Marketing"),
    "sales": (0.09, -0.3, "Sales"),
    "finance": (0.06, -0.1, "Finance"),
    "operations": (0.08, 0.1, "Operations"),
    "hr": (0.04, -0.6, "HR"),
    "executive": (0.05, 0.4, "Strategy"),
    "other": (0.11, -0.6, "Business Development"),
    "legal": (0.015, -0.5, "Legal"),
    "procurement": (0.015, 0.0, "Procurement"),
}
C_LEVEL_EXECUTIVE_SHARE = 0.6  # most C-level people sit in the executive department
C_LEVEL_TITLES = {
    "engineering": "CTO", "it": "CIO", "marketing": "CMO", "sales": "CRO", "finance": "CFO", "operations": "COO",
    "hr": "CHRO", "executive": "CEO", "other": "Founder", "legal": "General Counsel", "procurement": "CPO",
}  # fmt: skip
IC_TITLES = {
    "engineering": ("Software Engineer", "Senior Software Engineer", "Developer"),
    "it": ("Systems Administrator", "IT Specialist", "DevOps Engineer"),
    "marketing": ("Marketing Specialist", "Content Marketer", "Marketing Coordinator"),
    "sales": ("Account Executive", "SDR", "Sales Representative"),
    "finance": ("Financial Analyst", "Accountant", "Controller"),
    "operations": ("Operations Analyst", "Business Analyst", "Project Coordinator"),
    "hr": ("Recruiter", "HR Generalist", "Talent Partner"),
    "executive": ("Chief of Staff", "Executive Assistant", "Strategy Analyst"),
    "other": ("Consultant", "Analyst", "Specialist"),
    "legal": ("Paralegal", "Legal Counsel", "Contracts Specialist"),
    "procurement": ("Buyer", "Procurement Specialist", "Sourcing Analyst"),
}
TITLE_VARIANTS = 3
FREE_MAIL_OFFSET = -2.4  # ~10 % of business people use a free address, far more students
FREE_MAIL_FIT_SLOPE = 0.5  # poor person fit (no authority, no pain) goes with a personal address
FREE_MAIL_DOMAINS = (
    ("gmail.com", 0.6),
    ("yahoo.com", 0.15),
    ("outlook.com", 0.12),
    ("hotmail.com", 0.08),
    ("icloud.com", 0.05),
)
DOMAIN_HEADS = (
    "nor",
    "vel",
    "acu",
    "bright",
    "blue",
    "cor",
    "data",
    "ever",
    "flux",
    "gran",
    "hyper",
    "io",
    "kin",
    "lum",
    "meta",
    "nova",
    "omni",
    "pax",
    "quant",
    "red",
    "sky",
    "terra",
    "uni",
    "vista",
    "zen",
)
DOMAIN_TAILS = (
    "tech",
    "soft",
    "labs",
    "works",
    "line",
    "ware",
    "logic",
    "point",
    "scale",
    "path",
    "core",
    "grid",
    "hub",
    "sys",
    "stack",
    "forge",
    "wave",
    "net",
    "base",
    "bridge",
)
DOMAIN_TLDS = ((".com", 0.75), (".io", 0.1), (".net", 0.08), (".co", 0.07))

SOURCE_VALUES = (
    "organic search", "paid search", "paid social", "referral", "event", "partner", "outbound",
    "content syndication", "direct",
    "podcast", "review site",  # unseen sources
)  # fmt: skip
# (share, fit slope of the source logit, mean creation intent, channel)
SOURCE_PROFILE = {
    "organic search": (0.21, 0.0, 0.5, "inbound"),
    "paid search": (0.13, 0.0, 0.55, "inbound"),
    "paid social": (0.10, -0.5, 0.25, "inbound"),
    "referral": (0.06, 1.0, 0.8, "inbound"),
    "event": (0.08, 0.5, 0.4, "inbound"),
    "partner": (0.06, 0.8, 0.5, "partner"),
    "outbound": (0.14, 2.0, 0.15, "outbound"),
    "content syndication": (0.12, -1.0, 0.2, "inbound"),
    "direct": (0.08, 0.0, 0.7, "inbound"),
    "podcast": (0.01, 0.0, 0.4, "inbound"),
    "review site": (0.01, 0.5, 0.7, "inbound"),
}
CHANNEL_NOISE = 0.03  # share of leads whose channel was entered inconsistently with the source
CHANNEL_VALUES = ("inbound", "outbound", "partner")
# Touch recorded at creation, by source: (touch type or None, share). Inbound hand-raisers are added on top.
CREATION_TOUCH = {
    "organic search": (("form_submit", 0.5), ("content_download", 0.5)),
    "paid search": (("form_submit", 0.6), ("content_download", 0.4)),
    "paid social": (("content_download", 0.7), ("form_submit", 0.3)),
    "referral": (("form_submit", 1.0),),
    "event": (("webinar_registered", 0.4), ("form_submit", 0.6)),
    "partner": (("form_submit", 0.8), (None, 0.2)),
    "outbound": (("meeting_booked", 0.15), (None, 0.85)),
    "content syndication": (("content_download", 1.0),),
    "direct": (("form_submit", 0.7), ("free_trial_signup", 0.3)),
    "podcast": (("form_submit", 1.0),),
    "review site": (("form_submit", 0.6), ("free_trial_signup", 0.4)),
}
# Inbound leads that arrive hot ask for a demo: P = sigmoid(offset + slope * creation intent).
CREATION_DEMO_OFFSET, CREATION_DEMO_SLOPE = -4.0, 2.0

# Dirty strings: share of (clean, Title Case, UPPER, " leading", "trailing ", typo) among recorded values.
VARIANT_SHARES = (0.88, 0.05, 0.025, 0.015, 0.015, 0.015)
TYPOS = {
    "software": "Sofware", "financial services": "financial svcs", "healthcare": "helthcare",
    "manufacturing": "manufactoring", "retail": "retial", "education": "eduction", "government": "goverment",
    "media": "meida", "logistics": "logisitics", "energy": "enrgy", "professional services": "prof. services",
    "telecommunications": "telecom", "north america": "N. America", "emea": "E.M.E.A.", "apac": "asia pacific",
    "latam": "latin america", "c-level": "c level", "vp": "v.p.", "director": "dir.", "manager": "mgr",
    "individual contributor": "ic", "student": "studnet", "engineering": "enginering", "it": "I.T.",
    "marketing": "mktg", "sales": "sale", "finance": "fin", "operations": "ops", "hr": "human resources",
    "executive": "exec", "other": "othr", "organic search": "organic_search", "paid search": "ppc",
    "paid social": "paid_social", "referral": "referal", "event": "events", "partner": "partners",
    "outbound": "outbound prospecting", "content syndication": "syndication", "direct": "direct traffic",
}  # fmt: skip

# Properties JSON: per touch type, (key, values, one set per calendar month?).
PAGES = (
    "/",
    "/product",
    "/blog/lead-scoring-101",
    "/blog/buying-groups",
    "/customers",
    "/integrations",
    "/careers",
    "/docs",
)
PROPERTY_CATALOGUE: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "page_view": ("page", PAGES, False),
    "pricing_page_view": ("page", ("/pricing", "/pricing#enterprise"), False),
    "email_open": ("campaign", ("nurture-{m}", "newsletter-{m}", "product-update-{m}"), True),
    "email_click": ("campaign", ("nurture-{m}", "newsletter-{m}", "product-update-{m}"), True),
    "form_submit": ("form", ("contact-us", "newsletter-signup", "event-signup"), False),
    "content_download": (
        "asset",
        ("ebook-buyers-guide", "whitepaper-roi", "case-study-fintech", "report-benchmark"),
        False,
    ),
    "webinar_registered": ("webinar", ("webinar-{m}",), True),
    "webinar_attended": ("webinar", ("webinar-{m}",), True),
    "demo_request": ("form", ("demo",), False),
    "free_trial_signup": ("plan", ("trial-14d",), False),
    "meeting_booked": ("meeting", ("discovery-call", "follow-up"), False),
}
PROPERTIES_MISSING_RATE = 0.1  # trackers drop details now and then


@dataclass(frozen=True, slots=True)
class SimulatedFunnel:
    """The two contract tables plus ground truth: latent fit, P(won) and the readiness oracle."""

    leads: pd.DataFrame
    activities: pd.DataFrame
    truth: pd.DataFrame
    oracle: pd.DataFrame


@dataclass(frozen=True, slots=True)
class SimulationSummary:
    """What `write_simulation` wrote."""

    out_dir: Path
    n_parts: int
    n_leads: int
    n_activities: int
    n_truth: int
    n_oracle: int


@dataclass(frozen=True, slots=True)
class ConversionRates:
    """Stage conversion over leads old enough for their outcome to be observed."""

    lead_to_mql: float
    mql_to_sql: float
    sql_to_won: float
    n_leads: int
    n_mql: int
    n_sql: int


# ----------------------------------------------------------------------------------------------------------------
# Model: calendar, intent chain and lookup tables derived once from the config
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Calendar:
    activity: FloatArray
    sales: FloatArray
    creation: FloatArray
    month: IntArray  # index into month_labels, per day
    month_labels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Model:
    config: SimulationConfig
    calendar: _Calendar
    account_cdf: FloatArray  # (A, A) cumulative one-day transition probabilities of the account level
    person_cdf: FloatArray  # (A, P, P) the same for the person level, given the account's (new) level
    intent_step: FloatArray  # (A*P, A*P) joint one-day transition of (account level, person level)
    intent: FloatArray  # (A, P) driving intent I of each level pair
    n_person_levels: int
    stage_activity: FloatArray  # by stage code
    type_logit: FloatArray  # (N_TYPES,)
    type_slope: FloatArray
    type_offset: FloatArray  # (N_STAGE_CODES, 2 [unsubscribed], N_TYPES)
    property_table: ObjArray  # JSON strings; last entry None
    property_offset: IntArray  # per type, index of its first entry (or -1: no properties)
    property_count: IntArray
    property_monthly: BoolArray


def _build_calendar(config: SimulationConfig) -> _Calendar:
    n = config.days + max(config.horizon_days, config.won_horizon_days) + FAR_FUTURE_DAYS
    dates = pd.date_range(config.start_ts, periods=n, freq="D")
    weekend = np.asarray(dates.day_of_week >= WEEKDAYS_PER_WEEK)
    month = np.asarray(dates.month)
    day = np.asarray(dates.day)
    quiet = np.ones(n)
    for m, factor in QUIET_MONTH_FACTOR.items():
        quiet[month == m] = factor
    holidays = ((month == 12) & (day >= 24)) | ((month == 1) & (day == 1))
    quiet[holidays] *= HOLIDAY_FACTOR
    month_labels, month_index = np.unique(np.asarray(dates.strftime("%Y-%m")), return_inverse=True)
    return _Calendar(
        activity=np.where(weekend, WEEKEND_ACTIVITY_FACTOR, 1.0) * quiet,
        sales=np.where(weekend, WEEKEND_SALES_FACTOR, 1.0) * quiet,
        creation=np.where(weekend, WEEKEND_CREATION_FACTOR, 1.0) * quiet,
        month=month_index.astype(np.int64),
        month_labels=tuple(str(x) for x in month_labels),
    )


def _shot_noise_step(burst_rate: float, jump_to: Sequence[float], sojourn_days: float) -> FloatArray:
    """One-day transition matrix of a level-valued shot noise: jump up to max(level, J) or decay one level."""
    k = len(jump_to)
    step = np.zeros((k, k))
    for level in range(k):
        for target, p in enumerate(jump_to):
            step[level, max(level, target)] += burst_rate * p
        down = 1.0 / sojourn_days if level else 0.0
        step[level, level - 1 if level else 0] += (1.0 - burst_rate) * down
        step[level, level] += (1.0 - burst_rate) * (1.0 - down)
    return step


def _cdf(step: FloatArray) -> FloatArray:
    cdf = np.cumsum(step, axis=-1)
    cdf[..., -1] = 1.0  # guard against rounding: every uniform draw lands on a level
    return cdf


def _build_properties(month_labels: Sequence[str]) -> tuple[ObjArray, IntArray, IntArray, BoolArray]:
    entries: list[str | None] = []
    offset = np.full(N_TYPES, -1, dtype=np.int64)
    count = np.zeros(N_TYPES, dtype=np.int64)
    monthly = np.zeros(N_TYPES, dtype=np.bool_)
    for name, (key, values, per_month) in PROPERTY_CATALOGUE.items():
        k = TYPE_INDEX[name]
        offset[k] = len(entries)
        count[k] = len(values)
        monthly[k] = per_month
        for m in month_labels if per_month else ("",):
            entries.extend(json.dumps({key: v.format(m=m)}) for v in values)
    entries.append(None)
    table = np.empty(len(entries), dtype=object)
    table[:] = entries
    return table, offset, count, monthly


def _build_model(config: SimulationConfig) -> _Model:
    c = config
    account_levels = np.asarray(c.account_intent_levels)
    person_levels = np.asarray(c.person_intent_levels)
    account_step = _shot_noise_step(c.account_burst_rate, c.account_burst_to, c.account_intent_half_life_days)
    person_step = np.stack([
        _shot_noise_step(min(1.0, c.personal_burst_rate + c.personal_burst_account_rate * a), c.personal_burst_to,
                         c.personal_intent_half_life_days)
        for a in account_levels
    ])  # fmt: skip
    # Within a day the account moves first and its people react to its new level: P(a', p' | a, p).
    joint = account_step[:, None, :, None] * np.transpose(person_step, (1, 0, 2))[None, :, :, :]
    n_acc, n_person = account_levels.size, person_levels.size
    profile = np.array([TOUCH_PROFILE[name] for name in ACTIVITY_TYPES], dtype=np.float64)
    type_offset = np.zeros((N_STAGE_CODES, 2, N_TYPES))
    for stage in (SAL, SQL, REQUALIFIED):
        type_offset[stage, :, TYPE_INDEX["meeting_booked"]] += MEETING_LOGIT_BOOST_IN_SALES
    for stage in (LOST, LOST_WAIT, LOST_READY, RECYCLED):
        for name in ("email_open", "email_click"):
            type_offset[stage, :, TYPE_INDEX[name]] += EMAIL_LOGIT_BOOST_IN_NURTURE
    for name in EMAIL_TYPES:
        type_offset[:, 1, TYPE_INDEX[name]] = -np.inf  # no e-mail reaches an unsubscribed person
    stage_activity = np.zeros(N_STAGE_CODES)
    for stage, factor in STAGE_ACTIVITY_FACTOR.items():
        stage_activity[stage] = factor
    table, offset, count, monthly = _build_properties(_build_calendar(c).month_labels)
    return _Model(
        config=c,
        calendar=_build_calendar(c),
        account_cdf=_cdf(account_step),
        person_cdf=_cdf(person_step),
        intent_step=joint.reshape(n_acc * n_person, n_acc * n_person),
        intent=c.account_intent_weight * account_levels[:, None] + person_levels[None, :],
        n_person_levels=n_person,
        stage_activity=stage_activity,
        type_logit=profile[:, 0].copy(),
        type_slope=profile[:, 1].copy(),
        type_offset=type_offset,
        property_table=table,
        property_offset=offset,
        property_count=count,
        property_monthly=monthly,
    )


# ----------------------------------------------------------------------------------------------------------------
# State and the one kernel
# ----------------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _LeadState:
    """Complete latent state of a set of leads (one row each); fit-derived terms are precomputed constants."""

    acct: IntArray  # index into the account-level array
    level: SmallIntArray  # person intent level
    rate_mult: FloatArray  # personal propensity, damped after an unsubscribe
    unsubscribed: BoolArray
    stage: SmallIntArray
    stage_day: IntArray  # day the current stage began (creation day for LEAD)
    mql_logit: FloatArray  # fit parts of the hazard scores
    fast_track_logit: FloatArray
    qualify_logit: FloatArray
    win_logit: FloatArray
    requalify_logit: FloatArray
    accept: FloatArray  # daily acceptance hazard of an MQL (before the sales calendar)
    reject: FloatArray
    junk: FloatArray
    recycle_share: FloatArray  # share of losses marked for recycling

    def map(self, fn: Callable[[Any], Any]) -> _LeadState:
        """Apply `fn` to every array."""
        return _LeadState(*(fn(getattr(self, f.name)) for f in fields(self)))

    def take(self, index: Any) -> _LeadState:
        """Index every array alike: a slice gives views (the kernel then updates this state), rows give copies."""
        return self.map(lambda a: a[index])


def _concat_states(states: Sequence[_LeadState]) -> _LeadState:
    return _LeadState(*(np.concatenate([getattr(s, f.name) for s in states]) for f in fields(_LeadState)))


@dataclass(frozen=True, slots=True)
class _StepOutcome:
    act_rows: IntArray  # one entry per touch
    act_types: IntArray
    moved_rows: IntArray
    moved_to: IntArray


def _sigmoid(x: Any) -> FloatArray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)), dtype=np.float64)


def _at(x: Any, rows: IntArray) -> Any:
    """x[rows] for per-row arrays, x itself for a scalar (the same day for every row)."""
    return x[rows] if isinstance(x, np.ndarray) and x.ndim else x


def _poisson(lam: FloatArray, rng: np.random.Generator) -> IntArray:
    """Poisson counts by inverse CDF: ~2x faster than Generator.poisson when most rates are small."""
    u = rng.random(lam.size)
    p = np.exp(-lam)
    counts = np.zeros(lam.size, dtype=np.int64)
    rows = np.flatnonzero(u > p)
    pr, cr, ur, lr = p[rows], p[rows], u[rows], lam[rows]
    k = 0
    while rows.size:
        k += 1
        counts[rows] = k
        pr = pr * lr / k
        cr = cr + pr
        keep = ur > cr
        rows, pr, cr, ur, lr = rows[keep], pr[keep], cr[keep], ur[keep], lr[keep]
    return counts


def _draw_level(cdf: FloatArray, rng: np.random.Generator) -> SmallIntArray:
    """Sample one level per row from rows of cumulative probabilities (n, k)."""
    u = rng.random(len(cdf))
    return np.asarray((u[:, None] >= cdf).sum(axis=1), dtype=np.int8)


def _stage_options(
    stage: int, leads: _LeadState, rows: IntArray | slice, intent: Any, model: _Model
) -> list[tuple[int, Any, bool]]:
    """Competing daily hazards out of `stage`: (destination, hazard, follows the sales calendar).

    The one place hazards are defined: the sampling kernel and the exact oracle both call it. Hazards depend on fit
    (precomputed per lead) and on today's driving intent; `intent` may carry extra trailing axes (the oracle passes
    every intent level at once, with lead arrays shaped (n, 1)).
    """
    c = model.config
    options: list[tuple[int, Any, bool]] = []

    def lost(hazard: Any) -> None:
        share = leads.recycle_share[rows]
        options.extend([(LOST, hazard * (1.0 - share), True), (LOST_WAIT, hazard * share, True)])

    if stage in (LEAD, MQL):
        fast = c.fast_track_rate * _sigmoid(leads.fast_track_logit[rows] + c.fast_track_intent * intent)
        if stage == LEAD:
            options.append((MQL, c.mql_rate * _sigmoid(leads.mql_logit[rows] + c.mql_intent * intent), False))
            options.append((SQL, fast, True))
            lost(leads.junk[rows])
        else:
            options.extend([(SAL, leads.accept[rows], True), (SQL, fast, True)])
            lost(leads.reject[rows] + c.stale_rate)
    elif stage == SAL:
        q = _sigmoid(leads.qualify_logit[rows] + c.qualify_intent * intent)
        options.append((SQL, c.sql_rate * q, True))
        lost(c.disqualify_rate * (1.0 - q) + c.stale_rate)
    elif stage in (SQL, REQUALIFIED):
        w = _sigmoid(leads.win_logit[rows] + c.win_intent * intent)
        options.append((WON, c.close_rate * w, True))
        if stage == SQL:
            lost(c.close_rate * (1.0 - w))
        else:
            options.append((DEAD, c.close_rate * (1.0 - w), True))
    elif stage == LOST_WAIT:
        options.append((LOST_READY, 1.0 / c.recycle_rest_days, False))
    elif stage == LOST_READY:
        options.append((RECYCLED, c.recycle_rate, True))
    elif stage == RECYCLED:
        score = leads.requalify_logit[rows] + c.requalify_intent * intent
        options.append((REQUALIFIED, c.requalify_rate * _sigmoid(score), True))
    return options


def _advance_intent(
    leads: _LeadState, account_level: SmallIntArray, rng: np.random.Generator, model: _Model
) -> FloatArray:
    """Step account and person intent levels, in place; return today's driving intent I per lead."""
    account_level[:] = _draw_level(model.account_cdf[account_level], rng)
    acc = account_level[leads.acct]
    leads.level[:] = _draw_level(model.person_cdf[acc, leads.level], rng)
    return np.asarray(model.intent[acc, leads.level], dtype=np.float64)


def _lifecycle(
    leads: _LeadState, day: Day, intent: FloatArray, rng: np.random.Generator, model: _Model
) -> tuple[IntArray, IntArray]:
    """Sample today's stage changes (at most one per lead, never on the day its stage began), in place."""
    code = np.where(day - leads.stage_day >= 1, leads.stage, NOT_READY)
    sales = model.calendar.sales[day]
    u = rng.random(code.size)
    moved_rows: list[IntArray] = []
    moved_to: list[IntArray] = []
    for stage in MOVING_STAGES:
        rows = np.flatnonzero(code == stage)
        if not rows.size:
            continue
        options = _stage_options(stage, leads, rows, intent[rows], model)
        s = _at(sales, rows)
        hazards = np.stack([np.broadcast_to(h * s if on_calendar else h, rows.shape) for _, h, on_calendar in options])
        cum = np.cumsum(hazards, axis=0)
        ur = u[rows]
        moved = np.flatnonzero(ur < cum[-1])
        if moved.size:
            pick = (cum[:, moved] <= ur[moved]).sum(axis=0)
            moved_rows.append(rows[moved])
            moved_to.append(np.array([d for d, _, _ in options], dtype=np.int64)[pick])
    if not moved_rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows = np.concatenate(moved_rows)
    dest = np.concatenate(moved_to)
    leads.stage[rows] = dest
    leads.stage_day[rows] = _at(day, rows)
    return rows, dest


def _touch(
    leads: _LeadState, day: Day, intent: FloatArray, rng: np.random.Generator, model: _Model
) -> tuple[IntArray, IntArray]:
    """Draw today's touches (count from intent and propensity, kind from a softmax rising with intent), in place."""
    c = model.config
    lam = (
        leads.rate_mult
        * model.calendar.activity[day]
        * model.stage_activity[leads.stage]
        * (c.base_activity_rate + c.intent_activity_rate * intent)
    )
    counts = _poisson(lam, rng)
    touched = np.flatnonzero(counts)
    if not touched.size:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    act_rows = np.repeat(touched, counts[touched])
    logits = (
        model.type_logit
        + np.outer(intent[act_rows], model.type_slope)
        + model.type_offset[leads.stage[act_rows], leads.unsubscribed[act_rows].astype(np.int64)]
    )
    cdf = np.cumsum(np.exp(logits), axis=1)
    draw = rng.random(act_rows.size) * cdf[:, -1]
    act_types = (cdf < draw[:, None]).sum(axis=1).astype(np.int64)
    quitting = np.unique(act_rows[act_types == UNSUBSCRIBE])
    if quitting.size:
        leads.unsubscribed[quitting] = True
        leads.rate_mult[quitting] *= c.unsubscribe_damping
    return act_rows, act_types


def _step(
    leads: _LeadState, account_level: SmallIntArray, day: int, rng: np.random.Generator, model: _Model
) -> _StepOutcome:
    """Advance every lead and account by one day, in place: intent, then stage changes, then touches."""
    intent = _advance_intent(leads, account_level, rng, model)
    moved_rows, moved_to = _lifecycle(leads, day, intent, rng, model)
    act_rows, act_types = _touch(leads, day, intent, rng, model)
    return _StepOutcome(act_rows, act_types, moved_rows, moved_to)


def _propagate(
    model: _Model,
    state: _LeadState,
    account_level: SmallIntArray,
    start_day: IntArray,
    steps: int,
    tracked: tuple[int, ...],
    hit_stages: tuple[int, ...],
    *,
    frozen_first_day: bool = False,
) -> FloatArray:
    """Exact P(a stage change into hit_stages within `steps` days | latent state at the start of start_day), per row.

    Carries the joint distribution of (stage, account level, person level) forward with the kernel's own intent
    transition matrix and `_stage_options` hazards (touches never feed back, so they need not be simulated). Stages
    outside `tracked` and `hit_stages` must be absorbing for the question asked; their mass is dropped.
    `frozen_first_day`: the rows were created on start_day, when no stage may change yet.
    """
    c = model.config
    column = np.full(N_STAGE_CODES, -1, dtype=np.int64)
    column[list(tracked)] = np.arange(len(tracked))
    if (column[state.stage] < 0).any():
        raise ValueError("propagation started from a stage it does not track")
    n = state.stage.size
    n_levels = model.intent_step.shape[0]
    intent = model.intent.reshape(1, n_levels)
    out = np.zeros(n)
    for lo in range(0, n, c.oracle_batch_rows):
        hi = min(n, lo + c.oracle_batch_rows)
        m = hi - lo
        sub = state.take((slice(lo, hi), None))  # (m, 1) columns broadcast against the intent levels
        # Per tracked stage: total hazard out (off / on the sales calendar), and the flows worth following.
        leave_off = np.zeros((len(tracked), m, n_levels))
        leave_on = np.zeros((len(tracked), m, n_levels))
        flows: list[tuple[int, int, FloatArray, bool]] = []  # (from, to (-1: hit), hazard, on calendar)
        for j, stage in enumerate(tracked):
            for dest, hazard, on_calendar in _stage_options(stage, sub, slice(None), intent, model):
                h = np.broadcast_to(hazard, (m, n_levels))
                (leave_on if on_calendar else leave_off)[j] += h
                if dest in hit_stages or column[dest] >= 0:
                    flows.append((j, -1 if dest in hit_stages else int(column[dest]), h, on_calendar))
        mass = np.zeros((len(tracked), m, n_levels))
        start_level = account_level[lo:hi].astype(np.int64) * model.n_person_levels + state.level[lo:hi]
        mass[column[state.stage[lo:hi]], np.arange(m), start_level] = 1.0
        hit = np.zeros(m)
        for t in range(steps):
            mass = (mass.reshape(-1, n_levels) @ model.intent_step).reshape(mass.shape)
            if frozen_first_day and t == 0:
                continue
            sales = model.calendar.sales[start_day[lo:hi] + t][:, None]
            on_mass = mass * sales  # mass exposed to sales-calendar hazards today
            moved = [(to, (on_mass[j] if on_calendar else mass[j]) * h) for j, to, h, on_calendar in flows]
            mass -= mass * leave_off + on_mass * leave_on
            for to, flow in moved:
                if to < 0:
                    hit += flow.sum(axis=1)
                else:
                    mass[to] += flow
        out[lo:hi] = hit
    return out


# ----------------------------------------------------------------------------------------------------------------
# Population
# ----------------------------------------------------------------------------------------------------------------


def _choice(rng: np.random.Generator, probs: Sequence[float] | FloatArray, size: int) -> IntArray:
    cdf = np.cumsum(np.asarray(probs, dtype=np.float64))
    return np.minimum(np.searchsorted(cdf / cdf[-1], rng.random(size), side="right"), len(cdf) - 1).astype(np.int64)


def _business_tod(rng: np.random.Generator, size: int) -> IntArray:
    tod = np.rint(rng.normal(TOD_MEAN_MS, TOD_SD_MS, size))
    return np.clip(tod, 0, MS_PER_DAY - 1).astype(np.int64)


@dataclass(frozen=True, slots=True)
class _Population:
    """Latent people and accounts of one chunk, rows sorted by creation time (= lead id order)."""

    n_accounts: int
    acct: IntArray
    created_day: IntArray
    created_tod: IntArray
    fit: FloatArray
    industry: IntArray  # per account
    log_employees: FloatArray  # per account
    revenue: FloatArray  # per account
    region: IntArray  # per account
    country: ObjArray  # per account (ISO code)
    domain: ObjArray  # per account
    anchor_day: IntArray  # per account
    anchor_level: SmallIntArray  # per account: intent level its buying process starts at (0: arrives cold)
    seniority: IntArray
    department: IntArray
    free_mail: BoolArray
    source: IntArray
    channel: IntArray
    creation_intent: FloatArray
    propensity: FloatArray
    creation_touch: IntArray  # touch type at created_at, or NO_TOUCH


def _draw_creation_days(model: _Model, rng: np.random.Generator, anchor: IntArray, first: BoolArray) -> IntArray:
    c = model.config
    weight = model.calendar.creation[: c.days]
    accept_p = weight / weight.max()
    day = anchor.copy()
    pending = np.flatnonzero(~first)
    for _ in range(3):  # rejection rounds keep colleagues near the anchor while respecting the calendar
        if not pending.size:
            break
        cand = anchor[pending] + np.floor(rng.exponential(c.colleague_delay_days, pending.size)).astype(np.int64)
        ok = cand < c.days
        ok[ok] &= rng.random(int(ok.sum())) < accept_p[cand[ok]]
        day[pending[ok]] = cand[ok]
        pending = pending[~ok]
    if pending.size:  # the rest (mostly anchors near the data end) are placed anywhere on the calendar
        day[pending] = _choice(rng, weight, pending.size)
    return day


def _draw_population(model: _Model, group_sizes: IntArray, rng: np.random.Generator) -> _Population:
    c = model.config
    n_acc = group_sizes.size
    n = int(group_sizes.sum())
    ind_market, ind_icp, ind_fit = np.array([INDUSTRY_PROFILE[v] for v in INDUSTRY_VALUES]).T
    reg_market, reg_icp, reg_fit = np.array([REGION_PROFILE[v] for v in REGION_VALUES]).T

    # Accounts around the ICP.
    icp = rng.random(n_acc) < c.icp_account_share
    industry = np.where(icp, _choice(rng, ind_icp, n_acc), _choice(rng, ind_market, n_acc))
    region = np.where(icp, _choice(rng, reg_icp, n_acc), _choice(rng, reg_market, n_acc))
    log_emp = np.where(icp, rng.normal(*ICP_LOG_EMPLOYEES, n_acc), rng.normal(*MARKET_LOG_EMPLOYEES, n_acc))
    log_emp = np.clip(log_emp, 0.0, MAX_LOG_EMPLOYEES)
    revenue = np.rint(10.0**log_emp) * np.exp(rng.normal(*LOG_REVENUE_PER_EMPLOYEE, n_acc))
    country = np.empty(n_acc, dtype=object)
    for r, name in enumerate(REGION_VALUES):
        rows = np.flatnonzero(region == r)
        codes = np.array([code for code, _ in COUNTRIES[name]], dtype=object)
        country[rows] = codes[_choice(rng, [share for _, share in COUNTRIES[name]], rows.size)]
    size_fit = -SIZE_FIT_WEIGHT * ((log_emp - SIZE_FIT_CENTRE) / SIZE_FIT_WIDTH) ** 2
    account_score = ind_fit[industry] + reg_fit[region] + size_fit + rng.normal(0.0, c.account_fit_noise, n_acc)
    tlds = [tld for tld, _ in DOMAIN_TLDS]
    tld_shares = [share for _, share in DOMAIN_TLDS]
    domain = np.strings.add(
        np.strings.add(
            np.array(DOMAIN_HEADS)[rng.integers(0, len(DOMAIN_HEADS), n_acc)],
            np.array(DOMAIN_TAILS)[rng.integers(0, len(DOMAIN_TAILS), n_acc)],
        ),
        np.array(tlds)[_choice(rng, tld_shares, n_acc)],
    ).astype(object)
    anchor = _choice(rng, model.calendar.creation[: c.days], n_acc)
    anchor_level = np.where(
        rng.random(n_acc) < c.anchor_burst_probability, _choice(rng, c.account_burst_to, n_acc), 0
    ).astype(np.int8)

    # People in buying groups.
    acct = np.repeat(np.arange(n_acc, dtype=np.int64), group_sizes)
    first = np.zeros(n, dtype=np.bool_)
    first[np.cumsum(group_sizes) - group_sizes] = True
    sen_share, sen_fit, sen_mail = np.array([SENIORITY_PROFILE[v] for v in SENIORITY_VALUES]).T
    dep_share = np.array([DEPARTMENT_PROFILE[v][0] for v in DEPARTMENT_VALUES])
    dep_fit = np.array([DEPARTMENT_PROFILE[v][1] for v in DEPARTMENT_VALUES])
    seniority = _choice(rng, sen_share, n)
    department = _choice(rng, dep_share, n)
    c_level = (seniority == SENIORITY_VALUES.index("c-level")) & (rng.random(n) < C_LEVEL_EXECUTIVE_SHARE)
    department[c_level] = DEPARTMENT_VALUES.index("executive")
    person_score = sen_fit[seniority] + dep_fit[department] + rng.normal(0.0, c.person_fit_noise, n)
    fit = _sigmoid(c.fit_offset + account_score[acct] + person_score)
    free_mail = rng.random(n) < _sigmoid(FREE_MAIL_OFFSET + sen_mail[seniority] - FREE_MAIL_FIT_SLOPE * person_score)

    src_share, src_slope, src_intent = np.array([SOURCE_PROFILE[v][:3] for v in SOURCE_VALUES]).T
    gumbel = -np.log(-np.log(rng.random((n, len(SOURCE_VALUES)))))
    source = np.argmax(np.log(src_share) + np.outer(fit - 0.5, src_slope) + gumbel, axis=1).astype(np.int64)
    channel = np.array([CHANNEL_VALUES.index(SOURCE_PROFILE[v][3]) for v in SOURCE_VALUES])[source]
    noisy = rng.random(n) < CHANNEL_NOISE
    channel[noisy] = rng.integers(0, len(CHANNEL_VALUES), int(noisy.sum()))
    creation_intent = rng.exponential(src_intent[source])
    propensity = rng.lognormal(-0.5 * c.propensity_sd**2, c.propensity_sd, n)

    touch = np.full(n, NO_TOUCH, dtype=np.int64)
    for s, name in enumerate(SOURCE_VALUES):
        rows = np.flatnonzero(source == s)
        options = CREATION_TOUCH[name]
        codes = np.array([NO_TOUCH if kind is None else TYPE_INDEX[kind] for kind, _ in options])
        touch[rows] = codes[_choice(rng, [share for _, share in options], rows.size)]
    inbound = channel != CHANNEL_VALUES.index("outbound")
    demo = inbound & (rng.random(n) < _sigmoid(CREATION_DEMO_OFFSET + CREATION_DEMO_SLOPE * creation_intent))
    touch[demo] = TYPE_INDEX["demo_request"]

    created_day = _draw_creation_days(model, rng, anchor[acct], first)
    # The buying process starts with the account's first lead: no scheduled burst may follow a lead's creation, or the
    # oracle (which only sees the state at as_of) would miss it.
    anchor = np.full(n_acc, c.days, dtype=np.int64)
    np.minimum.at(anchor, acct, created_day)
    created_tod = _business_tod(rng, n)
    order = np.lexsort((created_tod, created_day))
    return _Population(
        n_accounts=n_acc, acct=acct[order], created_day=created_day[order], created_tod=created_tod[order],
        fit=fit[order], industry=industry, log_employees=log_emp, revenue=revenue, region=region, country=country,
        domain=domain, anchor_day=anchor, anchor_level=anchor_level, seniority=seniority[order],
        department=department[order], free_mail=free_mail[order], source=source[order], channel=channel[order],
        creation_intent=creation_intent[order], propensity=propensity[order], creation_touch=touch[order],
    )  # fmt: skip


def _initial_state(model: _Model, pop: _Population) -> _LeadState:
    c = model.config
    fit = pop.fit
    n = fit.size
    # A lead arrives at the person level nearest to its creation intent.
    levels = np.asarray(c.person_intent_levels)
    level = np.abs(pop.creation_intent[:, None] - levels[None, :]).argmin(axis=1).astype(np.int8)
    accept = _sigmoid(c.accept_offset + c.accept_fit * fit)
    return _LeadState(
        acct=pop.acct.copy(),
        level=level,
        rate_mult=pop.propensity.copy(),
        unsubscribed=np.zeros(n, dtype=np.bool_),
        stage=np.full(n, LEAD, dtype=np.int8),
        stage_day=pop.created_day.copy(),
        mql_logit=c.mql_offset + c.mql_fit * fit,
        fast_track_logit=c.fast_track_offset + c.fast_track_fit * fit,
        qualify_logit=c.qualify_offset + c.qualify_fit * fit,
        win_logit=c.win_offset + c.win_fit * fit,
        requalify_logit=c.requalify_offset + c.requalify_fit * fit,
        accept=c.sal_rate * accept,
        reject=c.sal_rate * c.reject_share * (1.0 - accept),
        junk=c.junk_rate * (1.0 - fit) ** 2,
        recycle_share=_sigmoid(c.recycle_offset + c.recycle_fit * fit),
    )


# ----------------------------------------------------------------------------------------------------------------
# Recording: dirty CRM strings and the output frames
# ----------------------------------------------------------------------------------------------------------------


def _variant_table(values: Sequence[str]) -> ObjArray:
    """(value, variant) -> recorded string: clean, Title, UPPER, leading space, trailing space, typo."""
    table = np.empty((len(values), len(VARIANT_SHARES)), dtype=object)
    for i, v in enumerate(values):
        table[i] = (v, v.title(), v.upper(), " " + v, v + " ", TYPOS.get(v, v))
    return table


def _dirty(rng: np.random.Generator, values: Sequence[str], codes: IntArray, missing: float | FloatArray) -> ObjArray:
    table = _variant_table(values)
    out: ObjArray = table[codes, _choice(rng, VARIANT_SHARES, codes.size)]
    out[rng.random(codes.size) < missing] = None
    return out


def _str_series(values: Any) -> pd.Series:
    return pd.Series(values, dtype="str")


def _utc(start_ns: int, ms: IntArray) -> pd.Series:
    ns = np.where(ms >= 0, start_ns + ms * NS_PER_MS, np.iinfo(np.int64).min)
    return pd.Series(ns.view("M8[ns]")).dt.tz_localize("UTC")


def _ids(prefix: str, numbers: IntArray, width: int) -> npt.NDArray[np.str_]:
    return np.asarray(np.strings.add(prefix, np.strings.zfill(numbers.astype(np.str_), width)))


def _job_titles(rng: np.random.Generator, seniority: IntArray, department: IntArray) -> ObjArray:
    table = np.empty((len(SENIORITY_VALUES), len(DEPARTMENT_VALUES), TITLE_VARIANTS), dtype=object)
    for d, dep in enumerate(DEPARTMENT_VALUES):
        name = DEPARTMENT_PROFILE[dep][2]
        table[SENIORITY_VALUES.index("c-level"), d] = (C_LEVEL_TITLES[dep],) * TITLE_VARIANTS
        table[SENIORITY_VALUES.index("vp"), d] = (f"VP {name}", f"VP of {name}", f"Vice President, {name}")
        table[SENIORITY_VALUES.index("director"), d] = (f"Director of {name}", f"{name} Director", f"Head of {name}")
        table[SENIORITY_VALUES.index("manager"), d] = (f"{name} Manager", f"Manager, {name}", f"{name} Lead")
        table[SENIORITY_VALUES.index("individual contributor"), d] = IC_TITLES[dep]
        table[SENIORITY_VALUES.index("student"), d] = ("Student", "MBA Candidate", "Intern")
    titles: ObjArray = table[seniority, department, rng.integers(0, TITLE_VARIANTS, seniority.size)]
    return titles


def _leads_frame(
    model: _Model,
    pop: _Population,
    rng: np.random.Generator,
    lead_ids: npt.NDArray[np.str_],
    account_ids: npt.NDArray[np.str_],
    stamps: IntArray,
) -> pd.DataFrame:
    c = model.config
    start_ns = c.start_ts.value
    acct = pop.acct
    n = acct.size
    log_emp = pop.log_employees[acct]
    employees = np.rint(10.0**log_emp).astype(np.int64)
    small = log_emp < np.log10(SMALL_COMPANY_EMPLOYEES)
    no_size = rng.random(n) < c.missing_employee_count + c.missing_employee_small_extra * small
    no_revenue = rng.random(n) < np.where(no_size, c.missing_revenue_if_no_size, c.missing_revenue)
    country = pop.country[acct].copy()
    alias = rng.random(n) < c.country_alias_rate
    for iso, spelled in COUNTRY_ALIASES.items():
        country[alias & (country == iso)] = spelled
    lower = np.flatnonzero(rng.random(n) < c.country_lowercase_rate)
    country[lower] = np.strings.lower(country[lower].astype(np.str_)).astype(object)
    country[rng.random(n) < c.missing_country] = None
    mails = [mail for mail, _ in FREE_MAIL_DOMAINS]
    mail_shares = [share for _, share in FREE_MAIL_DOMAINS]
    email_domain = np.where(
        pop.free_mail, np.array(mails, dtype=object)[_choice(rng, mail_shares, n)], pop.domain[acct]
    )
    titles = _job_titles(rng, pop.seniority, pop.department)
    titles[rng.random(n) < c.missing_job_title] = None
    columns: dict[str, Any] = {
        "lead_id": _str_series(lead_ids),
        "account_id": _str_series(account_ids[acct]),
        "created_at": _utc(start_ns, pop.created_day * MS_PER_DAY + pop.created_tod),
        "industry": _str_series(_dirty(rng, INDUSTRY_VALUES, pop.industry[acct], c.missing_industry)),
        "employee_count": pd.array(np.where(no_size, 0, employees), dtype="Int64"),
        "annual_revenue": np.where(no_revenue, np.nan, np.round(pop.revenue[acct], -3)),
        "country": _str_series(country),
        "region": _str_series(_dirty(rng, REGION_VALUES, pop.region[acct], c.missing_region)),
        "job_title": _str_series(titles),
        "seniority": _str_series(_dirty(rng, SENIORITY_VALUES, pop.seniority, c.missing_seniority)),
        "department": _str_series(_dirty(rng, DEPARTMENT_VALUES, pop.department, c.missing_department)),
        "email_domain": _str_series(email_domain),
        "source": _str_series(_dirty(rng, SOURCE_VALUES, pop.source, 0.0)),
        "channel": _str_series(np.array(CHANNEL_VALUES, dtype=object)[pop.channel]),
    }
    columns["employee_count"][no_size] = pd.NA
    for column in dict.fromkeys(STAGE_COLUMN.values()):
        ms = np.max([stamps[stage] for stage, col in STAGE_COLUMN.items() if col == column], axis=0)
        columns[column] = _utc(start_ns, ms)
    return pd.DataFrame({name: columns[name] for name in LEADS.names})


def _activities_frame(
    model: _Model,
    rng: np.random.Generator,
    lead_ids: npt.NDArray[np.str_],
    rows: IntArray,
    types: IntArray,
    at_ms: IntArray,
) -> pd.DataFrame:
    order = np.lexsort((at_ms, rows))
    rows, types, at_ms = rows[order], types[order], at_ms[order]
    n = rows.size
    day = at_ms // MS_PER_DAY
    count = model.property_count[types]
    pick = np.floor(rng.random(n) * np.maximum(count, 1)).astype(np.int64)
    index = (
        model.property_offset[types]
        + np.where(model.property_monthly[types], model.calendar.month[day] * count, 0)
        + pick
    )
    drop = (model.property_offset[types] < 0) | (rng.random(n) < PROPERTIES_MISSING_RATE)
    index[drop] = model.property_table.size - 1
    frame = {
        "lead_id": _str_series(lead_ids[rows]),
        "occurred_at": _utc(model.config.start_ts.value, at_ms),
        "activity_type": _str_series(np.array(ACTIVITY_TYPES, dtype=object)[types]),
        "properties": _str_series(model.property_table[index]),
    }
    return pd.DataFrame({name: frame[name] for name in ACTIVITIES.names})


# ----------------------------------------------------------------------------------------------------------------
# Chunks
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ChunkPlan:
    index: int
    group_sizes: IntArray
    first_account: int  # global 0-based number of the chunk's first account
    first_lead: int
    oracle_quota: int
    won_quota: int


def _plan_chunks(config: SimulationConfig) -> list[_ChunkPlan]:
    """Buying-group sizes for the whole population (cheap), cut into chunks of accounts."""
    rng = np.random.default_rng(np.random.SeedSequence(config.seed))
    extra = config.max_buying_group - 1
    p = (config.mean_buying_group - 1.0) / extra
    sizes = np.zeros(0, dtype=np.int64)
    while sizes.sum() < config.n_leads:
        sizes = np.concatenate([sizes, 1 + rng.binomial(extra, p, config.n_leads // 2 + 16)])
    cut = int(np.searchsorted(np.cumsum(sizes), config.n_leads))
    sizes = sizes[: cut + 1].copy()
    sizes[-1] -= int(sizes.sum()) - config.n_leads
    lead_ends = np.cumsum(sizes)
    plans = []
    for index, lo in enumerate(range(0, sizes.size, config.chunk_accounts)):
        hi = min(sizes.size, lo + config.chunk_accounts)
        first, last = int(lead_ends[lo] - sizes[lo]), int(lead_ends[hi - 1])

        def quota(total: int, first: int = first, last: int = last) -> int:
            # Proportional to the chunk's leads, rounded so that the chunk quotas sum exactly to the total.
            return total * last // config.n_leads - total * first // config.n_leads

        plans.append(
            _ChunkPlan(index, sizes[lo:hi], lo, first, quota(config.oracle_max_rows), quota(config.p_won_sample))
        )
    return plans


@dataclass(slots=True)
class _Reservoir:
    """Uniform sample without replacement of `quota` snapshots: keeps the smallest uniform keys offered."""

    quota: int
    keys: FloatArray
    rows: IntArray
    days: IntArray
    account_level: SmallIntArray
    states: list[_LeadState]

    @classmethod
    def empty(cls, quota: int) -> _Reservoir:
        return cls(quota, np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8), [])

    def offer(
        self, rng: np.random.Generator, rows: IntArray, day: int, leads: _LeadState, account_level: SmallIntArray
    ) -> None:
        keys = rng.random(rows.size)
        if self.keys.size >= self.quota:
            threshold = np.partition(self.keys, self.quota - 1)[self.quota - 1]
            keep = keys < threshold
            rows, keys = rows[keep], keys[keep]
        if not rows.size:
            return
        self.keys = np.concatenate([self.keys, keys])
        self.rows = np.concatenate([self.rows, rows])
        self.days = np.concatenate([self.days, np.full(rows.size, day, dtype=np.int64)])
        self.account_level = np.concatenate([self.account_level, account_level[leads.acct[rows]]])
        self.states.append(leads.take(rows))

    def sample(self) -> tuple[IntArray, IntArray, SmallIntArray, _LeadState | None]:
        """The kept snapshots, ordered by (row, day)."""
        if not self.states:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8), None
        keep = np.argsort(self.keys, kind="stable")[: self.quota]
        keep = keep[np.lexsort((self.days[keep], self.rows[keep]))]
        state = _concat_states(self.states).take(keep)
        return self.rows[keep], self.days[keep], self.account_level[keep], state


def _simulate_chunk(model: _Model, plan: _ChunkPlan, id_width: tuple[int, int]) -> SimulatedFunnel:
    c = model.config
    pop_ss, main_ss, record_ss, sample_ss = np.random.SeedSequence(c.seed, spawn_key=(plan.index,)).spawn(4)
    pop = _draw_population(model, plan.group_sizes, np.random.default_rng(pop_ss))
    rng = np.random.default_rng(main_ss)
    rec = np.random.default_rng(record_ss)
    srng = np.random.default_rng(sample_ss)

    leads = _initial_state(model, pop)
    n = leads.stage.size
    account_level = np.zeros(pop.n_accounts, dtype=np.int8)
    created_through = np.searchsorted(pop.created_day, np.arange(c.days + 1), side="right")
    anchor_order = np.argsort(pop.anchor_day, kind="stable")
    anchor_bounds = np.searchsorted(pop.anchor_day[anchor_order], np.arange(c.days + 1), side="left")
    won_rows = np.sort(srng.choice(n, size=min(plan.won_quota, n), replace=False)).astype(np.int64)
    won_states: list[_LeadState] = []
    won_levels: list[SmallIntArray] = []
    won_cursor = 0
    grid = set(range(c.snapshot_every_days, c.days - c.horizon_days + 1, c.snapshot_every_days))
    reservoir = _Reservoir.empty(plan.oracle_quota)
    eligible = np.array(READINESS_ELIGIBLE_STAGES, dtype=np.int8)
    stamps = np.full((N_STAGE_CODES, n), MISSING_MS, dtype=np.int64)
    act_rows: list[IntArray] = []
    act_types: list[IntArray] = []
    act_ms: list[IntArray] = []
    in_market_days = 0

    for day in range(c.days):
        if day in grid and plan.oracle_quota:
            born = int(created_through[day - 1])  # created on an earlier day: created_at < as_of
            rows = np.flatnonzero(np.isin(leads.stage[:born], eligible))
            reservoir.offer(srng, rows, day, leads, account_level)
        anchored = anchor_order[anchor_bounds[day] : anchor_bounds[day + 1]]
        account_level[anchored] = np.maximum(account_level[anchored], pop.anchor_level[anchored])
        hi = won_cursor + int(np.searchsorted(pop.created_day[won_rows[won_cursor:]], day, side="right"))
        if hi > won_cursor:  # sampled leads created today: their state at creation
            rows = won_rows[won_cursor:hi]
            won_states.append(leads.take(rows))
            won_levels.append(account_level[leads.acct[rows]])
            won_cursor = hi
        active = int(created_through[day])
        out = _step(leads.take(slice(0, active)), account_level, day, rng, model)
        in_market_days += int(np.count_nonzero(account_level >= c.in_market_level))
        if out.moved_rows.size:
            stamps[out.moved_to, out.moved_rows] = day * MS_PER_DAY + _business_tod(rec, out.moved_rows.size)
        if out.act_rows.size:
            tod = _business_tod(rec, out.act_rows.size)
            fresh = np.flatnonzero(pop.created_day[out.act_rows] == day)
            if fresh.size:  # touches on the creation day come after the lead was created
                ct = pop.created_tod[out.act_rows[fresh]]
                tod[fresh] = ct + np.floor(rec.random(fresh.size) * (MS_PER_DAY - ct)).astype(np.int64)
            act_rows.append(out.act_rows)
            act_types.append(out.act_types)
            act_ms.append(day * MS_PER_DAY + tod)
    logger.debug(
        "chunk %d: share of account-days in market %.4f", plan.index, in_market_days / max(1, pop.n_accounts * c.days)
    )

    # The touch that created the lead (form, download, demo request...), at created_at.
    creators = np.flatnonzero(pop.creation_touch >= 0)
    act_rows.append(creators)
    act_types.append(pop.creation_touch[creators])
    act_ms.append(pop.created_day[creators] * MS_PER_DAY + pop.created_tod[creators])

    lead_width, account_width = id_width
    lead_ids = _ids("L", np.arange(plan.first_lead + 1, plan.first_lead + n + 1), lead_width)
    account_ids = _ids("A", np.arange(plan.first_account + 1, plan.first_account + pop.n_accounts + 1), account_width)
    leads_df = _leads_frame(model, pop, rec, lead_ids, account_ids, stamps)
    activities_df = _activities_frame(
        model, rec, lead_ids, np.concatenate(act_rows), np.concatenate(act_types), np.concatenate(act_ms)
    )

    p_won = np.full(n, np.nan)
    if won_states:
        p_won[won_rows] = _propagate(
            model,
            _concat_states(won_states),
            np.concatenate(won_levels),
            pop.created_day[won_rows],
            c.won_horizon_days,
            PRE_WON_STAGES,
            WON_HIT_STAGES,
            frozen_first_day=True,
        )
    truth = pd.DataFrame({
        "lead_id": _str_series(lead_ids),
        "account_id": _str_series(account_ids[pop.acct]),
        "icp_fit": pop.fit,
        "p_won": p_won,
    })  # fmt: skip

    o_rows, o_days, o_levels, o_state = reservoir.sample()
    p_ready = np.zeros(0)
    if o_state is not None:
        p_ready = _propagate(model, o_state, o_levels, o_days, c.horizon_days, PRE_READY_STAGES, READINESS_HIT_STAGES)
    oracle = pd.DataFrame({
        "lead_id": _str_series(lead_ids[o_rows]),
        "as_of": _utc(c.start_ts.value, o_days * MS_PER_DAY),
        "p_ready": np.clip(p_ready, 0.0, 1.0),
    })  # fmt: skip
    return SimulatedFunnel(leads_df, activities_df, truth, oracle)


# ----------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------


def iter_simulation_chunks(config: SimulationConfig) -> Iterator[SimulatedFunnel]:
    """Simulate independent chunks of accounts one at a time (ids are global; memory stays per chunk)."""
    model = _build_model(config)
    plans = _plan_chunks(config)
    n_accounts = plans[-1].first_account + plans[-1].group_sizes.size
    id_width = (max(7, len(str(config.n_leads))), max(6, len(str(n_accounts))))
    for plan in plans:
        yield _simulate_chunk(model, plan, id_width)


def simulate(config: SimulationConfig) -> SimulatedFunnel:
    """Simulate the whole funnel in memory (the chunks of `iter_simulation_chunks`, concatenated)."""
    parts = list(iter_simulation_chunks(config))
    if len(parts) == 1:
        return parts[0]

    def concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
        return pd.concat(frames, ignore_index=True)

    return SimulatedFunnel(
        leads=concat([p.leads for p in parts]),
        activities=concat([p.activities for p in parts]),
        truth=concat([p.truth for p in parts]),
        oracle=concat([p.oracle for p in parts]),
    )


def write_simulation(config: SimulationConfig, out_dir: Path) -> SimulationSummary:
    """Write out_dir/{leads,activities,truth,oracle}/part-NNNNN.parquet chunk by chunk and return the counts."""
    tables = ("leads", "activities", "truth", "oracle")
    for table in tables:
        (out_dir / table).mkdir(parents=True, exist_ok=True)
    counts = dict.fromkeys(tables, 0)
    n_parts = 0
    for part in iter_simulation_chunks(config):
        for table in tables:
            frame: pd.DataFrame = getattr(part, table)
            frame.to_parquet(out_dir / table / f"part-{n_parts:05d}.parquet", index=False)
            counts[table] += len(frame)
        logger.info("wrote part %d: %d leads, %d activities", n_parts, len(part.leads), len(part.activities))
        n_parts += 1
    return SimulationSummary(out_dir, n_parts, counts["leads"], counts["activities"], counts["truth"], counts["oracle"])


def _ns(values: pd.Series | pd.DatetimeIndex) -> IntArray:
    """UTC nanoseconds; NaT -> int64 min (below every real timestamp)."""
    stamps = pd.DatetimeIndex(values)
    stamps = stamps.tz_localize("UTC") if stamps.tz is None else stamps.tz_convert("UTC")
    return np.asarray(stamps.as_unit("ns").asi8, dtype=np.int64)


def readiness_labels(
    leads: pd.DataFrame,
    lead_id: pd.Series | npt.ArrayLike,
    as_of: pd.Series | pd.DatetimeIndex,
    horizon_days: int,
) -> tuple[BoolArray, BoolArray]:
    """(eligible, label) of (lead_id, as_of) snapshots under the readiness label rules, from the leads table alone.

    Reference implementation used to check the oracle: eligible iff created_at < as_of and the latest lifecycle stamp
    before as_of is none, mql_at, sal_at or recycled_at; label iff sql_at or requalified_at is in [as_of, as_of + H).
    """
    where = pd.Index(leads["lead_id"]).get_indexer(pd.Index(np.asarray(lead_id)))
    if (where < 0).any():
        raise KeyError(f"{int((where < 0).sum())} snapshot lead_id values are not in the leads table")
    t = _ns(as_of)
    missing = np.iinfo(np.int64).min
    stamp = {col: _ns(leads[col])[where] for col in LIFECYCLE_CHAIN}
    latest = np.full(t.size, missing, dtype=np.int64)
    latest_col = np.full(t.size, -1, dtype=np.int64)
    lifecycle = LIFECYCLE_CHAIN[1:]
    for i, col in enumerate(lifecycle):
        s = stamp[col]
        newer = (s != missing) & (s < t) & (s >= latest)
        latest = np.where(newer, s, latest)
        latest_col = np.where(newer, i, latest_col)
    ok_cols = [-1 if col is None else lifecycle.index(col) for col in READINESS_ELIGIBLE_LATEST]
    eligible = (stamp["created_at"] < t) & np.isin(latest_col, ok_cols)
    end = t + pd.Timedelta(days=horizon_days).value
    label = np.zeros(t.size, dtype=np.bool_)
    for col in ("sql_at", "requalified_at"):
        s = stamp[col]
        label |= (s != missing) & (s >= t) & (s < end)
    return np.asarray(eligible, dtype=np.bool_), label


def conversion_rates(leads: pd.DataFrame, data_end: pd.Timestamp, maturity_days: int = 180) -> ConversionRates:
    """Lead -> MQL, MQL -> SQL and SQL -> won among leads whose earlier stage is at least `maturity_days` old."""
    cutoff = _ns(pd.DatetimeIndex([data_end]))[0] - pd.Timedelta(days=maturity_days).value
    missing = np.iinfo(np.int64).min
    created, mql, sql, won = (_ns(leads[col]) for col in ("created_at", "mql_at", "sql_at", "won_at"))
    old = created <= cutoff
    old_mql = (mql != missing) & (mql <= cutoff)
    old_sql = (sql != missing) & (sql <= cutoff)

    def share(hit: BoolArray, base: BoolArray) -> float:
        return float(hit[base].mean()) if base.any() else float("nan")

    return ConversionRates(
        lead_to_mql=share(mql != missing, old),
        mql_to_sql=share(sql != missing, old_mql),
        sql_to_won=share(won != missing, old_sql),
        n_leads=int(old.sum()),
        n_mql=int(old_mql.sum()),
        n_sql=int(old_sql.sum()),
    )
