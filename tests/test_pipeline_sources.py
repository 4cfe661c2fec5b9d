"""The pipeline sources (notebooks/pipeline/*.py) run unchanged on three runtimes.

* They import only the public ``pyspark.pipelines`` API and course modules that import nothing
  engine-internal (no ``graph_element_registry``, ``flow``, ``output``, no local runner): checked
  on their import statements and in a subprocess where those modules cannot be imported.
* Loaded with a ``dp`` shaped like open-source PySpark 4.2 (no ``expect*``, SCD type 1 only)
  they define the OSS fallbacks; shaped like Databricks, the native definitions.
* The fallbacks give what the Databricks-shaped path gives, where both run (Sail + local runner).
* The helpers build their plans without analysis requests, which the official CLI refuses
  inside query functions (ATTEMPT_ANALYSIS_IN_PIPELINE_QUERY_FUNCTION).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.test_pipelines import CHANGES_VIEW

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = ROOT / "notebooks" / "pipeline"
SOURCES = sorted(PIPELINE.glob("*.py"))
ENGINE_INTERNAL = ["pyspark.pipelines.graph_element_registry", "pyspark.pipelines.flow",
                   "pyspark.pipelines.output", "pyspark.pipelines.api",
                   "pyspark.pipelines.spark_connect_graph_element_registry",
                   "pyspark.pipelines.spark_connect_pipeline",
                   "utils.pipelines.runner", "utils.pipelines.registry",
                   "utils.pipelines.graph", "utils.pipelines.sources"]


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found += [f"{node.module}.{alias.name}" for alias in node.names]
    return found


def test_sources_import_only_the_public_api_and_course_modules():
    assert len(SOURCES) == 4
    for source in SOURCES:
        for name in _imports(source):
            allowed = (name == "pyspark.pipelines" or name.startswith("pyspark.sql.")
                       or (name.startswith("utils.") and not name.startswith(
                           tuple(m + "." for m in ENGINE_INTERNAL)) and name not in ENGINE_INTERNAL))
            assert allowed, f"{source.name} imports {name}"


def _course_modules() -> list[str]:
    """The course modules the sources import (``utils.x`` or ``utils.x.y``, without the name)."""
    import importlib.util

    modules = set()
    for source in SOURCES:
        for name in _imports(source):
            if name.startswith("utils."):
                parent = name.rsplit(".", 1)[0]
                try:                                   # `from utils import gold`: a module
                    module = name if importlib.util.find_spec(name) is not None else parent
                except ModuleNotFoundError:            # `from utils.bronze import ENTITY_SPECS`
                    module = parent
                modules.add(module)
    return sorted(modules)


def _run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_REMOTE", "COURSE_ENGINE")}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300, check=False)


def test_source_dependencies_import_with_engine_internals_blocked():
    modules = _course_modules()
    assert {"utils.pipelines.medallion", "utils.pipelines.compat", "utils.silver"} <= set(modules)
    code = textwrap.dedent(f"""
        import importlib, json, sys
        for name in {ENGINE_INTERNAL!r}:
            sys.modules[name] = None          # importing it now raises ImportError
        for name in {modules!r}:
            importlib.import_module(name)
        print(json.dumps(sorted(m for m, v in sys.modules.items() if v is not None
                                and m.startswith(("pyspark.pipelines", "utils.pipelines")))))
    """)
    done = _run_python(code)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == ["utils.pipelines", "utils.pipelines.compat", "utils.pipelines.medallion"], \
        "the sources' dependencies imported pipeline engine modules: " + ", ".join(loaded)


# A ``pyspark.pipelines`` with only what a runtime offers; the real engine modules are blocked.
STUB = textwrap.dedent("""
    import json, os, runpy, sys, types, typing
    os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"     # Columns without a session, as in the CLI
    for name in BLOCKED:
        sys.modules[name] = None
    import pyspark
    shape, files = sys.argv[1], sys.argv[2:]
    dp = types.ModuleType("pyspark.pipelines")
    defined, rules = [], []

    def decorator(kind):
        def outer(func=None, *, name=None, **options):
            def register(f):
                defined.append([kind, name or f.__name__, hasattr(f, "__wrapped__")])
            return register(func) if callable(func) else register
        return outer

    dp.table, dp.materialized_view = decorator("st"), decorator("mv")
    dp.temporary_view, dp.append_flow = decorator("view"), decorator("flow")
    dp.create_streaming_table = lambda name, **options: defined.append(["st", name, False])
    if shape == "oss":
        def create_auto_cdc_flow(target, source, keys, sequence_by, apply_as_deletes=None,
                                 column_list=None, except_column_list=None,
                                 stored_as_scd_type: typing.Optional[typing.Literal[1, "1"]] = None,
                                 name=None):
            if stored_as_scd_type is not None and str(stored_as_scd_type) != "1":
                raise TypeError("Argument `stored_as_scd_type` should be Literal[1, '1']")
            defined.append(["auto_cdc", target, str(stored_as_scd_type)])
    else:
        def create_auto_cdc_flow(target, source, keys, sequence_by, apply_as_deletes=None,
                                 column_list=None, except_column_list=None,
                                 stored_as_scd_type=None, name=None):
            defined.append(["auto_cdc", target, str(stored_as_scd_type)])

        def native(action):
            def factory(name, condition):
                def attach(f):
                    rules.append(action)
                    return f
                return attach
            return factory

        dp.expect, dp.expect_or_drop, dp.expect_or_fail = map(native, ["warn", "drop", "fail"])
    dp.create_auto_cdc_flow = create_auto_cdc_flow
    sys.modules["pyspark.pipelines"] = pyspark.pipelines = dp
    for file in files:
        runpy.run_path(file, init_globals={"spark": None})
    print(json.dumps({"defined": defined, "native_rules": len(rules)}))
