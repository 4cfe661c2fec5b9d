"""Patients CDC: parsing, rules, dedupe, and the SCD2 MERGE (inserts, updates, deletes,
out-of-order changes, replays) on tiny hand-built change records."""

import datetime as dt

import pytest
from pyspark.sql import functions as F

from tests.dataframes import assert_df_equality
from utils.bronze import BRONZE_SCHEMA_DDL
from utils.cdc import (
    PATIENT_CHANGES_DDL,
    SchemaMismatch,
    apply_scd2,
    conform,
    deduplicate_changes,
    merge_changes,
    parse_patient_changes,
    patient_change_expectations,
    scd2_history,
)
from utils.expectations import apply_expectations

HEADER = ("change_id,operation,change_ts,mrn,first_name,last_name,birth_date,sex,address_line,"
          "city,state,zip,phone,ssn,payer_id")
DAY1, DAY2 = dt.date(2025, 1, 1), dt.date(2025, 1, 2)


@pytest.fixture
def spark(fresh_spark):
    """Every test here gets a new session (conftest's ``fresh_spark``): ``silver.patients``
    then resolves to this test's data_dir."""
    return fresh_spark


def ts(day: int, hour: int = 0) -> dt.datetime:
    return dt.datetime(2025, 1, day, hour)


def change(cid, op, when, key, city="Boston", batch=DAY1, line=2):
    """One silver.patient_changes row; a DELETE carries no attributes."""
    attrs = (None,) * 6 if op == "DELETE" else (dt.date(1980, 5, 1), "F", city, "MA", "021", "P1")
    return (cid, op, when, key, *attrs, f"ehr_patients/{batch}/p.csv", line, batch, "run", None)


def changes(spark, rows):
    return spark.createDataFrame(rows, PATIENT_CHANGES_DDL)


def history(spark, target="silver.patients"):
    """(key, city, valid_from, valid_to, is_current, is_deleted) sorted."""
    return [tuple(r) for r in spark.table(target)
            .select("patient_key", "city", "valid_from", "valid_to", "is_current", "is_deleted")
            .orderBy("patient_key", "valid_from").collect()]


def delta_version(data_dir, table="patients"):
    from deltalake import DeltaTable

    return DeltaTable(str(data_dir / "lakehouse" / "silver" / table)).version()


# ----- SCD2 ------------------------------------------------------------------------------------
def test_insert_then_update_closes_the_old_version(spark, data_dir):
    r1 = apply_scd2(spark, changes(spark, [change("c1", "INSERT", ts(1), "k1"),
                                            change("c2", "INSERT", ts(1), "k2")]))
    assert (r1.changes_added, r1.versions.inserted) == (2, 2)
    r2 = apply_scd2(spark, changes(spark, [change("c3", "UPDATE", ts(2), "k1", "Salem", DAY2)]))
    assert (r2.changes_added, r2.versions.inserted, r2.versions.updated,
            r2.versions.deleted) == (1, 1, 1, 0)
    assert history(spark) == [
        ("k1", "Boston", ts(1), ts(2), False, False),
        ("k1", "Salem", ts(2), None, True, False),
        ("k2", "Boston", ts(1), None, True, False),
    ]


def test_delete_closes_current_version_and_marks_it(spark, data_dir):
    apply_scd2(spark, changes(spark, [change("c1", "INSERT", ts(1), "k1")]))
    r = apply_scd2(spark, changes(spark, [change("c2", "DELETE", ts(2, 5), "k1", batch=DAY2)]))
    assert (r.versions.inserted, r.versions.updated) == (0, 1)
    assert history(spark) == [("k1", "Boston", ts(1), ts(2, 5), False, True)]
    assert spark.table("silver.patients").where("is_current").count() == 0


