"""Delta Lake table operations with one API on every engine the course runs on.

Databricks and JVM Delta (delta-spark) run Delta's maintenance commands as SQL: ``DESCRIBE
HISTORY``, ``DESCRIBE DETAIL``, ``OPTIMIZE ... ZORDER BY``, ``VACUUM``, ``RESTORE``, ``ALTER
TABLE ... DROP CONSTRAINT``. The local engine (Sail) reads and writes Delta but does not parse
those commands (see ``engine-notes.md``), so locally the same operations run through
``deltalake`` (delta-rs) on the table's folder. Both write the same transaction log, so Sail
reads what delta-rs did and keeps writing afterwards.

Every function takes a course table as ``(layer, table)`` (or one ``"layer.table"`` string)
and returns the same shape on both paths: a Spark DataFrame with the same columns, a dict or
a list. Which path runs is decided by :func:`uses_sql` (``utils.session.delta_sql_available``).

Demos work on scratch tables so they never change a real course table: the pseudo-layer
``"scratch"`` is the schema ``scratch`` -- locally at ``get_config().scratch_path(name)``,
outside the lakehouse layers (``register_course_tables`` never sees it), on Databricks a
managed table in the course catalog. :func:`write_scratch` writes one.
:func:`drop_scratch_table` deletes only scratch tables or ``demo_*`` tables.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from utils.config import COURSE_TABLE_PROPERTIES, CourseConfig, get_config
from utils.session import delta_sql_available
from utils.tables import is_delta_table, register_table

if TYPE_CHECKING:
    from deltalake import DeltaTable
    from pyspark.sql import DataFrame, SparkSession

#: Pseudo-layer of throw-away demo tables (``config.scratch_path``), and the prefix of demo
#: tables inside a course layer: the only tables :func:`drop_scratch_table` deletes.
SCRATCH = "scratch"
SCRATCH_PREFIX = "demo_"

#: Columns of :func:`history` (a subset of Databricks' ``DESCRIBE HISTORY``), newest first.
HISTORY_SCHEMA = ("version BIGINT, timestamp TIMESTAMP, operation STRING, "
                  "operationParameters MAP<STRING, STRING>, operationMetrics MAP<STRING, STRING>, "
                  "engineInfo STRING")
HISTORY_COLUMNS = ["version", "timestamp", "operation", "operationParameters",
                   "operationMetrics", "engineInfo"]

#: Keys of :func:`detail` (a subset of ``DESCRIBE DETAIL``; no location, it is an absolute path).
DETAIL_KEYS = ("format", "name", "partitionColumns", "numFiles", "sizeInBytes", "properties",
               "minReaderVersion", "minWriterVersion")

CDF_PROPERTY = "delta.enableChangeDataFeed"
CONSTRAINT_PREFIX = "delta.constraints."


# ----- addressing ------------------------------------------------------------------------------
def uses_sql() -> bool:
    """True when the engine runs Delta's SQL commands itself (Databricks, JVM delta-spark, a
    Spark Connect server with Delta); False on Sail, where delta-rs runs them."""
    return delta_sql_available()


def _split(layer: str, table: str | None) -> tuple[str, str]:
    """Accept ``("silver", "claims")`` or ``("silver.claims", None)``."""
    if table is None:
        if layer.count(".") != 1:
            raise ValueError(f"Expected 'layer.table' or (layer, table), got {layer!r}")
        layer, table = layer.split(".")
    return layer, table


def _config() -> CourseConfig:
    return get_config()


def table_name(layer: str, table: str | None = None) -> str:
    """``silver.claims`` for a course table, ``scratch.<name>`` for a scratch table."""
    layer, table = _split(layer, table)
    return f"{SCRATCH}.{table}" if layer == SCRATCH else _config().table_name(layer, table)


def _location(layer: str, table: str) -> Path | None:
    config = _config()
    if config.databricks:
        return None
    return config.scratch_path(table) if layer == SCRATCH else config.table_path(layer, table)


def _managed(layer: str) -> bool:
    """A Unity Catalog managed table (every table on Databricks): addressed by name, no path."""
    return _config().databricks


def table_path(layer: str, table: str | None = None) -> Path:
    """The Delta folder of a table (not for Databricks managed tables); a clear error if it
    holds no Delta table yet."""
    layer, table = _split(layer, table)
    path = _location(layer, table)
    if path is None:
        raise NotImplementedError("On Databricks tables are managed by Unity Catalog: no path.")
    if not is_delta_table(path):
        where = f"scratch/{table}" if layer == SCRATCH else f"lakehouse/{layer}/{table}"
        raise ValueError(f"{table_name(layer, table)} is not a Delta table yet "
                         f"(no commits under {where}/_delta_log).")
    return path


def _register(spark: SparkSession, layer: str, table: str) -> str:
    """Make the table resolvable by name in this (Sail) session; return the name."""
    if layer != SCRATCH:
        return register_table(spark, layer, table, _config())
    name = table_name(layer, table)
    location = str(table_path(layer, table)).replace("\\", "\\\\").replace("'", "\\'")
    spark.sql(f"CREATE SCHEMA IF NOT EXISTS {SCRATCH}")
    spark.sql(f"DROP TABLE IF EXISTS {name}")  # the folder may have been recreated elsewhere
    spark.sql(f"CREATE TABLE {name} USING delta LOCATION '{location}'")
    return name


def _delta_table(layer: str, table: str | None = None, version: int | None = None) -> DeltaTable:
    from deltalake import DeltaTable

    return DeltaTable(str(table_path(layer, table)), version=version)


def register_scratch_tables(spark: SparkSession) -> list[str]:
    """Register every scratch table in this session (a new notebook's catalog is empty on Sail);
    returns their names, sorted. Nothing to do on Databricks, where they are managed tables."""
    if _config().databricks:
        return []
    root = _config().scratch_path("_").parent
    found = sorted(p.name for p in root.iterdir() if is_delta_table(p)) if root.is_dir() else []
    return [_register(spark, SCRATCH, name) for name in found]


def _sql_ref(spark: SparkSession, layer: str, table: str) -> str:
    """How SQL names the table: its catalog name on Databricks, ``delta.`path``` on JVM Delta,
    the registered name on Sail (which does not resolve ``delta.`path```)."""
    if _managed(layer):
        return table_name(layer, table)
    if uses_sql():
        return "delta.`" + str(table_path(layer, table)).replace("`", "``") + "`"
    return _register(spark, layer, table)


def _sql_string(value: Any) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _to_spark(spark: SparkSession, table: Any) -> DataFrame:
    """A delta-rs Arrow result as a Spark DataFrame. delta-rs returns ``string_view`` /
    ``binary_view`` (and, for the change feed, ``uint64``) columns, which PySpark cannot
    convert: cast them to plain types first."""
    import pyarrow as pa

    table = pa.table(table)
    plain = {pa.string_view(): pa.string(), pa.binary_view(): pa.binary(),
             pa.uint64(): pa.int64(), pa.uint32(): pa.int64()}
    if any(f.type in plain for f in table.schema):
        table = table.cast(pa.schema([f.with_type(plain.get(f.type, f.type)) for f in table.schema]))
    return spark.createDataFrame(table)


def _utc(ts: datetime | str) -> datetime:
    """A timezone-aware UTC datetime from a datetime or an ISO string (naive means UTC)."""
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts.strip().replace("Z", "+00:00"))
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


# ----- the log, versions and history ------------------------------------------------------------
def log_files(layer: str, table: str | None = None) -> list[str]:
    """Commit files of the transaction log, in order (``_delta_log/00000000000000000000.json``...)."""
    log = table_path(layer, table) / "_delta_log"
    return [f"_delta_log/{p.name}" for p in sorted(log.glob("*.json"))]


def read_commit(layer: str, table: str | None = None, version: int = 0) -> list[dict[str, Any]]:
    """The actions of one commit (one JSON object per line: commitInfo, add, remove, metaData...)."""
    path = table_path(layer, table) / "_delta_log" / f"{version:020d}.json"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def current_version(spark: SparkSession, layer: str, table: str | None = None) -> int:
    """The table's latest version (0 after the first write)."""
    layer, table = _split(layer, table)
    if uses_sql():
        row = spark.sql(f"DESCRIBE HISTORY {_sql_ref(spark, layer, table)} LIMIT 1").first()
        return int(row["version"])
    return _delta_table(layer, table).version()


def history(spark: SparkSession, layer: str, table: str | None = None,
            limit: int | None = None) -> DataFrame:
    """The table's commits, newest first: version, timestamp, operation, operationParameters,
    operationMetrics (maps of strings, as ``DESCRIBE HISTORY`` shows them) and engineInfo."""
    layer, table = _split(layer, table)
    if uses_sql():
        limit_sql = f" LIMIT {int(limit)}" if limit else ""
        df = spark.sql(f"DESCRIBE HISTORY {_sql_ref(spark, layer, table)}{limit_sql}")
        return df.select(*HISTORY_COLUMNS).orderBy(df["version"].desc())

    def as_strings(values: dict[str, Any] | None) -> dict[str, str]:
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in (values or {}).items()}

    rows = [
        (int(h["version"]), datetime.fromtimestamp(h["timestamp"] / 1000, tz=timezone.utc),
         h.get("operation"), as_strings(h.get("operationParameters")),
         as_strings(h.get("operationMetrics")), h.get("engineInfo"))
        for h in _delta_table(layer, table).history(limit)
    ]
    rows.sort(key=lambda r: -r[0])
    return spark.createDataFrame(rows, HISTORY_SCHEMA)


