"""Where everything lives: one place for paths and table names.

Notebooks never build a path by hand. They ask the config for the landing zone, a table's
Delta location or its name. Locally the data root is ``data/`` in the repository (override
with ``COURSE_DATA_DIR``). On Databricks the landing zone is a Unity Catalog volume and the
tables are managed tables named ``<catalog>.<layer>.<table>``. The catalog is, in this order,
the notebook's ``catalog`` widget (the bundle's job passes its ``catalog`` parameter to every
notebook task as one), ``COURSE_CATALOG`` (serverless jobs cannot set environment variables, a
cluster can), then ``medallion_course``. Both map to the same short SQL names
(``silver.patients``) because the session factory runs ``USE CATALOG`` on Databricks and
registers the tables locally.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LAYERS: tuple[str, ...] = ("bronze", "silver", "gold")

#: Table properties every course table is created with. Sail cannot time travel to a version
#: older than the latest checkpoint (engine notes), so checkpoints are spaced out; deletion
#: vectors stay off because delta-rs (our history/optimize/vacuum tool) cannot read them.
COURSE_TABLE_PROPERTIES: dict[str, str] = {
    "delta.checkpointInterval": "100",
    "delta.enableDeletionVectors": "false",
}

REPO_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_CATALOG = "medallion_course"
#: The widget (job parameter) a Databricks notebook reads the catalog from.
CATALOG_WIDGET = "catalog"
# Unquoted in `USE CATALOG` and three-level names, so a plain identifier
_CATALOG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def on_databricks() -> bool:
    """True inside a Databricks runtime (notebook, job or pipeline)."""
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


@dataclass(frozen=True)
class CourseConfig:
    """Resolved locations for one run of the course.

    ``data_root`` holds ``landing/`` (what source systems drop), ``lakehouse/<layer>/<table>``
    (Delta tables) and ``reports/`` (PNG figures and benchmark reports).
    """

    data_root: Path
    databricks: bool = False
    catalog: str = DEFAULT_CATALOG
    volume_schema: str = "landing"
    volume: str = "files"
    layers: tuple[str, ...] = field(default=LAYERS)

    # ----- folders -------------------------------------------------------------------------
    @property
    def landing_dir(self) -> Path:
        """Landing zone root: ``<source>/<YYYY-MM-DD>/<file>`` below it."""
        if self.databricks:
            return Path(f"/Volumes/{self.catalog}/{self.volume_schema}/{self.volume}/landing")
        return self.data_root / "landing"

    @property
    def manifest_path(self) -> Path:
        """The generator's ground truth: files, row counts and planted defects."""
        return self.landing_dir / "_manifest.json"

    @property
    def lakehouse_dir(self) -> Path:
        return self.data_root / "lakehouse"

    @property
    def reports_dir(self) -> Path:
        """Figures and benchmark reports (``make run`` writes PNGs here)."""
        if self.databricks:
            return Path(f"/Volumes/{self.catalog}/{self.volume_schema}/{self.volume}/reports")
        return self.data_root / "reports"

    def scratch_path(self, name: str) -> Path:
        """A throw-away Delta location for demos (env check, Delta experiments), outside the
        course schemas so nothing downstream ever counts it."""
        if self.databricks:
            return Path(f"/Volumes/{self.catalog}/{self.volume_schema}/{self.volume}/scratch/{name}")
        return self.data_root / "scratch" / name

    def source_dir(self, source: str) -> Path:
        return self.landing_dir / source

    # ----- tables --------------------------------------------------------------------------
    def _check_layer(self, layer: str) -> None:
        if layer not in self.layers:
            raise ValueError(f"Unknown layer {layer!r}: expected one of {', '.join(self.layers)}")

    def table_name(self, layer: str, table: str) -> str:
        """SQL name of a course table: ``silver.patients`` (same text on every engine)."""
        self._check_layer(layer)
        return f"{layer}.{table}"

    def full_table_name(self, layer: str, table: str) -> str:
        """Fully qualified name: ``<catalog>.silver.patients`` on Databricks, else the short one."""
        if self.databricks:
            self._check_layer(layer)
            return f"{self.catalog}.{layer}.{table}"
        return self.table_name(layer, table)

    def table_path(self, layer: str, table: str) -> Path | None:
        """Delta location of a table; ``None`` on Databricks, where tables are managed by UC."""
        self._check_layer(layer)
        if self.databricks:
            return None
        return self.lakehouse_dir / layer / table


def _dbutils() -> Any | None:
    """The notebook's ``dbutils`` on Databricks, else ``None``.

    A notebook (interactive or a job's task) has it in its IPython user namespace; elsewhere on
    Databricks (a Python file of the job, a module imported before the notebook's globals exist)
    ``pyspark.dbutils`` builds one from the active session. Off Databricks this is always
    ``None``, even where something named ``dbutils`` exists (databricks-connect, a test).
    """
    if not on_databricks():
        return None
    ipython = sys.modules.get("IPython")  # never imported here: no IPython loaded, no notebook
    shell = ipython.get_ipython() if ipython is not None else None
    found = getattr(shell, "user_ns", {}).get("dbutils") if shell is not None else None
    if found is not None:
        return found
    try:
        from pyspark.dbutils import DBUtils  # Databricks' PySpark only
        from pyspark.sql import SparkSession
    except ImportError:
        return None
    session = SparkSession.getActiveSession()
    return DBUtils(session) if session is not None else None


def widget_value(name: str) -> str | None:
    """A notebook widget's value (a job or task parameter) on Databricks; ``None`` off
    Databricks, when the widget is not defined (a notebook run by hand) or when it is blank."""
    dbutils = _dbutils()
    if dbutils is None:
        return None
    try:
        value = dbutils.widgets.get(name)
    except Exception:  # InputWidgetNotDefined is a JVM/Py4J error class we cannot import
        return None
    value = (value or "").strip()
    return value or None


def resolve_catalog() -> str:
    """The course catalog: the ``catalog`` widget, else ``COURSE_CATALOG``, else the default.

    On Databricks a name that is not a plain identifier is refused here, with where it came
    from, rather than as a SQL parse error in ``USE CATALOG``; off Databricks (where the catalog
    names nothing) the value is taken as it is, as before.
    """
    for source, value in ((f"the notebook widget {CATALOG_WIDGET!r}", widget_value(CATALOG_WIDGET)),
                          ("COURSE_CATALOG", os.environ.get("COURSE_CATALOG", "").strip() or None)):
        if value is None:
            continue
        if on_databricks() and not _CATALOG_NAME.fullmatch(value):
            raise ValueError(
                f"Catalog {value!r} (from {source}) is not a plain identifier: use letters, "
                "digits and underscores, starting with a letter or underscore."
            )
        return value
    return DEFAULT_CATALOG


def get_config() -> CourseConfig:
    """Read the configuration from the environment (no side effects, cheap to call)."""
    data_dir = os.environ.get("COURSE_DATA_DIR")
    root = Path(data_dir).expanduser().resolve() if data_dir else REPO_ROOT / "data"
    return CourseConfig(
        data_root=root,
        databricks=on_databricks(),
        catalog=resolve_catalog(),
        volume_schema=os.environ.get("COURSE_VOLUME_SCHEMA", "landing"),
        volume=os.environ.get("COURSE_VOLUME", "files"),
    )
