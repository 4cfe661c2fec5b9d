"""Shared fixtures: one Spark session for the whole test run, and a throw-away data root.

The session is the course's own (``utils.get_spark``), so tests exercise the same engine the
notebooks use. Each test that writes tables gets its own ``COURSE_DATA_DIR``.
"""

from __future__ import annotations

import os
import tempfile

import pytest

# Tests must never write into the repository's data/ folder, even when run without `make`.
os.environ.setdefault("COURSE_DATA_DIR", tempfile.mkdtemp(prefix="medallion-tests-"))
os.environ.setdefault("RUST_LOG", "error")


@pytest.fixture(scope="session")
def spark():
    from utils import get_spark

    return get_spark()


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A fresh, empty data root for one test (landing, lakehouse, reports below it)."""
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def fresh_spark(spark):
    """A new session on the same engine: its catalog is empty, as in a new notebook, so
    ``bronze.*``/``silver.*`` resolve to this test's data_dir and never to a table another
    test registered in the shared session. On a remote engine the shared session is kept."""
    from pyspark.sql import SparkSession

    from utils.session import sail_url

    if sail_url() is None:
        yield spark
        return
    fresh = SparkSession.builder.remote(sail_url()).create()
    fresh.conf.set("spark.sql.session.timeZone", "UTC")
    yield fresh
    fresh.stop()
