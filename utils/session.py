"""One way to start a Spark session, on every engine the course runs on.

Which engine runs the notebook is chosen from the environment, in this order:

1. ``DATABRICKS_RUNTIME_VERSION`` set: the cluster's own session (tables live in Unity
   Catalog, so we ``USE CATALOG`` the course catalog).
2. ``SPARK_REMOTE=sc://host:port``: a Spark Connect server somewhere (a cluster).
3. ``COURSE_ENGINE``: ``sail`` (default) starts an embedded Sail server on 127.0.0.1 and an
   ephemeral port, once per process; ``spark`` starts local JVM PySpark with delta-spark.

Errors a learner can fix (unknown engine, no Java, unreachable server) are raised as
:class:`EngineError` with one actionable line, not a stack trace from deep inside.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:  # pyspark is heavy: import it only when a session is really wanted
    from pyspark.sql import SparkSession

ENGINES = ("sail", "spark")
DEFAULT_ENGINE = "sail"

_lock = threading.Lock()
_sessions: dict[str, Any] = {}
_sail_server: Any = None
_package_zip: str | None = None
_delta_sql: dict[str, bool] = {}  # SPARK_REMOTE URL -> does that server run Delta SQL


class EngineError(RuntimeError):
    """A session cannot start; the message says what to do about it."""


def selected_engine() -> str:
    """The engine ``get_spark()`` would use now: databricks, remote, sail or spark."""
    if "DATABRICKS_RUNTIME_VERSION" in os.environ:
        return "databricks"
    if os.environ.get("SPARK_REMOTE"):
        return "remote"
    engine = os.environ.get("COURSE_ENGINE", DEFAULT_ENGINE).strip().lower() or DEFAULT_ENGINE
    if engine not in ENGINES:
        raise EngineError(
            f"Unknown COURSE_ENGINE={engine!r}: use one of {', '.join(ENGINES)} "
            f"(or unset it for the default, {DEFAULT_ENGINE})."
        )
    return engine


def get_spark() -> "SparkSession":
    """Return the course's Spark session, starting it on first use.

    Calling it again in the same process returns the same session, so every notebook cell
    and helper can call it freely.
    """
    engine = selected_engine()
    with _lock:
        session = _sessions.get(engine)
        if session is not None:
            return session
        starter = {
            "databricks": _databricks_session,
            "remote": _remote_session,
            "sail": _sail_session,
            "spark": _jvm_session,
        }[engine]
        session = starter()
        _sessions[engine] = session
        return session


def stop_spark() -> None:
    """Stop every session this process started, then the embedded Sail server.

    The order matters: stopping a Sail server while a client session is still open blocks
    forever (measured with pysail 0.7.2), so sessions go first.
    """
    global _sail_server
    with _lock:
        for engine, session in list(_sessions.items()):
            if engine != "databricks":  # never stop the cluster's own session
                try:
                    session.stop()
                except Exception:  # noqa: BLE001 - best effort at shutdown
                    pass
            _sessions.pop(engine, None)
        if _sail_server is not None:
            try:
                _sail_server.stop()
            finally:
                _sail_server = None


# ----- engines ---------------------------------------------------------------------------------
def _databricks_session() -> "SparkSession":
    from pyspark.sql import SparkSession

    from utils.config import get_config

    session = SparkSession.getActiveSession() or SparkSession.builder.getOrCreate()
    session.sql(f"USE CATALOG {get_config().catalog}")
    return session


def parse_remote_url(url: str) -> tuple[str, int]:
    """Host and port of a ``sc://host:port[/;params]`` Spark Connect URL, or EngineError."""
    parsed = urlparse(url)
    if parsed.scheme != "sc" or not parsed.hostname:
        raise EngineError(
            f"SPARK_REMOTE={url!r} is not a Spark Connect URL: use sc://host:port "
            "(for example sc://localhost:15002), or unset it to use the embedded engine."
        )
    try:
        port = parsed.port or 15002
    except ValueError as err:
        raise EngineError(f"SPARK_REMOTE={url!r} has an invalid port: use sc://host:port.") from err
    return parsed.hostname, port


