"""Run a declarative pipeline locally: load, validate, then execute each flow in order.

* **Streaming table**: its flows append only what is new since the last update (exactly once,
  see :mod:`utils.pipelines.sources`); AUTO CDC flows MERGE (SCD 1/2, :mod:`.autocdc`).
* **Materialized view**: recomputed and overwritten every update.
* **Temporary view**: a session temp view, visible to the flows after it, not stored.

Tables are Delta tables in ``<storage>/tables/<schema>/<name>``, registered as
``<schema>.<name>``; unqualified names in the pipeline code resolve to that schema (the runner
``USE``s it while flows run, then restores the session's schema). A flow that fails (e.g. an
``expect_or_fail`` rule) stops; flows that depend on it are SKIPPED, independent ones still run;
the run then raises :class:`PipelineRunFailed`. Every state change goes to the event log.
"""

from __future__ import annotations

import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from utils.config import COURSE_TABLE_PROPERTIES, get_config
from utils.expectations import RuleMetric, apply_expectations
from utils.pipelines.autocdc import apply_auto_cdc
from utils.pipelines.eventlog import EventLog
from utils.pipelines.graph import PipelineGraph, build_graph
from utils.pipelines.lineage import draw_lineage
from utils.pipelines.registry import LocalRegistry, load_definitions
from utils.pipelines.sources import (
    METADATA_COLUMN,
    Checkpoint,
    delta_version,
    rewrite_streaming_reads,
    rows_added,
)
from utils.pipelines.spec import PipelineSpec, load_spec
from utils.tables import local_location

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

KIND_LABEL = {"st": "streaming table", "mv": "materialized view", "view": "temporary view",
              "sink": "sink", "external": "table"}
EVENT_LOG_TABLE = "event_log"


class PipelineRunFailed(RuntimeError):
    """At least one flow failed; ``run`` holds every flow's result."""

    def __init__(self, run: "PipelineRun") -> None:
        self.run = run
        failed = [f for f in run.flows if f.status == "FAILED"]
        lines = [f"Pipeline '{run.pipeline}': {len(failed)} flow(s) failed"]
        lines += [f"  {f.flow}: {f.error}" for f in failed]
        super().__init__("\n".join(lines))


@contextmanager
def spark_conf_set(spark: "SparkSession", values: dict[str, str]) -> Iterator[None]:
    """Set ``values`` on the session's conf for the ``with`` block, then restore what was there
    (keys that were unset are unset again)."""
    saved = {key: spark.conf.get(key, None) for key in values}
    for key, value in values.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


@dataclass
class FlowResult:
    flow: str
    dataset: str
    kind: str
    status: str = "QUEUED"
    num_output_rows: int | None = None
    dropped_records: int | None = None
    expectations: list[RuleMetric] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


@dataclass
class PipelineRun:
    """What one update did (dry runs: the validated graph, every flow QUEUED)."""

    pipeline: str
    update_id: str
    graph: PipelineGraph
    flows: list[FlowResult]
    dry_run: bool = False
    full_refresh: bool = False
    lineage_path: Path | None = None

    @property
    def status(self) -> str:
        if self.dry_run:
            return "VALIDATED"
        return "FAILED" if any(f.status == "FAILED" for f in self.flows) else "COMPLETED"

    def rows_by_dataset(self) -> dict[str, int | None]:
        rows: dict[str, int | None] = {}
        for f in self.flows:
            if f.num_output_rows is not None:
                rows[f.dataset] = (rows.get(f.dataset) or 0) + f.num_output_rows
        return rows

    def summary(self):
        """One row per flow, in execution order (a pandas DataFrame; no timings: stable)."""
        import pandas as pd

        return pd.DataFrame([{
            "flow": f.flow, "dataset": f.dataset, "type": KIND_LABEL.get(f.kind, f.kind),
            "status": f.status,
            "rows": f.num_output_rows if f.num_output_rows is not None else pd.NA,
            "dropped": f.dropped_records if f.dropped_records is not None else pd.NA,
        } for f in self.flows]).astype({"rows": "Int64", "dropped": "Int64"})


