"""Gold: the KPIs a hospital analyst reports, computed from silver as pure functions.

Each KPI is one function ``silver DataFrame(s) -> DataFrame`` whose output has exactly the
columns and types of its ``gold:`` entry in ``utils/contracts.yml``; that entry also holds the
KPI's written definition (title, grain, definition), so notebook 05, the tests and
``docs/data_dictionary.md`` all read the same words. :func:`build_gold` reads the registered
silver tables, computes every KPI and overwrites the gold tables: running it twice gives
identical tables.

Conventions (stated once, in the contract): months are first-of-month DATEs; rates are DOUBLE
fractions rounded to 4 decimals (per-1,000 rates to 2); ages are taken at a reference date
derived from the data (:func:`reference_date`), never from today's date.

Regenerate the data dictionary after changing the contract::

    python -m utils.gold --write-dictionary
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from utils.config import REPO_ROOT
from utils.contracts import accepted_values, load_contracts
from utils.frames import distinct_rows, drop_columns

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    #: The reference date of ages: a date, or a DATE column holding it.
    AsOf = dt.date | Column

DICTIONARY_PATH = REPO_ROOT / "docs" / "data_dictionary.md"

#: Age bands (lower bound in whole years, label), youngest first. Labels sort in band order.
AGE_BANDS: tuple[tuple[int, str], ...] = (
    (0, "0-17"), (18, "18-44"), (45, "45-64"), (65, "65-74"), (75, "75+"))
UNKNOWN_AGE_BAND = "unknown"
UNKNOWN_PAYER = "Unknown"
READMISSION_WINDOW_DAYS = 30
#: Discharge dispositions that cannot start a readmission window (died; moved to another
#: acute facility, whose discharge is the index instead).
NON_INDEX_DISPOSITIONS: tuple[str, ...] = ("expired", "transfer")
#: The admission type of a planned admission; everything else (NULL too) is unplanned.
PLANNED_ADMISSION_TYPE = "elective"
RATE_DECIMALS = 4
PER_1000_DECIMALS = 2


# ----- KPI definitions (from the contract) ----------------------------------------------------
@dataclass(frozen=True)
class GoldTable:
    """One gold table as the contract defines it: its written definition and typed columns."""

    name: str
    title: str
    grain: str
    definition: str
    key: tuple[str, ...]
    columns: dict[str, dict[str, Any]]

    @property
    def table_name(self) -> str:
        return f"gold.{self.name}"

    def schema_ddl(self) -> str:
        """``col type, ...`` of the table, in contract order."""
        return ", ".join(f"{col} {spec['type']}" for col, spec in self.columns.items())

    def describe(self) -> str:
        """The written definition as plain text (what notebook 05 prints under each KPI)."""
        lines = [f"{self.table_name}: {self.title}", f"Grain: {self.grain}.", "",
                 " ".join(self.definition.split()), "", "Columns:"]
        width = max(len(col) for col in self.columns)
        for col, spec in self.columns.items():
            note = f"  {spec['description']}" if spec.get("description") else ""
            lines.append(f"  {col:<{width}}  {spec['type']}{note}")
        return "\n".join(lines)


def gold_tables() -> dict[str, GoldTable]:
    """Every gold table of the contract, in contract order."""
    tables = {}
    for name, spec in load_contracts()["gold"].items():
        tables[name] = GoldTable(
            name=name, title=spec["title"], grain=spec["grain"],
            definition=" ".join(spec["definition"].split()),
            key=tuple(spec.get("key", ())), columns=dict(spec["columns"]))
    return tables


def conform(df: DataFrame, table: str) -> DataFrame:
    """Select the contract's columns of gold ``table`` in order, cast to the contract types.

    Every KPI function ends with it, so a gold table's schema is explicit and fixed: a change
    in silver types cannot silently change a gold type. A missing column fails when the query
    is analysed, with the engine's error naming it (no check here: asking for ``df.columns``
    would analyse the plan while a declarative pipeline is still defining it).
    """
    from pyspark.sql import functions as F

    columns = gold_tables()[table].columns
    return df.select(*[F.col(col).cast(spec["type"]).alias(col) for col, spec in columns.items()])


# ----- small column helpers --------------------------------------------------------------------
def month_of(column: Column | str) -> Column:
    """First day of the month of a date/timestamp, as a DATE (the gold month convention)."""
    from pyspark.sql import functions as F

    col = F.col(column) if isinstance(column, str) else column
    return F.trunc(F.to_date(col), "month")


def rate(numerator: Column | str, denominator: Column | str,
         decimals: int = RATE_DECIMALS, scale: float = 1.0) -> Column:
    """numerator / denominator x scale as a rounded DOUBLE; NULL when the denominator is 0."""
    from pyspark.sql import functions as F

    num = F.col(numerator) if isinstance(numerator, str) else numerator
    den = F.col(denominator) if isinstance(denominator, str) else denominator
    return F.when(den > 0, F.round(num.cast("double") * F.lit(scale) / den.cast("double"),
                                   decimals))


def age_in_years(birth_date: Column | str, as_of: AsOf) -> Column:
    """Whole years between ``birth_date`` and ``as_of`` (birthday not reached yet: one less).

    ``as_of`` is a date, or a DATE column (the declarative pipeline joins the reference date
    in as a column instead of querying it while the graph is planned).
    """
    from pyspark.sql import functions as F

    birth = F.col(birth_date) if isinstance(birth_date, str) else birth_date
    ref = F.lit(as_of)  # a Column passes through unchanged
    not_yet = F.date_format(ref, "MMdd") < F.date_format(birth, "MMdd")
    return F.year(ref) - F.year(birth) - F.when(not_yet, 1).otherwise(0)


def age_band(birth_date: Column | str, as_of: AsOf) -> Column:
    """The age band label (``AGE_BANDS``) at ``as_of``; 'unknown' without a birth date."""
    from pyspark.sql import functions as F

    age = age_in_years(birth_date, as_of)
    expr = F.when(age.isNull(), F.lit(UNKNOWN_AGE_BAND))
    for lower, label in reversed(AGE_BANDS):
        expr = expr.when(age >= lower, F.lit(label))
    return expr.otherwise(F.lit(UNKNOWN_AGE_BAND))


def _facility_names(facilities: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    return facilities.select("facility_id", F.col("facility_name").alias("_facility_name"))


def _with_facility(df: DataFrame, facilities: DataFrame) -> DataFrame:
    """Add ``facility`` (the facility's name, or its id when the facility is unknown)."""
    from pyspark.sql import functions as F

    named = (df.join(_facility_names(facilities), "facility_id", "left")
             .withColumn("facility", F.coalesce("_facility_name", "facility_id")))
    return drop_columns(named, "_facility_name")


def _with_payer(df: DataFrame, payers: DataFrame) -> DataFrame:
    """Add ``payer`` (name) and ``payer_type``; 'Unknown'/'unknown' when missing or unknown."""
    from pyspark.sql import functions as F

    names = payers.select("payer_id", F.col("payer_name").alias("_payer_name"),
                          F.col("payer_type").alias("_payer_type"))
    named = (df.join(names, "payer_id", "left")
             .withColumn("payer", F.coalesce("_payer_name", F.lit(UNKNOWN_PAYER)))
             .withColumn("payer_type", F.coalesce("_payer_type", F.lit("unknown"))))
    return drop_columns(named, "_payer_name", "_payer_type")


def current_patients(patients: DataFrame) -> DataFrame:
    """The current, not deleted version of each patient from the SCD2 ``silver.patients``."""
    from pyspark.sql import functions as F

    return patients.where(F.col("is_current") & ~F.coalesce(F.col("is_deleted"), F.lit(False)))


def reference_date_frame(encounters: DataFrame, column: str = "as_of") -> DataFrame:
    """One row, one DATE column: the last calendar day present in the encounters (latest admit
    or discharge date). A lazy frame, so a declarative pipeline can join it in without
    running a query while its graph is planned."""
    from pyspark.sql import functions as F

    return encounters.agg(F.greatest(F.max(F.to_date("admit_ts")),
                                     F.max(F.to_date("discharge_ts"))).alias(column))


def reference_date(encounters: DataFrame) -> dt.date:
    """The last calendar day present in the encounters (latest admit or discharge date).

    Ages and age bands are taken at this date, so gold is the same whenever it is rebuilt.
    """
    row = reference_date_frame(encounters, "d").first()
    if row is None or row["d"] is None:
        raise ValueError("reference_date: the encounters are empty")
    return row["d"]


# ----- KPIs ------------------------------------------------------------------------------------
def readmission_flags(encounters: DataFrame) -> DataFrame:
    """Inpatient index discharges with ``is_readmitted_30d`` and the days to the next admission.

    The building block of :func:`readmission_30d`, kept separate so a learner can look at the
    stays behind the rate: lead() over each patient's inpatient admissions gives the next one.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    inpatient = encounters.where(F.col("encounter_class") == "inpatient")
    by_patient = Window.partitionBy("patient_key").orderBy("admit_ts", "encounter_id")
    stays = (inpatient
             .withColumn("next_admit_ts", F.lead("admit_ts").over(by_patient))
             .withColumn("next_admission_type", F.lead("admission_type").over(by_patient)))
    index = stays.where(
        F.col("discharge_ts").isNotNull()
        & ~F.coalesce(F.col("discharge_disposition"), F.lit("")).isin(*NON_INDEX_DISPOSITIONS))
    days = F.datediff(F.to_date("next_admit_ts"), F.to_date("discharge_ts"))
    unplanned = F.coalesce(F.col("next_admission_type"), F.lit("")) != PLANNED_ADMISSION_TYPE
    readmitted = (F.col("next_admit_ts").isNotNull() & unplanned
                  & days.between(0, READMISSION_WINDOW_DAYS))
    return (index
            .withColumn("days_to_next_admission", days)
            .withColumn("is_readmitted_30d", F.coalesce(readmitted, F.lit(False)))
            .select("encounter_id", "patient_key", "facility_id", "admit_ts", "discharge_ts",
                    "discharge_disposition", "next_admit_ts", "next_admission_type",
                    "days_to_next_admission", "is_readmitted_30d"))


def readmission_30d(encounters: DataFrame, facilities: DataFrame) -> DataFrame:
    """``gold.readmission_30d``: index discharges, 30-day unplanned readmissions and the rate."""
    from pyspark.sql import functions as F

    flags = _with_facility(readmission_flags(encounters), facilities)
    out = (flags.groupBy(month_of("discharge_ts").alias("month"), "facility")
           .agg(F.count("*").alias("index_discharges"),
                F.sum(F.col("is_readmitted_30d").cast("int")).alias("readmissions_30d"))
           .withColumn("rate", rate("readmissions_30d", "index_discharges")))
    return conform(out, "readmission_30d").orderBy("month", "facility")


def length_of_stay(encounters: DataFrame, facilities: DataFrame) -> DataFrame:
    """``gold.length_of_stay``: discharged inpatient stays, mean and median LOS (min 1 day)."""
    from pyspark.sql import functions as F

    stays = (encounters
             .where((F.col("encounter_class") == "inpatient") & F.col("discharge_ts").isNotNull())
             .withColumn("los_days", F.greatest(
                 F.datediff(F.to_date("discharge_ts"), F.to_date("admit_ts")), F.lit(1))))
    out = (_with_facility(stays, facilities)
           .groupBy(month_of("discharge_ts").alias("month"), "facility")
           .agg(F.count("*").alias("inpatient_stays"),
                F.sum("los_days").alias("total_los_days"),
                F.round(F.avg("los_days"), 2).alias("avg_los_days"),
                F.median("los_days").alias("median_los_days")))
    return conform(out, "length_of_stay").orderBy("month", "facility")


def _calendar(encounters: DataFrame) -> DataFrame:
    """One row per calendar day (``day``) from the first to the last day in the encounters."""
    from pyspark.sql import functions as F

    span = encounters.agg(
        F.min(F.to_date("admit_ts")).alias("first_day"),
        F.greatest(F.max(F.to_date("admit_ts")), F.max(F.to_date("discharge_ts"))).alias("last_day"))
    return span.select(F.explode(F.sequence("first_day", "last_day")).alias("day"))


def bed_occupancy_daily(encounters: DataFrame, facilities: DataFrame) -> DataFrame:
    """``gold.bed_occupancy_daily``: midnight census per facility and day, with occupancy."""
    from pyspark.sql import functions as F

    days = _calendar(encounters)
    inpatient = encounters.where(F.col("encounter_class") == "inpatient").select(
        "encounter_id", "facility_id", "admit_ts", "discharge_ts")
    # Candidate days of each stay (admit date .. discharge date, or the last day while still
    # admitted), then the exact midnight test on the timestamps.
    last_day = days.agg(F.max("day").alias("last_day"))
    stay_days = (inpatient.crossJoin(last_day)
                 .withColumn("day", F.explode(F.sequence(
                     F.to_date("admit_ts"),
                     F.least(F.coalesce(F.to_date("discharge_ts"), F.col("last_day")),
                             F.col("last_day"))))))
    midnight = F.date_add(F.col("day"), 1).cast("timestamp")
    in_bed = stay_days.where((F.col("admit_ts") < midnight)
                             & (F.col("discharge_ts").isNull() | (F.col("discharge_ts") > midnight)))
    census = in_bed.groupBy("facility_id", "day").agg(F.count("*").alias("census"))
    beds = facilities.where(F.col("staffed_beds") > 0).select(
        "facility_id", F.coalesce("facility_name", "facility_id").alias("facility"), "staffed_beds")
    out = (beds.crossJoin(days)
           .join(census, ["facility_id", "day"], "left")
           .withColumn("census", F.coalesce("census", F.lit(0)))
           .withColumn("occupancy_rate", rate("census", "staffed_beds"))
           .withColumnRenamed("day", "census_date"))
    return conform(out, "bed_occupancy_daily").orderBy("census_date", "facility")


def active_patients_by_month(patients: DataFrame, months: DataFrame) -> DataFrame:
    """Patients registered at the end of each month of ``months`` (column ``month``).

    An as-of join on the SCD2 history: a patient counts when one of their versions opened
    before the first instant of the next month and was not closed before it. A DELETE closes
    the last version (``valid_to`` = the delete time), which ends the registration; a version
    flagged ``is_deleted`` without a ``valid_to`` (a tombstone) never counts.
    """
    from pyspark.sql import functions as F

    month_end = F.add_months(F.col("month"), 1).cast("timestamp")
    valid = ((F.col("valid_from") < month_end)
             & (F.col("valid_to").isNull() | (F.col("valid_to") >= month_end))
             & ~(F.coalesce(F.col("is_deleted"), F.lit(False)) & F.col("valid_to").isNull()))
    versions = patients.select("patient_key", "valid_from", "valid_to", "is_deleted")
    return (months.join(versions, valid, "left")
            .groupBy("month")
            .agg(F.countDistinct("patient_key").alias("active_patients")))


def ed_utilization(encounters: DataFrame, patients: DataFrame) -> DataFrame:
    """``gold.ed_utilization``: emergency visits per month and per 1,000 active patients."""
    from pyspark.sql import functions as F

    months = (_calendar(encounters).groupBy(month_of("day").alias("month"))
              .agg(F.count("*").alias("days_covered")))
    visits = (encounters.where(F.col("encounter_class") == "emergency")
              .groupBy(month_of("admit_ts").alias("month"))
              .agg(F.count("*").alias("ed_visits")))
    out = (months.join(visits, "month", "left")
           .join(active_patients_by_month(patients, months.select("month")), "month", "left")
           .withColumn("ed_visits", F.coalesce("ed_visits", F.lit(0)))
           .withColumn("active_patients", F.coalesce("active_patients", F.lit(0)))
           .withColumn("ed_visits_per_1000",
                       rate("ed_visits", "active_patients", PER_1000_DECIMALS, 1000.0)))
    return conform(out, "ed_utilization").orderBy("month")


def payer_mix(encounters: DataFrame, payers: DataFrame) -> DataFrame:
    """``gold.payer_mix``: encounters and charges by month and payer, with monthly shares."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    by_payer = (_with_payer(encounters, payers)
                .groupBy(month_of("admit_ts").alias("month"), "payer", "payer_type")
                .agg(F.count("*").alias("encounters"),
                     F.coalesce(F.sum("total_charge"), F.lit(0)).cast("decimal(16,2)")
                     .alias("total_charge")))
    in_month = Window.partitionBy("month")
    out = (by_payer
           .withColumn("share", rate(F.col("encounters"), F.sum("encounters").over(in_month)))
           .withColumn("charge_share",
                       rate(F.col("total_charge"), F.sum("total_charge").over(in_month))))
    return conform(out, "payer_mix").orderBy("month", "payer")


