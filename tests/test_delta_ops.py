"""Delta table operations (utils.delta_ops) on temporary tables, on the local engine.

Each test builds a tiny ``demo_*`` table in its own data root, runs one operation through
delta-rs and checks both what delta-rs reports and that Sail reads (and writes) the result.
"""

from __future__ import annotations

import pytest
from pyspark.sql import SparkSession

from utils import delta_ops, register_course_tables, write_table
from utils.session import sail_url

SCHEMA = "id BIGINT, k BIGINT, v DOUBLE"


@pytest.fixture(autouse=True)
def _forget_demo_tables(spark):
    """The session is shared but each test has its own data root: registering ``silver.demo_t``
    again would keep pointing at the previous test's folder (CREATE TABLE IF NOT EXISTS)."""
    spark.sql("CREATE SCHEMA IF NOT EXISTS silver")
    for row in spark.sql("SHOW TABLES IN silver").collect():
        if row.tableName.startswith(delta_ops.SCRATCH_PREFIX):
            spark.sql(f"DROP TABLE IF EXISTS silver.{row.tableName}")
    yield



def _three_versions(spark) -> None:
    """v0: ids 0-9 in 2 files; v1: +10-14; v2: +15-19."""
    write_table(spark.createDataFrame([(i, i % 3, i * 1.0) for i in range(10)], SCHEMA)
                .repartition(2), "silver", "demo_t")
    for start in (10, 15):
        rows = [(i, i % 3, i * 1.0) for i in range(start, start + 5)]
        write_table(spark.createDataFrame(rows, SCHEMA), "silver", "demo_t", mode="append")


def _count(spark) -> int:
    return spark.table("silver.demo_t").count()


def test_history_lists_every_commit_newest_first(spark, data_dir):
    _three_versions(spark)
    hist = delta_ops.history(spark, "silver", "demo_t")
    assert hist.columns == delta_ops.HISTORY_COLUMNS
    rows = hist.collect()
    assert [(r.version, r.operation) for r in rows] == [(2, "WRITE"), (1, "WRITE"), (0, "CREATE TABLE")]
    assert rows[0].operationParameters["mode"] == "Append"
    assert rows[0].operationMetrics["numOutputRows"] == "5"
    assert [r.version for r in delta_ops.history(spark, "silver.demo_t", limit=1).collect()] == [2]
    assert delta_ops.current_version(spark, "silver", "demo_t") == 2
    assert delta_ops.log_files("silver", "demo_t") == [
        f"_delta_log/{v:020d}.json" for v in range(3)]
    actions = delta_ops.read_commit("silver", "demo_t", 1)
    assert sorted(next(iter(a)) for a in actions) == ["add", "commitInfo"]


def test_detail_counts_files_and_properties(spark, data_dir):
    _three_versions(spark)
    info = delta_ops.detail(spark, "silver", "demo_t")
    assert set(info) == set(delta_ops.DETAIL_KEYS)
    assert (info["name"], info["numFiles"], info["partitionColumns"]) == ("silver.demo_t", 4, [])
    assert info["sizeInBytes"] > 0
    assert info["properties"]["delta.checkpointInterval"] == "100"


def test_unknown_table_and_bad_names_fail_clearly(spark, data_dir):
    with pytest.raises(ValueError, match="silver.demo_missing is not a Delta table yet"):
        delta_ops.detail(spark, "silver", "demo_missing")
    with pytest.raises(ValueError, match="layer.table"):
        delta_ops.history(spark, "demo_t")
    with pytest.raises(ValueError, match="Refusing to touch silver.claims"):
        delta_ops.drop_scratch_table(spark, "silver", "claims")


def test_optimize_compacts_then_zorders_and_prunes_files(spark, data_dir):
    rows = [(i, (i * 7) % 100, float(i)) for i in range(4000)]
    write_table(spark.createDataFrame(rows, SCHEMA).repartition(8), "silver", "demo_t")
    assert delta_ops.files_scanned(spark, "silver", "demo_t", "k = 3") == (8, 8)

    assert delta_ops.optimize(spark, "silver", "demo_t") == {"numFilesAdded": 1, "numFilesRemoved": 8}
    assert delta_ops.detail(spark, "silver", "demo_t")["numFiles"] == 1

    metrics = delta_ops.optimize(spark, "silver", "demo_t", zorder_by=["k"], target_size=8000)
    assert metrics["numFilesRemoved"] == 1 and metrics["numFilesAdded"] > 2
    scanned, total = delta_ops.files_scanned(spark, "silver", "demo_t", "k = 3")
    assert total == metrics["numFilesAdded"] and scanned == 1
    stats = delta_ops.file_stats(spark, "silver", "demo_t", ["k"]).collect()
    assert sum(r.num_records for r in stats) == 4000 and stats[0].min_k == 0

    ops = [r.operation for r in delta_ops.history(spark, "silver", "demo_t").collect()]
    assert ops == ["OPTIMIZE", "OPTIMIZE", "CREATE TABLE"]
    assert _count(spark) == 4000  # Sail reads the rewritten files
    write_table(spark.createDataFrame([(9999, 1, 1.0)], SCHEMA), "silver", "demo_t", mode="append")
    assert _count(spark) == 4001  # ... and keeps writing


