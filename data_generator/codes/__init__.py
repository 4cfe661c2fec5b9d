"""The small code tables the generator draws from and silver validates against.

Each table is a CSV file next to this module (sources in ``README.md``). They are subsets of
the real code systems, enough for a course: a code outside the table is "unknown" for silver.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd

CODES_DIR = Path(__file__).resolve().parent
CODE_TABLES: tuple[str, ...] = ("icd10cm", "loinc", "rxnorm", "cpt")


def code_table_path(name: str) -> Path:
    """Path of a code table CSV (``icd10cm``, ``loinc``, ``rxnorm`` or ``cpt``)."""
    if name not in CODE_TABLES:
        raise ValueError(f"Unknown code table {name!r}: expected one of {', '.join(CODE_TABLES)}")
    return CODES_DIR / f"{name}.csv"


@lru_cache(maxsize=None)
def _load(name: str) -> pd.DataFrame:
    # Codes stay strings ("I10", "99213", "860975"): never let pandas turn them into numbers.
    string_columns = {"code": str, "description": str, "name": str, "chronic_condition": str,
                      "unit": str, "dose_unit": str, "frequency": str, "indication": str,
                      "code_type": str}
    return pd.read_csv(code_table_path(name), dtype=string_columns, keep_default_na=False,
                       na_values={"chronic_condition": [""]})


def load_code_table(name: str) -> pd.DataFrame:
    """A code table as a DataFrame (a fresh copy: callers may modify it).

    Columns: icd10cm ``code, description, chronic_condition`` (NaN when not chronic);
    loinc ``code, name, unit, ref_low, ref_high``; rxnorm ``code, name, dose_value, dose_unit,
    frequency, indication``; cpt ``code, description, code_type, base_charge``.
    """
    return _load(name).copy()
