"""Gold KPIs on tiny hand-built silver frames; every expected row is worked out by hand.

Frames are built from strings and cast to the contract types (silver: contracts.yml `silver:`,
gold: `gold:`), so timestamps mean the same thing (UTC) in the input and the expectation.
"""

from __future__ import annotations

import datetime as dt

import pytest

from tests.dataframes import assert_df_equality, rows_of
from utils import gold
from utils.contracts import load_contracts, silver_columns

AS_OF = dt.date(2025, 3, 31)


# ----- builders --------------------------------------------------------------------------------
def typed(spark, columns: dict[str, str], rows: list[tuple]):
    """A DataFrame of ``rows`` (strings, None, or lists for arrays) cast to ``columns`` types."""
    from pyspark.sql import functions as F

    ddl = ", ".join(f"{c} {'array<string>' if t.startswith('array') else 'string'}"
                    for c, t in columns.items())
    df = spark.createDataFrame(rows, ddl)
    return df.select(*[F.col(c).cast(t).alias(c) for c, t in columns.items()])


def silver(spark, table: str, rows: list[dict]):
    """A silver frame with the contract's columns; columns a row leaves out are NULL."""
    columns = {c: spec["type"] for c, spec in silver_columns(table).items()}
    unknown = {k for row in rows for k in row} - set(columns)
    assert not unknown, f"not in silver.{table}: {unknown}"
    return typed(spark, columns, [tuple(row.get(c) for c in columns) for row in rows])


def expected(spark, table: str, rows: list[tuple]):
    """An expected gold frame: rows in contract column order, cast to the contract types."""
    columns = {c: spec["type"] for c, spec in load_contracts()["gold"][table]["columns"].items()}
    return typed(spark, columns, rows)


def enc(encounter_id, patient, facility, cls, admit, discharge=None, disposition="home",
        admission_type="emergency", payer=None, charge=None):
    return {"encounter_id": encounter_id, "patient_key": patient, "facility_id": facility,
            "encounter_class": cls, "admit_ts": admit, "discharge_ts": discharge,
            "discharge_disposition": disposition, "admission_type": admission_type,
            "payer_id": payer, "total_charge": charge}


def facilities(spark):
    return silver(spark, "facilities", [
        {"facility_id": "F1", "facility_name": "General", "staffed_beds": "2"},
        {"facility_id": "F2", "facility_name": "North", "staffed_beds": "10"},
        {"facility_id": "F3", "facility_name": "Clinic", "staffed_beds": "0"},
    ])


def payers(spark):
    return silver(spark, "payers", [
        {"payer_id": "PA", "payer_name": "Acme Health", "payer_type": "commercial"},
        {"payer_id": "PM", "payer_name": "Medicare", "payer_type": "medicare"},
    ])


