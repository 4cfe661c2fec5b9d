"""Patients as change data capture (CDC): parse, validate, dedupe, then keep an SCD type 2 history.

The EHR does not send "the patient table"; it sends *changes*: one record per INSERT, UPDATE or
DELETE of a patient, with the time it happened (``change_ts``). Changes can arrive late (a
later batch may carry an older change) and twice (the same line delivered again). Silver turns
them into:

``silver.patient_changes``
    Every valid change record once (deduplicated by ``change_id``), pseudonymised: the MRN is
    replaced by ``patient_key`` and names, SSN, phone and street address are dropped.
``silver.patients`` (SCD type 2)
    One row per *version* of a patient: ``valid_from`` = the change that opened it,
    ``valid_to`` = the next change (NULL while current), ``is_current``, and ``is_deleted`` on
    the version a DELETE closed. No direct identifiers: the ZIP code is cut to ``zip3``.
``silver.patients_current`` (SCD type 1)
    The current, not deleted version of each patient: the "patient table" most queries want.
``silver.patients_restricted``
    The only table with PHI (MRN, names, SSN, phone, street address): current state per live
    patient, for the care team only (Unity Catalog grants on Databricks).

The SCD2 algorithm (:func:`apply_scd2`)
---------------------------------------
The classic MERGE-only recipe ("close the current row, insert the new one") breaks when a
change arrives out of order: an older change must slide *into* the history, between two
versions, without becoming current. So for every patient touched by incoming changes we
**recompute** the whole history from the change log with window functions (sort by
``change_ts``; ``valid_to = lead(change_ts)``; ``is_current = no next change``; a DELETE opens
no version, it closes the previous one and marks it ``is_deleted``) and then MERGE only the
difference into the target on ``(patient_key, valid_from)``: changed versions are updated,
new ones inserted, versions that no longer exist deleted. A replay of already-applied changes
recomputes the same history, the difference is empty and nothing is written: no new Delta
version at all (and the MERGE's own conditions would change 0 rows even if it ran).

Only SQL ``MERGE INTO`` is used (delta-spark's ``DeltaTable`` Python API does not run on Sail);
the statement is plain Delta SQL that runs unchanged on Databricks.

Explicit schemas
----------------
Sail silently stores NULL when a value of the wrong type is appended. Every table written here
is created with an explicit schema first, and every DataFrame is checked against it before the
write (:func:`conform`): a column whose type differs is cast, and if the cast turned any value
into NULL the write is refused with the column name and a sample value.
"""

from __future__ import annotations

import csv
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from utils.contracts import accepted_values, landing_sources, silver_columns
from utils.expectations import (
    FAILED_RULES_COLUMN,
    Expectation,
)
from utils.phi import patient_key

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

SOURCE = "ehr_patients"
LAYER = "silver"
DATASET = "silver.patients"

#: Lineage carried by every silver table (from bronze).
LINEAGE_COLUMNS: tuple[str, ...] = ("_source_file", "_line_number", "_batch_date", "_ingest_run_id")
LINEAGE_DDL = "_source_file STRING, _line_number INT, _batch_date DATE, _ingest_run_id STRING"

#: First arrival wins when the same change is delivered twice.
ARRIVAL_ORDER: tuple[str, ...] = ("_batch_date", "_source_file", "_line_number")

#: Attributes of a patient version (no direct identifiers).
VERSION_ATTRIBUTES: tuple[str, ...] = ("birth_date", "sex", "city", "state", "zip3", "payer_id")

#: The pseudonymised change log (silver.patient_changes).
PATIENT_CHANGES_DDL = (
    "change_id STRING, operation STRING, change_ts TIMESTAMP, patient_key STRING, "
    "birth_date DATE, sex STRING, city STRING, state STRING, zip3 STRING, payer_id STRING, "
    + LINEAGE_DDL
)