def _timestamp_to_version(layer: str, table: str, timestamp: datetime | str) -> int:
    """Latest version committed at or before ``timestamp`` (what ``TIMESTAMP AS OF`` reads)."""
    limit_ms = _utc(timestamp).timestamp() * 1000
    versions = [int(h["version"]) for h in _delta_table(layer, table).history()
                if h["timestamp"] <= limit_ms]
    if not versions:
        raise ValueError(f"No version of {layer}.{table} exists at or before {timestamp}.")
    return max(versions)


def latest_checkpoint(layer: str, table: str | None = None) -> int | None:
    """Version of the newest checkpoint in the log, or None (Sail's time travel cares)."""
    log = table_path(layer, table) / "_delta_log"
    versions = [int(p.name.split(".")[0]) for p in log.glob("*.checkpoint*.parquet")]
    return max(versions) if versions else None


def read_version(spark: SparkSession, layer: str, table: str | None = None,
                 version: int | None = None, timestamp: datetime | str | None = None) -> DataFrame:
    """Time travel: the table as it was at ``version`` or at ``timestamp``.

    Spark's ``versionAsOf`` everywhere it is safe. Sail fails with "Missing commit file" on a
    version older than the latest checkpoint (engine notes), so locally such versions are read
    by delta-rs and handed to Spark (fine for the small tables we time travel in the course).
    """
    layer, table = _split(layer, table)
    if (version is None) == (timestamp is None):
        raise ValueError("Give exactly one of version= or timestamp=.")
    if uses_sql():
        if _managed(layer):
            as_of = (f"VERSION AS OF {int(version)}" if version is not None
                     else f"TIMESTAMP AS OF {_sql_string(_utc(timestamp).isoformat())}")
            return spark.sql(f"SELECT * FROM {table_name(layer, table)} {as_of}")
        reader = spark.read.format("delta")
        reader = (reader.option("versionAsOf", int(version)) if version is not None
                  else reader.option("timestampAsOf", _utc(timestamp).isoformat()))
        return reader.load(str(table_path(layer, table)))
    if version is None:
        version = _timestamp_to_version(layer, table, timestamp)
    checkpoint = latest_checkpoint(layer, table)
    if checkpoint is not None and version < checkpoint:
        return _to_spark(spark, _delta_table(layer, table, version=version).to_pyarrow_table())
    return (spark.read.format("delta").option("versionAsOf", int(version))
            .load(str(table_path(layer, table))))


