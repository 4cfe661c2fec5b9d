"""Exercise checks for the notebooks, and the paths they print.

An exercise is a ``# TODO`` cell whose placeholder still parses (``answer = ...``) followed
by a check cell calling :func:`check_exercise`. Left as ``...``, the check says the exercise
is not attempted yet and the notebook still runs top to bottom (nbval runs it as is); with a
wrong answer it fails with a message that teaches; with a right one it confirms.
Solutions live in ``notebooks/solutions/`` under the same names. :func:`shown_path` is how a
notebook prints a path (relative to the data root where it can be).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from pathlib import Path

    from utils.config import CourseConfig

NOT_ATTEMPTED = ...


def _normalize(value: Any) -> Any:
    """DataFrames and pandas frames become sorted lists of tuples so they compare by content."""
    if hasattr(value, "collect") and hasattr(value, "columns"):  # a Spark DataFrame
        return sorted(tuple(row) for row in value.collect())
    if hasattr(value, "itertuples"):  # a pandas DataFrame
        return sorted(tuple(row) for row in value.itertuples(index=False))
    return value


def check_exercise(number: int | str, answer: Any, expected: Any, hint: str,
                   compare: Callable[[Any, Any], bool] | None = None) -> None:
    """Check a learner's answer against the expected one.

    Prints the hint when the placeholder is untouched and a confirmation when the answer
    matches; raises AssertionError with the hint when it does not. It returns nothing, so a
    check cell shows only its message.
    """
    if answer is NOT_ATTEMPTED:
        print(f"Exercise {number}: not attempted yet. Hint: {hint}")
        return
    got, want = _normalize(answer), _normalize(expected)
    ok = compare(got, want) if compare else got == want
    if not ok:
        shown = repr(got)
        shown = shown if len(shown) <= 300 else shown[:300] + "..."
        raise AssertionError(f"Exercise {number}: not quite. {hint} (your answer: {shown})")
    print(f"Exercise {number}: correct.")


def shown_path(path: "str | Path", config: "CourseConfig | None" = None) -> str:
    """The path a notebook prints: relative to the data root when it lies below it (so outputs
    read the same on every machine), else the full path.

    On Databricks the reports and the landing zone are in a Unity Catalog volume
    (``/Volumes/<catalog>/...``), which is not below the data root: ``Path.relative_to`` would
    raise ValueError there, so the volume path is shown as it is.
    """
    from pathlib import Path

    from utils.config import get_config

    root = (config or get_config()).data_root
    path = Path(path)
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()
