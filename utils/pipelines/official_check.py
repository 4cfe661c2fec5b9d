"""``python -m utils.pipelines.official_check``: the official CLI runs the course pipeline too.

The course's declarative pipeline (``notebooks/pipeline/``) runs on the embedded engine through
the course's own runner (``python -m utils.pipelines``). This check runs the *same source files,
unchanged*, with the open-source ``spark-pipelines`` CLI of the pyspark wheel on JVM Spark with
Delta Lake, and proves both give the same gold tables, row for row:

1. generate the default dataset into the data folder (``$COURSE_DATA_DIR``) if it has none;
2. run the local runner on Sail (``python -m utils.pipelines full-refresh notebooks/pipeline``);
   then (2b) probe, on Sail in seconds, whether any query function makes an engine call the
   CLI refuses while it defines the flows (:func:`probe_definitions`); if so, list each with
   the course function to change and stop (``--no-probe`` runs the CLI anyway);
3. run ``spark-pipelines run --spec <copy of notebooks/pipeline/spark-pipeline.yml>`` in
   ``<data root>/pipelines/official/run/`` (wiped first), against the Spark Connect server
   with Delta of ``utils.spark_server`` (the one ``make test-spark`` uses) on a free port
   (``--remote``: without it the CLI starts its own server on the fixed port 15002, and its
   ``--packages``/``--conf`` do not reach that JVM, measured); the pipeline's tables are
   Delta tables in that server's warehouse folder;
4. read both runs' gold Delta tables with ``deltalake`` (no JVM) and compare them row for
   row, as ``utils.compare_engines`` compares two engines' lakehouses.

Prints one screen (stages with their time, every gold table with both row counts and
equal/different) and exits 0 only when every gold table is equal; 1 when one differs or a run
fails, 2 when a prerequisite is missing (Java, Maven Central), with one line saying what to do.
Each run's full output is kept in ``<data root>/pipelines/official/*.log``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.config import REPO_ROOT, get_config
from utils.spark_server import delta_package, spark_home

PIPELINE_DIR = REPO_ROOT / "notebooks" / "pipeline"
OFFICIAL_SPEC = PIPELINE_DIR / "spark-pipeline.yml"
MAVEN_CENTRAL = "https://repo1.maven.org/maven2"


class CheckError(RuntimeError):
    """A prerequisite is missing or a stage failed: the message is the one line to print."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Stage:
    name: str
    seconds: float = 0.0
    note: str = ""


@dataclass
class Report:
    data_root: Path
    stages: list[Stage] = field(default_factory=list)
    tables: list[tuple[str, int | None, int | None, str]] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return bool(self.tables) and all(result == "equal" for *_, result in self.tables)

    def lines(self) -> list[str]:
        out = [f"official spark-pipelines check, data folder {self.data_root}", "",
               f"{'stage':<40} {'seconds':>8}  note"]
        out += [f"{s.name:<40} {s.seconds:8.1f}  {s.note}".rstrip() for s in self.stages]
        if self.tables:
            out += ["", f"{'gold table':<32} {'local runner':>12} {'spark-pipelines':>15}  result"]
            out += [f"{name:<32} {_n(a):>12} {_n(b):>15}  {result}"
                    for name, a, b, result in self.tables]
            same = sum(1 for *_, r in self.tables if r == "equal")
            out += ["", f"{'OK' if self.equal else 'DIFFERENT'}: {same} of {len(self.tables)} "
                        "gold tables equal row for row"]
        return out


