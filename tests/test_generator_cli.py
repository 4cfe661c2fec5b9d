"""The generator's command line: a one-line summary on success, one clear line on bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from data_generator.__main__ import main
from utils.config import REPO_ROOT


def _fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_cli_writes_the_landing_zone_and_prints_one_summary_line(tmp_path):
    out = tmp_path / "landing"
    result = subprocess.run(
        [sys.executable, "-m", "data_generator", "--patients", "60", "--days", "4", "--seed",
         "3", "--defect-rate", "0.05", "--start-date", "2025-03-01", "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
        env={**os.environ, "RUST_LOG": "error"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("generated ")
    assert " encounters, " in lines[0] and " files with " in lines[0]
    assert (out / "_manifest.json").exists()
    assert (out / "ehr_encounters" / "2025-03-04" / "encounters_20250304.csv").exists()


def test_default_writes_to_the_configured_landing_dir(data_dir, capsys, monkeypatch):
    import data_generator

    monkeypatch.setitem(data_generator.__main__.DEFAULT_PARAMS, "patients", 40)
    monkeypatch.setitem(data_generator.__main__.DEFAULT_PARAMS, "days", 3)
    assert main(["--default", "--no-progress"]) == 0
    assert (data_dir / "landing" / "_manifest.json").exists()
    assert capsys.readouterr().out.startswith("generated ")


@pytest.mark.parametrize("argv, message", [
    (["--patients", "0"], "--patients must be at least 1 (got 0)"),
    (["--patients", "ten"], "--patients must be a whole number (got 'ten')"),
    (["--days", "-3"], "--days must be at least 1 (got -3)"),
    (["--defect-rate", "0.5"], "--defect-rate must be between 0 and 0.2 (got 0.5)"),
    (["--start-date", "2025-02-30"], "--start-date must be a date YYYY-MM-DD"),
    (["--seed", "-1"], "--seed must be 0 or more (got -1)"),
])
def test_bad_arguments_give_clear_messages(argv, message, capsys, tmp_path):
    err = _fails([*argv, "--out", str(tmp_path / "landing")], capsys)
    assert message in err
    assert not (tmp_path / "landing").exists()


def test_unwritable_out_is_reported(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    err = _fails(["--patients", "5", "--days", "2", "--out", str(blocker / "landing")], capsys)
    assert f"--out {blocker / 'landing'} cannot be created" in err
    err = _fails(["--patients", "5", "--days", "2", "--out", str(blocker)], capsys)
    assert "exists and is not a folder" in err


def test_out_with_foreign_files_is_not_wiped(tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    err = _fails(["--patients", "5", "--days", "2", "--out", str(tmp_path)], capsys)
    assert "is not empty and holds no _manifest.json" in err
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_python_api_rejects_bad_sizes(tmp_path):
    from data_generator import generate

    with pytest.raises(ValueError, match="--patients must be a positive whole number"):
        generate(tmp_path / "x", patients=0, days=3)
    with pytest.raises(ValueError, match="--days must be a positive whole number"):
        generate(tmp_path / "x", patients=3, days=-1)