#: silver.dedup_log: one row per line removed as a duplicate, pointing at the line kept.
DEDUP_LOG_DDL = (
    "run_id STRING, dataset STRING, key STRING, _source_file STRING, _line_number INT, "
    "_batch_date DATE, kept_source_file STRING, kept_line_number INT, kept_batch_date DATE"
)

MAX_AGE_YEARS = 120


class SchemaMismatch(ValueError):
    """A DataFrame does not fit a table's explicit schema (a write would lose values)."""


# ----- schemas ---------------------------------------------------------------------------------
def _contract_ddl(table: str) -> str:
    return ", ".join(f"{name} {spec['type']}" for name, spec in silver_columns(table).items())


def patients_ddl() -> str:
    """silver.patients: the contract's columns, then lineage of the change opening the version."""
    return _contract_ddl("patients") + ", " + LINEAGE_DDL


def patients_current_ddl() -> str:
    """silver.patients_current: a current version without the SCD2 bookkeeping columns."""
    cols = [f"{n} {s['type']}" for n, s in silver_columns("patients").items()
            if n not in ("valid_to", "is_current", "is_deleted")]
    return ", ".join(cols) + ", " + LINEAGE_DDL


def patients_restricted_ddl() -> str:
    """silver.patients_restricted: the contract's PHI columns, then lineage."""
    return _contract_ddl("patients_restricted") + ", " + LINEAGE_DDL


def quarantine_ddl(bronze_df: "DataFrame") -> str:
    """silver.quarantine_patients: the bronze columns as they are, then ``_failed_rules``."""
    cols = [f"{f.name} {f.dataType.simpleString()}" for f in bronze_df.schema.fields]
    return ", ".join(cols) + f", {FAILED_RULES_COLUMN} ARRAY<STRING>"


def _struct(spark: "SparkSession", ddl: str):
    return spark.createDataFrame([], ddl).schema


def conform(df: "DataFrame", ddl: str) -> "DataFrame":
    """``df`` with exactly the columns and types of ``ddl``, or :class:`SchemaMismatch`.

    Missing or extra columns are refused. A column of another type is cast with ``try_cast``
    and checked: if any non-NULL value became NULL (``'abc'`` into INT, ``2**40`` into INT),
    nothing is written. This is the check that stops Sail's silent NULL on a wrong-type append.
    """
    from pyspark.sql import functions as F

    expected = _struct(df.sparkSession, ddl)
    actual = {f.name: f.dataType for f in df.schema.fields}
    missing = [f.name for f in expected.fields if f.name not in actual]
    extra = [name for name in actual if name not in expected.fieldNames()]
    if missing or extra:
        raise SchemaMismatch(f"columns do not match the table schema: missing {missing}, "
                             f"unexpected {extra}")
    casts = [f for f in expected.fields if actual[f.name] != f.dataType]
    if casts:
        lost = df.agg(*[
            F.sum(F.when(F.col(f.name).isNotNull() & F.col(f.name).try_cast(f.dataType).isNull(),
                         1).otherwise(0)).alias(f.name)
            for f in casts
        ]).first()
        bad = [f for f in casts if lost[f.name]]
        if bad:
            f = bad[0]
            sample = (df.where(F.col(f.name).isNotNull() & F.col(f.name).try_cast(f.dataType).isNull())
                      .select(F.col(f.name).cast("string")).orderBy(1).first()[0])
            raise SchemaMismatch(
                f"column {f.name}: {lost[f.name]} value(s) of type "
                f"{actual[f.name].simpleString()} do not fit {f.dataType.simpleString()} "
                f"(e.g. {sample!r}); refusing to write NULLs instead")
    return df.select(*[
        (F.col(f.name) if actual[f.name] == f.dataType else F.col(f.name).try_cast(f.dataType))
        .alias(f.name) for f in expected.fields])


def _split_name(name: str) -> tuple[str, str]:
    layer, _, table = name.partition(".")
    if not table:
        raise ValueError(f"table name must be 'layer.table', not {name!r}")
    return layer, table


