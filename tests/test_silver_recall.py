"""Silver against the generator's ground truth: every planted defect is caught as the contract
says (100 % recall), no clean line is quarantined or removed, and nothing disappears.

One small dataset (300 patients, 20 days, 5 % defects) is generated, ingested into bronze and
cleansed once for the whole module, in its own data root and its own Spark session (a fresh
catalog, so no table registered by another test can shadow these ones).
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

from utils import silver as S
from utils.contracts import accepted_values, defect_types

PARAMS = {"patients": 300, "days": 20, "seed": 7, "defect_rate": 0.05}
ENTITY_OF_SOURCE = {"ehr_encounters": "encounters", "fhir_observations": "lab_results",
                    "fhir_medications": "medications", "payer_claims": "claims",
                    "ehr_patients": "patients"}
#: Manifest column (CSV name or FHIR path) -> silver column holding the standardized value.
STANDARDIZED_COLUMN = {"valueQuantity.unit": "unit"}
#: Silver tables with one row per valid bronze line, by entity.
SILVER_TABLE = {**{e: e for e in S.SILVER_ENTITIES}, "patients": "patient_changes"}


def _has_cdc() -> bool:
    try:
        import utils.cdc  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def built(spark, tmp_path_factory):
    """Generate -> bronze -> silver (-> CDC patients when utils.cdc exists), once."""
    from pyspark.sql import SparkSession

    from data_generator import generate, load_manifest
    from utils.bronze import ingest_landing
    from utils.config import get_config
    from utils.session import sail_url

    root = tmp_path_factory.mktemp("silver-recall")
    previous = os.environ.get("COURSE_DATA_DIR")
    os.environ["COURSE_DATA_DIR"] = str(root)
    session = spark
    if sail_url() is not None:
        session = SparkSession.builder.remote(sail_url()).create()
        session.conf.set("spark.sql.session.timeZone", "UTC")
    try:
        generate(get_config().landing_dir, **PARAMS)
        ingest_landing(session)
        report = S.build_silver(session, run_id="recall-run")
        entities = list(S.SILVER_ENTITIES)
        if _has_cdc():
            from utils.cdc import build_patients

            build_patients(session, run_id="recall-run")
            entities.append("patients")
        yield session, load_manifest(get_config().landing_dir), entities, report
    finally:
        if session is not spark:
            session.stop()
        if previous is None:
            os.environ.pop("COURSE_DATA_DIR", None)
        else:
            os.environ["COURSE_DATA_DIR"] = previous


def _entity(defect: dict) -> str:
    if defect["source"] == "reference":
        return defect["file"].rsplit("/", 1)[-1].split(".")[0]
    return ENTITY_OF_SOURCE[defect["source"]]


@pytest.fixture(scope="module")
def outcomes(built):
    """Where each bronze line ended: {(file, line): ("silver"|"quarantine"|"duplicate", row)}."""
    spark, _, entities, _ = built
    where: dict[tuple[str, int], tuple[str, str, dict]] = {}
    for entity in entities:
        for kind, table in (("silver", SILVER_TABLE[entity]), ("quarantine", f"quarantine_{entity}")):
            for row in spark.table(f"silver.{table}").collect():
                where[(row["_source_file"], row["_line_number"])] = (kind, entity, row.asDict())
    for row in spark.table("silver.dedup_log").collect():
        if row["entity"] in entities:
            where[(row["_source_file"], row["_line_number"])] = ("duplicate", row["entity"],
                                                                   row.asDict())
    return where


def _standardized_ok(defect: dict, row: dict) -> bool:
    """The silver row holds the fixed value, not the delivered one."""
    if defect["defect_type"] == "unit_mixup":
        return (row["unit"] == "mg/dL" and row["original_unit"] == "mmol/L"
                and row["value"] == round(row["original_value"] * S.GLUCOSE_MMOL_TO_MGDL, 4))
    column = STANDARDIZED_COLUMN.get(defect["column"], defect["column"])
    value = row[column]
    if column in ("state", "sex"):
        return value == value.strip().upper()
    return value in accepted_values(column)


def test_every_planted_defect_is_caught_as_the_contract_says(built, outcomes):
    _, manifest, entities, _ = built
    caught_by = {name: spec["caught_by"] for name, spec in defect_types().items()}
    expected_kind = {"quarantine": "quarantine", "duplicate": "duplicate",
                     "standardized": "silver", "accepted": "silver"}
    planted, caught, missed = Counter(), Counter(), []
    for defect in manifest["defects"]:
        entity = _entity(defect)
        if entity not in entities:
            continue
        planted[defect["defect_type"]] += 1
        how = caught_by[defect["defect_type"]]
        if defect["defect_type"] == "schema_drift":       # a file-level defect: its header line
            rows = [o for (f, _), o in outcomes.items() if f == defect["file"]]
            drifted = [r for kind, _, r in rows if kind == "silver"]
            ok = bool(drifted) and all(f'"{defect["column"]}"' in (r["_rescued_data"] or "")
                                       for r in drifted)
        else:
            kind, _, row = outcomes.get((defect["file"], defect["line"]), (None, None, {}))
            ok = kind == expected_kind[how] and (how != "standardized"
                                                 or _standardized_ok(defect, row))
        if ok:
            caught[defect["defect_type"]] += 1
        else:
            missed.append(defect)
    assert not missed, f"{len(missed)} planted defects not caught, e.g. {missed[:5]}"
    assert caught == planted
    assert sum(planted.values()) >= 40        # the dataset really carries defects of each kind
    assert {"exact_duplicate", "null_required", "invalid_code", "truncated_line",
            "unit_mixup", "schema_drift"} <= set(planted)


def test_no_clean_line_is_quarantined_or_removed(built, outcomes):
    _, manifest, entities, _ = built
    listed = {(d["file"], d["line"]) for d in manifest["defects"]}
    wrongly = sorted((key, kind, row.get("_failed_rules")) for key, (kind, _, row)
                     in outcomes.items() if kind != "silver" and key not in listed)
    assert wrongly == []


def test_reconciliation_every_bronze_line_is_accounted_for(built):
    spark, _, entities, report = built
    recon = S.reconciliation(spark)
    unbalanced = [tuple(r) for r in recon.filter("NOT balanced").collect()]
    assert unbalanced == []
    totals = recon.groupBy("entity").sum("bronze_rows", "silver_rows", "quarantined_rows",
                                         "duplicate_rows").collect()
    by_entity = {r[0]: tuple(int(v) for v in r[1:]) for r in totals}
    assert by_entity == {e: tuple(report.rows[e][k] for k in
                                  ("bronze", "silver", "quarantined", "duplicates"))
                         for e in S.SILVER_ENTITIES}
    batches = {r[0] for r in recon.filter("entity = 'encounters'").select("batch_date").collect()}
    assert len(batches) == PARAMS["days"]


def test_no_direct_identifier_leaves_the_restricted_table(built):
    spark, _, _, _ = built
    identifiers = {"mrn", "first_name", "last_name", "ssn", "phone", "address_line"}
    for table in [*S.SILVER_ENTITIES, "diagnoses"]:
        assert not identifiers & set(spark.table(f"silver.{table}").columns), table


def test_rerun_is_idempotent(built):
    spark, _, _, report = built
    before = [tuple(r) for r in S.reconciliation(spark).collect()]
    again = S.build_silver(spark, run_id="recall-run")
    assert again.as_rows() == report.as_rows()
    assert [tuple(r) for r in S.reconciliation(spark).collect()] == before
    runs = spark.table("silver.dq_metrics").filter("run_id = 'recall-run'")
    assert runs.groupBy("dataset", "batch_date", "rule").count().filter("count > 1").count() == 0
