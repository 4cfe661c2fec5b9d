"""Starting and stopping Apache Spark for the Spark targets, without starting a JVM.

``make test`` needs no Java, so these tests check what can go wrong before a JVM runs (a busy
port, no Java, a dead or reused PID, what a log says) with real processes and sockets.
``make test-spark`` and ``make test-cluster`` start the real servers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from utils import spark_server
from utils.session import course_package_zip
from utils.spark_server import SparkProcess, SparkServiceError, SparkServices
from utils.tables import local_location


def test_delta_package_is_the_one_configure_spark_with_delta_pip_names():
    from delta import configure_spark_with_delta_pip
    from pyspark.sql import SparkSession

    builder = configure_spark_with_delta_pip(SparkSession.builder)
    assert builder._options["spark.jars.packages"] == spark_server.delta_package()
    assert spark_server.delta_package().startswith("io.delta:delta-spark_4.2_2.13:")


def test_spark_home_is_the_wheel_with_its_launchers():
    home = spark_server.spark_home()
    for launcher in ("spark-submit", "spark-class", "spark-pipelines"):
        assert (home / "bin" / launcher).exists(), launcher
    assert list((home / "jars").glob("spark-connect_2.13-*.jar"))


def test_a_busy_port_is_one_line_before_any_jvm_starts(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        services = SparkServices(tmp_path)
        with pytest.raises(SparkServiceError) as info:
            services._launch("connect", "NoSuchClass", [sys.executable, "-c", "pass"], port)
    assert str(info.value) == (f"Port {port} on 127.0.0.1 is already in use: stop what listens "
                               "there (or let the course pick a free port).")
    assert not (tmp_path / "connect.log").exists()  # nothing was started


def test_a_process_that_dies_at_start_says_why_from_its_log(tmp_path):
    script = ("import sys; print('Exception in thread main java.net.BindException: "
              "Address already in use'); sys.exit(1)")
    services = SparkServices(tmp_path)
    with pytest.raises(SparkServiceError) as info:
        services._launch("connect", "x", [sys.executable, "-c", script], spark_server.free_port())
    message = str(info.value)
    assert message.startswith("Spark connect did not start: its port is already in use")
    assert str(tmp_path / "connect.log") in message and "\n" not in message


@pytest.mark.parametrize("log, expected", [
    (":: UNRESOLVED DEPENDENCIES ::\n:: io.delta#delta-spark_4.2_2.13;4.4.0: not found",
     "cannot download io.delta:delta-spark_4.2_2.13:"),
    ("java.lang.UnsupportedClassVersionError: class file version 61.0", "this Java is too old"),
    ("INFO fine\n26/12/02 ERROR SparkContext: Failed to start\n  at org.apache.x(y.java:1)",
     "26/12/02 ERROR SparkContext: Failed to start"),
    ("", "it exited without saying why"),
])
def test_failures_are_explained_in_one_line(tmp_path, log, expected):
    path = tmp_path / "x.log"
    path.write_text(log)
    assert spark_server._explain_failure(path).startswith(expected)


def _wait_until(condition, timeout: float = 30) -> None:
    """A just-started child shows its command line a moment later on a busy machine."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.05)


def test_stop_signals_only_the_pid_that_still_runs_its_class(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "MarkerClass"])
    try:
        mine = SparkProcess("connect", "MarkerClass", child.pid, 0, "")
        reused = SparkProcess("connect", "org.apache.spark.SomethingElse", child.pid, 0, "")
        _wait_until(mine.running)
        assert not reused.running()
        reused.stop()          # the PID runs another program: left alone
        assert child.poll() is None
        mine.stop(timeout=10)
        assert child.wait(timeout=10) == -15  # SIGTERM, as Spark's shutdown hooks need
    finally:
        if child.poll() is None:
            child.kill()