def test_vacuum_dry_run_default_retention_keeps_time_travel(spark, data_dir):
    _three_versions(spark)
    delta_ops.optimize(spark, "silver", "demo_t")  # 4 files become unreferenced
    assert delta_ops.vacuum(spark, "silver", "demo_t") == []  # younger than 7 days: kept
    with pytest.raises(Exception, match="retention"):
        delta_ops.vacuum(spark, "silver", "demo_t", retention_hours=0)
    would = delta_ops.vacuum(spark, "silver", "demo_t", retention_hours=0, enforce_retention=False)
    assert len(would) == 4 and all(f.endswith(".parquet") and "/" not in f for f in would)
    assert delta_ops.read_version(spark, "silver", "demo_t", version=0).count() == 10  # dry run

    deleted = delta_ops.vacuum(spark, "silver", "demo_t", retention_hours=0, dry_run=False,
                               enforce_retention=False)
    assert deleted == would
    assert _count(spark) == 20  # the current version is intact
    old = delta_ops.read_version(spark, "silver", "demo_t", version=0)
    # Sail answers count() from the log's statistics, so it still says 10 (a silent
    # divergence); reading the rows needs the deleted files and fails.
    assert old.count() == 10
    with pytest.raises(Exception, match="Failed to fetch metadata|not found"):
        old.collect()


def test_restore_to_version_and_timestamp(spark, data_dir):
    _three_versions(spark)
    result = delta_ops.restore(spark, "silver", "demo_t", version=0)
    assert result == {"version": 3, "numRestoredFiles": 0, "numRemovedFiles": 2}
    assert _count(spark) == 10
    last = delta_ops.history(spark, "silver", "demo_t", limit=1).first()
    assert (last.operation, last.operationParameters["version"]) == ("RESTORE", "0")

    v1_time = next(r.timestamp for r in delta_ops.history(spark, "silver", "demo_t").collect()
               if r.version == 1)
    assert delta_ops.read_version(spark, "silver", "demo_t", timestamp=v1_time).count() == 15
    assert delta_ops.restore(spark, "silver", "demo_t", timestamp=v1_time)["version"] == 4
    assert _count(spark) == 15
    write_table(spark.createDataFrame([(99, 0, 1.0)], SCHEMA), "silver", "demo_t", mode="append")
    assert _count(spark) == 16


def test_read_version_older_than_checkpoint(spark, data_dir):
    path = data_dir / "lakehouse" / "silver" / "demo_t"
    writer = spark.createDataFrame([(0, 0, 0.0)], SCHEMA).write.format("delta")
    writer.option("delta.checkpointInterval", "3").save(str(path))
    for i in range(1, 5):
        spark.createDataFrame([(i, 0, 0.0)], SCHEMA).write.format("delta").mode("append").save(str(path))
    assert delta_ops.latest_checkpoint("silver", "demo_t") == 3
    with pytest.raises(Exception, match="Missing commit file"):  # Sail's bug, still there?
        spark.read.format("delta").option("versionAsOf", 2).load(str(path)).count()
    counts = [delta_ops.read_version(spark, "silver", "demo_t", version=v).count() for v in range(5)]
    assert counts == [1, 2, 3, 4, 5]


def test_check_constraints_reject_bad_writes(spark, data_dir):
    _three_versions(spark)
    with pytest.raises(Exception, match="would be violated by existing data"):
        delta_ops.add_check_constraint(spark, "silver", "demo_t", name="small_id", expr="id < 5")
    delta_ops.add_check_constraint(spark, "silver", "demo_t", name="v_not_negative", expr="v >= 0")
    assert delta_ops.constraints(spark, "silver", "demo_t") == {"v_not_negative": "v >= 0"}

    bad = spark.createDataFrame([(100, 0, -1.0)], SCHEMA)
    with pytest.raises(Exception, match=r"CHECK constraint v_not_negative \(v >= 0\) violated"):
        write_table(bad, "silver", "demo_t", mode="append")
    assert _count(spark) == 20

    delta_ops.drop_constraint(spark, "silver", "demo_t", name="v_not_negative")
    delta_ops.drop_constraint(spark, "silver", "demo_t", name="v_not_negative")  # if exists
    assert delta_ops.constraints(spark, "silver", "demo_t") == {}
    write_table(bad, "silver", "demo_t", mode="append")
    assert _count(spark) == 21


def test_not_null_column_rejects_nulls(spark, data_dir):
    assert delta_ops.create_scratch(spark, "demo_nn", "id BIGINT NOT NULL, note STRING") == "scratch.demo_nn"
    spark.sql("INSERT INTO scratch.demo_nn VALUES (1, 'ok')")
    with pytest.raises(Exception, match="NOT NULL constraint violated for column: id"):
        spark.sql("INSERT INTO scratch.demo_nn VALUES (NULL, 'no id')")
    assert spark.table("scratch.demo_nn").count() == 1
    assert delta_ops.detail(spark, "scratch", "demo_nn")["properties"]["delta.checkpointInterval"] == "100"