# Five patients, twelve encounters (inpatient unless said otherwise; F1 General, F2 North):
#   A1 F1 01-01 -> 01-05 home       index (Jan F1); next A2 admits 30 days later, emergency:
#                                   READMITTED (day 30 counts)
#   A2 F2 02-04 -> 02-06 home       index (Feb F2); next A3 admits 02-06 -> 03-09 = 31 days: not
#   A3 F1 03-09 -> 03-10 expired    not an index (died)
#   B1 F1 01-10 -> 01-12 transfer   not an index (transferred)
#   B2 F2 01-12 -> 01-20 home       index (Jan F2); next inpatient is B3, elective: not (B4 is not looked at)
#   BE F1 01-22 emergency visit     not inpatient: ignored by readmission and LOS
#   B3 F1 01-25 -> 01-27 (elective) index (Jan F1); next B4 01-27 -> 02-10 = 14 days, emergency: READMITTED
#   B4 F1 02-10 -> still admitted   not an index (no discharge)
#   C1 F1 01-28 -> 02-01 home       index (Feb F1); no next admission: not
#   D1 F1 01-02 -> 01-03 home       index (Jan F1); D2 admits the same day (0 days), urgent: READMITTED
#   D2 F1 01-03 08:00 -> 20:00 ama  index (Jan F1); no next: not
#   E1 F2 02-10 -> 02-15 home       index (Feb F2); no next: not
def stays(spark):
    return silver(spark, "encounters", [
        enc("A1", "A", "F1", "inpatient", "2025-01-01 08:00:00", "2025-01-05 10:00:00"),
        enc("A2", "A", "F2", "inpatient", "2025-02-04 09:00:00", "2025-02-06 12:00:00"),
        enc("A3", "A", "F1", "inpatient", "2025-03-09 09:00:00", "2025-03-10 12:00:00", "expired"),
        enc("B1", "B", "F1", "inpatient", "2025-01-10 09:00:00", "2025-01-12 08:00:00", "transfer"),
        enc("B2", "B", "F2", "inpatient", "2025-01-12 10:00:00", "2025-01-20 12:00:00",
            admission_type="urgent"),
        enc("BE", "B", "F1", "emergency", "2025-01-22 22:00:00", "2025-01-23 02:00:00"),
        enc("B3", "B", "F1", "inpatient", "2025-01-25 07:00:00", "2025-01-27 12:00:00",
            admission_type="elective"),
        enc("B4", "B", "F1", "inpatient", "2025-02-10 16:00:00", None, None),
        enc("C1", "C", "F1", "inpatient", "2025-01-28 09:00:00", "2025-02-01 09:00:00"),
        enc("D1", "D", "F1", "inpatient", "2025-01-02 09:00:00", "2025-01-03 07:00:00"),
        enc("D2", "D", "F1", "inpatient", "2025-01-03 08:00:00", "2025-01-03 20:00:00", "ama",
            admission_type="urgent"),
        enc("E1", "E", "F2", "inpatient", "2025-02-10 09:00:00", "2025-02-15 09:00:00"),
    ])


# ----- readmissions ----------------------------------------------------------------------------
def test_readmission_flags_per_stay(spark):
    flags = gold.readmission_flags(stays(spark)).select(
        "encounter_id", "days_to_next_admission", "is_readmitted_30d")
    assert rows_of(flags) == [
        ("A1", 30, True), ("A2", 31, False), ("B2", 5, False), ("B3", 14, True),
        ("C1", None, False), ("D1", 0, True), ("D2", None, False), ("E1", None, False)]


def test_readmission_30d(spark):
    # Jan General: A1 yes, B3 yes, D1 yes, D2 no -> 3/4.  Jan North: B2 (elective next) -> 0/1.
    # Feb General: C1 -> 0/1.  Feb North: A2 (day 31), E1 -> 0/2.
    got = gold.readmission_30d(stays(spark), facilities(spark))
    assert_df_equality(got, expected(spark, "readmission_30d", [
        ("2025-01-01", "General", "4", "3", "0.75"),
        ("2025-01-01", "North", "1", "0", "0.0"),
        ("2025-02-01", "General", "1", "0", "0.0"),
        ("2025-02-01", "North", "2", "0", "0.0"),
    ]))


# ----- length of stay --------------------------------------------------------------------------
def test_length_of_stay(spark):
    # Discharged inpatient stays by discharge month (B4 still admitted, BE not inpatient):
    #   Jan General: A1 4, B1 2, B3 2, D1 1, D2 0 -> min 1  => 5 stays, 10 days, mean 2.0, median 2.0
    #   Jan North:   B2 8                                     => 1, 8, 8.0, 8.0
    #   Feb General: C1 4 (01-28 -> 02-01)                    => 1, 4, 4.0, 4.0
    #   Feb North:   A2 2, E1 5                               => 2, 7, 3.5, median of two = 3.5
    #   Mar General: A3 1 (expired stays still have a LOS)    => 1, 1, 1.0, 1.0
    got = gold.length_of_stay(stays(spark), facilities(spark))
    assert_df_equality(got, expected(spark, "length_of_stay", [
        ("2025-01-01", "General", "5", "10", "2.0", "2.0"),
        ("2025-01-01", "North", "1", "8", "8.0", "8.0"),
        ("2025-02-01", "General", "1", "4", "4.0", "4.0"),
        ("2025-02-01", "North", "2", "7", "3.5", "3.5"),
        ("2025-03-01", "General", "1", "1", "1.0", "1.0"),
    ]))