def test_out_of_order_change_is_placed_in_history_not_made_current(spark, data_dir):
    apply_scd2(spark, changes(spark, [change("c1", "INSERT", ts(1), "k1"),
                                      change("c3", "UPDATE", ts(3), "k1", "Lynn")]))
    # c2 happened between c1 and c3 but arrives last, in a later batch
    r = apply_scd2(spark, changes(spark, [change("c2", "UPDATE", ts(2), "k1", "Salem", DAY2)]))
    assert (r.versions.inserted, r.versions.updated, r.versions.deleted) == (1, 1, 0)
    assert history(spark) == [
        ("k1", "Boston", ts(1), ts(2), False, False),
        ("k1", "Salem", ts(2), ts(3), False, False),
        ("k1", "Lynn", ts(3), None, True, False),
    ]


def test_late_delete_and_late_insert_land_in_their_place(spark, data_dir):
    apply_scd2(spark, changes(spark, [change("c2", "UPDATE", ts(2), "k1", "Salem"),
                                      change("c4", "UPDATE", ts(4), "k1", "Lynn")]))
    apply_scd2(spark, changes(spark, [change("c3", "DELETE", ts(3), "k1", batch=DAY2),
                                      change("c1", "INSERT", ts(1), "k1", batch=DAY2)]))
    assert history(spark) == [
        ("k1", "Boston", ts(1), ts(2), False, False),
        ("k1", "Salem", ts(2), ts(3), False, True),   # closed by the late DELETE
        ("k1", "Lynn", ts(4), None, True, False),     # re-registered after the delete
    ]


def test_replay_is_a_noop_and_adds_no_delta_version(spark, data_dir):
    batch = changes(spark, [change("c1", "INSERT", ts(1), "k1"),
                            change("c2", "UPDATE", ts(2), "k1", "Salem"),
                            change("c3", "DELETE", ts(3), "k2")])
    apply_scd2(spark, batch)
    before = (delta_version(data_dir), delta_version(data_dir, "patient_changes"), history(spark))
    replay = apply_scd2(spark, batch)
    assert replay.is_noop
    assert (replay.changes_received, replay.changes_added) == (3, 0)
    assert (delta_version(data_dir), delta_version(data_dir, "patient_changes"),
            history(spark)) == before


def test_same_change_twice_in_one_batch_counts_once(spark, data_dir):
    rows = [change("c1", "INSERT", ts(1), "k1"), change("c1", "INSERT", ts(1), "k1", line=9)]
    r = apply_scd2(spark, changes(spark, rows))
    assert (r.changes_received, r.changes_added, r.versions.inserted) == (1, 1, 1)
    assert spark.table("silver.patient_changes").select("_line_number").collect()[0][0] == 2


def test_scd2_history_ties_and_orphan_delete(spark):
    rows = [change("c1", "INSERT", ts(1), "k1"),
            change("c2", "UPDATE", ts(1), "k1", "Salem"),   # same instant: later change_id wins
            change("c9", "DELETE", ts(1), "k3")]            # delete of an unknown patient
    got = [tuple(r) for r in scd2_history(changes(spark, rows))
           .select("patient_key", "city", "valid_from", "valid_to", "is_current", "is_deleted")
           .collect()]
    assert got == [("k1", "Salem", ts(1), None, True, False)]


def test_late_changes_flags_the_out_of_order_ones(spark):
    from utils.cdc import late_changes

    rows = [change("c1", "INSERT", ts(1), "k1"),
            change("c3", "UPDATE", ts(3), "k1", batch=dt.date(2025, 1, 3)),
            change("c2", "UPDATE", ts(2), "k1", batch=dt.date(2025, 1, 4)),    # older than c3
            change("c4", "UPDATE", ts(2, 5), "k2", batch=dt.date(2025, 1, 4))]  # late, no newer
    got = [(r.change_id, r.out_of_order) for r in
           late_changes(changes(spark, rows)).orderBy("change_id").collect()]
    assert got == [("c2", True), ("c4", False)]


