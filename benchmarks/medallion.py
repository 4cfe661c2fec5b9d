"""The medallion benchmark workload: one engine-agnostic PySpark job, landing CSV to gold.

``run_workload(spark, landing_dir, out_dir, table_format)`` does what the course's bronze,
silver and gold notebooks do, in the standard DataFrame API only, so the very same code runs
on Sail (the course engine) and on JVM PySpark with delta-spark (``utils.session.jvm_builder``),
both reading and writing Delta tables:

1. ingest   landing CSVs (encounters, patient change records, claims) read as raw text lines
            into bronze tables (line + the header of its file);
2. parse    split each line into fields (quote-aware regex, identical on both engines), map
            fields by the file's own header (a batch with an extra column still parses),
            ``try_cast`` to types, trim/case-standardise codes, reject malformed rows;
3. dedupe   ``row_number`` over the business key (exact and near duplicates);
4. join     encounters to the patient's current version (latest change per MRN, deletes
            dropped), with a salted sha2 patient_key;
5. readmit  30-day unplanned readmission with ``lead`` over each patient's inpatient stays,
            as the gold contract defines it;
6. aggregate by month x facility (readmissions; volume, charges and paid claims);
7. write    bronze, silver and gold Delta tables (every phase reads the Delta tables the
            one before wrote).

Why text + regex and not ``spark.read.csv`` or ``from_csv``: on Sail 0.7.2 one malformed row
fails the whole CSV read, and ``from_csv`` both ignores quotes and fails the whole query when a
line has more or fewer fields than the schema (measured). The landing data has planted
truncated lines, so both engines run the same text parser.

Run one (engine, size) in a fresh process, so its wall time includes session start::

    python -m benchmarks.medallion --engine sail --data <landing dir> --out <scratch dir>

It prints one ``BENCH_RESULT {json}`` line: per-phase seconds and the gold checksums (which
must be equal on both engines for the same data). When the engine cannot start (no Java, the
delta-spark jars unreachable) it prints one ``BENCH_ERROR <what to do>`` line and exits 2.
``--warm-up`` only starts and stops the engine: the harness runs it once before timing JVM
PySpark, so the first start's jar download from Maven Central is never timed::

    python -m benchmarks.medallion --engine jvm --warm-up
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

RESULT_PREFIX = "BENCH_RESULT "
#: Prefix of the one line a run prints when its engine cannot start (exit status 2).
ERROR_PREFIX = "BENCH_ERROR "
ENGINES = ("sail", "jvm")

#: Landing sources the workload reads: short name -> (landing folder, columns in contract order).
SOURCES = ("ehr_encounters", "ehr_patients", "payer_claims")

#: A CSV field preceded by its comma: a quoted field ("" is an escaped quote) or a bare one.
#: Each line is prefixed with a comma, so every field (even an empty first one) is matched once.
FIELD_PATTERN = r',("(?:[^"]|"")*"|[^,]*)'

#: Joins a quoted line's fields while their quotes are stripped (never in the data).
FIELD_JOINER = "\u0001"

#: Salt of the benchmark's patient_key (the course's own salt lives in utils.phi).
PATIENT_KEY_SALT = "benchmark-salt"

#: JVM driver heap: Spark's default (1g), as the course's ``jvm_builder`` leaves it, unless
#: BENCH_JVM_DRIVER_MEMORY says otherwise.
JVM_DRIVER_MEMORY = os.environ.get("BENCH_JVM_DRIVER_MEMORY") or None


def contract_columns(source: str) -> list[str]:
    """Columns of a landing CSV source, in contract order."""
    from utils.contracts import landing_sources

    return list(landing_sources()[source]["columns"])


# ----- file discovery (plain Python, cheap) -------------------------------------------------------
def landing_files(landing_dir: str | Path, source: str) -> dict[str, list[str]]:
    """The CSV files of one landing source grouped by their header line.

    Files of one source normally share one header; a schema-drift batch has its own. Reading
    each group separately lets every line be parsed with its file's header, without
    ``input_file_name()`` (unsupported on Sail).
    """
    groups: dict[str, list[str]] = {}
    for path in sorted(Path(landing_dir, source).glob("*/*.csv")):
        with path.open("r", encoding="utf-8", newline="") as handle:
            header = handle.readline().rstrip("\r\n").lstrip("\ufeff")
        if header:
            groups.setdefault(header, []).append(str(path))
    return groups


def resolve_landing_dir(path: str | Path) -> Path:
    """``path`` itself or its ``landing/`` child, whichever holds the source folders."""
    path = Path(path)
    if not (path / "ehr_encounters").is_dir() and (path / "landing" / "ehr_encounters").is_dir():
        return path / "landing"
    return path


def count_data_lines(landing_dir: str | Path, source: str = "ehr_encounters") -> int:
    """Non-empty lines below the header in every file of a source (the rows the workload reads)."""
    total = 0
    for files in landing_files(landing_dir, source).values():
        for name in files:
            with open(name, "rb") as handle:
                lines = [line for line in handle.read().split(b"\n") if line.strip()]
            total += max(len(lines) - 1, 0)
    return total


# ----- the workload (DataFrame API only) -------------------------------------------------------
def _blank_to_null(column: "Column") -> "Column":
    from pyspark.sql import functions as F

    trimmed = F.trim(column)
    return F.when(trimmed != "", trimmed)


def split_csv_line(line: "Column") -> "Column":
    """The fields of a CSV line as an array of strings, quotes removed ("" inside -> ").

    Lines without a quote are split on commas; the others with a quote-aware regex, then
    their fields are joined on U+0001 to strip opening and closing quotes in two passes (no
    lambda: a filter over a ``transform`` lambda fails on Sail 0.7.2). Same result on both
    engines.
    """
    from pyspark.sql import functions as F

    quoted = F.regexp_extract_all(F.concat(F.lit(","), line), F.lit(FIELD_PATTERN), 1)
    joined = F.array_join(quoted, FIELD_JOINER)
    opened = F.regexp_replace(joined, f"(^|{FIELD_JOINER})\"", "$1")
    closed = F.regexp_replace(opened, f"\"({FIELD_JOINER}|$)", "$1")
    unquoted = F.split(F.regexp_replace(closed, '""', '"'), FIELD_JOINER, -1)
    return F.when(line.contains('"'), unquoted).otherwise(F.split(line, ",", -1))


def ingest_bronze(spark: "SparkSession", landing_dir: str | Path, source: str) -> "DataFrame":
    """Raw lines of a source with the header of their file; header and blank lines dropped."""
    from pyspark.sql import functions as F

    groups = landing_files(landing_dir, source)
    if not groups:
        raise FileNotFoundError(f"no CSV files under {Path(landing_dir, source)}/*/")
    frames = []
    for header, files in groups.items():
        lines = spark.read.text(files)
        frames.append(
            lines.filter((F.col("value") != header) & (F.trim(F.col("value")) != ""))
            .select(F.col("value").alias("line"), F.lit(header).alias("_header"))
        )
    return reduce(lambda left, right: left.unionByName(right), frames)


def parse_lines(bronze: "DataFrame", columns: list[str]) -> "DataFrame":
    """Split bronze lines into the contract's string columns plus ``_well_formed``.

    Each field is found by its name's position in the line's own header, so a schema-drift
    batch (an extra column anywhere) parses in the same pass. A line is well formed when it
    has exactly as many fields as its header. Columns a header lacks are NULL.

    (Parsing per header with a filter on ``_header`` first is ~30x slower on Sail 0.7.2, and
    one CASE per header per column overflows JVM codegen's 64 KB limit: measured.)
    """
    from pyspark.sql import functions as F

    split = bronze.select(
        "line",
        split_csv_line(F.col("line")).alias("_fields"),
        F.split("_header", ",", -1).alias("_names"),
    )

    def field(column: str) -> "Column":
        position = F.nullif(F.array_position("_names", F.lit(column)).cast("int"), F.lit(0))
        return _blank_to_null(F.try_element_at("_fields", position))

    return split.select(
        "line",
        (F.size("_fields") == F.size("_names")).alias("_well_formed"),
        *[field(column).alias(column) for column in columns],
    )


def check_encounters(parsed: "DataFrame") -> "DataFrame":
    """Typed encounters with ``_valid`` (the raw ``line`` kept for the quarantine)."""
    from pyspark.sql import functions as F

    from utils.contracts import accepted_values

    typed = parsed.select(
        "line",
        "_well_formed",
        F.upper(F.col("encounter_id")).alias("encounter_id"),
        F.upper(F.col("mrn")).alias("mrn"),
        F.upper(F.col("facility_id")).alias("facility_id"),
        F.col("provider_npi"),
        F.lower(F.col("encounter_class")).alias("encounter_class"),
        F.col("admit_ts").try_cast("timestamp").alias("admit_ts"),
        F.col("discharge_ts").try_cast("timestamp").alias("discharge_ts"),
        F.col("discharge_ts").isNotNull().alias("_has_discharge_text"),
        F.lower(F.col("admission_type")).alias("admission_type"),
        F.lower(F.col("admission_source")).alias("admission_source"),
        F.lower(F.col("discharge_disposition")).alias("discharge_disposition"),
        F.upper(F.col("payer_id")).alias("payer_id"),
        F.upper(F.col("primary_dx")).alias("primary_dx"),
        F.upper(F.col("secondary_dx")).alias("secondary_dx"),
        F.col("total_charge").try_cast("decimal(12,2)").alias("total_charge"),
        F.col("total_charge").isNotNull().alias("_has_charge_text"),
    )
    valid = (
        F.col("_well_formed")
        & F.col("encounter_id").isNotNull()
        & F.col("mrn").isNotNull()
        & F.col("admit_ts").isNotNull()
        & F.col("encounter_class").isin(accepted_values("encounter_class"))
        & (F.col("discharge_ts").isNotNull() | ~F.col("_has_discharge_text"))
        & (F.col("discharge_ts").isNull() | (F.col("discharge_ts") >= F.col("admit_ts")))
        & (F.col("total_charge").isNotNull() | ~F.col("_has_charge_text"))
    )
    return (typed.withColumn("_valid", F.coalesce(valid, F.lit(False)))
            .drop("_well_formed", "_has_discharge_text", "_has_charge_text"))


def silver_encounters(checked: "DataFrame") -> tuple["DataFrame", "DataFrame"]:
    """Valid encounters, one row per encounter_id (latest discharge wins), and rejected lines."""
    from pyspark.sql import functions as F
    from pyspark.sql.window import Window

    rejected = checked.filter(~F.col("_valid")).select(F.lit("encounters").alias("source"), "line")
    latest_first = Window.partitionBy("encounter_id").orderBy(
        F.col("discharge_ts").desc_nulls_last(), F.col("line").desc()
    )
    deduped = (
        checked.filter(F.col("_valid"))
        .withColumn("_rn", F.row_number().over(latest_first))
        .filter(F.col("_rn") == 1)
        .drop("_rn", "_valid", "line")
    )
    return deduped, rejected


def silver_patients_current(parsed: "DataFrame") -> "DataFrame":
    """The current version of each patient (latest change per MRN, deleted patients dropped)."""
    from pyspark.sql import functions as F
    from pyspark.sql.window import Window

    typed = parsed.select(
        "_well_formed",
        F.col("change_id"),
        F.upper(F.col("operation")).alias("operation"),
        F.col("change_ts").try_cast("timestamp").alias("change_ts"),
        F.upper(F.col("mrn")).alias("mrn"),
        F.col("birth_date").try_cast("date").alias("birth_date"),
        F.upper(F.col("sex")).alias("sex"),
        F.upper(F.col("state")).alias("state"),
        F.upper(F.col("payer_id")).alias("patient_payer_id"),
    )
    valid = (
        F.col("_well_formed") & F.col("change_id").isNotNull() & F.col("mrn").isNotNull()
        & F.col("change_ts").isNotNull() & F.col("operation").isin("INSERT", "UPDATE", "DELETE")
    )
    latest = Window.partitionBy("mrn").orderBy(F.col("change_ts").desc(), F.col("change_id").desc())
    return (
        typed.filter(F.coalesce(valid, F.lit(False)))
        .withColumn("_rn", F.row_number().over(latest))
        .filter((F.col("_rn") == 1) & (F.col("operation") != "DELETE"))
        .select(
            "mrn",
            F.sha2(F.concat(F.lit(PATIENT_KEY_SALT), F.col("mrn")), 256).alias("patient_key"),
            "birth_date", "sex", "state", "patient_payer_id",
        )
    )


def silver_claims(parsed: "DataFrame") -> "DataFrame":
    """Typed claim lines, one per (claim_id, line_number)."""
    from pyspark.sql import functions as F
    from pyspark.sql.window import Window

    typed = parsed.select(
        "_well_formed",
        F.upper(F.col("claim_id")).alias("claim_id"),
        F.col("line_number").try_cast("int").alias("line_number"),
        F.upper(F.col("encounter_id")).alias("encounter_id"),
        F.col("service_date").try_cast("date").alias("service_date"),
        F.col("billed_amount").try_cast("decimal(12,2)").alias("billed_amount"),
        F.col("paid_amount").try_cast("decimal(12,2)").alias("paid_amount"),
        F.lower(F.col("claim_status")).alias("claim_status"),
    )
    valid = (
        F.col("_well_formed") & F.col("claim_id").isNotNull() & F.col("line_number").isNotNull()
        & F.col("encounter_id").isNotNull()
    )
    one_per_line = Window.partitionBy("claim_id", "line_number").orderBy(
        F.col("paid_amount").desc_nulls_last(), F.col("claim_status")
    )
    return (
        typed.filter(F.coalesce(valid, F.lit(False)))
        .withColumn("_rn", F.row_number().over(one_per_line))
        .filter(F.col("_rn") == 1)
        .drop("_rn", "_well_formed")
    )


def join_patients(encounters: "DataFrame", patients: "DataFrame") -> "DataFrame":
    """Encounters with their patient's key and current demographics (inner join: orphans drop)."""
    return encounters.join(patients, on="mrn", how="inner").drop("mrn")


def gold_readmission(encounters: "DataFrame") -> "DataFrame":
    """30-day unplanned readmissions by discharge month and facility (gold contract rules)."""
    from pyspark.sql import functions as F
    from pyspark.sql.window import Window

    stays = encounters.filter(F.col("encounter_class") == "inpatient")
    by_patient = Window.partitionBy("patient_key").orderBy("admit_ts", "encounter_id")
    with_next = stays.select(
        "facility_id", "admit_ts", "discharge_ts", "discharge_disposition",
        F.lead("admit_ts").over(by_patient).alias("next_admit_ts"),
        F.lead("admission_type").over(by_patient).alias("next_admission_type"),
    )
    index = with_next.filter(
        F.col("discharge_ts").isNotNull()
        & ~F.coalesce(F.col("discharge_disposition"), F.lit("")).isin("expired", "transfer")
    )
    gap_days = F.datediff(F.to_date("next_admit_ts"), F.to_date("discharge_ts"))
    readmitted = (
        F.col("next_admit_ts").isNotNull()
        & (F.coalesce(F.col("next_admission_type"), F.lit("")) != "elective")
        & gap_days.between(0, 30)
    )
    return (
        index.select(
            F.trunc(F.to_date("discharge_ts"), "month").alias("month"),
            "facility_id",
            F.when(readmitted, 1).otherwise(0).alias("readmitted"),
        )
        .groupBy("month", "facility_id")
        .agg(F.count(F.lit(1)).alias("index_discharges"),
             F.sum("readmitted").cast("bigint").alias("readmissions_30d"))
        .withColumn("rate", F.round(F.col("readmissions_30d") / F.col("index_discharges"), 4))
    )


def gold_facility_month(encounters: "DataFrame", claims: "DataFrame") -> "DataFrame":
    """Encounter volume, patients, charges and paid claims by admit month and facility."""
    from pyspark.sql import functions as F

    paid = claims.groupBy("encounter_id").agg(
        F.sum("paid_amount").alias("paid_amount"),
        F.sum(F.when(F.col("claim_status") == "denied", 1).otherwise(0)).alias("denied_lines"),
    )
    return (
        encounters.join(paid, on="encounter_id", how="left")
        .groupBy(F.trunc(F.to_date("admit_ts"), "month").alias("month"), "facility_id")
        .agg(
            F.count(F.lit(1)).alias("encounters"),
            F.countDistinct("patient_key").alias("patients"),
            F.sum("total_charge").alias("total_charge"),
            F.sum("paid_amount").alias("paid_amount"),
            F.sum(F.coalesce(F.col("denied_lines"), F.lit(0))).cast("bigint").alias("denied_lines"),
        )
    )


def _write(df: "DataFrame", path: Path, table_format: str) -> None:
    writer = df.write.mode("overwrite")
    if table_format == "delta":
        from utils.config import COURSE_TABLE_PROPERTIES

        writer = writer.format("delta").option("overwriteSchema", "true")
        for key, value in COURSE_TABLE_PROPERTIES.items():
            writer = writer.option(key, value)
    else:
        writer = writer.format(table_format)
    writer.save(str(path))


def run_workload(spark: "SparkSession", landing_dir: str | Path, out_dir: str | Path,
                 table_format: str = "delta") -> dict[str, Any]:
    """Landing -> bronze -> silver -> gold; return per-phase seconds and gold checksums.

    Every phase ends with a write, so its time is the engine's real work for it.
    """
    from pyspark.sql import functions as F

    landing_dir = resolve_landing_dir(landing_dir)
    out = Path(out_dir)
    phases: dict[str, float] = {}

    def table(name: str) -> Path:
        return out / name

    def read(name: str) -> "DataFrame":
        return spark.read.format(table_format).load(str(table(name)))

    started = time.perf_counter()
    for source in SOURCES:
        _write(ingest_bronze(spark, landing_dir, source), table(f"bronze_{source}"), table_format)
    phases["ingest_bronze"] = time.perf_counter() - started

    step = time.perf_counter()

    def parsed(source: str) -> "DataFrame":
        return parse_lines(read(f"bronze_{source}"), contract_columns(source))

    _write(silver_patients_current(parsed("ehr_patients")), table("silver_patients_current"),
           table_format)
    _write(silver_claims(parsed("payer_claims")), table("silver_claims"), table_format)
    # Parse and type once; the quarantine and the clean table both read the checked rows.
    _write(check_encounters(parsed("ehr_encounters")), table("silver_encounters_checked"),
           table_format)
    encounters, rejected = silver_encounters(read("silver_encounters_checked"))
    _write(rejected, table("silver_quarantine"), table_format)
    _write(join_patients(encounters, read("silver_patients_current")),
           table("silver_encounters"), table_format)
    phases["silver_parse_dedupe_join"] = time.perf_counter() - step

    step = time.perf_counter()
    silver = read("silver_encounters")
    _write(gold_readmission(silver), table("gold_readmission_30d"), table_format)
    _write(gold_facility_month(silver, read("silver_claims")), table("gold_facility_month"),
           table_format)
    phases["gold_readmission_aggregate"] = time.perf_counter() - step

    step = time.perf_counter()
    readmission = read("gold_readmission_30d").agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum("index_discharges").alias("index_discharges"),
        F.sum("readmissions_30d").alias("readmissions_30d"),
    ).collect()[0]
    volume = read("gold_facility_month").agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum("encounters").alias("encounters"),
        F.sum("total_charge").alias("total_charge"),
        F.sum("paid_amount").alias("paid_amount"),
    ).collect()[0]
    rejected_lines = read("silver_quarantine").count()
    phases["checksums"] = time.perf_counter() - step
    return {
        "phases_s": {name: round(seconds, 3) for name, seconds in phases.items()},
        "workload_s": round(time.perf_counter() - started, 3),
        "checksums": {
            "gold_readmission_rows": int(readmission["rows"]),
            "index_discharges": int(readmission["index_discharges"] or 0),
            "readmissions_30d": int(readmission["readmissions_30d"] or 0),
            "gold_facility_month_rows": int(volume["rows"]),
            "silver_encounters": int(volume["encounters"] or 0),
            "total_charge": str(volume["total_charge"]),
            "paid_amount": str(volume["paid_amount"]),
            "quarantined_encounter_lines": int(rejected_lines),
        },
    }


