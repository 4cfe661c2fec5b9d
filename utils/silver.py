"""Silver: parse, standardize, validate and deduplicate bronze lines into typed tables.

The path of a bronze line to silver, per entity (each step a pure function, composable with
``DataFrame.transform`` and reused by the declarative pipeline; none of them writes):

1. ``parse_<entity>(bronze_df)``: raw text -> an all-string record (``_raw``) with an explicit
   schema (CSV fields mapped **by the file's own header**, so a drifted extra column lands in
   ``_rescued_data`` instead of shifting the others; NDJSON through ``from_json``), then
   standardized (trim, case, codes) and typed with ``try_cast`` (an unparseable value becomes
   NULL *and* stays visible in ``_raw``, so a rule can tell "missing" from "unparseable").
2. ``deduplicate(df, keys)``: one row per business key with a ``row_number`` window. Stated
   rule: these entities carry no change timestamp, so the **first arrival wins**, ordered by
   (``_batch_date``, ``_source_file``, ``_line_number``); exact and near duplicates (same key
   after standardization) are removed and returned for ``silver.dedup_log``.
3. ``with_references(entity, df, refs)``: joins the code tables and the known keys (patients,
   encounters, providers, ...) as ``_known_*`` flags; lab units are converted here because the
   standard unit of a test comes from the LOINC table (glucose mmol/L -> mg/dL, x18.016).
4. ``<entity>_expectations()``: named rules (name, SQL condition, action) evaluated by the one
   engine, :func:`utils.expectations.apply_expectations`.
5. ``silver_frame(entity, valid_df)``: the contract's columns and types plus lineage.

Why dedupe *before* validating: a re-delivered copy of a line is a duplicate whatever its
content, so it is counted as one, and the first copy alone decides quarantine or silver.
Every bronze row therefore ends in exactly one place: silver, quarantine or the dedup log
(:func:`reconciliation` proves it per entity and batch).

Write strategy (:func:`build_silver`): silver is **rebuilt deterministically from all of
bronze** and overwritten, table by table. Bronze is the replayable history, so a re-run
gives identical tables and can never duplicate a row. ``silver.dq_metrics`` keeps one set of
rows per run (``run_id``): a re-run with the same run id first deletes that run's rows.
Every write goes through :func:`conform_to_schema` (explicit contract types, refuses to
write if a cast would turn a value into NULL: Sail silently stores NULL on a type mismatch)
and is read back to check the stored schema.

Sail notes (measured with pysail 0.7.2): ``from_csv`` ignores CSV quoting (``"a, b"`` is split
in two) and fails the whole query when a line has fewer or more fields than the schema, so
CSV lines are split with Python's ``csv`` module in a pandas UDF (the same RFC 4180 rules on
every engine). ``from_json`` on malformed JSON returns a struct of NULLs where Spark returns
the fields it read before the error, and ``try_cast`` accepts less text than Spark's:
:func:`parse_json` and :func:`typed` accept exactly the lines and values both engines read
alike, so silver's rows and quarantine reasons are the same on each. A filter on a
column computed with a SQL lambda (``transform``, ``filter``, ``map_filter``, ``forall``,
``aggregate``) over a catalog table fails ("No field named bronze.<table>.<column>"), so no
rule or parsed column uses one. ``cache()`` is a no-op (a cached frame is recomputed on every
action), so :func:`build_silver` stages the parsed frame as a scratch Delta table.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from utils.contracts import accepted_values, landing_sources, silver_columns
from utils.frames import distinct_rows, drop_columns
from utils.expectations import (
    FAILED_RULES_COLUMN,
    METRICS_SCHEMA,
    Expectation,
    ExpectationResult,
    RuleMetric,
    apply_expectations,
)

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

LAYER = "silver"

#: Entities silver builds from bronze (patients belong to the CDC notebook, utils/cdc.py).
SILVER_ENTITIES: tuple[str, ...] = ("facilities", "providers", "payers", "encounters",
                                    "lab_results", "medications", "claims")

#: Business keys (silver column names) used for deduplication and uniqueness.
ENTITY_KEYS: dict[str, tuple[str, ...]] = {
    "facilities": ("facility_id",),
    "providers": ("npi",),
    "payers": ("payer_id",),
    "encounters": ("encounter_id",),
    "lab_results": ("observation_id",),
    "medications": ("medication_request_id",),
    "claims": ("claim_id", "line_number"),
}

#: Stated dedupe rule: no change timestamp in these entities, so the first arrival wins.
ARRIVAL_ORDER: tuple[str, ...] = ("_batch_date", "_source_file", "_line_number")

#: Lineage (and rescue) columns every silver entity table carries after its contract columns.
LINEAGE_SCHEMA: tuple[tuple[str, str], ...] = (
    ("_source_file", "string"), ("_line_number", "int"), ("_batch_date", "date"),
    ("_ingest_run_id", "string"), ("_rescued_data", "string"),
)

RECONCILIATION_SCHEMA = (
    "entity STRING, batch_date DATE, bronze_rows BIGINT, silver_rows BIGINT, "
    "quarantined_rows BIGINT, duplicate_rows BIGINT, balanced BOOLEAN"
)

#: Silver columns computed under another name because bronze's raw line is called ``value``.
SILVER_COLUMN_SOURCES: dict[str, dict[str, str]] = {"lab_results": {"value": "result_value"}}

#: mmol/L -> mg/dL for glucose (molar mass 180.16 g/mol).
GLUCOSE_MMOL_TO_MGDL = 18.016

#: Unit conversions to a test's standard unit: (test name contains, from unit, to unit, factor).
UNIT_CONVERSIONS: tuple[tuple[str, str, str, float], ...] = (
    ("glucose", "mmol/L", "mg/dL", GLUCOSE_MMOL_TO_MGDL),
)

#: An event may be dated at most this many days after its batch's extract date (time zones).
FUTURE_TOLERANCE_DAYS = 1

_OBSERVATION_SCHEMA = (
    "resourceType STRING, id STRING, status STRING, subject STRUCT<reference: STRING>, "
    "encounter STRUCT<reference: STRING>, "
    "code STRUCT<coding: ARRAY<STRUCT<system: STRING, code: STRING, display: STRING>>>, "
    "effectiveDateTime STRING, valueQuantity STRUCT<value: STRING, unit: STRING>, "
    "referenceRange ARRAY<STRUCT<low: STRUCT<value: STRING, unit: STRING>, "
    "high: STRUCT<value: STRING, unit: STRING>>>"
)
_MEDICATION_SCHEMA = (
    "resourceType STRING, id STRING, status STRING, intent STRING, "
    "subject STRUCT<reference: STRING>, encounter STRUCT<reference: STRING>, "
    "medicationCodeableConcept STRUCT<coding: ARRAY<STRUCT<system: STRING, code: STRING, "
    "display: STRING>>>, authoredOn STRING, "
    "dosageInstruction ARRAY<STRUCT<text: STRING, doseAndRate: ARRAY<STRUCT<doseQuantity: "
    "STRUCT<value: STRING, unit: STRING>>>>>, "
    "dispenseRequest STRUCT<validityPeriod: STRUCT<start: STRING, `end`: STRING>>"
)
_JSON_TOP_LEVEL = {
    "lab_results": ("resourceType", "id", "status", "subject", "encounter", "code",
                    "effectiveDateTime", "valueQuantity", "referenceRange"),
    "medications": ("resourceType", "id", "status", "intent", "subject", "encounter",
                    "medicationCodeableConcept", "authoredOn", "dosageInstruction",
                    "dispenseRequest"),
}


class SilverWriteError(RuntimeError):
    """A silver write was refused: a cast would lose values, or the stored schema differs."""


# ================================================================================================
# Contract lookups
# ================================================================================================
def landing_columns(entity: str) -> list[str]:
    """The landing contract's columns of a CSV entity (reference entities and EHR/claims)."""
    for source in landing_sources().values():
        if source.get("entity") == entity:
            return list(source["columns"])
        if entity in source.get("entities", {}):
            return list(source["entities"][entity]["columns"])
    raise ValueError(f"No landing contract for entity {entity!r}")


def silver_schema(table: str, lineage: bool = True) -> list[tuple[str, str]]:
    """(column, Spark SQL type) of a silver table: contract columns, then lineage columns."""
    columns = [(name, str(spec["type"])) for name, spec in silver_columns(table).items()]
    return columns + (list(LINEAGE_SCHEMA) if lineage else [])


def silver_schema_ddl(table: str, lineage: bool = True) -> str:
    """``col type, ...`` of a silver table including lineage (for explicit-schema creates)."""
    return ", ".join(f"{name} {type_}" for name, type_ in silver_schema(table, lineage))


def dedup_log_schema() -> str:
    """DDL of ``silver.dedup_log`` (from the contract)."""
    return silver_schema_ddl("dedup_log", lineage=False)