def progress_line(index: int, total: int, result: FlowResult, timings: bool = False,
                  name_width: int = 28) -> str:
    """``[ 3/12] silver_encounters   materialized view   1,234 rows  COMPLETED``."""
    rows = f"{result.num_output_rows:,} rows" if result.num_output_rows is not None else ""
    if result.dropped_records:
        rows += f" ({result.dropped_records:,} dropped)"
    width = len(str(total))
    line = (f"[{index:{width}d}/{total}] {result.dataset:<{name_width}} "
            f"{KIND_LABEL.get(result.kind, ''):<17} {rows:<22} {result.status}")
    if timings:
        line += f" in {result.seconds:.1f} s"
    if result.error:
        line += f": {result.error.splitlines()[0][:200]}"
    return line.rstrip()


def _readers(graph: PipelineGraph, dataset: str) -> list[str]:
    """Flows that read ``dataset``, through temporary views (a view's readers read it too)."""
    found: list[str] = []
    pending = [dataset]
    while pending:
        name = pending.pop()
        for flow in graph.flows.values():
            if name in flow.inputs and flow.name not in found:
                found.append(flow.name)
                if graph.datasets[flow.target].kind == "view":
                    pending.append(flow.target)
    return found


class Pipeline:
    """A pipeline folder (spec + sources) bound to a Spark session."""

    def __init__(self, spec: PipelineSpec, spark: "SparkSession",
                 configuration: dict[str, str] | None = None) -> None:
        self.spec = spec
        self.spark = spark
        #: Spark conf set while the sources load and the flows run (spec, then overrides)
        self.configuration = {**spec.configuration, **(configuration or {})}
        self.registry: LocalRegistry | None = None
        self.graph: PipelineGraph | None = None

    def _conf(self):
        """The pipeline's configuration, set on the session while it is loaded or run."""
        return spark_conf_set(self.spark, self.configuration)

    # ----- names and places ----------------------------------------------------------------
    def _schema_and_table(self, key: str) -> tuple[str, str]:
        parts = key.split(".")
        return (parts[0], parts[1]) if len(parts) == 2 else (self.spec.schema, parts[-1])

    def table_name(self, key: str) -> str:
        """SQL name of a dataset: ``<schema>.<table>``."""
        schema, table = self._schema_and_table(key)
        return f"{schema}.{table}"

    def table_path(self, key: str) -> Path:
        return self.spec.table_path(*self._schema_and_table(key))

    def _register(self, key: str) -> None:
        schema, table = self._schema_and_table(key)
        self._point(schema, table, self.table_path(key))

    def _point(self, schema: str, table: str, path: Path) -> None:
        """(Re)register ``schema.table`` at ``path``; dropping first re-points a name that an
        earlier pipeline storage (another data root, same session) registered. Dropping a table
        with a LOCATION keeps its files (measured on Sail)."""
        self.spark.sql(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        self.spark.sql(f"DROP TABLE IF EXISTS {schema}.{table}")
        self.spark.sql(f"CREATE TABLE {schema}.{table} USING delta LOCATION '{path}'")

    def register_tables(self) -> list[str]:
        """Register the pipeline's existing tables and its event log in this session."""
        from utils.tables import _registered_locations, is_delta_table

        self.spark.sql(f"CREATE SCHEMA IF NOT EXISTS {self.spec.schema}")
        # One listing per schema says what this session already registers where: a name
        # already at its folder is left as is (re-pointing it would give the same catalog).
        listings: dict[str, dict | None] = {}

        def point(schema: str, table: str, path: Path) -> None:
            if schema not in listings:
                self.spark.sql(f"CREATE SCHEMA IF NOT EXISTS {schema}")
                listings[schema] = _registered_locations(self.spark, schema)
            location = (listings[schema] or {}).get(table.lower())
            if (isinstance(location, str) and location.rstrip("/") == str(path).rstrip("/")
                    and is_delta_table(path)):
                return
            self._point(schema, table, path)

        names = []
        tables_root = self.spec.storage / "tables"
        if tables_root.is_dir():
            for schema_dir in sorted(tables_root.iterdir()):
                for table_dir in sorted(schema_dir.iterdir()):
                    if is_delta_table(table_dir):
                        point(schema_dir.name, table_dir.name, table_dir)
                        names.append(f"{schema_dir.name}.{table_dir.name}")
        if is_delta_table(self.spec.event_log_path):
            point(self.spec.schema, EVENT_LOG_TABLE, self.spec.event_log_path)
        return names

    @property
    def event_log_name(self) -> str:
        return f"{self.spec.schema}.{EVENT_LOG_TABLE}"

    @property
    def lineage_path(self) -> Path:
        return get_config().reports_dir / "pipelines" / f"{self.spec.name}_lineage.png"

    # ----- loading ---------------------------------------------------------------------------
    def load(self) -> PipelineGraph:
        """Run the source files, resolve every flow's inputs and validate the graph."""
        with self._conf():
            self.registry = load_definitions(self.spec.source_files(), self.spark,
                                             self.spec.root)
            self.register_tables()
            with self._in_schema():
                self.graph = build_graph(self.registry, self.spark, self.spec.schema,
                                         table_exists=self._table_exists)
        return self.graph

    def _table_exists(self, key: str) -> bool:
        try:
            return bool(self.spark.catalog.tableExists(key))
        except Exception:  # noqa: BLE001 - an unparsable name does not exist
            return False

    class _SchemaGuard:
        def __init__(self, pipeline: "Pipeline") -> None:
            self.pipeline = pipeline
            self.previous = "default"

        def __enter__(self) -> None:
            spark = self.pipeline.spark
            self.previous = spark.catalog.currentDatabase()
            spark.sql(f"CREATE SCHEMA IF NOT EXISTS {self.pipeline.spec.schema}")
            spark.sql(f"USE SCHEMA {self.pipeline.spec.schema}")

        def __exit__(self, *exc: object) -> None:
            self.pipeline.spark.sql(f"USE SCHEMA {self.previous}")

    def _in_schema(self) -> "_SchemaGuard":
        return Pipeline._SchemaGuard(self)

    # ----- running ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every table, checkpoint and AUTO CDC state (a full refresh); keep the log."""
        if self.graph is not None:
            for key, node in self.graph.datasets.items():
                if node.kind in ("st", "mv"):
                    self.spark.sql(f"DROP TABLE IF EXISTS {self.table_name(key)}")
        for folder in (self.spec.storage / "tables", self.spec.storage / "checkpoints",
                       self.spec.storage / "system" / "auto_cdc"):
            shutil.rmtree(folder, ignore_errors=True)

    def run(self, full_refresh: bool = False, dry_run: bool = False,
            progress: Callable[[str], None] | None = None, timings: bool = False,
            raise_on_failure: bool = True, lineage: bool = True) -> PipelineRun:
        graph = self.graph or self.load()
        update_id = str(uuid.uuid4())
        results = [FlowResult(name, graph.flows[name].target,
                              graph.datasets[graph.flows[name].target].kind)
                   for name in graph.order]
        run = PipelineRun(self.spec.name, update_id, graph, results, dry_run, full_refresh)
        if dry_run:
            return run
        if full_refresh:
            self.reset()
        log = EventLog(self.spec.name, update_id)
        log.update("CREATED", f"Update {update_id} started"
                   + (" (full refresh)" if full_refresh else ""))
        for result in results:
            log.flow(result.flow, result.dataset, "QUEUED", f"Flow '{result.flow}' is QUEUED.")
        failed_datasets: set[str] = set()
        pending_view_commits: list[tuple[str, Checkpoint, int, dict]] = []
        try:
            with self._conf(), self._in_schema():
                for index, result in enumerate(results, 1):
                    flow = graph.flows[result.flow]
                    blocked = [i for i in flow.inputs if i in failed_datasets]
                    if blocked:
                        result.status = "SKIPPED"
                        result.error = f"upstream dataset {blocked[0]} failed"
                        log.flow(result.flow, result.dataset, "SKIPPED",
                                 f"Flow '{result.flow}' SKIPPED: {result.error}.")
                        failed_datasets.add(flow.target)
                    else:
                        log.flow(result.flow, result.dataset, "RUNNING",
                                 f"Flow '{result.flow}' is RUNNING.")
                        started = time.perf_counter()
                        try:
                            self._run_flow(flow, result, pending_view_commits)
                            result.status = "COMPLETED"
                            log.flow(result.flow, result.dataset, "COMPLETED",
                                     f"Flow '{result.flow}' has COMPLETED.",
                                     rows=result.num_output_rows, dropped=result.dropped_records,
                                     metrics=result.expectations if flow.expectations else None)
                        except Exception as err:  # noqa: BLE001 - one flow fails, others go on
                            result.status = "FAILED"
                            result.error = f"{type(err).__name__}: {err}"
                            failed_datasets.add(flow.target)
                            log.flow(result.flow, result.dataset, "FAILED",
                                     f"Flow '{result.flow}' has FAILED.", error=result.error,
                                     metrics=result.expectations or None)
                        result.seconds = time.perf_counter() - started
                    if progress:
                        progress(progress_line(index, len(results), result, timings,
                                               max(len(r.dataset) for r in results)))
            # A streaming view's batch is committed once every flow reading it completed:
            # otherwise its next update must offer the same rows again.
            status = {r.flow: r.status for r in results}
            for view, checkpoint, batch_id, payload in pending_view_commits:
                if all(status.get(name) == "COMPLETED" for name in _readers(graph, view)):
                    checkpoint.write_commit(batch_id, payload)
        finally:
            log.update(run.status, f"Update {update_id} is {run.status}.",
                       error=None if run.status == "COMPLETED" else "; ".join(
                           f"{f.flow}: {f.error}" for f in results if f.status == "FAILED"))
            log.write(self.spark, self.spec.event_log_path)
            self.register_tables()
        if lineage:
            run.lineage_path = draw_lineage(graph, self.lineage_path, run.rows_by_dataset(),
                                            title=f"pipeline {self.spec.name}")
        if raise_on_failure and run.status == "FAILED":
            raise PipelineRunFailed(run)
        return run

    def _resolve_table(self, name: str) -> tuple[str, Path | None]:
        from utils.pipelines.graph import _Resolver

        key = _Resolver(self.spec.schema, []).key(name)
        node = self.graph.datasets.get(key) if self.graph else None
        if node is not None and node.kind in ("st", "mv"):
            return key, self.table_path(key)
        if node is not None and node.kind == "view":
            return key, None
        return key, self._external_location(name)

    def _external_location(self, name: str) -> Path | None:
        for row in self.spark.sql(f"DESCRIBE TABLE EXTENDED {name}").collect():
            if str(row[0]).strip().lower() == "location" and row[1]:
                return Path(local_location(str(row[1])))
        return None

    def _write_options(self, output: object) -> dict[str, str]:
        options = dict(COURSE_TABLE_PROPERTIES)
        options.update(getattr(output, "table_properties", None) or {})
        return options

    def _run_flow(self, flow, result: FlowResult, pending_view_commits: list) -> None:
        """Run one flow with its own ``spark_conf`` set on the session (restored afterwards)."""
        with spark_conf_set(self.spark, getattr(flow.definition, "spark_conf", None) or {}):
            self._run_flow_with_conf(flow, result, pending_view_commits)

    def _run_flow_with_conf(self, flow, result: FlowResult, pending_view_commits: list) -> None:
        dataset = self.graph.datasets[flow.target]
        path = self.table_path(flow.target) if dataset.kind in ("st", "mv") else None
        if flow.kind == "auto_cdc":
            self._run_auto_cdc(flow, result, path)
            return
        df = flow.definition.func()
        checkpoint = Checkpoint(self.spec.checkpoint_dir(flow.name))
        batch_id, batch = None, None
        if flow.streaming:
            pending = checkpoint.pending()
            replan, replan_id = None, None
            if pending is not None:   # the previous update stopped inside this flow
                pending_id, payload = pending
                before = payload.get("target_version_before")
                now = delta_version(path) if path is not None else None
                if now is not None and now > (-1 if before is None else before):
                    checkpoint.write_commit(pending_id, payload)   # the write had happened
                else:   # it had not: process exactly that batch again, under its id
                    replan, replan_id = payload["sources"], pending_id
            df, batch = rewrite_streaming_reads(df, self.spark, checkpoint,
                                                self._resolve_table, replan)
            batch_id = replan_id if replan_id is not None else checkpoint.next_batch_id()
        if METADATA_COLUMN in df.columns:
            df = df.drop(METADATA_COLUMN)
        if dataset.kind == "view" and batch is None:
            df = self._stage_view(df, flow.target)
        rules = flow.expectations
        checked = apply_expectations(df, rules) if rules else None
        result.expectations = checked.metrics if checked else []
        valid = checked.valid if checked else df
        total = checked.total_rows if checked else None

        if dataset.kind == "view":   # not materialized: no row count, only rule metrics
            valid.createOrReplaceTempView(flow.target.split(".")[-1])
            if batch is not None:
                pending_view_commits.append((flow.target, checkpoint, batch_id,
                                             {"sources": batch.sources}))
            return

        before = delta_version(path)
        if dataset.kind == "st":
            checkpoint.write_offsets(batch_id, {"sources": batch.sources,
                                                "target_version_before": before})
            writer = valid.write.format("delta").mode("append")
        else:
            writer = valid.write.format("delta").mode("overwrite") \
                .option("overwriteSchema", "true")
        for key, value in self._write_options(dataset.output).items():
            writer = writer.option(key, value)
        partition_cols = getattr(dataset.output, "partition_cols", None)
        if partition_cols:
            writer = writer.partitionBy(*partition_cols)
        writer.save(str(path))
        after = delta_version(path)
        if dataset.kind == "st":
            checkpoint.write_commit(batch_id, {"sources": batch.sources,
                                               "target_version_before": before,
                                               "target_version_after": after})
            rows = rows_added(path, before, after)
        else:
            rows = rows_added(path, after - 1, after)
        if rows is None:
            rows = valid.count()
        result.num_output_rows = rows
        if total is not None:
            result.dropped_records = total - rows
        self._register(flow.target)

    def view_stage_path(self, key: str) -> Path:
        """Where a (batch) temporary view's rows are staged during an update."""
        return self.spec.storage / "system" / "views" / key.replace(".", "__")

    def _stage_view(self, df, key: str):
        """Compute a batch temporary view once: write it to a scratch Delta table and read it back.

        A view is read by its expectations (one aggregation) and by every flow reading it
        (a silver view: its materialized view and ``silver_diagnoses``). Sail's ``cache()`` is
        a no-op, so each of those reads would re-run the whole query (parsing UDFs, dedupe
        window, reference joins); staged, they read the same stored rows. The rows are the
        query's rows: the view's meaning does not change. A query Delta cannot store (e.g. a
        column of type void) is used unstaged, as before.
        """
        path = self.view_stage_path(key)
        try:
            (df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
             .save(str(path)))
        except Exception:  # noqa: BLE001 - not storable: evaluate the view lazily instead
            return df
        return self.spark.read.format("delta").load(str(path))

    def _run_auto_cdc(self, flow, result: FlowResult, path: Path) -> None:
        cdc = flow.definition
        checkpoint = Checkpoint(self.spec.checkpoint_dir(flow.name))
        replan = None
        pending = checkpoint.pending()
        if pending is not None:  # MERGE is idempotent: simply re-apply the same events
            replan = pending[1]["sources"]
        changes, batch = rewrite_streaming_reads(self.spark.readStream.table(cdc.source),
                                                 self.spark, checkpoint, self._resolve_table,
                                                 replan)
        batch_id = checkpoint.next_batch_id() if pending is None else pending[0]
        checkpoint.write_offsets(batch_id, {"sources": batch.sources})
        outcome = apply_auto_cdc(self.spark, cdc, changes, self.table_name(flow.target), path,
                                 self.spec.auto_cdc_state_path(flow.target.replace(".", "__")),
                                 batch_id, self._write_options(self.graph.datasets[
                                     flow.target].output))
        checkpoint.write_commit(batch_id, {"sources": batch.sources,
                                           "events": outcome.events})
        result.num_output_rows = outcome.upserted


def load_pipeline(path: str | Path, spark: "SparkSession | None" = None,
                  configuration: dict[str, str] | None = None) -> Pipeline:
    """The pipeline in folder ``path`` (with its ``pipeline.yml``), loaded and validated.

    ``configuration`` adds to (or overrides) the spec's Spark conf for this pipeline.
    """
    if spark is None:
        from utils.session import get_spark

        spark = get_spark()
    pipeline = Pipeline(load_spec(path), spark, configuration)
    pipeline.load()
    return pipeline


def register_pipeline_tables(path: str | Path, spark: "SparkSession") -> list[str]:
    """Register the existing tables (and event log) of the pipeline in folder ``path`` in this
    session, without loading its sources: what a new notebook needs to query them."""
    return Pipeline(load_spec(path), spark).register_tables()


def run_pipeline(path: str | Path, spark: "SparkSession | None" = None,
                 full_refresh: bool = False, dry_run: bool = False,
                 progress: Callable[[str], None] | None = None, timings: bool = False,
                 raise_on_failure: bool = True, lineage: bool = True,
                 configuration: dict[str, str] | None = None) -> PipelineRun:
    """Load, validate and run (or only validate, ``dry_run``) the pipeline in ``path``."""
    pipeline = load_pipeline(path, spark, configuration)
    return pipeline.run(full_refresh=full_refresh, dry_run=dry_run, progress=progress,
                        timings=timings, raise_on_failure=raise_on_failure, lineage=lineage)
