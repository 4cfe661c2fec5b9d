"""The benchmark harness: the medallion workload's results on a hand-checkable landing zone
(Sail only, a few seconds), the process-tree memory sampler, the one-line error when JVM
PySpark cannot start, and the report's wording (both engines write Delta). No timing is
asserted."""

from __future__ import annotations

import sys
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from benchmarks import run_sampled
from benchmarks.medallion import count_data_lines, landing_files, run_workload, split_csv_line

ENC_HEADER = ("encounter_id,mrn,facility_id,provider_npi,encounter_class,admit_ts,discharge_ts,"
              "admission_type,admission_source,discharge_disposition,payer_id,primary_dx,"
              "secondary_dx,total_charge")
# A schema-drift batch: an extra column in the middle.
ENC_DRIFT_HEADER = ENC_HEADER.replace("encounter_class,", "encounter_class,visit_reason,")
PAT_HEADER = ("change_id,operation,change_ts,mrn,first_name,last_name,birth_date,sex,"
              "address_line,city,state,zip,phone,ssn,payer_id")
CLAIM_HEADER = ("claim_id,line_number,encounter_id,mrn,payer_id,service_date,cpt_code,units,"
                "billed_amount,allowed_amount,paid_amount,claim_status,denial_reason,"
                "adjudication_date")

E1 = ("E1,MRN1,FAC1,111,inpatient,2025-01-02T08:00:00,2025-01-05T10:00:00,emergency,"
      "emergency_room,home,PAY1,I50.9,,1000.00")
LANDING = {
    "ehr_patients/2025-01-01/patients_20250101.csv": [
        PAT_HEADER,
        'P1,INSERT,2025-01-01 08:00:00,MRN1,Ann,Lee,1950-02-03,F,"1 Main St, Apt 2",X,IL,1,5,0,PAY1',
        "P2,INSERT,2025-01-01 08:00:00,MRN2,Bob,Ray,1960-04-05,M,2 Oak St,X,IL,1,5,0,PAY2",
        "P3,INSERT,2025-01-01 08:00:00,MRN3,Cy,Fox,1970-06-07,M,3 Elm St,X,IL,1,5,0,PAY1",
    ],
    "ehr_patients/2025-01-02/patients_20250102.csv": [
        PAT_HEADER,
        "P4,DELETE,2025-01-02 09:00:00,MRN3,,,,,,,,,,,",
        "P5,UPDATE,2025-01-02 09:00:00,MRN1,Ann,Lee,1950-02-03,F,4 New St,X,IL,1,5,0,PAY2",
    ],
    "ehr_encounters/2025-01-02/encounters_20250102.csv": [
        ENC_HEADER,
        E1,
        E1,  # exact duplicate
        E1.replace(",inpatient,", ", INPATIENT ,"),  # near duplicate
        "E3,MRN2,FAC2,111,inpatient,2025-01-03T08:00:00,2025-01-04T09:00:00,urgent,"
        "emergency_room,home,PAY2,I10,,500.00",
        "E7,MRN1,FAC1",  # truncated line
        "E8,MRN1,FAC1,111,emergency,2025-01-02T09:00:00,2025-01-02T11:00:00,emergency,"
        "emergency_room,home,PAY1,I10,,12O.50",  # unparseable number
        "E9,MRN3,FAC1,111,emergency,2025-01-02T09:00:00,2025-01-02T11:00:00,emergency,"
        "emergency_room,home,PAY1,I10,,80.00",  # patient deleted later
        "",
    ],
    "ehr_encounters/2025-01-10/encounters_20250110.csv": [
        ENC_HEADER,
        # planned (elective) readmission 6 days after E3: not counted; a transfer is no index
        "E4,MRN2,FAC2,111,inpatient,2025-01-10T08:00:00,2025-01-12T09:00:00,elective,"
        "physician_referral,transfer,PAY2,I10,,700.00",
        "E6,MRN2,FAC2,111,outpatient,2025-01-15T08:00:00,2025-01-15T09:00:00,,,home,PAY2,"
        "Z00.0,,50.00",
    ],
    "ehr_encounters/2025-01-20/encounters_20250120.csv": [
        ENC_DRIFT_HEADER,
        # unplanned inpatient admission 15 days after E1's discharge: E1 is readmitted
        "E2,MRN1,FAC1,111,inpatient,chest pain,2025-01-20T08:00:00,2025-01-22T09:00:00,"
        "emergency,emergency_room,home,PAY1,I21.4,I10|E78.5,2000.00",
    ],
    "payer_claims/2025-01-06/claims_20250106.csv": [
        CLAIM_HEADER,
        "C1,1,E1,MRN1,PAY1,2025-01-02,99223,1,300.00,150.00,100.00,paid,,2025-01-06",
        "C1,1,E1,MRN1,PAY1,2025-01-02,99223,1,300.00,150.00,100.00,paid,,2025-01-06",
        "C1,2,E1,MRN1,PAY1,2025-01-02,99233,1,200.00,0.00,0.00,denied,CO-50,2025-01-06",
        "C2,1,E3,MRN2,PAY2,2025-01-03,99223,1,90.00,60.00,50.00,paid,,2025-01-06",
    ],
}