# ================================================================================================
# Column helpers (standardization)
# ================================================================================================
def clean_string(column: "Column | str") -> "Column":
    """Trimmed text, with blank (empty or only spaces) turned into NULL."""
    from pyspark.sql import functions as F

    col = F.col(column) if isinstance(column, str) else column
    trimmed = F.trim(col)
    return F.when(trimmed != "", trimmed)


def standardize_code(column: "Column | str", case: str = "lower") -> "Column":
    """A coded value trimmed and in the contract's case (``' Inpatient '`` -> ``inpatient``)."""
    from pyspark.sql import functions as F

    cleaned = clean_string(column)
    return {"lower": F.lower, "upper": F.upper}[case](cleaned) if case != "keep" else cleaned


def standardize_icd10(column: "Column | str") -> "Column":
    """ICD-10-CM upper case with the dot after the category: ``' e119 '`` -> ``E11.9``."""
    from pyspark.sql import functions as F

    bare = F.regexp_replace(F.upper(clean_string(column)), r"\.", "")
    return F.when(F.length(bare) > 3, F.concat(bare.substr(F.lit(1), F.lit(3)), F.lit("."),
                                                bare.substr(F.lit(4), F.length(bare) - 3))
                  ).otherwise(bare)


def standardize_icd10_list(column: "Column | str") -> "Column":
    """A '|'-separated list of ICD-10-CM codes, each standardized: ``'i10| e1165'`` -> ``I10|E11.65``.

    Regular expressions rather than ``transform`` (see :func:`_csv_record_udf` for why). The
    blanks removed are ASCII whitespace spelled out: ``\\s`` also matches a no-break space in
    Sail's (Rust) regular expressions, not in Java's.
    """
    from pyspark.sql import functions as F

    col = F.col(column) if isinstance(column, str) else column
    bare = F.upper(F.regexp_replace(col, r"[ \t\n\r\f\x0B.]", ""))
    dotted = F.regexp_replace(bare, r"(^|\|)([A-Z0-9]{3})([A-Z0-9]+)", "$1$2.$3")
    tidy = F.regexp_replace(F.regexp_replace(dotted, r"\|+", "|"), r"^\||\|$", "")
    return F.when(tidy != "", tidy)


def reference_id(column: "Column | str", resource: str) -> "Column":
    """The id of a FHIR reference ``'Patient/MRN0000001'`` -> ``MRN0000001`` (NULL if another type)."""
    from pyspark.sql import functions as F

    cleaned = clean_string(column)
    return F.when(cleaned.startswith(f"{resource}/"),
                  clean_string(F.regexp_replace(cleaned, f"^{resource}/", "")))


def is_unparseable(raw: str, typed: str) -> str:
    """SQL: a raw value is present but its typed cast is NULL (the value did not parse)."""
    return f"NOT (_raw.{raw} IS NOT NULL AND {typed} IS NULL)"


def npi_luhn_sql(column: str) -> str:
    """SQL boolean: a 10-digit NPI whose last digit is its Luhn check digit.

    The NPI check digit is the Luhn digit of the first 9 digits prefixed with ``80840`` (the
    health-industry prefix): Luhn over ``80840`` + NPI must sum to 0 mod 10. The prefix adds
    a constant 24; digits 1, 3, 5, 7, 9 of the NPI are doubled (a doubled digit's digit sum is
    looked up in '0246813579'). Written out term by term: no SQL lambdas (see
    :func:`_csv_record_udf` for the Sail limitation).
    """
    terms = ["24"]
    for j in range(1, 11):
        digit = f"try_cast(substring({column}, {j}, 1) AS INT)"
        terms.append(f"try_cast(substring('0246813579', {digit} + 1, 1) AS INT)" if j % 2 == 1
                     else digit)
    # length = 10 as well: Java's $ also matches before a final line break ('1234567893\n')
    return (f"({column} RLIKE '^[0-9]{{10}}$' AND length({column}) = 10 "
            f"AND ({' + '.join(terms)}) % 10 = 0)")


def npi_is_valid(npi: str) -> bool:
    """Python twin of :func:`npi_luhn_sql` (for tests and generators)."""
    if not (len(npi) == 10 and npi.isdigit()):
        return False
    total = 0
    for index, char in enumerate(reversed("80840" + npi)):
        value = int(char) * (2 if index % 2 == 1 else 1)
        total += value // 10 + value % 10
    return total % 10 == 0


def _accepted_sql(column: str, field_name: str | None = None) -> str:
    values = ", ".join(f"'{v}'" for v in accepted_values(field_name or column))
    return f"{column} IS NULL OR {column} IN ({values})"


# ================================================================================================
# Parsing: raw text -> all-string record
# ================================================================================================
def split_csv_line(line: str) -> list[str]:
    """The fields of one CSV line, as Python's ``csv`` module reads them (RFC 4180 quotes).

    Most lines hold no quote and no line break; for them ``str.split`` gives the same fields
    several times faster, and silver parses every bronze line with this.
    """
    import csv

    if '"' in line or "\r" in line or "\n" in line:
        return next(csv.reader([line]), [])
    return line.split(",") if line else []


@lru_cache(maxsize=1)
def _csv_split_udf():
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, StringType

    @F.pandas_udf(ArrayType(StringType()))
    def csv_split(lines):  # pandas Series -> Series of lists
        return lines.map(lambda line: None if line is None else split_csv_line(line))

    return csv_split


def csv_fields(column: "Column | str") -> "Column":
    """The fields of one CSV line as ``array<string>`` (RFC 4180 quotes, blanks kept).

    A pandas UDF with Python's ``csv`` module: Sail's ``from_csv`` ignores quotes and fails the
    whole query on a line with a wrong number of fields.
    """
    from pyspark.sql import functions as F

    return _csv_split_udf()(F.col(column) if isinstance(column, str) else column)


def _with_quality_flags(df: "DataFrame") -> "DataFrame":
    """``_valid_encoding``: bronze kept the raw bytes because the line was not valid UTF-8."""
    from pyspark.sql import functions as F

    return df.withColumn("_valid_encoding", F.col("_raw_base64").isNull())


@lru_cache(maxsize=None)
def _csv_record_udf(columns: tuple[str, ...]):
    """pandas UDF (value, header) -> struct of ``columns`` + ``_rescued_data`` + ``_record_complete``.

    Mapping by header, rescue and completeness are computed in Python rather than with SQL
    lambdas (``transform``/``map_filter``): on Sail 0.7.2 a filter on a column derived by a
    lambda over a catalog table fails ("No field named bronze.<table>.<column>").
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import BooleanType, StringType, StructField, StructType

    # a StructType, not a DDL string: on Spark Connect the client asks the server to parse DDL
    schema = StructType([StructField(c, StringType()) for c in (*columns, "_rescued_data")]
                        + [StructField("_record_complete", BooleanType())])

    @F.pandas_udf(schema)
    def csv_record(values, headers):
        import json

        import pandas as pd

        wanted, names_cache = set(columns), {}
        out: dict[str, list] = {c: [] for c in columns}
        out["_rescued_data"], out["_record_complete"] = [], []
        for value, header in zip(values, headers):
            if header not in names_cache:
                names_cache[header] = ([n.strip() for n in split_csv_line(header)]
                                       if header is not None else [])
            names = names_cache[header]
            fields = split_csv_line(value) if value is not None else []
            by_name = {n: fields[i] for i, n in enumerate(names) if i < len(fields)}
            for c in columns:
                out[c].append(by_name.get(c))
            extras = {n: (v if v.strip() else None) for n, v in by_name.items()
                      if n not in wanted}
            out["_rescued_data"].append(json.dumps(extras, sort_keys=True, separators=(",", ":"))
                                          if extras else None)
            out["_record_complete"].append(value is not None and len(fields) == len(names))
        return pd.DataFrame(out)

    return csv_record


def parse_csv(bronze_df: "DataFrame", columns: Iterable[str]) -> "DataFrame":
    """Map each CSV line's fields to ``columns`` **by the file's header** (``_header``).

    Adds ``_raw`` (struct of the contract columns as trimmed strings, blank = NULL),
    ``_rescued_data`` (JSON of the header's columns outside the contract, an empty field as
    ``null``; NULL when the header has none: a drifted file is visible on every row),
    ``_record_complete`` (exactly as many fields as the header) and ``_valid_encoding``.
    """
    from pyspark.sql import functions as F

    columns = tuple(columns)
    record = _csv_record_udf(columns)(F.col("value"), F.col("_header"))
    staged = bronze_df.withColumn("__record", record)
    return _with_quality_flags(
        staged.withColumn("_raw", F.struct(*[clean_string(F.col("__record")[c]).alias(c)
                                             for c in columns]))
        .withColumn("_rescued_data", F.col("__record._rescued_data"))
        .withColumn("_record_complete", F.coalesce(F.col("__record._record_complete"),
                                                   F.lit(False)))
        .transform(lambda df: drop_columns(df, "__record")))


@lru_cache(maxsize=None)
def _json_extras_udf(known: tuple[str, ...]):
    """pandas UDF: JSON of the top-level keys of an object line outside ``known`` (or NULL)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType

    @F.pandas_udf(StringType())
    def json_extras(values):
        import json

        def extras(line):
            try:
                obj = json.loads(line) if line is not None else None
            except ValueError:
                return None
            if not isinstance(obj, dict):
                return None
            rest = {k: v for k, v in obj.items() if k not in known}
            return json.dumps(rest, sort_keys=True, separators=(",", ":")) if rest else None

        return values.map(extras)

    return json_extras


