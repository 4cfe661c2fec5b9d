"""Building blocks of the course's declarative pipeline (``notebooks/pipeline/``).

Only what the imperative notebooks do *outside* DataFrame functions needs a declarative twin
here; everything else (parsing, rules, dedupe, SCD2 columns, KPIs) is imported from
``utils.silver``, ``utils.cdc`` and ``utils.gold`` so each rule and KPI has one definition.

* :func:`landing_stream` - the new files of one landing source, as a stream of whole files
  (``wholetext``): ``spark.readStream`` locally, Auto Loader on Databricks.
* :func:`bronze_lines` - whole files -> one row per physical line with bronze's lineage columns
  (the same rows ``utils.bronze.ingest_landing`` writes: line numbers, CSV header, BOM and CRLF
  handling), as a pure DataFrame function so it also runs on a stream.
* :func:`known_keys` / :func:`references` - the keys bronze has received, as the
  ``silver_known_keys`` view over the pipeline's bronze tables (computed once per update), and
  the code tables plus those keys, which the silver rules look up (``utils.silver.load_references``).
* :func:`scd2_to_contract` - AUTO CDC's SCD2 columns (``__START_AT``/``__END_AT``) -> the
  contract's ``silver.patients`` (``valid_from``, ``valid_to``, ``is_current``, ``is_deleted``).
* :func:`stage_landing` - copy the landing zone's batch days up to a date into the pipeline's
  own landing folder, to replay "a new day arrives" (notebook 07).
* :func:`with_reference_date` - gold's reference date as a column (no query while planning).
* :func:`with_expectations` - a list of :class:`utils.expectations.Expectation` as pipeline
  expectation decorators (native on Databricks and in the local runner, filters on the
  open-source CLI: :mod:`utils.pipelines.compat`).

This module and :mod:`utils.pipelines.compat` are what the pipeline sources import: they import
nothing engine-internal (no ``pyspark.pipelines`` module other than the public API, nothing of
the local runner), so the sources load unchanged on Databricks, in the local runner and with
the official ``spark-pipelines`` CLI.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from utils.config import REPO_ROOT, get_config, on_databricks
from utils.expectations import Expectation

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

#: ``<source>/<YYYY-MM-DD>/<file>`` at the end of a landing file path.
RELATIVE_PATH_REGEX = r"([^/]+/[0-9]{4}-[0-9]{2}-[0-9]{2}/[^/]+)$"
DAY_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]"
LANDING_CONF = "course.landing_dir"
#: The course's declarative pipeline: notebooks/pipeline (pipeline.yml + source files).
COURSE_PIPELINE_DIR = REPO_ROOT / "notebooks" / "pipeline"


def landing_dir(spark: "SparkSession") -> str:
    """The landing root: the pipeline configuration ``course.landing_dir`` if set (the bundle
    sets it on Databricks), else the course config (``$COURSE_DATA_DIR/landing``)."""
    try:
        configured = spark.conf.get(LANDING_CONF, None)
    except Exception:  # noqa: BLE001 - engines without the key raise instead of defaulting
        configured = None
    return configured or str(get_config().landing_dir)


def landing_stream(spark: "SparkSession", source: str, file_name: str | None = None) -> "DataFrame":
    """New files of ``landing/<source>/<YYYY-MM-DD>/`` as a stream: one row per file.

    Columns: ``path`` and ``content`` (the file's bytes). Files are read as bytes, not text:
    Sail's text reader (and its ``decode``/``CAST AS STRING``) fails the whole read on one
    invalid UTF-8 byte, and bronze must keep such a line, not crash. ``file_name`` keeps only
    files of that name (the reference source holds three entities).
    """
    path = f"{landing_dir(spark)}/{source}/{DAY_GLOB}/{file_name or '*'}"
    if on_databricks():  # pragma: no cover - Auto Loader keeps the file ledger on Databricks
        return (spark.readStream.format("cloudFiles").option("cloudFiles.format", "binaryFile")
                .load(path))
    return spark.readStream.format("binaryFile").load(path)


def _split_file_udf():
    """A UDF: file bytes -> its lines as (text, base64 of the raw bytes when not UTF-8), by
    ``utils.bronze.split_lines``, so both bronze paths split lines by one rule."""
    from pyspark.sql import functions as F

    def split(content):  # (no type hints: PySpark would try to infer a pandas UDF from them)
        from utils.bronze import split_lines

        return split_lines(bytes(content)) if content is not None else []

    # a DataType, not a DDL string: a DDL string is parsed by the server, an analysis request
    # the official pipelines CLI refuses inside a query function
    from pyspark.sql.types import ArrayType, StringType, StructField, StructType

    line = StructType([StructField("text", StringType()), StructField("raw", StringType())])
    return F.udf(split, ArrayType(line))


def bronze_lines(files: "DataFrame", source: str, fmt: str) -> "DataFrame":
    """Whole landing files (``path``, ``content``) -> bronze rows (``BRONZE_SCHEMA_DDL`` columns).

    Lines are split by ``utils.bronze.split_lines``, the imperative bronze's own rule: a leading
    UTF-8 BOM is dropped, ``\\n`` and ``\\r\\n`` end a line, a last line without terminator is a
    line; a line that is not valid UTF-8 holds U+FFFD and keeps its exact bytes in
    ``_raw_base64``. In a CSV, line 1 is the header (``_header``), not a row.
    """
    from pyspark.sql import functions as F

    relative = F.regexp_extract(F.col("path"), RELATIVE_PATH_REGEX, 1)
    header = (F.element_at(F.col("__lines"), 1).getField("text")
              if fmt == "csv" else F.lit(None).cast("string"))
    exploded = (files.select(_split_file_udf()(F.col("content")).alias("__lines"),
                             relative.alias("_source_file"))
                .select("*", F.posexplode("__lines").alias("__pos", "__line")))
    first_data = 1 if fmt == "csv" else 0
    value = F.col("__line").getField("text")
    return (exploded.filter(F.col("__pos") >= first_data).select(
        value.alias("value"),
        header.alias("_header"),
        F.lit(source).alias("_source"),
        F.col("_source_file"),
        (F.col("__pos") + 1).cast("int").alias("_line_number"),
        F.to_date(F.regexp_extract("_source_file", r"^[^/]+/([0-9-]{10})/", 1)).alias("_batch_date"),
        F.current_timestamp().alias("_ingest_ts"),
        F.lit(None).cast("string").alias("_ingest_run_id"),
        F.col("__line").getField("raw").alias("_raw_base64"),
    ))


KNOWN_KEYS_VIEW = "silver_known_keys"


def known_keys(spark: "SparkSession", bronze_table: Callable[[str], str]) -> "DataFrame":
    """``utils.silver.known_keys_frame`` over the pipeline's bronze tables (``bronze_table(entity)``):
    the body of the ``silver_known_keys`` temporary view."""
    from utils import silver

    return silver.known_keys_frame(spark, lambda entity: spark.read.table(bronze_table(entity)))


def references(spark: "SparkSession") -> dict[str, "DataFrame"]:
    """What ``utils.silver.with_references`` needs, inside the pipeline: the code tables and the
    keys of the ``silver_known_keys`` view (computed once per update, read by every silver view)."""
    from utils import silver

    return silver.load_references(spark, known=spark.read.table(KNOWN_KEYS_VIEW))


def scd2_to_contract(scd2: "DataFrame") -> "DataFrame":
    """AUTO CDC SCD2 rows -> ``silver.patients`` as ``utils.cdc.scd2_history`` defines it.

    The sequence is ``struct(change_ts, change_id)``: ``valid_from``/``valid_to`` are the
    ``change_ts`` of ``__START_AT``/``__END_AT``. A version is deleted when it was closed
    (``__END_AT`` set) and no version starts where it ends (a DELETE closed it). Two
    INSERT/UPDATEs at the same instant leave a zero-length version that ``scd2_history`` does
    not keep (there the later ``change_id`` wins): it is dropped here too.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from utils.cdc import patients_ddl

    columns = [part.split()[0] for part in patients_ddl().split(", ")]
    # (Sail cannot order a window by a struct: order by its fields)
    by_patient = Window.partitionBy("patient_key").orderBy("__START_AT.change_ts",
                                                           "__START_AT.change_id")
    next_ts = F.lead("__START_AT.change_ts").over(by_patient)
    next_id = F.lead("__START_AT.change_id").over(by_patient)
    closed = F.col("__END_AT").isNotNull()
    continued = ((next_ts == F.col("__END_AT.change_ts"))
                 & (next_id == F.col("__END_AT.change_id")))
    versions = scd2.select(
        "*",
        F.col("__START_AT.change_ts").alias("valid_from"),
        # guarded: Sail can return a zero value (1970-01-01) for a field of a NULL struct
        F.when(closed, F.col("__END_AT.change_ts")).alias("valid_to"),
        (~closed).alias("is_current"),
        (closed & ~F.coalesce(continued, F.lit(False))).alias("is_deleted"),
    )
    zero_length = (F.col("valid_to") == F.col("valid_from")) & ~F.col("is_deleted")
    return versions.filter(~F.coalesce(zero_length, F.lit(False))).select(*columns)


AS_OF_COLUMN = "__as_of"


def with_reference_date(patients: "DataFrame", encounters: "DataFrame") -> "DataFrame":
    """``patients`` plus the column ``__as_of``: ``utils.gold.reference_date`` as a column.

    ``utils.gold.reference_date`` runs a query and returns a Python date. A pipeline's query
    functions should not run queries on the pipeline's own datasets while the graph is planned
    (on Databricks those datasets are not readable yet), so the same date
    (``utils.gold.reference_date_frame``) is joined in as a column instead; ``utils.gold``
    takes ``as_of`` through ``F.lit``, which accepts a column. The equality test of
    tests/test_pipelines.py checks both give the same gold rows.
    """
    from utils.gold import reference_date_frame

    return patients.crossJoin(reference_date_frame(encounters, AS_OF_COLUMN))


def with_expectations(rules: Iterable[Expectation]) -> Callable[[Callable[..., Any]], Callable]:
    """Decorate a query function with ``rules`` as pipeline expectations, in order.

    ``warn`` -> ``expect``, ``drop`` -> ``expect_or_drop``, ``fail`` -> ``expect_or_fail``:
    the runtime's native decorators (Databricks, the local runner), or on open-source
    ``spark-pipelines`` the equivalent filters of :mod:`utils.pipelines.compat`.
    """
    from utils.pipelines import compat

    return compat.expectations_decorator(rules)


_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def staged_landing_dir() -> Path:
    """The pipeline's own landing folder for replays: ``<data root>/pipelines/landing``."""
    return get_config().data_root / "pipelines" / "landing"


def reset_staged_landing() -> None:
    """Empty :func:`staged_landing_dir` (a replay starts from no delivered day)."""
    shutil.rmtree(staged_landing_dir(), ignore_errors=True)


def staged_landing_configuration() -> dict[str, str]:
    """Pipeline configuration that makes the streaming tables read the staged landing folder."""
    return {LANDING_CONF: str(staged_landing_dir())}


def landing_days() -> list[dt.date]:
    """Every batch day present in the course landing zone, sorted."""
    landing = get_config().landing_dir
    days = {dt.date.fromisoformat(day.name) for source in landing.iterdir() if source.is_dir()
            for day in source.iterdir() if day.is_dir() and _DAY.match(day.name)}
    return sorted(days)


def stage_landing(until: dt.date | str | None = None) -> list[str]:
    """Copy the landing zone's batch folders dated up to ``until`` (all by default) into
    :func:`staged_landing_dir`, skipping those already there; return ``source/day`` copied.

    Running the pipeline with ``configuration={"course.landing_dir": str(staged_landing_dir())}``
    then sees only the days staged so far, so a second update can show a new day arriving.
    """
    config = get_config()
    limit = dt.date.fromisoformat(str(until)) if until is not None else None
    target = staged_landing_dir()
    copied = []
    for source in sorted(config.landing_dir.iterdir()):
        if not source.is_dir() or source.name.startswith((".", "_")):
            continue
        for day in sorted(source.iterdir()):
            if not (day.is_dir() and _DAY.match(day.name)):
                continue
            if limit is not None and dt.date.fromisoformat(day.name) > limit:
                continue
            destination = target / source.name / day.name
            if destination.exists():
                continue
            shutil.copytree(day, destination)
            copied.append(f"{source.name}/{day.name}")
    return copied
