import importlib.metadata as metadata

import pytest

from utils import doctor


def test_check_environment_reports_versions(monkeypatch):
    monkeypatch.delenv("COURSE_ENGINE", raising=False)
    monkeypatch.delenv("SPARK_REMOTE", raising=False)
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    versions = doctor.check_environment()
    assert versions["pyspark"] == metadata.version("pyspark")
    assert versions["engine"] == "sail"


def test_missing_package_names_the_fix(monkeypatch):
    real = metadata.version

    def fake_version(name):
        if name == "deltalake":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(doctor.metadata, "version", fake_version)
    with pytest.raises(doctor.EnvironmentProblem, match=r"deltalake is not installed .* run `make install`"):
        doctor.check_environment()


def test_bad_engine_setting_is_reported(monkeypatch):
    monkeypatch.setenv("COURSE_ENGINE", "flink")
    with pytest.raises(doctor.EnvironmentProblem, match="Unknown COURSE_ENGINE='flink'"):
        doctor.check_environment()
    assert any(line.startswith("PROBLEM") for line in doctor.report())
