"""Synthetic hospital data for the medallion course: a landing zone as source systems drop it.

Five sources deliver one batch folder per simulated day (``landing/<source>/<YYYY-MM-DD>/``):
EHR patient change records and encounters (CSV), FHIR Observation and MedicationRequest
resources (NDJSON), payer claim lines (CSV), plus reference data (CSV) on the first day.
Defects are planted at a documented rate and listed in ``landing/_manifest.json``.

    >>> from data_generator import generate
    >>> summary = generate("/tmp/landing", patients=500, days=30, seed=7)   # doctest: +SKIP
    >>> print(summary)                                                       # doctest: +SKIP
"""

from __future__ import annotations

import os
from datetime import date

from data_generator.generator import (
    GENERATOR_VERSION,
    REQUIRED_COLUMNS,
    SOURCE_DEFECTS,
    GenerationSummary,
    generate,
    load_manifest,
)
from data_generator.model import npi_is_valid

__version__ = GENERATOR_VERSION

#: The course dataset (``make data``): 3,000 patients over 60 days. Small enough that every
#: notebook runs in seconds on a laptop (a few tens of thousands of rows, 300 daily files),
#: long enough that 30-day readmissions can be followed for a month after discharge.
DEFAULT_PARAMS: dict = {
    "patients": 3_000,
    "days": 60,
    "seed": 42,
    "defect_rate": 0.02,
    "start_date": date(2025, 1, 1),
}


def generate_default(out_dir: str | os.PathLike | None = None,
                     progress: bool = False) -> GenerationSummary:
    """Generate the course dataset into ``out_dir`` (default: the configured landing zone)."""
    if out_dir is None:
        from utils.config import get_config

        out_dir = get_config().landing_dir
    return generate(out_dir, progress=progress, **DEFAULT_PARAMS)


__all__ = [
    "DEFAULT_PARAMS",
    "GenerationSummary",
    "REQUIRED_COLUMNS",
    "SOURCE_DEFECTS",
    "__version__",
    "generate",
    "generate_default",
    "load_manifest",
    "npi_is_valid",
]