def claims_denial_rate(claims: DataFrame, payers: DataFrame) -> DataFrame:
    """``gold.claims_denial_rate``: adjudicated and denied claim lines by month and payer."""
    from pyspark.sql import functions as F

    status = F.col("claim_status")
    denied = status == "denied"
    out = (_with_payer(claims, payers)
           .groupBy(month_of("service_date").alias("month"), "payer")
           .agg(F.count("*").alias("claim_lines"),
                F.count(F.when(status.isin("paid", "denied"), 1)).alias("adjudicated_lines"),
                F.count(F.when(denied, 1)).alias("denied_lines"),
                F.coalesce(F.sum(F.when(denied, F.col("billed_amount"))), F.lit(0))
                .cast("decimal(16,2)").alias("denied_billed_amount"))
           .withColumn("denial_rate", rate("denied_lines", "adjudicated_lines")))
    return conform(out, "claims_denial_rate").orderBy("month", "payer")


def abnormal_lab_rate(lab_results: DataFrame) -> DataFrame:
    """``gold.abnormal_lab_rate``: results outside the reference range by LOINC test and month."""
    from pyspark.sql import functions as F

    ranged = lab_results.where(F.col("is_abnormal").isNotNull() & F.col("loinc_code").isNotNull())
    out = (ranged.groupBy("loinc_code", month_of("collected_ts").alias("month"))
           .agg(F.min("test_name").alias("test_name"),
                F.count("*").alias("results"),
                F.count(F.when(F.col("is_abnormal"), 1)).alias("abnormal_results"))
           .withColumn("abnormal_rate", rate("abnormal_results", "results")))
    return conform(out, "abnormal_lab_rate").orderBy("loinc_code", "month")