def test_unknown_facility_keeps_its_id(spark):
    encounters = silver(spark, "encounters", [
        enc("X1", "X", "F9", "inpatient", "2025-01-01 08:00:00", "2025-01-02 08:00:00")])
    got = gold.length_of_stay(encounters, facilities(spark)).select("facility")
    assert rows_of(got) == [("F9",)]


# ----- bed occupancy ---------------------------------------------------------------------------
def test_bed_occupancy_midnight_census(spark):
    # Calendar: 03-01 .. 03-03 (first admit date .. last admit/discharge date).
    #   S1 General 03-01 10:00 -> 03-03 09:00: in bed at midnights ending 03-01 and 03-02
    #   S2 General 03-02 12:00 -> still admitted: midnights ending 03-02 and 03-03
    #   S3 General 03-03 00:00 -> 03-03 18:00: admitted AT midnight, not before: never counted
    #   ED General 03-01 22:00 -> 03-02 03:00: emergency, not a bed: never counted
    # General (2 beds): 1, 2, 1 -> 0.5, 1.0, 0.5.  North (10 beds): 0 every day.  Clinic: no beds.
    encounters = silver(spark, "encounters", [
        enc("S1", "P", "F1", "inpatient", "2025-03-01 10:00:00", "2025-03-03 09:00:00"),
        enc("S2", "Q", "F1", "inpatient", "2025-03-02 12:00:00", None, None),
        enc("S3", "R", "F1", "inpatient", "2025-03-03 00:00:00", "2025-03-03 18:00:00"),
        enc("ED", "T", "F1", "emergency", "2025-03-01 22:00:00", "2025-03-02 03:00:00"),
    ])
    got = gold.bed_occupancy_daily(encounters, facilities(spark))
    assert_df_equality(got, expected(spark, "bed_occupancy_daily", [
        ("2025-03-01", "General", "2", "1", "0.5"),
        ("2025-03-02", "General", "2", "2", "1.0"),
        ("2025-03-03", "General", "2", "1", "0.5"),
        ("2025-03-01", "North", "10", "0", "0.0"),
        ("2025-03-02", "North", "10", "0", "0.0"),
        ("2025-03-03", "North", "10", "0", "0.0"),
    ]))


# ----- ED utilization --------------------------------------------------------------------------
def patients_history(spark):
    """SCD2 history: month-end instants are 02-01, 03-01 and 04-01 00:00.

    P1 since 2024: Jan Feb Mar.  P2 v1 01-15..02-10, v2 since 02-10: Jan Feb Mar.
    P3 02-20..03-05 closed by a DELETE: Feb only.  P4 03-31 23:00: Mar.
    P5 04-01 00:00 (exactly at the end of March): none of the three months.
    """
    def version(key, start, end=None, current="true", deleted="false"):
        return {"patient_key": key, "valid_from": start, "valid_to": end,
                "is_current": current, "is_deleted": deleted, "sex": "F",
                "birth_date": "1980-01-01"}
    return silver(spark, "patients", [
        version("P1", "2024-06-01 00:00:00"),
        version("P2", "2025-01-15 00:00:00", "2025-02-10 00:00:00", current="false"),
        version("P2", "2025-02-10 00:00:00"),
        version("P3", "2025-02-20 00:00:00", "2025-03-05 00:00:00", "false", "true"),
        version("P4", "2025-03-31 23:00:00"),
        version("P5", "2025-04-01 00:00:00"),
    ])