@pytest.fixture
def landing(tmp_path) -> Path:
    root = tmp_path / "landing"
    for name, lines in LANDING.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_landing_files_group_by_header(landing):
    groups = landing_files(landing, "ehr_encounters")
    assert sorted(len(files) for files in groups.values()) == [1, 2]
    assert set(groups) == {ENC_HEADER, ENC_DRIFT_HEADER}
    assert count_data_lines(landing) == 10


def test_split_csv_line_handles_quotes(spark):
    from pyspark.sql import functions as F

    lines = ['1,"x, y",2', '"1","a""b",""', "3,short", ",,", ""]
    frame = spark.createDataFrame([(line, i) for i, line in enumerate(lines)], "line string, i int")
    got = [row.f for row in frame.select("i", split_csv_line(F.col("line")).alias("f"))
           .orderBy("i").collect()]
    assert got == [["1", "x, y", "2"], ["1", 'a"b', ""], ["3", "short"], ["", "", ""], [""]]


def test_workload_on_hand_checked_landing(spark, landing, tmp_path):
    out = tmp_path / "out"
    result = run_workload(spark, landing, out, table_format="delta")

    read = lambda name: spark.read.format("delta").load(str(out / name))  # noqa: E731
    readmission = sorted(
        (r.month, r.facility_id, r.index_discharges, r.readmissions_30d, r.rate)
        for r in read("gold_readmission_30d").collect()
    )
    # FAC1: E1 (readmitted by E2 after 15 days) and E2; FAC2: E3 (next stay is elective),
    # E4 is a transfer so no index stay.
    assert readmission == [
        (date(2025, 1, 1), "FAC1", 2, 1, 0.5),
        (date(2025, 1, 1), "FAC2", 1, 0, 0.0),
    ]
    volume = sorted(
        (r.facility_id, r.encounters, r.patients, r.total_charge, r.paid_amount, r.denied_lines)
        for r in read("gold_facility_month").collect()
    )
    # E1 deduplicated (3 lines), E7/E8 quarantined, E9's patient deleted; C1 line 1 once.
    assert volume == [
        ("FAC1", 2, 1, Decimal("3000.00"), Decimal("100.00"), 1),
        ("FAC2", 3, 1, Decimal("1250.00"), Decimal("50.00"), 0),
    ]
    assert sorted(r.line[:2] for r in read("silver_quarantine").collect()) == ["E7", "E8"]
    patients = {r.mrn: r.patient_payer_id for r in read("silver_patients_current").collect()}
    assert patients == {"MRN1": "PAY2", "MRN2": "PAY2"}
    assert result["checksums"] == {
        "gold_readmission_rows": 2, "index_discharges": 3, "readmissions_30d": 1,
        "gold_facility_month_rows": 2, "silver_encounters": 5, "total_charge": "4250.00",
        "paid_amount": "150.00", "quarantined_encounter_lines": 2,
    }
    assert set(result["phases_s"]) == {"ingest_bronze", "silver_parse_dedupe_join",
                                       "gold_readmission_aggregate", "checksums"}


CHILD = """
import subprocess, sys, time
block = bytearray(120 * 2**20)           # ~120 MB resident in the child
grandchild = subprocess.Popen([sys.executable, "-c",
    "import time; b = bytearray(60 * 2**20); time.sleep(1.0)"])
grandchild.wait()
print("BENCH_RESULT {\\"answer\\": 42}")
"""


def test_run_sampled_measures_the_whole_tree(tmp_path):
    run = run_sampled([sys.executable, "-c", CHILD], log_path=tmp_path / "child.log")
    assert run.ok and run.returncode == 0
    assert run.result == {"answer": 42}
    assert run.peak_processes >= 2
    # child (~120 MB) and grandchild (~60 MB) resident at the same time
    assert run.peak_rss_bytes > 170 * 2**20
    assert run.samples > 1


def test_run_sampled_kills_a_child_past_its_timeout(tmp_path):
    run = run_sampled([sys.executable, "-c", "import time; time.sleep(60)"], timeout=1,
                      log_path=tmp_path / "sleep.log")
    assert run.timed_out and not run.ok
    assert run.result is None


