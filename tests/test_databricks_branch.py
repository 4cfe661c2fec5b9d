"""The notebooks' Databricks branch, without Databricks.

Databricks is not reachable from here, so these tests put the course in its Databricks mode the
way a runtime does (``DATABRICKS_RUNTIME_VERSION``, ``CourseConfig(databricks=True)``) and run
the real helpers. A recording session stands in for Databricks' own only where the test needs
what only Databricks answers (``DESCRIBE HISTORY`` of a managed table, a serverless session
that refuses Spark confs); everything else runs on the course's engine.

The last part reads every notebook's code cells and every pipeline source (``ast``) and fails
when one calls a helper of :data:`utils.local_only.LOCAL_ONLY_HELPERS` outside a local-only
branch.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as metadata
import json
from pathlib import Path
from typing import Any

import pytest

from utils import doctor
from utils.config import REPO_ROOT, CourseConfig

NOTEBOOKS = REPO_ROOT / "notebooks"


class RecordingSession:
    """What a Databricks serverless session answers, for the few statements a test needs:
    ``sql`` returns the rows given for a statement's first words and records every statement;
    ``conf.set`` refuses, as serverless does for properties outside its short list."""

    class _Conf:
        def __init__(self, accepts: bool):
            self.accepts, self.set_calls = accepts, []

        def set(self, key: str, value: str) -> None:
            self.set_calls.append((key, value))
            if not self.accepts:
                raise RuntimeError(f"[CONFIG_NOT_AVAILABLE] Configuration {key} is not available.")

        def unset(self, key: str) -> None:
            self.set_calls.append((key, None))

    class _Result:
        def __init__(self, rows: list[dict[str, Any]]):
            self.rows = rows

        def collect(self) -> list[dict[str, Any]]:
            return list(self.rows)

        def first(self) -> dict[str, Any] | None:
            return self.rows[0] if self.rows else None

        def where(self, condition: str) -> "RecordingSession._Result":
            column, value = (part.strip() for part in condition.split("="))
            return RecordingSession._Result([r for r in self.rows if str(r[column]) == value])

    def __init__(self, answers: dict[str, list[dict[str, Any]]] | None = None,
                 accepts_confs: bool = False):
        self.answers, self.statements = answers or {}, []
        self.conf = self._Conf(accepts_confs)

    def sql(self, statement: str) -> "RecordingSession._Result":
        self.statements.append(" ".join(statement.split()))
        for prefix, rows in self.answers.items():
            if statement.strip().startswith(prefix):
                return self._Result(rows)
        return self._Result([])


#: Notebooks that drive the local pipeline runner (an item of issue 15 owned elsewhere): its
#: lineage file and its tables are local only, so they are not checked here yet.
LOCAL_RUNNER_NOTEBOOKS = ("notebooks/07_declarative_pipeline.ipynb",
                          "notebooks/solutions/07_declarative_pipeline.ipynb")


def _code_cells(notebook: Path) -> str:
    """The notebook's code cells as one module (magics and shell lines left out)."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    lines = []
    for cell in cells:
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            lines += [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    return "\n".join(lines)


def _sources() -> list[tuple[str, str]]:
    found = [(str(nb.relative_to(REPO_ROOT)), _code_cells(nb))
             for nb in sorted([*NOTEBOOKS.glob("*.ipynb"), *NOTEBOOKS.glob("solutions/*.ipynb")])]
    found += [(str(py.relative_to(REPO_ROOT)), py.read_text(encoding="utf-8"))
              for py in sorted(NOTEBOOKS.glob("pipeline/*.py"))]
    return found


def _code_units() -> list[tuple[str, ast.Module]]:
    return [(where, ast.parse(text, filename=where)) for where, text in _sources()]


@pytest.fixture
def on_databricks(monkeypatch, data_dir):
    """The environment of a Databricks runtime (its marker variable, the default catalog)."""
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "17.3")
    monkeypatch.delenv("COURSE_CATALOG", raising=False)
    return CourseConfig(data_root=data_dir, databricks=True)


# ----- 1. notebook 00: the environment check ----------------------------------------------------
def _without(*missing: str, pyspark: str | None = None):
    real = metadata.version

    def version(name: str) -> str:
        if name in missing:
            raise metadata.PackageNotFoundError(name)
        if name == "pyspark" and pyspark:
            return pyspark
        return real(name)
    return version


