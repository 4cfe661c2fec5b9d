"""Silver helpers on tiny bronze-shaped frames: parsing, standardization, dedupe, rules, writes."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest

from tests.dataframes import assert_df_equality
from utils import silver as S

BRONZE_DDL = ("value STRING, _header STRING, _source STRING, _source_file STRING, "
              "_line_number INT, _batch_date DATE, _ingest_ts TIMESTAMP, _ingest_run_id STRING, "
              "_raw_base64 STRING")
DAY = dt.date(2025, 1, 10)


def bronze(spark, lines, header=None, file="ehr/2025-01-10/x.csv", batch=DAY, first_line=2):
    """Bronze rows as the ingestion writes them: one physical line each, with lineage."""
    rows = [(value, header, "src", file, first_line + i, batch, None, "run-1", None)
            for i, value in enumerate(lines)]
    return spark.createDataFrame(rows, BRONZE_DDL)


def csv_header(entity):
    return ",".join(S.landing_columns(entity))


def encounter_line(encounter_id="ENC1", mrn="MRN1", facility="FAC1", npi="1234567893",
                   cls="inpatient", admit="2025-01-08 08:00:00", discharge="2025-01-09 10:30:00",
                   admission_type="emergency", source="emergency_room", disposition="home",
                   payer="PAY1", primary="E11.9", secondary="I10", charge="1234.50"):
    return ",".join([encounter_id, mrn, facility, npi, cls, admit, discharge, admission_type,
                     source, disposition, payer, primary, secondary, charge])


def observation(obs_id="obs-1", mrn="MRN1", enc="ENC1", code="2345-7", value=5.5, unit="mmol/L",
                when="2025-01-09T08:15:00Z"):
    return json.dumps({
        "resourceType": "Observation", "id": obs_id, "status": "final",
        "subject": {"reference": f"Patient/{mrn}"}, "encounter": {"reference": f"Encounter/{enc}"},
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": "x"}]},
        "effectiveDateTime": when, "valueQuantity": {"value": value, "unit": unit}})


@pytest.fixture(scope="module")
def refs(spark):
    from utils.phi import patient_key

    out = {name: S.code_table(spark, name) for name in ("icd10cm", "loinc", "rxnorm", "cpt")}
    out["patients"] = (spark.createDataFrame([("MRN1",), ("MRN2",)], "mrn string")
                       .select(patient_key("mrn").alias("key")))
    for name, keys in (("encounters", ["ENC1", "ENC2"]), ("providers", ["1234567893"]),
                       ("facilities", ["FAC1"]), ("payers", ["PAY1"])):
        out[name] = spark.createDataFrame([(k,) for k in keys], "key string")
    return out


# ----- parsing ---------------------------------------------------------------------------------
def test_csv_fields_follow_rfc4180_quotes(spark):
    df = spark.createDataFrame([('a,"b, c",3',), ('a,"say ""hi""",',), ("a,b",)], "value string")
    got = [list(r[0]) for r in df.select(S.csv_fields("value")).collect()]
    assert got == [["a", "b, c", "3"], ["a", 'say "hi"', ""], ["a", "b"]]


def test_parse_csv_maps_columns_by_header_and_rescues_drift(spark):
    df = bronze(spark, ["P2, Payer Two ,commercial,extra-value", "P3,Payer,", "P4,Four,medicare,"],
                header="payer_id,payer_name,payer_type,drift_col")
    df = df.unionByName(bronze(spark, ["medicare,P1,Payer One", "P9"],
                               header="payer_type,payer_id,payer_name", first_line=2))
    parsed = S.parse_csv(df, S.landing_columns("payers")).select(
        "_raw.payer_id", "_raw.payer_name", "_raw.payer_type", "_rescued_data", "_record_complete")
    assert sorted((tuple(r) for r in parsed.collect()), key=str) == [
        ("P1", "Payer One", "medicare", None, True),
        ("P2", "Payer Two", "commercial", '{"drift_col":"extra-value"}', True),
        ("P3", "Payer", None, None, False),          # one field short of its header
        ("P4", "Four", "medicare", '{"drift_col":null}', True),   # drifted file, empty value
        (None, None, "P9", None, False),             # truncated: only the first field
    ]


