"""ICP-fit features from a lead's profile, with category vocabularies learned at training and reused at scoring."""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Mapping
from typing import Self

import numpy as np
import pandas as pd

from features.spec import DEFAULT_CONTRACT, ColumnSpec, LeadContract
from features.validation import normalize_category

# Company-size bands (upper bounds, employees) sales teams use for segmenting: SMB, mid-market, enterprise.
SIZE_BAND_EDGES: tuple[int, ...] = (10, 50, 200, 1000, 5000)
SIZE_BAND_LABELS: tuple[str, ...] = ("1-10", "11-50", "51-200", "201-1000", "1001-5000", "5000+")
SENIORITY_RANK: Mapping[str, float] = {
    "student": 0.0,
    "individual contributor": 1.0,
    "manager": 2.0,
    "director": 3.0,
    "vp": 4.0,
    "c-level": 5.0,
}
# Job-title keywords, checked in order, that reveal seniority when the seniority field itself is empty or wrong.
TITLE_RANKS: tuple[tuple[re.Pattern[str], float], ...] = (
    (re.compile(r"\b(chief|ceo|cto|cfo|coo|cio|cmo|founder|owner|president)\b"), 5.0),
    (re.compile(r"\b(vp|vice president|svp|evp)\b"), 4.0),
    (re.compile(r"\b(director|head of)\b"), 3.0),
    (re.compile(r"\b(manager|lead|supervisor)\b"), 2.0),
    (re.compile(r"\b(engineer|analyst|specialist|developer|consultant|associate|representative)\b"), 1.0),
    (re.compile(r"\b(student|intern)\b"), 0.0),
)
FREE_MAIL_DOMAINS: frozenset[str] = frozenset(
    {
        "gmail.com", "googlemail.com", "yahoo.com", "yahoo.co.uk", "hotmail.com", "outlook.com", "live.com",
        "msn.com", "aol.com", "icloud.com", "me.com", "mail.com", "gmx.com", "gmx.de", "web.de", "yandex.ru",
        "proton.me", "protonmail.com", "zoho.com", "qq.com", "163.com", "mail.ru",
    }
)  # fmt: skip
# Categories seen fewer times than this at training are pooled into "other" with unseen values, so that the model
# has examples of "other" and a typo at scoring time is scored like the rare values it resembles.
DEFAULT_MIN_CATEGORY_COUNT = 10
# (feature, value) results a fitted encoder keeps for scoring single leads before it starts afresh.
MAX_MEMO = 100_000
OTHER = "__other__"


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA or value is pd.NaT


def _number(value: object) -> float:
    """A present numeric value as float; anything else is a caller bug (validation guarantees numbers)."""
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    raise TypeError(f"expected a number, got {type(value).__name__}")


def size_band(employees: object) -> float:
    """Ordinal company-size band (0 = 1-10 employees ... 5 = 5000+), NaN when unknown."""
    if _missing(employees):
        return np.nan
    return float(bisect.bisect_left(SIZE_BAND_EDGES, _number(employees)))


def email_domain_type(domain: object) -> float:
    """1 for a free-mail domain, 0 for a business domain, NaN when unknown."""
    if _missing(domain) or not str(domain).strip():
        return np.nan
    return 1.0 if str(domain).strip().casefold().removeprefix("@") in FREE_MAIL_DOMAINS else 0.0


def title_rank(title: object) -> float:
    """Seniority rank read from a free-text job title, NaN when no keyword matches."""
    if _missing(title):
        return np.nan
    text = str(title).casefold()
    for pattern, rank in TITLE_RANKS:
        if pattern.search(text):
            return rank
    return np.nan


def seniority_rank(seniority: object) -> float:
    """Ordinal rank of the declared seniority, NaN when missing or not a known level."""
    if _missing(seniority):
        return np.nan
    return SENIORITY_RANK.get(normalize_category(str(seniority)), np.nan)


def log1p_amount(value: object) -> float:
    """log(1 + x) of a non-negative amount, NaN when missing; tames heavy-tailed sizes and revenues."""
    if _missing(value):
        return np.nan
    return float(np.log1p(_number(value)))


DERIVED: Mapping[str, tuple[str, Callable[[object], float]]] = {
    "employee_count_log": ("employee_count", log1p_amount),
    "size_band": ("employee_count", size_band),
    "annual_revenue_log": ("annual_revenue", log1p_amount),
    "seniority_rank": ("seniority", seniority_rank),
    "title_rank": ("job_title", title_rank),
    "email_free_domain": ("email_domain", email_domain_type),
}