def restore(spark: SparkSession, layer: str, table: str | None = None,
            version: int | None = None, timestamp: datetime | str | None = None) -> dict[str, int]:
    """Make an old version the current one again (a new commit; history is kept).

    Returns ``{"version": new version, "numRestoredFiles": ..., "numRemovedFiles": ...}``.
    """
    layer, table = _split(layer, table)
    if (version is None) == (timestamp is None):
        raise ValueError("Give exactly one of version= or timestamp=.")
    if uses_sql():
        ref = _sql_ref(spark, layer, table)
        target = (f"VERSION AS OF {int(version)}" if version is not None
                  else f"TIMESTAMP AS OF {_sql_string(_utc(timestamp).isoformat())}")
        row = spark.sql(f"RESTORE TABLE {ref} TO {target}").first().asDict()
        return {"version": current_version(spark, layer, table),
                "numRestoredFiles": int(row.get("num_restored_files") or 0),
                "numRemovedFiles": int(row.get("num_removed_files") or 0)}
    dt = _delta_table(layer, table)
    metrics = dt.restore(int(version) if version is not None else _utc(timestamp))
    return {"version": _delta_table(layer, table).version(),
            "numRestoredFiles": int(metrics.get("numRestoredFile", 0)),
            "numRemovedFiles": int(metrics.get("numRemovedFile", 0))}


