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

import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

from utils.contracts import accepted_values, silver_columns
from utils.expectations import FAILED_RULES_COLUMN, METRICS_SCHEMA, Expectation, apply_expectations
from utils.phi import hash_identifier, patient_key
from utils.silver import (
    ARRIVAL_ORDER,
    FUTURE_TOLERANCE_DAYS,
    LINEAGE_SCHEMA,
    RECONCILIATION_SCHEMA,
    dedup_log_frame,
    dedup_log_schema,
    deduplicate,
    is_unparseable,
    landing_columns,
    metrics_by_batch,
    parse_csv,
    standardize_code,
    typed,
)

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

ENTITY = "patients"
LAYER = "silver"

#: Lineage (and rescued data) every silver table carries, from bronze (same as utils.silver).
LINEAGE_COLUMNS: tuple[str, ...] = tuple(name for name, _ in LINEAGE_SCHEMA)
LINEAGE_DDL = ", ".join(f"{name} {type_}" for name, type_ in LINEAGE_SCHEMA)

#: Attributes of a patient version (no direct identifiers).
VERSION_ATTRIBUTES: tuple[str, ...] = ("birth_date", "sex", "city", "state", "zip3", "payer_id")

#: Tables written by :func:`build_patients` (all in the silver layer).
TABLES = {
    "changes": "silver.patient_changes",
    "patients": "silver.patients",
    "current": "silver.patients_current",
    "restricted": "silver.patients_restricted",
    "quarantine": "silver.quarantine_patients",
    "dedup_log": "silver.dedup_log",
    "dq_metrics": "silver.dq_metrics",
}

MAX_AGE_YEARS = 120


class SchemaMismatch(ValueError):
    """A DataFrame does not fit a table's explicit schema (a write would lose values)."""


# ----- schemas ---------------------------------------------------------------------------------
def _contract_ddl(table: str, skip: Iterable[str] = ()) -> str:
    cols = [f"{n} {s['type']}" for n, s in silver_columns(table).items() if n not in set(skip)]
    return ", ".join(cols) + ", " + LINEAGE_DDL


def patients_ddl() -> str:
    """silver.patients: the contract's columns, then lineage of the change opening the version."""
    return _contract_ddl("patients")


def patients_current_ddl() -> str:
    """silver.patients_current: a current version without the SCD2 bookkeeping columns."""
    return _contract_ddl("patients_current")


#: The pseudonymised change log, silver.patient_changes (one row per valid change record).
PATIENT_CHANGES_DDL = _contract_ddl("patient_changes")


def patients_restricted_ddl() -> str:
    """silver.patients_restricted: the contract's PHI columns, then lineage."""
    return _contract_ddl("patients_restricted")


def quarantine_ddl(bronze_df: "DataFrame") -> str:
    """silver.quarantine_patients: the bronze columns as they are, then ``_failed_rules``."""
    cols = [f"{f.name} {f.dataType.simpleString()}" for f in bronze_df.schema.fields]
    return ", ".join(cols) + f", {FAILED_RULES_COLUMN} array<string>"


def _struct(spark: "SparkSession", ddl: str):
    return spark.createDataFrame([], ddl).schema