# ----- explicit schemas ------------------------------------------------------------------------
def test_conform_refuses_a_cast_that_would_lose_values(spark):
    df = spark.createDataFrame([("a", "12"), ("b", "x7")], "k STRING, n STRING")
    message = r"column n: 1 value\(s\) of type string do not fit int \(e.g. 'x7'\)"
    with pytest.raises(SchemaMismatch, match=message):
        conform(df, "k STRING, n INT")
    ok = conform(spark.createDataFrame([("a", "12")], "k STRING, n STRING"), "k STRING, n INT")
    assert ok.schema.simpleString() == "struct<k:string,n:int>" and ok.first()["n"] == 12
    with pytest.raises(SchemaMismatch, match="missing"):
        conform(df, "k STRING, n STRING, extra INT")


def test_merge_changes_syncs_and_refuses_another_schema(spark, data_dir):
    ddl = "k STRING, v INT"
    first = merge_changes(spark, spark.createDataFrame([("a", 1), ("b", 2)], ddl), "silver.t", ddl, ["k"])
    second = merge_changes(spark, spark.createDataFrame([("a", 1), ("b", 3), ("c", 4)], ddl),
                           "silver.t", ddl, ["k"])
    third = merge_changes(spark, spark.createDataFrame([("c", 4)], ddl), "silver.t", ddl, ["k"])
    assert [(r.inserted, r.updated, r.deleted) for r in (first, second, third)] == [
        (2, 0, 0), (1, 1, 0), (0, 0, 2)]
    assert [tuple(r) for r in spark.table("silver.t").collect()] == [("c", 4)]
    with pytest.raises(SchemaMismatch, match="exists with another schema"):
        merge_changes(spark, spark.createDataFrame([("c", 4)], "k STRING, v BIGINT"),
                      "silver.t", "k STRING, v BIGINT", ["k"])


# ----- parsing, rules and dedupe ---------------------------------------------------------------
def bronze(spark, lines, batch=DAY1, header=HEADER):
    rows = [(value, header, "ehr_patients", f"ehr_patients/{batch}/patients.csv", n + 2, batch,
             dt.datetime(2025, 1, 5), "run", None) for n, value in enumerate(lines)]
    return spark.createDataFrame(rows, BRONZE_SCHEMA_DDL)


GOOD = ('C1,INSERT,2025-01-01T08:00:00,mrn001,Ann,Lee,1980-05-01, f ,"1 Main St, Apt 2",'
        'Boston, ma ,02134,555-0101,123-45-6789,P1')


def test_parse_standardizes_and_respects_quotes_and_header_order(spark):
    reordered = "mrn," + HEADER.replace(",mrn", "")
    line = "mrn001," + GOOD.replace(",mrn001", "")
    for df in (bronze(spark, [GOOD]), bronze(spark, [line], header=reordered)):
        row = parse_patient_changes(df).first()
        assert (row.change_id, row.operation, row.change_ts, row.mrn, row.birth_date, row.sex,
                row.state, row.address_line, row.zip3, row._record_complete) == (
            "C1", "INSERT", dt.datetime(2025, 1, 1, 8), "MRN001", dt.date(1980, 5, 1), "F",
            "MA", "1 Main St, Apt 2", "021", True)


