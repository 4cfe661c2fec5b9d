"""Re-running never changes the result: the whole medallion run twice, and the declarative
pipeline run twice, leave every table with exactly the same contents (row by row, compared
with an order-independent content hash), not just the same counts."""

from __future__ import annotations

from pathlib import Path

from utils.gold import fingerprint

PIPELINE_DIR = Path(__file__).resolve().parent.parent / "notebooks" / "pipeline"
RUN_ID = "idempotence"


def table_fingerprints(spark, schemas: tuple[str, ...], skip: frozenset[str] = frozenset()) -> dict[str, str]:
    """Content fingerprint of every (non-temporary) table of ``schemas``, by full name."""
    prints = {}
    for schema in schemas:
        if not spark.catalog.databaseExists(schema):
            continue
        for table in spark.catalog.listTables(schema):
            name = f"{schema}.{table.name}"
            if not table.isTemporary and name not in skip:
                prints[name] = fingerprint(spark.table(name))
    return prints


def test_full_medallion_twice_gives_identical_tables(fresh_spark, data_dir):
    from data_generator import generate
    from utils.bronze import ingest_landing
    from utils.cdc import build_patients
    from utils.gold import build_gold
    from utils.silver import build_silver

    spark = fresh_spark
    generate(data_dir / "landing", patients=150, days=12, seed=11, defect_rate=0.05)

    def medallion() -> dict[str, str]:
        ingest_landing(spark)
        build_silver(spark, run_id=RUN_ID)
        build_patients(spark, run_id=RUN_ID)
        build_gold(spark)
        return table_fingerprints(spark, ("bronze", "silver", "gold"))

    first = medallion()
    assert {"bronze.encounters", "silver.encounters", "silver.patients", "silver.quarantine_encounters",
            "silver.dq_metrics", "gold.readmission_30d", "gold.patient_summary"} <= set(first)
    second = medallion()
    changed = sorted(name for name in first if second.get(name) != first[name])
    assert not changed, f"a second run changed: {changed}"
    assert set(second) == set(first)


def test_declarative_pipeline_twice_gives_identical_tables(fresh_spark, data_dir):
    from data_generator import generate
    from utils.pipelines.runner import load_pipeline

    spark = fresh_spark
    generate(data_dir / "landing", patients=150, days=12, seed=11, defect_rate=0.05)
    configuration = {"course.landing_dir": str(data_dir / "landing")}

    def update() -> dict[str, str]:
        pipeline = load_pipeline(PIPELINE_DIR, spark, configuration)
        assert pipeline.run(lineage=False).status == "COMPLETED"
        schema = pipeline.spec.schema
        # the event log records each update by design: every other table must not change
        return table_fingerprints(spark, (schema,), skip=frozenset({f"{schema}.event_log"}))

    first = update()
    assert any(name.endswith("gold_readmission_30d") for name in first), sorted(first)
    second = update()
    changed = sorted(name for name in first if second.get(name) != first[name])
    assert not changed, f"a second update changed: {changed}"