def test_databricks_check_needs_no_local_engine(monkeypatch, on_databricks):
    monkeypatch.setattr(doctor.metadata, "version", _without("pysail", "deltalake", "delta-spark"))
    versions = doctor.check_environment()
    assert (versions["engine"], versions["runtime"]) == ("databricks", "17.3")
    assert versions["pyspark"] == metadata.version("pyspark")
    assert doctor.version_lines(versions) == [
        f"pyspark    {versions['pyspark']}", f"faker      {metadata.version('faker')}",
        "runtime    17.3", "engine     databricks"]


def test_databricks_with_spark_3_is_refused_with_the_runtime_to_pick(monkeypatch, on_databricks):
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "15.4")
    monkeypatch.setattr(doctor.metadata, "version", _without("pysail", pyspark="3.5.2"))
    with pytest.raises(doctor.EnvironmentProblem) as err:
        doctor.check_environment()
    assert str(err.value) == (
        "Databricks runtime 15.4 runs Spark 3.5.2; the course uses Spark 4.0 APIs "
        "(Column.try_cast, DataFrame.toArrow): use DBR 17.x LTS or newer, or a serverless "
        "environment version with Spark 4.")


def test_databricks_without_faker_says_where_to_declare_it(monkeypatch, on_databricks):
    monkeypatch.setattr(doctor.metadata, "version", _without("pysail", "faker"))
    with pytest.raises(doctor.EnvironmentProblem,
                       match=r"^faker is not installed on this Databricks compute: add `faker` to "
                             r"the job environment's dependencies"):
        doctor.check_environment()


def test_local_check_prints_the_same_lines_as_before(monkeypatch):
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    monkeypatch.delenv("COURSE_ENGINE", raising=False)
    monkeypatch.delenv("SPARK_REMOTE", raising=False)
    versions = doctor.check_environment()
    assert doctor.version_lines(versions) == [
        f"pyspark    {metadata.version('pyspark')}", f"pysail     {metadata.version('pysail')}",
        f"deltalake  {metadata.version('deltalake')}", "engine     sail"]


# ----- 2. notebook 02: reset_bronze and the commit log ------------------------------------------
def test_reset_bronze_keeps_databricks_tables(spark, data_dir, capsys):
    from tests.test_gold import forget_course_tables
    from utils.bronze import reset_bronze
    from utils.tables import write_table

    forget_course_tables(spark)
    write_table(spark.range(3).selectExpr("CAST(id AS STRING) AS value"), "bronze", "encounters")
    assert reset_bronze(spark, CourseConfig(data_root=data_dir, databricks=True)) == []
    assert capsys.readouterr().out == ("Bronze is append-only on Databricks: its tables are kept, "
                                       "and the runs below add only files not ingested yet.\n")
    assert spark.table("bronze.encounters").count() == 3
    assert (data_dir / "lakehouse" / "bronze" / "encounters" / "_delta_log").is_dir()


#: ``DESCRIBE HISTORY`` of a bronze table after CREATE TABLE and two appends, newest first, as
#: Databricks returns it (the columns delta_log_commits reads).
HISTORY = [
    {"version": 2, "operation": "WRITE", "operationParameters": {"mode": "Append"},
     "isBlindAppend": True, "operationMetrics": {"numFiles": "1", "numOutputRows": "4037"}},
    {"version": 1, "operation": "WRITE", "operationParameters": {"mode": "Append"},
     "isBlindAppend": True, "operationMetrics": {"numFiles": "1", "numOutputRows": "519"}},
    {"version": 0, "operation": "CREATE TABLE", "operationParameters": {"isManaged": "true"},
     "isBlindAppend": True, "operationMetrics": {}},
]


def test_delta_log_commits_on_databricks_reads_describe_history(on_databricks):
    from utils.bronze import delta_log_commits

    session = RecordingSession({"DESCRIBE HISTORY": HISTORY})
    commits = delta_log_commits("encounters", on_databricks, spark=session)
    assert session.statements == ["DESCRIBE HISTORY medallion_course.bronze.encounters"]
    assert commits == [
        {"version": 0, "log_file": "_delta_log/00000000000000000000.json",
         "operation": "CREATE TABLE", "mode": None, "added_files": 0, "rows_added": 0},
        {"version": 1, "log_file": "_delta_log/00000000000000000001.json",
         "operation": "WRITE", "mode": "Append", "added_files": 1, "rows_added": 519},
        {"version": 2, "log_file": "_delta_log/00000000000000000002.json",
         "operation": "WRITE", "mode": "Append", "added_files": 1, "rows_added": 4037}]