def test_rules_quarantine_each_defect_with_its_rule_name(spark):
    lines = {
        "ok": GOOD,
        "delete": "C2,delete,2025-01-01T09:00:00,MRN001,,,,,,,,,,,",
        "truncated": "C3,UPDATE,2025-01-01T09:00:00,MRN001,Ann,Lee",
        "null_mrn": GOOD.replace("C1", "C4").replace("mrn001", ""),
        "bad_ts": GOOD.replace("C1", "C5").replace("2025-01-01T08:00:00", "2025-13-45T08:00:00"),
        "future": GOOD.replace("C1", "C6").replace("2025-01-01T08:00:00", "2025-01-03T08:00:00"),
        "old": GOOD.replace("C1", "C7").replace("1980-05-01", "1890-05-01"),
        "bad_date": GOOD.replace("C1", "C8").replace("1980-05-01", "1980-02-30"),
        "bad_sex": GOOD.replace("C1", "C9").replace(" f ", "X"),
        "bad_quote": 'C10,INSERT,2025-01-01T08:00:00,MRN001,"Ann,Lee',
    }
    parsed = parse_patient_changes(bronze(spark, list(lines.values())))
    result = apply_expectations(parsed, patient_change_expectations())
    assert sorted(r.change_id for r in result.valid.collect()) == ["C1", "C2"]
    failed = {r._line_number - 2: sorted(r._failed_rules) for r in result.quarantined.collect()}
    names = list(lines)
    assert {names[i]: rules for i, rules in failed.items()} == {
        "truncated": ["birth_date_not_null", "complete_record", "payer_id_not_null", "sex_accepted"],
        "null_mrn": ["mrn_not_null"],
        "bad_ts": ["change_ts_parses"],
        "future": ["change_ts_not_future"],
        "old": ["age_at_most_120"],
        "bad_date": ["birth_date_parses"],
        "bad_sex": ["sex_accepted"],
        "bad_quote": ["birth_date_not_null", "complete_record", "last_name_not_null",
                      "payer_id_not_null", "sex_accepted"],
    }


def test_dedupe_keeps_first_arrival_and_logs_the_later_copy(spark):
    df = bronze(spark, [GOOD, GOOD]).unionByName(bronze(spark, [GOOD], batch=DAY2))
    dedup = deduplicate_changes(parse_patient_changes(df))
    assert [(r._batch_date, r._line_number) for r in dedup.kept.collect()] == [(DAY1, 2)]
    assert_df_equality(dedup.removed.select(F.col("change_id").alias("key"), "_batch_date",
                                            "_line_number",
                                            F.col("_kept_line_number").alias("kept_line_number")),
                       spark.createDataFrame([("C1", DAY1, 3, 2), ("C1", DAY2, 2, 2)],
                                             "key STRING, _batch_date DATE, _line_number INT, "
                                             "kept_line_number INT"))


