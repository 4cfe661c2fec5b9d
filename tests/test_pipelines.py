"""The local declarative-pipeline runner on tiny pipelines written to a temporary folder.

Each test writes a ``pipeline.yml`` and a source file using the official ``pyspark.pipelines``
API, lands a few text files, runs the pipeline on the session's engine and checks exact rows,
errors and event-log contents. Pipeline names are unique per test: the catalog is per session.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from utils.pipelines import (
    PipelineGraphError,
    PipelineRunFailed,
    load_pipeline,
    run_pipeline,
)

_names = itertools.count()

HEADER = """
from pyspark import pipelines as dp
from pyspark.sql import functions as F
from utils import get_config
from utils.pipelines.compat import (create_auto_cdc_flow, expect, expect_all_or_drop,
                                    expect_or_drop, expect_or_fail)

LANDING = str(get_config().landing_dir / "orders")


def raw_orders():
    return (spark.readStream.format("text").option("recursiveFileLookup", "true").load(LANDING)
            .select(F.split("value", ",")[0].alias("id"),
                    F.expr("try_cast(split(value, ',')[1] AS INT)").alias("amount"),
                    F.col("_metadata.file_name").alias("file")))
"""


def make_pipeline(tmp_path: Path, body: str, name: str | None = None) -> Path:
    name = name or f"p{next(_names)}"
    folder = tmp_path / f"pipeline_{name}"
    folder.mkdir()
    (folder / "pipeline.yml").write_text(f"name: {name}\n")
    (folder / "flows.py").write_text(HEADER + textwrap.dedent(body))
    return folder


def land(data_dir: Path, day: str, lines: list[str], file: str = "orders.csv") -> None:
    folder = data_dir / "landing" / "orders" / day
    folder.mkdir(parents=True, exist_ok=True)
    (folder / file).write_text("".join(line + "\n" for line in lines))


def rows(spark, table: str, order_by: str = "id") -> list[tuple]:
    return [tuple(r) for r in spark.table(table).orderBy(*order_by.split(", ")).collect()]


# ----- graph -----------------------------------------------------------------------------------
def test_missing_input_is_named(spark, data_dir, tmp_path):
    folder = make_pipeline(tmp_path, """
        @dp.materialized_view
        def totals():
            return spark.read.table("orders_typo").groupBy().count()
    """)
    with pytest.raises(PipelineGraphError) as info:
        load_pipeline(folder, spark)
    assert ("Flow 'totals' reads 'orders_typo', which is neither a dataset of this pipeline "
            "nor an existing table") in str(info.value)


def test_cycle_is_named(spark, data_dir, tmp_path):
    folder = make_pipeline(tmp_path, """
        @dp.materialized_view
        def a():
            return spark.read.table("b")

        @dp.materialized_view
        def b():
            return spark.sql("SELECT * FROM a")
    """)
    with pytest.raises(PipelineGraphError, match=r"cycle between datasets (a -> b -> a|b -> a -> b)"):
        load_pipeline(folder, spark)


def test_streaming_table_needs_a_stream(spark, data_dir, tmp_path):
    folder = make_pipeline(tmp_path, """
        @dp.table
        def not_a_stream():
            return spark.range(3)
    """)
    with pytest.raises(PipelineGraphError, match="reads nothing as a stream"):
        load_pipeline(folder, spark)


def test_inputs_from_plan_and_sql_give_execution_order(spark, data_dir, tmp_path):
    land(data_dir, "2025-01-01", ["o1,10"])
    folder = make_pipeline(tmp_path, """
        @dp.materialized_view
        def report():   # defined first, runs last; `big` is a CTE, not an input
            return spark.sql("WITH big AS (SELECT * FROM orders WHERE amount > 5) "
                             "SELECT count(*) AS n FROM big JOIN totals ON 1 = 1")

        @dp.materialized_view
        def totals():
            return spark.read.table("orders").agg(F.sum("amount").alias("total"))

        @dp.table
        def orders():
            return raw_orders()
    """)
    pipeline = load_pipeline(folder, spark)
    assert pipeline.graph.order == ["orders", "totals", "report"]
    assert pipeline.graph.flows["report"].inputs == ["orders", "totals"]
    assert pipeline.graph.describe().splitlines() == [
        " 1. orders [st] <- files",
        " 2. totals [mv] <- orders",
        " 3. report [mv] <- orders, totals",
    ]
    run = pipeline.run(dry_run=True)           # validates only: nothing written
    assert run.status == "VALIDATED"
    assert not (pipeline.spec.storage / "tables").exists()


# ----- expectations ----------------------------------------------------------------------------
EXPECTATIONS = """
    @dp.table
    def orders():
        return raw_orders()

    @dp.materialized_view
    @expect("small_amount", "amount < 9")
    @expect_or_drop("positive_amount", "amount > 0")
    def valid_orders():
        return spark.read.table("orders").select("id", "amount")
