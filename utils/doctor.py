"""``make doctor``: what engine would run, with which versions, where data lives, what is missing."""

from __future__ import annotations

import importlib.metadata as metadata
import os
import platform
import shutil
import sys

from utils.config import get_config
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


def check_environment() -> dict[str, str]:
    """Check what the notebooks need and return the versions that matter.

    Raises EnvironmentProblem with the fix when a package is missing, the Python is too old
    or the engine setting is wrong, so notebook 00 fails loudly instead of notebook 03
    failing obscurely.
    """
    if sys.version_info < (3, 10):
        raise EnvironmentProblem(
            f"Python {sys.version.split()[0]} is too old: the course needs 3.10+ "
            "(conda: `conda env create -f environment.yml`).")
    versions = {"python": ".".join(map(str, sys.version_info[:3]))}
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


def main() -> int:
    lines = report()
    print("\n".join(lines))
    problems = [line for line in lines if line.startswith(("MISSING", "PROBLEM"))]
    print(f"\n{'all good' if not problems else f'{len(problems)} problem(s) above'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