def test_schema_enforcement_then_evolution(spark, data_dir):
    delta_ops.write_scratch(spark.createDataFrame([(1, 0, 1.0)], SCHEMA), "demo_s")
    wider = spark.createDataFrame([(2, 0, 2.0, "x")], SCHEMA + ", extra STRING")
    with pytest.raises(Exception, match="extra"):
        delta_ops.write_scratch(wider, "demo_s", mode="append", fresh=False)
    delta_ops.write_scratch(wider, "demo_s", mode="append", fresh=False, merge_schema=True)
    rows = spark.table("scratch.demo_s").orderBy("id").collect()
    assert [tuple(r) for r in rows] == [(1, 0, 1.0, None), (2, 0, 2.0, "x")]
    with pytest.raises(ValueError, match="merge_schema is for scratch tables"):
        delta_ops._write(wider, "silver", "demo_s", "append", merge_schema=True)


def test_change_data_feed_records_merge(spark, data_dir):
    start = spark.createDataFrame([(1, "a"), (2, "b"), (3, "c")], "id BIGINT, v STRING")
    assert delta_ops.create_cdf_table(spark, start, "scratch", "demo_cdf") == "scratch.demo_cdf"
    assert delta_ops.change_data_feed_enabled(spark, "scratch", "demo_cdf")
    changes = spark.createDataFrame([(2, "B", False), (3, "c", True), (4, "d", False)],
                                    "id BIGINT, v STRING, deleted BOOLEAN")
    delta_ops.upsert(spark, changes, "scratch", "demo_cdf", keys=["id"], delete_when="s.deleted")
    assert sorted(tuple(r) for r in spark.table("scratch.demo_cdf").collect()) == [
        (1, "a"), (2, "B"), (4, "d")]
    feed = delta_ops.read_change_feed(spark, "scratch", "demo_cdf", starting_version=1)
    got = sorted((r.id, r.v, r._change_type, r._commit_version) for r in feed.collect())
    assert got == [(2, "B", "update_postimage", 1), (2, "b", "update_preimage", 1),
                   (3, "c", "delete", 1), (4, "d", "insert", 1)]
    # a re-run starts again from version 0
    delta_ops.create_cdf_table(spark, start, "scratch", "demo_cdf")
    assert delta_ops.current_version(spark, "scratch", "demo_cdf") == 0


def test_upsert_without_cdf_uses_sql_merge(spark, data_dir):
    _three_versions(spark)
    changes = spark.createDataFrame([(0, 0, 100.0, False), (1, 1, 0.0, True), (50, 2, 5.0, False)],
                                    "id BIGINT, k BIGINT, v DOUBLE, gone BOOLEAN")
    delta_ops.upsert(spark, changes, "silver", "demo_t", keys=["id"], delete_when="s.gone")
    rows = {r.id: r.v for r in spark.table("silver.demo_t").collect()}
    assert len(rows) == 20 and rows[0] == 100.0 and 1 not in rows and rows[50] == 5.0
    assert delta_ops.history(spark, "silver", "demo_t", limit=1).first().operation == "MERGE"


def test_scratch_tables_live_outside_the_layers(spark, data_dir):
    df = spark.createDataFrame([(1, 0, 1.0), (2, 1, 2.0)], SCHEMA)
    assert delta_ops.write_scratch(df, "demo_copy") == "scratch.demo_copy"
    assert delta_ops.write_scratch(df, "demo_copy", mode="append", fresh=False) == "scratch.demo_copy"
    assert spark.table("scratch.demo_copy").count() == 4
    assert delta_ops.current_version(spark, "scratch", "demo_copy") == 1
    assert (data_dir / "scratch" / "demo_copy" / "_delta_log").is_dir()
    assert register_course_tables(spark) == []  # not a course table
    fresh = SparkSession.builder.remote(sail_url()).create()  # a new notebook's session
    try:
        assert delta_ops.register_scratch_tables(fresh) == ["scratch.demo_copy"]
        assert fresh.table("scratch.demo_copy").count() == 4
    finally:
        fresh.stop()

    spark.sql("UPDATE scratch.demo_copy SET v = 10.0 WHERE id = 1")
    assert delta_ops.history(spark, "scratch.demo_copy", limit=1).first().operation == "UPDATE"
    delta_ops.restore(spark, "scratch", "demo_copy", version=0)
    assert spark.table("scratch.demo_copy").count() == 2

    assert delta_ops.write_scratch(df.limit(1), "demo_copy") == "scratch.demo_copy"  # fresh
    assert delta_ops.current_version(spark, "scratch", "demo_copy") == 0
    delta_ops.drop_scratch_table(spark, "scratch", "demo_copy")
    assert not (data_dir / "scratch" / "demo_copy").exists()
