"""The pipeline event log: one Delta table per pipeline, in the shape of Databricks' event log.

Databricks' event log has ``id``, ``sequence``, ``origin`` (pipeline, update, flow, dataset),
``timestamp``, ``message``, ``level``, ``event_type``, ``details`` (a JSON string:
``{"flow_progress": {"status": ..., "metrics": {"num_output_rows": ...},
"data_quality": {"dropped_records": ..., "expectations": [...]}}}``) and ``error``. Ours has
the same columns, plus the most-queried parts of ``details`` as typed columns so lessons can
query them without JSON functions: ``flow_name``, ``dataset``, ``status``, ``num_output_rows``,
``dropped_records`` and ``expectations`` (rule, dataset, passed/failed records).

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
    "timestamp TIMESTAMP, message STRING, level STRING, event_type STRING, details STRING, "
    "error STRING, update_id STRING, flow_name STRING, dataset STRING, status STRING, "
    "num_output_rows BIGINT, dropped_records BIGINT, "
    "expectations ARRAY<STRUCT<name: STRING, dataset: STRING, action: STRING, "
    "passed_records: BIGINT, failed_records: BIGINT>>"
)


@dataclass
class EventLog:
    """Events of one update, buffered and appended to the Delta event log in one commit."""

    pipeline: str
    update_id: str
    events: list[tuple] = field(default_factory=list)

    def _add(self, event_type: str, message: str, level: str = "INFO", flow: str | None = None,
             dataset: str | None = None, status: str | None = None, details: dict | None = None,
             error: str | None = None, rows: int | None = None, dropped: int | None = None,
             expectations: list[tuple] | None = None) -> None:
        origin = (self.pipeline, self.update_id, flow, dataset)
        self.events.append((
            str(uuid.uuid4()), len(self.events) + 1, origin, datetime.now(timezone.utc),
            message, level, event_type, json.dumps(details or {}, sort_keys=True), error,
            self.update_id, flow, dataset, status, rows, dropped, expectations,
        ))

    def update(self, state: str, message: str, error: str | None = None) -> None:
        event_type = "create_update" if state == "CREATED" else "update_progress"
        self._add(event_type, message, "ERROR" if error else "INFO", status=state,
                  details={"update_progress": {"state": state}}, error=error)

    def flow(self, flow: str, dataset: str, status: str, message: str, rows: int | None = None,
             dropped: int | None = None, metrics: list | None = None,
             error: str | None = None) -> None:
        expectations = None
        details: dict[str, Any] = {"flow_progress": {"status": status}}
        if rows is not None:
            details["flow_progress"]["metrics"] = {"num_output_rows": rows}
        if metrics is not None:
            expectations = [(m.rule, dataset, m.action, m.passed, m.failed) for m in metrics]
            quality: dict[str, Any] = {
                "expectations": [{"name": m.rule, "dataset": dataset, "passed_records": m.passed,
                                  "failed_records": m.failed} for m in metrics]}
            if dropped is not None:   # unknown for a view: it writes nothing to count
                quality["dropped_records"] = dropped
            details["flow_progress"]["data_quality"] = quality
        level = "ERROR" if status == "FAILED" else ("WARN" if status == "SKIPPED" else "INFO")
        self._add("flow_progress", message, level, flow, dataset, status, details, error, rows,
                  dropped, expectations)

    def write(self, spark: "SparkSession", path: Path) -> None:
        """Append this update's events to the event log Delta table at ``path``."""
        if not self.events:
            return
        df = spark.createDataFrame(self.events, EVENT_LOG_SCHEMA)
        writer = df.write.format("delta").mode("append")
        for key, value in COURSE_TABLE_PROPERTIES.items():
            writer = writer.option(key, value)
        writer.save(str(path))
