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
    return SparkSession.builder.remote(url).getOrCreate()


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


def jvm_builder() -> Any:
    """The JVM PySpark builder with Delta Lake configured (not started).

    ``configure_spark_with_delta_pip`` adds the delta-spark jars matching the installed
    package to ``spark.jars.packages``; Spark downloads them from Maven on first start.
    """
    from delta import configure_spark_with_delta_pip
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master("local[2]")
        .appName("medallion-course")
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.showConsoleProgress", "false")
    )
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
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EngineError(
            f"JVM Spark with Delta did not start ({first[:200]}): it downloads delta-spark jars "
            "from Maven Central on first start, so it needs internet access; "
            "unset COURSE_ENGINE to use Sail."
        ) from None