def conform(df: "DataFrame", ddl: str) -> "DataFrame":
    """``df`` with exactly the columns and types of ``ddl``, or :class:`SchemaMismatch`.

    Missing or extra columns are refused. A column of another type is cast with ``try_cast``
    after checking (one aggregation) that no non-NULL value would become NULL
    (``'abc'`` into INT, ``2**40`` into INT): if one would, nothing is written. This is the
    check that stops Sail's silent NULL on a wrong-type write.
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
    lost = {}
    if casts:
        row = df.agg(*[F.sum(F.when(F.col(f.name).isNotNull()
                                    & F.col(f.name).try_cast(f.dataType).isNull(), 1)
                             .otherwise(0)).alias(f.name) for f in casts]).first()
        lost = {f.name: int(row[f.name]) for f in casts if row[f.name]}
    if lost:
        name = sorted(lost)[0]
        target = expected[name].dataType
        sample = (df.where(F.col(name).isNotNull() & F.col(name).try_cast(target).isNull())
                  .select(F.col(name).cast("string")).orderBy(1).first()[0])
        raise SchemaMismatch(
            f"column {name}: {lost[name]} value(s) of type {actual[name].simpleString()} do not "
            f"fit {target.simpleString()} (e.g. {sample!r}); refusing to write NULLs instead")
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


def _run_merge(spark: "SparkSession", source: "DataFrame", sql_template: str) -> None:
    """Run ``sql_template`` (with ``{source}``) against ``source`` as a temporary view."""
    view = f"__merge_source_{uuid.uuid4().hex[:12]}"
    source.createOrReplaceTempView(view)
    try:
        spark.sql(sql_template.format(source=view)).collect()
    finally:
        spark.catalog.dropTempView(view)


def _tally(staged: "DataFrame", current: "DataFrame", keys: list[str]) -> tuple[int, int, int]:
    """(inserted, updated, deleted) a MERGE of ``staged`` (rows flagged ``__op``) will do to
    ``current``, counted in one aggregation (an upsert whose key exists is an update)."""
    from pyspark.sql import functions as F

    existing = current.select(*keys).distinct().withColumn("__exists", F.lit(True))
    flagged = staged.select(*keys, "__op").join(existing, keys, "left")
    upsert, exists = F.col("__op") == "upsert", F.col("__exists").isNotNull()

    def count(condition: "Column") -> "Column":
        return F.sum(F.when(condition, 1).otherwise(0))

    row = flagged.agg(count(upsert & ~exists), count(upsert & exists),
                      count(F.col("__op") == "delete")).first()
    return tuple(int(v or 0) for v in row)


def merge_changes(spark: "SparkSession", source: "DataFrame", target: str, ddl: str,
                  keys: Iterable[str], scope: "DataFrame | None" = None) -> MergeResult:
    """Make ``target`` equal to ``source`` (within ``scope``) with one SQL MERGE of the diff.

    ``source`` is the complete desired content of the target rows in scope: rows missing from
    the target are inserted, rows that differ on a non-key column are updated, and target rows
    in scope whose key is not in ``source`` are deleted. ``scope`` (a DataFrame of values of
    some columns, e.g. the affected ``patient_key``s) limits the deletes; ``None`` means the
    whole table. When nothing differs no MERGE runs, so a replay adds no Delta version.

    The deletes are staged as source rows flagged ``__op = 'delete'`` (WHEN MATCHED ... THEN
    DELETE) rather than ``WHEN NOT MATCHED BY SOURCE AND key IN (subquery)``: MERGE conditions
    cannot hold subqueries (Spark, Databricks and Sail alike).
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
    staged = (upserts.withColumn("__op", F.lit("upsert"))
              .unionByName(deletes.withColumn("__op", F.lit("delete")), allowMissingColumns=True))
    result = MergeResult(target, *_tally(staged, current, keys))
    if not result.committed:
        return result

    on = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
    values = [c for c in columns if c not in keys]
    changed = " OR ".join(f"NOT (t.`{c}` <=> s.`{c}`)" for c in values) or "FALSE"
    _run_merge(spark, staged, (
        f"MERGE INTO {_sql_name(target)} t USING {{source}} s ON {on} "
        f"WHEN MATCHED AND s.__op = 'delete' THEN DELETE "
        f"WHEN MATCHED AND s.__op = 'upsert' AND ({changed}) THEN UPDATE SET "
        + ", ".join(f"`{c}` = s.`{c}`" for c in values)
        + " WHEN NOT MATCHED AND s.__op = 'upsert' THEN INSERT ("
        + ", ".join(f"`{c}`" for c in columns) + ") VALUES ("
        + ", ".join(f"s.`{c}`" for c in columns) + ")"))
    return result