def test_commit_actions_on_databricks_is_the_commit_info_of_history(on_databricks):
    from utils.bronze import commit_actions

    session = RecordingSession({"DESCRIBE HISTORY": HISTORY})
    assert commit_actions("encounters", 1, on_databricks, spark=session) == [{"commitInfo": {
        "operation": "WRITE", "operationParameters": {"mode": "Append"}, "isBlindAppend": True,
        "operationMetrics": {"numFiles": "1", "numOutputRows": "519"}}}]


def test_commit_actions_locally_are_the_commit_file_lines(spark, data_dir):
    from tests.test_gold import forget_course_tables
    from utils.bronze import commit_actions, delta_log_commits
    from utils.config import get_config
    from utils.tables import write_table

    forget_course_tables(spark)
    write_table(spark.range(4).selectExpr("CAST(id AS STRING) AS value"), "bronze", "encounters")
    write_table(spark.range(2).selectExpr("CAST(id AS STRING) AS value"), "bronze", "encounters",
                mode="append")
    actions = commit_actions("encounters", 1)
    assert {"commitInfo", "add"} <= {next(iter(a)) for a in actions}
    adds = [a["add"] for a in actions if "add" in a]
    assert [json.loads(a["stats"])["numRecords"] for a in adds] == [2]
    assert [c["rows_added"] for c in delta_log_commits("encounters", get_config())] == [4, 2]


# ----- 3. notebooks 06 and 08: the paths they print ---------------------------------------------
def test_shown_path_is_relative_below_the_data_root_else_full(tmp_path):
    from utils.teaching import shown_path

    local = CourseConfig(data_root=tmp_path)
    assert shown_path(local.reports_dir / "dq_scorecard.png", local) == "reports/dq_scorecard.png"
    assert shown_path(local.reports_dir, local) == "reports"
    databricks = CourseConfig(data_root=tmp_path, databricks=True, catalog="main")
    assert shown_path(databricks.reports_dir / "dq_scorecard.png", databricks) == \
        "/Volumes/main/landing/files/reports/dq_scorecard.png"


def test_no_notebook_makes_a_path_relative_to_the_data_root_by_hand():
    """``.relative_to(config.data_root)`` raises for a volume path: notebooks use shown_path."""
    found = [f"{where}: {ast.unparse(node)}" for where, tree in _code_units()
             if where not in LOCAL_RUNNER_NOTEBOOKS   # the local runner's lineage file
             for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and node.func.attr == "relative_to"
             and any(isinstance(a, ast.Attribute) and a.attr == "data_root" for a in node.args)]
    assert found == []


# ----- 4. notebook 08: Spark confs only where the engine accepts them ---------------------------
def test_optimize_with_a_target_size_sets_no_conf_on_databricks(on_databricks):
    from utils import delta_ops

    session = RecordingSession({"OPTIMIZE": [{"metrics": {"numFilesAdded": 2, "numFilesRemoved": 24}}]})
    got = delta_ops.optimize(session, "scratch", "encounters_layout", zorder_by=["facility_id"],
                             target_size=1000)
    assert got == {"numFilesAdded": 2, "numFilesRemoved": 24}
    assert session.conf.set_calls == []
    assert session.statements == [
        "ALTER TABLE scratch.encounters_layout SET TBLPROPERTIES ('delta.targetFileSize' = '1000')",
        "OPTIMIZE scratch.encounters_layout ZORDER BY (facility_id)",
        "ALTER TABLE scratch.encounters_layout UNSET TBLPROPERTIES IF EXISTS ('delta.targetFileSize')"]


def test_vacuum_below_the_retention_sets_no_conf_on_databricks(on_databricks):
    from utils import delta_ops

    location = "s3://bucket/tables/abc"
    session = RecordingSession({"DESCRIBE DETAIL": [{"location": location}],
                                "VACUUM": [{"path": f"{location}/part-1.parquet"}]})
    files = delta_ops.vacuum(session, "scratch", "encounters_layout", retention_hours=0,
                             dry_run=False, enforce_retention=False)
    assert files == ["part-1.parquet"]
    assert session.conf.set_calls == []
    assert session.statements == [
        "ALTER TABLE scratch.encounters_layout SET TBLPROPERTIES "
        "('delta.deletedFileRetentionDuration' = 'interval 0 hours')",
        "DESCRIBE DETAIL scratch.encounters_layout",
        "VACUUM scratch.encounters_layout RETAIN 0 HOURS DRY RUN",
        "VACUUM scratch.encounters_layout RETAIN 0 HOURS"]


