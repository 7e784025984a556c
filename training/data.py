"""Read and write the lead tables on disk (Parquet folders or files, CSV), never leaving half-written output."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from features.spec import DEFAULT_CONTRACT, LeadContract
from features.validation import validate_activities, validate_leads

log = logging.getLogger(__name__)


def read_table(path: Path) -> pd.DataFrame:
    """A table from a folder of Parquet parts, a .parquet file or a .csv file."""
    if path.is_dir():
        parts = sorted(path.glob("*.parquet"))
        if not parts:
            raise FileNotFoundError(f"{path} holds no .parquet files")
        return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path)
    raise ValueError(f"{path}: expected a folder of Parquet parts, a .parquet file or a .csv file")


def _locate(data_dir: Path, name: str) -> Path:
    for candidate in (data_dir / name, data_dir / f"{name}.parquet", data_dir / f"{name}.csv"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"no {name} table in {data_dir} (expected {name}/, {name}.parquet or {name}.csv)")


def load_tables(data_dir: Path, contract: LeadContract = DEFAULT_CONTRACT) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validated leads and activities from `data_dir`; raises ContractError on any contract violation."""
    leads = validate_leads(read_table(_locate(data_dir, "leads")), contract)
    activities = validate_activities(read_table(_locate(data_dir, "activities")), leads, contract)
    log.info("loaded %d leads and %d activities from %s", len(leads), len(activities), data_dir)
    return leads, activities


def write_parquet_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write a Parquet file so that readers see either the old file or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_dir_atomic(staging: Path, target: Path) -> None:
    """Swap a fully written staging folder into place (the old target is removed only after the new one is in)."""
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    if old.exists():
        shutil.rmtree(old)