# ----- parsing and rules -------------------------------------------------------------------------
def parse_patient_changes(bronze_df: "DataFrame") -> "DataFrame":
    """Bronze patient lines -> bronze columns + typed, standardized change columns.

    Fields are mapped by the file's own header (``utils.silver.parse_csv``: quote-aware, adds
    ``_raw``, ``_rescued_data``, ``_record_complete``, ``_valid_encoding``). Typed columns:
    ``change_id``, ``operation`` (upper case), ``change_ts``, ``mrn`` (upper case),
    ``first_name``, ``last_name``, ``birth_date``, ``sex`` and ``state`` (upper case),
    ``city``, ``address_line``, ``zip``, ``zip3`` (first 3 digits of a valid ZIP), ``phone``,
    ``ssn``, ``payer_id`` (upper case). A value that does not parse becomes NULL here and stays
    visible in ``_raw``, so the rules can tell "empty" from "unparseable".
    """
    from pyspark.sql import functions as F

    df = parse_csv(bronze_df, landing_columns(ENTITY))
    r = F.col("_raw")
    zip_code = r.zip
    return df.select(
        "*",
        r.change_id.alias("change_id"),
        standardize_code(r.operation, "upper").alias("operation"),
        typed(r.change_ts, "timestamp").alias("change_ts"),
        F.upper(r.mrn).alias("mrn"),
        r.first_name.alias("first_name"),
        r.last_name.alias("last_name"),
        typed(r.birth_date, "date").alias("birth_date"),
        standardize_code(r.sex, "upper").alias("sex"),
        r.address_line.alias("address_line"),
        r.city.alias("city"),
        standardize_code(r.state, "upper").alias("state"),
        zip_code.alias("zip"),
        F.when(zip_code.rlike(r"^[0-9]{5}(-[0-9]{4})?$"), F.substring(zip_code, 1, 3)).alias("zip3"),
        r.phone.alias("phone"),
        r.ssn.alias("ssn"),
        F.upper(r.payer_id).alias("payer_id"),
    )


def patient_change_expectations() -> list[Expectation]:
    """The rules a change record must pass to enter silver (all ``drop``: failures are quarantined).

    A DELETE carries only change_id, operation, change_ts and mrn, so the patient attributes
    are only required of INSERT and UPDATE. "Future" and "age" are measured against the
    batch's extract date (``_batch_date``), never today's date, so results are reproducible;
    like the other silver entities, a change may be dated up to one day after its batch.
    """
    ops = ", ".join(f"'{op}'" for op in accepted_values("operation"))
    sexes = ", ".join(f"'{s}'" for s in accepted_values("sex"))
    upsert = "operation = 'DELETE' OR "
    rules = {
        "valid_encoding": "_valid_encoding",
        "complete_record": "_record_complete",
        "change_id_not_null": "change_id IS NOT NULL",
        "operation_accepted": f"operation IN ({ops})",
        "change_ts_not_null": "_raw.change_ts IS NOT NULL",
        "change_ts_parses": is_unparseable("change_ts", "change_ts"),
        "change_ts_not_future": "change_ts IS NULL OR "
                                f"CAST(change_ts AS DATE) <= date_add(_batch_date, {FUTURE_TOLERANCE_DAYS})",
        "mrn_not_null": "mrn IS NOT NULL",
        "birth_date_not_null": upsert + "_raw.birth_date IS NOT NULL",
        "birth_date_parses": upsert + is_unparseable("birth_date", "birth_date"),
        "birth_date_not_future": upsert + "birth_date IS NULL OR birth_date <= _batch_date",
        "age_at_most_120": upsert + "birth_date IS NULL OR "
                           f"birth_date > add_months(_batch_date, -{12 * MAX_AGE_YEARS})",
        "sex_accepted": upsert + f"sex IN ({sexes})",
        "first_name_not_null": upsert + "first_name IS NOT NULL",
        "last_name_not_null": upsert + "last_name IS NOT NULL",
        "payer_id_not_null": upsert + "payer_id IS NOT NULL",
    }
    return [Expectation(name, condition, "drop") for name, condition in rules.items()]


def deduplicate_changes(parsed: "DataFrame"):
    """First arrival of each ``change_id`` (``utils.silver.deduplicate``); ``.removed`` are the
    later copies (a re-delivered change), for ``silver.dedup_log``."""
    return deduplicate(parsed, ["change_id"])