def test_parse_json_flags_broken_lines_and_rescues_unknown_keys(spark):
    lines = ['{"resourceType":"Observation","id":"obs-1","meta":{"v":1}}',
             '{"resourceType":"Observation","id":"obs-2"',          # cut short
             '{"resourceType":"Observation","id":"obs-3"} trailing',
             '[1, 2]']
    parsed = S.parse_lab_results(bronze(spark, lines, first_line=1))
    got = parsed.select("_line_number", "observation_id", "_record_complete", "_rescued_data")
    assert [tuple(r) for r in got.orderBy("_line_number").collect()] == [
        (1, "obs-1", True, '{"meta":{"v":1}}'), (2, None, False, None), (3, None, False, None),
        (4, None, False, None)]


def test_standardization_helpers(spark):
    df = spark.createDataFrame([(" Inpatient ", " e119 ", "  "), ("EMERGENCY", "I10", "x"),
                                (None, "e11.65", None)], "cls string, dx string, s string")
    got = df.select(S.standardize_code("cls"), S.standardize_icd10("dx"), S.clean_string("s"))
    assert [tuple(r) for r in got.collect()] == [
        ("inpatient", "E11.9", None), ("emergency", "I10", "x"), (None, "E11.65", None)]


def test_npi_luhn_sql_agrees_with_python(spark):
    values = ["1234567893", "1234567894", "123456789", "12345678a3", "1245319599", "0000000000"]
    df = spark.createDataFrame([(v,) for v in values], "npi string")
    got = {r[0]: bool(r[1]) for r in df.selectExpr("npi", S.npi_luhn_sql("npi")).collect()}
    assert got == {v: S.npi_is_valid(v) for v in values}
    assert [v for v in values if got[v]] == ["1234567893", "1245319599"]


def test_parse_encounters_types_standardizes_and_hides_mrn(spark):
    line = encounter_line(cls=" Inpatient ", primary="e119", secondary="i10| E11.65 ",
                          payer="pay1")
    parsed = S.parse_encounters(bronze(spark, [line, encounter_line(charge="12O.50")],
                                       csv_header("encounters")))
    assert "mrn" not in parsed.columns
    rows = parsed.select("encounter_class", "primary_dx", "secondary_dx", "payer_id", "admit_ts",
                         "total_charge", "_raw.total_charge").orderBy("_line_number").collect()
    assert [tuple(r) for r in rows] == [
        ("inpatient", "E11.9", "I10|E11.65", "PAY1", dt.datetime(2025, 1, 8, 8), Decimal("1234.50"),
         "1234.50"),
        ("inpatient", "E11.9", "I10", "PAY1", dt.datetime(2025, 1, 8, 8), None, "12O.50"),
    ]


# ----- dedupe ------------------------------------------------------------------------------------
def test_deduplicate_keeps_first_arrival_and_types_duplicates(spark):
    header = csv_header("payers")
    first = bronze(spark, ["P1,Payer One,medicare", "P2,Two,commercial"], header,
                   file="reference/2025-01-09/payers.csv", batch=dt.date(2025, 1, 9))
    later = bronze(spark, ["P1,Payer One,medicare", " p1 ,Payer One, MEDICARE", ",No key,medicare"],
                   header, file="reference/2025-01-10/payers.csv")
    result = S.deduplicate(S.parse_payers(later.unionByName(first)), ["payer_id"])
    kept = result.kept.select("payer_id", "_source_file", "_line_number")
    assert sorted((tuple(r) for r in kept.collect()), key=str) == sorted([
        ("P1", "reference/2025-01-09/payers.csv", 2), ("P2", "reference/2025-01-09/payers.csv", 3),
        (None, "reference/2025-01-10/payers.csv", 4)], key=str)
    removed = result.removed.select("payer_id", "_line_number", "_kept_line_number",
                                    "_kept_batch_date", "_duplicate_type")
    assert sorted(tuple(r) for r in removed.collect()) == [
        ("P1", 2, 2, dt.date(2025, 1, 9), "exact"), ("P1", 3, 2, dt.date(2025, 1, 9), "near")]
    log = S.dedup_log_frame(result.removed, "payers", ["payer_id"])
    assert log.columns == [f.split()[0] for f in S.dedup_log_schema().split(", ")]