""")


def _define(shape: str) -> dict:
    code = f"BLOCKED = {ENGINE_INTERNAL!r}\n" + STUB
    done = _run_python(code, shape, *map(str, SOURCES))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_sources_define_the_oss_fallbacks_from_the_public_api_only():
    result = _define("oss")
    kinds = {name: (kind, wrapped) for kind, name, wrapped in result["defined"]}
    assert kinds["silver_patients_scd2"] == ("mv", False)          # SCD2 as a materialized view
    assert kinds["silver_patients_scd2_changes"] == ("st", False)  # over every change event
    assert not [d for d in result["defined"] if d[0] == "auto_cdc"]
    checked = [name for name, (kind, wrapped) in kinds.items() if name.endswith("_checked")]
    assert len(checked) == 8 and all(kinds[n] == ("view", True) for n in checked)  # filters
    assert result["native_rules"] == 0


def test_sources_define_the_native_datasets_where_the_runtime_has_them():
    result = _define("databricks")
    kinds = {name: (kind, wrapped) for kind, name, wrapped in result["defined"]
             if kind != "auto_cdc"}
    assert kinds["silver_patients_scd2"] == ("st", False)
    assert ["auto_cdc", "silver_patients_scd2", "2"] in result["defined"]
    assert "silver_patients_scd2_changes" not in kinds
    assert all(not wrapped for kind, wrapped in kinds.values())     # native decorators only
    assert result["native_rules"] > 100                             # every silver/CDC rule


# ----- the fallbacks equal the native path (Sail) -------------------------------------------------
def test_expectation_fallback_keeps_what_apply_expectations_keeps(spark):
    from utils.expectations import Expectation, apply_expectations
    from utils.pipelines.compat import enforce_expectations

    df = spark.createDataFrame([(1, 5, "a"), (2, -1, "b"), (3, None, "c"), (4, 20, None)],
                               "id int, amount int, code string")
    rules = [Expectation("small", "amount < 10", "warn"),
             Expectation("positive", "amount > 0", "drop"),
             Expectation("coded", "code IS NOT NULL", "drop")]
    kept = sorted(tuple(r) for r in enforce_expectations(df, rules).collect())
    assert kept == sorted(tuple(r) for r in apply_expectations(df, rules).valid.collect())
    assert kept == [(1, 5, "a")]
    with pytest.raises(Exception, match="Expectation 'nonneg' \\(amount >= 0\\) failed"):
        enforce_expectations(df, [Expectation("nonneg", "amount >= 0", "fail")]).collect()
    assert enforce_expectations(df, [Expectation("ids", "id > 0", "fail")]).count() == 4


SCD2_BOTH = """
    from utils.pipelines import compat