# ----- sessions ----------------------------------------------------------------------------------
def start_session(engine: str) -> "SparkSession":
    """Sail through the course's factory, or JVM PySpark local[2] with the course's settings."""
    if engine == "sail":
        os.environ["COURSE_ENGINE"] = "sail"
        os.environ.pop("SPARK_REMOTE", None)
        from utils.session import get_spark

        return get_spark()
    if engine == "jvm":
        os.environ.pop("SPARK_REMOTE", None)
        return start_jvm_session()
    raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")


class EngineUnavailable(RuntimeError):
    """An engine cannot start; the message is one line saying what to do about it."""


def start_jvm_session() -> "SparkSession":
    """JVM PySpark with Delta, built by the course's ``utils.session.jvm_builder()``.

    ``local[2]``, 4 shuffle partitions, UTC, delta-spark's extension and catalog, and its
    jars in ``spark.jars.packages`` (resolved from Maven Central into ``~/.ivy2.5.2`` on
    first start, from that cache afterwards); Spark's default driver heap unless
    BENCH_JVM_DRIVER_MEMORY says otherwise. Missing Java or unreachable jars raise
    :class:`EngineUnavailable` with one actionable line.
    """
    from utils.session import first_line, java_version, jvm_builder

    if java_version() is None:
        raise EngineUnavailable(
            "JVM PySpark needs Java 17 on PATH or JAVA_HOME (Debian/Ubuntu: `apt install "
            "openjdk-17-jre`; conda: `conda install openjdk=17`), or run with --skip-jvm."
        )
    builder = jvm_builder().appName("medallion-benchmark")
    if JVM_DRIVER_MEMORY:
        builder = builder.config("spark.driver.memory", JVM_DRIVER_MEMORY)
    try:
        spark = builder.getOrCreate()
    except Exception as err:  # noqa: BLE001 - turn a JVM start failure into one line
        raise EngineUnavailable(
            f"JVM PySpark with Delta did not start ({first_line(err)[:160]}): the delta-spark jars come "
            "from Maven Central (repo1.maven.org) into ~/.ivy2.5.2 on first start, so allow "
            "that (or a proxy), or run with --skip-jvm."
        ) from None
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def stop_session(engine: str, spark: "SparkSession") -> None:
    """Stop the session (and, on Sail, the embedded server after it: that order never hangs)."""
    if engine == "sail":
        from utils.session import stop_spark

        stop_spark()
    else:
        spark.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the medallion workload once, in this process.")
    parser.add_argument("--engine", choices=ENGINES, required=True)
    parser.add_argument("--data", help="landing dir (or its parent)")
    parser.add_argument("--out", help="scratch dir for the tables (emptied first)")
    parser.add_argument("--warm-up", action="store_true",
                        help="only start and stop the engine (resolves JVM jars into the cache)")
    args = parser.parse_args(argv)
    if not args.warm_up and not (args.data and args.out):
        parser.error("--data and --out are required (unless --warm-up)")

    os.environ.setdefault("RUST_LOG", "error")
    process_started = time.perf_counter()
    if not args.warm_up:
        out = Path(args.out)
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
    from utils.session import EngineError

    try:
        spark = start_session(args.engine)
    except (EngineUnavailable, EngineError) as err:
        print(ERROR_PREFIX + str(err), file=sys.stderr, flush=True)
        return 2
    session_s = time.perf_counter() - process_started
    try:
        result = ({"warm_up": True} if args.warm_up
                  else run_workload(spark, args.data, out, table_format="delta"))
    finally:
        stop_session(args.engine, spark)
    result.update(engine=args.engine, session_start_s=round(session_s, 3),
                  in_process_s=round(time.perf_counter() - process_started, 3))
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