# ----- detail and files --------------------------------------------------------------------------
def detail(spark: SparkSession, layer: str, table: str | None = None) -> dict[str, Any]:
    """What ``DESCRIBE DETAIL`` says: format, name, partitionColumns, numFiles, sizeInBytes,
    properties (incl. ``delta.constraints.*``), minReaderVersion, minWriterVersion."""
    layer, table = _split(layer, table)
    name = table_name(layer, table)
    if uses_sql():
        row = spark.sql(f"DESCRIBE DETAIL {_sql_ref(spark, layer, table)}").first().asDict()
        return {
            "format": row.get("format"), "name": name,
            "partitionColumns": list(row.get("partitionColumns") or []),
            "numFiles": int(row.get("numFiles") or 0), "sizeInBytes": int(row.get("sizeInBytes") or 0),
            "properties": dict(sorted((row.get("properties") or {}).items())),
            "minReaderVersion": row.get("minReaderVersion"),
            "minWriterVersion": row.get("minWriterVersion"),
        }
    import pyarrow as pa

    dt = _delta_table(layer, table)
    actions = pa.table(dt.get_add_actions(flatten=True))
    protocol = dt.protocol()
    return {
        "format": "delta", "name": name,
        "partitionColumns": list(dt.metadata().partition_columns),
        "numFiles": actions.num_rows,
        "sizeInBytes": int(sum(actions.column("size_bytes").to_pylist())),
        "properties": dict(sorted(dt.metadata().configuration.items())),
        "minReaderVersion": protocol.min_reader_version,
        "minWriterVersion": protocol.min_writer_version,
    }


def files_scanned(spark: SparkSession, layer: str, table: str | None = None,
                  predicate: str | None = None) -> tuple[int, int]:
    """(files a reader must open for ``predicate``, files in the table).

    What is measured: delta-rs prunes the table's current files with the per-file min/max
    statistics in the log (partition values exactly, other columns by range overlap) -- the
    same data skipping a Delta reader does. It is computed from the log, not observed in an
    engine's scan (Sail's ``DataFrame.inputFiles()`` returns an empty list). Needs the table's
    path, so not on Databricks, where the query profile shows "files pruned".
    """
    layer, table = _split(layer, table)
    if _managed(layer):
        raise NotImplementedError("On Databricks read 'files pruned' in the query profile.")
    dt = _delta_table(layer, table)
    total = len(dt.file_uris())
    scanned = len(dt.file_uris(file_pruning_predicate=predicate)) if predicate else total
    return scanned, total


def file_stats(spark: SparkSession, layer: str, table: str | None = None,
               columns: Iterable[str] = ()) -> DataFrame:
    """One row per data file: num_records, size_bytes and min/max of ``columns`` (from the log).

    Files are identified by their rank (``file``, ordered by the min of the first column, then
    size) instead of their random names, so the output is stable from run to run.
    """
    layer, table = _split(layer, table)
    import pyarrow as pa

    columns = list(columns)
    actions = pa.table(_delta_table(layer, table).get_add_actions(flatten=True))
    keep = ["num_records", "size_bytes"]
    for col in columns:
        keep += [f"min.{col}", f"max.{col}"]
    pdf = actions.select(keep).to_pandas()
    pdf.columns = [c.replace(".", "_") for c in pdf.columns]
    order = ([f"min_{columns[0]}", f"max_{columns[0]}"] if columns else []) + ["num_records", "size_bytes"]
    pdf = pdf.sort_values(order).reset_index(drop=True)
    pdf.insert(0, "file", range(1, len(pdf) + 1))
    return spark.createDataFrame(pdf)


