"""Course tables: write, register in a brand-new session, query by name."""

from pyspark.sql import SparkSession

from utils import get_config, register_course_tables, write_table
from utils.session import sail_url
from utils.tables import create_table_if_missing, existing_tables


def test_write_then_register_in_new_session(spark, data_dir):
    df = spark.createDataFrame([(1, "a"), (2, "b")], "id INT, v STRING")
    assert write_table(df, "bronze", "demo") == "bronze.demo"
    path = get_config().table_path("bronze", "demo")
    assert (path / "_delta_log").is_dir()

    # A second session on the same server starts with an empty catalog, as a new notebook does.
    fresh = SparkSession.builder.remote(sail_url()).create()
    try:
        assert "bronze" not in [db.name for db in fresh.catalog.listDatabases()]
        assert register_course_tables(fresh) == ["bronze.demo"]
        rows = fresh.sql("SELECT id, v FROM bronze.demo ORDER BY id").collect()
        assert [tuple(r) for r in rows] == [(1, "a"), (2, "b")]
        assert register_course_tables(fresh) == ["bronze.demo"]  # idempotent
    finally:
        fresh.stop()


def test_write_modes_are_explicit_and_rerunnable(spark, data_dir):
    df = spark.createDataFrame([(1,)], "id INT")
    write_table(df, "silver", "rerun")
    write_table(df, "silver", "rerun")  # overwrite: a re-run does not duplicate
    assert spark.table("silver.rerun").count() == 1
    write_table(df, "silver", "rerun", mode="append")
    assert spark.table("silver.rerun").count() == 2


def test_tables_get_course_properties(spark, data_dir):
    from deltalake import DeltaTable

    create_table_if_missing(spark, "gold", "props", "k STRING, n BIGINT")
    write_table(spark.createDataFrame([(1,)], "id INT"), "gold", "written")
    for name in ("props", "written"):
        conf = DeltaTable(str(get_config().table_path("gold", name))).metadata().configuration
        assert conf["delta.checkpointInterval"] == "100"
    found = [(layer, table) for layer, table, _ in existing_tables()]
    assert found == [("gold", "props"), ("gold", "written")]


def test_registration_follows_a_change_of_data_root(spark, tmp_path, monkeypatch):
    """The catalog outlives COURSE_DATA_DIR; the name must follow the configured location."""
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "first"))
    write_table(spark.createDataFrame([(1,)], "id INT"), "silver", "moves")
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "second"))
    write_table(spark.createDataFrame([(2,), (3,)], "id INT"), "silver", "moves")
    assert sorted(r.id for r in spark.table("silver.moves").collect()) == [2, 3]
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "first"))
    assert register_course_tables(spark) == ["silver.moves"]
    assert [r.id for r in spark.table("silver.moves").collect()] == [1]


def test_a_removed_table_is_created_again_not_left_dangling(spark, data_dir):
    import shutil

    create_table_if_missing(spark, "bronze", "gone", "id INT")
    shutil.rmtree(get_config().table_path("bronze", "gone"))
    create_table_if_missing(spark, "bronze", "gone", "id INT")  # a reset removed the folder
    assert (get_config().table_path("bronze", "gone") / "_delta_log").is_dir()
    assert spark.table("bronze.gone").count() == 0


def test_registering_again_keeps_the_table_current(spark, data_dir):
    """A name already registered at its folder is left as is: it still reads the latest
    version and schema (an overwriteSchema write), and a second data root still re-points it."""
    write_table(spark.createDataFrame([(1,)], "id INT"), "silver", "current")
    assert register_course_tables(spark) == ["silver.current"]
    write_table(spark.createDataFrame([(2, "b")], "id INT, v STRING"), "silver", "current",
                overwrite_schema=True)
    assert register_course_tables(spark) == ["silver.current"]
    assert [tuple(r) for r in spark.table("silver.current").collect()] == [(2, "b")]