#: Spark's JSON reader also accepts single quotes and NaN/Infinity by default; Sail never does.
_STRICT_JSON = {"allowSingleQuotes": "false", "allowNonNumericNumbers": "false"}


def parse_json(bronze_df: "DataFrame", schema: str, top_level: Iterable[str]) -> "DataFrame":
    """Parse NDJSON lines with an explicit all-string schema into ``_json``.

    A line is a record (``_record_complete``) only when it is **one complete JSON object**.
    The engines disagree on any other line (measured, Spark 4.2 vs Sail 0.7.2): on a truncated
    line, or one with trailing text (``{"a":1} x``), Spark's ``from_json`` returns the fields it
    read before the error, Sail NULLs. So the line is parsed inside a sentinel object,
    ``{"record": <line>, "complete": true}``: ``complete`` is read only if the parser got past
    the whole line, and ``record`` is NULL unless the line is an object, on both engines. An
    incomplete line gets a NULL ``_json`` (no partial fields), so it fails the same rules
    everywhere. ``_rescued_data`` holds top-level keys the schema does not know.
    """
    from pyspark.sql import functions as F

    wrapped = F.concat(F.lit('{"record":'), F.col("value"), F.lit(',"complete":true}'))
    parsed = F.from_json(wrapped, f"record STRUCT<{schema}>, complete BOOLEAN", _STRICT_JSON)
    complete = F.coalesce(parsed.complete & parsed.record.isNotNull(), F.lit(False))
    return _with_quality_flags(
        bronze_df.withColumn("__parsed", parsed)
        .withColumn("_record_complete", complete)
        .withColumn("_json", F.when(F.col("_record_complete"), F.col("__parsed.record")))
        .withColumn("_rescued_data", _json_extras_udf(tuple(top_level))(F.col("value")))
        .transform(lambda df: drop_columns(df, "__parsed")))


#: The text a value must be (after trimming) to be cast; anything else is unparseable. Where
#: the engines' ``try_cast`` disagree (measured, Spark 4.2 vs Sail 0.7.2) the format rejects
#: the text on both: an exponent in a DECIMAL ('1e3': Spark 1000.00, Sail NULL), Java's '1d'
#: and '1f' in a DOUBLE (Spark 1.0), non-ASCII digits (Spark reads '١٢' as 12), anything after
#: the day in a DATE ('2025-01-03T08:15:00': Spark the date, Sail NULL). NaN and Infinity are
#: not measurements; a time without a date would be read as today. Every other text is read
#: alike by both (a one-digit day, '+1', '6.', time zones and fractions in a TIMESTAMP).
_DECIMAL = r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)"
_DATE = r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}"
VALUE_FORMATS: dict[str, str] = {
    "int": r"[+-]?[0-9]+",
    "decimal(12,2)": _DECIMAL,                       # plain notation: 1234.50, no exponent
    "double": _DECIMAL + r"([eE][+-]?[0-9]+)?",      # JSON numbers may carry an exponent
    "date": _DATE,
    "timestamp": _DATE + r"([T ][ -~]+)?",           # then a time, in printable ASCII
}


def matches(column: "Column", pattern: str) -> "Column":
    """``column`` matches ``pattern`` as a whole.

    Anchored with ``\\A``/``\\z``, not ``^``/``$``: Java's ``$`` also matches before a final line
    break, so ``'1\\n'`` would match on Spark only.
    """
    return column.rlike(rf"\A(?:{pattern})\z")


def typed(raw: "Column", type_: str) -> "Column":
    """``raw`` cast to ``type_`` if it has the type's format (:data:`VALUE_FORMATS`), else NULL.

    ``try_cast`` alone is not enough: the engines accept different text (see above), and a
    value one engine types and the other does not would land in silver on one and in
    quarantine (``<column>_parses``) on the other.
    """
    from pyspark.sql import functions as F

    return F.when(matches(raw, VALUE_FORMATS[type_]), raw.try_cast(type_))


def _finish(df: "DataFrame", typed: list["Column"]) -> "DataFrame":
    """Typed columns first, then every bronze column and the helper columns (not ``_json``)."""
    return drop_columns(df.select(*typed, "*"), "_json")


# ----- reference data ---------------------------------------------------------------------------
def parse_facilities(bronze_df: "DataFrame") -> "DataFrame":
    """bronze.facilities -> typed facilities (ids trimmed, type lower case, state upper case)."""
    from pyspark.sql import functions as F

    df = parse_csv(bronze_df, landing_columns("facilities"))
    r = F.col("_raw")
    return _finish(df, [
        F.upper(r.facility_id).alias("facility_id"),
        r.facility_name.alias("facility_name"),
        standardize_code(r.facility_type).alias("facility_type"),
        r.city.alias("city"),
        F.upper(r.state).alias("state"),
        typed(r.staffed_beds, "int").alias("staffed_beds"),
    ])


def parse_providers(bronze_df: "DataFrame") -> "DataFrame":
    """bronze.providers -> typed providers; ``provider_name`` is 'Last, First'."""
    from pyspark.sql import functions as F

    df = parse_csv(bronze_df, landing_columns("providers"))
    r = F.col("_raw")
    return _finish(df, [
        r.npi.alias("npi"),
        F.concat_ws(", ", r.last_name, r.first_name).alias("provider_name"),
        r.specialty.alias("specialty"),
        F.upper(r.facility_id).alias("facility_id"),
        F.coalesce(F.expr(npi_luhn_sql("_raw.npi")), F.lit(False)).alias("_npi_check_digit_ok"),
    ])


def parse_payers(bronze_df: "DataFrame") -> "DataFrame":
    """bronze.payers -> typed payers (payer_type lower case)."""
    from pyspark.sql import functions as F

    df = parse_csv(bronze_df, landing_columns("payers"))
    r = F.col("_raw")
    return _finish(df, [
        F.upper(r.payer_id).alias("payer_id"),
        r.payer_name.alias("payer_name"),
        standardize_code(r.payer_type).alias("payer_type"),
    ])


# ----- clinical data ----------------------------------------------------------------------------
def parse_encounters(bronze_df: "DataFrame") -> "DataFrame":
    """bronze.encounters -> typed encounters; MRN replaced by ``patient_key``.

    ``secondary_dx`` (standardized, '|'-separated) is kept for :func:`diagnoses_of`.
    """
    from pyspark.sql import functions as F

    from utils.phi import patient_key

    df = parse_csv(bronze_df, landing_columns("encounters"))
    r = F.col("_raw")
    secondary = standardize_icd10_list(r.secondary_dx)
    return _finish(df, [
        F.upper(r.encounter_id).alias("encounter_id"),
        patient_key(r.mrn).alias("patient_key"),
        F.upper(r.facility_id).alias("facility_id"),
        r.provider_npi.alias("provider_npi"),
        standardize_code(r.encounter_class).alias("encounter_class"),
        typed(r.admit_ts, "timestamp").alias("admit_ts"),
        typed(r.discharge_ts, "timestamp").alias("discharge_ts"),
        standardize_code(r.admission_type).alias("admission_type"),
        standardize_code(r.admission_source).alias("admission_source"),
        standardize_code(r.discharge_disposition).alias("discharge_disposition"),
        F.upper(r.payer_id).alias("payer_id"),
        standardize_icd10(r.primary_dx).alias("primary_dx"),
        typed(r.total_charge, "decimal(12,2)").alias("total_charge"),
        F.when(secondary != "", secondary).alias("secondary_dx"),
    ])