# ----- references and rules ---------------------------------------------------------------------
def failed_rules_by_line(result):
    return {r["_line_number"]: sorted(r["_failed_rules"]) for r in result.quarantined.collect()}


def test_encounter_rules_name_every_failure(spark, refs):
    lines = [
        encounter_line(),                                                     # 2 clean
        encounter_line("ENC2", discharge="2025-01-07 10:00:00"),              # 3 before admit
        encounter_line("ENC3", admit="2025-01-12 08:00:00", discharge=""),    # 4 future
        encounter_line("ENC4", primary="Z99.999", secondary="I10|XX1"),       # 5 unknown codes
        encounter_line("ENC5", mrn="MRN404", npi="1245319599"),               # 6 orphans
        encounter_line("ENC6", admit="2025-13-45 08:00:00", cls="bogus"),     # 7 bad date/value
        "ENC7,MRN1,FAC1",                                                     # 8 truncated
        encounter_line("ENC8", mrn=""),                                       # 9 null required
    ]
    result = S.cleanse("encounters", bronze(spark, lines, csv_header("encounters")), refs)
    assert failed_rules_by_line(result) == {
        3: ["discharge_after_admit"],
        4: ["admit_ts_not_future"],
        5: ["primary_dx_known", "secondary_dx_known"],
        6: ["patient_exists", "provider_exists"],
        7: ["admit_ts_parses", "encounter_class_accepted"],
        8: ["admit_ts_not_null", "complete_record", "encounter_class_not_null"],
        9: ["patient_key_not_null"],
    }
    assert [r["encounter_id"] for r in result.silver.collect()] == ["ENC1"]
    assert result.silver.columns == [c for c, _ in S.silver_schema("encounters")]
    by_rule = {m.rule: (m.passed, m.failed) for m in result.metrics}
    assert by_rule["discharge_after_admit"] == (7, 1)
    assert by_rule["complete_record"] == (7, 1)
    assert result.quarantined.columns == BRONZE_DDL_COLUMNS + ["_failed_rules"]


BRONZE_DDL_COLUMNS = [part.split()[0] for part in BRONZE_DDL.split(", ")]


def test_diagnoses_explode_primary_then_secondary_with_chronic_groups(spark, refs):
    line = encounter_line(primary="E11.9", secondary="I10|J06.9")
    result = S.cleanse("encounters", bronze(spark, [line], csv_header("encounters")), refs)
    dx = S.diagnoses_of(result.valid, refs["icd10cm"]).select(
        "encounter_id", "dx_sequence", "icd10_code", "chronic_condition")
    assert sorted(tuple(r) for r in dx.collect()) == [
        ("ENC1", 1, "E11.9", "diabetes"), ("ENC1", 2, "I10", "hypertension"),
        ("ENC1", 3, "J06.9", None)]


def test_lab_glucose_in_mmol_is_converted_and_flagged_abnormal(spark, refs):
    lines = [observation(), observation("obs-2", code="2160-0", value=1.0, unit="mg/dL"),
             observation("obs-3", value="12O.5"), observation("obs-4", code="9999-9"),
             observation("obs-5", enc="ENC404"), '{"resourceType":"Observation","id":"obs-6",']
    df = bronze(spark, lines, file="fhir_observations/2025-01-10/Observation_20250110.ndjson",
                first_line=1)
    result = S.cleanse("lab_results", df, refs)
    rows = result.silver.select("observation_id", "value", "unit", "original_value",
                                "original_unit", "ref_low", "ref_high", "is_abnormal",
                                "test_name").orderBy("observation_id").collect()
    assert [tuple(r)[:8] for r in rows] == [
        ("obs-1", 99.088, "mg/dL", 5.5, "mmol/L", 70.0, 99.0, True),
        ("obs-2", 1.0, "mg/dL", 1.0, "mg/dL", 0.6, 1.3, False),
    ]
    assert rows[0]["test_name"].startswith("Glucose")
    assert failed_rules_by_line(result) == {
        3: ["value_parses"],
        4: ["loinc_code_known", "unit_is_standard"],   # the warn rule is listed too
        5: ["encounter_exists"],
        6: ["collected_ts_not_null", "complete_record", "loinc_code_not_null",
            "observation_id_not_null", "patient_key_not_null", "resource_type_observation",
            "value_not_null"],
    }


