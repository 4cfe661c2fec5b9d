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


# ----- the catalog on Databricks: widget (job parameter), then COURSE_CATALOG, then the default --
class FakeWidgets:
    """dbutils.widgets as a notebook task sees it: get() raises for a widget nobody defined."""

    def __init__(self, values):
        self.values = values
        self.asked = []

    def get(self, name):
        self.asked.append(name)
        if name not in self.values:
            raise RuntimeError(f"InputWidgetNotDefined: No input widget named {name} is defined")
        return self.values[name]


def _notebook(monkeypatch, widgets, *, databricks=True):
    """A Databricks notebook's IPython shell whose user namespace holds `dbutils`."""
    import sys
    import types

    if databricks:
        monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "client.4.0")
    else:
        monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    dbutils = types.SimpleNamespace(widgets=FakeWidgets(widgets))
    shell = types.SimpleNamespace(user_ns={"dbutils": dbutils})
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    return dbutils.widgets


def test_databricks_catalog_comes_from_the_job_parameter_first(monkeypatch):
    widgets = _notebook(monkeypatch, {"catalog": "learner_ws"})
    monkeypatch.setenv("COURSE_CATALOG", "from_env")
    config = get_config()
    assert config.catalog == "learner_ws" and widgets.asked == ["catalog"]
    assert config.landing_dir == Path("/Volumes/learner_ws/landing/files/landing")
    assert config.full_table_name("gold", "payer_mix") == "learner_ws.gold.payer_mix"


@pytest.mark.parametrize("widgets", [{}, {"catalog": "  "}], ids=["no widget", "blank widget"])
def test_databricks_catalog_falls_back_to_the_env_var_then_the_default(monkeypatch, widgets):
    _notebook(monkeypatch, widgets)
    monkeypatch.setenv("COURSE_CATALOG", "from_env")
    assert get_config().catalog == "from_env"
    monkeypatch.delenv("COURSE_CATALOG")
    assert get_config().catalog == "medallion_course"


def test_off_databricks_a_dbutils_in_the_namespace_changes_nothing(monkeypatch):
    widgets = _notebook(monkeypatch, {"catalog": "learner_ws"}, databricks=False)
    monkeypatch.delenv("COURSE_CATALOG", raising=False)
    assert get_config().catalog == "medallion_course"
    monkeypatch.setenv("COURSE_CATALOG", "not-an-identifier")  # locally taken as before
    assert get_config().catalog == "not-an-identifier"
    assert widgets.asked == []


def test_databricks_refuses_a_catalog_that_is_not_an_identifier(monkeypatch):
    _notebook(monkeypatch, {"catalog": "my catalog; DROP"})
    with pytest.raises(ValueError, match=r"Catalog 'my catalog; DROP' \(from the notebook widget "
                                         r"'catalog'\) is not a plain identifier"):
        get_config()


def test_without_a_notebook_shell_dbutils_comes_from_pyspark_dbutils(monkeypatch):
    """A job's Python file or a pipeline has no IPython namespace: Databricks' own
    `pyspark.dbutils.DBUtils(spark)` is asked instead (faked here: open-source PySpark has none)."""
    import sys
    import types

    from pyspark.sql import SparkSession

    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "client.4.0")
    monkeypatch.delenv("COURSE_CATALOG", raising=False)
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None))
    session = object()
    built = []

    class DBUtils:
        def __init__(self, spark):
            built.append(spark)
            self.widgets = FakeWidgets({"catalog": "from_dbutils"})

    monkeypatch.setitem(sys.modules, "pyspark.dbutils", types.SimpleNamespace(DBUtils=DBUtils))
    monkeypatch.setattr(SparkSession, "getActiveSession", staticmethod(lambda: session))
    assert get_config().catalog == "from_dbutils" and built == [session]
    monkeypatch.setattr(SparkSession, "getActiveSession", staticmethod(lambda: None))
    assert get_config().catalog == "medallion_course"