# ----- maintenance ---------------------------------------------------------------------------
def optimize(spark: SparkSession, layer: str, table: str | None = None,
             zorder_by: Iterable[str] | None = None, target_size: int | None = None) -> dict[str, int]:
    """Compact small files (and cluster rows by ``zorder_by`` columns): ``OPTIMIZE [ZORDER BY]``.

    ``target_size`` (bytes) caps the size of the rewritten files; the default (~100 MB-1 GB)
    makes one file out of a small table. Returns ``{"numFilesAdded", "numFilesRemoved"}``.
    """
    layer, table = _split(layer, table)
    zorder_by = list(zorder_by or [])
    if uses_sql():
        ref = _sql_ref(spark, layer, table)
        zorder = f" ZORDER BY ({', '.join(zorder_by)})" if zorder_by else ""
        with _target_file_size(spark, ref, target_size):
            metrics = spark.sql(f"OPTIMIZE {ref}{zorder}").first()["metrics"]
        return {"numFilesAdded": int(metrics["numFilesAdded"]),
                "numFilesRemoved": int(metrics["numFilesRemoved"])}
    dt = _delta_table(layer, table)
    if zorder_by:
        metrics = dt.optimize.z_order(zorder_by, target_size=target_size)
    else:
        metrics = dt.optimize.compact(target_size=target_size)
    return {"numFilesAdded": int(metrics["numFilesAdded"]),
            "numFilesRemoved": int(metrics["numFilesRemoved"])}


def vacuum(spark: SparkSession, layer: str, table: str | None = None,
           retention_hours: int = 168, dry_run: bool = True,
           enforce_retention: bool = True) -> list[str]:
    """Delete data files no version younger than ``retention_hours`` needs: ``VACUUM``.

    Returns the files (relative to the table folder, sorted) that are (``dry_run=False``) or
    would be deleted. The default keeps 7 days of time travel; ``retention_hours`` below that
    raises unless ``enforce_retention=False`` -- which can delete files a running reader or a
    time travel query still needs.
    """
    layer, table = _split(layer, table)
    if not uses_sql():
        files = _delta_table(layer, table).vacuum(
            retention_hours=retention_hours, dry_run=dry_run,
            enforce_retention_duration=enforce_retention)
        return sorted(files)
    ref = _sql_ref(spark, layer, table)
    with _short_retention_allowed(spark, ref, retention_hours, enforce_retention):
        location = str(spark.sql(f"DESCRIBE DETAIL {ref}").first()["location"]).rstrip("/") + "/"
        rows = spark.sql(f"VACUUM {ref} RETAIN {int(retention_hours)} HOURS DRY RUN").collect()
        files = sorted(str(r["path"]).split(location, 1)[-1] for r in rows)
        if not dry_run:
            spark.sql(f"VACUUM {ref} RETAIN {int(retention_hours)} HOURS")
    return files


# ----- Spark confs, only where the engine accepts them ------------------------------------------
#: Session confs the maintenance commands use on open-source Delta (delta-spark). Databricks
#: serverless accepts only a short list of Spark properties and refuses these, so there the
#: same effect comes from a table property that needs no conf (see the two context managers).
OPTIMIZE_MAX_FILE_SIZE_CONF = "spark.databricks.delta.optimize.maxFileSize"
RETENTION_CHECK_CONF = "spark.databricks.delta.retentionDurationCheck.enabled"


def sets_session_confs() -> bool:
    """True where the maintenance confs may be set on the session (JVM Delta, a Spark Connect
    server with Delta); False on Databricks, where table properties are used instead."""
    return not _config().databricks


@contextmanager
def _session_conf(spark: SparkSession, key: str, value: str):
    """``key`` set to ``value`` on the session for the ``with`` block, unset afterwards."""
    spark.conf.set(key, value)
    try:
        yield
    finally:
        spark.conf.unset(key)


