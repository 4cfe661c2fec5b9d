"""Read the course's data contract (``contracts.yml``): the one place that lists every layer's
entities, columns, types, keys, accepted values and planted defect types."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any


@lru_cache(maxsize=1)
def load_contracts() -> dict[str, Any]:
    """The parsed contract (cached: it never changes while a process runs).

    Read as package data, not by file path: on a Spark cluster the course package reaches the
    workers as a zip (``utils.session.ship_course_package``), where no file path exists."""
    import yaml

    return yaml.safe_load(resources.files("utils").joinpath("contracts.yml").read_text(encoding="utf-8"))


def landing_sources() -> dict[str, dict[str, Any]]:
    """Landing sources by folder name (``ehr_encounters``, ``fhir_observations``, ...)."""
    return load_contracts()["landing"]


def accepted_values(field: str) -> list[str]:
    """Accepted values of a coded field (``encounter_class``, ``claim_status``, ...)."""
    return list(load_contracts()["accepted_values"][field])


def silver_columns(table: str) -> dict[str, dict[str, Any]]:
    """Columns of a silver table with their type, description and tests, in contract order."""
    return dict(load_contracts()["silver"][table].get("columns", {}))


def silver_schema_ddl(table: str) -> str:
    """``col type, ...`` DDL of a silver table, for explicit-schema creates and casts."""
    return ", ".join(f"{name} {spec['type']}" for name, spec in silver_columns(table).items())


def defect_types() -> dict[str, dict[str, str]]:
    """Planted defect types and how silver must catch each (quarantine, duplicate, ...)."""
    return dict(load_contracts()["defects"])