def ensure_table(spark: "SparkSession", name: str, ddl: str) -> str:
    """Create ``name`` with the explicit schema ``ddl`` unless it exists; check it if it does."""
    from utils.tables import create_table_if_missing

    layer, table = _split_name(name)
    create_table_if_missing(spark, layer, table, ddl)
    expected = [(f.name, f.dataType) for f in _struct(spark, ddl).fields]
    found = [(f.name, f.dataType) for f in spark.table(name).schema.fields]
    if found != expected:
        raise SchemaMismatch(f"{name} exists with another schema: {found} instead of {expected}")
    return name


# ----- merging only what changed ----------------------------------------------------------------
@dataclass
class MergeResult:
    """What one :func:`merge_changes` did to its target (counted before the MERGE ran)."""

    target: str
    inserted: int = 0
    updated: int = 0
    deleted: int = 0

    @property
    def committed(self) -> bool:
        """False when there was nothing to change: no MERGE ran, no Delta version was added."""
        return bool(self.inserted or self.updated or self.deleted)


def _sql_name(name: str) -> str:
    return ".".join(f"`{part}`" for part in name.split("."))


def merge_changes(spark: "SparkSession", source: "DataFrame", target: str, ddl: str,
                  keys: Iterable[str], scope: "DataFrame | None" = None) -> MergeResult:
    """Make ``target`` equal to ``source`` (within ``scope``) with one SQL MERGE of the diff.

    ``source`` is the complete desired content of the target rows in scope: rows missing from
    the target are inserted, rows that differ on a non-key column are updated, and target rows
    in scope whose key is not in ``source`` are deleted. ``scope`` (a DataFrame of values of
    some key columns, e.g. the affected ``patient_key``s) limits the deletes; ``None`` means the
    whole table. When nothing differs no MERGE runs, so a replay adds no Delta version.
    """
    from pyspark.sql import functions as F

    keys = list(keys)
    ensure_table(spark, target, ddl)
    source = conform(source, ddl)
    columns = source.columns
    current = spark.table(target)
    in_scope = current if scope is None else current.join(scope, scope.columns, "left_semi")

    upserts = source.subtract(in_scope.select(*columns))  # null-safe set difference
    deletes = in_scope.select(*keys).join(source.select(*keys), keys, "left_anti")
    updated = upserts.join(current.select(*keys), keys, "left_semi").count()
    inserted = upserts.count() - updated
    deleted = deletes.count()
    result = MergeResult(target, inserted, updated, deleted)
    if not result.committed:
        return result

    staged = (upserts.withColumn("__op", F.lit("upsert"))
              .unionByName(deletes.withColumn("__op", F.lit("delete")), allowMissingColumns=True))
    view = f"__merge_source_{uuid.uuid4().hex[:12]}"
    staged.createOrReplaceTempView(view)
    on = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
    values = [c for c in columns if c not in keys]
    changed = " OR ".join(f"NOT (t.`{c}` <=> s.`{c}`)" for c in values) or "FALSE"
    try:
        spark.sql(
            f"MERGE INTO {_sql_name(target)} t USING {view} s ON {on} "
            f"WHEN MATCHED AND s.__op = 'delete' THEN DELETE "
            f"WHEN MATCHED AND s.__op = 'upsert' AND ({changed}) THEN UPDATE SET "
            + ", ".join(f"`{c}` = s.`{c}`" for c in values)
            + " WHEN NOT MATCHED AND s.__op = 'upsert' THEN INSERT ("
            + ", ".join(f"`{c}`" for c in columns) + ") VALUES ("
            + ", ".join(f"s.`{c}`" for c in columns) + ")"
        ).collect()
    finally:
        spark.catalog.dropTempView(view)
    return result


# ----- parsing ---------------------------------------------------------------------------------
def landing_columns() -> list[str]:
    """Columns of a patients landing file, from the contract."""
    return list(landing_sources()[SOURCE]["columns"])