def test_stop_reads_the_state_another_process_wrote(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "MarkerClass"])
    try:
        first = SparkServices(tmp_path)
        first.processes = [SparkProcess("master", "MarkerClass", child.pid, 1, "")]
        _wait_until(first.processes[0].running)
        first._save()
        assert SparkServices(tmp_path).stop() == ["master"]
        assert child.wait(timeout=10) == -15
        assert SparkServices(tmp_path).processes == []
    finally:
        if child.poll() is None:
            child.kill()


def test_the_command_line_without_java_is_one_actionable_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = str(Path(sys.executable).parent)  # python, but no java
    out = subprocess.run([sys.executable, "-m", "utils.spark_server", "start", "--state", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: Apache Spark needs Java 17")
    assert len(out.stderr.strip().splitlines()) == 1


def test_stop_with_nothing_started_says_so(tmp_path):
    out = subprocess.run([sys.executable, "-m", "utils.spark_server", "stop", "--state", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "stopped: nothing was running"


def test_run_needs_a_command(tmp_path):
    out = subprocess.run([sys.executable, "-m", "utils.spark_server", "run", "--state", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "give a command after `--`" in out.stderr


def test_the_shipped_package_holds_the_course_modules_and_data_files():
    with zipfile.ZipFile(course_package_zip()) as archive:
        names = set(archive.namelist())
    assert {"utils/__init__.py", "utils/silver.py", "utils/contracts.yml",
            "data_generator/__init__.py", "data_generator/codes/icd10cm.csv"} <= names
    assert not any("__pycache__" in name for name in names)


@pytest.mark.parametrize("location, path", [
    ("file:///data/lakehouse/silver/claims", "/data/lakehouse/silver/claims"),  # Sail
    ("file:/data/lakehouse/silver/claims", "/data/lakehouse/silver/claims"),    # Apache Spark
    ("/data/lakehouse/silver/claims", "/data/lakehouse/silver/claims"),
    ("abfss://c@a.dfs.core.windows.net/x", "abfss://c@a.dfs.core.windows.net/x"),
])
def test_table_locations_become_plain_paths_on_every_engine(location, path):
    assert local_location(location) == path


def test_the_shipped_package_runs_from_its_zip_data_files_included():
    """What a cluster's Python worker does: import the course from the zip alone (no
    repository, no editable install first on the path) and read its contract and code tables."""
    code = (f"import sys; sys.path.insert(0, {course_package_zip()!r})\n"
            "import utils.bronze, utils.silver, data_generator.codes as codes\n"
            "assert '.zip' in utils.bronze.__file__, utils.bronze.__file__\n"
            "print(len(utils.bronze.ENTITY_SPECS), len(codes.load_code_table('loinc')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd="/")
    assert out.returncode == 0, out.stderr
    entities, loinc_codes = map(int, out.stdout.split())
    assert entities == 8 and loinc_codes > 10


def test_run_stops_what_it_started_when_it_is_terminated(tmp_path):
    """`run` under a CI time-out: SIGTERM to it must still stop its processes (by PID)."""
    import json
    import signal
    import time

    script = (
        "import subprocess, sys, time\n"
        "from utils.spark_server import SparkProcess, SparkServices, _run\n"
        f"services = SparkServices({str(tmp_path)!r})\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)', 'MarkerClass'])\n"
        "services.processes = [SparkProcess('connect', 'MarkerClass', child.pid, 1, '')]\n"
        "services._save()\n"
        "services.start = lambda **_: 'sc://127.0.0.1:1'\n"
        "sys.exit(_run(services, False, [sys.executable, '-c', 'import time; time.sleep(120)'], None))\n"
    )
    runner = subprocess.Popen([sys.executable, "-c", script])
    state = tmp_path / "processes.json"
    deadline = time.monotonic() + 60
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    pid = json.loads(state.read_text())[0]["pid"]
    time.sleep(1)  # let it reach the command
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=60) == 143
    assert not SparkProcess("connect", "MarkerClass", pid, 1, "").running()
