"""Exact DataFrame comparison for tests (chispa-style): same columns, same rows, any order."""

from __future__ import annotations

from typing import Any, Iterable


def rows_of(df, order_by: Iterable[str] | None = None) -> list[tuple[Any, ...]]:
    """All rows as tuples, sorted (by ``order_by`` columns or by every column)."""
    keys = list(order_by) if order_by else df.columns
    return [tuple(row) for row in df.orderBy(*keys).collect()]


def assert_df_equality(actual, expected, order_by: Iterable[str] | None = None) -> None:
    """Fail with a readable diff unless both frames have the same columns and rows."""
    assert actual.columns == expected.columns, (
        f"columns differ:\n  actual:   {actual.columns}\n  expected: {expected.columns}")
    got, want = rows_of(actual, order_by), rows_of(expected, order_by)
    missing = [row for row in want if row not in got]
    extra = [row for row in got if row not in want]
    assert got == want, f"rows differ:\n  missing: {missing[:10]}\n  unexpected: {extra[:10]}"