def test_notebook_seconds_reads_the_lines_make_run_prints(tmp_path):
    from benchmarks.__main__ import notebook_seconds

    log = tmp_path / "run_course.log"
    log.write_text("running 05_gold_kpis.ipynb\n05_gold_kpis.ipynb ... 2.5 s\n"
                   "running 06_visualize_kpis.ipynb\nrunning 07_declarative_pipeline.ipynb\n"
                   "07_declarative_pipeline.ipynb ... FAILED\nValueError: 3 s\n"
                   "06_visualize_kpis.ipynb ... 10.4 s\n")
    assert notebook_seconds(log) == {"05_gold_kpis.ipynb": 2.5,
                                     "07_declarative_pipeline.ipynb": "FAILED",
                                     "06_visualize_kpis.ipynb": 10.4}


def test_generator_runs_are_summarized_by_their_median():
    from benchmarks.__main__ import median_generator_record, render_generator

    def record(rate, speedup):
        return {"name": "generator", "ok": True, "wall_s": 9.0, "peak_rss_mb": 1700.0,
                "result": {"vectorized_encounter_level_rows_per_s": rate, "speedup": speedup,
                           "target_rows_per_s": 1_000_000, "target_speedup": 50.0,
                           "target_rows_per_s_met": rate >= 1_000_000,
                           "target_speedup_met": speedup >= 50}}

    failed = {"name": "generator", "ok": False, "returncode": 1, "output_tail": "boom"}
    summary = median_generator_record([record(1_100_000, 58.0), failed,
                                       record(900_000, 47.0), record(1_020_000, 49.0)])
    result = summary["result"]
    assert result["vectorized_encounter_level_rows_per_s"] == 1_020_000    # the median run
    assert result["vectorized_encounter_level_rows_per_s_all"] == [1_100_000, 900_000,
                                                                    1_020_000]
    assert result["speedup_median"] == 49.0 and result["runs"] == 3
    assert result["target_rows_per_s_met"] and not result["target_speedup_met"]
    assert summary["failed_runs"] == 1
    assert median_generator_record([failed]) is failed
    assert ("| vectorized_encounter_level_rows_per_s_all | 1,100,000, 900,000, 1,020,000 |"
            in render_generator(summary))


def test_jvm_without_java_fails_with_one_actionable_line(tmp_path):
    """No Java: the run exits 2 with one BENCH_ERROR line saying what to do (no JVM starts)."""
    import os

    from benchmarks.__main__ import error_line

    env = {key: value for key, value in os.environ.items() if key != "JAVA_HOME"}
    env["PATH"] = str(Path(sys.executable).parent)          # the venv's bin: no java there
    run = run_sampled([sys.executable, "-m", "benchmarks.medallion", "--engine", "jvm",
                       "--warm-up"], env=env, log_path=tmp_path / "no-java.log")
    assert run.returncode == 2 and run.result is None
    reason = error_line(run.output_tail)
    assert reason is not None and "\n" not in reason
    assert "Java 17" in reason and "--skip-jvm" in reason


def _report(rows, ratios, warm_up):
    return {
        "started_at": "2026-12-02 13:00 UTC", "command": "python -m benchmarks", "elapsed_s": 1.0,
        "machine": {"cpu_model": "cpu", "logical_cores": 2, "usable_cores": 2, "ram_gb": 1.0,
                    "os": "Linux"},
        "versions": {"pyspark": "4.2.0", "delta-spark": "4.4.0"},
        "load_average_start": [1.0, 1.0, 1.0], "load_average_end": [1.0, 1.0, 1.0],
        "jvm_driver_memory": "Spark default (1g)", "jvm_warm_up": warm_up,
        "medallion": {"rows": rows, "ratios": ratios},
    }


def test_report_says_both_engines_write_delta():
    from benchmarks.__main__ import render_markdown, summarize

    checksums = {"silver_encounters": 5}
    runs = [{"engine": engine, "size": 100, "encounter_rows": 100, "ok": True, "wall_s": wall,
             "cpu_s": wall, "peak_rss_mb": 500.0, "timed_out": False, "returncode": 0,
             "result": {"checksums": checksums, "phases_s": {}, "session_start_s": 1.0}}
            for engine, wall in (("sail", 2.0), ("jvm", 10.0))]
    summary = summarize(runs)
    assert summary["ratios"][100] == {"same_results": True, "jvm_over_sail": 5.0,
                                      "jvm_over_sail_cpu": 5.0}
    text = render_markdown(_report(summary["rows"], summary["ratios"],
                                   {"ok": True, "wall_s": 21.5}))
    assert "| medallion | JVM PySpark local[2], Delta | 100 |" in text
    assert "| medallion | Sail, Delta | 100 |" in text
    assert "parquet" not in text
    assert "untimed JVM start came first (21.5 s)" in text


def test_report_gives_the_reason_jvm_was_not_measured():
    from benchmarks.__main__ import render_markdown

    reason = "JVM PySpark needs Java 17 on PATH or JAVA_HOME ..., or run with --skip-jvm."
    text = render_markdown(_report([], {}, {"ok": False, "wall_s": 0.5, "error": reason}))
    assert f"JVM PySpark was not measured: {reason}" in text