def test_ed_utilization_per_1000_active(spark):
    # ED visits: Jan 1, Feb 0 (the inpatient stay only puts Feb in the calendar), Mar 3.
    # Active: Jan 2 (P1 P2), Feb 3 (P1 P2 P3), Mar 3 (P1 P2 P4).
    # Per 1,000: 1/2 -> 500.0, 0/3 -> 0.0, 3/3 -> 1000.0
    # Calendar 01-31 .. 03-31: January is covered by 1 day, February 28, March 31.
    encounters = silver(spark, "encounters", [
        enc("E1", "P1", "F1", "emergency", "2025-01-31 23:30:00", "2025-02-01 01:00:00"),
        enc("I1", "P1", "F1", "inpatient", "2025-02-10 09:00:00", "2025-02-12 09:00:00"),
        enc("E2", "P2", "F1", "emergency", "2025-03-01 00:00:00", "2025-03-01 04:00:00"),
        enc("E3", "P4", "F2", "emergency", "2025-03-15 10:00:00", "2025-03-15 12:00:00"),
        enc("E4", "P4", "F2", "emergency", "2025-03-31 10:00:00", "2025-03-31 12:00:00"),
        enc("O1", "P1", "F3", "outpatient", "2025-03-20 10:00:00", "2025-03-20 11:00:00"),
    ])
    got = gold.ed_utilization(encounters, patients_history(spark))
    assert_df_equality(got, expected(spark, "ed_utilization", [
        ("2025-01-01", "1", "1", "2", "500.0"),
        ("2025-02-01", "28", "0", "3", "0.0"),
        ("2025-03-01", "31", "3", "3", "1000.0"),
    ]))


# ----- payer mix and denials -------------------------------------------------------------------
def test_payer_mix(spark):
    # Jan: Acme 2 (100 + 300), Medicare 1 (100), no payer 1 (no charge) -> 4 encounters, 500.00
    #      shares 2/4, 1/4, 1/4; charge shares 400/500, 100/500, 0/500
    # Feb: Medicare 1 (50.00) and an unknown payer id PX (25.00) -> 1/2 each; 50/75, 25/75
    encounters = silver(spark, "encounters", [
        enc("J1", "A", "F1", "outpatient", "2025-01-03 09:00:00", payer="PA", charge="100.00"),
        enc("J2", "B", "F1", "outpatient", "2025-01-04 09:00:00", payer="PA", charge="300.00"),
        enc("J3", "C", "F1", "outpatient", "2025-01-05 09:00:00", payer="PM", charge="100.00"),
        enc("J4", "D", "F1", "outpatient", "2025-01-06 09:00:00"),
        enc("F1", "A", "F1", "outpatient", "2025-02-03 09:00:00", payer="PM", charge="50.00"),
        enc("F2", "B", "F1", "outpatient", "2025-02-04 09:00:00", payer="PX", charge="25.00"),
    ])
    got = gold.payer_mix(encounters, payers(spark))
    assert_df_equality(got, expected(spark, "payer_mix", [
        ("2025-01-01", "Acme Health", "commercial", "2", "0.5", "400.00", "0.8"),
        ("2025-01-01", "Medicare", "medicare", "1", "0.25", "100.00", "0.2"),
        ("2025-01-01", "Unknown", "unknown", "1", "0.25", "0.00", "0.0"),
        ("2025-02-01", "Medicare", "medicare", "1", "0.5", "50.00", "0.6667"),
        ("2025-02-01", "Unknown", "unknown", "1", "0.5", "25.00", "0.3333"),
    ]))


