"""Every lesson notebook follows the course template a learner relies on (CONTRIBUTING.md).

Checked on the stored notebooks, without running them (nbval runs them): the opening cell,
the closing sections, runnable exercises with check cells, a solution notebook of the same
name, no Databricks-only calls outside guarded cells, no personal or absolute paths.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
LESSONS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted((NOTEBOOKS / "solutions").glob("*.ipynb"))


def _cells(path: Path, kind: str | None = None) -> list[str]:
    notebook = nbformat.read(path, as_version=4)
    return [cell.source for cell in notebook.cells if kind is None or cell.cell_type == kind]


def test_there_are_lessons():
    assert LESSONS, "no notebooks/NN_topic.ipynb found"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_name_is_two_digits_and_snake_case(path):
    assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name), path.name


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_opening_cell(path):
    opening = _cells(path)[0]
    number = path.name[:2]
    assert opening.startswith(f"# {number} "), f"{path.name}: first cell must start with '# {number} · Title'"
    for required in ("By the end of this notebook you will be able to", "Prerequisites",
                     "Estimated time", "Datasets used"):
        assert required in opening, f"{path.name}: opening cell lacks '{required}'"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_closing_sections_in_order(path):
    markdown = "\n".join(_cells(path, "markdown"))
    positions = []
    for heading in ("## Check your work", "## Recap", "## Key terms", "## Exercises", "## Further reading"):
        assert heading in markdown, f"{path.name}: missing section '{heading}'"
        positions.append(markdown.index(heading))
    assert positions == sorted(positions), f"{path.name}: closing sections out of order"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_exercises_are_runnable_placeholders_with_checks(path):
    code = _cells(path, "code")
    todos = [i for i, src in enumerate(code) if "# TODO" in src]
    assert 2 <= len(todos) <= 4, f"{path.name}: expected 2-4 exercises, found {len(todos)} TODO cells"
    for index in todos:
        ast.parse(code[index])  # the placeholder still parses
        assert re.search(r"^\s*answer\s*=\s*\.\.\.", code[index], re.M), \
            f"{path.name}: a TODO cell must leave `answer = ...` as its placeholder"
        following = code[index + 1] if index + 1 < len(code) else ""
        assert "check_exercise(" in following, f"{path.name}: a TODO cell must be followed by a check cell"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_solution_notebook_exists_and_solves_every_exercise(path):
    solution = NOTEBOOKS / "solutions" / path.name
    assert solution.exists(), f"missing solution notebook solutions/{path.name}"
    lesson_checks = sum(src.count("check_exercise(") for src in _cells(path, "code"))
    solution_code = _cells(solution, "code")
    assert sum(src.count("check_exercise(") for src in solution_code) == lesson_checks
    assert not any(re.search(r"^\s*answer\s*=\s*\.\.\.", src, re.M) for src in solution_code), \
        f"solutions/{path.name} leaves a placeholder unsolved"


@pytest.mark.parametrize("path", LESSONS + SOLUTIONS, ids=lambda p: str(p.relative_to(NOTEBOOKS)))
def test_no_unguarded_databricks_calls_or_personal_paths(path):
    for src in _cells(path, "code"):
        guarded = "on_databricks()" in src
        for call in (r"\bdbutils\.", r"^\s*display\(", r"^%run\b", r"^\s*%pip\b"):
            if re.search(call, src, re.M):
                assert guarded, \
                    f"{path.name}: Databricks-only call outside an `if on_databricks():` cell:\n{src}"
        assert not re.search(r"(/home/|/Users/|C:\\\\|/work/|/tmp/)", src), \
            f"{path.name}: a hard-coded absolute path; ask get_config() instead:\n{src}"
        assert "import *" not in src and "sys.path" not in src, \
            f"{path.name}: no star imports or sys.path tricks"
        assert "SparkSession.builder" not in src, f"{path.name}: start Spark with utils.get_spark()"