@contextmanager
def _target_file_size(spark: SparkSession, ref: str, target_size: int | None):
    """OPTIMIZE's target file size for one command: the session conf where it is accepted,
    else Databricks' table property ``delta.targetFileSize`` (removed again afterwards)."""
    if not target_size:
        yield
    elif sets_session_confs():
        with _session_conf(spark, OPTIMIZE_MAX_FILE_SIZE_CONF, str(int(target_size))):
            yield
    else:
        spark.sql(f"ALTER TABLE {ref} SET TBLPROPERTIES "
                  f"('delta.targetFileSize' = '{int(target_size)}')")
        try:
            yield
        finally:
            spark.sql(f"ALTER TABLE {ref} UNSET TBLPROPERTIES IF EXISTS ('delta.targetFileSize')")


@contextmanager
def _short_retention_allowed(spark: SparkSession, ref: str, retention_hours: int,
                             enforce_retention: bool):
    """Let ``VACUUM ... RETAIN <n> HOURS`` go below the table's retention when the caller asked
    for it (``enforce_retention=False``): the session conf where it is accepted; on Databricks
    the table's ``delta.deletedFileRetentionDuration`` is lowered to ``n`` hours, which is what
    the check compares with, so no conf is needed (the table keeps that shorter retention)."""
    if enforce_retention:
        yield
    elif sets_session_confs():
        with _session_conf(spark, RETENTION_CHECK_CONF, "false"):
            yield
    else:
        spark.sql(f"ALTER TABLE {ref} SET TBLPROPERTIES "
                  f"('delta.deletedFileRetentionDuration' = 'interval {int(retention_hours)} hours')")
        yield


# ----- constraints -----------------------------------------------------------------------------
def add_check_constraint(spark: SparkSession, layer: str, table: str | None = None,
                         name: str = "", expr: str = "") -> None:
    """``ALTER TABLE ... ADD CONSTRAINT name CHECK (expr)`` (Sail runs and enforces it too).

    Fails if existing rows violate ``expr``; afterwards every write that violates it fails
    with the constraint's name and rule in the message.
    """
    layer, table = _split(layer, table)
    if not name or not expr:
        raise ValueError("A CHECK constraint needs a name and an expression.")
    spark.sql(f"ALTER TABLE {_sql_ref(spark, layer, table)} ADD CONSTRAINT {name} CHECK ({expr})")


def drop_constraint(spark: SparkSession, layer: str, table: str | None = None,
                    name: str = "", if_exists: bool = True) -> None:
    """``ALTER TABLE ... DROP CONSTRAINT [IF EXISTS] name`` (delta-rs locally)."""
    layer, table = _split(layer, table)
    if uses_sql():
        guard = "IF EXISTS " if if_exists else ""
        spark.sql(f"ALTER TABLE {_sql_ref(spark, layer, table)} DROP CONSTRAINT {guard}{name}")
        return
    _delta_table(layer, table).alter.drop_constraint(name, raise_if_not_exists=not if_exists)


def constraints(spark: SparkSession, layer: str, table: str | None = None) -> dict[str, str]:
    """The table's CHECK constraints, ``{name: expression}`` sorted by name."""
    props = detail(spark, layer, table)["properties"]
    return {k[len(CONSTRAINT_PREFIX):]: v for k, v in sorted(props.items())
            if k.startswith(CONSTRAINT_PREFIX)}


# ----- scratch tables and change data feed -------------------------------------------------------
def _check_scratch(layer: str, table: str) -> None:
    if layer != SCRATCH and not table.startswith(SCRATCH_PREFIX):
        raise ValueError(f"Refusing to touch {layer}.{table}: demos drop and recreate only "
                         f"scratch tables or {SCRATCH_PREFIX}* tables, never course tables.")


def drop_scratch_table(spark: SparkSession, layer: str, table: str | None = None) -> None:
    """Forget and delete a scratch (or ``demo_*``) table, so a re-run starts at version 0."""
    layer, table = _split(layer, table)
    _check_scratch(layer, table)
    if layer == SCRATCH:
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS {SCRATCH}")
    spark.sql(f"DROP TABLE IF EXISTS {table_name(layer, table)}")
    path = _location(layer, table)
    if path is not None and path.exists():
        shutil.rmtree(path)