def test_claims_denial_rate(spark):
    # Jan Acme: paid, denied (120.50), pending -> 3 lines, 2 adjudicated, 1 denied -> 0.5
    # Jan Medicare: one pending line -> 0 adjudicated: rate NULL (not 0: nothing decided yet)
    # Feb Acme: two denied lines (10.00 + 5.25) -> 2/2 = 1.0, 15.25 denied billed
    def line(claim, n, payer, day, status, billed):
        return {"claim_id": claim, "line_number": n, "payer_id": payer, "service_date": day,
                "claim_status": status, "billed_amount": billed, "patient_key": "A"}
    claims = silver(spark, "claims", [
        line("C1", "1", "PA", "2025-01-10", "paid", "80.00"),
        line("C1", "2", "PA", "2025-01-10", "denied", "120.50"),
        line("C2", "1", "PA", "2025-01-31", "pending", "40.00"),
        line("C3", "1", "PM", "2025-01-15", "pending", "99.00"),
        line("C4", "1", "PA", "2025-02-01", "denied", "10.00"),
        line("C4", "2", "PA", "2025-02-01", "denied", "5.25"),
    ])
    got = gold.claims_denial_rate(claims, payers(spark))
    assert_df_equality(got, expected(spark, "claims_denial_rate", [
        ("2025-01-01", "Acme Health", "3", "2", "1", "0.5", "120.50"),
        ("2025-01-01", "Medicare", "1", "0", "0", None, "0.00"),
        ("2025-02-01", "Acme Health", "2", "2", "2", "1.0", "15.25"),
    ]))


# ----- labs ------------------------------------------------------------------------------------
def test_abnormal_lab_rate(spark):
    # HbA1c Jan: abnormal, normal, no reference range (left out) -> 1/2; Feb: 1/1.
    # Glucose Jan: two normal -> 0/2.
    def lab(obs, loinc, name, ts, abnormal):
        return {"observation_id": obs, "patient_key": "A", "loinc_code": loinc,
                "test_name": name, "collected_ts": ts, "is_abnormal": abnormal}
    labs = silver(spark, "lab_results", [
        lab("o1", "4548-4", "HbA1c", "2025-01-02 08:00:00", "true"),
        lab("o2", "4548-4", "HbA1c", "2025-01-20 08:00:00", "false"),
        lab("o3", "4548-4", "HbA1c", "2025-01-21 08:00:00", None),
        lab("o4", "4548-4", "HbA1c", "2025-02-01 00:00:00", "true"),
        lab("o5", "2345-7", "Glucose", "2025-01-05 08:00:00", "false"),
        lab("o6", "2345-7", "Glucose", "2025-01-06 08:00:00", "false"),
    ])
    got = gold.abnormal_lab_rate(labs)
    assert_df_equality(got, expected(spark, "abnormal_lab_rate", [
        ("2345-7", "Glucose", "2025-01-01", "2", "0", "0.0"),
        ("4548-4", "HbA1c", "2025-01-01", "2", "1", "0.5"),
        ("4548-4", "HbA1c", "2025-02-01", "1", "1", "1.0"),
    ]))


# ----- ages, prevalence, patient summary --------------------------------------------------------
def test_age_band_at_reference_date(spark):
    from pyspark.sql import functions as F

    births = typed(spark, {"b": "date"}, [("1950-04-01",), ("1950-03-31",), ("2007-04-01",),
                                          ("2007-03-31",), ("2000-02-29",), (None,)])
    got = births.select("b", gold.age_in_years("b", AS_OF).alias("age"),
                        gold.age_band("b", AS_OF).alias("band"))
    # At 2025-03-31 (sorted by birth date): birthday today counts (75), birthday tomorrow is
    # one year less (74); a 29 February birthday is reached on 1 March in a common year.
    assert [(r.age, r.band) for r in got.orderBy(F.col("b").asc_nulls_last()).collect()] == [
        (75, "75+"), (74, "65-74"), (25, "18-44"), (18, "18-44"), (17, "0-17"), (None, "unknown")]


