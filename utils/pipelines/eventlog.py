"""The pipeline event log: one Delta table per pipeline, with the columns of Databricks' event log.

Databricks' event log has ``id``, ``sequence``, ``origin`` (a struct: ``pipeline_name``,
``update_id``, ``flow_name``, ``dataset_name``...), ``timestamp``, ``message``, ``level``,
``maturity_level``, ``error``, ``details`` and ``event_type``. ``details`` is a JSON string
whose shape depends on ``event_type``: ``{"flow_progress": {"status": ..., "metrics":
{"num_output_rows": ...}, "data_quality": {"dropped_records": ..., "expectations": [{"name",
"dataset", "passed_records", "failed_records"}]}}}`` for a flow, ``{"update_progress":
{"state": ...}}`` for the run. This log has exactly those columns, so a query written against
it (``origin.flow_name``, ``get_json_object(details, '$.flow_progress.status')``) runs
unchanged on Databricks.

``event_type`` is ``create_update`` / ``update_progress`` (the run) or ``flow_progress`` (one
flow: QUEUED, RUNNING, COMPLETED, FAILED, SKIPPED).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from utils.config import COURSE_TABLE_PROPERTIES

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

EVENT_LOG_SCHEMA = (
    "id STRING, sequence BIGINT, "
    "origin STRUCT<pipeline_name: STRING, update_id: STRING, flow_name: STRING, "
    "dataset_name: STRING>, "
    "timestamp TIMESTAMP, message STRING, level STRING, maturity_level STRING, error STRING, "
    "details STRING, event_type STRING"
)


@dataclass
class EventLog:
    """Events of one update, buffered and appended to the Delta event log in one commit."""

    pipeline: str
    update_id: str
    events: list[tuple] = field(default_factory=list)

    def _add(self, event_type: str, message: str, level: str = "INFO", flow: str | None = None,
             dataset: str | None = None, details: dict | None = None,
             error: str | None = None) -> None:
        origin = (self.pipeline, self.update_id, flow, dataset)
        self.events.append((
            str(uuid.uuid4()), len(self.events) + 1, origin, datetime.now(timezone.utc),
            message, level, "STABLE", error, json.dumps(details or {}, sort_keys=True), event_type,
        ))

    def update(self, state: str, message: str, error: str | None = None) -> None:
        event_type = "create_update" if state == "CREATED" else "update_progress"
        self._add(event_type, message, "ERROR" if error else "INFO",
                  details={"update_progress": {"state": state}}, error=error)

    def flow(self, flow: str, dataset: str, status: str, message: str, rows: int | None = None,
             dropped: int | None = None, metrics: list | None = None,
             error: str | None = None) -> None:
        details: dict[str, Any] = {"flow_progress": {"status": status}}
        if rows is not None:
            details["flow_progress"]["metrics"] = {"num_output_rows": rows}
        if metrics is not None:
            quality: dict[str, Any] = {
                "expectations": [{"name": m.rule, "dataset": dataset, "passed_records": m.passed,
                                  "failed_records": m.failed} for m in metrics]}
            if dropped is not None:   # unknown for a view: it writes nothing to count
                quality["dropped_records"] = dropped
            details["flow_progress"]["data_quality"] = quality
        level = "ERROR" if status == "FAILED" else ("WARN" if status == "SKIPPED" else "INFO")
        self._add("flow_progress", message, level, flow, dataset, details, error)

    def write(self, spark: "SparkSession", path: Path) -> None:
        """Append this update's events to the event log Delta table at ``path``.

        A log written by an older version of the course, with other columns, is replaced
        (appending to it would fail): the log describes updates, not data.
        """
        if not self.events:
            return
        df = spark.createDataFrame(self.events, EVENT_LOG_SCHEMA)
        mode = "append" if _stored_columns(path) in (None, list(df.columns)) else "overwrite"
        writer = df.write.format("delta").mode(mode)
        if mode == "overwrite":
            writer = writer.option("overwriteSchema", "true")
        for key, value in COURSE_TABLE_PROPERTIES.items():
            writer = writer.option(key, value)
        writer.save(str(path))


def _stored_columns(path: Path) -> list[str] | None:
    """The columns of the Delta table at ``path`` (read with delta-rs), or None if there is none."""
    from deltalake import DeltaTable

    from utils.tables import is_delta_table

    if not is_delta_table(path):
        return None
    return [f.name for f in DeltaTable(str(path)).schema().fields]