"""


def test_warn_counts_and_drop_removes(spark, data_dir, tmp_path):
    land(data_dir, "2025-01-01", ["o1,10", "o2,-5", "o3,7", "o4,"])
    folder = make_pipeline(tmp_path, EXPECTATIONS, name="expect_warn_drop")
    run = run_pipeline(folder, spark)
    assert rows(spark, "expect_warn_drop.valid_orders") == [("o1", 10), ("o3", 7)]
    result = {f.flow: f for f in run.flows}["valid_orders"]
    assert (result.num_output_rows, result.dropped_records) == (2, 2)
    assert [(m.rule, m.action, m.passed, m.failed) for m in result.expectations] == [
        ("small_amount", "warn", 2, 2), ("positive_amount", "drop", 2, 2)]


def test_fail_stops_the_flow_and_skips_downstream_only(spark, data_dir, tmp_path):
    land(data_dir, "2025-01-01", ["o1,10", "o2,-5"])
    folder = make_pipeline(tmp_path, """
        @dp.table
        def orders():
            return raw_orders()

        @dp.materialized_view
        @expect_or_fail("positive_amount", "amount > 0")
        def checked():
            return spark.read.table("orders").select("id", "amount")

        @dp.materialized_view
        def downstream():
            return spark.read.table("checked")

        @dp.materialized_view
        def independent():
            return spark.read.table("orders").select("id")
    """, name="expect_fail")
    with pytest.raises(PipelineRunFailed) as info:
        run_pipeline(folder, spark, lineage=False)
    message = str(info.value)
    assert "checked: ExpectationFailed: Expectation 'positive_amount' (amount > 0)" in message
    assert 'sample record: {"amount": -5, "id": "o2"}' in message
    statuses = {f.flow: f.status for f in info.value.run.flows}
    assert statuses == {"orders": "COMPLETED", "checked": "FAILED", "downstream": "SKIPPED",
                        "independent": "COMPLETED"}
    assert rows(spark, "expect_fail.independent") == [("o1",), ("o2",)]


# ----- incremental, full refresh ------------------------------------------------------------------
INCREMENTAL = """
    @dp.table
    def orders():
        return raw_orders()

    @dp.table
    def big_orders():           # a streaming table fed by a streaming table
        return spark.readStream.table("orders").filter("amount > 5")

    @dp.materialized_view
    def totals():
        return spark.read.table("orders").agg(F.count(F.lit(1)).alias("n"),
                                              F.sum("amount").alias("total"))