""" + CHANGES_VIEW + """
    cdc = dict(source="changes", keys=["id"], sequence_by="seq", apply_as_deletes="op = 'D'",
               except_column_list=["op"], stored_as_scd_type=2)
    compat.create_auto_cdc_table("native_scd2", **cdc)
    del cdc["stored_as_scd_type"]
    compat.define_scd2_fallback("fallback_scd2", **cdc)
"""


def test_scd2_fallback_equals_auto_cdc_with_late_replayed_and_deleted_changes(spark, data_dir,
                                                                               tmp_path):
    from tests.test_pipelines import land_changes, make_pipeline, rows
    from utils.pipelines import load_pipeline

    land_changes(data_dir, "2025-01-01", ["c1,I,1,Boston", "c2,I,1,Austin", "c1,U,3,Denver"])
    folder = make_pipeline(tmp_path, SCD2_BOTH, name="scd2_both")
    pipeline = load_pipeline(folder, spark)
    kinds = {name: node.kind for name, node in pipeline.graph.datasets.items()}
    assert (kinds["native_scd2"], kinds["fallback_scd2"]) == ("st", "mv"), kinds
    pipeline.run(lineage=False)
    # day 2: a late change for c1 (seq 2 < 3), a delete of c2, a re-delivered c2 insert
    land_changes(data_dir, "2025-01-02", ["c1,U,2,Chicago", "c2,D,4,", "c3,I,5,Miami",
                                          "c2,I,1,Austin"])
    load_pipeline(folder, spark).run(lineage=False)

    native = rows(spark, "scd2_both.native_scd2", "id, __START_AT")
    assert spark.table("scd2_both.fallback_scd2").columns == \
        spark.table("scd2_both.native_scd2").columns == ["id", "seq", "city", "__START_AT",
                                                         "__END_AT"]
    assert rows(spark, "scd2_both.fallback_scd2", "id, __START_AT") == native
    assert native == [("c1", 1, "Boston", 1, 2), ("c1", 2, "Chicago", 2, 3),
                      ("c1", 3, "Denver", 3, None), ("c2", 1, "Austin", 1, 4),
                      ("c3", 5, "Miami", 5, None)]


def test_scd2_versions_orders_a_struct_sequence_by_its_fields(spark):
    from pyspark.sql import functions as F

    from utils.pipelines.compat import scd2_versions

    events = spark.createDataFrame(
        [("k", "2025-01-02", 1, "U", "b"), ("k", "2025-01-01", 9, "I", "a"),
         ("k", "2025-01-02", 2, "D", None)], "k string, ts string, id int, op string, v string")
    out = scd2_versions(events, ["k"], F.struct("ts", "id"), "op = 'D'",
                        except_column_list=["op", "ts", "id"], sequence_fields=["ts", "id"])
    got = [(r["k"], r["v"], r["__START_AT"]["id"], r["__END_AT"]["id"])
           for r in out.orderBy("__START_AT.ts").collect()]
    assert got == [("k", "a", 9, 1), ("k", "b", 1, 2)]


# ----- no analysis inside query functions ---------------------------------------------------------
def test_pipeline_helpers_build_plans_without_analysis(spark, monkeypatch, tmp_path):
    """The official CLI runs each query function with an analysis context and the server
    refuses schema requests, DDL parsing and execution there; Sail does not, so any such call
    is made to fail here. (The course's own sources, with every silver and gold helper they
    call, are probed as a whole in test_course_pipeline_gold_equals_the_imperative_gold.)"""
    from pyspark.sql import functions as F
    from pyspark.sql.connect.client.core import SparkConnectClient

    from utils.expectations import Expectation
    from utils.frames import distinct_rows, drop_columns
    from utils.pipelines.compat import enforce_expectations, scd2_versions
    from utils.pipelines.medallion import bronze_lines
    from utils.pipelines.official_check import EAGER_RELATIONS

    files = spark.read.format("binaryFile").load(str(tmp_path))
    events = spark.range(3).select(F.col("id").cast("string").alias("k"), F.col("id").alias("seq"),
                                   F.lit("I").alias("op"))

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"analysis request inside a query function: {args[:1]}")

    monkeypatch.setattr(SparkConnectClient, "_analyze", refuse)
    plans = [bronze_lines(files, "ehr_patients", "csv"),
             scd2_versions(events, ["k"], "seq", "op = 'D'", except_column_list=["op"]),
             scd2_versions(events, ["k"], F.struct("seq"), column_list=["k"]),
             enforce_expectations(events, [Expectation("a", "seq > 0", "drop"),
                                           Expectation("b", "seq < 9", "fail")],
                                  metrics_name="m"),
             drop_columns(events, "op"), distinct_rows(events, "k", "op")]
    for df in plans:
        plan = str(df._plan.plan(spark.client))
        # relations a Spark Connect server plans by analysing their input at once (it is a
        # pipeline dataset that does not exist yet when the CLI defines the flow)
        assert not [rel for rel in EAGER_RELATIONS if rel in plan], plan[:300]


# ----- the official spec ---------------------------------------------------------------------------
def test_official_spec_loads_the_local_runner_sources():
    from pyspark.pipelines.cli import load_pipeline_spec

    from utils.pipelines.official_check import official_spec_text
    from utils.pipelines.spec import load_spec

    local = yaml.safe_load((PIPELINE / "pipeline.yml").read_text())
    official = yaml.safe_load((PIPELINE / "spark-pipeline.yml").read_text())
    assert official["name"] == local["name"] and official["libraries"] == local["libraries"]
    spec = load_pipeline_spec(PIPELINE / "spark-pipeline.yml")      # the CLI's own parser
    assert spec.storage.startswith("file:///") and spec.database == "default"
    assert "spark.sql.extensions" not in spec.configuration     # static: engine conf, not here
    run_dir = ROOT / "data" / "pipelines" / "official" / "run"   # not created
    copy = yaml.safe_load(official_spec_text(run_dir, run_dir / "storage"))
    resolved = [(run_dir / lib["glob"]["include"]).resolve() for lib in copy["libraries"]]
    assert resolved == load_spec(PIPELINE).source_files()
    assert copy["storage"] == (run_dir / "storage").resolve().as_uri()


def test_check_compares_delta_tables_row_for_row(tmp_path):
    import pandas as pd
    from deltalake import write_deltalake

    from utils.pipelines.official_check import Report, compare_tables

    # an array column too, as gold.patient_summary's chronic_conditions
    frame = pd.DataFrame({"k": ["b", "a", None], "v": [2.5, 1.0, None],
                          "conditions": [["copd", "diabetes"], [], None]})
    write_deltalake(str(tmp_path / "a"), frame)
    write_deltalake(str(tmp_path / "b"), frame.iloc[[2, 0, 1]].reset_index(drop=True))          # other order
    write_deltalake(str(tmp_path / "c"), frame.assign(v=[2.5, 1.0, 3.0]))
    assert compare_tables(tmp_path / "a", tmp_path / "b") == (3, 3, "equal")
    assert compare_tables(tmp_path / "a", tmp_path / "c")[2].startswith("first differing row")
    assert compare_tables(tmp_path / "a", tmp_path / "x") == (None, None,
                                                              "missing in the spark-pipelines run")
    report = Report(tmp_path, tables=[("gold_x", 3, 3, "equal"), ("gold_y", 1, 2, "row counts differ")])
    assert not report.equal and report.lines()[-1] == "DIFFERENT: 1 of 2 gold tables equal row for row"