def _n(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


# ----- prerequisites ---------------------------------------------------------------------------
def spark_pipelines_command() -> Path:
    """The ``spark-pipelines`` launcher: the venv's, else the one inside the pyspark package."""
    beside = Path(sys.executable).parent / "spark-pipelines"
    return beside if beside.exists() else spark_home() / "bin" / "spark-pipelines"


def _ivy_jar(package: str) -> Path | None:
    group, artifact, ver = package.split(":")
    for ivy in sorted(Path.home().glob(".ivy2*")):
        jar = ivy / "jars" / f"{group}_{artifact}-{ver}.jar"
        if jar.exists():
            return jar
    return None


def check_prerequisites(package: str) -> str:
    """Java 17+ on PATH/JAVA_HOME, the CLI, and the Delta jars (cached, or Maven Central
    reachable). Returns a short note; raises :class:`CheckError` (code 2) with the fix."""
    from utils.session import java_version

    java = java_version()
    if java is None:
        raise CheckError("No Java found: spark-pipelines runs on the JVM; install Java 17 "
                         "(Debian/Ubuntu: apt install openjdk-17-jre; conda: conda install "
                         "openjdk=17) or set JAVA_HOME.", 2)
    match = re.search(r'version "(\d+)', java)
    if match and int(match.group(1)) < 17:
        raise CheckError(f"Java 17 or newer is needed, found: {java}", 2)
    if not spark_pipelines_command().exists():
        raise CheckError("spark-pipelines not found: it ships with pyspark >= 4.1; reinstall "
                         "the course environment (make install).", 2)
    if _ivy_jar(package):
        return f"{java}; {package} cached"
    group, artifact, ver = package.split(":")
    url = f"{MAVEN_CENTRAL}/{group.replace('.', '/')}/{artifact}/{ver}/{artifact}-{ver}.pom"
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=15):
            pass
    except urllib.error.HTTPError as err:
        raise CheckError(f"Maven Central has no {package} (HTTP {err.code}): install a "
                         "delta-spark wheel whose jars are published.", 2) from None
    except (urllib.error.URLError, OSError) as err:
        raise CheckError(f"Cannot reach Maven Central ({getattr(err, 'reason', err)}): the "
                         f"first run downloads {package}; allow HTTPS to repo1.maven.org or "
                         "run once where it is reachable (the jars are then cached in ~/.ivy2*).",
                         2) from None
    return f"{java}; {package} from Maven Central"


# ----- stages ------------------------------------------------------------------------------------
def _course_env(data_root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SPARK_REMOTE", "COURSE_ENGINE", "PYSPARK_SUBMIT_ARGS")}
    env["COURSE_DATA_DIR"] = str(data_root)
    return env


def _run(command: list[str], log: Path, env: dict[str, str], cwd: Path | None = None,
         timeout: float = 3600) -> subprocess.CompletedProcess:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as out:
        try:
            return subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                  cwd=cwd, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise CheckError(f"{Path(command[0]).name} did not finish in {timeout:.0f} s; "
                             f"see {log}") from None


def _last_error(log: Path) -> str:
    """The line of ``log`` that says what failed (a Python exception's last line, else the
    last line naming an error), shortened."""
    lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace")
             .splitlines() if line.strip()]
    patterns = (r"^[\w.]+(Error|Exception): ", r"unresolved dependency", r"Error: ",
                r"(ERROR|Exception)")
    for pattern in patterns:
        found = [line for line in lines if re.search(pattern, line)]
        if found:
            return found[-1][:300]
    return lines[-1][:300] if lines else "(no output)"


def generate_data(data_root: Path, stage: Stage) -> None:
    manifest = data_root / "landing" / "_manifest.json"
    if manifest.exists():
        stage.note = "present (not regenerated)"
        return
    log = data_root / "pipelines" / "official" / "generate.log"
    done = _run([sys.executable, "-m", "data_generator", "--default", "--no-progress"], log,
                _course_env(data_root))
    if done.returncode != 0:
        raise CheckError(f"data generation failed: {_last_error(log)} (see {log})")
    stage.note = "default dataset generated"


def run_local(data_root: Path, log: Path, stage: Stage) -> None:
    done = _run([sys.executable, "-m", "utils.pipelines", "full-refresh", str(PIPELINE_DIR)],
                log, _course_env(data_root), cwd=REPO_ROOT)
    text = log.read_text(encoding="utf-8", errors="replace")
    flows = len(re.findall(r"\] \S+ .* COMPLETED", text))
    if done.returncode != 0:
        raise CheckError(f"local runner failed: {_last_error(log)} (see {log})")
    stage.note = f"{flows} flows COMPLETED"