"""


def test_second_run_ingests_only_the_new_day(spark, data_dir, tmp_path):
    land(data_dir, "2025-01-01", ["o1,10", "o2,3"])
    folder = make_pipeline(tmp_path, INCREMENTAL, name="incremental")
    first = run_pipeline(folder, spark, lineage=False)
    assert [(f.flow, f.num_output_rows) for f in first.flows] == [
        ("orders", 2), ("big_orders", 1), ("totals", 1)]

    land(data_dir, "2025-01-02", ["o3,8"])
    second = run_pipeline(folder, spark, lineage=False)
    assert [(f.flow, f.num_output_rows) for f in second.flows] == [
        ("orders", 1), ("big_orders", 1), ("totals", 1)]
    assert rows(spark, "incremental.orders") == [
        ("o1", 10, "orders.csv"), ("o2", 3, "orders.csv"), ("o3", 8, "orders.csv")]
    assert rows(spark, "incremental.big_orders") == [("o1", 10, "orders.csv"),
                                                     ("o3", 8, "orders.csv")]
    assert rows(spark, "incremental.totals", "n") == [(3, 21)]

    third = run_pipeline(folder, spark, lineage=False)       # nothing new: nothing appended
    assert [f.num_output_rows for f in third.flows] == [0, 0, 1]
    assert spark.table("incremental.orders").count() == 3


def test_full_refresh_recomputes_everything_once(spark, data_dir, tmp_path):
    land(data_dir, "2025-01-01", ["o1,10", "o2,3"])
    folder = make_pipeline(tmp_path, INCREMENTAL, name="refresh")
    run_pipeline(folder, spark, lineage=False)
    land(data_dir, "2025-01-02", ["o3,8"])
    run = run_pipeline(folder, spark, full_refresh=True, lineage=False)
    assert [(f.flow, f.num_output_rows) for f in run.flows] == [
        ("orders", 3), ("big_orders", 2), ("totals", 1)]
    assert spark.table("refresh.orders").count() == 3
    assert rows(spark, "refresh.totals", "n") == [(3, 21)]


def test_interrupted_batch_is_not_written_twice(spark, data_dir, tmp_path):
    """An offset without a commit whose write did happen is committed, not re-appended."""
    import json

    land(data_dir, "2025-01-01", ["o1,10"])
    folder = make_pipeline(tmp_path, INCREMENTAL, name="recovery")
    pipeline = load_pipeline(folder, spark)
    pipeline.run(lineage=False)
    commits = pipeline.spec.checkpoint_dir("orders") / "commits"
    (commits / "0.json").unlink()                    # as if the run died after the write
    run = pipeline.run(lineage=False)
    assert run.flows[0].num_output_rows == 0
    assert spark.table("recovery.orders").count() == 1
    assert json.loads((commits / "0.json").read_text())["sources"]


# ----- AUTO CDC ------------------------------------------------------------------------------------
#: A view of the change lines ``land_changes`` writes: id, op, seq, city.
CHANGES_VIEW = """
    @dp.temporary_view
    def changes():
        return (spark.readStream.format("text").option("recursiveFileLookup", "true")
                .load(str(get_config().landing_dir / "changes"))
                .select(F.split("value", ",")[0].alias("id"),
                        F.split("value", ",")[1].alias("op"),
                        F.split("value", ",")[2].cast("int").alias("seq"),
                        F.split("value", ",")[3].alias("city")))
"""

CDC = CHANGES_VIEW + """
    dp.create_streaming_table("customers_scd2")
    create_auto_cdc_flow(target="customers_scd2", source="changes", keys=["id"],
                         sequence_by="seq", apply_as_deletes="op = 'D'",
                         except_column_list=["op"], stored_as_scd_type=2)

    dp.create_streaming_table("customers_scd1")
    create_auto_cdc_flow(target="customers_scd1", source="changes", keys=["id"],
                         sequence_by=F.col("seq"), apply_as_deletes=F.expr("op = 'D'"),
                         column_list=["id", "city", "seq"], stored_as_scd_type=1)
