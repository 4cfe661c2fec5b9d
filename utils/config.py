"""Where everything lives: one place for paths and table names.

Notebooks never build a path by hand. They ask the config for the landing zone, a table's
Delta location or its name. Locally the data root is ``data/`` in the repository (override
with ``COURSE_DATA_DIR``). On Databricks the landing zone is a Unity Catalog volume and the
tables are managed tables named ``<catalog>.<layer>.<table>``; the catalog is configurable
with ``COURSE_CATALOG``. Both map to the same short SQL names (``silver.patients``) because
the session factory runs ``USE CATALOG`` on Databricks and registers the tables locally.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

LAYERS: tuple[str, ...] = ("bronze", "silver", "gold")

#: Table properties every course table is created with. Sail cannot time travel to a version
#: older than the latest checkpoint (engine notes), so checkpoints are spaced out; deletion
#: vectors stay off because delta-rs (our history/optimize/vacuum tool) cannot read them.
COURSE_TABLE_PROPERTIES: dict[str, str] = {
    "delta.checkpointInterval": "100",
    "delta.enableDeletionVectors": "false",
}

REPO_ROOT = Path(__file__).resolve().parent.parent


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
    catalog: str = "medallion_course"
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


def get_config() -> CourseConfig:
    """Read the configuration from the environment (no side effects, cheap to call)."""
    data_dir = os.environ.get("COURSE_DATA_DIR")
    root = Path(data_dir).expanduser().resolve() if data_dir else REPO_ROOT / "data"
    return CourseConfig(
        data_root=root,
        databricks=on_databricks(),
        catalog=os.environ.get("COURSE_CATALOG", "medallion_course"),
        volume_schema=os.environ.get("COURSE_VOLUME_SCHEMA", "landing"),
        volume=os.environ.get("COURSE_VOLUME", "files"),
    )