def parse_lab_results(bronze_df: "DataFrame") -> "DataFrame":
    """bronze.lab_results (FHIR Observation NDJSON) -> typed results, value as delivered.

    ``value``/``unit`` are converted to the test's standard unit later, in
    :func:`with_references` (the standard unit comes from the LOINC table).
    """
    from pyspark.sql import functions as F

    from utils.phi import patient_key

    df = parse_json(bronze_df, _OBSERVATION_SCHEMA, _JSON_TOP_LEVEL["lab_results"])
    j = F.col("_json")
    coding = F.get(j.code.coding, 0)
    ref = F.get(j.referenceRange, 0)
    df = df.withColumn("_raw", F.struct(
        clean_string(j.resourceType).alias("resource_type"),
        clean_string(j.id).alias("observation_id"),
        clean_string(j.subject.reference).alias("subject"),
        clean_string(j.encounter.reference).alias("encounter"),
        clean_string(coding.code).alias("loinc_code"),
        clean_string(j.effectiveDateTime).alias("collected_ts"),
        clean_string(j.valueQuantity.value).alias("value"),
        clean_string(j.valueQuantity.unit).alias("unit"),
        clean_string(ref.low.value).alias("ref_low"),
        clean_string(ref.high.value).alias("ref_high"),
    ))
    r = F.col("_raw")
    return _finish(df, [
        r.observation_id.alias("observation_id"),
        patient_key(reference_id(r.subject, "Patient")).alias("patient_key"),
        F.upper(reference_id(r.encounter, "Encounter")).alias("encounter_id"),
        r.loinc_code.alias("loinc_code"),
        typed(r.value, "double").alias("result_value"),
        r.unit.alias("unit"),
        typed(r.ref_low, "double").alias("ref_low"),
        typed(r.ref_high, "double").alias("ref_high"),
        typed(r.collected_ts, "timestamp").alias("collected_ts"),
        F.lower(r.resource_type).alias("_resource_type"),
        F.when(r.subject.isNotNull() & reference_id(r.subject, "Patient").isNull(), F.lit(False))
        .otherwise(F.lit(True)).alias("_subject_is_patient"),
    ])


def parse_medications(bronze_df: "DataFrame") -> "DataFrame":
    """bronze.medications (FHIR MedicationRequest NDJSON) -> typed medication requests."""
    from pyspark.sql import functions as F

    from utils.phi import patient_key

    df = parse_json(bronze_df, _MEDICATION_SCHEMA, _JSON_TOP_LEVEL["medications"])
    j = F.col("_json")
    coding = F.get(j.medicationCodeableConcept.coding, 0)
    dose = F.get(F.get(j.dosageInstruction, 0).doseAndRate, 0).doseQuantity
    df = df.withColumn("_raw", F.struct(
        clean_string(j.resourceType).alias("resource_type"),
        clean_string(j.id).alias("medication_request_id"),
        clean_string(j.subject.reference).alias("subject"),
        clean_string(j.encounter.reference).alias("encounter"),
        clean_string(coding.code).alias("rxnorm_code"),
        clean_string(coding.display).alias("medication_name"),
        clean_string(dose.value).alias("dose_value"),
        clean_string(dose.unit).alias("dose_unit"),
        clean_string(j.authoredOn).alias("authored_ts"),
        clean_string(j.dispenseRequest.validityPeriod.start).alias("start_date"),
        clean_string(j.dispenseRequest.validityPeriod["end"]).alias("end_date"),
    ))
    r = F.col("_raw")
    return _finish(df, [
        r.medication_request_id.alias("medication_request_id"),
        patient_key(reference_id(r.subject, "Patient")).alias("patient_key"),
        F.upper(reference_id(r.encounter, "Encounter")).alias("encounter_id"),
        r.rxnorm_code.alias("rxnorm_code"),
        r.medication_name.alias("medication_name"),
        typed(r.dose_value, "double").alias("dose_value"),
        r.dose_unit.alias("dose_unit"),
        typed(r.authored_ts, "timestamp").alias("authored_ts"),
        typed(r.start_date, "date").alias("start_date"),
        typed(r.end_date, "date").alias("end_date"),
        F.lower(r.resource_type).alias("_resource_type"),
    ])


def parse_claims(bronze_df: "DataFrame") -> "DataFrame":
    """bronze.claims -> typed claim lines (amounts DECIMAL(12,2), status lower case)."""
    from pyspark.sql import functions as F

    from utils.phi import patient_key

    df = parse_csv(bronze_df, landing_columns("claims"))
    r = F.col("_raw")
    return _finish(df, [
        F.upper(r.claim_id).alias("claim_id"),
        typed(r.line_number, "int").alias("line_number"),
        F.upper(r.encounter_id).alias("encounter_id"),
        patient_key(r.mrn).alias("patient_key"),
        F.upper(r.payer_id).alias("payer_id"),
        typed(r.service_date, "date").alias("service_date"),
        F.upper(r.cpt_code).alias("cpt_code"),
        typed(r.units, "int").alias("units"),
        typed(r.billed_amount, "decimal(12,2)").alias("billed_amount"),
        typed(r.allowed_amount, "decimal(12,2)").alias("allowed_amount"),
        typed(r.paid_amount, "decimal(12,2)").alias("paid_amount"),
        standardize_code(r.claim_status).alias("claim_status"),
        r.denial_reason.alias("denial_reason"),
        typed(r.adjudication_date, "date").alias("adjudication_date"),
    ])


PARSERS: dict[str, Callable[["DataFrame"], "DataFrame"]] = {
    "facilities": parse_facilities, "providers": parse_providers, "payers": parse_payers,
    "encounters": parse_encounters, "lab_results": parse_lab_results,
    "medications": parse_medications, "claims": parse_claims,
}


def parse_entity(entity: str, bronze_df: "DataFrame") -> "DataFrame":
    """Dispatch to ``parse_<entity>``."""
    return PARSERS[entity](bronze_df)


# ================================================================================================
# Deduplication
# ================================================================================================
@dataclass
class DedupResult:
    """``kept``: one row per key (rows with a NULL key pass through for the rules to reject);
    ``removed``: the other rows, with the lineage of the row kept and the duplicate type."""

    kept: "DataFrame"
    removed: "DataFrame"


def rank_duplicates(df: "DataFrame", keys: Iterable[str],
                    order_cols: Iterable[str] = ARRIVAL_ORDER) -> "DataFrame":
    """``df`` plus ``_is_duplicate`` and, for duplicates, the kept row's lineage.

    One ``row_number`` window per key in ``order_cols`` order: row 1 is kept, the others are
    duplicates of it. Rows with a NULL key are never duplicates (the rules reject them).
    Added columns: ``_is_duplicate``, ``_kept_source_file``, ``_kept_line_number``,
    ``_kept_batch_date``, ``_duplicate_type`` (``exact`` when the raw line equals the kept
    one, ``near`` otherwise: same key after standardization, different text).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    keys, order = list(keys), [F.col(c).asc_nulls_last() for c in order_cols]
    window = Window.partitionBy(*keys).orderBy(*order)
    whole = window.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    has_key = F.lit(True)
    for key in keys:
        has_key = has_key & F.col(key).isNotNull()
    duplicate = has_key & (F.row_number().over(window) > 1)
    kept_value = F.first("value").over(whole)
    return df.select(
        "*",
        duplicate.alias("_is_duplicate"),
        F.first("_source_file").over(whole).alias("_kept_source_file"),
        F.first("_line_number").over(whole).alias("_kept_line_number"),
        F.first("_batch_date").over(whole).alias("_kept_batch_date"),
        F.when(F.col("value") == kept_value, F.lit("exact")).otherwise(F.lit("near"))
        .alias("_duplicate_type"),
    )


_RANK_COLUMNS = ("_is_duplicate", "_kept_source_file", "_kept_line_number", "_kept_batch_date",
                 "_duplicate_type")


def split_ranked(ranked: "DataFrame") -> DedupResult:
    """Kept and removed rows of a :func:`rank_duplicates` frame."""
    from pyspark.sql import functions as F

    return DedupResult(drop_columns(ranked.filter(~F.col("_is_duplicate")), *_RANK_COLUMNS),
                       drop_columns(ranked.filter(F.col("_is_duplicate")), "_is_duplicate"))


def deduplicate(df: "DataFrame", keys: Iterable[str],
                order_cols: Iterable[str] = ARRIVAL_ORDER) -> DedupResult:
    """Keep the first row per key in ``order_cols`` order (a ``row_number`` window).

    ``removed`` carries ``_kept_source_file``, ``_kept_line_number``, ``_kept_batch_date`` and
    ``_duplicate_type`` (exact/near). On Sail a row_number window measured ~5x faster than
    ``dropDuplicates`` with 1/6 of the memory, and unlike ``dropDuplicates`` it says *which*
    row survives, so the rule is stated and the log can point at the kept line.
    """
    return split_ranked(rank_duplicates(df, keys, order_cols))


def dedup_log_frame(removed: "DataFrame", entity: str, keys: Iterable[str]) -> "DataFrame":
    """Rows of ``silver.dedup_log`` for one entity's removed duplicates."""
    from pyspark.sql import functions as F

    key = F.concat_ws("|", *[F.col(k).cast("string") for k in keys])
    return removed.select(
        F.lit(entity).alias("entity"), key.alias("key"),
        F.col("_duplicate_type").alias("duplicate_type"),
        "_source_file", F.col("_line_number").cast("int").alias("_line_number"), "_batch_date",
        F.col("_kept_source_file").alias("kept_source_file"),
        F.col("_kept_line_number").cast("int").alias("kept_line_number"),
        F.col("_kept_batch_date").alias("kept_batch_date"),
        "value",
    )