def official_spec_text(folder: Path, storage: Path) -> str:
    """``notebooks/pipeline/spark-pipeline.yml`` for a run in ``folder``: ``storage`` set (the
    CLI needs an absolute URI) and each library glob made relative to ``folder`` (the CLI
    resolves globs from the spec file's folder), everything else as written."""
    import yaml

    spec = yaml.safe_load(OFFICIAL_SPEC.read_text(encoding="utf-8"))
    spec["storage"] = storage.resolve().as_uri()
    for entry in spec.get("libraries", []):
        source = (PIPELINE_DIR / entry["glob"]["include"]).resolve()
        entry["glob"]["include"] = os.path.relpath(source, folder.resolve())
    header = f"# generated from {OFFICIAL_SPEC} by utils.pipelines.official_check\n"
    return header + yaml.safe_dump(spec, sort_keys=False)


def run_official(data_root: Path, folder: Path, stage: Stage) -> Path:
    """Run ``spark-pipelines`` for a copy of the official spec in ``folder``/run (recreated),
    against a Spark Connect server with Delta on a free port (``utils.spark_server``, the
    server of ``make test-spark``); return the warehouse folder holding its tables."""
    from utils.spark_server import SparkServiceError, SparkServices, spark_environment

    shutil.rmtree(folder / "run", ignore_errors=True)
    run_dir = folder / "run"
    run_dir.mkdir(parents=True)
    spec = run_dir / "spark-pipeline.yml"
    spec.write_text(official_spec_text(run_dir, run_dir / "storage"))
    services = SparkServices(run_dir / "spark")
    log = folder / "spark-pipelines.log"
    try:
        # the pipeline's tables are Delta tables in the server's warehouse folder
        remote = services.start_connect_server(confs={"spark.sql.sources.default": "delta"})
        # the CLI's launcher finds Spark (SPARK_HOME) and Python as the server does
        env = {**spark_environment(), "COURSE_DATA_DIR": str(data_root)}
        done = _run([str(spark_pipelines_command()), "run", "--remote", remote, "--spec",
                     str(spec)], log, env, cwd=run_dir)
    except SparkServiceError as err:
        raise CheckError(str(err), 2) from None
    finally:
        services.stop()
    text = log.read_text(encoding="utf-8", errors="replace")
    completed = set(re.findall(r"Flow '?([\w.`]+)'? has COMPLETED", text))
    failed = set(re.findall(r"Flow '?([\w.`]+)'? has FAILED", text))
    if done.returncode != 0 or failed:
        where = ""
        if "ATTEMPT_ANALYSIS_IN_PIPELINE_QUERY_FUNCTION" in text:
            # the CLI refuses schema/DDL/execution requests inside a query function: name the
            # last course frame that made one (the line to change)
            frames = re.findall(rf'File "({re.escape(str(REPO_ROOT))}/[^"]+)", line (\d+), in (\w+)',
                                text)
            frames = [f for f in frames if "site-packages" not in f[0]]
            if frames:
                path, line, function = frames[-1]
                where = (f" [{Path(path).relative_to(REPO_ROOT)}:{line} {function} asks the "
                         "engine for a schema, a DDL parse or a result while the pipeline is "
                         "defined]")
        raise CheckError(f"spark-pipelines failed ({len(failed)} flow(s) FAILED): "
                         f"{_last_error(log)}{where} (see {log})")
    stage.note = f"{len(completed)} flows COMPLETED"
    return services.state_dir / "warehouse"


# ----- definition probe (Sail, no JVM) -----------------------------------------------------------
#: Relations a Spark Connect server plans by analysing their input at once (``Dataset.ofRows``,
#: no fallback): in the pipelines CLI that input is a pipeline dataset that does not exist yet
#: when the flow is defined, so the definition fails (TABLE_OR_VIEW_NOT_FOUND). Read from the
#: planner of the pyspark 4.2 wheel (``javap`` of SparkConnectPlanner), the relations a query
#: function may build: ``drop``, ``dropDuplicates``/``distinct``, ``fillna``, ``dropna``,
#: ``na.replace``, ``to(schema)``, ``sample`` and ``withWatermark`` analyse their input;
#: ``withColumn(s)`` and ``withColumnRenamed`` try to and fall back to a lazy projection;
#: select, filter, join, groupBy-agg, union and sort are lazy. ``utils.frames`` has the lazy
#: equivalents of drop and distinct.
EAGER_RELATIONS = ("drop {", "deduplicate {", "fill_na {", "drop_na {", "replace {",
                   "to_schema {", "sample {", "with_watermark {")