def test_medication_request_parses_nested_fhir(spark, refs):
    line = json.dumps({
        "resourceType": "MedicationRequest", "id": "medrx-1", "status": "active",
        "intent": "order", "subject": {"reference": "Patient/MRN2"},
        "encounter": {"reference": "Encounter/ENC2"},
        "medicationCodeableConcept": {"coding": [{"code": "860975", "display": "metformin"}]},
        "authoredOn": "2025-01-09T09:00:00Z",
        "dosageInstruction": [{"text": "500 mg", "doseAndRate": [
            {"doseQuantity": {"value": 500, "unit": "mg"}}]}],
        "dispenseRequest": {"validityPeriod": {"start": "2025-01-09", "end": "2025-04-08"}}})
    result = S.cleanse("medications", bronze(spark, [line], first_line=1), refs)
    (row,) = result.silver.collect()
    assert (row["medication_request_id"], row["encounter_id"], row["rxnorm_code"],
            row["dose_value"], row["dose_unit"], row["authored_ts"], row["start_date"],
            row["end_date"]) == ("medrx-1", "ENC2", "860975", 500.0, "mg",
                                 dt.datetime(2025, 1, 9, 9), dt.date(2025, 1, 9),
                                 dt.date(2025, 4, 8))
    assert row["medication_name"].startswith("24 HR metformin")


def test_claim_rules(spark, refs):
    header = csv_header("claims")
    good = "CLM1,1,ENC1,MRN1,PAY1,2025-01-09,99213,1,140.00,120.00,100.00,paid,,2025-01-10"
    lines = [good,
             "CLM1,2,ENC1,MRN1,PAY1,2025-01-09,99213,1,14O.00,120.00,100.00,PAID ,,2025-01-10",
             "CLM2,1,ENC404,MRN1,PAY1,2025-01-09,00000,1,140.00,120.00,100.00,paid,,2025-01-10",
             "CLM3,1,ENC1,MRN1,PAY1,2025-01-09,99213,1,140.00,120.00,130.00,denied,CO-97,"]
    result = S.cleanse("claims", bronze(spark, lines, header), refs)
    assert failed_rules_by_line(result) == {
        3: ["billed_amount_parses"], 4: ["cpt_code_known", "encounter_exists"]}
    assert sorted((r["claim_id"], r["line_number"], r["claim_status"])
                  for r in result.silver.collect()) == [("CLM1", 1, "paid"), ("CLM3", 1, "denied")]
    warn = {m.rule: m.failed for m in result.metrics}["paid_not_above_allowed"]
    assert warn == 1   # CLM3 paid more than allowed: counted, kept


def test_reference_entity_rules(spark, refs):
    providers = bronze(spark, ["1234567893,Ada,Lovelace,cardiology,FAC1",
                               "1234567894,Bad,Check,cardiology,FAC1",
                               "1245319599,No,Facility,oncology,FAC404"], csv_header("providers"))
    result = S.cleanse("providers", providers, refs)
    assert failed_rules_by_line(result) == {3: ["npi_valid"], 4: ["facility_exists"]}
    assert [tuple(r) for r in result.silver.select("npi", "provider_name").collect()] == [
        ("1234567893", "Lovelace, Ada")]
    facilities = bronze(spark, ["FAC1,General,Acute_Care_Hospital,Boston,ma,250",
                                "FAC2,Clinic,outpatient_clinic,Boston,MA,",
                                "FAC3,Clinic,outpatient_clinic,Boston,MA,ten"],
                        csv_header("facilities"))
    result = S.cleanse("facilities", facilities, refs)
    assert failed_rules_by_line(result) == {3: ["staffed_beds_not_null"],
                                            4: ["staffed_beds_not_null", "staffed_beds_parses"]}
    assert [tuple(r) for r in result.silver.select(
        "facility_type", "state", "staffed_beds").collect()] == [("acute_care_hospital", "MA", 250)]


