"""Protecting PHI: a salted hash replaces direct identifiers as the join key.

Below silver's restricted patient table, no table holds a name, SSN, phone or street address.
Tables join on ``patient_key = sha2(salt || mrn, 256)``: stable (the same MRN always gives the
same key, so joins work across tables and runs) but not reversible without the salt. Without a
salt, a hash of a 7-digit MRN is reversed by hashing all 10 million candidates; the salt is what
makes it a pseudonym. Locally the salt comes from ``COURSE_PHI_SALT`` (a fixed teaching default);
on Databricks keep it in a secret scope and set the variable from ``dbutils.secrets``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import Column

DEFAULT_TEACHING_SALT = "medallion-course-teaching-salt"


def phi_salt() -> str:
    """The salt for identifier hashes (``COURSE_PHI_SALT`` or the teaching default)."""
    return os.environ.get("COURSE_PHI_SALT", DEFAULT_TEACHING_SALT)


def hash_identifier(column: "Column | str", salt: str | None = None) -> "Column":
    """sha2(salt || trimmed upper-case identifier, 256) as hex; NULL stays NULL."""
    from pyspark.sql import functions as F

    col = F.col(column) if isinstance(column, str) else column
    normalized = F.upper(F.trim(col))
    return F.when(normalized.isNull() | (normalized == ""), F.lit(None)).otherwise(
        F.sha2(F.concat(F.lit(salt if salt is not None else phi_salt()), normalized), 256))


def patient_key(mrn: "Column | str") -> "Column":
    """The course-wide patient join key derived from the MRN."""
    return hash_identifier(mrn)


def mask_phone(column: "Column | str") -> "Column":
    """Keep only the last two digits: ``***-***-**42`` (enough to confirm a callback)."""
    from pyspark.sql import functions as F

    col = F.col(column) if isinstance(column, str) else column
    digits = F.regexp_replace(col, r"\D", "")
    return F.when(F.length(digits) >= 2, F.concat(F.lit("***-***-**"), F.substring(digits, -2, 2)))