# ================================================================================================
# References: code tables and known keys
# ================================================================================================
def code_table(spark: "SparkSession", name: str) -> "DataFrame":
    """A code table (icd10cm, loinc, rxnorm, cpt) as a Spark DataFrame with string codes."""
    from pyspark.sql.types import StringType, StructField, StructType

    from data_generator.codes import load_code_table

    pdf = load_code_table(name)
    pdf = pdf.astype(object).where(pdf.notna(), None)
    for column in pdf.columns:
        pdf[column] = pdf[column].map(lambda v: None if v is None else str(v))
    # a StructType, not a DDL string: on Spark Connect the client asks the server to parse DDL
    return spark.createDataFrame(pdf, StructType([StructField(c, StringType())
                                                  for c in pdf.columns]))


def known_patient_keys(bronze_patients: "DataFrame") -> "DataFrame":
    """``patient_key`` of every MRN with at least one change record in bronze.patients.

    Notebook 03 runs before the CDC notebook, so "known" means "ever sent by the EHR".
    """
    from pyspark.sql import functions as F

    from utils.phi import patient_key

    parsed = parse_csv(bronze_patients, landing_columns("patients"))
    keys = parsed.select(patient_key(F.col("_raw.mrn")).alias("key")).filter(F.col("key").isNotNull())
    return distinct_rows(keys, "key")


def known_keys(parsed: "DataFrame", column: str) -> "DataFrame":
    """Distinct non-NULL values of ``column`` of a parsed entity, as column ``key``."""
    from pyspark.sql import functions as F

    keys = parsed.select(F.col(column).alias("key")).filter(F.col("key").isNotNull())
    return distinct_rows(keys, "key")


#: Entities whose business keys other entities point at, and the column holding the key
#: (patients are handled by :func:`known_patient_keys`: their key is derived from the MRN).
KEYED_ENTITIES: tuple[tuple[str, str], ...] = (
    ("encounters", "encounter_id"), ("providers", "npi"), ("facilities", "facility_id"),
    ("payers", "payer_id"))


def known_keys_frame(spark: "SparkSession",
                     read_bronze: Callable[[str], "DataFrame"] | None = None) -> "DataFrame":
    """Every business key bronze has received, as rows (``entity``, ``key``).

    One frame for all the orphan checks, so a caller can compute it once (``build_silver``
    collects it; the declarative pipeline makes it a temporary view that every silver view
    reads) instead of re-parsing bronze patients and encounters for each entity that points
    at them. ``read_bronze(entity)`` defaults to ``spark.table("bronze.<entity>")``.
    """
    from functools import reduce

    from pyspark.sql import functions as F

    read = read_bronze or (lambda entity: spark.table(f"bronze.{entity}"))
    parts = [known_patient_keys(read("patients")).select(F.lit("patients").alias("entity"), "key")]
    for entity, column in KEYED_ENTITIES:
        keys = known_keys(parse_entity(entity, read(entity)), column)
        parts.append(keys.select(F.lit(entity).alias("entity"), "key"))
    return reduce(lambda a, b: a.unionByName(b), parts)


def load_references(spark: "SparkSession",
                    read_bronze: Callable[[str], "DataFrame"] | None = None,
                    known: "DataFrame | None" = None) -> dict[str, "DataFrame"]:
    """Code tables and the keys known in bronze, for :func:`with_references`.

    Keys: ``icd10cm``, ``loinc``, ``rxnorm``, ``cpt`` (code tables) and ``patients``,
    ``encounters``, ``providers``, ``facilities``, ``payers`` (one column ``key``).
    ``known`` is a :func:`known_keys_frame`. When not given it is computed here from
    ``read_bronze`` (default ``spark.table("bronze.<entity>")``) in one query and kept in
    memory, so the many lookups of a silver build do not parse bronze again each time.
    """
    from pyspark.sql import functions as F

    refs = {name: code_table(spark, name) for name in ("icd10cm", "loinc", "rxnorm", "cpt")}
    if known is None:
        known = materialize_small(spark, known_keys_frame(spark, read_bronze))
    for entity in ("patients", *(e for e, _ in KEYED_ENTITIES)):
        refs[entity] = known.filter(F.col("entity") == entity).select("key")
    return refs


def _flag_known(df: "DataFrame", column: str, keys: "DataFrame", flag: str) -> "DataFrame":
    """Left-join the known keys: ``flag`` is true when ``column`` is one of them."""
    from pyspark.sql import functions as F

    lookup = keys.select(F.col("key").alias(f"__{flag}_key"), F.lit(True).alias(f"__{flag}"))
    joined = (df.join(F.broadcast(lookup), F.col(column) == F.col(f"__{flag}_key"), "left")
              .withColumn(flag, F.coalesce(F.col(f"__{flag}"), F.lit(False))))
    return drop_columns(joined, f"__{flag}_key", f"__{flag}")


def _code_keys(table: "DataFrame") -> "DataFrame":
    from pyspark.sql import functions as F

    return table.select(F.col("code").alias("key"))


def _references_encounters(df: "DataFrame", refs: Mapping[str, "DataFrame"]) -> "DataFrame":
    from pyspark.sql import functions as F

    df = _flag_known(df, "patient_key", refs["patients"], "_known_patient")
    df = _flag_known(df, "facility_id", refs["facilities"], "_known_facility")
    df = _flag_known(df, "provider_npi", refs["providers"], "_known_provider")
    df = _flag_known(df, "payer_id", refs["payers"], "_known_payer")
    df = _flag_known(df, "primary_dx", _code_keys(refs["icd10cm"]), "_known_primary_dx")
    codes = refs["icd10cm"].agg(F.collect_set("code").alias("__icd10_codes"))
    checked = (df.crossJoin(F.broadcast(codes))
               .withColumn("_known_secondary_dx", F.coalesce(F.size(F.array_except(
                   F.split(F.col("secondary_dx"), r"\|"), F.col("__icd10_codes"))) == 0,
                   F.lit(True))))
    return drop_columns(checked, "__icd10_codes")


def _references_lab_results(df: "DataFrame", refs: Mapping[str, "DataFrame"]) -> "DataFrame":
    """Known flags, test name, standard unit conversion and reference range from LOINC."""
    from pyspark.sql import functions as F

    df = _flag_known(df, "patient_key", refs["patients"], "_known_patient")
    df = _flag_known(df, "encounter_id", refs["encounters"], "_known_encounter")
    loinc = refs["loinc"].select(
        F.col("code").alias("__loinc"), F.col("name").alias("test_name"),
        F.col("unit").alias("__std_unit"), F.col("ref_low").try_cast("double").alias("__std_low"),
        F.col("ref_high").try_cast("double").alias("__std_high"))
    df = (df.join(F.broadcast(loinc), F.col("loinc_code") == F.col("__loinc"), "left")
          .withColumn("_known_loinc", F.col("__loinc").isNotNull()))
    # Conversion factor to the standard unit: 1 when the unit already is the standard one
    # (compared case-insensitively), a known factor otherwise, NULL when unknown.
    factor = F.when(F.lower(F.col("unit")) == F.lower(F.col("__std_unit")), F.lit(1.0))
    for name_part, from_unit, to_unit, value in UNIT_CONVERSIONS:
        factor = factor.when(
            F.lower(F.col("test_name")).contains(name_part)
            & (F.lower(F.col("unit")) == from_unit.lower())
            & (F.lower(F.col("__std_unit")) == to_unit.lower()), F.lit(value))
    df = df.withColumn("__factor", factor)
    converted = F.col("__factor").isNotNull()
    enriched = (df
                .withColumn("original_value", F.col("result_value"))
                .withColumn("original_unit", F.col("unit"))
                .withColumn("result_value",
                            F.when(converted,
                                   F.round(F.col("result_value") * F.col("__factor"), 4))
                            .otherwise(F.col("result_value")))
                .withColumn("unit", F.when(converted, F.col("__std_unit")).otherwise(F.col("unit")))
                .withColumn("_unit_standard", converted | F.col("unit").isNull())
                .withColumn("ref_low", F.coalesce(F.col("__std_low"), F.col("ref_low")))
                .withColumn("ref_high", F.coalesce(F.col("__std_high"), F.col("ref_high")))
                .withColumn("is_abnormal", F.when(
                    F.col("result_value").isNotNull() & F.col("ref_low").isNotNull()
                    & F.col("ref_high").isNotNull(),
                    (F.col("result_value") < F.col("ref_low"))
                    | (F.col("result_value") > F.col("ref_high")))))
    return drop_columns(enriched, "__loinc", "__std_unit", "__std_low", "__std_high", "__factor")