def _patient_population(patients: DataFrame, as_of: AsOf) -> DataFrame:
    """Current patients with ``age_band`` at ``as_of`` and ``sex`` ('U' when missing)."""
    from pyspark.sql import functions as F

    return current_patients(patients).select(
        "patient_key", "payer_id",
        age_band("birth_date", as_of).alias("age_band"),
        F.coalesce("sex", F.lit("U")).alias("sex"))


def chronic_condition_prevalence(patients: DataFrame, diagnoses: DataFrame,
                                 as_of: AsOf) -> DataFrame:
    """``gold.chronic_condition_prevalence``: share of current patients with each condition."""
    from pyspark.sql import functions as F

    population = _patient_population(patients, as_of)
    groups = population.groupBy("age_band", "sex").agg(F.count("*").alias("population"))
    chronic = diagnoses.where(F.col("chronic_condition").isNotNull())
    with_condition = (distinct_rows(chronic, "patient_key", "chronic_condition")
                      .join(population, "patient_key")
                      .groupBy("chronic_condition", "age_band", "sex")
                      .agg(F.count("*").alias("patients_with_condition")))
    conditions = distinct_rows(chronic, "chronic_condition")
    out = (conditions.crossJoin(groups)
           .join(with_condition, ["chronic_condition", "age_band", "sex"], "left")
           .withColumn("patients_with_condition", F.coalesce("patients_with_condition", F.lit(0)))
           .withColumn("prevalence", rate("patients_with_condition", "population")))
    return conform(out, "chronic_condition_prevalence").orderBy(
        "chronic_condition", "age_band", "sex")