def test_as_of_can_be_a_column(spark):
    from pyspark.sql import functions as F

    births = typed(spark, {"b": "date"}, [("1950-04-01",), ("1950-03-31",)])
    with_ref = births.withColumn("ref", F.lit(AS_OF))
    got = with_ref.select(gold.age_band("b", F.col("ref")).alias("band")).orderBy("band")
    assert [r.band for r in got.collect()] == ["65-74", "75+"]


def population(spark):
    """Current patients at AS_OF = 2025-03-31 (K6 deleted; K1 also has an older version):
    K1 F 1950-04-01 -> 74 (65-74)   K2 F 1950-03-31 -> 75 (75+)   K3 M 1990-06-15 -> 34 (18-44)
    K4 M 1985-01-01 -> 40 (18-44)   K5 F 2010-05-05 -> 14 (0-17)
    """
    def person(key, birth, sex, payer=None, current="true", deleted="false"):
        return {"patient_key": key, "birth_date": birth, "sex": sex, "payer_id": payer,
                "is_current": current, "is_deleted": deleted,
                "valid_from": "2024-01-01 00:00:00"}
    return silver(spark, "patients", [
        person("K1", "1950-04-01", "U", "PM", current="false"),
        person("K1", "1950-04-01", "F", "PA"),
        person("K2", "1950-03-31", "F", "PM"),
        person("K3", "1990-06-15", "M"),
        person("K4", "1985-01-01", "M", "PA"),
        person("K5", "2010-05-05", "F", "PX"),
        person("K6", "1960-01-01", "M", "PA", current="false", deleted="true"),
    ])


def diagnoses(spark):
    def dx(encounter, key, seq, code, condition):
        return {"encounter_id": encounter, "patient_key": key, "dx_sequence": seq,
                "icd10_code": code, "chronic_condition": condition}
    return silver(spark, "diagnoses", [
        dx("E1", "K1", "1", "E11.9", "diabetes"),
        dx("E2", "K1", "2", "E11.65", "diabetes"),        # same condition twice: one patient
        dx("E2", "K1", "1", "I10", "hypertension"),
        dx("E9", "K2", "1", "I10", "hypertension"),
        dx("E4", "K3", "1", "E11.9", "diabetes"),
        dx("E8", "K4", "1", "S52.5", None),               # acute: no chronic condition
        dx("E5", "K6", "1", "E11.9", "diabetes"),         # deleted patient: not counted
        dx("E5", "K6", "2", "J44.9", "copd"),             # only K6 has COPD: all zeros
    ])


def test_chronic_condition_prevalence(spark):
    # Groups: (0-17,F)=1 [K5]  (18-44,M)=2 [K3,K4]  (65-74,F)=1 [K1]  (75+,F)=1 [K2]
    # diabetes: K1, K3 -> 1/1 in 65-74 F, 1/2 in 18-44 M.  hypertension: K1, K2.  copd: none.
    got = gold.chronic_condition_prevalence(population(spark), diagnoses(spark), AS_OF)
    rows = []
    for condition, hits in (("copd", {}),
                            ("diabetes", {("18-44", "M"): 1, ("65-74", "F"): 1}),
                            ("hypertension", {("65-74", "F"): 1, ("75+", "F"): 1})):
        for band, sex, pop in (("0-17", "F", 1), ("18-44", "M", 2), ("65-74", "F", 1),
                               ("75+", "F", 1)):
            n = hits.get((band, sex), 0)
            rows.append((condition, band, sex, str(pop), str(n), str(round(n / pop, 4))))
    assert rows[5] == ("diabetes", "18-44", "M", "2", "1", "0.5")  # the worked example
    assert_df_equality(got, expected(spark, "chronic_condition_prevalence", rows))