"""


def land_changes(data_dir: Path, day: str, lines: list[str]) -> None:
    folder = data_dir / "landing" / "changes" / day
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "changes.csv").write_text("".join(line + "\n" for line in lines))


def test_auto_cdc_scd2_and_scd1_with_late_and_deleted_changes(spark, data_dir, tmp_path):
    land_changes(data_dir, "2025-01-01", ["c1,I,1,Boston", "c2,I,1,Austin", "c1,U,3,Denver"])
    folder = make_pipeline(tmp_path, CDC, name="cdc")
    run_pipeline(folder, spark, lineage=False)
    # day 2: a late change for c1 (seq 2 < 3) and a delete of c2
    land_changes(data_dir, "2025-01-02", ["c1,U,2,Chicago", "c2,D,4,", "c3,I,5,Miami"])
    run_pipeline(folder, spark, lineage=False)

    assert spark.table("cdc.customers_scd2").columns == ["id", "seq", "city", "__START_AT",
                                                         "__END_AT"]
    assert rows(spark, "cdc.customers_scd2", "id, __START_AT") == [
        ("c1", 1, "Boston", 1, 2),
        ("c1", 2, "Chicago", 2, 3),
        ("c1", 3, "Denver", 3, None),
        ("c2", 1, "Austin", 1, 4),       # closed by the delete
        ("c3", 5, "Miami", 5, None),
    ]
    assert rows(spark, "cdc.customers_scd1") == [("c1", "Denver", 3), ("c3", "Miami", 5)]

    run = run_pipeline(folder, spark, lineage=False)          # replay: nothing changes
    assert rows(spark, "cdc.customers_scd2", "id, __START_AT")[2] == ("c1", 3, "Denver", 3, None)
    assert spark.table("cdc.customers_scd2").count() == 5
    assert {f.flow: f.num_output_rows for f in run.flows}["customers_scd2"] == 0


def test_open_source_rejects_scd2_and_the_local_runner_registers_it(spark):
    from pyspark import pipelines as dp
    from pyspark.pipelines.graph_element_registry import graph_element_registration_context

    from utils.pipelines import compat
    from utils.pipelines.registry import LocalRegistry, local_api_installed

    registry = LocalRegistry()
    with graph_element_registration_context(registry):
        with pytest.raises(Exception, match="stored_as_scd_type"):
            dp.create_auto_cdc_flow(target="t", source="s", keys=["k"], sequence_by="seq",
                                    stored_as_scd_type=2)
        assert not compat.supports_scd_type_2() and not compat.supports_native_expectations()
        with pytest.raises(NotImplementedError, match="create_auto_cdc_table"):
            compat.create_auto_cdc_flow(target="t", source="s", keys=["k"], sequence_by="seq",
                                        stored_as_scd_type=2)
        with local_api_installed():     # what the local runner offers while sources load
            assert compat.supports_scd_type_2() and compat.supports_native_expectations()
            compat.create_auto_cdc_flow(target="t", source="s", keys=["k"], sequence_by="seq",
                                        stored_as_scd_type=2)
        assert not hasattr(dp, "expect")              # and takes back afterwards
    (flow,) = registry.auto_cdc_flows
    assert (flow.name, flow.target, flow.source, flow.stored_as_scd_type) == ("t", "t", "s", 2)
    assert flow.source_code_location.filename == __file__


# ----- event log and lineage ----------------------------------------------------------------------
def test_event_log_has_one_row_per_flow_event_with_metrics(spark, data_dir, tmp_path):
    land(data_dir, "2025-01-01", ["o1,10", "o2,-5", "o3,7", "o4,"])
    folder = make_pipeline(tmp_path, EXPECTATIONS, name="events")
    run = run_pipeline(folder, spark)
    log = spark.table("events.event_log")
    # Databricks' event log columns, in its order: queries on it run unchanged there
    assert log.columns == ["id", "sequence", "origin", "timestamp", "message", "level",
                           "maturity_level", "error", "details", "event_type"]
    status = F.get_json_object("details", "$.flow_progress.status")
    rows = F.get_json_object("details", "$.flow_progress.metrics.num_output_rows").cast("long")
    flow_events = [tuple(r) for r in log.filter("event_type = 'flow_progress'")
                   .orderBy("sequence").select("origin.flow_name", status, rows).collect()]
    assert flow_events == [
        ("orders", "QUEUED", None), ("valid_orders", "QUEUED", None),
        ("orders", "RUNNING", None), ("orders", "COMPLETED", 4),
        ("valid_orders", "RUNNING", None), ("valid_orders", "COMPLETED", 2),
    ]
    expectations = F.from_json(
        F.get_json_object("details", "$.flow_progress.data_quality.expectations"),
        "array<struct<name: string, dataset: string, passed_records: bigint, "
        "failed_records: bigint>>")
    quality = [tuple(r) for r in log.select(F.explode(expectations).alias("e"))
               .select("e.*").orderBy("name").collect()]
    assert quality == [("positive_amount", "valid_orders", 2, 2),
                       ("small_amount", "valid_orders", 2, 2)]
    dropped = log.select(F.get_json_object(
        "details", "$.flow_progress.data_quality.dropped_records").cast("long").alias("d"))
    assert [r.d for r in dropped.filter("d IS NOT NULL").collect()] == [2]
    assert [r[0] for r in log.filter("event_type != 'flow_progress'").orderBy("sequence")
            .select(F.get_json_object("details", "$.update_progress.state")).collect()] == [
        "CREATED", "COMPLETED"]
    assert {r.maturity_level for r in log.select("maturity_level").collect()} == {"STABLE"}
    assert run.lineage_path.is_file() and run.lineage_path.suffix == ".png"


def test_flow_that_queries_its_input_while_defining_runs_after_it(spark, data_dir, tmp_path):
    """A function that cannot build its query before its input has data is analyzed again when
    it runs; its inputs are the tables it read before failing (so the order is still right)."""
    land(data_dir, "2025-01-01", ["o1,10", "o2,3", "o3,10"])
    folder = make_pipeline(tmp_path, """
        @dp.materialized_view
        def largest():
            orders = spark.read.table("orders")
            top = orders.agg(F.max("amount")).first()[0]      # runs a query
            if top is None:                     # before the first run: an empty input
                raise ValueError("no orders yet")
            return orders.filter(F.col("amount") == F.lit(top)).select("id")

        @dp.table
        def orders():
            return raw_orders()
    """, name="deferred")
    pipeline = load_pipeline(folder, spark)
    assert pipeline.graph.order == ["orders", "largest"]
    assert pipeline.graph.flows["largest"].deferred
    pipeline.run(lineage=False)
    assert rows(spark, "deferred.largest") == [("o1",), ("o3",)]


# ----- the course pipeline's building blocks ------------------------------------------------------
def test_bronze_lines_match_the_imperative_bronze_reader(spark, tmp_path):
    from utils.bronze import read_landing_file
    from utils.pipelines.medallion import bronze_lines

    day = tmp_path / "landing" / "ehr_encounters" / "2025-01-03"
    day.mkdir(parents=True)
    # BOM, CRLF, empty line, invalid UTF-8 (Sail's text reader fails the whole file on it), no final \n
    data = b"\xef\xbb\xbfa,b\r\n1,x\r\n\r\n2,\xff\xfey\n3,z"
    (day / "enc.csv").write_bytes(data)
    files = spark.read.format("binaryFile").load(str(day))  # what landing_stream reads, as a batch
    got = [tuple(r) for r in bronze_lines(files, "ehr_encounters", "csv")
           .select("value", "_header", "_source_file", "_line_number", "_batch_date", "_raw_base64")
           .orderBy("_line_number").collect()]
    lines = read_landing_file(day / "enc.csv", "csv")
    import datetime as dt

    assert got == [(v, lines.header, "ehr_encounters/2025-01-03/enc.csv", n, dt.date(2025, 1, 3), raw)
                   for v, n, raw in zip(lines.values, lines.line_numbers, lines.raw_base64)]
    assert [g[0] for g in got] == ["1,x", "", "2,\ufffd\ufffdy", "3,z"]
    assert got[2][5] == "Miz//nk="  # base64 of the exact bytes of the undecodable line


def test_scd2_to_contract_marks_current_and_deleted_versions(spark):
    import datetime as dt

    from utils.cdc import patients_ddl
    from utils.pipelines.medallion import scd2_to_contract

    columns = [p.split()[0] for p in patients_ddl().split(", ")]
    attrs = [c for c in columns if c not in ("patient_key", "valid_from", "valid_to",
                                             "is_current", "is_deleted")]
    t = [dt.datetime(2025, 1, d) for d in range(1, 5)]
    seq = "STRUCT<change_ts: TIMESTAMP, change_id: STRING>"
    ddl = ", ".join(["patient_key STRING", *[f"{a} STRING" for a in attrs],
                     f"__START_AT {seq}", f"__END_AT {seq}"])
    none = [None] * len(attrs)
    scd2 = spark.createDataFrame([
        ("p1", *none, (t[0], "c1"), (t[1], "c2")),   # updated at t1
        ("p1", *none, (t[1], "c2"), (t[2], "c3")),   # deleted at t2 (nothing starts at c3)
        ("p1", *none, (t[3], "c4"), None),           # re-inserted, current
        ("p2", *none, (t[0], "c5"), (t[0], "c6")),   # same-instant update: zero length, dropped
        ("p2", *none, (t[0], "c6"), None),
    ], ddl)
    out = scd2_to_contract(scd2)
    assert out.columns == columns
    got = [tuple(r) for r in out.select("patient_key", "valid_from", "valid_to", "is_current",
                                        "is_deleted").orderBy("patient_key", "valid_from").collect()]
    assert got == [("p1", t[0], t[1], False, False), ("p1", t[1], t[2], False, True),
                   ("p1", t[3], None, True, False), ("p2", t[0], None, True, False)]


# ----- declarative == imperative --------------------------------------------------------------------
@pytest.fixture
def forget_course_tables(spark):
    """Drop the session's course table names before and after (their files stay): names that
    other tests registered at their own data roots would otherwise shadow this test's tables
    (``CREATE TABLE IF NOT EXISTS`` keeps an existing name's location)."""
    def forget():
        for schema in ("bronze", "silver", "gold", "medallion_pipeline"):
            if spark.catalog.databaseExists(schema):
                for table in spark.catalog.listTables(schema):
                    if not table.isTemporary:
                        spark.sql(f"DROP TABLE IF EXISTS {schema}.{table.name}")

    forget()
    yield
    forget()


def test_course_pipeline_gold_equals_the_imperative_gold(spark, data_dir, forget_course_tables):
    """Notebooks 02-05's functions and the declarative pipeline give the same gold tables."""
    from data_generator import generate
    from utils.bronze import ingest_landing
    from utils.cdc import build_patients
    from utils.gold import build_gold, gold_tables
    from utils.pipelines.medallion import stage_landing, staged_landing_dir
    from utils.silver import build_silver

    generate(data_dir / "landing", patients=120, days=12, seed=7)
    ingest_landing(spark)
    build_silver(spark)
    build_patients(spark)
    build_gold(spark)

    course_pipeline = Path(__file__).resolve().parent.parent / "notebooks" / "pipeline"
    configuration = {"course.landing_dir": str(staged_landing_dir())}
    stage_landing(until="2025-01-10")
    run_pipeline(course_pipeline, spark, configuration=configuration, lineage=False)
    assert stage_landing() == [f"{s}/2025-01-{d}" for s in ("ehr_encounters", "ehr_patients",
                                                             "fhir_medications",
                                                             "fhir_observations",
                                                             "payer_claims") for d in (11, 12)]
    second = run_pipeline(course_pipeline, spark, configuration=configuration, lineage=False)
    bronze = {f.dataset: f.num_output_rows for f in second.flows if f.dataset.startswith("bronze")}
    assert bronze["bronze_facilities"] == 0 and bronze["bronze_encounters"] > 0  # only new days

    for name in gold_tables():
        imperative = spark.table(f"gold.{name}")
        declarative = spark.table(f"medallion_pipeline.gold_{name}")
        assert declarative.columns == imperative.columns, name
        assert declarative.count() == imperative.count(), name
        assert declarative.exceptAll(imperative).count() == 0, name
        assert imperative.exceptAll(declarative).count() == 0, name
    assert spark.table("gold.patient_summary").count() > 0

    # The official spark-pipelines CLI (JVM, `make pipeline-spark`) defines every flow before
    # any runs; the probe replays the definitions here, on Sail, and lists each engine request
    # (schema, DDL, eager relation) a query function makes, which the CLI would refuse.
    probe = subprocess.run([sys.executable, "-m", "utils.pipelines.official_check",
                            "--probe-only"], capture_output=True, text=True, check=False,
                           cwd=course_pipeline.parent.parent)
    assert probe.returncode == 0, probe.stdout + probe.stderr[-2000:]


def test_streaming_view_batch_is_offered_again_when_its_reader_failed(spark, data_dir, tmp_path):
    land(data_dir, "2025-01-01", ["o1,10"])
    folder = make_pipeline(tmp_path, """
        @dp.temporary_view
        def incoming():
            return raw_orders()

        @dp.table
        @expect_or_fail("below_100", "amount < 100")
        def orders():
            return spark.readStream.table("incoming").select("id", "amount")
    """, name="view_commit")
    run_pipeline(folder, spark, lineage=False)
    land(data_dir, "2025-01-02", ["o2,20"])
    land(data_dir, "2025-01-02", ["o9,500"], file="bad.csv")
    with pytest.raises(PipelineRunFailed, match="below_100"):
        run_pipeline(folder, spark, lineage=False)
    (data_dir / "landing" / "orders" / "2025-01-02" / "bad.csv").unlink()   # fix the delivery
    run_pipeline(folder, spark, lineage=False)
    assert rows(spark, "view_commit.orders") == [("o1", 10), ("o2", 20)]   # o2 not lost


def test_cli_dry_run_run_and_invalid_graph(spark, data_dir, tmp_path, capsys):
    from utils.pipelines.__main__ import main

    land(data_dir, "2025-01-01", ["o1,10", "o2,3"])
    folder = make_pipeline(tmp_path, INCREMENTAL, name="cli")
    assert main(["dry-run", str(folder)], stop_session=False) == 0
    out = capsys.readouterr().out
    assert "pipeline cli: 3 flows, 3 datasets, schema cli" in out and "graph is valid" in out
    assert main(["run", str(folder)], stop_session=False) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("[1/3] orders") and "2 rows" in lines[1] and "COMPLETED" in lines[1]
    assert lines[4].startswith("COMPLETED in ")

    broken = make_pipeline(tmp_path, """
        @dp.materialized_view
        def a():
            return spark.read.table("missing_table")
    """)
    assert main(["dry-run", str(broken)], stop_session=False) == 2
    assert "reads 'missing_table'" in capsys.readouterr().err


def test_batch_planned_but_not_written_is_processed_once_under_its_id(spark, data_dir, tmp_path):
    """An offset without a commit and without a write: the same files are read again, once."""
    import json

    land(data_dir, "2025-01-01", ["o1,10"])
    folder = make_pipeline(tmp_path, INCREMENTAL, name="replan")
    pipeline = load_pipeline(folder, spark)
    pipeline.run(lineage=False)
    land(data_dir, "2025-01-02", ["o2,20"])
    checkpoint = pipeline.spec.checkpoint_dir("orders")
    planned = json.loads((checkpoint / "offsets" / "0.json").read_text())
    source = next(iter(planned["sources"]))
    new_file = str(data_dir / "landing" / "orders" / "2025-01-02" / "orders.csv")
    (checkpoint / "offsets" / "1.json").write_text(json.dumps(      # died before the write
        {"sources": {source: {"files": [new_file]}}, "target_version_before": 1}))
    land(data_dir, "2025-01-03", ["o3,30"])                          # arrives meanwhile
    first = pipeline.run(lineage=False)
    assert first.flows[0].num_output_rows == 1                       # exactly batch 1: o2
    second = pipeline.run(lineage=False)
    assert second.flows[0].num_output_rows == 1                      # then o3
    assert pipeline.run(lineage=False).flows[0].num_output_rows == 0
    assert rows(spark, "replan.orders") == [("o1", 10, "orders.csv"), ("o2", 20, "orders.csv"),
                                            ("o3", 30, "orders.csv")]
    assert sorted(p.name for p in (checkpoint / "commits").iterdir()) == [
        "0.json", "1.json", "2.json", "3.json"]


def test_an_event_log_of_another_shape_is_replaced_then_appended_to(spark, tmp_path):
    import pandas as pd
    from deltalake import write_deltalake

    from utils.pipelines.eventlog import EventLog

    path = tmp_path / "event_log"
    write_deltalake(str(path), pd.DataFrame({"id": ["old"], "flow_name": ["x"]}))  # older shape
    for update in ("u1", "u2"):
        log = EventLog("p", update)
        log.update("CREATED", f"Update {update} started")
        log.write(spark, path)
    stored = spark.read.format("delta").load(str(path))
    assert "flow_name" not in stored.columns
    assert sorted(r.u for r in stored.select(F.col("origin.update_id").alias("u")).collect()) == [
        "u1", "u2"]