def _write(df: DataFrame, layer: str, table: str, mode: str, merge_schema: bool = False) -> str:
    """Write a Delta table with the course table properties and make it resolvable by name."""
    if layer != SCRATCH and not merge_schema:
        from utils.tables import write_table

        return write_table(df, layer, table, mode=mode)
    if layer != SCRATCH:
        raise ValueError("merge_schema is for scratch tables; course tables change by contract.")
    spark = df.sparkSession
    spark.sql(f"CREATE SCHEMA IF NOT EXISTS {SCRATCH}")
    writer = df.write.format("delta").mode(mode)
    if merge_schema:
        writer = writer.option("mergeSchema", "true")
    for key, value in COURSE_TABLE_PROPERTIES.items():
        writer = writer.option(key, value)
    if _managed(layer):
        writer.saveAsTable(table_name(layer, table))
        return table_name(layer, table)
    writer.save(str(_location(layer, table)))
    return _register(spark, layer, table)


def write_scratch(df: DataFrame, table: str, mode: str = "overwrite", fresh: bool = True,
                  merge_schema: bool = False) -> str:
    """Write ``df`` as the scratch table ``scratch.<table>`` and return that name.

    ``fresh=True`` (the default) deletes the table first, so a demo starts at version 0 and a
    re-run shows the same versions; ``fresh=False`` with ``mode="append"`` adds a version.
    ``merge_schema=True`` lets the write add new columns (schema evolution).
    """
    if mode not in ("overwrite", "append"):
        raise ValueError(f"mode must be 'overwrite' or 'append', not {mode!r}")
    if fresh:
        drop_scratch_table(df.sparkSession, SCRATCH, table)
    return _write(df, SCRATCH, table, mode, merge_schema=merge_schema)


def create_scratch(spark: SparkSession, table: str, schema_ddl: str) -> str:
    """Create an empty scratch table with an explicit schema (e.g. ``NOT NULL`` columns),
    replacing any previous one; return ``scratch.<table>``."""
    drop_scratch_table(spark, SCRATCH, table)
    name = table_name(SCRATCH, table)
    props = ", ".join(f"'{k}' = '{v}'" for k, v in COURSE_TABLE_PROPERTIES.items())
    location = ""
    if not _managed(SCRATCH):
        path = str(_location(SCRATCH, table)).replace("\\", "\\\\").replace("'", "\\'")
        location = f" LOCATION '{path}'"
    spark.sql(f"CREATE TABLE {name} ({schema_ddl}) USING delta{location} TBLPROPERTIES ({props})")
    return name


def change_data_feed_enabled(spark: SparkSession, layer: str, table: str | None = None) -> bool:
    return detail(spark, layer, table)["properties"].get(CDF_PROPERTY, "false").lower() == "true"


def create_cdf_table(spark: SparkSession, df: DataFrame, layer: str,
                     table: str | None = None) -> str:
    """Write ``df`` as a new scratch (or ``demo_*``) table with the change data feed on.

    Sail cannot write a table whose protocol lists the change data feed ("Table features must
    be specified: ChangeDataFeed"), so locally delta-rs creates it and later writes to it go
    through :func:`upsert` (which uses delta-rs for such tables). Sail can still read it.
    """
    layer, table = _split(layer, table)
    _check_scratch(layer, table)
    drop_scratch_table(spark, layer, table)
    if uses_sql():  # CTAS, so the feed is on from version 0 as with delta-rs
        name = table_name(layer, table)
        props = ", ".join(f"'{k}' = '{v}'" for k, v in
                          {**COURSE_TABLE_PROPERTIES, CDF_PROPERTY: "true"}.items())
        location = "" if _managed(layer) else f" LOCATION {_sql_string(_location(layer, table))}"
        view = f"_cdf_source_{table}"
        df.createOrReplaceTempView(view)
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS {layer}")
        spark.sql(f"CREATE TABLE {name} USING delta{location} TBLPROPERTIES ({props}) "
                  f"AS SELECT * FROM {view}")
        spark.catalog.dropTempView(view)
        return name
    from deltalake import write_deltalake

    write_deltalake(str(_location(layer, table)), df.toArrow(), mode="error",
                    configuration={**COURSE_TABLE_PROPERTIES, CDF_PROPERTY: "true"})
    return _register(spark, layer, table)