def _split_csv(line: str | None) -> list[str] | None:
    """Fields of one CSV line (RFC 4180 quoting), or None when the quoting is broken."""
    if line is None:
        return None
    try:
        rows = list(csv.reader([line], strict=True))
    except csv.Error:
        return None
    return rows[0] if rows else []


def csv_fields(column: "Column | str") -> "Column":
    """The CSV fields of a text column as ARRAY<STRING> (a Python UDF around ``csv.reader``).

    Why not ``from_csv``: on Sail it ignores quotes (``"Main St, Apt 4"`` becomes two fields)
    and fails the whole query on a line with too few or too many fields. Splitting the line
    ourselves lets a truncated line become a quarantined row instead of a failed job.
    """
    from pyspark.sql import functions as F

    udf = F.udf(lambda line: _split_csv(line), "array<string>")  # lambda: no type-hint guessing
    return udf(F.col(column) if isinstance(column, str) else column)


def _clean(col: "Column") -> "Column":
    """Trimmed string, empty -> NULL."""
    from pyspark.sql import functions as F

    trimmed = F.trim(col)
    return F.when(trimmed != "", trimmed)


def parse_patient_changes(bronze_df: "DataFrame") -> "DataFrame":
    """Bronze patient lines -> bronze columns + typed, standardized change columns.

    Each field is found by its name in the file's own header (``_header``), so a file with its
    columns in another order still parses. Added columns: ``_raw`` (every field as trimmed
    text, NULL when empty), ``_field_count`` / ``_expected_fields`` (a truncated line has
    fewer fields than its header), then the typed columns: ``change_id``, ``operation``
    (upper case), ``change_ts``, ``mrn`` (upper case), ``first_name``, ``last_name``,
    ``birth_date``, ``sex`` and ``state`` (upper case), ``city``, ``address_line``, ``zip``,
    ``zip3``, ``phone``, ``ssn``, ``payer_id``. Values that do not parse become NULL here;
    the expectations compare them with ``_raw`` to tell "empty" from "unparseable".
    """
    from pyspark.sql import functions as F

    bronze_cols = bronze_df.columns
    staged = bronze_df.select(*bronze_cols, csv_fields("value").alias("__fields"),
                              csv_fields("_header").alias("__header"))
    raw = F.struct(*[
        _clean(F.get(F.col("__fields"), F.array_position("__header", name).cast("int") - 1)).alias(name)
        for name in landing_columns()
    ])
    staged = staged.select(*bronze_cols, raw.alias("_raw"),
                           F.size("__fields").alias("_field_count"),
                           F.size("__header").alias("_expected_fields"))
    r = lambda name: F.col(f"_raw.{name}")  # noqa: E731 - a short accessor reads better here
    zip_code = r("zip")
    return staged.select(
        "*",
        r("change_id").alias("change_id"),
        F.upper(r("operation")).alias("operation"),
        r("change_ts").try_cast("timestamp").alias("change_ts"),
        F.upper(r("mrn")).alias("mrn"),
        r("first_name").alias("first_name"),
        r("last_name").alias("last_name"),
        r("birth_date").try_cast("date").alias("birth_date"),
        F.upper(r("sex")).alias("sex"),
        r("address_line").alias("address_line"),
        r("city").alias("city"),
        F.upper(r("state")).alias("state"),
        zip_code.alias("zip"),
        F.when(zip_code.rlike(r"^[0-9]{5}(-[0-9]{4})?$"), F.substring(zip_code, 1, 3)).alias("zip3"),
        r("phone").alias("phone"),
        r("ssn").alias("ssn"),
        r("payer_id").alias("payer_id"),
    )


