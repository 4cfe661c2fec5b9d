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