def _references_medications(df: "DataFrame", refs: Mapping[str, "DataFrame"]) -> "DataFrame":
    from pyspark.sql import functions as F

    df = _flag_known(df, "patient_key", refs["patients"], "_known_patient")
    df = _flag_known(df, "encounter_id", refs["encounters"], "_known_encounter")
    rx = refs["rxnorm"].select(F.col("code").alias("__rx"), F.col("name").alias("__rx_name"))
    joined = (df.join(F.broadcast(rx), F.col("rxnorm_code") == F.col("__rx"), "left")
              .withColumn("_known_rxnorm", F.col("__rx").isNotNull())
              .withColumn("medication_name",
                          F.coalesce(F.col("__rx_name"), F.col("medication_name"))))
    return drop_columns(joined, "__rx", "__rx_name")


def _references_claims(df: "DataFrame", refs: Mapping[str, "DataFrame"]) -> "DataFrame":
    df = _flag_known(df, "patient_key", refs["patients"], "_known_patient")
    df = _flag_known(df, "encounter_id", refs["encounters"], "_known_encounter")
    df = _flag_known(df, "payer_id", refs["payers"], "_known_payer")
    return _flag_known(df, "cpt_code", _code_keys(refs["cpt"]), "_known_cpt")


def _references_providers(df: "DataFrame", refs: Mapping[str, "DataFrame"]) -> "DataFrame":
    return _flag_known(df, "facility_id", refs["facilities"], "_known_facility")


_REFERENCES: dict[str, Callable[["DataFrame", Mapping[str, "DataFrame"]], "DataFrame"]] = {
    "providers": _references_providers, "encounters": _references_encounters,
    "lab_results": _references_lab_results, "medications": _references_medications,
    "claims": _references_claims,
}


def with_references(entity: str, df: "DataFrame", refs: Mapping[str, "DataFrame"]) -> "DataFrame":
    """Add the ``_known_*`` flags (and lab enrichment) the entity's expectations refer to."""
    step = _REFERENCES.get(entity)
    return step(df, refs) if step else df


# ================================================================================================
# Expectations (name, SQL condition, action)
# ================================================================================================
def _not_future(column: str) -> str:
    return (f"{column} IS NULL OR "
            f"CAST({column} AS DATE) <= date_add(_batch_date, {FUTURE_TOLERANCE_DAYS})")


def _structural() -> list[Expectation]:
    return [
        Expectation("valid_encoding", "_valid_encoding", "drop"),
        Expectation("complete_record", "_record_complete", "drop"),
    ]


def facilities_expectations() -> list[Expectation]:
    """Rules for silver.facilities."""
    return _structural() + [
        Expectation("facility_id_not_null", "facility_id IS NOT NULL", "drop"),
        Expectation("facility_name_not_null", "facility_name IS NOT NULL", "drop"),
        Expectation("facility_type_accepted", _accepted_sql("facility_type"), "drop"),
        Expectation("staffed_beds_parses", is_unparseable("staffed_beds", "staffed_beds"), "drop"),
        Expectation("staffed_beds_not_null", "staffed_beds IS NOT NULL", "drop"),
        Expectation("staffed_beds_not_negative", "staffed_beds IS NULL OR staffed_beds >= 0",
                    "drop"),
        Expectation("state_two_letters",
                    "state IS NULL OR (state RLIKE '^[A-Z]{2}$' AND length(state) = 2)", "warn"),
    ]


def providers_expectations() -> list[Expectation]:
    """Rules for silver.providers (NPI check digit, facility known)."""
    return _structural() + [
        Expectation("npi_not_null", "npi IS NOT NULL", "drop"),
        Expectation("npi_valid", "npi IS NULL OR _npi_check_digit_ok", "drop"),
        Expectation("facility_exists", "facility_id IS NULL OR _known_facility", "drop"),
        Expectation("provider_name_present", "provider_name <> ''", "warn"),
    ]


def payers_expectations() -> list[Expectation]:
    """Rules for silver.payers."""
    return _structural() + [
        Expectation("payer_id_not_null", "payer_id IS NOT NULL", "drop"),
        Expectation("payer_type_accepted", _accepted_sql("payer_type"), "drop"),
    ]


def encounters_expectations() -> list[Expectation]:
    """Rules for silver.encounters: keys, parsing, accepted values, codes, dates, FKs."""
    return _structural() + [
        Expectation("encounter_id_not_null", "encounter_id IS NOT NULL", "drop"),
        Expectation("patient_key_not_null", "patient_key IS NOT NULL", "drop"),
        Expectation("facility_id_not_null", "facility_id IS NOT NULL", "drop"),
        Expectation("encounter_class_not_null", "encounter_class IS NOT NULL", "drop"),
        Expectation("admit_ts_not_null", "_raw.admit_ts IS NOT NULL", "drop"),
        Expectation("admit_ts_parses", is_unparseable("admit_ts", "admit_ts"), "drop"),
        Expectation("discharge_ts_parses", is_unparseable("discharge_ts", "discharge_ts"), "drop"),
        Expectation("total_charge_parses", is_unparseable("total_charge", "total_charge"), "drop"),
        Expectation("discharge_after_admit",
                    "discharge_ts IS NULL OR admit_ts IS NULL OR discharge_ts >= admit_ts", "drop"),
        Expectation("admit_ts_not_future", _not_future("admit_ts"), "drop"),
        Expectation("discharge_ts_not_future", _not_future("discharge_ts"), "drop"),
        Expectation("encounter_class_accepted", _accepted_sql("encounter_class"), "drop"),
        Expectation("admission_type_accepted", _accepted_sql("admission_type"), "drop"),
        Expectation("admission_source_accepted", _accepted_sql("admission_source"), "drop"),
        Expectation("discharge_disposition_accepted", _accepted_sql("discharge_disposition"),
                    "drop"),
        Expectation("primary_dx_known", "primary_dx IS NULL OR _known_primary_dx", "drop"),
        Expectation("secondary_dx_known", "_known_secondary_dx", "drop"),
        Expectation("patient_exists", "patient_key IS NULL OR _known_patient", "drop"),
        Expectation("provider_exists", "provider_npi IS NULL OR _known_provider", "drop"),
        Expectation("facility_exists", "facility_id IS NULL OR _known_facility", "drop"),
        Expectation("payer_exists", "payer_id IS NULL OR _known_payer", "drop"),
        Expectation("total_charge_not_negative", "total_charge IS NULL OR total_charge >= 0",
                    "warn"),
    ]


def lab_results_expectations() -> list[Expectation]:
    """Rules for silver.lab_results (FHIR Observation)."""
    return _structural() + [
        Expectation("resource_type_observation", "_resource_type = 'observation'", "drop"),
        Expectation("observation_id_not_null", "observation_id IS NOT NULL", "drop"),
        Expectation("subject_is_patient", "_subject_is_patient", "drop"),
        Expectation("patient_key_not_null", "patient_key IS NOT NULL", "drop"),
        Expectation("loinc_code_not_null", "loinc_code IS NOT NULL", "drop"),
        Expectation("loinc_code_known", "loinc_code IS NULL OR _known_loinc", "drop"),
        Expectation("value_not_null", "_raw.value IS NOT NULL", "drop"),
        Expectation("value_parses", is_unparseable("value", "original_value"), "drop"),
        Expectation("collected_ts_not_null", "_raw.collected_ts IS NOT NULL", "drop"),
        Expectation("collected_ts_parses", is_unparseable("collected_ts", "collected_ts"), "drop"),
        Expectation("collected_ts_not_future", _not_future("collected_ts"), "drop"),
        Expectation("patient_exists", "patient_key IS NULL OR _known_patient", "drop"),
        Expectation("encounter_exists", "encounter_id IS NULL OR _known_encounter", "drop"),
        Expectation("unit_is_standard", "_unit_standard", "warn"),
    ]


def medications_expectations() -> list[Expectation]:
    """Rules for silver.medications (FHIR MedicationRequest)."""
    return _structural() + [
        Expectation("resource_type_medication_request",
                    "_resource_type = 'medicationrequest'", "drop"),
        Expectation("medication_request_id_not_null", "medication_request_id IS NOT NULL", "drop"),
        Expectation("patient_key_not_null", "patient_key IS NOT NULL", "drop"),
        Expectation("rxnorm_code_not_null", "rxnorm_code IS NOT NULL", "drop"),
        Expectation("rxnorm_code_known", "rxnorm_code IS NULL OR _known_rxnorm", "drop"),
        Expectation("dose_value_parses", is_unparseable("dose_value", "dose_value"), "drop"),
        Expectation("authored_ts_not_null", "_raw.authored_ts IS NOT NULL", "drop"),
        Expectation("authored_ts_parses", is_unparseable("authored_ts", "authored_ts"), "drop"),
        Expectation("start_date_parses", is_unparseable("start_date", "start_date"), "drop"),
        Expectation("end_date_parses", is_unparseable("end_date", "end_date"), "drop"),
        Expectation("authored_ts_not_future", _not_future("authored_ts"), "drop"),
        Expectation("patient_exists", "patient_key IS NULL OR _known_patient", "drop"),
        Expectation("encounter_exists", "encounter_id IS NULL OR _known_encounter", "drop"),
        Expectation("end_after_start", "end_date IS NULL OR start_date IS NULL "
                    "OR end_date >= start_date", "warn"),
    ]


