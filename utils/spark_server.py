"""Apache Spark for the course's Spark targets: a Spark Connect server with Delta Lake, alone or
on a standalone cluster, started from the pyspark wheel on 127.0.0.1 and stopped by PID.

The course's default engine (Sail) needs none of this. Apache Spark is the reference engine,
so ``make test-spark`` and ``make test-cluster`` run the same notebooks against the real thing:

* ``make spark-jars`` downloads the delta-spark jars that match the installed ``delta-spark``
  package, with Spark's own ``--packages`` mechanism (Ivy, from Maven Central), into the
  ordinary Ivy cache (``~/.ivy2.5.2``). Every later start finds them there, offline too.
* :class:`SparkServices` starts ``SparkConnectServer`` (``spark-submit --class ...``, the
  wheel has no ``sbin/start-connect-server.sh``) with the Delta extension and catalog, on a
  free port of 127.0.0.1; with ``cluster=True`` it first starts a standalone master and two
  workers (``spark-class ...deploy.master.Master`` / ``...deploy.worker.Worker``) and submits
  the server to that master, so every query runs in executors in other JVMs.
* Each process's PID, port and log are kept in a state folder. ``stop`` signals exactly those
  PIDs, after checking that the PID still runs the class it started (a PID can be reused):
  never ``pkill`` by name, which would stop someone else's Spark.

Command line (what the Makefile calls)::

    python -m utils.spark_server jars
    python -m utils.spark_server run [--cluster] -- <command>     # start, run, always stop
    python -m utils.spark_server start [--cluster] / status / stop  # for working by hand

Failures a user can fix (no Java, no Maven access, a busy port, a server that died) are one
line, :class:`SparkServiceError`, with the log file to read for the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from utils.config import REPO_ROOT
from utils.session import DELTA_CONFS, SMALL_DATA_CONFS, EngineError, java_version

CONNECT_SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"

#: Where ``make`` keeps the PIDs and logs of the processes it started (git ignores it).
DEFAULT_STATE_DIR = REPO_ROOT / ".spark"

#: Server settings besides Delta's and the small-data ones (``utils.session``). The catalog
#: is in memory (no Derby ``metastore_db`` in the working folder; notebooks register the
#: course's Delta tables themselves). No session time zone here: each client pins its own.
SERVER_CONFS: dict[str, str] = {
    "spark.sql.catalogImplementation": "in-memory",
    "spark.log.level": "WARN",
    "spark.ui.enabled": "false",
}

STARTUP_TIMEOUT_S = 300  # the first start downloads ~90 MB of jars


class SparkServiceError(RuntimeError):
    """A Spark process could not be started or stopped; the message says what to do."""


# ----- what to start ----------------------------------------------------------------------------
def spark_home() -> Path:
    """The pyspark wheel's folder: it holds ``bin/spark-submit``, ``bin/spark-class``, ``jars/``."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def delta_package() -> str:
    """The Maven coordinate of the delta-spark jar for the installed packages, named exactly as
    ``delta.configure_spark_with_delta_pip`` names it: ``io.delta:delta-spark_<spark
    major.minor>_2.13:<delta-spark version>`` (delta-storage comes with it)."""
    from importlib.metadata import version

    import pyspark

    spark_minor = ".".join(pyspark.__version__.split(".")[:2])
    return f"io.delta:delta-spark_{spark_minor}_2.13:{version('delta-spark')}"


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def spark_environment() -> dict[str, str]:
    """The JVMs' environment: Spark from the wheel, Python workers from this interpreter (the
    course's venv), everything bound to the loopback interface."""
    env = dict(os.environ)
    env.update(SPARK_HOME=str(spark_home()), PYSPARK_PYTHON=sys.executable,
               PYSPARK_DRIVER_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1")
    env.pop("SPARK_REMOTE", None)      # the server is not a client of another server
    env.pop("PYSPARK_SUBMIT_ARGS", None)
    return env


def _confs(confs: dict[str, str]) -> list[str]:
    return [arg for key, value in confs.items() for arg in ("--conf", f"{key}={value}")]


def _require_java() -> None:
    if java_version() is None:
        raise SparkServiceError(
            "Apache Spark needs Java 17: install it (Debian/Ubuntu: `apt install openjdk-17-jre`, "
            "conda: `conda install openjdk=17`) or set JAVA_HOME. The default engine (Sail) needs none.")


def _explain_failure(log: Path) -> str:
    """One line for why a Spark process stopped, read from its log."""
    text = log.read_text(errors="replace") if log.exists() else ""
    if "unresolved dependency" in text or "UNRESOLVED DEPENDENCIES" in text:
        return (f"cannot download {delta_package()} from Maven Central (no network or no "
                "access): run `make spark-jars` where Maven Central is reachable, once")
    if "Address already in use" in text or "BindException" in text:
        return "its port is already in use: stop what listens there, or pick another port"
    if "UnsupportedClassVersionError" in text:
        return "this Java is too old: Spark 4 needs Java 17 or newer (set JAVA_HOME)"
    errors = [line.strip() for line in text.splitlines()
              if ("ERROR" in line or "Exception" in line) and not line.lstrip().startswith("at ")]
    return errors[-1][:240] if errors else "it exited without saying why"


# ----- the processes ------------------------------------------------------------------------------
@dataclass
class SparkProcess:
    """One JVM this module started: which class, its PID, the port it serves, its log."""

    name: str
    main_class: str
    pid: int
    port: int
    log: str

    def running(self) -> bool:
        """True while the PID is alive and still runs ``main_class`` (PIDs get reused)."""
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            try:  # no /proc (macOS): signal 0 only says the PID exists
                os.kill(self.pid, 0)
            except OSError:
                return False
            return True
        return self.main_class.encode() in cmdline

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (Spark's shutdown hooks run), then SIGKILL after ``timeout`` seconds."""
        if not self.running():
            return
        os.kill(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                return
            time.sleep(0.2)
        if self.running():
            os.kill(self.pid, signal.SIGKILL)


class SparkServices:
    """The Spark processes of one state folder: start them, wait until they serve, stop them.

    ``state_dir`` holds ``processes.json`` (what :meth:`stop` reads, also from another
    process) and one log per process.
    """

    def __init__(self, state_dir: Path | str = DEFAULT_STATE_DIR):
        self.state_dir = Path(state_dir).resolve()
        self.processes: list[SparkProcess] = []
        state = self.state_dir / "processes.json"
        if state.exists():
            self.processes = [SparkProcess(**p) for p in json.loads(state.read_text())]

    # -- bookkeeping --
    def _save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "processes.json").write_text(
            json.dumps([asdict(p) for p in self.processes], indent=2) + "\n")

    def _get(self, name: str) -> SparkProcess | None:
        return next((p for p in self.processes if p.name == name and p.running()), None)

    @property
    def connect_url(self) -> str | None:
        """``sc://127.0.0.1:<port>`` of the running Connect server (what ``SPARK_REMOTE`` takes)."""
        server = self._get("connect")
        return f"sc://127.0.0.1:{server.port}" if server else None

    def _launch(self, name: str, main_class: str, args: list[str], port: int,
                ready: str | None = None) -> SparkProcess:
        """Start one JVM, record it, and wait until it listens on ``port`` (and, when given,
        until its log says ``ready``); a clear error if it dies first."""
        if port_in_use(port):
            raise SparkServiceError(f"Port {port} on 127.0.0.1 is already in use: stop what "
                                    "listens there (or let the course pick a free port).")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = self.state_dir / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=self.state_dir, env=spark_environment(), start_new_session=True)
        record = SparkProcess(name, main_class, proc.pid, port, str(log))
        self.processes = [p for p in self.processes if p.name != name] + [record]
        self._save()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SparkServiceError(f"Spark {name} did not start: {_explain_failure(log)} "
                                        f"(log: {log}).")
            if port_in_use(port) and (ready is None or ready in log.read_text(errors="replace")):
                return record
            time.sleep(0.5)
        record.stop()
        raise SparkServiceError(f"Spark {name} did not listen on 127.0.0.1:{port} within "
                                f"{STARTUP_TIMEOUT_S} s (log: {log}).")

    # -- starting --
    def start_cluster(self, workers: int = 2, worker_memory: str = "2g") -> str:
        """A standalone master and ``workers`` workers of one core each; returns the master URL."""
        _require_java()
        spark_class = str(spark_home() / "bin" / "spark-class")
        master_port = free_port()
        self._launch("master", MASTER_CLASS,
                     [spark_class, MASTER_CLASS, "--host", "127.0.0.1", "--port", str(master_port),
                      "--webui-port", str(free_port())], master_port)
        master = f"spark://127.0.0.1:{master_port}"
        for index in range(1, workers + 1):
            work_dir = self.state_dir / f"worker-{index}"
            work_dir.mkdir(parents=True, exist_ok=True)
            port = free_port()
            self._launch(f"worker-{index}", WORKER_CLASS,
                         [spark_class, WORKER_CLASS, master, "--host", "127.0.0.1",
                          "--port", str(port), "--webui-port", str(free_port()), "--cores", "1",
                          "--memory", worker_memory, "--work-dir", str(work_dir)],
                         port, ready="Successfully registered with master")
        return master

    def start_connect_server(self, master: str = "local[2]", port: int | None = None,
                             timezone: str | None = None,
                             confs: dict[str, str] | None = None) -> str:
        """The Spark Connect server with Delta; returns its ``sc://`` URL.

        ``timezone`` sets the server JVM's own zone (hence its sessions' default): the Spark
        targets start it in another zone than UTC on purpose, to prove that the course's
        sessions pin UTC themselves, as they must on a cluster somebody else configured.
        ``confs`` are further Spark settings of the server (they win over the course's)."""
        _require_java()
        port = port or free_port()
        settings = {**DELTA_CONFS, **SMALL_DATA_CONFS, **SERVER_CONFS,
                    "spark.connect.grpc.binding.address": "127.0.0.1",
                    "spark.connect.grpc.binding.port": str(port),
                    "spark.sql.warehouse.dir": str(self.state_dir / "warehouse"),
                    "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1",
                    "spark.pyspark.python": sys.executable}
        if timezone:
            settings["spark.driver.extraJavaOptions"] = f"-Duser.timezone={timezone}"
        if master.startswith("spark://"):  # one executor per worker, one core each
            settings.update({"spark.executor.cores": "1", "spark.executor.memory": "1g",
                             "spark.cores.max": "2"})
        settings.update(confs or {})
        args = [str(spark_home() / "bin" / "spark-submit"), "--class", CONNECT_SERVER_CLASS,
                "--master", master, "--driver-memory", "2g", "--packages", delta_package(),
                *_confs(settings), "--name", "medallion-course-connect", "spark-internal"]
        self._launch("connect", CONNECT_SERVER_CLASS, args, port)
        return f"sc://127.0.0.1:{port}"

    def start(self, cluster: bool = False, timezone: str | None = None) -> str:
        """Everything a Spark target needs; returns the ``SPARK_REMOTE`` URL. Stops what it
        started if a later part fails."""
        try:
            master = self.start_cluster() if cluster else "local[2]"
            return self.start_connect_server(master, timezone=timezone)
        except BaseException:
            self.stop()
            raise

    # -- stopping --
    def stop(self) -> list[str]:
        """Stop every recorded process, server first, then workers, then the master; returns
        the names of those that were still running."""
        stopped = []
        for proc in reversed(self.processes):
            if proc.running():
                proc.stop()
                stopped.append(proc.name)
        self.processes = []
        self._save()
        return stopped

    def dead(self) -> list[SparkProcess]:
        """Recorded processes that no longer run (a crash, an out-of-memory kill)."""
        return [p for p in self.processes if not p.running()]


# ----- jars -------------------------------------------------------------------------------------
def fetch_jars() -> list[Path]:
    """Resolve the delta-spark jars into Ivy's cache with ``spark-submit --packages`` (the same
    resolution every Spark target does at start), and return the jar files."""
    _require_java()
    with tempfile.TemporaryDirectory(prefix="course-jars-") as tmp:
        noop = Path(tmp) / "noop.py"
        noop.write_text("# spark-submit resolves --packages before it runs this file\n")
        log = Path(tmp) / "ivy.log"
        with open(log, "wb") as out:
            code = subprocess.call([str(spark_home() / "bin" / "spark-submit"), "--packages",
                                    delta_package(), str(noop)], stdout=out,
                                   stderr=subprocess.STDOUT, env=spark_environment(), cwd=tmp)
        text = log.read_text(errors="replace")
        if code != 0:
            raise SparkServiceError(f"Resolving the Delta jars failed: {_explain_failure(log)}.")
    jars = []
    for line in text.splitlines():  # "Ivy Default Cache set to: ..." / "jars ... stored in: <dir>"
        if "The jars for the packages stored in:" in line:
            folder = Path(line.split(":", 1)[1].strip())
            jars = sorted(folder.glob("io.delta_*.jar"))
    return jars


# ----- command line -----------------------------------------------------------------------------
def _run(services: SparkServices, cluster: bool, command: list[str], timezone: str | None) -> int:
    """Start, run ``command`` with ``SPARK_REMOTE`` set, stop; the command's exit code."""
    if not command:
        raise SparkServiceError("Nothing to run: give a command after `--`.")
    # a CI time-out or `kill` sends SIGTERM: exit through `finally`, so the JVMs stop too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    url = services.start(cluster=cluster, timezone=timezone)
    print(f"Spark Connect server with Delta at {url}"
          f"{' on a standalone cluster (master + 2 workers)' if cluster else ' (local[2])'}; "
          f"started in {time.monotonic() - started:.0f} s; logs in {services.state_dir}", flush=True)
    try:
        code = subprocess.call(command, env={**os.environ, "SPARK_REMOTE": url})
        for proc in services.dead():
            print(f"Spark {proc.name} (PID {proc.pid}) died during the run: "
                  f"{_explain_failure(Path(proc.log))} (log: {proc.log}).", file=sys.stderr)
            code = code or 1
        return code
    finally:
        services.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.spark_server", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["jars", "start", "status", "stop", "run"])
    parser.add_argument("--cluster", action="store_true",
                        help="a standalone master and two workers, the server submitted to it")
    parser.add_argument("--server-timezone", default=None, metavar="ZONE",
                        help="the server JVM's time zone (e.g. America/Los_Angeles); clients pin UTC")
    parser.add_argument("--state", default=str(DEFAULT_STATE_DIR),
                        help="folder for PIDs and logs (default: .spark/ in the repository)")
    argv = sys.argv[1:] if argv is None else list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args, command = parser.parse_args(argv[:split]), argv[split + 1:]
    services = SparkServices(args.state)
    try:
        if args.action == "jars":
            jars = fetch_jars()
            print(f"{delta_package()}: {len(jars)} Delta jars in the Ivy cache "
                  f"({jars[0].parent if jars else 'see ~/.ivy2.5.2'})")
        elif args.action == "start":
            if services.connect_url:
                raise SparkServiceError(f"Already running at {services.connect_url}: "
                                        f"`python -m utils.spark_server stop --state {args.state}` first.")
            print(f"SPARK_REMOTE={services.start(args.cluster, args.server_timezone)}")
        elif args.action == "status":
            for proc in services.processes:
                print(f"{proc.name:<10} PID {proc.pid:<8} port {proc.port:<6} "
                      f"{'running' if proc.running() else 'not running'}  {proc.log}")
        elif args.action == "stop":
            stopped = services.stop()
            print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
        else:
            return _run(services, args.cluster, command, args.server_timezone)
    except (SparkServiceError, EngineError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
