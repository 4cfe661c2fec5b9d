"""Shared helpers of the medallion course.

Notebooks import what they need from here (``from utils import get_spark, get_config``).
Importing this package is cheap and changes nothing: PySpark is loaded only when a session or
a DataFrame helper is actually used.
"""

from utils.config import CourseConfig, get_config, on_databricks
from utils.session import EngineError, get_spark, selected_engine, stop_spark
from utils.tables import (
    create_table_if_missing,
    existing_tables,
    register_course_tables,
    write_table,
)

__all__ = [
    "CourseConfig",
    "EngineError",
    "create_table_if_missing",
    "existing_tables",
    "get_config",
    "get_spark",
    "on_databricks",
    "register_course_tables",
    "selected_engine",
    "stop_spark",
    "write_table",
]
