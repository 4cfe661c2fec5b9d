"""``make doctor``: what engine would run, with which versions, where data lives, what is missing."""

from __future__ import annotations

import importlib.metadata as metadata
import os
import platform
import shutil
import sys

from utils.config import get_config, on_databricks
from utils.session import EngineError, java_version, selected_engine

PACKAGES = ("pyspark", "pysail", "deltalake", "delta-spark", "pandas", "pyarrow", "numpy",
            "faker", "matplotlib", "jupyterlab", "nbval", "pytest")


def report() -> list[str]:
    """Lines of the report; problems start with 'MISSING' or 'PROBLEM' and say the fix."""
    lines = [f"python      {sys.version.split()[0]} ({platform.system()} {platform.machine()})"]
    for package in PACKAGES:
        try:
            lines.append(f"{package:<11} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            lines.append(f"MISSING     {package}: run `make install`")
    try:
        lines.append(f"engine      {selected_engine()}")
    except EngineError as err:
        lines.append(f"PROBLEM     {err}")
    java = java_version()
    lines.append(f"java        {java or 'not found (only needed for COURSE_ENGINE=spark)'}")
    if os.environ.get("SPARK_REMOTE"):
        lines.append(f"remote      {os.environ['SPARK_REMOTE']}")
    config = get_config()
    lines.append(f"data root   {config.data_root}")
    landing_state = "present" if config.landing_dir.exists() else "not generated yet: make data"
    lines.append(f"landing     {config.landing_dir} ({landing_state})")
    lines.append(f"lakehouse   {config.lakehouse_dir}")
    lines.append(f"reports     {config.reports_dir}")
    free = shutil.disk_usage(config.data_root if config.data_root.exists() else config.data_root.parent)
    lines.append(f"disk free   {free.free / 2**30:.1f} GiB")
    return lines


class EnvironmentProblem(RuntimeError):
    """Something the course needs is missing; the message says how to fix it."""


#: What a Databricks compute must provide: the Spark 4.0 APIs the course uses
#: (``Column.try_cast``, ``DataFrame.toArrow``), i.e. DBR 17.x or newer or a serverless
#: environment version with Spark 4; Sail and delta-rs are local-only and not needed there.
DATABRICKS_MIN_SPARK = (4, 0)
DATABRICKS_PACKAGES = ("faker", "pandas", "matplotlib")


def _spark_version() -> str | None:
    """pyspark's version: from its distribution metadata, else from the module (a Databricks
    runtime ships pyspark on the path without pip metadata)."""
    try:
        return metadata.version("pyspark")
    except metadata.PackageNotFoundError:
        pass
    try:
        import pyspark
    except ImportError:
        return None
    return getattr(pyspark, "__version__", None)


def _major_minor(version: str) -> tuple[int, int]:
    parts = [int("".join(ch for ch in part if ch.isdigit()) or 0) for part in version.split(".")[:2]]
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def _check_databricks(versions: dict[str, str]) -> dict[str, str]:
    """What the course needs on a Databricks compute; one actionable line when it is missing."""
    runtime = os.environ.get("DATABRICKS_RUNTIME_VERSION", "")
    spark = _spark_version()
    if spark is None or _major_minor(spark) < DATABRICKS_MIN_SPARK:
        raise EnvironmentProblem(
            f"Databricks runtime {runtime or '?'} runs Spark {spark or '?'}; the course uses Spark "
            "4.0 APIs (Column.try_cast, DataFrame.toArrow): use DBR 17.x LTS or newer, or a "
            "serverless environment version with Spark 4.")
    versions["pyspark"] = spark
    for package in DATABRICKS_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            raise EnvironmentProblem(
                f"{package} is not installed on this Databricks compute: add `{package}` to the "
                "job environment's dependencies (serverless) or run `%pip install "
                f"{package}` in the notebook.") from None
    import importlib.util

    for module in ("utils", "data_generator"):
        if importlib.util.find_spec(module) is None:
            raise EnvironmentProblem(
                f"The course package ({module}) is not importable: run the notebook from the "
                "repository's Git folder, or add the repository to the environment's "
                "dependencies.")
    versions["runtime"] = runtime
    versions["engine"] = "databricks"
    return versions


def check_environment() -> dict[str, str]:
    """Check what the notebooks need and return the versions that matter.

    Raises EnvironmentProblem with the fix when a package is missing, the Python is too old
    or the engine setting is wrong, so notebook 00 fails loudly instead of notebook 03
    failing obscurely. On Databricks it checks what the course needs there (Spark 4, faker,
    the course package) instead of the local engine's packages.
    """
    if sys.version_info < (3, 10):
        raise EnvironmentProblem(
            f"Python {sys.version.split()[0]} is too old: the course needs 3.10+ "
            "(conda: `conda env create -f environment.yml`).")
    versions = {"python": ".".join(map(str, sys.version_info[:3]))}
    if on_databricks():
        return _check_databricks(versions)
    for package in ("pyspark", "pysail", "deltalake", "pandas", "matplotlib"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            raise EnvironmentProblem(
                f"{package} is not installed in this kernel's Python ({sys.executable}): run "
                "`make install` and pick the .venv kernel, or `pip install -e .[dev]`.") from None
    if not versions["pyspark"].startswith("4."):
        raise EnvironmentProblem(f"pyspark {versions['pyspark']} found; the course needs 4.x: "
                                 "run `make install` (it pins the tested version).")
    try:
        versions["engine"] = selected_engine()
    except EngineError as err:
        raise EnvironmentProblem(str(err)) from None
    return versions


def version_lines(versions: dict[str, str]) -> list[str]:
    """What notebook 00 prints from :func:`check_environment`: the engine's packages (locally
    pyspark, pysail, deltalake; on Databricks pyspark, faker and the runtime), then the engine."""
    shown = (("pyspark", "faker", "runtime") if versions.get("engine") == "databricks"
             else ("pyspark", "pysail", "deltalake"))
    return [f"{name:<10} {versions[name]}" for name in (*shown, "engine")]


def main() -> int:
    lines = report()
    print("\n".join(lines))
    problems = [line for line in lines if line.startswith(("MISSING", "PROBLEM"))]
    print(f"\n{'all good' if not problems else f'{len(problems)} problem(s) above'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