def patient_change_expectations() -> list[Expectation]:
    """The rules a change record must pass to enter silver (all ``drop``: failures are quarantined).

    A DELETE carries only change_id, operation, change_ts and mrn, so the patient attributes
    are only required of INSERT and UPDATE. "Future" and "age" are measured against the
    batch's extract date (``_batch_date``), never today's date, so results are reproducible.
    """
    ops = ", ".join(f"'{op}'" for op in accepted_values("operation"))
    sexes = ", ".join(f"'{s}'" for s in accepted_values("sex"))
    not_delete = "operation = 'DELETE' OR "
    rules = {
        "complete_line": "_field_count = _expected_fields",
        "change_id_not_null": "change_id IS NOT NULL",
        "operation_valid": f"operation IN ({ops})",
        "change_ts_not_null": "_raw.change_ts IS NOT NULL",
        "change_ts_parses": "_raw.change_ts IS NULL OR change_ts IS NOT NULL",
        "change_ts_not_future":
            "change_ts IS NULL OR change_ts < CAST(date_add(_batch_date, 1) AS TIMESTAMP)",
        "mrn_not_null": "mrn IS NOT NULL",
        "birth_date_not_null": not_delete + "_raw.birth_date IS NOT NULL",
        "birth_date_parses": not_delete + "_raw.birth_date IS NULL OR birth_date IS NOT NULL",
        "birth_date_not_future": not_delete + "birth_date IS NULL OR birth_date <= _batch_date",
        "age_at_most_120": not_delete + "birth_date IS NULL OR "
                           f"birth_date > add_months(_batch_date, -{12 * MAX_AGE_YEARS})",
        "sex_valid": not_delete + f"sex IN ({sexes})",
        "last_name_not_null": not_delete + "last_name IS NOT NULL",
        "first_name_not_null": not_delete + "first_name IS NOT NULL",
    }
    return [Expectation(name, condition, "drop") for name, condition in rules.items()]


def deduplicate_changes(parsed: "DataFrame") -> tuple["DataFrame", "DataFrame"]:
    """Split parsed changes into (first arrival of each ``change_id``, later copies).

    The second frame has the removed line's lineage plus ``key`` and the lineage of the line
    kept (``kept_*``), the shape of ``silver.dedup_log``. Lines without a change_id are never
    duplicates (they are quarantined by the expectations instead).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    window = Window.partitionBy("change_id").orderBy(*ARRIVAL_ORDER)
    first = Window.partitionBy("change_id").orderBy(*ARRIVAL_ORDER).rowsBetween(
        Window.unboundedPreceding, Window.unboundedFollowing)
    ranked = parsed.select(
        "*",
        F.when(F.col("change_id").isNull(), F.lit(1))
        .otherwise(F.row_number().over(window)).alias("__rank"),
        F.first("_source_file").over(first).alias("kept_source_file"),
        F.first("_line_number").over(first).alias("kept_line_number"),
        F.first("_batch_date").over(first).alias("kept_batch_date"),
    )
    kept = ranked.where("__rank = 1").select(*parsed.columns)
    duplicates = ranked.where("__rank > 1").select(
        F.col("change_id").alias("key"), "_source_file", "_line_number", "_batch_date",
        "kept_source_file", "kept_line_number", "kept_batch_date")
    return kept, duplicates


def to_change_records(valid: "DataFrame") -> "DataFrame":
    """Valid parsed changes -> ``silver.patient_changes`` rows: MRN hashed, identifiers dropped."""
    from pyspark.sql import functions as F

    return valid.select(
        "change_id", "operation", "change_ts", patient_key(F.col("mrn")).alias("patient_key"),
        *[F.when(F.col("operation") != "DELETE", F.col(c)).alias(c) for c in VERSION_ATTRIBUTES],
        *LINEAGE_COLUMNS,
    )


# ----- SCD type 2 ------------------------------------------------------------------------------
def scd2_history(changes: "DataFrame") -> "DataFrame":
    """Change records -> SCD2 versions (``silver.patients`` columns), a pure function.

    Per patient, changes are ordered by ``change_ts`` (ties by ``change_id``). Every INSERT or
    UPDATE opens a version valid from its ``change_ts`` to the next change's (NULL when there
    is none: the current version). A DELETE opens nothing: it closes the version before it,
    which gets ``is_deleted = true``. Two INSERT/UPDATEs of one patient at the same instant
    would open two versions with the same key: the later ``change_id`` wins.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    is_delete = F.col("operation") == "DELETE"
    same_instant = Window.partitionBy("patient_key", "change_ts", is_delete).orderBy(
        F.col("change_id").desc())
    ordered = Window.partitionBy("patient_key").orderBy("change_ts", "change_id")
    kept = (changes.withColumn("__n", F.row_number().over(same_instant))
            .where(is_delete | (F.col("__n") == 1)))
    versions = kept.select(
        "*",
        F.lead("change_ts").over(ordered).alias("valid_to"),
        F.lead("operation").over(ordered).alias("__next_op"),
    ).where(~is_delete)
    return versions.select(
        "patient_key", *VERSION_ATTRIBUTES,
        F.col("change_ts").alias("valid_from"),
        "valid_to",
        F.col("valid_to").isNull().alias("is_current"),
        F.coalesce(F.col("__next_op") == "DELETE", F.lit(False)).alias("is_deleted"),
        *LINEAGE_COLUMNS,
    )