def test_spark_with_delta_still_uses_the_session_confs(spark, data_dir, monkeypatch):
    """JVM Delta / a Delta Spark Connect server: the confs are set for the command, then unset."""
    from utils import delta_ops

    delta_ops.write_scratch(spark.range(3), "conf_demo")
    monkeypatch.setattr(delta_ops, "uses_sql", lambda: True)
    session = RecordingSession({"OPTIMIZE": [{"metrics": {"numFilesAdded": 1, "numFilesRemoved": 1}}],
                                "DESCRIBE DETAIL": [{"location": "file:/x"}]}, accepts_confs=True)
    delta_ops.optimize(session, "scratch", "conf_demo", target_size=1000)
    delta_ops.vacuum(session, "scratch", "conf_demo", retention_hours=0, enforce_retention=False)
    assert session.conf.set_calls == [
        ("spark.databricks.delta.optimize.maxFileSize", "1000"),
        ("spark.databricks.delta.optimize.maxFileSize", None),
        ("spark.databricks.delta.retentionDurationCheck.enabled", "false"),
        ("spark.databricks.delta.retentionDurationCheck.enabled", None)]
    assert not any(s.startswith("ALTER TABLE") for s in session.statements)


# ----- 5. the scorecard and the funnel count through the catalog --------------------------------
def test_counts_come_from_the_catalog_not_a_local_folder(spark, data_dir, tmp_path_factory):
    """Tables the catalog has and the lakehouse folder does not (as on Databricks) are counted."""
    from tests.test_gold import forget_course_tables
    from utils import plots
    from utils.tables import write_table

    forget_course_tables(spark)

    def rows(n):
        return spark.range(n).selectExpr("CAST(id AS INT) AS id")

    write_table(rows(5), "bronze", "encounters")
    write_table(rows(3), "silver", "encounters")
    write_table(rows(1), "silver", "quarantine_encounters")
    write_table(rows(4), "gold", "payer_mix")
    elsewhere = CourseConfig(data_root=tmp_path_factory.mktemp("empty-root"), databricks=True)
    assert not elsewhere.lakehouse_dir.exists()

    got = plots.layer_row_counts(spark, elsewhere, landing={"claims": 0, "encounters": 5})
    assert list(got.itertuples(index=False, name=None)) == [
        ("landing", "claims", 0), ("landing", "encounters", 5), ("bronze", "encounters", 5),
        ("silver", "encounters", 3), ("gold", "payer_mix", 4)]
    assert plots.quarantine_counts(spark, elsewhere) == {"encounters": 1}


# ----- 6. no notebook or pipeline source calls a local-only helper unguarded ---------------------
def _is_databricks_test(node: ast.expr) -> bool | None:
    """True for ``on_databricks()`` / ``<x>.databricks``, False for their negation, else None."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        inner = _is_databricks_test(node.operand)
        return None if inner is None else not inner
    if isinstance(node, ast.Call) and not node.args:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        return True if name == "on_databricks" else None
    if isinstance(node, ast.Attribute) and node.attr == "databricks":
        return True
    return None


def _terminates(body: list[ast.stmt]) -> bool:
    return bool(body) and isinstance(body[-1], (ast.Return, ast.Raise, ast.Continue, ast.Break))


def _imported_names(tree: ast.Module) -> dict[str, str]:
    """Local name -> qualified name of what it is bound to by the module's imports."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    names[alias.name.split(".")[0]] = alias.name.split(".")[0]
    return names


def _canonical(dotted: str) -> str:
    """``utils.existing_tables`` -> ``utils.tables.existing_tables`` (where it is defined)."""
    module, _, attr = dotted.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        try:  # a module, not a function
            importlib.import_module(dotted)
        except ImportError:
            pass
        return dotted
    if callable(obj) and getattr(obj, "__module__", None) and getattr(obj, "__qualname__", None):
        return f"{obj.__module__}.{obj.__qualname__}"
    return dotted


def _called_name(func: ast.expr, imports: dict[str, str]) -> str | None:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name) or func.id not in imports:
        return None
    return ".".join([imports[func.id], *reversed(parts)])