class FitEncoder:
    """Turns lead profiles into numeric fit features; category codes are fixed at `fit` and reused at scoring.

    Categorical features are integer codes 0..K-1 for the values seen at least `min_category_count` times at
    training, K for everything else (rare, misspelt or new values), NaN for missing.
    """

    def __init__(
        self, *, contract: LeadContract = DEFAULT_CONTRACT, min_category_count: int = DEFAULT_MIN_CATEGORY_COUNT
    ) -> None:
        self.contract = contract
        self.min_category_count = min_category_count

    def _categorical_columns(self) -> list[ColumnSpec]:
        return [c for c in self.contract.leads_table.by_role("fit") if c.dtype == "category"]

    def _numeric_custom(self) -> list[ColumnSpec]:
        return [c for c in self.contract.custom_attributes if c.dtype in ("int", "float")]

    def fit(self, leads: pd.DataFrame) -> Self:
        """Learn the category vocabularies from the training leads."""
        self.__dict__.pop("_memo", None)  # results kept for the old vocabularies
        vocabularies: dict[str, tuple[str, ...]] = {}
        for col in self._categorical_columns():
            counts = leads[col.name].dropna().map(lambda v: normalize_category(str(v))).value_counts()
            kept = counts[counts >= self.min_category_count].index
            vocabularies[col.name] = tuple(sorted(str(v) for v in kept))
        self.vocabularies_ = vocabularies
        self.codes_ = {name: {v: float(i) for i, v in enumerate(vocab)} for name, vocab in vocabularies.items()}
        self.categorical_features_ = list(vocabularies)
        self.feature_names_ = [*vocabularies, *DERIVED, *(c.name for c in self._numeric_custom())]
        return self

    def _code(self, column: str, value: object) -> float:
        if _missing(value) or not str(value).strip():
            return np.nan
        codes = self.codes_[column]
        return codes.get(normalize_category(str(value)), float(len(codes)))

    def _scalar_functions(self) -> list[tuple[str, Callable[[object], float]]]:
        """(source column, value -> feature) for every output feature, in `feature_names_` order."""
        funcs: list[tuple[str, Callable[[object], float]]] = []
        for name in self.categorical_features_:
            funcs.append((name, lambda v, n=name: self._code(n, v)))  # type: ignore[misc]
        funcs += list(DERIVED.values())
        funcs += [(c.name, _as_float) for c in self._numeric_custom()]
        return funcs

    def transform(self, leads: pd.DataFrame) -> np.ndarray:
        """Fit features for every lead (rows in input order).

        Each feature applies the same scalar function as `transform_record`, once per distinct value.
        """
        out = np.empty((len(leads), len(self.feature_names_)), dtype=np.float64)
        for j, (source, func) in enumerate(self._scalar_functions()):
            values = leads[source].astype("object").where(leads[source].notna(), None).to_numpy()
            inverse, uniques = pd.factorize(values, use_na_sentinel=True)
            mapped = np.array([func(u) for u in uniques] + [func(None)], dtype=np.float64)
            out[:, j] = mapped[inverse]  # the sentinel -1 picks the trailing func(None)
        return out

    def transform_record(self, lead: Mapping[str, object]) -> np.ndarray:
        """Fit features of one lead given as a mapping of contract column names to values."""
        return np.array(self.record_values(lead), dtype=np.float64)

    def record_values(self, lead: Mapping[str, object]) -> list[float]:
        """`transform_record` as a list: each feature's function applied once per distinct value.

        Profiles repeat (the same industries, countries, titles and sizes come back lead after lead), so each
        (feature, value) result is kept; the functions are pure, so a kept result is the result.
        """
        memo = self.__dict__.get("_memo")
        if memo is None or len(memo) > MAX_MEMO:  # pickled models carry no memo; a long-running one is bounded
            memo = self.__dict__["_memo"] = {}
            self.__dict__["_functions"] = self._scalar_functions()
        values = []
        for j, (source, func) in enumerate(self.__dict__["_functions"]):
            value = lead.get(source)
            key = (j, value)
            try:
                result = memo[key]
            except KeyError:
                result = memo[key] = func(value)
            except TypeError:  # an unhashable value (a caller's bug, refused by the function itself)
                result = func(value)
            values.append(result)
        return values

    def __getstate__(self) -> dict[str, object]:
        """The encoder without its memo (rebuilt as leads are scored)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_memo", "_functions")}


def _as_float(value: object) -> float:
    return np.nan if _missing(value) else _number(value)