def upsert(spark: SparkSession, source: DataFrame, layer: str, table: str | None = None,
           keys: Iterable[str] = (), delete_when: str | None = None) -> None:
    """MERGE ``source`` into the table on ``keys``: update matches, insert new keys, and delete
    matches for which the SQL condition ``delete_when`` (on source columns, e.g.
    ``"s.is_deleted"``) holds. Source is aliased ``s``, target ``t``.

    SQL ``MERGE INTO`` on every engine, except a change-data-feed table on Sail, which Sail
    cannot write: delta-rs merges it (and writes the change feed).
    """
    layer, table = _split(layer, table)
    keys = list(keys)
    if not keys:
        raise ValueError("upsert needs the key columns to match on.")
    on = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    if uses_sql() or not change_data_feed_enabled(spark, layer, table):
        # Columns are listed (not SET * / INSERT *) so the source may carry extra columns,
        # such as the flag ``delete_when`` reads.
        ref = _sql_ref(spark, layer, table)
        target_columns = spark.table(ref).columns if not ref.startswith("delta.") else (
            spark.read.format("delta").load(str(table_path(layer, table))).columns)
        view = f"_upsert_source_{table}"
        source.createOrReplaceTempView(view)
        delete_sql = f"WHEN MATCHED AND {delete_when} THEN DELETE " if delete_when else ""
        insert_guard = f"AND NOT ({delete_when}) " if delete_when else ""
        set_sql = ", ".join(f"t.{c} = s.{c}" for c in target_columns)
        spark.sql(f"MERGE INTO {ref} t USING {view} s ON {on} "
                  f"{delete_sql}WHEN MATCHED THEN UPDATE SET {set_sql} "
                  f"WHEN NOT MATCHED {insert_guard}THEN INSERT ({', '.join(target_columns)}) "
                  f"VALUES ({', '.join('s.' + c for c in target_columns)})")
        spark.catalog.dropTempView(view)
        return
    target_columns = [f.name for f in _delta_table(layer, table).schema().fields]
    merger = _delta_table(layer, table).merge(source.toArrow(), on, source_alias="s",
                                              target_alias="t")
    if delete_when:
        merger = merger.when_matched_delete(predicate=delete_when)
    updates = {c: f"s.{c}" for c in target_columns}
    merger = merger.when_matched_update(updates)
    merger = merger.when_not_matched_insert(
        updates, predicate=f"NOT ({delete_when})" if delete_when else None)
    merger.execute()


def read_change_feed(spark: SparkSession, layer: str, table: str | None = None,
                     starting_version: int = 0, ending_version: int | None = None) -> DataFrame:
    """Row-level changes between two versions: the table's columns plus ``_change_type``
    (insert, update_preimage, update_postimage, delete), ``_commit_version`` and
    ``_commit_timestamp``. Sail's ``readChangeFeed`` silently returns the snapshot, so locally
    delta-rs reads the feed."""
    layer, table = _split(layer, table)
    if uses_sql():
        reader = (spark.read.format("delta").option("readChangeFeed", "true")
                  .option("startingVersion", int(starting_version)))
        if ending_version is not None:
            reader = reader.option("endingVersion", int(ending_version))
        if _managed(layer):
            return reader.table(table_name(layer, table))
        return reader.load(str(table_path(layer, table)))
    reader = _delta_table(layer, table).load_cdf(starting_version=int(starting_version),
                                                 ending_version=ending_version)
    return _to_spark(spark, reader.read_all())


__all__ = [
    "SCRATCH", "SCRATCH_PREFIX", "add_check_constraint", "change_data_feed_enabled",
    "constraints", "create_cdf_table", "create_scratch", "current_version", "detail",
    "drop_constraint", "drop_scratch_table", "file_stats", "files_scanned", "history",
    "latest_checkpoint", "log_files", "optimize", "read_change_feed", "read_commit",
    "read_version", "register_scratch_tables", "restore", "table_name", "table_path",
    "upsert", "uses_sql", "vacuum", "write_scratch",
]