def claims_expectations() -> list[Expectation]:
    """Rules for silver.claims (claim lines)."""
    return _structural() + [
        Expectation("claim_id_not_null", "claim_id IS NOT NULL", "drop"),
        Expectation("line_number_not_null", "_raw.line_number IS NOT NULL", "drop"),
        Expectation("line_number_parses", is_unparseable("line_number", "line_number"), "drop"),
        Expectation("patient_key_not_null", "patient_key IS NOT NULL", "drop"),
        Expectation("encounter_id_not_null", "encounter_id IS NOT NULL", "drop"),
        Expectation("cpt_code_not_null", "cpt_code IS NOT NULL", "drop"),
        Expectation("billed_amount_not_null", "_raw.billed_amount IS NOT NULL", "drop"),
        Expectation("service_date_not_null", "_raw.service_date IS NOT NULL", "drop"),
        Expectation("service_date_parses", is_unparseable("service_date", "service_date"), "drop"),
        Expectation("adjudication_date_parses",
                    is_unparseable("adjudication_date", "adjudication_date"), "drop"),
        Expectation("units_parses", is_unparseable("units", "units"), "drop"),
        Expectation("billed_amount_parses", is_unparseable("billed_amount", "billed_amount"),
                    "drop"),
        Expectation("allowed_amount_parses", is_unparseable("allowed_amount", "allowed_amount"),
                    "drop"),
        Expectation("paid_amount_parses", is_unparseable("paid_amount", "paid_amount"), "drop"),
        Expectation("service_date_not_future", _not_future("service_date"), "drop"),
        Expectation("adjudication_date_not_future", _not_future("adjudication_date"), "drop"),
        Expectation("claim_status_accepted", _accepted_sql("claim_status"), "drop"),
        Expectation("cpt_code_known", "cpt_code IS NULL OR _known_cpt", "drop"),
        Expectation("patient_exists", "patient_key IS NULL OR _known_patient", "drop"),
        Expectation("encounter_exists", "encounter_id IS NULL OR _known_encounter", "drop"),
        Expectation("payer_exists", "payer_id IS NULL OR _known_payer", "drop"),
        Expectation("paid_not_above_allowed", "paid_amount IS NULL OR allowed_amount IS NULL "
                    "OR paid_amount <= allowed_amount", "warn"),
    ]


EXPECTATIONS: dict[str, Callable[[], list[Expectation]]] = {
    "facilities": facilities_expectations, "providers": providers_expectations,
    "payers": payers_expectations, "encounters": encounters_expectations,
    "lab_results": lab_results_expectations, "medications": medications_expectations,
    "claims": claims_expectations,
}


def rules_table(entities: Iterable[str] = SILVER_ENTITIES) -> list[tuple[str, str, str, str]]:
    """(entity, rule, action, condition) of every silver rule, for docs and notebooks."""
    return [(e, r.name, r.action, r.condition) for e in entities for r in EXPECTATIONS[e]()]


# ================================================================================================
# Silver projection, diagnoses and schema checks
# ================================================================================================
def silver_frame(table: str, df: "DataFrame") -> "DataFrame":
    """The silver table's columns in contract order and types, then lineage (pure select).

    Uses ``cast`` (not ``try_cast``): :func:`conform_to_schema` checks it lost nothing.
    """
    from pyspark.sql import functions as F

    renamed = SILVER_COLUMN_SOURCES.get(table, {})
    return df.select(*[F.col(renamed.get(name, name)).cast(type_).alias(name)
                       for name, type_ in silver_schema(table)])


def diagnoses_of(encounters: "DataFrame", icd10cm: "DataFrame") -> "DataFrame":
    """One row per encounter diagnosis: primary = sequence 1, then '|'-separated secondaries."""
    from pyspark.sql import functions as F

    codes = F.concat(F.array(F.col("primary_dx")),
                     F.coalesce(F.split(F.col("secondary_dx"), r"\|"), F.array()))
    exploded = encounters.select(
        "encounter_id", "patient_key", F.posexplode(codes).alias("__pos", "icd10_code"),
        "_source_file", "_line_number", "_batch_date", "_ingest_run_id",
        F.lit(None).cast("string").alias("_rescued_data"),
    ).filter(F.col("icd10_code").isNotNull() & (F.col("icd10_code") != ""))
    lookup = icd10cm.select(F.col("code").alias("__code"), "description", "chronic_condition")
    joined = (exploded.join(F.broadcast(lookup), F.col("icd10_code") == F.col("__code"), "left")
              .withColumn("dx_sequence", F.col("__pos") + 1))
    return silver_frame("diagnoses", joined)


def lost_values(source: "DataFrame", target_types: Iterable[tuple[str, str]]
                ) -> tuple[dict[str, int], int | None]:
    """Per column, how many non-NULL values would become NULL when cast to the target type,
    and the number of rows (one aggregation).

    Only columns whose type differs from the target are checked: a cast to the type a column
    already has changes nothing. When none differs no query runs and the row count is None.
    """
    from pyspark.sql import functions as F

    current = dict(_schema_pairs(source))
    checks = []
    for name, type_ in target_types:
        if name not in current or current[name] == _normalize_type(type_):
            continue
        lost = F.col(name).isNotNull() & F.col(name).try_cast(type_).isNull()
        checks.append(F.sum(F.when(lost, 1).otherwise(0)).alias(name))
    if not checks:
        return {}, None
    row = source.agg(F.count(F.lit(1)).alias("__rows"), *checks).first().asDict()
    rows = int(row.pop("__rows"))
    return {k: int(v) for k, v in row.items() if v}, rows


def _conformed(df: "DataFrame", types: list[tuple[str, str]], table: str
               ) -> tuple["DataFrame", int | None]:
    from pyspark.sql import functions as F

    missing = [name for name, _ in types if name not in df.columns]
    if missing:
        raise SilverWriteError(f"{table}: columns missing before write: {', '.join(missing)}")
    lost, rows = lost_values(df, types)
    if lost:
        detail = ", ".join(f"{k} ({v} values)" for k, v in sorted(lost.items()))
        raise SilverWriteError(f"{table}: refusing to write, a cast would turn values into "
                               f"NULL in: {detail}")
    return df.select(*[F.col(name).cast(type_).alias(name) for name, type_ in types]), rows


def conform_to_schema(df: "DataFrame", types: list[tuple[str, str]], table: str) -> "DataFrame":
    """Cast ``df`` to ``types`` after checking no value is lost; raise SilverWriteError if so.

    Sail stores NULL when a value of the wrong type is written; an explicit cast checked with
    ``try_cast`` first turns that silent loss into an error naming the columns.
    """
    return _conformed(df, types, table)[0]


def _schema_pairs(df: "DataFrame") -> list[tuple[str, str]]:
    return [(f.name, f.dataType.simpleString()) for f in df.schema.fields]


@lru_cache(maxsize=None)
def _normalize_type(type_: str) -> str:
    """Spark's canonical spelling of a DDL type (parsing it is a round trip on Spark Connect:
    the same few types are asked for every write, so each is asked once per process)."""
    from pyspark.sql.types import _parse_datatype_string

    return _parse_datatype_string(type_).simpleString()


def write_checked(df: "DataFrame", table: str, types: list[tuple[str, str]],
                  mode: str = "overwrite") -> int:
    """Write ``silver.<table>`` with an explicit schema, then read it back and check it.

    Before: :func:`conform_to_schema`. After: the stored schema must equal ``types`` (Sail may
    ignore write options) and, for an overwrite whose cast check counted the rows, the stored
    row count the written one. Returns the number of rows written.
    """
    from utils.tables import write_table

    spark = df.sparkSession
    conformed, rows = _conformed(df, types, table)
    write_table(conformed, LAYER, table, mode=mode, overwrite_schema=(mode == "overwrite"))
    stored = spark.table(f"{LAYER}.{table}")
    want = [(n, _normalize_type(t)) for n, t in types]
    if _schema_pairs(stored) != want:
        raise SilverWriteError(f"{LAYER}.{table}: stored schema {_schema_pairs(stored)} "
                               f"differs from {want}")
    if mode == "overwrite":
        stored_rows = stored.count()
        if rows is not None and stored_rows != rows:
            raise SilverWriteError(f"{LAYER}.{table}: wrote {rows} rows, stored {stored_rows}")
        rows = stored_rows
    elif rows is None:
        rows = df.count()
    return rows