def patient_summary(patients: DataFrame, encounters: DataFrame, diagnoses: DataFrame,
                    claims: DataFrame, payers: DataFrame, as_of: AsOf) -> DataFrame:
    """``gold.patient_summary``: one row per current patient, keyed by the hashed patient_key."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    people = _with_payer(_patient_population(patients, as_of), payers)
    classes = accepted_values("encounter_class")
    counts = encounters.groupBy("patient_key").agg(
        *[F.count(F.when(F.col("encounter_class") == c, 1)).alias(f"{c}_encounters")
          for c in classes],
        F.count("*").alias("total_encounters"))
    latest = Window.partitionBy("patient_key").orderBy(F.col("admit_ts").desc(),
                                                       F.col("encounter_id").desc())
    last = (encounters.withColumn("_n", F.row_number().over(latest)).where("_n = 1")
            .select("patient_key", F.col("admit_ts").alias("last_encounter_ts"),
                    F.col("encounter_class").alias("last_encounter_class")))
    chronic = (diagnoses.where(F.col("chronic_condition").isNotNull())
               .groupBy("patient_key")
               .agg(F.sort_array(F.collect_set("chronic_condition")).alias("chronic_conditions")))
    money = claims.groupBy("patient_key").agg(F.sum("billed_amount").alias("total_billed"),
                                              F.sum("paid_amount").alias("total_paid"))
    zero = F.lit(0)
    # a patient without encounters or claims has counts and amounts of 0, not NULL
    zeros = {name: F.coalesce(F.col(name), zero)
             for name in [f"{c}_encounters" for c in classes]
             + ["total_encounters", "total_billed", "total_paid"]}
    out = (people.join(counts, "patient_key", "left").join(last, "patient_key", "left")
           .join(chronic, "patient_key", "left").join(money, "patient_key", "left")
           .withColumns(zeros)
           .withColumn("chronic_conditions",
                       F.coalesce("chronic_conditions", F.array().cast("array<string>"))))
    return conform(out, "patient_summary").orderBy("patient_key")


# ----- build -----------------------------------------------------------------------------------
def compute_gold(silver: dict[str, DataFrame], as_of: dt.date | None = None) -> dict[str, DataFrame]:
    """Every gold KPI from silver frames keyed by silver table name, in contract order.

    Needs ``encounters``, ``facilities``, ``payers``, ``patients`` (SCD2), ``diagnoses``,
    ``lab_results`` and ``claims``. ``as_of`` defaults to :func:`reference_date`.
    """
    enc, fac, pay = silver["encounters"], silver["facilities"], silver["payers"]
    pat, dx, labs, claims = (silver["patients"], silver["diagnoses"], silver["lab_results"],
                             silver["claims"])
    as_of = as_of or reference_date(enc)
    frames = {
        "readmission_30d": readmission_30d(enc, fac),
        "length_of_stay": length_of_stay(enc, fac),
        "bed_occupancy_daily": bed_occupancy_daily(enc, fac),
        "ed_utilization": ed_utilization(enc, pat),
        "payer_mix": payer_mix(enc, pay),
        "claims_denial_rate": claims_denial_rate(claims, pay),
        "abnormal_lab_rate": abnormal_lab_rate(labs),
        "chronic_condition_prevalence": chronic_condition_prevalence(pat, dx, as_of),
        "patient_summary": patient_summary(pat, enc, dx, claims, pay, as_of),
    }
    return {name: frames[name] for name in gold_tables()}


SILVER_INPUTS: tuple[str, ...] = ("encounters", "facilities", "payers", "patients", "diagnoses",
                                  "lab_results", "claims")


def build_gold(spark: SparkSession) -> dict[str, int]:
    """Rebuild every gold table from the registered silver tables; return {table: rows}.

    Each table is overwritten (with its schema), so running it again yields identical tables.
    """
    from utils.tables import write_table

    silver = {name: spark.table(f"silver.{name}") for name in SILVER_INPUTS}
    counts = {}
    for name, df in compute_gold(silver).items():
        write_table(df, "gold", name, mode="overwrite", overwrite_schema=True)
        counts[name] = spark.table(f"gold.{name}").count()
    return counts


def fingerprint(df: DataFrame) -> str:
    """A short content hash of a table that ignores row order: same rows, same fingerprint.

    Each row is serialized with ``to_json`` and hashed (sha2) by the engine; the sorted row
    hashes are hashed again here. Used to show that rebuilding gold changes nothing.
    """
    import hashlib

    from pyspark.sql import functions as F

    row_hash = F.sha2(F.to_json(F.struct(*[F.col(c) for c in df.columns])), 256)
    hashes = sorted(row[0] for row in df.select(row_hash).collect())
    return hashlib.sha256("\n".join(hashes).encode("ascii")).hexdigest()[:16]


# ----- data dictionary -------------------------------------------------------------------------
def _md(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def render_data_dictionary() -> str:
    """The data dictionary (markdown): silver tables and gold KPIs, from the contract."""
    contract = load_contracts()
    out = ["# Data dictionary", "",
           ("Generated from `utils/contracts.yml` by `python -m utils.gold --write-dictionary`: "
           "edit the contract, then regenerate; do not edit this file by hand."), "",
           "- [Silver tables](#silver-tables)", "- [Gold tables (KPIs)](#gold-tables-kpis)", "",
           "## Silver tables", "",
           ("Typed, cleansed, deduplicated and validated data. The join key everywhere is "
           "`patient_key = sha2(salt || mrn, 256)`; direct identifiers exist only in "
           "`silver.patients_restricted`. Every silver table also carries the lineage columns "
           "`_source_file`, `_line_number`, `_batch_date`, `_ingest_run_id`, and the entity "
           "tables `_rescued_data` (source columns outside the contract, as JSON). Rejected "
           "lines go to `silver.quarantine_<entity>` (the bronze columns plus `_failed_rules`), "
           "removed duplicates to `silver.dedup_log`."), ""]
    for name, spec in contract["silver"].items():
        out += [f"### silver.{name}", ""]
        if spec.get("description"):
            out += [_md(spec["description"]), ""]
        out += [f"Key: `{', '.join(spec.get('key', []))}`", ""]
        columns = spec.get("columns") or {}
        if not columns:
            out += ["Same columns as the table it is a view of.", ""]
            continue
        out += ["| column | type | description | tests |", "|---|---|---|---|"]
        for col, cspec in columns.items():
            tests = list(cspec.get("tests", []))
            if cspec.get("relationships"):
                tests.append(f"relationships: {cspec['relationships']}")
            out.append(f"| `{col}` | {_md(cspec['type'])} | {_md(cspec.get('description', ''))} "
                       f"| {_md(', '.join(tests))} |")
        out.append("")
    out += ["## Gold tables (KPIs)", "",
            ("Conventions: `month` is the first day of the month (DATE); rates are fractions "
            "0-1 rounded to 4 decimals (per-1,000 rates to 2) and NULL when the denominator is "
            "0; `facility` and `payer` are names; ages are taken at the reference date (the "
            f"last day in `silver.encounters`); age bands: {', '.join(b for _, b in AGE_BANDS)}"
            f", {UNKNOWN_AGE_BAND}. Built by `utils.gold.build_gold` (notebook 05)."), ""]
    for table in gold_tables().values():
        out += [f"### {table.table_name}: {table.title}", "",
                f"**Grain:** {table.grain}. **Key:** `{', '.join(table.key)}`", "",
                f"**Definition.** {_md(table.definition)}", "",
                "| column | type | description |", "|---|---|---|"]
        for col, cspec in table.columns.items():
            out.append(f"| `{col}` | {_md(cspec['type'])} | {_md(cspec.get('description', ''))} |")
        out.append("")
    return "\n".join(out)


def write_data_dictionary(path: Path = DICTIONARY_PATH) -> Path:
    """Write :func:`render_data_dictionary` to ``docs/data_dictionary.md``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_data_dictionary(), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Gold KPIs: data dictionary and rebuild.")
    parser.add_argument("--write-dictionary", action="store_true",
                        help=f"write {DICTIONARY_PATH.relative_to(REPO_ROOT)} from the contract")
    parser.add_argument("--build", action="store_true",
                        help="rebuild every gold table from the registered silver tables")
    args = parser.parse_args(argv)
    if not (args.write_dictionary or args.build):
        parser.print_help()
        return 2
    if args.write_dictionary:
        print(f"wrote {write_data_dictionary().relative_to(REPO_ROOT)}")
    if args.build:
        from utils import get_spark, register_course_tables

        spark = get_spark()
        register_course_tables(spark)
        for name, rows in build_gold(spark).items():
            print(f"gold.{name}: {rows} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
