"""The session factory: engine selection, reuse, and one-line actionable errors."""

import socket

import pytest

from utils import session as session_module
from utils.session import EngineError, get_spark, parse_remote_url, selected_engine


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("DATABRICKS_RUNTIME_VERSION", "SPARK_REMOTE", "COURSE_ENGINE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_default_engine_is_sail(clean_env):
    assert selected_engine() == "sail"


def test_engine_precedence(clean_env):
    clean_env.setenv("COURSE_ENGINE", "spark")
    assert selected_engine() == "spark"
    clean_env.setenv("SPARK_REMOTE", "sc://localhost:15002")
    assert selected_engine() == "remote"
    clean_env.setenv("DATABRICKS_RUNTIME_VERSION", "16.4")
    assert selected_engine() == "databricks"


def test_unknown_engine_is_one_actionable_line(clean_env):
    clean_env.setenv("COURSE_ENGINE", "duckdb")
    with pytest.raises(EngineError) as info:
        get_spark()
    message = str(info.value)
    assert message == ("Unknown COURSE_ENGINE='duckdb': use one of sail, spark "
                       "(or unset it for the default, sail).")
    assert "\n" not in message


def test_sail_session_is_reused_and_works(clean_env, spark):
    assert get_spark() is spark
    assert spark.range(5).selectExpr("sum(id) AS s").first()["s"] == 10
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"


def test_remote_url_must_be_spark_connect(clean_env):
    with pytest.raises(EngineError, match="is not a Spark Connect URL: use sc://host:port"):
        parse_remote_url("http://localhost:15002")
    assert parse_remote_url("sc://cluster.example:443/;token=x") == ("cluster.example", 443)
    assert parse_remote_url("sc://localhost") == ("localhost", 15002)


def test_unreachable_remote_is_one_actionable_line(clean_env):
    with socket.socket() as sock:  # a port that is free, so nothing listens on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    clean_env.setenv("SPARK_REMOTE", f"sc://127.0.0.1:{port}")
    with pytest.raises(EngineError) as info:
        get_spark()
    message = str(info.value)
    assert message.startswith(f"Cannot reach the Spark Connect server at 127.0.0.1:{port}")
    assert "unset SPARK_REMOTE" in message and "\n" not in message


def test_jvm_engine_without_java_says_how_to_install_it(clean_env, tmp_path):
    clean_env.setenv("COURSE_ENGINE", "spark")
    clean_env.setenv("JAVA_HOME", str(tmp_path / "no-java-here"))
    with pytest.raises(EngineError, match="COURSE_ENGINE=spark needs Java 17: install it"):
        get_spark()


def test_jvm_builder_configures_delta(clean_env):
    """The JVM engine cannot start here (no Maven access), so check its configuration."""
    builder = session_module.jvm_builder()
    options = builder._options
    assert options["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert options["spark.sql.catalog.spark_catalog"] == "org.apache.spark.sql.delta.catalog.DeltaCatalog"
    assert options["spark.master"] == "local[2]"
    packages = options["spark.jars.packages"]
    assert "io.delta:delta-spark_4.2_2.13:4.4.0" in packages  # built per Spark minor