# ----- the driver ------------------------------------------------------------------------------
def test_build_patients_end_to_end_balances_and_replays_as_noop(spark, data_dir):
    from utils import write_table
    from utils.cdc import build_patients, patients_reconciliation

    day1 = [GOOD, GOOD.replace("C1", "C2").replace("mrn001", "MRN002"),
            "C3,UPDATE,2025-01-01T09:00:00,MRN001,Ann,Lee",          # truncated
            GOOD]                                                     # re-delivered C1
    day2 = [GOOD.replace("C1", "C4").replace("Boston", "Salem").replace("08:00", "12:00"),
            "C5,DELETE,2025-01-02T10:00:00,MRN002,,,,,,,,,,,",
            # late: happened on day 1 between C1 and C4, delivered on day 2
            GOOD.replace("C1", "C6").replace("Boston", "Lynn").replace("08:00", "10:00")]
    write_table(bronze(spark, day1).unionByName(bronze(spark, day2, batch=DAY2)),
                "bronze", "patients")

    first = build_patients(spark, run_id="r1")
    assert (first.bronze_rows, first.valid_changes, first.quarantined, first.duplicates) == (7, 5, 1, 1)
    assert first.balanced
    recon = [tuple(r) for r in patients_reconciliation(spark).collect()]
    assert recon == [("patients", DAY1, 4, 2, 1, 1, True), ("patients", DAY2, 3, 3, 0, 0, True)]
    rows = [(r.city, r.valid_from.hour, r.valid_to and r.valid_to.hour, r.is_current, r.is_deleted)
            for r in spark.table("silver.patients").orderBy("patient_key", "valid_from").collect()]
    keys = [r.patient_key for r in spark.table("silver.patients").orderBy("patient_key").collect()]
    assert len(set(keys)) == 2 and all(len(k) == 64 for k in keys)
    assert sorted(rows) == sorted([("Boston", 8, 10, False, False), ("Lynn", 10, 12, False, False),
                                   ("Salem", 12, None, True, False), ("Boston", 8, 10, False, True)])
    assert [(r.city, r.zip3) for r in spark.table("silver.patients_current").collect()] == [
        ("Salem", "021")]
    restricted = spark.table("silver.patients_restricted").collect()
    assert [(r.mrn, r.first_name, r.address_line) for r in restricted] == [
        ("MRN001", "Ann", "1 Main St, Apt 2")]
    phi = {"mrn", "first_name", "last_name", "ssn", "phone", "address_line", "zip"}
    for table in ("patients", "patients_current", "patient_changes"):
        assert not phi & set(spark.table(f"silver.{table}").columns), table

    replay = build_patients(spark, run_id="r2")
    assert replay.scd2.is_noop
    assert [name for name, m in replay.merges.items() if m.committed] == ["dq_metrics"]
    assert spark.table("silver.dq_metrics").select("run_id").distinct().count() == 2

    # a reset drops the patient tables and only the patients' rows of the shared logs
    from utils.cdc import reset_patient_tables

    spark.sql("INSERT INTO silver.dedup_log VALUES ('claims', 'X', 'exact', 'f.csv', 3, "
              "DATE'2025-01-01', 'f.csv', 2, DATE'2025-01-01', 'line')")
    assert reset_patient_tables(spark) == [
        "silver.patient_changes", "silver.patients", "silver.patients_current",
        "silver.patients_restricted", "silver.quarantine_patients"]
    assert [tuple(r) for r in spark.table("silver.dedup_log").select("entity", "key").collect()] == [
        ("claims", "X")]
    assert spark.table("silver.dq_metrics").count() == 0
    again = build_patients(spark, run_id="r3")
    assert (again.scd2.changes_added, again.merges["patients"].inserted) == (5, 4)


# ----- a generated dataset: every planted patient defect is caught as the contract says ----------
def test_generated_patient_defects_are_caught_as_the_contract_says(spark, data_dir):
    from collections import Counter

    from data_generator import SOURCE_DEFECTS, generate, load_manifest
    from utils import get_config
    from utils.bronze import ingest_landing
    from utils.cdc import build_patients, patients_reconciliation
    from utils.contracts import defect_types

    landing = get_config().landing_dir
    # at this size every patient defect type is planted (seeds 1-5 checked; asserted below)
    generate(landing, patients=600, days=30, seed=3, defect_rate=0.05,
             start_date=dt.date(2025, 1, 1))
    ingest_landing(spark, sources=["patients"])
    report = build_patients(spark, run_id="gen")
    assert report.balanced
    assert all(r.balanced for r in patients_reconciliation(spark).collect())

    planted = [d for d in load_manifest(landing)["defects"] if d["source"] == "ehr_patients"]
    assert set(Counter(d["defect_type"] for d in planted)) == set(SOURCE_DEFECTS["ehr_patients"])
    quarantined = {(r._source_file, r._line_number)
                   for r in spark.table("silver.quarantine_patients").collect()}
    duplicates = {(r._source_file, r._line_number)
                  for r in spark.table("silver.dedup_log").where("entity = 'patients'").collect()}
    changes = {r.change_id: r for r in spark.table("silver.patient_changes").collect()}
    missed = []
    for d in planted:
        where = (d["file"], d["line"])
        caught_by = defect_types()[d["defect_type"]]["caught_by"]
        if caught_by == "quarantine":
            ok = where in quarantined
        elif caught_by == "duplicate":
            ok = where in duplicates
        elif caught_by == "standardized":
            row = changes.get(d["record_key"])
            ok = row is not None and row.sex in ("F", "M", "U") and row.state == row.state.strip().upper()
        else:  # accepted
            ok = d["record_key"] in changes
        if not ok:
            missed.append(d)
    assert missed == []