def test_metrics_by_batch_counts_each_rule_per_batch(spark, refs):
    header = csv_header("payers")
    df = bronze(spark, ["P1,One,medicare", "P2,Two,bogus"], header).unionByName(
        bronze(spark, ["P3,Three,commercial"], header, batch=dt.date(2025, 1, 11)))
    parsed = S.parse_payers(df)
    got = [(b, m.rule, m.passed, m.failed) for b, m in
           S.metrics_by_batch(parsed, S.payers_expectations())]
    assert [g for g in got if g[1] == "payer_type_accepted"] == [
        (DAY, "payer_type_accepted", 1, 1), (dt.date(2025, 1, 11), "payer_type_accepted", 1, 0)]
    assert len(got) == 2 * len(S.payers_expectations())


# ----- writes -------------------------------------------------------------------------------------
def test_conform_to_schema_refuses_a_lossy_cast(spark):
    df = spark.createDataFrame([("1", "x"), ("2", "12")], "a string, b string")
    with pytest.raises(S.SilverWriteError, match=r"t: refusing to write, a cast would turn "
                                                 r"values into NULL in: b \(1 values\)"):
        S.conform_to_schema(df, [("a", "int"), ("b", "int")], "t")
    ok = S.conform_to_schema(df.filter("a = '2'"), [("a", "int"), ("b", "int")], "t")
    assert_df_equality(ok, spark.createDataFrame([(2, 12)], "a int, b int"))


def test_split_csv_line_reads_every_line_as_the_csv_module_does():
    import csv
    import random

    rng = random.Random(7)
    alphabet = ['a', 'b', ',', ' ', '"', "'", '\t', '\r', '\n', 'é', ';', '\\', '\x00']
    lines = ["", ",", "a,b,", '"a,b",c', 'x,"open', 'a""b,c'] + [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(3000)]
    for line in lines:
        try:
            expected = next(csv.reader([line]), [])
        except csv.Error:       # e.g. a bare carriage return outside quotes: same error
            with pytest.raises(csv.Error):
                S.split_csv_line(line)
            continue
        assert S.split_csv_line(line) == expected, repr(line)


def test_lost_values_checks_only_the_columns_a_cast_would_change(spark):
    df = spark.createDataFrame([("x", 1), ("2", 3)], "a string, n int")
    assert S.lost_values(df, [("a", "string"), ("n", "int")]) == ({}, None)  # nothing to cast
    assert S.lost_values(df, [("a", "int"), ("n", "int")]) == ({"a": 1}, 2)
    assert S.lost_values(df, [("a", "string"), ("n", "bigint")]) == ({}, 2)


def test_contract_documents_the_metrics_and_dedup_tables_as_written():
    from utils.expectations import METRICS_SCHEMA

    documented = ", ".join(f"{c} {t}" for c, t in S.silver_schema("dq_metrics", lineage=False))
    assert documented.lower() == METRICS_SCHEMA.lower()
    assert S.dedup_log_schema().startswith("entity string, key string, duplicate_type string")


def test_every_rule_has_a_unique_name_and_valid_action():
    for entity in S.SILVER_ENTITIES:
        names = [r.name for r in S.EXPECTATIONS[entity]()]
        assert len(names) == len(set(names)), entity
    assert ("encounters", "discharge_after_admit", "drop") in [
        row[:3] for row in S.rules_table()]


