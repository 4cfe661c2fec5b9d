"""The small code tables the generator draws from and silver validates against.

Each table is a CSV file next to this module (sources in ``README.md``). They are subsets of
the real code systems, enough for a course: a code outside the table is "unknown" for silver.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from importlib.abc import Traversable

import pandas as pd

CODE_TABLES: tuple[str, ...] = ("icd10cm", "loinc", "rxnorm", "cpt")


def code_table_path(name: str) -> Traversable:
    """The code table CSV (``icd10cm``, ``loinc``, ``rxnorm`` or ``cpt``), as package data: a
    file here, a member of the zip the course package is shipped as to a Spark cluster."""
    if name not in CODE_TABLES:
        raise ValueError(f"Unknown code table {name!r}: expected one of {', '.join(CODE_TABLES)}")
    return resources.files(__package__).joinpath(f"{name}.csv")


@lru_cache(maxsize=None)
def _load(name: str) -> pd.DataFrame:
    # Codes stay strings ("I10", "99213", "860975"): never let pandas turn them into numbers.
    string_columns = {"code": str, "description": str, "name": str, "chronic_condition": str,
                      "unit": str, "dose_unit": str, "frequency": str, "indication": str,
                      "code_type": str}
    with code_table_path(name).open("rb") as handle:
        return pd.read_csv(handle, dtype=string_columns, keep_default_na=False,
                           na_values={"chronic_condition": [""]})


def load_code_table(name: str) -> pd.DataFrame:
    """A code table as a DataFrame (a fresh copy: callers may modify it).

    Columns: icd10cm ``code, description, chronic_condition`` (NaN when not chronic);
    loinc ``code, name, unit, ref_low, ref_high``; rxnorm ``code, name, dose_value, dose_unit,
    frequency, indication``; cpt ``code, description, code_type, base_charge``.
    """
    return _load(name).copy()