def _remote_session() -> "SparkSession":
    from pyspark.sql import SparkSession

    url = os.environ["SPARK_REMOTE"]
    host, port = parse_remote_url(url)
    try:
        with socket.create_connection((host, port), timeout=3):
            pass
    except OSError as err:
        raise EngineError(
            f"Cannot reach the Spark Connect server at {host}:{port} ({err.strerror or err}): "
            "start it, check SPARK_REMOTE, or unset SPARK_REMOTE to use the embedded engine."
        ) from None
    session = SparkSession.builder.remote(url).getOrCreate()
    # A server's own time zone must not shift the course's timestamps (measured: a server in
    # America/Los_Angeles moved every admit/discharge time and changed 6 of 9 gold tables).
    session.conf.set("spark.sql.session.timeZone", "UTC")
    ship_course_package(session)
    return session


def course_package_zip() -> str:
    """A zip of the course's Python packages (``utils``, ``data_generator``), built once per
    process in a temporary folder: what a remote server's Python workers import."""
    global _package_zip
    if _package_zip is None or not os.path.exists(_package_zip):
        import tempfile
        import zipfile

        from utils.config import REPO_ROOT

        folder = tempfile.mkdtemp(prefix="course-package-")
        _package_zip = os.path.join(folder, "medallion_course.zip")
        with zipfile.ZipFile(_package_zip, "w", zipfile.ZIP_DEFLATED) as archive:
            for package in ("utils", "data_generator"):
                for path in sorted((REPO_ROOT / package).rglob("*")):
                    if path.is_file() and "__pycache__" not in path.parts:
                        archive.write(path, path.relative_to(REPO_ROOT).as_posix())
        atexit.register(shutil.rmtree, folder, True)
    return _package_zip


def ship_course_package(session: "SparkSession") -> None:
    """Make ``import utils`` work in the server's Python workers, where the course's pandas
    UDFs run: on a real cluster nothing else puts the course there. The zip goes first on
    the workers' ``sys.path`` for this session, so they run this checkout's code.

    A server that takes no artifacts (Sail: "handle add artifacts" is unsupported) runs
    UDFs in its own Python, which must have the course installed, as the embedded one has.
    """
    from pyspark.errors.exceptions.connect import UnsupportedOperationException

    package = course_package_zip()
    try:
        session.addArtifacts(package, pyfile=True)
    except UnsupportedOperationException:
        pass
    # The client also puts the zip on its own sys.path (pyspark does, for local analysis);
    # this process already imports the course from the repository, where the package's data
    # files (code tables) are real files, so keep imports here coming from there.
    while package in sys.path:
        sys.path.remove(package)


def delta_sql_available() -> bool:
    """True when the engine runs Delta's SQL commands itself (``DESCRIBE HISTORY``,
    ``OPTIMIZE``, ``VACUUM``, ``RESTORE``...): Databricks, JVM delta-spark, and a Spark
    Connect server whose session has the Delta extension. Sail has none of them."""
    engine = selected_engine()
    if engine in ("databricks", "spark"):
        return True
    if engine != "remote":
        return False
    key = os.environ["SPARK_REMOTE"]
    if key not in _delta_sql:
        extensions = get_spark().conf.get("spark.sql.extensions", None) or ""
        _delta_sql[key] = "DeltaSparkSessionExtension" in extensions
    return _delta_sql[key]