# ----- build_silver end to end on tiny bronze tables ------------------------------------------------
def write_bronze(spark, entity, df):
    from utils.tables import write_table

    write_table(df, "bronze", entity, mode="overwrite")


def test_build_silver_reconciles_and_reruns_identically(fresh_spark, data_dir):
    spark = fresh_spark
    header = csv_header
    tables = {
        "facilities": bronze(spark, ["FAC1,General,acute_care_hospital,Boston,MA,250"],
                             header("facilities")),
        "providers": bronze(spark, ["1234567893,Ada,Lovelace,cardiology,FAC1"], header("providers")),
        "payers": bronze(spark, ["PAY1,Medicare,medicare", "PAY1,Medicare,medicare"], header("payers")),
        "patients": bronze(spark, ["c1,INSERT,2025-01-01 00:00:00,MRN1,A,B,1950-01-01,F,1 Main St,"
                                   "Boston,MA,02110,555-0100,123-45-6789,PAY1"], header("patients")),
        "encounters": bronze(spark, [encounter_line(), encounter_line("ENC2", mrn="MRN404")],
                             header("encounters")).unionByName(
            bronze(spark, [encounter_line(cls="INPATIENT")], header("encounters"),
                   file="ehr/2025-01-11/x.csv", batch=dt.date(2025, 1, 11))),
        "lab_results": bronze(spark, [observation(), "{broken"], first_line=1),
        "medications": bronze(spark, [], first_line=1),
        "claims": bronze(spark, ["CLM1,1,ENC1,MRN1,PAY1,2025-01-09,99213,1,140.00,120.00,100.00,"
                                 "paid,,2025-01-10"], header("claims")),
    }
    for entity, df in tables.items():
        write_bronze(spark, entity, df)

    first = S.build_silver(spark, run_id="run-a")
    assert first.as_rows() == [
        ("claims", 1, 1, 0, 0), ("encounters", 3, 1, 1, 1), ("facilities", 1, 1, 0, 0),
        ("lab_results", 2, 1, 1, 0), ("medications", 0, 0, 0, 0), ("payers", 2, 1, 0, 1),
        ("providers", 1, 1, 0, 0)]
    recon = S.reconciliation(spark)
    assert recon.filter("NOT balanced").count() == 0
    assert [tuple(r)[:6] for r in recon.filter("entity = 'encounters'").collect()] == [
        ("encounters", DAY, 2, 1, 1, 0), ("encounters", dt.date(2025, 1, 11), 1, 0, 0, 1)]
    (q,) = spark.table("silver.quarantine_encounters").collect()
    assert (q["_line_number"], list(q["_failed_rules"])) == (3, ["patient_exists"])
    assert [tuple(r) for r in spark.table("silver.dedup_log").select(
        "entity", "key", "duplicate_type", "_line_number", "kept_line_number")
        .orderBy("entity").collect()] == [("encounters", "ENC1", "near", 2, 2),
                                          ("payers", "PAY1", "exact", 3, 2)]
    assert spark.table("silver.diagnoses").count() == 2
    assert spark.table("silver.lab_results").select("value").first()[0] == 99.088

    again = S.build_silver(spark, run_id="run-a")          # same run id: replaced, not added
    assert again.as_rows() == first.as_rows()
    S.build_silver(spark, entities=["payers"], run_id="run-b")
    metrics = spark.table("silver.dq_metrics")
    per_run = {r[0]: r[1] for r in metrics.groupBy("run_id").count().collect()}
    # one row per rule and batch with rows left after dedupe (the 2025-01-11 encounter
    # batch only held a duplicate), none for the empty medications table
    rules = sum(len(S.EXPECTATIONS[e]()) * n for e, n in
                (("encounters", 1), ("facilities", 1), ("providers", 1), ("payers", 1),
                 ("lab_results", 1), ("claims", 1)))
    assert per_run == {"run-a": rules, "run-b": len(S.payers_expectations())}
    assert spark.table("silver.dedup_log").count() == 2
    assert S.reconciliation(spark).filter("NOT balanced").count() == 0