def probe_definitions(pipeline_dir: Path = PIPELINE_DIR) -> list[str]:
    """What the official CLI would refuse while it defines the flows, found on Sail in seconds.

    Loads the sources as the CLI does (each query function called once, inside the runtime
    shape of open-source ``pyspark.pipelines``) and records every request a query function
    makes to the engine (schema, DDL parsing, execution: ATTEMPT_ANALYSIS_IN_PIPELINE_QUERY_FUNCTION
    on the CLI) with the course frame that made it, and every flow whose plan holds a relation
    the server plans eagerly (:data:`EAGER_RELATIONS`). The local runner's tables must exist
    (stage 2), so that reads of pipeline datasets resolve here. Needs its own process: it
    patches the Spark Connect client class.
    """
    import importlib.util
    import traceback

    from pyspark.pipelines.graph_element_registry import (
        GraphElementRegistry,
        graph_element_registration_context,
    )
    from pyspark.sql.connect.client.core import SparkConnectClient

    from utils.pipelines.runner import register_pipeline_tables
    from utils.pipelines.spec import load_spec
    from utils.session import get_spark

    spark = get_spark()
    spec = load_spec(pipeline_dir)
    register_pipeline_tables(pipeline_dir, spark)
    spark.sql(f"USE SCHEMA {spec.schema}")
    state: dict[str, Any] = {"flow": None}
    found: list[str] = []
    course = str(REPO_ROOT)

    def guard(name: str) -> None:
        original = getattr(SparkConnectClient, name)

        def guarded(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
            if state["flow"]:
                frames = [f for f in traceback.extract_stack() if f.filename.startswith(course)
                          and "site-packages" not in f.filename and f.filename != __file__]
                where = (f"{Path(frames[-1].filename).relative_to(REPO_ROOT)}:"
                         f"{frames[-1].lineno} {frames[-1].name}" if frames else "?")
                found.append(f"{state['flow']}: engine request ({name}) at {where}")
            return original(self, *args, **kwargs)

        setattr(SparkConnectClient, name, guarded)

    for name in ("_analyze", "_execute_and_fetch", "execute_command"):
        guard(name)
    # Sail has no observe(): keep the expectation filters, leave out their metrics here
    from utils.pipelines import compat

    enforce = compat.enforce_expectations
    compat.enforce_expectations = lambda df, rules, metrics_name=None: enforce(df, rules)
    views: set[str] = set()

    class Probe(GraphElementRegistry):
        def register_output(self, output) -> None:  # noqa: ANN001
            if type(output).__name__ == "TemporaryView":
                views.add(output.name)

        def register_flow(self, flow) -> None:  # noqa: ANN001
            state["flow"] = flow.name
            try:
                df = flow.func()
                plan = str(df._plan.plan(spark.client))
            except Exception as err:  # noqa: BLE001 - record and go on with the next flow
                found.append(f"{flow.name}: {type(err).__name__}: {str(err).splitlines()[0][:120]}")
                return
            finally:
                state["flow"] = None
            found.extend(f"{flow.name}: plan holds `{rel[:-2]}` (planned eagerly by the server)"
                         for rel in EAGER_RELATIONS if rel in plan)
            if flow.target in views:
                try:   # later flows read the view
                    df.createOrReplaceTempView(flow.target)
                except Exception:  # noqa: BLE001 - e.g. observe() unsupported on Sail
                    pass

        def register_auto_cdc_flow(self, flow) -> None:  # noqa: ANN001
            pass

        def register_sql(self, sql_text, file_path) -> None:  # noqa: ANN001
            pass

    with graph_element_registration_context(Probe()):
        for file in spec.source_files():
            module_spec = importlib.util.spec_from_file_location(f"_probe_{file.stem}", file)
            module = importlib.util.module_from_spec(module_spec)
            module.__dict__["spark"] = spark
            module_spec.loader.exec_module(module)
    return list(dict.fromkeys(found))


def run_probe(data_root: Path, log: Path, stage: Stage) -> None:
    done = _run([sys.executable, "-m", "utils.pipelines.official_check", "--probe-only"], log,
                _course_env(data_root), cwd=REPO_ROOT)
    text = log.read_text(encoding="utf-8", errors="replace")
    sites = [line.removeprefix("SITE ") for line in text.splitlines() if line.startswith("SITE ")]
    if done.returncode not in (0, 3):
        raise CheckError(f"definition probe failed: {_last_error(log)} (see {log})")
    if sites:
        stage.note = f"{len(sites)} call(s) the official CLI refuses"
        shown = "\n  ".join(sites[:12]) + ("\n  ..." if len(sites) > 12 else "")
        raise CheckError(
            f"the pipeline's query functions make {len(sites)} engine call(s) the official "
            f"CLI refuses while it defines the flows (schema/DDL/execution requests, or "
            f"DataFrame.drop/withColumnRenamed on pipeline datasets); each line names the "
            f"course function to change (full list: {log}):\n  {shown}")
    stage.note = "no engine call while defining"


# ----- comparison --------------------------------------------------------------------------------
def compare_tables(local: Path, official: Path) -> tuple[int | None, int | None, str]:
    """(local rows, official rows, ``equal`` or what differs), by ``utils.compare_engines``."""
    from utils.compare_engines import compare_rows, read_rows

    if not local.exists() or not official.exists():
        missing = "local" if not local.exists() else "spark-pipelines"
        return (None, None, f"missing in the {missing} run")
    a, b = read_rows(local), read_rows(official)
    return (len(a), len(b), compare_rows(a, b) or "equal")


def gold_tables() -> list[str]:
    from utils import gold

    return [f"gold_{name}" for name in gold.gold_tables()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.pipelines.official_check",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="data root (default: $COURSE_DATA_DIR, else data/)")
    parser.add_argument("--no-probe", action="store_true",
                        help="run spark-pipelines even when the definition probe finds calls "
                             "the CLI refuses (to see its own error)")
    parser.add_argument("--probe-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe_only:   # the subprocess of stage 2b
        sites = probe_definitions()
        print("".join(f"SITE {site}\n" for site in sites), end="")
        return 3 if sites else 0
    data_root = (args.data_dir or get_config().data_root).resolve()
    os.environ["COURSE_DATA_DIR"] = str(data_root)
    folder = data_root / "pipelines" / "official"
    report = Report(data_root)
    try:
        stage = Stage("0 prerequisites (Java, CLI, Delta jars)")
        report.stages.append(stage)
        started = time.perf_counter()
        stage.note = check_prerequisites(delta_package())
        stage.seconds = time.perf_counter() - started

        for name, action in (("1 default dataset", lambda s: generate_data(data_root, s)),
                             ("2 local runner on Sail",
                              lambda s: run_local(data_root, folder / "local-runner.log", s))):
            stage = Stage(name)
            report.stages.append(stage)
            started = time.perf_counter()
            action(stage)
            stage.seconds = time.perf_counter() - started

        if not args.no_probe:
            stage = Stage("2b definition probe on Sail")
            report.stages.append(stage)
            started = time.perf_counter()
            run_probe(data_root, folder / "probe.log", stage)
            stage.seconds = time.perf_counter() - started

        stage = Stage("3 spark-pipelines on JVM Spark + Delta")
        report.stages.append(stage)
        started = time.perf_counter()
        warehouse = run_official(data_root, folder, stage)
        stage.seconds = time.perf_counter() - started

        stage = Stage("4 compare gold tables (deltalake)")
        report.stages.append(stage)
        started = time.perf_counter()
        from utils.pipelines.spec import load_spec

        local = load_spec(PIPELINE_DIR)
        for table in gold_tables():
            report.tables.append((table, *compare_tables(local.table_path(local.schema, table),
                                                         warehouse / table)))
        stage.seconds = time.perf_counter() - started
    except CheckError as err:
        report.stages[-1].seconds = time.perf_counter() - started
        report.stages[-1].note = "FAILED"
        print("\n".join(report.lines()))
        print(f"\nerror: {err}", file=sys.stderr)
        return err.code
    print("\n".join(report.lines()))
    return 0 if report.equal else 1


if __name__ == "__main__":
    sys.exit(main())