def _sail_session() -> "SparkSession":
    global _sail_server
    # Sail's Rust logging is configured when the server is constructed: set it first.
    os.environ.setdefault("RUST_LOG", "error")
    try:
        from pysail.spark import SparkConnectServer
    except ImportError as err:
        raise EngineError(
            "The local engine (pysail) is not installed: run `make install` "
            "(or `pip install -e .[dev]`) in the repository."
        ) from err
    from pyspark.sql import SparkSession

    if _sail_server is None:
        server = SparkConnectServer(ip="127.0.0.1", port=0)
        server.start(background=True)
        _sail_server = server
        atexit.register(stop_spark)
    session = SparkSession.builder.remote(sail_url()).getOrCreate()
    # Reattachable execution lets a client resume a query's results after a network drop,
    # at the price of a release round trip (and a thread) per query; to a server in this
    # process it only adds latency (measured: 4.3 -> 1.9 ms for a tiny query).
    session.client.disable_reattachable_execute()
    session.conf.set("spark.sql.session.timeZone", "UTC")
    return session


def sail_url() -> str | None:
    """``sc://127.0.0.1:<port>`` of the embedded Sail server, or None when none runs.

    A second session on the same server (``SparkSession.builder.remote(url).create()``)
    behaves like a new notebook: same data, empty catalog.
    """
    if _sail_server is None:
        return None
    _, port = _sail_server.listening_address
    return f"sc://127.0.0.1:{port}"


def java_version() -> str | None:
    """The first line of ``java -version``, or None when no Java is on PATH/JAVA_HOME."""
    java_home = os.environ.get("JAVA_HOME")
    java = os.path.join(java_home, "bin", "java") if java_home else shutil.which("java")
    if not java or not os.path.exists(java):
        return None
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (out.stderr or out.stdout).strip().splitlines()
    return lines[0] if lines else None


#: What makes a Spark session a Delta session (JVM engine and the Spark targets' server).
DELTA_CONFS: dict[str, str] = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}

#: Apache Spark settings for the course's small tables (measured: each default cost far more
#: than the work): shuffles in 4 partitions, Delta's log read in 2 tasks instead of 50, and
#: VACUUM's file listing in 4 tasks instead of 10,000; no progress bars in notebook output.
SMALL_DATA_CONFS: dict[str, str] = {
    "spark.sql.shuffle.partitions": "4",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.sql.sources.parallelPartitionDiscovery.parallelism": "4",
    "spark.ui.showConsoleProgress": "false",
}


def first_line(err: BaseException) -> str:
    """The first line of an error's message (a JVM failure's is followed by a stack trace),
    or its type's name when it has no message."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def jvm_builder() -> Any:
    """The JVM PySpark builder with Delta Lake configured (not started).

    ``configure_spark_with_delta_pip`` adds the delta-spark jars matching the installed
    package to ``spark.jars.packages``; Spark downloads them from Maven on first start.
    """
    from delta import configure_spark_with_delta_pip
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master("local[2]").appName("medallion-course")
    for key, value in {**DELTA_CONFS, **SMALL_DATA_CONFS, "spark.sql.session.timeZone": "UTC",
                       # the pandas UDFs run in Python workers the JVM starts: this (the venv's)
                       # interpreter, with pandas, not whatever `python3` is first on PATH
                       "spark.pyspark.python": sys.executable}.items():
        builder = builder.config(key, value)
    return configure_spark_with_delta_pip(builder)


def _jvm_session() -> "SparkSession":
    version = java_version()
    if version is None:
        raise EngineError(
            "COURSE_ENGINE=spark needs Java 17: install it (conda: `conda install openjdk=17`; "
            "Debian/Ubuntu: `apt install openjdk-17-jre`) or unset COURSE_ENGINE to use Sail."
        )
    try:
        return jvm_builder().getOrCreate()
    except Exception as err:  # noqa: BLE001 - turn a JVM start failure into one line
        raise EngineError(
            f"JVM Spark with Delta did not start ({first_line(err)[:200]}): it downloads delta-spark jars "
            "from Maven Central on first start, so it needs internet access; "
            "unset COURSE_ENGINE to use Sail."
        ) from None