def test_patient_summary(spark):
    # K1: inpatient E1, emergency E2 and urgent_care E3 at the same admit_ts -> the tie goes
    #     to the larger encounter_id (E3); claims 100.00 + 50.50 billed, 80.00 + 0.00 paid.
    # K3: one wellness visit, no claims (0.00).  K6 is deleted: its encounter and claim vanish.
    # K2, K4, K5: no encounters -> zero counts, NULL last encounter, empty condition list.
    encounters = silver(spark, "encounters", [
        enc("E1", "K1", "F1", "inpatient", "2025-01-05 10:00:00", "2025-01-07 10:00:00"),
        enc("E2", "K1", "F1", "emergency", "2025-02-01 10:00:00", "2025-02-01 12:00:00"),
        enc("E3", "K1", "F1", "urgent_care", "2025-02-01 10:00:00", "2025-02-01 11:00:00"),
        enc("E4", "K3", "F3", "wellness", "2025-03-01 09:00:00", "2025-03-01 10:00:00"),
        enc("E5", "K6", "F3", "outpatient", "2025-01-01 09:00:00", "2025-01-01 10:00:00"),
    ])
    claims = silver(spark, "claims", [
        {"claim_id": "C1", "line_number": "1", "patient_key": "K1", "billed_amount": "100.00",
         "paid_amount": "80.00"},
        {"claim_id": "C1", "line_number": "2", "patient_key": "K1", "billed_amount": "50.50",
         "paid_amount": "0.00"},
        {"claim_id": "C9", "line_number": "1", "patient_key": "K6", "billed_amount": "999.00",
         "paid_amount": "999.00"},
    ])
    got = gold.patient_summary(population(spark), encounters, diagnoses(spark), claims,
                               payers(spark), AS_OF)
    zero = ("0",) * 7
    assert_df_equality(got, expected(spark, "patient_summary", [
        ("K1", "65-74", "F", "Acme Health", "1", "1", "0", "0", "0", "1", "3",
         "2025-02-01 10:00:00", "urgent_care", ["diabetes", "hypertension"], "150.50", "80.00"),
        ("K2", "75+", "F", "Medicare", *zero, None, None, ["hypertension"], "0.00", "0.00"),
        ("K3", "18-44", "M", "Unknown", "0", "0", "0", "0", "1", "0", "1",
         "2025-03-01 09:00:00", "wellness", ["diabetes"], "0.00", "0.00"),
        ("K4", "18-44", "M", "Acme Health", *zero, None, None, [], "0.00", "0.00"),
        ("K5", "0-17", "F", "Unknown", *zero, None, None, [], "0.00", "0.00"),
    ]), order_by=["patient_key"])
    assert "mrn" not in got.columns and "first_name" not in got.columns


# ----- definitions, contract, dictionary -------------------------------------------------------
def test_every_gold_table_has_a_definition_and_a_function():
    tables = gold.gold_tables()
    assert list(tables) == ["readmission_30d", "length_of_stay", "bed_occupancy_daily",
                            "ed_utilization", "payer_mix", "claims_denial_rate",
                            "abnormal_lab_rate", "chronic_condition_prevalence",
                            "patient_summary"]
    for table in tables.values():
        assert table.title and table.grain and len(table.definition) > 80, table.name
        assert set(table.key) <= set(table.columns), table.name
        assert callable(getattr(gold, table.name)), table.name
        assert table.definition in " ".join(table.describe().split())


def test_notebook_05_shows_every_definition_as_written_in_the_contract():
    import nbformat

    path = gold.REPO_ROOT / "notebooks" / "05_gold_kpis.ipynb"
    markdown = " ".join(" ".join(cell.source.split()) for cell in nbformat.read(path, as_version=4).cells
                        if cell.cell_type == "markdown")
    for table in gold.gold_tables().values():
        assert table.definition in markdown, (
            f"notebook 05 has an outdated definition of {table.table_name}: rebuild its markdown "
            "from the contract")


def test_conform_fails_on_a_missing_column_and_names_it(spark):
    conformed = gold.conform(spark.createDataFrame([("2025-01-01",)], "month string"),
                             "ed_utilization")  # lazy: a pipeline defines it before it runs
    with pytest.raises(Exception, match="(?i)days_covered"):
        conformed.collect()