# ================================================================================================
# One entity end to end (pure) and the driver (writes)
# ================================================================================================
@dataclass
class CleanseResult:
    """Everything silver derives from one entity's bronze rows (lazy DataFrames)."""

    entity: str
    silver: "DataFrame"
    quarantined: "DataFrame"
    duplicates: "DataFrame"
    metrics: list[RuleMetric]
    batch_metrics: list[tuple[Any, RuleMetric]]
    valid: "DataFrame"


def metrics_by_batch(df: "DataFrame", rules: list[Expectation],
                     batch_col: str = "_batch_date") -> list[tuple[Any, RuleMetric]]:
    """(batch, RuleMetric) per batch and rule, sorted by batch then rule order."""
    result = apply_expectations(df, [Expectation(r.name, r.condition, "warn") for r in rules],
                                group_by=batch_col)
    return batch_metric_rows(result, rules)


def batch_metric_rows(result: ExpectationResult, rules: list[Expectation]) -> list[tuple[Any, RuleMetric]]:
    """Flatten ``result.group_metrics`` into (batch, RuleMetric) rows with the rules' own actions."""
    actions = {rule.name: rule.action for rule in rules}
    return [(batch, RuleMetric(m.rule, actions[m.rule], m.condition, m.passed, m.failed))
            for batch, metrics in result.group_metrics.items() for m in metrics]


def cleanse(entity: str, bronze_df: "DataFrame", refs: Mapping[str, "DataFrame"],
            rules: list[Expectation] | None = None,
            stage: Callable[["DataFrame", str], "DataFrame"] | None = None) -> CleanseResult:
    """parse -> deduplicate -> references -> expectations -> silver columns, without writing.

    ``stage(df, name)`` may materialize the parsed and ranked frame (every later step reads it
    several times); :func:`build_silver` passes one because Sail's ``cache()`` is a no-op.
    """
    ranked = rank_duplicates(parse_entity(entity, bronze_df), ENTITY_KEYS[entity])
    if stage is not None:
        ranked = stage(ranked, entity)
    dedup = split_ranked(ranked)
    checked = with_references(entity, dedup.kept, refs)
    rules = rules if rules is not None else EXPECTATIONS[entity]()
    result = apply_expectations(checked, rules, sample_order=list(ARRIVAL_ORDER), group_by="_batch_date")
    return CleanseResult(
        entity=entity,
        silver=silver_frame(entity, result.valid),
        quarantined=result.quarantined.select(*bronze_df.columns, FAILED_RULES_COLUMN),
        duplicates=dedup_log_frame(dedup.removed, entity, ENTITY_KEYS[entity]),
        metrics=result.metrics,
        batch_metrics=batch_metric_rows(result, rules),
        valid=result.valid,
    )


@dataclass
class SilverReport:
    """What :func:`build_silver` wrote: row counts per entity and the run id."""

    run_id: str
    rows: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_rows(self) -> list[tuple[str, int, int, int, int]]:
        """(entity, bronze, silver, quarantined, duplicates), sorted by entity."""
        return [(e, r["bronze"], r["silver"], r["quarantined"], r["duplicates"])
                for e, r in sorted(self.rows.items())]


def _quarantine_types(bronze_df: "DataFrame") -> list[tuple[str, str]]:
    return _schema_pairs(bronze_df) + [(FAILED_RULES_COLUMN, "array<string>")]


def _replace_rows(spark: "SparkSession", table: str, ddl: str, df: "DataFrame",
                  predicate: str) -> int:
    """Idempotent partial refresh: delete the rows matching ``predicate``, append ``df``."""
    from utils.tables import create_table_if_missing

    name = create_table_if_missing(spark, LAYER, table, ddl)
    spark.sql(f"DELETE FROM {name} WHERE {predicate}")
    types = [(p.split()[0], p.split(None, 1)[1].lower()) for p in ddl.split(", ")]
    return write_checked(df, table, types, mode="append")


def _sql_list(values: Iterable[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def _stager(spark: "SparkSession", config) -> Callable[["DataFrame", str], "DataFrame"]:
    """Materialize a frame as a scratch Delta table read back by path (locally).

    Sail's ``cache()`` is a no-op (measured: a cached frame is recomputed on every action),
    and the parsed frame is read by five or more actions. On Databricks the frame is returned
    as is (the platform's own caching applies).
    """
    def stage(df: "DataFrame", name: str) -> "DataFrame":
        if config.databricks:
            return df
        path = str(config.lakehouse_dir / "_staging" / f"silver_{name}")
        (df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
         .save(path))
        return spark.read.format("delta").load(path)

    return stage


def materialize_small(spark: "SparkSession", df: "DataFrame") -> "DataFrame":
    """Compute a small frame (keys, code tables) once: Arrow round trip through the driver."""
    return spark.createDataFrame(df.toArrow())


def build_silver(spark: "SparkSession", entities: Iterable[str] | None = None,
                 run_id: str | None = None) -> SilverReport:
    """Rebuild silver from all of bronze (overwrite) and record this run's quality metrics.

    Writes ``silver.<entity>`` (and ``silver.diagnoses`` with encounters),
    ``silver.quarantine_<entity>``, ``silver.dedup_log`` and ``silver.dq_metrics``. Re-running
    gives the same tables; ``dq_metrics`` rows of the same ``run_id`` are replaced.
    """
    import shutil

    from utils.config import get_config
    from utils.tables import register_course_tables

    entities = list(entities) if entities is not None else list(SILVER_ENTITIES)
    unknown = sorted(set(entities) - set(SILVER_ENTITIES))
    if unknown:
        raise ValueError(f"Unknown silver entities {unknown}: expected some of {SILVER_ENTITIES}")
    config = get_config()
    run_id = run_id or f"silver-{uuid.uuid4().hex[:12]}"
    register_course_tables(spark)
    refs = load_references(spark)
    stage = _stager(spark, config)
    report = SilverReport(run_id)
    metric_rows = []
    try:
        for entity in entities:
            bronze_df = spark.table(f"bronze.{entity}")
            result = cleanse(entity, bronze_df, refs, stage=stage)
            counts = report.rows.setdefault(entity, {})
            counts["silver"] = write_checked(result.silver, entity, silver_schema(entity))
            counts["quarantined"] = write_checked(result.quarantined, f"quarantine_{entity}",
                                                  _quarantine_types(bronze_df))
            counts["duplicates"] = _replace_rows(spark, "dedup_log", dedup_log_schema(),
                                                 result.duplicates, f"entity = '{entity}'")
            if entity == "encounters":
                write_checked(diagnoses_of(result.valid, refs["icd10cm"]), "diagnoses",
                              silver_schema("diagnoses"))
            counts["bronze"] = bronze_df.count()
            metric_rows += [(run_id, entity, batch, m.rule, m.action, m.condition, m.passed,
                             m.failed) for batch, m in result.batch_metrics]
    finally:
        if not config.databricks:
            shutil.rmtree(config.lakehouse_dir / "_staging", ignore_errors=True)
    metrics = spark.createDataFrame(metric_rows, METRICS_SCHEMA)
    _replace_rows(spark, "dq_metrics", METRICS_SCHEMA, metrics,
                  f"run_id = '{run_id}' AND dataset IN ({_sql_list(entities)})")
    return report


# ================================================================================================
# Reconciliation: nothing disappears
# ================================================================================================
def reconciliation(spark: "SparkSession", entities: Iterable[str] = SILVER_ENTITIES) -> "DataFrame":
    """Per entity and batch: bronze rows = silver + quarantined + removed duplicates.

    Columns: entity, batch_date, bronze_rows, silver_rows, quarantined_rows, duplicate_rows,
    balanced; sorted by entity and batch.
    """
    from functools import reduce

    from pyspark.sql import functions as F

    def counted(table: str, name: str, entity_filter: str | None = None) -> "DataFrame":
        df = spark.table(table)
        if entity_filter:
            df = df.filter(F.col("entity") == entity_filter)
        return df.groupBy(F.col("_batch_date").alias("batch_date")).agg(F.count(F.lit(1)).alias(name))

    frames = []
    for entity in entities:
        joined = counted(f"bronze.{entity}", "bronze_rows")
        for table, name, flt in ((f"{LAYER}.{entity}", "silver_rows", None),
                                 (f"{LAYER}.quarantine_{entity}", "quarantined_rows", None),
                                 (f"{LAYER}.dedup_log", "duplicate_rows", entity)):
            joined = joined.join(counted(table, name, flt), "batch_date", "full_outer")
        frames.append(joined.select(F.lit(entity).alias("entity"), "batch_date",
                                    *[F.coalesce(F.col(c), F.lit(0)).cast("bigint").alias(c)
                                      for c in ("bronze_rows", "silver_rows", "quarantined_rows",
                                                "duplicate_rows")]))
    out = reduce(lambda a, b: a.unionByName(b), frames)
    balanced = (F.col("bronze_rows")
                == F.col("silver_rows") + F.col("quarantined_rows") + F.col("duplicate_rows"))
    return out.withColumn("balanced", balanced).orderBy("entity", "batch_date")