def to_change_records(valid: "DataFrame") -> "DataFrame":
    """Valid parsed changes -> ``silver.patient_changes`` rows: MRN hashed, identifiers dropped."""
    from pyspark.sql import functions as F

    return valid.select(
        "change_id", "operation", "change_ts", patient_key(F.col("mrn")).alias("patient_key"),
        *[F.when(F.col("operation") != "DELETE", F.col(c)).alias(c) for c in VERSION_ATTRIBUTES],
        *LINEAGE_COLUMNS,
    )


def restricted_frame(valid: "DataFrame") -> "DataFrame":
    """silver.patients_restricted rows: the latest change of each live patient, with PHI.

    A patient whose latest change is a DELETE has no row (their identifiers are not kept
    around once the EHR retired the record). ``ssn_hash`` hashes the SSN's digits only, so
    ``123-45-6789`` and ``123456789`` give the same hash.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    latest = Window.partitionBy("patient_key").orderBy(F.col("change_ts").desc(),
                                                       F.col("change_id").desc())
    ranked = (valid.withColumn("patient_key", patient_key(F.col("mrn")))
              .withColumn("__n", F.row_number().over(latest)))
    return ranked.where((F.col("__n") == 1) & (F.col("operation") != "DELETE")).select(
        "patient_key", "mrn",
        hash_identifier(F.regexp_replace(F.col("ssn"), r"[^0-9]", "")).alias("ssn_hash"),
        "first_name", "last_name", "ssn", "phone", "address_line", *LINEAGE_COLUMNS)


def current_frame(patients: "DataFrame") -> "DataFrame":
    """silver.patients_current (SCD type 1): the current, not deleted version of each patient."""
    from pyspark.sql import functions as F

    names = [name.split()[0] for name in patients_current_ddl().split(", ")]
    return patients.where(F.col("is_current") & ~F.col("is_deleted")).select(*names)


# ----- SCD type 2 ------------------------------------------------------------------------------
def scd2_history(changes: "DataFrame") -> "DataFrame":
    """Change records -> SCD2 versions (``silver.patients`` columns), a pure function.

    Needs ``change_id``, ``operation``, ``change_ts`` and ``patient_key``; the version
    attributes and lineage columns present are carried along.

    Per patient, changes are ordered by ``change_ts`` (ties by ``change_id``). Every INSERT or
    UPDATE opens a version valid from its ``change_ts`` to the next change's (NULL when there
    is none: the current version). A DELETE opens nothing: it closes the version before it,
    which gets ``is_deleted = true`` (so a deleted patient has no current version). A later
    INSERT/UPDATE re-opens the patient. Two INSERT/UPDATEs of one patient at the same instant
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
    present = set(changes.columns)  # a demo frame may carry only some attributes
    return versions.select(
        "patient_key", *[c for c in VERSION_ATTRIBUTES if c in present],
        F.col("change_ts").alias("valid_from"),
        "valid_to",
        F.col("valid_to").isNull().alias("is_current"),
        F.coalesce(F.col("__next_op") == "DELETE", F.lit(False)).alias("is_deleted"),
        *[c for c in LINEAGE_COLUMNS if c in present],
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
    """One row per ``change_id``: the first delivered (same order as ``utils.silver``)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    window = Window.partitionBy("change_id").orderBy(*[F.col(c).asc_nulls_last()
                                                       for c in ARRIVAL_ORDER])
    return changes.withColumn("__n", F.row_number().over(window)).where("__n = 1").drop("__n")


def apply_scd2(spark: "SparkSession", changes_df: "DataFrame", target: str = "silver.patients",
               changes_table: str = "silver.patient_changes") -> Scd2Result:
    """Apply change records (``silver.patient_changes`` shape) to the SCD2 ``target``.

    1. Record the changes not seen before (by ``change_id``; first arrival wins) in
       ``changes_table`` with ``MERGE ... WHEN NOT MATCHED THEN INSERT``.
    2. Recompute the full history of every patient in ``changes_df`` from ``changes_table``
       (:func:`scd2_history`), so an out-of-order change lands in its place in time.
    3. MERGE the difference into ``target`` on ``(patient_key, valid_from)``
       (:func:`merge_changes`, scoped to those patients).

    Replaying changes that were already applied changes nothing and commits nothing.
    """
    from pyspark.sql import functions as F

    changes = _first_arrival(conform(changes_df, PATIENT_CHANGES_DDL))
    ensure_table(spark, changes_table, PATIENT_CHANGES_DDL)
    received, patients = changes.agg(F.count(F.lit(1)),
                                     F.count_distinct("patient_key")).first()
    new = changes.join(spark.table(changes_table).select("change_id"), "change_id", "left_anti")
    new = new.select(*changes.columns)
    added = new.count()
    if added:
        cols = [f"`{c}`" for c in changes.columns]
        _run_merge(spark, new, (
            f"MERGE INTO {_sql_name(changes_table)} t USING {{source}} s "
            f"ON t.change_id = s.change_id WHEN NOT MATCHED THEN INSERT ({', '.join(cols)}) "
            f"VALUES ({', '.join('s.' + c for c in cols)})"))

    affected = changes.select("patient_key").distinct()
    history = scd2_history(spark.table(changes_table).join(affected, "patient_key", "left_semi"))
    versions = merge_changes(spark, history, target, patients_ddl(),
                             keys=["patient_key", "valid_from"], scope=affected)
    return Scd2Result(received, added, patients, versions)


# ----- the driver --------------------------------------------------------------------------------
@dataclass
class PatientsReport:
    """What :func:`build_patients` did, table by table, and the rows per outcome."""

    run_id: str
    bronze_rows: int = 0
    valid_changes: int = 0
    quarantined: int = 0
    duplicates: int = 0
    scd2: Scd2Result | None = None
    merges: dict[str, MergeResult] = field(default_factory=dict)

    @property
    def balanced(self) -> bool:
        return self.bronze_rows == self.valid_changes + self.quarantined + self.duplicates

    def as_rows(self) -> list[tuple[str, int, int, int]]:
        """(table, inserted, updated, deleted) of every write of this run, sorted by table."""
        return [(m.target, m.inserted, m.updated, m.deleted)
                for m in sorted(self.merges.values(), key=lambda m: m.target)]


def _one_row(spark: "SparkSession", ddl: str, *values: Any) -> "DataFrame":
    return spark.createDataFrame([tuple(values)], ddl)


@dataclass
class PatientsCleanse:
    """Bronze patient lines split three ways (lazy DataFrames, nothing written).

    ``valid``: parsed change records that passed every rule (with PHI: restricted use);
    ``quarantined``: bronze columns + ``_failed_rules``; ``duplicates``: ``silver.dedup_log``
    rows of the later copies; ``batch_metrics``: (batch, RuleMetric) per batch and rule.
    """

    valid: "DataFrame"
    quarantined: "DataFrame"
    duplicates: "DataFrame"
    batch_metrics: list
    rules: list[Expectation]

    def changes(self) -> "DataFrame":
        """The valid records as ``silver.patient_changes`` rows (pseudonymised)."""
        return to_change_records(self.valid)


def cleanse_patients(bronze_df: "DataFrame",
                     stage: "Callable[[DataFrame], DataFrame] | None" = None) -> PatientsCleanse:
    """parse -> dedupe by change_id (first arrival) -> expectations, without writing.

    ``stage`` (optional) materializes the parsed frame once, so the dozen counts and writes
    that follow read it instead of re-parsing every CSV line (:func:`build_patients`
    passes a scratch-Delta stager: Sail's ``cache()`` does not keep results).
    """
    parsed = parse_patient_changes(bronze_df)
    dedup = deduplicate_changes(stage(parsed) if stage else parsed)
    kept = dedup.kept
    rules = patient_change_expectations()
    result = apply_expectations(kept, rules, sample_order=list(ARRIVAL_ORDER))
    return PatientsCleanse(
        valid=result.valid,
        quarantined=result.quarantined.select(*bronze_df.columns, FAILED_RULES_COLUMN),
        duplicates=dedup_log_frame(dedup.removed, ENTITY, ["change_id"]),
        batch_metrics=metrics_by_batch(kept, rules),
        rules=rules,
    )


@contextmanager
def _staging(spark: "SparkSession"):
    """A stager writing a frame once to a private Delta folder and reading it back.

    Locally the folder is ``<lakehouse>/_staging/cdc_patients`` (outside the layer folders, so
    it is never registered as a course table) and is removed afterwards. On Databricks the
    frame is used as is.
    """
    import shutil

    from utils.config import get_config

    config = get_config()
    if config.databricks:
        yield None
        return
    path = config.lakehouse_dir / "_staging" / "cdc_patients"

    def stage(df: "DataFrame") -> "DataFrame":
        df.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(str(path))
        return spark.read.format("delta").load(str(path))

    try:
        yield stage
    finally:
        shutil.rmtree(path, ignore_errors=True)


def build_patients(spark: "SparkSession", run_id: str | None = None,
                   through_batch: Any = None) -> PatientsReport:
    """bronze.patients -> every silver patient table, idempotently (MERGE of differences only).

    Reads all of ``bronze.patients`` (or only batches up to ``through_batch``, to replay the
    timeline in a demo), parses, dedupes by ``change_id`` and validates
    (:func:`cleanse_patients`), then writes ``silver.quarantine_patients``, the patients' rows
    of ``silver.dedup_log`` and ``silver.dq_metrics`` (this run's, per batch),
    ``silver.patient_changes`` and ``silver.patients`` (:func:`apply_scd2`),
    ``silver.patients_restricted`` and ``silver.patients_current``. Running it again on the
    same bronze commits nothing to any table but ``dq_metrics`` (one set of rows per run id).
    """
    from pyspark.sql import functions as F

    from utils.tables import register_course_tables

    run_id = run_id or f"cdc-{uuid.uuid4().hex[:12]}"
    register_course_tables(spark)
    bronze_df = spark.table(f"bronze.{ENTITY}")
    if through_batch is not None:
        bronze_df = bronze_df.where(F.col("_batch_date") <= F.lit(through_batch).cast("date"))
    report = PatientsReport(run_id, bronze_rows=bronze_df.count())
    with _staging(spark) as stage:
        _build(spark, report, bronze_df, cleanse_patients(bronze_df, stage))
    return report


def _build(spark: "SparkSession", report: PatientsReport, bronze_df: "DataFrame",
           cleansed: PatientsCleanse) -> None:
    from pyspark.sql import functions as F

    run_id = report.run_id

    report.merges["quarantine"] = merge_changes(
        spark, cleansed.quarantined, TABLES["quarantine"], quarantine_ddl(bronze_df),
        keys=["_source_file", "_line_number"])
    report.merges["dedup_log"] = merge_changes(
        spark, cleansed.duplicates, TABLES["dedup_log"], dedup_log_schema(),
        keys=["entity", "_source_file", "_line_number"],
        scope=_one_row(spark, "entity STRING", ENTITY))
    metric_rows = [(run_id, ENTITY, batch, m.rule, m.action, m.condition, m.passed, m.failed)
                   for batch, m in cleansed.batch_metrics]
    report.merges["dq_metrics"] = merge_changes(
        spark, spark.createDataFrame(metric_rows, METRICS_SCHEMA), TABLES["dq_metrics"],
        METRICS_SCHEMA, keys=["run_id", "dataset", "batch_date", "rule"],
        scope=_one_row(spark, "run_id STRING, dataset STRING", run_id, ENTITY))

    report.scd2 = apply_scd2(spark, cleansed.changes(), TABLES["patients"], TABLES["changes"])
    report.merges["patients"] = report.scd2.versions
    report.merges["restricted"] = merge_changes(
        spark, restricted_frame(cleansed.valid), TABLES["restricted"], patients_restricted_ddl(),
        keys=["patient_key"])
    report.merges["current"] = merge_changes(
        spark, current_frame(spark.table(TABLES["patients"])), TABLES["current"],
        patients_current_ddl(), keys=["patient_key"])

    report.valid_changes = report.scd2.changes_received
    report.quarantined = spark.table(TABLES["quarantine"]).count()
    report.duplicates = spark.table(TABLES["dedup_log"]).where(F.col("entity") == ENTITY).count()


def reset_patient_tables(spark: "SparkSession") -> list[str]:
    """Drop the silver tables this module owns and delete the patients' rows of the shared
    ``silver.dedup_log`` / ``silver.dq_metrics``; return the dropped table names, sorted.

    For demos that replay the timeline from the first batch (notebook 04): re-running the
    notebook then shows the same versions and row counts instead of "nothing to do".
    """
    import shutil

    from utils.config import get_config
    from utils.tables import is_delta_table

    config = get_config()
    dropped = []
    for key in ("changes", "patients", "current", "restricted", "quarantine"):
        name = TABLES[key]
        layer, table = _split_name(name)
        spark.sql(f"DROP TABLE IF EXISTS {_sql_name(name)}")
        path = config.table_path(layer, table)
        if path is not None and path.exists():
            shutil.rmtree(path)
        dropped.append(name)
    for key, column in (("dedup_log", "entity"), ("dq_metrics", "dataset")):
        layer, table = _split_name(TABLES[key])
        path = config.table_path(layer, table)
        if config.databricks or (path is not None and is_delta_table(path)):
            spark.sql(f"DELETE FROM {_sql_name(TABLES[key])} WHERE {column} = '{ENTITY}'")
    return sorted(dropped)


def late_changes(changes: "DataFrame") -> "DataFrame":
    """Changes delivered in a batch after the day they happened (``late_arriving``).

    Adds ``latest_before``: the newest ``change_ts`` of the same patient among changes
    delivered in earlier batches (NULL if none), and ``out_of_order``: the change is older
    than that one. An out-of-order change is the case a naive "the newest arrival is current"
    upsert gets wrong; a late change that is not out of order still has to start its version
    when it happened, not when it arrived.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    per_batch = changes.groupBy("patient_key", "_batch_date").agg(
        F.max("change_ts").alias("__batch_max"))
    earlier = Window.partitionBy("patient_key").orderBy("_batch_date").rowsBetween(
        Window.unboundedPreceding, -1)
    seen = per_batch.select("patient_key", "_batch_date",
                            F.max("__batch_max").over(earlier).alias("latest_before"))
    return (changes.join(seen, ["patient_key", "_batch_date"])
            .where(F.to_date("change_ts") < F.col("_batch_date"))
            .withColumn("out_of_order",
                        F.coalesce(F.col("change_ts") < F.col("latest_before"), F.lit(False))))


def patients_reconciliation(spark: "SparkSession") -> "DataFrame":
    """Per batch: bronze rows = valid change records + quarantined + removed duplicates.

    Same columns as ``utils.silver.reconciliation`` (entity ``patients``); the silver side of
    patients is ``silver.patient_changes`` (versions in ``silver.patients`` are derived rows).
    """
    from functools import reduce

    from pyspark.sql import functions as F

    def counted(table: str, name: str) -> "DataFrame":
        df = spark.table(table)
        if table == TABLES["dedup_log"]:
            df = df.where(F.col("entity") == ENTITY)
        return df.groupBy(F.col("_batch_date").alias("batch_date")).agg(F.count(F.lit(1)).alias(name))

    parts = [counted(f"bronze.{ENTITY}", "bronze_rows"),
             counted(TABLES["changes"], "silver_rows"),
             counted(TABLES["quarantine"], "quarantined_rows"),
             counted(TABLES["dedup_log"], "duplicate_rows")]
    joined = reduce(lambda a, b: a.join(b, "batch_date", "full_outer"), parts)
    counts = ["bronze_rows", "silver_rows", "quarantined_rows", "duplicate_rows"]
    out = joined.select(F.lit(ENTITY).alias("entity"), "batch_date",
                        *[F.coalesce(F.col(c), F.lit(0)).cast("bigint").alias(c) for c in counts])
    balanced = (F.col("bronze_rows")
                == F.col("silver_rows") + F.col("quarantined_rows") + F.col("duplicate_rows"))
    names = [p.split()[0] for p in RECONCILIATION_SCHEMA.split(", ")]
    return out.withColumn("balanced", balanced).select(*names).orderBy("batch_date")