def test_committed_data_dictionary_is_current():
    assert gold.DICTIONARY_PATH.read_text(encoding="utf-8") == gold.render_data_dictionary(), (
        "docs/data_dictionary.md is stale: run `python -m utils.gold --write-dictionary`")


def test_fingerprint_ignores_order_but_not_content(spark):
    cols = {"k": "string", "d": "decimal(16,2)", "a": "array<string>", "t": "timestamp"}
    rows = [("x", "1.50", ["b", "a"], "2025-01-01 00:00:00"), ("y", None, [], None)]
    one = typed(spark, cols, rows)
    same = typed(spark, cols, rows[::-1])
    changed = typed(spark, cols, [rows[0], ("y", "0.01", [], None)])
    assert gold.fingerprint(one) == gold.fingerprint(same)
    assert gold.fingerprint(one) != gold.fingerprint(changed)
    assert len(gold.fingerprint(one)) == 16


# ----- build: contract types and idempotence ---------------------------------------------------
def forget_course_tables(spark) -> None:
    """Drop this session's registrations of course tables (their files stay).

    The session is shared by every test, and registering keeps the first location a name was
    given (CREATE TABLE IF NOT EXISTS): without this, silver.encounters could still point into
    another test's data folder.
    """
    for layer in ("bronze", "silver", "gold"):
        if spark.catalog.databaseExists(layer):
            for table in spark.catalog.listTables(layer):
                spark.sql(f"DROP TABLE IF EXISTS {layer}.{table.name}")


def test_build_gold_is_idempotent_and_typed(spark, data_dir):
    forget_course_tables(spark)
    from utils.tables import write_table

    frames = {
        "encounters": stays(spark), "facilities": facilities(spark), "payers": payers(spark),
        "patients": population(spark), "diagnoses": diagnoses(spark),
        "lab_results": silver(spark, "lab_results", [
            {"observation_id": "o1", "patient_key": "K1", "loinc_code": "4548-4",
             "test_name": "HbA1c", "collected_ts": "2025-01-02 08:00:00", "is_abnormal": "true"}]),
        "claims": silver(spark, "claims", [
            {"claim_id": "C1", "line_number": "1", "patient_key": "K1", "payer_id": "PA",
             "service_date": "2025-01-10", "claim_status": "paid", "billed_amount": "10.00",
             "paid_amount": "8.00"}]),
    }
    for name, df in frames.items():
        write_table(df, "silver", name)

    first = gold.build_gold(spark)
    snapshot = {name: rows_of(spark.table(f"gold.{name}")) for name in first}
    prints = {name: gold.fingerprint(spark.table(f"gold.{name}")) for name in first}
    second = gold.build_gold(spark)
    assert second == first
    for name in first:
        assert rows_of(spark.table(f"gold.{name}")) == snapshot[name], name
        assert gold.fingerprint(spark.table(f"gold.{name}")) == prints[name], name

    # Row counts worked out above: stays give 4 readmission and 5 LOS groups; the calendar
    # 01-01..03-10 is 69 days x 2 facilities with beds = 138; months Jan-Mar; all payers
    # unknown -> 3 payer-mix rows. The reference date is now 03-10, so K2 (born 1950-03-31)
    # is still 74: groups (0-17,F) (18-44,M) (65-74,F) x 3 conditions = 9 prevalence rows.
    assert first == {"readmission_30d": 4, "length_of_stay": 5, "bed_occupancy_daily": 138,
                     "ed_utilization": 3, "payer_mix": 3, "claims_denial_rate": 1,
                     "abnormal_lab_rate": 1, "chronic_condition_prevalence": 9,
                     "patient_summary": 5}
    for name, table in gold.gold_tables().items():
        got = dict(spark.table(f"gold.{name}").dtypes)
        want = {col: spec["type"].replace(" ", "") for col, spec in table.columns.items()}
        assert got == want, name
