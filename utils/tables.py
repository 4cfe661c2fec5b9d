"""Create, write and register the course's Delta tables, the same way on every engine.

Sail keeps its catalog in memory, per session: a new notebook (a new process) starts with
only the ``default`` schema even though the Delta tables are on disk. ``register_course_tables``
puts every existing course table back into the current session's catalog, so
``spark.table("silver.patients")`` and SQL work in every notebook. On Databricks the tables are
managed Unity Catalog tables and nothing needs registering.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from utils.config import COURSE_TABLE_PROPERTIES, CourseConfig, get_config

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def is_delta_table(path: Path) -> bool:
    """A folder is a Delta table when it has a transaction log with at least one commit."""
    log = path / "_delta_log"
    return log.is_dir() and any(log.glob("*.json"))


def existing_tables(config: CourseConfig | None = None) -> list[tuple[str, str, Path]]:
    """(layer, table, path) of every Delta table under the lakehouse folder, sorted."""
    config = config or get_config()
    found: list[tuple[str, str, Path]] = []
    for layer in config.layers:
        layer_dir = config.lakehouse_dir / layer
        if not layer_dir.is_dir():
            continue
        for table_dir in sorted(layer_dir.iterdir()):
            if is_delta_table(table_dir):
                found.append((layer, table_dir.name, table_dir))
    return found


def _sql_string(value: str | Path) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _properties_sql(properties: dict[str, str]) -> str:
    return ", ".join(f"{_sql_string(k)} = {_sql_string(v)}" for k, v in properties.items())


def local_location(location: str) -> str:
    """A table location as a plain local path. Engines write the same folder differently:
    Sail ``file:///data/x``, Apache Spark ``file:/data/x`` (one slash), Databricks a cloud
    URI (left as it is)."""
    if location.startswith("file:"):
        return "/" + location[len("file:"):].lstrip("/")
    return location


def registered_location(spark: "SparkSession", name: str) -> str | None:
    """Where the session's catalog says table ``name`` lives, or None if it is not registered.

    Asks ``tableExists`` first: a ``DESCRIBE`` of a missing table fails on the server, and
    Spark's Connect client logs every failed query to stderr, into the notebook's output."""
    if not spark.catalog.tableExists(name):
        return None
    try:
        rows = spark.sql(f"DESCRIBE TABLE EXTENDED {name}").collect()
    except Exception:  # noqa: BLE001 - the name is not registered in this session
        return None
    location = next((row[1] for row in rows if row[0] == "Location"), None)
    return local_location(location) if location else None


def forget_if_elsewhere(spark: "SparkSession", name: str, path: Path) -> None:
    """Drop the session's name ``name`` when it points at another location than ``path``, or
    at a folder that is no longer a Delta table (removed by a reset).

    A session's catalog outlives a change of data root (a notebook that switches
    ``COURSE_DATA_DIR``, pytest's per-test folders sharing one session), and
    ``CREATE TABLE IF NOT EXISTS`` would keep the old location. The course's tables are all
    external (created with LOCATION), so dropping the name leaves the files where they are.
    """
    location = registered_location(spark, name)
    if location is not None and (location.rstrip("/") != str(path).rstrip("/")
                                 or not is_delta_table(path)):
        spark.sql(f"DROP TABLE IF EXISTS {name}")


_ASK = object()


def _register(spark: "SparkSession", name: str, path: Path, location: object = _ASK) -> None:
    """``forget_if_elsewhere`` then ``CREATE TABLE IF NOT EXISTS``, with as few round trips as
    give the same catalog (each SQL command is a round trip to the engine).

    ``location``: where the session already registers ``name`` (None: not registered), when
    the caller knows it from a listing; by default it is asked with ``DESCRIBE``. A name
    already registered at ``path``, a Delta table, is left alone: ``CREATE TABLE IF NOT
    EXISTS`` on an existing name changes nothing (measured on Sail: the schema is read from
    the Delta log at query time, also after an ``overwriteSchema`` write).
    """
    if location is _ASK:
        location = registered_location(spark, name)
    if location is not None:
        if str(location).rstrip("/") == str(path).rstrip("/") and is_delta_table(path):
            return
        spark.sql(f"DROP TABLE IF EXISTS {name}")
    spark.sql(f"CREATE TABLE IF NOT EXISTS {name} USING delta LOCATION {_sql_string(path)}")


def register_table(spark: "SparkSession", layer: str, table: str,
                   config: CourseConfig | None = None) -> str:
    """Make ``<layer>.<table>`` resolvable in this session (idempotent). Returns its name."""
    config = config or get_config()
    name = config.table_name(layer, table)
    if config.databricks:
        return name
    spark.sql(f"CREATE SCHEMA IF NOT EXISTS {layer}")
    _register(spark, name, config.table_path(layer, table))
    return name


def _registered_locations(spark: "SparkSession", layer: str) -> dict[str, object] | None:
    """Lower-cased table name -> location (``_ASK`` when the listing does not say) of what
    ``SHOW TABLE EXTENDED IN <layer>`` lists: one round trip instead of a ``DESCRIBE`` per
    name. None when the listing fails (then each name is asked on its own)."""
    try:
        rows = spark.sql(f"SHOW TABLE EXTENDED IN {layer} LIKE '*'").collect()
    except Exception:  # noqa: BLE001 - an engine without it: ask name by name
        return None
    found: dict[str, object] = {}
    for row in rows:
        name = str(row["tableName"]).lower()
        location = None
        for line in str(row["information"] or "").splitlines():
            if line.startswith("Location:"):
                location = local_location(line.split(":", 1)[1].strip())
        # a temporary view, two entries, or no location shown: ask with DESCRIBE as before
        if row["isTemporary"] or not location or name in found:
            found[name] = _ASK
        else:
            found[name] = location
    return found


def register_course_tables(spark: "SparkSession", config: CourseConfig | None = None) -> list[str]:
    """(Re)register every existing Delta table of the course in the current session.

    Call it at the top of each notebook. Returns the registered names, sorted, so a notebook
    can show what it found. One ``SHOW TABLE EXTENDED`` per layer says which names the session
    already has and where, instead of one ``DESCRIBE`` per table.
    """
    config = config or get_config()
    if config.databricks:
        return []
    listed: dict[str, dict[str, object] | None] = {}
    for layer in config.layers:
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS {layer}")
        listed[layer] = _registered_locations(spark, layer)
    names = []
    for layer, table, _ in existing_tables(config):
        name = config.table_name(layer, table)
        known = listed[layer]
        location = _ASK if known is None else known.get(table.lower())
        _register(spark, name, config.table_path(layer, table), location)
        names.append(name)
    return names


def write_table(df: "DataFrame", layer: str, table: str, mode: str = "overwrite",
                partition_by: Iterable[str] | None = None, overwrite_schema: bool = False,
                config: CourseConfig | None = None) -> str:
    """Write ``df`` as the Delta table ``<layer>.<table>`` and register it; return its name.

    Write modes are explicit so a re-run replaces (``overwrite``) or adds (``append``) on
    purpose, never fails with "already exists". New tables get the course table properties.
    """
    if mode not in ("overwrite", "append"):
        raise ValueError(f"mode must be 'overwrite' or 'append', not {mode!r}")
    config = config or get_config()
    writer = df.write.format("delta").mode(mode)
    for key, value in COURSE_TABLE_PROPERTIES.items():
        writer = writer.option(key, value)
    if overwrite_schema:
        writer = writer.option("overwriteSchema", "true")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    if config.databricks:
        name = config.full_table_name(layer, table)
        writer.saveAsTable(name)
        return config.table_name(layer, table)
    writer.save(str(config.table_path(layer, table)))
    return register_table(df.sparkSession, layer, table, config)


def create_table_if_missing(spark: "SparkSession", layer: str, table: str, schema_ddl: str,
                            partition_by: Iterable[str] | None = None,
                            config: CourseConfig | None = None) -> str:
    """Create an empty Delta table with an explicit schema unless it exists; return its name.

    Appends and MERGEs then go into a table whose types are fixed up front (Sail stores NULL
    when a wrong type is appended to a table that does not exist yet with the right types).
    """
    config = config or get_config()
    partition_sql = f" PARTITIONED BY ({', '.join(partition_by)})" if partition_by else ""
    props = f" TBLPROPERTIES ({_properties_sql(COURSE_TABLE_PROPERTIES)})"
    if config.databricks:
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS {layer}")
        spark.sql(f"CREATE TABLE IF NOT EXISTS {config.table_name(layer, table)} ({schema_ddl}) "
                  f"USING delta{partition_sql}{props}")
        return config.table_name(layer, table)
    spark.sql(f"CREATE SCHEMA IF NOT EXISTS {layer}")
    name = config.table_name(layer, table)
    forget_if_elsewhere(spark, name, config.table_path(layer, table))
    spark.sql(
        f"CREATE TABLE IF NOT EXISTS {name} ({schema_ddl}) USING delta{partition_sql} "
        f"LOCATION {_sql_string(config.table_path(layer, table))}{props}"
    )
    return name


def fresh_scratch_path(name: str, config: CourseConfig | None = None) -> str:
    """Empty the scratch location ``name`` and return it as a string.

    Demos that count versions or commit files start from nothing, so re-running a notebook
    shows the same versions instead of piling new ones on the old table.
    """
    import shutil

    path = (config or get_config()).scratch_path(name)
    shutil.rmtree(path, ignore_errors=True)
    return str(path)
