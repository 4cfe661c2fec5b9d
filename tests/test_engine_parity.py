"""Silver gives the same rows and quarantine reasons on Sail and on Apache Spark.

Each test feeds values the two engines read differently (measured: Spark 4.2 JVM against
pysail 0.7.2) through silver's own parse and cast functions and asserts the exact result, so
it fails on whichever engine diverges. Run it on both:

    .venv/bin/python -m pytest tests/test_engine_parity.py -q                      # Sail
    COURSE_ENGINE=spark .venv/bin/python -m pytest tests/test_engine_parity.py -q  # JVM Spark

Only the DataFrame API is used, so it also runs against a Spark Connect server (SPARK_REMOTE).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from tests.test_silver import bronze, csv_header, encounter_line, failed_rules_by_line, refs  # noqa: F401
from utils import silver as S

NDJSON_FILE = "fhir_observations/2025-01-10/Observation_20250110.ndjson"

# (text, value after silver's typing). The comments give what a bare try_cast returns where
# the engines disagree: "Spark x / Sail y".
TYPED_CASES = {
    "decimal(12,2)": [
        ("1234.50", Decimal("1234.50")), ("-0.5", Decimal("-0.50")), ("+7", Decimal("7.00")),
        ("007", Decimal("7.00")), ("12.345", Decimal("12.35")),       # rounded half up on both
        ("1e3", None),                          # Spark 1000.00 / Sail NULL
        ("1E3", None), ("1e-2", None),           # Spark 1000.00, 0.01 / Sail NULL
        ("\u0661\u0662", None),                  # Arabic-Indic digits: Spark 12.00 / Sail NULL
        (".5", Decimal("0.50")), ("6.", Decimal("6.00")),   # a truncated CSV field can end so
        ("1,000.00", None), ("$12", None), ("NaN", None), ("Infinity", None),
        ("12O.50", None), ("12345678901.00", None), ("1\n", None), ("\t1", None),
    ],
    "double": [
        ("7.1", 7.1), ("-0.25", -0.25), ("1e3", 1000.0), ("1.5E+2", 150.0), ("1000.0", 1000.0),
        (".5", 0.5), ("1.e3", 1000.0), ("1.2345678901234568E29", 1.2345678901234568e29),
        ("1d", None), ("1f", None),              # Java suffixes: Spark 1.0 / Sail NULL
        ("NaN", None), ("Infinity", None), ("-inf", None), ("0x10", None), ("5,5", None),
        ("\u0661\u0662", None), ("7.1\n", None),
    ],
    "int": [
        ("42", 42), ("+1", 1), ("-3", -3), ("007", 7),
        ("1.0", None), ("1e3", None), ("2147483648", None), ("", None), ("1\n", None),
    ],
    "date": [
        ("2025-01-03", dt.date(2025, 1, 3)), ("2024-02-29", dt.date(2024, 2, 29)),
        ("2025-1-3", dt.date(2025, 1, 3)),     # Spark's own date syntax, read alike by both
        ("2025-01-03T08:15:00", None),           # Spark 2025-01-03 / Sail NULL
        ("2025-01-03T08:15:00Z", None),          # Spark 2025-01-03 / Sail NULL
        ("\t2025-01-03", None),                  # Spark 2025-01-03 / Sail NULL
        ("2025-01-03 08:15:00", None), ("2025-01", None), ("2025", None), ("+2025-01-03", None),
        ("2025-02-30", None), ("2025-13-45", None), ("20250103", None), ("2025-01-03\n", None),
    ],
    "timestamp": [
        ("2025-01-03T08:15:00", "2025-01-03 08:15:00"),
        ("2025-01-03T08:15:00Z", "2025-01-03 08:15:00"),
        ("2025-01-03 08:15:00", "2025-01-03 08:15:00"),
        ("2025-01-03T08:15:00.123456Z", "2025-01-03 08:15:00.123456"),
        ("2025-01-03T08:15:00+01:00", "2025-01-03 07:15:00"),
        ("2025-01-03T08:15:00+0100", "2025-01-03 07:15:00"),
        ("2025-01-03", "2025-01-03 00:00:00"), ("2025-01-1", "2025-01-01 00:00:00"),
        ("08:15:00", None), ("T08:15:00", None),   # both engines: today at 08:15
        ("2025-01", None), ("2025-01-03T24:00:00", None), ("2025-13-35T08:15:00Z", None),
        ("2025-01-03T08:15:00Z\n", None), ("2025-01-03T08:15:00\r", None),
    ],
}


@pytest.mark.parametrize("type_", sorted(TYPED_CASES))
def test_typed_accepts_exactly_the_contract_formats(spark, type_):
    from pyspark.sql import functions as F

    cases = TYPED_CASES[type_]
    df = spark.createDataFrame([(i, text) for i, (text, _) in enumerate(cases)], "i int, v string")
    value = S.typed(F.col("v"), type_)
    if type_ == "timestamp":   # compared as text: no client time zone involved
        value = value.cast("string")
    got = {cases[r.i][0]: r.value for r in df.select("i", value.alias("value")).collect()}
    assert got == dict(cases)


def observation_line(obs_id="obs-1", value="7.1", when='"2025-01-09T08:15:00Z"'):
    """A FHIR Observation line, with ``value`` and ``when`` pasted in as raw JSON text."""
    return ('{"resourceType":"Observation","id":"' + obs_id + '","status":"final",'
            '"subject":{"reference":"Patient/MRN1"},"encounter":{"reference":"Encounter/ENC1"},'
            '"code":{"coding":[{"system":"http://loinc.org","code":"4548-4"}]},'
            '"effectiveDateTime":' + when + ',"valueQuantity":{"value":' + value
            + ',"unit":"%"}}')


def test_a_json_line_is_a_record_only_when_it_is_one_complete_object(spark):
    full = observation_line()
    lines = [
        full,                                    # 1
        "  " + full + "  ",                      # 2 blanks around the object are fine
        full[:120],                              # 3 cut in "encounter": Spark kept id, subject
        full + " x",                             # 4 trailing text: Spark kept every field
        full + full,                             # 5 two objects on one line
        full + "}",                              # 6 one brace too many
        full[:-1] + ',}',                        # 7 trailing comma
        full.replace('"', "'"),                  # 8 single quotes: Spark's default accepts them
        observation_line(value="NaN"),           # 9 NaN is not JSON: Spark's default accepts it
        "[" + full + "]",                        # 10 an array, not an object
        "null",                                  # 11
        "",                                      # 12
    ]
    parsed = S.parse_lab_results(bronze(spark, lines, file=NDJSON_FILE, first_line=1))
    got = [tuple(r) for r in parsed.select(
        "_line_number", "_record_complete", "observation_id", "_raw.resource_type",
        "result_value").orderBy("_line_number").collect()]
    assert got == [(1, True, "obs-1", "Observation", 7.1), (2, True, "obs-1", "Observation", 7.1)] \
        + [(n, False, None, None, None) for n in range(3, 13)]


def test_json_numbers_are_typed_alike(spark):
    lines = [observation_line(f"obs-{i}", value) for i, value in
             enumerate(["7.10", "1e3", "1E+3", "-0.5", "12345678901234567890", '"7.1"', '"1e3"',
                        '"NaN"', '"7,1"'], start=1)]
    parsed = S.parse_lab_results(bronze(spark, lines, file=NDJSON_FILE, first_line=1))
    got = [tuple(r) for r in parsed.select("observation_id", "result_value")
           .orderBy("_line_number").collect()]
    assert got == [("obs-1", 7.1), ("obs-2", 1000.0), ("obs-3", 1000.0), ("obs-4", -0.5),
                   ("obs-5", 1.2345678901234567e19), ("obs-6", 7.1), ("obs-7", 1000.0),
                   ("obs-8", None), ("obs-9", None)]


ALL_NULL_LAB_RULES = ["collected_ts_not_null", "complete_record", "loinc_code_not_null",
                      "observation_id_not_null", "patient_key_not_null",
                      "resource_type_observation", "value_not_null"]


def test_a_broken_json_line_fails_the_same_rules_and_is_never_a_duplicate(spark, refs):  # noqa: F811
    full = observation_line(when='"2025-01-09T08:15:00Z"')
    lines = [full,
             full[:120],                          # 2 truncated copy of obs-1
             full + " x",                         # 3 trailing text
             observation_line("obs-4", when='"08:15:00"')]     # 4 a time without a date
    result = S.cleanse("lab_results", bronze(spark, lines, file=NDJSON_FILE, first_line=1), refs)
    assert failed_rules_by_line(result) == {2: ALL_NULL_LAB_RULES, 3: ALL_NULL_LAB_RULES,
                                            4: ["collected_ts_parses"]}
    assert [r["observation_id"] for r in result.silver.collect()] == ["obs-1"]
    assert result.duplicates.count() == 0


def medication_line(med_id="medrx-1", start='"2025-01-09"', dose="500"):
    return ('{"resourceType":"MedicationRequest","id":"' + med_id + '","status":"active",'
            '"intent":"order","subject":{"reference":"Patient/MRN2"},'
            '"encounter":{"reference":"Encounter/ENC2"},'
            '"medicationCodeableConcept":{"coding":[{"code":"860975","display":"metformin"}]},'
            '"authoredOn":"2025-01-09T09:00:00Z","dosageInstruction":[{"doseAndRate":[{"doseQuantity":'
            '{"value":' + dose + ',"unit":"mg"}}]}],'
            '"dispenseRequest":{"validityPeriod":{"start":' + start + ',"end":"2025-04-08"}}}')


def test_medication_dates_and_doses_follow_the_contract_formats(spark, refs):  # noqa: F811
    lines = [medication_line(),
             medication_line("medrx-2", start='"2025-01-09T08:00:00"'),  # Spark: date / Sail: NULL
             medication_line("medrx-3", dose='"1d"'),                     # Spark: 1.0 / Sail: NULL
             medication_line("medrx-4")[:150]]                            # cut in "encounter"
    df = bronze(spark, lines, file="fhir_medications/2025-01-10/MedicationRequest_20250110.ndjson",
                first_line=1)
    result = S.cleanse("medications", df, refs)
    quarantined = failed_rules_by_line(result)
    assert quarantined == {
        2: ["start_date_parses"], 3: ["dose_value_parses"],
        4: ["authored_ts_not_null", "complete_record", "medication_request_id_not_null",
            "patient_key_not_null", "resource_type_medication_request", "rxnorm_code_not_null"]}
    (row,) = result.silver.collect()
    assert (row["start_date"], row["dose_value"]) == (dt.date(2025, 1, 9), 500.0)


def test_claim_amounts_and_dates_follow_the_contract_formats(spark, refs):  # noqa: F811
    def claim(line_number="1", service="2025-01-09", units="1", billed="140.00"):
        return (f"CLM1,{line_number},ENC1,MRN1,PAY1,{service},99213,{units},{billed},120.00,"
                "100.00,paid,,2025-01-10")

    lines = [claim(), claim("2", billed="1.4e2"), claim("3", service="2025-01-09T00:00:00"),
             claim("4", units="+2")]
    result = S.cleanse("claims", bronze(spark, lines, csv_header("claims")), refs)
    assert failed_rules_by_line(result) == {
        3: ["billed_amount_parses"], 4: ["service_date_parses"]}
    assert sorted((r["line_number"], r["units"], r["billed_amount"])
                  for r in result.silver.collect()) == [(1, 1, Decimal("140.00")),
                                                        (4, 2, Decimal("140.00"))]


def test_an_encounter_charge_with_an_exponent_or_a_time_without_a_date_is_unparseable(
        spark, refs):  # noqa: F811
    lines = [encounter_line(), encounter_line("ENC2", charge="1.2345e3"),   # Spark: 1234.50
             encounter_line("ENC3", admit="08:00:00", discharge="")]       # both: today 08:00
    result = S.cleanse("encounters", bronze(spark, lines, csv_header("encounters")), refs)
    assert failed_rules_by_line(result) == {3: ["total_charge_parses"], 4: ["admit_ts_parses"]}


def test_icd10_lists_remove_ascii_blanks_only(spark):
    from pyspark.sql import functions as F

    values = ["i10| e1165", "i10|\te1165\n", "I10|\u00a0E1165"]
    df = spark.createDataFrame([(i, v) for i, v in enumerate(values)], "i int, v string")
    got = [r[0] for r in df.orderBy("i").select(S.standardize_icd10_list(F.col("v"))).collect()]
    # a no-break space is not a blank: Sail's \s removed it, Java's did not
    assert got == ["I10|E11.65", "I10|E11.65", "I10|\u00a0E1165"]


def test_npi_check_refuses_a_trailing_line_break(spark):
    df = spark.createDataFrame([("1234567893",), ("1234567893\n",), ("1234567893\r\n",)], "npi string")
    got = [r[0] for r in df.selectExpr(S.npi_luhn_sql("npi")).collect()]
    assert got == [True, False, False]   # Java's $ matches before a final line break