@dataclass
class Scd2Result:
    """What :func:`apply_scd2` did: change records received and new, versions merged."""

    changes_received: int
    changes_added: int
    patients_affected: int
    versions: MergeResult

    @property
    def is_noop(self) -> bool:
        return self.changes_added == 0 and not self.versions.committed


def _first_arrival(changes: "DataFrame") -> "DataFrame":
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    window = Window.partitionBy("change_id").orderBy(*ARRIVAL_ORDER)
    return changes.withColumn("__n", F.row_number().over(window)).where("__n = 1").drop("__n")


def apply_scd2(spark: "SparkSession", changes_df: "DataFrame", target: str = "silver.patients",
               changes_table: str = "silver.patient_changes") -> Scd2Result:
    """Apply change records (``silver.patient_changes`` shape) to the SCD2 ``target``.

    1. Record the changes not seen before (by ``change_id``) in ``changes_table``
       (MERGE ... WHEN NOT MATCHED THEN INSERT).
    2. Recompute the full history of every patient in ``changes_df`` from ``changes_table``
       (:func:`scd2_history`), so an out-of-order change lands in its place in time.
    3. MERGE the difference into ``target`` on ``(patient_key, valid_from)``.

    Replaying changes that were already applied changes nothing and commits nothing.
    """
    changes = conform(_first_arrival(conform(changes_df, PATIENT_CHANGES_DDL)), PATIENT_CHANGES_DDL)
    ensure_table(spark, changes_table, PATIENT_CHANGES_DDL)
    received = changes.count()
    log = spark.table(changes_table)
    new = changes.join(log.select("change_id"), "change_id", "left_anti").select(*changes.columns)
    added = new.count()
    if added:
        view = f"__new_changes_{uuid.uuid4().hex[:12]}"
        new.createOrReplaceTempView(view)
        cols = ", ".join(f"`{c}`" for c in changes.columns)
        try:
            spark.sql(f"MERGE INTO {_sql_name(changes_table)} t USING {view} s "
                      f"ON t.change_id = s.change_id WHEN NOT MATCHED THEN INSERT ({cols}) "
                      f"VALUES ({', '.join('s.' + c for c in cols.split(', '))})").collect()
        finally:
            spark.catalog.dropTempView(view)

    affected = changes.select("patient_key").distinct()
    patients = affected.count()
    history = scd2_history(spark.table(changes_table).join(affected, "patient_key", "left_semi"))
    versions = merge_changes(spark, history, target, patients_ddl(),
                             keys=["patient_key", "valid_from"], scope=affected)
    return Scd2Result(received, added, patients, versions)
