from pathlib import Path

import pytest

from utils.config import REPO_ROOT, get_config


def test_default_data_root_is_repo_data(monkeypatch):
    monkeypatch.delenv("COURSE_DATA_DIR", raising=False)
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    config = get_config()
    assert config.data_root == REPO_ROOT / "data"
    assert config.landing_dir == REPO_ROOT / "data" / "landing"
    assert config.manifest_path == REPO_ROOT / "data" / "landing" / "_manifest.json"


def test_data_dir_override_and_table_locations(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    config = get_config()
    assert config.landing_dir == tmp_path / "landing"
    assert config.source_dir("ehr_encounters") == tmp_path / "landing" / "ehr_encounters"
    assert config.table_path("silver", "patients") == tmp_path / "lakehouse" / "silver" / "patients"
    assert config.table_name("gold", "payer_mix") == "gold.payer_mix"
    assert config.full_table_name("gold", "payer_mix") == "gold.payer_mix"
    assert config.reports_dir == tmp_path / "reports"


def test_unknown_layer_is_a_clear_error(monkeypatch):
    with pytest.raises(ValueError, match="Unknown layer 'platinum': expected one of bronze, silver, gold"):
        get_config().table_path("platinum", "x")


def test_databricks_maps_to_unity_catalog(monkeypatch):
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "16.4")
    monkeypatch.setenv("COURSE_CATALOG", "teaching")
    config = get_config()
    assert config.databricks
    assert config.landing_dir == Path("/Volumes/teaching/landing/files/landing")
    assert config.full_table_name("silver", "encounters") == "teaching.silver.encounters"
    assert config.table_name("silver", "encounters") == "silver.encounters"
    assert config.table_path("silver", "encounters") is None


def test_importing_utils_is_cheap_and_changes_nothing():
    """No import side effects: `import utils` loads neither PySpark nor pandas and sets no
    environment variable (RUST_LOG is set only when a Sail session starts)."""
    import subprocess
    import sys

    code = ("import os, sys; before = dict(os.environ); import utils, utils.expectations, utils.phi; "
            "print('pyspark' in sys.modules, 'pandas' in sys.modules, dict(os.environ) == before)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "True"]
