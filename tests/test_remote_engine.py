"""A remote Spark Connect server with Delta, as the course uses it (``make test-spark``).

These tests need the server ``make test-spark`` starts (``SPARK_REMOTE``, Apache Spark with
Delta, its JVM in another time zone than UTC); under ``make test`` (Sail) they are skipped.
Each one checks something that broke when the course first ran against a real server.
"""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.skipif(not os.environ.get("SPARK_REMOTE"),
                                reason="needs a Spark Connect server (make test-spark)")


def test_sessions_pin_utc_whatever_the_server_zone(spark):
    server_zone = spark.sql("SELECT current_timezone() AS tz").first()["tz"]
    assert server_zone == "UTC"
    row = spark.sql("SELECT CAST(TIMESTAMP '2025-01-03 08:15:00' AS STRING) AS ts").first()
    assert row["ts"] == "2025-01-03 08:15:00"


def test_udfs_import_the_package_the_session_shipped(spark):
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("string")
    def course_file(ids):
        import utils

        return ids.map(lambda _: utils.__file__)

    files = {r[0] for r in spark.range(4).repartition(2)
             .select(course_file(F.col("id").cast("string"))).distinct().collect()}
    assert files and all("medallion_course.zip" in f for f in files), files


def test_delta_maintenance_runs_as_delta_sql(spark, data_dir):
    from utils import delta_ops

    assert delta_ops.uses_sql()
    delta_ops.write_scratch(spark.range(10), "remote_demo")
    delta_ops.write_scratch(spark.range(5), "remote_demo", mode="append", fresh=False)
    history = delta_ops.history(spark, "scratch", "remote_demo").collect()
    assert [r["version"] for r in history] == [1, 0]
    assert delta_ops.read_version(spark, "scratch", "remote_demo", version=0).count() == 10
    assert delta_ops.restore(spark, "scratch", "remote_demo", version=0)["version"] == 2
    assert spark.table("scratch.remote_demo").count() == 10


def test_registered_locations_are_plain_paths(spark, data_dir):
    """Spark says ``file:/path``; read as-is it never matched, so every registration dropped
    and re-created every table."""
    from utils.tables import registered_location, write_table

    write_table(spark.range(3), "bronze", "remote_location_demo")
    location = registered_location(spark, "bronze.remote_location_demo")
    assert location == str(data_dir / "lakehouse" / "bronze" / "remote_location_demo")