def unguarded_local_only_calls(where: str, tree: ast.Module) -> list[str]:
    """``<where>:<line> <helper>`` for each call of a local-only helper that can run on
    Databricks: not under ``if not <databricks>``, the ``else`` of ``if <databricks>``, after an
    ``if <databricks>: ... return`` in the same block, or the right side of
    ``<databricks> or ...``."""
    from utils.local_only import LOCAL_ONLY_HELPERS

    imports = _imported_names(tree)
    local_only = set(LOCAL_ONLY_HELPERS)
    found: list[str] = []

    def visit(node: ast.AST, local: bool) -> None:
        if isinstance(node, (ast.If, ast.IfExp)):
            test = _is_databricks_test(node.test)
            visit(node.test, local)
            body = node.body if isinstance(node.body, list) else [node.body]
            orelse = node.orelse if isinstance(node.orelse, list) else [node.orelse]
            for child in body:
                visit(child, local or test is False)
            for child in orelse:
                visit(child, local or test is True)
            return
        if isinstance(node, ast.BoolOp) and node.values:
            test = _is_databricks_test(node.values[0])
            safe_rest = (isinstance(node.op, ast.Or) and test is True) or \
                        (isinstance(node.op, ast.And) and test is False)
            visit(node.values[0], local)
            for value in node.values[1:]:
                visit(value, local or safe_rest)
            return
        if isinstance(node, ast.Call) and not local:
            name = _called_name(node.func, imports)
            if name and _canonical(name) in local_only:
                found.append(f"{where}:{node.lineno} {_canonical(name)}")
        for _field, value in ast.iter_fields(node):
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                visit_block(value, local)
            elif isinstance(value, list):
                for child in value:
                    if isinstance(child, ast.AST):
                        visit(child, local)
            elif isinstance(value, ast.AST):
                visit(value, local)

    def visit_block(block: list[ast.stmt], local: bool) -> None:
        for stmt in block:
            visit(stmt, local)
            if isinstance(stmt, ast.If) and _is_databricks_test(stmt.test) is True \
                    and _terminates(stmt.body):
                local = True   # what follows runs only when not on Databricks

    visit_block(tree.body, False)
    return found


#: Known gaps, each an item of issue 15 owned elsewhere: the test expects them to fail (strict),
#: so fixing one makes this list shrink.
KNOWN_UNGUARDED = {
    where: "issue 15: notebook 07 drives the local pipeline runner (load_pipeline) unguarded"
    for where in LOCAL_RUNNER_NOTEBOOKS}


@pytest.mark.parametrize("where", [w for w, _ in _sources()])
def test_no_unguarded_local_only_call(where):
    if where in KNOWN_UNGUARDED:
        pytest.xfail(KNOWN_UNGUARDED[where])
    tree = dict(_code_units())[where]
    assert unguarded_local_only_calls(where, tree) == []


def test_known_gaps_are_still_gaps():
    """A known gap that is fixed must leave KNOWN_UNGUARDED (else it hides a regression)."""
    units = dict(_code_units())
    assert {w for w in KNOWN_UNGUARDED if unguarded_local_only_calls(w, units[w])} == set(KNOWN_UNGUARDED)


def test_every_local_only_helper_exists():
    from utils.local_only import LOCAL_ONLY_HELPERS

    for name in LOCAL_ONLY_HELPERS:
        assert _canonical(name) == name, f"{name} is not where LOCAL_ONLY_HELPERS says"


def _cell(source: str) -> ast.Module:
    return ast.parse(source)


def test_an_unguarded_call_in_a_notebook_cell_is_found():
    cell = _cell("from utils import delta_ops\n"
                 "print(delta_ops.log_files('scratch', 'encounters'))\n")
    assert unguarded_local_only_calls("synthetic.ipynb", cell) == \
        ["synthetic.ipynb:2 utils.delta_ops.log_files"]
    re_exported = _cell("from utils import existing_tables as tables\nfor t in tables(): pass\n")
    assert unguarded_local_only_calls("synthetic.ipynb", re_exported) == \
        ["synthetic.ipynb:2 utils.tables.existing_tables"]
    on_the_databricks_side = _cell(
        "from utils import delta_ops, on_databricks\n"
        "if on_databricks():\n    delta_ops.latest_checkpoint('scratch', 'x')\n")
    assert unguarded_local_only_calls("synthetic.ipynb", on_the_databricks_side) == \
        ["synthetic.ipynb:3 utils.delta_ops.latest_checkpoint"]


def test_guarded_calls_are_accepted():
    cell = _cell(
        "from utils import delta_ops, get_config, on_databricks\n"
        "config = get_config()\n"
        "if not config.databricks:\n    delta_ops.log_files('scratch', 'a')\n"
        "if on_databricks():\n    print('DESCRIBE HISTORY')\n"
        "else:\n    delta_ops.read_commit('scratch', 'a')\n"
        "def report():\n"
        "    if config.databricks:\n        return None\n"
        "    return delta_ops.files_scanned(None, 'scratch', 'a')\n"
        "x = None if config.databricks else delta_ops.file_stats(None, 'scratch', 'a')\n"
        "assert config.databricks or delta_ops.latest_checkpoint('scratch', 'a') is None\n")
    assert unguarded_local_only_calls("synthetic.ipynb", cell) == []
